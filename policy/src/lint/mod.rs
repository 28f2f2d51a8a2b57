//! Lint: what the API server would reject although the policy engine reads it (unknown fields,
//! as under strict field validation), and what is valid but probably not what the author meant
//! (a policy that selects no pod, a peer that selects nothing, a port nobody serves, no DNS...).
//!
//! Pure: manifest text and a [`Cluster`] in, [`Finding`]s out. Parsing for the engine is not
//! touched: unknown fields are found by decoding each object a second time into the same typed
//! k8s-openapi object through `serde_ignored`, which reports every key the type does not know,
//! with its path.
//!
//! Layout: the finding types here; `unknown.rs` (fields the API server would reject),
//! `policies.rs` (what a policy selects and whom it names), `rules.rs` (each rule's peers and
//! ports), `dns.rs` (egress that leaves pods without DNS), `proxy_ports.rs` (application ports
//! that collide with the proxy's), `cnp.rs` (ClusterNetworkPolicies: validation and the tier
//! warnings, and `v1alpha1` AdminNetworkPolicies).

use std::fmt;

use serde::Serialize;

use crate::error::{ObjectError, ObjectRef};

mod cnp;
mod dns;
mod policies;
mod proxy_ports;
mod rules;
mod unknown;

pub use cnp::{check_cnps, cnp_documents, CnpDocuments};
pub use policies::check_cluster;
pub(crate) use unknown::edit_distance;
pub use unknown::unknown_fields;

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

/// Which check found something; stable names for CI filters (`-o json`), and stable codes
/// (`PC0xx`, documented in docs/cli.md, "Lint codes"): a code is never reused for another check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Check {
    /// Not YAML/JSON, or an object the API server would reject.
    Invalid,
    UnknownField,
    /// Unknown fields of objects read back from an API server (a newer one): ignored, one warning.
    NewerServerField,
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
    /// A ClusterNetworkPolicy the CRD's schema or CEL rules reject.
    CnpInvalid,
    CnpShadowedRule,
    CnpEqualPriority,
    CnpBaselinePass,
    /// A `domainNames` peer where Portcullis does not enforce it (outside an Admin-tier egress
    /// `Accept` rule): the rule fails closed.
    CnpNotEnforced,

    /// A `v1alpha1` AdminNetworkPolicy or BaselineAdminNetworkPolicy: not read.
    AnpV1alpha1NotRead,
    /// A policy annotated `portcullis.dev/staged: "true"`: evaluated, not enforced.
    Staged,
}

impl Check {
    pub fn as_str(self) -> &'static str {
        match self {
            Check::Invalid => "invalid",
            Check::UnknownField => "unknown-field",
            Check::NewerServerField => "newer-server-field",
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
            Check::CnpInvalid => "cnp-invalid",
            Check::CnpShadowedRule => "cnp-shadowed-rule",
            Check::CnpEqualPriority => "cnp-equal-priority",
            Check::CnpBaselinePass => "cnp-baseline-pass",
            Check::CnpNotEnforced => "cnp-not-enforced",

            Check::AnpV1alpha1NotRead => "anp-v1alpha1-not-read",
            Check::Staged => "staged",
        }
    }

    /// The stable code: `PC00x` for what the API server or the engine rejects, `PC01x`-`PC02x`
    /// for what probably does not mean what was meant.
    pub fn code(self) -> &'static str {
        match self {
            Check::Invalid => "PC001",
            Check::UnknownField => "PC002",
            Check::NewerServerField => "PC003",
            Check::SelectsNoPod => "PC010",
            Check::PeerSelectsNothing => "PC011",
            Check::NamedPortUndeclared => "PC012",
            Check::PortNotDeclared => "PC013",
            Check::NoDns => "PC014",
            Check::OverlappingExcept => "PC015",
            Check::IgnoredRules => "PC016",
            Check::HostNetworkSelected => "PC017",
            Check::NotEnforced => "PC018",
            Check::ProxyPortConflict => "PC019",
            Check::NoPods => "PC020",
            Check::CnpInvalid => "PC004",
            Check::CnpShadowedRule => "PC021",
            Check::CnpEqualPriority => "PC022",
            Check::CnpBaselinePass => "PC023",
            Check::CnpNotEnforced => "PC024",

            Check::AnpV1alpha1NotRead => "PC025",
            Check::Staged => "PC026",
        }
    }

    /// Every check, in code order (for documentation and its test).
    pub const ALL: [Check; 21] = [
        Check::Invalid,
        Check::UnknownField,
        Check::NewerServerField,
        Check::CnpInvalid,
        Check::SelectsNoPod,
        Check::PeerSelectsNothing,
        Check::NamedPortUndeclared,
        Check::PortNotDeclared,
        Check::NoDns,
        Check::OverlappingExcept,
        Check::IgnoredRules,
        Check::HostNetworkSelected,
        Check::NotEnforced,
        Check::ProxyPortConflict,
        Check::NoPods,
        Check::CnpShadowedRule,
        Check::CnpEqualPriority,
        Check::CnpBaselinePass,
        Check::CnpNotEnforced,
        Check::AnpV1alpha1NotRead,
        Check::Staged,
    ];
}

/// One thing lint found: how bad, which check, which object and field, and what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// The check's stable code, e.g. `PC002` (always `check.code()`).
    pub code: &'static str,
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
            code: check.code(),
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
            code: Check::Invalid.code(),
            check: Check::Invalid,
            object: Some((*e.object).clone()),
            field: e.field.clone(),
            message: e.message.clone(),
        }
    }

    /// A staged policy (`portcullis.dev/staged: "true"`): said, at note level, so that nobody
    /// takes it for enforced.
    pub(crate) fn staged(object: &ObjectRef) -> Self {
        Finding::new(
            Severity::Note,
            Check::Staged,
            object,
            "metadata.annotations",
            "staged (portcullis.dev/staged: \"true\"): evaluated but NOT enforced; proxies log \
             connection_would_deny / connection_would_allow where it would change a verdict. \
             Remove the annotation to enforce it."
                .into(),
        )
    }

    /// A problem known only as text (unreadable file, not YAML).
    pub fn invalid_text(message: String) -> Self {
        Finding {
            severity: Severity::Error,
            code: Check::Invalid.code(),
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
        write!(
            f,
            ": {} [{}] ({})",
            self.message,
            self.check.as_str(),
            self.code
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::load_into;
    use crate::Cluster;

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
    fn objects_read_back_from_a_server_are_lenient_but_policies_stay_strict() {
        // `kubectl get pods,netpol -o yaml` against a newer API server.
        let text = "apiVersion: v1\nkind: List\nitems:\n\
            - apiVersion: v1\n  kind: Pod\n  metadata: {name: a, namespace: x, uid: u1, resourceVersion: \"7\"}\n  spec: {containers: [{name: c, image: i}], newSchedulingThing: 1}\n  status: {podIP: 10.0.0.1, newStatus: 2}\n\
            - apiVersion: v1\n  kind: Pod\n  metadata: {name: b, namespace: x, uid: u2}\n  spec: {containers: [{name: c, image: i}], newSchedulingThing: 1}\n\
            - apiVersion: networking.k8s.io/v1\n  kind: NetworkPolicy\n  metadata: {name: p, namespace: x, uid: u3}\n  spec: {podSelector: {}, newRuleKind: []}\n";
        let found = unknown_fields(text, "get.yaml");
        let summary: Vec<(Severity, Check, &str)> = found
            .iter()
            .map(|f| (f.severity, f.check, f.field.as_str()))
            .collect();
        assert_eq!(
            summary,
            [
                (Severity::Error, Check::UnknownField, "spec.newRuleKind"),
                (
                    Severity::Warning,
                    Check::NewerServerField,
                    "spec.newSchedulingThing"
                ),
            ]
        );
        assert!(
            found[1].message.starts_with("3 field(s) in 2 object(s)"),
            "{}",
            found[1].message
        );
        // The same Pod written by a user (no uid, no resourceVersion) is strict.
        let mine = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nspec: {containers: [{name: c, image: i}], newSchedulingThing: 1}\n";
        assert_eq!(
            unknown_fields(mine, "mine.yaml")[0].check,
            Check::UnknownField
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
    fn every_check_has_its_own_code_and_a_doc_entry() {
        let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/cli.md"))
            .expect("docs/cli.md");
        let mut codes = std::collections::BTreeSet::new();
        for check in Check::ALL {
            assert!(codes.insert(check.code()), "{} reused", check.code());
            // `-o json` spells the check as the table does.
            assert_eq!(serde_json::to_value(check).unwrap(), check.as_str());
            let row = format!("| `{}` | `{}` |", check.code(), check.as_str());
            assert!(docs.contains(&row), "docs/cli.md lacks {row}");
        }
    }

    #[test]
    fn staged_policies_are_reported_as_notes() {
        let found = lint(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: deny-all\n  \
             namespace: app\n  annotations: {portcullis.dev/staged: \"true\"}\nspec: {podSelector: {}}\n\
             ---\napiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\n\
             metadata:\n  name: guard\n  annotations: {portcullis.dev/staged: \"true\"}\n\
             spec:\n  tier: Admin\n  priority: 1\n  subject: {namespaces: {}}\n  ingress:\n  \
             - {action: Deny, from: [{namespaces: {}}]}\n",
        );
        let staged: Vec<(&str, Severity)> = found
            .iter()
            .filter(|f| f.check == Check::Staged)
            .map(|f| (f.object.as_ref().unwrap().name.as_str(), f.severity))
            .collect();
        assert_eq!(
            staged,
            [("guard", Severity::Note), ("deny-all", Severity::Note)]
        );
        assert!(found
            .iter()
            .any(|f| f.code == "PC026" && f.message.contains("NOT enforced")));
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
