//! One test per NetworkPolicy rule, each on a small hand-made cluster, asserting the verdict a
//! proxy would act on and the reason it would log.

use std::net::IpAddr;

use portcullis_policy::manifest::load_into;
use portcullis_policy::{compile, Cluster, CompiledCluster, Direction, Protocol, Reason};

/// Pods: `ns/name` at `ip` on node 192.168.0.1 with labels; all declare TCP 80 named `http`.
fn pod(ns: &str, name: &str, ip: &str, labels: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{{labels}}}}}\n\
         spec:\n  containers: [{{name: c, ports: [{{name: http, containerPort: 80}}]}}]\n\
         status: {{podIP: {ip}, hostIP: 192.168.0.1}}\n"
    )
}

fn policy(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}\n"
    )
}

fn cluster(docs: &[String]) -> CompiledCluster {
    let mut c = Cluster::new();
    let report = load_into(&mut c, &docs.join("---\n"), "test.yaml");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    c.ensure_implied_namespaces();
    compile(&c)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn ingress(c: &CompiledCluster, pod: &str, from: &str, port: u16) -> bool {
    c.table(pod)
        .unwrap()
        .check(Direction::Ingress, ip(from), port, Protocol::Tcp)
        .allowed()
}

fn egress(c: &CompiledCluster, pod: &str, to: &str, port: u16, protocol: Protocol) -> bool {
    c.table(pod)
        .unwrap()
        .check(Direction::Egress, ip(to), port, protocol)
        .allowed()
}

#[test]
fn node_and_self_traffic_are_always_allowed() {
    let c = cluster(&[
        pod("x", "a", "10.0.0.1", "app: a"),
        policy(
            "x",
            "deny-all",
            "  podSelector: {}\n  policyTypes: [Ingress, Egress]",
        ),
    ]);
    let t = c.table("x/a").unwrap();
    let v = t.check(Direction::Ingress, ip("192.168.0.1"), 80, Protocol::Tcp);
    assert_eq!(v.reason, Reason::NodeTraffic);
    assert!(egress(&c, "x/a", "192.168.0.1", 10250, Protocol::Tcp));
    assert_eq!(
        t.check(Direction::Egress, ip("10.0.0.1"), 80, Protocol::Tcp)
            .reason,
        Reason::SelfTraffic
    );
    assert!(ingress(&c, "x/a", "127.0.0.1", 80));
    let denied = t.check(Direction::Ingress, ip("10.0.0.2"), 80, Protocol::Tcp);
    assert!(!denied.allowed());
    assert_eq!(
        denied
            .isolated_by()
            .iter()
            .map(|s| &**s)
            .collect::<Vec<_>>(),
        ["x/deny-all"]
    );
    assert_eq!(
        denied.to_string(),
        "denied: the pod is isolated for ingress by x/deny-all and no ingress rule matches"
    );
}

#[test]
fn host_network_pods_are_peers_by_ip_only_and_never_isolated() {
    let mut node_agent = pod("kube-system", "agent", "192.168.0.7", "app: agent");
    node_agent = node_agent.replace("spec:\n", "spec:\n  hostNetwork: true\n");
    let c = cluster(&[
        pod("x", "a", "10.0.0.1", "app: a"),
        node_agent,
        // Selects every pod in every namespace, which would include the agent were it a pod peer.
        policy("x", "from-all-pods", "  podSelector: {}\n  ingress:\n  - from:\n    - namespaceSelector: {}"),
        policy("x", "from-node-net", "  podSelector: {}\n  ingress:\n  - from:\n    - ipBlock: {cidr: 192.168.0.0/24}\n    ports: [{port: 9100}]"),
        policy("kube-system", "deny", "  podSelector: {}\n  policyTypes: [Ingress]"),
    ]);
    assert!(
        !ingress(&c, "x/a", "192.168.0.7", 80),
        "a hostNetwork pod is not selected by namespaceSelector"
    );
    assert!(
        ingress(&c, "x/a", "192.168.0.7", 9100),
        "but its IP matches an ipBlock"
    );
    let agent = c.table("kube-system/agent").unwrap();
    assert!(
        !agent.ingress.is_isolated(),
        "policies do not apply to hostNetwork pods"
    );
}

#[test]
fn egress_named_ports_resolve_on_each_destination_pod() {
    let web8080 = pod("y", "web2", "10.0.1.2", "app: web")
        .replace("containerPort: 80", "containerPort: 8080");
    let c = cluster(&[
        pod("x", "client", "10.0.0.1", "app: client"),
        pod("y", "web1", "10.0.1.1", "app: web"),
        web8080,
        policy("x", "egress-http", "  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n  - to:\n    - namespaceSelector: {}\n    ports: [{port: http}]"),
    ]);
    assert!(egress(&c, "x/client", "10.0.1.1", 80, Protocol::Tcp));
    assert!(!egress(&c, "x/client", "10.0.1.1", 8080, Protocol::Tcp));
    assert!(egress(&c, "x/client", "10.0.1.2", 8080, Protocol::Tcp));
    assert!(!egress(&c, "x/client", "10.0.1.2", 80, Protocol::Tcp));
    assert!(
        !egress(&c, "x/client", "10.0.1.1", 80, Protocol::Udp),
        "named port carries its protocol"
    );
    assert!(
        !egress(&c, "x/client", "8.8.8.8", 80, Protocol::Tcp),
        "an external IP has no named ports"
    );
}

#[test]
fn ingress_named_ports_resolve_on_the_selected_pod() {
    let alt =
        pod("x", "b", "10.0.0.2", "app: s").replace("containerPort: 80", "containerPort: 9000");
    let c = cluster(&[
        pod("x", "a", "10.0.0.1", "app: s"),
        alt,
        policy(
            "x",
            "http-only",
            "  podSelector: {matchLabels: {app: s}}\n  ingress:\n  - ports: [{port: http}]",
        ),
    ]);
    assert!(ingress(&c, "x/a", "10.9.9.9", 80));
    assert!(!ingress(&c, "x/a", "10.9.9.9", 9000));
    assert!(ingress(&c, "x/b", "10.9.9.9", 9000));
    assert!(!ingress(&c, "x/b", "10.9.9.9", 80));
}

#[test]
fn port_ranges_and_protocol_only_ports() {
    let c = cluster(&[
        pod("x", "a", "10.0.0.1", ""),
        policy("x", "ranges", "  podSelector: {}\n  ingress:\n  - ports: [{port: 32000, endPort: 32768}, {protocol: UDP}]"),
    ]);
    let t = c.table("x/a").unwrap();
    let check = |port, proto| {
        t.check(Direction::Ingress, ip("10.1.1.1"), port, proto)
            .allowed()
    };
    assert!(!check(31999, Protocol::Tcp));
    assert!(check(32000, Protocol::Tcp));
    assert!(check(32768, Protocol::Tcp));
    assert!(!check(32769, Protocol::Tcp));
    assert!(check(53, Protocol::Udp));
    assert!(check(65535, Protocol::Udp));
    assert!(!check(32000, Protocol::Sctp));
}

#[test]
fn ipv6_blocks_and_dual_stack_pods() {
    let dual = pod("y", "v6", "10.0.1.1", "app: v6").replace(
        "status: {podIP: 10.0.1.1,",
        "status: {podIP: 10.0.1.1, podIPs: [{ip: 10.0.1.1}, {ip: 'fd00:1::1'}],",
    );
    let c = cluster(&[
        pod("x", "a", "10.0.0.1", ""),
        dual,
        policy("x", "v6", "  podSelector: {}\n  ingress:\n  - from:\n    - ipBlock: {cidr: 'fd00::/16', except: ['fd00:dead::/32']}\n    - namespaceSelector: {}\n      podSelector: {matchLabels: {app: v6}}"),
    ]);
    assert!(ingress(&c, "x/a", "fd00:2::5", 80));
    assert!(!ingress(&c, "x/a", "fd00:dead::5", 80));
    assert!(!ingress(&c, "x/a", "fe80::1", 80));
    // Both addresses of a dual-stack pod are the pod.
    assert!(ingress(&c, "x/a", "10.0.1.1", 80));
    assert!(ingress(&c, "x/a", "fd00:1::1", 80));
    // IPv4 peers seen through a dual-stack socket.
    assert!(ingress(&c, "x/a", "::ffff:10.0.1.1", 80));
}

#[test]
fn verdict_names_the_policy_and_rule_that_allowed() {
    let c = cluster(&[
        pod("x", "a", "10.0.0.1", "app: a"),
        pod("x", "b", "10.0.0.2", "app: b"),
        policy("x", "p1", "  podSelector: {matchLabels: {app: a}}\n  ingress:\n  - ports: [{port: 81}]\n  - from:\n    - podSelector: {matchLabels: {app: b}}"),
    ]);
    let v = c
        .table("x/a")
        .unwrap()
        .check(Direction::Ingress, ip("10.0.0.2"), 80, Protocol::Tcp);
    assert_eq!(
        v.reason,
        Reason::Rule {
            policy: "x/p1".into(),
            rule: 1
        }
    );
    assert_eq!(
        v.to_string(),
        "allowed by NetworkPolicy x/p1, ingress rule #1"
    );
    assert_eq!(
        c.table("x/b")
            .unwrap()
            .check(Direction::Ingress, ip("10.0.0.1"), 80, Protocol::Tcp)
            .reason,
        Reason::NotIsolated
    );
    assert_eq!(c.peer_name(ip("10.0.0.2")), Some("x/b"));
}

#[test]
fn invalid_policies_are_reported_and_others_still_compile() {
    let c = {
        let mut cl = Cluster::new();
        let docs = [
            pod("x", "a", "10.0.0.1", ""),
            policy(
                "x",
                "bad-port",
                "  podSelector: {}\n  ingress:\n  - ports: [{port: 70000}]",
            ),
            policy(
                "x",
                "bad-op",
                "  podSelector: {matchExpressions: [{key: a, operator: Like, values: [b]}]}",
            ),
            policy("x", "good", "  podSelector: {}\n  policyTypes: [Egress]"),
            policy("x", "good", "  podSelector: {}\n  policyTypes: [Ingress]"),
        ];
        load_into(&mut cl, &docs.join("---\n"), "t.yaml");
        compile(&cl)
    };
    let errors: Vec<String> = c.errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(
        errors[0].contains("NetworkPolicy x/bad-port")
            && errors[0].contains("spec.ingress[0].ports[0].port")
    );
    assert!(errors[1].contains("NetworkPolicy x/bad-op") && errors[1].contains("operator"));
    assert!(errors[2].contains("NetworkPolicy x/good") && errors[2].contains("more than once"));
    let t = c.table("x/a").unwrap();
    assert!(t.egress.is_isolated(), "the first 'good' applies");
    assert!(
        !t.ingress.is_isolated(),
        "rejected and duplicate policies do not"
    );
}

#[test]
fn finished_pods_no_longer_own_their_address() {
    let done =
        pod("y", "job", "10.0.1.1", "app: job").replace("status: {", "status: {phase: Succeeded, ");
    let c = cluster(&[
        pod("x", "a", "10.0.0.1", ""),
        done,
        policy(
            "x",
            "from-y",
            "  podSelector: {}\n  ingress:\n  - from:\n    - namespaceSelector: {}",
        ),
    ]);
    assert!(!ingress(&c, "x/a", "10.0.1.1", 80));
}

#[test]
fn policies_are_a_union_across_namespaces_selectors() {
    let c = cluster(&[
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: y, labels: {team: blue}}\n".to_string(),
        pod("x", "a", "10.0.0.1", "app: a"),
        pod("y", "b", "10.0.1.1", "role: db"),
        pod("y", "c", "10.0.1.2", "role: web"),
        pod("z", "d", "10.0.2.1", "role: db"),
        policy("x", "p1", "  podSelector: {}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {team: blue}}\n      podSelector: {matchLabels: {role: db}}"),
        policy("x", "p2", "  podSelector: {}\n  ingress:\n  - from:\n    - podSelector: {matchLabels: {role: db}}"),
    ]);
    assert!(
        ingress(&c, "x/a", "10.0.1.1", 80),
        "y/b: blue namespace AND db"
    );
    assert!(!ingress(&c, "x/a", "10.0.1.2", 80), "y/c: not db");
    assert!(
        !ingress(&c, "x/a", "10.0.2.1", 80),
        "z/d: db but neither blue nor in x"
    );
}

#[test]
fn compile_returns_peer_names_beside_the_tables_not_in_them() {
    let mut node_agent = pod("kube-system", "agent", "192.168.0.7", "app: agent");
    node_agent = node_agent.replace("spec:\n", "spec:\n  hostNetwork: true\n");
    let c = cluster(&[
        pod("x", "a", "10.0.0.1", "app: a"),
        pod("y", "b", "10.0.0.2", "app: b"),
        node_agent,
    ]);
    assert_eq!(c.peer_name(ip("10.0.0.1")), Some("x/a"));
    assert_eq!(c.peer_name(ip("10.0.0.2")), Some("y/b"));
    // An IPv4 peer seen through a dual-stack socket is the same pod.
    assert_eq!(c.peer_name(ip("::ffff:10.0.0.2")), Some("y/b"));
    // hostNetwork pods share their node's address: they do not name it.
    assert_eq!(c.peer_name(ip("192.168.0.7")), None);
    assert_eq!(c.peer_name(ip("10.9.9.9")), None);
    // The tables carry no names: the JSON a controller serves has no `known_pods`.
    let table = serde_json::to_value(&**c.table("x/a").unwrap()).unwrap();
    assert!(table.get("known_pods").is_none(), "{table}");
    // A table from a controller of the same wire version that still sent the (empty) field is
    // read as before.
    let mut old = table.clone();
    old["known_pods"] = serde_json::json!({});
    let read: portcullis_policy::PodTable = serde_json::from_value(old).unwrap();
    assert_eq!(&read, &**c.table("x/a").unwrap());
}

/// A protocol NetworkPolicy cannot name (UDP-Lite, GRE, IPIP, ...) is a port-less flow, as CNIs
/// treat it: allowed where the direction is not isolated, or by a rule without `ports` that
/// matches the peer; a rule with any `ports` entry (even a protocol-only one) never matches it.
#[test]
fn other_ip_protocols_are_port_less_flows() {
    let c = cluster(&[
        pod("x", "a", "10.0.0.1", "app: a"),
        pod("x", "b", "10.0.0.2", "app: b"),
        pod("x", "c", "10.0.0.3", "app: c"),
        policy("x", "p", "  podSelector: {matchLabels: {app: a}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: b}}}]\n    ports: [{protocol: UDP}, {protocol: TCP}, {protocol: SCTP}, {port: http}]\n  - from: [{podSelector: {matchLabels: {app: c}}}]\n  - ports: [{port: 53, protocol: UDP}]"),
    ]);
    let t = c.table("x/a").unwrap();
    let udplite = Protocol::from_number(136);
    let check = |from: &str, protocol| t.check(Direction::Ingress, ip(from), 53, protocol);
    // b is admitted on every port of every protocol NetworkPolicy names, never on UDP-Lite.
    assert!(check("10.0.0.2", Protocol::Udp).allowed());
    let denied = check("10.0.0.2", udplite);
    assert!(!denied.allowed());
    assert_eq!(
        denied.reason,
        Reason::NoPortlessRuleMatched {
            protocol: udplite,
            isolated_by: std::sync::Arc::from(vec![std::sync::Arc::<str>::from("x/p")])
        }
    );
    assert_eq!(denied.isolated_by().len(), 1);
    assert_eq!(&*denied.isolated_by()[0], "x/p");
    assert_eq!(
        denied.to_string(),
        "denied: NetworkPolicy cannot name IP protocol UDPLITE (136), so only a rule without \
         ports admits it; the pod is isolated for ingress by x/p and no ingress rule without \
         ports matches"
    );
    // The rule without ports admits c on any protocol.
    for n in [136, 47, 4, 253] {
        assert_eq!(
            check("10.0.0.3", Protocol::from_number(n)).reason,
            Reason::Rule {
                policy: "x/p".into(),
                rule: 1
            }
        );
    }
    // Any peer on 53/UDP, but not on UDP-Lite 53.
    assert!(check("10.9.9.9", Protocol::Udp).allowed());
    assert!(!check("10.9.9.9", udplite).allowed());
    // Not isolated for egress: allowed. Self and node traffic: allowed, as for TCP.
    assert_eq!(
        t.check(Direction::Egress, ip("10.9.9.9"), 0, Protocol::Other(47))
            .reason,
        Reason::NotIsolated
    );
    assert!(check("10.0.0.1", Protocol::Other(253)).allowed());
    assert!(check("192.168.0.1", Protocol::Other(253)).allowed());
}
