//! Egress to DNS names: an Admin-tier `domainNames` Accept rule compiled into a pod's table, and
//! `PodTable::check_learned` deciding with what the pod learned (docs/dns-policy.md).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use portcullis_policy::cnp::Action;
use portcullis_policy::dns::{LearnedLimits, LearnedNames, NoLearned};
use portcullis_policy::manifest::load_into;
use portcullis_policy::{compile, Cluster, Direction, DnsNote, PodTable, Protocol, Reason};

const OBJECTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {kubernetes.io/metadata.name: shop}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec: {containers: [{name: c, image: i}]}
status: {phase: Running, podIP: 10.244.0.5}
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: egress-allowlist}
spec:
  tier: Admin
  priority: 10
  subject: {namespaces: {}}
  egress:
  - name: apis
    action: Accept
    to:
    - domainNames: ["api.example.com", "*.cdn.example.NET."]
    protocols:
    - tcp: {destinationPort: {number: 443}}
  - name: rest
    action: Deny
    to:
    - networks: ["0.0.0.0/0"]
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: baseline-names}
spec:
  tier: Baseline
  priority: 10
  subject: {namespaces: {}}
  egress:
  - action: Accept
    to:
    - domainNames: ["baseline.example.org"]
"#;

fn table() -> std::sync::Arc<PodTable> {
    let mut cluster = Cluster::new();
    let report = load_into(&mut cluster, OBJECTS, "test");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let compiled = compile(&cluster);
    assert!(compiled.errors.is_empty(), "{:?}", compiled.errors);
    compiled.tables["shop/web"].clone()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn the_admin_accept_rule_carries_normalized_patterns_and_baseline_ones_none() {
    let t = table();
    let patterns: Vec<&str> = t.egress.admin[0]
        .domains
        .iter()
        .map(|d| d.as_str())
        .collect();
    assert_eq!(patterns, ["api.example.com", "*.cdn.example.net"]);
    assert!(t.egress.baseline.iter().all(|r| r.domains.is_empty()));
    // The wire form keeps them.
    let json = serde_json::to_string(&*t).unwrap();
    let back: PodTable = serde_json::from_str(&json).unwrap();
    assert_eq!(back, *t);
}

#[test]
fn a_learned_address_is_allowed_on_the_rules_ports_and_says_by_which_name() {
    let t = table();
    let now = Instant::now();
    let mut learned = LearnedNames::new(LearnedLimits::default());
    learned.insert(
        "api.example.com",
        ip("192.0.2.10"),
        Duration::from_secs(60),
        now,
    );
    learned.insert(
        "img.eu.cdn.example.net",
        ip("192.0.2.20"),
        Duration::from_secs(60),
        now,
    );
    learned.insert(
        "other.example.com",
        ip("192.0.2.30"),
        Duration::from_secs(60),
        now,
    );
    let at = learned.at(now);
    let check =
        |peer: &str, port| t.check_learned(Direction::Egress, ip(peer), port, Protocol::Tcp, &at);

    let v = check("192.0.2.10", 443);
    assert!(v.allowed(), "{v}");
    assert!(matches!(
        &v.reason,
        Reason::Tier { action: Action::Accept, dns: Some(DnsNote::Learned { name }), .. }
            if &**name == "api.example.com"
    ));
    assert!(
        v.to_string().contains("DNS lookup of api.example.com"),
        "{v}"
    );
    assert!(check("192.0.2.20", 443).allowed());

    // Another port, a name no pattern allows, an address never learned: the Deny decides and
    // says the IP was not learned (where the domain rule covered the port).
    assert!(!check("192.0.2.10", 80).allowed());
    let other = check("192.0.2.30", 443);
    assert!(!other.allowed());
    let never = check("198.51.100.1", 443);
    assert!(matches!(
        &never.reason,
        Reason::Tier { action: Action::Deny, dns: Some(DnsNote::NotLearned { rule, .. }), .. }
            if &**rule == "apis"
    ));
    assert!(
        never.to_string().contains("IP not learned from DNS"),
        "{never}"
    );
    // Without the learned set (explain, matrix), nothing is learned.
    assert!(!t
        .check(Direction::Egress, ip("192.0.2.10"), 443, Protocol::Tcp)
        .allowed());
    assert!(!t
        .check_learned(
            Direction::Egress,
            ip("192.0.2.10"),
            443,
            Protocol::Tcp,
            &NoLearned
        )
        .allowed());
}

#[test]
fn an_expired_address_is_denied_for_new_flows_but_not_for_open_ones() {
    let t = table();
    let now = Instant::now();
    let mut learned = LearnedNames::new(LearnedLimits::default());
    learned.insert(
        "api.example.com",
        ip("192.0.2.10"),
        Duration::from_secs(1),
        now,
    );
    let later = now + Duration::from_secs(31);
    let peer = ip("192.0.2.10");
    let new = t.check_learned(
        Direction::Egress,
        peer,
        443,
        Protocol::Tcp,
        &learned.at(later),
    );
    assert!(!new.allowed());
    let open = learned.for_open_flows(later, Duration::from_secs(3600));
    assert!(t
        .check_learned(Direction::Egress, peer, 443, Protocol::Tcp, &open)
        .allowed());
}
