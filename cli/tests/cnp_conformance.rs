//! The upstream ClusterNetworkPolicy conformance suite (`policy/tests/cnp-conformance/`, read
//! through `portcullis_policy::conformance`) on real sockets: the testbed brought up once from
//! `base.yaml` (two nodes, host-network `centaur` pods, the node guard on each node), then
//! every test's steps applied live in order (`testbed apply --replace`: the step's objects,
//! and the Namespaces it does not relabel with their `base.yaml` labels), and every TCP and UDP
//! probe sent from the client pod to the server's address; SCTP probes (no SCTP sockets on this
//! kernel) through the compiled tables of both ends, as `policy/tests/cnp_vectors.rs` does.
//! Needs root.

use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use portcullis_policy::conformance::{self, base_namespaces_not_in, documents, kind_and_name};
use portcullis_policy::conformance::{Step, VectorProbe};
use portcullis_policy::{compile, Direction, Protocol};
use portcullis_testbed::State;

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

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Takes the testbed down when the test ends, however it ends.
struct Testbed(String);

impl Drop for Testbed {
    fn drop(&mut self) {
        let _ = portcullis(&["testbed", "down", "--name", &self.0]);
    }
}

/// The address a probe to `key` goes to: the pod's IP, or a host-network pod's node address.
fn address_of(state: &State, key: &str) -> IpAddr {
    if let Some(h) = state.host_pods.iter().find(|h| h.key == key) {
        return h.ip;
    }
    state.pod(key).expect("a pod of the testbed").ip
}

/// What the compiled tables of both ends say about an SCTP probe (a host-network server has
/// no table: only the client's egress decides).
fn through_the_engine(state: &State, p: &VectorProbe) -> bool {
    let loaded = portcullis_policy_loader::load_paths(&state.manifest_paths());
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let compiled = compile(&loaded.cluster);
    let (from, to) = (address_of(state, &p.from), address_of(state, &p.to));
    let egress = compiled
        .table(&p.from)
        .expect("the client's table")
        .check(Direction::Egress, to, p.port, p.protocol)
        .allowed();
    let ingress = compiled
        .table(&p.to)
        .filter(|_| state.host_pods.iter().all(|h| h.key != p.to))
        .is_none_or(|t| {
            t.check(Direction::Ingress, from, p.port, p.protocol)
                .allowed()
        });
    egress && ingress
}

/// The probes of a step on real sockets, all at once: whether each got the server's identity.
fn on_real_sockets(state: &State, probes: &[&VectorProbe]) -> Vec<Result<bool, String>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = probes
            .iter()
            .map(|p| {
                s.spawn(move || {
                    let addr = SocketAddr::new(address_of(state, &p.to), p.port);
                    let answers =
                        portcullis_testbed::connect_from(state, &p.from, addr, p.protocol, 1)
                            .map_err(|e| e.to_string())?;
                    Ok(matches!(answers.first(), Some(Ok(id)) if *id == p.to))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("probe thread"))
            .collect()
    })
}

/// One step: applied live, then probed. Returns (passed, failures).
fn run_step(name: &str, base: &str, test: &str, step: &Step, dir: &Path) -> (usize, Vec<String>) {
    let mut text = step.objects.clone();
    for ns in base_namespaces_not_in(base, &step.objects) {
        text.push_str("\n---\n");
        text.push_str(ns);
    }
    let file = dir.join(format!("{test}.yaml"));
    fs::write(&file, text).unwrap();
    ok(
        portcullis(&[
            "testbed",
            "apply",
            "--name",
            name,
            "--replace",
            "-f",
            file.to_str().unwrap(),
        ]),
        "testbed apply",
    );
    let state = State::load(name).expect("testbed state");
    let (sockets, engine): (Vec<&VectorProbe>, Vec<&VectorProbe>) = step
        .probes
        .iter()
        .partition(|p| matches!(p.protocol, Protocol::Tcp | Protocol::Udp));
    let mut passed = 0;
    let mut failures = Vec::new();
    let results = on_real_sockets(&state, &sockets);
    let engine_results = engine.iter().map(|p| Ok(through_the_engine(&state, p)));
    for (p, got) in sockets
        .iter()
        .chain(&engine)
        .zip(results.into_iter().chain(engine_results))
    {
        match got {
            Ok(allowed) if allowed == p.allowed => passed += 1,
            got => failures.push(format!(
                "{}: {} -> {} {}/{}: expected {}, got {got:?}",
                step.dir.display(),
                p.from,
                p.to,
                p.port,
                p.protocol,
                p.allowed
            )),
        }
    }
    (passed, failures)
}

#[test]
fn upstream_cnp_conformance_on_real_sockets() {
    portcullis_netns::testing::require_root(
        "this test builds network namespaces and iptables rules",
    );
    portcullis_netns::testing::build_testbed_components(env!("CARGO"), &repo());
    let started = Instant::now();
    let base = conformance::base().unwrap();
    let tests = conformance::tests().unwrap();
    let name = format!("cnp{}", std::process::id());
    let dir = std::env::temp_dir().join(format!("portcullis-{name}"));
    fs::create_dir_all(&dir).unwrap();
    // The Namespaces come with each step (a later file cannot relabel one `up` was given).
    let pods_and_nodes: Vec<&str> = documents(&base)
        .into_iter()
        .filter(|d| kind_and_name(d).0 != Some("Namespace"))
        .collect();
    let base_file = dir.join("base.yaml");
    fs::write(&base_file, pods_and_nodes.join("\n---\n")).unwrap();
    let _bed = Testbed(name.clone());
    ok(
        portcullis(&[
            "testbed",
            "up",
            "--name",
            &name,
            "--node-guard",
            "--probe",
            "80/TCP,8080/TCP,53/UDP,5353/UDP",
            "-f",
            base_file.to_str().unwrap(),
        ]),
        "testbed up",
    );
    let up = started.elapsed();
    let state = State::load(&name).unwrap();
    assert_eq!(state.nodes.len(), 2, "one node namespace per hostIP");
    assert_eq!(state.host_pods.len(), 2, "the centaur pods serve");
    let (mut total, mut passed, mut on_sockets) = (0, 0, 0);
    let mut failures = Vec::new();
    for test in &tests {
        for step in &test.steps {
            total += step.probes.len();
            on_sockets += step
                .probes
                .iter()
                .filter(|p| matches!(p.protocol, Protocol::Tcp | Protocol::Udp))
                .count();
            let (p, f) = run_step(&name, &base, &test.name, step, &dir);
            passed += p;
            failures.extend(f);
        }
    }
    let _ = fs::remove_dir_all(&dir);
    println!(
        "cnp conformance: {passed} of {total} probes passed ({on_sockets} TCP/UDP on real sockets, {} SCTP through the engine); testbed up in {:.1}s, all in {:.1}s",
        total - on_sockets,
        up.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!((tests.len(), total, passed), (24, 301, 301));
}
