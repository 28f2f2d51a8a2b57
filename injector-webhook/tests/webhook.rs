//! End-to-end over real HTTPS: the webhook runs with a test CA (rcgen), receives AdmissionReview
//! JSON for realistic pods, and the returned JSONPatch is applied with `json-patch` to the
//! original pod, exactly as the API server does.
//!
//! Golden files: `tests/golden/<fixture>.json` hold the full patched pods. Regenerate them with
//! `UPDATE_GOLDEN=1 cargo test -p portcullis-injector --test webhook` and review the diff.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use metrics_exporter_prometheus::PrometheusHandle;
use portcullis_injector::inject::NamespaceMeta;
use portcullis_injector::server::namespaces::NamespaceSource;
use portcullis_injector::server::tls::ReloadingCert;
use portcullis_injector::server::{serve_admin, serve_webhook, AppState};
use portcullis_injector::InjectorConfig;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_rustls::TlsConnector;

const SERVICE_DNS: &str = "portcullis-injector.portcullis-system.svc";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Arc::new(rustls::crypto::ring::default_provider())
}

/// One global recorder for the whole test binary.
fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = portcullis_injector::server::metrics::recorder().expect("recorder");
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).expect("install recorder");
            portcullis_injector::server::metrics::describe();
            handle
        })
        .clone()
}

/// Defaults, with a fixed version so that golden files do not change with each release.
fn test_config() -> InjectorConfig {
    InjectorConfig {
        proxy_image: "ghcr.io/portcullis-dev/portcullis-proxy:1.2.3".into(),
        init_image: "ghcr.io/portcullis-dev/portcullis-init:1.2.3".into(),
        version: "1.2.3".into(),
        ..InjectorConfig::default()
    }
}

struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "portcullis test CA");
        let key = KeyPair::generate().expect("ca key");
        TestCa {
            issuer: CertifiedIssuer::self_signed(params, key).expect("ca cert"),
        }
    }

    /// A serving certificate for the webhook Service name and 127.0.0.1: (cert PEM, key PEM).
    fn leaf(&self) -> (String, String) {
        let mut params = CertificateParams::new(vec![
            SERVICE_DNS.to_string(),
            format!("{SERVICE_DNS}.cluster.local"),
        ])
        .expect("params");
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf cert");
        (cert.pem(), key.serialize_pem())
    }

    fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.issuer.der().clone()).expect("add root");
        roots
    }
}

struct Harness {
    addr: SocketAddr,
    admin: SocketAddr,
    ca: TestCa,
    dir: tempfile::TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
    watcher: tokio::task::JoinHandle<()>,
    admin_task: tokio::task::JoinHandle<()>,
}

fn annotations<const N: usize>(pairs: [(String, String); N]) -> NamespaceMeta {
    NamespaceMeta {
        annotations: BTreeMap::from(pairs),
        pod_security_enforce: None,
    }
}

struct Options {
    namespaces: NamespaceSource,
    fail_closed: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            namespaces: NamespaceSource::Static(HashMap::from([
                (
                    "shop".to_string(),
                    annotations([
                        (
                            "portcullis.dev/skip-outbound-ports".to_string(),
                            "25".to_string(),
                        ),
                        // The shop team may exempt its own pods (the fixtures do).
                        (
                            "portcullis.dev/allow-pod-overrides".to_string(),
                            "true".to_string(),
                        ),
                    ]),
                ),
                ("batch".to_string(), NamespaceMeta::default()),
                (
                    "strict".to_string(),
                    NamespaceMeta {
                        pod_security_enforce: Some("restricted".to_string()),
                        ..NamespaceMeta::default()
                    },
                ),
            ])),
            fail_closed: false,
        }
    }
}

impl Harness {
    async fn start(opts: Options) -> Harness {
        let ca = TestCa::new();
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = ca.leaf();
        std::fs::write(dir.path().join("tls.crt"), cert).expect("write cert");
        std::fs::write(dir.path().join("tls.key"), key).expect("write key");
        let reloading = ReloadingCert::load(
            dir.path().join("tls.crt"),
            dir.path().join("tls.key"),
            provider(),
        )
        .expect("load cert");
        let watcher = reloading.spawn_watcher(
            Duration::from_millis(50),
            portcullis_injector::server::metrics::CERT_RELOADS,
        );
        let tls = reloading.server_config().expect("server config");
        let state = Arc::new(AppState {
            config: test_config(),
            fail_closed: opts.fail_closed,
            namespaces: opts.namespaces,
            metrics: Some(metrics_handle()),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let admin_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
        let admin = admin_listener.local_addr().expect("admin addr");
        let admin_task = tokio::spawn(serve_admin(admin_listener, Arc::clone(&state)));
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(serve_webhook(
            listener,
            tls,
            state,
            async {
                let _ = rx.await;
            },
            Duration::from_secs(2),
        ));
        Harness {
            addr,
            admin,
            ca,
            dir,
            shutdown: Some(tx),
            server,
            watcher,
            admin_task,
        }
    }

    async fn tls_stream(&self) -> tokio_rustls::client::TlsStream<TcpStream> {
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(self.ca.roots())
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tcp = TcpStream::connect(self.addr).await.expect("connect");
        TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from(SERVICE_DNS).expect("server name"), tcp)
            .await
            .expect("TLS handshake (certificate must verify against the test CA)")
    }

    async fn request(&self, method: &str, path: &str, body: Vec<u8>) -> (StatusCode, Bytes) {
        let io = TokioIo::new(self.tls_stream().await);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .expect("http handshake");
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, SERVICE_DNS)
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("request");
        let resp = sender.send_request(req).await.expect("response");
        let status = resp.status();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (status, body)
    }

    async fn admit(&self, review: &Value) -> Value {
        let body = serde_json::to_vec(review).expect("encode review");
        let (status, body) = self.request("POST", "/mutate", body).await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).expect("response is JSON")
    }

    async fn admin_get(&self, path: &str) -> (StatusCode, String) {
        let tcp = TcpStream::connect(self.admin).await.expect("connect admin");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let req = Request::get(path)
            .header(HOST, "localhost")
            .body(Full::new(Bytes::new()))
            .expect("request");
        let resp = sender.send_request(req).await.expect("response");
        let status = resp.status();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    async fn served_certificate(&self) -> CertificateDer<'static> {
        let stream = self.tls_stream().await;
        let (_, conn) = stream.get_ref();
        conn.peer_certificates().expect("peer certs")[0].clone()
    }

    async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(5), &mut self.server)
            .await
            .expect("server stops after shutdown")
            .expect("server task");
        self.watcher.abort();
        self.admin_task.abort();
    }
}

fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_json::from_str(&text).expect("fixture JSON")
}

fn golden_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.json"))
}

/// Compare with the golden file, or rewrite it when UPDATE_GOLDEN is set.
fn assert_golden(name: &str, pod: &Value) {
    let mut text = serde_json::to_string_pretty(pod).expect("pretty");
    text.push('\n');
    let path = golden_path(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &text).expect("write golden");
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path:?}: {e}; run with UPDATE_GOLDEN=1 to create it"));
    if want != text {
        let first = want
            .lines()
            .zip(text.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(want.lines().count().min(text.lines().count()));
        panic!(
            "{name}: patched pod differs from {path:?} at line {}:\n  golden: {:?}\n  got:    {:?}\n(UPDATE_GOLDEN=1 regenerates)",
            first + 1,
            want.lines().nth(first),
            text.lines().nth(first)
        );
    }
}

/// Decode the response's JSONPatch and apply it to the request's object.
fn apply_response(review: &Value, response: &Value) -> Value {
    let b64: k8s_openapi::ByteString =
        serde_json::from_value(response["patch"].clone()).expect("patch is a base64 string");
    let patch: json_patch::Patch = serde_json::from_slice(&b64.0).expect("JSONPatch");
    let mut pod = review["request"]["object"].clone();
    json_patch::patch(&mut pod, &patch).expect("patch applies to the original pod");
    pod
}

fn container_names(pod: &Value, field: &str) -> Vec<String> {
    pod["spec"][field]
        .as_array()
        .map(|cs| {
            cs.iter()
                .map(|c| c["name"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn warnings(response: &Value) -> Vec<String> {
    response["warnings"]
        .as_array()
        .map(|w| {
            w.iter()
                .map(|s| s.as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn env_value(container: &Value, name: &str) -> Option<String> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str())
        .map(str::to_string)
}

fn find_container<'a>(pod: &'a Value, name: &str) -> &'a Value {
    ["initContainers", "containers"]
        .iter()
        .filter_map(|f| pod["spec"][f].as_array())
        .flatten()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// Inject a fixture over HTTPS, check the response, and return (patched pod, warnings).
async fn inject_fixture(h: &Harness, name: &str) -> (Value, Vec<String>) {
    let review = fixture(name);
    let answer = h.admit(&review).await;
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    let response = &answer["response"];
    assert_eq!(response["uid"], review["request"]["uid"]);
    assert_eq!(response["allowed"], true);
    assert_eq!(response["patchType"], "JSONPatch");
    let pod = apply_response(&review, response);
    // The result must still be a valid Pod.
    serde_json::from_value::<Pod>(pod.clone()).expect("patched object is a Pod");
    (pod, warnings(response))
}

#[tokio::test]
async fn multi_container_pod_without_annotations() {
    let h = Harness::start(Options::default()).await;
    let (pod, warnings) = inject_fixture(&h, "multi-container-no-annotations").await;
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        container_names(&pod, "initContainers"),
        ["portcullis-init", "portcullis-proxy"]
    );
    assert_eq!(
        container_names(&pod, "containers"),
        ["checkout", "log-shipper"]
    );
    // The annotations map did not exist: the patch created it.
    assert_eq!(
        pod["metadata"]["annotations"]["prometheus.io/scrape"],
        "true"
    );
    assert_eq!(pod["metadata"]["annotations"]["prometheus.io/port"], "4191");
    // Namespace default from the (static) namespace source.
    let init = find_container(&pod, "portcullis-init");
    assert_eq!(
        env_value(init, "PORTCULLIS_SKIP_OUTBOUND_PORTS").as_deref(),
        Some("25")
    );
    assert_eq!(
        pod["metadata"]["labels"]["app.kubernetes.io/name"],
        "checkout"
    );
    assert_golden("multi-container-no-annotations", &pod);
    h.stop().await;
}

#[tokio::test]
async fn pod_with_init_containers_and_annotations() {
    let h = Harness::start(Options::default()).await;
    let (pod, warnings) = inject_fixture(&h, "init-containers-and-annotations").await;
    assert_eq!(
        container_names(&pod, "initContainers"),
        [
            "portcullis-init",
            "portcullis-proxy",
            "fix-permissions",
            "wait-for-primary"
        ]
    );
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("portcullis.dev/log-level=\"loud\""),
        "{warnings:?}"
    );
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(
        annotations["kubectl.kubernetes.io/restartedAt"],
        "2026-11-20T10:00:00Z"
    );
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
    let init = find_container(&pod, "portcullis-init");
    assert_eq!(
        env_value(init, "PORTCULLIS_SKIP_INBOUND_PORTS").as_deref(),
        Some("9187")
    );
    assert_eq!(
        env_value(init, "PORTCULLIS_SKIP_OUTBOUND_CIDRS").as_deref(),
        Some("169.254.169.254/32")
    );
    let proxy = find_container(&pod, "portcullis-proxy");
    assert_eq!(
        env_value(proxy, "PORTCULLIS_MODE").as_deref(),
        Some("audit")
    );
    assert_eq!(env_value(proxy, "PORTCULLIS_LOG").as_deref(), Some("info"));
    assert_eq!(proxy["resources"]["limits"]["memory"], "128Mi");
    assert_golden("init-containers-and-annotations", &pod);
    h.stop().await;
}

#[tokio::test]
async fn job_in_classic_mode_by_annotation() {
    let h = Harness::start(Options::default()).await;
    let (pod, warnings) = inject_fixture(&h, "job-classic-sidecar").await;
    assert_eq!(container_names(&pod, "initContainers"), ["portcullis-init"]);
    assert_eq!(
        container_names(&pod, "containers"),
        ["portcullis-proxy", "report"]
    );
    assert_eq!(
        pod["metadata"]["annotations"]["prometheus.io/scrape"],
        "false"
    );
    assert_eq!(
        pod["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"],
        "report"
    );
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert_golden("job-classic-sidecar", &pod);
    h.stop().await;
}

#[tokio::test]
async fn already_injected_pods_are_left_alone() {
    let h = Harness::start(Options::default()).await;
    for name in ["multi-container-no-annotations", "job-classic-sidecar"] {
        let (pod, _) = inject_fixture(&h, name).await;
        // Reinvocation: the same pod, now carrying our containers, comes back.
        let mut review = fixture(name);
        review["request"]["uid"] = json!("0d9a1c55-7e0e-4d7c-b0a5-8f2b7e1c3a99");
        review["request"]["object"] = pod;
        let answer = h.admit(&review).await;
        let response = &answer["response"];
        assert_eq!(response["uid"], "0d9a1c55-7e0e-4d7c-b0a5-8f2b7e1c3a99");
        assert_eq!(response["allowed"], true);
        assert!(response.get("patch").is_none(), "{name}: {response}");
        assert!(response.get("patchType").is_none());
        assert!(warnings(response).is_empty());
    }
    h.stop().await;
}

#[tokio::test]
async fn host_network_and_opt_out_get_only_the_exemption_and_other_kinds_no_patch() {
    let h = Harness::start(Options::default()).await;

    let review = fixture("host-network");
    let answer = h.admit(&review).await;
    assert_eq!(answer["response"]["allowed"], true);
    let pod = apply_response(&review, &answer["response"]);
    assert_eq!(
        pod["metadata"]["annotations"]["portcullis.dev/exemptions"],
        "not-injected"
    );
    assert_eq!(
        container_names(&pod, "containers"),
        container_names(&review["request"]["object"], "containers")
    );
    let w = warnings(&answer["response"]);
    assert_eq!(w.len(), 1);
    assert!(w[0].contains("hostNetwork"), "{w:?}");

    // `shop` allows pod overrides: the pod's opt-out counts, and is written down.
    let mut opted_out = fixture("multi-container-no-annotations");
    opted_out["request"]["object"]["metadata"]["annotations"] =
        json!({"portcullis.dev/inject": "disabled"});
    let answer = h.admit(&opted_out).await;
    assert_eq!(answer["response"]["allowed"], true);
    let pod = apply_response(&opted_out, &answer["response"]);
    assert_eq!(
        container_names(&pod, "initContainers"),
        Vec::<String>::new()
    );
    assert_eq!(
        pod["metadata"]["annotations"]["portcullis.dev/exemptions"],
        "not-injected"
    );
    assert!(warnings(&answer["response"]).is_empty());

    let answer = h.admit(&fixture("deployment")).await;
    assert_eq!(
        answer["response"]["uid"],
        "e5f6a7b8-c9d0-4e1f-a2b3-c4d5e6f7a8b9"
    );
    assert_eq!(answer["response"]["allowed"], true);
    assert!(answer["response"].get("patch").is_none());
    h.stop().await;
}

/// A namespace enforcing Pod Security `restricted` (read through the namespace source, as its
/// label is in a cluster): the pod is injected, and the answer warns, naming what the API server
/// will refuse next, so that `kubectl apply` shows it instead of a bare rejection.
#[tokio::test]
async fn a_pod_security_restricted_namespace_gets_a_warning_naming_what_will_be_refused() {
    let h = Harness::start(Options::default()).await;
    let mut review = fixture("multi-container-no-annotations");
    review["request"]["namespace"] = json!("strict");
    review["request"]["object"]["metadata"]["namespace"] = json!("strict");
    let answer = h.admit(&review).await;
    assert_eq!(answer["response"]["allowed"], true);
    assert_eq!(answer["response"]["patchType"], "JSONPatch");
    let w = warnings(&answer["response"]);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("enforces Pod Security restricted")
            && w[0].contains("portcullis-init: adds NET_ADMIN and NET_RAW")
            && w[0].contains("pod-security.kubernetes.io/enforce=privileged"),
        "{w:?}"
    );
    h.stop().await;
}

/// The fixture, moved to namespace `batch`, which does not allow pod overrides.
fn in_batch(name: &str) -> Value {
    let mut review = fixture(name);
    review["request"]["namespace"] = json!("batch");
    review["request"]["object"]["metadata"]["namespace"] = json!("batch");
    review
}

#[tokio::test]
async fn weakening_pod_annotations_are_ignored_where_the_namespace_does_not_allow_them() {
    let h = Harness::start(Options::default()).await;
    let review = in_batch("init-containers-and-annotations");
    let answer = h.admit(&review).await;
    let response = &answer["response"];
    assert_eq!(response["allowed"], true);
    let pod = apply_response(&review, response);
    let w = warnings(response);
    for key in [
        "portcullis.dev/skip-inbound-ports",
        "portcullis.dev/skip-outbound-cidrs",
        "portcullis.dev/policy-mode",
    ] {
        assert!(
            w.iter()
                .any(|w| w.contains(key) && w.contains("does not allow pod overrides")),
            "{key}: {w:#?}"
        );
    }
    let proxy = find_container(&pod, "portcullis-proxy");
    assert_eq!(
        env_value(proxy, "PORTCULLIS_MODE").as_deref(),
        Some("enforce")
    );
    let init = find_container(&pod, "portcullis-init");
    assert_eq!(env_value(init, "PORTCULLIS_SKIP_INBOUND_PORTS"), None);
    assert_eq!(env_value(init, "PORTCULLIS_SKIP_OUTBOUND_CIDRS"), None);
    assert!(pod["metadata"]["annotations"]
        .get("portcullis.dev/exemptions")
        .is_none());
    // Harmless ones still count.
    assert_eq!(proxy["resources"]["limits"]["memory"], "128Mi");

    let (_, metrics) = h.admin_get("/metrics").await;
    assert!(
        metrics.contains(
            "portcullis_injector_ignored_overrides_total{annotation=\"portcullis.dev/policy-mode\"}"
        ),
        "{metrics}"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_pod_running_as_the_proxy_uid_is_refused() {
    let h = Harness::start(Options::default()).await;
    let mut review = fixture("multi-container-no-annotations");
    review["request"]["object"]["spec"]["containers"][1]["securityContext"] =
        json!({"runAsUser": 2171});
    let answer = h.admit(&review).await;
    let response = &answer["response"];
    assert_eq!(response["allowed"], false);
    assert!(response.get("patch").is_none());
    let message = response["status"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("container \"log-shipper\"") && message.contains("UID 2171"),
        "{message}"
    );
    let (_, metrics) = h.admin_get("/metrics").await;
    assert!(
        metrics.contains("portcullis_injector_requests_total{result=\"denied\"}"),
        "{metrics}"
    );
    h.stop().await;
}

#[tokio::test]
async fn malformed_requests_get_http_errors() {
    let h = Harness::start(Options::default()).await;
    let (status, body) = h.request("POST", "/mutate", b"{not json".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("not a valid AdmissionReview"), "{text}");

    let mut v1beta1 = fixture("deployment");
    v1beta1["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let (status, body) = h
        .request(
            "POST",
            "/mutate",
            serde_json::to_vec(&v1beta1).expect("json"),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("admission.k8s.io/v1"));

    let (status, _) = h
        .request(
            "POST",
            "/mutate",
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (status, _) = h.request("GET", "/mutate", Vec::new()).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let (status, _) = h.request("POST", "/validate", Vec::new()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let huge = vec![b' '; portcullis_injector::review::MAX_BODY_BYTES + 1];
    let (status, _) = h.request("POST", "/mutate", huge).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    h.stop().await;
}

#[tokio::test]
async fn webhook_errors_admit_unless_fail_closed() {
    let mut bad = fixture("multi-container-no-annotations");
    bad["request"]["object"]["spec"]["containers"] = json!("not a list");

    let h = Harness::start(Options::default()).await;
    let answer = h.admit(&bad).await;
    assert_eq!(answer["response"]["allowed"], true);
    assert!(answer["response"].get("patch").is_none());
    let w = warnings(&answer["response"]);
    assert!(
        w.iter().any(|w| w.contains("WITHOUT the Portcullis proxy")),
        "{w:?}"
    );
    h.stop().await;

    let h = Harness::start(Options {
        fail_closed: true,
        ..Options::default()
    })
    .await;
    let answer = h.admit(&bad).await;
    assert_eq!(answer["response"]["allowed"], false);
    // A good pod is still injected.
    inject_fixture(&h, "multi-container-no-annotations").await;
    h.stop().await;
}

#[tokio::test]
async fn namespace_defaults_unavailable_is_a_warning() {
    let h = Harness::start(Options {
        namespaces: NamespaceSource::Unavailable("no Kubernetes API access".into()),
        fail_closed: false,
    })
    .await;
    let (pod, warnings) = inject_fixture(&h, "multi-container-no-annotations").await;
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("namespace defaults unavailable"));
    let init = find_container(&pod, "portcullis-init");
    assert_eq!(env_value(init, "PORTCULLIS_SKIP_OUTBOUND_PORTS"), None);
    h.stop().await;
}

#[tokio::test]
async fn certificate_is_reloaded_when_the_files_change() {
    let h = Harness::start(Options::default()).await;
    let first = h.served_certificate().await;

    // An invalid pair (new cert, old key) is refused: the old certificate stays in use.
    let (cert2, key2) = h.ca.leaf();
    std::fs::write(h.dir.path().join("tls.crt"), &cert2).expect("write");
    let refused = "portcullis_injector_cert_reloads_total{result=\"error\"}";
    let mut seen = false;
    for _ in 0..200 {
        if h.admin_get("/metrics").await.1.contains(refused) {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(seen, "the mismatched pair was not noticed");
    assert_eq!(h.served_certificate().await, first);
    inject_fixture(&h, "multi-container-no-annotations").await;

    // Once the key follows, new connections get the new certificate.
    std::fs::write(h.dir.path().join("tls.key"), &key2).expect("write");
    let mut served = first.clone();
    for _ in 0..100 {
        served = h.served_certificate().await;
        if served != first {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_ne!(served, first, "certificate was not reloaded");
    inject_fixture(&h, "multi-container-no-annotations").await;

    let (_, metrics) = h.admin_get("/metrics").await;
    assert!(
        metrics.contains("portcullis_injector_cert_reloads_total{result=\"ok\"}"),
        "{metrics}"
    );
    h.stop().await;
}

#[tokio::test]
async fn admin_port_serves_health_and_metrics() {
    let h = Harness::start(Options::default()).await;
    inject_fixture(&h, "multi-container-no-annotations").await;
    h.admit(&fixture("host-network")).await;
    let _ = h.request("POST", "/mutate", b"nope".to_vec()).await;

    let (status, body) = h.admin_get("/healthz").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.trim(), "ok");

    let (status, metrics) = h.admin_get("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    for needle in [
        "portcullis_injector_injections_total{sidecar_mode=\"native\"}",
        "portcullis_injector_skips_total{reason=\"host_network\"}",
        "portcullis_injector_requests_total{result=\"invalid\"}",
        "portcullis_injector_request_duration_seconds_bucket",
        "portcullis_build_info{version=",
    ] {
        assert!(metrics.contains(needle), "missing {needle} in:\n{metrics}");
    }
    portcullis_netns::testing::admin::promtool_check_metrics(&metrics);
    let (status, _) = h.admin_get("/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    h.stop().await;
}
