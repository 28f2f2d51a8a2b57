//! Deterministic synthetic clusters of any size, for benchmarks and scale tests (here and in the
//! controller). Shaped like a real multi-team cluster: per-namespace default deny, app-to-app
//! rules, cross-namespace rules by team label, ipBlocks, named ports, port ranges.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::api::networking::v1::NetworkPolicy;

use crate::cluster::{Cluster, ContainerPort, NamespaceInfo, PodInfo};
use crate::ports::Protocol;

/// A small, fast, seedable generator (xorshift), so results never depend on a random crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

pub const APPS_PER_NAMESPACE: usize = 20;
const TEAMS: usize = 10;

pub fn namespace_name(i: usize) -> String {
    format!("ns-{i:03}")
}

/// Address of pod `i` of namespace `ns`: 10.<ns/256>.<ns%256*?>... kept unique and in 10.0.0.0/8.
pub fn pod_ip(ns: usize, i: usize) -> IpAddr {
    let n = (ns as u32) * 4096 + i as u32;
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (n & 0x00ff_ffff)))
}

pub fn pod_labels(ns: usize, i: usize) -> BTreeMap<String, String> {
    let mut l = BTreeMap::new();
    l.insert(
        "app".into(),
        format!("app-{}", (i + ns) % APPS_PER_NAMESPACE),
    );
    l.insert("tier".into(), ["web", "api", "db"][i % 3].into());
    l.insert("version".into(), format!("v{}", i % 4));
    l
}

/// `pods` pods spread over `namespaces` namespaces, and `policies` policies.
pub fn cluster(namespaces: usize, pods: usize, policies: usize, seed: u64) -> Cluster {
    let mut rng = Rng(seed.max(1));
    let mut c = Cluster::new();
    for ns in 0..namespaces {
        let mut labels = BTreeMap::new();
        labels.insert("team".into(), format!("team-{}", ns % TEAMS));
        labels.insert(
            "env".into(),
            if ns.is_multiple_of(3) { "prod" } else { "dev" }.into(),
        );
        c.add_namespace(NamespaceInfo::new(namespace_name(ns), labels));
    }
    for p in 0..pods {
        let ns = p % namespaces;
        let i = p / namespaces;
        c.add_pod(PodInfo {
            namespace: namespace_name(ns),
            name: format!("pod-{i:05}"),
            labels: pod_labels(ns, i),
            ips: vec![pod_ip(ns, i)],
            host_ip: Some(IpAddr::V4(Ipv4Addr::new(192, 168, (i % 100) as u8, 1))),
            host_network: false,
            ports: vec![
                ContainerPort {
                    name: Some("http".into()),
                    port: 8080,
                    protocol: Protocol::Tcp,
                },
                ContainerPort {
                    name: Some("metrics".into()),
                    port: 9090,
                    protocol: Protocol::Tcp,
                },
            ],
            terminated: false,
        });
    }
    for k in 0..policies {
        let ns = k % namespaces;
        let yaml = policy_yaml(ns, k, &mut rng);
        let np: NetworkPolicy = match serde_json::from_value(yaml) {
            Ok(np) => np,
            Err(e) => unreachable!("synthetic policy is valid: {e}"),
        };
        c.add_policy(np, None);
    }
    c
}

fn policy_yaml(ns: usize, k: usize, rng: &mut Rng) -> serde_json::Value {
    use serde_json::json;
    let name = format!("policy-{k:05}");
    let namespace = namespace_name(ns);
    let app = format!("app-{}", rng.below(APPS_PER_NAMESPACE));
    let other_app = format!("app-{}", rng.below(APPS_PER_NAMESPACE));
    let team = format!("team-{}", rng.below(TEAMS));
    let spec = match (k / 50) % 5 {
        // Every namespace gets a default deny first.
        0 if k % 50 < 1 => json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
        0 | 1 => json!({
            "podSelector": {"matchLabels": {"app": app}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": other_app}}}],
                         "ports": [{"port": "http"}]}]
        }),
        2 => json!({
            "podSelector": {"matchLabels": {"app": app}},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": team}},
                                   "podSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["web", "api"]}]}}],
                         "ports": [{"port": 8080}, {"port": 9000, "endPort": 9100}]}]
        }),
        3 => json!({
            "podSelector": {"matchLabels": {"tier": "db"}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"tier": "api"}}}]}],
            "egress": [{"to": [{"ipBlock": {"cidr": "172.16.0.0/12", "except": ["172.16.1.0/24"]}}],
                        "ports": [{"port": 5432}]},
                       {"to": [{"namespaceSelector": {"matchLabels": {"env": "prod"}}}],
                        "ports": [{"port": "metrics"}]}]
        }),
        _ => json!({
            "podSelector": {"matchExpressions": [{"key": "version", "operator": "NotIn", "values": ["v0"]}]},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": team}}},
                                  {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.0.128.0/17"]}}]}]
        }),
    };
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec
    })
}

/// Adds `cnps` ClusterNetworkPolicies of `rules` rules each (half ingress, half egress) and 100
/// Nodes (the pods' hostIPs) to a [`cluster`] of `namespaces` namespaces. Shaped like a platform
/// team's: two cluster-wide Admin guardrails and two Baseline defaults for `env: dev`, the rest
/// per-namespace Admin policies for one app each (Accept, Deny and Pass rules on pods, networks,
/// nodes, numeric and named ports and ranges).
pub fn add_cnps(c: &mut Cluster, namespaces: usize, cnps: usize, rules: usize, seed: u64) {
    use serde_json::json;
    let mut rng = Rng(seed.max(1));
    for n in 0..100u8 {
        c.add_node(crate::cluster::NodeInfo {
            name: format!("node-{n:03}"),
            labels: [("zone".to_string(), format!("zone-{}", n % 3))].into(),
            addresses: vec![IpAddr::V4(Ipv4Addr::new(192, 168, n, 1))],
        });
    }
    for k in 0..cnps {
        let (tier, subject) = match k {
            0 | 1 => ("Admin", json!({"namespaces": {}})),
            2 | 3 => (
                "Baseline",
                json!({"namespaces": {"matchLabels": {"env": "dev"}}}),
            ),
            _ => (
                "Admin",
                json!({"pods": {
                    "namespaceSelector": {"matchLabels":
                        {"kubernetes.io/metadata.name": namespace_name(k % namespaces)}},
                    "podSelector": {"matchLabels":
                        {"app": format!("app-{}", rng.below(APPS_PER_NAMESPACE))}}}}),
            ),
        };
        let (ingress, egress): (Vec<_>, Vec<_>) = (0..rules)
            .map(|r| (r, cnp_rule(r, &mut rng)))
            .partition(|(r, _)| r % 2 == 0);
        let strip = |v: Vec<(usize, serde_json::Value)>| v.into_iter().map(|(_, r)| r).collect();
        let ingress: Vec<serde_json::Value> = strip(ingress);
        let egress: Vec<serde_json::Value> = strip(egress);
        let cnp = json!({
            "apiVersion": crate::cnp::API_VERSION, "kind": crate::cnp::KIND,
            "metadata": {"name": format!("cnp-{k:04}")},
            "spec": {"tier": tier, "priority": k % 1000, "subject": subject,
                     "ingress": ingress, "egress": egress}
        });
        match serde_json::from_value(cnp) {
            Ok(cnp) => c.add_cnp(cnp, None),
            Err(e) => unreachable!("synthetic ClusterNetworkPolicy is valid: {e}"),
        }
    }
}

/// Rule `r` of a synthetic CNP: even ones are ingress rules, odd ones egress.
fn cnp_rule(r: usize, rng: &mut Rng) -> serde_json::Value {
    use serde_json::json;
    let action = ["Accept", "Deny", "Pass"][rng.below(3)];
    let team = format!("team-{}", rng.below(TEAMS));
    let tcp = |port: usize| json!({"tcp": {"destinationPort": {"number": port}}});
    let (key, peers, protocols) = match (r % 2, (r / 2) % 4) {
        (0, 0) => (
            "from",
            json!([{"namespaces": {"matchLabels": {"team": team}}}]),
            json!([tcp(8080)]),
        ),
        (0, 1) => (
            "from",
            json!([{"pods": {"namespaceSelector": {"matchLabels": {"team": team}},
                             "podSelector": {"matchLabels": {"tier": "web"}}}}]),
            json!([{"tcp": {"destinationPort": {"range": {"start": 9000, "end": 9100}}}}]),
        ),
        (0, 2) => (
            "from",
            json!([{"namespaces": {"matchLabels": {"env": "prod"}}}]),
            json!([{"destinationNamedPort": "metrics"}]),
        ),
        (0, _) => (
            "from",
            json!([{"namespaces": {"matchLabels": {"team": team}}}]),
            json!([tcp(5000 + r)]),
        ),
        (_, 0) => (
            "to",
            json!([{"networks": [format!("172.20.{r}.0/24")]}]),
            json!([tcp(443)]),
        ),
        (_, 1) => (
            "to",
            json!([{"nodes": {"matchLabels": {"zone": "zone-1"}}}]),
            json!([tcp(10250)]),
        ),
        (_, 2) => (
            "to",
            json!([{"pods": {"namespaceSelector": {"matchLabels": {"team": team}},
                             "podSelector": {"matchLabels": {"tier": "db"}}}}]),
            json!([tcp(5432)]),
        ),
        (_, _) => (
            "to",
            json!([{"namespaces": {"matchLabels": {"team": team}}}]),
            json!([tcp(6000 + r)]),
        ),
    };
    json!({"name": format!("rule-{r}"), "action": action, key: peers, "protocols": protocols})
}
