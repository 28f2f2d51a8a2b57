//! Limits for Portcullis' small HTTP servers: the proxy's admin port (4191), the controller's
//! table API (8443) and its admin port (9990).
//!
//! Each of them is reachable from every pod, and each of them, unguarded, kept every connection
//! it accepted for as long as the client liked: 20,000 half-sent requests exhausted the proxy's
//! descriptors (and with them the pod's traffic) and its memory. A [`Guard`] gives a server:
//!
//! - a connection cap, in total and per peer address: beyond it a new connection is reset at
//!   once (and counted), so the server never holds more than the cap, and one peer cannot take
//!   every slot;
//! - a header-read timeout (hyper's, driven by [`TokioTimer`]): a client that does not send a
//!   complete request head in time is disconnected; it also bounds how long an idle keep-alive
//!   connection waits for its next request;
//! - an idle timeout: a connection that moves no byte either way for that long is closed (a
//!   client that stops reading a response, a stream that went quiet);
//! - a small request-head buffer, so a held connection costs little memory.
//!
//! [`accept_loop`] is the one accept loop of all three servers (plain or TLS, any service), and
//! [`Descriptors`] fits a server's cap to the descriptor limit.

mod accept;
mod descriptors;

pub use accept::{accept_loop, Handshake, Plain, ACCEPT_BACKOFF};
pub use descriptors::{nofile_limit, raise_nofile_limit, Descriptors, Fitted};

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Room for a request head: plenty for a bearer token, little to hold on to.
pub const MAX_HEAD_BUFFER: usize = 16 * 1024;

/// What a guarded server allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections held at once.
    pub max_connections: usize,
    /// Connections held at once from one peer address; 0 for no per-peer limit.
    pub max_connections_per_peer: usize,
    /// Time to send a complete request head (and, for TLS, to finish the handshake first).
    pub header_read_timeout: Duration,
    /// A connection that moves no byte for this long is closed.
    pub idle_timeout: Duration,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections` are held.
    Full,
    /// `max_connections_per_peer` are held from this peer.
    PeerFull,
}

impl Refusal {
    /// The `reason` label of the refused-connections counters.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Full => "max_connections",
            Refusal::PeerFull => "max_connections_per_peer",
        }
    }
}

/// How a guarded connection ended, when not normally.
#[derive(Debug)]
pub enum ConnectionEnd {
    /// The client sent nothing complete within the header-read timeout (or the TLS handshake
    /// took longer), or moved no byte for the idle timeout.
    TimedOut,
    /// An HTTP or I/O error.
    Failed(String),
}

/// Metric handles a guard updates (the caller names them; no-ops without a recorder).
#[derive(Clone, Default)]
pub struct GuardMetrics {
    /// Connections held now.
    pub active: Option<metrics::Gauge>,
    /// Refused at the cap, by reason.
    pub refused_full: Option<metrics::Counter>,
    pub refused_peer_full: Option<metrics::Counter>,
    /// Closed by the header-read or idle timeout.
    pub timed_out: Option<metrics::Counter>,
}

/// The connection cap and timeouts of one server.
pub struct Guard {
    limits: Limits,
    metrics: GuardMetrics,
    active: AtomicUsize,
    per_peer: Mutex<HashMap<IpAddr, usize>>,
}

impl Guard {
    pub fn new(limits: Limits, metrics: GuardMetrics) -> Arc<Guard> {
        Arc::new(Guard {
            limits,
            metrics,
            active: AtomicUsize::new(0),
            per_peer: Mutex::new(HashMap::new()),
        })
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Connections held now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// Takes a slot for a connection from `peer`, held until the [`Admission`] is dropped.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Admission, Refusal> {
        let peer = canonical(peer);
        let refused = |why: Refusal| {
            let counter = match why {
                Refusal::Full => &self.metrics.refused_full,
                Refusal::PeerFull => &self.metrics.refused_peer_full,
            };
            if let Some(c) = counter {
                c.increment(1);
            }
            why
        };
        // One lock for both counts, so that they never disagree.
        let mut per_peer = self.per_peer.lock().unwrap_or_else(|p| p.into_inner());
        if self.active.load(Ordering::SeqCst) >= self.limits.max_connections {
            return Err(refused(Refusal::Full));
        }
        let from_peer = per_peer.entry(peer).or_insert(0);
        if self.limits.max_connections_per_peer > 0
            && *from_peer >= self.limits.max_connections_per_peer
        {
            return Err(refused(Refusal::PeerFull));
        }
        *from_peer += 1;
        self.active.fetch_add(1, Ordering::SeqCst);
        if let Some(g) = &self.metrics.active {
            g.increment(1.0);
        }
        Ok(Admission {
            guard: self.clone(),
            peer,
        })
    }

    /// The HTTP/1 server settings every guarded server uses.
    pub fn http1(&self) -> hyper::server::conn::http1::Builder {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_read_timeout)
            .max_buf_size(MAX_HEAD_BUFFER)
            .keep_alive(true);
        builder
    }

    /// Serves HTTP/1 on `io` until the client is done, the header-read timeout or the idle
    /// timeout strikes, or the connection fails.
    pub async fn serve<I, S, B>(&self, io: I, service: S) -> Result<(), ConnectionEnd>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: Service<Request<Incoming>, Response = Response<B>> + Send,
        S::Future: Send + 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let activity = Activity::new();
        let tracked = Tracked {
            inner: io,
            activity: activity.clone(),
        };
        let connection = self
            .http1()
            .serve_connection(TokioIo::new(tracked), service);
        let outcome = tokio::select! {
            result = connection => match result {
                Ok(()) => Ok(()),
                Err(e) if e.is_timeout() => Err(ConnectionEnd::TimedOut),
                Err(e) => Err(ConnectionEnd::Failed(e.to_string())),
            },
            _ = activity.idle_for(self.limits.idle_timeout) => Err(ConnectionEnd::TimedOut),
        };
        if matches!(outcome, Err(ConnectionEnd::TimedOut)) {
            if let Some(c) = &self.metrics.timed_out {
                c.increment(1);
            }
        }
        outcome
    }

    /// Runs `handshake` (a TLS accept) within the header-read timeout.
    pub async fn handshake<T, E>(
        &self,
        handshake: impl Future<Output = Result<T, E>>,
    ) -> Result<T, ConnectionEnd>
    where
        E: std::fmt::Display,
    {
        match tokio::time::timeout(self.limits.header_read_timeout, handshake).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(ConnectionEnd::Failed(e.to_string())),
            Err(_) => {
                if let Some(c) = &self.metrics.timed_out {
                    c.increment(1);
                }
                Err(ConnectionEnd::TimedOut)
            }
        }
    }
}

/// A slot of a [`Guard`], given back on drop.
pub struct Admission {
    guard: Arc<Guard>,
    peer: IpAddr,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut per_peer = self
            .guard
            .per_peer
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = per_peer.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per_peer.remove(&self.peer);
            }
        }
        self.guard.active.fetch_sub(1, Ordering::SeqCst);
        if let Some(g) = &self.guard.metrics.active {
            g.decrement(1.0);
        }
    }
}

/// Resets a refused connection: the client sees RST at once, and the server keeps no
/// TIME_WAIT for it.
pub fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// When a connection last moved a byte, in milliseconds since it started.
#[derive(Clone)]
struct Activity {
    started: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    fn new() -> Self {
        Activity {
            started: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    fn touch(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(now, Ordering::Relaxed);
    }

    /// Completes once no byte has moved for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let last = self.started + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline.into()).await;
        }
    }
}

/// An I/O stream that records when it last moved a byte.
struct Tracked<T> {
    inner: T,
    activity: Activity,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
