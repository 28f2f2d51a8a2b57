//! Which testbed pods get Portcullis (the init rules and the proxy), as the injector webhook
//! would decide in a cluster:
//!
//! 1. Pods in `kube-system`, `kube-public`, `kube-node-lease` and `portcullis-system` never do
//!    (the webhook's namespaceSelector leaves these namespaces out).
//! 2. If any Namespace of the manifests carries the label `portcullis.dev/inject` at all, the
//!    manifests describe an opt-in cluster: only pods of namespaces labelled
//!    `portcullis.dev/inject=enabled` are injected. Without any such label (test suites, most
//!    examples), every namespace counts as opted in.
//! 3. In an opted-in namespace, the annotation `portcullis.dev/inject: enabled|disabled` of the pod
//!    decides, else that of its namespace, else the pod is injected.
//!
//! (hostNetwork pods are never part of the testbed.) The policy engine's `PodInfo` carries no
//! annotations, so they are read here from the manifest files themselves.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use portcullis_policy::Cluster;
use serde::Deserialize;

pub const INJECT: &str = "portcullis.dev/inject";
/// Namespaces the webhook never sees.
pub const NEVER_INJECTED: [&str; 4] = [
    "kube-system",
    "kube-public",
    "kube-node-lease",
    "portcullis-system",
];

#[derive(Debug, Default, Deserialize)]
struct Object {
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    metadata: Meta,
    #[serde(default)]
    items: Option<Vec<Object>>,
}

#[derive(Debug, Default, Deserialize)]
struct Meta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
}

/// The `portcullis.dev/inject` annotations of Pods (by `ns/name`) and Namespaces (by name).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Annotations {
    pub pods: BTreeMap<String, String>,
    pub namespaces: BTreeMap<String, String>,
}

impl Annotations {
    /// Reads every manifest file under `paths` (errors in files are the loader's to report: a
    /// document this reader cannot decode is skipped).
    pub fn read(paths: &[PathBuf]) -> Annotations {
        let mut out = Annotations::default();
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

    fn add(&mut self, obj: Object) {
        if let Some(items) = obj.items {
            for item in items {
                self.add(item);
            }
            return;
        }
        let Some(value) = obj
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(INJECT))
        else {
            return;
        };
        let name = obj.metadata.name.clone().unwrap_or_default();
        match obj.kind.as_deref() {
            Some("Pod") => {
                let ns = obj.metadata.namespace.as_deref().unwrap_or("default");
                self.pods.insert(format!("{ns}/{name}"), value.clone());
            }
            Some("Namespace") => {
                self.namespaces.insert(name, value.clone());
            }
            _ => {}
        }
    }
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

fn documents(text: &str) -> Vec<Object> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        let mut out = Vec::new();
        for v in serde_json::Deserializer::from_str(text)
            .into_iter::<serde_json::Value>()
            .flatten()
        {
            match v {
                serde_json::Value::Array(items) => out.extend(
                    items
                        .into_iter()
                        .filter_map(|i| serde_json::from_value(i).ok()),
                ),
                v => out.extend(serde_json::from_value(v).ok()),
            }
        }
        return out;
    }
    let mut docs = vec![String::new()];
    for line in text.lines() {
        if line.starts_with("---") {
            docs.push(String::new());
        } else if let Some(last) = docs.last_mut() {
            last.push_str(line);
            last.push('\n');
        }
    }
    docs.iter()
        .filter(|d| !d.trim().is_empty())
        .filter_map(|d| serde_saphyr::from_str::<Object>(d).ok())
        .collect()
}

/// Whether pod `namespace/name` gets Portcullis, by the rules above; with the reason when not.
pub fn decide(
    cluster: &Cluster,
    annotations: &Annotations,
    namespace: &str,
    key: &str,
) -> Result<(), String> {
    if NEVER_INJECTED.contains(&namespace) {
        return Err(format!(
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
        .is_some_and(|v| v == "enabled");
    if opt_in_cluster && !labelled {
        return Err(format!(
            "namespace {namespace} lacks the label {INJECT}=enabled"
        ));
    }
    let layers = [
        (annotations.pods.get(key), "pod"),
        (annotations.namespaces.get(namespace), "namespace"),
    ];
    for (value, whose) in layers {
        match value.map(|v| v.trim()) {
            Some("disabled") => return Err(format!("{whose} annotation {INJECT}: disabled")),
            Some("enabled") => return Ok(()),
            _ => {}
        }
    }
    Ok(())
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

    fn setup(text: &str) -> (Cluster, Annotations) {
        let mut cluster = Cluster::new();
        load_into(&mut cluster, text, "t");
        cluster.ensure_implied_namespaces();
        let mut ann = Annotations::default();
        for obj in documents(text) {
            ann.add(obj);
        }
        (cluster, ann)
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
        let mut a = Annotations::default();
        for obj in documents(text) {
            a.add(obj);
        }
        assert_eq!(a.pods.get("n/p").map(String::as_str), Some("disabled"));
    }
}
