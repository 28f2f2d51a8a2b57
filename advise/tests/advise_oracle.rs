//! Property: whatever the cluster and the flows, every observed allowed flow is allowed by the
//! advised policies (the engine decides), and no object advise writes is rejected.

use portcullis_advise::{advise, cidr::Widen, Options};
use portcullis_contract::log::{
    FlowDirection, FlowProtocol, FlowSummary, FlowVerdict, FLOW_SUMMARY,
};
use portcullis_policy::manifest::load_into;
use portcullis_policy::Cluster;
use proptest::prelude::*;

const APPS: [&str; 3] = ["a", "b", "c"];

fn pod_yaml(i: usize, ns: usize, app: usize, hash: u8, port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {app}-{hash:x}-{i}\n  namespace: ns{ns}\n  labels: {{app: {app}, pod-template-hash: '{hash:x}'}}\n\
         spec:\n  containers: [{{name: c, image: i, ports: [{{containerPort: {port}, name: p{port}}}]}}]\n\
         status: {{podIP: 10.244.{ns}.{i}, hostIP: 192.168.0.{ns}}}\n---\n",
        app = APPS[app]
    )
}

#[derive(Debug, Clone)]
struct Gen {
    pods: Vec<(usize, usize, u8, u16)>,
    flows: Vec<(usize, usize, bool, bool, u8, bool)>,
}

fn gen() -> impl Strategy<Value = Gen> {
    let pods = prop::collection::vec(
        (
            0usize..2,
            0usize..3,
            any::<u8>(),
            prop::sample::select(vec![80u16, 8080, 53]),
        ),
        2..8,
    );
    pods.prop_flat_map(|pods| {
        let n = pods.len();
        let flows = prop::collection::vec(
            (
                0..n,
                0..n,
                any::<bool>(),
                any::<bool>(),
                any::<u8>(),
                any::<bool>(),
            ),
            1..20,
        );
        (Just(pods), flows).prop_map(|(pods, flows)| Gen { pods, flows })
    })
}

fn build(g: &Gen) -> (Cluster, Vec<FlowSummary>) {
    let mut text = String::from("apiVersion: v1\nkind: Namespace\nmetadata: {name: ns0}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: ns1}\n---\n");
    for (i, (ns, app, hash, port)) in g.pods.iter().enumerate() {
        text.push_str(&pod_yaml(i + 1, *ns, *app, *hash, *port));
    }
    let mut cluster = Cluster::new();
    load_into(&mut cluster, &text, "gen.yaml");
    let name = |i: usize| {
        let (ns, app, hash, _) = g.pods[i];
        (
            format!("ns{ns}"),
            format!("{}-{hash:x}-{}", APPS[app], i + 1),
            format!("10.244.{ns}.{}", i + 1),
        )
    };
    let flows = g
        .flows
        .iter()
        .map(|&(from, to, ingress, udp, outside, external)| {
            let (ns, pod, _) = name(from);
            let (pns, ppod, pip) = name(to);
            let (peer_ip, peer) = if external {
                (format!("198.51.100.{outside}"), None)
            } else {
                (pip, Some((pns, ppod)))
            };
            FlowSummary {
                event: FLOW_SUMMARY.into(),
                schema: 1,
                pod_namespace: ns,
                pod,
                direction: if ingress {
                    FlowDirection::Ingress
                } else {
                    FlowDirection::Egress
                },
                protocol: if udp {
                    FlowProtocol::Udp
                } else {
                    FlowProtocol::Tcp
                },
                peer_ip: peer_ip.parse().expect("ip"),
                peer_namespace: peer.as_ref().map(|p| p.0.clone()),
                peer_pod: peer.map(|p| p.1),
                port: if ingress {
                    g.pods[from].3
                } else {
                    g.pods[to].3
                },
                service: None,
                verdict: FlowVerdict::Allowed,
                count: 1 + u64::from(outside),
                first_seen: "2026-12-08T03:00:00Z".into(),
                last_seen: "2026-12-08T03:10:00Z".into(),
            }
        })
        .collect();
    (cluster, flows)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    #[test]
    fn every_observed_flow_is_allowed_by_the_advice(g in gen(), deny in any::<bool>(), wide in any::<bool>()) {
        let (cluster, flows) = build(&g);
        let options = Options {
            default_deny: deny,
            widen: if wide { Widen { v4: 24, v6: 64 } } else { Widen::default() },
            ..Options::default()
        };
        let advice = advise(&cluster, &flows, &options);
        prop_assert!(advice.proof.errors.is_empty(), "{:?}", advice.proof.errors);
        prop_assert!(advice.proof.refused.is_empty(), "{:?}", advice.proof.refused);
        prop_assert_eq!(advice.proof.allowed, advice.observations.len());
        prop_assert_eq!(advice.observations.len(), flows.len());
    }
}
