//! The JSON lines a proxy writes to its log that other tools read back (`portcullis advise`, the
//! testbed, the demo, a user's log pipeline): their shapes are defined here, once.
//!
//! Readers are lenient on purpose: a line may carry more fields than these structs name (the log
//! formatter adds `timestamp`, `level`, `target`; a newer proxy may add fields), and those are
//! ignored. A change that removes or redefines a field raises [`LOG_SCHEMA`].

use std::net::IpAddr;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// The version of the proxy's log schema, written as `schema` on every line this module defines.
pub const LOG_SCHEMA: u32 = 1;

/// Every line a proxy writes itself (audit lines, flow records) starts with the fields its
/// tracing lines carry, so that one log pipeline reads both: `timestamp` (RFC 3339, UTC,
/// microseconds), `level` (`INFO`, `WARN`, ...) and `target` (`portcullis::audit`,
/// `portcullis::flows`), then the line's own fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub timestamp: String,
    pub level: String,
    pub target: String,
    #[serde(flatten)]
    pub line: T,
}

/// The `target` of audit lines.
pub const AUDIT_TARGET: &str = "portcullis::audit";
/// The `target` of flow record lines.
pub const FLOWS_TARGET: &str = "portcullis::flows";

/// The `event`s of [`AuditLine`]s.
pub mod audit_event {
    /// Refused (enforce mode).
    pub const DENIED: &str = "connection_denied";
    /// Let through only because the pod is in audit mode.
    pub const WOULD_DENY: &str = "connection_would_deny";
    /// Denied by the enforced policies; a staged policy (`staged_by`) would allow it.
    pub const WOULD_ALLOW: &str = "connection_would_allow";
    /// An established connection or flow ended because a new table denies it.
    pub const TERMINATED: &str = "connection_terminated";
    /// A connection or flow to a Service port with no ready endpoint (no policy decision).
    pub const NO_ENDPOINTS: &str = "no_endpoints";
    /// Every audit event, in the order `docs/audit-log.md` lists them.
    pub const ALL: [&str; 5] = [DENIED, WOULD_DENY, WOULD_ALLOW, TERMINATED, NO_ENDPOINTS];
}

/// One audit line: a denial, a would-be denial, a termination or a Service without endpoints,
/// written at level `WARN` with target [`AUDIT_TARGET`] inside an [`Envelope`].
///
/// Optional fields are left out of the line when they have no value; `docs/audit-log.md` lists
/// every field (a test keeps the two equal).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditLine {
    /// One of [`audit_event::ALL`].
    pub event: String,
    /// [`LOG_SCHEMA`] when written.
    pub schema: u32,
    pub direction: FlowDirection,
    /// `TCP`, `UDP`, `SCTP`, or another IP protocol's IANA keyword (`GRE`, `UDPLITE`, ...) or
    /// `IP-PROTO-<n>`.
    pub protocol: String,
    /// The connection's or datagram's source, as the pod's network namespace saw it.
    pub src_ip: IpAddr,
    pub src_port: u16,
    /// Its original destination (for a Service, the ClusterIP and the Service's port).
    pub dst_ip: IpAddr,
    pub dst_port: u16,
    /// `namespace/name` of the pod whose proxy wrote the line.
    pub pod: String,
    /// The peer pod's namespace and name, when the proxy's table knows the peer's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_pod: Option<String>,
    /// `namespace/name` of every NetworkPolicy that isolates the pod in this direction, when the
    /// denial is "no rule matched" (empty otherwise).
    #[serde(default)]
    pub isolated_by: Vec<String>,
    /// A ClusterNetworkPolicy decision: its tier (`Admin`, `Baseline`), name, rule (its `name`,
    /// else `#index`) and action (`Deny`; `Accept` on a terminated connection's line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// The verdict in words.
    pub reason: String,
    /// `namespace/name` of the Service, for a connection or flow to its ClusterIP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The Service's port (the same as `dst_port`), with `service`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_port: Option<u16>,
    /// The backend a terminated Service connection went to, `ip:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// Why the Service's endpoints were refused: `ip:port (ns/pod): reason`, at most five, then
    /// `and N more`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints_refused: Vec<String>,
    /// The staged policies that would change the verdict (`connection_would_deny` /
    /// `connection_would_allow` of staged policies only; audit mode's lines have none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub staged_by: Vec<String>,
    /// The generation of the policy table that decided.
    pub policy_generation: u64,
    /// How many connections or flows this line stands for.
    pub count: u64,
    /// True for a line that sums repeats (the end of an audit window, or an overflow).
    pub aggregated: bool,
    /// True for the line that sums what the event kind's budget of lines folded.
    pub rate_limited: bool,
}

/// The `event` of a [`FlowSummary`] line.
pub const FLOW_SUMMARY: &str = "flow_summary";

/// The `event` of a [`FlowsDropped`] line.
pub const FLOWS_DROPPED: &str = "flow_records_dropped";

/// Which side of the pod a flow was on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowDirection {
    /// The peer connected to (or sent to) this pod.
    Ingress,
    /// This pod connected to (or sent to) the peer.
    Egress,
}

/// The transport protocol of a flow, spelled as in a NetworkPolicy's `protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum FlowProtocol {
    Tcp,
    Udp,
    Sctp,
}

impl std::fmt::Display for FlowDirection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FlowDirection::Ingress => "ingress",
            FlowDirection::Egress => "egress",
        })
    }
}

impl std::fmt::Display for FlowProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FlowProtocol::Tcp => "TCP",
            FlowProtocol::Udp => "UDP",
            FlowProtocol::Sctp => "SCTP",
        })
    }
}

/// What became of a flow: `allowed` when it went through (in audit mode this includes flows the
/// table denies, each of which also has its `connection_would_deny` audit line), `denied` when
/// the proxy refused or dropped it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowVerdict {
    Allowed,
    Denied,
}

/// One `flow_summary` line: what one pod did with one peer, port and protocol during one period
/// of its proxy's flow records. Connections (TCP) and flows (UDP, SCTP) are counted alike.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowSummary {
    /// Always [`FLOW_SUMMARY`].
    pub event: String,
    /// [`LOG_SCHEMA`] when written.
    pub schema: u32,
    /// The namespace of the pod whose proxy saw the flows.
    pub pod_namespace: String,
    /// That pod's name.
    pub pod: String,
    pub direction: FlowDirection,
    pub protocol: FlowProtocol,
    /// The other end's address: the source of an ingress flow, the destination of an egress one
    /// (for a connection to a Service, the backend it went to).
    pub peer_ip: IpAddr,
    /// The peer pod's namespace, when the proxy's table knew the address as a pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_namespace: Option<String>,
    /// The peer pod's name, likewise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_pod: Option<String>,
    /// The server's port: this pod's own port for ingress, the peer's for egress (for a
    /// Service, the backend's target port).
    pub port: u16,
    /// `namespace/name` of the Service, when the pod connected to its ClusterIP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    pub verdict: FlowVerdict,
    /// How many connections or flows this line stands for.
    pub count: u64,
    /// RFC 3339, UTC, seconds: the first and last time one was seen in the period.
    pub first_seen: String,
    pub last_seen: String,
}

/// One `flow_records_dropped` line: how many flows the proxy's bound on flow records could not
/// keep during a period (they are still enforced and audited; only their summary is lost).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowsDropped {
    /// Always [`FLOWS_DROPPED`].
    pub event: String,
    pub schema: u32,
    pub pod_namespace: String,
    pub pod: String,
    /// Flows not recorded in the period.
    pub dropped: u64,
}

/// `timestamp` of an [`Envelope`]: RFC 3339, UTC, microseconds (as the proxy's tracing lines).
pub fn timestamp(at: SystemTime) -> String {
    humantime::format_rfc3339_micros(at).to_string()
}

/// `first_seen` / `last_seen` of a [`FlowSummary`]: RFC 3339, UTC, seconds.
pub fn seconds(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flow_summary_line_reads_back_with_the_formatters_extra_fields() {
        let line = r#"{"timestamp":"2026-12-08T03:00:00Z","level":"INFO","target":"portcullis::flows",
            "event":"flow_summary","schema":1,"pod_namespace":"zoo","pod":"kangaroo-1",
            "direction":"egress","protocol":"TCP","peer_ip":"10.244.1.7","peer_namespace":"zoo",
            "peer_pod":"wombat-0","port":8080,"verdict":"allowed","count":3,
            "first_seen":"2026-12-08T02:59:01Z","last_seen":"2026-12-08T02:59:58Z"}"#;
        let f: FlowSummary = serde_json::from_str(line).expect("reads");
        assert_eq!(f.event, FLOW_SUMMARY);
        assert_eq!(f.direction, FlowDirection::Egress);
        assert_eq!(f.protocol, FlowProtocol::Tcp);
        assert_eq!(f.peer_pod.as_deref(), Some("wombat-0"));
        assert_eq!(f.service, None);
        let back = serde_json::to_value(&f).expect("writes");
        assert_eq!(back["protocol"], "TCP");
        assert_eq!(back["verdict"], "allowed");
        assert!(
            back.get("service").is_none(),
            "absent optional fields are not written"
        );
    }

    #[test]
    fn an_unknown_protocol_or_verdict_is_an_error_not_a_guess() {
        let bad = r#"{"event":"flow_summary","schema":1,"pod_namespace":"a","pod":"b",
            "direction":"egress","protocol":"ICMP","peer_ip":"10.0.0.1","port":1,
            "verdict":"allowed","count":1,"first_seen":"x","last_seen":"y"}"#;
        assert!(serde_json::from_str::<FlowSummary>(bad).is_err());
    }
}
