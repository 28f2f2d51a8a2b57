//! The contract between Portcullis components: every value that two crates must agree on lives
//! here, once, with one type. `docs/CONVENTIONS.md` explains them; `tests/conventions.rs` keeps the
//! document and these constants equal.
//!
//! - [`PROXY_UID`], [`PROXY_MARK`], [`QUEUED_CONNMARK`], [`NFQUEUE`]: the sidecar's identity in
//!   the kernel's rules.
//! - [`ports`]: the proxy's listeners and the controller's.
//! - [`keys`]: label and annotation keys.
//! - [`env`]: environment variable names read by `portcullis-init` and `portcullis-proxy`.
//! - [`stream`]: the controller's table API path.
//! - [`log`]: the JSON lines of a proxy's log that tools read back (flow records).
//! - [`Mark`], [`parse_duration`]: the parsers every binary uses for those values.

pub mod log;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The proxy's UID and GID. Its own sockets are exempt from the redirect (with [`PROXY_MARK`]
/// when it has `NET_ADMIN`), so no other container may run as this UID.
pub const PROXY_UID: u32 = 2171;

/// The packet mark the proxy sets (`SO_MARK`) on every socket it connects with when it has
/// `NET_ADMIN`; `portcullis-init` exempts the proxy's UID only *with* it. Bit 12: why it is safe
/// beside kube-proxy's, CNIs' and Istio's marks is in `docs/CONVENTIONS.md`.
pub const PROXY_MARK: Mark = Mark(0x1000);

/// The conntrack mark (`CONNMARK`) `portcullis-init` sets on every connection whose first packet
/// it queued, so that revocation can list exactly those entries.
pub const QUEUED_CONNMARK: Mark = Mark(0x1000);

/// The packet mark the proxy's queue verdict puts on an outbound TCP SYN it refuses (verdict
/// `NF_REPEAT`): the packet goes through the filter table's `OUTPUT` again, where
/// `portcullis-init`'s first rule answers it with a TCP reset, so the application's `connect()`
/// fails at once with `ECONNREFUSED`. Bit 13, beside [`PROXY_MARK`]; it never leaves the pod.
pub const REFUSED_MARK: Mark = Mark(0x2000);

/// The Service ClusterIP ranges `portcullis-init` assumes when none is given: kubeadm's default
/// (and the testbed's). Outbound TCP to these goes to the proxy's relay (which picks an allowed
/// backend); all other outbound TCP is judged in the queue.
pub const DEFAULT_SERVICE_CIDRS: &str = "10.96.0.0/12";

/// The NFQUEUE number on which the proxy judges the first packet of each new flow.
pub const NFQUEUE: u16 = 4171;

/// The NFQUEUE number on which the proxy reads the pod's DNS queries (UDP port 53) and the
/// replies to them, whole, to learn the addresses its `domainNames` rules allow.
pub const DNS_NFQUEUE: u16 = 4172;

/// The cluster DNS Service (`namespace/name`) whose ClusterIPs and endpoints the proxy trusts
/// as resolvers.
pub const KUBE_DNS_SERVICE: &str = "kube-system/kube-dns";

/// The UID/GID pair of the proxy as the Kubernetes API types it (`runAsUser` is an `int64`).
pub const fn proxy_uid_k8s() -> i64 {
    PROXY_UID as i64
}

/// Ports of the proxy and the controller.
pub mod ports {
    /// The proxy's inbound listener (`0.0.0.0:4143`, `[::]:4143`): the relay mode's target.
    pub const INBOUND: u16 = 4143;
    /// The proxy's outbound listener (`127.0.0.1:4140`, `[::1]:4140`): the redirect's target.
    pub const OUTBOUND: u16 = 4140;
    /// The proxy's admin listener: `/metrics`, `/ready`, `/live`, `/policy`.
    pub const ADMIN: u16 = 4191;
    /// Every port the proxy itself listens on, with its role: an application must not use them.
    pub const PROXY: [(u16, &str); 3] = [
        (INBOUND, "inbound"),
        (OUTBOUND, "outbound"),
        (ADMIN, "admin"),
    ];
    /// The controller's table API (HTTPS).
    pub const CONTROLLER_STREAM: u16 = 8443;
    /// The controller's admin listener: `/metrics`, `/ready`, `/live`.
    pub const CONTROLLER_ADMIN: u16 = 9990;
}

/// Label and annotation keys (all under `portcullis.dev/`).
pub mod keys {
    /// The prefix of every Portcullis label and annotation.
    pub const PREFIX: &str = "portcullis.dev/";
    /// Namespace label `enabled` opts a namespace in; annotation `enabled|disabled` on a pod or
    /// namespace decides per pod.
    pub const INJECT: &str = "portcullis.dev/inject";
    /// Written by the injector: every exemption from enforcement in force for the pod.
    pub const EXEMPTIONS: &str = "portcullis.dev/exemptions";
    /// Written by the injector: the version of Portcullis that was injected.
    pub const INJECTED_VERSION: &str = "portcullis.dev/injected-version";
    pub const SKIP_INBOUND_PORTS: &str = "portcullis.dev/skip-inbound-ports";
    pub const SKIP_OUTBOUND_PORTS: &str = "portcullis.dev/skip-outbound-ports";
    pub const SKIP_OUTBOUND_CIDRS: &str = "portcullis.dev/skip-outbound-cidrs";
    /// `enforce` or `audit`.
    pub const POLICY_MODE: &str = "portcullis.dev/policy-mode";
    /// `native` or `classic`.
    pub const SIDECAR_MODE: &str = "portcullis.dev/sidecar-mode";
    pub const LOG_LEVEL: &str = "portcullis.dev/log-level";
    pub const PROXY_CPU_REQUEST: &str = "portcullis.dev/proxy-cpu-request";
    pub const PROXY_CPU_LIMIT: &str = "portcullis.dev/proxy-cpu-limit";
    pub const PROXY_MEMORY_REQUEST: &str = "portcullis.dev/proxy-memory-request";
    pub const PROXY_MEMORY_LIMIT: &str = "portcullis.dev/proxy-memory-limit";
    /// `true` or `false`: whether the proxy enforces UDP and SCTP (NFQUEUE, needs NET_ADMIN).
    pub const ENFORCE_UDP: &str = "portcullis.dev/enforce-udp";
    /// `true` (default) or `false`: drop NET_RAW from application containers.
    pub const DROP_NET_RAW: &str = "portcullis.dev/drop-net-raw";
    /// Namespace only: `true` lets its pods weaken their own enforcement.
    pub const ALLOW_POD_OVERRIDES: &str = "portcullis.dev/allow-pod-overrides";
    /// On a NetworkPolicy or ClusterNetworkPolicy, `"true"`: compiled and evaluated, not
    /// enforced; the proxy logs what it would change (`docs/staged-policies.md`).
    pub const STAGED: &str = "portcullis.dev/staged";
    /// The value of [`STAGED`] that stages a policy (any other value enforces it).
    pub const STAGED_TRUE: &str = "true";
    /// Namespace only: privileged ephemeral containers are admitted, with a warning.
    pub const ALLOW_PRIVILEGED_DEBUG: &str = "portcullis.dev/allow-privileged-debug";
    /// Written by `portcullis advise` on the policies it writes: how many flow records of which
    /// window they come from.
    pub const ADVISED_FROM: &str = "portcullis.dev/advised-from";
    /// The value of [`INJECT`] that opts in.
    pub const ENABLED: &str = "enabled";
    /// The value of [`INJECT`] that opts out.
    pub const DISABLED: &str = "disabled";
    /// Namespaces that never get a proxy, whatever their labels say.
    pub const NEVER_INJECTED_NAMESPACES: [&str; 4] = [
        "kube-system",
        "kube-public",
        "kube-node-lease",
        SYSTEM_NAMESPACE,
    ];
    /// Where Portcullis itself runs.
    pub const SYSTEM_NAMESPACE: &str = "portcullis-system";
}

/// Environment variables `portcullis-init` and `portcullis-proxy` read (every flag of theirs
/// reads one), as the injector and the testbed set them.
pub mod env {
    /// The prefix of every Portcullis variable (the Downward API's below excepted).
    pub const PREFIX: &str = "PORTCULLIS_";
    pub const PROXY_UID: &str = "PORTCULLIS_PROXY_UID";
    pub const PROXY_MARK: &str = "PORTCULLIS_PROXY_MARK";
    pub const INBOUND_PORT: &str = "PORTCULLIS_INBOUND_PORT";
    pub const OUTBOUND_PORT: &str = "PORTCULLIS_OUTBOUND_PORT";
    pub const ADMIN_PORT: &str = "PORTCULLIS_ADMIN_PORT";
    pub const SKIP_INBOUND_PORTS: &str = "PORTCULLIS_SKIP_INBOUND_PORTS";
    pub const SKIP_OUTBOUND_PORTS: &str = "PORTCULLIS_SKIP_OUTBOUND_PORTS";
    pub const SKIP_OUTBOUND_CIDRS: &str = "PORTCULLIS_SKIP_OUTBOUND_CIDRS";
    pub const ENFORCE_UDP: &str = "PORTCULLIS_ENFORCE_UDP";
    pub const INBOUND_TCP: &str = "PORTCULLIS_INBOUND_TCP";
    pub const OUTBOUND_TCP: &str = "PORTCULLIS_OUTBOUND_TCP";
    /// `portcullis-init` only: the Service ClusterIP ranges (outbound TCP to them is relayed).
    pub const SERVICE_CIDRS: &str = "PORTCULLIS_SERVICE_CIDRS";
    /// `portcullis-init` only: `auto`, `nft` or `legacy`.
    pub const IPTABLES_BACKEND: &str = "PORTCULLIS_IPTABLES_BACKEND";
    /// `portcullis-init` only: leave `filter FORWARD` alone.
    pub const ALLOW_FORWARDING: &str = "PORTCULLIS_ALLOW_FORWARDING";
    pub const NFQUEUE: &str = "PORTCULLIS_NFQUEUE";
    pub const MODE: &str = "PORTCULLIS_MODE";
    pub const LOG: &str = "PORTCULLIS_LOG";
    pub const CONTROLLER: &str = "PORTCULLIS_CONTROLLER";
    pub const CONTROLLER_CA_PEM: &str = "PORTCULLIS_CONTROLLER_CA_PEM";
    pub const TOKEN_FILE: &str = "PORTCULLIS_TOKEN_FILE";
    pub const POLICY_DIR: &str = "PORTCULLIS_POLICY_DIR";
    /// `portcullis-proxy` only: how often flow records are written (`0`: off).
    pub const FLOW_SUMMARY_INTERVAL: &str = "PORTCULLIS_FLOW_SUMMARY_INTERVAL";
    /// `portcullis-proxy` only: flow records held per period at most.
    pub const FLOW_RECORDS_MAX: &str = "PORTCULLIS_FLOW_RECORDS_MAX";
    /// Downward API (exact names, no prefix).
    pub const POD_NAME: &str = "POD_NAME";
    pub const POD_NAMESPACE: &str = "POD_NAMESPACE";
    pub const POD_IPS: &str = "POD_IPS";
    pub const HOST_IP: &str = "HOST_IP";
}

/// The controller's table API.
pub mod stream {
    /// `GET {TABLES_PATH}{namespace}/{pod}`: one pod's table stream.
    pub const TABLES_PATH: &str = "/v1/tables/";
    /// The audience of the projected service-account token a proxy presents.
    pub const TOKEN_AUDIENCE: &str = "portcullis";

    /// The path of one pod's table stream.
    pub fn table_path(namespace: &str, pod: &str) -> String {
        format!("{TABLES_PATH}{namespace}/{pod}")
    }

    /// The pod a table path names, if it is one: `(namespace, pod)`.
    pub fn parse_table_path(path: &str) -> Option<(&str, &str)> {
        let rest = path.strip_prefix(TABLES_PATH)?;
        let (ns, pod) = rest.split_once('/')?;
        (!ns.is_empty() && !pod.is_empty() && !pod.contains('/')).then_some((ns, pod))
    }
}

/// A packet or connection mark: a non-zero 32-bit number, written `0x1000` or `4096`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mark(pub u32);

impl Mark {
    pub const fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for Mark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// Why a text is not a [`Mark`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MarkError {
    #[error(
        "the mark must not be 0: `-m mark --mark 0/0` matches every packet, so every process \
         running as the proxy's UID would be exempt (and SO_MARK 0 is no mark)"
    )]
    Zero,
    #[error("`{0}` is not a packet mark (a 32-bit number, hex `0x1000` or decimal `4096`)")]
    Invalid(String),
}

impl FromStr for Mark {
    type Err = MarkError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let parsed = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
            Some(hex) => u32::from_str_radix(hex, 16),
            None => t.parse::<u32>(),
        };
        match parsed {
            Ok(0) => Err(MarkError::Zero),
            Ok(m) => Ok(Mark(m)),
            Err(_) => Err(MarkError::Invalid(s.to_string())),
        }
    }
}

/// Why a text is not a duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not a duration ({reason}; examples: 500ms, 2s, 1m, 1h30m, or plain seconds)")]
pub struct DurationError {
    pub text: String,
    pub reason: String,
}

/// Parses a duration as every Portcullis flag takes it: `humantime`'s units (`500ms`, `2s`,
/// `1m`, `1h30m`, `1d`) or a plain number of seconds (`5`, `0.5`). Never panics: a value too
/// large for a `Duration` is an error.
/// What every binary reports as `portcullis_build_info{version,commit} 1`.
pub mod build {
    /// The workspace version (every crate shares it).
    pub const VERSION: &str = env!("CARGO_PKG_VERSION");
    /// The commit built, from `PORTCULLIS_COMMIT` at build time (scripts/dist.sh sets it), or
    /// `unknown`.
    pub const COMMIT: &str = match option_env!("PORTCULLIS_COMMIT") {
        Some(c) => c,
        None => "unknown",
    };
    /// The gauge's name; its value is always 1, the build is in its labels.
    pub const INFO_METRIC: &str = "portcullis_build_info";
    pub const INFO_HELP: &str =
        "Always 1; the labels say which Portcullis build this is (version, commit).";
}

/// Writes a duration as [`parse_duration`] reads it back (`5s`, `1m 30s`, `500ms`): for log
/// lines and messages, never Rust's `Debug` spelling.
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let t = s.trim();
    let err = |reason: &str| DurationError {
        text: s.to_string(),
        reason: reason.to_string(),
    };
    if t.is_empty() {
        return Err(err("empty"));
    }
    if t.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let secs: f64 = t.parse().map_err(|_| err("not a number"))?;
        return Duration::try_from_secs_f64(secs).map_err(|_| err("out of range"));
    }
    humantime::parse_duration(t).map_err(|e| err(&e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_parse_in_hex_and_decimal_and_refuse_zero() {
        assert_eq!("0x1000".parse::<Mark>(), Ok(Mark(4096)));
        assert_eq!(" 4096 ".parse::<Mark>(), Ok(PROXY_MARK));
        assert_eq!("0".parse::<Mark>(), Err(MarkError::Zero));
        assert_eq!("0x0".parse::<Mark>(), Err(MarkError::Zero));
        assert!(matches!("0x1g".parse::<Mark>(), Err(MarkError::Invalid(_))));
        assert!(matches!(
            "4294967296".parse::<Mark>(),
            Err(MarkError::Invalid(_))
        ));
        assert_eq!(PROXY_MARK.to_string(), "0x1000");
    }

    #[test]
    fn durations_take_units_and_plain_seconds_and_never_panic() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("0.25"), Ok(Duration::from_millis(250)));
        for d in [
            Duration::from_secs(20),
            Duration::from_millis(1500),
            Duration::ZERO,
        ] {
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
        assert_eq!(format_duration(Duration::from_secs(5)), "5s");
        for bad in [
            "",
            "1e23",
            "99999999999999999999999999s",
            "1e400",
            "-1s",
            "abc",
            "5 parsecs",
            ".",
        ] {
            let e = parse_duration(bad).expect_err(bad);
            assert!(e.to_string().contains("is not a duration"), "{e}");
        }
    }

    #[test]
    fn table_paths_round_trip() {
        let p = stream::table_path("shop", "web-0");
        assert_eq!(p, "/v1/tables/shop/web-0");
        assert_eq!(stream::parse_table_path(&p), Some(("shop", "web-0")));
        assert_eq!(stream::parse_table_path("/v1/tables/shop/"), None);
        assert_eq!(stream::parse_table_path("/v1/tables/a/b/c"), None);
        assert_eq!(stream::parse_table_path("/v2/tables/a/b"), None);
    }

    #[test]
    fn proxy_ports_are_distinct() {
        let mut seen: Vec<u16> = ports::PROXY.iter().map(|(p, _)| *p).collect();
        seen.push(ports::CONTROLLER_STREAM);
        seen.push(ports::CONTROLLER_ADMIN);
        let n = seen.len();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), n);
    }
}
