//! Which testbed pods get Portcullis (the init rules and the proxy), and with which
//! environment, as in a cluster:
//!
//! 1. The webhook's `namespaceSelector` (`manifests/base/injector/`): pods in
//!    [`NEVER_INJECTED_NAMESPACES`] never reach it; if any Namespace of the manifests carries
//!    the label `portcullis.dev/inject` at all, the manifests describe an opt-in cluster and
//!    only pods of namespaces labelled `portcullis.dev/inject=enabled` do. Without any such
//!    label (test suites, most examples), every namespace counts as opted in.
//! 2. For those, the webhook's own decision ([`portcullis_injector::decision::sidecars`]) on
//!    the Pod as the manifests write it and its namespace's annotations: whether it is
//!    injected, and the environment of `portcullis-init` and `portcullis-proxy`.
//!
//! (hostNetwork pods are never part of the testbed.) The policy engine's `PodInfo` carries no
//! annotations nor containers, so the Pods and Namespaces are read here from the manifest
//! files themselves.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod};
use portcullis_contract::keys::{ENABLED, INJECT, NEVER_INJECTED_NAMESPACES};
use portcullis_injector::decision::{sidecars, Sidecars};
use portcullis_injector::{InjectorConfig, NamespaceDefaults};
use portcullis_policy::Cluster;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
struct Meta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
}

/// The Pods (by `ns/name`) and the annotations of the Namespaces (by name) of the manifests.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Manifests {
    pub pods: BTreeMap<String, Pod>,
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
}

impl Manifests {
    /// Reads every manifest file under `paths` (errors in files are the loader's to report: a
    /// document this reader cannot decode is skipped).
    pub fn read(paths: &[PathBuf]) -> Manifests {
        let mut out = Manifests::default();
        let mut files = Vec::new();
        for p in paths {
            walk(p, &mut files);
        }
        for f in files {
            if let Ok(text) = fs::read_to_string(&f) {
                for obj in documents(&text) {
                    out.add(obj);
                }
            }
        }
        out
    }

    fn add(&mut self, obj: serde_json::Value) {
        if let Some(items) = obj.get("items").and_then(|i| i.as_array()) {
            for item in items {
                self.add(item.clone());
            }
            return;
        }
        let meta: Meta = obj
            .get("metadata")
            .and_then(|m| serde_json::from_value(m.clone()).ok())
            .unwrap_or_default();
        let name = meta.name.clone().unwrap_or_default();
        match obj.get("kind").and_then(|k| k.as_str()) {
            Some("Pod") => {
                let ns = meta.namespace.clone().unwrap_or_else(|| "default".into());
                let pod = serde_json::from_value(obj).unwrap_or_else(|_| pod_of(&meta));
                self.pods.insert(format!("{ns}/{name}"), pod);
            }
            Some("Namespace") => {
                self.namespaces
                    .insert(name, meta.annotations.unwrap_or_default());
            }
            _ => {}
        }
    }
}

/// A Pod with only the metadata a manifest gave, when the rest does not decode.
fn pod_of(meta: &Meta) -> Pod {
    let mut pod = Pod::default();
    pod.metadata.name = meta.name.clone();
    pod.metadata.namespace = meta.namespace.clone();
    pod.metadata.annotations = meta.annotations.clone();
    pod
}

fn walk(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = fs::read_dir(path)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                !p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect();
        entries.sort();
        for e in entries {
            walk(&e, out);
        }
    } else if portcullis_policy_loader::is_manifest(path) {
        out.push(path.to_path_buf());
    }
}

fn documents(text: &str) -> Vec<serde_json::Value> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        let mut out = Vec::new();
        for v in serde_json::Deserializer::from_str(text)
            .into_iter::<serde_json::Value>()
            .flatten()
        {
            match v {
                serde_json::Value::Array(items) => out.extend(items),
                v => out.push(v),
            }
        }
        return out;
    }
    crate::services::yaml_documents(text)
        .iter()
        .filter(|d| !d.trim().is_empty())
        .filter_map(|d| serde_saphyr::from_str::<serde_json::Value>(d).ok())
        .collect()
}

/// Whether pod `key` in `namespace` gets Portcullis, and its containers' environment: the
/// namespace selection above, then the injector's decision with `cfg`.
pub fn decide(
    cluster: &Cluster,
    manifests: &Manifests,
    cfg: &InjectorConfig,
    namespace: &str,
    key: &str,
) -> Sidecars {
    if NEVER_INJECTED_NAMESPACES.contains(&namespace) {
        return Sidecars::NotInjected(format!(
            "namespace {namespace} is never injected (the webhook leaves it out)"
        ));
    }
    let opt_in_cluster = cluster
        .namespaces
        .values()
        .any(|n| n.labels.contains_key(INJECT));
    let labelled = cluster
        .namespaces
        .get(namespace)
        .and_then(|n| n.labels.get(INJECT))
        .is_some_and(|v| v == ENABLED);
    if opt_in_cluster && !labelled {
        return Sidecars::NotInjected(format!(
            "namespace {namespace} lacks the label {INJECT}={ENABLED}"
        ));
    }
    let mut pod = manifests.pods.get(key).cloned().unwrap_or_else(|| {
        let (ns, name) = key.split_once('/').unwrap_or((namespace, key));
        pod_of(&Meta {
            name: Some(name.to_string()),
            namespace: Some(ns.to_string()),
            annotations: None,
        })
    });
    // The testbed runs its own server as the application: a pod written without containers
    // still gets one, as the API server would insist on.
    let spec = pod.spec.get_or_insert_with(Default::default);
    if spec.containers.is_empty() {
        spec.containers.push(Container {
            name: "app".to_string(),
            ..Container::default()
        });
    }
    let defaults = NamespaceDefaults::annotations(
        manifests
            .namespaces
            .get(namespace)
            .cloned()
            .unwrap_or_default(),
    );
    sidecars(&pod, &defaults, cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_policy::manifest::load_into;

    const MANIFESTS: &str = "
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {portcullis.dev/inject: enabled}
  annotations: {portcullis.dev/allow-pod-overrides: 'true'}
---
apiVersion: v1
kind: Namespace
metadata:
  name: legacy
  annotations: {portcullis.dev/inject: disabled}
  labels: {portcullis.dev/inject: enabled}
---
apiVersion: v1
kind: Pod
metadata:
  name: plain
  namespace: shop
  annotations: {portcullis.dev/inject: disabled}
spec: {containers: [{name: c, image: i}]}
---
apiVersion: v1
kind: Pod
metadata:
  name: wanted
  namespace: legacy
  annotations: {portcullis.dev/inject: enabled}
spec: {containers: [{name: c, image: i}]}
";

    fn setup(text: &str) -> (Cluster, Manifests) {
        let mut cluster = Cluster::new();
        load_into(&mut cluster, text, "t");
        cluster.ensure_implied_namespaces();
        let mut m = Manifests::default();
        for obj in documents(text) {
            m.add(obj);
        }
        (cluster, m)
    }

    /// Why the pod is not injected; `Ok` when it is.
    fn decide(c: &Cluster, m: &Manifests, ns: &str, key: &str) -> Result<(), String> {
        match super::decide(c, m, &InjectorConfig::default(), ns, key) {
            Sidecars::Injected(_) => Ok(()),
            Sidecars::NotInjected(why) => Err(why),
        }
    }

    #[test]
    fn annotations_and_the_opt_in_label_decide() {
        let (c, a) = setup(MANIFESTS);
        assert!(decide(&c, &a, "shop", "shop/api").is_ok());
        assert!(decide(&c, &a, "shop", "shop/plain")
            .unwrap_err()
            .contains("pod annotation"));
        assert!(decide(&c, &a, "legacy", "legacy/other")
            .unwrap_err()
            .contains("namespace annotation"));
        assert!(decide(&c, &a, "legacy", "legacy/wanted").is_ok());
        // Labels are in use, so an unlabelled namespace is not opted in.
        assert!(decide(&c, &a, "other", "other/x")
            .unwrap_err()
            .contains("lacks the label"));
        assert!(decide(&c, &a, "kube-system", "kube-system/coredns").is_err());
    }

    #[test]
    fn without_any_opt_in_label_every_namespace_is_injected() {
        let (c, a) =
            setup("apiVersion: v1\nkind: Namespace\nmetadata: {name: x, labels: {ns: x}}\n");
        assert!(decide(&c, &a, "x", "x/a").is_ok());
        assert!(decide(&c, &a, "y", "y/a").is_ok());
    }

    #[test]
    fn json_lists_are_read() {
        let text = r#"{"kind":"List","items":[{"kind":"Pod","metadata":{"name":"p","namespace":"n","annotations":{"portcullis.dev/inject":"disabled"}}}]}"#;
        let mut m = Manifests::default();
        for obj in documents(text) {
            m.add(obj);
        }
        let annotations = m
            .pods
            .get("n/p")
            .and_then(|p| p.metadata.annotations.as_ref());
        assert_eq!(
            annotations.and_then(|a| a.get(INJECT)).map(String::as_str),
            Some("disabled")
        );
    }
}
