//! The `portcullis` binary as a user runs it.

use std::collections::BTreeMap;
use std::fs;
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

type Cells = BTreeMap<(String, String, u64, String), bool>;

fn cells(json: &str) -> Cells {
    let v: serde_json::Value = serde_json::from_str(json).expect("matrix JSON");
    v["probes"]
        .as_array()
        .expect("probes array")
        .iter()
        .map(|p| {
            (
                (
                    p["from"].as_str().unwrap().to_string(),
                    p["to"].as_str().unwrap().to_string(),
                    p["port"].as_u64().unwrap(),
                    p["protocol"].as_str().unwrap().to_string(),
                ),
                p["allowed"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[test]
fn conformance_fixtures_run_through_the_cli() {
    let dir = repo().join("policy/tests/conformance");
    let mut cases: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("expected.json").is_file())
        .collect();
    cases.sort();
    assert!(cases.len() >= 40);
    for case in cases {
        let out = portcullis(&[
            "matrix",
            "-f",
            dir.join("model.yaml").to_str().unwrap(),
            "-f",
            case.join("policy.yaml").to_str().unwrap(),
            "-o",
            "json",
        ]);
        assert!(out.status.success(), "{case:?}: {}", text(&out.stderr));
        let expected = fs::read_to_string(case.join("expected.json")).unwrap();
        assert_eq!(cells(&text(&out.stdout)), cells(&expected), "{case:?}");
    }
}

#[test]
fn json_output_has_exactly_the_documented_shape() {
    let out = portcullis(&[
        "matrix",
        "-f",
        "manifests/examples/kangaroo",
        "-o",
        "json",
        "--probe",
        "80/TCP",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let probes = v["probes"].as_array().unwrap();
    assert_eq!(probes.len(), 36, "6 pods x 6 pods x 1 probe");
    let cell = probes
        .iter()
        .find(|p| p["from"] == "kangaroo/worker" && p["to"] == "kangaroo/backend")
        .unwrap();
    assert_eq!(cell["port"], 80);
    assert_eq!(cell["protocol"], "TCP");
    assert_eq!(cell["allowed"], false);
    let web = probes
        .iter()
        .find(|p| p["from"] == "storefront/web" && p["to"] == "kangaroo/backend")
        .unwrap();
    assert_eq!(web["allowed"], true);
    assert!(web["reason"]
        .as_str()
        .unwrap()
        .contains("kangaroo/kangaroo-backend"));
}

#[test]
fn table_output_is_one_grid_per_probe() {
    let out = portcullis(&[
        "matrix",
        "-f",
        "manifests/examples/kangaroo",
        "--color",
        "never",
    ]);
    assert!(out.status.success());
    let stdout = text(&out.stdout);
    for probe in [
        "== 80/TCP ==",
        "== 81/TCP ==",
        "== 443/TCP ==",
        "== 9090/TCP ==",
    ] {
        assert!(stdout.contains(probe), "{stdout}");
    }
    let row = stdout
        .lines()
        .skip_while(|l| !l.starts_with("== 81/TCP"))
        .find(|l| l.starts_with("monitoring-system/prometheus"))
        .unwrap();
    // backend is the first column: prometheus may scrape 81.
    assert_eq!(row.split_whitespace().nth(1), Some("."), "{row}");
}

#[test]
fn explain_names_the_rule_or_the_isolating_policies() {
    let out = portcullis(&[
        "explain",
        "-f",
        "manifests/examples/kangaroo",
        "--from",
        "kangaroo/backend",
        "--to",
        "membership/api",
        "--port",
        "443/TCP",
        "--color",
        "never",
    ]);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("ALLOWED"), "{stdout}");
    assert!(
        stdout.contains("allowed by NetworkPolicy kangaroo/kangaroo-backend, egress rule #0"),
        "{stdout}"
    );

    let out = portcullis(&[
        "explain",
        "-f",
        "manifests/examples/kangaroo",
        "--from-ip",
        "203.0.113.9",
        "--to",
        "kangaroo/backend",
        "--port",
        "81",
        "--color",
        "never",
    ]);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("DENIED"), "{stdout}");
    assert!(
        stdout.contains("isolated for ingress by kangaroo/default-deny, kangaroo/kangaroo-backend"),
        "{stdout}"
    );
}

#[test]
fn invalid_objects_are_named_and_fail_the_run_but_the_rest_compiles() {
    let dir = tempdir("invalid");
    fs::write(
        dir.join("cluster.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nspec:\n  containers: [{name: c, ports: [{containerPort: 80}]}]\nstatus: {podIP: 10.0.0.1}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: x}\nstatus: {podIP: 10.0.0.2}\n---\n\
         apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bad-cidr, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/40}}]}]\n---\n\
         apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-b, namespace: x}\nspec:\n  podSelector: {matchLabels: {}}\n  policyTypes: [Ingress]\n",
    )
    .unwrap();
    let out = portcullis(&["matrix", "-f", dir.to_str().unwrap(), "-o", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("NetworkPolicy x/bad-cidr"), "{stderr}");
    assert!(
        stderr.contains("spec.ingress[0].from[0].ipBlock.cidr"),
        "{stderr}"
    );
    assert!(stderr.contains("cluster.yaml"), "{stderr}");
    // The valid policy still applies: b may not reach a.
    let cells = cells(&text(&out.stdout));
    assert!(!cells[&("x/b".into(), "x/a".into(), 80, "TCP".into())]);
}

#[test]
fn unreadable_and_malformed_files_are_reported() {
    let out = portcullis(&["matrix", "-f", "/nonexistent/portcullis.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("/nonexistent/portcullis.yaml: cannot read"));

    let dir = tempdir("syntax");
    let file = dir.join("broken.yaml");
    fs::write(&file, "apiVersion: v1\nkind: Pod\nmetadata: [unclosed\n").unwrap();
    let out = portcullis(&["matrix", "-f", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("broken.yaml"),
        "{}",
        text(&out.stderr)
    );

    let out = portcullis(&[
        "matrix",
        "-f",
        "manifests/examples/kangaroo",
        "--probe",
        "80/ICMP",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("ICMP"));
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("portcullis-cli-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// `kubectl get namespaces,pods,networkpolicies -A -o yaml | portcullis matrix -f -`: standard
/// input reads like a file, alone or beside files.
#[test]
fn manifests_can_come_from_standard_input() {
    let dir = repo().join("policy/tests/conformance");
    let model = dir.join("model.yaml");
    let case = fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("expected.json").is_file())
        .min()
        .expect("a case");
    let policy = case.join("policy.yaml");
    let from_files = portcullis(&[
        "matrix",
        "-f",
        model.to_str().unwrap(),
        "-f",
        policy.to_str().unwrap(),
        "-o",
        "json",
    ]);
    assert!(from_files.status.success(), "{}", text(&from_files.stderr));

    let from_stdin = with_stdin(
        &[
            "matrix",
            "-f",
            model.to_str().unwrap(),
            "-f",
            "-",
            "-o",
            "json",
        ],
        &fs::read_to_string(&policy).unwrap(),
    );
    assert!(from_stdin.status.success(), "{}", text(&from_stdin.stderr));
    assert_eq!(
        cells(&text(&from_stdin.stdout)),
        cells(&text(&from_files.stdout))
    );
    assert_eq!(
        cells(&text(&from_stdin.stdout)),
        cells(&fs::read_to_string(case.join("expected.json")).unwrap())
    );
}

fn explain_json(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["explain", "-f", "manifests/examples/kangaroo", "-o", "json"];
    all.extend_from_slice(args);
    let out = portcullis(&all);
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("explain JSON")
}

#[test]
fn a_service_is_judged_on_the_pods_behind_it() {
    // The reproduction: the ClusterIP of membership/api was "outside the cluster".
    let by_ip = explain_json(&[
        "--from",
        "kangaroo/backend",
        "--to-ip",
        "10.96.20.7",
        "--port",
        "443/TCP",
    ]);
    assert_eq!(by_ip["service"], "membership/api", "{by_ip}");
    assert_eq!(by_ip["allowed"], true, "{by_ip}");
    assert_eq!(by_ip["backends"][0]["pod"], "membership/api");

    // Partly allowed: the backend's egress reaches role=api, not role=db.
    let both = explain_json(&[
        "--from",
        "kangaroo/backend",
        "--to-service",
        "membership/membership",
        "--port",
        "443/TCP",
    ]);
    let verdicts: Vec<(String, bool)> = both["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["pod"].as_str().unwrap().to_string(),
                b["allowed"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        verdicts,
        vec![
            ("membership/api".to_string(), true),
            ("membership/db".to_string(), false)
        ]
    );

    // Under default deny: every backend refused, each with the isolating policies.
    let worker = explain_json(&[
        "--from",
        "kangaroo/worker",
        "--to-service",
        "membership/api",
        "--port",
        "443/TCP",
    ]);
    assert_eq!(worker["allowed"], false, "{worker}");
    assert_eq!(
        worker["backends"][0]["egress"]["reason"]["kind"],
        "no_rule_matched"
    );
}

#[test]
fn a_service_without_a_cluster_ip_or_port_is_a_clear_error() {
    let headless = portcullis(&[
        "explain",
        "-f",
        "manifests/examples/kangaroo",
        "--from",
        "storefront/web",
        "--to-service",
        "membership/db",
        "--port",
        "443/TCP",
    ]);
    assert!(!headless.status.success());
    assert!(
        text(&headless.stderr).contains("headless"),
        "{}",
        text(&headless.stderr)
    );
    let wrong_port = portcullis(&[
        "explain",
        "-f",
        "manifests/examples/kangaroo",
        "--from",
        "storefront/web",
        "--to-service",
        "kangaroo/backend",
        "--port",
        "8080/TCP",
    ]);
    assert!(!wrong_port.status.success());
    assert!(
        text(&wrong_port.stderr).contains("has no port 8080/TCP (it has 80/TCP, 81/TCP)"),
        "{}",
        text(&wrong_port.stderr)
    );
}

fn with_stdin(args: &[&str], input: &str) -> Output {
    support::with_stdin(&repo(), args, input)
}

/// The empty output of a failed `kubectl get ... | portcullis lint -f -` must fail a CI job, and
/// so must a directory without manifests.
#[test]
fn empty_input_is_an_error() {
    for command in ["lint", "matrix"] {
        let out = with_stdin(&[command, "-f", "-"], "");
        assert_eq!(out.status.code(), Some(1), "{command}");
        assert!(
            text(&out.stderr).contains("<stdin>: no Kubernetes objects")
                || text(&out.stdout).contains("<stdin>: no Kubernetes objects"),
            "{command}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
    let dir = tempdir("empty");
    fs::write(dir.join("README.md"), "not a manifest\n").unwrap();
    let out = portcullis(&["matrix", "-f", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no Kubernetes objects"),
        "{}",
        text(&out.stderr)
    );
    // An empty List read from a cluster holds no object either.
    let out = with_stdin(
        &["lint", "-f", "-"],
        "apiVersion: v1\nkind: List\nitems: []\n",
    );
    assert_eq!(out.status.code(), Some(1));
}

/// A plural or misspelt kind is refused by name, and every error of a policy is shown at once.
#[test]
fn look_alike_kinds_and_every_validation_error_are_reported() {
    let out = with_stdin(
        &["lint", "-f", "-", "-o", "json"],
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicies\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {}}\n\
         ---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bad, namespace: x}\n\
         spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}], ports: [{port: 0}, {port: 80, protocol: tcp}]}]}\n",
    );
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("lint JSON");
    let errors: Vec<&serde_json::Value> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["severity"] == "error")
        .collect();
    assert_eq!(errors.len(), 4, "{v:#}");
    let first = errors[0]["message"].as_str().unwrap();
    assert!(
        first.starts_with("NetworkPolicies x/deny (in <stdin>, document 1): kind: unknown kind")
            && first.contains("did you mean \"NetworkPolicy\""),
        "{first}"
    );
    let fields: Vec<(&str, &str)> = errors[1..]
        .iter()
        .map(|f| {
            (
                f["object"]["name"].as_str().unwrap_or(""),
                f["field"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        fields,
        [
            ("bad", "spec.ingress[0].from[0].ipBlock.cidr"),
            ("bad", "spec.ingress[0].ports[0].port"),
            ("bad", "spec.ingress[0].ports[1].protocol"),
        ],
        "{v:#}"
    );
    assert!(errors.iter().all(|f| f["code"] == "PC001"), "{v:#}");
}

/// No flag value makes the command line panic: each is refused with a message, or works.
#[test]
fn odd_flag_values_never_panic() {
    let kangaroo = "manifests/examples/kangaroo";
    let cases: &[&[&str]] = &[
        &["matrix", "-f", kangaroo, "--probe", "0/TCP"],
        &["matrix", "-f", kangaroo, "--probe", "99999/TCP"],
        &["matrix", "-f", kangaroo, "--probe", ""],
        &["matrix", "-f", kangaroo, "--probe", ",,,"],
        &["matrix", "-f", kangaroo, "--probe", "80/tcp/x"],
        &["matrix", "-f", kangaroo, "-o", "yaml", "--color", "always"],
        &["matrix", "-f", kangaroo, "-n", ""],
        &["matrix", "-f", kangaroo, "-n", "no-such-namespace"],
        &["matrix", "-f", "", "-f", "-"],
        &[
            "explain", "-f", kangaroo, "--from", "/", "--to", "//", "--port", "-1",
        ],
        &[
            "explain",
            "-f",
            kangaroo,
            "--from",
            "x",
            "--to-ip",
            "999.1.1.1",
        ],
        &["lint", "-f", kangaroo, "--failure-threshold", "bogus"],
        &[
            "lint",
            "-f",
            kangaroo,
            "-o",
            "yaml",
            "--failure-threshold",
            "info",
        ],
        &["check", "--timeout", "1e23"],
        &["check", "--timeout", "18446744073709551616s", "--pre"],
        &["check", "--request-timeout", "-1s"],
        &["completion", "nonsense"],
        &["testbed", "--help"],
        &["--version"],
    ];
    for args in cases {
        let out = with_stdin(args, "");
        let stderr = text(&out.stderr);
        assert_ne!(out.status.code(), Some(101), "{args:?} panicked: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}
