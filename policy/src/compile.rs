//! NetworkPolicies + pods + namespaces → one [`PodTable`] per pod.
//!
//! Two steps, both public so that the controller can redo only what an event affects:
//! [`resolve_policy`] (and [`crate::cnp::resolve_cnp`] for ClusterNetworkPolicies) turns a
//! validated policy's selectors into IP sets (per policy, shared by every pod it selects), and
//! [`assemble_table_with_cnps`] gathers the resolved rules of the policies that select one pod
//! into its table: Admin-tier CNP rules, NetworkPolicy v1 rules, Baseline-tier CNP rules.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use crate::cluster::{Cluster, NamespaceInfo, PodInfo};
use crate::cnp::resolve::{pods_of, tier_rules};
use crate::cnp::{resolve_cnp, Mode, ResolvedCnp, Tier, ValidCnp};
use crate::error::{ObjectError, ObjectRef};
use crate::ipset::{IpSet, IpSetBuilder};
use crate::ports::{PortRange, Protocol};
use crate::staged::StagedTables;
use crate::table::{CompiledRule, DirectionTable, NamedPortTarget, PodTable};
use crate::validate::{validate_policy, Peer, PortSpec, Rule, ValidPolicy};
use crate::verdict::Direction;

/// Read-only lookups over the cluster used while resolving selectors.
pub struct ClusterIndex<'a> {
    pub namespaces: &'a BTreeMap<String, NamespaceInfo>,
    pub pods: &'a [PodInfo],
    by_namespace: HashMap<&'a str, Vec<usize>>,
}

impl<'a> ClusterIndex<'a> {
    pub fn new(namespaces: &'a BTreeMap<String, NamespaceInfo>, pods: &'a [PodInfo]) -> Self {
        let mut by_namespace: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, p) in pods.iter().enumerate() {
            by_namespace
                .entry(p.namespace.as_str())
                .or_default()
                .push(i);
        }
        ClusterIndex {
            namespaces,
            pods,
            by_namespace,
        }
    }

    pub fn pods_in(&self, namespace: &str) -> impl Iterator<Item = (usize, &'a PodInfo)> + '_ {
        self.by_namespace
            .get(namespace)
            .into_iter()
            .flatten()
            .map(|&i| (i, &self.pods[i]))
    }

    /// Pods a policy selects: in its namespace, matching its podSelector, not hostNetwork.
    pub fn selected_pods<'s>(
        &'s self,
        policy: &'s ValidPolicy,
    ) -> impl Iterator<Item = (usize, &'a PodInfo)> + 's {
        self.pods_in(&policy.namespace)
            .filter(move |(_, p)| !p.host_network && policy.pod_selector.matches(&p.labels))
    }
}

/// A policy with its rules' peers resolved to addresses.
#[derive(Debug, Clone)]
pub struct ResolvedPolicy {
    pub policy: ValidPolicy,
    pub key: Arc<str>,
    pub ingress: Vec<ResolvedRule>,
    pub egress: Vec<ResolvedRule>,
}

#[derive(Debug, Clone)]
pub struct ResolvedRule {
    pub index: usize,
    pub peers: Option<Arc<IpSet>>,
    /// Numeric ports; `None` = all ports.
    pub ports: Option<Arc<[PortRange]>>,
    /// Ingress named ports, resolved against each selected pod in [`assemble_table`].
    pub named_on_selected: Vec<(String, Protocol)>,
    /// Egress named ports, resolved against the destination pods here.
    pub named: Arc<[NamedPortTarget]>,
}

impl ResolvedPolicy {
    pub fn rules(&self, direction: Direction) -> &[ResolvedRule] {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

pub fn resolve_policy(index: &ClusterIndex<'_>, policy: ValidPolicy) -> ResolvedPolicy {
    let key: Arc<str> = Arc::from(policy.key());
    let ingress = policy
        .ingress
        .iter()
        .enumerate()
        .map(|(i, r)| resolve_rule(index, &policy.namespace, Direction::Ingress, i, r))
        .collect();
    let egress = policy
        .egress
        .iter()
        .enumerate()
        .map(|(i, r)| resolve_rule(index, &policy.namespace, Direction::Egress, i, r))
        .collect();
    ResolvedPolicy {
        policy,
        key,
        ingress,
        egress,
    }
}

fn resolve_rule(
    index: &ClusterIndex<'_>,
    policy_namespace: &str,
    direction: Direction,
    rule_index: usize,
    rule: &Rule,
) -> ResolvedRule {
    // Peers: pods by selector (remembered, for named ports) and address blocks.
    let mut peer_pods: Vec<usize> = Vec::new();
    let peers = rule.peers.as_ref().map(|peers| {
        let mut set = IpSetBuilder::new();
        for peer in peers {
            match peer {
                Peer::Pods { namespaces, pods } => {
                    let chosen: Vec<&str> = match namespaces {
                        None => vec![policy_namespace],
                        Some(sel) => index
                            .namespaces
                            .values()
                            .filter(|ns| sel.matches(&ns.labels))
                            .map(|ns| ns.name.as_str())
                            .collect(),
                    };
                    for ns in chosen {
                        for (i, pod) in index.pods_in(ns) {
                            if pod.selectable()
                                && pods.as_ref().is_none_or(|s| s.matches(&pod.labels))
                            {
                                for ip in &pod.ips {
                                    set.add_ip(*ip);
                                }
                                peer_pods.push(i);
                            }
                        }
                    }
                }
                Peer::Block { cidr, except } => set.add_block(*cidr, except),
            }
        }
        Arc::new(set.build())
    });

    let mut numeric = Vec::new();
    let mut named_specs = Vec::new();
    for spec in rule.ports.iter().flatten() {
        match spec {
            PortSpec::Numeric(range) => numeric.push(*range),
            PortSpec::Named { name, protocol } => named_specs.push((name.clone(), *protocol)),
        }
    }
    let ports = rule.ports.as_ref().map(|_| Arc::from(numeric));

    let (named_on_selected, named) = match direction {
        Direction::Ingress => (named_specs, Arc::from(Vec::new())),
        Direction::Egress if named_specs.is_empty() => (Vec::new(), Arc::from(Vec::new())),
        Direction::Egress => (
            Vec::new(),
            resolve_named_egress(index, peers.as_deref(), peer_pods, &named_specs),
        ),
    };
    ResolvedRule {
        index: rule_index,
        peers,
        ports,
        named_on_selected,
        named,
    }
}

/// An egress named port means, on each destination pod, the port that pod gives that name.
/// Destinations are the rule's peers that are pods: those its selectors chose, and pods whose
/// address falls in its ipBlocks (or every pod, when the rule has no `to`).
fn resolve_named_egress(
    index: &ClusterIndex<'_>,
    peers: Option<&IpSet>,
    mut peer_pods: Vec<usize>,
    named: &[(String, Protocol)],
) -> Arc<[NamedPortTarget]> {
    let in_peers = |ip: &IpAddr| peers.is_none_or(|set| set.contains(*ip));
    let candidates: Vec<usize> = match peers {
        None => (0..index.pods.len()).collect(),
        Some(set) => {
            let chosen: HashSet<usize> = peer_pods.iter().copied().collect();
            peer_pods.extend(index.pods.iter().enumerate().filter_map(|(i, p)| {
                (!chosen.contains(&i) && p.ips.iter().any(|ip| set.contains(*ip))).then_some(i)
            }));
            peer_pods
        }
    };
    let mut targets: BTreeMap<(String, PortRange), IpSetBuilder> = BTreeMap::new();
    for i in candidates {
        let pod = &index.pods[i];
        if !pod.selectable() {
            continue;
        }
        for (name, protocol) in named {
            for port in pod.named_port(name, *protocol) {
                let builder = targets
                    .entry((name.clone(), PortRange::single(*protocol, port)))
                    .or_default();
                for ip in pod.ips.iter().filter(|ip| in_peers(ip)) {
                    builder.add_ip(*ip);
                }
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

/// Builds one pod's table from the resolved NetworkPolicies that select it (any order), with
/// no ClusterNetworkPolicy.
pub fn assemble_table(pod: &PodInfo, selecting: &[&ResolvedPolicy]) -> PodTable {
    assemble_table_with_cnps(pod, selecting, &[])
}

/// Builds one pod's table from the resolved NetworkPolicies (any order) and
/// ClusterNetworkPolicies (any order; the table holds them in [`ValidCnp::evaluation_order`])
/// that select it. Staged ones (`portcullis.dev/staged: "true"`) are left out of the enforced
/// table; when any selects the pod, the table also carries what they change
/// ([`crate::staged::StagedTables`]).
pub fn assemble_table_with_cnps(
    pod: &PodInfo,
    selecting: &[&ResolvedPolicy],
    cnps: &[&ResolvedCnp],
) -> PodTable {
    let mut table = PodTable::unrestricted(&pod.namespace, &pod.name, pod.ips.clone(), pod.host_ip);
    if pod.host_network {
        // Neither NetworkPolicy nor ClusterNetworkPolicy applies to hostNetwork pods; Portcullis
        // never injects them.
        return table;
    }
    let mut ordered: Vec<&ResolvedPolicy> = selecting.to_vec();
    ordered.sort_by(|a, b| a.key.cmp(&b.key));
    let mut cnps = cnps.to_vec();
    cnps.sort_by(|a, b| ValidCnp::evaluation_order(&a.cnp, &b.cnp));
    let staged: Vec<Arc<str>> = ordered
        .iter()
        .filter(|p| p.policy.staged)
        .map(|p| p.key.clone())
        .chain(cnps.iter().filter(|c| c.cnp.staged).map(|c| c.key.clone()))
        .collect();
    let enforced: Vec<&ResolvedPolicy> = ordered
        .iter()
        .copied()
        .filter(|p| !p.policy.staged)
        .collect();
    let enforced_cnps: Vec<&ResolvedCnp> = cnps.iter().copied().filter(|c| !c.cnp.staged).collect();
    table.ingress = full_direction_table(pod, &enforced, &enforced_cnps, Direction::Ingress);
    table.egress = full_direction_table(pod, &enforced, &enforced_cnps, Direction::Egress);
    if staged.is_empty() {
        return table;
    }
    let mut staged = staged;
    staged.sort();
    let combined = |direction: Direction, enforced: &DirectionTable| {
        let t = full_direction_table(pod, &ordered, &cnps, direction);
        (t != *enforced).then_some(t)
    };
    table.staged = Some(Box::new(StagedTables {
        policies: Arc::from(staged),
        ingress: combined(Direction::Ingress, &table.ingress),
        egress: combined(Direction::Egress, &table.egress),
    }));
    table
}

/// One direction's table from the given policies: Admin tier, NetworkPolicy v1, Baseline tier.
fn full_direction_table(
    pod: &PodInfo,
    policies: &[&ResolvedPolicy],
    cnps: &[&ResolvedCnp],
    direction: Direction,
) -> DirectionTable {
    let mut t = direction_table(pod, policies, direction);
    t.admin = tier_rules(pod, cnps, Tier::Admin, direction);
    t.baseline = tier_rules(pod, cnps, Tier::Baseline, direction);
    t
}

fn direction_table(
    pod: &PodInfo,
    policies: &[&ResolvedPolicy],
    direction: Direction,
) -> DirectionTable {
    let mut isolated_by = Vec::new();
    let mut rules = Vec::new();
    for rp in policies.iter().filter(|p| p.policy.isolates(direction)) {
        isolated_by.push(rp.key.clone());
        for r in rp.rules(direction) {
            let ports = match (&r.ports, r.named_on_selected.is_empty()) {
                (ports, true) => ports.clone(),
                (None, false) => None,
                (Some(numeric), false) => {
                    let mut resolved = numeric.to_vec();
                    for (name, protocol) in &r.named_on_selected {
                        resolved.extend(
                            pod.named_port(name, *protocol)
                                .map(|p| PortRange::single(*protocol, p)),
                        );
                    }
                    Some(Arc::from(resolved))
                }
            };
            rules.push(CompiledRule {
                policy: rp.key.clone(),
                rule: r.index,
                peers: r.peers.clone(),
                ports,
                named: r.named.clone(),
            });
        }
    }
    DirectionTable {
        isolated_by: Arc::from(isolated_by),
        rules,
        admin: Vec::new(),
        baseline: Vec::new(),
    }
}

/// The result of compiling a whole cluster.
#[derive(Debug, Clone, Default)]
pub struct CompiledCluster {
    /// Tables by `namespace/name`.
    pub tables: BTreeMap<String, Arc<PodTable>>,
    /// Which pod owns each address, to name peers in audit lines: beside the tables, not in them
    /// (the proxy keeps them in one place, whether they come from here or from the controller).
    pub peer_names: Arc<PeerNames>,
    /// Objects that were rejected; everything else compiled.
    pub errors: Vec<ObjectError>,
    pub pods: Vec<PodInfo>,
    pub policies: Vec<ResolvedPolicy>,
    /// Valid ClusterNetworkPolicies, in [`ValidCnp::evaluation_order`].
    pub cnps: Vec<ResolvedCnp>,
}

/// Pod names (`namespace/name`) by address.
pub type PeerNames = BTreeMap<IpAddr, String>;

impl CompiledCluster {
    pub fn table(&self, key: &str) -> Option<&Arc<PodTable>> {
        self.tables.get(key)
    }

    /// `namespace/name` of the pod that owns `ip`, if one does.
    pub fn peer_name(&self, ip: IpAddr) -> Option<&str> {
        self.peer_names.get(&ip.to_canonical()).map(String::as_str)
    }

    pub fn pod(&self, key: &str) -> Option<&PodInfo> {
        self.pods.iter().find(|p| p.key() == key)
    }
}

/// Compiles every pod's table. Invalid or duplicate objects are reported and left out; they
/// never stop the rest from compiling.
pub fn compile(cluster: &Cluster) -> CompiledCluster {
    let mut cluster_pods: Vec<PodInfo> = Vec::with_capacity(cluster.pods.len());
    let mut errors = Vec::new();
    let mut seen_pods = HashSet::new();
    for pod in &cluster.pods {
        if seen_pods.insert(pod.key()) {
            cluster_pods.push(pod.clone());
        } else {
            errors.push(duplicate("Pod", &pod.namespace, &pod.name, None));
        }
    }
    let mut namespaces = cluster.namespaces.clone();
    for p in &cluster_pods {
        if !namespaces.contains_key(&p.namespace) {
            namespaces.insert(
                p.namespace.clone(),
                NamespaceInfo::new(p.namespace.clone(), Default::default()),
            );
        }
    }
    let index = ClusterIndex::new(&namespaces, &cluster_pods);

    let mut seen_policies = HashSet::new();
    let mut resolved = Vec::with_capacity(cluster.policies.len());
    for sp in &cluster.policies {
        match validate_policy(&sp.policy, sp.source.as_deref()) {
            Ok(valid) => {
                if !seen_policies.insert(valid.key()) {
                    errors.push(duplicate(
                        "NetworkPolicy",
                        &valid.namespace,
                        &valid.name,
                        sp.source.as_deref(),
                    ));
                    continue;
                }
                resolved.push(resolve_policy(&index, valid));
            }
            Err(e) => errors.push(e),
        }
    }

    let cnps = resolve_cnps(cluster, &index, &mut errors);

    let mut selecting: Vec<Vec<&ResolvedPolicy>> = vec![Vec::new(); cluster_pods.len()];
    for rp in &resolved {
        for (i, _) in index.selected_pods(&rp.policy) {
            selecting[i].push(rp);
        }
    }
    let mut selecting_cnps: Vec<Vec<&ResolvedCnp>> = vec![Vec::new(); cluster_pods.len()];
    for rc in &cnps {
        for i in pods_of(&index, &rc.cnp.subject) {
            selecting_cnps[i].push(rc);
        }
    }
    let peer_names = Arc::new(known_pods(&cluster_pods));
    let tables = cluster_pods
        .iter()
        .zip(selecting.iter().zip(&selecting_cnps))
        .map(|(pod, (sel, c))| (pod.key(), Arc::new(assemble_table_with_cnps(pod, sel, c))))
        .collect();
    drop((selecting, selecting_cnps));
    CompiledCluster {
        tables,
        peer_names,
        errors,
        pods: cluster_pods,
        policies: resolved,
        cnps,
    }
}

/// Validates (as objects the API server accepted: an unknown peer type fails closed) and
/// resolves every ClusterNetworkPolicy; an invalid one is reported with every reason and left
/// out, a second one of a name too. The result is in [`ValidCnp::evaluation_order`].
fn resolve_cnps(
    cluster: &Cluster,
    index: &ClusterIndex<'_>,
    errors: &mut Vec<ObjectError>,
) -> Vec<ResolvedCnp> {
    let mut seen = HashSet::new();
    let mut valid = Vec::with_capacity(cluster.cnps.len());
    for sc in &cluster.cnps {
        let source = sc.source.as_deref();
        match crate::cnp::validate(&sc.cnp, Mode::FromApiServer) {
            Ok(v) if !seen.insert(v.name.clone()) => {
                let mut e = duplicate(crate::cnp::KIND, "", &v.name, source);
                e.object.namespace = None;
                errors.push(e);
            }
            Ok(v) => valid.push(v),
            Err(errs) => errors.extend(errs.iter().map(|e| e.to_object_error(source))),
        }
    }
    valid.sort_by(ValidCnp::evaluation_order);
    valid
        .into_iter()
        .map(|v| resolve_cnp(index, &cluster.nodes, v))
        .collect()
}

/// Pod names by address, for naming peers. hostNetwork pods share their node's address, so they
/// do not name it.
pub fn known_pods(pods: &[PodInfo]) -> PeerNames {
    pods.iter()
        .filter(|p| p.selectable())
        .flat_map(|p| p.ips.iter().map(move |ip| (*ip, p.key())))
        .collect()
}

fn duplicate(kind: &str, namespace: &str, name: &str, source: Option<&str>) -> ObjectError {
    ObjectError {
        object: Box::new(ObjectRef {
            kind: kind.into(),
            namespace: Some(namespace.into()),
            name: name.into(),
            source: source.map(str::to_string),
        }),
        field: "metadata.name".into(),
        message: "defined more than once; the first definition is used".into(),
    }
}
