//! Metric names, their help text, and the JSON log setup. Every metric is documented in the
//! README; labels are bounded (`direction`, `verdict`, `peer_namespace`, `reason`, `protocol`:
//! TCP, UDP or SCTP), never raw IPs.

use std::cell::RefCell;
use std::collections::HashMap;

use metrics::{
    describe_counter, describe_gauge, describe_histogram, Counter, Gauge, Histogram, Unit,
};
use portcullis_policy::{Direction, Protocol};

pub const CONNECTIONS: &str = "portcullis_connections_total";
pub const CONNECTIONS_ACTIVE: &str = "portcullis_connections_active";
pub const CONNECTIONS_REFUSED: &str = "portcullis_connections_refused_total";
pub const CONNECTIONS_TERMINATED: &str = "portcullis_connections_terminated_total";
pub const CONNECTION_DURATION: &str = "portcullis_connection_duration_seconds";
pub const CONNECT_ERRORS: &str = "portcullis_connect_errors_total";
pub const BYTES: &str = "portcullis_bytes_total";
pub const POLICY_GENERATION: &str = "portcullis_policy_generation";
pub const POLICY_LAST_RELOAD: &str = "portcullis_policy_last_reload_timestamp_seconds";
pub const POLICY_RELOAD_FAILURES: &str = "portcullis_policy_reload_failures_total";
pub const POLICY_STALE: &str = "portcullis_policy_stale";
pub const ADMIN_CONNECTIONS: &str = "portcullis_admin_connections";
pub const ADMIN_CONNECTIONS_REFUSED: &str = "portcullis_admin_connections_refused_total";
pub const ADMIN_CONNECTIONS_TIMED_OUT: &str = "portcullis_admin_connections_timed_out_total";
pub const ENFORCED_PROTOCOLS: &str = "portcullis_enforced_protocols";
pub const DATAGRAMS_MALFORMED: &str = "portcullis_datagrams_malformed_total";
pub const QUEUE_ERRORS: &str = "portcullis_queue_errors_total";
pub const AUDIT_LINES_FOLDED: &str = "portcullis_audit_lines_folded_total";
pub const STREAM_REJECTED: &str = "portcullis_stream_rejected_total";
pub const SERVICES: &str = "portcullis_services";
pub const SERVICE_CONNECTIONS: &str = "portcullis_service_connections_total";
pub const FLOW_RECORDS_DROPPED: &str = "portcullis_flow_records_dropped_total";
pub const STAGED_VERDICTS: &str = "portcullis_staged_verdicts_total";
/// Distinct `policy` label values of [`STAGED_VERDICTS`] one proxy reports; the rest are
/// counted as `_other`.
pub const STAGED_POLICY_LABELS_MAX: usize = 32;
/// Distinct `service` label values one proxy reports; the rest are counted as `_other`.
pub const SERVICE_LABELS_MAX: usize = 64;

pub fn describe() {
    use portcullis_contract::build;
    describe_gauge!(build::INFO_METRIC, build::INFO_HELP);
    metrics::gauge!(build::INFO_METRIC, "version" => build::VERSION, "commit" => build::COMMIT)
        .set(1.0);
    describe_connections();
    describe_policy();
    describe_admin();
    describe_queue_and_services();
}

/// The data path: decisions, refusals, terminations, bytes.
fn describe_connections() {
    describe_counter!(
        CONNECTIONS,
        "Connections (TCP) and new flows (UDP, SCTP) decided, by direction, protocol, verdict \
         (allow, deny, audit), tier (admin, network_policy, baseline, none) and peer namespace."
    );
    describe_gauge!(
        CONNECTIONS_ACTIVE,
        "Connections being proxied now, by direction."
    );
    describe_counter!(
        CONNECTIONS_REFUSED,
        "Connections and new flows refused before any policy decision, by direction, protocol \
         and reason (no_policy, max_connections, not_redirected, destination_not_pod, destination_loopback, original_destination_unreadable)."
    );
    describe_counter!(
        CONNECTIONS_TERMINATED,
        "Established connections (TCP) and flows (UDP, SCTP: conntrack entry deleted) closed \
         because a new policy table denies them, by direction and protocol."
    );
    describe_histogram!(
        CONNECTION_DURATION,
        Unit::Seconds,
        "Lifetime of proxied connections, by direction."
    );
    describe_counter!(
        CONNECT_ERRORS,
        "Failed connections to the application (ingress) or the upstream peer (egress)."
    );
    describe_counter!(
        BYTES,
        Unit::Bytes,
        "Bytes proxied, by direction and flow (from_peer, to_peer)."
    );
}

/// The policy table and its source.
fn describe_policy() {
    describe_gauge!(POLICY_GENERATION, "Generation of the policy table in use.");
    describe_gauge!(
        POLICY_LAST_RELOAD,
        Unit::Seconds,
        "Unix time at which the policy table in use was loaded."
    );
    describe_counter!(
        POLICY_RELOAD_FAILURES,
        "Policy changes that did not load (the previous table stayed in use)."
    );
    describe_gauge!(
        POLICY_STALE,
        "1 while the policy source is unreachable and the last good table is served."
    );
    describe_counter!(
        STREAM_REJECTED,
        "Controller streams ended because of a line this proxy cannot read, by reason \
         (version, unknown_kind, unknown_field, invalid, not_json, no_hello, repeated_hello, \
         too_long); the last good table stayed in use."
    );
}

/// The admin listener.
fn describe_admin() {
    describe_gauge!(
        ADMIN_CONNECTIONS,
        "Connections the admin listener holds now (at most --admin-max-connections)."
    );
    describe_counter!(
        ADMIN_CONNECTIONS_REFUSED,
        "Admin connections reset at once, by reason (max_connections, max_connections_per_peer)."
    );
    describe_counter!(
        ADMIN_CONNECTIONS_TIMED_OUT,
        "Admin connections closed for not sending a request head in time or moving no byte."
    );
}

/// The queue (UDP, SCTP, queued inbound TCP) and Services.
fn describe_queue_and_services() {
    describe_gauge!(
        ENFORCED_PROTOCOLS,
        "1 for each protocol (TCP, UDP, SCTP) this proxy enforces policy on, 0 when it does not \
         (--enforce-udp=false: UDP and SCTP pass unchecked)."
    );
    describe_counter!(
        DATAGRAMS_MALFORMED,
        "Queued UDP/SCTP packets dropped because they could not be read, by reason."
    );
    describe_counter!(
        FLOW_RECORDS_DROPPED,
        "Connections and flows not kept in the flow records because --flow-records-max keys \
         were already held in the period (still enforced and audited; each period that drops \
         some writes one flow_records_dropped line)."
    );
    describe_counter!(
        AUDIT_LINES_FOLDED,
        "Audit lines not written because their event kind's budget (--audit-lines-per-second) \
         was spent, by event; what they stood for is summed into one rate_limited line per kind \
         and second."
    );
    describe_counter!(
        QUEUE_ERRORS,
        "Errors reading the UDP/SCTP queue, answering it, or deleting conntrack entries, by \
         operation."
    );
    describe_gauge!(
        SERVICES,
        "Services with a virtual IP this proxy resolves connections to."
    );
    describe_counter!(
        STAGED_VERDICTS,
        "Connections and new flows whose verdict a staged policy would change, by effect \
         (would_deny, would_allow), direction and staged policy (the first 32 seen, then \
         _other); a verdict naming two staged policies counts for each."
    );
    describe_counter!(
        SERVICE_CONNECTIONS,
        "Connections to a Service's virtual IP, by service (namespace/name; at most 64 distinct, \
         then _other) and outcome (allow, deny, audit, no_endpoints, connect_failed)."
    );
}

/// Handles for the hot per-connection metrics of one direction, registered once.
#[derive(Clone)]
pub struct DirectionMetrics {
    pub active: Gauge,
    pub duration: Histogram,
    pub connect_errors: Counter,
    pub terminated: Counter,
    pub from_peer: Counter,
    pub to_peer: Counter,
}

impl DirectionMetrics {
    pub fn new(direction: Direction) -> Self {
        let d = direction.as_str();
        DirectionMetrics {
            active: metrics::gauge!(CONNECTIONS_ACTIVE, "direction" => d),
            duration: metrics::histogram!(CONNECTION_DURATION, "direction" => d),
            connect_errors: metrics::counter!(CONNECT_ERRORS, "direction" => d),
            terminated: metrics::counter!(CONNECTIONS_TERMINATED, "direction" => d, "protocol" => "TCP"),
            from_peer: metrics::counter!(BYTES, "direction" => d, "flow" => "from_peer"),
            to_peer: metrics::counter!(BYTES, "direction" => d, "flow" => "to_peer"),
        }
    }
}

/// Counts a TCP connection's decision: `verdict` is its label (allow, deny, audit), `tier` the
/// verdict's [`portcullis_policy::Verdict::tier_label`].
pub fn count_decision(
    direction: Direction,
    verdict: &'static str,
    tier: &'static str,
    peer_namespace: Option<&str>,
) {
    count_flow_decision(direction, Protocol::Tcp, verdict, tier, peer_namespace);
}

pub fn count_flow_decision(
    direction: Direction,
    protocol: Protocol,
    verdict: &'static str,
    tier: &'static str,
    peer_namespace: Option<&str>,
) {
    type Key = (Direction, Protocol, &'static str, &'static str);
    type ByNamespace = HashMap<Box<str>, Counter>;
    thread_local! {
        /// Counter handles already registered on this thread, so that a connection costs one
        /// small lookup here and no allocation, not a registry lookup with a freshly built label
        /// set. Bounded by the cluster's namespaces.
        static DECISIONS: RefCell<Vec<(Key, ByNamespace)>> =
            const { RefCell::new(Vec::new()) };
    }
    let namespace = peer_namespace.unwrap_or("");
    let key = (direction, protocol, verdict, tier);
    let register = || {
        metrics::counter!(
            CONNECTIONS,
            "direction" => direction.as_str(),
            "protocol" => protocol.as_str(),
            "verdict" => verdict,
            "tier" => tier,
            "peer_namespace" => namespace.to_string()
        )
    };
    let counted = DECISIONS.try_with(|cache| {
        let mut cache = cache.borrow_mut();
        let index = match cache.iter().position(|(k, _)| *k == key) {
            Some(i) => i,
            None => {
                cache.push((key, HashMap::new()));
                cache.len() - 1
            }
        };
        let by_namespace = &mut cache[index].1;
        match by_namespace.get(namespace) {
            Some(counter) => counter.increment(1),
            None => {
                let counter = register();
                counter.increment(1);
                by_namespace.insert(namespace.into(), counter);
            }
        }
    });
    if counted.is_err() {
        // The thread is going away: count without the cache.
        register().increment(1);
    }
}

/// Counts a connection to a Service, with a bounded `service` label.
pub fn count_service(service: &str, outcome: &'static str) {
    type ByOutcome = Vec<(&'static str, Counter)>;
    thread_local! {
        /// Handles registered on this thread, by service then outcome.
        static SERVICES: RefCell<HashMap<Box<str>, ByOutcome>> =
            RefCell::new(HashMap::new());
    }
    let counted = SERVICES.try_with(|cache| {
        let mut cache = cache.borrow_mut();
        if let Some(outcomes) = cache.get_mut(service) {
            if let Some((_, c)) = outcomes.iter().find(|(o, _)| *o == outcome) {
                c.increment(1);
                return;
            }
            let c = service_counter(service, outcome);
            c.increment(1);
            outcomes.push((outcome, c));
            return;
        }
        let c = service_counter(service, outcome);
        c.increment(1);
        // Services past the label bound all share `_other`; caching them by name would grow
        // without bound, so only labelled ones are kept.
        if service_label(service) != OTHER_SERVICES {
            cache.insert(service.into(), vec![(outcome, c)]);
        }
    });
    if counted.is_err() {
        service_counter(service, outcome).increment(1);
    }
}

const OTHER_SERVICES: &str = "_other";

/// The `service` label: the name for the first [`SERVICE_LABELS_MAX`] Services seen in this
/// process, `_other` after that.
fn service_label(service: &str) -> String {
    static SEEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    bounded_label(&SEEN, SERVICE_LABELS_MAX, service)
}

/// `value` if it is one of the first `max` values seen in `seen`, else `_other`.
fn bounded_label(seen: &std::sync::Mutex<Vec<String>>, max: usize, value: &str) -> String {
    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
    if seen.iter().any(|s| s == value) {
        value.to_string()
    } else if seen.len() < max {
        seen.push(value.to_string());
        value.to_string()
    } else {
        OTHER_SERVICES.to_string()
    }
}

/// Counts one verdict a staged policy would change, once for each staged policy it names.
pub fn count_staged(effect: &'static str, direction: Direction, staged_by: &[std::sync::Arc<str>]) {
    static SEEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    for policy in staged_by {
        let policy = bounded_label(&SEEN, STAGED_POLICY_LABELS_MAX, policy);
        metrics::counter!(
            STAGED_VERDICTS,
            "effect" => effect,
            "direction" => direction.as_str(),
            "policy" => policy
        )
        .increment(1);
    }
}

fn service_counter(service: &str, outcome: &'static str) -> Counter {
    metrics::counter!(SERVICE_CONNECTIONS, "service" => service_label(service), "outcome" => outcome)
}

pub fn count_refused(direction: Direction, reason: &'static str) {
    count_flow_refused(direction, Protocol::Tcp, reason);
}

pub fn count_flow_refused(direction: Direction, protocol: Protocol, reason: &'static str) {
    metrics::counter!(
        CONNECTIONS_REFUSED,
        "direction" => direction.as_str(),
        "protocol" => protocol.as_str(),
        "reason" => reason
    )
    .increment(1);
}

pub fn count_flow_terminated(direction: Direction, protocol: Protocol) {
    metrics::counter!(
        CONNECTIONS_TERMINATED,
        "direction" => direction.as_str(),
        "protocol" => protocol.as_str()
    )
    .increment(1);
}

/// `portcullis_enforced_protocols{protocol}`: TCP always, UDP and SCTP unless
/// `--enforce-udp=false`.
pub fn set_enforced_protocols(udp_and_sctp: bool) {
    metrics::gauge!(ENFORCED_PROTOCOLS, "protocol" => "TCP").set(1.0);
    for p in ["UDP", "SCTP"] {
        metrics::gauge!(ENFORCED_PROTOCOLS, "protocol" => p).set(if udp_and_sctp {
            1.0
        } else {
            0.0
        });
    }
}

/// JSON lines on stdout, one object per event with its fields at the top level, as log
/// pipelines and `kubectl logs | jq` expect.
pub fn init_logging(filter: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .map_err(|e| anyhow::anyhow!("--log `{filter}` is not a valid filter: {e}"))?;
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))
}
