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
use std::time::{Duration, Instant};

use serde_json::{json, Value};

fn recorded(scenario: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/recorded/check")
        .join(scenario)
}

type Seen = Arc<Mutex<Vec<(String, String)>>>;

/// `(method, path, body)` → `(status, body, content type)`.
type Handler = dyn Fn(&str, &str, &[u8]) -> (u16, String, &'static str) + Send + Sync;

/// Serves the recorded responses of `dirs`, the first that has one winning (a scenario that
/// changes a few objects of another lists its own directory first): `GET /a/b/c` answers
/// `a_b_c.json` (or `a_b_c.txt` as text, `a_b_c.503.txt` with status 503); a name under a
/// recorded list answers that item (as the API server's GET of one object);
/// `POST .../selfsubjectaccessreviews` answers the recorded review whose resourceAttributes are
/// the request's. Anything else: 404 Status.
fn serve(dirs: Vec<PathBuf>) -> (u16, Seen) {
    serve_with(Arc::new(move |method, path, body| {
        for dir in &dirs {
            if let Some(answer) = answer(dir, method, path, body) {
                return answer;
            }
        }
        let (code, v) = not_found(path);
        (code, v.to_string(), JSON)
    }))
}

const JSON: &str = "application/json";

fn serve_with(handler: Arc<Handler>) -> (u16, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let handler = handler.clone();
            let log = log.clone();
            std::thread::spawn(move || connection(stream, &*handler, &log));
        }
    });
    (port, seen)
}

fn connection(stream: TcpStream, handler: &Handler, log: &Seen) {
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
        let (code, text, content_type) = handler(&method, &path, &body);
        let reason = match code {
            200 | 201 => "OK",
            401 => "Unauthorized",
            403 => "Forbidden",
            503 => "Service Unavailable",
            _ => "Not Found",
        };
        let written = write!(
            out,
            "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        );
        if written.is_err() {
            return;
        }
    }
}

fn file(dir: &Path, path: &str) -> Option<Value> {
    let name = format!("{}.json", path.trim_matches('/').replace('/', "_"));
    let text = fs::read_to_string(dir.join(name)).ok()?;
    Some(serde_json::from_str(&text).expect("recorded JSON"))
}

/// The recorded answer of `dir`, if it has one.
fn answer(
    dir: &Path,
    method: &str,
    path: &str,
    body: &[u8],
) -> Option<(u16, String, &'static str)> {
    let json = |code: u16, v: Value| Some((code, v.to_string(), JSON));
    if method == "POST" && path.ends_with("/selfsubjectaccessreviews") {
        let asked: Value = serde_json::from_slice(body).unwrap();
        let attrs = &asked["spec"]["resourceAttributes"];
        let key = |a: &Value| {
            ["verb", "group", "resource", "namespace"]
                .map(|k| a[k].as_str().unwrap_or("").to_string())
        };
        let reviews = file(dir, path)?;
        let found = reviews
            .as_array()
            .unwrap()
            .iter()
            .find(|r| key(&r["spec"]["resourceAttributes"]) == key(attrs));
        return match found {
            Some(r) => json(201, r.clone()),
            None => json(not_found(path).0, not_found(path).1),
        };
    }
    if method != "GET" {
        return None;
    }
    if let Some(v) = file(dir, path) {
        return json(200, v);
    }
    let name = path.trim_matches('/').replace('/', "_");
    for (suffix, code) in [(".txt", 200), (".503.txt", 503)] {
        if let Ok(text) = fs::read_to_string(dir.join(format!("{name}{suffix}"))) {
            return Some((code, text, "text/plain"));
        }
    }
    // One object of a recorded list.
    let (parent, name) = path.rsplit_once('/').unwrap();
    let list = file(dir, parent)?;
    let kind = list["kind"]
        .as_str()
        .unwrap()
        .trim_end_matches("List")
        .to_string();
    let item = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["metadata"]["name"] == name)?;
    let mut item = item.clone();
    item["kind"] = json!(kind);
    item["apiVersion"] = list["apiVersion"].clone();
    json(200, item)
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
    // `a+b`: scenario a's recordings over b's.
    let (port, seen) = serve(scenario.split('+').map(recorded).collect());
    run_on(port, seen, scenario, extra)
}

fn run_on(port: u16, seen: Seen, scenario: &str, extra: &[&str]) -> Run {
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

/// The `checks` of `-o json`.
fn checks(run: &Run) -> Vec<Value> {
    let v: Value =
        serde_json::from_slice(&run.out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(run)));
    v["checks"].as_array().unwrap().clone()
}

/// `(status, message)` → hint, from `-o json`.
fn lines(run: &Run) -> BTreeMap<(String, String), String> {
    checks(run)
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
    assert!(
        text.contains(&format!("http://127.0.0.1:{port}: Connection refused")),
        "{text}"
    );
}

/// `(id, status, message)` of every line, from `-o json`.
fn ids(run: &Run) -> Vec<(String, String, String)> {
    checks(run)
        .iter()
        .map(|c| {
            let field = |k: &str| {
                c[k].as_str()
                    .unwrap_or_else(|| panic!("{k} in {c}"))
                    .to_string()
            };
            (field("id"), field("status"), field("message"))
        })
        .collect()
}

/// Runs `check` against the kubeconfig of `port` and returns its output and how long it took.
fn timed(port: u16, scenario: &str, extra: &[&str]) -> (Output, Duration) {
    let config = kubeconfig(port, scenario);
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["check", "--color", "never", "--kubeconfig"])
        .arg(&config)
        .args(extra)
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    let took = start.elapsed();
    let _ = fs::remove_file(config);
    (out, took)
}

/// Runs `check`, which must fail (exit 1) well within the 15 s bound; returns its text.
fn fails_quickly(port: u16, scenario: &str, extra: &[&str]) -> String {
    let (out, took) = timed(port, scenario, extra);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(took < Duration::from_secs(15), "took {took:?}");
    text
}

/// A server that accepts connections and never answers (nor closes them).
fn silent_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    port
}

fn no_debug_structures(text: &str) {
    for debug in [
        "Status {",
        "ErrorResponse",
        "HyperError",
        "ServiceError",
        "Some(",
        "ApiError",
    ] {
        assert!(!text.contains(debug), "{debug:?} in:\n{text}");
    }
}

#[test]
fn a_server_that_never_answers_fails_within_the_request_timeout_and_names_the_url() {
    let port = silent_server();
    let text = fails_quickly(port, "silent", &["--request-timeout", "2s"]);
    assert!(
        text.contains(&format!(
            "× no answer from the API server http://127.0.0.1:{port} within 2s (--request-timeout)"
        )),
        "{text}"
    );
    assert!(
        text.contains("see docs/checks.md#pc-api-reachable"),
        "{text}"
    );
    no_debug_structures(&text);
}

#[test]
fn the_overall_timeout_bounds_the_whole_run() {
    let port = silent_server();
    let (out, took) = timed(
        port,
        "silent-overall",
        &["--request-timeout", "1m", "--timeout", "2s", "-o", "json"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(took < Duration::from_secs(15), "took {took:?}");
    let run = Run {
        out,
        seen: Vec::new(),
    };
    let lines = ids(&run);
    let (id, status, message) = lines.last().unwrap();
    assert_eq!((id.as_str(), status.as_str()), ("pc-check-timeout", "fail"));
    assert!(
        message.contains(&format!(
            "did not finish within 2s (--timeout); API server http://127.0.0.1:{port}"
        )),
        "{message}"
    );
}

#[test]
fn unauthorized_names_the_server_the_user_and_the_context() {
    let (port, _) = serve_with(Arc::new(|_, _, _| {
        let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": "Unauthorized", "reason": "Unauthorized", "code": 401});
        (401, status.to_string(), JSON)
    }));
    let text = fails_quickly(port, "unauthorized", &[]);
    assert!(
        text.contains(&format!(
            "× the API server http://127.0.0.1:{port} refused the credentials of user \"platform-dev\" of context \"recorded\""
        )),
        "{text}"
    );
    assert!(text.contains("401 Unauthorized (Unauthorized)"), "{text}");
    assert!(text.contains("log in again"), "{text}");
    no_debug_structures(&text);
}

#[test]
fn forbidden_says_what_was_refused_to_whom_and_which_rbac_is_needed() {
    let fresh = recorded("fresh");
    let (port, _) = serve_with(Arc::new(move |method, path, body| {
        if path == "/api/v1/namespaces" {
            let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "reason": "Forbidden", "code": 403,
                "message": "namespaces is forbidden: User \"platform-dev\" cannot list resource \"namespaces\" in API group \"\" at the cluster scope"});
            return (403, status.to_string(), JSON);
        }
        answer(&fresh, method, path, body).unwrap()
    }));
    let text = fails_quickly(port, "forbidden", &[]);
    assert!(text.contains("√ can reach the API server"), "{text}");
    assert!(
        text.contains(
            "× cannot list namespaces: user \"platform-dev\" of context \"recorded\" (kubeconfig "
        ),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "may not list namespaces: 403 Forbidden from http://127.0.0.1:{port} (namespaces is forbidden: User \"platform-dev\" cannot list resource"
        )),
        "{text}"
    );
    assert!(
        text.contains("`kubectl auth can-i list namespaces` must say yes"),
        "{text}"
    );
    assert!(
        text.contains("see docs/checks.md#pc-namespaces-readable"),
        "{text}"
    );
    no_debug_structures(&text);
}

#[test]
fn every_line_has_a_stable_id_and_warnings_link_to_its_docs() {
    let run = check("installed", &["-o", "json"]);
    let lines = ids(&run);
    assert!(
        lines.iter().all(|(id, _, _)| id.starts_with("pc-")),
        "{lines:#?}"
    );
    let find = |id: &str, status: &str| {
        lines
            .iter()
            .find(|(i, s, _)| i == id && s == status)
            .unwrap_or_else(|| panic!("no {status} {id} in {lines:#?}"))
            .2
            .clone()
    };
    assert_eq!(find("pc-api-reachable", "ok"), "can reach the API server");
    find("pc-pods-injected", "fail");
    find("pc-other-meshes", "fail");
    let text = stdout(&check("installed", &["--color", "never"]));
    assert!(
        text.contains("restart to inject: kubectl rollout restart statefulset/redis -n shop (created before the namespace was labelled, or while the injector was down)\n    see docs/checks.md#pc-pods-injected\n"),
        "{text}"
    );
}

#[test]
fn a_fail_open_webhook_is_a_warning_not_a_pass() {
    let run = check("installed", &["-o", "json"]);
    let l = lines(&run);
    let hint = has(
        &l,
        "warn",
        "webhook inject.portcullis.dev fails open (failurePolicy Ignore): pods created while the injector is down run unprotected",
    );
    assert!(hint.contains("failurePolicy: Fail"), "{hint}");
    assert!(ids(&run)
        .iter()
        .any(|(id, s, _)| id == "pc-webhook-fail-open" && s == "warn"));
}

#[test]
fn namespace_flag_checks_and_reads_only_that_namespace() {
    let run = check("installed", &["-n", "shop", "-o", "json"]);
    assert_eq!(run.out.status.code(), Some(1), "{}", stdout(&run));
    let l = lines(&run);
    has(
        &l,
        "warn",
        "namespace shop: 1 of 4 running pods fully protected",
    );
    assert!(
        l.keys().all(|(_, m)| !m.contains("payments")),
        "payments is not checked: {l:#?}"
    );
    let paths: Vec<&str> = run.seen.iter().map(|(_, p)| p.as_str()).collect();
    assert!(paths.contains(&"/api/v1/namespaces/shop"), "{paths:?}");
    assert!(
        !paths.contains(&"/api/v1/namespaces"),
        "no list of namespaces: {paths:?}"
    );
    assert!(
        !paths.iter().any(|p| p.contains("/namespaces/payments")),
        "{paths:?}"
    );
    let legacy = check("installed", &["-n", "legacy", "-o", "json"]);
    has(
        &lines(&legacy),
        "warn",
        "namespace legacy is not labelled portcullis.dev/inject=enabled: nothing in it is protected",
    );
    let missing = check("installed", &["-n", "nope", "-o", "json"]);
    has(&lines(&missing), "fail", "namespace nope does not exist");
}

#[test]
fn pod_security_enforce_baseline_or_restricted_fails_before_and_after_install() {
    for pre in [true, false] {
        let mut args = vec!["-o", "json"];
        if pre {
            args.push("--pre");
        }
        let run = check("hardened+installed", &args);
        assert_eq!(run.out.status.code(), Some(1));
        let l = lines(&run);
        let hint = has(&l, "fail", "namespace shop enforces Pod Security baseline: every injected pod is rejected: portcullis-init adds NET_ADMIN and NET_RAW (not in baseline's allowed capabilities); portcullis-proxy adds NET_ADMIN (UDP enforcement is on)");
        assert!(
            hint.contains("kubectl label namespace shop --overwrite pod-security.kubernetes.io/enforce=privileged"),
            "{hint}"
        );
        assert!(
            hint.contains("portcullis-init still needs NET_ADMIN and NET_RAW"),
            "{hint}"
        );
        let note = l
            .keys()
            .find(|(s, m)| {
                s == "ok"
                    && m.starts_with(
                        "namespace payments: Pod Security warn=restricted lets injected pods in",
                    )
            })
            .unwrap_or_else(|| panic!("no warn note for payments: {l:#?}"));
        assert!(note.1.contains("runs as root"), "{note:?}");
    }
}

#[test]
fn proxy_flag_checks_every_proxy_is_ready_and_current() {
    let run = check("proxies+installed", &["--proxy", "-o", "json"]);
    let l = lines(&run);
    for controller in [
        "abcde serves table generation 15",
        "fghij serves table generation 9",
    ] {
        has(
            &l,
            "ok",
            &format!("portcullis-controller-7c9d8b6f5-{controller}"),
        );
    }
    let hint = has(
        &l,
        "fail",
        "shop/cart-5b7d9c8f6-q4wnv: proxy is on table generation 12, the controllers serve 15 and 9",
    );
    assert!(hint.contains("--wait"), "{hint}");
    let not_ready = l
        .keys()
        .find(|(s, m)| s == "fail" && m.starts_with("shop/api-7f9b6c5d4-m2x8v: proxy not ready"))
        .unwrap_or_else(|| panic!("{l:#?}"));
    assert!(
        not_ready.1.contains("no policy table loaded yet"),
        "{not_ready:?}"
    );
    has(&l, "ok", "namespace shop: 2 of 3 proxies ready");
    has(
        &l,
        "ok",
        "namespace shop: 1 of 3 proxies on the controller's current table",
    );
    has(
        &l,
        "ok",
        "namespace payments: 1 of 1 proxies on the controller's current table",
    );
    // Through the API server's pod proxy subresource, on the admin ports: a proxy's `/ready`
    // says its generation (`/metrics` may be closed to the API server by the pod's ingress
    // policy); a proxy older than the CLI says only `ready`, and its `/metrics` is read.
    assert!(run.seen.iter().any(
        |(_, p)| p == "/api/v1/namespaces/shop/pods/frontend-6d8f7b9c5-x2kqp:4191/proxy/ready"
    ));
    assert!(!run
        .seen
        .iter()
        .any(|(_, p)| p
            == "/api/v1/namespaces/shop/pods/frontend-6d8f7b9c5-x2kqp:4191/proxy/metrics"));
    assert!(run
        .seen
        .iter()
        .any(|(_, p)| p == "/api/v1/namespaces/shop/pods/cart-5b7d9c8f6-q4wnv:4191/proxy/metrics"));
    assert!(run.seen.iter().any(|(_, p)| p
        == "/api/v1/namespaces/portcullis-system/pods/portcullis-controller-7c9d8b6f5-abcde:9990/proxy/ready"));
    // Without --proxy no proxy is asked.
    let plain = check("proxies+installed", &["-o", "json"]);
    assert!(!plain.seen.iter().any(|(_, p)| p.contains("/proxy/")));
}

#[test]
fn wait_retries_failing_checks_until_they_pass() {
    let fresh = recorded("fresh");
    let versions = Arc::new(Mutex::new(0));
    let count = versions.clone();
    let (port, seen) = serve_with(Arc::new(move |method, path, body| {
        if path == "/version" {
            let mut n = count.lock().unwrap();
            *n += 1;
            if *n == 1 {
                return (503, "starting".into(), "text/plain");
            }
        }
        answer(&fresh, method, path, body).unwrap()
    }));
    let run = run_on(
        port,
        seen,
        "wait",
        &["--pre", "--wait", "30s", "-o", "json"],
    );
    assert_eq!(run.out.status.code(), Some(0), "{}", stdout(&run));
    assert_eq!(*versions.lock().unwrap(), 2);
    // And gives up when the time is up.
    let start = Instant::now();
    let run = check("installed", &["--wait", "3s", "-o", "json"]);
    assert_eq!(run.out.status.code(), Some(1));
    assert!(
        start.elapsed() >= Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    let tries = run.seen.iter().filter(|(_, p)| p == "/version").count();
    assert!(tries >= 2, "{tries} tries");
}

#[test]
fn nodes_without_the_node_guard_and_pods_with_net_raw_on_them_are_warnings() {
    // No guard anywhere, Flannel (a bridge): both nodes, and the two pods that keep NET_RAW
    // (one by default, one adding it back); not hostNetwork flannel, not the finished Job,
    // not the injected pod (NET_RAW dropped) nor its init container.
    let run = check("installed", &["-o", "json"]);
    let l = lines(&run);
    let hint = has(
        &l,
        "warn",
        "2 of 2 nodes without the node guard (worker-1, worker-2): Flannel puts pods on a bridge without checking their sources; a pod with NET_RAW there can forge other pods' and the node's addresses",
    );
    assert!(
        hint.contains("kubectl apply -k manifests/node-guard"),
        "{hint}"
    );
    let hint = has(
        &l,
        "warn",
        "2 pods keep NET_RAW on nodes without the node guard, and can forge sources: legacy/web-5f6c7d8e9-abcde (web; node worker-1), legacy/netshoot (netshoot; node worker-2)",
    );
    assert!(hint.contains("capabilities.drop: [NET_RAW]"), "{hint}");
    let found = ids(&run);
    for id in ["pc-node-guard", "pc-node-net-raw"] {
        assert!(
            found.iter().any(|(i, s, _)| i == id && s == "warn"),
            "{id}: {found:#?}"
        );
    }
    let text = stdout(&check("installed", &["--color", "never"]));
    assert!(
        text.contains("node-guard\n----------\n‼ 2 of 2 nodes without the node guard"),
        "{text}"
    );
    assert!(
        text.contains("see docs/checks.md#pc-node-net-raw\n"),
        "{text}"
    );

    // The guard runs on worker-1 only (worker-2's pod is pending): worker-2 and its pod.
    let l = lines(&check("guarded+installed", &["-o", "json"]));
    has(
        &l,
        "warn",
        "1 of 2 nodes without the node guard (worker-2): Flannel puts pods on a bridge without checking their sources; a pod with NET_RAW there can forge other pods' and the node's addresses",
    );
    has(
        &l,
        "warn",
        "1 pod keeps NET_RAW on nodes without the node guard, and can forge sources: legacy/netshoot (netshoot; node worker-2)",
    );

    // Calico checks sources itself: a note, and neither nodes nor pods are read.
    let run = check("calico+installed", &["-o", "json"]);
    has(
        &lines(&run),
        "ok",
        "the CNI (Calico) checks every pod's source address: the node guard is not needed",
    );
    let paths: Vec<&str> = run.seen.iter().map(|(_, p)| p.as_str()).collect();
    assert!(!paths.contains(&"/api/v1/nodes"), "{paths:?}");

    // One namespace's check reads nothing cluster-wide.
    let run = check("installed", &["-n", "shop", "-o", "json"]);
    let paths: Vec<&str> = run.seen.iter().map(|(_, p)| p.as_str()).collect();
    for cluster_wide in ["/api/v1/nodes", "/api/v1/pods", "/apis/apps/v1/daemonsets"] {
        assert!(!paths.contains(&cluster_wide), "{paths:?}");
    }
}

/// Prints what a user sees (`cargo test -p portcullis --test check -- --ignored --nocapture`).
#[test]
#[ignore]
fn show() {
    for (scenario, args) in [
        ("installed", vec![]),
        ("guarded+installed", vec![]),
        ("fresh", vec!["--pre"]),
        ("hardened+installed", vec!["--pre"]),
        ("proxies+installed", vec!["--proxy", "-n", "shop"]),
    ] {
        let mut all = vec!["--color", "never"];
        all.extend(args);
        println!("{}", stdout(&check(scenario, &all)));
    }
}

#[test]
fn cluster_network_policies_the_crd_its_versions_and_what_the_controllers_watch() {
    // What the controllers watch is asked through the pod proxy: with --proxy only.
    let run = check("cnp+proxies+installed", &["--proxy", "-o", "json"]);
    let l = lines(&run);
    has(
        &l,
        "ok",
        "the ClusterNetworkPolicy CRD is installed, serving v1alpha2, v1beta1: Portcullis reads v1alpha2",
    );
    let hint = has(
        &l,
        "warn",
        "the v1alpha1 AdminNetworkPolicy CRD is installed: Portcullis does NOT read nor enforce AdminNetworkPolicy or BaselineAdminNetworkPolicy objects",
    );
    assert!(
        hint.contains("rewrite them as ClusterNetworkPolicies"),
        "{hint}"
    );
    has(
        &l,
        "ok",
        "portcullis-controller-7c9d8b6f5-abcde watches ClusterNetworkPolicies: 4 in force",
    );
    let hint = has(
        &l,
        "fail",
        "ClusterNetworkPolicy tenant-isolation is invalid (its last valid version stays in force): spec.priority: Invalid value 5000: must be between 0 and 1000",
    );
    assert!(hint.contains("portcullis lint -f -"), "{hint}");
    let ids: Vec<Value> = checks(&run)
        .into_iter()
        .filter(|c| c["category"] == "cluster-network-policy")
        .map(|c| c["id"].clone())
        .collect();
    assert!(ids.contains(&json!("pc-cnp-crd")) && ids.contains(&json!("pc-cnp-watched")));
    assert!(
        run.seen.iter().any(|(_, p)| p
            == "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/clusternetworkpolicies.policy.networking.k8s.io"),
        "{:?}",
        run.seen
    );

    // Without the CRD (pre-install): said, with where to get it, and not a failure.
    let run = check("fresh", &["--pre", "-o", "json"]);
    let crd = checks(&run)
        .into_iter()
        .find(|c| c["id"] == "pc-cnp-crd")
        .expect("a CRD line");
    assert_eq!(crd["status"], "ok");
    let message = crd["message"].as_str().unwrap();
    assert!(
        message.contains("is not installed: Portcullis enforces NetworkPolicy v1 alone")
            && message.contains("network-policy-api/v0.2.1/config/crd/experimental"),
        "{message}"
    );
}
