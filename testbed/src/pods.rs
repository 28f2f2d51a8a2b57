//! The node namespace with its bridge, and each pod's namespace, veth, address and routes.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use crate::error::{Error, Result};
use portcullis_policy::{Cluster, PodInfo};

use crate::{netns, PodState, FALLBACK_GATEWAY};

/// The node: a namespace with a bridge that the pods' veths join, routing between them.
pub(crate) fn create_node(node: &str) -> Result<()> {
    netns::add(node)?;
    netns::ip_in(node, &["link", "add", "br0", "type", "bridge"])?;
    netns::ip_in(node, &["link", "set", "br0", "up"])?;
    netns::exec_in(node, "sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
    Ok(())
}

/// The pods the testbed runs: every pod of the manifests but hostNetwork ones.
pub(crate) fn testbed_pods(cluster: &Cluster) -> Vec<&PodInfo> {
    cluster
        .pods
        .iter()
        .filter(|pod| {
            if pod.host_network {
                eprintln!(
                    "note: {} is a hostNetwork pod; the testbed leaves it out",
                    pod.key()
                );
            }
            !pod.host_network
        })
        .collect()
}

/// A pod's namespace, its veth into the node's bridge, its address and routes.
pub(crate) fn plumb_pod(
    node: &str,
    prefix: &str,
    i: usize,
    pod: &PodInfo,
    gateways: &mut BTreeSet<String>,
    dir: &Path,
) -> Result<PodState> {
    let Some(IpAddr::V4(ip)) = pod.ips.first().copied() else {
        return Err(Error::Manifests(format!(
            "pod {} needs an IPv4 status.podIP for the testbed",
            pod.key()
        )));
    };
    // Every distinct hostIP is an address of the node; pods without one use a link-local one.
    let gateway = gateway_of(pod);
    if gateways.insert(gateway.clone()) {
        netns::ip_in(
            node,
            &["addr", "add", &format!("{gateway}/32"), "dev", "br0"],
        )?;
    }
    let ns = format!("{prefix}p{i}");
    netns::add(&ns)?;
    let host_end = format!("vp{i}");
    netns::ip_in(
        node,
        &[
            "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ],
    )?;
    netns::ip_in(node, &["link", "set", &host_end, "master", "br0", "up"])?;
    // Before the link comes up, so that its IPv6 link-local address derives from it.
    let mac = mac_of(ip);
    netns::ip_in(&ns, &["link", "set", "eth0", "address", &mac])?;
    netns::ip_in(&ns, &["link", "set", "eth0", "up"])?;
    netns::ip_in(&ns, &["addr", "add", &format!("{ip}/32"), "dev", "eth0"])?;
    netns::ip_in(&ns, &["route", "add", &gateway, "dev", "eth0"])?;
    netns::ip_in(
        &ns,
        &["route", "add", "default", "via", &gateway, "dev", "eth0"],
    )?;
    // With the node's address on the pod's side as the source: a hairpin connection (a pod
    // reaching itself through its Service) is masqueraded to it, the pod's hostIP.
    netns::ip_in(
        node,
        &[
            "route",
            "add",
            &format!("{ip}/32"),
            "dev",
            "br0",
            "src",
            &gateway,
        ],
    )?;
    let file = |what: &str| dir.join(format!("{}.{}.{what}", pod.namespace, pod.name));
    Ok(PodState {
        key: pod.key(),
        netns: ns,
        ip: IpAddr::V4(ip),
        port: host_end,
        mac,
        pids: Vec::new(),
        proxy_log: file("proxy.log"),
        injected: true,
        not_injected: None,
        enforces_udp: false,
        bound: file("server.json"),
        system: false,
    })
}

/// The pod's MAC, as the bridge plugin (and Flannel) derive it: `0a:58:` and the IPv4 address.
pub(crate) fn mac_of(ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("0a:58:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

/// The node's address on the pod's side: its hostIP, else a link-local address.
pub(crate) fn gateway_of(pod: &PodInfo) -> String {
    match pod.host_ip {
        Some(IpAddr::V4(h)) => h.to_string(),
        _ => FALLBACK_GATEWAY.to_string(),
    }
}
