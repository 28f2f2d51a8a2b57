//! advise on a small cluster: stable labels, Services judged on backends, the cluster's own DNS
//! labels, node and outside addresses, and a proof that every observed flow stays allowed.

use portcullis_advise::{advise, cidr::Widen, Options};
use portcullis_contract::log::{
    FlowDirection, FlowProtocol, FlowSummary, FlowVerdict, FLOW_SUMMARY,
};
use portcullis_policy::manifest::load_into;
use portcullis_policy::Cluster;

const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Namespace
metadata: {name: kube-system}
---
apiVersion: v1
kind: Pod
metadata:
  name: web-7d9f8c-x2x9z
  namespace: shop
  labels: {app: web, pod-template-hash: 7d9f8c}
spec:
  containers: [{name: c, image: i, ports: [{containerPort: 8080, name: http}]}]
status: {podIP: 10.244.1.10, hostIP: 192.168.0.11}
---
apiVersion: v1
kind: Pod
metadata:
  name: db-0
  namespace: shop
  labels: {app: db, statefulset.kubernetes.io/pod-name: db-0, controller-revision-hash: db-5c}
spec:
  containers: [{name: c, image: i, ports: [{containerPort: 5432, name: pg}, {containerPort: 9187, name: metrics}]}]
status: {podIP: 10.244.1.20, hostIP: 192.168.0.11}
---
apiVersion: v1
kind: Pod
metadata:
  name: coredns-abc-1
  namespace: kube-system
  labels: {app.kubernetes.io/name: coredns-custom, pod-template-hash: abc}
spec:
  containers: [{name: c, image: i, ports: [{containerPort: 53, name: dns, protocol: UDP}, {containerPort: 53, name: dns-tcp}]}]
status: {podIP: 10.244.2.5, hostIP: 192.168.0.12}
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system}
spec:
  clusterIP: 10.96.0.10
  selector: {app.kubernetes.io/name: coredns-custom}
  ports: [{name: dns, port: 53, protocol: UDP, targetPort: dns}, {name: dns-tcp, port: 53, targetPort: dns-tcp}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec:
  clusterIP: 10.96.5.5
  selector: {app: db}
  ports: [{port: 5432, targetPort: pg}]
"#;

fn cluster() -> Cluster {
    let mut c = Cluster::new();
    let report = load_into(&mut c, CLUSTER, "cluster.yaml");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    c
}

#[allow(clippy::too_many_arguments)]
fn flow(
    pod: &str,
    direction: FlowDirection,
    protocol: FlowProtocol,
    peer_ip: &str,
    peer: Option<(&str, &str)>,
    port: u16,
    service: Option<&str>,
    count: u64,
) -> FlowSummary {
    FlowSummary {
        event: FLOW_SUMMARY.into(),
        schema: 1,
        pod_namespace: "shop".into(),
        pod: pod.into(),
        direction,
        protocol,
        peer_ip: peer_ip.parse().expect("ip"),
        peer_namespace: peer.map(|p| p.0.to_string()),
        peer_pod: peer.map(|p| p.1.to_string()),
        port,
        service: service.map(str::to_string),
        verdict: FlowVerdict::Allowed,
        count,
        first_seen: "2026-12-08T03:00:00Z".into(),
        last_seen: "2026-12-08T04:00:00Z".into(),
    }
}

fn flows() -> Vec<FlowSummary> {
    use FlowDirection::*;
    use FlowProtocol::*;
    vec![
        // web → db through the Service (the proxy names the Service, dialled port 5432).
        flow(
            "web-7d9f8c-x2x9z",
            Egress,
            Tcp,
            "10.96.5.5",
            None,
            5432,
            Some("shop/db"),
            40,
        ),
        // db sees it arrive.
        flow(
            "db-0",
            Ingress,
            Tcp,
            "10.244.1.10",
            Some(("shop", "web-7d9f8c-x2x9z")),
            5432,
            None,
            40,
        ),
        // web's lookups, through the DNS ClusterIP.
        flow(
            "web-7d9f8c-x2x9z",
            Egress,
            Udp,
            "10.96.0.10",
            None,
            53,
            Some("kube-system/kube-dns"),
            90,
        ),
        // web is called by the node (kubelet probe, a host-network agent).
        flow(
            "web-7d9f8c-x2x9z",
            Ingress,
            Tcp,
            "192.168.0.11",
            None,
            8080,
            None,
            300,
        ),
        // web calls two outside addresses.
        flow(
            "web-7d9f8c-x2x9z",
            Egress,
            Tcp,
            "203.0.113.4",
            None,
            443,
            None,
            5,
        ),
        flow(
            "web-7d9f8c-x2x9z",
            Egress,
            Tcp,
            "203.0.113.5",
            None,
            443,
            None,
            1,
        ),
    ]
}

fn yaml(advice: &portcullis_advise::Advice) -> String {
    advice
        .policies
        .iter()
        .map(|p| serde_saphyr::to_string(p).expect("yaml"))
        .collect::<Vec<_>>()
        .join("---\n")
}

#[test]
fn one_policy_per_workload_selected_by_stable_labels_and_proven() {
    let advice = advise(&cluster(), &flows(), &Options::default());
    let text = yaml(&advice);
    let names: Vec<_> = advice
        .policies
        .iter()
        .map(|p| p.metadata.name.clone().unwrap_or_default())
        .collect();
    assert_eq!(names, ["db-advised", "web-advised"], "{text}");
    assert!(
        !text.contains("pod-template-hash") && !text.contains("statefulset.kubernetes.io"),
        "{text}"
    );
    assert!(!text.contains("controller-revision-hash"), "{text}");
    assert!(
        advice.proof.holds(),
        "{:?} {:?}",
        advice.proof.refused,
        advice.proof.errors
    );
    assert_eq!(advice.proof.allowed, advice.observations.len());
    assert!(advice.skipped.is_empty(), "{:?}", advice.skipped);
}

#[test]
fn a_service_is_judged_on_its_backends_and_ports_by_name() {
    let advice = advise(&cluster(), &flows(), &Options::default());
    let web = serde_json::to_value(&advice.policies[1]).expect("json");
    let egress = web["spec"]["egress"].as_array().expect("egress");
    let to_db = egress
        .iter()
        .find(|r| r["to"][0]["podSelector"]["matchLabels"]["app"] == "db")
        .expect("a rule to the db pods, not to the ClusterIP");
    assert_eq!(to_db["ports"][0]["port"], "pg", "the backend's port name");
    assert!(
        to_db["to"][0].get("namespaceSelector").is_none(),
        "same namespace: podSelector only"
    );
}

#[test]
fn dns_goes_to_the_cluster_dns_as_this_cluster_labels_it() {
    let advice = advise(&cluster(), &flows(), &Options::default());
    for policy in &advice.policies {
        let v = serde_json::to_value(policy).expect("json");
        let dns = v["spec"]["egress"]
            .as_array()
            .expect("egress")
            .iter()
            .find(|r| {
                r["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
                    == "coredns-custom"
            })
            .unwrap_or_else(|| panic!("a DNS rule in {v}"));
        assert_eq!(
            dns["to"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
            "kube-system"
        );
        let ports: std::collections::BTreeSet<String> = dns["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .map(|p| {
                format!(
                    "{}/{}",
                    p["port"].as_str().unwrap_or("?"),
                    p["protocol"].as_str().unwrap_or("?")
                )
            })
            .collect();
        assert_eq!(
            ports,
            ["dns-tcp/TCP".to_string(), "dns/UDP".to_string()].into()
        );
    }
}

#[test]
fn outside_addresses_become_aggregated_ip_blocks_and_nodes_exact_ones() {
    let advice = advise(&cluster(), &flows(), &Options::default());
    let text = yaml(&advice);
    assert!(text.contains("cidr: 203.0.113.4/31"), "{text}");
    assert!(text.contains("cidr: 192.168.0.11/32"), "{text}");
    let wide = advise(
        &cluster(),
        &flows(),
        &Options {
            widen: Widen { v4: 24, v6: 64 },
            ..Options::default()
        },
    );
    assert!(yaml(&wide).contains("cidr: 203.0.113.0/24"));
    assert!(
        yaml(&wide).contains("cidr: 192.168.0.11/32"),
        "node addresses are never widened"
    );
}

#[test]
fn what_else_is_allowed_is_listed_and_rare_flows_are_flagged() {
    let advice = advise(&cluster(), &flows(), &Options::default());
    // The db's metrics port was never seen: nothing may reach it.
    assert!(
        !advice.proof.also_allowed.iter().any(|a| a.port == 9187),
        "{:?}",
        advice.proof.also_allowed
    );
    // DNS over TCP is allowed by default without being seen: listed.
    assert!(
        advice
            .proof
            .also_allowed
            .iter()
            .any(|a| a.port == 53 && a.protocol == portcullis_policy::Protocol::Tcp),
        "{:?}",
        advice.proof.also_allowed
    );
    assert_eq!(advice.proof.seen_once, [5]);
}

#[test]
fn staged_and_default_deny_when_asked() {
    let options = Options {
        staged: true,
        default_deny: true,
        ..Options::default()
    };
    let advice = advise(&cluster(), &flows(), &options);
    let text = yaml(&advice);
    assert_eq!(advice.policies.len(), 3);
    assert_eq!(
        text.matches("portcullis.dev/staged: 'true'").count()
            + text.matches("portcullis.dev/staged: \"true\"").count(),
        3,
        "{text}"
    );
    assert!(advice.proof.holds(), "{:?}", advice.proof.refused);
}

#[test]
fn gone_pods_are_stood_for_by_their_workload_and_denied_flows_left_out() {
    let mut f = flows();
    f[1].peer_pod = Some("web-7d9f8c-old11".into());
    f.push(FlowSummary {
        verdict: FlowVerdict::Denied,
        ..f[4].clone()
    });
    let advice = advise(&cluster(), &f, &Options::default());
    assert!(
        advice
            .warnings
            .iter()
            .any(|w| w.contains("web-7d9f8c-old11 is gone; shop/web-7d9f8c-x2x9z stands for")),
        "{:?}",
        advice.warnings
    );
    assert_eq!(advice.skipped.len(), 1);
    assert!(advice.skipped[0].reason.to_string().contains("denied"));
    assert!(advice.proof.holds());
}
