//! The decision: pod + namespace annotations + configuration → JSONPatch and warnings.
//!
//! A pure function, no I/O, so that every rule is unit-tested here and the HTTP layer stays
//! thin. By concern:
//! - this module: the decision ([`decide`]) and its outcome;
//! - `settings`: pod and namespace annotations over the injector's configuration;
//! - `checks`: what the submitted pod is checked for (names, look-alikes, warnings);
//! - `patch`: the JSONPatch; `containers`, `env`, `volumes`: what it adds.

mod checks;
mod containers;
mod env;
mod patch;
mod settings;
mod volumes;

use std::collections::BTreeMap;

use json_patch::Patch;
use k8s_openapi::api::core::v1::{Pod, PodSpec};

use crate::app_security::{capability_plan, proxy_uid_refusal, proxy_uid_users, CapabilityPlan};
use crate::config::{InjectorConfig, INIT_CONTAINER_NAME, PROXY_CONTAINER_NAME};
use crate::exemptions::{self, Exemption};
use crate::overrides::{self, IgnoredOverride};
use crate::values::PolicyMode;
use checks::{injected_mismatch, name_conflict, warn_about_pod};
pub use containers::{init_container, proxy_container};
use patch::{annotation_ops, build_patch};
pub use settings::Settings;
use settings::{opted_out, resolve_settings, Layers};

/// What is known of the pod's namespace, whose `portcullis.dev/*` annotations are defaults for
/// its pods. The admission request does not carry the namespace object, so the server looks it
/// up; the decision only sees the result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamespaceDefaults {
    /// The namespace as read.
    Known(NamespaceMeta),
    /// The look-up failed: injection goes on without namespace defaults, with a warning.
    Unavailable(String),
    /// Namespace look-ups are turned off (`--namespace-defaults=false`): no warning.
    Disabled,
}

/// What the injector reads of a namespace.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NamespaceMeta {
    /// Its `portcullis.dev/*` annotations (empty when it has none).
    pub annotations: BTreeMap<String, String>,
    /// Its `pod-security.kubernetes.io/enforce` label: the Pod Security level the API server
    /// will hold the patched pod to.
    pub pod_security_enforce: Option<String>,
}

impl NamespaceDefaults {
    /// A namespace with these annotations and no Pod Security label.
    pub fn annotations(annotations: BTreeMap<String, String>) -> Self {
        NamespaceDefaults::Known(NamespaceMeta {
            annotations,
            pod_security_enforce: None,
        })
    }

    /// The namespace's annotations, when it was read.
    pub fn annotation_map(&self) -> Option<&BTreeMap<String, String>> {
        match self {
            NamespaceDefaults::Known(meta) => Some(&meta.annotations),
            NamespaceDefaults::Unavailable(_) | NamespaceDefaults::Disabled => None,
        }
    }

    /// The namespace's Pod Security `enforce` level, when it was read and has one.
    pub fn pod_security_enforce(&self) -> Option<&str> {
        match self {
            NamespaceDefaults::Known(meta) => meta.pod_security_enforce.as_deref(),
            NamespaceDefaults::Unavailable(_) | NamespaceDefaults::Disabled => None,
        }
    }
}

/// Why a pod is left as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// `portcullis.dev/inject: disabled` on the pod or (as a default) on the namespace.
    OptedOut,
    /// `hostNetwork: true`: rules would apply to the node's network namespace.
    HostNetwork,
    /// A `portcullis-proxy` container is already there (reinvocation, re-submitted pod).
    AlreadyInjected,
    /// A container or volume has a name the injector needs.
    NameConflict(String),
    /// No spec or no containers: not a pod the API server would accept anyway.
    InvalidPod,
}

impl SkipReason {
    /// A short, fixed label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            SkipReason::OptedOut => "opted_out",
            SkipReason::HostNetwork => "host_network",
            SkipReason::AlreadyInjected => "already_injected",
            SkipReason::NameConflict(_) => "name_conflict",
            SkipReason::InvalidPod => "invalid_pod",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Inject {
        patch: Patch,
        settings: Box<Settings>,
    },
    /// Left without the proxy. `patch`, when set, only records `not-injected` in
    /// `portcullis.dev/exemptions`.
    Skip {
        reason: SkipReason,
        patch: Option<Patch>,
    },
    /// Refused: the message names the container and the fix.
    Deny(String),
}

/// The result of [`decide`]: what to do, and what to tell the user (AdmissionResponse
/// warnings) and the log.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub outcome: Outcome,
    pub warnings: Vec<String>,
    /// Pod annotations ignored because the namespace does not allow pod overrides.
    pub ignored_overrides: Vec<IgnoredOverride>,
    /// The exemptions in force, as written in `portcullis.dev/exemptions`; `None`: none.
    pub exemptions: Option<String>,
}

impl Decision {
    /// Left alone, nothing written (not a pod to police, or already policed).
    fn untouched(reason: SkipReason, warnings: Vec<String>) -> Decision {
        Decision {
            outcome: Outcome::Skip {
                reason,
                patch: None,
            },
            warnings,
            ignored_overrides: Vec::new(),
            exemptions: None,
        }
    }

    /// Not injected: the pod's traffic is not policed, which the pod says.
    fn not_injected(
        pod: &Pod,
        reason: SkipReason,
        warnings: Vec<String>,
        ignored_overrides: Vec<IgnoredOverride>,
    ) -> Decision {
        let value = exemptions::render(&[Exemption::NotInjected]);
        let patch = Patch(annotation_ops(pod, &[], value.as_deref()));
        Decision {
            outcome: Outcome::Skip {
                reason,
                patch: Some(patch),
            },
            warnings,
            ignored_overrides,
            exemptions: value,
        }
    }
}

/// Decide whether and how to inject `pod`.
pub fn decide(pod: &Pod, namespace: &NamespaceDefaults, cfg: &InjectorConfig) -> Decision {
    let mut warnings = Vec::new();
    let Some(spec) = pod.spec.as_ref() else {
        return Decision::untouched(SkipReason::InvalidPod, warnings);
    };
    if spec.containers.is_empty() {
        return Decision::untouched(SkipReason::InvalidPod, warnings);
    }
    let ns_annotations = namespace.annotation_map();
    let already_injected = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| c.name == PROXY_CONTAINER_NAME);
    if already_injected {
        return check_already_injected(pod, spec, ns_annotations, cfg);
    }

    // Without the namespace's word, pods may not weaken their own enforcement (fail closed).
    let allowed = overrides::allowed(ns_annotations, &mut warnings);
    let (pod_annotations, ignored) =
        overrides::effective(pod.metadata.annotations.as_ref(), allowed, &mut warnings);
    let layers = Layers {
        pod: pod_annotations.as_ref(),
        namespace: ns_annotations,
    };

    if opted_out(&layers, &mut warnings) {
        return Decision::not_injected(pod, SkipReason::OptedOut, warnings, ignored);
    }
    if spec.host_network == Some(true) {
        warnings.push(
            "portcullis: pod uses hostNetwork; it is not injected and its traffic is not policed"
                .to_string(),
        );
        return Decision::not_injected(pod, SkipReason::HostNetwork, warnings, ignored);
    }
    if let Some(conflict) = name_conflict(spec) {
        // Taking a name the injector needs is a way of not being injected: only where the
        // namespace lets its pods opt out.
        if !allowed {
            return Decision {
                outcome: Outcome::Deny(format!(
                    "portcullis: refused: the pod has a {conflict}, a name Portcullis needs to police it, and its namespace does not allow pods to opt out. Rename it."
                )),
                warnings,
                ignored_overrides: ignored,
                exemptions: None,
            };
        }
        warnings.push(format!(
            "portcullis: pod already has a {conflict}; not injected, traffic is not policed"
        ));
        return Decision::not_injected(pod, SkipReason::NameConflict(conflict), warnings, ignored);
    }
    inject_or_refuse(pod, spec, namespace, &layers, cfg, warnings, ignored)
}

/// The pod is to be policed: refuse it if it runs as the proxy's UID, else inject it.
fn inject_or_refuse(
    pod: &Pod,
    spec: &PodSpec,
    namespace: &NamespaceDefaults,
    layers: &Layers<'_>,
    cfg: &InjectorConfig,
    mut warnings: Vec<String>,
    ignored: Vec<IgnoredOverride>,
) -> Decision {
    let uid_users = proxy_uid_users(spec, cfg.proxy_uid);
    if !uid_users.is_empty() {
        return Decision {
            outcome: Outcome::Deny(proxy_uid_refusal(&uid_users, cfg.proxy_uid)),
            warnings,
            ignored_overrides: ignored,
            exemptions: None,
        };
    }
    if let NamespaceDefaults::Unavailable(reason) = namespace {
        warnings.push(format!(
            "portcullis: namespace defaults unavailable ({}); using pod annotations and injector defaults",
            shorten(reason, 80)
        ));
    }

    let settings = resolve_settings(layers, cfg, &mut warnings);
    warn_about_pod(spec, &settings, &mut warnings);
    let plan = capability_plan(spec, settings.drop_net_raw);
    if !plan.holders.is_empty() {
        warnings.push(format!(
            "portcullis: egress not enforceable: {}: raw frames skip the pod's netfilter and NET_ADMIN can remove the rules; drop these to have egress enforced",
            plan.holders.join(", ")
        ));
    }
    if let Some(level) = namespace.pod_security_enforce() {
        let added = [
            init_container(&settings, cfg),
            proxy_container(&settings, cfg),
        ];
        warnings.extend(crate::pod_security::rejection_warning(level, spec, &added));
    }
    let exemptions = exemptions::render(&exemptions_in_force(&settings, &plan));
    let patch = build_patch(
        pod,
        spec,
        &settings,
        cfg,
        &plan,
        exemptions.as_deref(),
        &mut warnings,
    );
    Decision {
        outcome: Outcome::Inject {
            patch,
            settings: Box::new(settings),
        },
        warnings,
        ignored_overrides: ignored,
        exemptions,
    }
}

/// A pod that already carries `portcullis-proxy`: a reinvocation or a re-submitted injected pod,
/// left alone, or a pod whose author wrote look-alike containers (a proxy that checks nothing,
/// an init container that installs nothing, or ours with other settings), refused. The
/// containers must be exactly what this injector would add now, in every field that decides
/// enforcement.
fn check_already_injected(
    pod: &Pod,
    spec: &PodSpec,
    ns_annotations: Option<&BTreeMap<String, String>>,
    cfg: &InjectorConfig,
) -> Decision {
    // The same settings as on the first pass; its warnings were given then.
    let mut scratch = Vec::new();
    let allowed = overrides::allowed(ns_annotations, &mut scratch);
    let (pod_annotations, _) =
        overrides::effective(pod.metadata.annotations.as_ref(), allowed, &mut scratch);
    let layers = Layers {
        pod: pod_annotations.as_ref(),
        namespace: ns_annotations,
    };
    let settings = resolve_settings(&layers, cfg, &mut scratch);
    match injected_mismatch(spec, &settings, cfg) {
        None => Decision::untouched(SkipReason::AlreadyInjected, Vec::new()),
        Some(why) => Decision {
            outcome: Outcome::Deny(format!(
                "portcullis: refused: the pod carries containers named {INIT_CONTAINER_NAME}/{PROXY_CONTAINER_NAME} that are not the ones this injector adds ({why}). Remove them: the injector adds its own."
            )),
            warnings: Vec::new(),
            ignored_overrides: Vec::new(),
            exemptions: None,
        },
    }
}

/// Every way in which the injected pod is less than fully enforced.
fn exemptions_in_force(settings: &Settings, plan: &CapabilityPlan) -> Vec<Exemption> {
    let mut list = Vec::new();
    if settings.policy_mode == PolicyMode::Audit {
        list.push(Exemption::AuditMode);
    }
    if !settings.skip_inbound_ports.is_empty() {
        list.push(Exemption::SkipInboundPorts(
            settings.skip_inbound_ports.to_string(),
        ));
    }
    if !settings.skip_outbound_ports.is_empty() {
        list.push(Exemption::SkipOutboundPorts(
            settings.skip_outbound_ports.to_string(),
        ));
    }
    if !settings.skip_outbound_cidrs.is_empty() {
        list.push(Exemption::SkipOutboundCidrs(
            settings.skip_outbound_cidrs.to_string(),
        ));
    }
    if !settings.enforce_udp {
        list.push(Exemption::UdpNotEnforced);
    }
    if !plan.not_enforceable.is_empty() {
        list.push(Exemption::EgressNotEnforceable(
            plan.not_enforceable.iter().copied().collect(),
        ));
    }
    list
}

/// Cut `s` to at most `max` characters, marking the cut.
fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(max).collect();
        out.push('…');
        out
    }
}

#[cfg(test)]
mod tests;
