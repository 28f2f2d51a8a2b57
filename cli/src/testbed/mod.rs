//! `portcullis testbed`: a cluster built from manifests out of network namespaces on this
//! machine — a "node" namespace that routes between the pods, one namespace per pod with its
//! `status.podIP`, and in each pod a small server (`serve.rs`) on every port the pod could be
//! probed on (`ports.rs`), behind the real `portcullis-init` and `portcullis-proxy` unless the pod
//! is not injected (`inject.rs`). `probe.rs` probes it and predicts what it should see. Nothing
//! outside the testbed's namespaces is touched.

pub mod dns;
pub mod inject;
pub mod netns;
pub mod ports;
pub mod probe;
pub mod serve;
pub mod services;

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use portcullis_policy::matrix::Probe;
use portcullis_policy::service::ServiceMap;
use portcullis_policy::{compile, Cluster, CompiledCluster, PodInfo};
use serde::{Deserialize, Serialize};

/// Every name the testbed creates starts with this.
pub const PREFIX: &str = "pc-tb-";
pub const PROXY_UID: u32 = 2171;
/// The proxy's packet mark, as the injector sets it when the proxy has NET_ADMIN (UDP
/// enforced): `PORTCULLIS_PROXY_MARK` for init and proxy (docs/CONVENTIONS.md).
pub const PROXY_MARK: &str = "0x1000";
pub const ADMIN_PORT: u16 = 4191;
/// The node's address on the bridge for pods without a `status.hostIP`.
const FALLBACK_GATEWAY: &str = "169.254.1.1";

/// Services the testbed runs itself and `probe` does not probe for a name (the cluster DNS
/// answers DNS, not the testbed's hello).
pub const SYSTEM_SERVICES: [&str; 1] = [dns::SERVICE_KEY];

/// Where a testbed keeps its state, logs and the policy directory its proxies watch.
pub fn state_dir(name: &str) -> PathBuf {
    PathBuf::from("/run/portcullis/testbed").join(name)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodState {
    /// `namespace/name`
    pub key: String,
    pub netns: String,
    pub ip: IpAddr,
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
}

fn yes() -> bool {
    true
}

impl PodState {
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

    fn save(&self) -> Result<()> {
        let path = state_dir(&self.name).join("state.json");
        fs::write(&path, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("cannot write {}", path.display()))
    }

    pub fn pod(&self, key: &str) -> Result<&PodState> {
        self.pods.iter().find(|p| p.key == key).with_context(|| {
            format!(
                "pod {key} is not in testbed {} (write NAMESPACE/POD)",
                self.name
            )
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
                    bail!(
                        "the server of {} did not start listening within 10s (see {})",
                        pod.key,
                        pod.bound.with_extension("log").display()
                    );
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
    fn of(cluster: Cluster) -> Result<Snapshot> {
        let compiled = compile(&cluster);
        if !compiled.errors.is_empty() {
            let errors: Vec<String> = compiled.errors.iter().map(|e| e.to_string()).collect();
            bail!("the manifests have errors:\n  {}", errors.join("\n  "));
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
fn load_cluster(paths: &[PathBuf]) -> Result<Cluster> {
    let loaded = portcullis_policy_loader::load_paths(paths);
    if !loaded.errors.is_empty() {
        bail!(
            "the manifests have errors:\n  {}",
            loaded.errors.join("\n  ")
        );
    }
    Ok(loaded.cluster)
}

/// Where to find the binaries the testbed runs.
pub struct Binaries {
    pub proxy: PathBuf,
    pub init: PathBuf,
    /// Needed only when the proxies get their tables from the controller.
    pub controller: Option<PathBuf>,
}

impl Binaries {
    /// Next to this executable (cargo puts all workspace binaries together), else on PATH.
    pub fn locate(
        proxy: Option<PathBuf>,
        init: Option<PathBuf>,
        controller: Option<PathBuf>,
    ) -> Result<Binaries> {
        let find = |explicit: Option<PathBuf>, name: &str| -> Result<PathBuf> {
            if let Some(p) = explicit {
                return Ok(p);
            }
            let beside = std::env::current_exe()
                .ok()
                .and_then(|e| e.parent().map(|d| d.join(name)));
            if let Some(p) = beside.filter(|p| p.is_file()) {
                return Ok(p);
            }
            for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
                let p = dir.join(name);
                if p.is_file() {
                    return Ok(p);
                }
            }
            bail!("cannot find {name}: build it (cargo build -p {name}) or pass its path")
        };
        Ok(Binaries {
            proxy: find(proxy, "portcullis-proxy")?,
            init: find(init, "portcullis-init")?,
            controller: find(controller, "portcullis-controller").ok(),
        })
    }
}

pub struct UpOptions {
    pub name: String,
    pub files: Vec<PathBuf>,
    pub binaries: Binaries,
    pub proxy_args: Vec<String>,
    pub policy_source: PolicySource,
    /// `--probe`: ports every pod serves (and `probe` probes by default) on top of those the
    /// manifests name.
    pub extra_probes: Vec<Probe>,
    /// `PORTCULLIS_ENFORCE_UDP` for every init container and proxy; when true the proxy gets
    /// CAP_NET_ADMIN (ambient, as the injector gives it) to read the UDP/SCTP queue.
    pub enforce_udp: bool,
}

/// Where the testbed's proxies get their tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PolicySource {
    /// As in a cluster: portcullis-controller (file mode) in the node namespace streams each
    /// proxy its table (`--controller`).
    Controller,
    /// Each proxy reads and compiles the policy directory itself (`--policy-dir`).
    Dir,
}

/// The controller of a testbed, running in the node namespace.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ControllerState {
    pub pid: u32,
    pub log: PathBuf,
}

/// The controller's table API and admin ports inside the node namespace.
pub const CONTROLLER_PORT: u16 = 8443;
pub const CONTROLLER_ADMIN_PORT: u16 = 9990;

fn require_root() -> Result<()> {
    if !netns::is_root() {
        bail!("the testbed needs root: it creates network namespaces, veth pairs and iptables rules (run it with sudo)");
    }
    Ok(())
}

/// Brings a testbed up. On failure, removes whatever it had created.
pub fn up(opts: &UpOptions) -> Result<State> {
    require_root()?;
    let dir = state_dir(&opts.name);
    if dir.join("state.json").exists() || !netns::list_with_prefix(&prefix(&opts.name)).is_empty() {
        bail!(
            "testbed {:?} is already up; run `portcullis testbed down --name {}` first",
            opts.name,
            opts.name
        );
    }
    match build(opts) {
        Ok(state) => Ok(state),
        Err(e) => {
            down(&opts.name);
            Err(e)
        }
    }
}

fn prefix(name: &str) -> String {
    format!("{PREFIX}{name}-")
}

/// The steps of `up`: policy directory, node, pods' plumbing, controller, pods' processes.
fn build(opts: &UpOptions) -> Result<State> {
    let dir = state_dir(&opts.name);
    let policy_dir = prepare_policy_dir(&dir, &opts.files)?;
    let dns_added = add_cluster_dns(&policy_dir)?;
    let cluster = load_cluster(std::slice::from_ref(&policy_dir))?;
    let annotations = inject::Annotations::read(std::slice::from_ref(&policy_dir));
    let node = format!("{}node", prefix(&opts.name));
    create_node(&node)?;
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
    };
    let pods: Vec<&PodInfo> = testbed_pods(&cluster);
    let mut gateways: BTreeSet<String> = BTreeSet::new();
    for (i, pod) in pods.iter().enumerate() {
        let mut ps = plumb_pod(&node, &prefix(&opts.name), i, pod, &mut gateways, &dir)?;
        if let Err(why) = inject::decide(&cluster, &annotations, &pod.namespace, &ps.key) {
            ps.injected = false;
            ps.not_injected = Some(why);
        }
        ps.enforces_udp = ps.injected && opts.enforce_udp;
        ps.system = dns_added && ps.key == dns::POD_KEY;
        if dns_added {
            dns::write_resolv_conf(&ps.netns, &pod.namespace)?;
        }
        state.pods.push(ps);
    }
    let snapshot = state.snapshot()?;
    services::install(&node, &snapshot.services, &dir)?;
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
    if opts.policy_source == PolicySource::Controller {
        state.controller = Some(start_controller(opts, &node, &policy_dir, &dir)?);
        state.save()?;
    }
    for (pod, info) in state.pods.iter_mut().zip(&pods) {
        if pod.injected {
            // Through env(1): the init container reads its settings from the environment.
            let mut init_env = vec![format!("PORTCULLIS_ENFORCE_UDP={}", opts.enforce_udp)];
            init_env.extend(sidecar_env(opts).iter().map(|(k, v)| format!("{k}={v}")));
            init_env.push(opts.binaries.init.to_string_lossy().into_owned());
            let init_env: Vec<&str> = init_env.iter().map(String::as_str).collect();
            netns::exec_in(&pod.netns, "env", &init_env)
                .with_context(|| format!("portcullis-init failed in {}", pod.key))?;
        }
        let pid = start_server(pod, &state.wanted_ports)?;
        pod.pids.push(pid);
        if pod.injected {
            let pid = start_proxy(opts, pod, info, &policy_dir)?;
            pod.pids.push(pid);
        }
    }
    state.save()?;
    wait_ready(&state, Duration::from_secs(30))?;
    state.ensure_served(&wanted)?;
    Ok(state)
}

/// Writes the cluster DNS's pod, Service and namespace into the policy directory (see
/// `dns.rs`), unless the manifests bring their own `kube-system/kube-dns`. Returns whether it did.
fn add_cluster_dns(policy_dir: &Path) -> Result<bool> {
    let user = load_cluster(&[policy_dir.to_path_buf()])?;
    let Some(text) = dns::manifest(&user)? else {
        eprintln!(
            "note: the manifests define {}; the testbed runs no DNS of its own",
            dns::SERVICE_KEY
        );
        return Ok(false);
    };
    let path = policy_dir.join("cluster").join("000-testbed-dns.yaml");
    fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644))?;
    Ok(true)
}

/// Starts dnsmasq in the DNS pod on a hosts file of every Service, and waits until it answers
/// on TCP 53 (its UDP socket is bound before).
fn start_dns(state: &State, snapshot: &Snapshot, dir: &Path) -> Result<DnsState> {
    let pod = state.pod(dns::POD_KEY)?;
    let hosts = dir.join("dns.hosts");
    fs::write(&hosts, dns::hosts(&snapshot.cluster, &snapshot.services))?;
    fs::set_permissions(&hosts, fs::Permissions::from_mode(0o644))?;
    let dnsmasq = Path::new("/usr/sbin/dnsmasq");
    if !dnsmasq.is_file() {
        bail!("the testbed's cluster DNS needs dnsmasq (Debian package dnsmasq-base: apt-get install dnsmasq-base)");
    }
    let log = dir.join("dns.log");
    let pid = spawn_in(
        &pod.netns,
        dnsmasq,
        &dns::dnsmasq_args(&hosts),
        &[],
        &log,
        None,
    )?;
    let ns = pod.netns.clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ns = ns.clone();
        let up = netns::within(&ns, || {
            Ok(TcpStream::connect_timeout(
                &SocketAddr::from(([127, 0, 0, 1], 53)),
                Duration::from_millis(200),
            )
            .is_ok())
        })?;
        if up {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "dnsmasq did not start in {}: {}",
                dns::POD_KEY,
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(DnsState { pid, hosts })
}

/// Rewrites the DNS's hosts file and has dnsmasq re-read it (SIGHUP).
fn refresh_dns(state: &State, snapshot: &Snapshot) -> Result<()> {
    let Some(d) = &state.dns else {
        return Ok(());
    };
    serve::write_atomically(
        &d.hosts,
        dns::hosts(&snapshot.cluster, &snapshot.services).as_bytes(),
    )?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(d.pid as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .context("cannot signal dnsmasq")?;
    Ok(())
}

/// Copies the manifests given to `up` into the policy directory the proxies will read.
fn prepare_policy_dir(dir: &Path, files: &[PathBuf]) -> Result<PathBuf> {
    let policy_dir = dir.join("policy");
    fs::create_dir_all(policy_dir.join("cluster"))?;
    fs::create_dir_all(policy_dir.join("applied"))?;
    copy_manifests(files, &policy_dir.join("cluster"))?;
    // The proxies run as UID 2171 and must read the policy directory.
    for d in ["/run/portcullis", "/run/portcullis/testbed"] {
        fs::set_permissions(d, fs::Permissions::from_mode(0o755))?;
    }
    make_world_readable(dir)?;
    Ok(policy_dir)
}

/// The node: a namespace with a bridge that the pods' veths join, routing between them.
fn create_node(node: &str) -> Result<()> {
    netns::add(node)?;
    netns::ip_in(node, &["link", "add", "br0", "type", "bridge"])?;
    netns::ip_in(node, &["link", "set", "br0", "up"])?;
    netns::exec_in(node, "sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
    Ok(())
}

/// The pods the testbed runs: every pod of the manifests but hostNetwork ones.
fn testbed_pods(cluster: &Cluster) -> Vec<&PodInfo> {
    cluster
        .pods
        .iter()
        .filter(|pod| {
            if pod.host_network {
                eprintln!(
                    "note: {} is a hostNetwork pod; the testbed leaves it out",
                    pod.key()
                );
            }
            !pod.host_network
        })
        .collect()
}

/// A pod's namespace, its veth into the node's bridge, its address and routes.
fn plumb_pod(
    node: &str,
    prefix: &str,
    i: usize,
    pod: &PodInfo,
    gateways: &mut BTreeSet<String>,
    dir: &Path,
) -> Result<PodState> {
    let Some(IpAddr::V4(ip)) = pod.ips.first().copied() else {
        bail!(
            "pod {} needs an IPv4 status.podIP for the testbed",
            pod.key()
        );
    };
    // Every distinct hostIP is an address of the node; pods without one use a link-local one.
    let gateway = gateway_of(pod);
    if gateways.insert(gateway.clone()) {
        netns::ip_in(
            node,
            &["addr", "add", &format!("{gateway}/32"), "dev", "br0"],
        )?;
    }
    let ns = format!("{prefix}p{i}");
    netns::add(&ns)?;
    let host_end = format!("vp{i}");
    netns::ip_in(
        node,
        &[
            "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ],
    )?;
    netns::ip_in(node, &["link", "set", &host_end, "master", "br0", "up"])?;
    netns::ip_in(&ns, &["link", "set", "eth0", "up"])?;
    netns::ip_in(&ns, &["addr", "add", &format!("{ip}/32"), "dev", "eth0"])?;
    netns::ip_in(&ns, &["route", "add", &gateway, "dev", "eth0"])?;
    netns::ip_in(
        &ns,
        &["route", "add", "default", "via", &gateway, "dev", "eth0"],
    )?;
    // With the node's address on the pod's side as the source: a hairpin connection (a pod
    // reaching itself through its Service) is masqueraded to it, the pod's hostIP.
    netns::ip_in(
        node,
        &[
            "route",
            "add",
            &format!("{ip}/32"),
            "dev",
            "br0",
            "src",
            &gateway,
        ],
    )?;
    let file = |what: &str| dir.join(format!("{}.{}.{what}", pod.namespace, pod.name));
    Ok(PodState {
        key: pod.key(),
        netns: ns,
        ip: IpAddr::V4(ip),
        pids: Vec::new(),
        proxy_log: file("proxy.log"),
        injected: true,
        not_injected: None,
        enforces_udp: false,
        bound: file("server.json"),
        system: false,
    })
}

/// The node's address on the pod's side: its hostIP, else a link-local address.
fn gateway_of(pod: &PodInfo) -> String {
    match pod.host_ip {
        Some(IpAddr::V4(h)) => h.to_string(),
        _ => FALLBACK_GATEWAY.to_string(),
    }
}

/// The pod's application: `portcullis testbed serve` on the ports of `wanted`.
fn start_server(pod: &PodState, wanted: &Path) -> Result<u32> {
    let self_exe = std::env::current_exe().context("cannot find the portcullis executable")?;
    spawn_in(
        &pod.netns,
        &self_exe,
        &[
            "testbed".into(),
            "serve".into(),
            "--identity".into(),
            pod.key.clone(),
            "--wanted".into(),
            wanted.to_string_lossy().into_owned(),
            "--bound".into(),
            pod.bound.to_string_lossy().into_owned(),
        ],
        &[],
        &pod.bound.with_extension("log"),
        None,
    )
}

/// The pod's portcullis-proxy, as its own user, with the Downward API environment.
fn start_proxy(opts: &UpOptions, pod: &PodState, info: &PodInfo, policy_dir: &Path) -> Result<u32> {
    let ips: Vec<String> = info.ips.iter().map(IpAddr::to_string).collect();
    let mut env = vec![
        ("POD_NAME".to_string(), info.name.clone()),
        ("POD_NAMESPACE".to_string(), info.namespace.clone()),
        ("POD_IPS".to_string(), ips.join(",")),
        ("PORTCULLIS_LOG".to_string(), "info".to_string()),
        (
            "PORTCULLIS_ENFORCE_UDP".to_string(),
            opts.enforce_udp.to_string(),
        ),
    ];
    if let Some(h) = info.host_ip {
        env.push(("HOST_IP".into(), h.to_string()));
    }
    env.extend(
        sidecar_env(opts)
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let mut args = match opts.policy_source {
        PolicySource::Dir => vec![
            "--policy-dir".to_string(),
            policy_dir.to_string_lossy().into_owned(),
        ],
        // The node's address on the pod's side of the bridge, as a Service would route it.
        PolicySource::Controller => vec![
            "--controller".to_string(),
            format!("http://{}:{CONTROLLER_PORT}", gateway_of(info)),
        ],
    };
    args.extend(opts.proxy_args.iter().cloned());
    let user = User {
        uid: PROXY_UID,
        net_admin: opts.enforce_udp,
    };
    spawn_in(
        &pod.netns,
        &opts.binaries.proxy,
        &args,
        &env,
        &pod.proxy_log,
        Some(user),
    )
}

/// What the injector sets on both init and proxy besides `PORTCULLIS_ENFORCE_UDP`:
/// `PORTCULLIS_PROXY_MARK` only when the proxy has CAP_NET_ADMIN (UDP enforced), without which
/// it cannot mark its sockets, and `PORTCULLIS_INBOUND_TCP`: judged in the queue when the proxy
/// reads one, else relayed.
fn sidecar_env(opts: &UpOptions) -> Vec<(&'static str, &'static str)> {
    if opts.enforce_udp {
        vec![
            ("PORTCULLIS_PROXY_MARK", PROXY_MARK),
            ("PORTCULLIS_INBOUND_TCP", "queue"),
        ]
    } else {
        vec![("PORTCULLIS_INBOUND_TCP", "proxy")]
    }
}

/// Whom a process runs as: an unprivileged UID, with CAP_NET_ADMIN (ambient) or no capability.
#[derive(Debug, Clone, Copy)]
struct User {
    uid: u32,
    net_admin: bool,
}

/// Starts portcullis-controller in file mode in the node namespace and waits until it serves.
fn start_controller(
    opts: &UpOptions,
    node: &str,
    policy_dir: &Path,
    dir: &Path,
) -> Result<ControllerState> {
    let Some(binary) = &opts.binaries.controller else {
        bail!("cannot find portcullis-controller: build it (cargo build -p portcullis-controller), pass --controller-bin, or use --policy-source dir");
    };
    let log = dir.join("controller.log");
    let args: Vec<String> = [
        "--policy-dir",
        &policy_dir.to_string_lossy(),
        "--listen",
        &format!("0.0.0.0:{CONTROLLER_PORT}"),
        "--admin-listen",
        &format!("0.0.0.0:{CONTROLLER_ADMIN_PORT}"),
        "--poll-interval",
        "100ms",
        "--shutdown-delay",
        "0s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let pid = spawn_in(node, binary, &args, &[], &log, None)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !matches!(
        http_get_in(node, CONTROLLER_ADMIN_PORT, "/ready"),
        Ok((200, _))
    ) {
        if Instant::now() > deadline {
            let text = fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(10).collect();
            bail!(
                "portcullis-controller is not ready after 20s; last log lines:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(ControllerState { pid, log })
}

/// Stops the testbed's controller (SIGTERM, then SIGKILL after 5 s) and waits until every proxy
/// has noticed (its table is marked stale); the proxies keep enforcing their last tables.
pub fn stop_controller(state: &State) -> Result<()> {
    let Some(c) = &state.controller else {
        bail!(
            "testbed {:?} has no controller (its proxies read the policy directory)",
            state.name
        );
    };
    let group = nix::unistd::Pid::from_raw(-(c.pid as i32));
    let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while nix::sys::signal::kill(group, None).is_ok() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(10);
    for pod in state.pods.iter().filter(|p| p.injected) {
        loop {
            let stale = admin_get(&pod.netns, "/policy")
                .ok()
                .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
                .and_then(|v| v.get("stale").and_then(|s| s.as_bool()))
                .unwrap_or(false);
            if stale {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "the proxy of {} did not notice the controller stopping",
                    pod.key
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

/// Starts a long-running process inside `ns`, detached from our session, output to `log`.
fn spawn_in(
    ns: &str,
    program: &Path,
    args: &[String],
    env: &[(String, String)],
    log: &Path,
    user: Option<User>,
) -> Result<u32> {
    let out = fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    fs::set_permissions(log, fs::Permissions::from_mode(0o644))?;
    let err = out.try_clone()?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]);
    if let Some(User { uid, net_admin }) = user {
        // The proxy runs as its own unprivileged user, as in a pod: no capability, or only
        // CAP_NET_ADMIN (ambient) when it reads the UDP/SCTP queue.
        let caps = if net_admin { "-all,+net_admin" } else { "-all" };
        cmd.args([
            "setpriv",
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
            &format!("--inh-caps={caps}"),
            &format!("--ambient-caps={caps}"),
            &format!("--bounding-set={caps}"),
            "--",
        ]);
    }
    cmd.arg(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start {} in {ns}", program.display()))?;
    Ok(child.id())
}

fn copy_manifests(files: &[PathBuf], into: &Path) -> Result<()> {
    let mut found = Vec::new();
    for path in files {
        collect(path, &mut found)?;
    }
    let mut taken = cluster_ips_in(&found);
    copy_with_cluster_ips(&found, into, 0, &mut taken)
}

/// Every ClusterIP the manifests under `paths` give (errors are reported by the real load).
fn cluster_ips_in(paths: &[PathBuf]) -> BTreeSet<IpAddr> {
    portcullis_policy_loader::load_paths(paths)
        .cluster
        .services
        .iter()
        .flat_map(|s| s.cluster_ips.iter().copied())
        .collect()
}

/// Copies `files` into `into` as `NNN-name` (numbered from `start + 1`), giving every Service
/// that has no ClusterIP one (see `services.rs`), as the API server would.
fn copy_with_cluster_ips(
    files: &[PathBuf],
    into: &Path,
    start: usize,
    taken: &mut BTreeSet<IpAddr>,
) -> Result<()> {
    for (i, file) in files.iter().enumerate() {
        let name = file
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let target = into.join(format!("{:03}-{name}", start + i + 1));
        let text =
            fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
        let (text, allocated) = services::allocate_cluster_ips(&text, taken);
        for (svc, ip) in allocated {
            eprintln!("note: Service {svc} has no clusterIP; the testbed gives it {ip}");
        }
        fs::write(&target, text)
            .with_context(|| format!("cannot copy {} into the testbed", file.display()))?;
        fs::set_permissions(&target, fs::Permissions::from_mode(0o644))?;
    }
    Ok(())
}

fn collect(path: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let meta = fs::metadata(path).with_context(|| format!("{}: cannot read", path.display()))?;
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = fs::read_dir(path)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for e in entries {
            if e.is_dir() || portcullis_policy_loader::is_manifest(&e) {
                collect(&e, out)?;
            }
        }
    } else {
        out.push(path.to_path_buf());
    }
    Ok(())
}

fn make_world_readable(dir: &Path) -> Result<()> {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            make_world_readable(&path)?;
        } else {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644))?;
        }
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
    services::install(
        &state.node_netns,
        &snapshot.services,
        &state_dir(&state.name),
    )?;
    refresh_dns(state, &snapshot)?;
    let set = state.port_set(&snapshot);
    for note in &set.notes {
        eprintln!("note: {note}");
    }
    state.ensure_served(&set.ports.iter().copied().collect::<Vec<_>>())?;
    wait_converged(state, timeout)
}

/// Waits until every proxy serves, on `/policy`, the table this process compiles from the same
/// directory.
pub fn wait_converged(state: &State, timeout: Duration) -> Result<()> {
    let loaded = portcullis_policy_loader::load_paths(&state.manifest_paths());
    if !loaded.errors.is_empty() {
        bail!(
            "the manifests have errors:\n  {}",
            loaded.errors.join("\n  ")
        );
    }
    let compiled = compile(&loaded.cluster);
    let deadline = Instant::now() + timeout;
    for pod in state.pods.iter().filter(|p| p.injected) {
        let Some(expected) = compiled.table(&pod.key) else {
            continue;
        };
        let mut want = serde_json::to_value(&**expected)?;
        strip_known_pods(&mut want);
        loop {
            let served = admin_get(&pod.netns, "/policy")
                .ok()
                .and_then(|(status, body)| {
                    (status == 200)
                        .then(|| serde_json::from_str::<serde_json::Value>(&body).ok())
                        .flatten()
                });
            if let Some(mut served) = served.and_then(|v| v.get("table").cloned()) {
                strip_known_pods(&mut served);
                if served == want {
                    break;
                }
            }
            if Instant::now() > deadline {
                bail!("the proxy of {} did not load the new policy within {timeout:?} (see `portcullis testbed logs {}`)", pod.key, pod.key);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

fn strip_known_pods(v: &mut serde_json::Value) {
    if let Some(map) = v.as_object_mut() {
        map.remove("known_pods");
    }
}

fn wait_ready(state: &State, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    for pod in state.pods.iter().filter(|p| p.injected) {
        loop {
            if matches!(admin_get(&pod.netns, "/ready"), Ok((200, _))) {
                break;
            }
            if Instant::now() > deadline {
                let log = fs::read_to_string(&pod.proxy_log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(10).collect();
                bail!(
                    "the proxy of {} is not ready after {timeout:?}; last log lines:\n{}",
                    pod.key,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

/// `GET path` on the proxy's admin port, from inside the pod. Returns (status, body).
pub fn admin_get(ns: &str, path: &str) -> Result<(u16, String)> {
    http_get_in(ns, ADMIN_PORT, path)
}

/// `GET path` on `127.0.0.1:port` inside `ns`. Returns (status, body).
pub fn http_get_in(ns: &str, port: u16, path: &str) -> Result<(u16, String)> {
    let path = path.to_string();
    netns::within(ns, move || {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        write!(
            s,
            "GET {path} HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("malformed HTTP response")?;
        Ok((status, body.to_string()))
    })
}

/// Stops every process and deletes every namespace of the testbed, also after a crash (it
/// finds leftovers by name prefix). Never fails: it removes what it can.
pub fn down(name: &str) -> Vec<String> {
    let mut removed = Vec::new();
    if let Ok(state) = State::load(name) {
        let controller = state.controller.iter().map(|c| &c.pid);
        for pod in &state.pods {
            for pid in pod.pids.iter().chain(controller.clone()) {
                // Negative pid: the whole process group (ip netns exec, setpriv and the child).
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(-(*pid as i32)),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    for ns in netns::list_with_prefix(&prefix(name)) {
        // Processes still inside the namespace (e.g. after a crash of `up`).
        if let Ok(pids) = netns::ip(&["netns", "pids", &ns]) {
            for pid in pids
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        netns::delete(&ns);
        let _ = fs::remove_dir_all(dns::etc_dir(&ns));
        removed.push(ns);
    }
    let _ = fs::remove_dir_all(state_dir(name));
    removed
}

/// The proxy's audit lines (`"event":"connection_*"`) of one pod.
pub fn audit_lines(state: &State, pod: &str, all: bool) -> Result<Vec<String>> {
    let pod = injected_pod(state, pod)?;
    let log = fs::read_to_string(&pod.proxy_log)
        .with_context(|| format!("cannot read {}", pod.proxy_log.display()))?;
    Ok(log
        .lines()
        .filter(|l| all || l.contains("\"event\":\"connection_"))
        .map(str::to_string)
        .collect())
}

pub fn metrics(state: &State, pod: &str) -> Result<String> {
    let pod = injected_pod(state, pod)?;
    let (status, body) = admin_get(&pod.netns, "/metrics")?;
    if status != 200 {
        bail!(
            "the proxy of {} answered /metrics with HTTP {status}",
            pod.key
        );
    }
    Ok(body)
}

/// `getent hosts NAME` inside a pod's network namespace (through its resolv.conf, i.e. the
/// cluster DNS): the addresses, empty when the name does not resolve. One try of at most 2 s
/// per query (`RES_OPTIONS`), so that a denied lookup fails quickly.
pub fn resolve(state: &State, pod: &str, name: &str) -> Result<Vec<IpAddr>> {
    let pod = state.pod(pod)?;
    let out = Command::new("ip")
        .args(["netns", "exec", &pod.netns, "getent", "hosts", name])
        .env("RES_OPTIONS", "timeout:2 attempts:1")
        .stdin(Stdio::null())
        .output()
        .context("cannot run getent")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect())
}

/// `n` TCP connections (or UDP exchanges) from inside `pod` to `addr`, one after the other: the
/// identity each answer carried, or why nothing answered.
pub fn connect_from(
    state: &State,
    pod: &str,
    addr: SocketAddr,
    protocol: portcullis_policy::Protocol,
    n: usize,
) -> Result<Vec<Result<String, serve::NoAnswer>>> {
    let pod = state.pod(pod)?;
    netns::within(&pod.netns, move || {
        Ok((0..n)
            .map(|_| serve::probe(addr, protocol, Duration::from_secs(2)))
            .collect())
    })
}

/// A pod's proxy's view of its table (`/policy` on the admin port: generation, staleness,
/// the table, and what the proxy enforces).
pub fn policy(state: &State, pod: &str) -> Result<String> {
    let pod = injected_pod(state, pod)?;
    let (status, body) = admin_get(&pod.netns, "/policy")?;
    if status != 200 {
        bail!(
            "the proxy of {} answered /policy with HTTP {status}",
            pod.key
        );
    }
    Ok(body)
}

fn injected_pod<'a>(state: &'a State, key: &str) -> Result<&'a PodState> {
    let pod = state.pod(key)?;
    if let Some(why) = &pod.not_injected {
        bail!("{key} has no portcullis-proxy ({why})");
    }
    Ok(pod)
}
