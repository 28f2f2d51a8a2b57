//! Kubernetes manifests (YAML, multi-document YAML, JSON, `List` objects) → [`Cluster`] objects.
//! Text in, objects and errors out: reading files is the caller's business.

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use crate::cluster::{Cluster, NamespaceInfo, NodeInfo, PodInfo};
use crate::cnp::ClusterNetworkPolicy;
use crate::error::{ObjectError, ObjectRef};
use crate::service::{EndpointSliceInfo, ServiceInfo};

/// What went wrong reading a manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    /// The text is not YAML/JSON at all. `location` is the file (and document) it was read from.
    #[error("{location}: not valid YAML/JSON: {message}")]
    Syntax { location: String, message: String },
    /// One object is malformed or invalid; the others were still read.
    #[error(transparent)]
    Object(ObjectError),
}

/// Why a document did not decode into the type its `kind` calls for (the decoder's own words).
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("{0}")]
    Yaml(#[from] serde_saphyr::Error),
    #[error("{0}")]
    Json(#[from] serde_json::Error),
}

/// An `apiVersion` this loader does not read for a kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("apiVersion {api_version:?} is not supported for {kind} (expected {expected})")]
pub struct UnsupportedApiVersion {
    pub api_version: String,
    pub kind: String,
    pub expected: &'static str,
}

/// What a load found besides errors.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LoadReport {
    pub errors: Vec<LoadError>,
    /// Objects of kinds policy does not use (Deployments, ConfigMaps...), as `Kind name (source)`.
    pub ignored: Vec<String>,
    /// Objects read, of every kind, valid or not (a `List` counts its items, not itself): zero
    /// means the text held no object at all, which callers report as an error (as `kubectl apply`
    /// does: the empty output of a failed `kubectl get ... | portcullis lint -f -` must not pass).
    pub objects: usize,
}

/// Parses `text` (named `source` in messages) and adds its Namespaces, Pods, NetworkPolicies,
/// Services and EndpointSlices to `cluster`.
pub fn load_into(cluster: &mut Cluster, text: &str, source: &str) -> LoadReport {
    let mut report = LoadReport::default();
    let documents = match split_documents(text) {
        Ok(docs) => docs,
        Err(message) => {
            report.errors.push(LoadError::Syntax {
                location: source.to_string(),
                message: message.to_string(),
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

/// One document, parsed lazily into whichever type its `kind` calls for.
///
/// YAML is decoded straight into the target type, as kubectl does, so that a label value such as
/// `y` or `on` stays the string it is meant to be instead of becoming a YAML 1.1 boolean.
pub(crate) enum Document<'a> {
    Yaml(&'a str),
    Json(Value),
}

impl Document<'_> {
    pub(crate) fn parse<T: DeserializeOwned>(&self) -> Result<T, DecodeError> {
        match self {
            Document::Yaml(text) => Ok(serde_saphyr::from_str(text)?),
            Document::Json(v) => Ok(T::deserialize(v)?),
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Document::Yaml(text) => text
                .lines()
                .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#')),
            Document::Json(v) => v.is_null(),
        }
    }
}

/// The fields every object has, read before the object itself.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Head {
    #[serde(default)]
    pub(crate) api_version: Option<String>,
    #[serde(default)]
    pub(crate) kind: Option<String>,
    #[serde(default)]
    pub(crate) metadata: Option<HeadMeta>,
}

#[derive(Deserialize, Default)]
pub(crate) struct HeadMeta {
    #[serde(default)]
    pub(crate) name: Option<String>,
    #[serde(default)]
    pub(crate) namespace: Option<String>,
    /// Set only by an API server: with `uid`, tells an object read back from a server (`kubectl
    /// get -o yaml`) from one a user wrote.
    #[serde(default, rename = "resourceVersion")]
    pub(crate) resource_version: Option<String>,
    #[serde(default)]
    pub(crate) uid: Option<String>,
}

impl HeadMeta {
    /// Whether an API server wrote this object (it carries a `resourceVersion` or `uid`).
    pub(crate) fn written_by_server(&self) -> bool {
        self.resource_version.is_some() || self.uid.is_some()
    }
}

/// A `List`'s items, each kept as YAML-free JSON so that it can be decoded by kind.
#[derive(Deserialize)]
pub(crate) struct ListItems {
    pub(crate) items: Option<Vec<Value>>,
}

/// Splits a stream into documents the way kubectl does: on lines that start with `---`.
pub(crate) fn split_documents(text: &str) -> Result<Vec<Document<'_>>, serde_json::Error> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        let mut out = Vec::new();
        for v in serde_json::Deserializer::from_str(text).into_iter::<Value>() {
            match v? {
                Value::Array(items) => out.extend(items.into_iter().map(Document::Json)),
                v => out.push(Document::Json(v)),
            }
        }
        return Ok(out);
    }
    let mut docs = Vec::new();
    let mut start = 0;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let body = line.trim_end_matches(['\r', '\n']);
        let is_marker = body == "---" || body.starts_with("--- ") || body == "...";
        if is_marker {
            docs.push(Document::Yaml(&text[start..offset]));
            start = offset + line.len();
        }
        offset += line.len();
    }
    docs.push(Document::Yaml(&text[start..]));
    Ok(docs.into_iter().filter(|d| !d.is_empty()).collect())
}

/// Where a document was read from and what its head says: enough to name it in errors.
struct Here<'a> {
    source: &'a str,
    kind: String,
    api_version: String,
    name: String,
    namespace: Option<String>,
}

impl Here<'_> {
    fn object(&self, kind: &str, namespace: Option<String>) -> ObjectRef {
        ObjectRef {
            kind: kind.to_string(),
            namespace,
            name: if self.name.is_empty() {
                "<unnamed>".into()
            } else {
                self.name.clone()
            },
            source: Some(self.source.to_string()),
        }
    }

    fn error(
        &self,
        kind: &str,
        namespace: Option<String>,
        field: &str,
        message: String,
    ) -> LoadError {
        LoadError::Object(ObjectError {
            object: Box::new(self.object(kind, namespace)),
            field: field.to_string(),
            message,
        })
    }

    /// The object's namespace, `default` when it names none.
    fn namespace_or_default(&self) -> Option<String> {
        Some(self.namespace.clone().unwrap_or_else(|| "default".into()))
    }

    /// Decodes the document as a `T` of `expected` apiVersion, named under `namespace` in errors;
    /// `None` (and the error reported) when it is another apiVersion or does not decode.
    fn decode<T: DeserializeOwned>(
        &self,
        doc: &Document<'_>,
        expected: &'static str,
        namespace: Option<String>,
        report: &mut LoadReport,
    ) -> Option<T> {
        if self.api_version != expected {
            let e = UnsupportedApiVersion {
                api_version: self.api_version.clone(),
                kind: self.kind.clone(),
                expected,
            };
            report
                .errors
                .push(self.error(&self.kind, namespace, "apiVersion", e.to_string()));
            return None;
        }
        match doc.parse::<T>() {
            Ok(object) => Some(object),
            Err(e) => {
                report
                    .errors
                    .push(self.error(&self.kind, namespace, "", e.to_string()));
                None
            }
        }
    }
}

fn add_object(cluster: &mut Cluster, doc: Document<'_>, source: &str, report: &mut LoadReport) {
    let head: Head = match doc.parse() {
        Ok(h) => h,
        Err(e) => {
            report.objects += 1;
            report.errors.push(LoadError::Syntax {
                location: source.to_string(),
                message: e.to_string(),
            });
            return;
        }
    };
    let meta = head.metadata.unwrap_or_default();
    let here = Here {
        source,
        kind: head.kind.unwrap_or_default(),
        api_version: head.api_version.unwrap_or_default(),
        name: meta.name.unwrap_or_default(),
        namespace: meta.namespace,
    };
    if here.kind.ends_with("List") {
        return add_list(cluster, &doc, &here, report);
    }
    report.objects += 1;
    let namespaced = here.namespace_or_default();
    match here.kind.as_str() {
        "Namespace" => add_namespace(cluster, &doc, &here, report),
        "Pod" => {
            if let Some(pod) = here.decode::<Pod>(&doc, "v1", namespaced, report) {
                match PodInfo::from_k8s(&pod, Some(source)) {
                    Ok(info) => cluster.add_pod(info),
                    Err(e) => report.errors.push(LoadError::Object(e)),
                }
            }
        }
        "NetworkPolicy" => {
            let expected = "networking.k8s.io/v1";
            if let Some(np) = here.decode::<NetworkPolicy>(&doc, expected, namespaced, report) {
                cluster.add_policy(np, Some(source.to_string()))
            }
        }
        "Service" => {
            if let Some(svc) = here.decode::<Service>(&doc, "v1", namespaced, report) {
                match ServiceInfo::from_k8s(&svc, Some(source)) {
                    Ok(info) => cluster.add_service(info),
                    Err(e) => report.errors.push(LoadError::Object(e)),
                }
            }
        }
        "EndpointSlice" => {
            let expected = "discovery.k8s.io/v1";
            if let Some(slice) = here.decode::<EndpointSlice>(&doc, expected, namespaced, report) {
                match EndpointSliceInfo::from_k8s(&slice, Some(source)) {
                    Ok(info) => cluster.add_endpoint_slice(info),
                    Err(e) => report.errors.push(LoadError::Object(e)),
                }
            }
        }
        "ClusterNetworkPolicy" | "Node" | "AdminNetworkPolicy" | "BaselineAdminNetworkPolicy" => {
            add_cluster_scoped(cluster, &doc, &here, report)
        }
        "" => report.errors.push(here.error(
            "<no kind>",
            here.namespace.clone(),
            "kind",
            "is required (expected a Kubernetes object with apiVersion and kind)".into(),
        )),
        other => unknown_kind(other, &here, report),
    }
}

/// A kind this loader does not read: an error when it looks like one it does (a typo), else
/// listed as ignored.
fn unknown_kind(other: &str, here: &Here<'_>, report: &mut LoadReport) {
    match look_alike(other) {
        Some(meant) => report.errors.push(here.error(
            other,
            here.namespace.clone(),
            "kind",
            format!("unknown kind {other:?} (did you mean {meant:?}?); the object was not read"),
        )),
        None => report.ignored.push(format!(
            "{other} {} ({})",
            here.object(other, here.namespace.clone()).name,
            here.source
        )),
    }
}

/// The kinds this loader reads.
const KINDS: [&str; 7] = [
    "Namespace",
    "Pod",
    "NetworkPolicy",
    "Service",
    "EndpointSlice",
    "ClusterNetworkPolicy",
    "Node",
];

/// The kind `kind` was probably meant to be, when it looks like one this loader reads: another
/// case, a plural (`NetworkPolicies`, the resource name), or a near miss of a long name
/// (`NetworkPolciy`). Short names are not guessed at (`Pod` is one letter from `Job`).
fn look_alike(kind: &str) -> Option<&'static str> {
    let lower = kind.to_ascii_lowercase();
    KINDS.into_iter().find(|known| {
        let k = known.to_ascii_lowercase();
        let plural = match k.strip_suffix('y') {
            Some(stem) => format!("{stem}ies"),
            None => format!("{k}s"),
        };
        lower == k
            || lower == plural
            || (k.len() >= 9 && crate::lint::edit_distance(&lower, &k) <= 2)
    })
}

/// The cluster-scoped objects ClusterNetworkPolicy needs (CNPs, Nodes), and the `v1alpha1`
/// kinds it replaced, which are refused by name rather than skipped.
fn add_cluster_scoped(
    cluster: &mut Cluster,
    doc: &Document<'_>,
    here: &Here<'_>,
    report: &mut LoadReport,
) {
    let source = here.source;
    match here.kind.as_str() {
        "ClusterNetworkPolicy" => {
            let api = crate::cnp::API_VERSION;
            if let Some(cnp) = here.decode::<ClusterNetworkPolicy>(doc, api, None, report) {
                cluster.add_cnp(cnp, Some(source.to_string()))
            }
        }
        "Node" => {
            if let Some(node) = here.decode::<Node>(doc, "v1", None, report) {
                cluster.add_node(NodeInfo::from_k8s(&node))
            }
        }
        kind => {
            let tier = if kind == "AdminNetworkPolicy" {
                "Admin"
            } else {
                "Baseline"
            };
            report.errors.push(here.error(
                kind,
                None,
                "kind",
                format!(
                    "{kind} ({}) is not read: Portcullis enforces its successor, \
                     ClusterNetworkPolicy ({}) with `tier: {tier}`; rewrite the object as one \
                     (the object was not read, nothing of it is enforced)",
                    here.api_version,
                    crate::cnp::API_VERSION
                ),
            ))
        }
    }
}

/// A Namespace: it needs a name (it has no namespace to be named under).
fn add_namespace(
    cluster: &mut Cluster,
    doc: &Document<'_>,
    here: &Here<'_>,
    report: &mut LoadReport,
) {
    let Some(ns) = here.decode::<Namespace>(doc, "v1", None, report) else {
        return;
    };
    if ns.metadata.name.as_deref().is_some_and(|n| !n.is_empty()) {
        cluster.add_namespace(NamespaceInfo::from_k8s(&ns))
    } else {
        report
            .errors
            .push(here.error(&here.kind, None, "metadata.name", "is required".into()))
    }
}

/// A `List` (or `PodList`, ...): each of its items, named by its index.
fn add_list(cluster: &mut Cluster, doc: &Document<'_>, here: &Here<'_>, report: &mut LoadReport) {
    match doc.parse::<ListItems>() {
        Ok(ListItems { items: Some(items) }) => {
            for (i, item) in items.into_iter().enumerate() {
                let item_source = format!("{}, items[{i}]", here.source);
                add_object(cluster, Document::Json(item), &item_source, report);
            }
        }
        Ok(_) => report.errors.push(here.error(
            &here.kind,
            None,
            "items",
            "a List needs an items array".into(),
        )),
        Err(e) => report
            .errors
            .push(here.error(&here.kind, None, "items", e.to_string())),
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
    fn yaml_1_1_booleans_stay_strings_where_strings_are_expected() {
        let mut c = Cluster::new();
        let r = load_into(
            &mut c,
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: y\n  labels: {ns: y, on: off, v: \"1\"}\n",
            "ns.yaml",
        );
        assert_eq!(r.errors, vec![]);
        assert_eq!(c.namespaces["y"].labels["ns"], "y");
        assert_eq!(c.namespaces["y"].labels["on"], "off");
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

    #[test]
    fn reads_cluster_network_policies_and_nodes_and_refuses_v1alpha1_plainly() {
        let mut c = Cluster::new();
        let r = load_into(
            &mut c,
            "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\n\
             metadata: {name: guard}\nspec:\n  tier: Admin\n  priority: 10\n  \
             subject: {namespaces: {}}\n---\napiVersion: v1\nkind: Node\nmetadata: {name: n1, \
             labels: {zone: a}}\nstatus: {addresses: [{type: InternalIP, address: 192.168.0.1}]}\n\
             ---\napiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\n\
             metadata: {name: old}\nspec: {priority: 1}\n---\n\
             apiVersion: policy.networking.k8s.io/v1alpha1\nkind: ClusterNetworkPolicy\n\
             metadata: {name: wrong}\nspec: {}\n",
            "f.yaml",
        );
        assert_eq!(c.cnps.len(), 1);
        assert_eq!(c.cnps[0].cnp.name(), "guard");
        assert_eq!(
            c.nodes["n1"].addresses,
            vec!["192.168.0.1".parse::<std::net::IpAddr>().unwrap()]
        );
        assert_eq!(r.errors.len(), 2, "{:?}", r.errors);
        let old = r.errors[0].to_string();
        assert!(
            old.contains("AdminNetworkPolicy") && old.contains("is not read"),
            "{old}"
        );
        assert!(
            old.contains("ClusterNetworkPolicy") && old.contains("tier: Admin"),
            "{old}"
        );
        let wrong = r.errors[1].to_string();
        assert!(wrong.contains("v1alpha2"), "{wrong}");
    }
}
