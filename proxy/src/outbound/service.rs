//! Outbound connections to a Service's virtual IP (`ClusterIP:port`): judged on every backend
//! kube-proxy could pick, sent only to an allowed one ([`plan_service`]), spread by
//! [`super::balance`], retried on another backend when a connect fails ([`open_service`]).

use std::net::{IpAddr, SocketAddr};

use portcullis_policy::service::{judge, BackendVerdict, Frontend, ServiceJudgement};
use portcullis_policy::Protocol;
use tokio::net::TcpStream;

use super::balance::Active;
use crate::audit::{AuditEvent, ServiceNote, REFUSED_LISTED};
use crate::authorize::Decision;
use crate::config::Mode;
use crate::context::Context;
use crate::flows::FlowKey;
use crate::relay::connection::{admit, audit_record, connect, connect_failed, Target};
use crate::relay::route::Route;
use crate::store::Snapshot;
use crate::telemetry::{count_decision, count_service};

/// A connection to a Service's virtual IP: the backends it may still try.
pub struct ServiceTarget {
    /// `namespace/name`.
    pub name: String,
    /// Backends this pod's egress allows (in audit mode, when none is allowed, the refused ones).
    pub candidates: Vec<SocketAddr>,
}

/// How many backends a connection to a Service tries before it gives up.
pub const SERVICE_CONNECT_ATTEMPTS: usize = 3;

/// A connection to `ClusterIP:port`: judged on every backend kube-proxy could pick (the egress
/// table on the backend's IP and target port, as a CNI judges it after the DNAT), and sent only
/// to an allowed one.
pub fn plan_service(
    ctx: &Context,
    route: &Route,
    snapshot: &Snapshot,
    frontend: Frontend<'_>,
) -> Option<Target> {
    let service = frontend.service.to_string();
    let namespace = service.split_once('/').map(|s| s.0);
    let judgement = of_family(
        judge(&snapshot.table, frontend.port),
        route.destination.ip(),
    );
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
    count_decision(
        route.direction,
        decision.label(),
        decision.verdict().tier_label(),
        namespace,
    );
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
    if !decision.lets_through() {
        record_refused(ctx, route, &judgement, &service);
    }
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

/// Counts a refused Service connection in the flow records. It is refused before any backend
/// is picked: recorded on the backend whose verdict the audit line gives (an allowed connection
/// is recorded on the backend it reaches, in [`open_service`]).
fn record_refused(ctx: &Context, route: &Route, judgement: &ServiceJudgement<'_>, service: &str) {
    ctx.record_flow(judgement.denied.first().and_then(|d| {
        let b = d.backend;
        let key = FlowKey::new(route.direction, Protocol::Tcp, b.ip, b.port, false)?;
        Some(
            key.with_peer_pod(b.pod.as_deref().map(str::to_string))
                .with_service(Some(service.to_string())),
        )
    }));
}

/// The backends of `judgement` in the family of `cluster_ip`: a ClusterIP leads only to the
/// endpoints of its own family (EndpointSlices are per family; kube-proxy programs each family
/// apart), so a connection to an IPv6 ClusterIP goes to the backends' IPv6 addresses.
pub(crate) fn of_family(
    mut judgement: ServiceJudgement<'_>,
    cluster_ip: IpAddr,
) -> ServiceJudgement<'_> {
    let v4 = cluster_ip.to_canonical().is_ipv4();
    judgement.allowed.retain(|b| b.backend.ip.is_ipv4() == v4);
    judgement.denied.retain(|b| b.backend.ip.is_ipv4() == v4);
    judgement
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

/// Picks among the allowed backends and, when a connect fails, tries another one, at most
/// [`SERVICE_CONNECT_ATTEMPTS`] in all; sets `destination` to the backend reached. `None` when
/// none could be reached (logged and counted).
pub async fn open_service<'c>(
    ctx: &'c Context,
    route: &Route,
    service: &mut ServiceTarget,
    destination: &mut SocketAddr,
) -> Option<(TcpStream, Option<Active<'c>>)> {
    let metrics = ctx.metrics(route.direction);
    for _ in 0..SERVICE_CONNECT_ATTEMPTS {
        let Some(backend) = ctx.balancer.pick(&service.candidates) else {
            break;
        };
        let active = ctx.balancer.track(backend);
        match connect(route.direction, backend, ctx.connect_timeout).await {
            Ok(s) => {
                if ctx.records_flows() {
                    let key = FlowKey::new(
                        route.direction,
                        Protocol::Tcp,
                        backend.ip(),
                        backend.port(),
                        true,
                    );
                    ctx.record_flow(key.map(|k| {
                        k.with_peer_pod(ctx.store.peer_name(backend.ip()))
                            .with_service(Some(service.name.clone()))
                    }));
                }
                *destination = backend;
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
