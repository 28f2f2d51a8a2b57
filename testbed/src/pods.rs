//! The node namespace with its bridge, and each pod's namespace, veth, address and routes.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
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
    // IPv6 for dual-stack pods: routed like IPv4, the node reached at a link-local address on
    // the bridge (as Calico's and Cilium's routed pods reach theirs); no duplicate address
    // detection, so that an address is usable at once (the testbed chose it, it is unique).
    netns::exec_in(
        node,
        "sysctl",
        &[
            "-qw",
            "net.ipv6.conf.all.forwarding=1",
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
        ],
    )?;
    netns::ip_in(node, &["link", "set", "br0", "down"])?;
    netns::exec_in(node, "sysctl", &["-qw", "net.ipv6.conf.br0.accept_dad=0"])?;
    netns::ip_in(node, &["link", "set", "br0", "up"])?;
    netns::ip_in(
        node,
        &[
            "addr",
            "add",
            &format!("{GATEWAY_V6}/64"),
            "dev",
            "br0",
            "nodad",
        ],
    )?;
    Ok(())
}

/// The node's IPv6 address on the bridge, every dual-stack pod's default gateway.
pub(crate) const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

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
    let (v4, ipv6) = addresses(pod);
    let Some(ip) = v4 else {
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
    if ipv6.is_some() {
        // Before the veth exists, so that its end here takes the setting.
        netns::exec_in(
            &ns,
            "sysctl",
            &["-qw", "net.ipv6.conf.default.accept_dad=0"],
        )?;
    }
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
    route_back(node, ip, &gateway)?;
    if let Some(v6) = ipv6 {
        plumb_v6(node, &ns, v6)?;
    }
    let file = |what: &str| dir.join(format!("{}.{}.{what}", pod.namespace, pod.name));
    Ok(PodState {
        key: pod.key(),
        netns: ns,
        ip: IpAddr::V4(ip),
        ipv6,
        port: host_end,
        mac,
        pids: Vec::new(),
        proxy_log: file("proxy.log"),
        injected: true,
        not_injected: None,
        enforces_udp: false,
        bound: file("server.json"),
        system: false,
        node: String::new(),
    })
}

/// The node's route to a pod's IPv4 address, with the node's address on the pod's side as the
/// source: a hairpin connection (a pod reaching itself through its Service) is masqueraded to
/// it, the pod's hostIP.
fn route_back(node: &str, ip: Ipv4Addr, gateway: &str) -> Result<()> {
    let to = format!("{ip}/32");
    netns::ip_in(node, &["route", "add", &to, "dev", "br0", "src", gateway])?;
    Ok(())
}

/// A pod's first IPv4 and first IPv6 address (either family may come first in `status.podIPs`).
fn addresses(pod: &PodInfo) -> (Option<Ipv4Addr>, Option<Ipv6Addr>) {
    let v4 = pod.ips.iter().find_map(|ip| match ip {
        IpAddr::V4(v4) => Some(*v4),
        IpAddr::V6(_) => None,
    });
    let v6 = pod.ips.iter().find_map(|ip| match ip {
        IpAddr::V6(v6) => Some(*v6),
        IpAddr::V4(_) => None,
    });
    (v4, v6)
}

/// A dual-stack pod's IPv6 address, its default route through the node's link-local address,
/// and the node's route back to it.
fn plumb_v6(node: &str, ns: &str, v6: Ipv6Addr) -> Result<()> {
    netns::ip_in(
        ns,
        &[
            "-6",
            "addr",
            "add",
            &format!("{v6}/128"),
            "dev",
            "eth0",
            "nodad",
        ],
    )?;
    netns::ip_in(
        ns,
        &[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &GATEWAY_V6.to_string(),
            "dev",
            "eth0",
        ],
    )?;
    netns::ip_in(
        node,
        &["-6", "route", "add", &format!("{v6}/128"), "dev", "br0"],
    )?;
    Ok(())
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
