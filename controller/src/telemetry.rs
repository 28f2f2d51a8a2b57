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

/// Connections held, refused at the cap, closed by a timeout; label `server` (`api`, `admin`).
pub const CONNECTIONS: &str = "portcullis_controller_connections";
pub const CONNECTIONS_REFUSED: &str = "portcullis_controller_connections_refused_total";
pub const CONNECTIONS_TIMED_OUT: &str = "portcullis_controller_connections_timed_out_total";

/// HELP text for every controller metric (`promtool check metrics` wants one per family), and
/// `portcullis_build_info{version,commit} 1`. Call once, after installing the recorder.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    use portcullis_contract::build;
    describe_gauge!(build::INFO_METRIC, build::INFO_HELP);
    metrics::gauge!(build::INFO_METRIC, "version" => build::VERSION, "commit" => build::COMMIT)
        .set(1.0);
    describe_gauge!(GENERATION, "Generation of the tables the controller serves; every change of the cluster's state adds one.");
    describe_gauge!(PODS, "Pods the controller knows (with an address).");
    describe_gauge!(POLICIES, "NetworkPolicies the controller knows.");
    describe_gauge!(SERVICES, "Services the controller serves to proxies.");
    describe_counter!(TABLES_CHANGED, "Per-pod tables changed by applied updates.");
    describe_counter!(
        OBJECTS_REJECTED,
        "Objects left out because they are invalid (the log names each)."
    );
    describe_gauge!(STREAMS_ACTIVE, "Proxies connected to the table stream.");
    describe_counter!(STREAM_UPDATES, "Table updates sent to proxies.");
    describe_counter!(STREAM_SERVICE_UPDATES, "Service updates sent to proxies.");
    describe_counter!(
        STREAM_BYTES,
        Unit::Bytes,
        "Bytes sent on the table streams."
    );
    describe_counter!(
        AUTH_FAILURES,
        "Proxy connections refused at authentication, by reason."
    );
    describe_counter!(
        WATCH_EVENTS,
        "Watch events received from the API server, by kind."
    );
    describe_counter!(
        WATCH_ERRORS,
        "Watch errors (retried with backoff), by kind."
    );
    describe_histogram!(
        APPLY_SECONDS,
        Unit::Seconds,
        "Time to apply one change of the cluster's state to the tables."
    );
    describe_gauge!(UNPROTECTED_PODS, "Pods of opted-in namespaces running without the proxy or with an exemption, by namespace and reason.");
    describe_gauge!(CONNECTIONS, "Connections held, by server (api, admin).");
    describe_counter!(
        CONNECTIONS_REFUSED,
        "Connections refused at a cap, by server and reason."
    );
    describe_counter!(
        CONNECTIONS_TIMED_OUT,
        "Connections closed by a timeout, by server."
    );
    describe_counter!(
        CERT_RELOADS,
        "Serving certificate reloads (rotated Secret files)."
    );
    portcullis_tls::describe_metrics();
}

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

#[cfg(test)]
mod tests {
    use super::*;

    /// `promtool check metrics` wants HELP for every family: each metric the controller exports
    /// has it, and build_info carries version and commit.
    #[test]
    fn every_metric_has_help_and_build_info_is_exported() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            describe();
            for name in [
                GENERATION,
                PODS,
                POLICIES,
                SERVICES,
                STREAMS_ACTIVE,
                CONNECTIONS,
                UNPROTECTED_PODS,
            ] {
                metrics::gauge!(name).set(1.0);
            }
            for name in [
                TABLES_CHANGED,
                OBJECTS_REJECTED,
                STREAM_UPDATES,
                STREAM_SERVICE_UPDATES,
                STREAM_BYTES,
                AUTH_FAILURES,
                WATCH_EVENTS,
                WATCH_ERRORS,
                CONNECTIONS_REFUSED,
                CONNECTIONS_TIMED_OUT,
                CERT_RELOADS,
            ] {
                metrics::counter!(name).increment(1);
            }
            metrics::histogram!(APPLY_SECONDS).record(0.01);
        });
        let text = handle.render();
        portcullis_netns::testing::admin::promtool_check_metrics(&text);
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let name = line.split_whitespace().nth(2).unwrap_or_default();
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} has no HELP:\n{text}"
            );
        }
        assert!(
            text.contains(&format!(
                "portcullis_build_info{{version=\"{}\",commit=\"",
                portcullis_contract::build::VERSION
            )),
            "{text}"
        );
    }
}
