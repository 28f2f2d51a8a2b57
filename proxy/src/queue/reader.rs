//! The NFQUEUE reader: one OS thread of its own, blocking on netlink, answering accept or drop
//! for the first packet of each new UDP/SCTP flow and each queued TCP SYN (refusing a denied
//! outbound one with a reset). It never touches the async runtime, so a
//! busy queue cannot slow the TCP data path, and a stalled runtime cannot hold up verdicts.
//!
//! Crate: `nfq` 0.2 (pure Rust over libc, MIT/Apache): it binds the queue, receives packets with
//! their hook, and sends verdicts; the packet bytes themselves are read by [`super::packet`].

use std::io;
use std::sync::Arc;
use std::time::Duration;

use nfq::{Queue, Verdict as NfVerdict};
use portcullis_contract::REFUSED_MARK;
use portcullis_policy::{Direction, Protocol};

use super::flow::{decide_flow, FlowDecision};
use super::packet::{self, Flow};
use crate::audit::{AuditEvent, AuditRecord};
use crate::authorize::Decision;
use crate::context::Context;
use crate::flows::FlowKey;
use crate::telemetry::{
    count_flow_decision, count_flow_refused, DATAGRAMS_MALFORMED, QUEUE_ERRORS,
};

/// Netfilter hooks (`enum nf_inet_hooks`), as each queued packet reports where it was queued.
const NF_INET_LOCAL_IN: u8 = 1;
const NF_INET_LOCAL_OUT: u8 = 3;

/// How much of each packet the kernel copies to us: the IP header, IPv6 extension headers and
/// the ports fit; the rest of the datagram stays in the kernel.
const COPY_RANGE: u16 = 256;
/// Packets waiting for a verdict before the kernel drops new ones (fail closed).
const QUEUE_MAX_LEN: u32 = 4096;

/// The queue cannot be read: a start error, with what to do about it.
#[derive(Debug, thiserror::Error)]
#[error("cannot read NFQUEUE {queue} for UDP/SCTP enforcement: {source}{}", hint(.source))]
pub struct BindError {
    pub queue: u16,
    pub source: io::Error,
}

fn hint(source: &io::Error) -> &'static str {
    match source.raw_os_error() {
        Some(nix::libc::EPERM) => {
            " (the proxy needs CAP_NET_ADMIN in the pod's network namespace to read the queue: \
             NET_ADMIN in the container's capabilities, and, as a non-root user, ambient or \
             from the binary's file capability `cap_net_admin+p` (which needs \
             allowPrivilegeEscalation: true); or set PORTCULLIS_ENFORCE_UDP=false to leave \
             UDP and SCTP unenforced)"
        }
        Some(nix::libc::EBUSY) => " (another process already reads this queue)",
        _ => "",
    }
}

/// Opens and binds the queue (on the caller's thread, so that failing is a start error).
pub fn bind(queue_num: u16) -> Result<Queue, BindError> {
    let err = |source| BindError {
        queue: queue_num,
        source,
    };
    let mut queue = Queue::open().map_err(err)?;
    queue.bind(queue_num).map_err(err)?;
    queue.set_copy_range(queue_num, COPY_RANGE).map_err(err)?;
    queue.set_fail_open(queue_num, false).map_err(err)?;
    queue
        .set_queue_max_len(queue_num, QUEUE_MAX_LEN)
        .map_err(err)?;
    Ok(queue)
}

/// Where a queued packet was going, by the hook that queued it: the pod's `INPUT` (ingress)
/// or `OUTPUT` (egress). Both queue rules use the one queue number; the hook tells them apart.
pub fn direction_of(hook: u8) -> Option<Direction> {
    match hook {
        NF_INET_LOCAL_IN => Some(Direction::Ingress),
        NF_INET_LOCAL_OUT => Some(Direction::Egress),
        _ => None,
    }
}

/// The peer of a flow, as the policy sees it.
pub fn peer(flow: &Flow, direction: Direction) -> std::net::IpAddr {
    match direction {
        Direction::Ingress => flow.source.ip(),
        Direction::Egress => flow.destination.ip(),
    }
}

/// Reads the queue until the socket fails for good. Each packet gets exactly one verdict.
pub fn run(mut queue: Queue, ctx: Arc<Context>) -> io::Error {
    let mut consecutive_errors = 0u32;
    loop {
        let mut msg = match queue.recv() {
            Ok(m) => m,
            Err(e) => {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                metrics::counter!(QUEUE_ERRORS, "operation" => "receive").increment(1);
                consecutive_errors += 1;
                tracing::error!(event = "queue_error", operation = "receive", error = %e);
                if consecutive_errors >= 100 {
                    return e;
                }
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        consecutive_errors = 0;
        let verdict = if msg.get_nfmark() & REFUSED_MARK.get() != 0 {
            // Already refused once: it should have met the reset rule. Never repeat it again.
            Verdict::Drop
        } else {
            judge(&ctx, msg.get_hook(), msg.get_payload())
        };
        match verdict {
            Verdict::Accept => msg.set_verdict(NfVerdict::Accept),
            Verdict::Drop => msg.set_verdict(NfVerdict::Drop),
            Verdict::Refuse => {
                // Back through filter OUTPUT with the mark: portcullis-init's first rule there
                // answers it with a reset, so the application's connect() fails at once.
                msg.set_nfmark(msg.get_nfmark() | REFUSED_MARK.get());
                msg.set_verdict(NfVerdict::Repeat);
            }
        }
        if let Err(e) = queue.verdict(msg) {
            // The packet stays queued until the kernel gives up on it: dropped, never accepted.
            metrics::counter!(QUEUE_ERRORS, "operation" => "verdict").increment(1);
            tracing::error!(event = "queue_error", operation = "verdict", error = %e);
        }
    }
}

/// What becomes of one queued packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    /// Dropped silently: inbound denials (as CNIs do), datagrams, anything unreadable.
    Drop,
    /// A denied outbound TCP SYN: answered with a reset (`ECONNREFUSED` in the application)
    /// rather than left to retransmit for minutes.
    Refuse,
}

impl Verdict {
    /// Accepted or not; a refusal is a denial.
    pub fn accepts(self) -> bool {
        self == Verdict::Accept
    }

    /// How a denial ends: outbound TCP is refused at once, everything else dropped.
    fn denial(direction: Direction, protocol: Protocol) -> Verdict {
        if direction == Direction::Egress && protocol == Protocol::Tcp {
            Verdict::Refuse
        } else {
            Verdict::Drop
        }
    }
}

/// Decides one queued packet. Malformed packets, unknown hooks and packets that arrive before
/// the first table are dropped; a denied outbound TCP connection is refused.
pub fn judge(ctx: &Context, hook: u8, payload: &[u8]) -> Verdict {
    let Some((flow, direction)) = read(hook, payload) else {
        return Verdict::Drop;
    };
    let denied = Verdict::denial(direction, flow.protocol);
    let Some(snapshot) = ctx.store.current() else {
        count_flow_refused(direction, flow.protocol, "no_policy");
        return denied;
    };
    let peer = peer(&flow, direction);
    let FlowDecision { decision, service } = decide_now(ctx, &snapshot, direction, peer, &flow);
    let peer_pod = ctx.store.peer_name(peer);
    if let (Some(d), true) = (&decision, ctx.records_flows()) {
        record_flow(
            ctx,
            &flow,
            direction,
            peer,
            d.lets_through(),
            &peer_pod,
            &service,
        );
    }
    let record = |event, verdict| AuditRecord {
        event,
        verdict,
        peer_pod: peer_pod.clone(),
        ..flow_record(ctx, &flow, direction, snapshot.generation)
    };
    if let (Some(d), None) = (&decision, &service) {
        let key = (peer, flow.destination.port(), flow.protocol);
        crate::staged::report(&ctx.audit, &snapshot.table, d.verdict(), key, record);
    }
    let (event, verdict, accept) = match &decision {
        None => {
            count_flow_refused(direction, flow.protocol, "no_endpoints");
            (AuditEvent::NoEndpoints, None, false)
        }
        Some(d) => {
            let peer_namespace = peer_pod
                .as_deref()
                .and_then(|p| p.split_once('/'))
                .map(|p| p.0);
            count_flow_decision(
                direction,
                flow.protocol,
                d.label(),
                d.verdict().tier_label(),
                peer_namespace,
            );
            let event = match d {
                Decision::Allow(_) => return Verdict::Accept,
                Decision::Deny(_) => AuditEvent::Denied,
                Decision::AuditAllow(_) => AuditEvent::WouldDeny,
            };
            (event, Some(d.verdict().clone()), d.lets_through())
        }
    };
    ctx.audit.record(AuditRecord {
        service,
        ..record(event, verdict)
    });
    if accept {
        Verdict::Accept
    } else {
        denied
    }
}

/// The flow's decision now, with the Services and what the pod learned from DNS.
fn decide_now(
    ctx: &Context,
    snapshot: &crate::store::Snapshot,
    direction: Direction,
    peer: std::net::IpAddr,
    flow: &Flow,
) -> FlowDecision {
    let services = ctx.store.services();
    let now = std::time::Instant::now();
    ctx.dns.with(|dns| {
        decide_flow(
            snapshot,
            &services,
            ctx.mode,
            direction,
            peer,
            flow.destination.port(),
            flow.protocol,
            &dns.learned().at(now),
        )
    })
}

/// The flow a queued packet starts and its direction; `None` (counted) when either cannot be
/// read.
fn read(hook: u8, payload: &[u8]) -> Option<(Flow, Direction)> {
    let flow = match packet::parse(payload) {
        Ok(f) => f,
        Err(m) => {
            metrics::counter!(DATAGRAMS_MALFORMED, "reason" => m.label()).increment(1);
            tracing::debug!(
                event = "datagram_malformed",
                reason = m.label(),
                len = payload.len()
            );
            return None;
        }
    };
    let Some(direction) = direction_of(hook) else {
        metrics::counter!(DATAGRAMS_MALFORMED, "reason" => "unexpected_hook").increment(1);
        return None;
    };
    Some((flow, direction))
}

/// Counts a judged flow in the flow records: on the peer as the packet named it (for a Service,
/// its ClusterIP: the kernel, not the proxy, picks the backend).
fn record_flow(
    ctx: &Context,
    flow: &Flow,
    direction: Direction,
    peer: std::net::IpAddr,
    went_through: bool,
    peer_pod: &Option<String>,
    service: &Option<crate::audit::ServiceNote>,
) {
    let key = FlowKey::new(
        direction,
        flow.protocol,
        peer,
        flow.destination.port(),
        went_through,
    );
    ctx.record_flow(key.map(|k| {
        k.with_peer_pod(peer_pod.clone())
            .with_service(service.as_ref().map(|s| s.service.clone()))
    }));
}

/// The audit line of a queued flow, without peer name, verdict or Service (`connection_denied`
/// until the caller says otherwise).
fn flow_record(ctx: &Context, flow: &Flow, direction: Direction, generation: u64) -> AuditRecord {
    AuditRecord {
        event: AuditEvent::Denied,
        direction,
        source: flow.source,
        destination: flow.destination,
        peer_pod: None,
        pod: ctx.pod.clone(),
        verdict: None,
        service: None,
        generation,
        protocol: flow.protocol,
        staged_by: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_outbound_tcp_denials_are_refused_the_rest_dropped() {
        assert_eq!(
            Verdict::denial(Direction::Egress, Protocol::Tcp),
            Verdict::Refuse
        );
        for (direction, protocol) in [
            (Direction::Ingress, Protocol::Tcp),
            (Direction::Egress, Protocol::Udp),
            (Direction::Egress, Protocol::Sctp),
            (Direction::Ingress, Protocol::Udp),
        ] {
            assert_eq!(Verdict::denial(direction, protocol), Verdict::Drop);
        }
        assert!(Verdict::Accept.accepts());
        assert!(!Verdict::Refuse.accepts() && !Verdict::Drop.accepts());
    }
}
