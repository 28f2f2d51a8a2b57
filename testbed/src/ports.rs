//! Which ports every pod's server listens on: every port it could be probed on.
//!
//! In Kubernetes, declaring a containerPort is optional; an application listens where it likes
//! and a NetworkPolicy with a numeric port applies whether or not the port is declared. So that
//! "nothing listens there" never masquerades as "the policy denies it", each testbed pod serves
//! the union of: the ports given with `--probe` (to `up` or to `probe`), every declared
//! containerPort of any pod, and every numeric port of any NetworkPolicy. A port range
//! (`endPort`) is served on at most [`RANGE_EDGE`] ports at each end (its bounds are what a
//! probe learns most from); a rule that names a protocol but no port adds nothing.
//! SCTP is left out: this kernel has no SCTP sockets.

use std::collections::BTreeSet;

use portcullis_policy::matrix::Probe;
use portcullis_policy::service::ServiceMap;
use portcullis_policy::{CompiledCluster, PortRange, Protocol};

/// A range longer than `2 * RANGE_EDGE` ports is served on its first and last `RANGE_EDGE`.
pub const RANGE_EDGE: u16 = 8;

/// The ports to serve and probe, and notes on what was left out (capped ranges).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PortSet {
    pub ports: BTreeSet<Probe>,
    pub notes: Vec<String>,
}

/// Every port a pod of `compiled` could be probed on, plus `extra` (`--probe`), plus every
/// backend port of a Service (its targetPort, resolved per backend).
pub fn probe_ports(compiled: &CompiledCluster, services: &ServiceMap, extra: &[Probe]) -> PortSet {
    let mut set = PortSet::default();
    set.ports.extend(extra.iter().copied());
    for port in services.services.values().flat_map(|s| s.ports.iter()) {
        set.ports.extend(port.backends.iter().map(|b| Probe {
            port: b.port,
            protocol: port.protocol,
        }));
    }
    for pod in compiled.pods.iter().filter(|p| !p.host_network) {
        set.ports.extend(pod.ports.iter().map(|p| Probe {
            port: p.port,
            protocol: p.protocol,
        }));
    }
    for policy in &compiled.policies {
        let rules = policy.ingress.iter().chain(policy.egress.iter());
        for range in rules.filter_map(|r| r.ports.as_deref()).flatten() {
            add_range(&mut set, *range, &policy.key);
        }
    }
    set.ports
        .retain(|p| p.protocol != Protocol::Sctp && p.port != 0);
    set
}

fn add_range(set: &mut PortSet, range: PortRange, policy: &str) {
    if range == PortRange::all(range.protocol) {
        return; // "every port of this protocol": no particular port to serve.
    }
    let p = |port| Probe {
        port,
        protocol: range.protocol,
    };
    let len = u32::from(range.last) - u32::from(range.first) + 1;
    if len <= 2 * u32::from(RANGE_EDGE) {
        set.ports.extend((range.first..=range.last).map(p));
        return;
    }
    set.ports
        .extend((range.first..range.first + RANGE_EDGE).map(p));
    set.ports
        .extend((range.last - RANGE_EDGE + 1..=range.last).map(p));
    let note = format!(
        "port range {}-{}/{} of {policy}: served and probed on its first and last {RANGE_EDGE} ports only",
        range.first, range.last, range.protocol
    );
    if !set.notes.contains(&note) {
        set.notes.push(note);
    }
}

/// The probes `probe` makes when none are given: the TCP ports of the set, and its UDP ports
/// when the proxies enforce UDP (`up --enforce-udp`, the default; with false, UDP probes are made
/// only on request, e.g. `--probe 53/UDP`).
pub fn default_probes(set: &PortSet, udp: bool) -> Vec<Probe> {
    set.ports
        .iter()
        .copied()
        .filter(|p| p.protocol == Protocol::Tcp || (udp && p.protocol == Protocol::Udp))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_policy::manifest::load_into;
    use portcullis_policy::{compile, Cluster};

    fn compiled(text: &str) -> CompiledCluster {
        let mut cluster = Cluster::new();
        let report = load_into(&mut cluster, text, "test");
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        cluster.ensure_implied_namespaces();
        compile(&cluster)
    }

    const PODS_WITHOUT_PORTS: &str = "
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x}
spec: {containers: [{name: c, image: i}]}
status: {podIP: 10.1.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x}
spec:
  containers:
    - name: c
      image: i
      ports: [{containerPort: 8080}, {containerPort: 53, protocol: UDP}, {containerPort: 9, protocol: SCTP}]
status: {podIP: 10.1.0.2}
";

    fn probe(port: u16, protocol: Protocol) -> Probe {
        Probe { port, protocol }
    }

    #[test]
    fn declared_ports_extra_ports_and_policy_ports_are_served() {
        let policy = "
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {}
  ingress:
    - ports: [{port: 443}, {port: 5353, protocol: UDP}, {port: http}, {protocol: UDP}]
  egress:
    - ports: [{port: 7000, endPort: 7003}]
";
        let c = compiled(&format!("{PODS_WITHOUT_PORTS}{policy}"));
        let set = probe_ports(&c, &ServiceMap::default(), &[probe(80, Protocol::Tcp)]);
        let want: BTreeSet<Probe> = [
            probe(53, Protocol::Udp),
            probe(80, Protocol::Tcp),
            probe(443, Protocol::Tcp),
            probe(5353, Protocol::Udp),
            probe(7000, Protocol::Tcp),
            probe(7001, Protocol::Tcp),
            probe(7002, Protocol::Tcp),
            probe(7003, Protocol::Tcp),
            probe(8080, Protocol::Tcp),
        ]
        .into();
        assert_eq!(set.ports, want);
        assert!(set.notes.is_empty());
        assert_eq!(
            default_probes(&set, false),
            want.iter()
                .copied()
                .filter(|p| p.protocol == Protocol::Tcp)
                .collect::<Vec<_>>()
        );
        assert_eq!(
            default_probes(&set, true),
            want.iter().copied().collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_long_range_is_capped_at_both_ends_and_says_so() {
        let policy = "
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: wide, namespace: x}
spec:
  podSelector: {}
  ingress:
    - ports: [{port: 1000, endPort: 2000}]
";
        let c = compiled(&format!("{PODS_WITHOUT_PORTS}{policy}"));
        let set = probe_ports(&c, &ServiceMap::default(), &[]);
        let tcp: Vec<u16> = set
            .ports
            .iter()
            .filter(|p| p.protocol == Protocol::Tcp)
            .map(|p| p.port)
            .collect();
        let mut want: Vec<u16> = (1000..1008).chain(1993..=2000).collect();
        want.push(8080);
        assert_eq!(tcp, want);
        assert_eq!(set.notes.len(), 1);
        assert!(
            set.notes[0].contains("1000-2000/TCP of x/wide"),
            "{:?}",
            set.notes
        );
    }
}
