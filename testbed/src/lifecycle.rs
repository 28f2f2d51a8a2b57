//! Bringing a testbed up (in steps, removing everything on failure), applying manifests while
//! it runs, waiting for the proxies to converge, and taking it down.

use std::collections::BTreeSet;
use std::fs;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use portcullis_injector::decision::{SidecarEnv, Sidecars};
use portcullis_injector::values::Switch;
use portcullis_injector::InjectorConfig;
use portcullis_policy::matrix::Probe;
use portcullis_policy::service::ServiceMap;
use portcullis_policy::{compile, Cluster, PodInfo};

use crate::controller::start_controller;
use crate::dnsmasq::{add_cluster_dns, refresh_dns, start_dns};
use crate::manifests::{
    cluster_ips_in, collect, copy_with_cluster_ips, make_world_readable, prepare_policy_dir,
};
use crate::pods::{create_node, gateway_of, plumb_pod, testbed_pods};
use crate::queries::admin_get;
use crate::sidecars::start_pod;
use crate::state::load_cluster;
use crate::{
    dns, guard, inject, netns, nodes, serve, services, state_dir, PolicySource, State, UpOptions,
    PREFIX,
};

pub(crate) fn require_root() -> Result<()> {
    if !netns::is_root() {
        return Err(Error::Environment("the testbed needs root: it creates network namespaces, veth pairs and iptables rules (run it with sudo)".into()));
    }
    Ok(())
}

/// Brings a testbed up. On failure, removes whatever it had created.
pub fn up(opts: &UpOptions) -> Result<State> {
    require_root()?;
    let dir = state_dir(&opts.name);
    if dir.join("state.json").exists() || !netns::list_with_prefix(&prefix(&opts.name)).is_empty() {
        return Err(Error::Usage(format!(
            "testbed {:?} is already up; run `portcullis testbed down --name {}` first",
            opts.name, opts.name
        )));
    }
    match build(opts) {
        Ok(state) => Ok(state),
        Err(e) => {
            down(&opts.name);
            Err(e)
        }
    }
}

pub(crate) fn prefix(name: &str) -> String {
    format!("{PREFIX}{name}-")
}

/// The steps of `up`: policy directory, node, pods' plumbing, controller, pods' processes.
pub(crate) fn build(opts: &UpOptions) -> Result<State> {
    let dir = state_dir(&opts.name);
    let policy_dir = prepare_policy_dir(&dir, &opts.files)?;
    let dns_added = add_cluster_dns(&policy_dir)?;
    let (cluster, node_plan) = load_with_nodes(&opts.name, &policy_dir)?;
    let manifests = inject::Manifests::read(std::slice::from_ref(&policy_dir));
    let injector = InjectorConfig {
        enforce_udp: Switch(opts.enforce_udp),
        service_cidrs: crate::services::service_cidrs(),
        ..InjectorConfig::default()
    };
    let node = create_nodes(&opts.name, &node_plan)?;
    let mut state = State {
        name: opts.name.clone(),
        node_netns: node.clone(),
        pods: Vec::new(),
        policy_dir: policy_dir.clone(),
        controller: None,
        wanted_ports: dir.join("ports.json"),
        extra_probes: opts.extra_probes.clone(),
        enforce_udp: opts.enforce_udp,
        dns: None,
        node_guard: None,
        nodes: node_plan,
        host_pods: Vec::new(),
    };
    let pods: Vec<&PodInfo> = testbed_pods(&cluster);
    let mut gateways: BTreeSet<String> = BTreeSet::new();
    let mut sidecars = Vec::new();
    for (i, pod) in pods.iter().enumerate() {
        let home = nodes::node_of(&state.nodes, &node, pod).to_string();
        let mut ps = plumb_pod(&home, &prefix(&opts.name), i, pod, &mut gateways, &dir)?;
        if !state.nodes.is_empty() {
            ps.node = home;
        }
        match inject::decide(&cluster, &manifests, &injector, &pod.namespace, &ps.key) {
            Sidecars::Injected(env) => {
                ps.enforces_udp = env.enforce_udp;
                sidecars.push(Some(env));
            }
            Sidecars::NotInjected(why) => {
                ps.injected = false;
                ps.not_injected = Some(why);
                sidecars.push(None);
            }
        }
        ps.system = dns_added && ps.key == dns::POD_KEY;
        if dns_added {
            dns::write_resolv_conf(&ps.netns, &pod.namespace)?;
        }
        state.pods.push(ps);
    }
    nodes::route_pods(&state.nodes, &state.pods)?;
    let snapshot = state.snapshot()?;
    install_services(&state, &snapshot.services)?;
    if dns_added {
        let d = start_dns(&state, &snapshot, &dir)?;
        if let Some(p) = state.pods.iter_mut().find(|p| p.key == dns::POD_KEY) {
            p.pids.push(d.pid);
        }
        state.dns = Some(d);
    }
    let set = state.port_set(&snapshot);
    for note in &set.notes {
        eprintln!("note: {note}");
    }
    let wanted: Vec<Probe> = set.ports.iter().copied().collect();
    serve::write_atomically(&state.wanted_ports, &serde_json::to_vec(&wanted)?)?;
    state.save()?;
    start_node_processes(opts, &mut state, &dir)?;
    start_pods(opts, &mut state, &pods, &sidecars)?;
    let host_pods = nodes::host_network_pods(&cluster);
    state.host_pods = nodes::start_host_pods(&state.nodes, &node, &host_pods, &dir)?;
    state.save()?;
    wait_ready(&state, Duration::from_secs(30))?;
    state.ensure_served(&wanted)?;
    Ok(state)
}

/// The manifests' cluster, and its nodes when there are several (with a Node object written
/// for each node address no Node claims).
fn load_with_nodes(name: &str, policy_dir: &Path) -> Result<(Cluster, Vec<nodes::NodeState>)> {
    let cluster = load_cluster(&[policy_dir.to_path_buf()])?;
    let node_plan = nodes::plan(&prefix(name), &cluster.pods);
    if nodes::synthesise_nodes(policy_dir, &cluster, &node_plan)? {
        return Ok((load_cluster(&[policy_dir.to_path_buf()])?, node_plan));
    }
    Ok((cluster, node_plan))
}

/// The node namespace (the first node's), the other nodes' and the LAN between them.
fn create_nodes(name: &str, node_plan: &[nodes::NodeState]) -> Result<String> {
    let node = nodes::node_netns(&prefix(name), 0);
    create_node(&node)?;
    for other in node_plan.iter().skip(1) {
        create_node(&other.netns)?;
    }
    nodes::connect(&prefix(name), node_plan)?;
    Ok(node)
}

/// Every pod's processes (`sidecars`: the injector's environment of each, if injected).
fn start_pods(
    opts: &UpOptions,
    state: &mut State,
    pods: &[&PodInfo],
    sidecars: &[Option<SidecarEnv>],
) -> Result<()> {
    let first_node = state.nodes.first().map(|n| n.address.to_string());
    let node = state.node_netns.clone();
    for ((pod, info), env) in state.pods.iter_mut().zip(pods).zip(sidecars) {
        // The node's address on the pod's side of the bridge, as a Service would route it; on
        // another node, the first node's address (where the controller runs).
        let controller = match &first_node {
            Some(first) if !pod.node.is_empty() && pod.node != node => first.clone(),
            _ => gateway_of(info),
        };
        start_pod(
            opts,
            pod,
            info,
            env.as_ref(),
            &state.wanted_ports,
            &state.policy_dir,
            &controller,
        )?;
    }
    state.save()
}

/// The node's own processes, before any process of a pod runs: the node guard (every pod
/// port bound, an unlisted one mute, from the pods' first packet on, as on a node where the
/// guard runs before the pods) and the controller.
fn start_node_processes(opts: &UpOptions, state: &mut State, dir: &Path) -> Result<()> {
    if opts.node_guard {
        guard::start_all(opts, state, dir)?;
    }
    if opts.policy_source == PolicySource::Controller {
        let controller = start_controller(opts, &state.node_netns, &state.policy_dir, dir)?;
        state.controller = Some(controller);
        state.save()?;
    }
    Ok(())
}

/// Adds manifests to the proxies' policy directory (`replace`: drop earlier applied ones first).
/// The proxies notice by themselves; this waits until every one serves the expected table.
pub fn apply(state: &State, files: &[PathBuf], replace: bool, timeout: Duration) -> Result<()> {
    let applied = state.policy_dir.join("applied");
    // Write into a staging directory, then swap it in with one rename, so that a proxy never
    // sees half of a change.
    let staging = state.policy_dir.join(".staging");
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(&staging)?;
    if !replace {
        for entry in fs::read_dir(&applied)? {
            let p = entry?.path();
            if let Some(name) = p.file_name() {
                fs::copy(&p, staging.join(name))?;
            }
        }
    }
    let offset = fs::read_dir(&staging)?.count();
    let mut found = Vec::new();
    for f in files {
        collect(f, &mut found)?;
    }
    let mut known = vec![state.policy_dir.join("cluster"), staging.clone()];
    known.extend(found.iter().cloned());
    let mut taken = cluster_ips_in(&known);
    copy_with_cluster_ips(&found, &staging, offset, &mut taken)?;
    make_world_readable(&staging)?;
    let old = state.policy_dir.join(".old");
    let _ = fs::remove_dir_all(&old);
    fs::rename(&applied, &old)?;
    fs::rename(&staging, &applied)?;
    let _ = fs::remove_dir_all(&old);
    // New policies and Services may name new ports: every pod serves them too; the node's
    // Service rules and the DNS's names follow the new Services and endpoints.
    let snapshot = state.snapshot()?;
    install_services(state, &snapshot.services)?;
    refresh_dns(state, &snapshot)?;
    let set = state.port_set(&snapshot);
    for note in &set.notes {
        eprintln!("note: {note}");
    }
    state.ensure_served(&set.ports.iter().copied().collect::<Vec<_>>())?;
    wait_converged(state, timeout)
}

/// kube-proxy's rules for `services` on every node.
fn install_services(state: &State, services: &ServiceMap) -> Result<()> {
    let dir = state_dir(&state.name);
    for node in state.node_namespaces() {
        services::install(node, services, &dir)?;
    }
    Ok(())
}

/// Waits until every proxy serves, on `/policy`, the table this process compiles from the same
/// directory.
pub fn wait_converged(state: &State, timeout: Duration) -> Result<()> {
    let loaded = portcullis_policy_loader::load_paths(&state.manifest_paths());
    if !loaded.errors.is_empty() {
        return Err(Error::Manifests(format!(
            "the manifests have errors:\n  {}",
            loaded.errors.join("\n  ")
        )));
    }
    let compiled = compile(&loaded.cluster);
    let deadline = Instant::now() + timeout;
    for pod in state.pods.iter().filter(|p| p.injected) {
        let Some(expected) = compiled.table(&pod.key) else {
            continue;
        };
        let want = serde_json::to_value(&**expected)?;
        loop {
            let served = admin_get(&pod.netns, "/policy")
                .ok()
                .and_then(|(status, body)| {
                    (status == 200)
                        .then(|| serde_json::from_str::<serde_json::Value>(&body).ok())
                        .flatten()
                });
            if let Some(served) = served.and_then(|v| v.get("table").cloned()) {
                if served == want {
                    break;
                }
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout(format!("the proxy of {} did not load the new policy within {timeout:?} (see `portcullis testbed logs {}`)", pod.key, pod.key)));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

pub(crate) fn wait_ready(state: &State, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    for pod in state.pods.iter().filter(|p| p.injected) {
        loop {
            if matches!(admin_get(&pod.netns, "/ready"), Ok((200, _))) {
                break;
            }
            if Instant::now() > deadline {
                let log = fs::read_to_string(&pod.proxy_log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(10).collect();
                return Err(Error::Timeout(format!(
                    "the proxy of {} is not ready after {timeout:?}; last log lines:\n{}",
                    pod.key,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

/// Stops every process and deletes every namespace of the testbed, also after a crash (it
/// finds leftovers by name prefix). Never fails: it removes what it can.
pub fn down(name: &str) -> Vec<String> {
    let mut removed = Vec::new();
    if let Ok(state) = State::load(name) {
        // The node's processes (controller, node guard), then every pod's.
        let node = state.controller.iter().map(|c| &c.pid);
        let node = node.chain(state.node_guard.iter().map(|g| &g.pid));
        let node = node.chain(
            state
                .nodes
                .iter()
                .filter_map(|n| n.guard.as_ref().map(|g| &g.pid)),
        );
        let node = node.chain(state.host_pods.iter().map(|h| &h.pid));
        for pid in node.chain(state.pods.iter().flat_map(|p| &p.pids)) {
            // Negative pid: the whole process group (ip netns exec, setpriv and the child).
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(-(*pid as i32)),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    for ns in netns::list_with_prefix(&prefix(name)) {
        // With the processes still inside (e.g. after a crash of `up`).
        netns::purge(&ns);
        let _ = fs::remove_dir_all(dns::etc_dir(&ns));
        removed.push(ns);
    }
    let _ = fs::remove_dir_all(state_dir(name));
    removed
}
