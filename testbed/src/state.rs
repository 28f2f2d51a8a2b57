//! The testbed's state file (`state.json` in its directory): its pods, their namespaces and
//! processes, the controller and DNS; and the cluster the proxies currently see.

use std::collections::BTreeSet;
use std::fs;
use std::net::{IpAddr, Ipv6Addr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::error::{Context, Error, Result};
use portcullis_policy::matrix::Probe;
use portcullis_policy::service::ServiceMap;
use portcullis_policy::{compile, Cluster, CompiledCluster};
use serde::{Deserialize, Serialize};

use crate::guard::GuardState;
use crate::nodes::{HostPodState, NodeState};
use crate::{ports, serve, services, SYSTEM_SERVICES};

/// Where a testbed keeps its state, logs and the policy directory its proxies watch.
pub fn state_dir(name: &str) -> PathBuf {
    PathBuf::from("/run/portcullis/testbed").join(name)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodState {
    /// `namespace/name`
    pub key: String,
    pub netns: String,
    /// Its IPv4 address (`status.podIP`).
    pub ip: IpAddr,
    /// Its IPv6 address, when `status.podIPs` gives one (a dual-stack pod).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
    /// Its port on the node's bridge (the host-side veth) and the MAC of its `eth0`, as the
    /// CNI set them up (empty in a state written before they were recorded).
    #[serde(default)]
    pub port: String,
    #[serde(default)]
    pub mac: String,
    pub pids: Vec<u32>,
    pub proxy_log: PathBuf,
    /// Whether the pod runs portcullis-init and portcullis-proxy (see `inject.rs`).
    #[serde(default = "yes")]
    pub injected: bool,
    /// Why it does not, when it does not.
    #[serde(default)]
    pub not_injected: Option<String>,
    /// Whether its init rules and proxy enforce UDP and SCTP (NFQUEUE; `up --enforce-udp`).
    #[serde(default)]
    pub enforces_udp: bool,
    /// Where its server reports the ports it listens on ([`serve::Bound`]).
    pub bound: PathBuf,
    /// Added by the testbed itself (the cluster DNS), not by the manifests: left out of the
    /// pod-to-pod probes.
    #[serde(default)]
    pub system: bool,
    /// The namespace of its node, when the testbed has several (`nodes.rs`); empty: the
    /// single node (`State::node_netns`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
}

pub(crate) fn yes() -> bool {
    true
}

/// An IP family, as Kubernetes spells it (`ipFamilies`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Family {
    IPv4,
    IPv6,
}

impl Family {
    pub fn of(ip: IpAddr) -> Family {
        if ip.is_ipv4() {
            Family::IPv4
        } else {
            Family::IPv6
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Family::IPv4 => "IPv4",
            Family::IPv6 => "IPv6",
        })
    }
}

impl PodState {
    /// Its address in `family`, if it has one.
    pub fn addr(&self, family: Family) -> Option<IpAddr> {
        match family {
            Family::IPv4 => Some(self.ip),
            Family::IPv6 => self.ipv6.map(IpAddr::V6),
        }
    }

    /// Every address it has: IPv4, then IPv6.
    pub fn addrs(&self) -> Vec<IpAddr> {
        [Family::IPv4, Family::IPv6]
            .into_iter()
            .filter_map(|f| self.addr(f))
            .collect()
    }

    /// The ports its server listens on, as it last reported them.
    pub fn bound(&self) -> serve::Bound {
        fs::read(&self.bound)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub name: String,
    pub node_netns: String,
    pub pods: Vec<PodState>,
    /// The policy directory (read by the controller, or by every proxy with `--policy-source
    /// dir`): `cluster/` (files given to `up`) and `applied/` (later).
    pub policy_dir: PathBuf,
    #[serde(default)]
    pub controller: Option<ControllerState>,
    /// The ports every pod's server is asked to serve (JSON list, read by `serve`).
    pub wanted_ports: PathBuf,
    /// `--probe` given to `up`: served, and probed by default, whatever the manifests say.
    #[serde(default)]
    pub extra_probes: Vec<Probe>,
    /// The cluster DNS the testbed runs (`dns.rs`), unless the manifests bring their own.
    #[serde(default)]
    pub dns: Option<DnsState>,
    /// `up --enforce-udp`.
    #[serde(default)]
    pub enforce_udp: bool,
    /// `up --node-guard`: portcullis-node-guard in the node namespace.
    #[serde(default)]
    pub node_guard: Option<GuardState>,
    /// Every node, when the pods sit on several (`nodes.rs`; the first is `node_netns`);
    /// empty with a single node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeState>,
    /// The host-network pods, each serving in its node's namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_pods: Vec<HostPodState>,
}

/// dnsmasq in the DNS pod.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DnsState {
    pub pid: u32,
    /// The hosts file it serves (every Service's name).
    pub hosts: PathBuf,
}

impl State {
    pub fn load(name: &str) -> Result<State> {
        let path = state_dir(name).join("state.json");
        let text = fs::read_to_string(&path)
            .with_context(|| format!("no testbed named {name:?} is up (no {})", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is corrupt", path.display()))
    }

    pub(crate) fn save(&self) -> Result<()> {
        let path = state_dir(&self.name).join("state.json");
        fs::write(&path, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("cannot write {}", path.display()))
    }

    pub fn pod(&self, key: &str) -> Result<&PodState> {
        self.pods.iter().find(|p| p.key == key).ok_or_else(|| {
            Error::Usage(format!(
                "pod {key} is not in testbed {} (write NAMESPACE/POD)",
                self.name
            ))
        })
    }

    /// Every manifest the proxies currently see.
    pub fn manifest_paths(&self) -> Vec<PathBuf> {
        vec![self.policy_dir.clone()]
    }

    /// The cluster the proxies currently see, compiled, with its Services resolved; fails on
    /// any error in the manifests.
    pub fn snapshot(&self) -> Result<Snapshot> {
        Snapshot::of(load_cluster(&self.manifest_paths())?)
    }

    /// Every port a pod could be probed on now (manifests as applied, plus `up --probe`).
    pub fn port_set(&self, snapshot: &Snapshot) -> ports::PortSet {
        let mut services = snapshot.services.clone();
        services
            .services
            .retain(|k, _| !SYSTEM_SERVICES.contains(&k.as_str()));
        ports::probe_ports(&snapshot.compiled, &services, &self.extra_probes)
    }

    /// Asks every pod's server to also serve `probes`, and waits until each has tried them.
    pub fn ensure_served(&self, probes: &[Probe]) -> Result<()> {
        let mut wanted: BTreeSet<Probe> = fs::read(&self.wanted_ports)
            .ok()
            .and_then(|b| serde_json::from_slice::<Vec<Probe>>(&b).ok())
            .unwrap_or_default()
            .into_iter()
            .collect();
        let before = wanted.len();
        wanted.extend(probes.iter().copied());
        if wanted.len() != before || !self.wanted_ports.exists() {
            let list: Vec<Probe> = wanted.iter().copied().collect();
            serve::write_atomically(&self.wanted_ports, &serde_json::to_vec(&list)?)?;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for pod in &self.pods {
            while !wanted.iter().all(|p| pod.bound().knows(*p)) {
                if Instant::now() > deadline {
                    return Err(Error::Timeout(format!(
                        "the server of {} did not start listening within 10s (see {})",
                        pod.key,
                        pod.bound.with_extension("log").display()
                    )));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }
}

/// The manifests the proxies see, compiled, and their Services resolved.
pub struct Snapshot {
    pub cluster: Cluster,
    pub compiled: CompiledCluster,
    pub services: ServiceMap,
}

impl Snapshot {
    pub(crate) fn of(cluster: Cluster) -> Result<Snapshot> {
        let compiled = compile(&cluster);
        if !compiled.errors.is_empty() {
            let errors: Vec<String> = compiled.errors.iter().map(|e| e.to_string()).collect();
            return Err(Error::Manifests(format!(
                "the manifests have errors:\n  {}",
                errors.join("\n  ")
            )));
        }
        services::check_cluster_ips(&cluster)?;
        let services = ServiceMap::from_cluster(&cluster);
        Ok(Snapshot {
            cluster,
            compiled,
            services,
        })
    }
}

/// Reads manifests into a cluster, failing on any error (the testbed runs only what is valid).
pub(crate) fn load_cluster(paths: &[PathBuf]) -> Result<Cluster> {
    let loaded = portcullis_policy_loader::load_paths(paths);
    if !loaded.errors.is_empty() {
        return Err(Error::Manifests(format!(
            "the manifests have errors:\n  {}",
            loaded.errors.join("\n  ")
        )));
    }
    Ok(loaded.cluster)
}

/// The controller of a testbed, running in the node namespace.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ControllerState {
    pub pid: u32,
    pub log: PathBuf,
}
