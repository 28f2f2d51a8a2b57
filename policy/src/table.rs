//! Compiled per-pod tables, and the decision itself: [`PodTable::check`].
//!
//! A table holds no label selectors: every peer is an [`IpSet`] resolved at compile time, every
//! port a numeric range, so a lookup is a few range checks and binary searches.

use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::ipset::IpSet;
use crate::ports::{PortRange, Protocol};
use crate::verdict::{Direction, Reason, Verdict};

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
}

impl DirectionTable {
    pub fn open() -> Self {
        DirectionTable {
            isolated_by: Arc::from(Vec::new()),
            rules: Vec::new(),
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
    #[inline]
    pub fn matches(&self, peer: IpAddr, port: u16, protocol: Protocol) -> bool {
        let port_ok = match &self.ports {
            None => true,
            // A protocol NetworkPolicy cannot name has no port a rule could list: any `ports`
            // entry keeps the rule from matching it (nor can a named port below: its protocol is
            // TCP, UDP or SCTP).
            Some(_) if protocol.is_portless() => false,
            Some(ranges) => ranges.iter().any(|r| r.contains(protocol, port)),
        };
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
    pub fn check(
        &self,
        direction: Direction,
        peer: IpAddr,
        port: u16,
        protocol: Protocol,
    ) -> Verdict {
        let peer = canonical(peer);
        let table = self.direction(direction);
        let reason = if !table.is_isolated() {
            Reason::NotIsolated
        } else if peer.is_loopback() || self.ips.contains(&peer) {
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
        };
        Verdict { direction, reason }
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
