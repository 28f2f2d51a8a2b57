//! Pod Security admission against what the injector adds to every pod of a labelled namespace
//! (`injector-webhook/src/inject.rs`):
//!
//! - `portcullis-init`: runs as UID 0 (`runAsNonRoot: false`), adds `NET_ADMIN` and `NET_RAW`
//!   (drops ALL otherwise), `allowPrivilegeEscalation: false`, no seccomp profile of its own;
//! - `portcullis-proxy`: UID 2171, `runAsNonRoot: true`, drops ALL, seccomp `RuntimeDefault`;
//!   with UDP enforcement (the default) it adds `NET_ADMIN` with
//!   `allowPrivilegeEscalation: true`.
//!
//! The Pod Security Standards: `baseline` allows adding only AUDIT_WRITE, CHOWN, DAC_OVERRIDE,
//! FOWNER, FSETID, KILL, MKNOD, NET_BIND_SERVICE, SETFCAP, SETGID, SETPCAP, SETUID, SYS_CHROOT
//! (so neither NET_ADMIN nor NET_RAW); `restricted` also allows adding only NET_BIND_SERVICE
//! and requires `allowPrivilegeEscalation: false`, `runAsNonRoot: true` (and no UID 0), a
//! seccomp profile and dropping ALL. So `baseline` and `restricted` reject every injected pod
//! through `portcullis-init` alone, whatever the UDP setting.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Namespace;
use portcullis_contract::keys::ENFORCE_UDP;

use super::{ids, Report};

const ENFORCE: &str = "pod-security.kubernetes.io/enforce";
const WARN: &str = "pod-security.kubernetes.io/warn";
const AUDIT: &str = "pod-security.kubernetes.io/audit";

/// Each checked namespace's `enforce` level (a failure unless `privileged`), and its `warn` and
/// `audit` levels (passing notes: they let pods in, with warnings or audit annotations).
pub fn check(checked: &[&Namespace], report: &mut Report) {
    for ns in checked {
        let name = ns.metadata.name.as_deref().unwrap_or_default();
        let empty = BTreeMap::new();
        let labels = ns.metadata.labels.as_ref().unwrap_or(&empty);
        let annotations = ns.metadata.annotations.as_ref().unwrap_or(&empty);
        let udp = annotations.get(ENFORCE_UDP).map(|v| v.trim()) != Some("false");
        enforce(name, labels.get(ENFORCE).map(String::as_str), udp, report);
        for (key, mode) in [(WARN, "warn"), (AUDIT, "audit")] {
            if let Some(level) = labels.get(key).filter(|l| is_strict(l)) {
                let what = if mode == "warn" {
                    "every injected pod's creation returns warnings to the client"
                } else {
                    "every injected pod is annotated in the API server's audit log"
                };
                report.ok(
                    ids::POD_SECURITY_WARN,
                    format!("namespace {name}: Pod Security {mode}={level} lets injected pods in; {what} ({})", violations(level, udp).join("; ")),
                );
            }
        }
    }
}

fn is_strict(level: &str) -> bool {
    matches!(level, "baseline" | "restricted")
}

fn enforce(ns: &str, level: Option<&str>, udp: bool, report: &mut Report) {
    let id = ids::POD_SECURITY_ENFORCE;
    match level {
        Some(level) if is_strict(level) => report.fail(
            id,
            format!(
                "namespace {ns} enforces Pod Security {level}: every injected pod is rejected: {}",
                violations(level, udp).join("; ")
            ),
            options(ns, udp),
        ),
        Some(level) => report.ok(id, format!("namespace {ns}: Pod Security enforce={level} admits injected pods")),
        None => report.ok(id, format!("namespace {ns}: no Pod Security enforce label (the API server's default applies: privileged unless its AdmissionConfiguration says otherwise)")),
    }
}

/// What the level refuses in the injected containers, exactly.
fn violations(level: &str, udp: bool) -> Vec<String> {
    let mut v = Vec::new();
    if level == "restricted" {
        v.push("portcullis-init adds NET_ADMIN and NET_RAW (restricted allows adding only NET_BIND_SERVICE), runs as root (runAsUser 0, runAsNonRoot false) and sets no seccompProfile (unless the pod sets one)".to_string());
        if udp {
            v.push("portcullis-proxy adds NET_ADMIN with allowPrivilegeEscalation: true (UDP enforcement is on)".to_string());
        }
    } else {
        v.push(
            "portcullis-init adds NET_ADMIN and NET_RAW (not in baseline's allowed capabilities)"
                .to_string(),
        );
        if udp {
            v.push("portcullis-proxy adds NET_ADMIN (UDP enforcement is on)".to_string());
        }
    }
    v
}

fn options(ns: &str, udp: bool) -> String {
    let udp_note = if udp {
        format!("setting {ENFORCE_UDP}: \"false\" on the namespace removes only the proxy's NET_ADMIN (UDP and SCTP then pass unchecked): portcullis-init still needs NET_ADMIN and NET_RAW, so it is not enough on its own")
    } else {
        "UDP enforcement is already off here: what remains is portcullis-init's NET_ADMIN and NET_RAW, which no disabling removes".to_string()
    };
    format!(
        "label the namespace privileged for enforce, keeping warn/audit strict to still see the applications' own violations: \
         kubectl label namespace {ns} --overwrite {ENFORCE}=privileged {WARN}=baseline {AUDIT}=baseline; \
         or exempt the namespace in the API server's PodSecurity AdmissionConfiguration; {udp_note}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::Status;

    fn ns(name: &str, labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> Namespace {
        let map = |kv: &[(&str, &str)]| {
            Some(
                kv.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        let mut n = Namespace::default();
        n.metadata.name = Some(name.into());
        n.metadata.labels = map(labels);
        n.metadata.annotations = map(annotations);
        n
    }

    fn lines(namespaces: &[Namespace]) -> Vec<(Status, String, String)> {
        let mut report = Report::default();
        check(&namespaces.iter().collect::<Vec<_>>(), &mut report);
        report
            .checks
            .into_iter()
            .map(|l| (l.status, l.message, l.hint.unwrap_or_default()))
            .collect()
    }

    #[test]
    fn baseline_enforced_fails_and_names_both_containers_and_the_options() {
        let l = lines(&[ns("shop", &[(ENFORCE, "baseline")], &[])]);
        let (status, message, hint) = &l[0];
        assert_eq!(*status, Status::Fail);
        assert!(
            message.contains("namespace shop enforces Pod Security baseline"),
            "{message}"
        );
        assert!(
            message.contains("portcullis-init adds NET_ADMIN and NET_RAW"),
            "{message}"
        );
        assert!(
            message.contains("portcullis-proxy adds NET_ADMIN (UDP enforcement is on)"),
            "{message}"
        );
        assert!(hint.contains("kubectl label namespace shop --overwrite pod-security.kubernetes.io/enforce=privileged"), "{hint}");
        assert!(
            hint.contains("portcullis.dev/enforce-udp: \"false\""),
            "{hint}"
        );
        assert!(hint.contains("not enough on its own"), "{hint}");
    }

    #[test]
    fn restricted_without_udp_still_fails_on_the_init_container_alone() {
        let l = lines(&[ns(
            "pay",
            &[(ENFORCE, "restricted")],
            &[(ENFORCE_UDP, "false")],
        )]);
        let (status, message, hint) = &l[0];
        assert_eq!(*status, Status::Fail);
        assert!(message.contains("runs as root"), "{message}");
        assert!(!message.contains("portcullis-proxy"), "{message}");
        assert!(hint.contains("UDP enforcement is already off"), "{hint}");
    }

    #[test]
    fn privileged_or_unlabelled_passes_and_warn_audit_are_notes() {
        let l = lines(&[
            ns(
                "a",
                &[
                    (ENFORCE, "privileged"),
                    (WARN, "restricted"),
                    (AUDIT, "baseline"),
                ],
                &[],
            ),
            ns("b", &[], &[]),
        ]);
        assert!(l.iter().all(|(s, _, _)| *s == Status::Ok), "{l:#?}");
        assert!(
            l[1].1.contains("warn=restricted lets injected pods in"),
            "{l:#?}"
        );
        assert!(l[2].1.contains("audit=baseline"), "{l:#?}");
        assert!(
            l[3].1
                .contains("namespace b: no Pod Security enforce label"),
            "{l:#?}"
        );
    }
}
