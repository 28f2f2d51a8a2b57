//! The node guard (`node-guard/`, `manifests/node-guard/`): which nodes run it, and which pods
//! could forge sources where it does not run (`NET_RAW`).
//!
//! On a bridge-based CNI (Flannel, the bridge plugin) nothing checks what a pod sends: a pod
//! with `NET_RAW` forges other pods' and the node's addresses, and Portcullis judges flows by
//! their source. The CNI is not visible in the API (its configuration is a file on each
//! node), so both checks are **warnings, whatever the CNI**, except that a CNI known to check
//! sources itself (Calico, Cilium: found by their DaemonSets) passes with a note. They are
//! warnings and not failures: the guard is optional, and without it Portcullis still enforces
//! every pod's policy, against sources it has to trust.
//!
//! Read cluster-wide (nodes, every pod, DaemonSets): not with `--namespace`, which reads one
//! namespace only.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Container, Node, Pod};
use kube::api::ListParams;
use kube::Api;

use super::api::Kube;
use super::{ids, Report};

/// The guard's namespace and its pods' `app.kubernetes.io/name` (`manifests/node-guard/`).
pub const GUARD_NAMESPACE: &str = "portcullis-node-guard";
pub const GUARD_NAME: &str = "portcullis-node-guard";
const NAME_LABEL: &str = "app.kubernetes.io/name";

/// CNIs that check every pod's source themselves, by the name of their node DaemonSet.
const SOURCE_CHECKING: [(&str, &str); 2] = [("calico-node", "Calico"), ("cilium", "Cilium")];
/// Bridge-based CNIs, by the name their DaemonSet contains: the guard is for them.
const BRIDGED: [(&str, &str); 1] = [("flannel", "Flannel")];
/// Pods named in one line at most (the rest counted).
const LISTED: usize = 10;

/// Both checks: nodes without a running guard pod, and pods with `NET_RAW` on them.
pub async fn check(kube: &Kube, report: &mut Report) {
    let cni = cni(kube).await;
    if let Cni::ChecksSources(name) = cni {
        return report.ok(
            ids::NODE_GUARD,
            format!(
                "the CNI ({name}) checks every pod's source address: the node guard is not needed"
            ),
        );
    }
    let nodes = Api::<Node>::all(kube.client.clone());
    let nodes = match kube
        .call("list nodes", nodes.list(&ListParams::default()))
        .await
    {
        Ok(list) => list.items,
        Err(e) => {
            return report.warn(
                ids::NODE_GUARD,
                format!("cannot list nodes to check the node guard: {e}"),
                e.hint(),
            )
        }
    };
    let pods = Api::<Pod>::all(kube.client.clone());
    let pods = match kube
        .call(
            "list pods --all-namespaces",
            pods.list(&ListParams::default()),
        )
        .await
    {
        Ok(list) => list.items,
        Err(e) => {
            return report.warn(
                ids::NODE_GUARD,
                format!("cannot list every pod to check the node guard: {e}"),
                e.hint(),
            )
        }
    };
    let node_names: Vec<String> = nodes
        .iter()
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    let unguarded = unguarded(&node_names, &pods);
    nodes_line(&cni, node_names.len(), &unguarded, report);
    net_raw_line(&unguarded, &pods, report);
}

/// What the CNI is, as far as its DaemonSet says.
#[derive(Debug, PartialEq, Eq)]
enum Cni {
    ChecksSources(&'static str),
    Bridged(&'static str),
    Unknown,
}

async fn cni(kube: &Kube) -> Cni {
    let api = Api::<DaemonSet>::all(kube.client.clone());
    // Not being allowed to list DaemonSets only costs the CNI's name in the messages.
    let Ok(list) = kube
        .call(
            "list daemonsets --all-namespaces",
            api.list(&ListParams::default()),
        )
        .await
    else {
        return Cni::Unknown;
    };
    let names: Vec<String> = list
        .items
        .into_iter()
        .filter_map(|d| d.metadata.name)
        .collect();
    cni_of(&names)
}

fn cni_of(daemonsets: &[String]) -> Cni {
    for (key, name) in SOURCE_CHECKING {
        if daemonsets.iter().any(|d| d == key) {
            return Cni::ChecksSources(name);
        }
    }
    for (key, name) in BRIDGED {
        if daemonsets.iter().any(|d| d.contains(key)) {
            return Cni::Bridged(name);
        }
    }
    Cni::Unknown
}

/// The nodes on which no guard pod runs.
fn unguarded(nodes: &[String], pods: &[Pod]) -> Vec<String> {
    let guarded: BTreeSet<&str> = pods
        .iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(GUARD_NAMESPACE))
        .filter(|p| {
            let labels = p.metadata.labels.as_ref();
            labels.and_then(|l| l.get(NAME_LABEL)).map(String::as_str) == Some(GUARD_NAME)
        })
        .filter(|p| phase(p) == Some("Running"))
        .filter_map(|p| p.spec.as_ref()?.node_name.as_deref())
        .collect();
    nodes
        .iter()
        .filter(|n| !guarded.contains(n.as_str()))
        .cloned()
        .collect()
}

fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref()?.phase.as_deref()
}

fn nodes_line(cni: &Cni, total: usize, unguarded: &[String], report: &mut Report) {
    if unguarded.is_empty() {
        return report.ok(
            ids::NODE_GUARD,
            format!("every node ({total}) runs the node guard"),
        );
    }
    let why = match cni {
        Cni::Bridged(name) => {
            format!("{name} puts pods on a bridge without checking their sources")
        }
        _ => {
            "on a bridge-based CNI (Flannel, the bridge plugin) nothing checks pods' sources".into()
        }
    };
    report.warn(
        ids::NODE_GUARD,
        format!(
            "{} of {total} nodes without the node guard ({}): {why}; a pod with NET_RAW there can forge other pods' and the node's addresses",
            unguarded.len(),
            unguarded.join(", ")
        ),
        format!("with a bridge-based CNI, install it on every node: kubectl apply -k manifests/node-guard (its pods run in namespace {GUARD_NAMESPACE}); not with Calico or Cilium, which check sources themselves"),
    );
}

fn net_raw_line(unguarded: &[String], pods: &[Pod], report: &mut Report) {
    let mut found = Vec::new();
    for pod in pods {
        let Some(spec) = &pod.spec else { continue };
        let on_unguarded = spec
            .node_name
            .as_ref()
            .is_some_and(|n| unguarded.contains(n));
        let finished = matches!(phase(pod), Some("Succeeded" | "Failed"));
        if !on_unguarded || finished || spec.host_network == Some(true) {
            continue;
        }
        let containers: Vec<&str> = running_containers(pod)
            .filter(|c| has_net_raw(c))
            .map(|c| c.name.as_str())
            .collect();
        if !containers.is_empty() {
            let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
            let name = pod.metadata.name.as_deref().unwrap_or_default();
            let node = spec.node_name.as_deref().unwrap_or_default();
            found.push(format!(
                "{ns}/{name} ({}; node {node})",
                containers.join(", ")
            ));
        }
    }
    if unguarded.is_empty() {
        return;
    }
    if found.is_empty() {
        return report.ok(
            ids::NODE_NET_RAW,
            "no pod on a node without the node guard keeps NET_RAW".into(),
        );
    }
    let more = found.len().saturating_sub(LISTED);
    let mut named = found[..found.len().min(LISTED)].join(", ");
    if more > 0 {
        named.push_str(&format!(" and {more} more"));
    }
    report.warn(
        ids::NODE_NET_RAW,
        format!(
            "{} keep{} NET_RAW on nodes without the node guard, and can forge sources: {named}",
            if found.len() == 1 { "1 pod".to_string() } else { format!("{} pods", found.len()) },
            if found.len() == 1 { "s" } else { "" }
        ),
        "drop it where it is not needed (securityContext.capabilities.drop: [NET_RAW], or [ALL]; container runtimes grant it by default, and Pod Security baseline allows it), or install the node guard on these nodes".into(),
    );
}

/// The containers that run for the pod's life: its containers, native sidecars (init
/// containers with `restartPolicy: Always`) and ephemeral containers (as their common part).
fn running_containers(pod: &Pod) -> impl Iterator<Item = &Container> {
    let spec = pod.spec.as_ref();
    let main = spec.into_iter().flat_map(|s| s.containers.iter());
    let sidecars = spec
        .and_then(|s| s.init_containers.as_ref())
        .into_iter()
        .flatten()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"));
    main.chain(sidecars)
}

/// Whether a container keeps `NET_RAW`: privileged, or it adds it (or ALL), or it does not
/// drop it (nor ALL): runtimes grant it by default.
pub fn has_net_raw(c: &Container) -> bool {
    let Some(sc) = &c.security_context else {
        return true;
    };
    if sc.privileged == Some(true) {
        return true;
    }
    let caps = sc.capabilities.as_ref();
    let names = |list: Option<&Vec<String>>| -> Vec<String> {
        list.into_iter()
            .flatten()
            .map(|n| {
                n.trim()
                    .to_ascii_uppercase()
                    .trim_start_matches("CAP_")
                    .to_string()
            })
            .collect()
    };
    let added = names(caps.and_then(|c| c.add.as_ref()));
    let dropped = names(caps.and_then(|c| c.drop.as_ref()));
    let named = |list: &[String]| list.iter().any(|n| n == "NET_RAW" || n == "ALL");
    named(&added) || !named(&dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(sc: serde_json::Value) -> Container {
        serde_json::from_value(serde_json::json!({"name": "c", "securityContext": sc}))
            .expect("container")
    }

    #[test]
    fn net_raw_is_kept_unless_dropped_and_not_added_back() {
        let c = |v| has_net_raw(&container(v));
        assert!(c(serde_json::Value::Null), "runtimes grant it by default");
        assert!(c(serde_json::json!({})));
        assert!(!c(serde_json::json!({"capabilities": {"drop": ["ALL"]}})));
        assert!(!c(
            serde_json::json!({"capabilities": {"drop": ["net_raw"]}})
        ));
        assert!(!c(
            serde_json::json!({"capabilities": {"drop": ["CAP_NET_RAW"]}})
        ));
        assert!(c(
            serde_json::json!({"capabilities": {"drop": ["NET_ADMIN"]}})
        ));
        assert!(c(
            serde_json::json!({"capabilities": {"drop": ["ALL"], "add": ["NET_RAW"]}})
        ));
        assert!(c(
            serde_json::json!({"capabilities": {"drop": ["ALL"]}, "privileged": true})
        ));
    }

    #[test]
    fn the_cni_is_known_by_its_daemonset() {
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            cni_of(&names(&["kube-proxy", "calico-node"])),
            Cni::ChecksSources("Calico")
        );
        assert_eq!(
            cni_of(&names(&["cilium", "cilium-envoy"])),
            Cni::ChecksSources("Cilium")
        );
        assert_eq!(
            cni_of(&names(&["kube-flannel-ds"])),
            Cni::Bridged("Flannel")
        );
        assert_eq!(cni_of(&names(&["kube-proxy"])), Cni::Unknown);
    }
}
