//! Constants shared with the other components (see `docs/CONVENTIONS.md`) and the injector's
//! configuration: the defaults that annotations may override.

use crate::values::{CidrList, LogLevel, PolicyMode, PortList, Quantity, SidecarMode, Switch};

/// The proxy's UID and GID (default of `InjectorConfig::proxy_uid`). Its traffic is exempt from
/// the outbound redirect, so no other container may run as this UID.
pub const PROXY_UID: i64 = 2171;
/// The NFQUEUE number on which the proxy reads the first packet of each UDP/SCTP flow
/// (`PORTCULLIS_NFQUEUE`).
pub const NFQUEUE: u16 = 4171;
/// The packet mark (`PORTCULLIS_PROXY_MARK`) the proxy sets on its sockets when it has
/// NET_ADMIN (UDP enforced), and without which portcullis-init does not exempt UID 2171. Bit 12:
/// why it is safe beside the marks of Kubernetes and CNIs is in `docs/CONVENTIONS.md`.
pub const PROXY_MARK: u32 = 0x1000;
/// Proxy inbound listener.
pub const INBOUND_PORT: i32 = 4143;
/// Proxy outbound listener (loopback only).
pub const OUTBOUND_PORT: i32 = 4140;
/// Proxy admin listener: `/metrics`, `/ready`, `/live`, `/policy`.
pub const ADMIN_PORT: i32 = 4191;

pub const INIT_CONTAINER_NAME: &str = "portcullis-init";
pub const PROXY_CONTAINER_NAME: &str = "portcullis-proxy";
/// Projected service-account token for the proxy, audience [`TOKEN_AUDIENCE`].
pub const TOKEN_VOLUME_NAME: &str = "portcullis-token";
/// Writable `/run` for `portcullis-init` (the xtables lock), whose root filesystem is read-only.
pub const INIT_RUN_VOLUME_NAME: &str = "portcullis-init-run";
pub const TOKEN_AUDIENCE: &str = "portcullis";
pub const TOKEN_DIR: &str = "/var/run/secrets/portcullis.dev/token";
pub const TOKEN_FILE: &str = "/var/run/secrets/portcullis.dev/token/token";

/// Port names on the proxy container (at most 15 characters each).
pub const INBOUND_PORT_NAME: &str = "pc-inbound";
pub const ADMIN_PORT_NAME: &str = "pc-admin";

pub const DEFAULT_CONTROLLER_URL: &str = "https://portcullis-controller.portcullis-system.svc:8443";

/// Annotation keys. Every key is read on the pod first, then on its namespace.
pub mod annotations {
    /// `disabled` opts a pod (or, on the namespace, all its pods by default) out.
    pub const INJECT: &str = "portcullis.dev/inject";
    pub const SKIP_INBOUND_PORTS: &str = "portcullis.dev/skip-inbound-ports";
    pub const SKIP_OUTBOUND_PORTS: &str = "portcullis.dev/skip-outbound-ports";
    pub const SKIP_OUTBOUND_CIDRS: &str = "portcullis.dev/skip-outbound-cidrs";
    /// `enforce` or `audit`.
    pub const POLICY_MODE: &str = "portcullis.dev/policy-mode";
    /// `native` or `classic`.
    pub const SIDECAR_MODE: &str = "portcullis.dev/sidecar-mode";
    pub const LOG_LEVEL: &str = "portcullis.dev/log-level";
    pub const PROXY_CPU_REQUEST: &str = "portcullis.dev/proxy-cpu-request";
    pub const PROXY_CPU_LIMIT: &str = "portcullis.dev/proxy-cpu-limit";
    pub const PROXY_MEMORY_REQUEST: &str = "portcullis.dev/proxy-memory-request";
    pub const PROXY_MEMORY_LIMIT: &str = "portcullis.dev/proxy-memory-limit";
    /// `true` or `false`: whether the proxy enforces UDP and SCTP (NFQUEUE, needs NET_ADMIN).
    pub const ENFORCE_UDP: &str = "portcullis.dev/enforce-udp";
    /// `true` (default) or `false`: drop NET_RAW from application containers that do not add
    /// it themselves.
    pub const DROP_NET_RAW: &str = "portcullis.dev/drop-net-raw";
    /// Namespace only: `true` lets the pods of the namespace weaken their own enforcement with
    /// the annotations above (see `overrides`). Read on the namespace, never on the pod.
    pub const ALLOW_POD_OVERRIDES: &str = "portcullis.dev/allow-pod-overrides";
    /// Namespace only: ephemeral containers (`kubectl debug`) that could get around the proxy
    /// (NET_ADMIN, NET_RAW, privileged, the proxy's UID) are admitted, with a warning.
    pub const ALLOW_PRIVILEGED_DEBUG: &str = "portcullis.dev/allow-privileged-debug";

    /// Written by the injector: every exemption from enforcement in force for the pod,
    /// `;`-separated `name` or `name=value` items (see `exemptions`). Absent: none.
    pub const EXEMPTIONS: &str = "portcullis.dev/exemptions";

    /// Written by the injector: the version of Portcullis that was injected.
    pub const INJECTED_VERSION: &str = "portcullis.dev/injected-version";
    pub const PROMETHEUS_SCRAPE: &str = "prometheus.io/scrape";
    pub const PROMETHEUS_PORT: &str = "prometheus.io/port";
    pub const PROMETHEUS_PATH: &str = "prometheus.io/path";
    /// Set in classic mode (when absent) so that `kubectl logs/exec` keep picking the app.
    pub const DEFAULT_CONTAINER: &str = "kubectl.kubernetes.io/default-container";
}

/// Requests and limits of the proxy container. `None` leaves that value unset.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyResources {
    pub cpu_request: Option<Quantity>,
    pub cpu_limit: Option<Quantity>,
    pub memory_request: Option<Quantity>,
    pub memory_limit: Option<Quantity>,
}

impl Default for ProxyResources {
    /// 10m CPU / 32Mi requested, 256Mi memory limit, no CPU limit (a CPU limit throttles every
    /// connection of the pod; the request gives the scheduler what it needs).
    fn default() -> Self {
        ProxyResources {
            cpu_request: "10m".parse().ok(),
            cpu_limit: None,
            memory_request: "32Mi".parse().ok(),
            memory_limit: "256Mi".parse().ok(),
        }
    }
}

/// Everything the decision needs besides the pod and its namespace.
#[derive(Debug, Clone, PartialEq)]
pub struct InjectorConfig {
    /// Image of `portcullis-proxy`.
    pub proxy_image: String,
    /// Image of `portcullis-init`.
    pub init_image: String,
    /// `imagePullPolicy` of both containers; `None` lets Kubernetes choose.
    pub image_pull_policy: Option<String>,
    /// Recorded in the `portcullis.dev/injected-version` annotation.
    pub version: String,
    /// `PORTCULLIS_CONTROLLER` of the proxy.
    pub controller_url: String,
    /// PEM of the CA that signs the controller's certificate, passed to the proxy inline
    /// (`PORTCULLIS_CONTROLLER_CA_PEM`): a pod cannot mount a ConfigMap of another namespace.
    pub controller_ca_pem: Option<String>,
    /// Lifetime of the projected token (Kubernetes: at least 600).
    pub token_expiration_seconds: i64,
    pub sidecar_mode: SidecarMode,
    pub policy_mode: PolicyMode,
    pub log_level: LogLevel,
    pub proxy_resources: ProxyResources,
    pub skip_inbound_ports: PortList,
    pub skip_outbound_ports: PortList,
    pub skip_outbound_cidrs: CidrList,
    /// The proxy's UID: the proxy runs as it, `portcullis-init` exempts it, and pods whose
    /// containers would run as it are refused.
    pub proxy_uid: i64,
    /// Enforce UDP and SCTP (the proxy gets NET_ADMIN for NFQUEUE). Annotation
    /// `portcullis.dev/enforce-udp`.
    pub enforce_udp: Switch,
    /// Drop NET_RAW from application containers that do not add it. Annotation
    /// `portcullis.dev/drop-net-raw`.
    pub drop_net_raw: Switch,
}

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

impl Default for InjectorConfig {
    fn default() -> Self {
        InjectorConfig {
            proxy_image: format!("ghcr.io/portcullis-dev/portcullis-proxy:{VERSION}"),
            init_image: format!("ghcr.io/portcullis-dev/portcullis-init:{VERSION}"),
            image_pull_policy: None,
            version: VERSION.to_string(),
            controller_url: DEFAULT_CONTROLLER_URL.to_string(),
            controller_ca_pem: None,
            token_expiration_seconds: 3600,
            sidecar_mode: SidecarMode::default(),
            policy_mode: PolicyMode::default(),
            log_level: LogLevel::default(),
            proxy_resources: ProxyResources::default(),
            skip_inbound_ports: PortList::default(),
            skip_outbound_ports: PortList::default(),
            skip_outbound_cidrs: CidrList::default(),
            proxy_uid: PROXY_UID,
            enforce_udp: Switch(true),
            drop_net_raw: Switch(true),
        }
    }
}
