//! Pod Security admission, as the API server will apply it to the patched pod: mutating webhooks
//! run before the PodSecurity admission plugin, so in a namespace labelled
//! `pod-security.kubernetes.io/enforce: baseline|restricted` every pod this webhook injects is
//! rejected after it answered. The webhook cannot prevent that, but it can say so in its answer
//! (a warning `kubectl` prints), naming each field of the containers it adds that the level
//! refuses. The containers are read as built ([`crate::inject::init_container`],
//! [`crate::inject::proxy_container`]), so the warning cannot drift from what is added.
//!
//! Only the checks of the Pod Security Standards that the added containers can fail are made
//! (<https://kubernetes.io/docs/concepts/security/pod-security-standards/>): privileged,
//! added capabilities, and for `restricted` also privilege escalation, non-root, seccomp and
//! dropping ALL.

use k8s_openapi::api::core::v1::{Container, PodSpec};

/// The namespace label whose level the API server enforces.
pub const ENFORCE_LABEL: &str = "pod-security.kubernetes.io/enforce";

/// Capabilities `baseline` lets a container add.
const BASELINE_CAPABILITIES: [&str; 13] = [
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// Capabilities `restricted` lets a container add.
const RESTRICTED_CAPABILITIES: [&str; 1] = ["NET_BIND_SERVICE"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Privileged,
    Baseline,
    Restricted,
}

impl Level {
    /// The label's value; an unknown value is what the API server makes of it: `restricted`
    /// (it refuses to default to a weaker level than it can tell).
    pub fn from_label(value: &str) -> Self {
        match value.trim() {
            "privileged" => Level::Privileged,
            "baseline" => Level::Baseline,
            _ => Level::Restricted,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }
}

/// What `level` refuses in `added` (containers this webhook adds to a pod with `spec`), one
/// entry per container, in words.
pub fn violations(level: Level, spec: &PodSpec, added: &[Container]) -> Vec<String> {
    if level == Level::Privileged {
        return Vec::new();
    }
    added
        .iter()
        .filter_map(|c| {
            let found = container_violations(level, spec, c);
            (!found.is_empty()).then(|| format!("{}: {}", c.name, found.join(", ")))
        })
        .collect()
}

fn container_violations(level: Level, spec: &PodSpec, c: &Container) -> Vec<String> {
    let sc = c.security_context.as_ref();
    let pod_sc = spec.security_context.as_ref();
    let mut found = Vec::new();
    if sc.and_then(|s| s.privileged) == Some(true) {
        found.push("privileged: true".to_string());
    }
    let caps = sc.and_then(|s| s.capabilities.as_ref());
    let allowed: &[&str] = match level {
        Level::Restricted => &RESTRICTED_CAPABILITIES,
        _ => &BASELINE_CAPABILITIES,
    };
    let extra: Vec<&str> = caps
        .and_then(|c| c.add.as_ref())
        .into_iter()
        .flatten()
        .map(String::as_str)
        .filter(|cap| !allowed.contains(cap))
        .collect();
    if !extra.is_empty() {
        found.push(format!("adds {}", extra.join(" and ")));
    }
    if level != Level::Restricted {
        return found;
    }
    if sc.and_then(|s| s.allow_privilege_escalation) != Some(false) {
        found.push("allowPrivilegeEscalation is not false".to_string());
    }
    let drops_all = caps
        .and_then(|c| c.drop.as_ref())
        .is_some_and(|d| d.iter().any(|x| x == "ALL"));
    if !drops_all {
        found.push("does not drop ALL capabilities".to_string());
    }
    let non_root = sc
        .and_then(|s| s.run_as_non_root)
        .or(pod_sc.and_then(|s| s.run_as_non_root));
    let uid = sc
        .and_then(|s| s.run_as_user)
        .or(pod_sc.and_then(|s| s.run_as_user));
    if non_root != Some(true) || uid == Some(0) {
        found.push("runs as root (runAsNonRoot is not true or runAsUser is 0)".to_string());
    }
    let seccomp = sc
        .and_then(|s| s.seccomp_profile.as_ref())
        .or(pod_sc.and_then(|s| s.seccomp_profile.as_ref()));
    if !seccomp.is_some_and(|p| p.type_ == "RuntimeDefault" || p.type_ == "Localhost") {
        found.push("sets no RuntimeDefault or Localhost seccompProfile".to_string());
    }
    found
}

/// The warning for an injected pod in a namespace enforcing `label_value`, if the patched pod
/// will be rejected.
pub fn rejection_warning(label_value: &str, spec: &PodSpec, added: &[Container]) -> Option<String> {
    let level = Level::from_label(label_value);
    let found = violations(level, spec, added);
    if found.is_empty() {
        return None;
    }
    Some(format!(
        "portcullis: the namespace enforces Pod Security {level} ({ENFORCE_LABEL}={label_value}), \
         which will reject this pod after injection: {}. Label the namespace \
         {ENFORCE_LABEL}=privileged (keep warn and audit at {level} to still see the \
         application's own violations) or exempt it in the API server's PodSecurity \
         configuration; `portcullis check` lists every such namespace",
        found.join("; "),
        level = level.as_str(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::InjectorConfig;
    use crate::inject::{decide, NamespaceDefaults, NamespaceMeta, Outcome};
    use k8s_openapi::api::core::v1::Pod;

    fn pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "n"},
            "spec": {"containers": [{"name": "app", "image": "i"}]},
        }))
        .expect("pod")
    }

    fn in_namespace(level: Option<&str>, cfg: &InjectorConfig) -> (bool, Vec<String>) {
        let ns = NamespaceDefaults::Known(NamespaceMeta {
            annotations: Default::default(),
            pod_security_enforce: level.map(str::to_string),
        });
        let d = decide(&pod(), &ns, cfg);
        (matches!(d.outcome, Outcome::Inject { .. }), d.warnings)
    }

    #[test]
    fn baseline_and_restricted_namespaces_get_a_warning_naming_what_fails() {
        let cfg = InjectorConfig::default();
        let (injected, w) = in_namespace(Some("baseline"), &cfg);
        assert!(injected);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("enforces Pod Security baseline")
                && w[0].contains("portcullis-init: adds NET_ADMIN and NET_RAW")
                && w[0].contains("portcullis-proxy: adds NET_ADMIN")
                && w[0].contains("pod-security.kubernetes.io/enforce=privileged"),
            "{w:?}"
        );

        let (_, w) = in_namespace(Some("restricted"), &cfg);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("portcullis-init: adds NET_ADMIN and NET_RAW, runs as root")
                && w[0].contains(
                    "portcullis-proxy: adds NET_ADMIN, allowPrivilegeEscalation is not false"
                ),
            "{w:?}"
        );
    }

    #[test]
    fn privileged_or_unlabelled_namespaces_get_none() {
        let cfg = InjectorConfig::default();
        for level in [None, Some("privileged")] {
            let (injected, w) = in_namespace(level, &cfg);
            assert!(injected);
            assert!(w.is_empty(), "{level:?}: {w:?}");
        }
    }

    #[test]
    fn without_udp_enforcement_baseline_still_refuses_the_init_container_only() {
        let cfg = InjectorConfig {
            enforce_udp: crate::values::Switch(false),
            ..InjectorConfig::default()
        };
        let (_, w) = in_namespace(Some("baseline"), &cfg);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("portcullis-init: adds NET_ADMIN and NET_RAW"),
            "{w:?}"
        );
        assert!(!w[0].contains("portcullis-proxy"), "{w:?}");
    }

    #[test]
    fn an_unknown_level_is_held_to_restricted() {
        assert_eq!(Level::from_label("strict"), Level::Restricted);
        assert_eq!(Level::from_label(" baseline "), Level::Baseline);
    }
}
