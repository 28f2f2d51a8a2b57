//! The accept loop every guarded server runs: accept, take a slot of the [`Guard`] or reset the
//! connection at once, and serve the admitted connection (after its TLS handshake, when the
//! server speaks TLS) on a task of its own until the client is done or a timeout strikes.

use std::future::{ready, Future};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper::{Request, Response};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::{reset, ConnectionEnd, Guard};

/// How long the loop waits after a failed `accept` (`EMFILE` and friends) instead of spinning.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What turns an admitted TCP connection into the stream HTTP is served on: [`Plain`], or a
/// TLS acceptor. The handshake runs within the header-read timeout.
pub trait Handshake: Clone + Send + Sync + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn handshake(&self, tcp: TcpStream) -> impl Future<Output = io::Result<Self::Io>> + Send;
}

/// Plain HTTP: the TCP stream as it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct Plain;

impl Handshake for Plain {
    type Io = TcpStream;
    fn handshake(&self, tcp: TcpStream) -> impl Future<Output = io::Result<TcpStream>> + Send {
        ready(Ok(tcp))
    }
}

#[cfg(feature = "tls")]
impl Handshake for tokio_rustls::TlsAcceptor {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    fn handshake(&self, tcp: TcpStream) -> impl Future<Output = io::Result<Self::Io>> + Send {
        self.accept(tcp)
    }
}

/// Accepts connections on `listener` until `shutdown` turns true, each one guarded by `guard`:
/// beyond the cap a connection is reset at once (holding nothing; the guard counts it);
/// an admitted one is handshaken with `handshake` and served HTTP/1 with the service
/// `make_service` builds for its peer. Connections already served keep going after the loop
/// returns (a service that streams watches `shutdown` itself).
pub async fn accept_loop<H, M, S, B>(
    listener: TcpListener,
    guard: Arc<Guard>,
    handshake: H,
    make_service: M,
    mut shutdown: watch::Receiver<bool>,
) where
    H: Handshake,
    M: Fn(SocketAddr) -> S + Send + Sync + 'static,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let make_service = Arc::new(make_service);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Ok(admission) = guard.admit(peer.ip()) else {
            reset(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let guard = guard.clone();
        let handshake = handshake.clone();
        let make_service = make_service.clone();
        tokio::spawn(async move {
            // Held until the connection ends, however it ends.
            let _admission = admission;
            let io = match guard.handshake(handshake.handshake(tcp)).await {
                Ok(io) => io,
                Err(e) => {
                    tracing::debug!(%peer, error = ?e, "handshake failed");
                    return;
                }
            };
            match guard.serve(io, make_service(peer)).await {
                Ok(()) => {}
                Err(ConnectionEnd::TimedOut) => {
                    tracing::debug!(%peer, "connection closed: no complete request in time, or idle")
                }
                Err(ConnectionEnd::Failed(e)) => {
                    tracing::debug!(%peer, error = %e, "connection ended with an error")
                }
            }
        });
    }
}
