//! Command line and environment: everything the proxy can be told, with defaults that match the
//! injector and `docs/CONVENTIONS.md`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use portcullis_contract::{env, ports};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Refuse connections the policy denies.
    Enforce,
    /// Let them through, but log `connection_would_deny` and count them with `verdict="audit"`.
    Audit,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnPolicyChange {
    /// Close established connections that the new table denies (revoking access revokes it).
    Close,
    /// Keep established connections; the new table applies to new connections only.
    Keep,
}

impl OnPolicyChange {
    pub fn as_str(self) -> &'static str {
        match self {
            OnPolicyChange::Close => "close",
            OnPolicyChange::Keep => "keep",
        }
    }
}

/// The Portcullis sidecar: enforces Kubernetes NetworkPolicy on every TCP connection of its pod.
///
/// `portcullis-init` redirects the pod's inbound TCP to the inbound listener and its outbound TCP
/// to the outbound listener. For each connection the proxy reads the original destination, asks
/// the pod's compiled policy table for a verdict, and either splices the bytes through or resets
/// the connection, writing one JSON audit line per denial on stdout.
#[derive(Debug, Clone, Parser)]
#[command(name = "portcullis-proxy", version, max_term_width = 100)]
pub struct Config {
    /// Name of this pod (downward API `metadata.name`).
    #[arg(long, env = env::POD_NAME)]
    pub pod_name: String,

    /// Namespace of this pod (downward API `metadata.namespace`).
    #[arg(long, env = env::POD_NAMESPACE)]
    pub pod_namespace: String,

    /// This pod's IPs, comma separated (downward API `status.podIPs`). Required: the inbound
    /// proxy forwards only to these addresses (any port) and refuses connections addressed
    /// anywhere else; the proxy does not start without them.
    #[arg(long, env = env::POD_IPS, value_delimiter = ',')]
    pub pod_ips: Vec<IpAddr>,

    /// Resolvers whose answers teach `domainNames` rules, comma separated, besides the
    /// `kube-system/kube-dns` Service's ClusterIPs and endpoints (docs/dns-policy.md).
    #[arg(long, value_delimiter = ',')]
    pub dns_resolvers: Vec<IpAddr>,

    /// The node's IP (downward API `status.hostIP`); traffic with the node is always allowed.
    #[arg(long, env = env::HOST_IP)]
    pub host_ip: Option<IpAddr>,

    /// `enforce` refuses denied connections; `audit` allows them and logs `connection_would_deny`.
    #[arg(long, env = env::MODE, value_enum, default_value = "enforce")]
    pub mode: Mode,

    /// Directory of Kubernetes YAML/JSON manifests (Namespaces, Pods, NetworkPolicies), the same
    /// format `portcullis matrix` reads. Watched and recompiled on change; a change that does not
    /// load cleanly is logged and the last good table stays.
    #[arg(
        long,
        env = env::POLICY_DIR,
        required_unless_present = "controller"
    )]
    pub policy_dir: Option<PathBuf>,

    /// How often `--policy-dir` is checked for changes (e.g. `500ms`, `2s`).
    #[arg(long, env = "PORTCULLIS_POLICY_POLL_INTERVAL", default_value = "500ms", value_parser = parse_duration)]
    pub policy_poll_interval: Duration,

    /// URL of portcullis-controller (`https://portcullis-controller.portcullis-system:8443`);
    /// the pod's table is streamed from it. Alternative to `--policy-dir`.
    #[arg(long, env = env::CONTROLLER, conflicts_with = "policy_dir")]
    pub controller: Option<String>,

    /// Projected service-account token (audience `portcullis`) sent to the controller.
    #[arg(
        long,
        env = env::TOKEN_FILE,
        default_value = "/var/run/secrets/portcullis.dev/token/token"
    )]
    pub token_file: PathBuf,

    /// PEM file with the CA that signs the controller's certificate (https controller URLs).
    #[arg(
        long,
        env = "PORTCULLIS_CONTROLLER_CA",
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
    )]
    pub controller_ca: PathBuf,

    /// The controller's CA as PEM text, instead of `--controller-ca` (the injector can pass it
    /// inline, since pods cannot mount a ConfigMap from another namespace).
    #[arg(long, env = env::CONTROLLER_CA_PEM, hide_env_values = true)]
    pub controller_ca_pem: Option<String>,

    /// What happens to established connections that a new policy table denies.
    #[arg(
        long,
        env = "PORTCULLIS_ON_POLICY_CHANGE",
        value_enum,
        default_value = "close"
    )]
    pub on_policy_change: OnPolicyChange,

    /// How bytes cross the proxy: `splice` (every burst through a kernel pipe), `copy` (through a
    /// user-space buffer), or `auto` (each burst starts with a copy; bulk bursts go on through a
    /// pipe).
    #[arg(long, env = "PORTCULLIS_RELAY", value_enum, default_value = "auto")]
    pub relay: crate::relay::RelayMode,

    /// Inbound listener addresses, comma separated. IPv6 addresses that cannot be bound (no IPv6
    /// in the pod) are skipped with a warning.
    #[arg(
        long,
        env = "PORTCULLIS_INBOUND_LISTEN",
        value_delimiter = ',',
        default_values_t = listen_on_all(ports::INBOUND)
    )]
    pub inbound_listen: Vec<SocketAddr>,

    /// Outbound listener addresses, comma separated.
    #[arg(
        long,
        env = "PORTCULLIS_OUTBOUND_LISTEN",
        value_delimiter = ',',
        default_values_t = listen_on_loopback(ports::OUTBOUND)
    )]
    pub outbound_listen: Vec<SocketAddr>,

    /// Admin listener: `/metrics`, `/ready`, `/live`, `/policy`.
    #[arg(long, env = "PORTCULLIS_ADMIN_LISTEN", default_value_t = SocketAddr::from((Ipv4Addr::UNSPECIFIED, ports::ADMIN)))]
    pub admin_listen: SocketAddr,

    /// Connections the admin listener holds at once; more are reset and counted
    /// (`portcullis_admin_connections_refused_total`). Their descriptors are set aside from the
    /// data path's budget, so the admin port can never starve proxied traffic.
    #[arg(long, env = "PORTCULLIS_ADMIN_MAX_CONNECTIONS", default_value_t = 64)]
    pub admin_max_connections: usize,

    /// Admin connections held at once from one peer address (0: no per-peer limit), so that one
    /// pod cannot take every slot from kubelet and the scrapers.
    #[arg(
        long,
        env = "PORTCULLIS_ADMIN_MAX_CONNECTIONS_PER_PEER",
        default_value_t = 16
    )]
    pub admin_max_connections_per_peer: usize,

    /// An admin client must send a complete request head within this time (also the longest an
    /// idle keep-alive connection waits for its next request).
    #[arg(long, env = "PORTCULLIS_ADMIN_HEADER_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub admin_header_timeout: Duration,

    /// An admin connection that moves no byte for this long is closed.
    #[arg(long, env = "PORTCULLIS_ADMIN_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub admin_idle_timeout: Duration,

    /// Connections proxied at once (inbound and outbound together); more are reset and counted.
    #[arg(long, env = "PORTCULLIS_MAX_CONNECTIONS", default_value_t = 20_000)]
    pub max_connections: usize,

    /// Time allowed to connect to the application or the upstream peer.
    #[arg(long, env = "PORTCULLIS_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// After SIGTERM: how long established connections may drain before the proxy exits.
    #[arg(long, env = "PORTCULLIS_SHUTDOWN_GRACE", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Identical denials (same peer, port and direction) within this window are written as one
    /// audit line with a count, so a port scan cannot flood the logs.
    #[arg(long, env = "PORTCULLIS_AUDIT_WINDOW", default_value = "10s", value_parser = parse_duration)]
    pub audit_window: Duration,

    /// Audit lines each event kind (`connection_denied`, `connection_terminated`, ...) may write
    /// per second, with bursts of five times as many: whatever the sources (forged addresses make
    /// every denial new to the window), the rest is summed into one `rate_limited` line per kind
    /// and second, with the count of connections it stands for.
    #[arg(long, env = "PORTCULLIS_AUDIT_LINES_PER_SECOND", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub audit_lines_per_second: u32,

    /// Flow records: every this long, the proxy writes one `flow_summary` line per (direction,
    /// protocol, peer, server port, Service, verdict) its pod had since the last ones, with a
    /// count and the first and last time seen (`docs/audit-log.md`), and once more at shutdown.
    /// `0` turns flow records off.
    #[arg(long, env = env::FLOW_SUMMARY_INTERVAL, default_value = "60s", value_parser = parse_duration)]
    pub flow_summary_interval: Duration,

    /// Flow records held per period at most; flows with a new key beyond that are counted
    /// (`portcullis_flow_records_dropped_total`, one `flow_records_dropped` line) but not kept.
    #[arg(long, env = env::FLOW_RECORDS_MAX, default_value_t = 4096)]
    pub flow_records_max: usize,

    /// Also log every allowed connection when it closes (bytes, duration) at info level.
    #[arg(long, env = "PORTCULLIS_LOG_ALLOWED")]
    pub log_allowed: bool,

    /// Data-plane threads. Each runs its own single-threaded runtime with its own listening
    /// sockets (an `SO_REUSEPORT` group per address, so the kernel spreads new connections), and
    /// serves a connection from accept to close without handing it to another thread. The
    /// control plane (policy stream, admin port) runs on one more thread. A sidecar shares the
    /// pod's CPU with the application: keep this at or below the pod's CPU limit.
    #[arg(long, env = "PORTCULLIS_WORKER_THREADS", default_value_t = 2)]
    pub worker_threads: usize,

    /// Enforce policy on UDP and SCTP: read the first packet of each new flow from NFQUEUE
    /// `--nfqueue` (needs CAP_NET_ADMIN). `false`: no queue is read, and the proxy says at start,
    /// in `/policy` and in `portcullis_enforced_protocols` that UDP and SCTP are not enforced.
    #[arg(long, env = env::ENFORCE_UDP, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub enforce_udp: bool,

    /// Packet mark (`0x1000` or `4096`) set with SO_MARK on every socket the proxy connects with
    /// (upstream, to the application, to the controller): the same `--proxy-mark` as
    /// portcullis-init's, whose rules then exempt only the proxy's UID *with* this mark, so that
    /// another process running as the proxy's UID is redirected and checked like any other.
    /// Needs CAP_NET_ADMIN: the proxy refuses to start when it cannot set it.
    #[arg(long, env = env::PROXY_MARK, value_parser = crate::mark::parse_mark)]
    pub proxy_mark: Option<u32>,

    /// Where inbound TCP is judged; the same value as portcullis-init's `--inbound-tcp`.
    /// `queue` (the default with `--enforce-udp`): the first packet of each new inbound
    /// connection comes from NFQUEUE, as for UDP; an allowed connection then goes straight to
    /// the application in the kernel (no relay: nothing is added to its round trips), a denied
    /// one is dropped, and revocation deletes its conntrack entry and resets its socket.
    /// `proxy`: inbound connections are redirected to the inbound listener and relayed (the only
    /// choice with `--enforce-udp=false`).
    #[arg(long, env = env::INBOUND_TCP, value_enum)]
    pub inbound_tcp: Option<InboundTcp>,

    /// NFQUEUE number that portcullis-init's UDP/SCTP rules send new flows to.
    #[arg(long, env = env::NFQUEUE, default_value_t = portcullis_contract::NFQUEUE)]
    pub nfqueue: u16,

    /// Log filter (tracing `EnvFilter` syntax, e.g. `info`, `debug`, `portcullis_proxy=debug`).
    #[arg(long, env = env::LOG, default_value = "info")]
    pub log: String,
}

/// Where inbound TCP is judged (`--inbound-tcp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InboundTcp {
    /// A verdict on the first packet, from NFQUEUE; the kernel carries the rest.
    Queue,
    /// Redirected to the inbound listener and relayed.
    Proxy,
}

impl InboundTcp {
    pub fn as_str(self) -> &'static str {
        match self {
            InboundTcp::Queue => "queue",
            InboundTcp::Proxy => "proxy",
        }
    }
}

impl Config {
    pub fn pod_key(&self) -> String {
        format!("{}/{}", self.pod_namespace, self.pod_name)
    }

    /// `--audit-lines-per-second`, with its burst.
    pub fn audit_budget(&self) -> crate::audit::LineBudget {
        let per_second = f64::from(self.audit_lines_per_second);
        crate::audit::LineBudget {
            per_second,
            burst: per_second * 5.0,
        }
    }

    /// `--inbound-tcp`, or its default: `queue` when the queue is read, `proxy` otherwise.
    pub fn inbound_tcp(&self) -> InboundTcp {
        self.inbound_tcp.unwrap_or(if self.enforce_udp {
            InboundTcp::Queue
        } else {
            InboundTcp::Proxy
        })
    }

    /// Flag combinations that cannot work, as a start error.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.inbound_tcp() == InboundTcp::Queue && !self.enforce_udp {
            return Err(ConfigError::QueueWithoutQueue);
        }
        Ok(())
    }
}

/// A flag combination that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "--inbound-tcp queue needs the queue (--enforce-udp, with CAP_NET_ADMIN); with \
         --enforce-udp=false use --inbound-tcp proxy"
    )]
    QueueWithoutQueue,
}

/// `0.0.0.0:port` and `[::]:port`.
fn listen_on_all(port: u16) -> Vec<SocketAddr> {
    vec![
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
    ]
}

/// `127.0.0.1:port` and `[::1]:port`.
fn listen_on_loopback(port: u16) -> Vec<SocketAddr> {
    vec![
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
    ]
}

pub use portcullis_contract::parse_duration;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("fast")
            .unwrap_err()
            .to_string()
            .contains("not a duration"));
        // The contract's parser (humantime) takes hours; it refuses unknown units.
        assert_eq!(parse_duration("3h"), Ok(Duration::from_secs(3 * 3600)));
        assert!(parse_duration("3y2").is_err());
    }

    #[test]
    fn defaults_match_the_conventions() {
        let c = Config::try_parse_from([
            "portcullis-proxy",
            "--pod-name=a",
            "--pod-namespace=x",
            "--policy-dir=/tmp",
        ])
        .expect("parses");
        assert_eq!(c.admin_listen.port(), 4191);
        assert!(c.inbound_listen.iter().all(|a| a.port() == 4143));
        assert!(c.outbound_listen.iter().all(|a| a.port() == 4140));
        assert_eq!(c.mode, Mode::Enforce);
        assert_eq!(c.on_policy_change, OnPolicyChange::Close);
        assert!(c.enforce_udp);
        assert_eq!(c.nfqueue, 4171);
        assert_eq!(c.proxy_mark, None);
        assert_eq!(c.flow_summary_interval, Duration::from_secs(60));
        assert_eq!(c.flow_records_max, 4096);
        let off = Config::try_parse_from([
            "portcullis-proxy",
            "--pod-name=a",
            "--pod-namespace=x",
            "--policy-dir=/tmp",
            "--enforce-udp=false",
        ])
        .expect("parses");
        assert!(!off.enforce_udp);
        let bare = Config::try_parse_from([
            "portcullis-proxy",
            "--pod-name=a",
            "--pod-namespace=x",
            "--policy-dir=/tmp",
            "--enforce-udp",
        ])
        .expect("parses");
        assert!(bare.enforce_udp);
    }

    #[test]
    fn the_proxy_mark_parses_like_portcullis_init_s() {
        let base = [
            "portcullis-proxy",
            "--pod-name=a",
            "--pod-namespace=x",
            "--policy-dir=/tmp",
        ];
        for (arg, want) in [("--proxy-mark=0x1000", 0x1000), ("--proxy-mark=4096", 4096)] {
            let c = Config::try_parse_from(base.iter().copied().chain([arg])).expect("parses");
            assert_eq!(c.proxy_mark, Some(want));
        }
        let err = Config::try_parse_from(base.iter().copied().chain(["--proxy-mark=0"]))
            .expect_err("0 is refused");
        assert!(err.to_string().contains("must not be 0"), "{err}");
    }

    #[test]
    fn pod_ips_parse_as_a_list_and_garbage_is_an_error() {
        let c = Config::try_parse_from([
            "portcullis-proxy",
            "--pod-name=a",
            "--pod-namespace=x",
            "--policy-dir=/tmp",
            "--pod-ips=10.0.0.1,fd00::1",
        ])
        .expect("parses");
        assert_eq!(c.pod_ips.len(), 2);
        let err = Config::try_parse_from([
            "portcullis-proxy",
            "--pod-name=a",
            "--pod-namespace=x",
            "--policy-dir=/tmp",
            "--pod-ips=10.0.0.1,not-an-ip",
        ])
        .expect_err("garbage");
        assert!(err.to_string().contains("not-an-ip"), "{err}");
    }

    #[test]
    fn a_policy_source_is_required() {
        let err = Config::try_parse_from(["portcullis-proxy", "--pod-name=a", "--pod-namespace=x"])
            .expect_err("no source");
        assert!(err.to_string().contains("--policy-dir"));
    }
}
