//! `portcullis check` against recorded API server responses (`tests/recorded/check/`, see its
//! README), served by a real HTTP/1.1 server on 127.0.0.1 that the binary reaches through a
//! kubeconfig, exactly as it would reach a cluster.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

fn recorded(scenario: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/recorded/check")
        .join(scenario)
}

type Seen = Arc<Mutex<Vec<(String, String)>>>;

/// Serves `dir`: `GET /a/b/c` answers `a_b_c.json`; a name under a recorded list answers that
/// item (as the API server's GET of one object); `POST .../selfsubjectaccessreviews` answers the
/// recorded review whose resourceAttributes are the request's. Anything else: 404 Status.
fn serve(dir: PathBuf) -> (u16, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let dir = dir.clone();
            let log = log.clone();
            std::thread::spawn(move || connection(stream, &dir, &log));
        }
    });
    (port, seen)
}

fn connection(stream: TcpStream, dir: &Path, log: &Seen) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0;
        loop {
            let mut header = String::new();
            reader.read_line(&mut header).unwrap();
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((k, v)) = header.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap();
                }
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let mut parts = request_line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("").to_string();
        let path = target.split('?').next().unwrap().to_string();
        log.lock().unwrap().push((method.clone(), path.clone()));
        let (code, reply) = answer(dir, &method, &path, &body);
        let text = reply.to_string();
        let reason = if code == 200 || code == 201 {
            "OK"
        } else {
            "Not Found"
        };
        write!(
            out,
            "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        )
        .unwrap();
    }
}

fn file(dir: &Path, path: &str) -> Option<Value> {
    let name = format!("{}.json", path.trim_matches('/').replace('/', "_"));
    let text = fs::read_to_string(dir.join(name)).ok()?;
    Some(serde_json::from_str(&text).expect("recorded JSON"))
}

fn answer(dir: &Path, method: &str, path: &str, body: &[u8]) -> (u16, Value) {
    if method == "POST" && path.ends_with("/selfsubjectaccessreviews") {
        let asked: Value = serde_json::from_slice(body).unwrap();
        let attrs = &asked["spec"]["resourceAttributes"];
        let key = |a: &Value| {
            ["verb", "group", "resource", "namespace"]
                .map(|k| a[k].as_str().unwrap_or("").to_string())
        };
        let reviews = file(dir, path).expect("recorded reviews");
        let found = reviews
            .as_array()
            .unwrap()
            .iter()
            .find(|r| key(&r["spec"]["resourceAttributes"]) == key(attrs));
        return match found {
            Some(r) => (201, r.clone()),
            None => not_found(path),
        };
    }
    if method != "GET" {
        return not_found(path);
    }
    if let Some(v) = file(dir, path) {
        return (200, v);
    }
    // One object of a recorded list.
    let (parent, name) = path.rsplit_once('/').unwrap();
    if let Some(list) = file(dir, parent) {
        let kind = list["kind"]
            .as_str()
            .unwrap()
            .trim_end_matches("List")
            .to_string();
        if let Some(item) = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["metadata"]["name"] == name)
        {
            let mut item = item.clone();
            item["kind"] = json!(kind);
            item["apiVersion"] = list["apiVersion"].clone();
            return (200, item);
        }
    }
    not_found(path)
}

fn not_found(path: &str) -> (u16, Value) {
    let name = path.rsplit('/').next().unwrap_or("");
    (
        404,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": format!("{name:?} not found"), "reason": "NotFound",
               "details": {"name": name}, "code": 404}),
    )
}

fn kubeconfig(port: u16, scenario: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "portcullis-check-{scenario}-{}-{port}.yaml",
        std::process::id()
    ));
    fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: recorded\n\
             clusters:\n- name: recorded\n  cluster:\n    server: http://127.0.0.1:{port}\n\
             users:\n- name: platform-dev\n  user:\n    token: recorded-token\n\
             contexts:\n- name: recorded\n  context:\n    cluster: recorded\n    user: platform-dev\n"
        ),
    )
    .unwrap();
    path
}

struct Run {
    out: Output,
    seen: Vec<(String, String)>,
}

fn check(scenario: &str, extra: &[&str]) -> Run {
    let (port, seen) = serve(recorded(scenario));
    let config = kubeconfig(port, scenario);
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("check")
        .arg("--kubeconfig")
        .arg(&config)
        .args(extra)
        .env_remove("KUBECONFIG")
        .output()
        .expect("run portcullis");
    let _ = fs::remove_file(config);
    let seen = seen.lock().unwrap().clone();
    Run { out, seen }
}

fn stdout(run: &Run) -> String {
    String::from_utf8_lossy(&run.out.stdout).into_owned()
}

/// `(status, message)` → hint, from `-o json`.
fn lines(run: &Run) -> BTreeMap<(String, String), String> {
    let v: Value =
        serde_json::from_slice(&run.out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(run)));
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                (
                    c["status"].as_str().unwrap().to_string(),
                    c["message"].as_str().unwrap().to_string(),
                ),
                c["hint"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn has(lines: &BTreeMap<(String, String), String>, status: &str, message: &str) -> String {
    lines
        .get(&(status.to_string(), message.to_string()))
        .unwrap_or_else(|| panic!("no {status} line {message:?} in {lines:#?}"))
        .clone()
}

#[test]
fn installed_cluster_reports_every_unprotected_pod_and_what_to_do() {
    let run = check("installed", &["-o", "json"]);
    assert_eq!(run.out.status.code(), Some(1), "{}", stdout(&run));
    let l = lines(&run);
    has(&l, "ok", "can reach the API server");
    has(&l, "ok", "Kubernetes v1.33.4 supports native sidecars");
    has(&l, "ok", "portcullis-controller is ready (2/2)");
    has(&l, "ok", "portcullis-injector is ready (2/2)");
    has(&l, "ok", "webhook inject.portcullis.dev has a CA bundle");
    has(
        &l,
        "ok",
        "webhook inject.portcullis.dev's CA bundle is the CA of Secret portcullis-injector-tls",
    );
    // redis-0 was running before shop was labelled.
    let hint = has(
        &l,
        "fail",
        "shop: redis-0 without a proxy (statefulset redis): nothing is enforced for them",
    );
    assert!(
        hint.starts_with("restart to inject: kubectl rollout restart statefulset/redis -n shop"),
        "{hint}"
    );
    let hint = has(
        &l,
        "warn",
        "shop/api-7f9b6c5d4-m2x8v runs proxy 0.0.9, the controller is 0.1.0",
    );
    assert!(
        hint.contains("kubectl rollout restart deployment/api -n shop"),
        "{hint}"
    );
    has(&l, "warn", "shop/cart-5b7d9c8f6-q4wnv is exempt: skip-outbound-ports=5432 (not redirected to the proxy)");
    has(
        &l,
        "warn",
        "shop/cart-5b7d9c8f6-q4wnv is exempt: udp-not-enforced (UDP and SCTP pass unchecked)",
    );
    // The finished Job pod is not counted; frontend is the only fully protected one.
    has(
        &l,
        "warn",
        "namespace shop: 1 of 4 running pods fully protected",
    );
    has(
        &l,
        "ok",
        "namespace payments: 1 of 1 running pods fully protected",
    );
    let hint = has(
        &l,
        "fail",
        "Istio injector istio-sidecar-injector also injects namespaces payments",
    );
    assert!(hint.contains("conflict"), "{hint}");
    // Read-only: nothing but GETs (pre-install RBAC reviews are not asked after install).
    assert!(run.seen.iter().all(|(m, _)| m == "GET"), "{:?}", run.seen);
    assert!(run
        .seen
        .iter()
        .any(|(_, p)| p == "/api/v1/namespaces/shop/pods"));
    assert!(
        !run.seen
            .iter()
            .any(|(_, p)| p.contains("/namespaces/legacy/")),
        "unlabelled namespaces are not read"
    );
}

#[test]
fn text_output_is_grouped_with_the_advice_under_each_failure() {
    let run = check("installed", &["--color", "never"]);
    assert_eq!(run.out.status.code(), Some(1));
    let text = stdout(&run);
    for expected in [
        "kubernetes-api\n--------------\n√ can reach the API server\n",
        "× shop: redis-0 without a proxy (statefulset redis): nothing is enforced for them\n    restart to inject: kubectl rollout restart statefulset/redis -n shop",
        "‼ shop/cart-5b7d9c8f6-q4wnv is exempt: udp-not-enforced (UDP and SCTP pass unchecked)\n    UDP and SCTP pass unchecked",
    ] {
        assert!(text.contains(expected), "{expected:?} not in:\n{text}");
    }
    assert!(text.ends_with("\nStatus check results are ×\n"), "{text}");
}

#[test]
fn pre_install_on_a_fresh_cluster_passes() {
    let run = check("fresh", &["--pre", "-o", "json"]);
    assert_eq!(run.out.status.code(), Some(0), "{}", stdout(&run));
    let l = lines(&run);
    has(&l, "ok", "can create mutatingwebhookconfigurations");
    has(&l, "ok", "can create deployments in portcullis-system");
    has(&l, "ok", "no other mesh's sidecar injector");
    has(&l, "ok", "namespace portcullis-system does not exist yet");
    assert!(l.keys().all(|(s, _)| s == "ok"), "{l:#?}");
    let reviews = run.seen.iter().filter(|(m, _)| m == "POST").count();
    assert_eq!(
        reviews, 9,
        "one SelfSubjectAccessReview per right: {:?}",
        run.seen
    );
}

#[test]
fn pre_install_without_the_rights_fails_and_says_whom_to_ask() {
    let run = check("installed", &["--pre", "-o", "json"]);
    assert_eq!(run.out.status.code(), Some(1));
    let l = lines(&run);
    let hint = has(&l, "fail", "cannot create mutatingwebhookconfigurations");
    assert!(
        hint.contains("kubectl auth can-i create mutatingwebhookconfigurations"),
        "{hint}"
    );
    has(&l, "fail", "cannot create clusterrolebindings");
    has(&l, "ok", "can create secrets in portcullis-system");
    has(&l, "warn", "namespace portcullis-system already exists");
    has(
        &l,
        "warn",
        "namespaces already labelled portcullis.dev/inject=enabled: shop, payments",
    );
}

#[test]
fn an_unreachable_api_server_is_a_failed_check_not_a_crash() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener); // nothing listens there any more
    let config = kubeconfig(port, "unreachable");
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["check", "--color", "never", "--kubeconfig"])
        .arg(&config)
        .output()
        .unwrap();
    let _ = fs::remove_file(config);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("× cannot reach the API server"), "{text}");
    assert!(text.contains("kubectl version should work"), "{text}");
}

/// Prints what a user sees (`cargo test -p portcullis --test check -- --ignored --nocapture`).
#[test]
#[ignore]
fn show() {
    for (scenario, args) in [("installed", vec![]), ("fresh", vec!["--pre"])] {
        let mut all = vec!["--color", "never"];
        all.extend(args);
        println!("{}", stdout(&check(scenario, &all)));
    }
}
