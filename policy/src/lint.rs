//! Lint: what the API server would reject although the policy engine reads it (unknown fields,
//! as under strict field validation), and what is valid but probably not what the author meant
//! (a policy that selects no pod, a peer that selects nothing, a port nobody serves, no DNS...).
//!
//! Pure: manifest text and a [`Cluster`] in, [`Finding`]s out. Parsing for the engine is not
//! touched: unknown fields are found by decoding each object a second time into the same typed
//! k8s-openapi object through `serde_ignored`, which reports every key the type does not know,
//! with its path.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use ipnet::IpNet;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cluster::{Cluster, PodInfo};
use crate::compile::ClusterIndex;
use crate::error::{ObjectError, ObjectRef};
use crate::manifest::{split_documents, Document};
use crate::ports::{PortRange, Protocol};
use crate::validate::{validate_policy, Peer, PortSpec, Rule, ValidPolicy};
use crate::verdict::Direction;

/// The namespace label that opts a namespace in to injection (docs/CONVENTIONS.md).
pub const INJECT_LABEL: (&str, &str) = (crate::protection::INJECT_LABEL, "enabled");
/// Ports the injected proxy listens on (docs/CONVENTIONS.md); an application must not use them.
pub const PROXY_PORTS: [(u16, &str); 3] = portcullis_contract::ports::PROXY;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
    Note,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Note => "note",
        })
    }
}

/// Which check found something; stable names for CI filters (`-o json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Check {
    /// Not YAML/JSON, or an object the API server would reject.
    Invalid,
    UnknownField,
    SelectsNoPod,
    PeerSelectsNothing,
    NamedPortUndeclared,
    PortNotDeclared,
    NoDns,
    OverlappingExcept,
    IgnoredRules,
    HostNetworkSelected,
    NotEnforced,
    ProxyPortConflict,
    NoPods,
}

impl Check {
    pub fn as_str(self) -> &'static str {
        match self {
            Check::Invalid => "invalid",
            Check::UnknownField => "unknown-field",
            Check::SelectsNoPod => "selects-no-pod",
            Check::PeerSelectsNothing => "peer-selects-nothing",
            Check::NamedPortUndeclared => "named-port-undeclared",
            Check::PortNotDeclared => "port-not-declared",
            Check::NoDns => "no-dns",
            Check::OverlappingExcept => "overlapping-except",
            Check::IgnoredRules => "ignored-rules",
            Check::HostNetworkSelected => "host-network-selected",
            Check::NotEnforced => "not-enforced",
            Check::ProxyPortConflict => "proxy-port-conflict",
            Check::NoPods => "no-pods",
        }
    }
}

/// One thing lint found: how bad, which check, which object and field, and what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub check: Check,
    /// None for problems that are not about one object (a file that is not YAML).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<ObjectRef>,
    /// JSON path, e.g. `spec.ingress[0].from[1]`; empty for the whole object.
    pub field: String,
    pub message: String,
}

impl Finding {
    fn new(severity: Severity, check: Check, object: &ObjectRef, field: &str, msg: String) -> Self {
        Finding {
            severity,
            check,
            object: Some(object.clone()),
            field: field.to_string(),
            message: msg,
        }
    }

    /// An object the engine or the API server rejects.
    pub fn invalid(e: &ObjectError) -> Self {
        Finding {
            severity: Severity::Error,
            check: Check::Invalid,
            object: Some((*e.object).clone()),
            field: e.field.clone(),
            message: e.message.clone(),
        }
    }

    /// A problem known only as text (unreadable file, not YAML).
    pub fn invalid_text(message: String) -> Self {
        Finding {
            severity: Severity::Error,
            check: Check::Invalid,
            object: None,
            field: String::new(),
            message,
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.severity)?;
        if let Some(o) = &self.object {
            write!(f, ": {o}")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {} [{}]", self.message, self.check.as_str())
    }
}

// ---------------------------------------------------------------------------------------------
// Unknown fields

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Head {
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    metadata: Option<HeadMeta>,
}

#[derive(Deserialize, Default)]
struct HeadMeta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
}

#[derive(Deserialize)]
struct ListItems {
    items: Option<Vec<Value>>,
}

/// Every field of every object in `text` that its Kubernetes type does not know, as the API
/// server's strict field validation reports them (`kubectl apply --validate=strict`, the default
/// since 1.27). Objects of kinds this check does not know are not looked at; malformed text is
/// left to the loader, which reports it.
pub fn unknown_fields(text: &str, source: &str) -> Vec<Finding> {
    let mut out = Vec::new();
    let Ok(documents) = split_documents(text) else {
        return out;
    };
    let many = documents.len() > 1;
    for (i, doc) in documents.iter().enumerate() {
        let here = if many {
            format!("{source}, document {}", i + 1)
        } else {
            source.to_string()
        };
        unknown_in_document(doc, &here, &mut out);
    }
    out
}

fn unknown_in_document(doc: &Document<'_>, source: &str, out: &mut Vec<Finding>) {
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
    for field in fields {
        let leaf = field.rsplit('.').next().unwrap_or(&field).to_string();
        let hint = typo_hint(&leaf);
        out.push(Finding::new(
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

fn edit_distance(a: &str, b: &str) -> usize {
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

// ---------------------------------------------------------------------------------------------
// Meaning: valid objects that probably do not do what their author meant

/// Checks a whole input. `declared_namespaces` are the namespaces whose Namespace object was in
/// the input: only their labels are known (others exist by implication, labels unknown).
pub fn check_cluster(cluster: &Cluster, declared_namespaces: &BTreeSet<String>) -> Vec<Finding> {
    let index = ClusterIndex::new(&cluster.namespaces, &cluster.pods);
    let have_pods = !cluster.pods.is_empty();
    let mut out = Vec::new();
    let mut valid = Vec::new();
    for sp in &cluster.policies {
        let Ok(policy) = validate_policy(&sp.policy, sp.source.as_deref()) else {
            continue; // compile reports it
        };
        let object = policy_ref(&policy, sp.source.as_deref());
        ignored_rules(&sp.policy, &object, &mut out);
        valid.push((policy, object));
    }
    for (policy, object) in &valid {
        not_enforced(cluster, declared_namespaces, policy, object, &mut out);
        for direction in [Direction::Ingress, Direction::Egress] {
            for (i, rule) in policy.rules(direction).iter().enumerate() {
                let field = match direction {
                    Direction::Ingress => format!("spec.ingress[{i}]"),
                    Direction::Egress => format!("spec.egress[{i}]"),
                };
                overlapping_except(rule, direction, &field, object, &mut out);
                if have_pods {
                    let ctx = RuleCtx {
                        index: &index,
                        policy,
                        object,
                        direction,
                        field: &field,
                    };
                    ctx.check_rule(rule, &mut out);
                }
            }
        }
        if have_pods {
            selection(&index, policy, object, &mut out);
        }
    }
    if have_pods {
        no_dns_per_pod(&index, &valid, &mut out);
        proxy_ports(cluster, &mut out);
    } else {
        no_dns_without_pods(&valid, &mut out);
        if !valid.is_empty() {
            out.push(Finding {
                severity: Severity::Note,
                check: Check::NoPods,
                object: None,
                field: String::new(),
                message: "no pods in the input: the checks that need pods (selects-no-pod, \
                          peer-selects-nothing, ports) were skipped; add the pods, e.g. \
                          `kubectl get ns,pods,netpol -A -o yaml | portcullis lint -f -`"
                    .into(),
            });
        }
    }
    out
}

fn policy_ref(policy: &ValidPolicy, source: Option<&str>) -> ObjectRef {
    ObjectRef {
        kind: "NetworkPolicy".into(),
        namespace: Some(policy.namespace.clone()),
        name: policy.name.clone(),
        source: source.map(str::to_string),
    }
}

/// Rules of a direction that explicit `policyTypes` leaves out are ignored by every
/// implementation.
fn ignored_rules(np: &NetworkPolicy, object: &ObjectRef, out: &mut Vec<Finding>) {
    let Some(spec) = &np.spec else { return };
    let Some(types) = spec.policy_types.as_deref().filter(|t| !t.is_empty()) else {
        return;
    };
    let lists = [
        (
            "Ingress",
            "spec.ingress",
            spec.ingress.as_ref().map_or(0, Vec::len),
        ),
        (
            "Egress",
            "spec.egress",
            spec.egress.as_ref().map_or(0, Vec::len),
        ),
    ];
    for (kind, field, n) in lists {
        if n > 0 && !types.iter().any(|t| t == kind) {
            out.push(Finding::new(
                Severity::Warning,
                Check::IgnoredRules,
                object,
                field,
                format!(
                    "{n} rule(s) are ignored: policyTypes does not list {kind}; add {kind} to \
                     policyTypes or remove the rules"
                ),
            ));
        }
    }
}

fn not_enforced(
    cluster: &Cluster,
    declared: &BTreeSet<String>,
    policy: &ValidPolicy,
    object: &ObjectRef,
    out: &mut Vec<Finding>,
) {
    let Some(ns) = cluster.namespaces.get(&policy.namespace) else {
        return;
    };
    let (key, value) = INJECT_LABEL;
    if declared.contains(&ns.name) && ns.labels.get(key).map(String::as_str) != Some(value) {
        out.push(Finding::new(
            Severity::Warning,
            Check::NotEnforced,
            object,
            "metadata.namespace",
            format!(
                "namespace {} is not labelled {key}={value}: its pods get no Portcullis proxy, \
                 so Portcullis does not enforce this policy (label the namespace, then restart \
                 its pods)",
                ns.name
            ),
        ));
    }
}

fn selection(
    index: &ClusterIndex<'_>,
    policy: &ValidPolicy,
    object: &ObjectRef,
    out: &mut Vec<Finding>,
) {
    let in_namespace = index.pods_in(&policy.namespace).count();
    let live = index
        .selected_pods(policy)
        .filter(|(_, p)| !p.terminated)
        .count();
    if live == 0 {
        out.push(Finding::new(
            Severity::Warning,
            Check::SelectsNoPod,
            object,
            "spec.podSelector",
            format!(
                "selects no running pod ({in_namespace} pod(s) of namespace {} in the input): \
                 check the labels and the namespace",
                policy.namespace
            ),
        ));
    }
    let host: Vec<String> = index
        .pods_in(&policy.namespace)
        .filter(|(_, p)| p.host_network && policy.pod_selector.matches(&p.labels))
        .map(|(_, p)| p.key())
        .collect();
    if !host.is_empty() {
        out.push(Finding::new(
            Severity::Warning,
            Check::HostNetworkSelected,
            object,
            "spec.podSelector",
            format!(
                "matches hostNetwork pod(s) {}: they share the node's network and get no proxy, \
                 so this policy does not apply to them",
                host.join(", ")
            ),
        ));
    }
}

fn overlapping_except(
    rule: &Rule,
    direction: Direction,
    field: &str,
    object: &ObjectRef,
    out: &mut Vec<Finding>,
) {
    let peers_name = peers_name(direction);
    for (j, peer) in rule.peers.iter().flatten().enumerate() {
        let Peer::Block { except, .. } = peer else {
            continue;
        };
        for (a, na) in except.iter().enumerate() {
            if let Some((b, nb)) = except[..a]
                .iter()
                .enumerate()
                .find(|(_, nb)| overlaps(na, nb))
            {
                out.push(Finding::new(
                    Severity::Warning,
                    Check::OverlappingExcept,
                    object,
                    &format!("{field}.{peers_name}[{j}].ipBlock.except[{a}]"),
                    format!(
                        "{na} overlaps except[{b}] ({nb}): one of them is redundant, or a \
                         prefix length is wrong"
                    ),
                ));
            }
        }
    }
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(b) || b.contains(a)
}

fn peers_name(direction: Direction) -> &'static str {
    match direction {
        Direction::Ingress => "from",
        Direction::Egress => "to",
    }
}

/// Everything a rule check needs to name what it found.
struct RuleCtx<'a, 'i> {
    index: &'a ClusterIndex<'i>,
    policy: &'a ValidPolicy,
    object: &'a ObjectRef,
    direction: Direction,
    field: &'a str,
}

impl RuleCtx<'_, '_> {
    fn warn(&self, check: Check, field: String, message: String) -> Finding {
        Finding::new(Severity::Warning, check, self.object, &field, message)
    }

    fn check_rule(&self, rule: &Rule, out: &mut Vec<Finding>) {
        let peers_name = peers_name(self.direction);
        let mut peer_pods: Vec<&PodInfo> = Vec::new();
        let mut only_pod_peers = true;
        for (j, peer) in rule.peers.iter().flatten().enumerate() {
            match peer {
                Peer::Pods { namespaces, pods } => {
                    let (n_ns, chosen) = self.peer_pods(namespaces.as_ref(), pods.as_ref());
                    if chosen.is_empty() {
                        let why = if n_ns == 0 {
                            "no namespace in the input matches its namespaceSelector".to_string()
                        } else {
                            format!("no running pod matches it in {n_ns} namespace(s)")
                        };
                        out.push(self.warn(
                            Check::PeerSelectsNothing,
                            format!("{}.{peers_name}[{j}]", self.field),
                            format!("selects nothing: {why}; this peer allows no traffic"),
                        ));
                    }
                    peer_pods.extend(chosen);
                }
                Peer::Block { .. } => only_pod_peers = false,
            }
        }
        // The pods a connection allowed by this rule ends at.
        let destinations: Vec<&PodInfo> = match self.direction {
            Direction::Ingress => self
                .index
                .selected_pods(self.policy)
                .map(|(_, p)| p)
                .collect(),
            Direction::Egress if rule.peers.is_none() => {
                self.index.pods.iter().filter(|p| p.selectable()).collect()
            }
            Direction::Egress => peer_pods,
        };
        for (k, spec) in rule.ports.iter().flatten().enumerate() {
            let field = format!("{}.ports[{k}]", self.field);
            match spec {
                PortSpec::Named { name, protocol } => {
                    let declared = destinations
                        .iter()
                        .any(|p| p.named_port(name, *protocol).next().is_some());
                    if !declared {
                        out.push(self.warn(
                            Check::NamedPortUndeclared,
                            field,
                            format!(
                                "named port {name:?}/{protocol}: no destination pod declares a \
                                 containerPort with that name and protocol, so it matches nothing{}",
                                if only_pod_peers { "" } else { " (ipBlock peers never match a named port)" }
                            ),
                        ));
                    }
                }
                PortSpec::Numeric(range) if !is_all(range) => {
                    if let Some(f) = self.undeclared_port(&destinations, range, field) {
                        out.push(f);
                    }
                }
                PortSpec::Numeric(_) => {}
            }
        }
    }

    /// Pods a selector peer chooses, and how many namespaces it looked in.
    fn peer_pods(
        &self,
        namespaces: Option<&crate::selector::Selector>,
        pods: Option<&crate::selector::Selector>,
    ) -> (usize, Vec<&PodInfo>) {
        let chosen: Vec<&str> = match namespaces {
            None => vec![self.policy.namespace.as_str()],
            Some(sel) => self
                .index
                .namespaces
                .values()
                .filter(|ns| sel.matches(&ns.labels))
                .map(|ns| ns.name.as_str())
                .collect(),
        };
        let found = chosen
            .iter()
            .flat_map(|ns| self.index.pods_in(ns))
            .map(|(_, p)| p)
            .filter(|p| p.selectable() && pods.is_none_or(|s| s.matches(&p.labels)))
            .collect();
        (chosen.len(), found)
    }

    /// A numeric port that destination pods which declare their ports do not declare. Declaring
    /// ports is optional in Kubernetes, so this is only a hint.
    fn undeclared_port(
        &self,
        destinations: &[&PodInfo],
        range: &PortRange,
        field: String,
    ) -> Option<Finding> {
        let declaring: Vec<&&PodInfo> = destinations
            .iter()
            .filter(|p| !p.ports.is_empty())
            .collect();
        if declaring.is_empty() {
            return None;
        }
        let missing: Vec<String> = declaring
            .iter()
            .filter(|p| !p.ports.iter().any(|c| range.contains(c.protocol, c.port)))
            .map(|p| p.key())
            .collect();
        if missing.len() < declaring.len() {
            return None; // some destination serves it: a rule shared by several pods is normal
        }
        Some(self.warn(
            Check::PortNotDeclared,
            field,
            format!(
                "{range}: none of the destination pods ({}) declares a containerPort in it; \
                 declaring ports is optional, so check that they really listen there",
                missing.join(", ")
            ),
        ))
    }
}

fn is_all(range: &PortRange) -> bool {
    range.first == 0 && range.last == u16::MAX
}

/// How a set of egress rules treats DNS.
#[derive(Default, Clone, Copy)]
struct Dns {
    udp: bool,
    tcp: bool,
}

fn dns_of(rules: &[Rule], dns: &mut Dns) {
    for rule in rules {
        let Some(ports) = &rule.ports else {
            dns.udp = true;
            dns.tcp = true;
            continue;
        };
        for spec in ports {
            match spec {
                PortSpec::Numeric(r) => {
                    dns.udp |= r.contains(Protocol::Udp, 53);
                    dns.tcp |= r.contains(Protocol::Tcp, 53);
                }
                // A named port may well be `dns`/`dns-tcp` on the DNS pods: give it the benefit
                // of the doubt.
                PortSpec::Named { protocol, .. } => {
                    dns.udp |= *protocol == Protocol::Udp;
                    dns.tcp |= *protocol == Protocol::Tcp;
                }
            }
        }
    }
}

fn dns_message(dns: Dns, pods: &str) -> Option<String> {
    let missing = match (dns.udp, dns.tcp) {
        (true, true) => return None,
        (false, false) => "53/UDP and 53/TCP",
        (true, false) => "53/TCP (answers too long for UDP are retried over TCP)",
        (false, true) => "53/UDP",
    };
    Some(format!(
        "egress is isolated and no egress rule allows DNS {missing}{pods}: name lookups fail; \
         allow 53/UDP and 53/TCP to the DNS pods (usually namespace kube-system, \
         k8s-app=kube-dns)"
    ))
}

fn no_dns_per_pod(
    index: &ClusterIndex<'_>,
    valid: &[(ValidPolicy, ObjectRef)],
    out: &mut Vec<Finding>,
) {
    // Per pod: what every egress policy that selects it allows, together.
    let mut per_pod: BTreeMap<usize, Dns> = BTreeMap::new();
    for (policy, _) in valid.iter().filter(|(p, _)| p.isolates_egress) {
        for (i, _) in index.selected_pods(policy) {
            dns_of(&policy.egress, per_pod.entry(i).or_default());
        }
    }
    for (policy, object) in valid.iter().filter(|(p, _)| p.isolates_egress) {
        let mut by_gap: BTreeMap<(bool, bool), Vec<String>> = BTreeMap::new();
        for (i, pod) in index.selected_pods(policy) {
            let dns = per_pod.get(&i).copied().unwrap_or_default();
            let covered = dns.udp && dns.tcp;
            if !covered && !pod.terminated {
                by_gap
                    .entry((dns.udp, dns.tcp))
                    .or_default()
                    .push(pod.key());
            }
        }
        for ((udp, tcp), pods) in by_gap {
            let pods = format!(" for pod(s) {}", pods.join(", "));
            if let Some(msg) = dns_message(Dns { udp, tcp }, &pods) {
                out.push(Finding::new(
                    Severity::Warning,
                    Check::NoDns,
                    object,
                    "spec.egress",
                    msg,
                ));
            }
        }
    }
}

/// Without pods: a policy's own rules, plus those of egress policies of its namespace that
/// select every pod.
fn no_dns_without_pods(valid: &[(ValidPolicy, ObjectRef)], out: &mut Vec<Finding>) {
    for (policy, object) in valid.iter().filter(|(p, _)| p.isolates_egress) {
        let mut dns = Dns::default();
        dns_of(&policy.egress, &mut dns);
        for (other, _) in valid.iter().filter(|(o, _)| {
            o.isolates_egress
                && o.namespace == policy.namespace
                && o.pod_selector.selects_everything()
        }) {
            dns_of(&other.egress, &mut dns);
        }
        if let Some(msg) = dns_message(dns, "") {
            out.push(Finding::new(
                Severity::Warning,
                Check::NoDns,
                object,
                "spec.egress",
                msg,
            ));
        }
    }
}

/// Pods of opted-in namespaces that declare a port the proxy listens on.
fn proxy_ports(cluster: &Cluster, out: &mut Vec<Finding>) {
    let (key, value) = INJECT_LABEL;
    for pod in &cluster.pods {
        let injected = cluster
            .namespaces
            .get(&pod.namespace)
            .is_some_and(|ns| ns.labels.get(key).map(String::as_str) == Some(value));
        if !injected || pod.host_network {
            continue;
        }
        for c in pod.ports.iter().filter(|c| c.protocol == Protocol::Tcp) {
            if let Some((_, what)) = PROXY_PORTS.iter().find(|(p, _)| *p == c.port) {
                let object = ObjectRef {
                    kind: "Pod".into(),
                    namespace: Some(pod.namespace.clone()),
                    name: pod.name.clone(),
                    source: None,
                };
                out.push(Finding::new(
                    Severity::Warning,
                    Check::ProxyPortConflict,
                    &object,
                    "spec.containers[].ports",
                    format!(
                        "containerPort {}/TCP is the Portcullis proxy's {what} port in this \
                         opted-in namespace: the application cannot bind it next to the proxy",
                        c.port
                    ),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::load_into;

    fn lint(text: &str) -> Vec<Finding> {
        let mut cluster = Cluster::new();
        let report = load_into(&mut cluster, text, "t.yaml");
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        let declared = cluster.namespaces.keys().cloned().collect();
        cluster.ensure_implied_namespaces();
        let mut out = unknown_fields(text, "t.yaml");
        out.extend(check_cluster(&cluster, &declared));
        out
    }

    fn checks(findings: &[Finding]) -> Vec<(Check, String)> {
        findings
            .iter()
            .map(|f| (f.check, f.field.clone()))
            .collect()
    }

    const NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: app, labels: {portcullis.dev/inject: enabled}}\n---\n";

    fn pod(name: &str, labels: &str, ports: &str) -> String {
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: app, labels: {labels}}}\n\
             spec: {{containers: [{{name: c, image: i, ports: {ports}}}]}}\nstatus: {{podIP: 10.0.0.{}}}\n",
            name.len()
        )
    }

    #[test]
    fn ingres_typo_is_an_unknown_field_error_with_its_path() {
        let text = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: app}\n\
                    spec:\n  podSelector: {}\n  ingres:\n  - from: [{podSelector: {}}]\n";
        let found = unknown_fields(text, "typo.yaml");
        assert_eq!(found.len(), 1, "{found:?}");
        let f = &found[0];
        assert_eq!(
            (f.severity, f.check),
            (Severity::Error, Check::UnknownField)
        );
        assert_eq!(f.field, "spec.ingres");
        assert_eq!(
            f.object.as_ref().unwrap().to_string(),
            "NetworkPolicy app/web (in typo.yaml)"
        );
        assert!(
            f.message.contains("did you mean \"ingress\""),
            "{}",
            f.message
        );
    }

    #[test]
    fn unknown_fields_deep_in_lists_and_in_json_lists() {
        let text = r#"{"apiVersion":"v1","kind":"List","items":[
            {"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"p","namespace":"x"},
             "spec":{"podSelector":{},"egress":[{"to":[{"ipBlock":{"cidr":"10.0.0.0/8","exept":["10.1.0.0/16"]}}]}]}},
            {"apiVersion":"v1","kind":"Pod","metadata":{"name":"q","namespace":"x","lables":{"a":"b"}}}]}"#;
        let fields: Vec<String> = unknown_fields(text, "l.json")
            .into_iter()
            .map(|f| f.field)
            .collect();
        assert_eq!(
            fields,
            ["spec.egress[0].to[0].ipBlock.exept", "metadata.lables"]
        );
    }

    #[test]
    fn known_fields_of_every_kind_are_clean_and_yaml_booleans_do_not_matter() {
        let text = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d, labels: {on: off}}\nspec:\n  selector: {matchLabels: {a: b}}\n  template:\n    metadata: {labels: {a: b}}\n    spec:\n      containers: [{name: c, image: i, ports: [{containerPort: 80}]}]\n\
                    ---\napiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\nspec: {anything: 1}\n";
        assert_eq!(unknown_fields(text, "d.yaml"), vec![]);
        let typo = text.replace("containers:", "container:");
        assert_eq!(
            unknown_fields(&typo, "d.yaml")[0].field,
            "spec.template.spec.container"
        );
    }

    #[test]
    fn selection_peers_and_ports() {
        let text = format!(
            "{NS}apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: app}}\n\
             spec:\n  podSelector: {{matchLabels: {{app: web}}}}\n  ingress:\n  - from: [{{podSelector: {{matchLabels: {{app: nobody}}}}}}, {{podSelector: {{}}}}]\n    ports: [{{port: http}}, {{port: grpc}}, {{port: 8080}}, {{port: 80}}]\n\
             ---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: none, namespace: app}}\nspec: {{podSelector: {{matchLabels: {{app: ghost}}}}}}\n{}{}",
            pod("web", "{app: web}", "[{name: http, containerPort: 80}]"),
            pod("client", "{app: client}", "[]"),
        );
        let found = lint(&text);
        assert_eq!(
            checks(&found),
            vec![
                (Check::PeerSelectsNothing, "spec.ingress[0].from[0]".into()),
                (
                    Check::NamedPortUndeclared,
                    "spec.ingress[0].ports[1]".into()
                ),
                (Check::PortNotDeclared, "spec.ingress[0].ports[2]".into()),
                (Check::SelectsNoPod, "spec.podSelector".into()),
            ],
            "{found:#?}"
        );
        assert!(
            found[2].message.contains("optional"),
            "{}",
            found[2].message
        );
    }

    #[test]
    fn dns_is_judged_per_pod_over_every_policy() {
        let deny = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: app}\nspec: {podSelector: {}, policyTypes: [Egress]}\n";
        let udp_only = "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: dns, namespace: app}\nspec: {podSelector: {}, policyTypes: [Egress], egress: [{ports: [{port: 53, protocol: UDP}]}]}\n";
        let both = "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: dns, namespace: app}\nspec: {podSelector: {}, policyTypes: [Egress], egress: [{ports: [{port: 53, protocol: UDP}, {port: 53, protocol: TCP}]}]}\n";
        let web = pod("web", "{app: web}", "[]");
        let found = lint(&format!("{NS}{deny}{web}"));
        assert_eq!(checks(&found), vec![(Check::NoDns, "spec.egress".into())]);
        assert!(
            found[0]
                .message
                .contains("53/UDP and 53/TCP for pod(s) app/web"),
            "{}",
            found[0].message
        );
        let found = lint(&format!("{NS}{deny}{udp_only}{web}"));
        assert!(
            found
                .iter()
                .all(|f| f.check == Check::NoDns && f.message.contains("DNS 53/TCP")),
            "{found:#?}"
        );
        assert_eq!(lint(&format!("{NS}{deny}{both}{web}")), vec![]);
        // Without pods, a namespace-wide DNS policy still counts.
        assert_eq!(
            checks(&lint(&format!("{NS}{deny}{both}"))),
            vec![(Check::NoPods, String::new())]
        );
    }

    #[test]
    fn except_overlaps_ignored_rules_host_network_and_enforcement() {
        let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: app}\n---\n\
            apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: app}\n\
            spec:\n  podSelector: {}\n  policyTypes: [Ingress]\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16, 10.1.2.0/24, 10.2.0.0/16]}}]}]\n  egress: [{}]\n\
            ---\napiVersion: v1\nkind: Pod\nmetadata: {name: node-agent, namespace: app}\nspec: {hostNetwork: true, containers: [{name: c, image: i}]}\nstatus: {podIP: 172.18.0.2}\n\
            ---\napiVersion: v1\nkind: Pod\nmetadata: {name: app, namespace: app}\nspec: {containers: [{name: c, image: i}]}\nstatus: {podIP: 10.0.0.9}\n";
        let found = lint(text);
        assert_eq!(
            checks(&found),
            vec![
                (Check::IgnoredRules, "spec.egress".into()),
                (Check::NotEnforced, "metadata.namespace".into()),
                (
                    Check::OverlappingExcept,
                    "spec.ingress[0].from[0].ipBlock.except[1]".into()
                ),
                (Check::HostNetworkSelected, "spec.podSelector".into()),
            ],
            "{found:#?}"
        );
    }

    #[test]
    fn proxy_ports_in_opted_in_namespaces() {
        let found = lint(&format!(
            "{NS}{}",
            pod("admin", "{a: b}", "[{containerPort: 4191}]")
        ));
        assert_eq!(
            checks(&found),
            vec![(Check::ProxyPortConflict, "spec.containers[].ports".into())]
        );
    }
}
