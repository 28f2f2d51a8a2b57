//! `portcullis-injector`: see the crate README for flags, annotations and the sidecar modes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use portcullis_injector::config::{ProxyResources, DEFAULT_CONTROLLER_URL, VERSION};
use portcullis_injector::server::namespaces::{ApiNamespaces, NamespaceSource};
use portcullis_injector::server::tls::ReloadingCert;
use portcullis_injector::server::{self, AppState};
use portcullis_injector::values::{
    CidrList, LogLevel, PolicyMode, PortList, Quantity, SidecarMode, Switch,
};
use portcullis_injector::InjectorConfig;
use tokio::net::TcpListener;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// Kubernetes mutating admission webhook that adds the Portcullis init container and proxy
/// sidecar to pods in namespaces labelled `portcullis.dev/inject=enabled`.
///
/// Serves `POST /mutate` over HTTPS (certificate reloaded when its files change) and
/// `/healthz`, `/metrics` over plain HTTP. Every pod-level default below can be overridden
/// per pod, or per namespace, with `portcullis.dev/*` annotations (see the README).
#[derive(Debug, Parser)]
#[command(name = "portcullis-injector", version, about, long_about)]
struct Args {
    /// HTTPS address of the webhook (`POST /mutate`).
    #[arg(
        long,
        env = "PORTCULLIS_INJECTOR_LISTEN",
        default_value = "0.0.0.0:8443"
    )]
    listen: SocketAddr,

    /// Plain-HTTP address of `/healthz` and `/metrics`.
    #[arg(
        long,
        env = "PORTCULLIS_INJECTOR_ADMIN_LISTEN",
        default_value = "0.0.0.0:9090"
    )]
    admin_listen: SocketAddr,

    /// PEM certificate chain of the webhook (reloaded when it changes).
    #[arg(
        long,
        env = "PORTCULLIS_INJECTOR_TLS_CERT",
        default_value = "/etc/portcullis/tls/tls.crt"
    )]
    tls_cert: PathBuf,

    /// PEM private key of the webhook (reloaded when it changes).
    #[arg(
        long,
        env = "PORTCULLIS_INJECTOR_TLS_KEY",
        default_value = "/etc/portcullis/tls/tls.key"
    )]
    tls_key: PathBuf,

    /// How often to check the certificate files for changes, in seconds.
    #[arg(long, env = "PORTCULLIS_INJECTOR_CERT_RELOAD_SECONDS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    cert_reload_seconds: u64,

    /// Deny pods when the injector fails, instead of admitting them without the proxy (also
    /// set `failurePolicy: Fail` on the webhook for a fully fail-closed posture).
    #[arg(long, env = "PORTCULLIS_INJECTOR_FAIL_CLOSED")]
    fail_closed: bool,

    /// Image of the proxy sidecar.
    #[arg(long, env = "PORTCULLIS_INJECTOR_PROXY_IMAGE",
          default_value = concat!("ghcr.io/portcullis-dev/portcullis-proxy:", env!("CARGO_PKG_VERSION")))]
    proxy_image: String,

    /// Image of the init container that installs the redirect rules.
    #[arg(long, env = "PORTCULLIS_INJECTOR_INIT_IMAGE",
          default_value = concat!("ghcr.io/portcullis-dev/portcullis-init:", env!("CARGO_PKG_VERSION")))]
    init_image: String,

    /// imagePullPolicy of the injected containers (unset: Kubernetes' default for the tag).
    #[arg(long, env = "PORTCULLIS_INJECTOR_IMAGE_PULL_POLICY", value_enum)]
    image_pull_policy: Option<PullPolicy>,

    /// URL of the Portcullis controller, given to the proxy as PORTCULLIS_CONTROLLER.
    #[arg(long, env = "PORTCULLIS_INJECTOR_CONTROLLER_URL", default_value = DEFAULT_CONTROLLER_URL)]
    controller_url: String,

    /// PEM file of the CA that signs the controller's certificate (with cert-manager: `ca.crt`
    /// of the injector's own TLS Secret, same CA). Injected into the proxy as
    /// PORTCULLIS_CONTROLLER_CA_PEM. Unset: the proxy falls back to the cluster CA file.
    #[arg(long, env = "PORTCULLIS_INJECTOR_CONTROLLER_CA_FILE")]
    controller_ca_file: Option<std::path::PathBuf>,

    /// Default sidecar mode: `native` (Kubernetes ≥ 1.29, proxy as an init container with
    /// restartPolicy Always) or `classic` (proxy as the first container). Annotation:
    /// portcullis.dev/sidecar-mode.
    #[arg(
        long,
        env = "PORTCULLIS_INJECTOR_SIDECAR_MODE",
        default_value = "native"
    )]
    sidecar_mode: SidecarMode,

    /// Default policy mode of the proxy: `enforce` or `audit`. Annotation:
    /// portcullis.dev/policy-mode.
    #[arg(
        long,
        env = "PORTCULLIS_INJECTOR_POLICY_MODE",
        default_value = "enforce"
    )]
    policy_mode: PolicyMode,

    /// Default log filter of the proxy (PORTCULLIS_LOG). Annotation: portcullis.dev/log-level.
    #[arg(
        long,
        env = "PORTCULLIS_INJECTOR_PROXY_LOG_LEVEL",
        default_value = "info"
    )]
    proxy_log_level: LogLevel,

    /// Default CPU request of the proxy; empty for none. Annotation:
    /// portcullis.dev/proxy-cpu-request.
    #[arg(
        long,
        env = "PORTCULLIS_INJECTOR_PROXY_CPU_REQUEST",
        default_value = "10m"
    )]
    proxy_cpu_request: String,

    /// Default CPU limit of the proxy; empty (the default) for none. Annotation:
    /// portcullis.dev/proxy-cpu-limit.
    #[arg(long, env = "PORTCULLIS_INJECTOR_PROXY_CPU_LIMIT", default_value = "")]
    proxy_cpu_limit: String,

    /// Default memory request of the proxy; empty for none. Annotation:
    /// portcullis.dev/proxy-memory-request.
    #[arg(
        long,
        env = "PORTCULLIS_INJECTOR_PROXY_MEMORY_REQUEST",
        default_value = "32Mi"
    )]
    proxy_memory_request: String,

    /// Default memory limit of the proxy; empty for none. Annotation:
    /// portcullis.dev/proxy-memory-limit.
    #[arg(
        long,
        env = "PORTCULLIS_INJECTOR_PROXY_MEMORY_LIMIT",
        default_value = "256Mi"
    )]
    proxy_memory_limit: String,

    /// Default inbound ports that bypass the proxy (`22,8000-8100`). Annotation:
    /// portcullis.dev/skip-inbound-ports.
    #[arg(
        long,
        env = "PORTCULLIS_INJECTOR_SKIP_INBOUND_PORTS",
        default_value = ""
    )]
    skip_inbound_ports: PortList,

    /// Default outbound ports that bypass the proxy. Annotation:
    /// portcullis.dev/skip-outbound-ports.
    #[arg(
        long,
        env = "PORTCULLIS_INJECTOR_SKIP_OUTBOUND_PORTS",
        default_value = ""
    )]
    skip_outbound_ports: PortList,

    /// Default outbound CIDRs that bypass the proxy (`10.0.0.0/8,fd00::/8`). Annotation:
    /// portcullis.dev/skip-outbound-cidrs.
    #[arg(
        long,
        env = "PORTCULLIS_INJECTOR_SKIP_OUTBOUND_CIDRS",
        default_value = ""
    )]
    skip_outbound_cidrs: CidrList,

    /// The cluster's Service ranges, IPv4 and IPv6 (the API server's
    /// `--service-cluster-ip-range`), comma-separated. Outbound TCP to them is relayed so that
    /// the proxy picks an allowed backend; all other outbound TCP is judged on its first packet.
    /// A ClusterIP outside these ranges is still judged, on every backend it may reach (stricter,
    /// never open). Empty: portcullis-init's default, 10.96.0.0/12 (kubeadm's).
    #[arg(long, env = "PORTCULLIS_INJECTOR_SERVICE_CIDRS", default_value = "")]
    service_cidrs: CidrList,

    /// UID (and GID) of the proxy. Its connections are exempt from the outbound redirect, so
    /// pods that set this runAsUser on any container (or the pod) are refused. Must match what
    /// the proxy image expects; not 0.
    #[arg(long, env = "PORTCULLIS_INJECTOR_PROXY_UID", default_value_t = i64::from(portcullis_contract::PROXY_UID),
          value_parser = clap::value_parser!(i64).range(1..=2147483647))]
    proxy_uid: i64,

    /// Enforce UDP and SCTP: the proxy gets NET_ADMIN (for its NFQUEUE) and
    /// PORTCULLIS_ENFORCE_UDP=true. Annotation: portcullis.dev/enforce-udp.
    #[arg(long, env = "PORTCULLIS_INJECTOR_ENFORCE_UDP", default_value_t = true,
          action = clap::ArgAction::Set)]
    enforce_udp: bool,

    /// Drop NET_RAW from application containers that do not add it (raw frames skip the
    /// pod's egress rules). Annotation: portcullis.dev/drop-net-raw.
    #[arg(long, env = "PORTCULLIS_INJECTOR_DROP_NET_RAW", default_value_t = true,
          action = clap::ArgAction::Set)]
    drop_net_raw: bool,

    /// Lifetime of the proxy's projected service-account token, in seconds.
    #[arg(long, env = "PORTCULLIS_INJECTOR_TOKEN_EXPIRATION_SECONDS", default_value_t = 3600,
          value_parser = clap::value_parser!(i64).range(600..=86400))]
    token_expiration_seconds: i64,

    /// Read `portcullis.dev/*` annotations of the pod's namespace as defaults (needs RBAC get
    /// on namespaces). Without API access, pods are injected with a warning.
    #[arg(long, env = "PORTCULLIS_INJECTOR_NAMESPACE_DEFAULTS", default_value_t = true,
          action = clap::ArgAction::Set)]
    namespace_defaults: bool,

    /// Timeout of one namespace look-up, in milliseconds.
    #[arg(
        long,
        env = "PORTCULLIS_INJECTOR_NAMESPACE_TIMEOUT_MS",
        default_value_t = 1000
    )]
    namespace_timeout_ms: u64,

    /// How long namespace annotations are cached, in seconds.
    #[arg(
        long,
        env = "PORTCULLIS_INJECTOR_NAMESPACE_CACHE_SECONDS",
        default_value_t = 30
    )]
    namespace_cache_seconds: u64,

    /// After SIGTERM, keep accepting requests this long (seconds), while the endpoint is
    /// removed from the Service, then stop accepting.
    #[arg(
        long,
        env = "PORTCULLIS_INJECTOR_SHUTDOWN_DELAY_SECONDS",
        default_value_t = 5
    )]
    shutdown_delay_seconds: u64,

    /// Then let open connections finish for up to this long, in seconds.
    #[arg(long, env = "PORTCULLIS_INJECTOR_DRAIN_SECONDS", default_value_t = 10)]
    drain_seconds: u64,

    /// Log filter of the injector itself (tracing EnvFilter syntax).
    #[arg(long, env = "PORTCULLIS_LOG", default_value = "info")]
    log: String,

    /// Log format.
    #[arg(
        long,
        env = "PORTCULLIS_INJECTOR_LOG_FORMAT",
        value_enum,
        default_value = "json"
    )]
    log_format: LogFormat,
}

fn quantity(flag: &str, value: &str) -> anyhow::Result<Option<Quantity>> {
    if value.trim().is_empty() {
        return Ok(None);
    }
    value.parse().map(Some).with_context(|| format!("--{flag}"))
}

fn build_config(args: &Args) -> anyhow::Result<InjectorConfig> {
    let resources = ProxyResources {
        cpu_request: quantity("proxy-cpu-request", &args.proxy_cpu_request)?,
        cpu_limit: quantity("proxy-cpu-limit", &args.proxy_cpu_limit)?,
        memory_request: quantity("proxy-memory-request", &args.proxy_memory_request)?,
        memory_limit: quantity("proxy-memory-limit", &args.proxy_memory_limit)?,
    };
    for (what, req, lim) in [
        ("cpu", &resources.cpu_request, &resources.cpu_limit),
        ("memory", &resources.memory_request, &resources.memory_limit),
    ] {
        if let (Some(r), Some(l)) = (req, lim) {
            if r.value() > l.value() {
                bail!("proxy {what} request {r} exceeds its limit {l}");
            }
        }
    }
    Ok(InjectorConfig {
        proxy_image: args.proxy_image.clone(),
        init_image: args.init_image.clone(),
        image_pull_policy: args.image_pull_policy.map(|p| p.as_str().to_string()),
        version: VERSION.to_string(),
        controller_url: args.controller_url.clone(),
        controller_ca_pem: match &args.controller_ca_file {
            Some(path) => {
                let pem = std::fs::read_to_string(path).with_context(|| {
                    format!("--controller-ca-file {}: cannot read", path.display())
                })?;
                if !pem.contains("-----BEGIN CERTIFICATE-----") {
                    bail!(
                        "--controller-ca-file {}: no PEM certificate in it",
                        path.display()
                    );
                }
                Some(pem)
            }
            None => None,
        },
        token_expiration_seconds: args.token_expiration_seconds,
        sidecar_mode: args.sidecar_mode,
        policy_mode: args.policy_mode,
        log_level: args.proxy_log_level.clone(),
        proxy_resources: resources,
        skip_inbound_ports: args.skip_inbound_ports.clone(),
        skip_outbound_ports: args.skip_outbound_ports.clone(),
        skip_outbound_cidrs: args.skip_outbound_cidrs.clone(),
        service_cidrs: args.service_cidrs.clone(),
        proxy_uid: args.proxy_uid,
        enforce_udp: Switch(args.enforce_udp),
        drop_net_raw: Switch(args.drop_net_raw),
    })
}

fn init_tracing(args: &Args) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log).context("--log")?;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    match args.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    Ok(())
}

async fn namespace_source(args: &Args) -> NamespaceSource {
    if !args.namespace_defaults {
        return NamespaceSource::Disabled;
    }
    match kube::Client::try_default().await {
        Ok(client) => NamespaceSource::Api(Box::new(ApiNamespaces::new(
            client,
            Duration::from_millis(args.namespace_timeout_ms),
            Duration::from_secs(args.namespace_cache_seconds),
        ))),
        Err(e) => {
            tracing::warn!(error = %e, "no Kubernetes API access: namespace defaults unavailable");
            NamespaceSource::Unavailable(format!("no Kubernetes API access: {e}"))
        }
    }
}

async fn shutdown_signal(delay: Duration) {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
    tracing::info!(
        delay = %portcullis_contract::format_duration(delay),
        "shutting down: still serving during the delay"
    );
    tokio::time::sleep(delay).await;
    tracing::info!("shutting down: no longer accepting connections");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // One process-wide crypto provider (kube's client and rustls both use ring).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    init_tracing(&args)?;
    let config = build_config(&args)?;

    let recorder = server::metrics::recorder().context("metrics recorder")?;
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).context("installing the metrics recorder")?;
    server::metrics::describe();
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cert = ReloadingCert::load(&args.tls_cert, &args.tls_key, provider)
        .context("loading the serving certificate")?;
    let _watcher = cert.spawn_watcher(
        Duration::from_secs(args.cert_reload_seconds),
        portcullis_injector::server::metrics::CERT_RELOADS,
    );
    let tls = cert.server_config()?;

    let state = Arc::new(AppState {
        config,
        fail_closed: args.fail_closed,
        namespaces: namespace_source(&args).await,
        metrics: Some(handle),
    });

    let admin = TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("binding {}", args.admin_listen))?;
    let webhook = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(
        version = VERSION,
        listen = %args.listen,
        admin_listen = %args.admin_listen,
        sidecar_mode = args.sidecar_mode.as_str(),
        fail_closed = args.fail_closed,
        "portcullis-injector started"
    );
    tokio::spawn(server::serve_admin(admin, Arc::clone(&state)));
    server::serve_webhook(
        webhook,
        tls,
        state,
        shutdown_signal(Duration::from_secs(args.shutdown_delay_seconds)),
        Duration::from_secs(args.drain_seconds),
    )
    .await;
    Ok(())
}
