//! One rule's peers and ports, against the pods of the input.

use super::{Check, Finding, Severity};
use crate::cluster::PodInfo;
use crate::compile::ClusterIndex;
use crate::error::ObjectRef;
use crate::ports::PortRange;
use crate::validate::{Peer, PortSpec, Rule, ValidPolicy};
use crate::verdict::Direction;

/// Everything a rule check needs to name what it found.
pub(super) struct RuleCtx<'a, 'i> {
    pub(super) index: &'a ClusterIndex<'i>,
    pub(super) policy: &'a ValidPolicy,
    pub(super) object: &'a ObjectRef,
    pub(super) direction: Direction,
    pub(super) field: &'a str,
}

impl RuleCtx<'_, '_> {
    fn warn(&self, check: Check, field: String, message: String) -> Finding {
        Finding::new(Severity::Warning, check, self.object, &field, message)
    }

    pub(super) fn check_rule(&self, rule: &Rule, out: &mut Vec<Finding>) {
        let peers_name = peers_name(self.direction);
        let mut peer_pods: Vec<&PodInfo> = Vec::new();
        let mut only_pod_peers = true;
        for (j, peer) in rule.peers.iter().flatten().enumerate() {
            match peer {
                Peer::Pods { namespaces, pods } => {
                    let (n_ns, chosen) = self.peer_pods(namespaces.as_ref(), pods.as_ref());
                    if chosen.is_empty() {
                        let why = if n_ns == 0 {
                            "no namespace in the input matches its namespaceSelector".to_string()
                        } else {
                            format!("no running pod matches it in {n_ns} namespace(s)")
                        };
                        out.push(self.warn(
                            Check::PeerSelectsNothing,
                            format!("{}.{peers_name}[{j}]", self.field),
                            format!("selects nothing: {why}; this peer allows no traffic"),
                        ));
                    }
                    peer_pods.extend(chosen);
                }
                Peer::Block { .. } => only_pod_peers = false,
            }
        }
        // The pods a connection allowed by this rule ends at.
        let destinations: Vec<&PodInfo> = match self.direction {
            Direction::Ingress => self
                .index
                .selected_pods(self.policy)
                .map(|(_, p)| p)
                .collect(),
            Direction::Egress if rule.peers.is_none() => {
                self.index.pods.iter().filter(|p| p.selectable()).collect()
            }
            Direction::Egress => peer_pods,
        };
        for (k, spec) in rule.ports.iter().flatten().enumerate() {
            let field = format!("{}.ports[{k}]", self.field);
            match spec {
                PortSpec::Named { name, protocol } => {
                    let declared = destinations
                        .iter()
                        .any(|p| p.named_port(name, *protocol).next().is_some());
                    if !declared {
                        out.push(self.warn(
                            Check::NamedPortUndeclared,
                            field,
                            format!(
                                "named port {name:?}/{protocol}: no destination pod declares a \
                                 containerPort with that name and protocol, so it matches nothing{}",
                                if only_pod_peers { "" } else { " (ipBlock peers never match a named port)" }
                            ),
                        ));
                    }
                }
                PortSpec::Numeric(range) if !is_all(range) => {
                    if let Some(f) = self.undeclared_port(&destinations, range, field) {
                        out.push(f);
                    }
                }
                PortSpec::Numeric(_) => {}
            }
        }
    }

    /// Pods a selector peer chooses, and how many namespaces it looked in.
    fn peer_pods(
        &self,
        namespaces: Option<&crate::selector::Selector>,
        pods: Option<&crate::selector::Selector>,
    ) -> (usize, Vec<&PodInfo>) {
        let chosen: Vec<&str> = match namespaces {
            None => vec![self.policy.namespace.as_str()],
            Some(sel) => self
                .index
                .namespaces
                .values()
                .filter(|ns| sel.matches(&ns.labels))
                .map(|ns| ns.name.as_str())
                .collect(),
        };
        let found = chosen
            .iter()
            .flat_map(|ns| self.index.pods_in(ns))
            .map(|(_, p)| p)
            .filter(|p| p.selectable() && pods.is_none_or(|s| s.matches(&p.labels)))
            .collect();
        (chosen.len(), found)
    }

    /// A numeric port that destination pods which declare their ports do not declare. Declaring
    /// ports is optional in Kubernetes, so this is only a hint.
    fn undeclared_port(
        &self,
        destinations: &[&PodInfo],
        range: &PortRange,
        field: String,
    ) -> Option<Finding> {
        let declaring: Vec<&&PodInfo> = destinations
            .iter()
            .filter(|p| !p.ports.is_empty())
            .collect();
        if declaring.is_empty() {
            return None;
        }
        let missing: Vec<String> = declaring
            .iter()
            .filter(|p| !p.ports.iter().any(|c| range.contains(c.protocol, c.port)))
            .map(|p| p.key())
            .collect();
        if missing.len() < declaring.len() {
            return None; // some destination serves it: a rule shared by several pods is normal
        }
        Some(self.warn(
            Check::PortNotDeclared,
            field,
            format!(
                "{range}: none of the destination pods ({}) declares a containerPort in it; \
                 declaring ports is optional, so check that they really listen there",
                missing.join(", ")
            ),
        ))
    }
}

fn is_all(range: &PortRange) -> bool {
    range.first == 0 && range.last == u16::MAX
}

pub(super) fn peers_name(direction: Direction) -> &'static str {
    match direction {
        Direction::Ingress => "from",
        Direction::Egress => "to",
    }
}
