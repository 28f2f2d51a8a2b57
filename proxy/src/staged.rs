//! Staged policies (`portcullis.dev/staged: "true"`, `docs/staged-policies.md`): never enforced;
//! where the staged policies selecting this pod would change a verdict, one
//! `connection_would_deny` or `connection_would_allow` line names them (`staged_by`), and
//! `portcullis_staged_verdicts_total` counts it. Audit mode's own `connection_would_deny` lines
//! carry no `staged_by`.

use std::net::IpAddr;

use portcullis_policy::{Effect, PodTable, Protocol, Verdict};

use crate::audit::{AuditEvent, AuditLog, AuditRecord};
use crate::telemetry::count_staged;

/// Given the enforced verdict of a connection, writes and counts what the pod's staged policies
/// would change about it. `record` builds the line from its event and verdict (`staged_by` is
/// set here); it is called only when there is something to say. Returns at once when nothing
/// staged selects the pod.
#[inline]
pub fn report(
    audit: &AuditLog,
    table: &PodTable,
    enforced: &Verdict,
    (peer, port, protocol): (IpAddr, u16, Protocol),
    record: impl FnOnce(AuditEvent, Option<Verdict>) -> AuditRecord,
) -> Option<Effect> {
    let staged = table.staged_verdict(enforced, peer, port, protocol)?;
    let effect = staged.effect();
    count_staged(effect.as_str(), enforced.direction, &staged.staged_by);
    let event = match effect {
        Effect::WouldDeny => AuditEvent::WouldDeny,
        Effect::WouldAllow => AuditEvent::WouldAllow,
    };
    let staged_by = staged.staged_by.iter().map(|s| s.to_string()).collect();
    audit.record(AuditRecord {
        staged_by,
        ..record(event, Some(staged.verdict))
    });
    Some(effect)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use portcullis_policy::manifest::load_into;
    use portcullis_policy::{compile, Cluster, Direction};

    use super::*;
    use crate::audit::LineBudget;

    const CLUSTER: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: shop, labels: {app: server}}
status: {podIP: 10.0.0.1}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: deny-all
  namespace: shop
  annotations: {portcullis.dev/staged: "true"}
spec: {podSelector: {}}
"#;

    fn line() -> AuditRecord {
        AuditRecord {
            event: AuditEvent::Denied,
            direction: Direction::Ingress,
            source: "10.0.0.2:5000".parse().unwrap(),
            destination: "10.0.0.1:80".parse().unwrap(),
            peer_pod: None,
            pod: "shop/server".into(),
            verdict: None,
            generation: 1,
            protocol: Protocol::Tcp,
            service: None,
            staged_by: Vec::new(),
        }
    }

    #[test]
    fn a_staged_deny_reports_would_deny_and_nothing_staged_reports_nothing() {
        let mut cluster = Cluster::new();
        assert!(load_into(&mut cluster, CLUSTER, "t.yaml").errors.is_empty());
        cluster.ensure_implied_namespaces();
        let compiled = compile(&cluster);
        let table = compiled.table("shop/server").unwrap();
        let audit = AuditLog::new(Duration::from_secs(1), LineBudget::UNLIMITED);
        let peer = "10.0.0.2".parse().unwrap();
        let enforced = table.check(Direction::Ingress, peer, 80, Protocol::Tcp);
        assert!(enforced.allowed());
        let mut built = 0;
        let effect = report(
            &audit,
            table,
            &enforced,
            (peer, 80, Protocol::Tcp),
            |_, _| {
                built += 1;
                line()
            },
        );
        assert_eq!((effect, built), (Some(Effect::WouldDeny), 1));
        // Egress: nothing staged there, no line built.
        let egress = table.check(Direction::Egress, peer, 80, Protocol::Tcp);
        let effect = report(&audit, table, &egress, (peer, 80, Protocol::Tcp), |_, _| {
            built += 1;
            line()
        });
        assert_eq!((effect, built), (None, 1));
    }
}
