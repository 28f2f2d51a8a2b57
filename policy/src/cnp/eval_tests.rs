//! The tier algorithm on small clusters, with cases from the upstream docs (`site-src/`,
//! `api-overview.md` and the user stories) and issue 23.

use std::net::IpAddr;

use super::*;
use crate::cnp::{parse, validate, Mode};
use crate::selector::Labels;

#[derive(Debug, Clone)]
struct Ep {
    ns_labels: Labels,
    labels: Labels,
    ip: IpAddr,
    host_network: bool,
    /// Labels of the node whose address this is, for node endpoints and host-network pods.
    node: Option<Labels>,
    ports: Vec<(&'static str, Protocol, u16)>,
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn pod(ns: &str, app: &str, ip: &str) -> Ep {
    Ep {
        ns_labels: labels(&[("kubernetes.io/metadata.name", ns)]),
        labels: labels(&[("app", app)]),
        ip: ip.parse().unwrap(),
        host_network: false,
        node: None,
        ports: vec![("web", Protocol::Tcp, 8080)],
    }
}

struct World;

impl Facts for World {
    type Endpoint = Ep;

    fn in_pod_set(&self, set: &PodSet, e: &Ep) -> bool {
        !e.host_network
            && match set {
                PodSet::Namespaces(ns) => ns.matches(&e.ns_labels),
                PodSet::Pods { namespaces, pods } => {
                    namespaces.matches(&e.ns_labels) && pods.matches(&e.labels)
                }
            }
    }
    fn on_node(&self, nodes: &Selector, e: &Ep) -> bool {
        e.node.as_ref().is_some_and(|l| nodes.matches(l))
    }
    fn in_networks(&self, networks: &[IpNet], e: &Ep) -> bool {
        networks.iter().any(|n| n.contains(&e.ip))
    }
    fn named_port(&self, d: &Ep, name: &str, protocol: Protocol, port: u16) -> bool {
        d.ports.contains(&(name, protocol, port))
    }
}

fn cnp(name: &str, tier: &str, priority: u16, subject: &str, rules: &str) -> ValidCnp {
    let text = format!(
        "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {{name: {name}}}\nspec:\n  tier: {tier}\n  priority: {priority}\n  subject: {subject}\n{rules}"
    );
    validate(&parse(&text).unwrap(), Mode::FromApiServer).unwrap()
}

fn flow<'a>(direction: Direction, subject: &'a Ep, peer: &'a Ep, port: u16) -> Flow<'a, Ep> {
    Flow {
        direction,
        subject,
        peer,
        port,
        protocol: Protocol::Tcp,
        self_traffic: false,
    }
}

fn allowed(cnps: &[ValidCnp], f: &Flow<'_, Ep>, np: Option<bool>) -> bool {
    decide(cnps, f, &World, np).allowed
}

const ALL: &str = "{namespaces: {}}";

/// api-overview: an Admin `Deny` to a sensitive namespace overrides a namespace owner's allow.
#[test]
fn admin_deny_beats_network_policy_allow() {
    let cnps = [cnp("deny-sensitive", "Admin", 10, ALL,
        "  egress:\n  - {name: no-sensitive, action: Deny, to: [{namespaces: {matchLabels: {kubernetes.io/metadata.name: sensitive}}}]}\n")];
    let (a, s, o) = (
        pod("app", "a", "10.0.0.1"),
        pod("sensitive", "db", "10.0.1.1"),
        pod("other", "x", "10.0.2.1"),
    );
    let d = decide(
        &cnps,
        &flow(Direction::Egress, &a, &s, 80),
        &World,
        Some(true),
    );
    assert!(!d.allowed);
    match d.by {
        DecidedBy::Cnp(Tier::Admin, hit) => {
            assert_eq!(hit.cnp.name, "deny-sensitive");
            assert_eq!(hit.rule.label(), "no-sensitive");
        }
        other => panic!("{other:?}"),
    }
    // Unmatched traffic goes on to v1, then to the default.
    assert!(!allowed(
        &cnps,
        &flow(Direction::Egress, &a, &o, 80),
        Some(false)
    ));
    assert!(allowed(&cnps, &flow(Direction::Egress, &a, &o, 80), None));
}

/// api-overview: "monitoring may always scrape": an Admin `Accept` beats v1 isolation.
#[test]
fn admin_accept_beats_network_policy_deny() {
    let cnps = [cnp("monitoring", "Admin", 5, ALL,
        "  ingress:\n  - {action: Accept, from: [{namespaces: {matchLabels: {kubernetes.io/metadata.name: monitoring}}}]}\n")];
    let (server, prom) = (
        pod("app", "a", "10.0.0.1"),
        pod("monitoring", "prom", "10.0.9.1"),
    );
    assert!(allowed(
        &cnps,
        &flow(Direction::Ingress, &server, &prom, 9090),
        Some(false)
    ));
}

/// Pass hands the decision to v1 when v1 isolates the pod, else to the Baseline tier.
#[test]
fn pass_goes_to_network_policy_then_baseline() {
    let cnps = [
        cnp(
            "pass-tenants",
            "Admin",
            1,
            ALL,
            "  egress:\n  - {name: pass, action: Pass, to: [{namespaces: {}}]}\n",
        ),
        cnp(
            "deny-above",
            "Admin",
            2,
            ALL,
            "  egress:\n  - {action: Deny, to: [{namespaces: {}}]}\n",
        ),
        cnp(
            "baseline-deny",
            "Baseline",
            1,
            ALL,
            "  egress:\n  - {action: Deny, to: [{namespaces: {}}]}\n",
        ),
    ];
    let (a, b) = (pod("t1", "a", "10.0.0.1"), pod("t2", "b", "10.0.1.1"));
    let f = flow(Direction::Egress, &a, &b, 80);
    let d = decide(&cnps, &f, &World, Some(true));
    assert_eq!((d.allowed, d.by), (true, DecidedBy::NetworkPolicy));
    assert_eq!(d.admin_pass.unwrap().rule.label(), "pass");
    let d = decide(&cnps, &f, &World, None);
    assert!(!d.allowed);
    assert!(matches!(d.by, DecidedBy::Cnp(Tier::Baseline, _)));
}

/// Baseline applies only where v1 does not isolate the pod; a Baseline `Pass` changes nothing.
#[test]
fn baseline_is_overridden_by_network_policy() {
    let cnps = [cnp(
        "default-deny",
        "Baseline",
        0,
        ALL,
        "  ingress:\n  - {action: Deny, from: [{namespaces: {}}]}\n",
    )];
    let (a, b) = (pod("x", "a", "10.0.0.1"), pod("y", "b", "10.0.1.1"));
    let f = flow(Direction::Ingress, &a, &b, 80);
    assert!(!allowed(&cnps, &f, None));
    assert!(allowed(&cnps, &f, Some(true)));
    let pass = [cnp(
        "bp",
        "Baseline",
        0,
        ALL,
        "  ingress:\n  - {action: Pass, from: [{namespaces: {}}]}\n",
    )];
    assert_eq!(decide(&pass, &f, &World, None).by, DecidedBy::NoPolicy);
}

/// Lower priority first; rules in list order inside a CNP; equal priorities ordered by name.
#[test]
fn priority_then_rule_order_then_name() {
    let accept = "  egress:\n  - {action: Accept, to: [{namespaces: {}}]}\n";
    let deny = "  egress:\n  - {action: Deny, to: [{namespaces: {}}]}\n";
    let (a, b) = (pod("x", "a", "10.0.0.1"), pod("y", "b", "10.0.1.1"));
    let f = flow(Direction::Egress, &a, &b, 80);
    assert!(allowed(
        &[
            cnp("z", "Admin", 1, ALL, accept),
            cnp("a", "Admin", 2, ALL, deny)
        ],
        &f,
        None
    ));
    assert!(!allowed(
        &[
            cnp("z", "Admin", 3, ALL, accept),
            cnp("a", "Admin", 2, ALL, deny)
        ],
        &f,
        None
    ));
    // Equal priority: "a" before "z", whatever the input order.
    assert!(!allowed(
        &[
            cnp("z", "Admin", 2, ALL, accept),
            cnp("a", "Admin", 2, ALL, deny)
        ],
        &f,
        None
    ));
    assert!(allowed(
        &[
            cnp("a", "Admin", 2, ALL, accept),
            cnp("z", "Admin", 2, ALL, deny)
        ],
        &f,
        None
    ));
    let both = "  egress:\n  - {action: Deny, to: [{namespaces: {}}], protocols: [{tcp: {destinationPort: {number: 80}}}]}\n  - {action: Accept, to: [{namespaces: {}}]}\n";
    let c = [cnp("p", "Admin", 1, ALL, both)];
    assert!(!allowed(&c, &f, None));
    assert!(allowed(
        &c,
        &flow(Direction::Egress, &a, &b, 81),
        Some(false)
    ));
}

/// Only CNPs whose subject holds the pod apply; host-network pods are never subjects.
#[test]
fn subjects_select_pods() {
    let c = [cnp("only-x", "Admin", 1, "{pods: {namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: x}}, podSelector: {matchLabels: {app: a}}}}",
        "  egress:\n  - {action: Deny, to: [{namespaces: {}}]}\n")];
    let (a, b, peer) = (
        pod("x", "a", "10.0.0.1"),
        pod("x", "b", "10.0.0.2"),
        pod("y", "c", "10.0.1.1"),
    );
    assert!(!allowed(&c, &flow(Direction::Egress, &a, &peer, 80), None));
    assert!(allowed(&c, &flow(Direction::Egress, &b, &peer, 80), None));
    let mut host = a.clone();
    host.host_network = true;
    assert!(allowed(
        &c,
        &flow(Direction::Egress, &host, &peer, 80),
        None
    ));
}

/// `networks` matches pod addresses too; `nodes` matches node addresses; named ports resolve on
/// the destination; no `protocols` means every protocol.
#[test]
fn peers_and_protocols() {
    let (a, b) = (pod("x", "a", "10.0.0.1"), pod("y", "b", "10.0.1.1"));
    let mut node = pod("node", "-", "192.168.0.11");
    node.node = Some(labels(&[("kubernetes.io/os", "linux")]));
    let nets = [cnp(
        "n",
        "Admin",
        1,
        ALL,
        "  egress:\n  - {action: Deny, to: [{networks: [10.0.1.0/24]}]}\n",
    )];
    assert!(!allowed(&nets, &flow(Direction::Egress, &a, &b, 80), None));
    let nodes = [cnp(
        "n",
        "Admin",
        1,
        ALL,
        "  egress:\n  - {action: Deny, to: [{nodes: {matchLabels: {kubernetes.io/os: linux}}}]}\n",
    )];
    assert!(!allowed(
        &nodes,
        &flow(Direction::Egress, &a, &node, 80),
        None
    ));
    assert!(allowed(&nodes, &flow(Direction::Egress, &a, &b, 80), None));
    let named = [cnp("n", "Admin", 1, ALL, "  ingress:\n  - {action: Deny, from: [{namespaces: {}}], protocols: [{destinationNamedPort: web}]}\n")];
    assert!(!allowed(
        &named,
        &flow(Direction::Ingress, &a, &b, 8080),
        None
    ));
    assert!(allowed(&named, &flow(Direction::Ingress, &a, &b, 80), None));
    let mut udp = flow(Direction::Ingress, &a, &b, 8080);
    udp.protocol = Protocol::Udp;
    assert!(allowed(&named, &udp, None));
    let any = [cnp(
        "n",
        "Admin",
        1,
        ALL,
        "  ingress:\n  - {action: Deny, from: [{namespaces: {}}]}\n",
    )];
    assert!(!allowed(&any, &udp, None));
}

/// Unknown peer types fail closed: nothing for Accept, deny-all for Deny and Pass.
#[test]
fn unknown_peers_fail_closed() {
    let (a, b) = (pod("x", "a", "10.0.0.1"), pod("y", "b", "10.0.1.1"));
    let f = flow(Direction::Egress, &a, &b, 80);
    let accept = [cnp(
        "u",
        "Admin",
        1,
        ALL,
        "  egress:\n  - {action: Accept, to: [{serviceAccounts: {}}]}\n",
    )];
    assert!(!allowed(&accept, &f, Some(false)));
    for action in ["Deny", "Pass"] {
        let c = [cnp("u", "Admin", 1, ALL, &format!(
            "  egress:\n  - {{action: {action}, to: [{{serviceAccounts: {{}}}}], protocols: [{{udp: {{destinationPort: {{number: 1}}}}}}]}}\n"
        ))];
        let d = decide(&c, &f, &World, Some(true));
        assert!(!d.allowed, "{action}");
        assert!(
            matches!(d.by, DecidedBy::Cnp(_, hit) if hit.failed_closed && hit.action == Action::Deny)
        );
    }
    let fqdn = [cnp(
        "f",
        "Admin",
        1,
        ALL,
        "  egress:\n  - {action: Accept, to: [{domainNames: [example.com]}]}\n",
    )];
    assert!(!allowed(&fqdn, &f, Some(false)));
}

/// A pod's traffic to its own address is not subject to CNPs.
#[test]
fn self_traffic_is_not_subject_to_cnps() {
    let a = pod("x", "a", "10.0.0.1");
    let c = [cnp(
        "d",
        "Admin",
        1,
        ALL,
        "  egress:\n  - {action: Deny, to: [{networks: [0.0.0.0/0]}]}\n",
    )];
    let mut f = flow(Direction::Egress, &a, &a, 80);
    f.self_traffic = true;
    assert!(allowed(&c, &f, None));
}

/// An egress `Accept` decides the client's egress only: the server's ingress still applies.
#[test]
fn egress_accept_does_not_open_ingress() {
    let (a, b) = (pod("x", "a", "10.0.0.1"), pod("y", "b", "10.0.1.1"));
    let c = [
        cnp(
            "out",
            "Admin",
            1,
            "{namespaces: {matchLabels: {kubernetes.io/metadata.name: x}}}",
            "  egress:\n  - {action: Accept, to: [{namespaces: {}}]}\n",
        ),
        cnp(
            "in",
            "Admin",
            2,
            "{namespaces: {matchLabels: {kubernetes.io/metadata.name: y}}}",
            "  ingress:\n  - {action: Deny, from: [{namespaces: {}}]}\n",
        ),
    ];
    let out = allowed(&c, &flow(Direction::Egress, &a, &b, 80), Some(false));
    let inn = allowed(&c, &flow(Direction::Ingress, &b, &a, 80), None);
    assert!(out && !inn);
}
