//! Staged policies: a NetworkPolicy or ClusterNetworkPolicy annotated
//! `portcullis.dev/staged: "true"` is compiled and evaluated, never enforced.
//!
//! A pod that some staged policy selects carries, beside its enforced table, the table compiled
//! from the enforced **and** the staged policies together ([`StagedTables`], per direction, only
//! where it differs). [`PodTable::check`] decides with the enforced table alone, at the same cost
//! as with nothing staged; [`PodTable::check_staged`] also answers what the staged set would
//! decide ([`PodTable::staged_verdict`]), but only when the two disagree, and names the staged
//! policies that made the difference ([`StagedVerdict::staged_by`]).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use portcullis_contract::keys;
use serde::{Deserialize, Serialize};

use crate::ports::Protocol;
use crate::table::{DirectionTable, PodTable};
use crate::verdict::{Direction, Reason, Verdict};

/// Whether an object's annotations stage it (`portcullis.dev/staged: "true"`, exactly).
pub fn is_staged(annotations: Option<&BTreeMap<String, String>>) -> bool {
    annotations
        .and_then(|a| a.get(keys::STAGED))
        .is_some_and(|v| v == keys::STAGED_TRUE)
}

/// What the staged policies selecting one pod change about its table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StagedTables {
    /// The staged policies that select the pod, sorted: a NetworkPolicy as `namespace/name`, a
    /// ClusterNetworkPolicy by its name (no `/`).
    pub policies: Arc<[Arc<str>]>,
    /// The direction's table compiled from the enforced and the staged policies together;
    /// `None` where the staged policies change nothing (the enforced table decides alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<DirectionTable>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<DirectionTable>,
}

impl StagedTables {
    pub fn direction(&self, direction: Direction) -> Option<&DirectionTable> {
        match direction {
            Direction::Ingress => self.ingress.as_ref(),
            Direction::Egress => self.egress.as_ref(),
        }
    }

    fn is_staged(&self, policy: &str) -> bool {
        self.policies.iter().any(|p| &**p == policy)
    }

    /// The staged policies behind a staged verdict: the one whose rule decided (a NetworkPolicy
    /// rule, a ClusterNetworkPolicy rule), or, for a denial by isolation, the staged policies
    /// that isolate. When the reason names none of them (a staged `Pass` that skipped an
    /// enforced rule), every staged policy of the pod.
    fn responsible(&self, verdict: &Verdict) -> Arc<[Arc<str>]> {
        let named: Vec<Arc<str>> = match &verdict.reason {
            Reason::Rule { policy, .. } | Reason::Tier { policy, .. } => vec![policy.clone()],
            Reason::NoRuleMatched { isolated_by }
            | Reason::NoPortlessRuleMatched { isolated_by, .. } => isolated_by.to_vec(),
            Reason::NotIsolated | Reason::SelfTraffic | Reason::NodeTraffic => Vec::new(),
        };
        let staged: Vec<Arc<str>> = named.into_iter().filter(|p| self.is_staged(p)).collect();
        if staged.is_empty() {
            self.policies.clone()
        } else {
            Arc::from(staged)
        }
    }
}

/// What adding the staged policies would change: the allowed verdict becomes a denial
/// (`WouldDeny`), or the denial an allowed verdict (`WouldAllow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    WouldDeny,
    WouldAllow,
}

impl Effect {
    /// As a metric label and in `matrix`/`explain` JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::WouldDeny => "would_deny",
            Effect::WouldAllow => "would_allow",
        }
    }
}

impl fmt::Display for Effect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The verdict of the enforced and staged policies together, where it differs from the enforced
/// one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedVerdict {
    pub verdict: Verdict,
    /// The staged policies that made the difference (see [`StagedTables`] for their names).
    pub staged_by: Arc<[Arc<str>]>,
}

impl StagedVerdict {
    pub fn effect(&self) -> Effect {
        if self.verdict.allowed() {
            Effect::WouldAllow
        } else {
            Effect::WouldDeny
        }
    }

    /// The staged policy names, `,`-separated (audit lines, tables).
    pub fn staged_by_joined(&self) -> String {
        let names: Vec<&str> = self.staged_by.iter().map(|s| &**s).collect();
        names.join(",")
    }
}

impl fmt::Display for StagedVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "staged ({}): {}", self.staged_by_joined(), self.verdict)
    }
}

/// Both verdicts of one connection: what is enforced, and what the staged policies would change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub enforced: Verdict,
    /// `None` when nothing staged selects the pod in this direction, or when it agrees.
    pub staged: Option<StagedVerdict>,
}

impl PodTable {
    /// [`PodTable::check`], and what the staged policies would decide instead
    /// ([`PodTable::staged_verdict`]).
    pub fn check_staged(
        &self,
        direction: Direction,
        peer: IpAddr,
        port: u16,
        protocol: Protocol,
    ) -> Checked {
        let enforced = self.check(direction, peer, port, protocol);
        let staged = self.staged_verdict(&enforced, peer, port, protocol);
        Checked { enforced, staged }
    }

    /// Given the enforced verdict of a connection (from [`PodTable::check`] with the same
    /// arguments), the verdict of the enforced and staged policies together, when it allows
    /// what the enforced one denies or the reverse. `None` at once when nothing is staged for
    /// the pod in that direction.
    #[inline]
    pub fn staged_verdict(
        &self,
        enforced: &Verdict,
        peer: IpAddr,
        port: u16,
        protocol: Protocol,
    ) -> Option<StagedVerdict> {
        let staged = self.staged.as_deref()?;
        let table = staged.direction(enforced.direction)?;
        let verdict = self.decide(
            table,
            enforced.direction,
            peer,
            port,
            protocol,
            &crate::dns::NoLearned,
        );
        if verdict.allowed() == enforced.allowed() {
            return None;
        }
        let staged_by = staged.responsible(&verdict);
        Some(StagedVerdict { verdict, staged_by })
    }

    /// Whether some staged policy selects the pod.
    pub fn has_staged(&self) -> bool {
        self.staged.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cnp::{Action, Tier};
    use crate::manifest::load_into;
    use crate::{compile, Cluster, CompiledCluster};

    const PODS: &str = r#"
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
apiVersion: v1
kind: Pod
metadata: {name: other, namespace: shop, labels: {app: other}}
status: {podIP: 10.0.0.3, hostIP: 192.168.0.1}
"#;

    const ONLY_CLIENT: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: only-client, namespace: shop}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
"#;

    fn compiled(objects: &[&str]) -> CompiledCluster {
        let mut cluster = Cluster::new();
        let text = std::iter::once(PODS)
            .chain(objects.iter().copied())
            .collect::<Vec<_>>()
            .join("\n---\n");
        let report = load_into(&mut cluster, &text, "test.yaml");
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        cluster.ensure_implied_namespaces();
        let c = compile(&cluster);
        assert!(c.errors.is_empty(), "{:?}", c.errors);
        c
    }

    fn ingress(c: &CompiledCluster, from: &str) -> Checked {
        let t = c.table("shop/server").expect("server table");
        t.check_staged(Direction::Ingress, from.parse().unwrap(), 80, Protocol::Tcp)
    }

    fn names(v: &StagedVerdict) -> Vec<&str> {
        v.staged_by.iter().map(|s| &**s).collect()
    }

    #[test]
    fn nothing_staged_means_no_staged_table_and_no_staged_verdict() {
        let c = compiled(&[ONLY_CLIENT]);
        assert!(c.tables.values().all(|t| t.staged.is_none()));
        let denied = ingress(&c, "10.0.0.3");
        assert!(!denied.enforced.allowed());
        assert_eq!(denied.staged, None);
        assert_eq!(ingress(&c, "10.0.0.2").staged, None);
    }

    #[test]
    fn a_staged_deny_all_isolates_in_the_staged_verdict_only() {
        let deny_all = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  \
                        name: deny-all\n  namespace: shop\n  annotations: {portcullis.dev/staged: \"true\"}\n\
                        spec: {podSelector: {}}\n";
        let c = compiled(&[deny_all]);
        let checked = ingress(&c, "10.0.0.2");
        assert!(
            checked.enforced.allowed(),
            "a staged policy is not enforced"
        );
        assert_eq!(checked.enforced.reason, Reason::NotIsolated);
        let staged = checked.staged.expect("a staged verdict");
        assert_eq!(staged.effect(), Effect::WouldDeny);
        assert_eq!(names(&staged), ["shop/deny-all"]);
        assert_eq!(staged.verdict.isolated_by(), &[Arc::from("shop/deny-all")]);
        // Egress is not isolated by it (policyTypes inferred as [Ingress]): nothing to say.
        let t = c.table("shop/server").unwrap();
        let st = t.staged.as_deref().unwrap();
        assert!(st.ingress.is_some() && st.egress.is_none());
        let out = t.check_staged(
            Direction::Egress,
            "10.0.0.2".parse().unwrap(),
            80,
            Protocol::Tcp,
        );
        assert_eq!(out.staged, None);
        // Every pod of the namespace carries it.
        assert!(c.tables.values().all(|t| t.has_staged()));
    }

    #[test]
    fn a_staged_allow_adds_an_allow_named_by_its_policy() {
        let allow_other = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  \
                           name: allow-other\n  namespace: shop\n  annotations: {portcullis.dev/staged: \"true\"}\n\
                           spec:\n  podSelector: {matchLabels: {app: server}}\n  ingress:\n  \
                           - from: [{podSelector: {matchLabels: {app: other}}}]\n";
        let c = compiled(&[ONLY_CLIENT, allow_other]);
        let other = ingress(&c, "10.0.0.3");
        assert!(!other.enforced.allowed());
        assert_eq!(
            other.enforced.isolated_by(),
            &[Arc::from("shop/only-client")]
        );
        let staged = other.staged.expect("a staged verdict");
        assert_eq!(staged.effect(), Effect::WouldAllow);
        assert_eq!(names(&staged), ["shop/allow-other"]);
        assert_eq!(
            staged.verdict.reason,
            Reason::Rule {
                policy: "shop/allow-other".into(),
                rule: 0
            }
        );
        // The client stays allowed either way: no staged verdict.
        assert_eq!(ingress(&c, "10.0.0.2").staged, None);
        // A stranger is denied either way.
        assert_eq!(ingress(&c, "10.9.9.9").staged, None);
    }

    #[test]
    fn a_staged_admin_deny_names_its_tier_and_rule() {
        let guard = "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\n\
                     metadata:\n  name: guard\n  annotations: {portcullis.dev/staged: \"true\"}\n\
                     spec:\n  tier: Admin\n  priority: 1\n  \
                     subject: {namespaces: {}}\n  ingress:\n  - name: no-client\n    action: Deny\n    \
                     from: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: client}}}}]\n";
        let c = compiled(&[ONLY_CLIENT, guard]);
        let client = ingress(&c, "10.0.0.2");
        assert!(client.enforced.allowed());
        let staged = client.staged.expect("a staged verdict");
        assert_eq!(staged.effect(), Effect::WouldDeny);
        assert_eq!(names(&staged), ["guard"]);
        match &staged.verdict.reason {
            Reason::Tier {
                tier, rule, action, ..
            } => assert_eq!(
                (*tier, &**rule, *action),
                (Tier::Admin, "no-client", Action::Deny)
            ),
            other => panic!("{other:?}"),
        }
        assert!(staged
            .to_string()
            .starts_with("staged (guard): denied by Admin-tier"));
    }

    #[test]
    fn only_the_exact_value_true_stages() {
        let text = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  \
                    name: deny-all\n  namespace: shop\n  annotations: {portcullis.dev/staged: \"yes\"}\n\
                    spec: {podSelector: {}}\n";
        let c = compiled(&[text]);
        let checked = ingress(&c, "10.0.0.2");
        assert!(!checked.enforced.allowed(), "not staged: enforced");
        assert_eq!(checked.staged, None);
    }

    #[test]
    fn a_table_with_staged_parts_round_trips_through_json() {
        let deny_all = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  \
                        name: deny-all\n  namespace: shop\n  annotations: {portcullis.dev/staged: \"true\"}\n\
                        spec: {podSelector: {}}\n";
        let c = compiled(&[ONLY_CLIENT, deny_all]);
        let t = c.table("shop/server").unwrap();
        let json = serde_json::to_string(&**t).unwrap();
        assert!(json.contains("\"staged\""));
        let back: PodTable = serde_json::from_str(&json).unwrap();
        assert_eq!(&back, &**t);
        let plain = serde_json::to_string(&*c.table("shop/client").unwrap().clone()).unwrap();
        assert!(
            plain.contains("\"staged\""),
            "deny-all selects the client too"
        );
    }
}
