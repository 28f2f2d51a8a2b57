//! Fuzz-like properties of the manifest reader: whatever the text, reading it (and compiling,
//! and linting it) never panics, and every error names where it came from and, for an object,
//! the object.

use portcullis_policy::lint::{check_cluster, unknown_fields};
use portcullis_policy::manifest::{load_into, LoadError};
use portcullis_policy::validate::with_every_policy_error;
use portcullis_policy::{compile, Cluster};
use proptest::prelude::*;

const SOURCE: &str = "fuzz.yaml";

fn kind() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("Namespace"),
        Just("Pod"),
        Just("NetworkPolicy"),
        Just("Service"),
        Just("EndpointSlice"),
        Just("NetworkPolicies"),
        Just("networkpolicy"),
        Just("Deployment"),
        Just("List"),
        Just(""),
    ]
    .prop_map(str::to_string)
}

fn api_version() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("v1"),
        Just("networking.k8s.io/v1"),
        Just("discovery.k8s.io/v1"),
        Just("apps/v1"),
        Just("extensions/v1beta1"),
        Just(""),
    ]
    .prop_map(str::to_string)
}

/// Bodies that are right for some kinds, wrong for others, or wrong for all.
fn body() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("spec: {podSelector: {}}\n".to_string()),
        Just("spec: {podSelector: {matchLabels: {a: b}}, policyTypes: [Ingres], ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}, {}], ports: [{port: 0}, {port: x_y}]}]}\n".to_string()),
        Just("spec: {ingress: 5}\n".to_string()),
        Just("spec: {podSelector: {matchExpressions: [{key: a, operator: Bogus}]}, egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/8]}}], ports: [{port: 80, endPort: 70}]}]}\n".to_string()),
        Just("spec: {containers: [{name: c, image: i, ports: [{containerPort: 99999}]}]}\nstatus: {podIP: 10.0.0.1}\n".to_string()),
        Just("status: {podIP: not-an-ip, podIPs: [{ip: ::1}]}\n".to_string()),
        Just("spec: {clusterIP: 10.96.0.1, ports: [{port: 80, targetPort: http}]}\n".to_string()),
        Just("addressType: IPv4\nendpoints: [{addresses: [1.2.3.4]}]\nports: [{port: 80}]\n".to_string()),
        Just("items: [{apiVersion: v1, kind: Pod, metadata: {name: i}}, 3, {kind: NetworkPolicies}]\n".to_string()),
        Just("items: 7\n".to_string()),
        Just("spec: [\n".to_string()),
        Just("\tnot: yaml: at: all\n".to_string()),
        "[ -~]{0,40}\n",
    ]
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), "[a-z][a-z0-9-]{0,8}", "[ -~]{1,12}"]
}

fn document() -> impl Strategy<Value = String> {
    (api_version(), kind(), name(), name(), body(), any::<bool>()).prop_map(
        |(api, kind, name, ns, body, json_like_meta)| {
            let meta = if json_like_meta {
                format!("metadata: {{name: {name:?}, namespace: {ns:?}, labels: {{a: b}}}}\n")
            } else {
                format!("metadata:\n  name: {name:?}\n")
            };
            format!("apiVersion: {api}\nkind: {kind}\n{meta}{body}")
        },
    )
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::collection::vec(document(), 0..5).prop_map(|docs| docs.join("---\n")),
        1 => "[ -~\n]{0,200}",
        1 => "\\{[ -~]{0,80}",
    ]
}

fn check(text: &str) {
    let mut cluster = Cluster::new();
    let report = load_into(&mut cluster, text, SOURCE);
    for e in &report.errors {
        let shown = e.to_string();
        assert!(shown.contains(SOURCE), "error without its source: {shown}");
        if let LoadError::Object(o) = e {
            assert!(
                shown.starts_with(&o.object.to_string()),
                "error not led by its object: {shown}"
            );
            assert!(
                !o.object.name.is_empty() || shown.contains("<unnamed>"),
                "object without a name in: {shown}"
            );
        }
    }
    let _ = unknown_fields(text, SOURCE);
    let declared = cluster.namespaces.keys().cloned().collect();
    cluster.ensure_implied_namespaces();
    let compiled = compile(&cluster);
    for e in with_every_policy_error(&cluster.policies, &compiled.errors) {
        assert!(e.to_string().starts_with(&e.object.to_string()));
    }
    let _ = check_cluster(&cluster, &declared);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn reading_any_text_never_panics_and_names_what_is_wrong(text in text()) {
        check(&text);
    }
}

#[test]
fn look_alike_kinds_are_errors_and_other_kinds_are_skipped() {
    let mut cluster = Cluster::new();
    let report = load_into(
        &mut cluster,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicies\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {}}\n\
         ---\napiVersion: v1\nkind: pod\nmetadata: {name: p}\n\
         ---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolciy\nmetadata: {name: typo}\n\
         ---\napiVersion: batch/v1\nkind: Job\nmetadata: {name: j}\n",
        SOURCE,
    );
    let shown: Vec<String> = report.errors.iter().map(ToString::to_string).collect();
    assert_eq!(shown.len(), 3, "{shown:#?}");
    assert!(
        shown[0].starts_with("NetworkPolicies x/deny (in fuzz.yaml, document 1): kind: unknown kind \"NetworkPolicies\" (did you mean \"NetworkPolicy\"?)"),
        "{}",
        shown[0]
    );
    assert!(shown[1].contains("did you mean \"Pod\""), "{}", shown[1]);
    assert!(
        shown[2].contains("did you mean \"NetworkPolicy\""),
        "{}",
        shown[2]
    );
    assert_eq!(report.ignored, ["Job j (fuzz.yaml, document 4)"]);
    assert_eq!(report.objects, 4);
    assert!(cluster.policies.is_empty());
}

#[test]
fn empty_text_and_empty_lists_hold_no_object() {
    for text in [
        "",
        "\n# only a comment\n---\n",
        "apiVersion: v1\nkind: List\nitems: []\n",
    ] {
        let report = load_into(&mut Cluster::new(), text, SOURCE);
        assert_eq!((report.objects, report.errors.len()), (0, 0), "{text:?}");
    }
}
