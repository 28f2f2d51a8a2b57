//! `portcullis testbed`: a cluster built from manifests out of network namespaces on this
//! machine — a "node" namespace that routes between the pods, one namespace per pod with its
//! `status.podIP`, and in each pod a small server (`serve.rs`) on every port the pod could be
//! probed on (`ports.rs`), behind the real `portcullis-init` and `portcullis-proxy` unless the pod
//! is not injected (`inject.rs`), and with `--node-guard` the node guard on the node's bridge
//! (`guard.rs`). `probe.rs` probes it and predicts what it should see. Nothing
//! outside the testbed's namespaces is touched.

pub mod controller;
pub mod dns;
mod dnsmasq;
pub mod dual_stack;
pub mod error;
pub mod guard;
pub mod inject;
pub mod lifecycle;
mod manifests;
pub mod nodes;
pub use portcullis_netns as netns;
pub mod options;
mod pods;
pub mod ports;
pub mod probe;
pub mod queries;
pub mod serve;
pub mod services;
mod sidecars;
pub mod state;

pub use controller::stop_controller;
pub use error::{Error, Result};
pub use lifecycle::{apply, down, up, wait_converged};
pub use options::{Binaries, PolicySource, UpOptions};
pub use queries::{admin_get, audit_lines, connect_from, http_get_in, metrics, policy, resolve};
pub use state::{state_dir, ControllerState, DnsState, Family, PodState, Snapshot, State};

/// Every name the testbed creates starts with this.
pub const PREFIX: &str = "pc-tb-";
/// The node's address on the bridge for pods without a `status.hostIP`.
pub(crate) const FALLBACK_GATEWAY: &str = "169.254.1.1";

/// Services the testbed runs itself and `probe` does not probe for a name (the cluster DNS
/// answers DNS, not the testbed's hello).
pub const SYSTEM_SERVICES: [&str; 1] = [dns::SERVICE_KEY];
