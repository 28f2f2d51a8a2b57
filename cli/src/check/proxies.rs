//! `--proxy`: every injected pod's proxy, asked through the API server's pod proxy subresource
//! (`GET /api/v1/namespaces/NS/pods/NAME:4191/proxy/...`, RBAC `get pods/proxy`):
//! `/ready` (200 once a table is loaded; `ready: generation N, current` or `..., stale ...`).
//! Proxies older than this CLI say only `ready`: then `/metrics` (`portcullis_policy_generation`,
//! `portcullis_policy_stale`), which the pod's ingress policy may close to the API server;
//! `/policy` answers loopback only, so it is not used. The
//! controllers' current generation comes from their `/ready` (`ready: generation N, ...`) on the
//! admin port, the same way. Replicas count generations apart, so a proxy is current when its
//! generation is one a ready controller serves now (or newer than all: it moved on since).

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::Api;
use portcullis_contract::ports;
use portcullis_policy::protection::{assess, Gap};

use super::api::Kube;
use super::cluster::CONTROLLER;
use super::pods::{workload, NamespacePods};
use super::{ids, Report, SYSTEM_NAMESPACE};

/// What one proxy says about itself.
#[derive(Debug, PartialEq, Eq)]
struct ProxyState {
    generation: Option<u64>,
    stale: bool,
}

pub async fn check(kube: &Kube, pods: &NamespacePods, report: &mut Report) {
    let generations = controller_generations(kube, report).await;
    for (ns, pods) in pods {
        let injected: Vec<&Pod> = pods.iter().filter(|p| is_injected(p)).collect();
        let (mut ready, mut current) = (0, 0);
        for pod in &injected {
            let name = pod.metadata.name.as_deref().unwrap_or_default();
            match proxy(kube, ns, name).await {
                Ok(state) => {
                    ready += 1;
                    current += usize::from(judge(ns, name, &state, &generations, report));
                }
                Err(e) => report.fail(
                    ids::PROXY_READY,
                    format!("{ns}/{name}: proxy not ready: {e}"),
                    format!(
                        "kubectl -n {ns} logs {name} -c portcullis-proxy; {}",
                        e.hint()
                    ),
                ),
            }
        }
        let total = injected.len();
        report.ok(
            ids::PROXY_READY,
            format!("namespace {ns}: {ready} of {total} proxies ready"),
        );
        if !generations.is_empty() {
            report.ok(
                ids::PROXY_CURRENT,
                format!("namespace {ns}: {current} of {total} proxies on the controller's current table"),
            );
        }
    }
}

fn is_injected(pod: &Pod) -> bool {
    !assess(pod, None)
        .iter()
        .any(|g| matches!(g, Gap::NotInjected))
}

/// `/ready` (an error unless 200) with the generation and staleness, or from `/metrics` when
/// `/ready` does not say them (an older proxy).
async fn proxy(kube: &Kube, ns: &str, name: &str) -> Result<ProxyState, super::api::ApiError> {
    let base = format!("/api/v1/namespaces/{ns}/pods/{name}:{}/proxy", ports::ADMIN);
    let what = format!("get pods/proxy -n {ns}");
    let ready = kube.get_text(&what, &format!("{base}/ready")).await?;
    if let Some(generation) = ready_generation(&ready) {
        return Ok(ProxyState {
            generation: Some(generation),
            stale: ready.contains(", stale"),
        });
    }
    let metrics = kube.get_text(&what, &format!("{base}/metrics")).await?;
    Ok(ProxyState {
        generation: metric(&metrics, "portcullis_policy_generation").map(|v| v as u64),
        stale: metric(&metrics, "portcullis_policy_stale").is_some_and(|v| v > 0.0),
    })
}

/// Whether the proxy is on a current table; a line when it is not.
fn judge(ns: &str, name: &str, state: &ProxyState, current: &[u64], report: &mut Report) -> bool {
    let id = ids::PROXY_CURRENT;
    let restart = format!("kubectl -n {ns} logs {name} -c portcullis-proxy says why; kubectl -n {SYSTEM_NAMESPACE} logs deployment/{CONTROLLER}");
    match state.generation {
        _ if state.stale => report.fail(
            id,
            format!("{ns}/{name}: proxy is not connected to a controller: it enforces its last table (portcullis_policy_stale 1), which misses every change since"),
            restart,
        ),
        None => report.warn(
            id,
            format!("{ns}/{name}: proxy exports no portcullis_policy_generation (metrics disabled?)"),
            "enable the proxy's metrics to check its table generation".into(),
        ),
        Some(g) if current.is_empty() || current.contains(&g) || current.iter().all(|c| g > *c) => {
            return !state.stale;
        }
        Some(g) => report.fail(
            id,
            format!("{ns}/{name}: proxy is on table generation {g}, the controllers serve {}", list(current)),
            format!("it should catch up within seconds (retry with --wait 1m); if not: {restart}"),
        ),
    }
    false
}

fn list(generations: &[u64]) -> String {
    let v: Vec<String> = generations.iter().map(u64::to_string).collect();
    v.join(" and ")
}

/// The controller's replicas (pods of its Deployment), or a warning under `id` and none.
pub(super) async fn controller_pods(kube: &Kube, id: ids::Id, report: &mut Report) -> Vec<Pod> {
    let api = Api::<Pod>::namespaced(kube.client.clone(), SYSTEM_NAMESPACE);
    let what = format!("list pods -n {SYSTEM_NAMESPACE}");
    match kube.call(&what, api.list(&ListParams::default())).await {
        Ok(list) => (list.items.into_iter())
            .filter(|p| workload(p) == format!("deployment {CONTROLLER}"))
            .collect(),
        Err(e) => {
            report.warn(
                id,
                format!("cannot list the controller's pods: {e}"),
                e.hint(),
            );
            Vec::new()
        }
    }
}

/// `path` (e.g. `/ready`) on a controller replica's admin port, through the pod proxy.
pub(super) fn controller_admin_path(name: &str, path: &str) -> String {
    format!(
        "/api/v1/namespaces/{SYSTEM_NAMESPACE}/pods/{name}:{}/proxy{path}",
        ports::CONTROLLER_ADMIN
    )
}

/// The generation each ready controller replica serves now.
async fn controller_generations(kube: &Kube, report: &mut Report) -> Vec<u64> {
    let id = ids::CONTROLLER_STATUS;
    let pods = controller_pods(kube, id, report).await;
    let mut generations = Vec::new();
    let what = format!("get pods/proxy -n {SYSTEM_NAMESPACE}");
    for pod in &pods {
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let path = controller_admin_path(name, "/ready");
        match kube.get_text(&what, &path).await {
            Ok(body) => match ready_generation(&body) {
                Some(g) => {
                    report.ok(id, format!("{name} serves table generation {g}"));
                    generations.push(g);
                }
                None => report.warn(
                    id,
                    format!(
                        "{name}'s /ready does not say its generation: {:?}",
                        body.trim()
                    ),
                    "a controller older than this CLI: upgrade it".into(),
                ),
            },
            Err(e) => report.warn(
                id,
                format!("{name} is not ready: {e}"),
                format!("kubectl -n {SYSTEM_NAMESPACE} logs {name}; {}", e.hint()),
            ),
        }
    }
    if generations.is_empty() {
        report.warn(
            id,
            "no ready controller said its table generation: proxies are checked for readiness only".into(),
            format!("kubectl -n {SYSTEM_NAMESPACE} get pods; RBAC: get pods/proxy in {SYSTEM_NAMESPACE}"),
        );
    }
    generations
}

/// `ready: generation 15, 4 namespaces, ...` → 15.
fn ready_generation(body: &str) -> Option<u64> {
    let rest = body.trim().strip_prefix("ready: generation ")?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// The value of an unlabelled (or first labelled) sample of `name` in Prometheus text.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let rest = l.strip_prefix(name)?;
        let rest = match rest.strip_prefix('{') {
            Some(labelled) => labelled.split_once('}')?.1,
            None => rest,
        };
        rest.split_whitespace().next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_controller_says_its_generation_and_the_proxy_its_metrics() {
        assert_eq!(
            ready_generation("ready: generation 15, 4 namespaces, 9 pods, 2 policies, 9 tables\n"),
            Some(15)
        );
        assert_eq!(ready_generation("not ready: ..."), None);
        let text = "# HELP portcullis_policy_generation x\n# TYPE portcullis_policy_generation gauge\nportcullis_policy_generation 12\nportcullis_policy_generation_other 3\nportcullis_policy_stale{a=\"b\"} 1\n";
        assert_eq!(metric(text, "portcullis_policy_generation"), Some(12.0));
        assert_eq!(metric(text, "portcullis_policy_stale"), Some(1.0));
        assert_eq!(metric(text, "portcullis_missing"), None);
    }

    #[test]
    fn a_proxy_is_current_on_a_served_or_newer_generation_and_not_when_stale() {
        let mut report = Report::default();
        let state = |g, stale| ProxyState {
            generation: Some(g),
            stale,
        };
        assert!(judge("a", "p", &state(15, false), &[15, 9], &mut report));
        assert!(judge("a", "p", &state(16, false), &[15, 9], &mut report));
        assert!(report.checks.is_empty());
        assert!(!judge("a", "p", &state(12, false), &[15, 9], &mut report));
        assert!(!judge("a", "p", &state(15, true), &[15], &mut report));
        assert_eq!(report.checks.len(), 2);
        assert!(report.checks[0]
            .message
            .contains("generation 12, the controllers serve 15 and 9"));
    }
}
