//! Plain-HTTP admin endpoints: `/metrics`, `/ready` (200 once every kind is listed and until
//! shutdown starts), `/live`, and `/v1/unprotected` (JSON: pods of opted-in namespaces running
//! without the proxy or with an exemption, and why), and `/v1/cluster-network-policies` (JSON:
//! whether the ClusterNetworkPolicy CRD is installed and watched, how many CNPs are in force, and
//! the invalid ones by name, with every reason). Guarded like the table API: `--admin-max-connections`
//! (`--admin-max-connections-per-peer` from one address), `--header-timeout`, `--idle-timeout`.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::hub::Hub;
use crate::protection::Protection;

use portcullis_serve_guard::{accept_loop, Guard, Plain};

pub struct Admin {
    pub hub: Arc<Hub>,
    /// Unprotected pods (kube mode; empty in file mode, where pods carry no containers).
    pub protection: Arc<Protection>,
    /// Whether ClusterNetworkPolicies are watched (the CRD may not be installed).
    pub cnps: Arc<crate::cnp_watch::CnpStatus>,
    pub prometheus: Option<PrometheusHandle>,
    pub draining: AtomicBool,
}

/// Serves the admin endpoints until `shutdown` turns true (the guarded accept loop of
/// [`portcullis_serve_guard`]).
pub async fn serve(
    listener: TcpListener,
    admin: Arc<Admin>,
    guard: Arc<Guard>,
    shutdown: watch::Receiver<bool>,
) {
    let make_service = move |_peer| {
        let admin = admin.clone();
        hyper::service::service_fn(move |req| {
            let response = respond(&admin, &req);
            async move { Ok::<_, Infallible>(response) }
        })
    };
    accept_loop(listener, guard, Plain, make_service, shutdown).await;
}

pub fn respond<B>(admin: &Admin, req: &Request<B>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
    }
    match req.uri().path() {
        "/live" => text(StatusCode::OK, "live\n".into()),
        "/v1/unprotected" => {
            json(serde_json::json!({ "unprotected": admin.protection.unprotected() }))
        }
        "/v1/cluster-network-policies" => json(cnp_report(admin)),
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

/// `{"crd":{"state","servedVersions","message"},"inForce":N,"nodes":N,"invalid":[...]}`.
pub fn cnp_report(admin: &Admin) -> serde_json::Value {
    let (in_force, nodes) = admin.hub.cnp_sizes();
    serde_json::json!({
        "crd": admin.cnps.get(),
        "inForce": in_force,
        "nodes": nodes,
        "invalid": admin.hub.invalid_cnps(),
    })
}

fn json(body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = text(StatusCode::OK, format!("{body}\n"));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use portcullis_serve_guard::{GuardMetrics, Limits};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    async fn get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<String> {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok(out)
    }

    #[tokio::test]
    async fn half_sent_requests_hold_at_most_the_cap_and_the_probes_come_back() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let admin = Arc::new(Admin {
            hub: Arc::new(Hub::new()),
            protection: Arc::default(),
            cnps: Arc::default(),
            prometheus: None,
            draining: Default::default(),
        });
        let guard = Guard::new(
            Limits {
                max_connections: 4,
                max_connections_per_peer: 0,
                header_read_timeout: Duration::from_millis(300),
                idle_timeout: Duration::from_secs(60),
            },
            GuardMetrics::default(),
        );
        let (_stop, stop_rx) = watch::channel(false);
        tokio::spawn(serve(listener, admin, guard.clone(), stop_rx));
        assert!(get(addr, "/live").await.expect("live").contains("200 OK"));

        let mut slow = Vec::new();
        for _ in 0..20 {
            // Beyond the cap the reset may come before connect() returns.
            let Ok(mut s) = TcpStream::connect(addr).await else {
                continue;
            };
            let _ = s.write_all(b"GET /live HTTP/1.1\r\nHost: x\r\n").await;
            slow.push(s);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(guard.active(), 4, "held beyond the cap");
        // The slow ones are dropped at the header timeout; the probe answers again.
        let mut answered = false;
        for _ in 0..100 {
            if let Ok(out) = get(addr, "/live").await {
                if out.contains("200 OK") {
                    answered = true;
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(answered, "/live never answered again");
        drop(slow);
    }
}
