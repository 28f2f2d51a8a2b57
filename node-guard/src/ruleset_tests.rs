use super::*;
use crate::pods;

fn guard(json: &str, node_ips: &[&str]) -> Guard {
    Guard {
        pods: pods::parse(json).expect("valid pod list"),
        node_ips: node_ips
            .iter()
            .map(|s| s.parse().expect("node ip"))
            .collect(),
        allow_dhcp: false,
        drop_unlisted: Vec::new(),
    }
}

/// The table's lines without their indentation.
fn lines(text: &str) -> Vec<&str> {
    text.lines().map(str::trim).collect()
}

/// The rules of chain `name`, without its braces.
fn chain_of<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    let head = format!("chain {name} {{");
    lines(text)
        .into_iter()
        .skip_while(|l| *l != head)
        .skip(1)
        .take_while(|l| *l != "}")
        .collect()
}

const TWO_PODS: &str = r#"[
    {"interface": "vethb", "mac": "02:00:00:00:00:0b", "ips": ["10.0.0.11", "fd00::b"]},
    {"interface": "vetha", "mac": "02:00:00:00:00:0a", "ips": ["10.0.0.10"]}
]"#;

#[test]
fn golden_two_pods_and_the_node() {
    let rules = ruleset(&guard(TWO_PODS, &["10.0.0.1", "fd00::1"]));
    assert!(rules.warnings.is_empty(), "{:?}", rules.warnings);
    assert_eq!(
        lines(&rules.install()),
        [
            "table bridge portcullis_guard",
            "delete table bridge portcullis_guard",
            "table bridge portcullis_guard {",
            "set node_ip4 {",
            "type ipv4_addr",
            "elements = { 10.0.0.1 }",
            "}",
            "set node_ip6 {",
            "type ipv6_addr",
            "elements = { fd00::1 }",
            "}",
            "chain prerouting {",
            "type filter hook prerouting priority -300; policy accept;",
            "iifname vmap { \"vetha\" : goto pod_0, \"vethb\" : goto pod_1 }",
            "}",
            "chain pod_common {",
            "ether type != { arp, ip, ip6 } drop",
            "ip saddr @node_ip4 drop",
            "ip6 saddr @node_ip6 drop",
            "arp saddr ip @node_ip4 drop",
            "arp htype != 1 drop",
            "arp ptype != ip drop",
            "arp hlen != 6 drop",
            "arp plen != 4 drop",
            "arp operation != { request, reply } drop",
            "icmpv6 type { nd-router-advert, nd-redirect } drop",
            "icmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert } ip6 nexthdr != ipv6-icmp drop",
            "icmpv6 type nd-neighbor-solicit ip6 length != { 24, 32 } drop",
            "icmpv6 type nd-neighbor-solicit ip6 saddr != :: ip6 length 32 @th,192,16 != 0x0101 drop",
            "icmpv6 type nd-neighbor-solicit ip6 saddr :: ip6 length 32 @th,192,16 != 0x0e01 drop",
            "icmpv6 type nd-neighbor-advert ip6 length != { 24, 32 } drop",
            "icmpv6 type nd-neighbor-advert ip6 length 32 @th,192,16 != 0x0201 drop",
            "icmpv6 type nd-router-solicit ip6 length != { 8, 16 } drop",
            "icmpv6 type nd-router-solicit ip6 length 16 @th,64,16 != 0x0101 drop",
            "}",
            "chain pod_0 {",
            "ether saddr != 02:00:00:00:00:0a drop",
            "jump pod_common",
            "arp saddr ether != 02:00:00:00:00:0a drop",
            "arp saddr ip != { 10.0.0.10 } drop",
            "ip saddr != { 10.0.0.10 } drop",
            "ip6 saddr :: icmpv6 type nd-neighbor-solicit @th,64,128 { 0xfe80000000000000000000fffe00000a } accept",
            "ip6 saddr :: icmpv6 type mld2-listener-report accept",
            "ip6 saddr != { fe80::ff:fe00:a } drop",
            "icmpv6 type nd-neighbor-solicit ip6 length 32 @th,208,48 != 0x02000000000a drop",
            "icmpv6 type nd-neighbor-advert @th,64,128 != { 0xfe80000000000000000000fffe00000a } drop",
            "icmpv6 type nd-neighbor-advert ip6 length 32 @th,208,48 != 0x02000000000a drop",
            "icmpv6 type nd-router-solicit ip6 length 16 @th,80,48 != 0x02000000000a drop",
            "accept",
            "}",
            "chain pod_1 {",
            "ether saddr != 02:00:00:00:00:0b drop",
            "jump pod_common",
            "arp saddr ether != 02:00:00:00:00:0b drop",
            "arp saddr ip != { 10.0.0.11 } drop",
            "ip saddr != { 10.0.0.11 } drop",
            "ip6 saddr :: icmpv6 type nd-neighbor-solicit @th,64,128 { 0xfd00000000000000000000000000000b, 0xfe80000000000000000000fffe00000b } accept",
            "ip6 saddr :: icmpv6 type mld2-listener-report accept",
            "ip6 saddr != { fd00::b, fe80::ff:fe00:b } drop",
            "icmpv6 type nd-neighbor-solicit ip6 length 32 @th,208,48 != 0x02000000000b drop",
            "icmpv6 type nd-neighbor-advert @th,64,128 != { 0xfd00000000000000000000000000000b, 0xfe80000000000000000000fffe00000b } drop",
            "icmpv6 type nd-neighbor-advert ip6 length 32 @th,208,48 != 0x02000000000b drop",
            "icmpv6 type nd-router-solicit ip6 length 16 @th,80,48 != 0x02000000000b drop",
            "accept",
            "}",
            "}",
        ]
    );
}

#[test]
fn cleanup_creates_then_deletes_so_it_never_fails() {
    assert_eq!(
        cleanup(),
        "table bridge portcullis_guard\ndelete table bridge portcullis_guard\n"
    );
    let rules = ruleset(&guard(TWO_PODS, &[]));
    assert!(rules.install().starts_with(&cleanup()));
}

#[test]
fn no_pods_hooks_nothing_and_keeps_empty_node_sets() {
    let text = ruleset(&guard("[]", &[])).table;
    assert_eq!(
        chain_of(&text, "prerouting"),
        ["type filter hook prerouting priority -300; policy accept;"]
    );
    assert!(!text.contains("elements"), "{text}");
    assert!(!text.contains("chain pod_0"), "{text}");
}

#[test]
fn dhcp_exceptions_only_when_asked_and_before_the_address_checks() {
    let mut g = guard(
        r#"[{"interface": "veth0", "mac": "02:00:00:00:00:01", "ips": []}]"#,
        &[],
    );
    let without = ruleset(&g).table;
    assert!(!without.contains("0.0.0.0"), "{without}");
    g.allow_dhcp = true;
    let with = ruleset(&g).table;
    assert_eq!(
        chain_of(&with, "pod_0")[..6],
        [
            "ether saddr != 02:00:00:00:00:01 drop",
            "jump pod_common",
            "arp saddr ether != 02:00:00:00:00:01 drop",
            "arp saddr ip 0.0.0.0 accept",
            "ip saddr 0.0.0.0 ip daddr 255.255.255.255 udp sport 68 udp dport 67 accept",
            // No IPv4 address yet: nothing else IPv4 or ARP passes.
            "ether type { arp, ip } drop",
        ]
    );
}

#[test]
fn an_address_claimed_twice_or_by_the_node_is_bound_to_nobody() {
    // A reused IP still listed for the deleted pod's port: neither port may use it until the
    // list is consistent (the writer lists the delete and the add in one file version).
    let rules = ruleset(&guard(
        r#"[{"interface": "old", "mac": "02:00:00:00:00:01", "ips": ["10.0.0.5", "10.0.0.1"]},
            {"interface": "new", "mac": "02:00:00:00:00:02", "ips": ["10.0.0.5", "10.0.0.6"]}]"#,
        &["10.0.0.1"],
    ));
    assert_eq!(
        rules.warnings,
        [
            "10.0.0.5 is listed for 2 ports: not bound to old",
            "10.0.0.1 is the node's: not bound to pod port old",
            "10.0.0.5 is listed for 2 ports: not bound to new",
        ]
    );
    // Sorted by port: "new" is pod_0.
    assert!(chain_of(&rules.table, "pod_0").contains(&"ip saddr != { 10.0.0.6 } drop"));
    assert!(chain_of(&rules.table, "pod_1").contains(&"ether type { arp, ip } drop"));
}

#[test]
fn the_order_of_the_list_does_not_change_the_rules() {
    let a = ruleset(&guard(TWO_PODS, &["10.0.0.1"]));
    let mut g = guard(TWO_PODS, &["10.0.0.1"]);
    g.pods.reverse();
    assert_eq!(a, ruleset(&g));
}

#[test]
fn unlisted_pod_ports_are_dropped_after_the_listed_ones_when_asked() {
    let mut g = guard(TWO_PODS, &[]);
    g.drop_unlisted = vec![
        "veth".parse().expect("prefix"),
        "cali".parse().expect("prefix"),
    ];
    assert_eq!(
        chain_of(&ruleset(&g).table, "prerouting"),
        [
            "type filter hook prerouting priority -300; policy accept;",
            "iifname vmap { \"vetha\" : goto pod_0, \"vethb\" : goto pod_1 }",
            "iifname \"veth*\" drop",
            "iifname \"cali*\" drop",
        ]
    );
}
