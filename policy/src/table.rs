//! Compiled per-pod tables, and the decision itself: [`PodTable::check`].
//!
//! A table holds no label selectors: every peer is an [`IpSet`] resolved at compile time, every
//! port a numeric range, so a lookup is a few range checks and binary searches.

use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::cnp::model::{Action, Tier};
use crate::dns::{DomainPattern, Learned, NoLearned};
use crate::ipset::IpSet;
use crate::ports::{PortRange, Protocol};
use crate::staged::StagedTables;
use crate::verdict::{Direction, DnsNote, Reason, Verdict};

/// Everything one pod's proxy needs to decide on its connections.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodTable {
    pub namespace: String,
    pub name: String,
    pub ips: Vec<IpAddr>,
    pub host_ip: Option<IpAddr>,
    pub ingress: DirectionTable,
    pub egress: DirectionTable,
    /// What the staged policies selecting the pod would change (`None`: nothing staged selects
    /// it). Never consulted by [`PodTable::check`]; see [`crate::staged`]. Absent on the wire
    /// when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staged: Option<Box<StagedTables>>,
    /// Wire version 1 once carried peer names here (`known_pods`, always empty on the wire: the
    /// controller streams them apart). Still accepted from such a controller and ignored, never
    /// written: peer names travel beside the tables ([`crate::compile::PeerNames`]).
    #[serde(default, skip_serializing, rename = "known_pods")]
    retired_known_pods: Retired,
}

/// A retired field: whatever it holds is read and dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Retired;

impl<'de> Deserialize<'de> for Retired {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(d).map(|_| Retired)
    }
}

/// The rules of every policy that selects the pod for one direction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectionTable {
    /// Policies that isolate the pod in this direction; empty means not isolated.
    pub isolated_by: Arc<[Arc<str>]>,
    pub rules: Vec<CompiledRule>,
    /// Admin-tier ClusterNetworkPolicy rules selecting the pod, in evaluation order
    /// ([`crate::cnp::ValidCnp::evaluation_order`], then list order): the first match decides.
    /// Absent on the wire when empty, so a table without CNPs reads as before.
    #[serde(default, skip_serializing_if = "<[_]>::is_empty")]
    pub admin: Vec<TierRule>,
    /// Baseline-tier rules, likewise; consulted only where NetworkPolicy v1 does not isolate.
    #[serde(default, skip_serializing_if = "<[_]>::is_empty")]
    pub baseline: Vec<TierRule>,
}

/// One ClusterNetworkPolicy rule, resolved for one pod and direction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierRule {
    /// What a match does: `Accept`/`Deny` end the direction's evaluation, `Pass` the tier's.
    pub action: Action,
    /// The rule's `name`, else `#<index>` in the CNP's `ingress`/`egress` list.
    pub label: Arc<str>,
    /// The rule holds a peer type this version cannot enforce (`domainNames`, a newer API's):
    /// a `Deny`/`Pass` rule then denies everything (`action` is `Deny`, `matcher` matches all).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub failed_closed: bool,
    /// The CNP's name (`policy`), the rule's index, and the peers and ports it matches.
    pub matcher: CompiledRule,
    /// `domainNames` of an Admin-tier egress `Accept` rule: the rule also matches a peer the
    /// pod learned from its own lookup of a name one of them allows (on the rule's ports).
    #[serde(default, skip_serializing_if = "<[_]>::is_empty")]
    pub domains: Arc<[DomainPattern]>,
}

impl TierRule {
    fn reason(&self, tier: Tier, dns: Option<DnsNote>) -> Reason {
        Reason::Tier {
            tier,
            policy: self.matcher.policy.clone(),
            rule: self.label.clone(),
            action: self.action,
            failed_closed: self.failed_closed,
            dns,
        }
    }

    /// The learned name through which this rule's `domainNames` match `peer`, if one does.
    #[inline]
    fn learned_match(
        &self,
        peer: IpAddr,
        port: u16,
        protocol: Protocol,
        learned: &dyn Learned,
    ) -> Option<Arc<str>> {
        if self.domains.is_empty() || !self.matcher.ports_match(port, protocol) {
            return None;
        }
        learned.learned_name(peer, &|name| self.domains.iter().any(|d| d.matches(name)))
    }
}

/// The first rule of a tier that matches.
#[inline]
fn first_match(
    rules: &[TierRule],
    peer: IpAddr,
    port: u16,
    protocol: Protocol,
) -> Option<&TierRule> {
    rules
        .iter()
        .find(|r| r.matcher.matches(peer, port, protocol))
}

/// The first rule of a tier that matches, by its peers or by a name the pod learned, with that
/// name; and whether a `domainNames` rule before it covered the port but not the (unlearned) IP.
#[inline]
fn first_match_learned<'t>(
    rules: &'t [TierRule],
    peer: IpAddr,
    port: u16,
    protocol: Protocol,
    learned: &dyn Learned,
) -> (
    Option<(&'t TierRule, Option<DnsNote>)>,
    Option<&'t TierRule>,
) {
    let mut unlearned = None;
    for r in rules {
        if r.matcher.matches(peer, port, protocol) {
            return (Some((r, None)), unlearned);
        }
        if let Some(name) = r.learned_match(peer, port, protocol, learned) {
            return (Some((r, Some(DnsNote::Learned { name }))), unlearned);
        }
        if unlearned.is_none() && !r.domains.is_empty() && r.matcher.ports_match(port, protocol) {
            unlearned = Some(r);
        }
    }
    (None, unlearned)
}

impl DirectionTable {
    pub fn open() -> Self {
        DirectionTable {
            isolated_by: Arc::from(Vec::new()),
            rules: Vec::new(),
            admin: Vec::new(),
            baseline: Vec::new(),
        }
    }

    pub fn is_isolated(&self) -> bool {
        !self.isolated_by.is_empty()
    }
}

/// One ingress or egress rule of one policy, with selectors resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompiledRule {
    /// `namespace/name` of the policy.
    pub policy: Arc<str>,
    /// Index of the rule in the policy's `ingress` or `egress` list.
    pub rule: usize,
    /// Peers the rule allows; `None` means any peer (no `from`/`to`).
    pub peers: Option<Arc<IpSet>>,
    /// Ports the rule allows for every peer above; `None` means any port of any protocol.
    pub ports: Option<Arc<[PortRange]>>,
    /// Named egress ports resolve per destination pod: (port, pods on which the name means it).
    #[serde(default, skip_serializing_if = "<[_]>::is_empty")]
    pub named: Arc<[NamedPortTarget]>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedPortTarget {
    pub name: String,
    pub port: PortRange,
    pub peers: IpSet,
}

impl CompiledRule {
    /// Whether the rule's numeric ports admit `port`/`protocol` (any, without `ports`).
    #[inline]
    pub fn ports_match(&self, port: u16, protocol: Protocol) -> bool {
        match &self.ports {
            None => true,
            // A protocol NetworkPolicy cannot name has no port a rule could list: any `ports`
            // entry keeps the rule from matching it (nor can a named port below: its protocol is
            // TCP, UDP or SCTP).
            Some(_) if protocol.is_portless() => false,
            Some(ranges) => ranges.iter().any(|r| r.contains(protocol, port)),
        }
    }

    #[inline]
    pub fn matches(&self, peer: IpAddr, port: u16, protocol: Protocol) -> bool {
        let port_ok = self.ports_match(port, protocol);
        if port_ok && self.peers.as_ref().is_none_or(|set| set.contains(peer)) {
            return true;
        }
        self.named
            .iter()
            .any(|t| t.port.contains(protocol, port) && t.peers.contains(peer))
    }
}

impl PodTable {
    /// A table for a pod no policy selects.
    pub fn unrestricted(
        namespace: &str,
        name: &str,
        ips: Vec<IpAddr>,
        host_ip: Option<IpAddr>,
    ) -> Self {
        PodTable {
            namespace: namespace.into(),
            name: name.into(),
            ips,
            host_ip,
            ingress: DirectionTable::open(),
            egress: DirectionTable::open(),
            staged: None,
            retired_known_pods: Retired,
        }
    }

    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub fn direction(&self, direction: Direction) -> &DirectionTable {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    /// Decides a connection of this pod with `peer` (the source for ingress, the destination for
    /// egress) on `port`/`protocol` (the destination port in both cases). A port-less protocol
    /// ([`Protocol::Other`]) ignores `port`: only rules without `ports` can admit it.
    ///
    /// In order: the Admin tier (the first matching ClusterNetworkPolicy rule; `Accept`/`Deny`
    /// decide, `Pass` skips the rest of the tier), NetworkPolicy v1 if it isolates the pod, the
    /// Baseline tier likewise, else allowed. Traffic CNPs do not govern skips both tiers (see
    /// [`PodTable::governed_by_cnp`]).
    pub fn check(
        &self,
        direction: Direction,
        peer: IpAddr,
        port: u16,
        protocol: Protocol,
    ) -> Verdict {
        self.check_learned(direction, peer, port, protocol, &NoLearned)
    }

    /// [`PodTable::check`] with what the pod learned from its own DNS lookups: an Admin-tier
    /// `domainNames` rule matches a peer learned from a name it allows ([`DnsNote::Learned`]
    /// says which); a tier `Deny` that such a rule would have pre-empted says the IP was not
    /// learned ([`DnsNote::NotLearned`]).
    pub fn check_learned(
        &self,
        direction: Direction,
        peer: IpAddr,
        port: u16,
        protocol: Protocol,
        learned: &dyn Learned,
    ) -> Verdict {
        self.decide(
            self.direction(direction),
            direction,
            peer,
            port,
            protocol,
            learned,
        )
    }

    /// [`PodTable::check`]'s decision with one direction's table: the enforced one, or the
    /// enforced and staged policies together ([`crate::staged`]).
    #[inline(always)]
    pub(crate) fn decide(
        &self,
        table: &DirectionTable,
        direction: Direction,
        peer: IpAddr,
        port: u16,
        protocol: Protocol,
        learned: &dyn Learned,
    ) -> Verdict {
        let peer = canonical(peer);
        let cnp = self.governed_by_cnp(direction, peer);
        let tier = |rules: &[TierRule], tier: Tier| {
            if !cnp {
                return None;
            }
            let (hit, unlearned) = first_match_learned(rules, peer, port, protocol, learned);
            let (rule, note) = hit?;
            let note = note.or_else(|| {
                let u = unlearned.filter(|_| rule.action == Action::Deny)?;
                Some(DnsNote::NotLearned {
                    policy: u.matcher.policy.clone(),
                    rule: u.label.clone(),
                })
            });
            (rule.action != Action::Pass).then(|| rule.reason(tier, note))
        };
        let reason = tier(&table.admin, Tier::Admin)
            .or_else(|| self.network_policy(table, peer, port, protocol))
            .or_else(|| tier(&table.baseline, Tier::Baseline))
            .unwrap_or(Reason::NotIsolated);
        Verdict { direction, reason }
    }

    /// Whether ClusterNetworkPolicies apply to this peer. Not to the pod's own addresses (the
    /// API: "a Pod connecting to its own Pod IP is not subject to CNP"), nor to ingress from the
    /// pod's node (`status.hostIP`: kubelet probes; CNP ingress peers are pods only, so only a
    /// failed-closed rule could match the node, and it must not cut probes). Egress to a node
    /// address is governed: `nodes` and `networks` peers exist for it (NPEP-126).
    #[inline]
    pub fn governed_by_cnp(&self, direction: Direction, peer: IpAddr) -> bool {
        let peer = canonical(peer);
        !(peer.is_loopback()
            || self.ips.contains(&peer)
            || (direction == Direction::Ingress && self.host_ip == Some(peer)))
    }

    /// NetworkPolicy v1's decision: `None` when no v1 policy isolates the pod in this direction.
    fn network_policy(
        &self,
        table: &DirectionTable,
        peer: IpAddr,
        port: u16,
        protocol: Protocol,
    ) -> Option<Reason> {
        if !table.is_isolated() {
            return None;
        }
        Some(if peer.is_loopback() || self.ips.contains(&peer) {
            Reason::SelfTraffic
        } else if self.host_ip == Some(peer) {
            Reason::NodeTraffic
        } else {
            match table.rules.iter().find(|r| r.matches(peer, port, protocol)) {
                Some(rule) => Reason::Rule {
                    policy: rule.policy.clone(),
                    rule: rule.rule,
                },
                None if protocol.is_portless() => Reason::NoPortlessRuleMatched {
                    protocol,
                    isolated_by: table.isolated_by.clone(),
                },
                None => Reason::NoRuleMatched {
                    isolated_by: table.isolated_by.clone(),
                },
            }
        })
    }

    /// The Admin-tier `Pass` rule that sent this connection on to NetworkPolicy v1 and the
    /// Baseline tier, if one did (for `explain`).
    pub fn admin_pass(
        &self,
        direction: Direction,
        peer: IpAddr,
        port: u16,
        protocol: Protocol,
    ) -> Option<&TierRule> {
        let peer = canonical(peer);
        if !self.governed_by_cnp(direction, peer) {
            return None;
        }
        first_match(&self.direction(direction).admin, peer, port, protocol)
            .filter(|r| r.action == Action::Pass)
    }
}

/// IPv4 peers seen on a dual-stack socket arrive as `::ffff:a.b.c.d`.
#[inline]
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}
