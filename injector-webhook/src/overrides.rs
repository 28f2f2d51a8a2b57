//! Pod annotations that weaken enforcement, and when they count.
//!
//! Anyone allowed to create pods can annotate them, so a pod's own annotations must not undo the
//! NetworkPolicies a platform team wrote. A pod annotation that weakens enforcement counts only
//! where the pod's namespace carries `portcullis.dev/allow-pod-overrides: "true"`; elsewhere it
//! is ignored, with an admission warning and a log line. Namespace annotations always count
//! (editing a namespace is a privilege of its own). Annotations that only make enforcement
//! stricter (`inject: enabled`, `policy-mode: enforce`, an empty skip list) always count.

use std::collections::BTreeMap;

use crate::config::annotations as ann;

/// A pod annotation that was ignored because its namespace does not allow pod overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IgnoredOverride {
    pub annotation: String,
    pub value: String,
}

/// Whether pod annotation `key` with `value` would weaken enforcement.
pub fn weakens(key: &str, value: &str) -> bool {
    let value = value.trim();
    match key {
        ann::INJECT => value == "disabled",
        ann::POLICY_MODE => value == "audit",
        ann::SKIP_INBOUND_PORTS | ann::SKIP_OUTBOUND_PORTS | ann::SKIP_OUTBOUND_CIDRS => {
            !value.is_empty()
        }
        ann::ENFORCE_UDP | ann::DROP_NET_RAW => value == "false",
        _ => false,
    }
}

/// Whether the namespace allows its pods to weaken their enforcement. Anything but exactly
/// `true` (or no namespace information at all) does not.
pub fn allowed(namespace: Option<&BTreeMap<String, String>>, warnings: &mut Vec<String>) -> bool {
    match namespace.and_then(|m| m.get(ann::ALLOW_POD_OVERRIDES)) {
        None => false,
        Some(v) if v.trim() == "true" => true,
        Some(v) if v.trim() == "false" => false,
        Some(v) => {
            warnings.push(format!(
                "portcullis: invalid namespace annotation {}={:?} (expected true or false); pod overrides are not allowed",
                ann::ALLOW_POD_OVERRIDES,
                v.chars().take(40).collect::<String>()
            ));
            false
        }
    }
}

/// The pod annotations that count: all of them when `allowed`, else all but the weakening
/// ones, which are returned (and reported in `warnings`).
pub fn effective(
    pod: Option<&BTreeMap<String, String>>,
    allowed: bool,
    warnings: &mut Vec<String>,
) -> (Option<BTreeMap<String, String>>, Vec<IgnoredOverride>) {
    let Some(pod) = pod else {
        return (None, Vec::new());
    };
    if allowed {
        return (Some(pod.clone()), Vec::new());
    }
    let mut kept = BTreeMap::new();
    let mut ignored = Vec::new();
    for (k, v) in pod {
        if weakens(k, v) {
            warnings.push(format!(
                "portcullis: pod annotation {k}={:?} ignored: it weakens enforcement and the namespace does not allow pod overrides (namespace annotation {}: \"true\")",
                v.chars().take(40).collect::<String>(),
                ann::ALLOW_POD_OVERRIDES
            ));
            ignored.push(IgnoredOverride {
                annotation: k.clone(),
                value: v.clone(),
            });
        } else {
            kept.insert(k.clone(), v.clone());
        }
    }
    (Some(kept), ignored)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_weakens() {
        assert!(weakens(ann::INJECT, "disabled"));
        assert!(!weakens(ann::INJECT, "enabled"));
        assert!(weakens(ann::POLICY_MODE, " audit"));
        assert!(!weakens(ann::POLICY_MODE, "enforce"));
        assert!(weakens(ann::SKIP_OUTBOUND_CIDRS, "0.0.0.0/0"));
        assert!(weakens(ann::SKIP_INBOUND_PORTS, "22,http"));
        assert!(!weakens(ann::SKIP_OUTBOUND_PORTS, ""));
        assert!(weakens(ann::ENFORCE_UDP, "false"));
        assert!(!weakens(ann::ENFORCE_UDP, "true"));
        assert!(weakens(ann::DROP_NET_RAW, "false"));
        assert!(!weakens(ann::LOG_LEVEL, "off"));
        assert!(!weakens(ann::SIDECAR_MODE, "classic"));
    }

    #[test]
    fn only_an_exact_true_on_the_namespace_allows() {
        let ns = |v: &str| BTreeMap::from([(ann::ALLOW_POD_OVERRIDES.to_string(), v.to_string())]);
        let mut w = Vec::new();
        assert!(allowed(Some(&ns("true")), &mut w));
        assert!(!allowed(Some(&ns("false")), &mut w));
        assert!(!allowed(None, &mut w));
        assert!(!allowed(Some(&BTreeMap::new()), &mut w));
        assert!(w.is_empty());
        assert!(!allowed(Some(&ns("yes")), &mut w));
        assert_eq!(w.len(), 1);
    }
}
