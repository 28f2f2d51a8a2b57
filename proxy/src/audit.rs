//! Audit lines for denials, as JSON on stdout (what `kubectl logs` shows), with flood control.
//!
//! The first denial of a (direction, peer, port) is written at once; repeats within the window
//! are counted and written as one line with `count` when the window ends, so a port scan costs
//! a bounded number of lines.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use portcullis_policy::{Direction, Protocol, Verdict};

/// What kind of audit line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuditEvent {
    /// Refused (enforce mode).
    Denied,
    /// Allowed only because of audit mode.
    WouldDeny,
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct DenialKey {
    event: AuditEvent,
    protocol: Protocol,
    direction: Direction,
    peer: IpAddr,
    port: u16,
}

struct Window {
    started: Instant,
    repeats: u64,
    last: AuditRecord,
}

/// Flood control, as plain state: the caller supplies the clock.
///
/// Not a TTL cache crate (`moka`): when a window ends it must *write* a summary line, on the
/// caller's flush tick and clock (tests drive both); moka expires entries lazily on its own clock
/// and offers no ordered, synchronous "window closed" hook to write from.
pub struct Aggregator {
    window: Duration,
    capacity: usize,
    windows: HashMap<DenialKey, Window>,
    /// Denials not tracked individually because `capacity` distinct keys were already open.
    overflow: Option<(u64, AuditRecord)>,
}

impl Aggregator {
    pub fn new(window: Duration, capacity: usize) -> Self {
        Aggregator {
            window,
            capacity,
            windows: HashMap::new(),
            overflow: None,
        }
    }

    /// Records one denial. Returns the lines to write now.
    pub fn record(&mut self, record: AuditRecord, now: Instant) -> Vec<AuditLine> {
        if record.event == AuditEvent::Terminated || self.window.is_zero() {
            return vec![single(record)];
        }
        let key = DenialKey {
            event: record.event,
            protocol: record.protocol,
            direction: record.direction,
            peer: record.peer(),
            port: record.destination.port(),
        };
        let mut out = Vec::new();
        if let Some(w) = self.windows.get_mut(&key) {
            if now.duration_since(w.started) < self.window {
                w.repeats += 1;
                w.last = record;
                return out;
            }
            if let Some(summary) = summary_of(w) {
                out.push(summary);
            }
            self.windows.remove(&key);
        }
        if self.windows.len() >= self.capacity {
            let entry = self.overflow.get_or_insert_with(|| (0, record.clone()));
            entry.0 += 1;
            entry.1 = record;
            return out;
        }
        self.windows.insert(
            key,
            Window {
                started: now,
                repeats: 0,
                last: record.clone(),
            },
        );
        out.push(single(record));
        out
    }

    /// Closes the windows that have ended. Returns their summaries.
    pub fn flush(&mut self, now: Instant) -> Vec<AuditLine> {
        let mut out = Vec::new();
        let window = self.window;
        self.windows.retain(|_, w| {
            if now.duration_since(w.started) < window {
                return true;
            }
            if let Some(summary) = summary_of(w) {
                out.push(summary);
            }
            false
        });
        if let Some((count, record)) = self.overflow.take() {
            out.push(AuditLine {
                record,
                count,
                aggregated: true,
            });
        }
        out
    }

    pub fn open_windows(&self) -> usize {
        self.windows.len()
    }
}

fn single(record: AuditRecord) -> AuditLine {
    AuditLine {
        record,
        count: 1,
        aggregated: false,
    }
}

fn summary_of(w: &Window) -> Option<AuditLine> {
    (w.repeats > 0).then(|| AuditLine {
        record: w.last.clone(),
        count: w.repeats,
        aggregated: true,
    })
}

/// The process-wide audit log: an [`Aggregator`] behind a mutex held only for a map update.
pub struct AuditLog {
    aggregator: Mutex<Aggregator>,
}

impl AuditLog {
    pub fn new(window: Duration) -> Self {
        AuditLog {
            aggregator: Mutex::new(Aggregator::new(window, 4096)),
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
        reason = %reason,
        service,
        service_port = service.map(|_| r.destination.port()),
        backend = backend.as_deref(),
        endpoints_refused = endpoints_refused.as_deref(),
        policy_generation = r.generation,
        count = line.count,
        aggregated = line.aggregated,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_policy::Reason;
    use std::sync::Arc;

    fn denial(peer: &str, port: u16) -> AuditRecord {
        AuditRecord {
            event: AuditEvent::Denied,
            direction: Direction::Ingress,
            source: format!("{peer}:40000").parse().expect("addr"),
            destination: format!("10.0.0.1:{port}").parse().expect("addr"),
            peer_pod: None,
            pod: "x/a".into(),
            verdict: Some(Verdict {
                direction: Direction::Ingress,
                reason: Reason::NoRuleMatched {
                    isolated_by: Arc::from(vec![Arc::from("x/deny-all")]),
                },
            }),
            generation: 1,
            protocol: Protocol::Tcp,
            service: None,
        }
    }

    #[test]
    fn first_denial_is_written_at_once_and_repeats_are_summed() {
        let mut a = Aggregator::new(Duration::from_secs(10), 100);
        let t0 = Instant::now();
        assert_eq!(a.record(denial("10.0.0.9", 80), t0).len(), 1);
        for i in 0..99 {
            assert!(a
                .record(denial("10.0.0.9", 80), t0 + Duration::from_millis(i))
                .is_empty());
        }
        assert!(
            a.flush(t0 + Duration::from_secs(5)).is_empty(),
            "window still open"
        );
        let summary = a.flush(t0 + Duration::from_secs(11));
        assert_eq!(summary.len(), 1);
        assert_eq!(summary[0].count, 99);
        assert!(summary[0].aggregated);
        assert_eq!(a.open_windows(), 0);
    }

    #[test]
    fn different_ports_and_peers_are_separate_lines() {
        let mut a = Aggregator::new(Duration::from_secs(10), 100);
        let t0 = Instant::now();
        assert_eq!(a.record(denial("10.0.0.9", 80), t0).len(), 1);
        assert_eq!(a.record(denial("10.0.0.9", 81), t0).len(), 1);
        assert_eq!(a.record(denial("10.0.0.8", 80), t0).len(), 1);
        let udp = AuditRecord {
            protocol: Protocol::Udp,
            ..denial("10.0.0.9", 80)
        };
        assert_eq!(a.record(udp, t0).len(), 1, "UDP and TCP are separate lines");
    }

    #[test]
    fn a_scan_beyond_capacity_costs_one_line() {
        let mut a = Aggregator::new(Duration::from_secs(10), 10);
        let t0 = Instant::now();
        let mut written = 0;
        for port in 1..=1000 {
            written += a.record(denial("10.0.0.9", port), t0).len();
        }
        assert_eq!(written, 10);
        let summary = a.flush(t0 + Duration::from_secs(11));
        assert_eq!(summary.len(), 1);
        assert_eq!(summary[0].count, 990);
    }

    #[test]
    fn a_repeat_after_the_window_is_written_again() {
        let mut a = Aggregator::new(Duration::from_secs(1), 100);
        let t0 = Instant::now();
        a.record(denial("10.0.0.9", 80), t0);
        a.record(denial("10.0.0.9", 80), t0);
        let lines = a.record(denial("10.0.0.9", 80), t0 + Duration::from_secs(2));
        assert_eq!(
            lines.len(),
            2,
            "summary of the old window, then the new denial"
        );
        assert_eq!(lines[0].count, 1);
        assert!(!lines[1].aggregated);
    }
}
