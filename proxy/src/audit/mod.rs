//! Audit lines for denials and terminations, as JSON on stdout (what `kubectl logs` shows),
//! with flood control ([`aggregate`]): repeats are summed per window, and each event kind has a
//! budget of lines per second, so no sources, forged or not, can flood a pod's log.

mod aggregate;

pub use aggregate::{Aggregator, LineBudget};

use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

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
            AuditEvent::Denied => "connection_denied",
            AuditEvent::WouldDeny => "connection_would_deny",
            AuditEvent::WouldAllow => "connection_would_allow",
            AuditEvent::Terminated => "connection_terminated",
            AuditEvent::NoEndpoints => "no_endpoints",
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
    pub staged_by: Option<String>,
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

/// Writes one JSON line through tracing (the JSON formatter flattens these fields).
pub fn write_line(line: &AuditLine) {
    let r = &line.record;
    let (peer_namespace, peer_pod) = match r.peer_pod.as_deref().and_then(|p| p.split_once('/')) {
        Some((ns, name)) => (Some(ns), Some(name)),
        None => (None, None),
    };
    let isolated_by = r
        .verdict
        .as_ref()
        .map(|v| v.isolated_by())
        .unwrap_or_default()
        .iter()
        .map(|s| &**s)
        .collect::<Vec<_>>()
        .join(",");
    let reason = match (&r.verdict, r.event) {
        (Some(v), _) => v.to_string(),
        (None, AuditEvent::NoEndpoints) => "no ready endpoint behind the Service port".into(),
        (None, _) => String::new(),
    };
    let cnp = r.verdict.as_ref().and_then(CnpFields::of);
    let service = r.service.as_ref().map(|s| s.service.as_str());
    let backend = r
        .service
        .as_ref()
        .and_then(|s| s.backend)
        .map(|b| b.to_string());
    let endpoints_refused = r
        .service
        .as_ref()
        .filter(|s| !s.refused.is_empty())
        .map(|s| s.refused.join("; "));
    tracing::warn!(
        target: "portcullis::audit",
        event = r.event.as_str(),
        direction = r.direction.as_str(),
        src = %r.source,
        dst = %r.destination,
        protocol = r.protocol.as_str(),
        peer_namespace,
        peer_pod,
        pod = %r.pod,
        isolated_by = %isolated_by,
        tier = cnp.as_ref().map(|c| c.tier),
        policy = cnp.as_ref().map(|c| c.policy),
        rule = cnp.as_ref().map(|c| c.rule),
        action = cnp.as_ref().map(|c| c.action),
        reason = %reason,
        service,
        service_port = service.map(|_| r.destination.port()),
        backend = backend.as_deref(),
        endpoints_refused = endpoints_refused.as_deref(),
        staged_by = r.staged_by.as_deref(),
        policy_generation = r.generation,
        count = line.count,
        aggregated = line.aggregated,
        rate_limited = line.rate_limited,
    );
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
