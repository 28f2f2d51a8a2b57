//! The thin HTTP layer: `POST /mutate` over HTTPS, `/healthz` and `/metrics` over plain HTTP.

pub mod metrics;
pub mod namespaces;
pub use portcullis_tls as tls;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use metrics_exporter_prometheus::PrometheusHandle;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::config::InjectorConfig;
use crate::inject::NamespaceDefaults;
use crate::review::{
    encode_review, parse_review, respond, ParseError, Reply, ReviewResult, Target, MAX_BODY_BYTES,
};
use namespaces::NamespaceSource;

/// Everything a request handler needs.
pub struct AppState {
    pub config: InjectorConfig,
    /// Deny pods when the webhook fails, instead of admitting them without the proxy.
    pub fail_closed: bool,
    pub namespaces: NamespaceSource,
    /// Renders `/metrics`; `None` answers 404 there.
    pub metrics: Option<PrometheusHandle>,
}

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

type HttpResponse = Response<Full<Bytes>>;

fn response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> HttpResponse {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn text(status: StatusCode, body: impl Into<String>) -> HttpResponse {
    let mut body = body.into();
    body.push('\n');
    response(status, "text/plain; charset=utf-8", body)
}

/// Parse the body, look up the namespace if needed, decide and answer.
pub async fn admit(state: &AppState, body: &[u8]) -> Result<Reply, ParseError> {
    let parsed = parse_review(body)?;
    let namespace = match &parsed.target {
        Target::Pod { .. } | Target::Ephemeral { .. } => {
            state.namespaces.defaults(parsed.namespace()).await
        }
        _ => NamespaceDefaults::Disabled,
    };
    let reply = respond(&parsed, &namespace, &state.config, state.fail_closed);

    let uid = parsed.request.uid.as_str();
    let ns = parsed.namespace().unwrap_or("-");
    let pod = parsed.pod_name();
    for o in &reply.ignored_overrides {
        tracing::warn!(
            uid,
            namespace = ns,
            pod,
            annotation = o.annotation.as_str(),
            value = o.value.as_str(),
            "pod annotation ignored: it weakens enforcement and the namespace does not allow pod overrides"
        );
        ::metrics::counter!(metrics::IGNORED_OVERRIDES, "annotation" => o.annotation.clone())
            .increment(1);
    }
    let exemptions = reply.exemptions.as_deref().unwrap_or("");
    match &reply.result {
        ReviewResult::Injected(mode) => {
            tracing::info!(uid, namespace = ns, pod, mode = mode.as_str(), exemptions, warnings = %reply.warnings.join("; "), "injected");
            ::metrics::counter!(metrics::INJECTIONS, "sidecar_mode" => mode.as_str()).increment(1);
        }
        ReviewResult::Skipped(reason) => {
            tracing::info!(uid, namespace = ns, pod, reason = reason.label(), exemptions, warnings = %reply.warnings.join("; "), "not injected");
            ::metrics::counter!(metrics::SKIPS, "reason" => reason.label()).increment(1);
        }
        ReviewResult::Denied(why) => {
            tracing::warn!(uid, namespace = ns, pod, reason = why.as_str(), "refused");
        }
        ReviewResult::Ignored(why) => {
            tracing::debug!(uid, namespace = ns, why = why.as_str(), "ignored");
        }
        ReviewResult::Error(why) => {
            tracing::warn!(
                uid,
                namespace = ns,
                pod,
                error = why.as_str(),
                fail_closed = state.fail_closed,
                "injection failed"
            );
            ::metrics::counter!(metrics::ERRORS, "kind" => "injection").increment(1);
        }
    }
    ::metrics::counter!(metrics::REQUESTS, "result" => reply.result.label()).increment(1);
    ::metrics::counter!(metrics::WARNINGS).increment(reply.warnings.len() as u64);
    Ok(reply)
}

async fn mutate(state: &AppState, req: Request<Incoming>) -> HttpResponse {
    let started = Instant::now();
    let body = match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            ::metrics::counter!(metrics::REQUESTS, "result" => "invalid").increment(1);
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                tracing::warn!(limit = MAX_BODY_BYTES, "request body too large");
                return text(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body exceeds {MAX_BODY_BYTES} bytes"),
                );
            }
            tracing::warn!(error = %e, "reading request body failed");
            return text(
                StatusCode::BAD_REQUEST,
                format!("reading request body: {e}"),
            );
        }
    };
    let resp = match admit(state, &body).await {
        Ok(reply) => match encode_review(&reply.review) {
            Ok(json) => response(StatusCode::OK, "application/json", json),
            Err(e) => {
                // Cannot happen with these types; answer something the API server reads as an
                // error (its failurePolicy then applies).
                tracing::error!(error = %e, "encoding the AdmissionReview failed");
                ::metrics::counter!(metrics::ERRORS, "kind" => "encode").increment(1);
                text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("encoding response: {e}"),
                )
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "malformed admission request");
            ::metrics::counter!(metrics::REQUESTS, "result" => "invalid").increment(1);
            text(StatusCode::BAD_REQUEST, e.to_string())
        }
    };
    ::metrics::histogram!(metrics::REQUEST_DURATION).record(started.elapsed().as_secs_f64());
    resp
}

/// Routes of the HTTPS port.
pub async fn route_webhook(
    state: Arc<AppState>,
    req: Request<Incoming>,
) -> Result<HttpResponse, Infallible> {
    Ok(match (req.method(), req.uri().path()) {
        (&Method::POST, "/mutate") => mutate(&state, req).await,
        (_, "/mutate") => {
            let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "use POST");
            resp.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("POST"));
            resp
        }
        (_, "/healthz") => text(StatusCode::OK, "ok"),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; the webhook is POST /mutate",
        ),
    })
}

/// Routes of the plain-HTTP admin port.
pub async fn route_admin(
    state: Arc<AppState>,
    req: Request<Incoming>,
) -> Result<HttpResponse, Infallible> {
    Ok(match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/healthz") => text(StatusCode::OK, "ok"),
        (&Method::GET, "/metrics") => match &state.metrics {
            Some(handle) => response(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                handle.render(),
            ),
            None => text(StatusCode::NOT_FOUND, "metrics are not enabled"),
        },
        _ => text(StatusCode::NOT_FOUND, "not found; try /healthz or /metrics"),
    })
}

/// Serve the webhook over TLS on `listener` until `shutdown` resolves, then let open
/// connections finish for up to `drain`.
pub async fn serve_webhook(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let acceptor = TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let acceptor = acceptor.clone();
        let state = Arc::clone(&state);
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let svc = service_fn(move |req| route_webhook(Arc::clone(&state), req));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(tls), svc);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(drain) => {
            tracing::warn!(
                "connections still open after {}; closing them",
                portcullis_contract::format_duration(drain)
            );
        }
    }
}

/// Serve `/healthz` and `/metrics` over plain HTTP until the task is dropped.
pub async fn serve_admin(listener: TcpListener, state: Arc<AppState>) {
    loop {
        let (tcp, peer): (_, SocketAddr) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let svc = service_fn(move |req| route_admin(Arc::clone(&state), req));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(tcp), svc);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "admin connection ended with an error");
            }
        });
    }
}
