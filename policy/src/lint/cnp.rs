//! ClusterNetworkPolicy lint: the CRD's schema and CEL rules (every error, through
//! [`crate::cnp::validate`] in strict mode), and what is valid but probably not meant: a rule an
//! earlier rule of the same policy shadows, two policies of one tier and priority whose subjects
//! can overlap (their order is Portcullis's, not the API's), `Pass` in the Baseline tier, rules
//! with `domainNames` where they are not enforced (outside an Admin-tier egress `Accept`: they
//! fail closed). `v1alpha1` AdminNetworkPolicy and
//! BaselineAdminNetworkPolicy objects are reported as not read.

use std::collections::BTreeMap;

use super::{Check, Finding, Severity};
use crate::cluster::SourcedCnp;
use crate::cnp::types::{self, LabelSelector};
use crate::cnp::{self, Action, Mode, Peer, PortMatch, Rule, Tier, ValidCnp};
use crate::error::ObjectRef;
use crate::manifest::{split_documents, Head};

/// What the text pass found: the ClusterNetworkPolicies it could parse, and findings for those it
/// could not and for `v1alpha1` objects.
#[derive(Debug, Default)]
pub struct CnpDocuments {
    pub cnps: Vec<SourcedCnp>,
    pub findings: Vec<Finding>,
}

/// Reads the ClusterNetworkPolicy documents of `text` (and notes `v1alpha1` AdminNetworkPolicy /
/// BaselineAdminNetworkPolicy ones). Other kinds are left to the loader.
pub fn cnp_documents(text: &str, source: &str) -> CnpDocuments {
    let mut out = CnpDocuments::default();
    let Ok(documents) = split_documents(text) else {
        return out;
    };
    for doc in &documents {
        let Ok(head) = doc.parse::<Head>() else {
            continue;
        };
        let kind = head.kind.as_deref().unwrap_or_default();
        let api_version = head.api_version.as_deref().unwrap_or_default();
        let name = head.metadata.and_then(|m| m.name).unwrap_or_default();
        let object = ObjectRef {
            kind: kind.to_string(),
            namespace: None,
            name,
            source: Some(source.to_string()),
        };
        match (api_version, kind) {
            (cnp::API_VERSION, cnp::KIND) => match doc.parse::<cnp::ClusterNetworkPolicy>() {
                Ok(c) => out.cnps.push(SourcedCnp {
                    cnp: c,
                    source: Some(source.to_string()),
                }),
                Err(e) => out.findings.push(Finding::new(
                    Severity::Error,
                    Check::CnpInvalid,
                    &object,
                    "",
                    format!("not a valid ClusterNetworkPolicy: {e}"),
                )),
            },
            (
                "policy.networking.k8s.io/v1alpha1",
                "AdminNetworkPolicy" | "BaselineAdminNetworkPolicy",
            ) => out.findings.push(v1alpha1(&object)),
            _ => {}
        }
    }
    out
}

fn v1alpha1(object: &ObjectRef) -> Finding {
    let tier = if object.kind == "AdminNetworkPolicy" {
        "Admin"
    } else {
        "Baseline"
    };
    Finding::new(
        Severity::Warning,
        Check::AnpV1alpha1NotRead,
        object,
        "apiVersion",
        format!(
            "policy.networking.k8s.io/v1alpha1 {} is NOT read nor enforced by Portcullis (it is \
             the predecessor of ClusterNetworkPolicy): rewrite it as a ClusterNetworkPolicy \
             (policy.networking.k8s.io/v1alpha2) with `tier: {tier}`; `Allow` becomes `Accept`, \
             `ports` become `protocols` (docs/cluster-network-policy.md)",
            object.kind
        ),
    )
}

/// Every ClusterNetworkPolicy finding about `cnps`: validation errors, then the warnings.
pub fn check_cnps(cnps: &[SourcedCnp]) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut valid: Vec<(&SourcedCnp, ValidCnp)> = Vec::new();
    for sc in cnps {
        match cnp::validate(&sc.cnp, Mode::Strict) {
            Ok(v) => valid.push((sc, v)),
            Err(errors) => out.extend(errors.iter().map(|e| {
                let o = e.to_object_error(sc.source.as_deref());
                Finding::new(
                    Severity::Error,
                    Check::CnpInvalid,
                    &o.object,
                    &o.field,
                    o.message,
                )
            })),
        }
    }
    for (sc, v) in &valid {
        let object = object_of(sc);
        if v.staged {
            out.push(Finding::staged(&object));
        }
        rule_warnings(v, &object, &mut out);
    }
    equal_priorities(&valid, &mut out);
    out
}

fn object_of(sc: &SourcedCnp) -> ObjectRef {
    ObjectRef {
        kind: cnp::KIND.into(),
        namespace: None,
        name: sc.cnp.name().to_string(),
        source: sc.source.clone(),
    }
}

/// Shadowed rules, `Pass` in the Baseline tier, `domainNames`.
fn rule_warnings(v: &ValidCnp, object: &ObjectRef, out: &mut Vec<Finding>) {
    for (direction, rules) in [("ingress", &v.ingress), ("egress", &v.egress)] {
        for (j, rule) in rules.iter().enumerate() {
            let field = format!("spec.{direction}[{j}]");
            if let Some(earlier) = rules[..j].iter().find(|i| covers(i, rule)) {
                out.push(Finding::new(
                    Severity::Warning,
                    Check::CnpShadowedRule,
                    object,
                    &field,
                    format!(
                        "rule {} never decides anything: rule {} before it matches every peer and \
                         port it does ({} first); remove it or move it up",
                        rule.label(),
                        earlier.label(),
                        earlier.action
                    ),
                ));
            }
            if v.tier == Tier::Baseline && rule.action == Action::Pass {
                out.push(Finding::new(
                    Severity::Warning,
                    Check::CnpBaselinePass,
                    object,
                    &format!("{field}.action"),
                    "Pass in the Baseline tier changes nothing: there is no later tier, so what \
                     it matches is allowed, as with Accept; write Accept to say so"
                        .into(),
                ));
            }
            domain_warnings(v, rule, object, &field, out);
        }
    }
}

/// `domainNames` outside an Admin-tier `Accept` (not enforced: fails closed). Names the CRD's
/// pattern refuses (a wildcard not in front, a single label such as `*.com`) are `PC004` errors.
fn domain_warnings(
    v: &ValidCnp,
    rule: &Rule,
    object: &ObjectRef,
    field: &str,
    out: &mut Vec<Finding>,
) {
    let any = rule.peers.iter().any(|p| matches!(p, Peer::DomainNames(_)));
    if !any || (v.tier == Tier::Admin && rule.action == Action::Accept) {
        return;
    }
    let why = match rule.action {
        Action::Accept => "the domainNames peer matches nothing",
        _ => "it denies every connection of its subjects in this direction",
    };
    out.push(Finding::new(
        Severity::Warning,
        Check::CnpNotEnforced,
        object,
        field,
        format!(
            "domainNames peers are enforced only in Admin-tier Accept rules (the API supports \
             them for Accept only): this {} {} rule fails closed ({why})",
            v.tier, rule.action
        ),
    ));
}

/// Whether rule `a` matches every connection rule `b` matches (peers and ports), judged on what
/// is written: a `namespaces: {}` peer covers every pod peer, a network covers the networks
/// inside it, equal peers cover each other. Rules that fail closed are not judged.
fn covers(a: &Rule, b: &Rule) -> bool {
    if a.fails_closed() || b.fails_closed() {
        return false;
    }
    let peers = b
        .peers
        .iter()
        .all(|pb| a.peers.iter().any(|pa| peer_covers(pa, pb)));
    let ports = match (&a.protocols, &b.protocols) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(pa), Some(pb)) => pb.iter().all(|m| pa.iter().any(|n| port_covers(n, m))),
    };
    peers && ports
}

fn peer_covers(a: &Peer, b: &Peer) -> bool {
    match (a, b) {
        _ if a == b => true,
        (Peer::Pods(cnp::PodSet::Namespaces(all)), Peer::Pods(_)) => all.selects_everything(),
        (Peer::Networks(outer), Peer::Networks(inner)) => {
            inner.iter().all(|n| outer.iter().any(|o| o.contains(n)))
        }
        _ => false,
    }
}

fn port_covers(a: &PortMatch, b: &PortMatch) -> bool {
    match (a, b) {
        (PortMatch::Numeric(a), PortMatch::Numeric(b)) => {
            a.protocol == b.protocol && a.first <= b.first && b.last <= a.last
        }
        _ => a == b,
    }
}

/// Two CNPs of one tier and priority whose subjects can overlap.
fn equal_priorities(valid: &[(&SourcedCnp, ValidCnp)], out: &mut Vec<Finding>) {
    let mut groups: BTreeMap<(Tier, u16), Vec<&(&SourcedCnp, ValidCnp)>> = BTreeMap::new();
    for entry in valid {
        groups
            .entry((entry.1.tier, entry.1.priority))
            .or_default()
            .push(entry);
    }
    for ((tier, priority), mut group) in groups {
        group.sort_by(|a, b| ValidCnp::evaluation_order(&a.1, &b.1));
        for (j, later) in group.iter().enumerate() {
            let Some(first) = group[..j]
                .iter()
                .find(|e| can_overlap(&e.0.cnp, &later.0.cnp))
            else {
                continue;
            };
            out.push(Finding::new(
                Severity::Warning,
                Check::CnpEqualPriority,
                &object_of(later.0),
                "spec.priority",
                format!(
                    "{} and {} are both tier {tier}, priority {priority}, and their subjects can \
                     overlap: the API leaves their order undefined; Portcullis evaluates them by \
                     name ({} first), other implementations may not; give them distinct \
                     priorities",
                    first.1.name, later.1.name, first.1.name
                ),
            ));
        }
    }
}

/// Whether two subjects can select one pod: false only when their `matchLabels` (namespace or
/// pod) require different values for one key.
fn can_overlap(a: &cnp::ClusterNetworkPolicy, b: &cnp::ClusterNetworkPolicy) -> bool {
    let (na, pa) = subject_selectors(&a.spec.subject);
    let (nb, pb) = subject_selectors(&b.spec.subject);
    !(conflict(na, nb) || conflict(pa, pb))
}

fn subject_selectors(s: &types::Subject) -> (Option<&LabelSelector>, Option<&LabelSelector>) {
    match (&s.namespaces, &s.pods) {
        (Some(ns), _) => (Some(ns), None),
        (None, Some(p)) => (p.namespace_selector.as_ref(), p.pod_selector.as_ref()),
        (None, None) => (None, None),
    }
}

fn conflict(a: Option<&LabelSelector>, b: Option<&LabelSelector>) -> bool {
    let labels =
        |s: Option<&LabelSelector>| s.and_then(|s| s.match_labels.clone()).unwrap_or_default();
    let (a, b) = (labels(a), labels(b));
    a.iter().any(|(k, v)| b.get(k).is_some_and(|w| w != v))
}
