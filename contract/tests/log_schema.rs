//! `docs/audit-log.md` documents the proxy's log schema; this test keeps its field tables and
//! the structs of `contract/src/log.rs` equal, so that a field added, renamed or removed on one
//! side only fails CI.

use std::collections::BTreeSet;
use std::net::IpAddr;

use portcullis_contract::log::{
    audit_event, AuditLine, Envelope, FlowDirection, FlowProtocol, FlowSummary, FlowVerdict,
    FlowsDropped, FLOWS_DROPPED, FLOW_SUMMARY, LOG_SCHEMA,
};
use serde::Serialize;

fn doc() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/audit-log.md");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The first cells of the table after `<!-- {marker} -->`, without backquotes.
fn table(doc: &str, marker: &str) -> Vec<String> {
    let tag = format!("<!-- {marker} -->");
    let start = doc
        .find(&tag)
        .unwrap_or_else(|| panic!("no `{tag}` in docs/audit-log.md"));
    doc[start + tag.len()..]
        .lines()
        .map(str::trim)
        .skip_while(|l| l.is_empty())
        .take_while(|l| l.starts_with('|'))
        .skip(2) // the header and its rule
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .next()
                .unwrap_or_default()
                .trim()
                .trim_matches('`')
                .to_string()
        })
        .collect()
}

/// The field names a value serializes to, every optional field set.
fn fields(value: impl Serialize) -> BTreeSet<String> {
    match serde_json::to_value(value).expect("serializes") {
        serde_json::Value::Object(m) => m.keys().cloned().collect(),
        other => panic!("not an object: {other}"),
    }
}

fn set(names: Vec<String>) -> BTreeSet<String> {
    let n = names.len();
    let s: BTreeSet<String> = names.into_iter().collect();
    assert_eq!(s.len(), n, "a field is listed twice");
    s
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn full_audit_line() -> AuditLine {
    let some = |s: &str| Some(s.to_string());
    AuditLine {
        event: audit_event::DENIED.into(),
        schema: LOG_SCHEMA,
        direction: FlowDirection::Egress,
        protocol: "TCP".into(),
        src_ip: ip("10.0.0.1"),
        src_port: 40000,
        dst_ip: ip("10.96.0.10"),
        dst_port: 80,
        pod: "x/a".into(),
        peer_namespace: some("y"),
        peer_pod: some("b"),
        isolated_by: vec!["x/deny".into()],
        tier: some("Admin"),
        policy: some("guard"),
        rule: some("#0"),
        action: some("Deny"),
        reason: "denied".into(),
        service: some("y/web"),
        service_port: Some(80),
        backend: some("10.0.0.2:8080"),
        endpoints_refused: vec!["10.0.0.2:8080 (y/b): denied".into()],
        staged_by: vec!["x/stage-deny".into()],
        policy_generation: 3,
        count: 1,
        aggregated: false,
        rate_limited: false,
    }
}

fn full_flow_summary() -> FlowSummary {
    FlowSummary {
        event: FLOW_SUMMARY.into(),
        schema: LOG_SCHEMA,
        pod_namespace: "x".into(),
        pod: "a".into(),
        direction: FlowDirection::Egress,
        protocol: FlowProtocol::Udp,
        peer_ip: ip("10.96.0.10"),
        peer_namespace: Some("kube-system".into()),
        peer_pod: Some("coredns-0".into()),
        port: 53,
        service: Some("kube-system/kube-dns".into()),
        verdict: FlowVerdict::Allowed,
        count: 2,
        first_seen: "2026-12-08T03:00:00Z".into(),
        last_seen: "2026-12-08T03:00:01Z".into(),
    }
}

#[test]
fn the_audit_table_lists_every_field_of_the_audit_line() {
    assert_eq!(
        set(table(&doc(), "fields: audit")),
        fields(full_audit_line())
    );
}

#[test]
fn the_audit_events_are_the_documented_ones() {
    assert_eq!(
        table(&doc(), "events: audit"),
        audit_event::ALL.map(String::from).to_vec()
    );
}

#[test]
fn the_flow_tables_list_every_field_of_the_flow_lines() {
    let doc = doc();
    assert_eq!(
        set(table(&doc, "fields: flow_summary")),
        fields(full_flow_summary())
    );
    let dropped = FlowsDropped {
        event: FLOWS_DROPPED.into(),
        schema: LOG_SCHEMA,
        pod_namespace: "x".into(),
        pod: "a".into(),
        dropped: 1,
    };
    assert_eq!(
        set(table(&doc, "fields: flow_records_dropped")),
        fields(dropped)
    );
}

#[test]
fn the_envelope_table_lists_the_envelope_fields() {
    let envelope = Envelope {
        timestamp: String::new(),
        level: String::new(),
        target: String::new(),
        line: serde_json::json!({}),
    };
    assert_eq!(set(table(&doc(), "fields: envelope")), fields(envelope));
}

/// The examples in the document are real lines: they read back as the contract's types.
#[test]
fn the_documented_examples_read_back() {
    let doc = doc();
    let examples: Vec<&str> = doc
        .lines()
        .filter(|l| l.starts_with("{\"timestamp\""))
        .collect();
    assert_eq!(
        examples.len(),
        2,
        "one audit example, one flow_summary example"
    );
    let audit: Envelope<AuditLine> = serde_json::from_str(examples[0]).expect("audit example");
    assert_eq!(audit.line.schema, LOG_SCHEMA);
    assert_eq!(audit.line.isolated_by.len(), 2);
    let flow: Envelope<FlowSummary> = serde_json::from_str(examples[1]).expect("flow example");
    assert_eq!(flow.line.event, FLOW_SUMMARY);
    assert_eq!(flow.line.count, 3);
}
