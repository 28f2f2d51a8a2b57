//! Is a pod actually protected? A policy only holds for pods that run the sidecar with nothing
//! exempted. This module reads a Pod as the API server returns it and says what, if anything,
//! leaves it (partly) unprotected: the controller exports it as
//! `portcullis_unprotected_pods{namespace,reason}`, `portcullis check` prints it.
//!
//! Pure: objects in, findings out.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use portcullis_contract::keys;
use serde::Serialize;

/// Namespace label that opts a namespace in (`docs/CONVENTIONS.md`).
pub const INJECT_LABEL: &str = keys::INJECT;
/// Name of the injected sidecar container.
pub const PROXY_CONTAINER: &str = "portcullis-proxy";
/// Pod annotation the injector writes: every exemption in force, `;`-separated `name[=value]`.
pub const EXEMPTIONS_ANNOTATION: &str = keys::EXEMPTIONS;
/// Pod annotation the injector writes: the injector's version.
pub const INJECTED_VERSION_ANNOTATION: &str = keys::INJECTED_VERSION;

/// Whether a namespace asks for the sidecar.
pub fn opted_in(ns: &Namespace) -> bool {
    ns.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(INJECT_LABEL))
        .is_some_and(|v| v == keys::ENABLED)
}

/// One reason a pod is not fully protected. The variant names are the bounded `reason` label
/// values of `portcullis_unprotected_pods`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Gap {
    /// No `portcullis-proxy` container: created before the namespace was labelled, injection
    /// disabled, or the webhook was down (it fails open). Nothing is enforced.
    NotInjected,
    /// The proxy logs denials but lets them through.
    AuditMode,
    /// Ports or CIDRs the redirect skips: that traffic is not enforced.
    SkippedTraffic { detail: String },
    /// UDP and SCTP flows are not enforced.
    UdpNotEnforced,
    /// A container keeps NET_RAW or NET_ADMIN, or is privileged: it can send around its own
    /// egress enforcement (ingress of its peers still holds).
    EgressNotEnforceable { detail: String },
    /// The pod runs a proxy of another version than the controller's.
    VersionSkew { proxy: String },
    /// A hostNetwork pod shares the node's network namespace: a sidecar cannot enforce anything.
    HostNetwork,
    /// An exemption this version does not know: shown, never ignored.
    UnknownExemption { detail: String },
}

impl Gap {
    /// The metric's `reason` label.
    pub fn label(&self) -> &'static str {
        match self {
            Gap::NotInjected => "not_injected",
            Gap::AuditMode => "audit_mode",
            Gap::SkippedTraffic { .. } => "skipped_traffic",
            Gap::UdpNotEnforced => "udp_not_enforced",
            Gap::EgressNotEnforceable { .. } => "egress_not_enforceable",
            Gap::VersionSkew { .. } => "version_skew",
            Gap::HostNetwork => "host_network",
            Gap::UnknownExemption { .. } => "unknown_exemption",
        }
    }

    /// What to do about it, for `portcullis check`.
    pub fn advice(&self) -> String {
        match self {
            Gap::NotInjected => "restart the pod's workload (kubectl rollout restart) so the \
                                 webhook injects the proxy; check the webhook if it stays so"
                .into(),
            Gap::AuditMode => "denials are only logged: remove portcullis.dev/policy-mode: audit".into(),
            Gap::SkippedTraffic { detail } => {
                format!("traffic {detail} bypasses the proxy: remove the skip annotation if unintended")
            }
            Gap::UdpNotEnforced => {
                "UDP and SCTP pass unchecked: remove portcullis.dev/enforce-udp: \"false\"".into()
            }
            Gap::EgressNotEnforceable { detail } => format!(
                "{detail} lets the application send around its own egress rules: drop it from the containers"
            ),
            Gap::VersionSkew { proxy } => format!(
                "proxy {proxy} differs from the controller: restart the pod to get the current proxy"
            ),
            Gap::HostNetwork => "hostNetwork pods cannot be enforced by a sidecar".into(),
            Gap::UnknownExemption { detail } => {
                format!("exemption {detail:?} is not understood by this version: upgrade portcullis")
            }
        }
    }
}

/// What leaves `pod` unprotected; empty when it is fully protected. `version` is the controller's
/// own, compared with the injected proxy's (skipped when `None`). Finished pods have no gaps.
pub fn assess(pod: &Pod, version: Option<&str>) -> Vec<Gap> {
    let spec = pod.spec.as_ref();
    let finished = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Succeeded" || p == "Failed");
    if finished {
        return Vec::new();
    }
    if spec.and_then(|s| s.host_network).unwrap_or(false) {
        return vec![Gap::HostNetwork];
    }
    let proxy = spec.and_then(|s| {
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
            .find(|c| c.name == PROXY_CONTAINER)
    });
    let Some(proxy) = proxy else {
        return vec![Gap::NotInjected];
    };
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    let mut gaps = parse_exemptions(
        annotations
            .get(EXEMPTIONS_ANNOTATION)
            .map(String::as_str)
            .unwrap_or(""),
    );
    if let Some(version) = version {
        let proxy_version = annotations
            .get(INJECTED_VERSION_ANNOTATION)
            .cloned()
            .or_else(|| image_tag(proxy.image.as_deref()?));
        if let Some(v) = proxy_version.filter(|v| v != version) {
            gaps.push(Gap::VersionSkew { proxy: v });
        }
    }
    gaps.sort();
    gaps.dedup();
    gaps
}

/// The `portcullis.dev/exemptions` annotation, item by item.
pub fn parse_exemptions(annotation: &str) -> Vec<Gap> {
    annotation
        .split(';')
        .map(str::trim)
        .filter(|i| !i.is_empty())
        .map(|item| {
            let (name, value) = match item.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim())),
                None => (item, None),
            };
            let detail = || match value {
                Some(v) => format!("{name}={v}"),
                None => name.to_string(),
            };
            match name {
                "not-injected" => Gap::NotInjected,
                "audit-mode" => Gap::AuditMode,
                "skip-inbound-ports" | "skip-outbound-ports" | "skip-outbound-cidrs" => {
                    Gap::SkippedTraffic { detail: detail() }
                }
                "udp-not-enforced" => Gap::UdpNotEnforced,
                "egress-not-enforceable" => Gap::EgressNotEnforceable {
                    detail: value.unwrap_or("a capability").to_string(),
                },
                _ => Gap::UnknownExemption { detail: detail() },
            }
        })
        .collect()
}

fn image_tag(image: &str) -> Option<String> {
    let name = image.split('@').next()?;
    let last = name.rsplit('/').next()?;
    last.split_once(':').map(|(_, tag)| tag.to_string())
}

/// Unprotected pods of opted-in namespaces, kept current from watch events.
#[derive(Debug, Default, Clone)]
pub struct Tracker {
    opted_in: BTreeMap<String, bool>,
    /// `namespace` → `name` → gaps (non-empty only).
    pods: BTreeMap<String, BTreeMap<String, Vec<Gap>>>,
}

/// One pod that is not fully protected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unprotected {
    pub namespace: String,
    pub pod: String,
    pub gaps: Vec<Gap>,
}

impl Tracker {
    pub fn namespace(&mut self, ns: &Namespace) {
        let name = ns.metadata.name.clone().unwrap_or_default();
        self.opted_in.insert(name, opted_in(ns));
    }

    pub fn namespace_gone(&mut self, name: &str) {
        self.opted_in.remove(name);
    }

    pub fn reset_namespaces(&mut self, all: &[Namespace]) {
        self.opted_in.clear();
        for ns in all {
            self.namespace(ns);
        }
    }

    pub fn pod(&mut self, pod: &Pod, version: Option<&str>) {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let gaps = assess(pod, version);
        let in_ns = self.pods.entry(namespace.clone()).or_default();
        if gaps.is_empty() {
            in_ns.remove(&name);
        } else {
            in_ns.insert(name, gaps);
        }
    }

    pub fn pod_gone(&mut self, namespace: &str, name: &str) {
        if let Some(in_ns) = self.pods.get_mut(namespace) {
            in_ns.remove(name);
        }
    }

    pub fn reset_pods(&mut self, all: &[Pod], version: Option<&str>) {
        self.pods.clear();
        for p in all {
            self.pod(p, version);
        }
    }

    /// Every pod of an opted-in namespace with a gap, by namespace and name.
    pub fn unprotected(&self) -> Vec<Unprotected> {
        self.pods
            .iter()
            .filter(|(ns, _)| self.opted_in.get(*ns).copied().unwrap_or(false))
            .flat_map(|(ns, pods)| {
                pods.iter().map(move |(pod, gaps)| Unprotected {
                    namespace: ns.clone(),
                    pod: pod.clone(),
                    gaps: gaps.clone(),
                })
            })
            .collect()
    }

    /// Pods per (namespace, reason): the values of `portcullis_unprotected_pods`.
    pub fn counts(&self) -> BTreeMap<(String, &'static str), usize> {
        let mut out = BTreeMap::new();
        for u in self.unprotected() {
            for g in &u.gaps {
                *out.entry((u.namespace.clone(), g.label())).or_insert(0) += 1;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        serde_saphyr::from_str(yaml).expect("pod")
    }

    fn ns(name: &str, opted: bool) -> Namespace {
        let labels = if opted {
            "labels: {portcullis.dev/inject: enabled}"
        } else {
            ""
        };
        serde_saphyr::from_str(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}, {labels}}}\n"
        ))
        .expect("namespace")
    }

    const INJECTED: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: shop\n  annotations: {portcullis.dev/injected-version: 0.1.0}\nspec:\n  containers:\n  - {name: app, image: web}\n  - {name: portcullis-proxy, image: ghcr.io/portcullis-dev/portcullis-proxy:0.1.0}\n";

    #[test]
    fn an_injected_pod_of_the_current_version_has_no_gap() {
        assert_eq!(assess(&pod(INJECTED), Some("0.1.0")), vec![]);
        assert_eq!(
            assess(&pod(INJECTED), Some("0.2.0")),
            vec![Gap::VersionSkew {
                proxy: "0.1.0".into()
            }]
        );
    }

    #[test]
    fn pods_without_the_proxy_and_exemptions_are_reported() {
        let bare = pod(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: old, namespace: shop}\nspec: {containers: [{name: app}]}\n",
        );
        assert_eq!(assess(&bare, None), vec![Gap::NotInjected]);
        let exempt = INJECTED.replace(
            "annotations: {",
            "annotations: {portcullis.dev/exemptions: \"audit-mode;skip-inbound-ports=22,8000-8100;egress-not-enforceable=NET_RAW;teleport\", ",
        );
        let gaps = assess(&pod(&exempt), Some("0.1.0"));
        let labels: Vec<&str> = gaps.iter().map(Gap::label).collect();
        assert_eq!(
            labels,
            [
                "audit_mode",
                "skipped_traffic",
                "egress_not_enforceable",
                "unknown_exemption"
            ]
        );
        assert!(gaps[1].advice().contains("skip-inbound-ports=22,8000-8100"));
    }

    #[test]
    fn the_tracker_counts_only_opted_in_namespaces_and_forgets_deleted_pods() {
        let mut t = Tracker::default();
        t.reset_namespaces(&[ns("shop", true), ns("legacy", false)]);
        let bare = |ns: &str, name: &str| {
            pod(&format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{containers: [{{name: app}}]}}\n"
            ))
        };
        t.reset_pods(
            &[
                bare("shop", "a"),
                bare("shop", "b"),
                bare("legacy", "c"),
                pod(INJECTED),
            ],
            Some("0.1.0"),
        );
        assert_eq!(
            t.counts().into_iter().collect::<Vec<_>>(),
            vec![(("shop".to_string(), "not_injected"), 2)]
        );
        t.pod_gone("shop", "a");
        t.namespace(&ns("legacy", true));
        let names: Vec<String> = t
            .unprotected()
            .into_iter()
            .map(|u| format!("{}/{}", u.namespace, u.pod))
            .collect();
        assert_eq!(names, ["legacy/c", "shop/b"]);
    }
}
