//! DNS: egress policies that leave the pods they select without a way to resolve names.

use std::collections::BTreeMap;

use super::{Check, Finding, Severity};
use crate::compile::ClusterIndex;
use crate::error::ObjectRef;
use crate::ports::Protocol;
use crate::validate::{PortSpec, Rule, ValidPolicy};

/// How a set of egress rules treats DNS.
#[derive(Default, Clone, Copy)]
struct Dns {
    udp: bool,
    tcp: bool,
}

fn dns_of(rules: &[Rule], dns: &mut Dns) {
    for rule in rules {
        let Some(ports) = &rule.ports else {
            dns.udp = true;
            dns.tcp = true;
            continue;
        };
        for spec in ports {
            match spec {
                PortSpec::Numeric(r) => {
                    dns.udp |= r.contains(Protocol::Udp, 53);
                    dns.tcp |= r.contains(Protocol::Tcp, 53);
                }
                // A named port may well be `dns`/`dns-tcp` on the DNS pods: give it the benefit
                // of the doubt.
                PortSpec::Named { protocol, .. } => {
                    dns.udp |= *protocol == Protocol::Udp;
                    dns.tcp |= *protocol == Protocol::Tcp;
                }
            }
        }
    }
}

fn dns_message(dns: Dns, pods: &str) -> Option<String> {
    let missing = match (dns.udp, dns.tcp) {
        (true, true) => return None,
        (false, false) => "53/UDP and 53/TCP",
        (true, false) => "53/TCP (answers too long for UDP are retried over TCP)",
        (false, true) => "53/UDP",
    };
    Some(format!(
        "egress is isolated and no egress rule allows DNS {missing}{pods}: name lookups fail; \
         allow 53/UDP and 53/TCP to the DNS pods (usually namespace kube-system, \
         k8s-app=kube-dns)"
    ))
}

pub(super) fn no_dns_per_pod(
    index: &ClusterIndex<'_>,
    valid: &[(ValidPolicy, ObjectRef)],
    out: &mut Vec<Finding>,
) {
    // Per pod: what every egress policy that selects it allows, together.
    let mut per_pod: BTreeMap<usize, Dns> = BTreeMap::new();
    for (policy, _) in valid.iter().filter(|(p, _)| p.isolates_egress) {
        for (i, _) in index.selected_pods(policy) {
            dns_of(&policy.egress, per_pod.entry(i).or_default());
        }
    }
    for (policy, object) in valid.iter().filter(|(p, _)| p.isolates_egress) {
        let mut by_gap: BTreeMap<(bool, bool), Vec<String>> = BTreeMap::new();
        for (i, pod) in index.selected_pods(policy) {
            let dns = per_pod.get(&i).copied().unwrap_or_default();
            let covered = dns.udp && dns.tcp;
            if !covered && !pod.terminated {
                by_gap
                    .entry((dns.udp, dns.tcp))
                    .or_default()
                    .push(pod.key());
            }
        }
        for ((udp, tcp), pods) in by_gap {
            let pods = format!(" for pod(s) {}", pods.join(", "));
            if let Some(msg) = dns_message(Dns { udp, tcp }, &pods) {
                out.push(Finding::new(
                    Severity::Warning,
                    Check::NoDns,
                    object,
                    "spec.egress",
                    msg,
                ));
            }
        }
    }
}

/// Without pods: a policy's own rules, plus those of egress policies of its namespace that
/// select every pod.
pub(super) fn no_dns_without_pods(valid: &[(ValidPolicy, ObjectRef)], out: &mut Vec<Finding>) {
    for (policy, object) in valid.iter().filter(|(p, _)| p.isolates_egress) {
        let mut dns = Dns::default();
        dns_of(&policy.egress, &mut dns);
        for (other, _) in valid.iter().filter(|(o, _)| {
            o.isolates_egress
                && o.namespace == policy.namespace
                && o.pod_selector.selects_everything()
        }) {
            dns_of(&other.egress, &mut dns);
        }
        if let Some(msg) = dns_message(dns, "") {
            out.push(Finding::new(
                Severity::Warning,
                Check::NoDns,
                object,
                "spec.egress",
                msg,
            ));
        }
    }
}
