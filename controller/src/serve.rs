//! The table API: `GET /v1/tables/{namespace}/{pod}` streams that pod's table as
//! newline-delimited JSON (the line types are `portcullis_wire::Line`): a hello with the wire
//! version, the current table at once and every change after it, and the peer names:
//!
//! ```text
//! {"hello":{"v":3}}
//! {"table":{"generation":12,"table":{...}}}
//! {"peers":{"version":40,"names":{...}}}
//! {"services":{"version":7,"services":{...}}}
//! {"heartbeat":{}}
//! {"table":{"generation":15,"table":{...}}}
//! ```
//!
//! `"table":null` means the controller knows no such pod (yet). A heartbeat goes out after
//! [`ServeOptions::heartbeat`] of silence, so that proxies can tell a quiet controller from a dead
//! connection. On shutdown every stream ends, and proxies reconnect to another replica.
//!
//! The port is reachable from every pod, so connections are guarded ([`Guard`]): at most
//! `--max-connections` (`--max-connections-per-peer` from one address), beyond which new ones are
//! reset at once; the TLS handshake and the request head must arrive within `--header-timeout`;
//! a connection that moves no byte for `--idle-timeout` (longer than the heartbeat) is closed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

// `{TABLES_PATH}{namespace}/{pod}` → (namespace, pod), both non-empty and without further `/`.
use portcullis_contract::stream::{parse_table_path as table_path, TABLES_PATH};
use portcullis_serve_guard::{accept_loop, Guard, Limits, Plain};
use portcullis_wire::{Heartbeat, Hello, Line, TableUpdate};

use crate::hub::{peers_line, services_line, Hub, Versioned};
use crate::telemetry;
use crate::token_review::{AuthError, Authenticator};

#[derive(Clone)]
pub struct ServeOptions {
    pub heartbeat: Duration,
    /// Connection cap and timeouts of the table API.
    pub limits: Limits,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            heartbeat: Duration::from_secs(15),
            limits: Limits {
                max_connections: 16_384,
                max_connections_per_peer: 256,
                header_read_timeout: Duration::from_secs(10),
                idle_timeout: Duration::from_secs(60),
            },
        }
    }
}

pub struct TableServer {
    pub hub: Arc<Hub>,
    pub auth: Authenticator,
    pub options: ServeOptions,
    /// Holds the connection cap; `guard.active()` is how many connections are held now.
    pub guard: Arc<Guard>,
}

type Body = BoxBody<Bytes, Infallible>;

impl TableServer {
    pub fn new(hub: Arc<Hub>, auth: Authenticator, options: ServeOptions) -> Arc<TableServer> {
        let guard = Guard::new(options.limits, telemetry::guard_metrics("api"));
        Arc::new(TableServer {
            hub,
            auth,
            options,
            guard,
        })
    }

    /// Accepts connections until `shutdown` turns true (the guarded accept loop of
    /// [`portcullis_serve_guard`]); then stops accepting and ends every stream (each connection
    /// finishes the line it is writing).
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Option<TlsAcceptor>,
        shutdown: watch::Receiver<bool>,
    ) {
        let guard = self.guard.clone();
        let streams_end = shutdown.clone();
        let make_service = move |peer: SocketAddr| {
            let this = self.clone();
            let shutdown = streams_end.clone();
            hyper::service::service_fn(move |req| {
                let this = this.clone();
                let shutdown = shutdown.clone();
                async move { Ok::<_, Infallible>(this.route(req, peer, shutdown).await) }
            })
        };
        match tls {
            Some(acceptor) => accept_loop(listener, guard, acceptor, make_service, shutdown).await,
            None => accept_loop(listener, guard, Plain, make_service, shutdown).await,
        }
    }

    pub async fn route<B>(
        &self,
        req: Request<B>,
        peer: SocketAddr,
        shutdown: watch::Receiver<bool>,
    ) -> Response<Body> {
        if req.method() != Method::GET {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
        }
        let path = req.uri().path().to_string();
        let Some((namespace, pod)) = table_path(&path) else {
            return text(
                StatusCode::NOT_FOUND,
                &format!("not found; tables are at {TABLES_PATH}{{namespace}}/{{pod}}\n"),
            );
        };
        let token = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if let Err(e) = self.auth.authorize(token, namespace, pod).await {
            metrics::counter!(telemetry::AUTH_FAILURES, "reason" => e.reason()).increment(1);
            tracing::warn!(event = "stream_refused", %peer, pod = %format!("{namespace}/{pod}"), error = %e);
            let status = match e {
                AuthError::MissingToken | AuthError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
                AuthError::WrongPod { .. } | AuthError::NotAPod(_) => StatusCode::FORBIDDEN,
                AuthError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            };
            return text(status, &format!("{e}\n"));
        }
        let key = format!("{namespace}/{pod}");
        tracing::info!(event = "stream_opened", %peer, pod = %key);
        let rx = self.hub.subscribe(namespace, pod);
        let body = table_stream(key, self.hub.clone(), rx, self.options.heartbeat, shutdown);
        let mut response = Response::new(body);
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static(portcullis_wire::CONTENT_TYPE),
        );
        response
    }
}

/// Peer-name updates go out at most this often per stream: a burst of pod churn becomes one
/// delta.
const PEER_UPDATE_INTERVAL: Duration = Duration::from_secs(1);

/// Service updates go out at most this often per stream. Shorter than for peer names: an
/// endpoint that stops being ready should stop taking new connections quickly, and a rollout's
/// burst of endpoint changes still becomes a few deltas.
const SERVICE_UPDATE_INTERVAL: Duration = Duration::from_millis(100);

/// One map a stream follows (peer names or Services): what it has sent, and when it may send
/// again.
struct Cursor {
    changes: watch::Receiver<u64>,
    sent: u64,
    due: Option<Instant>,
    last: Instant,
    interval: Duration,
}

impl Cursor {
    fn new(changes: watch::Receiver<u64>, interval: Duration) -> Self {
        Cursor {
            changes,
            sent: 0,
            // Right after the first table: the whole map.
            due: None,
            last: Instant::now(),
            interval,
        }
    }

    /// Something changed: send once the interval since the last update has passed.
    fn changed(&mut self) {
        self.changes.borrow_and_update();
        self.due = Some((self.last + self.interval).max(Instant::now()));
    }

    fn sent(&mut self, version: u64) {
        self.due = None;
        self.sent = version;
        self.last = Instant::now();
    }
}

/// One stream's state between lines.
struct StreamState {
    key: String,
    hub: Arc<Hub>,
    rx: watch::Receiver<Versioned>,
    ready: watch::Receiver<bool>,
    peers: Cursor,
    services: Cursor,
    shutdown: watch::Receiver<bool>,
    heartbeat: Duration,
    hello_sent: bool,
    first: bool,
    _active: ActiveStream,
}

/// One line per table version; the peer names and the Services (each: whole map first, then
/// what changed); a heartbeat after each quiet period; the end on shutdown.
fn table_stream(
    key: String,
    hub: Arc<Hub>,
    rx: watch::Receiver<Versioned>,
    heartbeat: Duration,
    shutdown: watch::Receiver<bool>,
) -> Body {
    let state = StreamState {
        key,
        ready: hub.ready_changes(),
        peers: Cursor::new(hub.peer_changes(), PEER_UPDATE_INTERVAL),
        services: Cursor::new(hub.service_changes(), SERVICE_UPDATE_INTERVAL),
        hub,
        rx,
        shutdown,
        heartbeat,
        hello_sent: false,
        first: true,
        _active: ActiveStream::new(),
    };
    let lines = stream::unfold(state, next_line);
    let frames = futures_util::StreamExt::map(lines, |line| {
        metrics::counter!(telemetry::STREAM_BYTES).increment(line.len() as u64);
        Ok::<_, Infallible>(Frame::data(line))
    });
    BodyExt::boxed(StreamBody::new(frames))
}

/// The next line of a stream, or `None` at its end.
async fn next_line(mut s: StreamState) -> Option<(Bytes, StreamState)> {
    if !s.hello_sent {
        // At once, before the wait below: the proxy learns the version even while the
        // controller is still listing.
        s.hello_sent = true;
        return Some((encode(&Line::Hello(Hello::current()))?, s));
    }
    if s.first {
        // Until every kind is listed, a table could be missing rules: wait for the complete
        // view rather than hand out a table that allows too much.
        tokio::select! {
            _ = s.ready.wait_for(|r| *r) => {}
            _ = s.shutdown.wait_for(|stop| *stop) => return None,
        }
        s.first = false;
        s.peers.due = Some(Instant::now());
        s.services.due = Some(Instant::now());
        let current = s.rx.borrow_and_update().clone();
        return Some((table_line(&s.key, &current)?, s));
    }
    enum Next {
        Table,
        PeersChanged,
        PeersDue,
        ServicesChanged,
        ServicesDue,
        Quiet,
        End,
    }
    loop {
        let (peers_due, services_due) = (s.peers.due, s.services.due);
        let next = tokio::select! {
            // Services before peer names: they decide where connections go.
            biased;
            changed = s.rx.changed() => if changed.is_ok() { Next::Table } else { Next::End },
            _ = sleep_until_due(services_due) => Next::ServicesDue,
            _ = sleep_until_due(peers_due) => Next::PeersDue,
            changed = s.services.changes.changed(), if services_due.is_none() => {
                if changed.is_ok() { Next::ServicesChanged } else { Next::End }
            }
            changed = s.peers.changes.changed(), if peers_due.is_none() => {
                if changed.is_ok() { Next::PeersChanged } else { Next::End }
            }
            _ = tokio::time::sleep(s.heartbeat) => Next::Quiet,
            _ = s.shutdown.wait_for(|stop| *stop) => Next::End,
        };
        match next {
            Next::Table => {
                let current = s.rx.borrow_and_update().clone();
                return Some((table_line(&s.key, &current)?, s));
            }
            Next::PeersChanged => s.peers.changed(),
            Next::ServicesChanged => s.services.changed(),
            Next::PeersDue => {
                s.peers.changes.borrow_and_update();
                s.peers.due = None;
                if let Some(update) = s.hub.peers_since(s.peers.sent) {
                    s.peers.sent(update.version());
                    return Some((encode(&peers_line(update))?, s));
                }
            }
            Next::ServicesDue => {
                s.services.changes.borrow_and_update();
                s.services.due = None;
                if let Some(update) = s.hub.services_since(s.services.sent) {
                    s.services.sent(update.version());
                    metrics::counter!(telemetry::STREAM_SERVICE_UPDATES).increment(1);
                    return Some((encode(&services_line(update))?, s));
                }
            }
            Next::Quiet => return Some((encode(&Line::Heartbeat(Heartbeat {}))?, s)),
            Next::End => return None,
        }
    }
}

async fn sleep_until_due(due: Option<Instant>) {
    match due {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// One line as sent. A line is plain data and serialising it cannot fail short of a bug; if it
/// ever does, the stream ends there (the proxy keeps its last table and reconnects) rather than
/// leave a gap in what it was told.
fn encode(line: &Line) -> Option<Bytes> {
    match line.encode() {
        Ok(bytes) => Some(Bytes::from(bytes)),
        Err(e) => {
            tracing::error!(error = %e, kind = line.kind(), "could not serialise a stream line; ending the stream");
            None
        }
    }
}

fn table_line(key: &str, v: &Versioned) -> Option<Bytes> {
    metrics::counter!(telemetry::STREAM_UPDATES).increment(1);
    tracing::debug!(event = "table_sent", pod = %key, generation = v.generation);
    encode(&Line::Table(TableUpdate {
        generation: v.generation,
        table: v.table.clone(),
    }))
}

/// Keeps the active-streams gauge honest however a stream ends.
struct ActiveStream;

impl ActiveStream {
    fn new() -> Self {
        metrics::gauge!(telemetry::STREAMS_ACTIVE).increment(1.0);
        ActiveStream
    }
}

impl Drop for ActiveStream {
    fn drop(&mut self) {
        metrics::gauge!(telemetry::STREAMS_ACTIVE).decrement(1.0);
    }
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut r = Response::new(BodyExt::boxed(Full::new(Bytes::from(body.to_string()))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::table_path;

    #[test]
    fn table_paths_are_parsed_strictly() {
        assert_eq!(table_path("/v1/tables/shop/web-1"), Some(("shop", "web-1")));
        assert_eq!(table_path("/v1/tables/shop/"), None);
        assert_eq!(table_path("/v1/tables//web"), None);
        assert_eq!(table_path("/v1/tables/shop/web/extra"), None);
        assert_eq!(table_path("/v1/table/shop/web"), None);
    }
}
