//! The desired rules, as `nft -f` input: a pure function of the node's pods and addresses, so
//! it is golden-tested without a kernel (`ruleset_tests.rs`).
//!
//! One `bridge` table, [`TABLE`], hooked at bridge `prerouting` before anything else
//! (priority -300, before `br_netfilter`): every frame that enters the bridge from a pod's port
//! is checked there, whether it is bridged to another pod or delivered to the node. A verdict
//! map sends each pod port to its own chain (`pod_N`); frames from other ports (the node side,
//! an uplink) are not touched, except unlisted ports named like pod ports
//! ([`Guard::drop_unlisted`]), which are dropped. A pod's chain drops the frame unless:
//! - its Ethernet source is the pod's MAC;
//! - it is ARP, IPv4 or IPv6 (no VLAN tags, no other ether types);
//! - an ARP packet is an Ethernet/IPv4 request or reply whose sender MAC and IP are the pod's;
//! - an IPv4 or IPv6 source is one of the pod's addresses (IPv6: also the link-local address
//!   its MAC gives), never one of the node's ([`NODE_V4`], [`NODE_V6`]);
//! - neighbour discovery carries the pod's MAC as source/target link-layer address, an
//!   advertisement's target is the pod's own address, and no router advertisement or redirect
//!   comes from a pod. The one unspecified source is duplicate address detection: a neighbour
//!   solicitation from `::` for one of the pod's own addresses (and the MLDv2 report that
//!   joins its solicited-node group).
//!
//! The install text replaces the whole table in one transaction, so a deleted pod's binding
//! and a new pod's binding of a reused IP change together, never with both or neither bound.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::pods::{Interface, Mac, Pod};

/// The table, in the `bridge` family.
pub const TABLE: &str = "portcullis_guard";
/// Named sets of the node's own addresses: no pod port may use them as a source.
pub const NODE_V4: &str = "node_ip4";
pub const NODE_V6: &str = "node_ip6";
/// The checks every pod port shares (frame shape), jumped to from each pod's chain.
pub const COMMON: &str = "pod_common";

/// What the rules are made from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Guard {
    pub pods: Vec<Pod>,
    /// The node's own addresses (the bridge's gateway address, the node's InternalIP): a pod
    /// receives them only from the node side.
    pub node_ips: Vec<IpAddr>,
    /// Let pods send DHCP discovery (`0.0.0.0:68 → 255.255.255.255:67`) and ARP probes from
    /// `0.0.0.0`: only for a CNI whose IPAM is DHCP inside the pod.
    pub allow_dhcp: bool,
    /// Interface name prefixes of pod ports (the CNI's naming, e.g. `veth`): a frame from a
    /// port with such a name that is not in the list is dropped, so a pod the list does not
    /// know yet sends nothing (rather than anything). Empty: unlisted ports are not touched.
    pub drop_unlisted: Vec<Interface>,
}

/// The generated rules and what was left out of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    /// The table, as `nft list table` would print it (without the replacing preamble).
    pub table: String,
    /// Addresses left out, with why (an address claimed by two ports, or by a port and the
    /// node, is bound to none of them until the list is consistent again).
    pub warnings: Vec<String>,
}

impl Ruleset {
    /// `nft -f` input that replaces the table in one transaction (creating it first, so the
    /// delete never fails on a node without it).
    pub fn install(&self) -> String {
        format!("{}{}", cleanup(), self.table)
    }
}

/// `nft -f` input that removes the table (and succeeds when there is none).
pub fn cleanup() -> String {
    format!("table bridge {TABLE}\ndelete table bridge {TABLE}\n")
}

/// A pod with the addresses it may use as sources, split by family.
struct Port<'a> {
    interface: &'a Interface,
    mac: Mac,
    v4: Vec<Ipv4Addr>,
    v6: Vec<Ipv6Addr>,
}

/// The rules for `guard`.
pub fn ruleset(guard: &Guard) -> Ruleset {
    let mut warnings = Vec::new();
    let ports = ports(guard, &mut warnings);
    let mut t = String::new();
    let _ = writeln!(t, "table bridge {TABLE} {{");
    node_set(&mut t, NODE_V4, "ipv4_addr", &family(&guard.node_ips, v4));
    node_set(&mut t, NODE_V6, "ipv6_addr", &family(&guard.node_ips, v6));
    t.push_str("\tchain prerouting {\n");
    t.push_str("\t\ttype filter hook prerouting priority -300; policy accept;\n");
    if !ports.is_empty() {
        let map: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("\"{}\" : goto pod_{i}", p.interface))
            .collect();
        let _ = writeln!(t, "\t\tiifname vmap {{ {} }}", map.join(", "));
    }
    for prefix in &guard.drop_unlisted {
        let _ = writeln!(t, "\t\tiifname \"{prefix}*\" drop");
    }
    t.push_str("\t}\n");
    common_chain(&mut t);
    for (i, port) in ports.iter().enumerate() {
        pod_chain(&mut t, i, port, guard.allow_dhcp);
    }
    t.push_str("}\n");
    Ruleset { table: t, warnings }
}

/// The pods sorted by port, with each address bound to exactly one port: an address listed
/// for two ports, or that is the node's, is left out (and reported).
fn ports<'a>(guard: &'a Guard, warnings: &mut Vec<String>) -> Vec<Port<'a>> {
    let mut owners: BTreeMap<IpAddr, Vec<&Interface>> = BTreeMap::new();
    for pod in &guard.pods {
        for ip in &pod.ips {
            owners.entry(*ip).or_default().push(&pod.interface);
        }
    }
    let mut out: Vec<Port<'a>> = Vec::with_capacity(guard.pods.len());
    for pod in &guard.pods {
        let mut port = Port {
            interface: &pod.interface,
            mac: pod.mac,
            v4: Vec::new(),
            v6: Vec::new(),
        };
        for ip in &pod.ips {
            let claimed = owners.get(ip).map_or(0, Vec::len);
            if guard.node_ips.contains(ip) {
                warnings.push(format!(
                    "{ip} is the node's: not bound to pod port {}",
                    pod.interface
                ));
                continue;
            }
            if claimed > 1 {
                warnings.push(format!(
                    "{ip} is listed for {claimed} ports: not bound to {}",
                    pod.interface
                ));
                continue;
            }
            match ip {
                IpAddr::V4(v4) => port.v4.push(*v4),
                IpAddr::V6(v6) => port.v6.push(*v6),
            }
        }
        let link_local = pod.mac.eui64_link_local();
        if !port.v6.contains(&link_local) {
            port.v6.push(link_local);
        }
        out.push(port);
    }
    out.sort_by(|a, b| a.interface.cmp(b.interface));
    out
}

/// The addresses of one family, sorted and without duplicates, as `nft` writes them.
fn family<T: Ord + ToString>(ips: &[IpAddr], pick: impl Fn(&IpAddr) -> Option<T>) -> Vec<String> {
    let mut v: Vec<T> = ips.iter().filter_map(pick).collect();
    v.sort();
    v.dedup();
    v.iter().map(ToString::to_string).collect()
}

fn v4(ip: &IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V4(a) => Some(*a),
        IpAddr::V6(_) => None,
    }
}

fn v6(ip: &IpAddr) -> Option<Ipv6Addr> {
    match ip {
        IpAddr::V6(a) => Some(*a),
        IpAddr::V4(_) => None,
    }
}

fn node_set(t: &mut String, name: &str, ty: &str, elements: &[String]) {
    let _ = writeln!(t, "\tset {name} {{");
    let _ = writeln!(t, "\t\ttype {ty}");
    if !elements.is_empty() {
        let _ = writeln!(t, "\t\telements = {{ {} }}", elements.join(", "));
    }
    t.push_str("\t}\n");
}

/// Frame-shape checks every pod port shares: only ARP/IPv4/IPv6, never the node's address,
/// well-formed Ethernet/IPv4 ARP, no router advertisements or redirects, and neighbour
/// discovery messages of the sizes Linux sends (no options but the link-layer address, or the
/// nonce of duplicate address detection), without extension headers, so that the per-pod
/// chains can read the link-layer option at a fixed offset.
fn common_chain(t: &mut String) {
    let rules = [
        "ether type != { arp, ip, ip6 } drop".to_string(),
        format!("ip saddr @{NODE_V4} drop"),
        format!("ip6 saddr @{NODE_V6} drop"),
        format!("arp saddr ip @{NODE_V4} drop"),
        "arp htype != 1 drop".into(),
        "arp ptype != ip drop".into(),
        "arp hlen != 6 drop".into(),
        "arp plen != 4 drop".into(),
        "arp operation != { request, reply } drop".into(),
        "icmpv6 type { nd-router-advert, nd-redirect } drop".into(),
        "icmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert } \
         ip6 nexthdr != ipv6-icmp drop"
            .into(),
        "icmpv6 type nd-neighbor-solicit ip6 length != { 24, 32 } drop".into(),
        "icmpv6 type nd-neighbor-solicit ip6 saddr != :: ip6 length 32 @th,192,16 != 0x0101 drop"
            .into(),
        "icmpv6 type nd-neighbor-solicit ip6 saddr :: ip6 length 32 @th,192,16 != 0x0e01 drop"
            .into(),
        "icmpv6 type nd-neighbor-advert ip6 length != { 24, 32 } drop".into(),
        "icmpv6 type nd-neighbor-advert ip6 length 32 @th,192,16 != 0x0201 drop".into(),
        "icmpv6 type nd-router-solicit ip6 length != { 8, 16 } drop".into(),
        "icmpv6 type nd-router-solicit ip6 length 16 @th,64,16 != 0x0101 drop".into(),
    ];
    chain(t, COMMON, &rules);
}

/// One pod's port: its MAC and addresses, everywhere a frame names a sender.
fn pod_chain(t: &mut String, index: usize, port: &Port<'_>, allow_dhcp: bool) {
    let mac = port.mac;
    let hex = mac.hex();
    let mut rules = vec![
        format!("ether saddr != {mac} drop"),
        format!("jump {COMMON}"),
        format!("arp saddr ether != {mac} drop"),
    ];
    if allow_dhcp {
        rules.push("arp saddr ip 0.0.0.0 accept".into());
        rules.push(
            "ip saddr 0.0.0.0 ip daddr 255.255.255.255 udp sport 68 udp dport 67 accept".into(),
        );
    }
    if port.v4.is_empty() {
        rules.push("ether type { arp, ip } drop".into());
    } else {
        let v4 = set(port.v4.iter().map(ToString::to_string));
        rules.push(format!("arp saddr ip != {v4} drop"));
        rules.push(format!("ip saddr != {v4} drop"));
    }
    // Never empty: the link-local address is always there.
    let v6 = set(port.v6.iter().map(ToString::to_string));
    let targets = set(port.v6.iter().map(|a| format!("0x{:032x}", u128::from(*a))));
    rules.extend([
        format!("ip6 saddr :: icmpv6 type nd-neighbor-solicit @th,64,128 {targets} accept"),
        "ip6 saddr :: icmpv6 type mld2-listener-report accept".into(),
        format!("ip6 saddr != {v6} drop"),
        format!("icmpv6 type nd-neighbor-solicit ip6 length 32 @th,208,48 != {hex} drop"),
        format!("icmpv6 type nd-neighbor-advert @th,64,128 != {targets} drop"),
        format!("icmpv6 type nd-neighbor-advert ip6 length 32 @th,208,48 != {hex} drop"),
        format!("icmpv6 type nd-router-solicit ip6 length 16 @th,80,48 != {hex} drop"),
        "accept".into(),
    ]);
    chain(t, &format!("pod_{index}"), &rules);
}

fn set(items: impl Iterator<Item = String>) -> String {
    format!("{{ {} }}", items.collect::<Vec<_>>().join(", "))
}

fn chain(t: &mut String, name: &str, rules: &[String]) {
    let _ = writeln!(t, "\tchain {name} {{");
    for r in rules {
        let _ = writeln!(t, "\t\t{r}");
    }
    t.push_str("\t}\n");
}

#[cfg(test)]
#[path = "ruleset_tests.rs"]
mod tests;
