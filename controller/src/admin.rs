//! Plain-HTTP admin endpoints: `/metrics`, `/ready` (200 once every kind is listed and until
//! shutdown starts), `/live`, and `/v1/unprotected` (JSON: pods of opted-in namespaces running
//! without the proxy or with an exemption, and why).

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

use crate::hub::Hub;
use crate::protection::Protection;

pub struct Admin {
    pub hub: Arc<Hub>,
    /// Unprotected pods (kube mode; empty in file mode, where pods carry no containers).
    pub protection: Arc<Protection>,
    pub prometheus: Option<PrometheusHandle>,
    pub draining: AtomicBool,
}

pub async fn serve(listener: TcpListener, admin: Arc<Admin>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(respond(&admin, &req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

pub fn respond<B>(admin: &Admin, req: &Request<B>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
    }
    match req.uri().path() {
        "/live" => text(StatusCode::OK, "live\n".into()),
        "/v1/unprotected" => {
            let body = serde_json::json!({ "unprotected": admin.protection.unprotected() });
            let mut r = text(StatusCode::OK, format!("{body}\n"));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            r
        }
        "/ready" => {
            if admin.draining.load(Ordering::Relaxed) {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n".into())
            } else if admin.hub.is_ready() {
                let (namespaces, pods, policies, tables) = admin.hub.sizes();
                text(
                    StatusCode::OK,
                    format!(
                        "ready: generation {}, {namespaces} namespaces, {pods} pods, {policies} policies, {tables} tables\n",
                        admin.hub.generation()
                    ),
                )
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: the initial list of namespaces, pods and policies is not complete\n"
                        .into(),
                )
            }
        }
        "/metrics" => match &admin.prometheus {
            Some(handle) => {
                let mut r = text(StatusCode::OK, handle.render());
                r.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                r
            }
            None => text(StatusCode::NOT_FOUND, "metrics are not enabled\n".into()),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /metrics, /ready or /live\n".into(),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}
