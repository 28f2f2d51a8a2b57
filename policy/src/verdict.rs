//! Verdicts and the reasons behind them, in words a person can act on.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::cnp::model::{Action, Tier};
use crate::ports::Protocol;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a connection is allowed or denied in one direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reason {
    /// No policy selects the pod for this direction: everything is allowed.
    NotIsolated,
    /// The peer is the pod itself.
    SelfTraffic,
    /// The peer is the node the pod runs on (`status.hostIP`).
    NodeTraffic,
    /// A rule allowed it.
    Rule { policy: Arc<str>, rule: usize },
    /// The pod is isolated by these policies and none of their rules matches.
    NoRuleMatched { isolated_by: Arc<[Arc<str>]> },
    /// The flow's IP protocol is one NetworkPolicy cannot name (not TCP, UDP or SCTP), the pod
    /// is isolated by these policies, and none of their rules *without* `ports` matches the
    /// peer (a rule with `ports` never admits such a protocol).
    NoPortlessRuleMatched {
        protocol: Protocol,
        isolated_by: Arc<[Arc<str>]>,
    },
    /// A ClusterNetworkPolicy rule decided (`Accept` or `Deny`; a `Pass` never decides).
    Tier {
        tier: Tier,
        /// The ClusterNetworkPolicy's name (cluster-scoped: no namespace).
        policy: Arc<str>,
        /// The rule's `name`, else `#<index>`.
        rule: Arc<str>,
        action: Action,
        /// The rule holds a peer type Portcullis cannot enforce, so it denied everything it
        /// would cover.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        failed_closed: bool,
        /// What DNS had to do with it (egress `domainNames` rules only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dns: Option<DnsNote>,
    },
}

/// How a `domainNames` rule took part in a tier's decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "dns", rename_all = "snake_case")]
pub enum DnsNote {
    /// Allowed because the pod learned the peer from its own lookup of `name`.
    Learned { name: Arc<str> },
    /// Denied, though `domainNames` rule `rule` of ClusterNetworkPolicy `policy`, before the
    /// deciding rule, covers the port: the peer IP was not learned from DNS.
    NotLearned { policy: Arc<str>, rule: Arc<str> },
}

impl fmt::Display for DnsNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DnsNote::Learned { name } => {
                write!(f, "the pod learned this IP from its DNS lookup of {name}")
            }
            DnsNote::NotLearned { policy, rule } => write!(
                f,
                "IP not learned from DNS: the domainNames rule {rule} of ClusterNetworkPolicy \
                 {policy} allows only addresses the pod received in answers to its own lookups"
            ),
        }
    }
}

/// The decision for one direction of one connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub direction: Direction,
    pub reason: Reason,
}

impl Verdict {
    #[inline]
    pub fn allowed(&self) -> bool {
        !matches!(
            self.reason,
            Reason::NoRuleMatched { .. }
                | Reason::NoPortlessRuleMatched { .. }
                | Reason::Tier {
                    action: Action::Deny | Action::Pass,
                    ..
                }
        )
    }

    /// Which tier decided, as a metric label (four values): `admin`, `baseline` (a
    /// ClusterNetworkPolicy rule), `network_policy` (NetworkPolicy v1 isolates the pod), `none`
    /// (nothing selects the pod for this direction, or the traffic is exempt).
    pub fn tier_label(&self) -> &'static str {
        match &self.reason {
            Reason::Tier {
                tier: Tier::Admin, ..
            } => "admin",
            Reason::Tier {
                tier: Tier::Baseline,
                ..
            } => "baseline",
            Reason::NotIsolated | Reason::SelfTraffic => "none",
            _ => "network_policy",
        }
    }

    /// The ClusterNetworkPolicy tier that decided, if one did.
    pub fn tier(&self) -> Option<Tier> {
        match &self.reason {
            Reason::Tier { tier, .. } => Some(*tier),
            _ => None,
        }
    }

    /// The isolating policies when denied; empty when allowed.
    pub fn isolated_by(&self) -> &[Arc<str>] {
        match &self.reason {
            Reason::NoRuleMatched { isolated_by }
            | Reason::NoPortlessRuleMatched { isolated_by, .. } => isolated_by,
            _ => &[],
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.direction;
        match &self.reason {
            Reason::NotIsolated => write!(
                f,
                "no policy: allowed (no NetworkPolicy selects the pod for {d} and no \
                 ClusterNetworkPolicy rule matches)"
            ),
            Reason::SelfTraffic => {
                write!(f, "allowed: traffic of a pod to itself is always allowed")
            }
            Reason::NodeTraffic => write!(
                f,
                "allowed: NetworkPolicy always allows traffic between a pod and its node (hostIP)"
            ),
            Reason::Rule { policy, rule } => {
                write!(f, "allowed by NetworkPolicy {policy}, {d} rule #{rule}")
            }
            Reason::NoRuleMatched { isolated_by } => {
                let names: Vec<&str> = isolated_by.iter().map(|s| &**s).collect();
                write!(
                    f,
                    "denied: the pod is isolated for {d} by {} and no {d} rule matches",
                    names.join(", ")
                )
            }
            Reason::NoPortlessRuleMatched {
                protocol,
                isolated_by,
            } => {
                let names: Vec<&str> = isolated_by.iter().map(|s| &**s).collect();
                write!(
                    f,
                    "denied: NetworkPolicy cannot name IP protocol {protocol} ({}), so only a \
                     rule without ports admits it; the pod is isolated for {d} by {} and no \
                     {d} rule without ports matches",
                    protocol.number(),
                    names.join(", ")
                )
            }
            Reason::Tier {
                tier,
                policy,
                rule,
                action,
                failed_closed,
                dns,
            } => {
                tier_words(f, d, *tier, policy, rule, *action, *failed_closed)?;
                match dns {
                    Some(note) => write!(f, " ({note})"),
                    None => Ok(()),
                }
            }
        }
    }
}

fn tier_words(
    f: &mut fmt::Formatter<'_>,
    d: Direction,
    tier: Tier,
    policy: &str,
    rule: &str,
    action: Action,
    failed_closed: bool,
) -> fmt::Result {
    let by = format!("{tier}-tier ClusterNetworkPolicy {policy}, {d} rule {rule}");
    if failed_closed {
        return write!(
            f,
            "denied by {by}: the rule names a peer type Portcullis cannot enforce \
             (domainNames outside an Admin-tier Accept rule, or a newer API's), so it fails closed and denies all {d} it covers"
        );
    }
    match (action, tier) {
        (Action::Accept, _) => write!(f, "allowed by {by} (Accept)"),
        (_, Tier::Admin) => write!(
            f,
            "denied by {by} (Deny); an Admin-tier rule overrides every NetworkPolicy: change \
             the ClusterNetworkPolicy to allow it"
        ),
        (_, Tier::Baseline) => write!(
            f,
            "denied by {by} (Deny): no NetworkPolicy isolates the pod for {d}; a NetworkPolicy \
             selecting the pod would decide instead"
        ),
    }
}
