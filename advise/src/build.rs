//! One NetworkPolicy per workload from its observations.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use portcullis_contract::keys;
use portcullis_contract::log::FlowDirection;
use portcullis_policy::cluster::NAMESPACE_NAME_LABEL;
use portcullis_policy::Protocol;

use crate::cidr;
use crate::resolve::Observation;
use crate::workload::{Index, Peer, WorkloadId};
use crate::Options;

/// A port as the policy names it: by the server's port name where it declares one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortRef {
    Name(String),
    Number(u16),
}

type PortSet = BTreeSet<(PortRef, Protocol)>;

/// What one workload's policy allows, per direction: peers and the ports each was seen on.
#[derive(Debug, Default)]
struct Rules {
    ingress: BTreeMap<Peer, PortSet>,
    egress: BTreeMap<Peer, PortSet>,
}

impl Rules {
    fn side(&mut self, direction: FlowDirection) -> &mut BTreeMap<Peer, PortSet> {
        match direction {
            FlowDirection::Ingress => &mut self.ingress,
            FlowDirection::Egress => &mut self.egress,
        }
    }
}

/// A connection between two workloads needs the client's egress and the server's ingress. A
/// flow seen from one side only (the other proxy's records dropped, or its logs not given) is
/// written on the other side too, wherever that side gets a policy: its own records, or a
/// default deny in its namespace.
fn mirror(
    rules: &mut BTreeMap<WorkloadId, Rules>,
    index: &Index,
    observations: &[Observation],
    options: &Options,
) {
    let denied_namespaces: BTreeSet<String> = match options.default_deny {
        true => rules.keys().map(|w| w.namespace.clone()).collect(),
        false => BTreeSet::new(),
    };
    for o in observations {
        let Peer::Workload(peer) = &o.peer else {
            continue;
        };
        if !rules.contains_key(peer) && !denied_namespaces.contains(&peer.namespace) {
            continue;
        }
        let flipped = match o.direction {
            FlowDirection::Ingress => FlowDirection::Egress,
            FlowDirection::Egress => FlowDirection::Ingress,
        };
        let port = port_ref(index, o);
        rules
            .entry(peer.clone())
            .or_default()
            .side(flipped)
            .entry(Peer::Workload(o.subject.clone()))
            .or_default()
            .insert((port, o.protocol));
    }
}

#[derive(Debug, Default)]
pub struct Built {
    pub policies: Vec<NetworkPolicy>,
    pub warnings: Vec<String>,
}

/// The policies for every workload that has observations (and a default deny per namespace
/// when asked), in namespace and name order.
pub fn build(index: &Index, observations: &[Observation], options: &Options) -> Built {
    let mut rules: BTreeMap<WorkloadId, Rules> = BTreeMap::new();
    let mut built = Built::default();
    for o in observations {
        let port = port_ref(index, o);
        rules
            .entry(o.subject.clone())
            .or_default()
            .side(o.direction)
            .entry(o.peer.clone())
            .or_default()
            .insert((port, o.protocol));
    }
    mirror(&mut rules, index, observations, options);
    let dns = index.cluster_dns();
    if options.dns && dns.is_empty() && !rules.is_empty() {
        built.warnings.push(
            "no cluster DNS in the objects (Service kube-system/kube-dns or pods k8s-app=kube-dns): \
             no DNS rule written; pods that resolve names need one"
                .into(),
        );
    }
    let mut names: BTreeSet<(String, String)> = BTreeSet::new();
    for (workload, mut r) in rules {
        if options.dns {
            for d in &dns {
                let ports = r.egress.entry(Peer::Workload(d.clone())).or_default();
                for proto in [Protocol::Udp, Protocol::Tcp] {
                    let name = index.port_name(d, 53, proto);
                    ports.insert((name.map_or(PortRef::Number(53), PortRef::Name), proto));
                }
            }
        }
        if workload.labels.is_empty() {
            built.warnings.push(format!(
                "pods of {workload} have no stable label to select them by: no policy written for them"
            ));
            continue;
        }
        let name = unique_name(&mut names, &workload.namespace, &workload.name());
        built.policies.push(policy(&workload, &name, r, options));
    }
    if options.default_deny {
        let namespaces: BTreeSet<String> = names.iter().map(|(ns, _)| ns.clone()).collect();
        for ns in namespaces {
            built.policies.push(default_deny(&ns, options));
        }
    }
    built
}

fn port_ref(index: &Index, o: &Observation) -> PortRef {
    let server = match (&o.direction, &o.peer) {
        (FlowDirection::Ingress, _) => Some(&o.subject),
        (FlowDirection::Egress, Peer::Workload(w)) => Some(w),
        _ => None,
    };
    server
        .and_then(|w| index.port_name(w, o.port, o.protocol))
        .map_or(PortRef::Number(o.port), PortRef::Name)
}

/// `<name>-advised`, made a valid object name and unique in its namespace.
fn unique_name(taken: &mut BTreeSet<(String, String)>, namespace: &str, base: &str) -> String {
    let mut clean: String = base
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    clean.truncate(200);
    let clean = clean.trim_matches(['-', '.']).to_string();
    let clean = if clean.is_empty() {
        "pods".to_string()
    } else {
        clean
    };
    let mut candidate = format!("{clean}-advised");
    let mut n = 2;
    while !taken.insert((namespace.to_string(), candidate.clone())) {
        candidate = format!("{clean}-{n}-advised");
        n += 1;
    }
    candidate
}

fn meta(namespace: &str, name: &str, options: &Options) -> ObjectMeta {
    let mut annotations = BTreeMap::new();
    if options.staged {
        annotations.insert(keys::STAGED.to_string(), keys::STAGED_TRUE.to_string());
    }
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(namespace.to_string()),
        labels: Some(BTreeMap::from([(
            "app.kubernetes.io/managed-by".to_string(),
            "portcullis-advise".to_string(),
        )])),
        annotations: (!annotations.is_empty()).then_some(annotations),
        ..ObjectMeta::default()
    }
}

fn policy(workload: &WorkloadId, name: &str, rules: Rules, options: &Options) -> NetworkPolicy {
    let ingress = grouped(&rules.ingress, &workload.namespace, options)
        .into_iter()
        .map(|(from, ports)| NetworkPolicyIngressRule {
            from: Some(from),
            ports: Some(ports),
        })
        .collect();
    let egress = grouped(&rules.egress, &workload.namespace, options)
        .into_iter()
        .map(|(to, ports)| NetworkPolicyEgressRule {
            to: Some(to),
            ports: Some(ports),
        })
        .collect();
    NetworkPolicy {
        metadata: meta(&workload.namespace, name, options),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(match_labels(&workload.labels)),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: Some(ingress),
            egress: Some(egress),
        }),
    }
}

fn default_deny(namespace: &str, options: &Options) -> NetworkPolicy {
    NetworkPolicy {
        metadata: meta(namespace, "default-deny", options),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector::default()),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: None,
            egress: None,
        }),
    }
}

fn match_labels(labels: &BTreeMap<String, String>) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels.clone()),
        match_expressions: None,
    }
}

/// Peers that share the same ports become one rule; outside addresses of a rule are merged
/// into as few ipBlocks as [`cidr::aggregate`] allows.
fn grouped(
    side: &BTreeMap<Peer, PortSet>,
    own_namespace: &str,
    options: &Options,
) -> Vec<(Vec<NetworkPolicyPeer>, Vec<NetworkPolicyPort>)> {
    let mut by_ports: BTreeMap<&PortSet, Vec<&Peer>> = BTreeMap::new();
    for (peer, ports) in side {
        by_ports.entry(ports).or_default().push(peer);
    }
    by_ports
        .into_iter()
        .map(|(ports, peers)| (peers_of(&peers, own_namespace, options), ports_of(ports)))
        .collect()
}

fn peers_of(peers: &[&Peer], own_namespace: &str, options: &Options) -> Vec<NetworkPolicyPeer> {
    let mut out = Vec::new();
    let mut outside: Vec<IpAddr> = Vec::new();
    let mut nodes: Vec<IpAddr> = Vec::new();
    for peer in peers {
        match peer {
            Peer::Workload(w) => out.push(NetworkPolicyPeer {
                namespace_selector: (w.namespace != own_namespace).then(|| namespace(&w.namespace)),
                pod_selector: Some(match_labels(&w.labels)),
                ip_block: None,
            }),
            Peer::Namespace(ns) => out.push(NetworkPolicyPeer {
                namespace_selector: Some(namespace(ns)),
                pod_selector: None,
                ip_block: None,
            }),
            Peer::Node { ip, .. } => nodes.push(*ip),
            Peer::External(ip) => outside.push(*ip),
        }
    }
    let blocks = cidr::aggregate(nodes, cidr::Widen::default())
        .into_iter()
        .chain(cidr::aggregate(outside, options.widen));
    out.extend(blocks.map(|net| NetworkPolicyPeer {
        ip_block: Some(IPBlock {
            cidr: net.to_string(),
            except: None,
        }),
        ..NetworkPolicyPeer::default()
    }));
    out
}

fn namespace(name: &str) -> LabelSelector {
    match_labels(&BTreeMap::from([(
        NAMESPACE_NAME_LABEL.to_string(),
        name.to_string(),
    )]))
}

fn ports_of(ports: &PortSet) -> Vec<NetworkPolicyPort> {
    ports
        .iter()
        .map(|(port, proto)| NetworkPolicyPort {
            port: Some(match port {
                PortRef::Name(n) => IntOrString::String(n.clone()),
                PortRef::Number(n) => IntOrString::Int(i32::from(*n)),
            }),
            protocol: Some(proto.as_str().to_string()),
            end_port: None,
        })
        .collect()
}
