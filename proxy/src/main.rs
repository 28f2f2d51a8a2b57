use clap::Parser;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

use portcullis_proxy::config::Config;
use portcullis_proxy::telemetry;

fn main() {
    let config = Config::parse();
    if let Err(e) = telemetry::init_logging(&config.log) {
        eprintln!("portcullis-proxy: {e:#}");
        std::process::exit(2);
    }
    if let Err(e) = run(config) {
        tracing::error!(event = "fatal", error = %format!("{e:#}"));
        eprintln!("portcullis-proxy: {e:#}");
        std::process::exit(1);
    }
}

fn run(config: Config) -> anyhow::Result<()> {
    if config.enforce_udp || config.proxy_mark.is_some() {
        // Before any thread exists: threads inherit the capabilities of their creator. The
        // NFQUEUE and SO_MARK (`--proxy-mark`) both need CAP_NET_ADMIN.
        if let Err(e) = portcullis_proxy::kernel::caps::raise_net_admin() {
            tracing::warn!(event = "capability_raise_failed", error = %e);
        }
    }
    // Each proxied connection holds two sockets (and, while data flows, pipes): lift the soft
    // file limit to the hard one, as proxies do; `--max-connections` is then fitted to it.
    portcullis_serve_guard::raise_nofile_limit();
    // One TLS provider for the controller client, chosen explicitly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let prometheus = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(telemetry::CONNECTION_DURATION.to_string()),
            &[0.001, 0.01, 0.1, 1.0, 10.0, 60.0, 600.0, 3600.0],
        )?
        .install_recorder()?;
    telemetry::describe();
    // The control plane (policy stream, admin port, audit) on one worker thread; the data plane
    // starts its own threads (`dataplane`). A worker thread rather than the main thread's
    // `block_on`: under a flood of admin connections (the slowloris test) it accepts and resets
    // promptly, and holds no more sockets than the cap.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(portcullis_proxy::run(config, Some(prometheus)))
}
