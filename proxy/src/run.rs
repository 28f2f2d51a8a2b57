//! The entry point: binds every socket, starts the policy source, the data plane, the queue and
//! the admin port, and drains on SIGTERM or SIGINT.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;

use crate::config::Config;
use crate::context::Context;
use crate::relay::{dataplane, listener};
use crate::source::{PodIdentity, PolicySource};
use crate::{admin, inbound, limits, mark, queue, revoke, telemetry};

/// Runs the proxy until SIGTERM or SIGINT, then drains.
pub async fn run(mut config: Config, prometheus: Option<PrometheusHandle>) -> anyhow::Result<()> {
    // Before anything can report ready: a SIGTERM must always mean "drain", never the default
    // action of dying on the spot.
    let shutdown_signal = ShutdownSignal::install()?;
    config.check()?;
    // Before any connection: an unmarked proxy would be redirected into itself.
    mark::install(config.proxy_mark)?;
    fit_max_connections(&mut config);
    let pod = PodIdentity {
        namespace: config.pod_namespace.clone(),
        name: config.pod_name.clone(),
        ips: config.pod_ips.clone(),
    };
    let source = PolicySource::from_config(&config)?;
    let ctx = Arc::new(Context::new(&config, pod.key())?);
    // Every socket is bound before anything starts: a port in use is a start error.
    let workers = dataplane::bind(
        &config.inbound_listen,
        &config.outbound_listen,
        config.worker_threads,
    )?;
    let admin_listener = listener::bind(config.admin_listen)
        .and_then(tokio::net::TcpListener::from_std)
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot bind the admin listener on {}: {e}",
                config.admin_listen
            )
        })?;
    log_start(&config, &pod.key());

    start_datagram_enforcement(&ctx, &config)?;
    tokio::spawn(source.run(pod, ctx.store.clone()));
    let admin_state = Arc::new(admin::AdminState {
        store: ctx.store.clone(),
        prometheus: prometheus.clone(),
        draining: Default::default(),
        pod: ctx.pod.clone(),
        udp_enforced: config.enforce_udp,
        inbound_tcp: config.inbound_tcp(),
        mode: config.mode,
        admin_port: config.admin_listen.port(),
        audit: ctx.audit.clone(),
        dns: ctx.dns.clone(),
    });
    // The admin port outlives the listeners: it answers /ready with 503 while draining.
    let (admin_stop_tx, admin_stop_rx) = watch::channel(false);
    tokio::spawn(admin::serve(
        admin_listener,
        admin_state.clone(),
        admin_guard(&config),
        admin_stop_rx,
    ));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut data_plane = dataplane::DataPlane::start(&ctx, workers, &stop_rx)?;
    spawn_housekeeping(&ctx, &config, prometheus);

    shutdown_signal.recv().await;
    // Close the listeners first (connections still queued are reset), then report not ready.
    stop_tx.send_replace(true);
    data_plane.listeners_closed().await;
    admin_state.draining.store(true, Ordering::Relaxed);
    drain(&ctx, &config, data_plane).await;
    admin_stop_tx.send_replace(true);
    Ok(())
}

fn log_start(config: &Config, pod: &str) {
    tracing::info!(
        event = "starting",
        pod,
        mode = config.mode.as_str(),
        on_policy_change = config.on_policy_change.as_str(),
        inbound = %addresses(&config.inbound_listen),
        outbound = %addresses(&config.outbound_listen),
        admin = %config.admin_listen,
        worker_threads = config.worker_threads,
        max_connections = config.max_connections,
        admin_max_connections = config.admin_max_connections,
        enforced_protocols = if config.enforce_udp { "every IP protocol but ICMP" } else { "TCP" },
        inbound_tcp = config.inbound_tcp().as_str(),
        flow_summary_interval = %portcullis_contract::format_duration(config.flow_summary_interval),
        flow_records_max = config.flow_records_max,
        version = env!("CARGO_PKG_VERSION"),
    );
}

/// `a,b,c`: listener addresses as one log field.
fn addresses(addrs: &[std::net::SocketAddr]) -> String {
    addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Audit lines flushed every second; flow records written every `--flow-summary-interval`; the Prometheus recorder's upkeep every five.
fn spawn_housekeeping(ctx: &Arc<Context>, config: &Config, prometheus: Option<PrometheusHandle>) {
    if let Some(flows) = &ctx.flows {
        crate::flows::spawn_emitter(flows.clone(), config.flow_summary_interval);
    }
    let audit_ctx = ctx.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            audit_ctx.audit.flush();
        }
    });
    if let Some(handle) = prometheus {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                handle.run_upkeep();
            }
        });
    }
}

/// Waits up to `--shutdown-grace` for the open connections to end, then cuts the rest.
async fn drain(ctx: &Context, config: &Config, data_plane: dataplane::DataPlane) {
    let active = config.max_connections - ctx.connection_slots.available_permits();
    tracing::info!(
        event = "draining",
        active_connections = active,
        grace = %portcullis_contract::format_duration(config.shutdown_grace)
    );
    let drained = tokio::time::timeout(
        config.shutdown_grace,
        ctx.connection_slots
            .acquire_many(config.max_connections as u32),
    )
    .await
    .is_ok();
    let left = config.max_connections - ctx.connection_slots.available_permits();
    data_plane.exit().await;
    ctx.audit.flush();
    if let Some(flows) = &ctx.flows {
        flows.emit();
    }
    tracing::info!(
        event = "stopped",
        drained,
        connections_cut = if drained { 0 } else { left }
    );
}

/// The admin listener's connection cap and timeouts.
fn admin_guard(config: &Config) -> Arc<portcullis_serve_guard::Guard> {
    use portcullis_serve_guard::{Guard, GuardMetrics, Limits};
    use telemetry::{ADMIN_CONNECTIONS, ADMIN_CONNECTIONS_REFUSED, ADMIN_CONNECTIONS_TIMED_OUT};
    Guard::new(
        Limits {
            max_connections: config.admin_max_connections,
            max_connections_per_peer: config.admin_max_connections_per_peer,
            header_read_timeout: config.admin_header_timeout,
            idle_timeout: config.admin_idle_timeout,
        },
        GuardMetrics {
            active: Some(metrics::gauge!(ADMIN_CONNECTIONS)),
            refused_full: Some(
                metrics::counter!(ADMIN_CONNECTIONS_REFUSED, "reason" => "max_connections"),
            ),
            refused_peer_full: Some(
                metrics::counter!(ADMIN_CONNECTIONS_REFUSED, "reason" => "max_connections_per_peer"),
            ),
            timed_out: Some(metrics::counter!(ADMIN_CONNECTIONS_TIMED_OUT)),
        },
    )
}

/// UDP and SCTP: the queue reader and revocation, or, with `--enforce-udp=false`, a warning
/// that says they pass unchecked.
fn start_datagram_enforcement(ctx: &Arc<Context>, config: &Config) -> anyhow::Result<()> {
    telemetry::set_enforced_protocols(config.enforce_udp);
    if config.enforce_udp {
        queue::start(ctx, config)?;
        crate::dns::reader::start(ctx)?;
        revoke::start_sweep(ctx, config);
        tracing::info!(
            event = "udp_enforced",
            nfqueue = config.nfqueue,
            "new flows of every IP protocol but ICMP (UDP, SCTP, UDP-Lite, GRE, ...) and inbound \
             TCP connections are decided on their first packet from NFQUEUE {}",
            config.nfqueue
        );
        inbound::log_mode(config);
    } else {
        tracing::warn!(
            event = "udp_not_enforced",
            "UDP, SCTP and the other non-TCP protocols are NOT enforced \
             (PORTCULLIS_ENFORCE_UDP=false): every such flow passes whatever the policy says; \
             only TCP is enforced"
        );
    }
    Ok(())
}

/// Lowers `--max-connections` to what the descriptor limit can hold, saying so: beyond it the
/// proxy resets new connections cleanly instead of failing with `EMFILE` mid-flight. The admin
/// listener's share (`--admin-max-connections`) is set aside first: it can never take the data
/// path's descriptors.
fn fit_max_connections(config: &mut Config) {
    config.admin_max_connections = config.admin_max_connections.max(1);
    let Some(nofile) = limits::nofile_limit() else {
        return;
    };
    let requested = config.max_connections;
    let (effective, lowered) = limits::effective_max_connections(
        requested,
        nofile,
        config.worker_threads,
        config.admin_max_connections,
    );
    if lowered {
        let admin = config.admin_max_connections;
        tracing::warn!(
            event = "max_connections_lowered",
            max_connections = requested,
            rlimit_nofile = nofile,
            effective_max_connections = effective,
            "the file descriptor limit (RLIMIT_NOFILE {nofile}) cannot hold --max-connections \
             {requested} (2 descriptors per connection, plus pipes while data moves, the \
             proxy's own and the admin port's {admin}): accepting at most {effective} \
             connections at once and resetting the rest; raise the limit or lower \
             --max-connections",
        );
        config.max_connections = effective;
    }
}

struct ShutdownSignal {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl ShutdownSignal {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(ShutdownSignal {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn recv(mut self) {
        tokio::select! {
            _ = self.term.recv() => {},
            _ = self.int.recv() => {},
        }
    }
}
