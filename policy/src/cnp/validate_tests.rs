use super::*;
use crate::cnp::types::parse;

const HEAD: &str = "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\n";

fn check(yaml: &str) -> Result<ValidCnp, Vec<CnpError>> {
    let cnp = parse(yaml).unwrap_or_else(|e| panic!("parse: {e}\n{yaml}"));
    validate(&cnp, Mode::Strict)
}

/// A valid policy with `spec` lines replaced: `extra` is appended under `spec:`.
fn with_spec(spec: &str) -> String {
    format!("{HEAD}metadata:\n  name: p\nspec:\n{spec}")
}

const SUBJECT: &str = "  tier: Admin\n  priority: 10\n  subject:\n    namespaces: {}\n";

fn egress(rule: &str) -> String {
    with_spec(&format!("{SUBJECT}  egress:\n  - {rule}\n"))
}

fn ingress(rule: &str) -> String {
    with_spec(&format!("{SUBJECT}  ingress:\n  - {rule}\n"))
}

fn fields(r: Result<ValidCnp, Vec<CnpError>>) -> Vec<String> {
    match r {
        Ok(_) => vec![],
        Err(errors) => errors.iter().map(|e| e.field().to_string()).collect(),
    }
}

// Upstream pkg/crdtest/testdata/valid/cluster-wide-deny.yaml
#[test]
fn upstream_valid_cluster_wide_deny() {
    let v = check(&format!(
        "{HEAD}metadata:\n  name: cluster-wide-deny\nspec:\n  tier: Admin\n  priority: 0\n  subject:\n    namespaces:\n      matchLabels:\n        kubernetes.io/metadata.name: sensitive-ns\n  ingress:\n    - action: Deny\n      name: select-all-deny-all\n      from:\n      - pods:\n          namespaceSelector:\n            matchLabels: {{}}\n          podSelector:\n            matchLabels: {{}}\n"
    ))
    .unwrap();
    assert_eq!(v.tier, Tier::Admin);
    assert_eq!(v.ingress[0].action, Action::Deny);
    assert_eq!(v.ingress[0].label(), "select-all-deny-all");
}

// Upstream pkg/crdtest/testdata/valid/deny-with-ports.yaml
#[test]
fn upstream_valid_deny_with_ports() {
    let v = check(&format!(
        "{HEAD}metadata:\n  name: deny-with-ports\nspec:\n  tier: Admin\n  priority: 0\n  subject:\n    namespaces:\n      matchLabels:\n        kubernetes.io/metadata.name: sensitive-ns\n  ingress:\n    - action: Deny\n      name: select-all-deny-all\n      from:\n      - pods:\n          namespaceSelector:\n            matchLabels: {{}}\n          podSelector:\n            matchLabels: {{}}\n      protocols:\n        - tcp:\n            destinationPort:\n              number: 8080\n        - tcp:\n            destinationPort:\n              range:\n                start: 8080\n                end: 9090\n        - udp:\n            destinationPort:\n              number: 8080\n        - udp:\n            destinationPort:\n              number: 9090\n        - destinationNamedPort: http\n        - destinationNamedPort: monitoring\n"
    ))
    .unwrap();
    let p = v.ingress[0].protocols.as_ref().unwrap();
    assert_eq!(p.len(), 6);
    assert_eq!(
        p[1],
        PortMatch::Numeric(PortRange {
            protocol: Protocol::Tcp,
            first: 8080,
            last: 9090
        })
    );
    assert_eq!(p[4], PortMatch::Named("http".into()));
}

// Upstream pkg/crdtest/testdata/invalid/invalid-ingress-action.yaml: rejected. Its peer also
// carries `namespaces.namespaceSelector`, an unknown field of a label selector, which strict
// parsing rejects before the action is looked at; without it the action is the error.
#[test]
fn upstream_invalid_ingress_action() {
    let upstream = format!(
        "{HEAD}metadata:\n  name: invalid-ingress-action\nspec:\n  tier: Admin\n  priority: 10\n  subject:\n    namespaces:\n      matchLabels:\n        kubernetes.io/metadata.name: sensitive-ns\n  ingress:\n    - action: Invalid\n      from:\n      - namespaces:\n         namespaceSelector: {{}}\n      name: select-all-deny-all\n"
    );
    assert!(parse(&upstream).is_err());
    let pruned = upstream
        .replace("         namespaceSelector: {}\n", "")
        .replace("      - namespaces:\n", "      - namespaces: {}\n");
    let errors = check(&pruned).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(
        errors[0].to_string(),
        "ClusterNetworkPolicy invalid-ingress-action: spec.ingress[0].action: Unsupported value \"Invalid\": supported values: \"Accept\", \"Deny\", \"Pass\""
    );
}

#[test]
fn tier_is_admin_or_baseline() {
    assert_eq!(
        fields(check(&with_spec(
            "  tier: Developer\n  priority: 1\n  subject: {namespaces: {}}\n"
        ))),
        ["spec.tier"]
    );
    let b = check(&with_spec(
        "  tier: Baseline\n  priority: 1\n  subject: {namespaces: {}}\n",
    ));
    assert_eq!(b.unwrap().tier, Tier::Baseline);
}

#[test]
fn priority_is_0_to_1000() {
    for (p, ok) in [(0, true), (1000, true), (1001, false), (-1, false)] {
        let r = check(&with_spec(&format!(
            "  tier: Admin\n  priority: {p}\n  subject: {{namespaces: {{}}}}\n"
        )));
        assert_eq!(r.is_ok(), ok, "{p}: {r:?}");
    }
}

#[test]
fn subject_has_exactly_one_field() {
    let none = check(&with_spec("  tier: Admin\n  priority: 1\n  subject: {}\n"));
    assert!(matches!(
        &none.unwrap_err()[0],
        CnpError::ExactlyOne { found: 0, .. }
    ));
    let two = check(&with_spec(
        "  tier: Admin\n  priority: 1\n  subject:\n    namespaces: {}\n    pods: {podSelector: {}}\n",
    ));
    assert_eq!(fields(two), ["spec.subject"]);
    let pods = check(&with_spec(
        "  tier: Admin\n  priority: 1\n  subject:\n    pods: {namespaceSelector: {}}\n",
    ));
    assert_eq!(fields(pods), ["spec.subject.pods.podSelector"]);
}

#[test]
fn at_most_25_rules_peers_and_protocols() {
    let rule = "{action: Deny, to: [{namespaces: {}}]}";
    let rules = vec![format!("  - {rule}"); 26].join("\n");
    let r = check(&with_spec(&format!("{SUBJECT}  egress:\n{rules}\n")));
    assert!(matches!(
        &r.unwrap_err()[0],
        CnpError::TooMany {
            found: 26,
            max: 25,
            ..
        }
    ));
    let peers = vec!["{namespaces: {}}"; 26].join(", ");
    let r = check(&ingress(&format!("{{action: Deny, from: [{peers}]}}")));
    assert_eq!(fields(r), ["spec.ingress[0].from"]);
    let protos = vec!["{tcp: {destinationPort: {number: 1}}}"; 26].join(", ");
    let r = check(&ingress(&format!(
        "{{action: Deny, from: [{{namespaces: {{}}}}], protocols: [{protos}]}}"
    )));
    assert_eq!(fields(r), ["spec.ingress[0].protocols"]);
}

#[test]
fn rules_need_a_peer_and_a_known_action() {
    assert_eq!(
        fields(check(&egress("{action: Deny, to: []}"))),
        ["spec.egress[0].to"]
    );
    assert_eq!(
        fields(check(&ingress("{action: Deny}"))),
        ["spec.ingress[0].from"]
    );
    assert_eq!(
        fields(check(&egress("{action: Allow, to: [{namespaces: {}}]}"))),
        ["spec.egress[0].action"]
    );
    assert_eq!(
        fields(check(&egress(
            "{action: Deny, to: [{namespaces: {}}], protocols: []}"
        ))),
        ["spec.egress[0].protocols"]
    );
}

#[test]
fn rule_names_are_at_most_100_bytes() {
    let long = "n".repeat(101);
    let r = check(&egress(&format!(
        "{{name: {long}, action: Deny, to: [{{namespaces: {{}}}}]}}"
    )));
    assert_eq!(fields(r), ["spec.egress[0].name"]);
    let ok = "n".repeat(100);
    assert!(check(&egress(&format!(
        "{{name: {ok}, action: Deny, to: [{{namespaces: {{}}}}]}}"
    )))
    .is_ok());
}

#[test]
fn peers_have_exactly_one_field() {
    let r = check(&egress(
        "{action: Deny, to: [{namespaces: {}, networks: [10.0.0.0/8]}]}",
    ));
    assert_eq!(fields(r), ["spec.egress[0].to[0]"]);
    let r = check(&egress("{action: Deny, to: [{}]}"));
    assert_eq!(fields(r), ["spec.egress[0].to[0]"]);
}

#[test]
fn ingress_peers_know_only_namespaces_and_pods() {
    let r = check(&ingress("{action: Deny, from: [{networks: [10.0.0.0/8]}]}"));
    assert_eq!(fields(r), ["spec.ingress[0].from[0].networks"]);
}

#[test]
fn unknown_peer_types_are_errors_or_fail_closed() {
    let text = egress("{action: Deny, to: [{serviceAccounts: {name: x}}]}");
    let cnp = parse(&text).unwrap();
    let strict = validate(&cnp, Mode::Strict).unwrap_err();
    assert!(
        matches!(&strict[0], CnpError::UnknownField { field, .. } if field == "spec.egress[0].to[0].serviceAccounts")
    );
    let live = validate(&cnp, Mode::FromApiServer).unwrap();
    assert_eq!(live.egress[0].peers, [Peer::Unknown]);
    assert!(live.egress[0].fails_closed());
}

#[test]
fn protocols_have_exactly_one_field_and_a_port() {
    let r = check(&ingress(
        "{action: Deny, from: [{namespaces: {}}], protocols: [{tcp: {destinationPort: {number: 80}}, destinationNamedPort: web}]}",
    ));
    assert_eq!(fields(r), ["spec.ingress[0].protocols[0]"]);
    let r = check(&ingress(
        "{action: Deny, from: [{namespaces: {}}], protocols: [{tcp: {}}]}",
    ));
    assert_eq!(fields(r), ["spec.ingress[0].protocols[0].tcp"]);
    let r = check(&ingress(
        "{action: Deny, from: [{namespaces: {}}], protocols: [{udp: {destinationPort: {}}}]}",
    ));
    assert_eq!(
        fields(r),
        ["spec.ingress[0].protocols[0].udp.destinationPort"]
    );
    let r = check(&ingress(
        "{action: Deny, from: [{namespaces: {}}], protocols: [{sctp: {destinationPort: {number: 0}}}]}",
    ));
    assert_eq!(
        fields(r),
        ["spec.ingress[0].protocols[0].sctp.destinationPort.number"]
    );
}

#[test]
fn ranges_need_start_below_end() {
    let range = |s: i64, e: i64| {
        check(&ingress(&format!(
            "{{action: Deny, from: [{{namespaces: {{}}}}], protocols: [{{tcp: {{destinationPort: {{range: {{start: {s}, end: {e}}}}}}}}}]}}"
        )))
    };
    assert!(range(80, 81).is_ok());
    let e = range(81, 81).unwrap_err();
    assert!(
        e[0].to_string()
            .ends_with("Start port must be less than End port"),
        "{e:?}"
    );
    assert_eq!(
        fields(range(0, 81)),
        ["spec.ingress[0].protocols[0].tcp.destinationPort.range.start"]
    );
    assert_eq!(
        fields(range(1, 65536)),
        ["spec.ingress[0].protocols[0].tcp.destinationPort.range.end"]
    );
}

#[test]
fn named_ports_cannot_go_with_networks_nodes_or_domain_names() {
    for peer in [
        "{networks: [10.0.0.0/8]}",
        "{nodes: {}}",
        "{domainNames: [example.com]}",
    ] {
        let r = check(&egress(&format!(
            "{{action: Deny, to: [{{namespaces: {{}}}}, {peer}], protocols: [{{destinationNamedPort: web}}]}}"
        )));
        assert_eq!(fields(r), ["spec.egress[0]"], "{peer}");
    }
    let ok = check(&egress(
        "{action: Deny, to: [{pods: {podSelector: {}}}], protocols: [{destinationNamedPort: web}]}",
    ));
    assert!(ok.is_ok());
}

#[test]
fn networks_are_cidrs_in_a_set() {
    let r = check(&egress(
        "{action: Deny, to: [{networks: [10.0.0.0/8, 0.0.0.0/0, '::/0', 10.1.2.3/16]}]}",
    ));
    assert!(r.is_ok(), "{r:?}");
    for bad in ["10.0.0.0", "10.0.0.0/33", "::ffff:1.2.3.4/128", "example"] {
        let r = check(&egress(&format!(
            "{{action: Deny, to: [{{networks: ['{bad}']}}]}}"
        )));
        assert_eq!(fields(r), ["spec.egress[0].to[0].networks[0]"], "{bad}");
    }
    let r = check(&egress(
        "{action: Deny, to: [{networks: [10.0.0.0/8, 10.0.0.0/8]}]}",
    ));
    assert!(matches!(&r.unwrap_err()[0], CnpError::Duplicate { .. }));
    let r = check(&egress("{action: Deny, to: [{networks: []}]}"));
    assert_eq!(fields(r), ["spec.egress[0].to[0].networks"]);
    let long = format!("{}/128", "0000:".repeat(7) + "000000000");
    let r = check(&egress(&format!(
        "{{action: Deny, to: [{{networks: ['{long}']}}]}}"
    )));
    assert!(matches!(
        &r.unwrap_err()[0],
        CnpError::TooLong { max: 43, .. }
    ));
}

#[test]
fn domain_names_follow_the_crd_pattern() {
    for good in ["kubernetes.io", "*.kubernetes.io", "a.b.c.", "x_y.io"] {
        assert!(domain_name(good), "{good}");
    }
    for bad in [
        "kubernetes",
        "*kubernetes.io",
        "a.*.io",
        "-a.io",
        "a-.io",
        "",
    ] {
        assert!(!domain_name(bad), "{bad}");
    }
    let r = check(&egress(
        "{action: Accept, to: [{domainNames: ['*.example.com']}]}",
    ));
    assert!(matches!(
        &r.unwrap().egress[0].peers[0],
        Peer::DomainNames(_)
    ));
}

#[test]
fn selectors_must_be_evaluable() {
    let r = check(&egress(
        "{action: Deny, to: [{namespaces: {matchExpressions: [{key: a, operator: Like, values: [b]}]}}]}",
    ));
    assert_eq!(
        fields(r),
        ["spec.egress[0].to[0].namespaces.matchExpressions[0].operator"]
    );
}

#[test]
fn unknown_fields_are_parse_errors() {
    assert!(parse(&with_spec(
        "  tier: Admin\n  priority: 1\n  subject: {namespaces: {}}\n  ingres: []\n"
    ))
    .is_err());
    assert!(parse(&egress("{action: Deny, to: [{namespaces: {}}], ports: []}")).is_err());
}

#[test]
fn header_and_name() {
    let r = check(&with_spec(SUBJECT).replace("name: p", "name: Bad_Name"));
    assert_eq!(fields(r), ["metadata.name"]);
    let r = check(&with_spec(SUBJECT).replace("v1alpha2", "v1alpha1"));
    assert_eq!(fields(r), ["apiVersion"]);
}

#[test]
fn errors_convert_to_object_errors() {
    let e = check(&with_spec(
        "  tier: Admin\n  priority: 2000\n  subject: {namespaces: {}}\n",
    ))
    .unwrap_err();
    let o = e[0].to_object_error(Some("cnp.yaml"));
    assert_eq!(o.field, "spec.priority");
    assert_eq!(o.to_string(), "ClusterNetworkPolicy p (in cnp.yaml): spec.priority: Invalid value 2000: must be between 0 and 1000");
}
