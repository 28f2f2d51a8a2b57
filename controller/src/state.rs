//! The cluster as policy sees it, and every pod's compiled table, kept up to date incrementally.
//!
//! Pure: no I/O, no clock. A [`Change`] (an object added, changed or gone, or a whole kind
//! relisted) recompiles only what it can affect:
//! - a policy change re-resolves that policy and reassembles the pods it selected before or
//!   selects now;
//! - a pod change reassembles that pod, and re-resolves the policies whose peers could include
//!   it before or after the change (its labels, IPs and named ports feed their IP sets);
//! - a namespace label change re-resolves the policies whose namespaceSelectors matched it before
//!   or match it now.
//!
//! Tables are then compared with what they were, and only pods whose table really changed are
//! reported, so that only their proxies receive anything. A from-scratch
//! [`portcullis_policy::compile`] of the same objects is the oracle (see the tests).
//!
//! ClusterNetworkPolicies and Nodes: `state/cnp.rs` says what their events, and pod and namespace
//! events, mark.
//!
//! Peer names are not part of any table (compile returns them beside the tables): here they are
//! kept in `peer_names` and streamed apart, as `peers`/`peers_delta` lines, so that one new pod
//! does not mean a new table for every proxy.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use portcullis_policy::cluster::{NodeInfo, SourcedCnp, SourcedPolicy};
use portcullis_policy::cnp::ResolvedCnp;
use portcullis_policy::compile::{
    assemble_table_with_cnps, resolve_policy, ClusterIndex, ResolvedPolicy,
};
use portcullis_policy::service::{resolve, EndpointSliceInfo, ResolvedService, ServiceInfo};
use portcullis_policy::validate::{validate_policy, Peer, PortSpec, Rule, ValidPolicy};
use portcullis_policy::{NamespaceInfo, ObjectError, PodInfo, PodTable};

mod cnp;
pub use cnp::InvalidCnp;

/// One thing that happened to the cluster.
#[derive(Debug, Clone)]
pub enum Change {
    Namespace(NamespaceInfo),
    NamespaceGone(String),
    Pod(PodInfo),
    PodGone {
        namespace: String,
        name: String,
    },
    Policy(Box<SourcedPolicy>),
    PolicyGone {
        namespace: String,
        name: String,
    },
    /// A relist: these are all the namespaces there are.
    ResetNamespaces(Vec<NamespaceInfo>),
    ResetPods(Vec<PodInfo>),
    /// A relist in which some pods could not be read: those (`namespace/name`) keep their last
    /// known state instead of disappearing.
    ResetPodsKeeping {
        pods: Vec<PodInfo>,
        unreadable: Vec<String>,
    },
    ResetPolicies(Vec<SourcedPolicy>),
    Service(ServiceInfo),
    ServiceGone {
        namespace: String,
        name: String,
    },
    EndpointSlice(EndpointSliceInfo),
    EndpointSliceGone {
        namespace: String,
        name: String,
    },
    ResetServices(Vec<ServiceInfo>),
    ResetEndpointSlices(Vec<EndpointSliceInfo>),
    /// A ClusterNetworkPolicy (`policy.networking.k8s.io/v1alpha2`) as written; validated here.
    Cnp(Box<SourcedCnp>),
    /// A ClusterNetworkPolicy that does not even parse (a field this version does not know): it
    /// is reported by name and its last valid version, if any, stays in force.
    CnpUnreadable(ObjectError),
    CnpGone(String),
    /// A relist: these are all the ClusterNetworkPolicies there are (the unreadable ones keep
    /// their last valid version).
    ResetCnps {
        cnps: Vec<SourcedCnp>,
        unreadable: Vec<ObjectError>,
    },
    Node(NodeInfo),
    NodeGone(String),
    ResetNodes(Vec<NodeInfo>),
}

/// What one [`ClusterState::apply`] did.
#[derive(Debug, Default)]
pub struct Applied {
    /// Pods whose table changed, with the new table (`None`: the pod is gone).
    pub changed: Vec<(String, Option<Arc<PodTable>>)>,
    /// Objects that were rejected; for a policy that had a valid version before, that version
    /// stays in force.
    pub rejected: Vec<ObjectError>,
    /// Addresses whose owning pod may have changed (see [`ClusterState::peer_name`]).
    pub peers_touched: Vec<IpAddr>,
    /// Services (`namespace/name`) whose resolved form changed, with the new one (`None`: gone,
    /// or no longer has a virtual IP).
    pub services_changed: Vec<(String, Option<Arc<ResolvedService>>)>,
    /// Policies re-resolved and tables reassembled: the incremental work actually done.
    pub policies_resolved: usize,
    pub tables_assembled: usize,
}

#[derive(Default)]
pub struct ClusterState {
    /// Namespace objects as declared.
    declared_namespaces: BTreeMap<String, NamespaceInfo>,
    /// Declared ones, plus those that only pods imply (with just their name label), as
    /// [`portcullis_policy::compile`] treats them.
    namespaces: BTreeMap<String, NamespaceInfo>,
    pods: Vec<PodInfo>,
    pod_slots: HashMap<String, usize>,
    pods_per_namespace: HashMap<String, usize>,
    /// Valid policies by `namespace/name`, with their peers resolved.
    policies: BTreeMap<String, Arc<ResolvedPolicy>>,
    tables: HashMap<String, Arc<PodTable>>,
    /// Which pod owns an address, to name peers (selectable pods only, as compile's
    /// `peer_names`).
    peer_names: HashMap<IpAddr, String>,
    /// Services and EndpointSlices as declared, by `namespace/name`, and each Service resolved
    /// with its slices. Endpoints come from slices only: in a cluster the EndpointSlice
    /// controller writes them (file mode derives them before they get here).
    services: BTreeMap<String, ServiceInfo>,
    slices: BTreeMap<String, EndpointSliceInfo>,
    slices_of_service: HashMap<String, BTreeSet<String>>,
    resolved_services: HashMap<String, Arc<ResolvedService>>,
    /// ClusterNetworkPolicies and Nodes (`state/cnp.rs`).
    cnps: cnp::Cnps,
}

/// Work collected while changes are applied, done once at the end of the batch.
#[derive(Default)]
struct Dirty {
    policies: BTreeSet<String>,
    pods: BTreeSet<String>,
    gone_pods: BTreeSet<String>,
    peers: BTreeSet<IpAddr>,
    services: BTreeSet<String>,
    /// ClusterNetworkPolicies to resolve again (their subjects are reassembled).
    cnps: BTreeSet<String>,
}

impl ClusterState {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn table(&self, pod_key: &str) -> Option<&Arc<PodTable>> {
        self.tables.get(pod_key)
    }

    pub fn tables(&self) -> impl Iterator<Item = (&String, &Arc<PodTable>)> {
        self.tables.iter()
    }

    /// The pod (`namespace/name`) that owns an address, for naming peers in audit lines.
    pub fn peer_name(&self, ip: &IpAddr) -> Option<&String> {
        self.peer_names.get(ip)
    }

    pub fn peer_names(&self) -> &HashMap<IpAddr, String> {
        &self.peer_names
    }

    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    pub fn policy_count(&self) -> usize {
        self.policies.len()
    }

    pub fn namespace_count(&self) -> usize {
        self.namespaces.len()
    }

    /// Services that have a virtual IP, resolved, as proxies receive them.
    pub fn resolved_services(&self) -> &HashMap<String, Arc<ResolvedService>> {
        &self.resolved_services
    }

    pub fn apply(&mut self, changes: impl IntoIterator<Item = Change>) -> Applied {
        let mut dirty = Dirty::default();
        let mut applied = Applied::default();
        for change in changes {
            self.record(change, &mut dirty, &mut applied);
        }
        self.recompile(dirty, &mut applied);
        applied
    }

    fn record(&mut self, change: Change, dirty: &mut Dirty, applied: &mut Applied) {
        match change {
            Change::Namespace(ns) => {
                self.declared_namespaces.insert(ns.name.clone(), ns.clone());
                self.refresh_namespace(&ns.name, dirty);
            }
            Change::NamespaceGone(name) => {
                self.declared_namespaces.remove(&name);
                self.refresh_namespace(&name, dirty);
            }
            Change::Pod(pod) => self.upsert_pod(pod, dirty),
            Change::PodGone { namespace, name } => {
                self.remove_pod(&format!("{namespace}/{name}"), dirty)
            }
            Change::Policy(sp) => match validate_policy(&sp.policy, sp.source.as_deref()) {
                Ok(valid) => self.upsert_policy(valid, dirty),
                Err(e) => applied.rejected.push(e),
            },
            Change::PolicyGone { namespace, name } => {
                self.remove_policy(&format!("{namespace}/{name}"), dirty)
            }
            Change::ResetNamespaces(all) => self.reset_namespaces(all, dirty, applied),
            Change::ResetPods(pods) => self.record(
                Change::ResetPodsKeeping {
                    pods,
                    unreadable: Vec::new(),
                },
                dirty,
                applied,
            ),
            Change::ResetPodsKeeping {
                pods: all,
                unreadable,
            } => {
                let mut keep: BTreeSet<String> = all.iter().map(PodInfo::key).collect();
                keep.extend(unreadable);
                let gone: Vec<String> = self
                    .pod_slots
                    .keys()
                    .filter(|k| !keep.contains(*k))
                    .cloned()
                    .collect();
                for key in gone {
                    self.remove_pod(&key, dirty);
                }
                for pod in all {
                    self.upsert_pod(pod, dirty);
                }
            }
            Change::Service(_)
            | Change::ServiceGone { .. }
            | Change::EndpointSlice(_)
            | Change::EndpointSliceGone { .. }
            | Change::ResetServices(_)
            | Change::ResetEndpointSlices(_) => self.record_service_change(change, dirty),
            Change::ResetPolicies(all) => self.reset_policies(all, dirty, applied),
            Change::Cnp(_)
            | Change::CnpUnreadable(_)
            | Change::CnpGone(_)
            | Change::ResetCnps { .. }
            | Change::Node(_)
            | Change::NodeGone(_)
            | Change::ResetNodes(_) => self.record_cnp_change(change, dirty, applied),
        }
    }

    /// A relist of Namespaces: those missing are gone.
    fn reset_namespaces(
        &mut self,
        all: Vec<NamespaceInfo>,
        dirty: &mut Dirty,
        applied: &mut Applied,
    ) {
        let keep: BTreeSet<&str> = all.iter().map(|n| n.name.as_str()).collect();
        let gone: Vec<String> = self
            .declared_namespaces
            .keys()
            .filter(|k| !keep.contains(k.as_str()))
            .cloned()
            .collect();
        for name in gone {
            self.record(Change::NamespaceGone(name), dirty, applied);
        }
        for ns in all {
            if self.declared_namespaces.get(&ns.name) != Some(&ns) {
                self.record(Change::Namespace(ns), dirty, applied);
            }
        }
    }

    /// A relist of NetworkPolicies: those missing are gone; an invalid one keeps its last valid
    /// version.
    fn reset_policies(
        &mut self,
        all: Vec<SourcedPolicy>,
        dirty: &mut Dirty,
        applied: &mut Applied,
    ) {
        let mut keep = BTreeSet::new();
        for sp in all {
            match validate_policy(&sp.policy, sp.source.as_deref()) {
                Ok(valid) => {
                    if keep.insert(valid.key()) {
                        self.upsert_policy(valid, dirty);
                    } else {
                        applied.rejected.push(duplicate_policy(&valid, &sp));
                    }
                }
                Err(e) => {
                    // The object exists, invalid: keep its last valid version.
                    let o = &e.object;
                    keep.insert(format!(
                        "{}/{}",
                        o.namespace.as_deref().unwrap_or("default"),
                        o.name
                    ));
                    applied.rejected.push(e);
                }
            }
        }
        let gone: Vec<String> = self
            .policies
            .keys()
            .filter(|k| !keep.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            self.remove_policy(&key, dirty);
        }
    }

    /// Services and slices touch no table: they only mark the Services to resolve again.
    fn record_service_change(&mut self, change: Change, dirty: &mut Dirty) {
        match change {
            Change::Service(svc) => {
                let key = svc.key();
                if self.services.get(&key) != Some(&svc) {
                    self.services.insert(key.clone(), svc);
                    dirty.services.insert(key);
                }
            }
            Change::ServiceGone { namespace, name } => {
                let key = format!("{namespace}/{name}");
                if self.services.remove(&key).is_some() {
                    dirty.services.insert(key);
                }
            }
            Change::EndpointSlice(slice) => {
                let key = format!("{}/{}", slice.namespace, slice.name);
                if self.slices.get(&key) == Some(&slice) {
                    return;
                }
                self.remove_slice(&key, dirty);
                let service = slice.service_key();
                self.slices_of_service
                    .entry(service.clone())
                    .or_default()
                    .insert(key.clone());
                self.slices.insert(key, slice);
                dirty.services.insert(service);
            }
            Change::EndpointSliceGone { namespace, name } => {
                self.remove_slice(&format!("{namespace}/{name}"), dirty);
            }
            Change::ResetServices(all) => {
                let keep: BTreeSet<String> = all.iter().map(ServiceInfo::key).collect();
                let gone: Vec<String> = self
                    .services
                    .keys()
                    .filter(|k| !keep.contains(*k))
                    .cloned()
                    .collect();
                for key in gone {
                    self.services.remove(&key);
                    dirty.services.insert(key);
                }
                for svc in all {
                    self.record_service_change(Change::Service(svc), dirty);
                }
            }
            Change::ResetEndpointSlices(all) => {
                let keep: BTreeSet<String> = all
                    .iter()
                    .map(|s| format!("{}/{}", s.namespace, s.name))
                    .collect();
                let gone: Vec<String> = self
                    .slices
                    .keys()
                    .filter(|k| !keep.contains(*k))
                    .cloned()
                    .collect();
                for key in gone {
                    self.remove_slice(&key, dirty);
                }
                for slice in all {
                    self.record_service_change(Change::EndpointSlice(slice), dirty);
                }
            }
            _ => {}
        }
    }

    fn remove_slice(&mut self, key: &str, dirty: &mut Dirty) {
        let Some(old) = self.slices.remove(key) else {
            return;
        };
        let service = old.service_key();
        if let Some(keys) = self.slices_of_service.get_mut(&service) {
            keys.remove(key);
            if keys.is_empty() {
                self.slices_of_service.remove(&service);
            }
        }
        dirty.services.insert(service);
    }

    /// Resolves the Services marked dirty; reports those whose resolved form changed.
    fn resolve_services(&mut self, dirty: &BTreeSet<String>, applied: &mut Applied) {
        for key in dirty {
            let now = self.services.get(key).and_then(|svc| {
                let slices: Vec<&EndpointSliceInfo> = self
                    .slices_of_service
                    .get(key)
                    .into_iter()
                    .flatten()
                    .filter_map(|k| self.slices.get(k))
                    .collect();
                resolve(svc, &slices)
            });
            let before = self.resolved_services.get(key);
            if before.map(|b| b.as_ref()) == now.as_ref() {
                continue;
            }
            let now = now.map(Arc::new);
            match &now {
                Some(r) => self.resolved_services.insert(key.clone(), r.clone()),
                None => self.resolved_services.remove(key),
            };
            applied.services_changed.push((key.clone(), now));
        }
    }

    fn upsert_pod(&mut self, pod: PodInfo, dirty: &mut Dirty) {
        let key = pod.key();
        match self.pod_slots.get(&key) {
            Some(&slot) => {
                if self.pods[slot] == pod {
                    return;
                }
                let old = std::mem::replace(&mut self.pods[slot], pod);
                self.forget_peer(&old, dirty);
                self.learn_peer(slot, dirty);
                let new = self.pods[slot].clone();
                self.mark_policies_seeing_a_change(&old, &new, dirty);
                self.mark_cnps_seeing_a_change(&old, &new, dirty);
            }
            None => {
                let namespace = pod.namespace.clone();
                self.pod_slots.insert(key.clone(), self.pods.len());
                self.pods.push(pod);
                let last = self.pods.len() - 1;
                self.learn_peer(last, dirty);
                let new = self.pods[last].clone();
                self.mark_policies_depending_on(&new, dirty);
                self.mark_cnps_depending_on(&new, dirty);
                *self
                    .pods_per_namespace
                    .entry(namespace.clone())
                    .or_default() += 1;
                self.refresh_namespace(&namespace, dirty);
            }
        }
        dirty.gone_pods.remove(&key);
        dirty.pods.insert(key);
    }

    fn remove_pod(&mut self, key: &str, dirty: &mut Dirty) {
        let Some(slot) = self.pod_slots.remove(key) else {
            return;
        };
        let old = self.pods.swap_remove(slot);
        if let Some(moved) = self.pods.get(slot) {
            self.pod_slots.insert(moved.key(), slot);
        }
        self.forget_peer(&old, dirty);
        self.mark_policies_depending_on(&old, dirty);
        self.mark_cnps_depending_on(&old, dirty);
        if let Some(n) = self.pods_per_namespace.get_mut(&old.namespace) {
            *n -= 1;
            if *n == 0 {
                self.pods_per_namespace.remove(&old.namespace);
            }
        }
        self.refresh_namespace(&old.namespace, dirty);
        dirty.pods.remove(key);
        dirty.gone_pods.insert(key.to_string());
    }

    fn learn_peer(&mut self, slot: usize, dirty: &mut Dirty) {
        let pod = &self.pods[slot];
        if !pod.selectable() {
            return;
        }
        let key = pod.key();
        for ip in &pod.ips {
            if self.peer_names.get(ip) != Some(&key) {
                self.peer_names.insert(*ip, key.clone());
                dirty.peers.insert(*ip);
            }
        }
    }

    /// Forgets the addresses a pod's old version owned (unless another pod took them since).
    fn forget_peer(&mut self, old: &PodInfo, dirty: &mut Dirty) {
        let key = old.key();
        for ip in &old.ips {
            if self.peer_names.get(ip) == Some(&key) {
                self.peer_names.remove(ip);
                dirty.peers.insert(*ip);
            }
        }
    }

    fn upsert_policy(&mut self, valid: ValidPolicy, dirty: &mut Dirty) {
        let key = valid.key();
        self.mark_selected_pods(&key, dirty);
        // Resolved for real at the end of the batch; until then the placeholder only holds the
        // validated policy.
        self.policies.insert(
            key.clone(),
            Arc::new(ResolvedPolicy {
                key: Arc::from(key.as_str()),
                policy: valid,
                ingress: Vec::new(),
                egress: Vec::new(),
            }),
        );
        dirty.policies.insert(key);
    }

    fn remove_policy(&mut self, key: &str, dirty: &mut Dirty) {
        self.mark_selected_pods(key, dirty);
        self.policies.remove(key);
        dirty.policies.remove(key);
    }

    /// Marks the pods the current version of a policy selects.
    fn mark_selected_pods(&self, policy_key: &str, dirty: &mut Dirty) {
        if let Some(rp) = self.policies.get(policy_key) {
            for pod in self.pods.iter().filter(|p| {
                p.namespace == rp.policy.namespace && rp.policy.pod_selector.matches(&p.labels)
            }) {
                dirty.pods.insert(pod.key());
            }
        }
    }

    /// Brings a namespace's effective labels up to date; policies whose namespaceSelectors see
    /// the difference are re-resolved.
    fn refresh_namespace(&mut self, name: &str, dirty: &mut Dirty) {
        let effective = match self.declared_namespaces.get(name) {
            Some(ns) => Some(ns.clone()),
            None if self.pods_per_namespace.contains_key(name) => {
                Some(NamespaceInfo::new(name, Default::default()))
            }
            None => None,
        };
        let old = self.namespaces.get(name).cloned();
        if old == effective {
            return;
        }
        for (key, rp) in &self.policies {
            let sees = |ns: &Option<NamespaceInfo>| {
                ns.as_ref().is_some_and(|ns| {
                    namespace_selectors(&rp.policy).any(|s| s.matches(&ns.labels))
                })
            };
            if sees(&old) || sees(&effective) {
                dirty.policies.insert(key.clone());
            }
        }
        self.mark_cnps_seeing_namespace(name, old.as_ref(), effective.as_ref(), dirty);
        match effective {
            Some(ns) => self.namespaces.insert(name.to_string(), ns),
            None => self.namespaces.remove(name),
        };
    }

    fn mark_policies_depending_on(&self, pod: &PodInfo, dirty: &mut Dirty) {
        for (key, rp) in &self.policies {
            if self.policy_depends_on(&rp.policy, pod) {
                dirty.policies.insert(key.clone());
            }
        }
    }

    /// Whether a pod can appear in a policy's resolved peers (as an address, or as the owner of
    /// a named port an egress rule refers to). Errs on the side of yes.
    fn policy_depends_on(&self, policy: &ValidPolicy, pod: &PodInfo) -> bool {
        let mut any = false;
        self.for_each_peer(policy, |named_egress, peer| {
            any |= self.peer_includes(policy, named_egress, peer, pod);
            !any
        });
        any
    }

    /// A changed pod: the policies whose resolved peers can differ. A label change that leaves
    /// the pod inside (or outside) exactly the same peers changes no IP set, so it re-resolves
    /// nothing; a change of address, ports or liveness matters wherever the pod is a peer.
    fn mark_policies_seeing_a_change(&self, old: &PodInfo, new: &PodInfo, dirty: &mut Dirty) {
        let facts_changed =
            old.ips != new.ips || old.ports != new.ports || old.selectable() != new.selectable();
        for (key, rp) in &self.policies {
            let mut seen = false;
            let mut moved = false;
            self.for_each_peer(&rp.policy, |named_egress, peer| {
                let before = self.peer_includes(&rp.policy, named_egress, peer, old);
                let after = self.peer_includes(&rp.policy, named_egress, peer, new);
                moved |= before != after;
                seen |= before || after;
                !moved
            });
            if moved || (seen && facts_changed) {
                dirty.policies.insert(key.clone());
            }
        }
    }

    /// Calls `f(named_egress, peer)` for every peer of every rule (`None`: a rule without
    /// peers) until it returns false.
    fn for_each_peer<'p>(
        &self,
        policy: &'p ValidPolicy,
        mut f: impl FnMut(bool, Option<&'p Peer>) -> bool,
    ) {
        for (i, rule) in policy.ingress.iter().chain(&policy.egress).enumerate() {
            let named_egress = i >= policy.ingress.len() && has_named_ports(rule);
            match &rule.peers {
                None => {
                    if !f(named_egress, None) {
                        return;
                    }
                }
                Some(peers) => {
                    for peer in peers {
                        if !f(named_egress, Some(peer)) {
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Whether one peer of a policy takes `pod` into its resolution.
    fn peer_includes(
        &self,
        policy: &ValidPolicy,
        named_egress: bool,
        peer: Option<&Peer>,
        pod: &PodInfo,
    ) -> bool {
        match peer {
            // Every pod, but only as the owner of the named ports egress rules refer to.
            None => named_egress,
            Some(Peer::Pods { namespaces, pods }) => {
                let ns_ok = match namespaces {
                    None => pod.namespace == policy.namespace,
                    Some(sel) => self
                        .namespaces
                        .get(&pod.namespace)
                        .is_some_and(|ns| sel.matches(&ns.labels)),
                };
                ns_ok && pods.as_ref().is_none_or(|s| s.matches(&pod.labels))
            }
            Some(Peer::Block { cidr, .. }) => {
                named_egress && pod.ips.iter().any(|ip| cidr.contains(ip))
            }
        }
    }

    fn recompile(&mut self, dirty: Dirty, applied: &mut Applied) {
        applied.peers_touched = dirty.peers.into_iter().collect();
        self.resolve_services(&dirty.services, applied);
        let mut reassemble = dirty.pods;
        if !dirty.policies.is_empty() {
            let index = ClusterIndex::new(&self.namespaces, &self.pods);
            for key in &dirty.policies {
                let Some(current) = self.policies.get(key) else {
                    continue;
                };
                let resolved = resolve_policy(&index, current.policy.clone());
                for (_, pod) in index.selected_pods(&resolved.policy) {
                    reassemble.insert(pod.key());
                }
                applied.policies_resolved += 1;
                self.policies.insert(key.clone(), Arc::new(resolved));
            }
        }

        self.resolve_cnps(&dirty.cnps, &mut reassemble);

        for key in dirty.gone_pods {
            if self.tables.remove(&key).is_some() {
                applied.changed.push((key, None));
            }
        }
        for key in reassemble {
            let Some(&slot) = self.pod_slots.get(&key) else {
                continue;
            };
            let pod = &self.pods[slot];
            let selecting: Vec<&ResolvedPolicy> = self
                .policies
                .range(format!("{}/", pod.namespace)..)
                .take_while(|(k, _)| k.starts_with(&format!("{}/", pod.namespace)))
                .map(|(_, rp)| rp.as_ref())
                .filter(|rp| rp.policy.pod_selector.matches(&pod.labels))
                .collect();
            let table = assemble(pod, &selecting, &self.cnps_selecting(pod));
            applied.tables_assembled += 1;
            if self.tables.get(&key).map(|t| t.as_ref()) != Some(&table) {
                let table = Arc::new(table);
                self.tables.insert(key.clone(), table.clone());
                applied.changed.push((key, Some(table)));
            }
        }
    }
}

/// One pod's table from the NetworkPolicies and the ClusterNetworkPolicies (resolved in
/// [`ClusterState::resolve_cnps`]) that select it; `tests/incremental.rs`'s oracle checks it
/// against a full compile of the same objects.
fn assemble(pod: &PodInfo, selecting: &[&ResolvedPolicy], cnps: &[&ResolvedCnp]) -> PodTable {
    assemble_table_with_cnps(pod, selecting, cnps)
}

fn has_named_ports(rule: &Rule) -> bool {
    rule.ports
        .iter()
        .flatten()
        .any(|p| matches!(p, PortSpec::Named { .. }))
}

fn namespace_selectors(
    policy: &ValidPolicy,
) -> impl Iterator<Item = &portcullis_policy::selector::Selector> {
    policy
        .ingress
        .iter()
        .chain(&policy.egress)
        .flat_map(|r| r.peers.iter().flatten())
        .filter_map(|p| match p {
            Peer::Pods {
                namespaces: Some(sel),
                ..
            } => Some(sel),
            _ => None,
        })
}

fn duplicate_policy(valid: &ValidPolicy, sp: &SourcedPolicy) -> ObjectError {
    ObjectError {
        object: Box::new(portcullis_policy::ObjectRef {
            kind: "NetworkPolicy".into(),
            namespace: Some(valid.namespace.clone()),
            name: valid.name.clone(),
            source: sp.source.clone(),
        }),
        field: "metadata.name".into(),
        message: "defined more than once; the first definition is used".into(),
    }
}

#[cfg(test)]
mod service_tests {
    use super::*;
    use portcullis_policy::service::{
        Endpoint, EndpointPort, ServicePort, ServiceType, TargetPort,
    };
    use portcullis_policy::Protocol;

    fn service(name: &str, ip: &str) -> ServiceInfo {
        ServiceInfo {
            namespace: "shop".into(),
            name: name.into(),
            service_type: ServiceType::ClusterIP,
            cluster_ips: vec![ip.parse().unwrap()],
            headless: false,
            selector: None,
            ports: vec![ServicePort {
                name: None,
                protocol: Protocol::Tcp,
                port: 80,
                target_port: TargetPort::Number(8080),
            }],
        }
    }

    fn slice(name: &str, service: &str, ips: &[&str]) -> EndpointSliceInfo {
        EndpointSliceInfo {
            namespace: "shop".into(),
            name: name.into(),
            service: service.into(),
            ports: vec![EndpointPort {
                name: None,
                protocol: Protocol::Tcp,
                port: 8080,
            }],
            endpoints: ips
                .iter()
                .map(|ip| Endpoint {
                    ip: ip.parse().unwrap(),
                    ready: true,
                    serving: true,
                    terminating: false,
                    pod: None,
                    node: None,
                })
                .collect(),
        }
    }

    fn backends(state: &ClusterState, key: &str) -> Vec<String> {
        state.resolved_services()[key].ports[0]
            .backends
            .iter()
            .map(|b| b.ip.to_string())
            .collect()
    }

    fn changed(applied: &Applied) -> Vec<(&str, bool)> {
        let mut v: Vec<(&str, bool)> = applied
            .services_changed
            .iter()
            .map(|(k, r)| (k.as_str(), r.is_some()))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn services_resolve_with_their_slices_and_report_only_what_changed() {
        let mut state = ClusterState::new();
        let applied = state.apply([
            Change::ResetServices(vec![
                service("api", "10.96.0.1"),
                service("db", "10.96.0.2"),
            ]),
            Change::ResetEndpointSlices(vec![
                slice("api-a", "api", &["10.0.0.1"]),
                slice("api-b", "api", &["10.0.0.2"]),
            ]),
        ]);
        assert_eq!(changed(&applied), [("shop/api", true), ("shop/db", true)]);
        assert!(applied.changed.is_empty(), "Services touch no table");
        assert_eq!(backends(&state, "shop/api"), ["10.0.0.1", "10.0.0.2"]);
        assert!(backends(&state, "shop/db").is_empty());

        // The same relist again: nothing to send.
        let applied = state.apply([Change::ResetEndpointSlices(vec![
            slice("api-a", "api", &["10.0.0.1"]),
            slice("api-b", "api", &["10.0.0.2"]),
        ])]);
        assert!(applied.services_changed.is_empty());

        // A slice moves to another Service: both change.
        let applied = state.apply([Change::EndpointSlice(slice("api-b", "db", &["10.0.0.2"]))]);
        assert_eq!(changed(&applied), [("shop/api", true), ("shop/db", true)]);
        assert_eq!(backends(&state, "shop/api"), ["10.0.0.1"]);
        assert_eq!(backends(&state, "shop/db"), ["10.0.0.2"]);

        // A Service goes: removed from the map; its slices stay until they go too.
        let applied = state.apply([Change::ServiceGone {
            namespace: "shop".into(),
            name: "db".into(),
        }]);
        assert_eq!(changed(&applied), [("shop/db", false)]);
        let applied = state.apply([Change::EndpointSliceGone {
            namespace: "shop".into(),
            name: "api-a".into(),
        }]);
        assert_eq!(changed(&applied), [("shop/api", true)]);
        assert!(backends(&state, "shop/api").is_empty());

        // Headless: not in the map.
        let mut headless = service("api", "10.96.0.1");
        headless.cluster_ips.clear();
        headless.headless = true;
        let applied = state.apply([Change::Service(headless)]);
        assert_eq!(changed(&applied), [("shop/api", false)]);
        assert!(state.resolved_services().is_empty());
    }
}
