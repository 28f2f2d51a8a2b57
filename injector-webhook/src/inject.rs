//! The decision: pod + namespace annotations + configuration → JSONPatch and warnings.
//!
//! A pure function, no I/O, so that every rule is unit-tested here and the HTTP layer stays
//! thin.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::str::FromStr;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation, RemoveOperation};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, Pod, PodSpec, Probe, ProjectedVolumeSource,
    ResourceRequirements, SeccompProfile, SecurityContext, ServiceAccountTokenProjection, Volume,
    VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as K8sQuantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

use crate::app_security::{capability_plan, proxy_uid_refusal, proxy_uid_users, CapabilityPlan};
use crate::config::{
    annotations as ann, InjectorConfig, ProxyResources, ADMIN_PORT, ADMIN_PORT_NAME, INBOUND_PORT,
    INBOUND_PORT_NAME, INIT_CONTAINER_NAME, INIT_RUN_VOLUME_NAME, NFQUEUE, OUTBOUND_PORT,
    PROXY_CONTAINER_NAME, PROXY_MARK, TOKEN_AUDIENCE, TOKEN_DIR, TOKEN_FILE, TOKEN_VOLUME_NAME,
};
use crate::exemptions::{self, Exemption};
use crate::overrides::{self, IgnoredOverride};
use crate::values::{
    CidrList, LogLevel, PolicyMode, PortList, Quantity, SidecarMode, Switch, ValueError,
};

/// What is known of the pod's namespace, whose `portcullis.dev/*` annotations are defaults for
/// its pods. The admission request does not carry the namespace object, so the server looks it
/// up; the decision only sees the result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamespaceDefaults {
    /// The namespace's annotations (empty when it has none).
    Annotations(BTreeMap<String, String>),
    /// The look-up failed: injection goes on without namespace defaults, with a warning.
    Unavailable(String),
    /// Namespace look-ups are turned off (`--namespace-defaults=false`): no warning.
    Disabled,
}

/// The settings in force for one pod once annotations are applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub sidecar_mode: SidecarMode,
    pub policy_mode: PolicyMode,
    pub log_level: LogLevel,
    pub proxy_resources: ProxyResources,
    pub skip_inbound_ports: PortList,
    pub skip_outbound_ports: PortList,
    pub skip_outbound_cidrs: CidrList,
    /// UDP and SCTP enforced (the proxy gets NET_ADMIN for its NFQUEUE).
    pub enforce_udp: bool,
    /// NET_RAW dropped from application containers that do not add it.
    pub drop_net_raw: bool,
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
    let ns_annotations = match namespace {
        NamespaceDefaults::Annotations(map) => Some(map),
        NamespaceDefaults::Unavailable(_) | NamespaceDefaults::Disabled => None,
    };
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

/// What differs between the pod's `portcullis-*` containers and ours, if anything.
fn injected_mismatch(spec: &PodSpec, settings: &Settings, cfg: &InjectorConfig) -> Option<String> {
    let inits = spec.init_containers.as_deref().unwrap_or_default();
    let Some(init) = inits.first().filter(|c| c.name == INIT_CONTAINER_NAME) else {
        return Some(format!(
            "{INIT_CONTAINER_NAME} is not the first init container"
        ));
    };
    let proxy = inits
        .iter()
        .chain(spec.containers.iter())
        .find(|c| c.name == PROXY_CONTAINER_NAME)?;
    for (got, want) in [
        (init, init_container(settings, cfg)),
        (proxy, proxy_container(settings, cfg)),
    ] {
        let name = &want.name;
        // Other webhooks may add unrelated variables; ours must be exactly ours.
        let ours = |c: &Container| -> Vec<EnvVar> {
            c.env
                .iter()
                .flatten()
                .filter(|e| {
                    e.name.starts_with("PORTCULLIS_")
                        || want.env.iter().flatten().any(|w| w.name == e.name)
                })
                .cloned()
                .collect()
        };
        if got.image != want.image {
            return Some(format!(
                "{name} image {:?}",
                got.image.as_deref().unwrap_or("")
            ));
        }
        if got.command.is_some() || got.args.is_some() {
            return Some(format!("{name} has a command or args"));
        }
        if got.env_from.is_some() {
            return Some(format!("{name} has envFrom"));
        }
        if ours(got) != ours(&want) {
            return Some(format!("{name} environment"));
        }
        let uid = |c: &Container| c.security_context.as_ref().and_then(|s| s.run_as_user);
        if uid(got) != uid(&want) {
            return Some(format!("{name} runAsUser"));
        }
    }
    None
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

/// Pod annotations first, namespace annotations second.
struct Layers<'a> {
    pod: Option<&'a BTreeMap<String, String>>,
    namespace: Option<&'a BTreeMap<String, String>>,
}

impl<'a> Layers<'a> {
    fn iter(&self, key: &str) -> impl Iterator<Item = (&'static str, &'a String)> + '_ {
        let key = key.to_string();
        [("pod", self.pod), ("namespace", self.namespace)]
            .into_iter()
            .filter_map(move |(source, map)| map.and_then(|m| m.get(&key)).map(|v| (source, v)))
    }

    /// The first valid value of `key`, or `default`. Invalid values become warnings naming the
    /// value finally used.
    fn pick<T>(&self, key: &str, default: T, warnings: &mut Vec<String>) -> T
    where
        T: FromStr<Err = ValueError> + Display,
    {
        let mut invalid = Vec::new();
        let mut chosen = None;
        for (source, raw) in self.iter(key) {
            match raw.parse::<T>() {
                Ok(v) => {
                    chosen = Some(v);
                    break;
                }
                Err(e) => invalid.push((source, raw, e)),
            }
        }
        let value = chosen.unwrap_or(default);
        for (source, raw, e) in invalid {
            warnings.push(invalid_warning(
                source,
                key,
                raw,
                &e,
                &display_or_empty(&value),
            ));
        }
        value
    }

    /// Like [`Layers::pick`] for a value whose default may be unset.
    fn pick_opt<T>(&self, key: &str, default: Option<T>, warnings: &mut Vec<String>) -> Option<T>
    where
        T: FromStr<Err = ValueError> + Display + Clone,
    {
        let mut invalid = Vec::new();
        let mut chosen = None;
        for (source, raw) in self.iter(key) {
            match raw.parse::<T>() {
                Ok(v) => {
                    chosen = Some(v);
                    break;
                }
                Err(e) => invalid.push((source, raw, e)),
            }
        }
        let value = chosen.or(default);
        let shown = value
            .as_ref()
            .map_or_else(|| "no value".to_string(), display_or_empty);
        for (source, raw, e) in invalid {
            warnings.push(invalid_warning(source, key, raw, &e, &shown));
        }
        value
    }
}

fn display_or_empty<T: Display>(v: &T) -> String {
    let s = v.to_string();
    if s.is_empty() {
        "none".to_string()
    } else {
        format!("{s:?}")
    }
}

fn invalid_warning(source: &str, key: &str, raw: &str, e: &ValueError, using: &str) -> String {
    format!(
        "portcullis: invalid {source} annotation {key}={:?} ({}); using {using}",
        shorten(raw, 40),
        shorten(&e.0, 80)
    )
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

fn opted_out(layers: &Layers<'_>, warnings: &mut Vec<String>) -> bool {
    for (source, raw) in layers.iter(ann::INJECT) {
        match raw.trim() {
            "disabled" => return true,
            "enabled" => return false,
            other => warnings.push(format!(
                "portcullis: invalid {source} annotation {}={:?} (expected enabled or disabled); ignored",
                ann::INJECT,
                shorten(other, 40)
            )),
        }
    }
    false
}

fn name_conflict(spec: &PodSpec) -> Option<String> {
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    for c in containers {
        if c.name == INIT_CONTAINER_NAME {
            return Some(format!("container named {INIT_CONTAINER_NAME}"));
        }
        // The proxy's identity (its token) and the init container's /run are not the app's.
        for m in c.volume_mounts.iter().flatten() {
            if m.name == TOKEN_VOLUME_NAME || m.name == INIT_RUN_VOLUME_NAME {
                return Some(format!(
                    "container {:?} that mounts volume {}",
                    shorten(&c.name, 63),
                    m.name
                ));
            }
        }
    }
    for v in spec.volumes.iter().flatten() {
        if v.name == TOKEN_VOLUME_NAME || v.name == INIT_RUN_VOLUME_NAME {
            return Some(format!("volume named {}", v.name));
        }
    }
    None
}

fn resolve_settings(
    layers: &Layers<'_>,
    cfg: &InjectorConfig,
    warnings: &mut Vec<String>,
) -> Settings {
    let sidecar_mode = layers.pick(ann::SIDECAR_MODE, cfg.sidecar_mode, warnings);
    let policy_mode = layers.pick(ann::POLICY_MODE, cfg.policy_mode, warnings);
    let log_level = layers.pick(ann::LOG_LEVEL, cfg.log_level.clone(), warnings);
    let skip_inbound_ports = layers.pick(
        ann::SKIP_INBOUND_PORTS,
        cfg.skip_inbound_ports.clone(),
        warnings,
    );
    let skip_outbound_ports = layers.pick(
        ann::SKIP_OUTBOUND_PORTS,
        cfg.skip_outbound_ports.clone(),
        warnings,
    );
    let skip_outbound_cidrs = layers.pick(
        ann::SKIP_OUTBOUND_CIDRS,
        cfg.skip_outbound_cidrs.clone(),
        warnings,
    );

    let d = &cfg.proxy_resources;
    let (cpu_request, cpu_limit) = request_limit_pair(
        "cpu",
        layers.pick_opt(ann::PROXY_CPU_REQUEST, d.cpu_request.clone(), warnings),
        layers.pick_opt(ann::PROXY_CPU_LIMIT, d.cpu_limit.clone(), warnings),
        (&d.cpu_request, &d.cpu_limit),
        warnings,
    );
    let (memory_request, memory_limit) = request_limit_pair(
        "memory",
        layers.pick_opt(
            ann::PROXY_MEMORY_REQUEST,
            d.memory_request.clone(),
            warnings,
        ),
        layers.pick_opt(ann::PROXY_MEMORY_LIMIT, d.memory_limit.clone(), warnings),
        (&d.memory_request, &d.memory_limit),
        warnings,
    );

    let enforce_udp = layers.pick(ann::ENFORCE_UDP, cfg.enforce_udp, warnings).0;
    let drop_net_raw = layers.pick(ann::DROP_NET_RAW, cfg.drop_net_raw, warnings).0;

    Settings {
        enforce_udp,
        drop_net_raw,
        sidecar_mode,
        policy_mode,
        log_level,
        proxy_resources: ProxyResources {
            cpu_request,
            cpu_limit,
            memory_request,
            memory_limit,
        },
        skip_inbound_ports,
        skip_outbound_ports,
        skip_outbound_cidrs,
    }
}

/// Kubernetes rejects a container whose request exceeds its limit, which would block the pod:
/// fall back to the injector's pair for that resource instead.
fn request_limit_pair(
    resource: &str,
    request: Option<Quantity>,
    limit: Option<Quantity>,
    defaults: (&Option<Quantity>, &Option<Quantity>),
    warnings: &mut Vec<String>,
) -> (Option<Quantity>, Option<Quantity>) {
    match (&request, &limit) {
        (Some(r), Some(l)) if r.value() > l.value() => {
            warnings.push(format!(
                "portcullis: proxy {resource} request {r} exceeds its limit {l}; using the injector defaults for {resource}"
            ));
            (defaults.0.clone(), defaults.1.clone())
        }
        _ => (request, limit),
    }
}

/// Warnings about pods that work, but not as their owner may expect.
fn warn_about_pod(spec: &PodSpec, settings: &Settings, warnings: &mut Vec<String>) {
    let reserved = [INBOUND_PORT, OUTBOUND_PORT, ADMIN_PORT];
    for c in spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
    {
        for p in c.ports.iter().flatten() {
            if reserved.contains(&p.container_port) {
                warnings.push(format!(
                    "portcullis: container {} declares port {}, which the Portcullis proxy uses",
                    shorten(&c.name, 63),
                    p.container_port
                ));
            }
        }
    }
    if settings.sidecar_mode == SidecarMode::Classic {
        if spec.init_containers.as_ref().is_some_and(|v| !v.is_empty()) {
            warnings.push(
                "portcullis: classic sidecar mode: the pod's init containers run before the proxy, so their redirected traffic fails; use native mode or skip their ports".to_string(),
            );
        }
        if matches!(spec.restart_policy.as_deref(), Some("Never" | "OnFailure")) {
            warnings.push(
                "portcullis: classic sidecar mode: the proxy does not exit, so this run-to-completion pod never completes; use native mode".to_string(),
            );
        }
    }
}

fn pointer(tokens: &[&str]) -> PointerBuf {
    PointerBuf::from_tokens(tokens.iter().copied())
}

fn add(tokens: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: pointer(tokens),
        value,
    })
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    // k8s-openapi types serialize to JSON objects infallibly (no maps with non-string keys).
    serde_json::to_value(v).unwrap_or(Value::Null)
}

fn build_patch(
    pod: &Pod,
    spec: &PodSpec,
    settings: &Settings,
    cfg: &InjectorConfig,
    plan: &CapabilityPlan,
    exemptions: Option<&str>,
    warnings: &mut Vec<String>,
) -> Patch {
    // First, while the pod's container indexes are still the original ones.
    let mut ops = plan.ops.clone();
    let init = to_value(&init_container(settings, cfg));
    let proxy = to_value(&proxy_container(settings, cfg));

    // portcullis-init runs first of all init containers, so that the app's own init
    // containers are policed too; in native mode the proxy follows it at once.
    let mut new_inits = vec![init];
    let mut proxy_slot = Some(proxy);
    if settings.sidecar_mode == SidecarMode::Native {
        new_inits.extend(proxy_slot.take());
    }
    match &spec.init_containers {
        None => ops.push(add(&["spec", "initContainers"], Value::Array(new_inits))),
        Some(_) => {
            for (i, c) in new_inits.into_iter().enumerate() {
                ops.push(add(&["spec", "initContainers", &i.to_string()], c));
            }
        }
    }
    if let Some(proxy) = proxy_slot {
        // Classic mode: first container, so that the kubelet starts it first.
        ops.push(add(&["spec", "containers", "0"], proxy));
    }

    let volumes = [token_volume(cfg), init_run_volume()].map(|v| to_value(&v));
    match &spec.volumes {
        None => ops.push(add(&["spec", "volumes"], Value::Array(volumes.to_vec()))),
        Some(_) => {
            for v in volumes {
                ops.push(add(&["spec", "volumes", "-"], v));
            }
        }
    }

    let existing = pod.metadata.annotations.as_ref();
    let has = |k: &str| existing.is_some_and(|m| m.contains_key(k));
    let mut new_annotations: Vec<(&str, String)> = Vec::new();
    let prometheus = [
        ann::PROMETHEUS_SCRAPE,
        ann::PROMETHEUS_PORT,
        ann::PROMETHEUS_PATH,
    ];
    if prometheus.iter().any(|k| has(k)) {
        warnings.push(
            "portcullis: pod already has prometheus.io annotations; kept, so the proxy's metrics (port 4191) are not advertised".to_string(),
        );
    } else {
        new_annotations.push((ann::PROMETHEUS_SCRAPE, "true".to_string()));
        new_annotations.push((ann::PROMETHEUS_PORT, ADMIN_PORT.to_string()));
        new_annotations.push((ann::PROMETHEUS_PATH, "/metrics".to_string()));
    }
    new_annotations.push((ann::INJECTED_VERSION, cfg.version.clone()));
    if settings.sidecar_mode == SidecarMode::Classic && !has(ann::DEFAULT_CONTAINER) {
        if let Some(first) = spec.containers.first() {
            new_annotations.push((ann::DEFAULT_CONTAINER, first.name.clone()));
        }
    }
    ops.extend(annotation_ops(pod, &new_annotations, exemptions));
    Patch(ops)
}

/// Sets `annotations` and `portcullis.dev/exemptions` (to `exemptions`, or removes one the pod
/// author wrote when there is none).
fn annotation_ops(
    pod: &Pod,
    annotations: &[(&str, String)],
    exemptions: Option<&str>,
) -> Vec<PatchOperation> {
    let mut all: Vec<(&str, String)> = annotations.to_vec();
    if let Some(value) = exemptions {
        all.push((ann::EXEMPTIONS, value.to_string()));
    }
    let Some(existing) = pod.metadata.annotations.as_ref() else {
        if all.is_empty() {
            return Vec::new();
        }
        let map: serde_json::Map<String, Value> = all
            .into_iter()
            .map(|(k, v)| (k.to_string(), Value::String(v)))
            .collect();
        return vec![add(&["metadata", "annotations"], Value::Object(map))];
    };
    let mut ops: Vec<PatchOperation> = all
        .into_iter()
        .map(|(k, v)| add(&["metadata", "annotations", k], Value::String(v)))
        .collect();
    if exemptions.is_none() && existing.contains_key(ann::EXEMPTIONS) {
        ops.push(PatchOperation::Remove(RemoveOperation {
            path: pointer(&["metadata", "annotations", ann::EXEMPTIONS]),
        }));
    }
    ops
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn env_field(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: None,
                field_path: field_path.to_string(),
            }),
            ..EnvVarSource::default()
        }),
    }
}

fn quantities(pairs: &[(&str, &Option<Quantity>)]) -> Option<BTreeMap<String, K8sQuantity>> {
    let map: BTreeMap<String, K8sQuantity> = pairs
        .iter()
        .filter_map(|(k, q)| {
            q.as_ref()
                .map(|q| (k.to_string(), K8sQuantity(q.as_str().to_string())))
        })
        .collect();
    (!map.is_empty()).then_some(map)
}

/// The `portcullis-init` container: installs the redirect rules, then exits.
pub fn init_container(settings: &Settings, cfg: &InjectorConfig) -> Container {
    let mut env_vars = vec![
        env("PORTCULLIS_PROXY_UID", cfg.proxy_uid.to_string()),
        env("PORTCULLIS_INBOUND_PORT", INBOUND_PORT.to_string()),
        env("PORTCULLIS_OUTBOUND_PORT", OUTBOUND_PORT.to_string()),
        env("PORTCULLIS_ADMIN_PORT", ADMIN_PORT.to_string()),
    ];
    // Empty lists are left out rather than set to "": "not set" is the contract's default.
    if !settings.skip_inbound_ports.is_empty() {
        env_vars.push(env(
            "PORTCULLIS_SKIP_INBOUND_PORTS",
            settings.skip_inbound_ports.to_string(),
        ));
    }
    if !settings.skip_outbound_ports.is_empty() {
        env_vars.push(env(
            "PORTCULLIS_SKIP_OUTBOUND_PORTS",
            settings.skip_outbound_ports.to_string(),
        ));
    }
    if !settings.skip_outbound_cidrs.is_empty() {
        env_vars.push(env(
            "PORTCULLIS_SKIP_OUTBOUND_CIDRS",
            settings.skip_outbound_cidrs.to_string(),
        ));
    }
    env_vars.extend(udp_env(settings));
    let small = |cpu: &str, mem: &str| {
        let q = |s: &str| K8sQuantity(s.to_string());
        Some(BTreeMap::from([
            ("cpu".to_string(), q(cpu)),
            ("memory".to_string(), q(mem)),
        ]))
    };
    Container {
        name: INIT_CONTAINER_NAME.to_string(),
        image: Some(cfg.init_image.clone()),
        image_pull_policy: cfg.image_pull_policy.clone(),
        env: Some(env_vars),
        resources: Some(ResourceRequirements {
            requests: small("10m", "16Mi"),
            limits: small("100m", "64Mi"),
            ..ResourceRequirements::default()
        }),
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            run_as_group: Some(0),
            run_as_non_root: Some(false),
            privileged: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".to_string(), "NET_RAW".to_string()]),
                drop: Some(vec!["ALL".to_string()]),
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: INIT_RUN_VOLUME_NAME.to_string(),
            mount_path: "/run".to_string(),
            ..VolumeMount::default()
        }]),
        termination_message_policy: Some("FallbackToLogsOnError".to_string()),
        ..Container::default()
    }
}

/// `PORTCULLIS_ENFORCE_UDP` and, when on, the queue number and the proxy's packet mark, for both
/// containers. The mark goes with UDP enforcement because both need the proxy's NET_ADMIN: with
/// it, the init rules exempt only UID 2171 *with* the mark, so another process running as 2171
/// is checked like any other; without NET_ADMIN the proxy cannot mark, and UID 2171 alone is
/// exempt (`udp-not-enforced` in the exemptions annotation says so). `PORTCULLIS_INBOUND_TCP`
/// says where inbound TCP is judged: in the same queue when it is read (no relay on the inbound
/// side), else by the inbound listener.
fn udp_env(settings: &Settings) -> Vec<EnvVar> {
    let mut vars = vec![env(
        "PORTCULLIS_ENFORCE_UDP",
        Switch(settings.enforce_udp).to_string(),
    )];
    if settings.enforce_udp {
        vars.push(env("PORTCULLIS_NFQUEUE", NFQUEUE.to_string()));
        vars.push(env("PORTCULLIS_PROXY_MARK", format!("{PROXY_MARK:#x}")));
    }
    vars.push(env(
        "PORTCULLIS_INBOUND_TCP",
        if settings.enforce_udp {
            "queue"
        } else {
            "proxy"
        }
        .to_string(),
    ));
    vars
}

fn http_probe(path: &str, period: i32, failures: i32) -> Option<Probe> {
    Some(Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::Int(ADMIN_PORT),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(1),
        ..Probe::default()
    })
}

/// The `portcullis-proxy` container, in either sidecar mode.
pub fn proxy_container(settings: &Settings, cfg: &InjectorConfig) -> Container {
    let r = &settings.proxy_resources;
    let port = |name: &str, port: i32| ContainerPort {
        name: Some(name.to_string()),
        container_port: port,
        protocol: Some("TCP".to_string()),
        ..ContainerPort::default()
    };
    Container {
        name: PROXY_CONTAINER_NAME.to_string(),
        image: Some(cfg.proxy_image.clone()),
        image_pull_policy: cfg.image_pull_policy.clone(),
        restart_policy: (settings.sidecar_mode == SidecarMode::Native)
            .then(|| "Always".to_string()),
        ports: Some(vec![
            port(INBOUND_PORT_NAME, INBOUND_PORT),
            port(ADMIN_PORT_NAME, ADMIN_PORT),
        ]),
        env: Some({
            let mut vars = vec![
                env_field("POD_NAME", "metadata.name"),
                env_field("POD_NAMESPACE", "metadata.namespace"),
                env_field("POD_IPS", "status.podIPs"),
                env_field("HOST_IP", "status.hostIP"),
                env("PORTCULLIS_MODE", settings.policy_mode.as_str()),
                env("PORTCULLIS_LOG", settings.log_level.as_str()),
                env("PORTCULLIS_CONTROLLER", cfg.controller_url.clone()),
                env("PORTCULLIS_TOKEN_FILE", TOKEN_FILE),
            ];
            vars.extend(udp_env(settings));
            if let Some(pem) = &cfg.controller_ca_pem {
                vars.push(env("PORTCULLIS_CONTROLLER_CA_PEM", pem.clone()));
            }
            vars
        }),
        resources: Some(ResourceRequirements {
            requests: quantities(&[("cpu", &r.cpu_request), ("memory", &r.memory_request)]),
            limits: quantities(&[("cpu", &r.cpu_limit), ("memory", &r.memory_limit)]),
            ..ResourceRequirements::default()
        }),
        security_context: Some(SecurityContext {
            run_as_user: Some(cfg.proxy_uid),
            run_as_group: Some(cfg.proxy_uid),
            run_as_non_root: Some(true),
            privileged: Some(false),
            // File capabilities count only without no_new_privs, which
            // `allowPrivilegeEscalation: false` sets; so it is allowed exactly when the proxy
            // needs NET_ADMIN. What it can escalate to is bounded by the bounding set: NET_ADMIN.
            allow_privilege_escalation: Some(settings.enforce_udp),
            read_only_root_filesystem: Some(true),
            // NET_ADMIN, only to read the NFQUEUE and delete conntrack entries (UDP/SCTP
            // enforcement). As UID 2171 the kernel grants it only through the binary's file
            // capability (`cap_net_admin+p`); the bounding set keeps it the only one.
            capabilities: Some(Capabilities {
                add: settings.enforce_udp.then(|| vec!["NET_ADMIN".to_string()]),
                drop: Some(vec!["ALL".to_string()]),
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_string(),
                localhost_profile: None,
            }),
            ..SecurityContext::default()
        }),
        // Until /ready answers, the kubelet holds back the next containers (native mode) and
        // liveness checks; two minutes for the proxy to load its policy.
        startup_probe: http_probe("/ready", 1, 120),
        readiness_probe: http_probe("/ready", 5, 3),
        liveness_probe: http_probe("/live", 10, 3),
        volume_mounts: Some(vec![VolumeMount {
            name: TOKEN_VOLUME_NAME.to_string(),
            mount_path: TOKEN_DIR.to_string(),
            read_only: Some(true),
            ..VolumeMount::default()
        }]),
        termination_message_policy: Some("FallbackToLogsOnError".to_string()),
        ..Container::default()
    }
}

fn token_volume(cfg: &InjectorConfig) -> Volume {
    Volume {
        name: TOKEN_VOLUME_NAME.to_string(),
        projected: Some(ProjectedVolumeSource {
            default_mode: None,
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: Some(TOKEN_AUDIENCE.to_string()),
                    expiration_seconds: Some(cfg.token_expiration_seconds),
                    path: "token".to_string(),
                }),
                ..VolumeProjection::default()
            }]),
        }),
        ..Volume::default()
    }
}

fn init_run_volume() -> Volume {
    Volume {
        name: INIT_RUN_VOLUME_NAME.to_string(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: Some("Memory".to_string()),
            size_limit: Some(K8sQuantity("1Mi".to_string())),
        }),
        ..Volume::default()
    }
}

#[cfg(test)]
#[path = "inject_tests.rs"]
mod tests;
