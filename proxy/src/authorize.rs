//! Allow or deny: the proxy's whole policy decision, in one place.
//!
//! The verdict itself comes from the compiled table ([`PodTable::check`] in the policy crate);
//! this module adds the proxy's modes on top of it: audit mode lets denied connections through.

use std::net::IpAddr;

use portcullis_policy::dns::{Learned, NoLearned};
use portcullis_policy::{Direction, PodTable, Protocol, Verdict};

use crate::config::Mode;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Splice it through.
    Allow(Verdict),
    /// Refuse with a reset and write a `connection_denied` audit line.
    Deny(Verdict),
    /// Audit mode: the policy denies it but it goes through, logged as `connection_would_deny`.
    AuditAllow(Verdict),
}

impl Decision {
    pub fn lets_through(&self) -> bool {
        !matches!(self, Decision::Deny(_))
    }

    pub fn verdict(&self) -> &Verdict {
        match self {
            Decision::Allow(v) | Decision::Deny(v) | Decision::AuditAllow(v) => v,
        }
    }

    /// The `verdict` label of the connection metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Decision::Allow(_) => "allow",
            Decision::Deny(_) => "deny",
            Decision::AuditAllow(_) => "audit",
        }
    }
}

/// Decides one TCP connection of this pod with `peer` on destination `port`.
#[inline]
pub fn decide(
    table: &PodTable,
    mode: Mode,
    direction: Direction,
    peer: IpAddr,
    port: u16,
) -> Decision {
    decide_protocol(table, mode, direction, peer, port, Protocol::Tcp)
}

/// Decides one flow of any protocol: TCP connections, and the first packet of each UDP or SCTP
/// flow (`crate::queue`).
#[inline]
pub fn decide_protocol(
    table: &PodTable,
    mode: Mode,
    direction: Direction,
    peer: IpAddr,
    port: u16,
    protocol: Protocol,
) -> Decision {
    decide_learned(table, mode, direction, peer, port, protocol, &NoLearned)
}

/// [`decide_protocol`] with what the pod learned from its DNS lookups (`domainNames` rules).
pub fn decide_learned(
    table: &PodTable,
    mode: Mode,
    direction: Direction,
    peer: IpAddr,
    port: u16,
    protocol: Protocol,
    learned: &dyn Learned,
) -> Decision {
    let verdict = table.check_learned(direction, peer, port, protocol, learned);
    match (verdict.allowed(), mode) {
        (true, _) => Decision::Allow(verdict),
        (false, Mode::Enforce) => Decision::Deny(verdict),
        (false, Mode::Audit) => Decision::AuditAllow(verdict),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_policy::manifest::load_into;
    use portcullis_policy::{compile, Cluster};

    const CLUSTER: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: shop, labels: {app: server}}
spec: {containers: [{name: c, ports: [{containerPort: 80}]}]}
status: {podIP: 10.0.0.1, hostIP: 192.168.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop, labels: {app: client}}
status: {podIP: 10.0.0.2, hostIP: 192.168.0.1}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: only-client, namespace: shop}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{port: 80}]
"#;

    fn server_table() -> std::sync::Arc<PodTable> {
        let mut cluster = Cluster::new();
        let report = load_into(&mut cluster, CLUSTER, "test.yaml");
        assert!(report.errors.is_empty());
        cluster.ensure_implied_namespaces();
        compile(&cluster)
            .table("shop/server")
            .expect("table")
            .clone()
    }

    #[test]
    fn enforce_denies_what_the_table_denies() {
        let t = server_table();
        let ok = decide(
            &t,
            Mode::Enforce,
            Direction::Ingress,
            "10.0.0.2".parse().unwrap(),
            80,
        );
        assert_eq!(ok.label(), "allow");
        let wrong_port = decide(
            &t,
            Mode::Enforce,
            Direction::Ingress,
            "10.0.0.2".parse().unwrap(),
            81,
        );
        assert_eq!(wrong_port.label(), "deny");
        assert!(!wrong_port.lets_through());
        let stranger = decide(
            &t,
            Mode::Enforce,
            Direction::Ingress,
            "10.9.9.9".parse().unwrap(),
            80,
        );
        assert_eq!(stranger.verdict().isolated_by().len(), 1);
    }

    #[test]
    fn audit_lets_denied_connections_through_but_says_so() {
        let t = server_table();
        let d = decide(
            &t,
            Mode::Audit,
            Direction::Ingress,
            "10.9.9.9".parse().unwrap(),
            80,
        );
        assert_eq!(d.label(), "audit");
        assert!(d.lets_through());
        assert!(!d.verdict().allowed());
    }

    #[test]
    fn a_cnp_denial_is_denied_in_enforce_and_let_through_in_audit_mode() {
        let mut cluster = Cluster::new();
        let cnp = "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\n\
                   metadata: {name: guard}\nspec:\n  tier: Admin\n  priority: 1\n  \
                   subject: {namespaces: {}}\n  ingress:\n  - action: Deny\n    \
                   from: [{namespaces: {}}]\n";
        let report = load_into(&mut cluster, &format!("{CLUSTER}---\n{cnp}"), "test.yaml");
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        cluster.ensure_implied_namespaces();
        let compiled = compile(&cluster);
        let t = compiled.table("shop/server").expect("table");
        let client = "10.0.0.2".parse().unwrap();
        let enforced = decide(t, Mode::Enforce, Direction::Ingress, client, 80);
        assert_eq!(enforced.label(), "deny");
        assert_eq!(enforced.verdict().tier_label(), "admin");
        let fields = crate::audit::CnpFields::of(enforced.verdict()).expect("CNP fields");
        assert_eq!(
            (fields.tier, fields.policy, fields.rule, fields.action),
            ("Admin", "guard", "#0", "Deny")
        );
        let audited = decide(t, Mode::Audit, Direction::Ingress, client, 80);
        assert_eq!(audited.label(), "audit");
        assert!(audited.lets_through());
    }

    #[test]
    fn node_and_v4_mapped_peers() {
        let t = server_table();
        let node = decide(
            &t,
            Mode::Enforce,
            Direction::Ingress,
            "192.168.0.1".parse().unwrap(),
            9,
        );
        assert_eq!(node.label(), "allow");
        let mapped = decide(
            &t,
            Mode::Enforce,
            Direction::Ingress,
            "::ffff:10.0.0.2".parse().unwrap(),
            80,
        );
        assert_eq!(mapped.label(), "allow");
    }
}
