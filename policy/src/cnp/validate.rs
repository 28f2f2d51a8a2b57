//! ClusterNetworkPolicy validation as the API server performs it with the upstream CRD
//! (`config/crd/experimental`, the superset of the standard channel): the OpenAPI schema
//! (enums, ranges, `minItems`/`maxItems`, `minProperties`/`maxProperties`, `maxLength`,
//! patterns, `listType=set`) and the CEL rules (`start < end`, `isCIDR`, no named port with
//! `networks`/`nodes`/`domainNames` peers). Every error is reported, not only the first.
//!
//! Beyond the CRD, what this engine cannot use is an error too: a label selector with an unknown
//! operator or a malformed key (the CRD leaves selectors unchecked; a selector that cannot be
//! evaluated cannot be enforced), and an object name that is not a DNS subdomain.

use std::collections::BTreeSet;

use ipnet::IpNet;

use super::error::CnpError;
use super::model::{Action, Peer, PodSet, PortMatch, Rule, Tier, ValidCnp};
use super::types::{self, ClusterNetworkPolicy};
use crate::ports::{PortRange, Protocol};
use crate::selector::Selector;

/// Upper bounds of the CRD.
pub const MAX_RULES: usize = 25;
pub const MAX_PEERS: usize = 25;
pub const MAX_PROTOCOLS: usize = 25;
pub const MAX_NETWORKS: usize = 25;
pub const MAX_DOMAIN_NAMES: usize = 25;
pub const MAX_RULE_NAME: usize = 100;
pub const MAX_CIDR_LEN: usize = 43;
pub const MAX_PRIORITY: i64 = 1000;

/// How to treat a peer key this version does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// As this version's CRD would: an unknown field is an error (manifests, `lint`).
    Strict,
    /// For objects the API server already accepted under a newer CRD: a peer with no known
    /// field becomes [`Peer::Unknown`], which fails closed, as upstream asks.
    FromApiServer,
}

/// Validates one object; any error rejects it whole, as the API server would.
pub fn validate(cnp: &ClusterNetworkPolicy, mode: Mode) -> Result<ValidCnp, Vec<CnpError>> {
    let mut v = Validator {
        policy: cnp.name().to_string(),
        mode,
        errors: Vec::new(),
    };
    v.header(cnp);
    let spec = &cnp.spec;
    let tier = match spec.tier.as_str() {
        "Admin" => Some(Tier::Admin),
        "Baseline" => Some(Tier::Baseline),
        other => v.unsupported("spec.tier", other, "\"Admin\", \"Baseline\""),
    };
    let priority = v.range("spec.priority", spec.priority, 0, MAX_PRIORITY);
    let subject = v.subject(&spec.subject);
    let ingress = v.rules("spec.ingress", spec.ingress.as_deref(), |v, field, i, r| {
        v.rule(
            field,
            i,
            &r.name,
            &r.action,
            "from",
            &r.from,
            &r.protocols,
            false,
        )
    });
    let egress = v.rules("spec.egress", spec.egress.as_deref(), |v, field, i, r| {
        v.rule(
            field,
            i,
            &r.name,
            &r.action,
            "to",
            &r.to,
            &r.protocols,
            true,
        )
    });
    match (tier, priority, subject) {
        (Some(tier), Some(priority), Some(subject)) if v.errors.is_empty() => Ok(ValidCnp {
            name: v.policy,
            tier,
            priority: priority as u16,
            subject,
            ingress,
            egress,
            staged: crate::staged::is_staged(cnp.metadata.annotations.as_ref()),
        }),
        _ => Err(v.errors),
    }
}

struct Validator {
    policy: String,
    mode: Mode,
    errors: Vec<CnpError>,
}

type Protocols = Option<Vec<types::ProtocolMatch>>;

impl Validator {
    fn header(&mut self, cnp: &ClusterNetworkPolicy) {
        if cnp.api_version != super::API_VERSION {
            self.unsupported::<()>("apiVersion", &cnp.api_version.clone(), super::API_VERSION);
        }
        if cnp.kind != super::KIND {
            self.unsupported::<()>("kind", &cnp.kind.clone(), super::KIND);
        }
        match cnp.metadata.name.as_deref() {
            None | Some("") => self.required("metadata.name"),
            Some(name) => {
                if !dns_subdomain(name) {
                    self.invalid(
                        "metadata.name",
                        format!(
                            "{name:?}: a lowercase RFC 1123 subdomain of at most 253 characters \
                             is required"
                        ),
                    );
                }
            }
        }
        if cnp
            .metadata
            .namespace
            .as_deref()
            .is_some_and(|n| !n.is_empty())
        {
            self.invalid(
                "metadata.namespace",
                "ClusterNetworkPolicy is cluster-scoped: no namespace".into(),
            );
        }
    }

    fn push(&mut self, e: impl FnOnce(String) -> CnpError) {
        self.errors.push(e(self.policy.clone()));
    }

    fn required(&mut self, field: &str) {
        let field = field.to_string();
        self.push(|policy| CnpError::Required { policy, field });
    }

    fn invalid(&mut self, field: &str, reason: String) {
        let field = field.to_string();
        self.push(|policy| CnpError::Invalid {
            policy,
            field,
            reason,
        });
    }

    fn unsupported<T>(&mut self, field: &str, value: &str, supported: &'static str) -> Option<T> {
        let (field, value) = (field.to_string(), value.to_string());
        self.push(|policy| CnpError::Unsupported {
            policy,
            field,
            value,
            supported,
        });
        None
    }

    fn range(&mut self, field: &str, value: i64, min: i64, max: i64) -> Option<i64> {
        if (min..=max).contains(&value) {
            return Some(value);
        }
        let field = field.to_string();
        self.push(|policy| CnpError::OutOfRange {
            policy,
            field,
            value,
            min,
            max,
        });
        None
    }

    fn exactly_one(&mut self, field: &str, found: usize, choices: &'static str) -> bool {
        if found == 1 {
            return true;
        }
        let field = field.to_string();
        self.push(|policy| CnpError::ExactlyOne {
            policy,
            field,
            choices,
            found,
        });
        false
    }

    /// `minItems`/`maxItems`.
    fn count(&mut self, field: &str, found: usize, min: usize, max: usize) -> bool {
        let field = field.to_string();
        if found < min {
            self.push(|policy| CnpError::TooFew { policy, field, min });
            false
        } else if found > max {
            self.push(|policy| CnpError::TooMany {
                policy,
                field,
                found,
                max,
            });
            false
        } else {
            true
        }
    }

    fn max_len(&mut self, field: &str, value: &str, max: usize) -> bool {
        if value.len() <= max {
            return true;
        }
        let field = field.to_string();
        self.push(|policy| CnpError::TooLong { policy, field, max });
        false
    }

    /// `x-kubernetes-list-type: set`: no duplicates.
    fn set(&mut self, field: &str, items: &[String]) {
        let mut seen = BTreeSet::new();
        for (i, item) in items.iter().enumerate() {
            if !seen.insert(item) {
                let (field, value) = (format!("{field}[{i}]"), item.clone());
                self.push(|policy| CnpError::Duplicate {
                    policy,
                    field,
                    value,
                });
            }
        }
    }

    fn selector(&mut self, field: &str, sel: Option<&types::LabelSelector>) -> Option<Selector> {
        let Some(sel) = sel else {
            return Some(Selector::everything());
        };
        match Selector::parse(&sel.to_k8s(), field) {
            Ok(s) => Some(s),
            Err((field, reason)) => {
                self.invalid(&field, reason);
                None
            }
        }
    }

    fn pod_set(&mut self, field: &str, pods: &types::NamespacedPod) -> Option<PodSet> {
        let namespaces = self.selector(
            &format!("{field}.namespaceSelector"),
            pods.namespace_selector.as_ref(),
        );
        let pod_field = format!("{field}.podSelector");
        if pods.pod_selector.is_none() {
            self.required(&pod_field);
        }
        let selected = self.selector(&pod_field, pods.pod_selector.as_ref());
        Some(PodSet::Pods {
            namespaces: namespaces?,
            pods: selected?,
        })
    }

    fn subject(&mut self, subject: &types::Subject) -> Option<PodSet> {
        let found = subject.namespaces.is_some() as usize + subject.pods.is_some() as usize;
        if !self.exactly_one("spec.subject", found, "namespaces, pods") {
            return None;
        }
        match (&subject.namespaces, &subject.pods) {
            (Some(ns), _) => self
                .selector("spec.subject.namespaces", Some(ns))
                .map(PodSet::Namespaces),
            (_, Some(pods)) => self.pod_set("spec.subject.pods", pods),
            _ => None,
        }
    }

    fn rules<R>(
        &mut self,
        field: &str,
        rules: Option<&[R]>,
        mut one: impl FnMut(&mut Self, &str, usize, &R) -> Option<Rule>,
    ) -> Vec<Rule> {
        let rules = rules.unwrap_or_default();
        self.count(field, rules.len(), 0, MAX_RULES);
        rules
            .iter()
            .enumerate()
            .filter_map(|(i, r)| one(self, &format!("{field}[{i}]"), i, r))
            .collect()
    }

    #[allow(clippy::too_many_arguments)]
    fn rule(
        &mut self,
        field: &str,
        index: usize,
        name: &Option<String>,
        action: &str,
        peers_key: &str,
        peers: &[types::Peer],
        protocols: &Protocols,
        egress: bool,
    ) -> Option<Rule> {
        if let Some(n) = name {
            self.max_len(&format!("{field}.name"), n, MAX_RULE_NAME);
        }
        let action = match action {
            "Accept" => Some(Action::Accept),
            "Deny" => Some(Action::Deny),
            "Pass" => Some(Action::Pass),
            other => self.unsupported(
                &format!("{field}.action"),
                other,
                "\"Accept\", \"Deny\", \"Pass\"",
            ),
        };
        let peers_field = format!("{field}.{peers_key}");
        self.count(&peers_field, peers.len(), 1, MAX_PEERS);
        let peers: Vec<Option<Peer>> = peers
            .iter()
            .enumerate()
            .map(|(i, p)| self.peer(&format!("{peers_field}[{i}]"), p, egress))
            .collect();
        let protocols = self.protocols(&format!("{field}.protocols"), protocols.as_deref());
        self.named_port_rule(field, peers.iter().flatten(), protocols.as_deref());
        let peers: Option<Vec<Peer>> = peers.into_iter().collect();
        Some(Rule {
            index,
            name: name.clone().filter(|n| !n.is_empty()),
            action: action?,
            peers: peers?,
            protocols,
        })
    }

    /// The egress rule's CEL rule: a named port cannot go with a peer that has no pods.
    fn named_port_rule<'p>(
        &mut self,
        field: &str,
        mut peers: impl Iterator<Item = &'p Peer>,
        protocols: Option<&[PortMatch]>,
    ) {
        let named = protocols
            .unwrap_or_default()
            .iter()
            .any(|p| matches!(p, PortMatch::Named(_)));
        let podless =
            peers.any(|p| matches!(p, Peer::Networks(_) | Peer::Nodes(_) | Peer::DomainNames(_)));
        if named && podless {
            self.invalid(
                field,
                "networks/nodes/domainNames peer cannot be set with namedPorts since there are no \
                 namedPorts for networks/nodes/domainNames"
                    .into(),
            );
        }
    }

    fn peer(&mut self, field: &str, peer: &types::Peer, egress: bool) -> Option<Peer> {
        let mut unknown: Vec<&str> = peer.unknown.keys().map(String::as_str).collect();
        if !egress {
            // Ingress peers know only `namespaces` and `pods`.
            let egress_only = [
                ("nodes", peer.nodes.is_some()),
                ("networks", peer.networks.is_some()),
                ("domainNames", peer.domain_names.is_some()),
            ];
            unknown.extend(egress_only.iter().filter(|(_, set)| *set).map(|(k, _)| *k));
        }
        let known = [
            peer.namespaces.is_some(),
            peer.pods.is_some(),
            egress && peer.nodes.is_some(),
            egress && peer.networks.is_some(),
            egress && peer.domain_names.is_some(),
        ]
        .iter()
        .filter(|set| **set)
        .count();
        if self.mode == Mode::FromApiServer && known == 0 && !unknown.is_empty() {
            return Some(Peer::Unknown);
        }
        for key in &unknown {
            let field = format!("{field}.{key}");
            self.push(|policy| CnpError::UnknownField { policy, field });
        }
        let choices = if egress {
            "namespaces, pods, nodes, networks, domainNames"
        } else {
            "namespaces, pods"
        };
        if !self.exactly_one(field, known + unknown.len(), choices) || !unknown.is_empty() {
            return None;
        }
        if let Some(ns) = &peer.namespaces {
            let sel = self.selector(&format!("{field}.namespaces"), Some(ns))?;
            return Some(Peer::Pods(PodSet::Namespaces(sel)));
        }
        if let Some(pods) = &peer.pods {
            return self.pod_set(&format!("{field}.pods"), pods).map(Peer::Pods);
        }
        if let Some(nodes) = &peer.nodes {
            return self
                .selector(&format!("{field}.nodes"), Some(nodes))
                .map(Peer::Nodes);
        }
        if let Some(networks) = &peer.networks {
            return self.networks(&format!("{field}.networks"), networks);
        }
        let names = peer.domain_names.as_deref().unwrap_or_default();
        self.domain_names(&format!("{field}.domainNames"), names)
    }

    fn networks(&mut self, field: &str, networks: &[String]) -> Option<Peer> {
        let before = self.errors.len();
        self.count(field, networks.len(), 1, MAX_NETWORKS);
        self.set(field, networks);
        let mut nets = Vec::new();
        for (i, cidr) in networks.iter().enumerate() {
            let here = format!("{field}[{i}]");
            if !self.max_len(&here, cidr, MAX_CIDR_LEN) {
                continue;
            }
            match parse_cidr(cidr) {
                Some(net) => nets.push(net),
                None => self.invalid(&here, "Invalid CIDR format provided".into()),
            }
        }
        (self.errors.len() == before).then_some(Peer::Networks(nets))
    }

    fn domain_names(&mut self, field: &str, names: &[String]) -> Option<Peer> {
        let before = self.errors.len();
        self.count(field, names.len(), 1, MAX_DOMAIN_NAMES);
        self.set(field, names);
        for (i, name) in names.iter().enumerate() {
            if !domain_name(name) {
                self.invalid(
                    &format!("{field}[{i}]"),
                    format!("{name:?} is not a domain name (a wildcard `*.` may only prefix it)"),
                );
            }
        }
        (self.errors.len() == before).then(|| Peer::DomainNames(names.to_vec()))
    }

    fn protocols(
        &mut self,
        field: &str,
        protocols: Option<&[types::ProtocolMatch]>,
    ) -> Option<Vec<PortMatch>> {
        let protocols = protocols?;
        self.count(field, protocols.len(), 1, MAX_PROTOCOLS);
        let out = protocols
            .iter()
            .enumerate()
            .filter_map(|(i, p)| self.protocol(&format!("{field}[{i}]"), p))
            .collect();
        Some(out)
    }

    fn protocol(&mut self, field: &str, p: &types::ProtocolMatch) -> Option<PortMatch> {
        let set = [
            (Protocol::Tcp, "tcp", &p.tcp),
            (Protocol::Udp, "udp", &p.udp),
            (Protocol::Sctp, "sctp", &p.sctp),
        ];
        let found = set.iter().filter(|(_, _, m)| m.is_some()).count()
            + p.destination_named_port.is_some() as usize;
        if !self.exactly_one(field, found, "tcp, udp, sctp, destinationNamedPort") {
            return None;
        }
        if let Some(name) = &p.destination_named_port {
            if name.is_empty() {
                self.required(&format!("{field}.destinationNamedPort"));
                return None;
            }
            return Some(PortMatch::Named(name.clone()));
        }
        let (protocol, key, m) = set.into_iter().find(|(_, _, m)| m.is_some())?;
        let here = format!("{field}.{key}");
        let Some(port) = m.as_ref().and_then(|m| m.destination_port.as_ref()) else {
            // `tcp: {}`: minProperties=1.
            self.push(|policy| CnpError::TooFew {
                policy,
                field: here,
                min: 1,
            });
            return None;
        };
        self.port(&format!("{here}.destinationPort"), protocol, port)
    }

    fn port(&mut self, field: &str, protocol: Protocol, port: &types::Port) -> Option<PortMatch> {
        let found = port.number.is_some() as usize + port.range.is_some() as usize;
        if !self.exactly_one(field, found, "number, range") {
            return None;
        }
        if let Some(n) = port.number {
            let n = self.range(&format!("{field}.number"), n, 1, 65535)?;
            return Some(PortMatch::Numeric(PortRange::single(protocol, n as u16)));
        }
        let r = port.range.as_ref()?;
        let start = self.range(&format!("{field}.range.start"), r.start, 1, 65535);
        let end = self.range(&format!("{field}.range.end"), r.end, 1, 65535);
        let (start, end) = (start?, end?);
        if start >= end {
            self.invalid(
                &format!("{field}.range"),
                "Start port must be less than End port".into(),
            );
            return None;
        }
        Some(PortMatch::Numeric(PortRange {
            protocol,
            first: start as u16,
            last: end as u16,
        }))
    }
}

/// CEL `isCIDR`: an IPv4 or IPv6 prefix; host bits may be set; no IPv4-mapped IPv6 address and
/// no zone, as Kubernetes' CIDR library decides.
pub fn parse_cidr(s: &str) -> Option<IpNet> {
    let net: IpNet = s.parse().ok()?;
    if let IpNet::V6(v6) = net {
        if v6.addr().to_ipv4_mapped().is_some() {
            return None;
        }
    }
    Some(net)
}

/// The CRD's pattern for a domain name:
/// `^(\*\.)?([a-zA-z0-9]([-a-zA-Z0-9_]*[a-zA-Z0-9])?\.)+[a-zA-z0-9]([-a-zA-Z0-9_]*[a-zA-Z0-9])?\.?$`
/// (its `A-z` class also admits ``[\]^_` ``, kept here for fidelity).
pub fn domain_name(s: &str) -> bool {
    let s = s.strip_prefix("*.").unwrap_or(s);
    let s = s.strip_suffix('.').unwrap_or(s);
    let labels: Vec<&str> = s.split('.').collect();
    labels.len() >= 2 && labels.iter().all(|l| domain_label(l))
}

fn domain_label(l: &str) -> bool {
    let first_ok = |c: u8| c.is_ascii_alphanumeric() || (b'['..=b'`').contains(&c);
    match l.as_bytes() {
        [] => false,
        [only] => first_ok(*only),
        [first, mid @ .., last] => {
            first_ok(*first)
                && last.is_ascii_alphanumeric()
                && mid
                    .iter()
                    .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
        }
    }
}

/// A DNS subdomain (RFC 1123), as Kubernetes requires of cluster-scoped object names.
fn dns_subdomain(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;
