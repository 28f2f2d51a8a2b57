//! The admin listener: `/metrics`, `/ready`, `/live`, `/policy`.
//!
//! Reachable from every pod (the redirect skips it), so it is guarded
//! ([`portcullis_serve_guard`]): at most `--admin-max-connections` at once
//! (`--admin-max-connections-per-peer` from one address), a header-read and an idle timeout;
//! the descriptors it may hold are set aside from the data path's budget ([`crate::limits`]).
//! Who may read what:
//! - `/ready` and `/live` answer everyone: kubelet probes them, and they say nothing.
//! - `/metrics` names the pod's peers (their namespaces, Services): it answers the peers the
//!   pod's own **ingress policy** admits on the admin port (TCP), as it would on any port, and
//!   loopback and the node (`kubectl port-forward`, probes). Under a default deny, Prometheus
//!   needs a rule admitting its pods on the admin port (docs/operations.md); a refused scrape gets
//!   403 with the reason, and the pod's log a `connection_denied` line.
//! - `/policy` (the pod's whole table) answers loopback peers only, which is what
//!   `kubectl port-forward` is.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;
use portcullis_policy::table::canonical;
use portcullis_serve_guard::{accept_loop, Guard, Plain};
use tokio::net::TcpListener;
use tokio::sync::watch;

use portcullis_policy::{Direction, Protocol};

use crate::audit::{AuditEvent, AuditLog, AuditRecord};
use crate::authorize::{decide_protocol, Decision};
use crate::config::Mode;
use crate::store::PolicyStore;

pub struct AdminState {
    pub store: Arc<PolicyStore>,
    pub prometheus: Option<PrometheusHandle>,
    /// Set on SIGTERM, so that the pod leaves Service endpoints while it drains.
    pub draining: AtomicBool,
    pub pod: String,
    /// Whether UDP, SCTP and the other IP protocols (not ICMP) are enforced (`--enforce-udp`);
    /// TCP always is.
    pub udp_enforced: bool,
    /// Where inbound TCP is judged (`--inbound-tcp`).
    pub inbound_tcp: crate::config::InboundTcp,
    /// Enforce or audit: `/metrics` is judged as any inbound connection.
    pub mode: Mode,
    /// The port `/metrics` is judged on.
    pub admin_port: u16,
    pub audit: Arc<AuditLog>,
    /// The names and addresses learned from the pod's DNS lookups (`/policy` lists them).
    pub dns: Arc<crate::dns::DnsState>,
}

impl AdminState {
    /// `/policy`'s `enforced_protocols`: what this proxy decides, protocol by protocol.
    pub fn enforced_protocols(&self) -> serde_json::Value {
        serde_json::json!({
            "TCP": true,
            "UDP": self.udp_enforced,
            "SCTP": self.udp_enforced,
            // Every other IP protocol but ICMP/ICMPv6, as a port-less flow.
            "other": self.udp_enforced,
        })
    }
}

/// Serves the admin endpoints until `shutdown` turns true (the guarded accept loop of
/// [`portcullis_serve_guard`]).
pub async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    guard: Arc<Guard>,
    shutdown: watch::Receiver<bool>,
) {
    let make_service = move |peer: SocketAddr| {
        let state = state.clone();
        hyper::service::service_fn(move |req| {
            let response = respond(&state, &req, peer);
            async move { Ok::<_, Infallible>(response) }
        })
    };
    accept_loop(listener, guard, Plain, make_service, shutdown).await;
}

/// `/policy` shows the pod's whole table: only to a peer inside the pod.
pub const POLICY_LOOPBACK_ONLY: &str = "/policy answers only on loopback: it shows this pod's \
    whole policy table; from outside the pod use `kubectl port-forward POD 4191` and ask \
    http://127.0.0.1:4191/policy (/metrics, /ready and /live answer everyone)\n";

pub fn respond<B>(state: &AdminState, req: &Request<B>, peer: SocketAddr) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    match req.uri().path() {
        "/policy" if !canonical(peer.ip()).is_loopback() => {
            text(StatusCode::FORBIDDEN, POLICY_LOOPBACK_ONLY)
        }
        "/live" => text(StatusCode::OK, "live\n"),
        "/ready" => {
            if state.draining.load(Ordering::Relaxed) {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else if let Some(snapshot) = state.store.current() {
                // The generation, as the controller's `/ready` says its own: `portcullis check
                // --proxy` reads it here (everyone may ask), not from `/metrics`.
                let freshness = if state.store.is_stale() {
                    "stale: no controller connected, enforcing its last table"
                } else {
                    "current"
                };
                owned(
                    StatusCode::OK,
                    format!("ready: generation {}, {freshness}\n", snapshot.generation),
                )
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no policy table loaded yet; new connections are refused\n",
                )
            }
        }
        "/policy" => match state.store.current() {
            Some(snapshot) => {
                let body = serde_json::json!({
                    "pod": state.pod,
                    "generation": snapshot.generation,
                    "source": snapshot.source,
                    "loaded_at": snapshot.loaded_at,
                    "stale": state.store.is_stale(),
                    "enforced_protocols": state.enforced_protocols(),
                    "inbound_tcp": state.inbound_tcp.as_str(),
                    "table": &*snapshot.table,
                    "dns_learned": state.dns.snapshot(),
                });
                json(StatusCode::OK, &body)
            }
            None => json(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({
                    "pod": state.pod,
                    "generation": 0,
                    "enforced_protocols": state.enforced_protocols(),
                    "inbound_tcp": state.inbound_tcp.as_str(),
                    "error": "no policy table loaded yet",
                }),
            ),
        },
        "/metrics" if !metrics_allowed(state, peer) => text(StatusCode::FORBIDDEN, METRICS_REFUSED),
        "/metrics" => match &state.prometheus {
            Some(handle) => Response::builder()
                .header("content-type", "text/plain; version=0.0.4")
                .body(Full::new(Bytes::from(handle.render())))
                .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "render failed\n")),
            None => text(StatusCode::NOT_FOUND, "metrics are disabled\n"),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /metrics, /ready, /live or /policy\n",
        ),
    }
}

/// `/metrics` is refused to a peer the pod's ingress policy does not admit on the admin port.
pub const METRICS_REFUSED: &str = "this pod's ingress policy does not admit you on the admin \
    port (TCP): /metrics names the pod's peers, so it answers whom the pod's NetworkPolicies \
    admit on that port, the node and loopback; allow your Prometheus there (see \
    docs/operations.md), or use `kubectl port-forward`\n";

/// Whether `peer` may read `/metrics`: as an inbound TCP connection to the admin port, judged by
/// the pod's table (loopback and the node are allowed there). No table yet: loopback only.
fn metrics_allowed(state: &AdminState, peer: SocketAddr) -> bool {
    let ip = canonical(peer.ip());
    let Some(snapshot) = state.store.current() else {
        return ip.is_loopback();
    };
    let decision = decide_protocol(
        &snapshot.table,
        state.mode,
        Direction::Ingress,
        ip,
        state.admin_port,
        Protocol::Tcp,
    );
    let event = match &decision {
        Decision::Allow(_) => return true,
        Decision::Deny(_) => AuditEvent::Denied,
        Decision::AuditAllow(_) => AuditEvent::WouldDeny,
    };
    state.audit.record(AuditRecord {
        event,
        direction: Direction::Ingress,
        source: peer,
        destination: SocketAddr::new(
            snapshot.table.ips.first().copied().unwrap_or(ip),
            state.admin_port,
        ),
        peer_pod: state.store.peer_name(ip),
        pod: state.pod.clone(),
        verdict: Some(decision.verdict().clone()),
        generation: snapshot.generation,
        protocol: Protocol::Tcp,
        service: None,
        staged_by: Vec::new(),
    });
    decision.lets_through()
}

fn owned(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r
}

fn json(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut bytes = serde_json::to_vec_pretty(body).unwrap_or_default();
    bytes.push(b'\n');
    let mut r = Response::new(Full::new(Bytes::from(bytes)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(state: &AdminState, path: &str, peer: &str) -> (StatusCode, String) {
        let req = Request::get(path).body(()).expect("request");
        let response = respond(state, &req, peer.parse().expect("peer"));
        let status = response.status();
        let body = futures_body(response);
        (status, body)
    }

    fn futures_body(response: Response<Full<Bytes>>) -> String {
        use http_body_util::BodyExt;
        let collected = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(response.into_body().collect())
            .expect("body");
        String::from_utf8_lossy(&collected.to_bytes()).into_owned()
    }

    fn state(prometheus: Option<PrometheusHandle>) -> AdminState {
        AdminState {
            store: Arc::new(PolicyStore::new()),
            prometheus,
            draining: Default::default(),
            pod: "x/web".into(),
            udp_enforced: true,
            inbound_tcp: crate::config::InboundTcp::Queue,
            mode: Mode::Enforce,
            admin_port: 4191,
            audit: Arc::new(AuditLog::new(
                std::time::Duration::from_secs(10),
                crate::audit::LineBudget::UNLIMITED,
            )),
            dns: Arc::new(crate::dns::DnsState::new(Vec::new(), Default::default())),
        }
    }

    /// `x/web` admits only the `monitoring` namespace on the admin port, and `x/client` on 80.
    const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: monitoring, labels: {kubernetes.io/metadata.name: monitoring}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: x, labels: {app: web}}
status: {podIP: 10.0.0.1, hostIP: 192.168.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: x, labels: {app: client}}
status: {podIP: 10.0.0.2, hostIP: 192.168.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: prometheus, namespace: monitoring, labels: {app: prometheus}}
status: {podIP: 10.0.0.3, hostIP: 192.168.0.1}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: x}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{port: 80}]
  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: monitoring}}}]
    ports: [{port: 4191}]
"#;

    #[test]
    fn metrics_answer_whom_the_ingress_policy_admits_on_the_admin_port() {
        let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
            .build_recorder()
            .handle();
        let state = state(Some(handle));
        // No table yet: loopback only.
        assert_eq!(
            get(&state, "/metrics", "10.0.0.3:1").0,
            StatusCode::FORBIDDEN
        );
        assert_eq!(get(&state, "/metrics", "127.0.0.1:1").0, StatusCode::OK);
        let mut cluster = portcullis_policy::Cluster::new();
        let report = portcullis_policy::manifest::load_into(&mut cluster, CLUSTER, "t.yaml");
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        cluster.ensure_implied_namespaces();
        let table = portcullis_policy::compile(&cluster)
            .table("x/web")
            .expect("table")
            .clone();
        state.store.publish(table, "test", None);
        assert_eq!(
            get(&state, "/metrics", "10.0.0.3:1").0,
            StatusCode::OK,
            "Prometheus"
        );
        assert_eq!(
            get(&state, "/metrics", "192.168.0.1:1").0,
            StatusCode::OK,
            "the node"
        );
        assert_eq!(
            get(&state, "/metrics", "[::1]:1").0,
            StatusCode::OK,
            "loopback"
        );
        let (status, body) = get(&state, "/metrics", "10.0.0.2:1");
        assert_eq!(status, StatusCode::FORBIDDEN, "a pod admitted on 80 only");
        assert!(body.contains("ingress policy"), "{body}");
        assert_eq!(
            get(&state, "/metrics", "10.9.9.9:1").0,
            StatusCode::FORBIDDEN
        );
        // The probes answer everyone.
        assert_eq!(get(&state, "/live", "10.9.9.9:1").0, StatusCode::OK);
        assert_eq!(
            get(&state, "/ready", "10.9.9.9:1"),
            (StatusCode::OK, "ready: generation 1, current\n".into())
        );
    }

    #[test]
    fn the_table_answers_loopback_only_and_the_probes_answer_everyone() {
        let state = state(None);
        let (status, body) = get(&state, "/policy", "10.0.0.2:40000");
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(body.contains("kubectl port-forward"), "{body}");
        let (status, _) = get(&state, "/policy", "[fd00::2]:40000");
        assert_eq!(status, StatusCode::FORBIDDEN);
        // No table yet: 503 for loopback peers, whatever their spelling.
        for peer in ["127.0.0.1:40000", "[::1]:40000", "[::ffff:127.0.0.1]:40000"] {
            assert_eq!(
                get(&state, "/policy", peer).0,
                StatusCode::SERVICE_UNAVAILABLE,
                "{peer}"
            );
        }
        assert_eq!(get(&state, "/live", "10.0.0.2:1").0, StatusCode::OK);
        assert_eq!(
            get(&state, "/ready", "10.0.0.2:1").0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            get(&state, "/metrics", "127.0.0.1:1").0,
            StatusCode::NOT_FOUND
        );
    }
}
