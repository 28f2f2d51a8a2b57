//! `portcullis explain` and `matrix` name the ClusterNetworkPolicy tier, policy, rule and action
//! that decided: an Admin `Deny` overriding a NetworkPolicy allow, and an Admin `Pass` handing
//! the decision to NetworkPolicy v1.

use std::path::PathBuf;
use std::process::Command;

const MANIFEST: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: tenant-a, labels: {tenant: a}}
---
apiVersion: v1
kind: Namespace
metadata: {name: vault, labels: {tier: sensitive}}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: tenant-a, labels: {app: client}}
status: {podIP: 10.0.0.1, hostIP: 192.168.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: tenant-a, labels: {app: web}}
spec: {containers: [{name: c, ports: [{containerPort: 80}]}]}
status: {podIP: 10.0.0.3, hostIP: 192.168.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: vault, labels: {app: db}}
spec: {containers: [{name: c, ports: [{containerPort: 5432}]}]}
status: {podIP: 10.0.0.2, hostIP: 192.168.0.1}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all-namespaces, namespace: vault}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {}}], ports: [{port: 5432}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-client, namespace: tenant-a}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}], ports: [{port: 80}]}]
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: deny-sensitive}
spec:
  tier: Admin
  priority: 10
  subject: {namespaces: {matchLabels: {tier: sensitive}}}
  ingress:
  - name: deny-tenants
    action: Deny
    from: [{namespaces: {matchLabels: {tenant: a}}}]
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: tenants-decide}
spec:
  tier: Admin
  priority: 20
  subject: {namespaces: {matchLabels: {tenant: a}}}
  ingress:
  - name: delegate
    action: Pass
    from: [{namespaces: {}}]
"#;

fn manifest() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("explain-cnp");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("cluster.yaml");
    std::fs::write(&path, MANIFEST).unwrap();
    path
}

fn portcullis(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .output()
        .expect("run portcullis");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn explain(to: &str, port: &str, output: &str) -> String {
    let path = manifest();
    let path = path.to_str().unwrap();
    portcullis(&[
        "explain",
        "-f",
        path,
        "--from",
        "tenant-a/client",
        "--to",
        to,
        "--port",
        port,
        "-o",
        output,
        "--color",
        "never",
    ])
}

#[test]
fn an_admin_deny_overrides_a_network_policy_allow_and_explain_names_it() {
    let text = explain("vault/db", "5432/TCP", "text");
    assert!(text.contains("DENIED"), "{text}");
    assert!(
        text.contains(
            "denied by Admin-tier ClusterNetworkPolicy deny-sensitive, ingress rule deny-tenants (Deny)"
        ),
        "{text}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&explain("vault/db", "5432/TCP", "json")).expect("explain JSON");
    let reason = &json["ingress"]["reason"];
    assert_eq!(reason["kind"], "tier", "{json}");
    assert_eq!(reason["tier"], "Admin");
    assert_eq!(reason["policy"], "deny-sensitive");
    assert_eq!(reason["rule"], "deny-tenants");
    assert_eq!(reason["action"], "Deny");
    assert_eq!(json["allowed"], false);
}

#[test]
fn an_admin_pass_hands_the_decision_to_network_policy_and_explain_says_so() {
    let text = explain("tenant-a/web", "80/TCP", "text");
    assert!(text.contains("ALLOWED"), "{text}");
    assert!(
        text.contains("allowed by NetworkPolicy tenant-a/web-from-client, ingress rule #0"),
        "{text}"
    );
    assert!(
        text.contains("Admin-tier ClusterNetworkPolicy tenants-decide, ingress rule delegate passed it on (Pass)"),
        "{text}"
    );
    // Not a port the NetworkPolicy allows: v1 denies after the Pass.
    let text = explain("tenant-a/web", "81/TCP", "text");
    assert!(text.contains("DENIED"), "{text}");
    assert!(
        text.contains("isolated for ingress by tenant-a/web-from-client"),
        "{text}"
    );
    // Egress: nothing selects the client for egress.
    assert!(text.contains("no policy: allowed"), "{text}");
}

#[test]
fn matrix_names_the_deciding_cluster_network_policy() {
    let path = manifest();
    let out = portcullis(&[
        "matrix",
        "-f",
        path.to_str().unwrap(),
        "-o",
        "json",
        "--probe",
        "5432/TCP",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("matrix JSON");
    let cell = v["probes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["from"] == "tenant-a/client" && p["to"] == "vault/db")
        .expect("client -> db");
    assert_eq!(cell["allowed"], false);
    let reason = cell["reason"].as_str().unwrap();
    assert!(
        reason.contains(
            "Admin-tier ClusterNetworkPolicy deny-sensitive, ingress rule deny-tenants (Deny)"
        ),
        "{reason}"
    );
}
