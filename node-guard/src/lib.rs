//! portcullis-node-guard: on bridge-based CNIs (Flannel, the bridge plugin) nothing checks the
//! source of what a pod sends, so a pod with `NET_RAW` can forge another pod's or the node's
//! address, and poison ARP/neighbour caches to complete TCP connections as them. This binds
//! each local pod's bridge port to its MAC and IPs with one nftables `bridge` table, as Calico
//! and Cilium do in their CNIs.
//!
//! - [`pods`]: the input (port, MAC, IPs), parsed and validated;
//! - [`cni`]: the same from the container runtime's CNI result cache;
//! - [`ruleset`]: the rules, a pure function of the pods and the node's addresses;
//! - [`nft`]: applying them (`nft -f`, one transaction);
//! - [`node`]: the node's addresses from an interface;
//! - [`watch`]: the daemon loop that re-reads the pod list when it changes.

pub mod cni;
pub mod nft;
pub mod node;
pub mod pods;
pub mod ruleset;
pub mod watch;
