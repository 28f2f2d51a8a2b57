//! The data plane: every pod of the checked namespaces, injected, current, and what is exempt.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::ListParams;
use kube::Api;
use portcullis_policy::protection::{assess, Gap};

use super::api::Kube;
use super::{ids, Report, Status};

/// The live (not finished) pods of each checked namespace, for `--proxy`.
pub type NamespacePods = Vec<(String, Vec<Pod>)>;

/// Every pod of every checked namespace: injected, current, and what is exempt. Returns the
/// live pods, by namespace.
pub async fn data_plane(
    kube: &Kube,
    checked: &[&Namespace],
    version: Option<&str>,
    report: &mut Report,
) -> NamespacePods {
    let mut found = Vec::new();
    if checked.is_empty() {
        report.warn(
            ids::PODS_PROTECTED,
            "no namespace is labelled portcullis.dev/inject=enabled: nothing is protected".into(),
            "kubectl label namespace NAME portcullis.dev/inject=enabled, then restart its workloads".into(),
        );
        return found;
    }
    for ns in checked.iter().filter_map(|n| n.metadata.name.clone()) {
        let api = Api::<Pod>::namespaced(kube.client.clone(), &ns);
        let what = format!("list pods -n {ns}");
        match kube.call(&what, api.list(&ListParams::default())).await {
            Ok(list) => {
                let live: Vec<Pod> = list.items.into_iter().filter(|p| !finished(p)).collect();
                namespace_pods(&ns, &live, version, report);
                found.push((ns, live));
            }
            Err(e) => report.api_fail(
                ids::PODS_PROTECTED,
                &format!("cannot list pods of namespace {ns}"),
                &e,
            ),
        }
    }
    found
}

fn finished(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Succeeded" || p == "Failed")
}

/// One namespace's live pods: a summary line, then one line per workload without a proxy and
/// one per skew or exemption.
fn namespace_pods(ns: &str, pods: &[Pod], version: Option<&str>, report: &mut Report) {
    let mut protected = 0;
    // Pods without a proxy, by the workload to restart.
    let mut not_injected: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut lines = Vec::new();
    for pod in pods {
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
                    ids::PROXY_VERSION,
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
                    ids::POD_EXEMPTIONS,
                    format!("{ns}/{name} is exempt: {}", describe(&other)),
                    other.advice(),
                )),
            }
        }
    }
    let summary = format!(
        "namespace {ns}: {protected} of {} running pods fully protected",
        pods.len()
    );
    if not_injected.is_empty() && lines.is_empty() {
        report.ok(ids::PODS_PROTECTED, summary);
    } else {
        report.warn(ids::PODS_PROTECTED, summary, "see the lines below".into());
    }
    for (workload, pods) in not_injected {
        let hint = match workload.split_once(' ') {
            Some((kind, name)) => format!("restart to inject: kubectl rollout restart {kind}/{name} -n {ns}"),
            None => format!("restart to inject: delete and re-create the pod(s) (kubectl delete pod -n {ns} {})", pods.join(" ")),
        };
        report.fail(
            ids::PODS_INJECTED,
            format!("{ns}: {} without a proxy ({}): nothing is enforced for them", pods.join(", "), workload),
            format!("{hint} (created before the namespace was labelled, or while the injector was down)"),
        );
    }
    for (id, message, hint) in lines {
        report.push(id, Status::Warn, message, Some(hint));
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
pub fn workload(pod: &Pod) -> String {
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
