//! `portcullis advise` and the pictures, as a user runs them on the kangaroo example: flow
//! records from proxy logs in, policies out, and the engine's view of the result.

use std::path::PathBuf;

mod support;
use support::portcullis;

const CLUSTER: [&str; 6] = [
    "-f",
    "manifests/examples/kangaroo/namespaces.yaml",
    "-f",
    "manifests/examples/kangaroo/pods.yaml",
    "-f",
    "manifests/examples/kangaroo/services.yaml",
];
const FLOWS: &str = "cli/tests/advise/kangaroo-flows.log";

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("portcullis-advise-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn advise(extra: &[&str]) -> (String, String, bool) {
    let mut args = vec!["advise"];
    args.extend(CLUSTER);
    args.extend(["--flows", FLOWS]);
    args.extend(extra);
    let out = portcullis(&args);
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.success(),
    )
}

#[test]
fn advise_writes_proven_policies_from_proxy_logs() {
    let (yaml, report, ok) = advise(&[]);
    assert!(ok, "{report}");
    let docs: Vec<serde_json::Value> = yaml
        .split("\n---\n")
        .map(|d| serde_saphyr::from_str(d).expect("each document is YAML"))
        .collect();
    let names: Vec<String> = docs
        .iter()
        .map(|d| {
            format!(
                "{}/{}",
                d["metadata"]["namespace"].as_str().unwrap_or("?"),
                d["metadata"]["name"].as_str().unwrap_or("?")
            )
        })
        .collect();
    assert_eq!(
        names,
        // Pods that wrote flow records; the peers that did not (api, prometheus) keep theirs.
        [
            "kangaroo/kangaroo-backend-advised",
            "kangaroo/kangaroo-worker-advised",
            "storefront/web-advised"
        ],
        "{report}"
    );
    assert!(docs
        .iter()
        .all(|d| d["kind"] == "NetworkPolicy" && d["apiVersion"] == "networking.k8s.io/v1"));
    assert!(report.contains("proof: the engine allows all"), "{report}");
    assert!(report.contains("no cluster DNS in the objects"), "{report}");
    assert!(report.contains("seen once (1)"), "{report}");
    let backend = docs
        .iter()
        .find(|d| d["spec"]["podSelector"]["matchLabels"]["role"] == "backend")
        .expect("a policy for the backend");
    let from_web = backend["spec"]["ingress"]
        .as_array()
        .expect("ingress rules")
        .iter()
        .find(|r| r["from"][0]["podSelector"]["matchLabels"]["app"] == "web")
        .expect("the web pods may reach the backend");
    assert_eq!(
        from_web["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "storefront"
    );
    assert_eq!(
        from_web["ports"][0]["port"], "http",
        "by the backend's port name"
    );
}

#[test]
fn the_advised_policies_allow_what_was_seen_and_refuse_the_rest() {
    let dir = scratch("matrix");
    let (yaml, report, ok) = advise(&["--staged"]);
    assert!(ok, "{report}");
    assert_eq!(yaml.matches("portcullis.dev/staged").count(), 3, "{yaml}");
    let advised = dir.join("advised.yaml");
    std::fs::write(
        &advised,
        yaml.replace("portcullis.dev/staged", "example.com/was-staged"),
    )
    .expect("write");
    let mut args = vec!["matrix"];
    args.extend(CLUSTER);
    args.extend([
        "-f",
        advised.to_str().expect("path"),
        "-o",
        "json",
        "--probe",
        "80/TCP,81/TCP,443/TCP",
    ]);
    let out = portcullis(&args);
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).expect("matrix JSON");
    let allowed = |from: &str, to: &str, port: u64| {
        m["probes"]
            .as_array()
            .expect("probes")
            .iter()
            .find(|p| p["from"] == from && p["to"] == to && p["port"] == port)
            .map(|p| p["allowed"] == true)
            .unwrap_or_else(|| panic!("no cell {from} {to} {port}"))
    };
    assert!(allowed("storefront/web", "kangaroo/backend", 80));
    assert!(allowed(
        "monitoring-system/prometheus",
        "kangaroo/backend",
        81
    ));
    assert!(allowed("kangaroo/worker", "membership/api", 443));
    assert!(
        !allowed("kangaroo/worker", "kangaroo/backend", 80),
        "never seen: refused"
    );
    assert!(
        !allowed("storefront/web", "kangaroo/backend", 81),
        "never seen: refused"
    );
    assert!(
        !allowed("monitoring-system/prometheus", "kangaroo/backend", 80),
        "never seen: refused"
    );
    assert!(
        !allowed("kangaroo/worker", "storefront/web", 80),
        "never seen: refused"
    );
    assert!(
        allowed("monitoring-system/prometheus", "membership/api", 443),
        "no advised policy on either side"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn logs_without_flow_records_are_an_error_that_says_what_to_check() {
    let mut args = vec!["advise"];
    args.extend(CLUSTER);
    args.extend(["--flows", "manifests/examples/kangaroo/pods.yaml"]);
    let out = portcullis(&args);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no flow_summary line in manifests/examples/kangaroo/pods.yaml"),
        "{err}"
    );
}

fn parses_as_xml_with_every_pod(text: &str) {
    assert!(
        text.contains("<svg") && text.trim_end().ends_with("</svg>") || text.contains("</html>")
    );
    for pod in ["backend", "worker", "web", "prometheus", "api", "db"] {
        assert!(text.contains(&format!(">{pod}</text>")), "{pod} drawn");
    }
    // Every element opened is closed: a crude well-formedness check without an XML crate.
    let svg = &text[text.find("<svg").expect("svg")..text.find("</svg>").expect("end") + 6];
    let opened = svg.matches("<path").count()
        + svg.matches("<circle").count()
        + svg.matches("<text").count();
    let closed = svg.matches("</path>").count()
        + svg.matches("</circle>").count()
        + svg.matches("</text>").count()
        + svg.matches("/>").count();
    assert!(closed >= opened, "{opened} opened, {closed} closed");
}

#[test]
fn matrix_and_advise_draw_every_pod() {
    let mut args = vec!["matrix", "-f", "manifests/examples/kangaroo", "-o", "svg"];
    let out = portcullis(&args);
    assert!(out.status.success() || !out.stdout.is_empty());
    parses_as_xml_with_every_pod(&String::from_utf8_lossy(&out.stdout));
    args[4] = "html";
    let out = portcullis(&args);
    let html = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        html.starts_with("<!DOCTYPE html>") && html.contains("<td>storefront/web</td>"),
        "{html}"
    );
    let dir = scratch("draw");
    let picture = dir.join("advice.html");
    let (_, report, ok) = advise(&["--draw", picture.to_str().expect("path")]);
    assert!(ok, "{report}");
    let drawn = std::fs::read_to_string(&picture).expect("the picture is written");
    parses_as_xml_with_every_pod(&drawn);
    assert!(
        drawn.contains("observed") && drawn.contains("203.0.113.7"),
        "outside peers drawn"
    );
    std::fs::remove_dir_all(&dir).ok();
}
