//! Binding the listeners and accepting on them, with limits and back-off.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use portcullis_policy::Direction;
use socket2::{Domain, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::connection::{reset, serve};
use super::route::{route, RouteError};
use crate::context::Context;
use crate::inbound::relay::FOREIGN_DESTINATION_LOG;
use crate::telemetry::count_refused;

/// Binds every address; IPv6 ones that the pod cannot bind (no IPv6) are skipped with a warning.
/// Fails when none of them can be bound.
pub fn bind_all(addrs: &[SocketAddr], what: &str) -> anyhow::Result<Vec<std::net::TcpListener>> {
    let mut listeners = Vec::new();
    for addr in addrs {
        match bind_shared(*addr) {
            Ok(l) => listeners.push(l),
            Err(e) if addr.is_ipv6() => {
                tracing::warn!(%addr, error = %e, "cannot bind the IPv6 {what} listener; serving IPv4 only");
            }
            Err(e) => anyhow::bail!("cannot bind the {what} listener on {addr}: {e}"),
        }
    }
    if listeners.is_empty() {
        let addrs: Vec<String> = addrs.iter().map(ToString::to_string).collect();
        anyhow::bail!("no {what} listener could be bound on {}", addrs.join(", "));
    }
    Ok(listeners)
}

/// A non-blocking listening socket of its own (the admin port).
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    bind_with(addr, false)
}

/// A non-blocking listening socket in an `SO_REUSEPORT` group, so that each data-plane thread
/// binds its own socket on the same address (only processes of the proxy's own UID can join the
/// group).
pub fn bind_shared(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    bind_with(addr, true)
}

fn bind_with(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if addr.is_ipv6() {
        // `[::]` and `0.0.0.0` on the same port: each family gets its own socket.
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// Accepts until `shutdown` turns true.
pub async fn accept_loop(
    listener: TcpListener,
    direction: Direction,
    ctx: Arc<Context>,
    mut shutdown: watch::Receiver<bool>,
) {
    let Ok(local) = listener.local_addr() else {
        return;
    };
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        match accepted {
            Ok((stream, source)) => {
                let Ok(permit) = ctx.connection_slots.clone().try_acquire_owned() else {
                    count_refused(direction, "max_connections");
                    tracing::warn!(
                        event = "connection_refused",
                        direction = direction.as_str(),
                        src_ip = %source.ip(),
                        src_port = source.port(),
                        reason = "--max-connections reached",
                    );
                    reset(stream);
                    continue;
                };
                match route(direction, &stream, source, local, &ctx.pod_addresses) {
                    Ok(r) => {
                        tokio::spawn(serve(ctx.clone(), stream, r, permit));
                    }
                    Err(e) => {
                        count_refused(direction, e.metric_reason());
                        log_refused_route(direction, source, &e);
                        reset(stream);
                    }
                }
            }
            Err(e) if is_resource_exhaustion(&e) => {
                // Out of file descriptors or memory: spinning on accept would make it worse.
                tracing::warn!(direction = direction.as_str(), error = %e, "accept failed; backing off");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => {
                tracing::debug!(direction = direction.as_str(), error = %e, "accept failed");
            }
        }
    }
}

/// A foreign destination is an attack or a broken `POD_IPS`: a `connection_refused` warning
/// (throttled); anything else stays at debug level.
fn log_refused_route(direction: Direction, source: SocketAddr, e: &RouteError) {
    match e {
        RouteError::ForeignDestination { why, destination } => {
            if let Some(suppressed) = FOREIGN_DESTINATION_LOG.admit(std::time::Instant::now()) {
                tracing::warn!(
                    event = "connection_refused",
                    direction = direction.as_str(),
                    src_ip = %source.ip(),
                    src_port = source.port(),
                    dst_ip = %destination.ip(),
                    dst_port = destination.port(),
                    reason = why.log_reason(),
                    suppressed,
                );
            }
        }
        _ => {
            tracing::debug!(direction = direction.as_str(), src_ip = %source.ip(), src_port = source.port(), error = %e, "refused");
        }
    }
}

fn is_resource_exhaustion(e: &io::Error) -> bool {
    use nix::errno::Errno;
    matches!(
        e.raw_os_error().map(Errno::from_raw),
        Some(Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM)
    )
}
