//! Metric names, in one place so that dashboards and code agree.

pub const GENERATION: &str = "portcullis_controller_generation";
pub const PODS: &str = "portcullis_controller_pods";
pub const POLICIES: &str = "portcullis_controller_policies";
pub const TABLES_CHANGED: &str = "portcullis_controller_tables_changed_total";
pub const OBJECTS_REJECTED: &str = "portcullis_controller_objects_rejected_total";
pub const STREAMS_ACTIVE: &str = "portcullis_controller_streams_active";
pub const STREAM_UPDATES: &str = "portcullis_controller_stream_updates_total";
pub const STREAM_BYTES: &str = "portcullis_controller_stream_bytes_total";
pub const AUTH_FAILURES: &str = "portcullis_controller_auth_failures_total";
pub const WATCH_EVENTS: &str = "portcullis_controller_watch_events_total";
pub const WATCH_ERRORS: &str = "portcullis_controller_watch_errors_total";
pub const APPLY_SECONDS: &str = "portcullis_controller_apply_seconds";
/// Pods of opted-in namespaces that run without the proxy or with an exemption, per reason.
pub const UNPROTECTED_PODS: &str = "portcullis_unprotected_pods";

/// Connections held, refused at the cap, closed by a timeout; label `server` (`api`, `admin`).
pub const CONNECTIONS: &str = "portcullis_controller_connections";
pub const CONNECTIONS_REFUSED: &str = "portcullis_controller_connections_refused_total";
pub const CONNECTIONS_TIMED_OUT: &str = "portcullis_controller_connections_timed_out_total";

/// The guard metrics of one server (`api` or `admin`).
pub fn guard_metrics(server: &'static str) -> portcullis_serve_guard::GuardMetrics {
    portcullis_serve_guard::GuardMetrics {
        active: Some(metrics::gauge!(CONNECTIONS, "server" => server)),
        refused_full: Some(metrics::counter!(
            CONNECTIONS_REFUSED, "server" => server, "reason" => "max_connections"
        )),
        refused_peer_full: Some(metrics::counter!(
            CONNECTIONS_REFUSED, "server" => server, "reason" => "max_connections_per_peer"
        )),
        timed_out: Some(metrics::counter!(CONNECTIONS_TIMED_OUT, "server" => server)),
    }
}

/// JSON log lines on stdout, like the proxy's.
pub fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_target(false)
        .with_env_filter(filter)
        .init();
}
pub const CERT_RELOADS: &str = "portcullis_controller_cert_reloads_total";
