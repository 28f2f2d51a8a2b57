//! One proxied connection, from the decision to the last byte.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_policy::service::{judge, BackendVerdict, Frontend};
use portcullis_policy::{Direction, Verdict};
use socket2::SockRef;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use crate::audit::{AuditEvent, AuditRecord, ServiceNote, REFUSED_LISTED};
use crate::authorize::{decide, Decision};
use crate::balance::Active;
use crate::config::Mode;
use crate::relay::{relay, ByteCounters};
use crate::route::Route;
use crate::store::Snapshot;
use crate::telemetry::{count_decision, count_refused, count_service};
use crate::Context;

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
            src = %route.source,
            dst = %route.destination,
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

/// A connection to a Service's virtual IP: the backends it may still try.
pub struct ServiceTarget {
    /// `namespace/name`.
    pub name: String,
    /// Backends this pod's egress allows (in audit mode, when none is allowed, the refused ones).
    pub candidates: Vec<SocketAddr>,
}

/// How many backends a connection to a Service tries before it gives up.
pub const SERVICE_CONNECT_ATTEMPTS: usize = 3;

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
    let peer_pod = ctx.store.peer_name(&snapshot.table, route.peer());
    let peer_namespace = peer_pod
        .as_deref()
        .and_then(|p| p.split_once('/'))
        .map(|p| p.0);
    count_decision(route.direction, decision.label(), peer_namespace);
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
fn admit(
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
                src = %route.source,
                dst = %route.destination,
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

/// A connection to `ClusterIP:port`: judged on every backend kube-proxy could pick (the egress
/// table on the backend's IP and target port, as a CNI judges it after the DNAT), and sent only
/// to an allowed one.
fn plan_service(
    ctx: &Context,
    route: &Route,
    snapshot: &Snapshot,
    frontend: Frontend<'_>,
) -> Option<Target> {
    let service = frontend.service.to_string();
    let namespace = service.split_once('/').map(|s| s.0);
    let judgement = judge(&snapshot.table, frontend.port);
    if judgement.no_endpoints() {
        count_service(&service, "no_endpoints");
        let mut record = audit_record(ctx, route, snapshot, None, AuditEvent::NoEndpoints);
        record.service = Some(ServiceNote {
            service,
            backend: None,
            refused: Vec::new(),
        });
        ctx.audit.record(record);
        return None;
    }
    let addr = |b: &BackendVerdict<'_>| SocketAddr::new(b.backend.ip, b.backend.port);
    let (decision, candidates) = match (judgement.allowed.first(), judgement.denied.first()) {
        (Some(first), _) => (
            Decision::Allow(first.verdict.clone()),
            judgement.allowed.iter().map(addr).collect(),
        ),
        (None, Some(first)) if ctx.mode == Mode::Audit => (
            Decision::AuditAllow(first.verdict.clone()),
            judgement.denied.iter().map(addr).collect(),
        ),
        (None, Some(first)) => (Decision::Deny(first.verdict.clone()), Vec::new()),
        // Excluded by `no_endpoints` above.
        (None, None) => return None,
    };
    count_decision(route.direction, decision.label(), namespace);
    count_service(&service, decision.label());
    let note = ServiceNote {
        service: service.clone(),
        backend: None,
        // Only a denial or an audit line lists them: an allowed connection formats nothing.
        refused: match decision {
            Decision::Allow(_) => Vec::new(),
            _ => refused_list(&judgement.denied),
        },
    };
    if !admit(ctx, route, snapshot, &decision, Some(note)) {
        return None;
    }
    Some(Target {
        decision,
        // Replaced by the backend `open` picks.
        destination: route.destination,
        service: Some(ServiceTarget {
            name: service,
            candidates,
        }),
    })
}

/// `ip:port (ns/pod): reason` for the first refused backends, then how many more.
pub(crate) fn refused_list(denied: &[BackendVerdict<'_>]) -> Vec<String> {
    let mut out: Vec<String> = denied
        .iter()
        .take(REFUSED_LISTED)
        .map(|d| {
            let b = d.backend;
            let pod = b
                .pod
                .as_deref()
                .map(|p| format!(" ({p})"))
                .unwrap_or_default();
            format!("{}{pod}: {}", SocketAddr::new(b.ip, b.port), d.verdict)
        })
        .collect();
    if denied.len() > REFUSED_LISTED {
        out.push(format!("and {} more", denied.len() - REFUSED_LISTED));
    }
    out
}

/// Connects upstream. For a Service, picks among the allowed backends and, when a connect
/// fails, tries another one, at most [`SERVICE_CONNECT_ATTEMPTS`] in all. `None` when nothing
/// could be reached (logged and counted).
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
    for _ in 0..SERVICE_CONNECT_ATTEMPTS {
        let Some(backend) = ctx.balancer.pick(&service.candidates) else {
            break;
        };
        let active = ctx.balancer.track(backend);
        match connect(route.direction, backend, ctx.connect_timeout).await {
            Ok(s) => {
                target.destination = backend;
                return Some((s, Some(active)));
            }
            Err(e) => {
                metrics.connect_errors.increment(1);
                connect_failed(route, backend, Some(&service.name), &e);
                service.candidates.retain(|c| *c != backend);
            }
        }
    }
    count_service(&service.name, "connect_failed");
    None
}

fn connect_failed(route: &Route, to: SocketAddr, service: Option<&str>, e: &std::io::Error) {
    tracing::info!(
        event = "connect_failed",
        direction = route.direction.as_str(),
        src = %route.source,
        dst = %route.destination,
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
                    src = %route.source,
                    dst = %route.destination,
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
                src = %route.source,
                dst = %route.destination,
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
    // With `--proxy-mark`, marked: only then do portcullis-init's rules let it out unredirected.
    let socket = crate::mark::socket_for(destination)?;
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
            format!("no answer within {timeout:?}"),
        )),
    }
}

fn audit_record(
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
        peer_pod: ctx.store.peer_name(&snapshot.table, route.peer()),
        pod: ctx.pod.clone(),
        verdict,
        generation: snapshot.generation,
        protocol: portcullis_policy::Protocol::Tcp,
        service: None,
    }
}
