//! Metric names and the Prometheus recorder. Served on the plain-HTTP admin port at `/metrics`.

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusRecorder};

/// Admission requests by `result`: injected, skipped, ignored, denied (a pod running as the
/// proxy's UID), error, invalid (HTTP 400).
pub const REQUESTS: &str = "portcullis_injector_requests_total";
/// Pods injected, by `sidecar_mode`.
pub const INJECTIONS: &str = "portcullis_injector_injections_total";
/// Pods left alone, by `reason`.
pub const SKIPS: &str = "portcullis_injector_skips_total";
/// Failures of the webhook itself (pod admitted untouched, or denied with --fail-closed), by
/// `kind`.
pub const ERRORS: &str = "portcullis_injector_errors_total";
/// Pod annotations ignored because their namespace does not allow pod overrides, by
/// `annotation`.
pub const IGNORED_OVERRIDES: &str = "portcullis_injector_ignored_overrides_total";
/// Warnings returned to users.
pub const WARNINGS: &str = "portcullis_injector_warnings_total";
/// Namespace look-ups, by `result`: cached, fetched, error.
pub const NAMESPACE_LOOKUPS: &str = "portcullis_injector_namespace_lookups_total";
/// Certificate reloads, by `result`: ok, error.
pub const CERT_RELOADS: &str = "portcullis_injector_cert_reloads_total";
/// Time to answer an admission request.
pub const REQUEST_DURATION: &str = "portcullis_injector_request_duration_seconds";

const DURATION_BUCKETS: [f64; 10] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
];

/// The recorder with this crate's histogram buckets. Install it globally
/// (`metrics::set_global_recorder`) in the binary; tests use it locally.
pub fn recorder() -> Result<PrometheusRecorder, BuildError> {
    Ok(PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(REQUEST_DURATION.to_string()),
            &DURATION_BUCKETS,
        )?
        .build_recorder())
}

/// Describe every metric (HELP lines).
pub fn describe() {
    use portcullis_contract::build;
    metrics::describe_gauge!(build::INFO_METRIC, build::INFO_HELP);
    metrics::gauge!(build::INFO_METRIC, "version" => build::VERSION, "commit" => build::COMMIT)
        .set(1.0);
    portcullis_tls::describe_metrics();
    metrics::describe_counter!(REQUESTS, "Admission requests, by result");
    metrics::describe_counter!(INJECTIONS, "Pods injected, by sidecar mode");
    metrics::describe_counter!(SKIPS, "Pods not injected, by reason");
    metrics::describe_counter!(
        ERRORS,
        "Webhook failures (pod admitted without the proxy, or denied with --fail-closed)"
    );
    metrics::describe_counter!(WARNINGS, "Warnings returned in admission responses");
    metrics::describe_counter!(
        IGNORED_OVERRIDES,
        "Enforcement-weakening pod annotations ignored (namespace does not allow pod overrides), by annotation"
    );
    metrics::describe_counter!(
        NAMESPACE_LOOKUPS,
        "Namespace annotation look-ups, by result"
    );
    metrics::describe_counter!(CERT_RELOADS, "Serving certificate reloads, by result");
    metrics::describe_histogram!(
        REQUEST_DURATION,
        metrics::Unit::Seconds,
        "Time to answer an admission request"
    );
}
