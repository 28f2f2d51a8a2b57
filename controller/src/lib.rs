//! portcullis-controller: watches Namespaces, Pods and NetworkPolicies (and ClusterNetworkPolicies
//! and Nodes when their CRD is installed: `cnp_watch.rs`) once, keeps every pod's
//! compiled table up to date incrementally, and streams each proxy its own pod's table.
//!
//! Where to look: what an event recompiles is `state.rs` (pure); how tables reach proxies is
//! `hub.rs` (per-pod channels) and `serve.rs` (the HTTP stream); where events come from is
//! `file_source.rs` (`--policy-dir`) or `kube_watch.rs` (the API server); who may read which
//! table is `token_review.rs`.

pub mod admin;
pub mod cnp_watch;
pub mod config;
pub mod feed;
pub mod file_source;
pub mod hub;
pub mod kube_watch;
pub mod limits;
pub mod protection;
pub mod serve;
pub mod state;
pub mod telemetry;
pub mod token_review;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::hub::Hub;
use crate::serve::{ServeOptions, TableServer};
use crate::token_review::{Authenticator, TokenReviewer};
use portcullis_serve_guard::{Guard, Limits};

/// How often the serving certificate's files are checked for a new certificate.
const CERT_RELOAD_INTERVAL: Duration = Duration::from_secs(10);
/// How often the metrics recorder's upkeep and the hub's pruning run.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(30);

/// Runs until SIGTERM or SIGINT: then /ready turns 503, and after --shutdown-delay the streams
/// end (proxies reconnect to another replica) and the process exits.
pub async fn run(config: Config, prometheus: Option<PrometheusHandle>) -> anyhow::Result<()> {
    let (api_limits, admin_limits) = connection_limits(&config)?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let hub = Arc::new(Hub::new());
    let protection = Arc::new(protection::Protection::default());
    let cnps = Arc::new(match config.policy_dir {
        Some(_) => cnp_watch::CnpStatus::file_mode(),
        None => cnp_watch::CnpStatus::default(),
    });
    let tls = tls_acceptor(&config)?;
    let (auth, source) = start_source(&config, &hub, &protection, &cnps, &stop_rx).await?;
    let (listener, admin_listener) = bind(&config, tls.is_some()).await?;

    let server = TableServer::new(
        hub.clone(),
        auth,
        ServeOptions {
            heartbeat: config.heartbeat,
            limits: api_limits,
        },
    );
    let serving = tokio::spawn(server.serve(listener, tls, stop_rx.clone()));
    let admin = Arc::new(admin::Admin {
        hub: hub.clone(),
        protection,
        cnps,
        prometheus: prometheus.clone(),
        draining: Default::default(),
    });
    let (admin_stop_tx, admin_stop_rx) = watch::channel(false);
    let admin_guard = Guard::new(admin_limits, telemetry::guard_metrics("admin"));
    let admin_task = tokio::spawn(admin::serve(
        admin_listener,
        admin.clone(),
        admin_guard,
        admin_stop_rx,
    ));
    let upkeep = spawn_upkeep(prometheus, hub);

    tokio::select! {
        _ = sigterm.recv() => {}
        _ = sigint.recv() => {}
    }
    tracing::info!(
        event = "shutting_down",
        delay_ms = config.shutdown_delay.as_millis() as u64
    );
    admin.draining.store(true, Ordering::Relaxed);
    tokio::time::sleep(config.shutdown_delay).await;
    let _ = stop_tx.send(true);
    let _ = serving.await;
    let _ = source.await;
    upkeep.abort();
    let _ = admin_stop_tx.send(true);
    let _ = admin_task.await;
    tracing::info!(event = "stopped");
    Ok(())
}

/// The table API's TLS acceptor, with a certificate reloaded when its files change; `None`
/// without --tls-cert/--tls-key.
fn tls_acceptor(config: &Config) -> anyhow::Result<Option<tokio_rustls::TlsAcceptor>> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let reloading = portcullis_tls::ReloadingCert::load(cert.clone(), key.clone(), provider)
        .context("loading the serving certificate")?;
    reloading.spawn_watcher(CERT_RELOAD_INTERVAL, telemetry::CERT_RELOADS);
    Ok(Some(tokio_rustls::TlsAcceptor::from(
        reloading.server_config()?,
    )))
}

/// Starts what feeds the hub (the policy directory, or the API server's watches) and says who
/// may read tables.
async fn start_source(
    config: &Config,
    hub: &Arc<Hub>,
    protection: &Arc<protection::Protection>,
    cnps: &Arc<cnp_watch::CnpStatus>,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<(Authenticator, JoinHandle<()>)> {
    if let Some(dir) = &config.policy_dir {
        tracing::warn!(
            event = "authentication_disabled",
            policy_dir = %dir.display(),
            "file mode: tables are served to anyone who asks, without token review; for local testbeds only"
        );
        let source = tokio::spawn(file_source::run(
            dir.clone(),
            config.poll_interval,
            hub.clone(),
            stop.clone(),
        ));
        return Ok((Authenticator::Disabled, source));
    }
    let client = kube_watch::client().await?;
    let reviewer = TokenReviewer::new(
        client.clone(),
        config.token_audience.clone(),
        config.token_cache,
    );
    let source = tokio::spawn(kube_watch::run(
        client,
        hub.clone(),
        protection.clone(),
        cnps.clone(),
        stop.clone(),
    ));
    Ok((Authenticator::TokenReview(Box::new(reviewer)), source))
}

/// Binds the table API and the admin port, and says so.
async fn bind(config: &Config, tls: bool) -> anyhow::Result<(TcpListener, TcpListener)> {
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding the table API to {}", config.listen))?;
    let admin_listener = TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| format!("binding the admin endpoints to {}", config.admin_listen))?;
    tracing::info!(
        event = "started",
        listen = %config.listen,
        tls,
        admin = %config.admin_listen,
        mode = if config.policy_dir.is_some() { "file" } else { "kube" },
    );
    if !tls {
        tracing::warn!("no --tls-cert/--tls-key: the table API is plain HTTP");
    }
    Ok((listener, admin_listener))
}

/// Every [`UPKEEP_INTERVAL`]: the Prometheus recorder's upkeep and the hub's pruning.
fn spawn_upkeep(prometheus: Option<PrometheusHandle>, hub: Arc<Hub>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
        loop {
            tick.tick().await;
            if let Some(p) = &prometheus {
                p.run_upkeep();
            }
            hub.prune();
        }
    })
}

/// The table API's and the admin port's connection caps and timeouts; the table API's cap fitted
/// to the descriptor limit (with a warning when lowered).
fn connection_limits(config: &Config) -> anyhow::Result<(Limits, Limits)> {
    if config.idle_timeout <= config.heartbeat {
        anyhow::bail!(
            "--idle-timeout ({}) must be longer than --heartbeat ({}): quiet streams would be \
             closed between heartbeats",
            portcullis_contract::format_duration(config.idle_timeout),
            portcullis_contract::format_duration(config.heartbeat)
        );
    }
    let admin_max = config.admin_max_connections.max(1);
    let mut api_max = config.max_connections.max(1);
    if let Some(nofile) = limits::nofile_limit() {
        let (fitted, lowered) = limits::fit_api_connections(api_max, nofile, admin_max);
        if lowered {
            tracing::warn!(
                event = "max_connections_lowered",
                max_connections = api_max,
                rlimit_nofile = nofile,
                effective_max_connections = fitted,
                "the file descriptor limit (RLIMIT_NOFILE {nofile}) cannot hold --max-connections \
                 {api_max} next to the controller's own descriptors and the admin port's \
                 {admin_max}: holding at most {fitted} table API connections and resetting the \
                 rest; raise the limit or lower --max-connections"
            );
            api_max = fitted;
        }
    }
    let limits = |max_connections, max_connections_per_peer| Limits {
        max_connections,
        max_connections_per_peer,
        header_read_timeout: config.header_timeout,
        idle_timeout: config.idle_timeout,
    };
    Ok((
        limits(api_max, config.max_connections_per_peer),
        limits(admin_max, config.admin_max_connections_per_peer),
    ))
}
