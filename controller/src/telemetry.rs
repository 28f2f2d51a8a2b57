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
pub const SERVICES: &str = "portcullis_controller_services";
pub const STREAM_SERVICE_UPDATES: &str = "portcullis_controller_stream_service_updates_total";
/// Pods of opted-in namespaces that run without the proxy or with an exemption, per reason.
pub const UNPROTECTED_PODS: &str = "portcullis_unprotected_pods";

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
