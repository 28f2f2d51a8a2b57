//! Metric names, their help text, and the JSON log setup. Every metric is documented in the
//! README; labels are bounded (`direction`, `verdict`, `peer_namespace`, `reason`), never raw IPs.

use metrics::{
    describe_counter, describe_gauge, describe_histogram, Counter, Gauge, Histogram, Unit,
};
use portcullis_policy::Direction;

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

pub fn describe() {
    describe_counter!(
        CONNECTIONS,
        "Connections decided, by direction, verdict (allow, deny, audit) and peer namespace."
    );
    describe_gauge!(
        CONNECTIONS_ACTIVE,
        "Connections being proxied now, by direction."
    );
    describe_counter!(
        CONNECTIONS_REFUSED,
        "Connections refused before any policy decision, by direction and reason \
         (no_policy, max_connections, not_redirected, destination_not_pod, destination_loopback, \
         original_destination_unreadable)."
    );
    describe_counter!(
        CONNECTIONS_TERMINATED,
        "Established connections closed because a new policy table denies them."
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
    describe_gauge!(
        POLICY_STALE,
        "1 while the policy source is unreachable and the last good table is served."
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
            terminated: metrics::counter!(CONNECTIONS_TERMINATED, "direction" => d),
            from_peer: metrics::counter!(BYTES, "direction" => d, "flow" => "from_peer"),
            to_peer: metrics::counter!(BYTES, "direction" => d, "flow" => "to_peer"),
        }
    }
}

pub fn count_decision(direction: Direction, verdict: &'static str, peer_namespace: Option<&str>) {
    metrics::counter!(
        CONNECTIONS,
        "direction" => direction.as_str(),
        "verdict" => verdict,
        "peer_namespace" => peer_namespace.unwrap_or("").to_string()
    )
    .increment(1);
}

pub fn count_refused(direction: Direction, reason: &'static str) {
    metrics::counter!(CONNECTIONS_REFUSED, "direction" => direction.as_str(), "reason" => reason)
        .increment(1);
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
