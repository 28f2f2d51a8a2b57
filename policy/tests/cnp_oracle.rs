//! The compiled tables against the reference: for random small clusters of pods (some on the
//! host network), nodes, NetworkPolicies and ClusterNetworkPolicies, every direction of every
//! probe that `PodTable::check` decides equals `cnp::eval::decide` composed with NetworkPolicy
//! v1's own verdict (a compile without the CNPs).

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use portcullis_policy::cluster::{ContainerPort, NodeInfo};
use portcullis_policy::cnp::eval::{decide, Facts, Flow};
use portcullis_policy::cnp::{ClusterNetworkPolicy, PodSet, ValidCnp};
use portcullis_policy::selector::Selector;
use portcullis_policy::{compile, Cluster, Direction, NamespaceInfo, PodInfo, Protocol};
use proptest::prelude::*;
use serde_json::{json, Value};

fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(
        prop::sample::select(vec!["app", "team"]),
        prop::sample::select(vec!["a", "b"]),
        0..=2,
    )
    .prop_map(|m| m.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
}

fn selector() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!({})),
        labels().prop_map(|l| json!({ "matchLabels": l })),
        (
            prop::sample::select(vec!["app", "team"]),
            prop::sample::select(vec!["In", "NotIn", "Exists"]),
        )
            .prop_map(|(key, op)| {
                let mut e = json!({ "key": key, "operator": op });
                if op != "Exists" {
                    e["values"] = json!(["a"]);
                }
                json!({ "matchExpressions": [e] })
            }),
    ]
}

fn pods_peer() -> impl Strategy<Value = Value> {
    prop_oneof![
        selector().prop_map(|s| json!({ "namespaces": s })),
        (selector(), selector())
            .prop_map(|(n, p)| json!({ "pods": { "namespaceSelector": n, "podSelector": p } })),
    ]
}

fn egress_peer() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => pods_peer(),
        1 => selector().prop_map(|s| json!({ "nodes": s })),
        1 => prop::sample::select(vec![
            json!({ "networks": ["10.0.0.0/30"] }),
            json!({ "networks": ["192.168.0.1/32", "10.0.0.4/31"] }),
        ]),
        1 => Just(json!({ "domainNames": ["example.com"] })),
        1 => Just(json!({ "futurePeer": { "x": 1 } })),
    ]
}

fn protocols() -> impl Strategy<Value = Option<Value>> {
    prop::option::of(
        prop::collection::vec(
            prop::sample::select(vec![
                json!({ "tcp": { "destinationPort": { "number": 80 } } }),
                json!({ "udp": { "destinationPort": { "number": 81 } } }),
                json!({ "tcp": { "destinationPort": { "range": { "start": 79, "end": 80 } } } }),
                json!({ "destinationNamedPort": "web" }),
            ]),
            1..=2,
        )
        .prop_map(|v| json!(v)),
    )
}

fn rule(peer_key: &'static str, peer: BoxedStrategy<Value>) -> impl Strategy<Value = Value> {
    (
        prop::sample::select(vec!["Accept", "Deny", "Pass"]),
        prop::collection::vec(peer, 1..=2),
        protocols(),
        prop::option::of(prop::sample::select(vec!["r1", "r2"])),
    )
        .prop_map(move |(action, peers, protocols, name)| {
            let mut r = json!({ "action": action, peer_key: peers });
            if let Some(p) = protocols {
                r["protocols"] = p;
            }
            if let Some(n) = name {
                r["name"] = json!(n);
            }
            r
        })
}

fn cnp() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(vec!["Admin", "Baseline"]),
        prop::sample::select(vec![1, 2]),
        pods_peer(),
        prop::collection::vec(rule("from", pods_peer().boxed()), 0..=2),
        prop::collection::vec(rule("to", egress_peer().boxed()), 0..=2),
    )
        .prop_map(|(tier, priority, subject, ingress, egress)| {
            json!({ "tier": tier, "priority": priority, "subject": subject,
                    "ingress": ingress, "egress": egress })
        })
}

fn np() -> impl Strategy<Value = Value> {
    let np_rule = |key: &'static str| {
        (
            prop::option::of(prop::collection::vec(
                selector().prop_map(|s| json!({ "podSelector": s })),
                1..=2,
            )),
            prop::option::of(prop::sample::select(vec![
                json!([{ "port": 80 }]),
                json!([{ "port": "web" }]),
                json!([{ "port": 81, "protocol": "UDP" }]),
            ])),
        )
            .prop_map(move |(peers, ports)| {
                let mut r = json!({});
                if let Some(p) = peers {
                    r[key] = json!(p);
                }
                if let Some(p) = ports {
                    r["ports"] = p;
                }
                r
            })
    };
    (
        selector(),
        prop::collection::vec(np_rule("from"), 0..=1),
        prop::collection::vec(np_rule("to"), 0..=1),
        prop::sample::select(vec![
            vec!["Ingress"],
            vec!["Egress"],
            vec!["Ingress", "Egress"],
        ]),
    )
        .prop_map(|(sel, ingress, egress, types)| {
            json!({ "podSelector": sel, "ingress": ingress, "egress": egress,
                    "policyTypes": types })
        })
}

/// (namespace, labels, host network, node, named port `web` as TCP 80 or UDP 81)
type PodSpec = (usize, BTreeMap<String, String>, bool, usize, bool);

fn pod_spec() -> impl Strategy<Value = PodSpec> {
    (
        0..2usize,
        labels(),
        prop::bool::weighted(0.2),
        0..2usize,
        any::<bool>(),
    )
}

const NODE_IPS: [&str; 2] = ["192.168.0.1", "192.168.0.2"];

fn build(
    ns_labels: &[BTreeMap<String, String>],
    pods: &[PodSpec],
    nps: &[(usize, Value)],
    cnps: &[Value],
) -> Cluster {
    let mut c = Cluster::new();
    for (i, l) in ns_labels.iter().enumerate() {
        c.add_namespace(NamespaceInfo::new(format!("ns{i}"), l.clone()));
    }
    for (i, zone) in ["a", "b"].iter().enumerate() {
        c.add_node(NodeInfo {
            name: format!("n{i}"),
            labels: [("app".to_string(), zone.to_string())].into(),
            addresses: vec![NODE_IPS[i].parse().unwrap()],
        });
    }
    for (i, (ns, l, host, node, tcp)) in pods.iter().enumerate() {
        let host_ip: IpAddr = NODE_IPS[*node].parse().unwrap();
        let ip = if *host {
            host_ip
        } else {
            format!("10.0.0.{i}").parse().unwrap()
        };
        let (protocol, port) = if *tcp {
            (Protocol::Tcp, 80)
        } else {
            (Protocol::Udp, 81)
        };
        c.add_pod(PodInfo {
            namespace: format!("ns{ns}"),
            name: format!("p{i}"),
            labels: l.clone(),
            ips: vec![ip],
            host_ip: Some(host_ip),
            host_network: *host,
            ports: vec![ContainerPort {
                name: Some("web".into()),
                port,
                protocol,
            }],
            terminated: false,
        });
    }
    for (i, (ns, spec)) in nps.iter().enumerate() {
        let np = json!({ "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": { "name": format!("np{i}"), "namespace": format!("ns{ns}") }, "spec": spec });
        c.add_policy(serde_json::from_value(np).unwrap(), None);
    }
    for (i, spec) in cnps.iter().enumerate() {
        let cnp = json!({ "apiVersion": "policy.networking.k8s.io/v1alpha2",
            "kind": "ClusterNetworkPolicy", "metadata": { "name": format!("cnp{i}") }, "spec": spec });
        let parsed: ClusterNetworkPolicy = serde_json::from_value(cnp).unwrap();
        c.add_cnp(parsed, None);
    }
    c
}

struct World<'a>(&'a Cluster);

impl Facts for World<'_> {
    type Endpoint = PodInfo;

    fn in_pod_set(&self, set: &PodSet, pod: &PodInfo) -> bool {
        let ns = &self.0.namespaces[&pod.namespace].labels;
        portcullis_policy::cnp::resolve::in_pod_set(set, ns, pod)
    }
    fn on_node(&self, nodes: &Selector, pod: &PodInfo) -> bool {
        self.0
            .nodes
            .values()
            .any(|n| nodes.matches(&n.labels) && pod.ips.iter().any(|ip| n.addresses.contains(ip)))
    }
    fn in_networks(&self, networks: &[IpNet], pod: &PodInfo) -> bool {
        pod.ips
            .iter()
            .any(|ip| networks.iter().any(|n| n.contains(ip)))
    }
    fn named_port(&self, pod: &PodInfo, name: &str, protocol: Protocol, port: u16) -> bool {
        pod.ports
            .iter()
            .any(|p| p.name.as_deref() == Some(name) && p.protocol == protocol && p.port == port)
    }
}

fn check_all(cluster: &Cluster, seen: &mut BTreeMap<String, usize>) -> Result<(), TestCaseError> {
    let full = compile(cluster);
    let mut v1_cluster = cluster.clone();
    v1_cluster.cnps.clear();
    let v1 = compile(&v1_cluster);
    let valid: Vec<ValidCnp> = full.cnps.iter().map(|c| c.cnp.clone()).collect();
    let world = World(cluster);
    for subject in &cluster.pods {
        for peer in &cluster.pods {
            for (port, protocol) in [
                (80, Protocol::Tcp),
                (81, Protocol::Udp),
                (79, Protocol::Tcp),
            ] {
                for direction in [Direction::Ingress, Direction::Egress] {
                    let peer_ip = peer.ips[0];
                    let table = &full.tables[&subject.key()];
                    let got = table.check(direction, peer_ip, port, protocol);
                    let v1_table = &v1.tables[&subject.key()];
                    let v1_verdict = v1_table
                        .direction(direction)
                        .is_isolated()
                        .then(|| v1_table.check(direction, peer_ip, port, protocol).allowed());
                    let exempt = subject.ips.contains(&peer_ip)
                        || (direction == Direction::Ingress && subject.host_ip == Some(peer_ip));
                    let flow = Flow {
                        direction,
                        subject,
                        peer,
                        port,
                        protocol,
                        self_traffic: exempt,
                    };
                    let want = decide(&valid, &flow, &world, v1_verdict);
                    *seen.entry(got.tier_label().to_string()).or_default() += 1;
                    if let portcullis_policy::Reason::Tier {
                        action,
                        failed_closed,
                        ..
                    } = &got.reason
                    {
                        *seen
                            .entry(format!("{action} failed_closed={failed_closed}"))
                            .or_default() += 1;
                    }
                    prop_assert_eq!(
                        got.allowed(),
                        want.allowed,
                        "{} {} {} {}/{}: table says {}; reference {:?}",
                        subject.key(),
                        direction,
                        peer.key(),
                        port,
                        protocol,
                        got,
                        want.by
                    );
                    prop_assert_eq!(table.governed_by_cnp(direction, peer_ip), !exempt);
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn compiled_tables_agree_with_the_tier_model(
        ns_labels in prop::collection::vec(labels(), 2),
        pods in prop::collection::vec(pod_spec(), 1..=5),
        nps in prop::collection::vec((0..2usize, np()), 0..=2),
        cnps in prop::collection::vec(cnp(), 0..=3),
    ) {
        check_all(&build(&ns_labels, &pods, &nps, &cnps), &mut BTreeMap::new())?;
    }
}

/// The generator reaches what the oracle is meant to compare: decisions of both tiers, of both
/// final actions, failed-closed rules, and NetworkPolicy v1 after an Admin `Pass`.
#[test]
fn the_generator_reaches_every_kind_of_decision() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let strategy = (
        prop::collection::vec(labels(), 2),
        prop::collection::vec(pod_spec(), 1..=5),
        prop::collection::vec((0..2usize, np()), 0..=2),
        prop::collection::vec(cnp(), 0..=3),
    );
    let mut runner = TestRunner::deterministic();
    let mut seen = BTreeMap::new();
    let mut passes = 0;
    for _ in 0..200 {
        let (ns, pods, nps, cnps) = strategy.new_tree(&mut runner).unwrap().current();
        let cluster = build(&ns, &pods, &nps, &cnps);
        check_all(&cluster, &mut seen).unwrap();
        let compiled = compile(&cluster);
        passes += compiled
            .tables
            .values()
            .filter(|t| {
                cluster.pods.iter().any(|p| {
                    t.admin_pass(Direction::Ingress, p.ips[0], 80, Protocol::Tcp)
                        .is_some()
                })
            })
            .count();
    }
    for kind in [
        "admin",
        "baseline",
        "network_policy",
        "none",
        "Accept failed_closed=false",
        "Deny failed_closed=false",
        "Deny failed_closed=true",
    ] {
        assert!(
            seen.get(kind).copied().unwrap_or(0) > 0,
            "never saw {kind}: {seen:?}"
        );
    }
    assert!(passes > 0, "never saw an Admin Pass");
}
