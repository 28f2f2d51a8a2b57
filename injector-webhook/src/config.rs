//! The injector's own names and its configuration: the defaults that annotations may override.
//! Values shared with the other components (UID, ports, queue, mark, keys, env names) live in
//! `portcullis-contract` (`contract/src/lib.rs`).

use crate::values::{CidrList, LogLevel, PolicyMode, PortList, Quantity, SidecarMode, Switch};

pub const INIT_CONTAINER_NAME: &str = "portcullis-init";
pub const PROXY_CONTAINER_NAME: &str = "portcullis-proxy";
/// Projected service-account token for the proxy, audience
/// [`portcullis_contract::stream::TOKEN_AUDIENCE`].
pub const TOKEN_VOLUME_NAME: &str = "portcullis-token";
/// Writable `/run` for `portcullis-init` (the xtables lock), whose root filesystem is read-only.
pub const INIT_RUN_VOLUME_NAME: &str = "portcullis-init-run";
pub const TOKEN_DIR: &str = "/var/run/secrets/portcullis.dev/token";
pub const TOKEN_FILE: &str = "/var/run/secrets/portcullis.dev/token/token";

/// Port names on the proxy container (at most 15 characters each).
pub const INBOUND_PORT_NAME: &str = "pc-inbound";
pub const ADMIN_PORT_NAME: &str = "pc-admin";

pub const DEFAULT_CONTROLLER_URL: &str = "https://portcullis-controller.portcullis-system.svc:8443";

/// Annotation keys. Every key is read on the pod first, then on its namespace. The Portcullis keys
/// are the contract's ([`portcullis_contract::keys`]); the others belong to Prometheus and kubectl.
pub mod annotations {
    pub use portcullis_contract::keys::{
        ALLOW_POD_OVERRIDES, ALLOW_PRIVILEGED_DEBUG, DROP_NET_RAW, ENFORCE_UDP, EXEMPTIONS, INJECT,
        INJECTED_VERSION, LOG_LEVEL, POLICY_MODE, PROXY_CPU_LIMIT, PROXY_CPU_REQUEST,
        PROXY_MEMORY_LIMIT, PROXY_MEMORY_REQUEST, SIDECAR_MODE, SKIP_INBOUND_PORTS,
        SKIP_OUTBOUND_CIDRS, SKIP_OUTBOUND_PORTS,
    };

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
    /// The cluster's Service ranges (`PORTCULLIS_SERVICE_CIDRS` of `portcullis-init`): TCP to
    /// them is relayed (the proxy picks an allowed backend), all other outbound TCP is judged in
    /// the queue. Empty: the init container's default (`portcullis_contract::DEFAULT_SERVICE_CIDRS`).
    pub service_cidrs: CidrList,
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
            service_cidrs: CidrList::default(),
            proxy_uid: i64::from(portcullis_contract::PROXY_UID),
            enforce_udp: Switch(true),
            drop_net_raw: Switch(true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_contract::{keys, ports};

    #[test]
    fn the_default_controller_url_is_the_contracts_service_and_port() {
        assert_eq!(
            DEFAULT_CONTROLLER_URL,
            format!(
                "https://portcullis-controller.{}.svc:{}",
                keys::SYSTEM_NAMESPACE,
                ports::CONTROLLER_STREAM
            )
        );
    }
}
