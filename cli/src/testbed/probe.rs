//! `testbed probe`: connects from every pod to every pod on every probe, and predicts each
//! connection from the compiled tables of the manifests the proxies see.
//!
//! The prediction is the policy engine's, applied as this testbed enforces it: a pod without
//! Portcullis (see `inject.rs`) enforces neither its egress nor its ingress, while its peers'
//! proxies still enforce theirs. A probe to a port where the target's server does not listen
//! (it could not bind it) is not sent: it is reported as `no_listener`, apart from denials.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Result;
use portcullis_policy::matrix::Probe;
use portcullis_policy::{
    CompiledCluster, Direction, Matrix, PodTable, ProbeResult, Protocol, Verdict,
};
use serde::Serialize;

use super::serve::{self, NoAnswer};
use super::{netns, PodState, State};

/// What a probe saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The target answered with its identity.
    Answered,
    /// Nothing answered: refused, reset, closed or timed out (see `no_answer`).
    NoAnswer,
    /// Another pod than the target answered: traffic went somewhere it should not.
    WrongPod,
    /// The target's server does not listen on that port; nothing was sent.
    NoListener,
}

/// One probe, observed and predicted.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    pub from: String,
    pub to: String,
    pub port: u16,
    pub protocol: Protocol,
    /// Observed: whether an answer came back; `null` when nothing listens there.
    pub allowed: Option<bool>,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answered_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_answer: Option<NoAnswer>,
    pub predicted: bool,
    /// Why the prediction is what it is.
    pub reason: String,
    /// Why nothing listens, when nothing does (the server's bind error).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_listener: Option<String>,
}

impl Cell {
    /// Whether what was observed contradicts the prediction. A probe where nothing listens
    /// proves nothing either way and is reported apart.
    pub fn differs(&self) -> bool {
        match self.outcome {
            Outcome::Answered => !self.predicted,
            Outcome::NoAnswer => self.predicted,
            Outcome::WrongPod => true,
            Outcome::NoListener => false,
        }
    }

    /// One line for people.
    pub fn describe(&self) -> String {
        let observed = match self.outcome {
            Outcome::Answered => "allowed".to_string(),
            Outcome::NoAnswer => format!(
                "denied ({})",
                self.no_answer.map(|n| n.to_string()).unwrap_or_default()
            ),
            Outcome::WrongPod => {
                format!("answered by {}", self.answered_by.as_deref().unwrap_or("?"))
            }
            Outcome::NoListener => "nothing listens there".to_string(),
        };
        format!(
            "{} -> {} on {}/{}: observed {observed}, predicted {} ({})",
            self.from,
            self.to,
            self.port,
            self.protocol,
            if self.predicted { "allowed" } else { "denied" },
            self.reason
        )
    }
}

/// The observed matrix (cells where something listens) and the predicted one, for grids.
pub fn matrices(cells: &[Cell]) -> (Matrix, Matrix) {
    let result = |c: &Cell, allowed: bool| ProbeResult {
        from: c.from.clone(),
        to: c.to.clone(),
        port: c.port,
        protocol: c.protocol,
        allowed,
        reason: Some(c.reason.clone()),
    };
    let observed = cells
        .iter()
        .filter_map(|c| c.allowed.map(|a| result(c, a)))
        .collect();
    let predicted = cells.iter().map(|c| result(c, c.predicted)).collect();
    (Matrix { probes: observed }, Matrix { probes: predicted })
}

/// One half of a prediction: the pod's own verdict, if its proxy enforces it.
fn half(
    pod: &PodState,
    table: Option<&PodTable>,
    direction: Direction,
    peer: IpAddr,
    probe: Probe,
) -> (bool, String) {
    if !pod.injected {
        return (
            true,
            format!("{direction} not enforced: {} has no proxy", pod.key),
        );
    }
    match table {
        Some(t) => {
            let v: Verdict = t.check(direction, peer, probe.port, probe.protocol);
            (v.allowed(), format!("{direction} {v}"))
        }
        None => (false, format!("{direction}: {} has no table", pod.key)),
    }
}

/// The expected verdict of `from` → `to` on `probe`, and why.
pub fn predict(
    compiled: &CompiledCluster,
    from: &PodState,
    to: &PodState,
    probe: Probe,
) -> (bool, String) {
    let table = |p: &PodState| compiled.table(&p.key).map(|t| &**t);
    let (e_ok, e_why) = half(from, table(from), Direction::Egress, to.ip, probe);
    let (i_ok, i_why) = half(to, table(to), Direction::Ingress, from.ip, probe);
    let why = match (e_ok, i_ok) {
        (true, false) => i_why,
        (false, true) => e_why,
        _ => format!("{e_why}; {i_why}"),
    };
    (e_ok && i_ok, why)
}

/// Probes from every pod to every pod on every probe, in parallel per source pod.
pub fn observe(state: &State, probes: &[Probe], timeout: Duration) -> Result<Vec<Cell>> {
    state.ensure_served(probes)?;
    let compiled = state.compile()?;
    let mut planned = Vec::new();
    for (pi, &probe) in probes.iter().enumerate() {
        for from in &state.pods {
            for to in &state.pods {
                let (predicted, reason) = predict(&compiled, from, to, probe);
                let bound = to.bound();
                let listening = if bound.listening.contains(&probe) {
                    None
                } else {
                    Some(
                        bound
                            .failed
                            .iter()
                            .find(|(p, _)| *p == probe)
                            .map(|(_, e)| e.clone())
                            .unwrap_or_else(|| "not served".into()),
                    )
                };
                planned.push((
                    pi,
                    from.clone(),
                    to.clone(),
                    probe,
                    predicted,
                    reason,
                    listening,
                ));
            }
        }
    }
    let mut handles = Vec::new();
    for from in &state.pods {
        let mine: Vec<_> = planned
            .iter()
            .filter(|p| p.1.key == from.key)
            .cloned()
            .collect();
        let ns = from.netns.clone();
        handles.push(std::thread::spawn(move || -> Result<Vec<(usize, Cell)>> {
            netns::enter(&ns)?;
            Ok(mine
                .into_iter()
                .map(|(pi, from, to, probe, predicted, reason, listening)| {
                    let mut cell = Cell {
                        from: from.key.clone(),
                        to: to.key.clone(),
                        port: probe.port,
                        protocol: probe.protocol,
                        allowed: None,
                        outcome: Outcome::NoListener,
                        answered_by: None,
                        no_answer: None,
                        predicted,
                        reason,
                        no_listener: listening.clone(),
                    };
                    if listening.is_none() {
                        let addr = SocketAddr::new(to.ip, probe.port);
                        match serve::probe(addr, probe.protocol, timeout) {
                            Ok(id) if id == to.key => {
                                cell.outcome = Outcome::Answered;
                                cell.allowed = Some(true);
                            }
                            Ok(id) => {
                                cell.outcome = Outcome::WrongPod;
                                cell.allowed = Some(true);
                                cell.answered_by = Some(id);
                            }
                            Err(why) => {
                                cell.outcome = Outcome::NoAnswer;
                                cell.allowed = Some(false);
                                cell.no_answer = Some(why);
                            }
                        }
                    }
                    (pi, cell)
                })
                .collect())
        }));
    }
    let mut cells = Vec::new();
    for h in handles {
        cells.extend(
            h.join()
                .map_err(|_| anyhow::anyhow!("probe thread panicked"))??,
        );
    }
    // Same order as the engine's matrix: probe, then from, then to.
    cells.sort_by(|(a, x), (b, y)| (a, &x.from, &x.to).cmp(&(b, &y.from, &y.to)));
    Ok(cells.into_iter().map(|(_, c)| c).collect())
}
