//! ClusterNetworkPolicy (`policy.networking.k8s.io/v1alpha2`): is the CRD installed, which
//! versions does it serve (CustomResourceDefinition `clusternetworkpolicies.policy.networking.k8s.io`,
//! RBAC `get customresourcedefinitions`), are `v1alpha1` AdminNetworkPolicies around (not read);
//! with `--proxy`, does every controller replica say it watches them (its admin port's
//! `/v1/cluster-network-policies`, through the API server's pod proxy) and which are invalid.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::ListParams;
use kube::Api;
use portcullis_contract::ports;
use serde_json::Value;

use super::api::Kube;
use super::cluster::CONTROLLER;
use super::pods::workload;
use super::{ids, Report, SYSTEM_NAMESPACE};

pub const CRD: &str = "clusternetworkpolicies.policy.networking.k8s.io";
pub const VERSION: &str = "v1alpha2";
const ANP_CRD: &str = "adminnetworkpolicies.policy.networking.k8s.io";
/// Where users get the CRD: the upstream release (experimental channel: `nodes` and
/// `domainNames` peers; the standard channel has neither).
pub const CRD_URL: &str = "https://raw.githubusercontent.com/kubernetes-sigs/network-policy-api/v0.2.1/config/crd/experimental/policy.networking.k8s.io_clusternetworkpolicies.yaml";

/// The CRD and the served versions; a note on v1alpha1 AdminNetworkPolicies.
pub async fn crd(kube: &Kube, report: &mut Report) {
    let id = ids::CNP_CRD;
    let api = Api::<CustomResourceDefinition>::all(kube.client.clone());
    let what = "get customresourcedefinitions";
    match kube.call(what, api.get_opt(CRD)).await {
        Ok(Some(crd)) => {
            let served = served_versions(&crd);
            judge_versions(&served, report);
        }
        // Optional: not a warning. The line says how to get it.
        Ok(None) => report.ok(
            id,
            format!("the ClusterNetworkPolicy CRD ({CRD}) is not installed: Portcullis enforces NetworkPolicy v1 alone; for admin tiers install it: kubectl apply --server-side -f {CRD_URL}"),
        ),
        Err(e) => report.warn(
            id,
            format!("cannot tell whether the ClusterNetworkPolicy CRD is installed: {e}"),
            e.hint(),
        ),
    }
    if let Ok(Some(_)) = kube.call(what, api.get_opt(ANP_CRD)).await {
        report.warn(
            id,
            "the v1alpha1 AdminNetworkPolicy CRD is installed: Portcullis does NOT read nor enforce AdminNetworkPolicy or BaselineAdminNetworkPolicy objects".into(),
            "rewrite them as ClusterNetworkPolicies (v1alpha2; tier Admin or Baseline, Allow → Accept, ports → protocols): docs/cluster-network-policy.md".into(),
        );
    }
}

fn served_versions(crd: &CustomResourceDefinition) -> Vec<String> {
    crd.spec
        .versions
        .iter()
        .filter(|v| v.served)
        .map(|v| v.name.clone())
        .collect()
}

fn judge_versions(served: &[String], report: &mut Report) {
    let id = ids::CNP_CRD;
    let list = served.join(", ");
    if served.iter().any(|v| v == VERSION) {
        report.ok(id, format!("the ClusterNetworkPolicy CRD is installed, serving {list}: Portcullis reads {VERSION}"));
    } else {
        report.warn(
            id,
            format!("the ClusterNetworkPolicy CRD serves {list}, not {VERSION}: Portcullis reads none of it and enforces NetworkPolicy v1 alone"),
            format!("install a release that serves {VERSION}: kubectl apply --server-side -f {CRD_URL}"),
        );
    }
}

/// What each ready controller replica says about ClusterNetworkPolicies.
pub async fn controllers(kube: &Kube, report: &mut Report) {
    let id = ids::CNP_WATCHED;
    let api = Api::<Pod>::namespaced(kube.client.clone(), SYSTEM_NAMESPACE);
    let what = format!("list pods -n {SYSTEM_NAMESPACE}");
    let pods = match kube.call(&what, api.list(&ListParams::default())).await {
        Ok(list) => list.items,
        Err(e) => {
            return report.warn(
                id,
                format!("cannot list the controller's pods: {e}"),
                e.hint(),
            )
        }
    };
    let what = format!("get pods/proxy -n {SYSTEM_NAMESPACE}");
    for pod in pods
        .iter()
        .filter(|p| workload(p) == format!("deployment {CONTROLLER}"))
    {
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let path = format!(
            "/api/v1/namespaces/{SYSTEM_NAMESPACE}/pods/{name}:{}/proxy/v1/cluster-network-policies",
            ports::CONTROLLER_ADMIN
        );
        match kube.get_text(&what, &path).await {
            Ok(body) => match serde_json::from_str::<Value>(&body) {
                Ok(v) => judge_controller(name, &v, report),
                Err(_) => report.warn(
                    id,
                    format!("{name} does not report on ClusterNetworkPolicies"),
                    "a controller older than this CLI: upgrade it".into(),
                ),
            },
            Err(e) => report.warn(
                id,
                format!("cannot ask {name} whether it watches ClusterNetworkPolicies: {e}"),
                format!(
                    "a controller older than this CLI has no /v1/cluster-network-policies; {}",
                    e.hint()
                ),
            ),
        }
    }
}

/// One replica's `/v1/cluster-network-policies`.
fn judge_controller(name: &str, v: &Value, report: &mut Report) {
    let id = ids::CNP_WATCHED;
    let state = v["crd"]["state"].as_str().unwrap_or("unknown");
    let message = v["crd"]["message"].as_str().unwrap_or_default();
    let in_force = v["inForce"].as_u64().unwrap_or(0);
    match state {
        "watching" => report.ok(id, format!("{name} watches ClusterNetworkPolicies: {in_force} in force")),
        "not-installed" => report.warn(
            id,
            format!("{name} does not watch ClusterNetworkPolicies: {message}"),
            format!("install the CRD (kubectl apply --server-side -f {CRD_URL}); the controller starts watching within 30s"),
        ),
        _ => report.warn(
            id,
            format!("{name} cannot tell yet whether the ClusterNetworkPolicy CRD is installed: {message}"),
            format!("kubectl -n {SYSTEM_NAMESPACE} logs {name} (event cnp_discovery_failed) says why"),
        ),
    }
    for invalid in v["invalid"].as_array().into_iter().flatten() {
        let cnp = invalid["name"].as_str().unwrap_or_default();
        let errors: Vec<&str> = (invalid["errors"].as_array().into_iter().flatten())
            .filter_map(Value::as_str)
            .collect();
        let kept = if invalid["lastValidInForce"].as_bool() == Some(true) {
            "its last valid version stays in force"
        } else {
            "it is not enforced"
        };
        report.fail(
            id,
            format!(
                "ClusterNetworkPolicy {cnp} is invalid ({kept}): {}",
                errors.join("; ")
            ),
            format!(
                "fix it: kubectl get clusternetworkpolicy {cnp} -o yaml | portcullis lint -f -"
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn versions_and_controller_reports_read_as_the_user_needs_them() {
        let mut report = Report::default();
        judge_versions(&["v1alpha2".into(), "v1beta1".into()], &mut report);
        judge_versions(&["v1beta1".into()], &mut report);
        judge_controller(
            "c-1",
            &json!({"crd": {"state": "watching", "message": "watching"}, "inForce": 3,
                    "invalid": [{"name": "guard", "errors": ["spec.priority: Invalid value 5000"],
                                 "lastValidInForce": true}]}),
            &mut report,
        );
        let lines: Vec<(Status, &str)> = report
            .checks
            .iter()
            .map(|l| (l.status, l.message.as_str()))
            .collect();
        use super::super::Status;
        assert_eq!(
            lines,
            [
                (Status::Ok, "the ClusterNetworkPolicy CRD is installed, serving v1alpha2, v1beta1: Portcullis reads v1alpha2"),
                (Status::Warn, "the ClusterNetworkPolicy CRD serves v1beta1, not v1alpha2: Portcullis reads none of it and enforces NetworkPolicy v1 alone"),
                (Status::Ok, "c-1 watches ClusterNetworkPolicies: 3 in force"),
                (Status::Fail, "ClusterNetworkPolicy guard is invalid (its last valid version stays in force): spec.priority: Invalid value 5000"),
            ]
        );
    }
}
