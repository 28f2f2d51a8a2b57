//! `portcullis check`: is Portcullis installed and working, and is every pod that should be
//! protected actually protected? Against the cluster of the kubeconfig, as kubectl uses it, in the
//! style of `linkerd check`: one line per check, and every failed line says what to do.
//!
//! `--pre`: before installing (API server reachable, version for native sidecars, RBAC to
//! install, other meshes' injectors). Default: after installing (the same, then the control plane,
//! the webhook and its CA, and every pod of every labelled namespace).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Args, ValueEnum};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::api::{ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use portcullis_policy::protection::{assess, opted_in, Gap};
use portcullis_policy::selector::Selector;
use serde::Serialize;

use crate::render::{paint, ColorChoice};

pub const SYSTEM_NAMESPACE: &str = "portcullis-system";
const CONTROLLER: &str = "portcullis-controller";
const INJECTOR: &str = "portcullis-injector";
const WEBHOOK_CONFIG: &str = "portcullis-injector";
const INJECTOR_SECRET: &str = "portcullis-injector-tls";
/// Native sidecars (init containers with restartPolicy: Always) are on by default from 1.29.
const NATIVE_SIDECARS_MINOR: u32 = 29;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Grouped lines: `√` passed, `‼` warning, `×` failed, with what to do under each.
    Text,
    /// `{"ok":bool,"checks":[{"category","status":"ok|warn|fail","message","hint"}]}`
    Json,
}

#[derive(Args)]
pub struct CheckArgs {
    /// Only the checks to run before installing.
    #[arg(long)]
    pub pre: bool,
    /// Kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then in-cluster).
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context (default: the current context).
    #[arg(long)]
    pub context: Option<String>,
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Clone, Serialize)]
pub struct Line {
    pub category: &'static str,
    pub status: Status,
    pub message: String,
    /// What to do, for warnings and failures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

#[derive(Default, Serialize)]
struct Report {
    ok: bool,
    checks: Vec<Line>,
}

impl Report {
    fn push(
        &mut self,
        category: &'static str,
        status: Status,
        message: String,
        hint: Option<String>,
    ) {
        self.checks.push(Line {
            category,
            status,
            message,
            hint,
        });
    }
    fn ok(&mut self, category: &'static str, message: String) {
        self.push(category, Status::Ok, message, None);
    }
    fn warn(&mut self, category: &'static str, message: String, hint: String) {
        self.push(category, Status::Warn, message, Some(hint));
    }
    fn fail(&mut self, category: &'static str, message: String, hint: String) {
        self.push(category, Status::Fail, message, Some(hint));
    }
}

pub fn run(args: CheckArgs) -> Result<ExitCode> {
    // One crypto provider (ring, as kube's features pick); see /work/shared/CRATES.md.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let report = runtime.block_on(check(&args));
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Text => print!("{}", text(&report, args.color.enabled())),
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn client(args: &CheckArgs) -> Result<Client> {
    let options = KubeConfigOptions {
        context: args.context.clone(),
        ..Default::default()
    };
    let config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kubeconfig, &options).await?
        }
        None if args.context.is_some() => Config::from_kubeconfig(&options).await?,
        None => Config::infer().await?,
    };
    Ok(Client::try_from(config)?)
}

async fn check(args: &CheckArgs) -> Report {
    let mut report = Report::default();
    let category = "kubernetes-api";
    let client = match client(args).await {
        Ok(c) => c,
        Err(e) => {
            report.fail(
                category,
                format!("cannot configure a client: {e:#}"),
                "check the kubeconfig (--kubeconfig, --context, KUBECONFIG) as for kubectl".into(),
            );
            return finish(report);
        }
    };
    if !api_version(&client, &mut report).await {
        return finish(report);
    }
    let namespaces = match Api::<Namespace>::all(client.clone())
        .list(&ListParams::default())
        .await
    {
        Ok(list) => list.items,
        Err(e) => {
            report.fail(
                category,
                format!("cannot list namespaces: {e}"),
                "grant list on namespaces (kubectl auth can-i list namespaces)".into(),
            );
            return finish(report);
        }
    };
    if args.pre {
        rbac(&client, &mut report).await;
        pre_existing(&namespaces, &mut report);
        meshes(&client, &namespaces, &mut report).await;
    } else {
        let version = control_plane(&client, &namespaces, &mut report).await;
        webhook(&client, &mut report).await;
        meshes(&client, &namespaces, &mut report).await;
        data_plane(&client, &namespaces, version.as_deref(), &mut report).await;
    }
    finish(report)
}

fn finish(mut report: Report) -> Report {
    report.ok = !report.checks.iter().any(|l| l.status == Status::Fail);
    report
}

/// Reachable, and recent enough for native sidecars. Returns whether the API answered.
async fn api_version(client: &Client, report: &mut Report) -> bool {
    let category = "kubernetes-api";
    let info = match client.apiserver_version().await {
        Ok(info) => info,
        Err(e) => {
            report.fail(
                category,
                format!("cannot reach the API server: {e}"),
                "check the kubeconfig's server and credentials (kubectl version should work)"
                    .into(),
            );
            return false;
        }
    };
    report.ok(category, "can reach the API server".into());
    let minor: Option<u32> = info.minor.trim_end_matches('+').parse().ok();
    match (info.major.as_str(), minor) {
        ("1", Some(m)) if m >= NATIVE_SIDECARS_MINOR => report.ok(
            category,
            format!("Kubernetes {} supports native sidecars", info.git_version),
        ),
        _ => report.warn(
            category,
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

async fn rbac(client: &Client, report: &mut Report) {
    let category = "pre-install";
    let api = Api::<SelfSubjectAccessReview>::all(client.clone());
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
        match api.create(&PostParams::default(), &review).await {
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
                "SelfSubjectAccessReview must be allowed (it is for every authenticated user by default)".into(),
            ),
        }
    }
}

/// Pre-install: which namespaces are already labelled (their pods will need a restart).
fn pre_existing(namespaces: &[Namespace], report: &mut Report) {
    let category = "pre-install";
    let system = namespaces
        .iter()
        .any(|n| n.metadata.name.as_deref() == Some(SYSTEM_NAMESPACE));
    if system {
        report.warn(
            category,
            format!("namespace {SYSTEM_NAMESPACE} already exists"),
            "Portcullis may be installed already: run `portcullis check` without --pre".into(),
        );
    } else {
        report.ok(
            category,
            format!("namespace {SYSTEM_NAMESPACE} does not exist yet"),
        );
    }
    let labelled: Vec<String> = namespaces
        .iter()
        .filter(|n| opted_in(n))
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    if !labelled.is_empty() {
        report.warn(
            category,
            format!("namespaces already labelled portcullis.dev/inject=enabled: {}", labelled.join(", ")),
            "their running pods get the proxy only when restarted after the install (kubectl rollout restart)".into(),
        );
    }
}

/// Readiness of the controller and the injector; returns the controller's version (image tag).
async fn control_plane(
    client: &Client,
    namespaces: &[Namespace],
    report: &mut Report,
) -> Option<String> {
    let category = "control-plane";
    if !namespaces
        .iter()
        .any(|n| n.metadata.name.as_deref() == Some(SYSTEM_NAMESPACE))
    {
        report.fail(
            category,
            format!("namespace {SYSTEM_NAMESPACE} does not exist"),
            "install Portcullis: kubectl apply -k manifests/ (see the README's quick start)".into(),
        );
        return None;
    }
    report.ok(category, format!("namespace {SYSTEM_NAMESPACE} exists"));
    let api = Api::<Deployment>::namespaced(client.clone(), SYSTEM_NAMESPACE);
    let mut version = None;
    for name in [CONTROLLER, INJECTOR] {
        match api.get_opt(name).await {
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
            Err(e) => report.fail(
                category,
                format!("cannot read deployment {name}: {e}"),
                format!("grant get on deployments in {SYSTEM_NAMESPACE}"),
            ),
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
/// CA of the injector's serving certificate.
async fn webhook(client: &Client, report: &mut Report) {
    let category = "webhook";
    let api = Api::<MutatingWebhookConfiguration>::all(client.clone());
    let config = match api.get_opt(WEBHOOK_CONFIG).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            return report.fail(
                category,
                format!(
                "MutatingWebhookConfiguration {WEBHOOK_CONFIG} does not exist: no pod gets a proxy"
            ),
                "apply the manifests: kubectl apply -k manifests/".into(),
            )
        }
        Err(e) => {
            return report.fail(
                category,
                format!("cannot read MutatingWebhookConfiguration {WEBHOOK_CONFIG}: {e}"),
                "grant get on mutatingwebhookconfigurations".into(),
            )
        }
    };
    report.ok(
        category,
        format!("MutatingWebhookConfiguration {WEBHOOK_CONFIG} exists"),
    );
    for hook in config.webhooks.iter().flatten() {
        let service = hook.client_config.service.as_ref();
        let target = service.map(|s| format!("{}/{}", s.namespace, s.name));
        if target.as_deref() != Some(&format!("{SYSTEM_NAMESPACE}/{INJECTOR}")) {
            report.fail(
                category,
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
            .map(|b| b.0.clone())
            .unwrap_or_default();
        let bundle = String::from_utf8_lossy(&bundle).to_string();
        if !bundle.contains("-----BEGIN CERTIFICATE-----") {
            report.fail(
                category,
                format!("webhook {} has no CA bundle: the API server cannot call the injector, and pods are created without a proxy", hook.name),
                "run manifests/plain-cert/gen-certs.sh --apply, or install cert-manager's variant (manifests/cert-manager/)".into(),
            );
            continue;
        }
        report.ok(category, format!("webhook {} has a CA bundle", hook.name));
        ca_matches_secret(client, &hook.name, &bundle, report).await;
        if hook.failure_policy.as_deref() != Some("Fail") {
            report.ok(category, format!("webhook {} fails open (failurePolicy Ignore): pods created while the injector is down run unprotected; this check finds them", hook.name));
        }
    }
}

async fn ca_matches_secret(client: &Client, hook: &str, bundle: &str, report: &mut Report) {
    let category = "webhook";
    let api = Api::<Secret>::namespaced(client.clone(), SYSTEM_NAMESPACE);
    match api.get_opt(INJECTOR_SECRET).await {
        Ok(Some(secret)) => {
            let ca = secret
                .data
                .as_ref()
                .and_then(|d| d.get("ca.crt"))
                .map(|b| String::from_utf8_lossy(&b.0).to_string());
            match ca {
                Some(ca) if ca.trim() == bundle.trim() => report.ok(
                    category,
                    format!("webhook {hook}'s CA bundle is the CA of Secret {INJECTOR_SECRET}"),
                ),
                Some(_) => report.fail(
                    category,
                    format!("webhook {hook}'s CA bundle is not the CA (ca.crt) of Secret {INJECTOR_SECRET}: the API server rejects the injector's certificate and pods are created without a proxy"),
                    "re-run manifests/plain-cert/gen-certs.sh --apply (it patches the caBundle), or check cert-manager's CA injector (cert-manager.io/inject-ca-from)".into(),
                ),
                None => report.warn(
                    category,
                    format!("Secret {INJECTOR_SECRET} has no ca.crt to compare the CA bundle with"),
                    "manifests/plain-cert/gen-certs.sh and cert-manager both write ca.crt: re-create the Secret".into(),
                ),
            }
        }
        Ok(None) => report.fail(
            category,
            format!(
                "Secret {INJECTOR_SECRET} does not exist: the injector has no serving certificate"
            ),
            "run manifests/plain-cert/gen-certs.sh --apply, or use manifests/cert-manager/".into(),
        ),
        Err(e) => report.warn(
            category,
            format!("cannot read Secret {INJECTOR_SECRET} to compare the CA bundle ({e})"),
            format!("grant get on secrets in {SYSTEM_NAMESPACE} to check it, or compare by hand"),
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
async fn meshes(client: &Client, namespaces: &[Namespace], report: &mut Report) {
    let category = "other-meshes";
    let configs = match Api::<MutatingWebhookConfiguration>::all(client.clone())
        .list(&ListParams::default())
        .await
    {
        Ok(l) => l.items,
        Err(e) => {
            return report.warn(
                category,
                format!("cannot list MutatingWebhookConfigurations: {e}"),
                "grant list on mutatingwebhookconfigurations to check for other meshes".into(),
            )
        }
    };
    let labelled: Vec<&Namespace> = namespaces.iter().filter(|n| opted_in(n)).collect();
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
            for ns in &labelled {
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

/// Every pod of every labelled namespace: injected, current, and what is exempt.
async fn data_plane(
    client: &Client,
    namespaces: &[Namespace],
    version: Option<&str>,
    report: &mut Report,
) {
    let category = "data-plane";
    let labelled: Vec<String> = namespaces
        .iter()
        .filter(|n| opted_in(n))
        .filter_map(|n| n.metadata.name.clone())
        .filter(|n| n != SYSTEM_NAMESPACE)
        .collect();
    if labelled.is_empty() {
        return report.warn(
            category,
            "no namespace is labelled portcullis.dev/inject=enabled: nothing is protected".into(),
            "kubectl label namespace NAME portcullis.dev/inject=enabled, then restart its workloads".into(),
        );
    }
    for ns in labelled {
        match Api::<Pod>::namespaced(client.clone(), &ns)
            .list(&ListParams::default())
            .await
        {
            Ok(list) => namespace_pods(&ns, &list.items, version, report),
            Err(e) => report.fail(
                category,
                format!("cannot list pods of namespace {ns}: {e}"),
                format!("grant list on pods in {ns}"),
            ),
        }
    }
}

fn namespace_pods(ns: &str, pods: &[Pod], version: Option<&str>, report: &mut Report) {
    let category = "data-plane";
    let mut protected = 0;
    let mut live = 0;
    // Pods without a proxy, by the workload to restart.
    let mut not_injected: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut lines = Vec::new();
    for pod in pods {
        let finished = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Succeeded" || p == "Failed");
        if finished {
            continue;
        }
        live += 1;
        let name = pod.metadata.name.clone().unwrap_or_default();
        let gaps = assess(pod, version);
        if gaps.is_empty() {
            protected += 1;
        }
        for gap in gaps {
            match gap {
                Gap::NotInjected => not_injected
                    .entry(workload(pod))
                    .or_default()
                    .push(name.clone()),
                Gap::VersionSkew { ref proxy } => lines.push((
                    Status::Warn,
                    format!(
                        "{ns}/{name} runs proxy {proxy}, the controller is {}",
                        version.unwrap_or("?")
                    ),
                    format!(
                        "restart it to get the current proxy: {}",
                        restart_hint(ns, pod)
                    ),
                )),
                other => lines.push((
                    Status::Warn,
                    format!("{ns}/{name} is exempt: {}", describe(&other)),
                    other.advice(),
                )),
            }
        }
    }
    let summary = format!("namespace {ns}: {protected} of {live} running pods fully protected");
    if not_injected.is_empty() && lines.is_empty() {
        report.ok(category, summary);
    } else {
        report.warn(category, summary, "see the lines below".into());
    }
    for (workload, pods) in not_injected {
        let hint = match workload.split_once(' ') {
            Some((kind, name)) => format!("restart to inject: kubectl rollout restart {kind}/{name} -n {ns}"),
            None => format!("restart to inject: delete and re-create the pod(s) (kubectl delete pod -n {ns} {})", pods.join(" ")),
        };
        report.fail(
            category,
            format!("{ns}: {} without a proxy ({}): nothing is enforced for them", pods.join(", "), workload),
            format!("{hint} (created before the namespace was labelled, or while the injector was down)"),
        );
    }
    for (status, message, hint) in lines {
        report.push(category, status, message, Some(hint));
    }
}

fn describe(gap: &Gap) -> String {
    match gap {
        Gap::AuditMode => "audit mode (denials are logged, not enforced)".into(),
        Gap::SkippedTraffic { detail } => format!("{detail} (not redirected to the proxy)"),
        Gap::UdpNotEnforced => "udp-not-enforced (UDP and SCTP pass unchecked)".into(),
        Gap::EgressNotEnforceable { detail } => format!("egress-not-enforceable={detail}"),
        Gap::HostNetwork => "hostNetwork (a sidecar cannot enforce anything)".into(),
        Gap::UnknownExemption { detail } => format!("unknown exemption {detail}"),
        Gap::NotInjected => "not injected".into(),
        Gap::VersionSkew { proxy } => format!("proxy {proxy}"),
    }
}

/// `deployment NAME`, `statefulset NAME`, `daemonset NAME`, or `pod` for bare pods.
fn workload(pod: &Pod) -> String {
    let owner = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    match owner {
        // ReplicaSets made by a Deployment are named DEPLOYMENT-HASH.
        Some(o) if o.kind == "ReplicaSet" => match o.name.rsplit_once('-') {
            Some((deployment, _)) => format!("deployment {deployment}"),
            None => format!("replicaset {}", o.name),
        },
        Some(o) if o.kind == "StatefulSet" || o.kind == "DaemonSet" => {
            format!("{} {}", o.kind.to_ascii_lowercase(), o.name)
        }
        Some(o) => format!("{} {}", o.kind.to_ascii_lowercase(), o.name),
        None => "pod".into(),
    }
}

fn restart_hint(ns: &str, pod: &Pod) -> String {
    match workload(pod).split_once(' ') {
        Some((kind, name)) if matches!(kind, "deployment" | "statefulset" | "daemonset") => {
            format!("kubectl rollout restart {kind}/{name} -n {ns}")
        }
        _ => format!(
            "kubectl delete pod -n {ns} {} and re-create it",
            pod.metadata.name.as_deref().unwrap_or("")
        ),
    }
}

fn text(report: &Report, color: bool) -> String {
    let mut out = String::new();
    let mut category = "";
    for line in &report.checks {
        if line.category != category {
            if !category.is_empty() {
                out.push('\n');
            }
            category = line.category;
            out.push_str(&format!("{category}\n{}\n", "-".repeat(category.len())));
        }
        let mark = match line.status {
            Status::Ok => paint("√", "\x1b[32m", color),
            Status::Warn => paint("‼", "\x1b[33;1m", color),
            Status::Fail => paint("×", "\x1b[31;1m", color),
        };
        out.push_str(&format!("{mark} {}\n", line.message));
        if let Some(hint) = &line.hint {
            out.push_str(&format!("    {hint}\n"));
        }
    }
    let verdict = if report.ok { "√" } else { "×" };
    out.push_str(&format!("\nStatus check results are {verdict}\n"));
    out
}
