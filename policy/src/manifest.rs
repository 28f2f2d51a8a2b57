//! Kubernetes manifests (YAML, multi-document YAML, JSON, `List` objects) → [`Cluster`] objects.
//! Text in, objects and errors out: reading files is the caller's business.

use std::fmt;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::Value;

use crate::cluster::{Cluster, NamespaceInfo, PodInfo};
use crate::error::{ObjectError, ObjectRef};

/// What went wrong reading a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadError {
    /// The text is not YAML/JSON at all.
    Syntax { source: String, message: String },
    /// One object is malformed or invalid; the others were still read.
    Object(ObjectError),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Syntax { source, message } => {
                write!(f, "{source}: not valid YAML/JSON: {message}")
            }
            LoadError::Object(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for LoadError {}

/// What a load found besides errors.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LoadReport {
    pub errors: Vec<LoadError>,
    /// Objects of kinds policy does not use (Deployments, Services...), as `Kind name (source)`.
    pub ignored: Vec<String>,
}

/// Parses `text` (named `source` in messages) and adds its Namespaces, Pods and NetworkPolicies
/// to `cluster`.
pub fn load_into(cluster: &mut Cluster, text: &str, source: &str) -> LoadReport {
    let mut report = LoadReport::default();
    let documents: Vec<Value> = match parse_documents(text) {
        Ok(docs) => docs,
        Err(message) => {
            report.errors.push(LoadError::Syntax {
                source: source.to_string(),
                message,
            });
            return report;
        }
    };
    let many = documents.len() > 1;
    for (i, doc) in documents.into_iter().enumerate() {
        let where_ = if many {
            format!("{source}, document {}", i + 1)
        } else {
            source.to_string()
        };
        add_object(cluster, doc, &where_, &mut report);
    }
    report
}

fn parse_documents(text: &str) -> Result<Vec<Value>, String> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        // JSON: one value, or a stream of values.
        let mut out = Vec::new();
        for v in serde_json::Deserializer::from_str(text).into_iter::<Value>() {
            match v.map_err(|e| e.to_string())? {
                Value::Array(items) => out.extend(items),
                v => out.push(v),
            }
        }
        return Ok(out);
    }
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| e.to_string())?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

fn add_object(cluster: &mut Cluster, doc: Value, source: &str, report: &mut LoadReport) {
    let kind = doc
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let api_version = doc
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let meta = doc.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let namespace = meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let object = |kind: &str, namespace: Option<String>| ObjectRef {
        kind: kind.to_string(),
        namespace,
        name: if name.is_empty() {
            "<unnamed>".into()
        } else {
            name.clone()
        },
        source: Some(source.to_string()),
    };
    let error = |kind: &str, namespace: Option<String>, field: &str, message: String| {
        LoadError::Object(ObjectError {
            object: object(kind, namespace),
            field: field.to_string(),
            message,
        })
    };

    if kind.ends_with("List") {
        match doc.get("items") {
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    add_object(
                        cluster,
                        item.clone(),
                        &format!("{source}, items[{i}]"),
                        report,
                    );
                }
            }
            _ => report.errors.push(error(
                &kind,
                None,
                "items",
                "a List needs an items array".into(),
            )),
        }
        return;
    }
    if !doc.is_object() {
        report.errors.push(LoadError::Syntax {
            source: source.to_string(),
            message: "expected a Kubernetes object (a mapping with apiVersion and kind)".into(),
        });
        return;
    }
    let ns_or_default = || Some(namespace.clone().unwrap_or_else(|| "default".into()));
    let expect_api = |wanted: &str| -> Result<(), String> {
        if api_version == wanted {
            Ok(())
        } else {
            Err(format!(
                "apiVersion {api_version:?} is not supported for {kind} (expected {wanted})"
            ))
        }
    };
    match kind.as_str() {
        "Namespace" => {
            if let Err(m) = expect_api("v1") {
                return report.errors.push(error(&kind, None, "apiVersion", m));
            }
            match serde_json::from_value::<Namespace>(doc) {
                Ok(ns) if ns.metadata.name.as_deref().is_some_and(|n| !n.is_empty()) => {
                    cluster.add_namespace(NamespaceInfo::from_k8s(&ns))
                }
                Ok(_) => {
                    report
                        .errors
                        .push(error(&kind, None, "metadata.name", "is required".into()))
                }
                Err(e) => report.errors.push(error(&kind, None, "", e.to_string())),
            }
        }
        "Pod" => {
            if let Err(m) = expect_api("v1") {
                return report
                    .errors
                    .push(error(&kind, ns_or_default(), "apiVersion", m));
            }
            match serde_json::from_value::<Pod>(doc) {
                Ok(pod) => match PodInfo::from_k8s(&pod, Some(source)) {
                    Ok(info) => cluster.add_pod(info),
                    Err(e) => report.errors.push(LoadError::Object(e)),
                },
                Err(e) => report
                    .errors
                    .push(error(&kind, ns_or_default(), "", e.to_string())),
            }
        }
        "NetworkPolicy" => {
            if let Err(m) = expect_api("networking.k8s.io/v1") {
                return report
                    .errors
                    .push(error(&kind, ns_or_default(), "apiVersion", m));
            }
            match serde_json::from_value::<NetworkPolicy>(doc) {
                Ok(np) => cluster.add_policy(np, Some(source.to_string())),
                Err(e) => report
                    .errors
                    .push(error(&kind, ns_or_default(), "", e.to_string())),
            }
        }
        "" => report.errors.push(error(
            "<no kind>",
            namespace.clone(),
            "kind",
            "is required".into(),
        )),
        other => report.ignored.push(format!(
            "{other} {} ({source})",
            object(other, namespace.clone()).name
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_yaml_and_lists() {
        let mut c = Cluster::new();
        let r = load_into(
            &mut c,
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: x, labels: {team: a}}\n---\n\
             apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Pod\n  metadata: {name: a, namespace: x}\n  status: {podIP: 10.0.0.1}\n\
             - apiVersion: apps/v1\n  kind: Deployment\n  metadata: {name: d}\n---\n",
            "f.yaml",
        );
        assert_eq!(r.errors, vec![]);
        assert_eq!(r.ignored.len(), 1);
        assert_eq!(c.namespaces["x"].labels["team"], "a");
        assert_eq!(c.namespaces["x"].labels["kubernetes.io/metadata.name"], "x");
        assert_eq!(
            c.pods[0].ips,
            vec!["10.0.0.1".parse::<std::net::IpAddr>().unwrap()]
        );
    }

    #[test]
    fn json_is_accepted() {
        let mut c = Cluster::new();
        let r = load_into(
            &mut c,
            r#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"p","namespace":"x"},"spec":{"podSelector":{}}}"#,
            "p.json",
        );
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!(c.policies.len(), 1);
    }

    #[test]
    fn syntax_errors_name_the_file() {
        let mut c = Cluster::new();
        let r = load_into(&mut c, "kind: Pod\n  metadata: [\n", "broken.yaml");
        assert_eq!(r.errors.len(), 1);
        assert!(
            r.errors[0]
                .to_string()
                .starts_with("broken.yaml: not valid YAML/JSON"),
            "{}",
            r.errors[0]
        );
    }

    #[test]
    fn malformed_objects_name_the_object_and_keep_the_others() {
        let mut c = Cluster::new();
        let r = load_into(
            &mut c,
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bad, namespace: x}\nspec: {podSelector: {}, ingress: 5}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: x}\nstatus: {podIP: not-an-ip}\n---\n\
             apiVersion: extensions/v1beta1\nkind: NetworkPolicy\nmetadata: {name: old}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {name: ok, namespace: x}\n",
            "m.yaml",
        );
        let msgs: Vec<String> = r.errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(msgs.len(), 3, "{msgs:?}");
        assert!(
            msgs[0].starts_with("NetworkPolicy x/bad (in m.yaml, document 1)"),
            "{}",
            msgs[0]
        );
        assert!(
            msgs[1].contains("Pod x/p") && msgs[1].contains("status.podIP"),
            "{}",
            msgs[1]
        );
        assert!(
            msgs[2].contains("NetworkPolicy default/old") && msgs[2].contains("apiVersion"),
            "{}",
            msgs[2]
        );
        assert_eq!(c.pods.len(), 1);
        assert_eq!(c.pods[0].name, "ok");
    }
}
