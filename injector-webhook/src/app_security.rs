//! What the application's own containers could do to get around the proxy, decided from the
//! pod spec alone (pure, like `inject`).
//!
//! - A process running as the proxy's UID is exempt from the outbound redirect (the rule is
//!   `-m owner --uid-owner`): such pods are refused. The group does not matter: no rule matches
//!   on the GID, so `runAsGroup: 2171` exempts nothing (and is allowed).
//! - Frames written on an AF_PACKET socket (CAP_NET_RAW) never pass the sender's netfilter, and
//!   CAP_NET_ADMIN can remove the rules; a privileged container has both. NET_RAW is dropped
//!   from every application container that does not add it (unless the pod may opt out); a
//!   container that keeps either, or is privileged, makes the pod's egress not enforceable.

use std::collections::BTreeSet;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, PatchOperation};
use k8s_openapi::api::core::v1::{PodSpec, SecurityContext};
use serde_json::{json, Value};

/// Where the proxy's UID is set, one phrase per place; empty when nowhere.
pub fn proxy_uid_users(spec: &PodSpec, uid: i64) -> Vec<String> {
    let mut found = Vec::new();
    let pod_level = spec.security_context.as_ref().and_then(|s| s.run_as_user);
    if pod_level == Some(uid) {
        found.push("the pod's spec.securityContext.runAsUser".to_string());
    }
    for (kind, name, sc) in containers(spec) {
        if sc.and_then(|s| s.run_as_user) == Some(uid) {
            found.push(format!("{kind} {name:?} (securityContext.runAsUser)"));
        }
    }
    for c in spec.ephemeral_containers.iter().flatten() {
        if c.security_context.as_ref().and_then(|s| s.run_as_user) == Some(uid) {
            found.push(format!(
                "ephemeral container {:?} (securityContext.runAsUser)",
                c.name
            ));
        }
    }
    found
}

/// The message that refuses a pod whose containers would run as the proxy's UID.
pub fn proxy_uid_refusal(users: &[String], uid: i64) -> String {
    format!(
        "portcullis: refused: {} sets UID {uid}, the UID of the Portcullis proxy, whose \
         connections are exempt from the redirect: that container would bypass every \
         NetworkPolicy. Set runAsUser to another UID.",
        users.join(", ")
    )
}

/// The application containers: init containers first, as `(kind, name, securityContext)`.
fn containers(
    spec: &PodSpec,
) -> impl Iterator<Item = (&'static str, &str, Option<&SecurityContext>)> {
    spec.init_containers
        .iter()
        .flatten()
        .map(|c| ("init container", c))
        .chain(spec.containers.iter().map(|c| ("container", c)))
        .map(|(kind, c)| (kind, c.name.as_str(), c.security_context.as_ref()))
}

/// What to change in the application containers and what stays out of reach.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct CapabilityPlan {
    /// Adds NET_RAW to `capabilities.drop` where needed. Paths use the pod's original indexes:
    /// apply them before anything inserts containers.
    pub ops: Vec<PatchOperation>,
    /// Why the pod's egress cannot be enforced: `NET_ADMIN`, `NET_RAW`, `privileged`.
    pub not_enforceable: BTreeSet<&'static str>,
    /// `container "x" (NET_RAW, privileged)`, one per container that keeps a bypass.
    pub holders: Vec<String>,
}

/// `CAP_NET_RAW` and `net_raw` are spelled `NET_RAW` by Kubernetes; runtimes accept all.
fn normalize(cap: &str) -> String {
    let up = cap.trim().to_ascii_uppercase();
    up.strip_prefix("CAP_").map(str::to_string).unwrap_or(up)
}

/// A container's `capabilities.add` and `.drop`, normalized.
struct Caps {
    add: BTreeSet<String>,
    drop: BTreeSet<String>,
}

impl Caps {
    fn of(sc: Option<&SecurityContext>) -> Caps {
        let caps = sc.and_then(|s| s.capabilities.as_ref());
        let set = |v: Option<&Vec<String>>| -> BTreeSet<String> {
            v.into_iter().flatten().map(|c| normalize(c)).collect()
        };
        Caps {
            add: set(caps.and_then(|c| c.add.as_ref())),
            drop: set(caps.and_then(|c| c.drop.as_ref())),
        }
    }

    /// Added explicitly (or with `ALL`) and not dropped.
    fn added(&self, cap: &str) -> bool {
        (self.add.contains(cap) || self.add.contains("ALL")) && !self.drop.contains(cap)
    }
}

pub fn capability_plan(spec: &PodSpec, drop_net_raw: bool) -> CapabilityPlan {
    let mut plan = CapabilityPlan::default();
    let fields = [
        (
            "initContainers",
            spec.init_containers.as_deref().unwrap_or_default(),
        ),
        ("containers", spec.containers.as_slice()),
    ];
    for (field, list) in fields {
        for (i, c) in list.iter().enumerate() {
            let sc = c.security_context.as_ref();
            let caps = Caps::of(sc);
            let (added, drop) = (|cap: &str| caps.added(cap), &caps.drop);
            let mut reasons = Vec::new();
            if sc.and_then(|s| s.privileged) == Some(true) {
                reasons.push("privileged");
            }
            if added("NET_ADMIN") {
                reasons.push("NET_ADMIN");
            }
            let has_net_raw_by_default = !drop.contains("ALL") && !drop.contains("NET_RAW");
            if added("NET_RAW") {
                reasons.push("NET_RAW");
            } else if has_net_raw_by_default {
                if drop_net_raw {
                    plan.ops.push(drop_net_raw_op(field, i, sc));
                } else {
                    reasons.push("NET_RAW");
                }
            }
            if !reasons.is_empty() {
                let kind = if field == "containers" {
                    "container"
                } else {
                    "init container"
                };
                plan.holders
                    .push(format!("{kind} {:?} ({})", c.name, reasons.join(", ")));
                plan.not_enforceable.extend(reasons);
            }
        }
    }
    plan
}

/// What admission does with ephemeral containers (`kubectl debug`) being added to a pod that runs
/// the proxy. An ephemeral container shares the pod's network namespace, so it can get around
/// the proxy the same ways an application container could.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct EphemeralPlan {
    /// One phrase per new ephemeral container that must be refused, with why: it runs as the
    /// proxy's UID, is privileged, or adds NET_ADMIN or NET_RAW.
    pub refusals: Vec<String>,
    /// Drops NET_RAW (which runtimes grant by default) from the new ones that do not drop it.
    pub ops: Vec<PatchOperation>,
}

/// Judges the ephemeral containers of `spec` whose names are not in `existing` (those were
/// admitted before and cannot change).
pub fn ephemeral_plan(spec: &PodSpec, existing: &BTreeSet<String>, uid: i64) -> EphemeralPlan {
    let mut plan = EphemeralPlan::default();
    for (i, c) in spec.ephemeral_containers.iter().flatten().enumerate() {
        if existing.contains(&c.name) {
            continue;
        }
        let sc = c.security_context.as_ref();
        let caps = Caps::of(sc);
        let (added, drop) = (|cap: &str| caps.added(cap), &caps.drop);
        let mut reasons = Vec::new();
        if sc.and_then(|s| s.run_as_user) == Some(uid) {
            reasons.push(format!("runs as UID {uid}, the proxy's"));
        }
        if sc.and_then(|s| s.privileged) == Some(true) {
            reasons.push("privileged".to_string());
        }
        for cap in ["NET_ADMIN", "NET_RAW"] {
            if added(cap) {
                reasons.push(format!("adds {cap}"));
            }
        }
        if !reasons.is_empty() {
            plan.refusals.push(format!(
                "ephemeral container {:?} ({})",
                c.name,
                reasons.join(", ")
            ));
        } else if !drop.contains("ALL") && !drop.contains("NET_RAW") {
            plan.ops.push(drop_net_raw_op("ephemeralContainers", i, sc));
        }
    }
    plan
}

/// The message that refuses ephemeral containers that would get around the proxy.
pub fn ephemeral_refusal(refusals: &[String]) -> String {
    format!(
        "portcullis: refused: {} would share this pod's network namespace with the power to get          around its NetworkPolicy enforcement. Debug without those privileges (the default          `kubectl debug` profile works; NET_RAW is dropped), or from the node          (`kubectl debug node/...`).",
        refusals.join(", ")
    )
}

/// Adds `NET_RAW` to `capabilities.drop` of container `i` of `field`, creating what is missing.
fn drop_net_raw_op(field: &str, i: usize, sc: Option<&SecurityContext>) -> PatchOperation {
    let index = i.to_string();
    let mut tokens = vec!["spec", field, index.as_str(), "securityContext"];
    let caps = sc.and_then(|s| s.capabilities.as_ref());
    let value: Value = match (sc, caps, caps.and_then(|c| c.drop.as_ref())) {
        (None, _, _) => json!({"capabilities": {"drop": ["NET_RAW"]}}),
        (Some(_), None, _) => {
            tokens.push("capabilities");
            json!({"drop": ["NET_RAW"]})
        }
        (Some(_), Some(_), None) => {
            tokens.extend(["capabilities", "drop"]);
            json!(["NET_RAW"])
        }
        (Some(_), Some(_), Some(_)) => {
            tokens.extend(["capabilities", "drop", "-"]);
            json!("NET_RAW")
        }
    };
    PatchOperation::Add(AddOperation {
        path: PointerBuf::from_tokens(tokens),
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;

    fn spec(v: Value) -> PodSpec {
        serde_json::from_value::<Pod>(json!({ "spec": v }))
            .expect("pod")
            .spec
            .expect("spec")
    }

    fn patched(s: &PodSpec, plan: &CapabilityPlan) -> PodSpec {
        let mut doc = json!({ "spec": serde_json::to_value(s).expect("json") });
        json_patch::patch(&mut doc, &plan.ops).expect("applies");
        serde_json::from_value::<Pod>(doc)
            .expect("pod")
            .spec
            .expect("spec")
    }

    fn drops(s: &PodSpec, i: usize) -> Vec<String> {
        s.containers[i]
            .security_context
            .as_ref()
            .and_then(|c| c.capabilities.as_ref())
            .and_then(|c| c.drop.clone())
            .unwrap_or_default()
    }

    #[test]
    fn the_proxy_uid_is_found_at_every_level() {
        let s = spec(json!({
            "securityContext": {"runAsUser": 2171, "runAsGroup": 2171},
            "initContainers": [{"name": "setup", "securityContext": {"runAsUser": 2171}}],
            "containers": [
                {"name": "app", "securityContext": {"runAsUser": 1000}},
                {"name": "sneaky", "securityContext": {"runAsUser": 2171}},
                {"name": "group-only", "securityContext": {"runAsGroup": 2171}}
            ]
        }));
        assert_eq!(
            proxy_uid_users(&s, 2171),
            [
                "the pod's spec.securityContext.runAsUser",
                "init container \"setup\" (securityContext.runAsUser)",
                "container \"sneaky\" (securityContext.runAsUser)",
            ]
        );
        assert!(proxy_uid_users(&s, 4242).is_empty());
        let msg = proxy_uid_refusal(&proxy_uid_users(&s, 2171), 2171);
        assert!(
            msg.contains("\"sneaky\"") && msg.contains("Set runAsUser to another UID"),
            "{msg}"
        );
    }

    #[test]
    fn net_raw_is_dropped_unless_added_and_bypasses_are_named() {
        let s = spec(json!({
            "initContainers": [{"name": "init"}],
            "containers": [
                {"name": "bare"},
                {"name": "empty-sc", "securityContext": {}},
                {"name": "caps", "securityContext": {"capabilities": {"add": ["SYS_TIME"]}}},
                {"name": "drops", "securityContext": {"capabilities": {"drop": ["MKNOD"]}}},
                {"name": "drops-all", "securityContext": {"capabilities": {"drop": ["ALL"]}}},
                {"name": "pinger", "securityContext": {"capabilities": {"add": ["CAP_NET_RAW"]}}},
                {"name": "admin", "securityContext": {"capabilities": {"add": ["NET_ADMIN"], "drop": ["NET_RAW"]}}},
                {"name": "root", "securityContext": {"privileged": true, "capabilities": {"drop": ["ALL"]}}}
            ]
        }));
        let plan = capability_plan(&s, true);
        assert_eq!(plan.ops.len(), 5, "{:?}", plan.ops);
        let after = patched(&s, &plan);
        assert_eq!(drops(&after, 0), ["NET_RAW"]);
        assert_eq!(drops(&after, 1), ["NET_RAW"]);
        assert_eq!(drops(&after, 2), ["NET_RAW"]);
        assert_eq!(drops(&after, 3), ["MKNOD", "NET_RAW"]);
        assert_eq!(drops(&after, 4), ["ALL"]);
        assert_eq!(drops(&after, 5), Vec::<String>::new());
        let init_drop = after.init_containers.as_ref().expect("inits")[0]
            .security_context
            .as_ref()
            .and_then(|c| c.capabilities.as_ref())
            .and_then(|c| c.drop.clone());
        assert_eq!(init_drop, Some(vec!["NET_RAW".to_string()]));
        assert_eq!(
            plan.not_enforceable.iter().copied().collect::<Vec<_>>(),
            ["NET_ADMIN", "NET_RAW", "privileged"]
        );
        assert_eq!(
            plan.holders,
            [
                "container \"pinger\" (NET_RAW)",
                "container \"admin\" (NET_ADMIN)",
                "container \"root\" (privileged)",
            ]
        );
        // A second pass over the patched pod changes nothing more.
        assert!(capability_plan(&after, true).ops.is_empty());
    }

    #[test]
    fn without_the_drop_every_default_net_raw_is_a_bypass() {
        let s = spec(
            json!({"containers": [{"name": "a"}, {"name": "b", "securityContext": {"capabilities": {"drop": ["ALL"]}}}]}),
        );
        let plan = capability_plan(&s, false);
        assert!(plan.ops.is_empty());
        assert_eq!(plan.holders, ["container \"a\" (NET_RAW)"]);
        let s = spec(
            json!({"containers": [{"name": "a", "securityContext": {"capabilities": {"add": ["all"]}}}]}),
        );
        assert_eq!(
            capability_plan(&s, true).holders,
            ["container \"a\" (NET_ADMIN, NET_RAW)"]
        );
    }
}
