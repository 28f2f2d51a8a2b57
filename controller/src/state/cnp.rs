//! ClusterNetworkPolicies and Nodes in the incremental state: what a CNP, Node, Pod or Namespace
//! event marks for recompilation.
//!
//! A CNP is validated as an object the API server accepted ([`Mode::FromApiServer`]: a peer type
//! from a newer API fails closed instead of rejecting the object); an invalid one is reported by
//! name and its last valid version stays in force, as for NetworkPolicies. What an event marks:
//!
//! - a **CNP** added/changed/deleted: the pods its old and new subject hold are reassembled, and
//!   the CNP is marked for resolution (its peers → address sets);
//! - a **Pod**: the CNPs one of whose `pods` peers takes it in before or after (or holds it and its
//!   addresses, ports or liveness changed) are re-resolved, and their subjects reassembled; the pod
//!   itself is reassembled (its labels decide which CNPs select it);
//! - a **Namespace**'s labels: the CNPs whose subject or peer selectors see the old or new labels
//!   are re-resolved, and if a subject sees them, every pod of that namespace is reassembled;
//! - a **Node**: the CNPs with a `nodes` peer whose selector matches its old or new labels.
//!
//! Marking errs on the side of yes: a pod reassembled for nothing gets the same table and is not
//! reported.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use portcullis_policy::cluster::{NodeInfo, SourcedCnp};
use portcullis_policy::cnp::{self, resolve_cnp, Mode, Peer, PodSet, ResolvedCnp, ValidCnp};
use portcullis_policy::compile::ClusterIndex;
use portcullis_policy::{NamespaceInfo, ObjectError, PodInfo};

use super::{Applied, Change, ClusterState, Dirty};

/// The valid ClusterNetworkPolicies, the names of the invalid ones, and the Nodes.
#[derive(Default)]
pub(super) struct Cnps {
    /// By name.
    pub(super) valid: BTreeMap<String, Arc<ValidCnp>>,
    /// Names of objects whose current version is invalid, with every reason. A name may also be
    /// in `valid`: its last valid version stays in force.
    pub(super) invalid: BTreeMap<String, Vec<String>>,
    pub(super) nodes: BTreeMap<String, NodeInfo>,
    /// The valid ones, resolved against the current pods, namespaces and nodes (their peers as
    /// address sets), by name; refreshed for every CNP an event marks.
    pub(super) resolved: BTreeMap<String, Arc<ResolvedCnp>>,
}

/// A ClusterNetworkPolicy the controller could not use, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InvalidCnp {
    pub name: String,
    pub errors: Vec<String>,
    /// Whether an earlier valid version is still enforced.
    pub last_valid_in_force: bool,
}

/// Whether `pod` is in `set`: the engine's definition ([`cnp::resolve::in_pod_set`]: host-network
/// and finished pods never are), for a pod whose namespace may not be known yet.
pub(super) fn in_pod_set(set: &PodSet, namespace: Option<&NamespaceInfo>, pod: &PodInfo) -> bool {
    namespace.is_some_and(|ns| cnp::resolve::in_pod_set(set, &ns.labels, pod))
}

fn pod_sets(cnp: &ValidCnp) -> impl Iterator<Item = &PodSet> {
    cnp.ingress
        .iter()
        .chain(&cnp.egress)
        .flat_map(|r| &r.peers)
        .filter_map(|p| match p {
            Peer::Pods(set) => Some(set),
            _ => None,
        })
}

/// Whether a namespace with these labels is seen by the set's namespace selector.
fn sees_namespace(set: &PodSet, ns: &NamespaceInfo) -> bool {
    match set {
        PodSet::Namespaces(sel) => sel.matches(&ns.labels),
        PodSet::Pods { namespaces, .. } => namespaces.matches(&ns.labels),
    }
}

impl ClusterState {
    /// The CNP and Node half of [`ClusterState::record`].
    pub(super) fn record_cnp_change(
        &mut self,
        change: Change,
        dirty: &mut Dirty,
        applied: &mut Applied,
    ) {
        match change {
            Change::Cnp(sc) => {
                self.take_cnp(&sc, dirty, applied);
            }
            Change::CnpUnreadable(e) => self.unreadable_cnp(e, applied),
            Change::CnpGone(name) => self.remove_cnp(&name, dirty),
            Change::ResetCnps { cnps, unreadable } => {
                let mut keep = BTreeSet::new();
                for e in unreadable {
                    keep.insert(e.object.name.clone());
                    self.unreadable_cnp(e, applied);
                }
                for sc in cnps {
                    let name = sc.cnp.name().to_string();
                    if !keep.insert(name.clone()) {
                        applied.rejected.push(duplicate_cnp(&name, &sc));
                        continue;
                    }
                    self.take_cnp(&sc, dirty, applied);
                }
                let gone: Vec<String> = (self.cnps.valid.keys())
                    .chain(self.cnps.invalid.keys())
                    .filter(|k| !keep.contains(*k))
                    .cloned()
                    .collect();
                for name in gone {
                    self.remove_cnp(&name, dirty);
                }
            }
            Change::Node(node) => self.upsert_node(node, dirty),
            Change::NodeGone(name) => self.remove_node(&name, dirty),
            Change::ResetNodes(all) => {
                let keep: BTreeSet<&str> = all.iter().map(|n| n.name.as_str()).collect();
                let gone: Vec<String> = (self.cnps.nodes.keys())
                    .filter(|k| !keep.contains(k.as_str()))
                    .cloned()
                    .collect();
                for name in gone {
                    self.remove_node(&name, dirty);
                }
                for node in all {
                    self.upsert_node(node, dirty);
                }
            }
            _ => {}
        }
    }

    /// Validates one CNP: a valid one replaces the current version, an invalid one is reported
    /// and leaves the current version in force.
    fn take_cnp(&mut self, sc: &SourcedCnp, dirty: &mut Dirty, applied: &mut Applied) {
        let name = sc.cnp.name().to_string();
        match cnp::validate(&sc.cnp, Mode::FromApiServer) {
            Ok(valid) => {
                self.cnps.invalid.remove(&name);
                if self.cnps.valid.get(&name).map(|c| c.as_ref()) == Some(&valid) {
                    return;
                }
                self.mark_cnp_subjects(&name, &mut dirty.pods);
                self.cnps.valid.insert(name.clone(), Arc::new(valid));
                dirty.cnps.insert(name);
            }
            Err(errors) => {
                let source = sc.source.as_deref();
                let objects: Vec<ObjectError> =
                    errors.iter().map(|e| e.to_object_error(source)).collect();
                self.cnps.invalid.insert(
                    name,
                    objects
                        .iter()
                        .map(|e| format!("{}: {}", e.field, e.message))
                        .collect(),
                );
                applied.rejected.extend(objects);
            }
        }
    }

    fn unreadable_cnp(&mut self, e: ObjectError, applied: &mut Applied) {
        self.cnps.invalid.insert(
            e.object.name.clone(),
            vec![format!("{}: {}", e.field, e.message)],
        );
        applied.rejected.push(e);
    }

    fn remove_cnp(&mut self, name: &str, dirty: &mut Dirty) {
        self.cnps.invalid.remove(name);
        self.mark_cnp_subjects(name, &mut dirty.pods);
        self.cnps.valid.remove(name);
        self.cnps.resolved.remove(name);
        dirty.cnps.remove(name);
    }

    fn upsert_node(&mut self, node: NodeInfo, dirty: &mut Dirty) {
        if self.cnps.nodes.get(&node.name) == Some(&node) {
            return;
        }
        let old = self.cnps.nodes.insert(node.name.clone(), node.clone());
        self.mark_cnps_seeing_node(old.as_ref(), Some(&node), dirty);
    }

    fn remove_node(&mut self, name: &str, dirty: &mut Dirty) {
        if let Some(old) = self.cnps.nodes.remove(name) {
            self.mark_cnps_seeing_node(Some(&old), None, dirty);
        }
    }

    fn mark_cnps_seeing_node(
        &self,
        old: Option<&NodeInfo>,
        new: Option<&NodeInfo>,
        dirty: &mut Dirty,
    ) {
        for (name, c) in &self.cnps.valid {
            let sees = c.egress.iter().flat_map(|r| &r.peers).any(|p| match p {
                Peer::Nodes(sel) => [old, new]
                    .into_iter()
                    .flatten()
                    .any(|n| sel.matches(&n.labels)),
                _ => false,
            });
            if sees {
                dirty.cnps.insert(name.clone());
            }
        }
    }

    /// A pod added or removed: the CNPs whose peers take it in.
    pub(super) fn mark_cnps_depending_on(&self, pod: &PodInfo, dirty: &mut Dirty) {
        let ns = self.namespaces.get(&pod.namespace);
        for (name, c) in &self.cnps.valid {
            if pod_sets(c).any(|set| in_pod_set(set, ns, pod)) {
                dirty.cnps.insert(name.clone());
            }
        }
    }

    /// A pod changed: the CNPs whose resolved peers can differ (as for NetworkPolicies).
    pub(super) fn mark_cnps_seeing_a_change(
        &self,
        old: &PodInfo,
        new: &PodInfo,
        dirty: &mut Dirty,
    ) {
        let facts_changed =
            old.ips != new.ips || old.ports != new.ports || old.selectable() != new.selectable();
        let ns = self.namespaces.get(&new.namespace);
        for (name, c) in &self.cnps.valid {
            let (mut seen, mut moved) = (false, false);
            for set in pod_sets(c) {
                let before = in_pod_set(set, ns, old);
                let after = in_pod_set(set, ns, new);
                moved |= before != after;
                seen |= before || after;
            }
            if moved || (seen && facts_changed) {
                dirty.cnps.insert(name.clone());
            }
        }
    }

    /// A namespace's effective labels change from `old` to `new`: CNPs that see either are
    /// re-resolved; if a subject sees either, the namespace's pods are reassembled.
    pub(super) fn mark_cnps_seeing_namespace(
        &self,
        name: &str,
        old: Option<&NamespaceInfo>,
        new: Option<&NamespaceInfo>,
        dirty: &mut Dirty,
    ) {
        let mut subjects_see = false;
        for (cnp_name, c) in &self.cnps.valid {
            let seen_by = |set: &PodSet| {
                [old, new]
                    .into_iter()
                    .flatten()
                    .any(|ns| sees_namespace(set, ns))
            };
            if seen_by(&c.subject) {
                subjects_see = true;
                dirty.cnps.insert(cnp_name.clone());
            } else if pod_sets(c).any(seen_by) {
                dirty.cnps.insert(cnp_name.clone());
            }
        }
        if subjects_see {
            for pod in self.pods.iter().filter(|p| p.namespace == name) {
                dirty.pods.insert(pod.key());
            }
        }
    }

    /// At the end of a batch: every pod a re-resolved CNP selects now is reassembled.
    ///
    /// Resolution itself (peers → address sets, the engine's `resolve_cnp`) belongs here, beside
    /// `resolve_policy` for NetworkPolicies, once the compiled tables carry CNP rules.
    pub(super) fn resolve_cnps(
        &mut self,
        dirty_cnps: &BTreeSet<String>,
        reassemble: &mut BTreeSet<String>,
    ) {
        if dirty_cnps.is_empty() {
            return;
        }
        let index = ClusterIndex::new(&self.namespaces, &self.pods);
        for name in dirty_cnps {
            match self.cnps.valid.get(name) {
                Some(valid) => {
                    let resolved = resolve_cnp(&index, &self.cnps.nodes, valid.as_ref().clone());
                    self.cnps.resolved.insert(name.clone(), Arc::new(resolved));
                }
                None => {
                    self.cnps.resolved.remove(name);
                }
            }
        }
        for name in dirty_cnps {
            self.mark_cnp_subjects(name, reassemble);
        }
    }

    /// Adds the pods the current version of a CNP selects to `into`.
    fn mark_cnp_subjects(&self, name: &str, into: &mut BTreeSet<String>) {
        if let Some(c) = self.cnps.valid.get(name) {
            for pod in &self.pods {
                if in_pod_set(&c.subject, self.namespaces.get(&pod.namespace), pod) {
                    into.insert(pod.key());
                }
            }
        }
    }

    /// The resolved CNPs in force whose subject holds `pod`, in [`ValidCnp::evaluation_order`].
    pub(super) fn cnps_selecting(&self, pod: &PodInfo) -> Vec<&ResolvedCnp> {
        if self.cnps.valid.is_empty() {
            return Vec::new();
        }
        let ns = self.namespaces.get(&pod.namespace);
        let mut selecting: Vec<&ResolvedCnp> = (self.cnps.valid.iter())
            .filter(|(_, c)| in_pod_set(&c.subject, ns, pod))
            .filter_map(|(name, _)| self.cnps.resolved.get(name).map(|r| r.as_ref()))
            .collect();
        selecting.sort_by(|a, b| ValidCnp::evaluation_order(&a.cnp, &b.cnp));
        selecting
    }

    /// Valid ClusterNetworkPolicies in force.
    pub fn cnp_count(&self) -> usize {
        self.cnps.valid.len()
    }

    pub fn node_count(&self) -> usize {
        self.cnps.nodes.len()
    }

    /// The ClusterNetworkPolicies whose current version is invalid, by name.
    pub fn invalid_cnps(&self) -> Vec<InvalidCnp> {
        (self.cnps.invalid.iter())
            .map(|(name, errors)| InvalidCnp {
                name: name.clone(),
                errors: errors.clone(),
                last_valid_in_force: self.cnps.valid.contains_key(name),
            })
            .collect()
    }
}

fn duplicate_cnp(name: &str, sc: &SourcedCnp) -> ObjectError {
    ObjectError {
        object: Box::new(portcullis_policy::ObjectRef {
            kind: cnp::KIND.into(),
            namespace: None,
            name: name.to_string(),
            source: sc.source.clone(),
        }),
        field: "metadata.name".into(),
        message: "defined more than once; the first definition is used".into(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use portcullis_policy::cluster::{NodeInfo, SourcedCnp};
    use portcullis_policy::{NamespaceInfo, PodInfo};
    use serde_json::{json, Value};

    use super::super::{Change, ClusterState};

    fn cnp(name: &str, spec: Value) -> Change {
        Change::Cnp(Box::new(sourced(name, spec)))
    }

    fn sourced(name: &str, spec: Value) -> SourcedCnp {
        let text = json!({
            "apiVersion": "policy.networking.k8s.io/v1alpha2",
            "kind": "ClusterNetworkPolicy",
            "metadata": { "name": name },
            "spec": spec,
        });
        SourcedCnp {
            cnp: portcullis_policy::cnp::parse(&text.to_string()).expect("parses"),
            source: None,
        }
    }

    /// Admin, subject: namespace `team=<team>`, one ingress Deny from namespace `team=<peer>`.
    fn deny_from(team: &str, peer: &str) -> Value {
        json!({
            "tier": "Admin", "priority": 10,
            "subject": { "namespaces": { "matchLabels": { "team": team } } },
            "ingress": [{ "action": "Deny", "from": [
                { "namespaces": { "matchLabels": { "team": peer } } }
            ] }],
        })
    }

    fn pod(ns: &str, name: &str, ip: u8) -> PodInfo {
        PodInfo {
            namespace: ns.into(),
            name: name.into(),
            labels: BTreeMap::new(),
            ips: vec![[10, 0, 0, ip].into()],
            host_ip: None,
            host_network: false,
            ports: Vec::new(),
            terminated: false,
        }
    }

    /// Namespaces a (team=a), b (team=b), c (team=c), two pods in each.
    fn cluster() -> ClusterState {
        let mut state = ClusterState::new();
        let mut changes = Vec::new();
        for (i, ns) in ["a", "b", "c"].iter().enumerate() {
            let labels = BTreeMap::from([("team".to_string(), ns.to_string())]);
            changes.push(Change::Namespace(NamespaceInfo::new(*ns, labels)));
            for j in 0..2u8 {
                changes.push(Change::Pod(pod(
                    ns,
                    &format!("p{j}"),
                    (i as u8) * 10 + j + 1,
                )));
            }
        }
        state.apply(changes);
        state
    }

    #[test]
    fn a_cnp_change_reassembles_its_old_and_new_subjects_only() {
        let mut state = cluster();
        let applied = state.apply([cnp("guard", deny_from("a", "b"))]);
        assert!(applied.rejected.is_empty(), "{:?}", applied.rejected);
        assert_eq!(applied.tables_assembled, 2, "the two pods of namespace a");
        assert_eq!(state.cnp_count(), 1);

        // The same object again: nothing to do.
        let applied = state.apply([cnp("guard", deny_from("a", "b"))]);
        assert_eq!(applied.tables_assembled, 0);

        // The subject moves from a to c: both namespaces' pods.
        let applied = state.apply([cnp("guard", deny_from("c", "b"))]);
        assert_eq!(applied.tables_assembled, 4);

        // A pod of the peer namespace b changes address: the CNP's subjects (c) and that pod.
        let applied = state.apply([Change::Pod(pod("b", "p0", 99))]);
        assert_eq!(applied.tables_assembled, 3);

        // Gone: its subjects again.
        let applied = state.apply([Change::CnpGone("guard".into())]);
        assert_eq!(applied.tables_assembled, 2);
        assert_eq!(state.cnp_count(), 0);
    }

    #[test]
    fn namespace_labels_and_nodes_reach_the_cnps_that_see_them() {
        let mut state = cluster();
        let to_nodes = json!({
            "tier": "Baseline", "priority": 5,
            "subject": { "namespaces": { "matchLabels": { "team": "a" } } },
            "egress": [{ "action": "Deny", "to": [
                { "nodes": { "matchLabels": { "role": "control-plane" } } }
            ] }],
        });
        state.apply([cnp("no-control-plane", to_nodes)]);
        let node = |name: &str, role: &str| NodeInfo {
            name: name.into(),
            labels: BTreeMap::from([("role".to_string(), role.to_string())]),
            addresses: vec![[192, 168, 0, 1].into()],
        };
        let applied = state.apply([Change::Node(node("n1", "control-plane"))]);
        assert_eq!(
            applied.tables_assembled, 2,
            "the subjects of the CNP that sees it"
        );
        let applied = state.apply([Change::Node(node("n2", "worker"))]);
        assert_eq!(applied.tables_assembled, 0, "no CNP selects a worker");
        let applied = state.apply([Change::ResetNodes(vec![node("n2", "worker")])]);
        assert_eq!(applied.tables_assembled, 2, "n1 is gone");
        assert_eq!(state.node_count(), 1);

        // Namespace c takes team=a: it becomes a subject, its pods are reassembled.
        let labels = BTreeMap::from([("team".to_string(), "a".to_string())]);
        let applied = state.apply([Change::Namespace(NamespaceInfo::new("c", labels))]);
        assert_eq!(applied.tables_assembled, 4, "a's and c's pods");
    }

    #[test]
    fn an_invalid_cnp_is_reported_by_name_and_its_last_valid_version_stays() {
        let mut state = cluster();
        state.apply([cnp("guard", deny_from("a", "b"))]);
        let mut bad = deny_from("a", "b");
        bad["priority"] = json!(5000);
        bad["ingress"][0]["action"] = json!("Allow");
        let applied = state.apply([cnp("guard", bad.clone())]);
        let errors: Vec<String> = applied.rejected.iter().map(|e| e.to_string()).collect();
        assert_eq!(errors.len(), 2, "every reason: {errors:?}");
        assert!(errors.iter().all(|e| e.contains("guard")), "{errors:?}");
        assert_eq!(
            applied.tables_assembled, 0,
            "the valid version stays in force"
        );
        assert_eq!(state.cnp_count(), 1);
        let invalid = state.invalid_cnps();
        assert_eq!(invalid.len(), 1);
        assert_eq!(invalid[0].name, "guard");
        assert!(invalid[0].last_valid_in_force);
        assert!(
            invalid[0]
                .errors
                .iter()
                .any(|e| e.contains("spec.priority")),
            "{invalid:?}"
        );

        // A relist holding it still invalid keeps it; one without it removes it.
        let applied = state.apply([Change::ResetCnps {
            cnps: vec![sourced("guard", bad), sourced("other", deny_from("b", "a"))],
            unreadable: Vec::new(),
        }]);
        assert_eq!(state.cnp_count(), 2);
        assert_eq!(applied.tables_assembled, 2, "other's subjects");
        state.apply([Change::ResetCnps {
            cnps: vec![sourced("other", deny_from("b", "a"))],
            unreadable: Vec::new(),
        }]);
        assert_eq!(state.cnp_count(), 1);
        assert!(state.invalid_cnps().is_empty());
    }
}
