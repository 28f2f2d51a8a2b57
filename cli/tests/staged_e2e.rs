//! Staged policies on real sockets (`docs/staged-policies.md`): the testbed's controller streams
//! each proxy its staged tables; a staged policy that would deny a flow writes exactly one
//! `connection_would_deny` line naming it while the flow still succeeds, and a staged allow
//! writes `connection_would_allow` for a flow that stays denied. Needs root.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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

/// Takes the testbed down when the test ends, however it ends.
struct Testbed(String);

impl Drop for Testbed {
    fn drop(&mut self) {
        let _ = portcullis(&["testbed", "down", "--name", &self.0]);
    }
}

/// The network namespace of `pod`, from `testbed up`'s listing.
fn netns_of(up: &str, pod: &str) -> String {
    let line = up
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{pod} ")))
        .unwrap_or_else(|| panic!("{pod} not in {up}"));
    let mut words = line.split_whitespace();
    words
        .by_ref()
        .find(|w| *w == "netns")
        .expect("a netns column");
    words.next().unwrap().to_string()
}

/// One TCP connection from inside `netns` to `ip:80`: the name the server answered with, or
/// `none`.
fn connect(netns: &str, ip: &str) -> String {
    let script = format!(
        "r=$(timeout 3 bash -c 'exec 3<>/dev/tcp/{ip}/80 && echo probe >&3 && head -n1 <&3' \
         2>/dev/null); echo \"${{r:-none}}\""
    );
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "bash", "-c", &script])
        .output()
        .expect("run bash");
    text(&out.stdout).trim().to_string()
}

/// The audit lines of `pod` whose event is `event`, parsed.
fn lines(name: &str, pod: &str, event: &str) -> Vec<serde_json::Value> {
    let logs = portcullis(&["testbed", "logs", "--name", name, pod]);
    text(&logs.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == event)
        .collect()
}

const CLUSTER: &str = "
apiVersion: v1
kind: Namespace
metadata:
  name: x
  labels: {portcullis.dev/inject: enabled}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: a}}
spec: {containers: [{name: c, image: i}]}
status: {podIP: 10.1.0.1, hostIP: 192.168.0.10}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {app: b}}
spec: {containers: [{name: c, image: i}]}
status: {podIP: 10.1.0.2, hostIP: 192.168.0.10}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: x, labels: {app: c}}
spec: {containers: [{name: c, image: i}]}
status: {podIP: 10.1.0.3, hostIP: 192.168.0.10}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-a, namespace: x}
spec:
  podSelector: {matchLabels: {app: b}}
  ingress: [{from: [{podSelector: {matchLabels: {app: a}}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: stage-deny
  namespace: x
  annotations: {portcullis.dev/staged: 'true'}
spec: {podSelector: {matchLabels: {app: c}}, policyTypes: [Ingress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: stage-allow-c
  namespace: x
  annotations: {portcullis.dev/staged: 'true'}
spec:
  podSelector: {matchLabels: {app: b}}
  ingress: [{from: [{podSelector: {matchLabels: {app: c}}}]}]
";

#[test]
fn staged_policies_are_logged_and_counted_never_enforced() {
    portcullis_netns::testing::require_root(
        "this test builds network namespaces and iptables rules",
    );
    portcullis_netns::testing::build_testbed_components(env!("CARGO"), &repo());
    let name = format!("sg{}", std::process::id());
    let dir = std::env::temp_dir().join(format!("pc-tb-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("cluster.yaml");
    std::fs::write(&file, CLUSTER).unwrap();
    let _guard = Testbed(name.clone());
    let up = portcullis(&[
        "testbed",
        "up",
        "--name",
        &name,
        "--probe",
        "80/TCP",
        "-f",
        file.to_str().unwrap(),
    ]);
    let listing = text(&up.stdout);
    assert!(
        up.status.success(),
        "up failed: {listing}{}",
        text(&up.stderr)
    );

    // a -> c: allowed (stage-deny is staged), and said once.
    assert_eq!(connect(&netns_of(&listing, "x/a"), "10.1.0.3"), "x/c");
    let would_deny = lines(&name, "x/c", "connection_would_deny");
    assert_eq!(would_deny.len(), 1, "{would_deny:?}");
    let line = &would_deny[0];
    assert_eq!(line["staged_by"][0], "x/stage-deny", "{line}");
    assert_eq!(line["src_ip"], "10.1.0.1", "{line}");
    assert!(
        line["isolated_by"]
            .as_array()
            .is_some_and(|a| a.iter().any(|p| p == "x/stage-deny")),
        "{line}"
    );
    assert!(lines(&name, "x/c", "connection_denied").is_empty());

    // c -> b: denied (allow-a is enforced), and stage-allow-c would allow it.
    assert_eq!(connect(&netns_of(&listing, "x/c"), "10.1.0.2"), "none");
    let would_allow = lines(&name, "x/b", "connection_would_allow");
    assert_eq!(would_allow.len(), 1, "{would_allow:?}");
    assert_eq!(would_allow[0]["staged_by"][0], "x/stage-allow-c");
    assert_eq!(lines(&name, "x/b", "connection_denied").len(), 1);
    // a -> b: allowed either way, nothing staged to say.
    assert_eq!(connect(&netns_of(&listing, "x/a"), "10.1.0.2"), "x/b");
    assert_eq!(lines(&name, "x/b", "connection_would_allow").len(), 1);
    assert!(lines(&name, "x/b", "connection_would_deny").is_empty());

    let metrics = portcullis(&["testbed", "metrics", "--name", &name, "x/c"]);
    let metrics = text(&metrics.stdout);
    let counted = metrics
        .lines()
        .find(|l| l.starts_with("portcullis_staged_verdicts_total{"))
        .unwrap_or_else(|| panic!("no staged count:\n{metrics}"));
    assert!(
        counted.contains("effect=\"would_deny\"")
            && counted.contains("policy=\"x/stage-deny\"")
            && counted.ends_with(" 1"),
        "{counted}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
