//! Audit lines for denials and terminations, as JSON on stdout (what `kubectl logs` shows; the
//! schema is `portcullis_contract::log::AuditLine`, documented in `docs/audit-log.md`), with
//! flood control ([`aggregate`]): repeats are summed per window, and each event kind has a
//! budget of lines per second, so no sources, forged or not, can flood a pod's log.

mod aggregate;
pub mod json;

pub use aggregate::{Aggregator, LineBudget};

use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use portcullis_contract::log;
use portcullis_policy::{Direction, Protocol, Reason, Verdict};

/// What kind of audit line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuditEvent {
    /// Refused (enforce mode).
    Denied,
    /// Allowed only because of audit mode; or allowed, and a staged policy would deny it
    /// (`staged_by` names it).
    WouldDeny,
    /// Denied, and a staged policy would allow it (`staged_by` names it).
    WouldAllow,
    /// An established connection closed because a new table denies it.
    Terminated,
    /// A connection to a Service port with no ready (or serving) endpoint: reset, and not a
    /// policy denial.
    NoEndpoints,
}

impl AuditEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditEvent::Denied => log::audit_event::DENIED,
            AuditEvent::WouldDeny => log::audit_event::WOULD_DENY,
            AuditEvent::WouldAllow => log::audit_event::WOULD_ALLOW,
            AuditEvent::Terminated => log::audit_event::TERMINATED,
            AuditEvent::NoEndpoints => log::audit_event::NO_ENDPOINTS,
        }
    }
}

/// Everything one audit line says about a connection.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    pub event: AuditEvent,
    pub direction: Direction,
    pub source: SocketAddr,
    pub destination: SocketAddr,
    /// `namespace/name` of the peer pod, when the table knows the address.
    pub peer_pod: Option<String>,
    /// `namespace/name` of this pod.
    pub pod: String,
    /// What the table said (`None` for `no_endpoints`: no policy decision was made).
    pub verdict: Option<Verdict>,
    pub generation: u64,
    /// TCP for proxied connections; UDP or SCTP for flows judged in the queue.
    pub protocol: Protocol,
    /// Set when the connection was for a Service's virtual IP.
    pub service: Option<ServiceNote>,
    /// The staged policies (`,`-separated) whose verdict this line reports; `None` on every
    /// line but a staged `connection_would_deny`/`connection_would_allow`.
    pub staged_by: Vec<String>,
}

/// What an audit line says about a connection to a Service's virtual IP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceNote {
    /// `namespace/name`.
    pub service: String,
    /// The backend the connection went to (terminated connections).
    pub backend: Option<SocketAddr>,
    /// Why endpoints were refused: `ip:port (ns/pod): reason`, at most
    /// [`REFUSED_LISTED`] of them, then how many more.
    pub refused: Vec<String>,
}

/// How many refused endpoints one audit line names.
pub const REFUSED_LISTED: usize = 5;

impl AuditRecord {
    pub fn peer(&self) -> IpAddr {
        match self.direction {
            Direction::Ingress => self.source.ip(),
            Direction::Egress => self.destination.ip(),
        }
    }
}

/// One line to write: a record, and how many connections it stands for.
#[derive(Debug, Clone)]
pub struct AuditLine {
    pub record: AuditRecord,
    pub count: u64,
    /// True for the end-of-window summary of repeats.
    pub aggregated: bool,
    /// True for the line that sums what the event kind's budget of lines folded.
    pub rate_limited: bool,
}

/// The process-wide audit log: an [`Aggregator`] behind a mutex held only for a map update.
pub struct AuditLog {
    aggregator: Mutex<Aggregator>,
}

impl AuditLog {
    pub fn new(window: Duration, budget: LineBudget) -> Self {
        AuditLog {
            aggregator: Mutex::new(Aggregator::new(window, 4096, budget)),
        }
    }

    pub fn record(&self, record: AuditRecord) {
        let lines = match self.aggregator.lock() {
            Ok(mut a) => a.record(record, Instant::now()),
            Err(poisoned) => poisoned.into_inner().record(record, Instant::now()),
        };
        lines.iter().for_each(write_line);
    }

    pub fn flush(&self) {
        let lines = match self.aggregator.lock() {
            Ok(mut a) => a.flush(Instant::now()),
            Err(poisoned) => poisoned.into_inner().flush(Instant::now()),
        };
        lines.iter().for_each(write_line);
    }
}

/// Writes one audit line: [`AuditLine::to_log`] as one JSON line on stdout ([`json`]).
pub fn write_line(line: &AuditLine) {
    if tracing::enabled!(target: log::AUDIT_TARGET, tracing::Level::WARN) {
        json::write(json::Level::Warn, log::AUDIT_TARGET, &line.to_log());
    }
}

impl AuditLine {
    /// The line as the log schema defines it (`portcullis_contract::log::AuditLine`).
    pub fn to_log(&self) -> log::AuditLine {
        let r = &self.record;
        let (peer_namespace, peer_pod) = match r.peer_pod.as_deref().and_then(|p| p.split_once('/'))
        {
            Some((ns, name)) => (Some(ns.to_string()), Some(name.to_string())),
            None => (None, None),
        };
        let isolated_by = r
            .verdict
            .as_ref()
            .map(|v| v.isolated_by().iter().map(|s| s.to_string()).collect())
            .unwrap_or_default();
        let reason = match (&r.verdict, r.event) {
            (Some(v), _) => v.to_string(),
            (None, AuditEvent::NoEndpoints) => "no ready endpoint behind the Service port".into(),
            (None, _) => String::new(),
        };
        let cnp = r.verdict.as_ref().and_then(CnpFields::of);
        let service = r.service.as_ref();
        log::AuditLine {
            event: r.event.as_str().to_string(),
            schema: log::LOG_SCHEMA,
            direction: flow_direction(r.direction),
            protocol: r.protocol.as_str().to_string(),
            src_ip: r.source.ip(),
            src_port: r.source.port(),
            dst_ip: r.destination.ip(),
            dst_port: r.destination.port(),
            pod: r.pod.clone(),
            peer_namespace,
            peer_pod,
            isolated_by,
            tier: cnp.map(|c| c.tier.to_string()),
            policy: cnp.map(|c| c.policy.to_string()),
            rule: cnp.map(|c| c.rule.to_string()),
            action: cnp.map(|c| c.action.to_string()),
            reason,
            service: service.map(|s| s.service.clone()),
            service_port: service.map(|_| r.destination.port()),
            backend: service.and_then(|s| s.backend).map(|b| b.to_string()),
            endpoints_refused: service.map(|s| s.refused.clone()).unwrap_or_default(),
            staged_by: r.staged_by.clone(),
            policy_generation: r.generation,
            count: self.count,
            aggregated: self.aggregated,
            rate_limited: self.rate_limited,
        }
    }
}

/// The log schema's spelling of a direction.
pub fn flow_direction(direction: Direction) -> log::FlowDirection {
    match direction {
        Direction::Ingress => log::FlowDirection::Ingress,
        Direction::Egress => log::FlowDirection::Egress,
    }
}

/// The structured fields of a decision by a ClusterNetworkPolicy rule: `tier` (`Admin`,
/// `Baseline`), `policy` (the CNP's name), `rule` (its `name`, else `#index`), `action`
/// (`Deny`, or `Accept` on a terminated connection's line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CnpFields<'a> {
    pub tier: &'static str,
    pub policy: &'a str,
    pub rule: &'a str,
    pub action: &'static str,
}

impl<'a> CnpFields<'a> {
    pub fn of(verdict: &'a Verdict) -> Option<Self> {
        match &verdict.reason {
            Reason::Tier {
                tier,
                policy,
                rule,
                action,
                ..
            } => Some(CnpFields {
                tier: tier.as_str(),
                policy,
                rule,
                action: action.as_str(),
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn denial() -> AuditLine {
        AuditLine {
            record: AuditRecord {
                event: AuditEvent::Denied,
                direction: Direction::Ingress,
                source: "10.214.0.2:40412".parse().expect("addr"),
                destination: "10.214.0.1:9090".parse().expect("addr"),
                peer_pod: Some("x/client".into()),
                pod: "x/server".into(),
                verdict: Some(Verdict {
                    direction: Direction::Ingress,
                    reason: Reason::NoRuleMatched {
                        isolated_by: Arc::from(vec![
                            Arc::from("x/client-to-http"),
                            Arc::from("x/deny-all"),
                        ]),
                    },
                }),
                generation: 1,
                protocol: Protocol::Tcp,
                service: None,
                staged_by: Vec::new(),
            },
            count: 1,
            aggregated: false,
            rate_limited: false,
        }
    }

    #[test]
    fn an_audit_line_has_structured_addresses_and_an_isolated_by_array() {
        let bytes = json::encode(json::Level::Warn, log::AUDIT_TARGET, &denial().to_log());
        let text = String::from_utf8(bytes).expect("utf-8");
        eprintln!("audit line: {text}");
        let line: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(line["schema"], log::LOG_SCHEMA);
        assert_eq!(line["event"], "connection_denied");
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["target"], "portcullis::audit");
        assert_eq!(line["src_ip"], "10.214.0.2");
        assert_eq!(line["src_port"], 40412);
        assert_eq!(line["dst_ip"], "10.214.0.1");
        assert_eq!(line["dst_port"], 9090);
        assert_eq!(line["direction"], "ingress");
        assert_eq!(line["peer_namespace"], "x");
        assert_eq!(line["peer_pod"], "client");
        assert_eq!(
            line["isolated_by"],
            serde_json::json!(["x/client-to-http", "x/deny-all"])
        );
        for absent in ["src", "dst", "tier", "service", "endpoints_refused"] {
            assert!(line.get(absent).is_none(), "{absent}: {text}");
        }
        // No Rust Debug spelling anywhere: every value is a JSON scalar or array of them.
        assert!(
            !text.contains("Some(") && !text.contains("Ingress"),
            "{text}"
        );
        let back: log::Envelope<log::AuditLine> = serde_json::from_str(&text).expect("reads");
        assert_eq!(back.line, denial().to_log());
    }

    #[test]
    fn a_service_line_lists_refused_endpoints_as_an_array() {
        let mut line = denial();
        line.record.destination = "10.96.0.52:80".parse().expect("addr");
        line.record.service = Some(ServiceNote {
            service: "x/client".into(),
            backend: Some("10.214.0.5:9443".parse().expect("addr")),
            refused: vec![
                "10.214.0.2:7070 (x/client): denied".into(),
                "and 2 more".into(),
            ],
        });
        let v = serde_json::to_value(line.to_log()).expect("JSON");
        assert_eq!(v["service"], "x/client");
        assert_eq!(v["service_port"], 80);
        assert_eq!(v["backend"], "10.214.0.5:9443");
        assert_eq!(v["endpoints_refused"][1], "and 2 more");
    }
}
