//! From flow records to observations: who the pod was (its workload), who the peer was, on
//! which server port.

use std::collections::BTreeSet;

use portcullis_contract::log::{FlowDirection, FlowProtocol, FlowSummary, FlowVerdict};
use portcullis_policy::{PodInfo, Protocol};

use crate::workload::{Index, Peer, WorkloadId};

/// One observed flow, as a policy can name it. A flow to a Service becomes one observation per
/// workload behind the Service (any of them may have answered).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    /// Index of the flow record it comes from.
    pub flow: usize,
    pub subject: WorkloadId,
    /// `namespace/name` of a live pod of the subject workload (the logged pod, or one standing
    /// for it).
    pub subject_pod: String,
    pub direction: FlowDirection,
    pub peer: Peer,
    /// `namespace/name` of a live pod standing for a workload peer.
    pub peer_pod: Option<String>,
    /// The server's port (for a Service, the backend's target port).
    pub port: u16,
    pub protocol: Protocol,
}

/// A flow record advise did not turn into a rule, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub flow: usize,
    pub reason: SkipReason,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SkipReason {
    #[error("denied when observed: advise writes only what was allowed")]
    Denied,
    #[error("pod {0} is not in the cluster objects, nor any pod of its workload")]
    PodGone(String),
    #[error("Service {service} port {port}/{protocol} has no backend pod in the cluster objects")]
    NoBackends {
        service: String,
        port: u16,
        protocol: Protocol,
    },
}

#[derive(Debug, Default)]
pub struct Resolved {
    pub observations: Vec<Observation>,
    pub skipped: Vec<Skipped>,
    pub warnings: Vec<String>,
}

pub fn protocol(p: FlowProtocol) -> Protocol {
    match p {
        FlowProtocol::Tcp => Protocol::Tcp,
        FlowProtocol::Udp => Protocol::Udp,
        FlowProtocol::Sctp => Protocol::Sctp,
    }
}

/// Resolves every flow record; warnings are deduplicated.
pub fn resolve_all(index: &Index, flows: &[FlowSummary]) -> Resolved {
    let mut out = Resolved::default();
    let mut warnings = BTreeSet::new();
    for (i, flow) in flows.iter().enumerate() {
        match resolve(index, i, flow, &mut warnings) {
            Ok(observations) => out.observations.extend(observations),
            Err(reason) => out.skipped.push(Skipped { flow: i, reason }),
        }
    }
    out.warnings = warnings.into_iter().collect();
    out
}

fn resolve(
    index: &Index,
    i: usize,
    flow: &FlowSummary,
    warnings: &mut BTreeSet<String>,
) -> Result<Vec<Observation>, SkipReason> {
    if flow.verdict == FlowVerdict::Denied {
        return Err(SkipReason::Denied);
    }
    let subject = live_pod(index, &flow.pod_namespace, &flow.pod, warnings)
        .ok_or_else(|| SkipReason::PodGone(format!("{}/{}", flow.pod_namespace, flow.pod)))?;
    let proto = protocol(flow.protocol);
    let base = Observation {
        flow: i,
        subject: Index::workload_of(subject),
        subject_pod: subject.key(),
        direction: flow.direction,
        peer: Peer::External(flow.peer_ip),
        peer_pod: None,
        port: flow.port,
        protocol: proto,
    };
    if let Some(service) = flow
        .service
        .as_deref()
        .filter(|_| flow.direction == FlowDirection::Egress && index.pod_at(flow.peer_ip).is_none())
    {
        return through_service(index, service, base);
    }
    let peer = match (&flow.peer_namespace, &flow.peer_pod) {
        (Some(ns), Some(name)) => match live_pod(index, ns, name, warnings) {
            Some(pod) => Some(pod),
            None => {
                warnings.insert(format!(
                    "peer pod {ns}/{name} and its workload are gone: its flows allow the whole namespace {ns}"
                ));
                return Ok(vec![Observation {
                    peer: Peer::Namespace(ns.clone()),
                    ..base
                }]);
            }
        },
        _ => index.pod_at(flow.peer_ip),
    };
    Ok(vec![match peer {
        Some(pod) => Observation {
            peer: Peer::Workload(Index::workload_of(pod)),
            peer_pod: Some(pod.key()),
            ..base
        },
        None => match index.node_at(flow.peer_ip) {
            Some(node) => Observation {
                peer: Peer::Node {
                    name: node.to_string(),
                    ip: flow.peer_ip,
                },
                ..base
            },
            None => base,
        },
    }])
}

/// A connection to a Service's ClusterIP: one observation per workload behind it, on the
/// target port.
fn through_service(
    index: &Index,
    service: &str,
    base: Observation,
) -> Result<Vec<Observation>, SkipReason> {
    let backends = index.service_backends(service, base.port, base.protocol);
    if backends.is_empty() {
        return Err(SkipReason::NoBackends {
            service: service.to_string(),
            port: base.port,
            protocol: base.protocol,
        });
    }
    Ok(backends
        .into_iter()
        .map(|(workload, target)| Observation {
            peer_pod: index.members(&workload).first().map(|p| p.key()),
            peer: Peer::Workload(workload),
            port: target,
            ..base.clone()
        })
        .collect())
}

/// The logged pod if it is still in the cluster objects, else a live pod of its workload.
fn live_pod<'a>(
    index: &Index<'a>,
    namespace: &str,
    name: &str,
    warnings: &mut BTreeSet<String>,
) -> Option<&'a PodInfo> {
    if let Some(pod) = index.pod(namespace, name).filter(|p| p.selectable()) {
        return Some(pod);
    }
    let successor = index.successor(namespace, name)?;
    warnings.insert(format!(
        "pod {namespace}/{name} is gone; {} stands for its workload",
        successor.key()
    ));
    Some(successor)
}
