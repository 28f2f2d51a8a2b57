//! One proxied connection, from the decision to the last byte.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_policy::{Direction, Protocol, Verdict};
use socket2::SockRef;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use super::route::Route;
use super::splice::{relay, ByteCounters, Transferred};
use crate::audit::{AuditEvent, AuditRecord, ServiceNote};
use crate::authorize::{decide, Decision};
use crate::context::Context;
use crate::flows::FlowKey;
use crate::outbound::balance::Active;
use crate::outbound::service::{open_service, plan_service, ServiceTarget};
use crate::store::Snapshot;
use crate::telemetry::{count_decision, count_refused};

/// Resets the connection: the peer sees RST at once, never a hang or a clean close it could
/// mistake for an empty answer.
pub fn reset(stream: TcpStream) {
    let _ = SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// Decides and, if allowed, proxies one accepted connection: [`plan`] (where it may go),
/// [`open`] (the upstream connection, trying another allowed backend of a Service on failure),
/// [`relay_until_revoked`], [`report`]. `_permit` holds a slot of `--max-connections` until the
/// connection ends.
pub async fn serve(
    ctx: Arc<Context>,
    client: TcpStream,
    route: Route,
    _permit: OwnedSemaphorePermit,
) {
    let Some(snapshot) = ctx.store.current() else {
        count_refused(route.direction, "no_policy");
        tracing::warn!(
            event = "connection_refused",
            direction = route.direction.as_str(),
            src_ip = %route.source.ip(),
            src_port = route.source.port(),
            dst_ip = %route.destination.ip(),
            dst_port = route.destination.port(),
            reason = "no policy table loaded yet",
        );
        reset(client);
        return;
    };
    let Some(mut target) = plan(&ctx, &route, &snapshot) else {
        reset(client);
        return;
    };
    let Some((upstream, _active)) = open(&ctx, &route, &mut target).await else {
        reset(client);
        return;
    };
    let started = Instant::now();
    let metrics = ctx.metrics(route.direction);
    metrics.active.increment(1.0);
    let outcome = relay_until_revoked(&ctx, &route, &target, client, upstream).await;
    metrics.active.decrement(1.0);
    metrics.duration.record(started.elapsed().as_secs_f64());
    report(&ctx, &route, &target, outcome, started);
}

/// Where an allowed connection goes, and what allowed it.
pub struct Target {
    pub decision: Decision,
    /// Where the proxy connects: the original destination, or a Service's backend.
    pub destination: SocketAddr,
    pub service: Option<ServiceTarget>,
}

/// Decides where the connection may go; `None` when it is refused (already logged and counted).
fn plan(ctx: &Context, route: &Route, snapshot: &Snapshot) -> Option<Target> {
    if route.direction == Direction::Egress {
        let services = ctx.store.services();
        if let Some(frontend) = services.frontend(route.destination.ip(), route.port()) {
            return plan_service(ctx, route, snapshot, frontend);
        }
    }
    let decision = decide(
        &snapshot.table,
        ctx.mode,
        route.direction,
        route.peer(),
        route.port(),
    );
    let peer_pod = ctx.store.peer_name(route.peer());
    let peer_namespace = peer_pod
        .as_deref()
        .and_then(|p| p.split_once('/'))
        .map(|p| p.0);
    count_decision(
        route.direction,
        decision.label(),
        decision.verdict().tier_label(),
        peer_namespace,
    );
    if ctx.records_flows() {
        ctx.record_flow(
            FlowKey::new(
                route.direction,
                Protocol::Tcp,
                route.peer(),
                route.port(),
                decision.lets_through(),
            )
            .map(|k| k.with_peer_pod(peer_pod)),
        );
    }
    let flow = (route.peer(), route.port(), Protocol::Tcp);
    crate::staged::report(
        &ctx.audit,
        &snapshot.table,
        decision.verdict(),
        flow,
        |e, v| audit_record(ctx, route, snapshot, v, e),
    );
    if !admit(ctx, route, snapshot, &decision, None) {
        return None;
    }
    Some(Target {
        decision,
        destination: route.destination,
        service: None,
    })
}

/// Writes the audit line a decision calls for; false when the connection is refused.
pub fn admit(
    ctx: &Context,
    route: &Route,
    snapshot: &Snapshot,
    decision: &Decision,
    service: Option<ServiceNote>,
) -> bool {
    let event = match decision {
        Decision::Deny(_) => AuditEvent::Denied,
        Decision::AuditAllow(_) => AuditEvent::WouldDeny,
        Decision::Allow(verdict) => {
            tracing::debug!(
                event = "connection_allowed",
                direction = route.direction.as_str(),
                src_ip = %route.source.ip(),
                src_port = route.source.port(),
                dst_ip = %route.destination.ip(),
                dst_port = route.destination.port(),
                service = service.as_ref().map(|s| s.service.as_str()),
                reason = %verdict,
            );
            return true;
        }
    };
    let mut record = audit_record(
        ctx,
        route,
        snapshot,
        Some(decision.verdict().clone()),
        event,
    );
    record.service = service;
    ctx.audit.record(record);
    decision.lets_through()
}

/// Connects upstream: to the original destination, or, for a Service, to one of its allowed
/// backends ([`open_service`]). `None` when nothing could be reached (logged and counted).
async fn open<'c>(
    ctx: &'c Context,
    route: &Route,
    target: &mut Target,
) -> Option<(TcpStream, Option<Active<'c>>)> {
    let metrics = ctx.metrics(route.direction);
    let Some(service) = &mut target.service else {
        return match connect(route.direction, target.destination, ctx.connect_timeout).await {
            Ok(s) => Some((s, None)),
            Err(e) => {
                metrics.connect_errors.increment(1);
                connect_failed(route, target.destination, None, &e);
                None
            }
        };
    };
    open_service(ctx, route, service, &mut target.destination).await
}

pub fn connect_failed(route: &Route, to: SocketAddr, service: Option<&str>, e: &std::io::Error) {
    tracing::info!(
        event = "connect_failed",
        direction = route.direction.as_str(),
        src_ip = %route.source.ip(),
        src_port = route.source.port(),
        dst_ip = %route.destination.ip(),
        dst_port = route.destination.port(),
        backend = %to,
        service,
        error = %e,
    );
}

/// Moves bytes until either side is done, or (with `--on-policy-change=close` in enforce
/// mode) until a new table denies the connection: judged again on where it really goes (for a
/// Service, the backend it went to).
async fn relay_until_revoked(
    ctx: &Context,
    route: &Route,
    target: &Target,
    mut client: TcpStream,
    mut upstream: TcpStream,
) -> Outcome {
    // The accepted socket inherits TCP_NODELAY from its listener; the upstream one is new.
    let _ = upstream.set_nodelay(true);
    let metrics = ctx.metrics(route.direction);
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
    let (peer, port) = match route.direction {
        Direction::Ingress => (route.source.ip(), route.destination.port()),
        Direction::Egress => (target.destination.ip(), target.destination.port()),
    };
    let revoked = crate::revoke::relayed::until_denied(ctx, route.direction, peer, port);
    let transfer = relay(&mut client, &mut upstream, &counters, ctx.relay);
    let result = tokio::select! {
        finished = transfer => Ok(finished),
        denied = revoked => Err(denied),
    };
    match result {
        Ok(finished) => {
            if finished.is_err() {
                // Pass the failure on as a reset to whichever side is still there.
                reset(client);
                reset(upstream);
            }
            Outcome::Finished(finished)
        }
        Err((snapshot, decision)) => {
            reset(client);
            reset(upstream);
            Outcome::Revoked(snapshot, decision)
        }
    }
}

/// Logs and counts how a proxied connection ended.
fn report(ctx: &Context, route: &Route, target: &Target, outcome: Outcome, started: Instant) {
    let service = target.service.as_ref().map(|s| s.name.as_str());
    match outcome {
        Outcome::Finished(Ok(moved)) => {
            if ctx.log_allowed {
                tracing::info!(
                    event = "connection_closed",
                    direction = route.direction.as_str(),
                    src_ip = %route.source.ip(),
                    src_port = route.source.port(),
                    dst_ip = %route.destination.ip(),
                    dst_port = route.destination.port(),
                    backend = %target.destination,
                    service,
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
                src_ip = %route.source.ip(),
                src_port = route.source.port(),
                dst_ip = %route.destination.ip(),
                dst_port = route.destination.port(),
                service,
                error = %e,
            );
        }
        Outcome::Revoked(snapshot, decision) => {
            ctx.metrics(route.direction).terminated.increment(1);
            let mut record = audit_record(
                ctx,
                route,
                &snapshot,
                Some(decision.verdict().clone()),
                AuditEvent::Terminated,
            );
            record.service = target.service.as_ref().map(|s| ServiceNote {
                service: s.name.clone(),
                backend: Some(target.destination),
                refused: Vec::new(),
            });
            ctx.audit.record(record);
        }
    }
}

enum Outcome {
    Finished(std::io::Result<Transferred>),
    Revoked(Arc<Snapshot>, Decision),
}

pub async fn connect(
    direction: Direction,
    destination: SocketAddr,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    // With `--proxy-mark`, marked: only then do portcullis-init's rules let it out unredirected.
    let socket = crate::mark::socket_for(destination)?;
    if direction == Direction::Ingress {
        crate::inbound::relay::bind_source(&socket, destination);
    }
    let connecting = socket.connect(destination);
    tokio::pin!(connecting);
    // Give the event loop one turn before arming a timer: a connect within the node (the
    // application behind an inbound proxy, most pods) has completed by then, and arming a timer
    // costs a wakeup of the event loop on every connection.
    tokio::select! {
        biased;
        done = &mut connecting => return done,
        () = tokio::task::yield_now() => {}
    }
    match tokio::time::timeout(timeout, connecting).await {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "no answer within {}",
                portcullis_contract::format_duration(timeout)
            ),
        )),
    }
}

pub fn audit_record(
    ctx: &Context,
    route: &Route,
    snapshot: &Snapshot,
    verdict: Option<Verdict>,
    event: AuditEvent,
) -> AuditRecord {
    AuditRecord {
        event,
        direction: route.direction,
        source: route.source,
        destination: route.destination,
        peer_pod: ctx.store.peer_name(route.peer()),
        pod: ctx.pod.clone(),
        verdict,
        generation: snapshot.generation,
        protocol: portcullis_policy::Protocol::Tcp,
        service: None,
        staged_by: Vec::new(),
    }
}
