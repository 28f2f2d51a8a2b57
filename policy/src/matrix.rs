//! The reachability matrix: for every ordered pair of pods and every probe (port/protocol),
//! whether a connection is allowed — the source's egress AND the destination's ingress.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::cluster::PodInfo;
use crate::compile::CompiledCluster;
use crate::ports::Protocol;
use crate::table::PodTable;
use crate::verdict::{Direction, Verdict};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Probe {
    pub port: u16,
    pub protocol: Protocol,
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.port, self.protocol)
    }
}

/// Every (containerPort, protocol) any pod declares, sorted.
pub fn default_probes(pods: &[PodInfo]) -> Vec<Probe> {
    pods.iter()
        .flat_map(|p| p.ports.iter())
        .map(|p| Probe {
            port: p.port,
            protocol: p.protocol,
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Both halves of a connection's decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionVerdict {
    pub egress: Verdict,
    pub ingress: Verdict,
}

impl ConnectionVerdict {
    pub fn allowed(&self) -> bool {
        self.egress.allowed() && self.ingress.allowed()
    }

    /// One sentence: the denying half (or halves), or both allowing halves.
    pub fn explanation(&self) -> String {
        match (self.egress.allowed(), self.ingress.allowed()) {
            (true, false) => format!("ingress {}", self.ingress),
            (false, true) => format!("egress {}", self.egress),
            _ => format!("egress {}; ingress {}", self.egress, self.ingress),
        }
    }
}

/// Decides a connection from pod table `from` to pod table `to` on `probe`, using each pod's
/// primary address.
pub fn connection(from: &PodTable, to: &PodTable, probe: Probe) -> Option<ConnectionVerdict> {
    let from_ip = *from.ips.first()?;
    let to_ip = *to.ips.first()?;
    Some(ConnectionVerdict {
        egress: from.check(Direction::Egress, to_ip, probe.port, probe.protocol),
        ingress: to.check(Direction::Ingress, from_ip, probe.port, probe.protocol),
    })
}

/// One cell of the matrix. The first five fields are the stable, documented JSON shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeResult {
    pub from: String,
    pub to: String,
    pub port: u16,
    pub protocol: Protocol,
    pub allowed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// With the staged policies (`portcullis.dev/staged`) added, when that changes `allowed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staged: Option<StagedCell>,
}

/// A cell's verdict with the staged policies added, where it differs from the enforced one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedCell {
    pub allowed: bool,
    /// The staged policies that make the difference.
    pub staged_by: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The connection's verdict with the staged policies of both pods added, when it differs.
pub fn staged_connection(
    from: &PodTable,
    to: &PodTable,
    probe: Probe,
    enforced: &ConnectionVerdict,
    detail: Detail,
) -> Option<StagedCell> {
    if !from.has_staged() && !to.has_staged() {
        return None;
    }
    let (from_ip, to_ip) = (*from.ips.first()?, *to.ips.first()?);
    let (port, protocol) = (probe.port, probe.protocol);
    let egress = from.staged_verdict(&enforced.egress, to_ip, port, protocol);
    let ingress = to.staged_verdict(&enforced.ingress, from_ip, port, protocol);
    let together = ConnectionVerdict {
        egress: egress
            .as_ref()
            .map_or(&enforced.egress, |s| &s.verdict)
            .clone(),
        ingress: ingress
            .as_ref()
            .map_or(&enforced.ingress, |s| &s.verdict)
            .clone(),
    };
    if together.allowed() == enforced.allowed() {
        return None;
    }
    let mut staged_by: Vec<String> = egress
        .iter()
        .chain(&ingress)
        .flat_map(|s| s.staged_by.iter().map(|p| p.to_string()))
        .collect();
    staged_by.sort();
    staged_by.dedup();
    Some(StagedCell {
        allowed: together.allowed(),
        staged_by,
        reason: (detail == Detail::Reasons).then(|| together.explanation()),
    })
}

/// Whether each cell of a computed [`Matrix`] says why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    /// Every cell with its reason (JSON and YAML output, comparisons).
    Reasons,
    /// Allowed or denied only.
    AllowedOnly,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Matrix {
    pub probes: Vec<ProbeResult>,
}

impl Matrix {
    /// Computes the matrix over every pod that has an address, for each probe in order.
    pub fn compute(compiled: &CompiledCluster, probes: &[Probe]) -> Matrix {
        Matrix::compute_for(compiled, probes, None, Detail::Reasons)
    }

    /// As [`Matrix::compute`], over the pods of `namespace` only (rows and columns) when given.
    /// Policies of every namespace still decide: only the pods shown are fewer. With
    /// [`Detail::AllowedOnly`] no cell carries its reason: a view that shows only allowed or
    /// denied (the table) skips writing millions of sentences nobody reads.
    pub fn compute_for(
        compiled: &CompiledCluster,
        probes: &[Probe],
        namespace: Option<&str>,
        detail: Detail,
    ) -> Matrix {
        let tables: Vec<(&PodTable, String)> = compiled
            .tables
            .values()
            .map(|t| &**t)
            .filter(|t| !t.ips.is_empty())
            .filter(|t| namespace.is_none_or(|ns| t.namespace == ns))
            .map(|t| (t, t.key()))
            .collect();
        let mut out = Vec::with_capacity(probes.len() * tables.len() * tables.len());
        for &probe in probes {
            for (from, from_key) in &tables {
                for (to, to_key) in &tables {
                    if let Some(v) = connection(from, to, probe) {
                        out.push(ProbeResult {
                            from: from_key.clone(),
                            to: to_key.clone(),
                            port: probe.port,
                            protocol: probe.protocol,
                            allowed: v.allowed(),
                            reason: (detail == Detail::Reasons).then(|| v.explanation()),
                            staged: staged_connection(from, to, probe, &v, detail),
                        });
                    }
                }
            }
        }
        Matrix { probes: out }
    }

    /// Every cell by (from, to, probe), for looking many up: building it is linear in the cells,
    /// and each look-up constant ([`Matrix::get`] scans). Dense: one slot per (probe, from, to)
    /// over the pods and probes that occur, so a grid of 2,000 pods reads it by position.
    pub fn index(&self) -> MatrixIndex<'_> {
        let mut pods: HashMap<&str, usize> = HashMap::new();
        let mut probes: HashMap<Probe, usize> = HashMap::new();
        for p in &self.probes {
            for name in [p.from.as_str(), p.to.as_str()] {
                let next = pods.len();
                pods.entry(name).or_insert(next);
            }
            let next = probes.len();
            probes
                .entry(Probe {
                    port: p.port,
                    protocol: p.protocol,
                })
                .or_insert(next);
        }
        let n = pods.len();
        let mut cells = vec![None; probes.len() * n * n];
        let mut last_from: Option<(&str, usize)> = None;
        for p in &self.probes {
            let from = match last_from {
                Some((name, i)) if name == p.from => i,
                _ => pods[p.from.as_str()],
            };
            last_from = Some((p.from.as_str(), from));
            let probe = probes[&Probe {
                port: p.port,
                protocol: p.protocol,
            }];
            cells[(probe * n + from) * n + pods[p.to.as_str()]] = Some(p);
        }
        MatrixIndex {
            pods,
            probes,
            cells,
        }
    }

    /// The pods in the matrix, in order.
    pub fn pods(&self) -> Vec<String> {
        let mut pods: Vec<String> = self
            .probes
            .iter()
            .map(|p| p.from.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        pods.sort();
        pods
    }

    /// The probes in the matrix, in order of first appearance.
    pub fn probe_list(&self) -> Vec<Probe> {
        let mut seen = Vec::new();
        let mut known = BTreeSet::new();
        for p in &self.probes {
            let probe = Probe {
                port: p.port,
                protocol: p.protocol,
            };
            if known.insert(probe) {
                seen.push(probe);
            }
        }
        seen
    }

    /// One cell, by a scan: for many, use [`Matrix::index`].
    pub fn get(&self, from: &str, to: &str, probe: Probe) -> Option<&ProbeResult> {
        self.probes.iter().find(|p| {
            p.from == from && p.to == to && p.port == probe.port && p.protocol == probe.protocol
        })
    }
}

/// The cells of a [`Matrix`] by (from, to, probe): [`Matrix::index`].
pub struct MatrixIndex<'a> {
    pods: HashMap<&'a str, usize>,
    probes: HashMap<Probe, usize>,
    /// `(probe * n + from) * n + to`, `n` pods.
    cells: Vec<Option<&'a ProbeResult>>,
}

impl<'a> MatrixIndex<'a> {
    pub fn get(&self, from: &str, to: &str, probe: Probe) -> Option<&'a ProbeResult> {
        let n = self.pods.len();
        let (from, to) = (*self.pods.get(from)?, *self.pods.get(to)?);
        let probe = *self.probes.get(&probe)?;
        self.cells[(probe * n + from) * n + to]
    }

    /// The cells of one probe from one pod, by destination: look the destinations up once with
    /// [`MatrixIndex::position`], then read rows without hashing.
    pub fn row(&self, from: &str, probe: Probe) -> Option<&[Option<&'a ProbeResult>]> {
        let n = self.pods.len();
        let (from, probe) = (*self.pods.get(from)?, *self.probes.get(&probe)?);
        let start = (probe * n + from) * n;
        self.cells.get(start..start + n)
    }

    /// A pod's position in every [`MatrixIndex::row`].
    pub fn position(&self, pod: &str) -> Option<usize> {
        self.pods.get(pod).copied()
    }
}
