//! The upstream ClusterNetworkPolicy conformance suite, transcribed as data in
//! `cnp-conformance/` (see its README): every step's CNPs must parse and validate, and every
//! probe's expected result is checked against the reference tier model (`cnp::eval`), with
//! NetworkPolicy v1 decided by this crate's engine; and through the compiled tables
//! (`PodTable::check` on both ends), which must agree with the expectation too.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use portcullis_policy::cnp::eval::{decide, Facts, Flow};
use portcullis_policy::cnp::{self, Mode, PodSet, ValidCnp};
use portcullis_policy::conformance::{self, documents, Step};
use portcullis_policy::manifest::load_into;
use portcullis_policy::selector::{Labels, Selector};
use portcullis_policy::{compile, Cluster, Direction, PodInfo, Protocol};
use serde::Deserialize;

#[derive(Deserialize)]
struct Head {
    kind: String,
}

#[derive(Deserialize)]
struct Node {
    metadata: NodeMeta,
    status: NodeStatus,
}
#[derive(Deserialize)]
struct NodeMeta {
    #[serde(default)]
    labels: Labels,
}
#[derive(Deserialize)]
struct NodeStatus {
    addresses: Vec<NodeAddress>,
}
#[derive(Deserialize)]
struct NodeAddress {
    address: String,
}

/// The resolver over the base pods and nodes, as the compiler will resolve selectors.
struct World<'a> {
    cluster: &'a Cluster,
    nodes: &'a [(Labels, Vec<IpAddr>)],
}

impl Facts for World<'_> {
    type Endpoint = PodInfo;

    fn in_pod_set(&self, set: &PodSet, pod: &PodInfo) -> bool {
        let Some(ns) = self.cluster.namespaces.get(&pod.namespace) else {
            return false;
        };
        pod.selectable()
            && match set {
                PodSet::Namespaces(sel) => sel.matches(&ns.labels),
                PodSet::Pods { namespaces, pods } => {
                    namespaces.matches(&ns.labels) && pods.matches(&pod.labels)
                }
            }
    }

    fn on_node(&self, nodes: &Selector, pod: &PodInfo) -> bool {
        self.nodes
            .iter()
            .any(|(labels, ips)| nodes.matches(labels) && pod.ips.iter().any(|ip| ips.contains(ip)))
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

fn load(cluster: &mut Cluster, text: &str, source: &str) {
    let report = load_into(cluster, text, source);
    assert!(report.errors.is_empty(), "{source}: {:?}", report.errors);
}

fn base() -> (String, Vec<(Labels, Vec<IpAddr>)>) {
    let text = conformance::base().unwrap();
    let mut nodes = Vec::new();
    for doc in documents(&text) {
        let head: Head = serde_saphyr::from_str(doc).unwrap();
        if head.kind == "Node" {
            let n: Node = serde_saphyr::from_str(doc).unwrap();
            let ips = n
                .status
                .addresses
                .iter()
                .filter_map(|a| a.address.parse().ok())
                .collect();
            nodes.push((n.metadata.labels, ips));
        }
    }
    (text, nodes)
}

/// Every CNP of a step, parsed and validated strictly, as `lint` and the API server would.
fn step_cnps(text: &str, source: &str) -> Vec<ValidCnp> {
    let mut out = Vec::new();
    for doc in documents(text) {
        let head: Head = serde_saphyr::from_str(doc).unwrap();
        if head.kind != cnp::KIND {
            continue;
        }
        let parsed = cnp::parse(doc).unwrap_or_else(|e| panic!("{source}: {e}"));
        match cnp::validate(&parsed, Mode::Strict) {
            Ok(v) => out.push(v),
            Err(errors) => panic!("{source}: {errors:?}"),
        }
    }
    out
}

#[derive(Default)]
struct Tally {
    tests: usize,
    steps: usize,
    cnps: usize,
    probes: usize,
    decided: usize,
    passed: usize,
    compiled_passed: usize,
    skipped: BTreeMap<String, usize>,
    failures: Vec<String>,
}

fn run_step(step: &Step, base_text: &str, nodes: &[(Labels, Vec<IpAddr>)], t: &mut Tally) {
    let objects = &step.objects;
    let source = step.dir.display().to_string();
    let cnps = step_cnps(objects, &source);
    t.cnps += cnps.len();
    let mut cluster = Cluster::new();
    load(&mut cluster, base_text, "base.yaml");
    load(&mut cluster, objects, &source);
    let full = compile(&cluster);
    assert!(full.errors.is_empty(), "{source}: {:?}", full.errors);
    assert_eq!(full.cnps.len(), cnps.len(), "{source}: every CNP compiled");
    // NetworkPolicy v1 alone, for the reference model.
    let mut v1_only = cluster.clone();
    v1_only.cnps.clear();
    let compiled = compile(&v1_only);
    let world = World {
        cluster: &cluster,
        nodes,
    };
    for p in &step.probes {
        t.probes += 1;
        let find = |key: &str| cluster.pods.iter().find(|pod| pod.key() == key);
        let (Some(client), Some(server)) = (find(&p.from), find(&p.to)) else {
            *t.skipped.entry("unknown pod".into()).or_default() += 1;
            continue;
        };
        // v1's verdict for one direction: None when no v1 policy isolates the pod in it.
        let v1 = |pod: &PodInfo, direction: Direction, peer: &PodInfo| {
            let table = compiled.table(&pod.key())?;
            let peer_ip = peer.primary_ip()?;
            table.direction(direction).is_isolated().then(|| {
                table
                    .check(direction, peer_ip, p.port, p.protocol)
                    .allowed()
            })
        };
        let self_traffic = client.primary_ip() == server.primary_ip();
        let flow = |direction, subject, peer| Flow {
            direction,
            subject,
            peer,
            port: p.port,
            protocol: p.protocol,
            self_traffic,
        };
        let egress = decide(
            &cnps,
            &flow(Direction::Egress, client, server),
            &world,
            v1(client, Direction::Egress, server),
        );
        let ingress = decide(
            &cnps,
            &flow(Direction::Ingress, server, client),
            &world,
            v1(server, Direction::Ingress, client),
        );
        t.decided += 1;
        let allowed = egress.allowed && ingress.allowed;
        let table = |pod: &PodInfo| full.table(&pod.key()).cloned();
        let (Some(ct), Some(st), Some(cip), Some(sip)) = (
            table(client),
            table(server),
            client.primary_ip(),
            server.primary_ip(),
        ) else {
            panic!("{source}: {} or {} has no table or address", p.from, p.to);
        };
        let e = ct.check(Direction::Egress, sip, p.port, p.protocol);
        let i = st.check(Direction::Ingress, cip, p.port, p.protocol);
        if (e.allowed() && i.allowed()) == p.allowed {
            t.compiled_passed += 1;
        } else {
            t.failures.push(format!(
                "{source}: {} -> {} {}/{}: expected {}, the compiled tables say egress: {e}; ingress: {i}",
                p.from, p.to, p.port, p.protocol, p.allowed
            ));
        }
        if allowed == p.allowed {
            t.passed += 1;
        } else {
            t.failures.push(format!(
                "{source}: {} -> {} {}/{}: expected {}, model says {} (egress {:?}, ingress {:?})",
                p.from, p.to, p.port, p.protocol, p.allowed, allowed, egress.by, ingress.by
            ));
        }
    }
}

#[test]
fn every_upstream_cnp_conformance_vector() {
    let (base_text, nodes) = base();
    let tests = conformance::tests().unwrap();
    let mut t = Tally::default();
    for test in &tests {
        t.tests += 1;
        assert!(!test.steps.is_empty(), "{} has no step", test.name);
        for step in &test.steps {
            t.steps += 1;
            run_step(step, &base_text, &nodes, &mut t);
        }
    }
    println!(
        "cnp conformance vectors: {} tests, {} steps, {} CNPs validated, {} probes: {} decided by the model, {} passed, {} passed through the compiled tables, skipped {:?}",
        t.tests, t.steps, t.cnps, t.probes, t.decided, t.passed, t.compiled_passed, t.skipped
    );
    assert_eq!(
        t.tests, 24,
        "the upstream suite has 24 ClusterNetworkPolicy tests"
    );
    assert!(t.failures.is_empty(), "{}", t.failures.join("\n"));
    assert_eq!(t.decided + t.skipped.values().sum::<usize>(), t.probes);
    assert_eq!(t.compiled_passed, t.decided);
}
