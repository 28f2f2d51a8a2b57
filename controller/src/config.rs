//! Command line and environment (`PORTCULLIS_CONTROLLER_*`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use portcullis_contract::stream::TOKEN_AUDIENCE;
use portcullis_contract::{parse_duration, ports};

/// Watches Namespaces, Pods and NetworkPolicies once for the whole cluster, compiles every pod's
/// policy table incrementally, and streams each Portcullis proxy the table of its own pod.
///
/// Kube mode (default): in-cluster or kubeconfig credentials; proxies authenticate with their
/// pod's projected service-account token (audience --token-audience), checked by TokenReview.
/// File mode (--policy-dir): the cluster is read from manifests on disk, for the local testbed;
/// there is no API server to review tokens, so every request is served.
#[derive(Debug, Clone, Parser)]
#[command(name = "portcullis-controller", version, about, long_about)]
pub struct Config {
    /// Address of the table API (`GET /v1/tables/{namespace}/{pod}`).
    #[arg(
        long,
        env = "PORTCULLIS_CONTROLLER_LISTEN",
        default_value_t = SocketAddr::from(([0, 0, 0, 0], ports::CONTROLLER_STREAM))
    )]
    pub listen: SocketAddr,

    /// Serving certificate (PEM chain) for the table API; reloaded when the file changes.
    /// Without --tls-cert and --tls-key the API is plain HTTP (testbeds only).
    #[arg(long, env = "PORTCULLIS_CONTROLLER_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "PORTCULLIS_CONTROLLER_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Address of the plain-HTTP admin endpoints: /metrics, /ready, /live.
    #[arg(
        long,
        env = "PORTCULLIS_CONTROLLER_ADMIN_LISTEN",
        default_value_t = SocketAddr::from(([0, 0, 0, 0], ports::CONTROLLER_ADMIN))
    )]
    pub admin_listen: SocketAddr,

    /// File mode: read namespaces, pods and policies from this directory of YAML/JSON manifests
    /// (polled) instead of the Kubernetes API. Tokens are NOT checked in this mode.
    #[arg(long, env = "PORTCULLIS_CONTROLLER_POLICY_DIR")]
    pub policy_dir: Option<PathBuf>,

    /// How often file mode looks for changes in --policy-dir.
    #[arg(long, env = "PORTCULLIS_CONTROLLER_POLL_INTERVAL", default_value = "500ms", value_parser = parse_duration)]
    pub poll_interval: Duration,

    /// Audience the proxies' projected tokens must be issued for.
    #[arg(
        long,
        env = "PORTCULLIS_CONTROLLER_TOKEN_AUDIENCE",
        default_value = TOKEN_AUDIENCE
    )]
    pub token_audience: String,

    /// How long a TokenReview answer is reused for the same token.
    #[arg(long, env = "PORTCULLIS_CONTROLLER_TOKEN_CACHE", default_value = "60s", value_parser = parse_duration)]
    pub token_cache: Duration,

    /// A stream quiet for this long gets a heartbeat line (proxies give up after 45 s).
    #[arg(long, env = "PORTCULLIS_CONTROLLER_HEARTBEAT", default_value = "15s", value_parser = parse_duration)]
    pub heartbeat: Duration,

    /// On SIGTERM: time between /ready turning 503 and the streams ending, so that the Service
    /// stops sending new proxies here first.
    #[arg(long, env = "PORTCULLIS_CONTROLLER_SHUTDOWN_DELAY", default_value = "5s", value_parser = parse_duration)]
    pub shutdown_delay: Duration,

    /// Table API connections held at once (every proxy holds one); more are reset and counted.
    /// Lowered at start to what the descriptor limit can hold next to the admin port and the
    /// controller's own descriptors.
    #[arg(
        long,
        env = "PORTCULLIS_CONTROLLER_MAX_CONNECTIONS",
        default_value_t = 16_384
    )]
    pub max_connections: usize,

    /// Table API connections held at once from one address (0: no limit). Proxies reach the
    /// controller from their pod IPs; keep this above the pods of one node if something on the
    /// way masquerades them behind the node's address.
    #[arg(
        long,
        env = "PORTCULLIS_CONTROLLER_MAX_CONNECTIONS_PER_PEER",
        default_value_t = 256
    )]
    pub max_connections_per_peer: usize,

    /// Admin connections (/metrics, /ready, /live) held at once.
    #[arg(
        long,
        env = "PORTCULLIS_CONTROLLER_ADMIN_MAX_CONNECTIONS",
        default_value_t = 64
    )]
    pub admin_max_connections: usize,

    /// Admin connections held at once from one address (0: no limit).
    #[arg(
        long,
        env = "PORTCULLIS_CONTROLLER_ADMIN_MAX_CONNECTIONS_PER_PEER",
        default_value_t = 16
    )]
    pub admin_max_connections_per_peer: usize,

    /// Time for a client to finish the TLS handshake and send a complete request head (both
    /// servers); also the longest an idle keep-alive connection waits for its next request.
    #[arg(long, env = "PORTCULLIS_CONTROLLER_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,

    /// A connection that moves no byte for this long is closed (both servers). Must be longer
    /// than --heartbeat, which keeps quiet streams moving.
    #[arg(long, env = "PORTCULLIS_CONTROLLER_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `info,portcullis_controller=debug`.
    #[arg(long, env = "PORTCULLIS_LOG", default_value = "info")]
    pub log: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn flags_are_consistent() {
        Config::command().debug_assert();
    }

    #[test]
    fn connection_limits_have_safe_defaults() {
        let c = Config::try_parse_from(["c", "--policy-dir", "/p"]).expect("parses");
        assert_eq!(c.max_connections, 16_384);
        assert_eq!(c.admin_max_connections, 64);
        assert!(c.idle_timeout > c.heartbeat);
        assert_eq!(c.header_timeout, Duration::from_secs(10));
    }

    #[test]
    fn tls_needs_both_files() {
        let err = Config::try_parse_from(["c", "--tls-cert", "/c.pem"]).unwrap_err();
        assert!(err.to_string().contains("--tls-key"), "{err}");
        let ok = Config::try_parse_from(["c", "--policy-dir", "/p", "--poll-interval", "50ms"])
            .expect("parses");
        assert_eq!(ok.poll_interval, Duration::from_millis(50));
    }
}
