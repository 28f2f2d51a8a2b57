//! `portcullis lint`, and its warnings from `matrix` and `explain`, on real manifests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod support;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn portcullis(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .current_dir(repo())
        .output()
        .expect("run portcullis")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const TYPO: &str = "cli/tests/lint/ingres-typo.yaml";

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)))
}

/// (severity, check, object, field) of every finding.
fn summary(v: &serde_json::Value) -> Vec<(String, String, String, String)> {
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let o = &f["object"];
            (
                f["severity"].as_str().unwrap().to_string(),
                f["check"].as_str().unwrap().to_string(),
                format!(
                    "{} {}/{}",
                    o["kind"].as_str().unwrap_or(""),
                    o["namespace"].as_str().unwrap_or(""),
                    o["name"].as_str().unwrap_or("")
                ),
                f["field"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn row(sev: &str, check: &str, object: &str, field: &str) -> (String, String, String, String) {
    (sev.into(), check.into(), object.into(), field.into())
}

#[test]
fn the_ingres_typo_is_an_error_with_file_object_and_field() {
    let out = portcullis(&["lint", "-f", "manifests/examples/kangaroo", "-f", TYPO]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("error"))
        .unwrap_or_else(|| panic!("no error line in:\n{stdout}"));
    for part in [
        "unknown-field",
        "NetworkPolicy kangaroo/backend-from-worker (in cli/tests/lint/ingres-typo.yaml)",
        "spec.ingres",
        "did you mean \"ingress\"",
    ] {
        assert!(line.contains(part), "{part:?} not in {line:?}");
    }
    assert!(
        stdout.ends_with("1 error(s), 2 warning(s), 0 note(s)\n"),
        "{stdout}"
    );

    let out = portcullis(&[
        "lint",
        "-f",
        "manifests/examples/kangaroo",
        "-f",
        TYPO,
        "-o",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let v = json(&out);
    assert_eq!(v["errors"], 1);
    let rows = summary(&v);
    assert_eq!(
        rows[0],
        row(
            "error",
            "unknown-field",
            "NetworkPolicy kangaroo/backend-from-worker",
            "spec.ingres"
        )
    );
    // With the rule gone, the policy still selects the backend: nothing about it is flagged
    // but the typo, which is exactly why the typo must be an error.
    assert!(
        !rows[1..]
            .iter()
            .any(|r| r.2.contains("backend-from-worker")),
        "{rows:?}"
    );
}

#[test]
fn the_bundled_examples_have_no_errors_and_only_legitimate_warnings() {
    let out = portcullis(&[
        "lint",
        "-f",
        "manifests/examples/kangaroo",
        "-f",
        "manifests/examples/kangaroo-change",
        "-o",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    // The kangaroo namespace is under default deny for egress and only the backend has a DNS
    // rule: the worker cannot resolve names (the demo shows its denied lookup). The DNS rule's
    // peer (kube-system's kube-dns pods) is not in the example's manifests: the testbed adds the
    // cluster DNS itself. Nothing else is wrong.
    assert_eq!(
        summary(&json(&out)),
        vec![
            row(
                "warning",
                "peer-selects-nothing",
                "NetworkPolicy kangaroo/backend-dns",
                "spec.egress[0].to[0]"
            ),
            row(
                "warning",
                "no-dns",
                "NetworkPolicy kangaroo/default-deny",
                "spec.egress"
            ),
            row(
                "warning",
                "no-dns",
                "NetworkPolicy kangaroo/worker-to-backend",
                "spec.egress"
            ),
        ]
    );
}

#[test]
fn conformance_cases_have_no_unknown_fields() {
    // 50 cases from the upstream suite, each a model cluster plus policies: valid objects, so
    // lint finds no error in any of them (warnings, such as no DNS, are the cases' point).
    let dir = repo().join("policy/tests/conformance");
    let model = dir.join("model.yaml");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path().join("policy.yaml")))
        .filter(|p| p.is_file())
        .collect();
    cases.sort();
    assert!(cases.len() >= 40);
    for case in cases {
        let out = portcullis(&[
            "lint",
            "-f",
            model.to_str().unwrap(),
            "-f",
            case.to_str().unwrap(),
            "-o",
            "json",
        ]);
        assert_eq!(json(&out)["errors"], 0, "{case:?}: {}", text(&out.stdout));
        assert_eq!(out.status.code(), Some(0));
    }
}

#[test]
fn matrix_and_explain_print_the_same_findings_on_stderr_only() {
    let clean = portcullis(&["matrix", "-f", "manifests/examples/kangaroo", "-o", "json"]);
    let typo = portcullis(&[
        "matrix",
        "-f",
        "manifests/examples/kangaroo",
        "-f",
        TYPO,
        "-o",
        "json",
    ]);
    // stdout stays the matrix (the typo'd policy makes the backend deny-all for ingress, which
    // is what it would mean if the API server accepted it).
    let m: serde_json::Value = serde_json::from_slice(&typo.stdout).expect("matrix JSON");
    assert!(m["probes"].as_array().is_some_and(|p| !p.is_empty()));
    assert_ne!(clean.stdout, typo.stdout);
    let err = text(&typo.stderr);
    assert!(
        err.contains("error: NetworkPolicy kangaroo/backend-from-worker (in cli/tests/lint/ingres-typo.yaml): spec.ingres: unknown field"),
        "{err}"
    );
    assert!(err.contains("[no-dns]"), "{err}");
    assert_eq!(
        typo.status.code(),
        Some(1),
        "an unknown field fails the run"
    );
    assert_eq!(clean.status.code(), Some(0), "{}", text(&clean.stderr));
    assert!(text(&clean.stderr).contains("warning: NetworkPolicy kangaroo/default-deny"));

    let explain = portcullis(&[
        "explain",
        "-f",
        "manifests/examples/kangaroo",
        "-f",
        TYPO,
        "--from",
        "kangaroo/worker",
        "--to",
        "kangaroo/backend",
        "--port",
        "80/TCP",
    ]);
    assert_eq!(explain.status.code(), Some(1));
    assert!(text(&explain.stdout).starts_with("kangaroo/worker -> kangaroo/backend on 80/TCP"));
    assert!(text(&explain.stderr).contains("spec.ingres: unknown field"));
}

#[test]
fn lint_reads_standard_input_as_kubectl_pipes_it() {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["lint", "-f", "-", "-o", "json"])
        .current_dir(repo())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let typo = std::fs::read_to_string(repo().join(TYPO)).unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(typo.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v = json(&out);
    assert_eq!(v["findings"][0]["object"]["source"], "<stdin>");
    assert_eq!(v["findings"][0]["field"], "spec.ingres");
    // Only policies in the input: the checks that need pods say they were skipped.
    assert!(summary(&v).iter().any(|r| r.1 == "no-pods"), "{v}");
}

/// Every finding carries its stable code; `--failure-threshold` decides which fail the run.
#[test]
fn codes_and_failure_threshold() {
    let kangaroo = "manifests/examples/kangaroo";
    let out = portcullis(&["lint", "-f", kangaroo, "-o", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v = json(&out);
    let findings = v["findings"].as_array().unwrap();
    assert!(!findings.is_empty());
    assert!(findings
        .iter()
        .all(|f| f["code"].as_str().is_some_and(|c| c.starts_with("PC0"))));
    let docs = std::fs::read_to_string(repo().join("docs/cli.md")).unwrap();
    for f in findings {
        let code = f["code"].as_str().unwrap();
        assert!(
            docs.contains(&format!("`{code}`")),
            "{code} is not in docs/cli.md"
        );
    }
    for (threshold, code) in [("error", 0), ("warning", 1), ("info", 1)] {
        let out = portcullis(&["lint", "-f", kangaroo, "--failure-threshold", threshold]);
        assert_eq!(out.status.code(), Some(code), "{threshold}");
    }
    let yaml = portcullis(&["lint", "-f", kangaroo, "-o", "yaml"]);
    let from_yaml: serde_json::Value =
        serde_saphyr::from_str(&text(&yaml.stdout)).expect("lint YAML");
    assert_eq!(from_yaml, v);
}

/// `kubectl get -o yaml` from a newer API server: unknown fields of Pods are ignored with one
/// warning, and the run passes; an unknown field in a policy still fails it.
#[test]
fn objects_read_back_from_a_server_are_read_leniently() {
    let run =
        |input: &str| support::with_stdin(&repo(), &["matrix", "-f", "-", "-o", "json"], input);
    let pods = "apiVersion: v1\nkind: List\nitems:\n\
        - apiVersion: v1\n  kind: Pod\n  metadata: {name: a, namespace: x, uid: u1, resourceVersion: \"9\"}\n  spec: {containers: [{name: c, image: i, ports: [{containerPort: 80}]}], fieldFrom137: true}\n  status: {podIP: 10.0.0.1}\n\
        - apiVersion: v1\n  kind: Pod\n  metadata: {name: b, namespace: x, uid: u2, resourceVersion: \"9\"}\n  spec: {containers: [{name: c, image: i}], fieldFrom137: true}\n  status: {podIP: 10.0.0.2}\n";
    let out = run(pods);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.matches("newer-server-field").count(), 1, "{stderr}");
    let policy = "- apiVersion: networking.k8s.io/v1\n  kind: NetworkPolicy\n  metadata: {name: p, namespace: x, uid: u3, resourceVersion: \"9\"}\n  spec: {podSelector: {}, fieldFrom137: []}\n";
    let out = run(&format!("{pods}{policy}"));
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("unknown-field"));
}

#[test]
fn cluster_network_policies_every_error_and_the_tier_warnings() {
    let out = portcullis(&[
        "lint",
        "-f",
        "cli/tests/lint/cluster-network-policies.yaml",
        "-o",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let v = json(&out);
    let got = summary(&v);
    let cnp = |name: &str| format!("ClusterNetworkPolicy /{name}");
    for expected in [
        row("error", "cnp-invalid", &cnp("broken"), "spec.priority"),
        row(
            "error",
            "cnp-invalid",
            &cnp("broken"),
            "spec.ingress[0].action",
        ),
        row(
            "error",
            "cnp-invalid",
            &cnp("broken"),
            "spec.egress[0].protocols[0].tcp.destinationPort.range",
        ),
        row(
            "warning",
            "cnp-shadowed-rule",
            &cnp("guardrails"),
            "spec.egress[1]",
        ),
        row(
            "warning",
            "cnp-not-enforced",
            &cnp("guardrails"),
            "spec.egress[3]",
        ),
        row(
            "warning",
            "cnp-equal-priority",
            &cnp("monitoring"),
            "spec.priority",
        ),
        row(
            "warning",
            "cnp-baseline-pass",
            &cnp("default"),
            "spec.ingress[0].action",
        ),
        row(
            "warning",
            "anp-v1alpha1-not-read",
            "AdminNetworkPolicy /legacy",
            "apiVersion",
        ),
    ] {
        assert!(got.contains(&expected), "{expected:?} not in {got:#?}");
    }
    assert!(got.contains(&row(
        "warning",
        "cnp-equal-priority",
        &cnp("tenant-b"),
        "spec.priority"
    )));
    let messages: Vec<&str> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["message"].as_str().unwrap())
        .collect();
    let has = |needle: &str| {
        assert!(
            messages.iter().any(|m| m.contains(needle)),
            "{needle:?} not in {messages:#?}"
        )
    };
    has("guardrails and monitoring are both tier Admin, priority 10, and their subjects can overlap");
    has("Portcullis evaluates them by name (guardrails first)");
    // tenant-b's subject (tenant=no) cannot overlap guardrails' (tenant=yes); monitoring's can.
    has("monitoring and tenant-b are both tier Admin, priority 10");
    assert!(
        !messages
            .iter()
            .any(|m| m.contains("guardrails and tenant-b")),
        "{messages:#?}"
    );
    has("rule no-metadata-again never decides anything: rule no-metadata before it");
    has("domainNames peers are enforced only in Admin-tier Accept rules");
    has("this Admin Deny rule fails closed");
    has("v1alpha1 AdminNetworkPolicy is NOT read nor enforced by Portcullis");
    has("`tier: Admin`");
    // The table names the codes.
    let table = portcullis(&["lint", "-f", "cli/tests/lint/cluster-network-policies.yaml"]);
    let table = text(&table.stdout);
    for code in ["PC004", "PC021", "PC022", "PC023", "PC024", "PC025"] {
        assert!(table.contains(code), "{code} not in:\n{table}");
    }
}
