use clap::Parser;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

use portcullis_controller::config::Config;
use portcullis_controller::telemetry;

fn main() {
    let config = Config::parse();
    telemetry::init_logging(&config.log);
    if let Err(e) = run(config) {
        tracing::error!(event = "fatal", error = %format!("{e:#}"));
        eprintln!("portcullis-controller: {e:#}");
        std::process::exit(1);
    }
}

fn run(config: Config) -> anyhow::Result<()> {
    portcullis_controller::limits::raise_nofile_limit();
    // kube and the TLS server share one explicitly chosen provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let prometheus = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(telemetry::APPLY_SECONDS.to_string()),
            &[0.0001, 0.001, 0.01, 0.1, 0.5, 1.0, 5.0],
        )?
        .install_recorder()?;
    telemetry::describe();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(portcullis_controller::run(config, Some(prometheus)))
}
