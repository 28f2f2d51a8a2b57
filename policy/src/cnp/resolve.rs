//! ClusterNetworkPolicies → the tier rules of each pod's table: the CNP half of "resolve, then
//! assemble" (`compile.rs` holds the NetworkPolicy half and drives both).
//!
//! [`resolve_cnp`] turns a validated CNP's peers into IP sets once (pods, node addresses,
//! networks), shared by every pod it selects; [`tier_rules`] lays the rules of the CNPs that
//! select one pod out in evaluation order ([`ValidCnp::evaluation_order`], then list order), the
//! order [`crate::table::PodTable::check`] takes the first match in. The reference it must agree
//! with is [`super::eval::decide`].

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use super::model::{Action, Peer, PodSet, PortMatch, Rule, Tier, ValidCnp};
use crate::cluster::{NodeInfo, PodInfo};
use crate::compile::ClusterIndex;
use crate::dns::DomainPattern;
use crate::ipset::{IpSet, IpSetBuilder};
use crate::ports::PortRange;
use crate::selector::Labels;
use crate::table::{CompiledRule, NamedPortTarget, TierRule};
use crate::verdict::Direction;

/// A CNP with its rules' peers resolved to addresses.
#[derive(Debug, Clone)]
pub struct ResolvedCnp {
    pub cnp: ValidCnp,
    /// The CNP's name (cluster-scoped).
    pub key: Arc<str>,
    pub ingress: Vec<ResolvedCnpRule>,
    pub egress: Vec<ResolvedCnpRule>,
}

#[derive(Debug, Clone)]
pub struct ResolvedCnpRule {
    pub index: usize,
    /// `name`, else `#index`.
    pub label: Arc<str>,
    /// `Deny` when the rule fails closed.
    pub action: Action,
    pub failed_closed: bool,
    /// `None`: every peer (a failed-closed rule).
    pub peers: Option<Arc<IpSet>>,
    /// Numeric ports; `None`: every protocol and port.
    pub ports: Option<Arc<[PortRange]>>,
    /// Ingress `destinationNamedPort`s, resolved on each subject pod in [`tier_rules`].
    pub named_on_subject: Vec<String>,
    /// Egress `destinationNamedPort`s, resolved on the destination pods here.
    pub named: Arc<[NamedPortTarget]>,
    /// `domainNames` of an Admin-tier egress `Accept` rule (elsewhere they match nothing, or
    /// fail closed in `Deny`/`Pass` rules).
    pub domains: Arc<[DomainPattern]>,
}

impl ResolvedCnp {
    pub fn rules(&self, direction: Direction) -> &[ResolvedCnpRule] {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    /// Whether the CNP's subject holds the pod (never a host-network or finished pod).
    pub fn selects(&self, index: &ClusterIndex<'_>, pod: &PodInfo) -> bool {
        index
            .namespaces
            .get(&pod.namespace)
            .is_some_and(|ns| in_pod_set(&self.cnp.subject, &ns.labels, pod))
    }
}

/// Whether `pod`, in a namespace labelled `namespace_labels`, belongs to `set`.
pub fn in_pod_set(set: &PodSet, namespace_labels: &Labels, pod: &PodInfo) -> bool {
    pod.selectable()
        && match set {
            PodSet::Namespaces(sel) => sel.matches(namespace_labels),
            PodSet::Pods { namespaces, pods } => {
                namespaces.matches(namespace_labels) && pods.matches(&pod.labels)
            }
        }
}

/// Indices (into `index.pods`) of the pods of `set`.
pub fn pods_of(index: &ClusterIndex<'_>, set: &PodSet) -> Vec<usize> {
    let namespaces = match set {
        PodSet::Namespaces(sel)
        | PodSet::Pods {
            namespaces: sel, ..
        } => sel,
    };
    index
        .namespaces
        .values()
        .filter(|ns| namespaces.matches(&ns.labels))
        .flat_map(|ns| {
            index
                .pods_in(&ns.name)
                .filter(|(_, p)| in_pod_set(set, &ns.labels, p))
                .map(|(i, _)| i)
        })
        .collect()
}

pub fn resolve_cnp(
    index: &ClusterIndex<'_>,
    nodes: &BTreeMap<String, NodeInfo>,
    cnp: ValidCnp,
) -> ResolvedCnp {
    let tier = cnp.tier;
    let resolve = |rules: &[Rule], direction| {
        rules
            .iter()
            .map(|r| resolve_rule(index, nodes, direction, tier, r))
            .collect()
    };
    ResolvedCnp {
        key: Arc::from(cnp.name.as_str()),
        ingress: resolve(&cnp.ingress, Direction::Ingress),
        egress: resolve(&cnp.egress, Direction::Egress),
        cnp,
    }
}

fn resolve_rule(
    index: &ClusterIndex<'_>,
    nodes: &BTreeMap<String, NodeInfo>,
    direction: Direction,
    tier: Tier,
    rule: &Rule,
) -> ResolvedCnpRule {
    let label: Arc<str> = Arc::from(rule.label());
    if rule.action != Action::Accept && rule.fails_closed() {
        return ResolvedCnpRule {
            index: rule.index,
            label,
            action: Action::Deny,
            failed_closed: true,
            peers: None,
            ports: None,
            named_on_subject: Vec::new(),
            named: Arc::from(Vec::new()),
            domains: Arc::from(Vec::new()),
        };
    }
    let mut domains = Vec::new();
    let mut set = IpSetBuilder::new();
    for peer in &rule.peers {
        match peer {
            Peer::Pods(pods) => {
                for i in pods_of(index, pods) {
                    index.pods[i].ips.iter().for_each(|ip| set.add_ip(*ip));
                }
            }
            Peer::Nodes(sel) => nodes
                .values()
                .filter(|n| sel.matches(&n.labels))
                .flat_map(|n| &n.addresses)
                .for_each(|ip| set.add_ip(*ip)),
            Peer::Networks(nets) => nets.iter().for_each(|net| set.add_block(*net, &[])),
            // Learned per pod at run time, in the Admin tier (see `docs/dns-policy.md`).
            Peer::DomainNames(names) if tier == Tier::Admin && direction == Direction::Egress => {
                domains.extend(names.iter().filter_map(|n| DomainPattern::parse(n)));
            }
            // An `Accept` rule's unenforceable peer matches nothing.
            Peer::DomainNames(_) | Peer::Unknown => {}
        }
    }
    let peers = Arc::new(set.build());
    let mut numeric = Vec::new();
    let mut named_specs = Vec::new();
    for p in rule.protocols.iter().flatten() {
        match p {
            PortMatch::Numeric(range) => numeric.push(*range),
            PortMatch::Named(name) => named_specs.push(name.clone()),
        }
    }
    let ports = rule.protocols.as_ref().map(|_| Arc::from(numeric));
    let (named_on_subject, named) = match direction {
        Direction::Ingress => (named_specs, Arc::from(Vec::new())),
        Direction::Egress => (Vec::new(), named_egress(index, &peers, &named_specs)),
    };
    ResolvedCnpRule {
        index: rule.index,
        label,
        action: rule.action,
        failed_closed: false,
        peers: Some(peers),
        ports,
        named_on_subject,
        named,
        domains: Arc::from(domains),
    }
}

/// An egress `destinationNamedPort` means, on each destination pod among the rule's peers, the
/// port that pod gives that name (with whatever protocol it declares it).
fn named_egress(
    index: &ClusterIndex<'_>,
    peers: &IpSet,
    names: &[String],
) -> Arc<[NamedPortTarget]> {
    if names.is_empty() {
        return Arc::from(Vec::new());
    }
    let mut targets: BTreeMap<(String, PortRange), IpSetBuilder> = BTreeMap::new();
    for pod in index.pods.iter().filter(|p| p.selectable()) {
        let ips: Vec<IpAddr> = pod
            .ips
            .iter()
            .copied()
            .filter(|ip| peers.contains(*ip))
            .collect();
        if ips.is_empty() {
            continue;
        }
        for name in names {
            for port in pod.ports.iter().filter(|p| p.name.as_deref() == Some(name)) {
                let builder = targets
                    .entry((name.clone(), PortRange::single(port.protocol, port.port)))
                    .or_default();
                ips.iter().for_each(|ip| builder.add_ip(*ip));
            }
        }
    }
    targets
        .into_iter()
        .map(|((name, port), b)| NamedPortTarget {
            name,
            port,
            peers: b.build(),
        })
        .collect()
}

/// The `tier` rules of one pod for one direction, from the CNPs that select it (already in
/// [`ValidCnp::evaluation_order`]).
pub fn tier_rules(
    pod: &PodInfo,
    selecting: &[&ResolvedCnp],
    tier: Tier,
    direction: Direction,
) -> Vec<TierRule> {
    let mut out = Vec::new();
    for rc in selecting.iter().filter(|c| c.cnp.tier == tier) {
        for r in rc.rules(direction) {
            let ports = match (&r.ports, r.named_on_subject.is_empty()) {
                (Some(numeric), false) => {
                    let mut resolved = numeric.to_vec();
                    for name in &r.named_on_subject {
                        resolved.extend(
                            pod.ports
                                .iter()
                                .filter(|p| p.name.as_deref() == Some(name.as_str()))
                                .map(|p| PortRange::single(p.protocol, p.port)),
                        );
                    }
                    Some(Arc::from(resolved))
                }
                (ports, _) => ports.clone(),
            };
            out.push(TierRule {
                action: r.action,
                label: r.label.clone(),
                failed_closed: r.failed_closed,
                matcher: CompiledRule {
                    policy: rc.key.clone(),
                    rule: r.index,
                    peers: r.peers.clone(),
                    ports,
                    named: r.named.clone(),
                },
                domains: r.domains.clone(),
            });
        }
    }
    out
}
