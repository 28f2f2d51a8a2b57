//! Several nodes, and host-network pods.
//!
//! A node is one distinct IPv4 `status.hostIP` of the manifests' pods (host-network pods
//! included; pods without one sit on the first node). With one node the testbed is what it
//! always was: one node namespace (`<prefix>node`) holding every pod's bridge. With several,
//! each node gets its own namespace (`<prefix>node`, `<prefix>node2`, ...) with its own bridge,
//! Service rules and node guard, and the nodes are wired together by a LAN: a namespace
//! (`<prefix>lan`) with a bridge every node joins through its `up0` port, where the node holds
//! its address. Each node routes a pod of another node through that node's address, as a
//! routed CNI (Calico without overlay, Flannel's host-gw) does. The manifests' Node objects
//! are the controller's, for ClusterNetworkPolicy `nodes` peers; a node address no Node
//! object claims gets a synthesised one (name, InternalIP, `kubernetes.io/hostname` and
//! `kubernetes.io/os` labels).
//!
//! A host-network pod (`spec.hostNetwork: true`, upstream's `centaur`) runs its server in its
//! node's namespace, on the node's address and the TCP and UDP ports its containers declare;
//! it has no sidecar and is never a ClusterNetworkPolicy subject nor peer (`PodInfo::selectable`).

use std::collections::BTreeSet;
use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Context, Error, Result};
use portcullis_policy::matrix::Probe;
use portcullis_policy::{Cluster, PodInfo, Protocol};
use serde::{Deserialize, Serialize};

use crate::guard::GuardState;
use crate::sidecars::start_server;
use crate::{netns, serve, PodState, State};

/// The port by which a node joins the LAN of the testbed's nodes.
pub const UPLINK: &str = "up0";

/// One node of a testbed with several.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeState {
    pub netns: String,
    /// Its address (the hostIP of its pods), on its bridge and on its LAN port.
    pub address: Ipv4Addr,
    /// Its node guard (`up --node-guard`), for every node but the first (whose guard is
    /// `State::node_guard`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<GuardState>,
}

/// A host-network pod: its server in its node's namespace.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostPodState {
    /// `namespace/name`
    pub key: String,
    /// Its node's namespace.
    pub node: String,
    /// Its node's address (`status.podIP`).
    pub ip: IpAddr,
    pub pid: u32,
    /// The ports it serves (its containers' TCP and UDP ports) and where its server reports.
    pub wanted: PathBuf,
    pub bound: PathBuf,
}

/// The nodes the pods sit on: every distinct IPv4 hostIP, in the order the manifests give
/// them. Empty when there is at most one (the single node of `State::node_netns`).
pub(crate) fn plan(prefix: &str, pods: &[PodInfo]) -> Vec<NodeState> {
    let mut seen = BTreeSet::new();
    let addresses: Vec<Ipv4Addr> = pods
        .iter()
        .filter_map(|p| match p.host_ip {
            Some(IpAddr::V4(h)) => Some(h),
            _ => None,
        })
        .filter(|h| seen.insert(*h))
        .collect();
    if addresses.len() < 2 {
        return Vec::new();
    }
    addresses
        .into_iter()
        .enumerate()
        .map(|(k, address)| NodeState {
            netns: node_netns(prefix, k),
            address,
            guard: None,
        })
        .collect()
}

/// The namespace of the `k`th node (from 0): the first keeps the single node's name.
pub(crate) fn node_netns(prefix: &str, k: usize) -> String {
    match k {
        0 => format!("{prefix}node"),
        k => format!("{prefix}node{}", k + 1),
    }
}

/// The namespace of the node `pod` sits on: the node of its hostIP, else the first.
pub(crate) fn node_of<'a>(nodes: &'a [NodeState], first: &'a str, pod: &PodInfo) -> &'a str {
    nodes
        .iter()
        .find(|n| pod.host_ip == Some(IpAddr::V4(n.address)))
        .map_or(first, |n| n.netns.as_str())
}

/// The LAN between the nodes (already created, each with its bridge): its namespace and
/// bridge, every node's port into it with the node's address, and a route from every node to
/// every other node's address.
pub(crate) fn connect(prefix: &str, nodes: &[NodeState]) -> Result<()> {
    if nodes.is_empty() {
        return Ok(());
    }
    let lan = format!("{prefix}lan");
    netns::add(&lan)?;
    netns::ip_in(&lan, &["link", "add", "lan0", "type", "bridge"])?;
    netns::ip_in(&lan, &["link", "set", "lan0", "up"])?;
    for (k, node) in nodes.iter().enumerate() {
        let port = format!("n{k}");
        netns::ip_in(
            &lan,
            &[
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                UPLINK,
                "netns",
                &node.netns,
            ],
        )?;
        netns::ip_in(&lan, &["link", "set", &port, "master", "lan0", "up"])?;
        netns::ip_in(&node.netns, &["link", "set", UPLINK, "up"])?;
        let own = format!("{}/32", node.address);
        netns::ip_in(&node.netns, &["addr", "add", &own, "dev", UPLINK])?;
    }
    for node in nodes {
        for other in nodes.iter().filter(|o| o.netns != node.netns) {
            let to = format!("{}/32", other.address);
            netns::ip_in(&node.netns, &["route", "add", &to, "dev", UPLINK])?;
        }
    }
    Ok(())
}

/// Every node's route to the pods of the other nodes, through their node's address (IPv4
/// only: the pods of a testbed with several nodes are reached over IPv4).
pub(crate) fn route_pods(nodes: &[NodeState], pods: &[PodState]) -> Result<()> {
    for pod in pods {
        let Some(home) = nodes.iter().find(|n| n.netns == pod.node) else {
            continue;
        };
        let to = format!("{}/32", pod.ip);
        let via = home.address.to_string();
        for node in nodes.iter().filter(|n| n.netns != pod.node) {
            netns::ip_in(
                &node.netns,
                &["route", "add", &to, "via", &via, "dev", UPLINK],
            )?;
        }
    }
    Ok(())
}

/// Writes a Node object for every node address no Node of the manifests claims, so that
/// ClusterNetworkPolicy `nodes` peers select it. Returns whether it wrote any.
pub(crate) fn synthesise_nodes(
    policy_dir: &Path,
    cluster: &Cluster,
    nodes: &[NodeState],
) -> Result<bool> {
    let claimed: BTreeSet<IpAddr> = cluster
        .nodes
        .values()
        .flat_map(|n| n.addresses.iter().copied())
        .collect();
    let docs: Vec<String> = nodes
        .iter()
        .filter(|n| !claimed.contains(&IpAddr::V4(n.address)))
        .map(|n| node_manifest(n.address))
        .collect();
    if docs.is_empty() {
        return Ok(false);
    }
    let path = policy_dir.join("cluster").join("000-testbed-nodes.yaml");
    fs::write(&path, docs.join("---\n"))
        .with_context(|| format!("cannot write {}", path.display()))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644))?;
    Ok(true)
}

/// A Node as the testbed synthesises it for `address`.
fn node_manifest(address: Ipv4Addr) -> String {
    let name = format!("testbed-node-{}", address.to_string().replace('.', "-"));
    format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels:\n    \
         kubernetes.io/hostname: {name}\n    kubernetes.io/os: linux\nstatus:\n  addresses:\n  \
         - type: InternalIP\n    address: {address}\n  - type: Hostname\n    address: {name}\n"
    )
}

/// The host-network pods of the manifests.
pub(crate) fn host_network_pods(cluster: &Cluster) -> Vec<&PodInfo> {
    cluster
        .pods
        .iter()
        .filter(|p| p.host_network && !p.terminated)
        .collect()
}

/// The ports a host-network pod serves: its containers' TCP and UDP ports.
fn host_ports(pod: &PodInfo) -> Vec<Probe> {
    let mut ports: Vec<Probe> = pod
        .ports
        .iter()
        .filter(|p| matches!(p.protocol, Protocol::Tcp | Protocol::Udp))
        .map(|p| Probe {
            port: p.port,
            protocol: p.protocol,
        })
        .collect();
    ports.sort();
    ports.dedup();
    ports
}

/// Starts the server of every host-network pod in its node's namespace and waits until each
/// listens on its ports.
pub(crate) fn start_host_pods(
    nodes: &[NodeState],
    first: &str,
    pods: &[&PodInfo],
    dir: &Path,
) -> Result<Vec<HostPodState>> {
    let mut out = Vec::new();
    for pod in pods {
        let Some(ip) = pod.primary_ip().or(pod.host_ip) else {
            eprintln!(
                "note: host-network pod {} has no address; left out",
                pod.key()
            );
            continue;
        };
        let node = node_of(nodes, first, pod).to_string();
        let file = |what: &str| dir.join(format!("{}.{}.{what}", pod.namespace, pod.name));
        let wanted = file("host-ports.json");
        let ports = host_ports(pod);
        serve::write_atomically(&wanted, &serde_json::to_vec(&ports)?)?;
        let bound = file("server.json");
        let pid = start_server(&node, &pod.key(), &wanted, &bound)?;
        out.push(HostPodState {
            key: pod.key(),
            node,
            ip,
            pid,
            wanted,
            bound,
        });
        wait_bound(out.last(), &ports)?;
    }
    Ok(out)
}

fn wait_bound(pod: Option<&HostPodState>, ports: &[Probe]) -> Result<()> {
    let Some(pod) = pod else {
        return Ok(());
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let bound: serve::Bound = fs::read(&pod.bound)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        if ports.iter().all(|p| bound.knows(*p)) {
            for (p, why) in &bound.failed {
                eprintln!("note: host-network pod {} cannot serve {p}: {why}", pod.key);
            }
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::Timeout(format!(
                "the server of host-network pod {} did not start listening within 10s (see {})",
                pod.key,
                pod.bound.with_extension("log").display()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl State {
    /// Every node's namespace: the single node's, or each of several.
    pub fn node_namespaces(&self) -> Vec<&str> {
        if self.nodes.is_empty() {
            vec![self.node_netns.as_str()]
        } else {
            self.nodes.iter().map(|n| n.netns.as_str()).collect()
        }
    }

    /// The pods whose bridge is in node namespace `node`.
    pub fn pods_on(&self, node: &str) -> Vec<PodState> {
        self.pods
            .iter()
            .filter(|p| p.node == node || (p.node.is_empty() && node == self.node_netns))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, host: Option<&str>) -> PodInfo {
        PodInfo {
            namespace: "ns".into(),
            name: name.into(),
            labels: Default::default(),
            ips: vec![],
            host_ip: host.map(|h| h.parse().unwrap()),
            host_network: false,
            ports: vec![],
            terminated: false,
        }
    }

    #[test]
    fn one_hostip_is_the_single_node_and_several_are_nodes_in_order() {
        let single = [pod("a", Some("10.0.0.1")), pod("b", None)];
        assert!(plan("pc-tb-x-", &single).is_empty());
        let several = [
            pod("a", Some("10.0.0.2")),
            pod("b", None),
            pod("c", Some("10.0.0.1")),
            pod("d", Some("10.0.0.2")),
        ];
        let nodes = plan("pc-tb-x-", &several);
        let names: Vec<(&str, String)> = nodes
            .iter()
            .map(|n| (n.netns.as_str(), n.address.to_string()))
            .collect();
        assert_eq!(
            names,
            [
                ("pc-tb-x-node", "10.0.0.2".to_string()),
                ("pc-tb-x-node2", "10.0.0.1".to_string())
            ]
        );
        assert_eq!(
            node_of(&nodes, "pc-tb-x-node", &several[2]),
            "pc-tb-x-node2"
        );
        assert_eq!(node_of(&nodes, "pc-tb-x-node", &several[1]), "pc-tb-x-node");
    }

    #[test]
    fn a_synthesised_node_is_a_node_the_loader_reads() {
        let text = node_manifest("192.168.0.12".parse().unwrap());
        let mut cluster = Cluster::new();
        let report = portcullis_policy::manifest::load_into(&mut cluster, &text, "nodes.yaml");
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        let node = &cluster.nodes["testbed-node-192-168-0-12"];
        assert_eq!(
            node.addresses,
            vec!["192.168.0.12".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(node.labels["kubernetes.io/os"], "linux");
    }
}
