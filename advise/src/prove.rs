//! The proof: the engine decides every observed flow under the cluster's policies plus the
//! advised ones, and enumerates what the advised policies allow beyond what was observed.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::networking::v1::NetworkPolicy;
use portcullis_contract::log::{FlowDirection, FlowSummary, FlowVerdict};
use portcullis_policy::{
    compile, Cluster, CompiledCluster, Direction, PodInfo, PodTable, Protocol,
};

use crate::resolve::Observation;
use crate::workload::{Index, Peer, WorkloadId};

/// Why the engine did not allow an observed flow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0} has no table")]
    NoTable(String),
    #[error("{0} has no address")]
    NoAddress(String),
    #[error("no pod left in namespace {0} to check with")]
    EmptyNamespace(String),
    #[error("no live pod of {0}")]
    NoPod(String),
    #[error("{direction} of {pod}: {verdict}")]
    Denied {
        direction: &'static str,
        pod: String,
        verdict: String,
    },
}

/// A connection the advised policies allow that no flow record showed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct AlsoAllowed {
    pub from: WorkloadId,
    pub to: WorkloadId,
    pub port: u16,
    pub protocol: Protocol,
}

/// What the engine says about the advice.
#[derive(Debug, Default)]
pub struct Proof {
    /// Observations the engine allows under the cluster's policies plus the advised ones.
    pub allowed: usize,
    /// Observations it refuses, with the refusing half: advise failed (never expected).
    pub refused: Vec<(Observation, Refusal)>,
    /// Objects the engine rejected (advised or not), by name and reason.
    pub errors: Vec<String>,
    /// Pod-to-pod connections allowed by policies selecting an advised workload, never seen.
    pub also_allowed: Vec<AlsoAllowed>,
    /// Flow records (indices) of allowed flows seen only once.
    pub seen_once: Vec<usize>,
    /// Flow records last seen in the first quarter of the window and never after.
    pub seen_early: Vec<usize>,
    /// The window the records span (RFC 3339), when their times read.
    pub window: Option<(String, String)>,
}

impl Proof {
    pub fn holds(&self) -> bool {
        self.refused.is_empty() && self.errors.is_empty()
    }
}

pub fn prove(
    cluster: &Cluster,
    advised: &[NetworkPolicy],
    observations: &[Observation],
    flows: &[FlowSummary],
) -> Proof {
    let mut with = cluster.clone();
    for p in advised {
        with.add_policy(p.clone(), Some("advised".into()));
    }
    let compiled = compile(&with);
    let mut proof = Proof {
        errors: compiled.errors.iter().map(|e| e.to_string()).collect(),
        ..Proof::default()
    };
    let index = Index::new(&with);
    for o in observations {
        match decide(&compiled, &index, o) {
            Ok(()) => proof.allowed += 1,
            Err(why) => proof.refused.push((o.clone(), why)),
        }
    }
    proof.also_allowed = also_allowed(&compiled, &index, observations);
    timing(&mut proof, flows);
    proof
}

fn table<'a>(compiled: &'a CompiledCluster, key: &str) -> Result<&'a PodTable, Refusal> {
    compiled
        .table(key)
        .map(|t| &**t)
        .ok_or_else(|| Refusal::NoTable(key.to_string()))
}

fn primary(index: &Index, key: &str) -> Option<IpAddr> {
    let (ns, name) = key.split_once('/')?;
    index.pod(ns, name).and_then(PodInfo::primary_ip)
}

/// Both halves of the observed connection, with live pods standing for the workloads.
fn decide(compiled: &CompiledCluster, index: &Index, o: &Observation) -> Result<(), Refusal> {
    let subject = table(compiled, &o.subject_pod)?;
    let subject_ip =
        primary(index, &o.subject_pod).ok_or_else(|| Refusal::NoAddress(o.subject_pod.clone()))?;
    let peer_ip = match (&o.peer, &o.peer_pod) {
        (Peer::Workload(_), Some(pod)) => {
            primary(index, pod).ok_or_else(|| Refusal::NoAddress(pod.clone()))?
        }
        (Peer::Namespace(ns), _) => index
            .cluster
            .pods
            .iter()
            .find(|p| p.namespace == *ns && p.selectable())
            .and_then(PodInfo::primary_ip)
            .ok_or_else(|| Refusal::EmptyNamespace(ns.clone()))?,
        (Peer::Node { ip, .. } | Peer::External(ip), _) => *ip,
        (Peer::Workload(w), None) => return Err(Refusal::NoPod(w.to_string())),
    };
    let peer_table = match &o.peer_pod {
        Some(pod) => Some(table(compiled, pod)?),
        None => None,
    };
    let (client, client_ip, server, server_ip) = match o.direction {
        FlowDirection::Egress => (Some(subject), subject_ip, peer_table, peer_ip),
        FlowDirection::Ingress => (peer_table, peer_ip, Some(subject), subject_ip),
    };
    if let Some(c) = client {
        let v = c.check(Direction::Egress, server_ip, o.port, o.protocol);
        if !v.allowed() {
            return Err(Refusal::Denied {
                direction: "egress",
                pod: format!("{}/{}", c.namespace, c.name),
                verdict: v.to_string(),
            });
        }
    }
    if let Some(s) = server {
        let v = s.check(Direction::Ingress, client_ip, o.port, o.protocol);
        if !v.allowed() {
            return Err(Refusal::Denied {
                direction: "ingress",
                pod: format!("{}/{}", s.namespace, s.name),
                verdict: v.to_string(),
            });
        }
    }
    Ok(())
}

/// Every (workload, workload, port) connection from or to an advised workload that the
/// engine allows and no observation showed, over the ports the server declares.
fn also_allowed(
    compiled: &CompiledCluster,
    index: &Index,
    observations: &[Observation],
) -> Vec<AlsoAllowed> {
    let seen: BTreeSet<(WorkloadId, WorkloadId, u16, Protocol)> = observations
        .iter()
        .filter_map(|o| match (&o.peer, o.direction) {
            (Peer::Workload(p), FlowDirection::Egress) => {
                Some((o.subject.clone(), p.clone(), o.port, o.protocol))
            }
            (Peer::Workload(p), FlowDirection::Ingress) => {
                Some((p.clone(), o.subject.clone(), o.port, o.protocol))
            }
            _ => None,
        })
        .collect();
    let advised: BTreeSet<&WorkloadId> = observations.iter().map(|o| &o.subject).collect();
    let representatives: Vec<(WorkloadId, &PodInfo)> = index
        .cluster
        .pods
        .iter()
        .filter(|p| p.selectable() && p.primary_ip().is_some())
        .map(|p| (Index::workload_of(p), p))
        .collect::<std::collections::BTreeMap<_, _>>()
        .into_iter()
        .collect();
    let mut out = BTreeSet::new();
    for (from_w, from) in &representatives {
        for (to_w, to) in &representatives {
            // A pod reaching itself is not subject to policy; nothing to report.
            let same_pod = from.key() == to.key();
            if same_pod || (!advised.contains(from_w) && !advised.contains(to_w)) {
                continue;
            }
            for port in &to.ports {
                let key = (from_w.clone(), to_w.clone(), port.port, port.protocol);
                if seen.contains(&key) || !connects(compiled, from, to, port.port, port.protocol) {
                    continue;
                }
                out.insert(AlsoAllowed {
                    from: key.0,
                    to: key.1,
                    port: key.2,
                    protocol: key.3,
                });
            }
        }
    }
    out.into_iter().collect()
}

fn connects(
    compiled: &CompiledCluster,
    from: &PodInfo,
    to: &PodInfo,
    port: u16,
    proto: Protocol,
) -> bool {
    let (Some(f), Some(t)) = (compiled.table(&from.key()), compiled.table(&to.key())) else {
        return false;
    };
    let (Some(fip), Some(tip)) = (from.primary_ip(), to.primary_ip()) else {
        return false;
    };
    f.check(Direction::Egress, tip, port, proto).allowed()
        && t.check(Direction::Ingress, fip, port, proto).allowed()
}

/// Flows seen once, and flows that stopped early in the window (a CronJob's traffic, a
/// start-up migration): the user should know the policy may miss or outlive them.
fn timing(proof: &mut Proof, flows: &[FlowSummary]) {
    let read = |s: &str| humantime::parse_rfc3339_weak(s).ok();
    let times: Vec<(usize, SystemTime, SystemTime)> = flows
        .iter()
        .enumerate()
        .filter(|(_, f)| f.verdict == FlowVerdict::Allowed)
        .filter_map(|(i, f)| Some((i, read(&f.first_seen)?, read(&f.last_seen)?)))
        .collect();
    proof.seen_once = flows
        .iter()
        .enumerate()
        .filter(|(_, f)| f.verdict == FlowVerdict::Allowed && f.count == 1)
        .map(|(i, _)| i)
        .collect();
    let (Some(start), Some(end)) = (
        times.iter().map(|t| t.1).min(),
        times.iter().map(|t| t.2).max(),
    ) else {
        return;
    };
    proof.window = Some((
        humantime::format_rfc3339_seconds(start).to_string(),
        humantime::format_rfc3339_seconds(end).to_string(),
    ));
    let span = end.duration_since(start).unwrap_or(Duration::ZERO);
    if span.is_zero() {
        return;
    }
    let early = start + span / 4;
    proof.seen_early = times
        .iter()
        .filter(|(_, _, last)| *last < early)
        .map(|(i, _, _)| *i)
        .collect();
}
