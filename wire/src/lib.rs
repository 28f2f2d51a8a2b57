//! The controller → proxy stream (`GET /v1/tables/{namespace}/{pod}`), defined once.
//!
//! The path is the contract's ([`portcullis_contract::stream`]), re-exported here as
//! [`table_path`] (the proxy's request) and [`parse_table_path`] (the controller's routing).
//!
//! The body is newline-delimited JSON. Every line is one [`Line`], an object with exactly one
//! key naming its kind:
//!
//! ```text
//! {"hello":{"v":3}}                                          first line, always
//! {"table":{"generation":12,"table":{...}}}                   the pod's table (null: unknown pod)
//! {"peers":{"version":40,"names":{"10.1.0.20":"shop/db"}}}    every peer name, once
//! {"peers_delta":{"version":41,"set":{...},"remove":[...]}}   what changed since
//! {"services":{"version":7,"services":{"shop/api":{...}}}}    every Service with a virtual IP
//! {"services_delta":{"version":8,"set":{...},"remove":[...]}} what changed since
//! {"heartbeat":{}}                                            after a quiet period
//! ```
//!
//! # Versioning: one hello line, then strict lines
//! The version belongs to the stream, not to each line: a stream never changes version halfway,
//! so it is said once, first (`{"hello":{"v":3}}`), and every following line is read by that
//! version's rules. The hello line's shape is frozen for all versions (`hello.v` is always
//! there, extra hello fields are ignored), so that a proxy can always tell "this controller
//! speaks version 3" apart from "this line is garbage" and say which.
//!
//! Everything after the hello is read **strictly**: an unknown line kind, an unknown field at
//! any depth (the policy crate's table types deny unknown fields too), a missing field or a
//! wrong type is an error, never skipped. A field the proxy does not know might mean "deny"; a
//! proxy that ignored it would fail open. On any [`WireError`] the proxy keeps the last table it
//! had, marks it stale, says why, and reconnects later: it never guesses. A change to the line
//! types that an older proxy cannot read must bump [`VERSION`].

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use portcullis_policy::service::ResolvedService;
use portcullis_policy::PodTable;
use serde::{Deserialize, Serialize};

pub use portcullis_contract::stream::{parse_table_path, table_path, TABLES_PATH};

/// The version of the line types this crate defines.
///
/// - 1: NetworkPolicy v1 tables.
/// - 2: tables carry ClusterNetworkPolicy tiers (`admin`/`baseline` rules of a direction) and
///   verdict reasons name them; a version-1 proxy could not read such a table (its types deny
///   unknown fields), so it refuses the stream at the hello instead, and keeps its last table.
/// - 3: tables carry staged policies (`staged`: the staged policy names and the tables of the
///   enforced and staged policies together, `docs/staged-policies.md`); a version-2 proxy would
///   refuse such a table (unknown field `staged`) and must not enforce a staged policy it could
///   not tell apart, so it refuses the stream at the hello instead, and keeps its last table.
pub const VERSION: u32 = 3;

/// The response's content type.
pub const CONTENT_TYPE: &str = "application/x-ndjson";

/// A reader refuses a line longer than this (a table of a pod selected by thousands of
/// policies is a few MiB).
pub const MAX_LINE_BYTES: usize = 64 * 1024 * 1024;

/// One line of the stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Line {
    Hello(Hello),
    Table(TableUpdate),
    Peers(Peers),
    PeersDelta(PeersDelta),
    Services(Services),
    ServicesDelta(ServicesDelta),
    Heartbeat(Heartbeat),
}

/// The first line of every stream: which version of these types the rest is written in.
/// Read leniently (see the crate docs); nothing in it but `v` decides anything.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub v: u32,
}

impl Hello {
    pub fn current() -> Self {
        Hello { v: VERSION }
    }
}

/// The pod's table, with the controller-wide generation at which it last changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableUpdate {
    pub generation: u64,
    /// `None`: the controller knows no such pod (yet).
    pub table: Option<Arc<PodTable>>,
}

/// Every peer name by address (`namespace/pod`), replacing whatever the proxy had.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peers {
    pub version: u64,
    pub names: BTreeMap<IpAddr, String>,
}

/// What changed in the peer names since the previous peers line of this stream.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeersDelta {
    pub version: u64,
    pub set: BTreeMap<IpAddr, String>,
    pub remove: Vec<IpAddr>,
}

impl PeersDelta {
    pub fn apply_to(&self, names: &mut BTreeMap<IpAddr, String>) {
        for ip in &self.remove {
            names.remove(ip);
        }
        names.extend(self.set.iter().map(|(ip, n)| (*ip, n.clone())));
    }
}

/// Every Service that has a virtual IP, resolved to its backends (`namespace/name` → Service),
/// replacing whatever the proxy had.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Services {
    pub version: u64,
    pub services: BTreeMap<String, Arc<ResolvedService>>,
}

/// What changed in the Services since the previous services line of this stream: each Service
/// in `set` replaces the proxy's whole entry for it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServicesDelta {
    pub version: u64,
    pub set: BTreeMap<String, Arc<ResolvedService>>,
    pub remove: Vec<String>,
}

impl ServicesDelta {
    pub fn apply_to(&self, services: &mut BTreeMap<String, Arc<ResolvedService>>) {
        for key in &self.remove {
            services.remove(key);
        }
        services.extend(self.set.iter().map(|(k, s)| (k.clone(), s.clone())));
    }
}

/// Nothing changed lately; the stream is alive.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {}

impl Line {
    /// The line as written on the stream, newline included.
    pub fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut bytes = serde_json::to_vec(self)?;
        bytes.push(b'\n');
        Ok(bytes)
    }

    /// The kind, as named on the wire and in logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Line::Hello(_) => "hello",
            Line::Table(_) => "table",
            Line::Peers(_) => "peers",
            Line::PeersDelta(_) => "peers_delta",
            Line::Services(_) => "services",
            Line::ServicesDelta(_) => "services_delta",
            Line::Heartbeat(_) => "heartbeat",
        }
    }
}

/// Why a line was refused. Every variant means: keep the last table, mark it stale, reconnect.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("the stream did not start with a hello line (got: {0})")]
    NoHello(String),
    #[error("the controller speaks stream version {got}; this proxy reads version {VERSION} only")]
    UnsupportedVersion { got: u64 },
    #[error("a second hello line in one stream")]
    RepeatedHello,
    #[error("unknown line kind: {0}")]
    UnknownKind(String),
    #[error("unknown field: {0}")]
    UnknownField(String),
    #[error("a line that does not fit its kind: {0}")]
    Invalid(String),
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("a line longer than {MAX_LINE_BYTES} bytes")]
    TooLong,
}

impl WireError {
    /// A bounded label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            WireError::NoHello(_) => "no_hello",
            WireError::UnsupportedVersion { .. } => "version",
            WireError::RepeatedHello => "repeated_hello",
            WireError::UnknownKind(_) => "unknown_kind",
            WireError::UnknownField(_) => "unknown_field",
            WireError::Invalid(_) => "invalid",
            WireError::NotJson(_) => "not_json",
            WireError::TooLong => "too_long",
        }
    }

    fn from_json(e: serde_json::Error) -> Self {
        use serde_json::error::Category;
        let text = e.to_string();
        match e.classify() {
            Category::Syntax | Category::Eof | Category::Io => WireError::NotJson(text),
            // serde's own wording for these two cases ("unknown variant `x`, expected ...",
            // "unknown field `y`, expected ..."): the only way it tells them apart.
            Category::Data if text.starts_with("unknown variant") => WireError::UnknownKind(text),
            Category::Data if text.starts_with("unknown field") => WireError::UnknownField(text),
            Category::Data => WireError::Invalid(text),
        }
    }
}

/// Reads one stream's lines in order: the hello first (checking the version), then strict lines.
#[derive(Debug, Default)]
pub struct Decoder {
    hello: bool,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes one line (without or with its newline). The first must be a hello of
    /// [`VERSION`]; it is returned like any other line.
    pub fn decode(&mut self, line: &[u8]) -> Result<Line, WireError> {
        if line.len() > MAX_LINE_BYTES {
            return Err(WireError::TooLong);
        }
        if !self.hello {
            let v = hello_version(line)?;
            if v != u64::from(VERSION) {
                return Err(WireError::UnsupportedVersion { got: v });
            }
            self.hello = true;
            return Ok(Line::Hello(Hello { v: VERSION }));
        }
        match serde_json::from_slice::<Line>(line).map_err(WireError::from_json)? {
            Line::Hello(_) => Err(WireError::RepeatedHello),
            line => Ok(line),
        }
    }
}

/// `hello.v` of a first line, read leniently: any other hello field is ignored, anything else
/// is [`WireError::NoHello`].
fn hello_version(line: &[u8]) -> Result<u64, WireError> {
    #[derive(Deserialize)]
    struct First {
        hello: AnyHello,
    }
    #[derive(Deserialize)]
    struct AnyHello {
        v: u64,
    }
    match serde_json::from_slice::<First>(line) {
        Ok(first) => Ok(first.hello.v),
        Err(_) => Err(WireError::NoHello(excerpt(line))),
    }
}

fn excerpt(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(&line[..line.len().min(120)]);
    text.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_policy::service::{Backend, ResolvedPort};
    use portcullis_policy::Protocol;

    fn table() -> Arc<PodTable> {
        Arc::new(PodTable::unrestricted(
            "shop",
            "web",
            vec!["10.1.0.10".parse().unwrap()],
            Some("192.168.0.1".parse().unwrap()),
        ))
    }

    fn api() -> Arc<ResolvedService> {
        Arc::new(ResolvedService {
            cluster_ips: vec!["10.96.0.20".parse().unwrap()],
            ports: vec![ResolvedPort {
                name: Some("web".into()),
                protocol: Protocol::Tcp,
                port: 80,
                backends: vec![Backend {
                    ip: "10.1.0.11".parse().unwrap(),
                    port: 8080,
                    pod: Some("shop/api-1".into()),
                    ready: true,
                    serving: true,
                    terminating: false,
                }],
            }],
        })
    }

    fn every_line() -> Vec<Line> {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        vec![
            Line::Hello(Hello::current()),
            Line::Table(TableUpdate {
                generation: 12,
                table: Some(table()),
            }),
            Line::Table(TableUpdate {
                generation: 13,
                table: None,
            }),
            Line::Peers(Peers {
                version: 40,
                names: [(ip("10.1.0.20"), "shop/db".to_string())].into(),
            }),
            Line::PeersDelta(PeersDelta {
                version: 41,
                set: [(ip("fd00::7"), "shop/cache".to_string())].into(),
                remove: vec![ip("10.1.0.20")],
            }),
            Line::Services(Services {
                version: 7,
                services: [("shop/api".to_string(), api())].into(),
            }),
            Line::ServicesDelta(ServicesDelta {
                version: 8,
                set: [("shop/api".to_string(), api())].into(),
                remove: vec!["shop/old".into()],
            }),
            Line::Heartbeat(Heartbeat {}),
        ]
    }

    fn started() -> Decoder {
        let mut d = Decoder::new();
        d.decode(br#"{"hello":{"v":3}}"#).expect("hello");
        d
    }

    #[test]
    fn every_line_type_round_trips_through_the_decoder() {
        let mut d = Decoder::new();
        for line in every_line() {
            let bytes = line.encode().expect("encode");
            assert_eq!(bytes.last(), Some(&b'\n'));
            assert_eq!(bytes.iter().filter(|b| **b == b'\n').count(), 1, "one line");
            let back = d.decode(&bytes).unwrap_or_else(|e| panic!("{line:?}: {e}"));
            assert_eq!(back, line);
        }
    }

    #[test]
    fn the_wire_shapes_are_as_documented() {
        let text: Vec<String> = every_line()
            .iter()
            .map(|l| String::from_utf8(l.encode().unwrap()).unwrap())
            .collect();
        assert_eq!(text[0], "{\"hello\":{\"v\":3}}\n");
        assert!(text[1].starts_with(r#"{"table":{"generation":12,"table":{"namespace":"shop""#));
        assert_eq!(text[2], "{\"table\":{\"generation\":13,\"table\":null}}\n");
        assert_eq!(
            text[3],
            "{\"peers\":{\"version\":40,\"names\":{\"10.1.0.20\":\"shop/db\"}}}\n"
        );
        assert_eq!(
            text[4],
            "{\"peers_delta\":{\"version\":41,\"set\":{\"fd00::7\":\"shop/cache\"},\"remove\":[\"10.1.0.20\"]}}\n"
        );
        assert_eq!(
            text[5],
            "{\"services\":{\"version\":7,\"services\":{\"shop/api\":{\"cluster_ips\":[\"10.96.0.20\"],\
             \"ports\":[{\"name\":\"web\",\"protocol\":\"TCP\",\"port\":80,\"backends\":[{\"ip\":\"10.1.0.11\",\
             \"port\":8080,\"pod\":\"shop/api-1\",\"ready\":true,\"serving\":true,\"terminating\":false}]}]}}}}\n"
        );
        assert!(text[6].starts_with(r#"{"services_delta":{"version":8,"set":{"shop/api":"#));
        assert!(text[6].ends_with("\"remove\":[\"shop/old\"]}}\n"));
        assert_eq!(text[7], "{\"heartbeat\":{}}\n");
    }

    #[test]
    fn the_first_line_must_be_a_hello_of_this_version() {
        let err = Decoder::new()
            .decode(br#"{"heartbeat":{}}"#)
            .expect_err("no hello");
        assert_eq!(err.reason(), "no_hello");
        let err = Decoder::new()
            .decode(br#"{"generation":1,"table":null}"#)
            .expect_err("the unversioned format");
        assert_eq!(err.reason(), "no_hello");
        let err = Decoder::new()
            .decode(br#"{"hello":{"v":4,"features":["services"]}}"#)
            .expect_err("newer");
        assert_eq!(err, WireError::UnsupportedVersion { got: 4 });
        assert!(err.to_string().contains("version 4"), "{err}");
        assert_eq!(
            Decoder::new()
                .decode(br#"{"hello":{"v":0}}"#)
                .expect_err("older")
                .reason(),
            "version"
        );
        let mut d = started();
        assert_eq!(
            d.decode(br#"{"hello":{"v":3}}"#).expect_err("twice"),
            WireError::RepeatedHello
        );
    }

    #[test]
    fn unknown_kinds_and_fields_are_refused_at_any_depth() {
        let mut d = started();
        let err = d
            .decode(br#"{"endpoints":{"version":1}}"#)
            .expect_err("kind");
        assert_eq!(err.reason(), "unknown_kind", "{err}");
        let err = d
            .decode(br#"{"heartbeat":{"deny_all":true}}"#)
            .expect_err("field");
        assert_eq!(err.reason(), "unknown_field", "{err}");
        // A second key beside the kind.
        let err = d
            .decode(br#"{"heartbeat":{},"deny":true}"#)
            .expect_err("two keys");
        assert_ne!(err.reason(), "unknown_kind");
        // Inside the table, down to a rule.
        let mut value = serde_json::to_value(Line::Table(TableUpdate {
            generation: 1,
            table: Some(table()),
        }))
        .unwrap();
        value["table"]["table"]["egress"]["default"] = "deny".into();
        let err = d
            .decode(value.to_string().as_bytes())
            .expect_err("nested field");
        assert_eq!(err.reason(), "unknown_field", "{err}");
        let mut value = serde_json::to_value(Line::Table(TableUpdate {
            generation: 1,
            table: Some(table()),
        }))
        .unwrap();
        value["table"]["table"]["ingress"]["rules"] = serde_json::json!([{
            "policy": "shop/p", "rule": 0, "peers": null,
            "ports": [{"protocol": "TCP", "first": 80, "last": 80, "except": [81]}],
        }]);
        let err = d
            .decode(value.to_string().as_bytes())
            .expect_err("field of a port range");
        assert_eq!(err.reason(), "unknown_field", "{err}");
        // Inside a Service's backend.
        let mut value = serde_json::to_value(Line::Services(Services {
            version: 1,
            services: [("shop/api".to_string(), api())].into(),
        }))
        .unwrap();
        value["services"]["services"]["shop/api"]["ports"][0]["backends"][0]["weight"] = 0.into();
        let err = d
            .decode(value.to_string().as_bytes())
            .expect_err("field of a backend");
        assert_eq!(err.reason(), "unknown_field", "{err}");
        // Missing fields and wrong types.
        let err = d
            .decode(br#"{"table":{"table":null}}"#)
            .expect_err("missing");
        assert_eq!(err.reason(), "invalid", "{err}");
        let err = d
            .decode(br#"{"peers":{"version":"x","names":{}}}"#)
            .expect_err("type");
        assert_eq!(err.reason(), "invalid", "{err}");
        let err = d.decode(b"{\"heartbeat\":").expect_err("cut");
        assert_eq!(err.reason(), "not_json", "{err}");
    }

    #[test]
    fn peer_deltas_apply_in_order() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let mut names: BTreeMap<IpAddr, String> = [
            (ip("10.0.0.1"), "a/x".to_string()),
            (ip("10.0.0.2"), "a/y".to_string()),
        ]
        .into();
        PeersDelta {
            version: 2,
            set: [(ip("10.0.0.2"), "a/z".to_string())].into(),
            remove: vec![ip("10.0.0.1")],
        }
        .apply_to(&mut names);
        assert_eq!(
            names.into_iter().collect::<Vec<_>>(),
            [(ip("10.0.0.2"), "a/z".to_string())]
        );
    }

    /// A table with a ClusterNetworkPolicy rule in each tier.
    fn tiered_table() -> Arc<PodTable> {
        use portcullis_policy::cnp::Action;
        use portcullis_policy::{CompiledRule, TierRule};
        let mut t = (*table()).clone();
        let rule = |action| TierRule {
            action,
            label: "deny-db".into(),
            failed_closed: false,
            matcher: CompiledRule {
                policy: "guard".into(),
                rule: 0,
                peers: None,
                ports: None,
                named: Arc::from(Vec::new()),
            },
            domains: Arc::from(Vec::new()),
        };
        t.ingress.admin.push(rule(Action::Deny));
        t.egress.baseline.push(rule(Action::Pass));
        Arc::new(t)
    }

    #[test]
    fn version_skew_is_refused_both_ways_at_the_hello() {
        // A version-1 controller meets this proxy: refused before any table is applied.
        let err = Decoder::new()
            .decode(br#"{"hello":{"v":1}}"#)
            .expect_err("older controller");
        assert_eq!(err, WireError::UnsupportedVersion { got: 1 });
        assert_eq!(err.reason(), "version");
        // This controller meets a version-1 proxy: its hello says 3, which such a proxy's check
        // (`v != 1`) refuses, so it never reads a tiered table it could not understand.
        let hello = serde_json::to_string(&Line::Hello(Hello::current())).unwrap();
        assert_ne!(hello_version(hello.as_bytes()).unwrap(), 1);
        // And were it to read on, the tiers are fields a version-1 table does not have: its
        // strict types refuse them rather than enforce the table without them.
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct V1Direction {
            isolated_by: Vec<String>,
            rules: Vec<serde_json::Value>,
        }
        let tiered = serde_json::to_value(&*tiered_table()).unwrap();
        assert!(serde_json::from_value::<V1Direction>(tiered["ingress"].clone()).is_err());
        assert!(serde_json::from_value::<V1Direction>(tiered["egress"].clone()).is_err());
        // A table without CNPs still has the version-1 shape.
        let plain = serde_json::to_value(&*table()).unwrap();
        assert!(serde_json::from_value::<V1Direction>(plain["ingress"].clone()).is_ok());
    }

    #[test]
    fn tiered_tables_round_trip() {
        let mut d = started();
        let line = Line::Table(TableUpdate {
            generation: 3,
            table: Some(tiered_table()),
        });
        let text = serde_json::to_string(&line).unwrap();
        assert!(
            text.contains(r#""admin":[{"action":"Deny","label":"deny-db""#),
            "{text}"
        );
        assert_eq!(d.decode(text.as_bytes()).unwrap(), line);
    }

    /// A table with a staged part: the staged policy names and a combined ingress table.
    fn staged_table() -> Arc<PodTable> {
        use portcullis_policy::StagedTables;
        let mut t = (*tiered_table()).clone();
        let mut combined = t.ingress.clone();
        combined.isolated_by = Arc::from(vec![Arc::from("shop/deny-all")]);
        t.staged = Some(Box::new(StagedTables {
            policies: Arc::from(vec![Arc::from("shop/deny-all")]),
            ingress: Some(combined),
            egress: None,
        }));
        Arc::new(t)
    }

    #[test]
    fn staged_tables_round_trip() {
        let mut d = started();
        let line = Line::Table(TableUpdate {
            generation: 4,
            table: Some(staged_table()),
        });
        let text = serde_json::to_string(&line).unwrap();
        assert!(
            text.contains(r#""staged":{"policies":["shop/deny-all"],"ingress":{"isolated_by":["shop/deny-all"]"#),
            "{text}"
        );
        assert!(
            !text.contains(r#""egress":null"#),
            "an unchanged direction is left out"
        );
        assert_eq!(d.decode(text.as_bytes()).unwrap(), line);
        // A table with nothing staged has no `staged` key: version 2's shape.
        let plain = serde_json::to_string(&*tiered_table()).unwrap();
        assert!(!plain.contains("staged"), "{plain}");
    }

    #[test]
    fn a_version_2_proxy_refuses_staged_tables_at_the_hello() {
        let hello = serde_json::to_string(&Line::Hello(Hello::current())).unwrap();
        assert_ne!(hello_version(hello.as_bytes()).unwrap(), 2);
        // And this proxy refuses a version-2 controller, keeping its last table.
        let err = Decoder::new()
            .decode(br#"{"hello":{"v":2}}"#)
            .expect_err("older controller");
        assert_eq!(err, WireError::UnsupportedVersion { got: 2 });
        // Were a version-2 proxy to read on, its strict table refuses the unknown `staged`.
        let mut staged = serde_json::to_value(&*staged_table()).unwrap();
        assert!(staged.get("staged").is_some());
        staged.as_object_mut().unwrap().remove("staged");
        assert!(serde_json::from_value::<PodTable>(staged).is_ok());
    }
}
