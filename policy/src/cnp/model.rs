//! Validated ClusterNetworkPolicies: enums instead of strings, selectors parsed, ports as ranges.
//! What [`super::eval`] (and later the compiler) works on.

use std::cmp::Ordering;
use std::fmt;

use ipnet::IpNet;

use crate::ports::PortRange;
use crate::selector::Selector;
use crate::verdict::Direction;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Tier {
    /// Evaluated before NetworkPolicy v1.
    Admin,
    /// Evaluated after NetworkPolicy v1, for traffic v1 leaves undecided.
    Baseline,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Admin => "Admin",
            Tier::Baseline => "Baseline",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Action {
    /// Allowed in this direction; no later tier is consulted for it.
    Accept,
    /// Denied; nothing later is consulted.
    Deny,
    /// Leaves the current tier: the next tier decides.
    Pass,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Accept => "Accept",
            Action::Deny => "Deny",
            Action::Pass => "Pass",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The pods a CNP applies to (never host-network pods).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodSet {
    /// Every pod of the namespaces the selector picks.
    Namespaces(Selector),
    /// Pods the pod selector picks in the namespaces the namespace selector picks.
    Pods {
        namespaces: Selector,
        pods: Selector,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// A set of pods (never host-network pods).
    Pods(PodSet),
    /// The addresses (`status.addresses`) of the nodes the selector picks.
    Nodes(Selector),
    /// Any address in these CIDRs, pod addresses included.
    Networks(Vec<IpNet>),
    /// FQDNs, `*.` prefix allowed. Enforced in Admin-tier egress `Accept` rules from what each
    /// pod learns ([`crate::dns`]); in a `Deny`/`Pass` rule they fail closed like
    /// [`Peer::Unknown`] (the API supports them for `Accept` only).
    DomainNames(Vec<String>),
    /// A peer with no field this version knows (a newer API): fails closed.
    Unknown,
}

impl Peer {
    /// Whether this peer makes its rule fail closed (an unknown or unsupported peer type).
    pub fn fails_closed(&self) -> bool {
        matches!(self, Peer::Unknown | Peer::DomainNames(_))
    }
}

/// One entry of `protocols`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortMatch {
    /// A protocol and a port or an inclusive range.
    Numeric(PortRange),
    /// `destinationNamedPort`: a container port name of the destination pod (any protocol the
    /// destination declares it with).
    Named(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Index in the policy's `ingress` or `egress` list.
    pub index: usize,
    pub name: Option<String>,
    pub action: Action,
    pub peers: Vec<Peer>,
    /// `None`: every protocol and port.
    pub protocols: Option<Vec<PortMatch>>,
}

impl Rule {
    /// How the rule names itself in explanations: its `name`, else its index.
    pub fn label(&self) -> String {
        match &self.name {
            Some(n) if !n.is_empty() => n.clone(),
            _ => format!("#{}", self.index),
        }
    }

    pub fn fails_closed(&self) -> bool {
        self.peers.iter().any(Peer::fails_closed)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidCnp {
    pub name: String,
    pub tier: Tier,
    pub priority: u16,
    pub subject: PodSet,
    pub ingress: Vec<Rule>,
    pub egress: Vec<Rule>,
    /// Annotated `portcullis.dev/staged: "true"`: compiled beside the enforced policies, never
    /// enforced ([`crate::staged`]).
    pub staged: bool,
}

impl ValidCnp {
    pub fn rules(&self, direction: Direction) -> &[Rule] {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    /// Evaluation order inside a tier: by `priority` (lower first), then by name. Upstream leaves
    /// the order of equal priorities undefined; the name (unique, CNPs are cluster-scoped) makes
    /// it total and stable across restarts and controllers.
    pub fn evaluation_order(a: &ValidCnp, b: &ValidCnp) -> Ordering {
        (a.tier, a.priority, &a.name).cmp(&(b.tier, b.priority, &b.name))
    }
}
