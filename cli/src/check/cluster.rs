//! The cluster-wide checks: the API server, the rights to install, the control plane, the
//! webhook and its CA, and other meshes' injectors.

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{ListParams, PostParams};
use kube::Api;
use portcullis_policy::selector::Selector;

use super::api::Kube;
use super::{ids, Report, SYSTEM_NAMESPACE};

pub const CONTROLLER: &str = "portcullis-controller";
const INJECTOR: &str = "portcullis-injector";
const WEBHOOK_CONFIG: &str = "portcullis-injector";
const INJECTOR_SECRET: &str = "portcullis-injector-tls";
/// Native sidecars (init containers with restartPolicy: Always) are on by default from 1.29.
const NATIVE_SIDECARS_MINOR: u32 = 29;

/// Reachable, and recent enough for native sidecars. Returns whether the API answered.
pub async fn api_version(kube: &Kube, report: &mut Report) -> bool {
    let info = match kube
        .call("get version", kube.client.apiserver_version())
        .await
    {
        Ok(info) => info,
        Err(e) => {
            let message = if e.is_connection() {
                e.to_string()
            } else {
                format!("cannot reach the API server: {e}")
            };
            report.fail(ids::API_REACHABLE, message, e.hint());
            return false;
        }
    };
    report.ok(ids::API_REACHABLE, "can reach the API server".into());
    let minor: Option<u32> = info.minor.trim_end_matches('+').parse().ok();
    match (info.major.as_str(), minor) {
        ("1", Some(m)) if m >= NATIVE_SIDECARS_MINOR => report.ok(
            ids::API_VERSION,
            format!("Kubernetes {} supports native sidecars", info.git_version),
        ),
        _ => report.warn(
            ids::API_VERSION,
            format!(
                "Kubernetes {} predates native sidecars (1.{NATIVE_SIDECARS_MINOR})",
                info.git_version
            ),
            "run the injector with --sidecar-mode classic (PORTCULLIS_INJECTOR_SIDECAR_MODE), or upgrade the cluster".into(),
        ),
    }
    true
}

/// What installing needs: `(verb, group, resource, namespace)`.
const INSTALL_RIGHTS: [(&str, &str, &str, Option<&str>); 9] = [
    ("create", "", "namespaces", None),
    ("create", "rbac.authorization.k8s.io", "clusterroles", None),
    (
        "create",
        "rbac.authorization.k8s.io",
        "clusterrolebindings",
        None,
    ),
    (
        "create",
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
        None,
    ),
    ("create", "apps", "deployments", Some(SYSTEM_NAMESPACE)),
    ("create", "", "services", Some(SYSTEM_NAMESPACE)),
    ("create", "", "serviceaccounts", Some(SYSTEM_NAMESPACE)),
    ("create", "", "secrets", Some(SYSTEM_NAMESPACE)),
    (
        "create",
        "policy",
        "poddisruptionbudgets",
        Some(SYSTEM_NAMESPACE),
    ),
];

pub async fn rbac(kube: &Kube, report: &mut Report) {
    let category = ids::INSTALL_RBAC;
    let api = Api::<SelfSubjectAccessReview>::all(kube.client.clone());
    for (verb, group, resource, namespace) in INSTALL_RIGHTS {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(verb.into()),
                    group: Some(group.into()),
                    resource: Some(resource.into()),
                    namespace: namespace.map(str::to_string),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let what = match namespace {
            Some(ns) => format!("{resource} in {ns}"),
            None => resource.to_string(),
        };
        let asking = "create selfsubjectaccessreviews";
        match kube.call(asking, api.create(&PostParams::default(), &review)).await {
            Ok(r) if r.status.as_ref().is_some_and(|s| s.allowed) => {
                report.ok(category, format!("can {verb} {what}"))
            }
            Ok(r) => {
                let reason = r.status.and_then(|s| s.reason).unwrap_or_default();
                report.fail(
                    category,
                    format!("cannot {verb} {what}{}", if reason.is_empty() { String::new() } else { format!(" ({reason})") }),
                    format!("installing needs it: ask a cluster admin to install, or to grant it (kubectl auth can-i {verb} {resource}{})", namespace.map(|n| format!(" -n {n}")).unwrap_or_default()),
                )
            }
            Err(e) => report.fail(
                category,
                format!("cannot ask whether you may {verb} {what}: {e}"),
                format!("{} (SelfSubjectAccessReview is allowed to every authenticated user by default)", e.hint()),
            ),
        }
    }
}

/// Pre-install: which namespaces are already labelled (their pods will need a restart).
pub fn pre_existing(namespaces: &[Namespace], checked: &[&Namespace], report: &mut Report) {
    let system = namespaces
        .iter()
        .any(|n| n.metadata.name.as_deref() == Some(SYSTEM_NAMESPACE));
    if system {
        report.warn(
            ids::SYSTEM_NAMESPACE_FREE,
            format!("namespace {SYSTEM_NAMESPACE} already exists"),
            "Portcullis may be installed already: run `portcullis check` without --pre".into(),
        );
    } else {
        report.ok(
            ids::SYSTEM_NAMESPACE_FREE,
            format!("namespace {SYSTEM_NAMESPACE} does not exist yet"),
        );
    }
    let labelled: Vec<String> = checked
        .iter()
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    if !labelled.is_empty() {
        report.warn(
            ids::NAMESPACES_LABELLED,
            format!("namespaces already labelled portcullis.dev/inject=enabled: {}", labelled.join(", ")),
            "their running pods get the proxy only when restarted after the install (kubectl rollout restart)".into(),
        );
    }
}

/// Readiness of the controller and the injector; returns the controller's version (image tag).
pub async fn control_plane(
    kube: &Kube,
    namespaces: &[Namespace],
    report: &mut Report,
) -> Option<String> {
    if !namespaces
        .iter()
        .any(|n| n.metadata.name.as_deref() == Some(SYSTEM_NAMESPACE))
    {
        report.fail(
            ids::SYSTEM_NAMESPACE,
            format!("namespace {SYSTEM_NAMESPACE} does not exist"),
            "install Portcullis: kubectl apply -k manifests/ (see the README's quick start)".into(),
        );
        return None;
    }
    report.ok(
        ids::SYSTEM_NAMESPACE,
        format!("namespace {SYSTEM_NAMESPACE} exists"),
    );
    let category = ids::CONTROL_PLANE_READY;
    let api = Api::<Deployment>::namespaced(kube.client.clone(), SYSTEM_NAMESPACE);
    let mut version = None;
    for name in [CONTROLLER, INJECTOR] {
        let what = format!("get deployments -n {SYSTEM_NAMESPACE}");
        match kube.call(&what, api.get_opt(name)).await {
            Ok(Some(d)) => {
                let wanted = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                let ready = d
                    .status
                    .as_ref()
                    .and_then(|s| s.ready_replicas)
                    .unwrap_or(0);
                let hint = format!("kubectl -n {SYSTEM_NAMESPACE} describe deployment {name}; kubectl -n {SYSTEM_NAMESPACE} logs deployment/{name}");
                match ready {
                    0 => report.fail(category, format!("{name} is not ready (0/{wanted})"), hint),
                    r if r < wanted => report.warn(
                        category,
                        format!("{name} is partly ready ({r}/{wanted})"),
                        hint,
                    ),
                    r => report.ok(category, format!("{name} is ready ({r}/{wanted})")),
                }
                if name == CONTROLLER {
                    version = image_tag(&d);
                }
            }
            Ok(None) => report.fail(
                category,
                format!("deployment {name} does not exist"),
                "apply the manifests: kubectl apply -k manifests/".into(),
            ),
            Err(e) => report.api_fail(category, &format!("cannot read deployment {name}"), &e),
        }
    }
    version
}

fn image_tag(d: &Deployment) -> Option<String> {
    let image = d
        .spec
        .as_ref()?
        .template
        .spec
        .as_ref()?
        .containers
        .first()?
        .image
        .clone()?;
    let name = image.split('@').next()?;
    let last = name.rsplit('/').next()?;
    last.split_once(':').map(|(_, tag)| tag.to_string())
}

/// The webhook configuration: present, pointing at the injector, with a CA bundle that is the
/// CA of the injector's serving certificate, and failing closed.
pub async fn webhook(kube: &Kube, report: &mut Report) {
    let api = Api::<MutatingWebhookConfiguration>::all(kube.client.clone());
    let what = "get mutatingwebhookconfigurations";
    let config = match kube.call(what, api.get_opt(WEBHOOK_CONFIG)).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            return report.fail(
                ids::WEBHOOK_EXISTS,
                format!(
                "MutatingWebhookConfiguration {WEBHOOK_CONFIG} does not exist: no pod gets a proxy"
            ),
                "apply the manifests: kubectl apply -k manifests/".into(),
            )
        }
        Err(e) => {
            let doing = format!("cannot read MutatingWebhookConfiguration {WEBHOOK_CONFIG}");
            return report.api_fail(ids::WEBHOOK_EXISTS, &doing, &e);
        }
    };
    report.ok(
        ids::WEBHOOK_EXISTS,
        format!("MutatingWebhookConfiguration {WEBHOOK_CONFIG} exists"),
    );
    for hook in config.webhooks.iter().flatten() {
        let service = hook.client_config.service.as_ref();
        let target = service.map(|s| format!("{}/{}", s.namespace, s.name));
        if target.as_deref() != Some(&format!("{SYSTEM_NAMESPACE}/{INJECTOR}")) {
            report.fail(
                ids::WEBHOOK_SERVICE,
                format!(
                    "webhook {} calls {}",
                    hook.name,
                    target.unwrap_or_else(|| "a URL".into())
                ),
                format!(
                    "it must call the Service {SYSTEM_NAMESPACE}/{INJECTOR}: re-apply manifests/"
                ),
            );
        }
        let bundle = hook
            .client_config
            .ca_bundle
            .as_ref()
            .map(|b| String::from_utf8_lossy(&b.0).to_string())
            .unwrap_or_default();
        if bundle.contains("-----BEGIN CERTIFICATE-----") {
            report.ok(
                ids::WEBHOOK_CA_BUNDLE,
                format!("webhook {} has a CA bundle", hook.name),
            );
            ca_matches_secret(kube, &hook.name, &bundle, report).await;
        } else {
            report.fail(
                ids::WEBHOOK_CA_BUNDLE,
                format!("webhook {} has no CA bundle: the API server cannot call the injector, and pods are created without a proxy", hook.name),
                "run manifests/plain-cert/gen-certs.sh --apply, or install cert-manager's variant (manifests/cert-manager/)".into(),
            );
        }
        fail_open(&hook.name, hook.failure_policy.as_deref(), report);
    }
}

/// `failurePolicy: Ignore` (or unset before v1, which meant Ignore) lets pods be created
/// without the proxy while the injector is down: a warning, not a pass.
fn fail_open(hook: &str, policy: Option<&str>, report: &mut Report) {
    if policy == Some("Fail") {
        report.ok(
            ids::WEBHOOK_FAIL_OPEN,
            format!("webhook {hook} fails closed (failurePolicy Fail)"),
        );
    } else {
        report.warn(
            ids::WEBHOOK_FAIL_OPEN,
            format!("webhook {hook} fails open (failurePolicy {}): pods created while the injector is down run unprotected", policy.unwrap_or("unset")),
            "run `portcullis check` after injector outages (the data-plane checks find such pods), or set failurePolicy: Fail (pod creation in labelled namespaces then waits for the injector; keep it at 2+ replicas with its PodDisruptionBudget)".into(),
        );
    }
}

async fn ca_matches_secret(kube: &Kube, hook: &str, bundle: &str, report: &mut Report) {
    let id = ids::WEBHOOK_CA_SECRET;
    let api = Api::<Secret>::namespaced(kube.client.clone(), SYSTEM_NAMESPACE);
    let what = format!("get secrets -n {SYSTEM_NAMESPACE}");
    match kube.call(&what, api.get_opt(INJECTOR_SECRET)).await {
        Ok(Some(secret)) => {
            let ca = secret
                .data
                .as_ref()
                .and_then(|d| d.get("ca.crt"))
                .map(|b| String::from_utf8_lossy(&b.0).to_string());
            match ca {
                Some(ca) if ca.trim() == bundle.trim() => report.ok(
                    id,
                    format!("webhook {hook}'s CA bundle is the CA of Secret {INJECTOR_SECRET}"),
                ),
                Some(_) => report.fail(
                    id,
                    format!("webhook {hook}'s CA bundle is not the CA (ca.crt) of Secret {INJECTOR_SECRET}: the API server rejects the injector's certificate and pods are created without a proxy"),
                    "re-run manifests/plain-cert/gen-certs.sh --apply (it patches the caBundle), or check cert-manager's CA injector (cert-manager.io/inject-ca-from)".into(),
                ),
                None => report.warn(
                    id,
                    format!("Secret {INJECTOR_SECRET} has no ca.crt to compare the CA bundle with"),
                    "manifests/plain-cert/gen-certs.sh and cert-manager both write ca.crt: re-create the Secret".into(),
                ),
            }
        }
        Ok(None) => report.fail(
            id,
            format!(
                "Secret {INJECTOR_SECRET} does not exist: the injector has no serving certificate"
            ),
            "run manifests/plain-cert/gen-certs.sh --apply, or use manifests/cert-manager/".into(),
        ),
        Err(e) => report.warn(
            id,
            format!("cannot read Secret {INJECTOR_SECRET} to compare the CA bundle ({e})"),
            format!("{} (or compare by hand)", e.hint()),
        ),
    }
}

/// Other meshes' sidecar injectors, by the names they install under.
const MESH_INJECTORS: [(&str, &str); 6] = [
    ("istio", "Istio"),
    ("linkerd", "Linkerd"),
    ("kuma", "Kuma"),
    ("consul", "Consul"),
    ("osm", "Open Service Mesh"),
    ("cilium", "Cilium"),
];

/// Another mesh injecting sidecars into the same namespaces stacks two iptables redirects: which
/// proxy sees a connection first is undefined.
pub async fn meshes(kube: &Kube, labelled: &[&Namespace], report: &mut Report) {
    let category = ids::OTHER_MESHES;
    let api = Api::<MutatingWebhookConfiguration>::all(kube.client.clone());
    let what = "list mutatingwebhookconfigurations";
    let configs = match kube.call(what, api.list(&ListParams::default())).await {
        Ok(l) => l.items,
        Err(e) => {
            return report.warn(
                category,
                format!("cannot list MutatingWebhookConfigurations: {e}"),
                format!("{} (to check for other meshes)", e.hint()),
            )
        }
    };
    let mut found = false;
    for config in &configs {
        let name = config.metadata.name.clone().unwrap_or_default();
        if name == WEBHOOK_CONFIG {
            continue;
        }
        let Some((_, mesh)) = MESH_INJECTORS.iter().find(|(key, _)| name.contains(key)) else {
            continue;
        };
        found = true;
        let mut overlap = Vec::new();
        for hook in config.webhooks.iter().flatten() {
            let selector = hook.namespace_selector.clone().unwrap_or_default();
            let Ok(selector) = Selector::parse(&selector, "namespaceSelector") else {
                continue;
            };
            for ns in labelled {
                let labels = ns.metadata.labels.clone().unwrap_or_default();
                let ns_name = ns.metadata.name.clone().unwrap_or_default();
                if selector.matches(&labels) && !overlap.contains(&ns_name) {
                    overlap.push(ns_name);
                }
            }
        }
        if overlap.is_empty() {
            report.ok(
                category,
                format!("{mesh} injector {name} selects no namespace labelled for Portcullis"),
            );
        } else {
            report.fail(
                category,
                format!("{mesh} injector {name} also injects namespaces {}", overlap.join(", ")),
                format!("two sidecars redirecting the same pod's traffic conflict: remove the {mesh} injection label from these namespaces, or portcullis.dev/inject"),
            );
        }
    }
    if !found {
        report.ok(category, "no other mesh's sidecar injector".into());
    }
}
