//! End-to-end conformance on real sockets: the Kubernetes e2e model built as a testbed (network
//! namespaces, the real portcullis-init and portcullis-proxy in every pod), then every TCP-only
//! conformance case applied in turn (hot reload, no restart) and probed. The observed matrix must
//! equal the hand-written truth table of the case. Needs root.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use portcullis_testbed::dual_stack;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn portcullis(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .current_dir(repo())
        .output()
        .expect("run portcullis")
}

/// A testbed name unique to this test process (`base` + pid, at most 12 characters), so two
/// runs of the suite at once never touch each other's namespaces.
fn unique(base: &str) -> String {
    let name = format!("{base}{}", std::process::id());
    assert!(name.len() <= 12, "testbed name {name} is too long");
    name
}

/// Takes the testbed down when the test ends, however it ends.
struct Testbed(String);

impl Drop for Testbed {
    fn drop(&mut self) {
        let _ = portcullis(&["testbed", "down", "--name", &self.0]);
    }
}

fn require_root() {
    portcullis_netns::testing::require_root(
        "this test builds network namespaces and iptables rules",
    );
}

/// The proxy and init binaries the testbed runs sit next to `portcullis`; make sure they are
/// built and current even when only this package's tests were asked for.
fn build_components() {
    portcullis_netns::testing::build_testbed_components(env!("CARGO"), &repo());
}

/// (from, to, port, protocol, family).
type Cells = BTreeMap<(String, String, u64, String, String), bool>;

/// The probes of a JSON matrix (observed, or expected.json), by (from, to, port, protocol,
/// family: IPv4 where the matrix does not say); `allowed` is `null` in observed ones where
/// nothing listens, which counts as neither.
fn cells(json: &str) -> Cells {
    cells_of(json, &["TCP", "UDP", "SCTP"])
}

/// The cells of `protocols` only.
fn cells_of(json: &str, protocols: &[&str]) -> Cells {
    let v: serde_json::Value = serde_json::from_str(json).expect("JSON matrix");
    v["probes"]
        .as_array()
        .expect("probes")
        .iter()
        .filter(|p| protocols.iter().any(|proto| p["protocol"] == *proto))
        .filter(|p| !p["allowed"].is_null())
        .map(|p| {
            (
                (
                    p["from"].as_str().unwrap().to_string(),
                    p["to"].as_str().unwrap().to_string(),
                    p["port"].as_u64().unwrap(),
                    p["protocol"].as_str().unwrap().to_string(),
                    p["family"].as_str().unwrap_or("IPv4").to_string(),
                ),
                p["allowed"].as_bool().unwrap(),
            )
        })
        .collect()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Whether a conformance case is about TCP only (the proxy's protocol).
fn tcp_only(case: &Path) -> bool {
    let policy = fs::read_to_string(case.join("policy.yaml")).unwrap();
    !(policy.contains("UDP")
        || policy.contains("SCTP")
        || policy.contains("-udp")
        || policy.contains("-sctp"))
}

/// The observed matrix of the e2e testbed on ports 80 and 81 of `protocols`, as JSON.
fn probe_e2e(name: &str, protocols: &[&str]) -> Output {
    let probes: Vec<String> = protocols
        .iter()
        .flat_map(|p| [format!("80/{p}"), format!("81/{p}")])
        .collect();
    portcullis(&[
        "testbed",
        "probe",
        "--name",
        name,
        "--probe",
        &probes.join(","),
        "-o",
        "json",
    ])
}

/// Whether the testbed's proxies enforce UDP (their `/policy` says so once the NFQUEUE
/// enforcement is in): then the conformance cases are checked on UDP sockets too.
fn udp_enforced(name: &str, pod: &str) -> bool {
    let out = portcullis(&["testbed", "policy", "--name", name, pod]);
    assert!(
        out.status.success(),
        "testbed policy failed: {}",
        text(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&text(&out.stdout)).expect("/policy is JSON");
    v["enforced_protocols"]["UDP"] == true
}

#[test]
fn e2e_conformance_cases_hold_on_real_sockets() {
    require_root();
    build_components();
    let dir = repo().join("policy/tests/conformance");
    let tb = unique("e2e");
    let tb = tb.as_str();
    // Taken down however the test ends (also after a failed `up`).
    let _guard = Testbed(tb.to_string());
    // Every case over both families: the model's pods dual-stack (each with the IPv6 twin of
    // its IPv4 address), each case's ipBlocks with their IPv6 twins (`dual_stack`), so that the
    // IPv6 half has the hand-written truth table of the IPv4 half.
    let work = std::env::temp_dir().join(format!("pc-e2e-dual-{}", std::process::id()));
    fs::create_dir_all(&work).unwrap();
    let model = work.join("model.yaml");
    fs::write(
        &model,
        dual_stack::with_pod_ipv6(&fs::read_to_string(dir.join("model.yaml")).unwrap()),
    )
    .unwrap();
    let up = portcullis(&["testbed", "up", "--name", tb, "-f", model.to_str().unwrap()]);
    assert!(
        up.status.success(),
        "testbed up failed:\n{}\n{}",
        text(&up.stdout),
        text(&up.stderr)
    );

    let mut cases: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("expected.json").is_file())
        .collect();
    cases.sort();
    // TCP and UDP on real sockets. SCTP cells are the engine's alone here (this kernel has no
    // SCTP sockets; the proxy's own tests judge crafted SCTP INIT packets).
    assert!(
        udp_enforced(tb, "x/a"),
        "the testbed's proxies must enforce UDP: the conformance cases are checked on UDP too"
    );
    let protocols: &[&str] = &["TCP", "UDP"];
    eprintln!("conformance cases on real sockets for {protocols:?}");
    let runs = |case: &Path| protocols.contains(&"UDP") || tcp_only(case);
    let mut ran = 0;
    let mut per_family: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    for case in &cases {
        // Cases about a protocol the proxies do not enforce are checked by the engine only.
        if !runs(case) {
            continue;
        }
        ran += 1;
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        // Only cases with an ipBlock are rewritten (YAML 1.1 would read a label `y` as true).
        let original = fs::read_to_string(case.join("policy.yaml")).unwrap();
        let (twins, ext) = match original.contains("ipBlock") {
            true => (dual_stack::with_ipv6_blocks(&original), "json"),
            false => (original, "yaml"),
        };
        let policy = work.join(format!("{name}.{ext}"));
        fs::write(&policy, twins).unwrap();
        let apply = portcullis(&[
            "testbed",
            "apply",
            "--name",
            tb,
            "--replace",
            "-f",
            policy.to_str().unwrap(),
        ]);
        assert!(
            apply.status.success(),
            "{name}: apply failed: {}",
            text(&apply.stderr)
        );
        let probe = probe_e2e(tb, protocols);
        let observed = cells_of(&text(&probe.stdout), protocols);
        for key in observed.keys() {
            *per_family.entry(key.4.clone()).or_default() += 1;
        }
        let expected = both_families(cells_of(
            &fs::read_to_string(case.join("expected.json")).unwrap(),
            protocols,
        ));
        assert_eq!(
            observed.len(),
            expected.len(),
            "{name}: {}",
            text(&probe.stderr)
        );
        for (key, want) in &expected {
            if observed.get(key) != Some(want) {
                failures.push(format!(
                    "{name}: {} -> {} {}/{} over {}: expected {want}, observed {:?}",
                    key.0,
                    key.1,
                    key.2,
                    key.3,
                    key.4,
                    observed.get(key)
                ));
            }
        }
    }
    assert!(ran >= 30, "only {ran} TCP cases ran");
    eprintln!("{ran} cases on real sockets; probes per family: {per_family:?}");
    assert!(
        per_family.get("IPv6") == per_family.get("IPv4"),
        "every case runs over IPv4 and IPv6 alike: {per_family:?}"
    );

    assert!(
        failures.is_empty(),
        "{} cells differ on real sockets:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // The tables come from portcullis-controller; without it, every proxy keeps enforcing the
    // last case's tables.
    let last = cases
        .iter()
        .rev()
        .find(|c| runs(c))
        .expect("a case that ran");
    let stop = portcullis(&["testbed", "stop-controller", "--name", tb]);
    assert!(
        stop.status.success(),
        "stop-controller failed: {}{}",
        text(&stop.stdout),
        text(&stop.stderr)
    );
    let probe = probe_e2e(tb, protocols);
    assert_eq!(
        cells_of(&text(&probe.stdout), protocols),
        both_families(cells_of(
            &fs::read_to_string(last.join("expected.json")).unwrap(),
            protocols
        )),
        "with the controller gone, enforcement changed: {}",
        text(&probe.stderr)
    );
    let _ = fs::remove_dir_all(&work);
}

/// The IPv4 truth table of a case, and the same for its IPv6 half.
fn both_families(v4: Cells) -> Cells {
    let v6: Cells = v4
        .iter()
        .map(|((f, t, port, proto, _), a)| {
            let key = (
                f.clone(),
                t.clone(),
                *port,
                proto.clone(),
                "IPv6".to_string(),
            );
            (key, *a)
        })
        .collect();
    v4.into_iter().chain(v6).collect()
}

/// Three pods that declare no ports at all, as most real pods: the servers listen on every port
/// they could be probed on all the same (issue 15), so an allowed connection is observed allowed
/// and a denial is a denial, never "nothing listens".
#[test]
fn pods_without_declared_ports_are_probed_on_every_port_they_could_be() {
    require_root();
    build_components();
    let name = unique("np");
    let name = name.as_str();
    let dir = std::env::temp_dir().join(format!("pc-tb-{name}"));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let pod = |ns: &str, pod: &str, ip: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, namespace: {ns}, labels: {{pod: {pod}}}}}\n\
             spec: {{containers: [{{name: c, image: i}}]}}\n\
             status: {{podIP: {ip}, hostIP: 192.168.0.10}}\n"
        )
    };
    let pods = [
        pod("x", "a", "10.1.0.1"),
        pod("x", "b", "10.1.0.2"),
        pod("y", "c", "10.2.0.3"),
    ]
    .join("---\n");
    fs::write(dir.join("pods.yaml"), pods).unwrap();
    // x/b: ingress only from x/a, only on 8080, a port nobody declares.
    fs::write(
        dir.join("policy.yaml"),
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {name: only-a-on-8080, namespace: x}\n\
         spec:\n  podSelector: {matchLabels: {pod: b}}\n  policyTypes: [Ingress]\n\
         \x20 ingress:\n    - from: [{podSelector: {matchLabels: {pod: a}}}]\n      ports: [{port: 8080}]\n",
    )
    .unwrap();

    // Taken down however the test ends (also after a failed `up`).
    let _guard = Testbed(name.to_string());
    let up = portcullis(&[
        "testbed",
        "up",
        "--name",
        name,
        "--probe",
        "80/TCP",
        "-f",
        dir.join("pods.yaml").to_str().unwrap(),
    ]);
    assert!(
        up.status.success(),
        "up failed: {}{}",
        text(&up.stdout),
        text(&up.stderr)
    );

    // No policy: every pod reaches every pod on 80, and `probe` defaults to `up --probe`.
    let probe = portcullis(&["testbed", "probe", "--name", name, "-o", "json"]);
    let observed = cells(&text(&probe.stdout));
    assert!(
        probe.status.success(),
        "differences: {}",
        text(&probe.stderr)
    );
    assert_eq!(observed.len(), 9, "{}", text(&probe.stdout));
    assert!(observed.values().all(|a| *a), "{observed:?}");

    let apply = portcullis(&[
        "testbed",
        "apply",
        "--name",
        name,
        "-f",
        dir.join("policy.yaml").to_str().unwrap(),
    ]);
    assert!(
        apply.status.success(),
        "apply failed: {}",
        text(&apply.stderr)
    );
    // The policy's port is now served and probed by default too.
    let probe = portcullis(&["testbed", "probe", "--name", name, "-o", "json"]);
    assert!(
        probe.status.success(),
        "differences: {}",
        text(&probe.stderr)
    );
    let observed = cells(&text(&probe.stdout));
    assert_eq!(observed.len(), 18, "{}", text(&probe.stdout));
    for ((from, to, port, _, _), allowed) in &observed {
        let want = to != "x/b" || from == "x/b" || (from == "x/a" && *port == 8080);
        assert_eq!(*allowed, want, "{from} -> {to} on {port}");
    }
    let _ = fs::remove_dir_all(&dir);
}

/// Pods without Portcullis: x is opted in by its label, y is not (so y/c has no proxy), and x/b
/// opts out by annotation (which counts because x allows pod overrides, as in the webhook). A pod without a proxy enforces neither its egress nor its ingress;
/// its peers' proxies still enforce theirs. The prediction says so, and the sockets agree.
#[test]
fn pods_without_the_sidecar_enforce_nothing_and_their_peers_still_do() {
    require_root();
    build_components();
    let name = unique("ni");
    let name = name.as_str();
    let dir = std::env::temp_dir().join(format!("pc-tb-{name}"));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let manifests = "
apiVersion: v1
kind: Namespace
metadata:
  name: x
  labels: {portcullis.dev/inject: enabled}
  annotations: {portcullis.dev/allow-pod-overrides: 'true'}
---
apiVersion: v1
kind: Namespace
metadata: {name: y}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x}
spec: {containers: [{name: c, image: i}]}
status: {podIP: 10.1.0.1, hostIP: 192.168.0.10}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, annotations: {portcullis.dev/inject: disabled}}
spec: {containers: [{name: c, image: i}]}
status: {podIP: 10.1.0.2, hostIP: 192.168.0.10}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: y}
spec: {containers: [{name: c, image: i}]}
status: {podIP: 10.2.0.3, hostIP: 192.168.0.10}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-in, namespace: y}
spec: {podSelector: {}, policyTypes: [Ingress]}
";
    fs::write(dir.join("cluster.yaml"), manifests).unwrap();
    let _guard = Testbed(name.to_string());
    let up = portcullis(&[
        "testbed",
        "up",
        "--name",
        name,
        "--probe",
        "80/TCP",
        "-f",
        dir.join("cluster.yaml").to_str().unwrap(),
    ]);
    let out = text(&up.stdout);
    assert!(up.status.success(), "up failed: {out}{}", text(&up.stderr));
    let line = |pod: &str| {
        out.lines()
            .find(|l| l.trim_start().starts_with(pod))
            .unwrap_or_default()
            .to_string()
    };
    assert!(line("x/a").ends_with(" proxy"), "{out}");
    assert!(line("x/b").contains("no proxy: pod annotation"), "{out}");
    assert!(
        line("y/c").contains("no proxy: namespace y lacks the label"),
        "{out}"
    );

    let probe = portcullis(&["testbed", "probe", "--name", name, "-o", "json"]);
    assert!(
        probe.status.success(),
        "differences: {}",
        text(&probe.stderr)
    );
    let observed = cells(&text(&probe.stdout));
    let allowed: Vec<(&str, &str)> = observed
        .iter()
        .filter(|(_, a)| **a)
        .map(|((f, t, _, _, _), _)| (f.as_str(), t.as_str()))
        .collect();
    // x/a enforces both directions; x/b and y/c enforce nothing, whatever their policies say.
    assert_eq!(
        allowed,
        vec![
            ("x/a", "x/a"),
            ("x/b", "x/b"),
            ("x/b", "y/c"),
            ("y/c", "x/b"),
            ("y/c", "y/c"),
        ],
        "{observed:?}"
    );
    // The prediction names the half that is not enforced.
    let v: serde_json::Value = serde_json::from_str(&text(&probe.stdout)).unwrap();
    let b_to_c = v["probes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["from"] == "x/b" && p["to"] == "y/c")
        .unwrap();
    let reason = b_to_c["reason"].as_str().unwrap();
    assert!(
        reason.contains("egress not enforced: x/b has no proxy")
            && reason.contains("ingress not enforced: y/c has no proxy"),
        "{reason}"
    );
    // The engine alone (every pod enforcing) would have denied it.
    let matrix = portcullis(&[
        "matrix",
        "-f",
        dir.join("cluster.yaml").to_str().unwrap(),
        "--probe",
        "80/TCP",
        "-o",
        "json",
    ]);
    assert_eq!(
        cells(&text(&matrix.stdout)).get(&(
            "x/b".to_string(),
            "y/c".to_string(),
            80,
            "TCP".to_string(),
            "IPv4".to_string()
        )),
        Some(&false)
    );
    let _ = fs::remove_dir_all(&dir);
}

/// Services on real sockets, from pods without a proxy (their connections reach the node's
/// kube-proxy rules) and from pods with one (the proxy balances over the backends its egress
/// allows), and the cluster DNS under a default-deny egress policy. Which pod answered is
/// checked against the policy, not only that something answered.
#[test]
fn services_reach_their_allowed_backends_through_the_nodes_dnat() {
    require_root();
    build_components();
    let name = unique("sv");
    let name = name.as_str();
    let dir = std::env::temp_dir().join(format!("pc-tb-{name}"));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    // secure is opted in (proxies), shop is not. secure/api-1 takes 8080 from shop, api-2 nothing.
    let manifests = "
apiVersion: v1
kind: Namespace
metadata: {name: secure, labels: {portcullis.dev/inject: enabled}}
---
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: shop}}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop, labels: {app: client}}
spec: {containers: [{name: c, image: i}]}
status: {podIP: 10.3.0.1, hostIP: 192.168.0.10}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec: {containers: [{name: c, image: i}]}
status: {podIP: 10.3.0.2, hostIP: 192.168.0.10}
---
apiVersion: v1
kind: Pod
metadata: {name: api-1, namespace: secure, labels: {app: api, open: 'yes'}}
spec: {containers: [{name: c, image: i}]}
status: {podIP: 10.4.0.1, hostIP: 192.168.0.10}
---
apiVersion: v1
kind: Pod
metadata: {name: api-2, namespace: secure, labels: {app: api}}
spec: {containers: [{name: c, image: i}]}
status: {podIP: 10.4.0.2, hostIP: 192.168.0.10}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: api, namespace: secure}
spec:
  podSelector: {matchLabels: {app: api}}
  policyTypes: [Ingress]
  ingress:
    - from: [{namespaceSelector: {matchLabels: {team: shop}}, podSelector: {matchLabels: {app: client}}}]
      ports: [{port: 8080}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: only-open, namespace: secure}
spec:
  podSelector: {matchExpressions: [{key: open, operator: DoesNotExist}]}
  policyTypes: [Ingress]
---
apiVersion: v1
kind: Pod
metadata: {name: caller, namespace: secure, labels: {app: caller}}
spec: {containers: [{name: c, image: i}]}
status: {podIP: 10.4.0.10, hostIP: 192.168.0.10}
---
apiVersion: v1
kind: Pod
metadata: {name: pool-1, namespace: secure, labels: {app: pool, tier: ok, ring: a}}
spec: {containers: [{name: c, image: i}]}
status: {podIP: 10.4.0.11, hostIP: 192.168.0.10}
---
apiVersion: v1
kind: Pod
metadata: {name: pool-2, namespace: secure, labels: {app: pool, tier: ok}}
spec: {containers: [{name: c, image: i}]}
status: {podIP: 10.4.0.12, hostIP: 192.168.0.10}
---
apiVersion: v1
kind: Pod
metadata: {name: pool-3, namespace: secure, labels: {app: pool, ring: a}}
spec: {containers: [{name: c, image: i}]}
status: {podIP: 10.4.0.13, hostIP: 192.168.0.10}
---
apiVersion: v1
kind: Pod
metadata: {name: resolver, namespace: secure, labels: {dns: allowed}}
spec: {containers: [{name: c, image: i}]}
status: {podIP: 10.4.0.20, hostIP: 192.168.0.10}
---
apiVersion: v1
kind: Pod
metadata: {name: mute, namespace: secure, labels: {dns: denied}}
spec: {containers: [{name: c, image: i}]}
status: {podIP: 10.4.0.21, hostIP: 192.168.0.10}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: caller-out, namespace: secure}
spec:
  podSelector: {matchLabels: {app: caller}}
  policyTypes: [Egress]
  egress:
    - to: [{podSelector: {matchLabels: {tier: ok}}}]
      ports: [{port: 8080}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: pool-in, namespace: secure}
spec:
  podSelector: {matchLabels: {app: pool}}
  policyTypes: [Ingress]
  ingress:
    - from: [{podSelector: {matchLabels: {app: caller}}}]
      ports: [{port: 8080}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny-egress, namespace: secure}
spec:
  podSelector: {matchExpressions: [{key: dns, operator: Exists}]}
  policyTypes: [Egress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-dns, namespace: secure}
spec:
  podSelector: {matchLabels: {dns: allowed}}
  policyTypes: [Egress]
  egress:
    - to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}, podSelector: {matchLabels: {k8s-app: kube-dns}}}]
      ports: [{port: 53, protocol: UDP}, {port: 53, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: secure}
spec:
  selector: {app: api}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.7.7
  selector: {app: web}
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: headless, namespace: shop}
spec: {clusterIP: None, selector: {app: web}, ports: [{port: 80}]}
";
    // api-2 would be reachable by the first policy alone; the second denies it all ingress.
    // (A pod selected by two policies gets the union: api-2 is selected by both, so it is
    // allowed the client on 8080 too; make it explicit below instead.)
    let manifests = manifests.replace(
        "podSelector: {matchLabels: {app: api}}\n  policyTypes: [Ingress]",
        "podSelector: {matchLabels: {app: api, open: 'yes'}}\n  policyTypes: [Ingress]",
    );
    fs::write(dir.join("cluster.yaml"), manifests).unwrap();
    let _guard = Testbed(name.to_string());
    let up = portcullis(&[
        "testbed",
        "up",
        "--name",
        name,
        "-f",
        dir.join("cluster.yaml").to_str().unwrap(),
    ]);
    let stderr = text(&up.stderr);
    assert!(
        up.status.success(),
        "up failed: {}{stderr}",
        text(&up.stdout)
    );
    assert!(
        stderr.contains("Service secure/api has no clusterIP; the testbed gives it 10."),
        "{stderr}"
    );

    // kube-proxy's rules in the node: a random pick among the two ready endpoints.
    let rules = Command::new("ip")
        .args([
            "netns",
            "exec",
            &format!("pc-tb-{name}-node"),
            "iptables-save",
            "-t",
            "nat",
        ])
        .output()
        .unwrap();
    let rules = text(&rules.stdout);
    assert!(rules.contains("-d 10.96.7.7/32 -p tcp"), "{rules}");
    assert!(rules.contains("--mode random --probability 0.5"), "{rules}");
    assert!(rules.contains("--to-destination 10.4.0.1:8080"), "{rules}");
    assert!(rules.contains("--to-destination 10.4.0.2:8080"), "{rules}");

    // The cluster DNS answers every Service's name from a pod without a proxy, through the
    // kube-dns Service (10.96.0.10, DNAT to the dnsmasq pod), with the kubelet's search path.
    let client_ns = netns_of(&up, "shop/client");
    let api_ip = getent(&client_ns, "api.secure.svc.cluster.local").expect("api resolves");
    assert!(api_ip.starts_with("10."), "{api_ip}");
    assert_eq!(getent(&client_ns, "web").as_deref(), Some("10.96.7.7"));
    assert_eq!(
        getent(&client_ns, "headless.shop.svc.cluster.local").as_deref(),
        Some("10.3.0.2")
    );
    assert_eq!(getent(&client_ns, "nothing.shop.svc.cluster.local"), None);

    // Several rounds: kube-proxy picks at random, so both backends get picked.
    let mut answered_by = std::collections::BTreeSet::new();
    for _ in 0..8 {
        let probe = portcullis(&[
            "testbed", "probe", "--name", name, "--probe", "80/TCP", "-o", "json",
        ]);
        assert!(
            probe.status.success(),
            "differences: {}",
            text(&probe.stderr)
        );
        let v: serde_json::Value = serde_json::from_str(&text(&probe.stdout)).unwrap();
        let services = v["services"].as_array().unwrap();
        let get = |from: &str, svc: &str| {
            services
                .iter()
                .find(|c| c["from"] == from && c["service"] == svc)
                .unwrap_or_else(|| panic!("no probe {from} -> {svc}: {services:?}"))
        };
        // Every pod probes Services, those with a proxy too; headless has no ClusterIP.
        assert!(services.iter().any(|c| c["from"] == "secure/caller"));
        assert!(services.iter().all(|c| c["service"] != "shop/headless"));
        // The injected caller's egress allows no api backend: denied via the ClusterIP.
        let caller = get("secure/caller", "secure/api");
        assert_eq!(caller["predicted"], "denied", "{caller}");
        assert!(caller["answered_by"].is_null(), "{caller}");
        // api-1's proxy may connect to itself (traffic to itself) but api-2 takes nothing from it.
        let own = get("secure/api-1", "secure/api");
        assert_eq!(own["predicted"], "partly", "{own}");
        let api = get("shop/client", "secure/api");
        assert_eq!(api["predicted"], "partly", "{api}");
        assert_eq!(api["allowed_backends"], serde_json::json!(["secure/api-1"]));
        if let Some(b) = api["answered_by"].as_str() {
            answered_by.insert(b.to_string());
        }
        // shop/web may not reach secure/api at all: api-1 takes only shop/client.
        let denied = get("shop/web", "secure/api");
        assert_eq!(denied["predicted"], "denied", "{denied}");
        assert!(denied["answered_by"].is_null(), "{denied}");
        let web = get("shop/client", "shop/web");
        assert_eq!(web["answered_by"], "shop/web", "{web}");
        assert_eq!(web["cluster_ip"], "10.96.7.7");
    }
    // Answers came only from the allowed backend (else `probe` would have failed above).
    assert_eq!(
        answered_by,
        ["secure/api-1".to_string()].into(),
        "in 8 rounds the allowed backend never answered"
    );

    // A new Service applied later: the node's rules are rebuilt and it is probed.
    fs::write(
        dir.join("more.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: web2, namespace: shop}\n\
         spec: {clusterIP: 10.96.7.8, selector: {app: web}, ports: [{port: 81, targetPort: 80}]}\n",
    )
    .unwrap();
    let apply = portcullis(&[
        "testbed",
        "apply",
        "--name",
        name,
        "-f",
        dir.join("more.yaml").to_str().unwrap(),
    ]);
    assert!(
        apply.status.success(),
        "apply failed: {}",
        text(&apply.stderr)
    );
    let probe = portcullis(&[
        "testbed", "probe", "--name", name, "--probe", "80/TCP", "-o", "json",
    ]);
    assert!(
        probe.status.success(),
        "differences: {}",
        text(&probe.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&text(&probe.stdout)).unwrap();
    let web2 = v["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["from"] == "shop/client" && c["service"] == "shop/web2")
        .expect("the applied Service is probed");
    assert_eq!(web2["answered_by"], "shop/web", "{web2}");
    // ... and has a name (dnsmasq re-reads its hosts on apply).
    let mut resolved = None;
    for _ in 0..20 {
        resolved = getent(&client_ns, "web2.shop.svc.cluster.local");
        if resolved.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(resolved.as_deref(), Some("10.96.7.8"));

    through_a_proxy(name, &dir, &up);
    dns_under_default_deny_egress(name, &up);
    let _ = fs::remove_dir_all(&dir);
}

/// A Service connection from a pod whose proxy balances it: the ClusterIP of the denied
/// `secure/api` is refused with an audit line naming the Service; `secure/pool` (pool-1 and
/// pool-2 allowed by the caller's egress, pool-3 not) answers every connection and never from
/// pool-3; pool-2 taken out of the Service gets no new connection.
fn through_a_proxy(name: &str, dir: &Path, up: &Output) {
    let caller = netns_of(up, "secure/caller");
    let api_ip = getent(&netns_of(up, "shop/client"), "api.secure.svc.cluster.local").unwrap();
    assert_eq!(
        connect_many(&caller, &api_ip, 80, 1),
        vec!["none".to_string()]
    );
    let logs = portcullis(&["testbed", "logs", "--name", name, "secure/caller"]);
    let logs = text(&logs.stdout);
    let line = logs
        .lines()
        .find(|l| l.contains("\"event\":\"connection_denied\"") && l.contains(&api_ip))
        .unwrap_or_else(|| panic!("no denial of {api_ip}:80 in the caller's log:\n{logs}"));
    assert!(line.contains("\"service\":\"secure/api\""), "{line}");

    let service = |selector: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: pool, namespace: secure}}\n\
             spec: {{clusterIP: 10.96.7.9, selector: {selector}, ports: [{{port: 80, targetPort: 8080}}]}}\n"
        )
    };
    fs::write(dir.join("pool.yaml"), service("{app: pool}")).unwrap();
    apply(name, &dir.join("pool.yaml"), true);
    // The proxy gets the new Service from the controller's stream (apply waited for tables).
    wait_until_answered(&caller, "10.96.7.9");
    let answers = connect_many(&caller, "10.96.7.9", 80, 50);
    let by = tally(&answers);
    assert_eq!(answers.len(), 50);
    assert!(
        by.keys()
            .all(|b| b == "secure/pool-1" || b == "secure/pool-2"),
        "50 connections to secure/pool: {by:?}"
    );
    assert!(
        by.len() == 2,
        "the proxy spreads over both allowed backends: {by:?}"
    );

    // pool-2 leaves the Service (its label no longer matches the selector, as when a pod is
    // relabelled or deleted and the EndpointSlice controller drops it).
    fs::write(dir.join("pool.yaml"), service("{app: pool, ring: a}")).unwrap();
    apply(name, &dir.join("pool.yaml"), true);
    let mut settled = false;
    for _ in 0..50 {
        if connect_many(&caller, "10.96.7.9", 80, 5)
            .iter()
            .all(|a| a == "secure/pool-1")
        {
            settled = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        settled,
        "the caller's proxy still sends to pool-2 after 5 s"
    );
    let by = tally(&connect_many(&caller, "10.96.7.9", 80, 50));
    assert_eq!(
        by,
        [("secure/pool-1".to_string(), 50)].into(),
        "after pool-2 left the Service"
    );
    // And `probe` agrees, from every pod.
    let probe = portcullis(&[
        "testbed", "probe", "--name", name, "--probe", "80/TCP", "-o", "json",
    ]);
    assert!(
        probe.status.success(),
        "differences: {}",
        text(&probe.stderr)
    );
}

/// The classic DNS policy: default-deny egress plus UDP+TCP 53 to the kube-dns pods. The
/// resolver resolves through 10.96.0.10; `mute` (default-deny only) cannot, and its proxy logs
/// the UDP denial.
fn dns_under_default_deny_egress(name: &str, up: &Output) {
    let resolver = netns_of(up, "secure/resolver");
    let resolved = getent(&resolver, "web.shop.svc.cluster.local");
    assert_eq!(resolved.as_deref(), Some("10.96.7.7"));
    let mute = netns_of(up, "secure/mute");
    // Fully qualified (trailing dot): without it, ndots:5 tries the three search domains first,
    // each waiting out the resolver's timeout.
    assert_eq!(getent(&mute, "web.shop.svc.cluster.local."), None);
    let logs = portcullis(&["testbed", "logs", "--name", name, "secure/mute"]);
    let logs = text(&logs.stdout);
    let line = logs
        .lines()
        .find(|l| {
            l.contains("\"event\":\"connection_denied\"")
                && l.contains("\"dst_ip\":\"10.96.0.10\"")
                && l.contains("\"dst_port\":53,")
        })
        .unwrap_or_else(|| panic!("no denial of 10.96.0.10:53 in the log of secure/mute:\n{logs}"));
    assert!(line.contains("\"protocol\":\"UDP\""), "{line}");
    assert!(
        line.contains("\"service\":\"kube-system/kube-dns\""),
        "{line}"
    );
}

fn apply(name: &str, file: &Path, replace: bool) {
    let mut args = vec![
        "testbed",
        "apply",
        "--name",
        name,
        "-f",
        file.to_str().unwrap(),
    ];
    if replace {
        args.push("--replace");
    }
    let out = portcullis(&args);
    assert!(out.status.success(), "apply failed: {}", text(&out.stderr));
}

/// `n` TCP connections from inside `netns` to `ip:port`, one after the other: for each, the
/// identity the server answered with, or `none`.
fn connect_many(netns: &str, ip: &str, port: u16, n: usize) -> Vec<String> {
    let script = format!(
        "for i in $(seq {n}); do \
           r=$(timeout 3 bash -c 'exec 3<>/dev/tcp/{ip}/{port} && echo probe >&3 && head -n1 <&3' 2>/dev/null); \
           echo \"${{r:-none}}\"; \
         done"
    );
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "bash", "-c", &script])
        .output()
        .expect("run bash");
    text(&out.stdout).lines().map(str::to_string).collect()
}

fn tally(answers: &[String]) -> BTreeMap<String, usize> {
    let mut by = BTreeMap::new();
    for a in answers {
        *by.entry(a.clone()).or_insert(0) += 1;
    }
    by
}

/// Waits (at most 5 s) until a connection to `ip:80` from `netns` is answered: a new Service
/// reaches the proxies through the controller's stream.
fn wait_until_answered(netns: &str, ip: &str) {
    for _ in 0..50 {
        if connect_many(netns, ip, 80, 1).iter().all(|a| a != "none") {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("{ip}:80 not answered from {netns} within 5 s");
}

/// The network namespace of `pod`, from `testbed up`'s listing.
fn netns_of(up: &Output, pod: &str) -> String {
    let out = text(&up.stdout);
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{pod} ")))
        .unwrap_or_else(|| panic!("{pod} not in {out}"));
    let mut words = line.split_whitespace();
    words
        .by_ref()
        .find(|w| *w == "netns")
        .expect("a netns column");
    words.next().unwrap().to_string()
}

/// `getent hosts NAME` inside a pod's network namespace (its /etc/resolv.conf is the one the
/// testbed wrote): the first address, or `None` when the name does not resolve.
fn getent(netns: &str, name: &str) -> Option<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "getent", "hosts", name])
        .output()
        .expect("run getent");
    out.status.success().then(|| {
        text(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string()
    })
}

/// Dual-stack on real sockets: pods with an IPv6 address beside their IPv4 one (and one
/// without), a Service with a ClusterIP in each family, an IPv6-only one and a headless one;
/// an ingress `ipBlock` on IPv6 and a named port, a default-deny egress that allows DNS and an
/// IPv6 block. Every probe over both families, TCP and UDP, pod to pod and through every
/// ClusterIP, must equal the prediction; the IPv6 block admits the IPv6 peer and not its IPv4
/// address; DNS answers AAAA under the default-deny egress.
#[test]
fn dual_stack_pods_services_dns_and_ip_blocks_on_real_sockets() {
    require_root();
    build_components();
    let name = unique("ds");
    let name = name.as_str();
    let dir = std::env::temp_dir().join(format!("pc-tb-{name}"));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let manifests = "
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Namespace
metadata: {name: secure}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop, labels: {app: client}}
spec: {containers: [{name: c, image: i}]}
status: {podIP: 10.3.0.1, podIPs: [{ip: 10.3.0.1}, {ip: 'fd00:10::a03:1'}]}
---
apiVersion: v1
kind: Pod
metadata: {name: old, namespace: shop, labels: {app: old}}
spec: {containers: [{name: c, image: i}]}
status: {podIP: 10.3.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: api-1, namespace: secure, labels: {app: api}}
spec: {containers: [{name: c, image: i, ports: [{name: http, containerPort: 8080}]}]}
status: {podIP: 'fd00:10::a04:1', podIPs: [{ip: 'fd00:10::a04:1'}, {ip: 10.4.0.1}]}
---
apiVersion: v1
kind: Pod
metadata: {name: api-2, namespace: secure, labels: {app: api}}
spec: {containers: [{name: c, image: i, ports: [{name: http, containerPort: 8080}]}]}
status: {podIP: 10.4.0.2, podIPs: [{ip: 10.4.0.2}, {ip: 'fd00:10::a04:2'}]}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: secure}
spec:
  ipFamilyPolicy: PreferDualStack
  selector: {app: api}
  ports: [{name: t, port: 80, targetPort: http}, {name: u, port: 81, protocol: UDP, targetPort: 8081}]
---
apiVersion: v1
kind: Service
metadata: {name: api6, namespace: secure}
spec: {ipFamilies: [IPv6], selector: {app: api}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: pods, namespace: secure}
spec: {clusterIP: None, ipFamilyPolicy: RequireDualStack, selector: {app: api}, ports: [{port: 80}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: api-in, namespace: secure}
spec:
  podSelector: {matchLabels: {app: api}}
  ingress:
    - from: [{ipBlock: {cidr: 'fd00:10::a03:0/112', except: ['fd00:10::a03:2/128']}}]
      ports: [{port: http}, {port: 8081, protocol: UDP}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-out, namespace: shop}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
    - to: [{namespaceSelector: {}, podSelector: {matchLabels: {k8s-app: kube-dns}}}]
      ports: [{port: 53, protocol: UDP}, {port: 53, protocol: TCP}]
    - to: [{ipBlock: {cidr: 'fd00:10::/96'}}]
";
    fs::write(dir.join("cluster.yaml"), manifests).unwrap();
    let _guard = Testbed(name.to_string());
    let up = portcullis(&[
        "testbed",
        "up",
        "--name",
        name,
        "-f",
        dir.join("cluster.yaml").to_str().unwrap(),
    ]);
    assert!(
        up.status.success(),
        "up failed: {}{}",
        text(&up.stdout),
        text(&up.stderr)
    );
    let probe = portcullis(&[
        "testbed",
        "probe",
        "--name",
        name,
        "--probe",
        "8080/TCP,8081/UDP",
        "-o",
        "json",
    ]);
    assert!(
        probe.status.success(),
        "observed differs from predicted:\n{}\n{}",
        text(&probe.stderr),
        text(&probe.stdout)
    );
    let observed = cells(&text(&probe.stdout));
    let cell = |from: &str, to: &str, port: u64, proto: &str, family: &str| {
        let key = (from.into(), to.into(), port, proto.into(), family.into());
        observed.get(&key).copied()
    };
    // The IPv6 block admits the client's IPv6 address, not its IPv4 one; named port included.
    for api in ["secure/api-1", "secure/api-2"] {
        assert_eq!(cell("shop/client", api, 8080, "TCP", "IPv6"), Some(true));
        assert_eq!(cell("shop/client", api, 8080, "TCP", "IPv4"), Some(false));
        assert_eq!(cell("shop/client", api, 8081, "UDP", "IPv6"), Some(true));
        assert_eq!(cell("shop/client", api, 8081, "UDP", "IPv4"), Some(false));
        // An IPv4-only pod is probed over IPv4 only.
        assert_eq!(cell("shop/old", api, 8080, "TCP", "IPv4"), Some(false));
        assert_eq!(cell("shop/old", api, 8080, "TCP", "IPv6"), None);
    }
    let v: serde_json::Value = serde_json::from_str(&text(&probe.stdout)).unwrap();
    let services = v["services"].as_array().unwrap();
    let v6_answered: Vec<String> = services
        .iter()
        .filter(|c| c["from"] == "shop/client" && c["cluster_ip"].as_str().unwrap().contains(':'))
        .map(|c| format!("{} {} {}", c["service"], c["protocol"], c["outcome"]))
        .collect();
    assert_eq!(
        v6_answered,
        [
            "\"secure/api\" \"TCP\" \"answered\"",
            "\"secure/api\" \"UDP\" \"answered\"",
            "\"secure/api6\" \"TCP\" \"answered\""
        ],
        "{services:?}"
    );
    // DNS under the client's default-deny egress: AAAA for the ClusterIPs and the headless pods.
    let client = netns_of(&up, "shop/client");
    let six = |host: &str| -> Vec<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &client, "getent", "ahostsv6", host])
            .output()
            .expect("run getent");
        let mut ips: Vec<String> = text(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect();
        ips.sort();
        ips.dedup();
        ips
    };
    let api = six("api.secure.svc.cluster.local.");
    assert!(
        api.len() == 1 && api[0].starts_with("fd00:10:96::"),
        "{api:?}"
    );
    assert_eq!(
        six("pods.secure.svc.cluster.local."),
        ["fd00:10::a04:1", "fd00:10::a04:2"]
    );
    let _ = fs::remove_dir_all(&dir);
}
