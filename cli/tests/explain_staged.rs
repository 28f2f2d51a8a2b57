//! `portcullis explain`, `matrix` and `lint` show staged policies (`portcullis.dev/staged`)
//! beside the enforced verdict, never as enforced.

use std::path::PathBuf;
use std::process::Command;

const MANIFEST: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop, labels: {app: client}}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: shop, labels: {app: db}}
spec: {containers: [{name: c, ports: [{containerPort: 5432}]}]}
status: {podIP: 10.0.0.2}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: default-deny
  namespace: shop
  annotations: {portcullis.dev/staged: "true"}
spec: {podSelector: {matchLabels: {app: db}}}
"#;

fn manifest() -> String {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("explain-staged");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("cluster.yaml");
    std::fs::write(&path, MANIFEST).unwrap();
    path.to_str().unwrap().to_string()
}

fn portcullis(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .output()
        .expect("run portcullis");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn explain_shows_the_staged_verdict_beside_the_enforced_one() {
    let path = manifest();
    let args = |output| {
        portcullis(&[
            "explain",
            "-f",
            &path,
            "--from",
            "shop/client",
            "--to",
            "shop/db",
            "--port",
            "5432/TCP",
            "-o",
            output,
            "--color",
            "never",
        ])
    };
    let text = args("text");
    assert!(text.contains(": ALLOWED"), "{text}");
    assert!(
        text.contains("with the staged policies: DENIED (not enforced)"),
        "{text}"
    );
    assert!(
        text.contains("would_deny: staged (shop/default-deny): denied"),
        "{text}"
    );
    let json: serde_json::Value = serde_json::from_str(&args("json")).expect("JSON");
    assert_eq!(json["allowed"], true);
    assert_eq!(json["staged_allowed"], false);
    assert_eq!(json["ingress_staged"]["staged_by"][0], "shop/default-deny");
    assert!(json.get("egress_staged").is_none());
}

#[test]
fn matrix_marks_the_cells_a_staged_policy_would_change_and_lint_names_it() {
    let path = manifest();
    let grid = portcullis(&["matrix", "-f", &path, "--color", "never"]);
    assert!(
        grid.contains("staged: x allowed, a staged policy would deny"),
        "{grid}"
    );
    let row = grid
        .lines()
        .find(|l| l.starts_with("shop/client"))
        .unwrap_or_else(|| panic!("{grid}"));
    assert!(row.split_whitespace().any(|c| c == "x"), "{row}");
    let json: serde_json::Value =
        serde_json::from_str(&portcullis(&["matrix", "-f", &path, "-o", "json"])).unwrap();
    let cell = json["probes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["from"] == "shop/client" && p["to"] == "shop/db")
        .unwrap();
    assert_eq!(cell["allowed"], true);
    assert_eq!(cell["staged"]["allowed"], false);
    assert_eq!(cell["staged"]["staged_by"][0], "shop/default-deny");
    let lint = portcullis(&["lint", "-f", &path]);
    assert!(lint.contains("PC026"), "{lint}");
}
