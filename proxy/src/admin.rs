//! The admin listener: `/metrics`, `/ready`, `/live`, `/policy`.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
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

pub async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(respond(&state, &req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

pub fn respond<B>(state: &AdminState, req: &Request<B>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    match req.uri().path() {
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
