//! The incremental compile against the oracle: after any sequence of cluster events, every
//! pod's table must equal what a from-scratch `portcullis_policy::compile` of the same objects
//! gives, and a batch must report exactly the pods whose table changed. ClusterNetworkPolicies
//! and Nodes are among the events, and the oracle compiles them too.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use k8s_openapi::api::networking::v1::NetworkPolicy;
use portcullis_controller::state::{Change, ClusterState};
use portcullis_policy::cluster::{ContainerPort, NodeInfo, SourcedCnp, SourcedPolicy};
use portcullis_policy::cnp::ClusterNetworkPolicy;
use portcullis_policy::{compile, Cluster, NamespaceInfo, PodInfo, PodTable, Protocol};
use proptest::prelude::*;
use serde_json::{json, Value};

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const POD_SLOTS: usize = 8;
const POLICY_SLOTS: usize = 5;
const CNP_SLOTS: usize = 4;
const NODE_SLOTS: usize = 2;

#[derive(Debug, Clone)]
enum Event {
    Namespace(usize, BTreeMap<String, String>),
    NamespaceGone(usize),
    Pod(usize, PodShape),
    PodGone(usize),
    Policy(usize, usize, Value),
    PolicyGone(usize),
    Cnp(usize, Value),
    CnpGone(usize),
    Node(usize, BTreeMap<String, String>),
    NodeGone(usize),
    /// Relist of everything the model holds (what a 410 Gone leads to).
    Relist,
}

#[derive(Debug, Clone)]
struct PodShape {
    labels: BTreeMap<String, String>,
    web_port: u16,
    host_network: bool,
    terminated: bool,
    dual_stack: bool,
}

fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(
        prop::sample::select(vec!["app", "tier"]),
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
            prop::sample::select(vec!["app", "tier"]),
            prop::sample::select(vec!["In", "NotIn", "Exists", "DoesNotExist"]),
            prop::sample::select(vec!["a", "b"])
        )
            .prop_map(|(key, op, v)| {
                let values = if op == "In" || op == "NotIn" {
                    json!([v])
                } else {
                    json!(null)
                };
                let mut e = json!({ "key": key, "operator": op });
                if !values.is_null() {
                    e["values"] = values;
                }
                json!({ "matchExpressions": [e] })
            }),
    ]
}

fn peer() -> impl Strategy<Value = Value> {
    prop_oneof![
        selector().prop_map(|s| json!({ "podSelector": s })),
        selector().prop_map(|s| json!({ "namespaceSelector": s })),
        (selector(), selector())
            .prop_map(|(n, p)| json!({ "namespaceSelector": n, "podSelector": p })),
        prop::sample::select(vec![
            json!({ "ipBlock": { "cidr": "10.0.0.0/16", "except": ["10.0.1.0/24"] } }),
            json!({ "ipBlock": { "cidr": "10.0.2.0/24" } }),
            json!({ "ipBlock": { "cidr": "fd00::/64", "except": ["fd00::100/120"] } }),
        ]),
    ]
}

fn port() -> impl Strategy<Value = Value> {
    prop::sample::select(vec![
        json!({ "port": 80 }),
        json!({ "port": 81, "protocol": "TCP" }),
        json!({ "port": 80, "endPort": 90 }),
        json!({ "port": "web" }),
        json!({ "port": "web", "protocol": "UDP" }),
        json!({ "protocol": "TCP" }),
    ])
}

fn rule(peer_key: &'static str) -> impl Strategy<Value = Value> {
    (
        prop::option::of(prop::collection::vec(peer(), 0..=2)),
        prop::option::of(prop::collection::vec(port(), 0..=2)),
    )
        .prop_map(move |(peers, ports)| {
            let mut r = json!({});
            if let Some(p) = peers {
                r[peer_key] = json!(p);
            }
            if let Some(p) = ports {
                r["ports"] = json!(p);
            }
            r
        })
}

fn policy_spec() -> impl Strategy<Value = Value> {
    (
        selector(),
        prop::option::of(prop::collection::vec(rule("from"), 0..=2)),
        prop::option::of(prop::collection::vec(rule("to"), 0..=2)),
        prop::sample::select(vec![
            None,
            Some(vec!["Ingress"]),
            Some(vec!["Egress"]),
            Some(vec!["Ingress", "Egress"]),
        ]),
    )
        .prop_map(|(sel, ingress, egress, types)| {
            let mut spec = json!({ "podSelector": sel });
            if let Some(i) = ingress {
                spec["ingress"] = json!(i);
            }
            if let Some(e) = egress {
                spec["egress"] = json!(e);
            }
            if let Some(t) = types {
                spec["policyTypes"] = json!(t);
            }
            spec
        })
}

/// A CNP peer: every kind the engine resolves (pods, namespaces, networks, nodes).
fn cnp_peer(egress: bool) -> impl Strategy<Value = Value> {
    let mut kinds = vec![
        selector().prop_map(|s| json!({ "namespaces": s })).boxed(),
        (selector(), selector())
            .prop_map(|(n, p)| json!({ "pods": { "namespaceSelector": n, "podSelector": p } }))
            .boxed(),
    ];
    if egress {
        kinds.push(Just(json!({ "networks": ["10.0.1.0/24", "fd00::/64"] })).boxed());
        kinds.push(
            labels()
                .prop_map(|l| json!({ "nodes": { "matchLabels": l } }))
                .boxed(),
        );
    }
    prop::strategy::Union::new(kinds)
}

fn cnp_rule(egress: bool) -> impl Strategy<Value = Value> {
    (
        prop::sample::select(vec!["Accept", "Deny", "Pass"]),
        prop::collection::vec(cnp_peer(egress), 1..=2),
        prop::sample::select(vec![
            None,
            Some(json!([{ "tcp": { "destinationPort": { "number": 80 } } }])),
            Some(
                json!([{ "tcp": { "destinationPort": { "range": { "start": 80, "end": 90 } } } }]),
            ),
        ]),
    )
        .prop_map(move |(action, peers, protocols)| {
            let mut r = json!({ "action": action });
            r[if egress { "to" } else { "from" }] = json!(peers);
            if let Some(p) = protocols {
                r["protocols"] = p;
            }
            r
        })
}

fn cnp_spec() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(vec!["Admin", "Baseline"]),
        prop::sample::select(vec![0, 10, 10, 500]),
        prop_oneof![
            selector().prop_map(|s| json!({ "namespaces": s })),
            (selector(), selector())
                .prop_map(|(n, p)| json!({ "pods": { "namespaceSelector": n, "podSelector": p } })),
        ],
        prop::collection::vec(cnp_rule(false), 0..=2),
        prop::collection::vec(cnp_rule(true), 0..=2),
    )
        .prop_map(|(tier, priority, subject, ingress, egress)| {
            json!({ "tier": tier, "priority": priority, "subject": subject,
                    "ingress": ingress, "egress": egress })
        })
}

fn event() -> impl Strategy<Value = Event> {
    let pod = (
        labels(),
        prop::sample::select(vec![80u16, 85, 81]),
        prop::bool::weighted(0.1),
        prop::bool::weighted(0.1),
        any::<bool>(),
    )
        .prop_map(
            |(labels, web_port, host_network, terminated, dual_stack)| PodShape {
                labels,
                web_port,
                host_network,
                terminated,
                dual_stack,
            },
        );
    prop_oneof![
        2 => (0..NAMESPACES.len(), labels()).prop_map(|(i, l)| Event::Namespace(i, l)),
        1 => (0..NAMESPACES.len()).prop_map(Event::NamespaceGone),
        5 => (0..POD_SLOTS, pod).prop_map(|(i, p)| Event::Pod(i, p)),
        2 => (0..POD_SLOTS).prop_map(Event::PodGone),
        5 => (0..POLICY_SLOTS, 0..NAMESPACES.len(), policy_spec()).prop_map(|(i, ns, s)| Event::Policy(i, ns, s)),
        2 => (0..POLICY_SLOTS).prop_map(Event::PolicyGone),
        3 => (0..CNP_SLOTS, cnp_spec()).prop_map(|(i, s)| Event::Cnp(i, s)),
        1 => (0..CNP_SLOTS).prop_map(Event::CnpGone),
        1 => (0..NODE_SLOTS, labels()).prop_map(|(i, l)| Event::Node(i, l)),
        1 => (0..NODE_SLOTS).prop_map(Event::NodeGone),
        1 => Just(Event::Relist),
    ]
}

/// The objects, held plainly: what a from-scratch compile sees.
#[derive(Default)]
struct Model {
    namespaces: BTreeMap<String, NamespaceInfo>,
    pods: BTreeMap<String, PodInfo>,
    policies: BTreeMap<usize, NetworkPolicy>,
    cnps: BTreeMap<usize, ClusterNetworkPolicy>,
    nodes: BTreeMap<usize, NodeInfo>,
}

fn make_cnp(slot: usize, spec: &Value) -> SourcedCnp {
    let text = json!({
        "apiVersion": "policy.networking.k8s.io/v1alpha2",
        "kind": "ClusterNetworkPolicy",
        "metadata": { "name": format!("cnp{slot}") },
        "spec": spec,
    });
    SourcedCnp {
        cnp: portcullis_policy::cnp::parse(&text.to_string()).expect("generated CNPs parse"),
        source: None,
    }
}

fn make_node(slot: usize, labels: &BTreeMap<String, String>) -> NodeInfo {
    NodeInfo {
        name: format!("node{slot}"),
        labels: labels.clone(),
        addresses: vec![IpAddr::V4(Ipv4Addr::new(192, 168, 0, slot as u8 + 1))],
    }
}

fn pod_namespace(slot: usize) -> &'static str {
    NAMESPACES[slot % NAMESPACES.len()]
}

fn make_pod(slot: usize, shape: &PodShape) -> PodInfo {
    let mut ips = vec![IpAddr::V4(Ipv4Addr::new(
        10,
        0,
        (slot % 3) as u8,
        slot as u8 + 1,
    ))];
    if shape.dual_stack {
        ips.push(IpAddr::V6(Ipv6Addr::new(
            0xfd00,
            0,
            0,
            0,
            0,
            0,
            0,
            0xfe + slot as u16,
        )));
    }
    PodInfo {
        namespace: pod_namespace(slot).into(),
        name: format!("p{slot}"),
        labels: shape.labels.clone(),
        ips,
        host_ip: Some(IpAddr::V4(Ipv4Addr::new(192, 168, 0, 1))),
        host_network: shape.host_network,
        ports: vec![ContainerPort {
            name: Some("web".into()),
            port: shape.web_port,
            protocol: Protocol::Tcp,
        }],
        terminated: shape.terminated,
    }
}

fn make_policy(slot: usize, ns: usize, spec: &Value) -> NetworkPolicy {
    serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": { "name": format!("np{slot}"), "namespace": NAMESPACES[ns] },
        "spec": spec,
    }))
    .expect("generated policies deserialise")
}

impl Model {
    /// Applies an event to the model and says what the controller is told.
    fn change(&mut self, e: &Event) -> Change {
        match e {
            Event::Namespace(i, labels) => {
                let ns = NamespaceInfo::new(NAMESPACES[*i], labels.clone());
                self.namespaces.insert(ns.name.clone(), ns.clone());
                Change::Namespace(ns)
            }
            Event::NamespaceGone(i) => {
                self.namespaces.remove(NAMESPACES[*i]);
                Change::NamespaceGone(NAMESPACES[*i].into())
            }
            Event::Pod(i, shape) => {
                let pod = make_pod(*i, shape);
                self.pods.insert(pod.key(), pod.clone());
                Change::Pod(pod)
            }
            Event::PodGone(i) => {
                self.pods.remove(&format!("{}/p{i}", pod_namespace(*i)));
                Change::PodGone {
                    namespace: pod_namespace(*i).into(),
                    name: format!("p{i}"),
                }
            }
            Event::Policy(i, ns, spec) => {
                // A slot is one name; moving it to another namespace is a delete and a create.
                let policy = make_policy(*i, *ns, spec);
                let old = self.policies.insert(*i, policy.clone());
                let change = Change::Policy(Box::new(SourcedPolicy {
                    policy,
                    source: None,
                }));
                match old {
                    Some(old) if old.metadata.namespace != self.policies[i].metadata.namespace => {
                        // Represented as a relist so that both halves land in one change.
                        let _ = change;
                        Change::ResetPolicies(self.sourced_policies())
                    }
                    _ => change,
                }
            }
            Event::PolicyGone(i) => match self.policies.remove(i) {
                Some(p) => Change::PolicyGone {
                    namespace: p.metadata.namespace.unwrap_or_default(),
                    name: p.metadata.name.unwrap_or_default(),
                },
                None => Change::PolicyGone {
                    namespace: "x".into(),
                    name: format!("np{i}"),
                },
            },
            Event::Cnp(i, spec) => {
                let sc = make_cnp(*i, spec);
                self.cnps.insert(*i, sc.cnp.clone());
                Change::Cnp(Box::new(sc))
            }
            Event::CnpGone(i) => {
                self.cnps.remove(i);
                Change::CnpGone(format!("cnp{i}"))
            }
            Event::Node(i, labels) => {
                let node = make_node(*i, labels);
                self.nodes.insert(*i, node.clone());
                Change::Node(node)
            }
            Event::NodeGone(i) => {
                self.nodes.remove(i);
                Change::NodeGone(format!("node{i}"))
            }
            Event::Relist => Change::ResetPods(self.pods.values().cloned().collect()),
        }
    }

    fn sourced_policies(&self) -> Vec<SourcedPolicy> {
        self.policies
            .values()
            .map(|p| SourcedPolicy {
                policy: p.clone(),
                source: None,
            })
            .collect()
    }

    /// A from-scratch compile: its tables, and the peer names it returns beside them.
    fn oracle(&self) -> (BTreeMap<String, PodTable>, BTreeMap<IpAddr, String>) {
        let mut cluster = Cluster::new();
        for ns in self.namespaces.values() {
            cluster.add_namespace(ns.clone());
        }
        for pod in self.pods.values() {
            cluster.add_pod(pod.clone());
        }
        for p in self.policies.values() {
            cluster.add_policy(p.clone(), None);
        }
        for c in self.cnps.values() {
            cluster.add_cnp(c.clone(), None);
        }
        for n in self.nodes.values() {
            cluster.add_node(n.clone());
        }
        let compiled = compile(&cluster);
        let tables = compiled
            .tables
            .into_iter()
            .map(|(k, t)| (k, PodTable::clone(&t)))
            .collect();
        (tables, BTreeMap::clone(&compiled.peer_names))
    }
}

fn served(state: &ClusterState) -> BTreeMap<String, PodTable> {
    state
        .tables()
        .map(|(k, t)| (k.clone(), t.as_ref().clone()))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn incremental_tables_equal_a_full_compile(
        batches in prop::collection::vec(prop::collection::vec(event(), 1..4), 1..25)
    ) {
        let mut model = Model::default();
        let mut state = ClusterState::new();
        let mut before = served(&state);
        for batch in &batches {
            let changes: Vec<Change> = batch.iter().map(|e| model.change(e)).collect();
            let applied = state.apply(changes);
            prop_assert!(applied.rejected.is_empty(), "{:?}", applied.rejected);
            prop_assert_eq!(state.cnp_count(), model.cnps.len());
            let after = served(&state);
            let (tables, peer_names) = model.oracle();
            prop_assert_eq!(&after, &tables, "after batch {:?}", batch);
            // The names the controller streams are the ones compile returns beside the tables.
            let streamed: BTreeMap<IpAddr, String> =
                state.peer_names().iter().map(|(ip, k)| (*ip, k.clone())).collect();
            prop_assert_eq!(&streamed, &peer_names, "peer names after batch {:?}", batch);

            // Exactly the pods whose table changed were reported, each once.
            let mut reported: Vec<&String> = applied.changed.iter().map(|(k, _)| k).collect();
            reported.sort();
            let n = reported.len();
            reported.dedup();
            prop_assert_eq!(n, reported.len(), "a pod was reported twice");
            let really: Vec<&String> = before
                .keys()
                .chain(after.keys())
                .filter(|k| before.get(*k) != after.get(*k))
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            prop_assert_eq!(reported, really);
            before = after;
        }
    }
}
