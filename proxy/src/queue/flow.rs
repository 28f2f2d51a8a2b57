//! The decision on one flow the queue judges (UDP, SCTP, inbound TCP, and every other IP
//! protocol but ICMP, which the table treats as port-less), shared by the queue (first packet)
//! and revocation (established conntrack entries).
//!
//! A flow to a Service's virtual IP is judged like a TCP connection to one: on every backend the
//! node's kube-proxy could DNAT it to (egress on the backend's IP and target port). Unlike TCP,
//! the proxy does not pick the backend: the kernel sends the datagram on and kube-proxy picks one
//! at random among the ready endpoints. So the flow is accepted only when the pod's egress allows
//! **every** candidate backend; when some are denied it is dropped (fail closed), and the audit
//! line names the Service and the refused endpoints. The classic case, default-deny egress plus
//! "DNS to the kube-dns pods on 53/UDP", allows every backend of `kube-dns` and resolves.

use std::net::IpAddr;

use portcullis_policy::dns::Learned;
use portcullis_policy::service::judge;
use portcullis_policy::{Direction, Protocol};

use crate::audit::ServiceNote;
use crate::authorize::{decide_learned, Decision};
use crate::config::Mode;
use crate::outbound::service::{of_family, refused_list};
use crate::store::{Services, Snapshot};

/// What the table says about a flow, and the Service it was for, if any.
pub struct FlowDecision {
    /// `None`: a Service with no ready endpoint (nothing was judged; the flow is dropped).
    pub decision: Option<Decision>,
    pub service: Option<ServiceNote>,
}

impl FlowDecision {
    pub fn lets_through(&self) -> bool {
        self.decision.as_ref().is_some_and(Decision::lets_through)
    }
}

/// Decides a flow of this pod with `peer` on `port`/`protocol` (the destination port), with
/// what the pod `learned` from its DNS lookups (`domainNames` rules; not for Services).
#[allow(clippy::too_many_arguments)]
pub fn decide_flow(
    snapshot: &Snapshot,
    services: &Services,
    mode: Mode,
    direction: Direction,
    peer: IpAddr,
    port: u16,
    protocol: Protocol,
    learned: &dyn Learned,
) -> FlowDecision {
    let frontend = match direction {
        Direction::Egress => services.frontend_for(peer, port, protocol),
        Direction::Ingress => None,
    };
    let Some(frontend) = frontend else {
        return FlowDecision {
            decision: Some(decide_learned(
                &snapshot.table,
                mode,
                direction,
                peer,
                port,
                protocol,
                learned,
            )),
            service: None,
        };
    };
    let judgement = of_family(judge(&snapshot.table, frontend.port), peer);
    let note = |refused| ServiceNote {
        service: frontend.service.to_string(),
        backend: None,
        refused,
    };
    if judgement.no_endpoints() {
        return FlowDecision {
            decision: None,
            service: Some(note(Vec::new())),
        };
    }
    let decision = match (judgement.denied.first(), judgement.allowed.first()) {
        (None, Some(allowed)) => Decision::Allow(allowed.verdict.clone()),
        (Some(denied), _) => match mode {
            Mode::Enforce => Decision::Deny(denied.verdict.clone()),
            Mode::Audit => Decision::AuditAllow(denied.verdict.clone()),
        },
        // Excluded by `no_endpoints` above.
        (None, None) => {
            return FlowDecision {
                decision: None,
                service: Some(note(Vec::new())),
            }
        }
    };
    let mut refused = refused_list(&judgement.denied);
    if !judgement.denied.is_empty() && !judgement.allowed.is_empty() {
        refused.push(format!(
            "{} allowed backend(s) not enough: kube-proxy picks any ready backend of a {} Service",
            judgement.allowed.len(),
            protocol
        ));
    }
    FlowDecision {
        decision: Some(decision),
        service: Some(note(refused)),
    }
}
