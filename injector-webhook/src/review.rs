//! AdmissionReview in, AdmissionReview out. [`parse_review`] is the request parser (fuzzed in
//! `fuzz/`); [`respond`] turns a parsed request and the namespace defaults into the response.
//! Both are pure: the server only adds the namespace look-up, logging and metrics.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::Pod;
use kube_core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube_core::DynamicObject;
use serde_json::Value;

use crate::config::{InjectorConfig, INIT_CONTAINER_NAME, PROXY_CONTAINER_NAME};
use crate::inject::{decide, NamespaceDefaults, Outcome, SkipReason};
use crate::overrides::IgnoredOverride;
use crate::values::SidecarMode;

pub const ADMISSION_API_VERSION: &str = "admission.k8s.io/v1";
pub const ADMISSION_KIND: &str = "AdmissionReview";
/// Largest request body accepted. The API server caps objects at about 1.5 MiB; a review holds
/// at most the object and the old object.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// A request that cannot be answered with an AdmissionResponse (no uid to answer to): the
/// server replies HTTP 400 with this message.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("request body is not a valid AdmissionReview: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unsupported AdmissionReview apiVersion {0:?}: this webhook speaks admission.k8s.io/v1 only")]
    ApiVersion(String),
    #[error("unexpected kind {0:?}: expected AdmissionReview")]
    Kind(String),
    #[error("AdmissionReview has no request")]
    NoRequest,
    #[error("AdmissionReview request has an empty uid")]
    EmptyUid,
}

/// Why a patch cannot be sent: it would not apply as the API server applies it, or would not
/// leave the pod as the injector means to.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    #[error("patch does not apply: {0}")]
    Apply(#[from] json_patch::PatchError),
    #[error("patched object is not a Pod: {0}")]
    NotAPod(#[source] serde_json::Error),
    #[error("patched pod has no spec")]
    NoSpec,
    #[error("{INIT_CONTAINER_NAME} is not the first init container")]
    InitNotFirst,
    #[error("{PROXY_CONTAINER_NAME} is not where {0} mode puts it")]
    ProxyMisplaced(SidecarMode),
    #[error("cannot encode the patch: {0}")]
    Encode(#[from] kube_core::admission::SerializePatchError),
}

/// Why an object in a request is not a pod.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("object cannot be re-encoded: {0}")]
    Reencode(#[source] serde_json::Error),
    #[error("object is not a valid Pod: {0}")]
    NotAPod(#[source] serde_json::Error),
}

/// The object as JSON (the document a patch applies to) and as a typed pod.
fn decode_pod(object: &DynamicObject) -> Result<(Value, Pod), ObjectError> {
    let value = serde_json::to_value(object).map_err(ObjectError::Reencode)?;
    let pod = serde_json::from_value::<Pod>(value.clone()).map_err(ObjectError::NotAPod)?;
    Ok((value, pod))
}

/// What the request is about.
#[derive(Debug, Clone)]
pub enum Target {
    /// A Pod being created: the typed pod and the object as JSON (the document the patch
    /// applies to).
    Pod { pod: Box<Pod>, object: Value },
    /// An UPDATE of `pods/ephemeralcontainers` (`kubectl debug`): `existing` names the ephemeral
    /// containers the pod had before.
    Ephemeral {
        pod: Box<Pod>,
        object: Value,
        existing: std::collections::BTreeSet<String>,
    },
    /// Anything this webhook does not touch (other kinds, other operations, subresources).
    Ignore(String),
    /// A Pod creation whose object cannot be read as a Pod.
    Invalid(String),
}

#[derive(Debug, Clone)]
pub struct ParsedReview {
    pub request: AdmissionRequest<DynamicObject>,
    pub target: Target,
}

impl ParsedReview {
    /// The namespace of the pod: from the request, else from the object.
    pub fn namespace(&self) -> Option<&str> {
        let from_object = match &self.target {
            Target::Pod { pod, .. } | Target::Ephemeral { pod, .. } => {
                pod.metadata.namespace.as_deref()
            }
            _ => None,
        };
        self.request
            .namespace
            .as_deref()
            .or(from_object)
            .filter(|ns| !ns.is_empty())
    }

    /// A name for logs: the pod's name, else its generateName prefix, else "-".
    pub fn pod_name(&self) -> &str {
        let (name, generate_name) = match &self.target {
            Target::Pod { pod, .. } | Target::Ephemeral { pod, .. } => (
                pod.metadata.name.as_deref(),
                pod.metadata.generate_name.as_deref(),
            ),
            _ => (None, None),
        };
        [Some(self.request.name.as_str()), name, generate_name]
            .into_iter()
            .flatten()
            .find(|n| !n.is_empty())
            .unwrap_or("-")
    }
}

/// Parse an HTTP request body into an admission request.
pub fn parse_review(body: &[u8]) -> Result<ParsedReview, ParseError> {
    let review: AdmissionReview<DynamicObject> = serde_json::from_slice(body)?;
    if review.types.api_version != ADMISSION_API_VERSION {
        return Err(ParseError::ApiVersion(review.types.api_version));
    }
    if review.types.kind != ADMISSION_KIND {
        return Err(ParseError::Kind(review.types.kind));
    }
    let request: AdmissionRequest<DynamicObject> =
        review.try_into().map_err(|_| ParseError::NoRequest)?;
    if request.uid.is_empty() {
        return Err(ParseError::EmptyUid);
    }
    let target = classify(&request);
    Ok(ParsedReview { request, target })
}

fn classify(req: &AdmissionRequest<DynamicObject>) -> Target {
    let k = &req.kind;
    if !(k.group.is_empty() && k.version == "v1" && k.kind == "Pod") {
        return Target::Ignore(format!(
            "kind {}/{}/{}",
            if k.group.is_empty() { "core" } else { &k.group },
            k.version,
            k.kind
        ));
    }
    if let Some(sub) = req.sub_resource.as_deref().filter(|s| !s.is_empty()) {
        if sub == "ephemeralcontainers" && matches!(req.operation, Operation::Update) {
            return classify_ephemeral(req);
        }
        return Target::Ignore(format!("subresource {sub}"));
    }
    if !matches!(req.operation, Operation::Create) {
        return Target::Ignore(format!("operation {:?}", req.operation));
    }
    let Some(object) = req.object.as_ref() else {
        return Target::Invalid("Pod CREATE request without an object".to_string());
    };
    match decode_pod(object) {
        Ok((object, pod)) => Target::Pod {
            pod: Box::new(pod),
            object,
        },
        Err(why) => Target::Invalid(why.to_string()),
    }
}

/// `kubectl debug` adding ephemeral containers: the pod as it will be, and the names it had.
fn classify_ephemeral(req: &AdmissionRequest<DynamicObject>) -> Target {
    let Some(object) = req.object.as_ref() else {
        return Target::Invalid("ephemeralcontainers UPDATE without an object".to_string());
    };
    let (object, pod) = match decode_pod(object) {
        Ok(d) => d,
        Err(why) => return Target::Invalid(why.to_string()),
    };
    let existing = match req.old_object.as_ref().map(decode_pod) {
        Some(Ok((_, old))) => old
            .spec
            .and_then(|s| s.ephemeral_containers)
            .into_iter()
            .flatten()
            .map(|c| c.name)
            .collect(),
        Some(Err(why)) => return Target::Invalid(format!("old {why}")),
        None => Default::default(),
    };
    Target::Ephemeral {
        pod: Box::new(pod),
        object,
        existing,
    }
}

/// What was done, for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReviewResult {
    Injected(SidecarMode),
    Skipped(SkipReason),
    Ignored(String),
    /// Refused by policy (the message says why and what to change).
    Denied(String),
    /// The webhook failed; the pod was admitted untouched (or denied with `--fail-closed`).
    Error(String),
}

impl ReviewResult {
    pub fn label(&self) -> &'static str {
        match self {
            ReviewResult::Injected(_) => "injected",
            ReviewResult::Skipped(_) => "skipped",
            ReviewResult::Ignored(_) => "ignored",
            ReviewResult::Denied(_) => "denied",
            ReviewResult::Error(_) => "error",
        }
    }
}

/// The response to send, and what it means.
#[derive(Debug, Clone)]
pub struct Reply {
    pub review: AdmissionReview<DynamicObject>,
    pub result: ReviewResult,
    pub warnings: Vec<String>,
    /// Pod annotations ignored because the namespace does not allow pod overrides (logged).
    pub ignored_overrides: Vec<IgnoredOverride>,
    /// `portcullis.dev/exemptions` as written on the pod.
    pub exemptions: Option<String>,
}

/// Answer a parsed request. Never fails: errors of the webhook itself admit the pod untouched
/// with a warning, or deny it when `fail_closed`.
pub fn respond(
    parsed: &ParsedReview,
    namespace: &NamespaceDefaults,
    cfg: &InjectorConfig,
    fail_closed: bool,
) -> Reply {
    let base = AdmissionResponse::from(&parsed.request);
    let (pod, object) = match &parsed.target {
        Target::Ignore(why) => {
            return Reply {
                review: base.into_review(),
                result: ReviewResult::Ignored(why.clone()),
                warnings: Vec::new(),
                ignored_overrides: Vec::new(),
                exemptions: None,
            }
        }
        Target::Invalid(why) => return failure(base, why.clone(), Vec::new(), fail_closed),
        Target::Ephemeral {
            pod,
            object,
            existing,
        } => {
            let ephemeral = Ephemeral {
                pod,
                object,
                existing,
            };
            return respond_ephemeral(base, &ephemeral, namespace, cfg, fail_closed);
        }
        Target::Pod { pod, object } => (pod, object),
    };

    respond_pod(base, pod, object, namespace, cfg, fail_closed)
}

/// Answer a Pod creation: inject, skip (perhaps recording `not-injected`) or refuse it.
fn respond_pod(
    base: AdmissionResponse,
    pod: &Pod,
    object: &Value,
    namespace: &NamespaceDefaults,
    cfg: &InjectorConfig,
    fail_closed: bool,
) -> Reply {
    let decision = decide(pod, namespace, cfg);
    let mut warnings = decision.warnings;
    let (mut resp, result) = match decision.outcome {
        Outcome::Deny(message) => {
            let resp = base.deny(message.clone());
            (
                audited(resp, "denied", "proxy_uid"),
                ReviewResult::Denied(message),
            )
        }
        Outcome::Skip { reason, patch } => {
            // Only the exemptions annotation: check that it applies, as for injections.
            let resp = match patch.map(|p| with_checked_patch(&base, object, p, None)) {
                None => base,
                Some(Ok(resp)) => resp,
                Some(Err(why)) => return failure(base, why.to_string(), warnings, fail_closed),
            };
            let resp = audited(resp, "skipped", reason.label());
            (resp, ReviewResult::Skipped(reason))
        }
        Outcome::Inject { patch, settings } => {
            let mode = settings.sidecar_mode;
            let resp = match with_checked_patch(&base, object, patch, Some(mode)) {
                Ok(resp) => resp,
                Err(why) => return failure(base, why.to_string(), warnings, fail_closed),
            };
            warnings.truncate(MAX_WARNINGS);
            (
                audited(resp, "injected", mode.as_str()),
                ReviewResult::Injected(mode),
            )
        }
    };
    resp = with_warnings(resp, &warnings);
    Reply {
        review: resp.into_review(),
        result,
        warnings,
        ignored_overrides: decision.ignored_overrides,
        exemptions: decision.exemptions,
    }
}

/// `base` with `patch`, once the patch is checked to apply to `object` as the API server will
/// apply it and, for an injection in `mode`, to put the containers where that mode puts them.
fn with_checked_patch(
    base: &AdmissionResponse,
    object: &Value,
    patch: json_patch::Patch,
    mode: Option<SidecarMode>,
) -> Result<AdmissionResponse, PatchError> {
    match mode {
        Some(mode) => verify_patch(object, &patch, mode)?,
        None => json_patch::patch(&mut object.clone(), &patch)?,
    }
    Ok(base.clone().with_patch(patch)?)
}

fn audited(mut resp: AdmissionResponse, outcome: &str, detail: &str) -> AdmissionResponse {
    resp.audit_annotations = audit(outcome, detail);
    resp
}

/// Ephemeral containers added to a pod that runs the proxy: refused when they could get around
/// it, NET_RAW dropped otherwise. A pod without the proxy is none of Portcullis' business.
///
/// An administrator who must debug with those privileges (e.g. the emergency `portcullis-init
/// --cleanup` of docs/operations.md) annotates the namespace
/// `portcullis.dev/allow-privileged-debug: "true"` first: they are then admitted, with a warning.
fn respond_ephemeral(
    base: AdmissionResponse,
    request: &Ephemeral<'_>,
    namespace: &NamespaceDefaults,
    cfg: &InjectorConfig,
    fail_closed: bool,
) -> Reply {
    let Ephemeral {
        pod,
        object,
        existing,
    } = request;
    let reply = |resp: AdmissionResponse, result: ReviewResult, warnings: Vec<String>| Reply {
        review: with_warnings(resp, &warnings).into_review(),
        result,
        warnings,
        ignored_overrides: Vec::new(),
        exemptions: None,
    };
    let Some(spec) = pod.spec.as_ref().filter(|s| has_proxy(s)) else {
        let why = "ephemeral containers of a pod without the proxy".to_string();
        return reply(base, ReviewResult::Ignored(why), Vec::new());
    };
    let plan = crate::app_security::ephemeral_plan(spec, existing, cfg.proxy_uid);
    let allowed = matches!(namespace.annotation_map(), Some(a)
        if a.get(crate::config::annotations::ALLOW_PRIVILEGED_DEBUG).map(String::as_str) == Some("true"));
    if !plan.refusals.is_empty() && allowed {
        let warning = format!(
            "portcullis: admitted because the namespace allows privileged debugging ({}=true): \
             {} can get around this pod's NetworkPolicy enforcement",
            crate::config::annotations::ALLOW_PRIVILEGED_DEBUG,
            plan.refusals.join(", ")
        );
        let mut resp = base;
        resp.audit_annotations = audit("admitted", "ephemeral_privileged_debug");
        let why = "privileged debugging allowed by the namespace".to_string();
        return reply(resp, ReviewResult::Ignored(why), vec![warning]);
    }
    if !plan.refusals.is_empty() {
        let message = crate::app_security::ephemeral_refusal(&plan.refusals);
        let mut resp = base.deny(message.clone());
        resp.audit_annotations = audit("denied", "ephemeral_container");
        return reply(resp, ReviewResult::Denied(message), Vec::new());
    }
    if plan.ops.is_empty() {
        let why = "ephemeral containers that drop NET_RAW already".to_string();
        return reply(base, ReviewResult::Ignored(why), Vec::new());
    }
    let patch = json_patch::Patch(plan.ops);
    let mut doc = Value::clone(object);
    if let Err(e) = json_patch::patch(&mut doc, &patch) {
        let why = format!("patch does not apply: {e}");
        return failure(base, why, Vec::new(), fail_closed);
    }
    let warnings = vec![
        "portcullis: NET_RAW dropped from the new ephemeral container(s): raw sockets would get \
         around this pod's NetworkPolicy enforcement"
            .to_string(),
    ];
    match base.clone().with_patch(patch) {
        Ok(mut resp) => {
            resp.audit_annotations = audit("patched", "ephemeral_net_raw_dropped");
            let why = "NET_RAW dropped from ephemeral containers".to_string();
            reply(resp, ReviewResult::Ignored(why), warnings)
        }
        Err(e) => {
            let why = format!("cannot encode the patch: {e}");
            failure(base, why, warnings, fail_closed)
        }
    }
}

/// The parts of a `pods/ephemeralcontainers` UPDATE that admission looks at.
struct Ephemeral<'a> {
    pod: &'a Pod,
    object: &'a Value,
    existing: &'a std::collections::BTreeSet<String>,
}

/// Whether the pod runs the Portcullis proxy (as a container, or as a native sidecar).
fn has_proxy(spec: &k8s_openapi::api::core::v1::PodSpec) -> bool {
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| c.name == PROXY_CONTAINER_NAME)
}

/// The API server may drop warnings past a handful; keep the list short.
const MAX_WARNINGS: usize = 16;

fn audit(outcome: &str, detail: &str) -> HashMap<String, String> {
    HashMap::from([
        ("outcome".to_string(), outcome.to_string()),
        ("detail".to_string(), detail.to_string()),
    ])
}

fn with_warnings(mut resp: AdmissionResponse, warnings: &[String]) -> AdmissionResponse {
    if !warnings.is_empty() {
        let mut w = warnings.to_vec();
        w.truncate(MAX_WARNINGS);
        resp.warnings = Some(w);
    }
    resp
}

fn failure(
    base: AdmissionResponse,
    why: String,
    mut warnings: Vec<String>,
    fail_closed: bool,
) -> Reply {
    let resp = if fail_closed {
        base.deny(format!(
            "portcullis injector failed ({why}); denied because the injector runs with --fail-closed"
        ))
    } else {
        warnings.push(format!(
            "portcullis: injection failed ({why}); pod admitted WITHOUT the Portcullis proxy"
        ));
        let mut resp = base;
        resp.audit_annotations = audit("error", "admitted_without_proxy");
        resp
    };
    Reply {
        review: with_warnings(resp, &warnings).into_review(),
        result: ReviewResult::Error(why),
        warnings,
        ignored_overrides: Vec::new(),
        exemptions: None,
    }
}

/// Encode a response review for the API server. kube-core serializes `response.patch` (a Go
/// `[]byte`) as an array of numbers; Kubernetes documents base64, which is what this writes.
pub fn encode_review(
    review: &AdmissionReview<DynamicObject>,
) -> Result<Vec<u8>, serde_json::Error> {
    let mut value = serde_json::to_value(review)?;
    if let Some(response) = value.get_mut("response").and_then(Value::as_object_mut) {
        if let Some(patch) = response.get("patch") {
            let bytes: Vec<u8> = serde_json::from_value(patch.clone())?;
            let encoded = serde_json::to_value(k8s_openapi::ByteString(bytes))?;
            response.insert("patch".to_string(), encoded);
        }
    }
    serde_json::to_vec(&value)
}

/// Apply the patch to the object exactly as the API server will, and check the result: a bug
/// here must not reach the API server, which would reject the pod.
pub fn verify_patch(
    object: &Value,
    patch: &json_patch::Patch,
    mode: SidecarMode,
) -> Result<(), PatchError> {
    let mut doc = object.clone();
    json_patch::patch(&mut doc, patch)?;
    let pod: Pod = serde_json::from_value(doc).map_err(PatchError::NotAPod)?;
    let spec = pod.spec.as_ref().ok_or(PatchError::NoSpec)?;
    let inits: Vec<&str> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    if inits.first() != Some(&INIT_CONTAINER_NAME) {
        return Err(PatchError::InitNotFirst);
    }
    let proxy_ok = match mode {
        SidecarMode::Native => inits.get(1) == Some(&PROXY_CONTAINER_NAME),
        SidecarMode::Classic => {
            spec.containers.first().map(|c| c.name.as_str()) == Some(PROXY_CONTAINER_NAME)
        }
    };
    if !proxy_ok {
        return Err(PatchError::ProxyMisplaced(mode));
    }
    Ok(())
}

#[cfg(test)]
#[path = "review_tests.rs"]
mod tests;
