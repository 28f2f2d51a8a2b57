//! The admin listener: `/metrics`, `/ready`, `/live`, `/policy`.
//!
//! Reachable from every pod (the redirect skips it), so it is guarded
//! ([`portcullis_serve_guard`]): at most `--admin-max-connections` at once
//! (`--admin-max-connections-per-peer` from one address), a header-read and an idle timeout;
//! the descriptors it may hold are set aside from the data path's budget ([`crate::limits`]).
//! `/policy` (the pod's whole table) answers loopback peers only, which is what
//! `kubectl port-forward` is; `/metrics`, `/ready` and `/live` stay open to scrapers and kubelet.

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

use crate::store::PolicyStore;

pub struct AdminState {
    pub store: Arc<PolicyStore>,
    pub prometheus: Option<PrometheusHandle>,
    /// Set on SIGTERM, so that the pod leaves Service endpoints while it drains.
    pub draining: AtomicBool,
    pub pod: String,
    /// Whether UDP and SCTP are enforced (`--enforce-udp`); TCP always is.
    pub udp_enforced: bool,
    /// Where inbound TCP is judged (`--inbound-tcp`).
    pub inbound_tcp: crate::config::InboundTcp,
}

impl AdminState {
    /// `/policy`'s `enforced_protocols`: what this proxy decides, protocol by protocol.
    pub fn enforced_protocols(&self) -> serde_json::Value {
        serde_json::json!({
            "TCP": true,
            "UDP": self.udp_enforced,
            "SCTP": self.udp_enforced,
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
            } else if state.store.current().is_some() {
                text(StatusCode::OK, "ready\n")
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

    #[test]
    fn the_table_answers_loopback_only_and_the_probes_answer_everyone() {
        let state = AdminState {
            store: Arc::new(PolicyStore::new()),
            prometheus: None,
            draining: Default::default(),
            pod: "x/web".into(),
            udp_enforced: true,
            inbound_tcp: crate::config::InboundTcp::Queue,
        };
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
            get(&state, "/metrics", "10.0.0.2:1").0,
            StatusCode::NOT_FOUND
        );
    }
}
