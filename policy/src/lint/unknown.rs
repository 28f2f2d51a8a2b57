//! Unknown fields: what the API server's strict field validation would reject although the policy
//! engine reads the object.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::de::DeserializeOwned;

use super::{Check, Finding, Severity};
use crate::error::ObjectRef;
use crate::manifest::{split_documents, Document, Head, ListItems};

/// Every field of every object in `text` that its Kubernetes type does not know, as the API
/// server's strict field validation reports them (`kubectl apply --validate=strict`, the default
/// since 1.27). Objects of kinds this check does not know are not looked at; malformed text is
/// left to the loader, which reports it.
///
/// Objects read back from an API server (they carry `metadata.resourceVersion` or `uid`, as
/// `kubectl get -o yaml` prints them) are read leniently, except NetworkPolicies: a newer server
/// returns fields this version does not know, and the server accepted them. Those give one
/// warning per text, not an error per object. A policy stays strict wherever it comes from: a
/// field the engine does not know may change what it means.
pub fn unknown_fields(text: &str, source: &str) -> Vec<Finding> {
    let mut out = Vec::new();
    let Ok(documents) = split_documents(text) else {
        return out;
    };
    let many = documents.len() > 1;
    let mut from_server = Vec::new();
    for (i, doc) in documents.iter().enumerate() {
        let here = if many {
            format!("{source}, document {}", i + 1)
        } else {
            source.to_string()
        };
        let mut found = Found {
            strict: &mut out,
            from_server: &mut from_server,
        };
        unknown_in_document(doc, &here, &mut found);
    }
    if let Some((object, field)) = from_server.first() {
        out.push(Finding::new(
            Severity::Warning,
            Check::NewerServerField,
            object,
            field,
            format!(
                "{} field(s) in {} object(s) read back from an API server are unknown to this \
                 version (probably from a newer Kubernetes); they are ignored",
                from_server.len(),
                from_server
                    .iter()
                    .map(|(o, _)| o.to_string())
                    .collect::<std::collections::BTreeSet<_>>()
                    .len()
            ),
        ));
    }
    out
}

/// Where unknown fields go: findings for objects a user wrote, a tally for objects a server wrote.
struct Found<'a> {
    strict: &'a mut Vec<Finding>,
    from_server: &'a mut Vec<(ObjectRef, String)>,
}

fn unknown_in_document(doc: &Document<'_>, source: &str, out: &mut Found<'_>) {
    let Ok(head) = doc.parse::<Head>() else {
        return;
    };
    let kind = head.kind.unwrap_or_default();
    let api_version = head.api_version.unwrap_or_default();
    let meta = head.metadata.unwrap_or_default();
    if kind.ends_with("List") {
        if let Ok(ListItems { items: Some(items) }) = doc.parse::<ListItems>() {
            for (i, item) in items.into_iter().enumerate() {
                let here = format!("{source}, items[{i}]");
                unknown_in_document(&Document::Json(item), &here, out);
            }
        }
        return;
    }
    let lenient = meta.written_by_server() && kind != "NetworkPolicy";
    let namespaced = kind != "Namespace";
    let object = ObjectRef {
        kind: kind.clone(),
        namespace: namespaced.then(|| meta.namespace.unwrap_or_else(|| "default".into())),
        name: meta.name.unwrap_or_else(|| "<unnamed>".into()),
        source: Some(source.to_string()),
    };
    let fields = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => ignored_fields::<Namespace>(doc),
        ("v1", "Pod") => ignored_fields::<Pod>(doc),
        ("v1", "Service") => ignored_fields::<Service>(doc),
        ("v1", "ServiceAccount") => ignored_fields::<ServiceAccount>(doc),
        ("v1", "ConfigMap") => ignored_fields::<ConfigMap>(doc),
        ("networking.k8s.io/v1", "NetworkPolicy") => ignored_fields::<NetworkPolicy>(doc),
        ("discovery.k8s.io/v1", "EndpointSlice") => ignored_fields::<EndpointSlice>(doc),
        ("apps/v1", "Deployment") => ignored_fields::<Deployment>(doc),
        ("apps/v1", "StatefulSet") => ignored_fields::<StatefulSet>(doc),
        ("apps/v1", "DaemonSet") => ignored_fields::<DaemonSet>(doc),
        ("apps/v1", "ReplicaSet") => ignored_fields::<ReplicaSet>(doc),
        ("batch/v1", "Job") => ignored_fields::<Job>(doc),
        ("batch/v1", "CronJob") => ignored_fields::<CronJob>(doc),
        _ => Vec::new(),
    };
    if lenient {
        out.from_server
            .extend(fields.into_iter().map(|f| (object.clone(), f)));
        return;
    }
    for field in fields {
        let leaf = field.rsplit('.').next().unwrap_or(&field).to_string();
        let hint = typo_hint(&leaf);
        out.strict.push(Finding::new(
            Severity::Error,
            Check::UnknownField,
            &object,
            &field,
            format!(
                "unknown field {leaf:?}: the API server rejects it under strict field \
                 validation, and the object would mean something else without it{hint}"
            ),
        ));
    }
}

/// Well-known NetworkPolicy fields, to suggest the one a typo meant.
const KNOWN_NAMES: [&str; 14] = [
    "ingress",
    "egress",
    "from",
    "to",
    "ports",
    "port",
    "endPort",
    "protocol",
    "podSelector",
    "namespaceSelector",
    "ipBlock",
    "policyTypes",
    "matchLabels",
    "matchExpressions",
];

fn typo_hint(leaf: &str) -> String {
    KNOWN_NAMES
        .iter()
        .find(|k| leaf != **k && edit_distance(&leaf.to_lowercase(), &k.to_lowercase()) <= 2)
        .map(|k| format!(" (did you mean {k:?}?)"))
        .unwrap_or_default()
}

/// Levenshtein distance, for "did you mean" hints.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// Decodes `doc` as `T` and returns the paths of the keys `T` ignored. A document that does not
/// decode gives none here (the loader reports why).
fn ignored_fields<T: DeserializeOwned>(doc: &Document<'_>) -> Vec<String> {
    let mut paths = Vec::new();
    let mut note = |p: serde_ignored::Path<'_>| paths.push(render_path(&p));
    let decoded = match doc {
        Document::Yaml(text) => serde_saphyr::with_deserializer_from_str(text, |de| {
            serde_ignored::deserialize::<_, _, T>(de, &mut note)
        })
        .map(drop)
        .map_err(drop),
        Document::Json(v) => serde_ignored::deserialize::<_, _, T>(v, &mut note)
            .map(drop)
            .map_err(drop),
    };
    if decoded.is_err() {
        return Vec::new();
    }
    paths
}

/// `spec.ingress[0].from` rather than serde_ignored's `spec.ingress.0.from`.
fn render_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", render_path(parent)),
        Path::Map { parent, key } => {
            let parent = render_path(parent);
            if parent.is_empty() {
                key.clone()
            } else {
                format!("{parent}.{key}")
            }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => render_path(parent),
    }
}
