//! One proxied connection, from the decision to the last byte.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_policy::Direction;
use socket2::SockRef;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::OwnedSemaphorePermit;

use crate::audit::{AuditEvent, AuditRecord};
use crate::authorize::{decide, Decision};
use crate::config::{Mode, OnPolicyChange};
use crate::relay::{relay, ByteCounters};
use crate::route::Route;
use crate::store::Snapshot;
use crate::telemetry::{count_decision, count_refused};
use crate::Context;

/// Resets the connection: the peer sees RST at once, never a hang or a clean close it could
/// mistake for an empty answer.
pub fn reset(stream: TcpStream) {
    let _ = SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// Decides and, if allowed, proxies one accepted connection. `_permit` holds a slot of
/// `--max-connections` until the connection ends.
pub async fn serve(
    ctx: Arc<Context>,
    mut client: TcpStream,
    route: Route,
    _permit: OwnedSemaphorePermit,
) {
    let Some(snapshot) = ctx.store.current() else {
        count_refused(route.direction, "no_policy");
        tracing::warn!(
            event = "connection_refused",
            direction = route.direction.as_str(),
            src = %route.source,
            dst = %route.destination,
            reason = "no policy table loaded yet",
        );
        reset(client);
        return;
    };
    let decision = decide(
        &snapshot.table,
        ctx.mode,
        route.direction,
        route.peer(),
        route.port(),
    );
    let peer_pod = ctx.store.peer_name(&snapshot.table, route.peer());
    let peer_namespace = peer_pod
        .as_deref()
        .and_then(|p| p.split_once('/'))
        .map(|p| p.0);
    count_decision(route.direction, decision.label(), peer_namespace);
    match &decision {
        Decision::Deny(_) => {
            ctx.audit.record(audit_record(
                &ctx,
                &route,
                &snapshot,
                &decision,
                AuditEvent::Denied,
            ));
            reset(client);
            return;
        }
        Decision::AuditAllow(_) => {
            ctx.audit.record(audit_record(
                &ctx,
                &route,
                &snapshot,
                &decision,
                AuditEvent::WouldDeny,
            ));
        }
        Decision::Allow(verdict) => {
            tracing::debug!(
                event = "connection_allowed",
                direction = route.direction.as_str(),
                src = %route.source,
                dst = %route.destination,
                reason = %verdict,
            );
        }
    }

    let metrics = ctx.metrics(route.direction);
    let mut upstream = match connect(route.direction, route.destination, ctx.connect_timeout).await
    {
        Ok(s) => s,
        Err(e) => {
            metrics.connect_errors.increment(1);
            tracing::info!(
                event = "connect_failed",
                direction = route.direction.as_str(),
                src = %route.source,
                dst = %route.destination,
                error = %e,
            );
            reset(client);
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);

    metrics.active.increment(1.0);
    let started = Instant::now();
    let counters = match route.direction {
        // The peer opened an ingress connection; this pod's application opened an egress one.
        Direction::Ingress => ByteCounters {
            client_to_server: metrics.from_peer.clone(),
            server_to_client: metrics.to_peer.clone(),
        },
        Direction::Egress => ByteCounters {
            client_to_server: metrics.to_peer.clone(),
            server_to_client: metrics.from_peer.clone(),
        },
    };
    let revocable = ctx.on_policy_change == OnPolicyChange::Close && ctx.mode == Mode::Enforce;
    let mut policy_changes = ctx.store.subscribe();
    let outcome = {
        let transfer = relay(&mut client, &mut upstream, &counters, ctx.relay);
        tokio::pin!(transfer);
        loop {
            tokio::select! {
                result = &mut transfer => break Outcome::Finished(result),
                changed = policy_changes.changed(), if revocable => {
                    if changed.is_err() {
                        continue;
                    }
                    if let Some(new) = ctx.store.current() {
                        let d = decide(&new.table, ctx.mode, route.direction, route.peer(), route.port());
                        if !d.lets_through() {
                            break Outcome::Revoked(new, d);
                        }
                    }
                }
            }
        }
    };
    metrics.active.decrement(1.0);
    metrics.duration.record(started.elapsed().as_secs_f64());
    match outcome {
        Outcome::Finished(Ok(moved)) => {
            if ctx.log_allowed {
                tracing::info!(
                    event = "connection_closed",
                    direction = route.direction.as_str(),
                    src = %route.source,
                    dst = %route.destination,
                    bytes_client_to_server = moved.client_to_server,
                    bytes_server_to_client = moved.server_to_client,
                    duration_ms = started.elapsed().as_millis() as u64,
                );
            }
        }
        Outcome::Finished(Err(e)) => {
            tracing::debug!(
                event = "connection_error",
                direction = route.direction.as_str(),
                src = %route.source,
                dst = %route.destination,
                error = %e,
            );
            // Pass the failure on as a reset to whichever side is still there.
            reset(client);
            reset(upstream);
        }
        Outcome::Revoked(snapshot, decision) => {
            metrics.terminated.increment(1);
            ctx.audit.record(audit_record(
                &ctx,
                &route,
                &snapshot,
                &decision,
                AuditEvent::Terminated,
            ));
            reset(client);
            reset(upstream);
        }
    }
}

enum Outcome {
    Finished(std::io::Result<crate::relay::Transferred>),
    Revoked(Arc<Snapshot>, Decision),
}

/// Source address of the inbound proxy's connections to the application (IPv4), as Istio's
/// sidecar uses: a loopback source lets the kernel reuse TIME_WAIT ports (`tcp_tw_reuse`'s
/// default covers loopback only). The proxy usually closes first toward the application, so with
/// the pod IP as source every short inbound connection left a TIME_WAIT on the one
/// (pod IP → app port) pair, and a few hundred new connections a second ran out of ports.
pub const INBOUND_SOURCE_V4: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 0, 0, 6);

async fn connect(
    direction: Direction,
    destination: SocketAddr,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    let socket = match destination {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if direction == Direction::Ingress && destination.is_ipv4() {
        // The port is chosen at connect time, per destination, not at bind time per source.
        let _ = nix::sys::socket::setsockopt(
            &socket,
            nix::sys::socket::sockopt::IpBindAddressNoPort,
            &true,
        );
        if let Err(e) = socket.bind(SocketAddr::from((INBOUND_SOURCE_V4, 0))) {
            tracing::debug!(error = %e, "cannot bind the upstream to {INBOUND_SOURCE_V4}; using the default source");
        }
    }
    match tokio::time::timeout(timeout, socket.connect(destination)).await {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {timeout:?}"),
        )),
    }
}

fn audit_record(
    ctx: &Context,
    route: &Route,
    snapshot: &Snapshot,
    decision: &Decision,
    event: AuditEvent,
) -> AuditRecord {
    AuditRecord {
        event,
        direction: route.direction,
        source: route.source,
        destination: route.destination,
        peer_pod: ctx.store.peer_name(&snapshot.table, route.peer()),
        pod: ctx.pod.clone(),
        verdict: decision.verdict().clone(),
        generation: snapshot.generation,
        protocol: portcullis_policy::Protocol::Tcp,
    }
}
