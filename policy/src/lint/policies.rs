//! Meaning: valid policies that probably do not do what their author meant (a policy that selects
//! no pod, rules that policyTypes ignores, an except that does not overlap its CIDR...).

use std::collections::BTreeSet;

use ipnet::IpNet;
use k8s_openapi::api::networking::v1::NetworkPolicy;

use super::dns::{no_dns_per_pod, no_dns_without_pods};
use super::proxy_ports::proxy_ports;
use super::rules::{peers_name, RuleCtx};
use super::{Check, Finding, Severity, INJECT_LABEL};
use crate::cluster::Cluster;
use crate::compile::ClusterIndex;
use crate::error::ObjectRef;
use crate::validate::{validate_policy, Peer, Rule, ValidPolicy};
use crate::verdict::Direction;

/// Checks a whole input. `declared_namespaces` are the namespaces whose Namespace object was in
/// the input: only their labels are known (others exist by implication, labels unknown).
pub fn check_cluster(cluster: &Cluster, declared_namespaces: &BTreeSet<String>) -> Vec<Finding> {
    let index = ClusterIndex::new(&cluster.namespaces, &cluster.pods);
    let have_pods = !cluster.pods.is_empty();
    let mut out = super::check_cnps(&cluster.cnps);
    let mut valid = Vec::new();
    for sp in &cluster.policies {
        let Ok(policy) = validate_policy(&sp.policy, sp.source.as_deref()) else {
            continue; // compile reports it
        };
        let object = policy_ref(&policy, sp.source.as_deref());
        if policy.staged {
            out.push(Finding::staged(&object));
        }
        ignored_rules(&sp.policy, &object, &mut out);
        valid.push((policy, object));
    }
    for (policy, object) in &valid {
        not_enforced(cluster, declared_namespaces, policy, object, &mut out);
        for direction in [Direction::Ingress, Direction::Egress] {
            for (i, rule) in policy.rules(direction).iter().enumerate() {
                let field = match direction {
                    Direction::Ingress => format!("spec.ingress[{i}]"),
                    Direction::Egress => format!("spec.egress[{i}]"),
                };
                overlapping_except(rule, direction, &field, object, &mut out);
                if have_pods {
                    let ctx = RuleCtx {
                        index: &index,
                        policy,
                        object,
                        direction,
                        field: &field,
                    };
                    ctx.check_rule(rule, &mut out);
                }
            }
        }
        if have_pods {
            selection(&index, policy, object, &mut out);
        }
    }
    if have_pods {
        no_dns_per_pod(&index, &valid, &mut out);
        proxy_ports(cluster, &mut out);
    } else {
        no_dns_without_pods(&valid, &mut out);
        if !valid.is_empty() {
            out.push(Finding {
                severity: Severity::Note,
                code: Check::NoPods.code(),
                check: Check::NoPods,
                object: None,
                field: String::new(),
                message: "no pods in the input: the checks that need pods (selects-no-pod, \
                          peer-selects-nothing, ports) were skipped; add the pods, e.g. \
                          `kubectl get ns,pods,netpol -A -o yaml | portcullis lint -f -`"
                    .into(),
            });
        }
    }
    out
}

fn policy_ref(policy: &ValidPolicy, source: Option<&str>) -> ObjectRef {
    ObjectRef {
        kind: "NetworkPolicy".into(),
        namespace: Some(policy.namespace.clone()),
        name: policy.name.clone(),
        source: source.map(str::to_string),
    }
}

/// Rules of a direction that explicit `policyTypes` leaves out are ignored by every
/// implementation.
fn ignored_rules(np: &NetworkPolicy, object: &ObjectRef, out: &mut Vec<Finding>) {
    let Some(spec) = &np.spec else { return };
    let Some(types) = spec.policy_types.as_deref().filter(|t| !t.is_empty()) else {
        return;
    };
    let lists = [
        (
            "Ingress",
            "spec.ingress",
            spec.ingress.as_ref().map_or(0, Vec::len),
        ),
        (
            "Egress",
            "spec.egress",
            spec.egress.as_ref().map_or(0, Vec::len),
        ),
    ];
    for (kind, field, n) in lists {
        if n > 0 && !types.iter().any(|t| t == kind) {
            out.push(Finding::new(
                Severity::Warning,
                Check::IgnoredRules,
                object,
                field,
                format!(
                    "{n} rule(s) are ignored: policyTypes does not list {kind}; add {kind} to \
                     policyTypes or remove the rules"
                ),
            ));
        }
    }
}

fn not_enforced(
    cluster: &Cluster,
    declared: &BTreeSet<String>,
    policy: &ValidPolicy,
    object: &ObjectRef,
    out: &mut Vec<Finding>,
) {
    let Some(ns) = cluster.namespaces.get(&policy.namespace) else {
        return;
    };
    let (key, value) = INJECT_LABEL;
    if declared.contains(&ns.name) && ns.labels.get(key).map(String::as_str) != Some(value) {
        out.push(Finding::new(
            Severity::Warning,
            Check::NotEnforced,
            object,
            "metadata.namespace",
            format!(
                "namespace {} is not labelled {key}={value}: its pods get no Portcullis proxy, \
                 so Portcullis does not enforce this policy (label the namespace, then restart \
                 its pods)",
                ns.name
            ),
        ));
    }
}

fn selection(
    index: &ClusterIndex<'_>,
    policy: &ValidPolicy,
    object: &ObjectRef,
    out: &mut Vec<Finding>,
) {
    let in_namespace = index.pods_in(&policy.namespace).count();
    let live = index
        .selected_pods(policy)
        .filter(|(_, p)| !p.terminated)
        .count();
    if live == 0 {
        out.push(Finding::new(
            Severity::Warning,
            Check::SelectsNoPod,
            object,
            "spec.podSelector",
            format!(
                "selects no running pod ({in_namespace} pod(s) of namespace {} in the input): \
                 check the labels and the namespace",
                policy.namespace
            ),
        ));
    }
    let host: Vec<String> = index
        .pods_in(&policy.namespace)
        .filter(|(_, p)| p.host_network && policy.pod_selector.matches(&p.labels))
        .map(|(_, p)| p.key())
        .collect();
    if !host.is_empty() {
        out.push(Finding::new(
            Severity::Warning,
            Check::HostNetworkSelected,
            object,
            "spec.podSelector",
            format!(
                "matches hostNetwork pod(s) {}: they share the node's network and get no proxy, \
                 so this policy does not apply to them",
                host.join(", ")
            ),
        ));
    }
}

fn overlapping_except(
    rule: &Rule,
    direction: Direction,
    field: &str,
    object: &ObjectRef,
    out: &mut Vec<Finding>,
) {
    let peers_name = peers_name(direction);
    for (j, peer) in rule.peers.iter().flatten().enumerate() {
        let Peer::Block { except, .. } = peer else {
            continue;
        };
        for (a, na) in except.iter().enumerate() {
            if let Some((b, nb)) = except[..a]
                .iter()
                .enumerate()
                .find(|(_, nb)| overlaps(na, nb))
            {
                out.push(Finding::new(
                    Severity::Warning,
                    Check::OverlappingExcept,
                    object,
                    &format!("{field}.{peers_name}[{j}].ipBlock.except[{a}]"),
                    format!(
                        "{na} overlaps except[{b}] ({nb}): one of them is redundant, or a \
                         prefix length is wrong"
                    ),
                ));
            }
        }
    }
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(b) || b.contains(a)
}
