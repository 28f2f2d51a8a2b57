//! The ClusterNetworkPolicy tier algorithm, as pure functions over facts the caller resolves.
//!
//! For one direction of one connection (the client's egress, the server's ingress; both must
//! allow):
//!
//! 1. **Admin tier**: the Admin CNPs whose subject holds the pod, in [`ValidCnp::evaluation_order`]
//!    (priority, lower first; then name), each CNP's rules in list order. The first rule whose
//!    peer and protocols match decides: `Accept` and `Deny` are final for this direction, `Pass`
//!    skips the rest of the Admin tier.
//! 2. **NetworkPolicy v1**: if v1 policies isolate the pod in this direction, they decide.
//! 3. **Baseline tier**: as the Admin tier (a `Pass` there changes nothing: step 4 follows).
//! 4. Otherwise allowed.
//!
//! A pod's traffic to its own address is not subject to CNPs (v1 alone decides, and v1 allows
//! it). A rule that holds a peer of an unknown or unsupported type fails closed: in an `Accept`
//! rule that peer matches nothing; a `Deny` or `Pass` rule with it denies every connection its
//! subject makes in that direction. `domainNames` are learned per pod at run time
//! (`crate::dns`); this model knows no lookups, so it never matches them, as a table checked
//! with nothing learned.
//!
//! This module is the reference the compiled tables must agree with: the compiler will lower the
//! same order into the per-pod table, and `explain` names the [`Decision`] it returns.

use ipnet::IpNet;

use super::model::{Action, Peer, PodSet, PortMatch, Rule, Tier, ValidCnp};
use crate::ports::Protocol;
use crate::selector::Selector;
use crate::verdict::Direction;

/// What the caller knows about endpoints (pods, nodes, external addresses): label selection,
/// node membership, addresses and named ports, already resolved.
pub trait Facts {
    type Endpoint: ?Sized;

    /// Whether the endpoint is a pod of `set` (never true for host-network pods nor non-pods).
    fn in_pod_set(&self, set: &PodSet, endpoint: &Self::Endpoint) -> bool;
    /// Whether the endpoint's address is an address of a node the selector picks.
    fn on_node(&self, nodes: &Selector, endpoint: &Self::Endpoint) -> bool;
    /// Whether the endpoint's address lies in one of the networks.
    fn in_networks(&self, networks: &[IpNet], endpoint: &Self::Endpoint) -> bool;
    /// Whether `destination` declares a container port `name` as `protocol`/`port`.
    fn named_port(
        &self,
        destination: &Self::Endpoint,
        name: &str,
        protocol: Protocol,
        port: u16,
    ) -> bool;
}

/// One direction of a connection, seen from the pod whose policy is evaluated.
pub struct Flow<'a, E: ?Sized> {
    pub direction: Direction,
    /// The pod whose CNPs apply: the client for egress, the server for ingress.
    pub subject: &'a E,
    /// The other end: the server for egress, the client for ingress.
    pub peer: &'a E,
    /// Destination port and protocol.
    pub port: u16,
    pub protocol: Protocol,
    /// The subject talks to its own address: CNPs do not apply.
    pub self_traffic: bool,
}

impl<E: ?Sized> Flow<'_, E> {
    /// The endpoint on which named ports resolve.
    pub fn destination(&self) -> &E {
        match self.direction {
            Direction::Ingress => self.subject,
            Direction::Egress => self.peer,
        }
    }
}

/// The rule that decided a tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit<'c> {
    pub cnp: &'c ValidCnp,
    pub rule: &'c Rule,
    /// The action taken: the rule's, or `Deny` when the rule failed closed.
    pub action: Action,
    pub failed_closed: bool,
}

/// Who decided one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecidedBy<'c> {
    /// An `Accept` or `Deny` rule of the Admin or Baseline tier.
    Cnp(Tier, Hit<'c>),
    /// NetworkPolicy v1 isolates the pod in this direction.
    NetworkPolicy,
    /// Nothing did: allowed.
    NoPolicy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision<'c> {
    pub allowed: bool,
    pub by: DecidedBy<'c>,
    /// The Admin `Pass` rule that sent the evaluation on, if one did.
    pub admin_pass: Option<Hit<'c>>,
}

/// Decides one direction. `cnps` in any order; `network_policy` is v1's verdict for this
/// direction: `None` when no v1 policy isolates the pod in it, `Some(allowed)` otherwise.
pub fn decide<'c, F: Facts>(
    cnps: &'c [ValidCnp],
    flow: &Flow<'_, F::Endpoint>,
    facts: &F,
    network_policy: Option<bool>,
) -> Decision<'c> {
    let v1 = |admin_pass| {
        network_policy.map(|allowed| Decision {
            allowed,
            by: DecidedBy::NetworkPolicy,
            admin_pass,
        })
    };
    let none = |admin_pass| Decision {
        allowed: true,
        by: DecidedBy::NoPolicy,
        admin_pass,
    };
    if flow.self_traffic {
        return v1(None).unwrap_or(none(None));
    }
    let mut ordered: Vec<&ValidCnp> = cnps.iter().collect();
    ordered.sort_by(|a, b| ValidCnp::evaluation_order(a, b));
    let admin_pass = match tier_hit(&ordered, Tier::Admin, flow, facts) {
        Some(hit) if hit.action == Action::Pass => Some(hit),
        Some(hit) => return final_decision(Tier::Admin, hit, None),
        None => None,
    };
    if let Some(d) = v1(admin_pass) {
        return d;
    }
    match tier_hit(&ordered, Tier::Baseline, flow, facts) {
        Some(hit) if hit.action != Action::Pass => final_decision(Tier::Baseline, hit, admin_pass),
        _ => none(admin_pass),
    }
}

fn final_decision<'c>(tier: Tier, hit: Hit<'c>, admin_pass: Option<Hit<'c>>) -> Decision<'c> {
    Decision {
        allowed: hit.action == Action::Accept,
        by: DecidedBy::Cnp(tier, hit),
        admin_pass,
    }
}

/// The first matching rule of `tier`, over CNPs already in evaluation order.
pub fn tier_hit<'c, F: Facts>(
    ordered: &[&'c ValidCnp],
    tier: Tier,
    flow: &Flow<'_, F::Endpoint>,
    facts: &F,
) -> Option<Hit<'c>> {
    ordered
        .iter()
        .filter(|cnp| cnp.tier == tier && facts.in_pod_set(&cnp.subject, flow.subject))
        .find_map(|cnp| {
            cnp.rules(flow.direction)
                .iter()
                .find_map(|rule| rule_hit(cnp, rule, flow, facts))
        })
}

/// Whether `rule` decides `flow`, and how.
pub fn rule_hit<'c, F: Facts>(
    cnp: &'c ValidCnp,
    rule: &'c Rule,
    flow: &Flow<'_, F::Endpoint>,
    facts: &F,
) -> Option<Hit<'c>> {
    let hit = |action, failed_closed| Hit {
        cnp,
        rule,
        action,
        failed_closed,
    };
    if rule.action != Action::Accept && rule.fails_closed() {
        return Some(hit(Action::Deny, true));
    }
    let peer = rule.peers.iter().any(|p| peer_matches(p, flow.peer, facts));
    (peer && protocols_match(rule.protocols.as_deref(), flow, facts))
        .then(|| hit(rule.action, false))
}

fn peer_matches<F: Facts>(peer: &Peer, endpoint: &F::Endpoint, facts: &F) -> bool {
    match peer {
        Peer::Pods(set) => facts.in_pod_set(set, endpoint),
        Peer::Nodes(sel) => facts.on_node(sel, endpoint),
        Peer::Networks(nets) => facts.in_networks(nets, endpoint),
        Peer::DomainNames(_) | Peer::Unknown => false,
    }
}

fn protocols_match<F: Facts>(
    protocols: Option<&[PortMatch]>,
    flow: &Flow<'_, F::Endpoint>,
    facts: &F,
) -> bool {
    let Some(protocols) = protocols else {
        return true;
    };
    protocols.iter().any(|p| match p {
        PortMatch::Numeric(range) => range.contains(flow.protocol, flow.port),
        PortMatch::Named(name) => {
            facts.named_port(flow.destination(), name, flow.protocol, flow.port)
        }
    })
}

#[cfg(test)]
#[path = "eval_tests.rs"]
mod tests;
