//! The load-test network: a server namespace and two client namespaces, one plain and one with
//! Portcullis' outbound redirect, all created here and removed on drop (also on panic).

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use portcullis_contract::{env, ports, PROXY_UID};
use portcullis_netns as netns;

pub const SERVER_IP_PLAIN: &str = "10.210.1.2";
pub const CLIENT_IP_PLAIN: &str = "10.210.1.1";
pub const SERVER_IP_MESH: &str = "10.210.2.2";
/// The server's Service (`lt/server`): the mesh client dials it, its outbound proxy picks the
/// backend (the server's mesh address) and connects there, as for a Service in a cluster.
pub const SERVICE_IP: &str = "10.96.50.10";
pub const CLIENT_IP_MESH: &str = "10.210.2.1";
/// The application's ports: sink (bulk) and echo (latency, connections/s).
pub const SINK_PORT: u16 = 5201;
pub const ECHO_PORT: u16 = 5202;
/// The same application on ports the redirect skips: the direct path.
pub const DIRECT_SINK_PORT: u16 = 5301;
pub const DIRECT_ECHO_PORT: u16 = 5302;
/// HAProxy's frontends.
pub const HAPROXY_SINK_PORT: u16 = 6201;
pub const HAPROXY_ECHO_PORT: u16 = 6202;
/// A server namespace without Portcullis, reached from the plain client over its own veth:
/// the direct path of the standard tools and of UDP (in the server namespace every UDP flow
/// goes through the proxy's queue, whatever its port).
pub const DIRECT_SERVER_IP: &str = "10.210.3.2";
pub const CLIENT_IP_DIRECT: &str = "10.210.3.1";
/// Standard tools' servers (in the server namespace and in the direct one): `sockperf server`
/// on TCP and UDP, `iperf3 -s` on TCP.
pub const SOCKPERF_PORT: u16 = 5211;
pub const IPERF_PORT: u16 = 5212;
/// HAProxy's frontends for them.
pub const HAPROXY_SOCKPERF_PORT: u16 = 6211;
pub const HAPROXY_IPERF_PORT: u16 = 6212;
/// UDP echo ports (the harness's own UDP server): the first one for request/response, all of
/// them for new flows (more destination ports, more distinct flows before a source port
/// comes back while conntrack still remembers it).
pub const UDP_ECHO_PORT: u16 = 5220;
pub const UDP_ECHO_PORTS: u16 = 16;
/// dnsmasq, in the server namespace and in the direct one.
pub const DNS_PORT: u16 = 53;
/// The name the DNS load asks for (answered by dnsmasq from its own configuration).
pub const DNS_NAME: &str = "api.lt.svc.cluster.local";

pub struct Topology {
    pub server: String,
    pub client: String,
    pub mesh_client: String,
    /// No Portcullis here: the direct path of the standard tools and of UDP.
    pub direct_server: String,
    pub dir: PathBuf,
    children: Vec<Child>,
    pub haproxy_pid: Option<u32>,
}

fn sysctl(ns: &str, kv: &str) -> Result<()> {
    netns::exec_in(ns, "sysctl", &["-qw", kv])?;
    Ok(())
}

impl Topology {
    fn namespaces(&self) -> [&String; 4] {
        [
            &self.server,
            &self.client,
            &self.mesh_client,
            &self.direct_server,
        ]
    }

    pub fn create() -> Result<Topology> {
        if !netns::is_root() {
            bail!("the load tests need root: they build network namespaces and iptables rules (run with sudo)");
        }
        let tag = std::process::id();
        let dir = std::env::temp_dir().join(format!("pc-lt-{tag}"));
        fs::create_dir_all(&dir)?;
        let t = Topology {
            server: format!("pc-lt-{tag}-srv"),
            client: format!("pc-lt-{tag}-cli"),
            mesh_client: format!("pc-lt-{tag}-mesh"),
            direct_server: format!("pc-lt-{tag}-dir"),
            dir,
            children: Vec::new(),
            haproxy_pid: None,
        };
        for ns in t.namespaces() {
            netns::add(ns)?;
        }
        let server = t.server.clone();
        let direct = t.direct_server.clone();
        netns::veth(
            &server,
            "vc",
            &format!("{SERVER_IP_PLAIN}/24"),
            &t.client,
            "eth0",
            &format!("{CLIENT_IP_PLAIN}/24"),
        )?;
        netns::veth(
            &server,
            "vm",
            &format!("{SERVER_IP_MESH}/24"),
            &t.mesh_client,
            "eth0",
            &format!("{CLIENT_IP_MESH}/24"),
        )?;
        netns::veth(
            &direct,
            "vd",
            &format!("{DIRECT_SERVER_IP}/24"),
            &t.client,
            "eth1",
            &format!("{CLIENT_IP_DIRECT}/24"),
        )?;
        // The Service range is routed (as a node's pod network would): the outbound proxy's
        // REDIRECT happens after the routing decision, and no kube-proxy is needed behind it.
        netns::ip_in(
            &t.mesh_client,
            &["route", "add", "10.96.0.0/12", "dev", "eth0"],
        )?;
        // Many short connections: reuse TIME_WAIT ports and use the whole range. The server
        // namespace too: the inbound proxy's connections to the application start there, and
        // the proxy closes them first (it passes the client's FIN on), so their TIME_WAITs pile
        // up there. With the default range (28,232 ports) and reuse for loopback addresses only,
        // a few thousand connections per second run out of ports within a minute and the proxy's
        // connects fail with EADDRNOTAVAIL (the client sees a reset).
        for ns in [&t.client, &t.mesh_client, &t.server, &t.direct_server] {
            sysctl(ns, "net.ipv4.tcp_tw_reuse=1")?;
            sysctl(ns, "net.ipv4.ip_local_port_range=1024 65000")?;
        }
        sysctl(&t.server, "net.core.somaxconn=65535")?;
        Ok(t)
    }

    /// Writes the policy directory the proxies read: three pods and policies that allow the
    /// load traffic (so every connection goes through a real table lookup).
    pub fn write_policy(&self, variant: usize) -> Result<PathBuf> {
        let dir = self.dir.join("policy");
        fs::create_dir_all(&dir)?;
        let pods = format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: lt}}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {{name: server, namespace: lt, labels: {{role: server}}}}\n\
             spec: {{containers: [{{name: app, ports: [{{name: sink, containerPort: {SINK_PORT}}}, {{name: echo, containerPort: {ECHO_PORT}}}, \
             {{name: sockperf, containerPort: {SOCKPERF_PORT}}}, {{name: iperf, containerPort: {IPERF_PORT}}}, \
             {{name: sockperf-udp, containerPort: {SOCKPERF_PORT}, protocol: UDP}}, {{name: dns, containerPort: {DNS_PORT}, protocol: UDP}}]}}]}}\n\
             status: {{podIP: {SERVER_IP_PLAIN}, podIPs: [{{ip: {SERVER_IP_PLAIN}}}, {{ip: {SERVER_IP_MESH}}}]}}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {{name: client, namespace: lt, labels: {{role: client}}}}\n\
             status: {{podIP: {CLIENT_IP_PLAIN}}}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {{name: mesh-client, namespace: lt, labels: {{role: client}}}}\n\
             status: {{podIP: {CLIENT_IP_MESH}}}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {{name: server, namespace: lt}}\n\
             spec: {{clusterIP: {SERVICE_IP}, ports: [{{name: sink, port: {SINK_PORT}}}, {{name: echo, port: {ECHO_PORT}}}, \
             {{name: sockperf, port: {SOCKPERF_PORT}}}, {{name: iperf, port: {IPERF_PORT}}}]}}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: server-1, namespace: lt, labels: {{kubernetes.io/service-name: server}}}}\n\
             addressType: IPv4\nports: [{{name: sink, port: {SINK_PORT}}}, {{name: echo, port: {ECHO_PORT}}}, {{name: sockperf, port: {SOCKPERF_PORT}}}, {{name: iperf, port: {IPERF_PORT}}}]\n\
             endpoints: [{{addresses: [{SERVER_IP_MESH}], targetRef: {{kind: Pod, name: server, namespace: lt}}}}]\n"
        );
        // Two equivalent policy sets, so that swapping between them changes the table but
        // never the verdict for the load traffic.
        let policy = format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: server-v{variant}, namespace: lt}}\n\
             spec:\n  podSelector: {{matchLabels: {{role: server}}}}\n  ingress:\n  - from: [{{podSelector: {{matchLabels: {{role: client}}}}}}]\n    ports: [{{port: {SINK_PORT}, endPort: {}}}, {{port: {SOCKPERF_PORT}, endPort: {IPERF_PORT}}}, \
             {{protocol: UDP, port: {SOCKPERF_PORT}}}, {{protocol: UDP, port: {UDP_ECHO_PORT}, endPort: {udp_last}}}, {{protocol: UDP, port: {DNS_PORT}}}]\n---\n\
             apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: client-egress-v{variant}, namespace: lt}}\n\
             spec:\n  podSelector: {{matchLabels: {{role: client}}}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{{podSelector: {{matchLabels: {{role: server}}}}}}]\n    ports: [{{port: sink}}, {{port: echo}}, {{port: sockperf}}, {{port: iperf}}, \
             {{protocol: UDP, port: sockperf-udp}}, {{protocol: UDP, port: dns}}, {{protocol: UDP, port: {UDP_ECHO_PORT}, endPort: {udp_last}}}]\n",
            ECHO_PORT + (variant % 2) as u16,
            udp_last = UDP_ECHO_PORT + UDP_ECHO_PORTS - 1,
        );
        // Written beside, then renamed: a proxy never reads half a file.
        let tmp = dir.join(".policy.yaml.tmp");
        fs::write(dir.join("pods.yaml"), pods)?;
        fs::write(&tmp, policy)?;
        fs::rename(&tmp, dir.join("policy.yaml"))?;
        set_world_readable(&self.dir)?;
        Ok(dir)
    }

    /// Runs portcullis-init in `ns` (inbound and outbound redirect) and starts a proxy there.
    pub fn start_portcullis(
        &mut self,
        ns: &str,
        pod: &str,
        pod_ips: &str,
        (init, init_args): (&Path, &[String]),
        (proxy, proxy_args): (&Path, &[String]),
    ) -> Result<u32> {
        // HAProxy's frontends are not Portcullis' to judge: HAProxy is the path compared with.
        let skip = format!(
            "{DIRECT_SINK_PORT},{DIRECT_ECHO_PORT},{HAPROXY_SINK_PORT},{HAPROXY_ECHO_PORT},\
             {HAPROXY_SOCKPERF_PORT},{HAPROXY_IPERF_PORT}"
        );
        let init = init.to_string_lossy();
        let mut args = vec!["--skip-inbound-ports", &skip];
        args.extend(init_args.iter().map(String::as_str));
        netns::exec_in(ns, &init, &args).with_context(|| format!("portcullis-init in {ns}"))?;
        self.spawn_proxy(ns, pod, pod_ips, (proxy, proxy_args))
    }

    /// Stops the proxy of `ns` (SIGKILL: nothing is open between measurements) and starts it
    /// again with `proxy_args`; its rules stay. Returns the new proxy's pid.
    pub fn restart_proxy(
        &mut self,
        ns: &str,
        pod: &str,
        pod_ips: &str,
        (proxy, proxy_args): (&Path, &[String]),
    ) -> Result<u32> {
        let old = pid_of_listener(ns, ports::INBOUND)?;
        let pid = nix::unistd::Pid::from_raw(i32::try_from(old)?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL)
            .with_context(|| format!("cannot stop the proxy in {ns}"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while pid_of_listener(ns, ports::INBOUND).is_ok_and(|p| p == old) {
            if Instant::now() > deadline {
                bail!("the proxy in {ns} did not stop");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.spawn_proxy(ns, pod, pod_ips, (proxy, proxy_args))
    }

    /// Starts portcullis-proxy in `ns` (its rules already installed) and waits until it is
    /// ready. Returns its pid.
    fn spawn_proxy(
        &mut self,
        ns: &str,
        pod: &str,
        pod_ips: &str,
        (proxy, proxy_args): (&Path, &[String]),
    ) -> Result<u32> {
        let policy_dir = self.dir.join("policy");
        let log = self.dir.join(format!("{pod}.proxy.log"));
        let out = File::create(&log)?;
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "setpriv",
                &format!("--reuid={PROXY_UID}"),
                &format!("--regid={PROXY_UID}"),
                "--clear-groups",
                // Only CAP_NET_ADMIN (ambient), as the injector gives it: the proxy reads the
                // UDP/SCTP queue and deletes conntrack entries with it.
                "--inh-caps=-all,+net_admin",
                "--ambient-caps=-all,+net_admin",
                "--bounding-set=-all,+net_admin",
                "--",
            ])
            .arg(proxy)
            .arg("--policy-dir")
            .arg(&policy_dir)
            // The swap soak changes the policy a thousand times: poll often so that it measures
            // swaps, not the poll interval.
            .args(["--policy-poll-interval", "20ms"])
            .args(proxy_args)
            .env(env::POD_NAME, pod)
            .env(env::POD_NAMESPACE, "lt")
            .env(env::POD_IPS, pod_ips)
            .env(env::LOG, "warn")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("cannot start portcullis-proxy")?;
        self.children.push(child);
        self.wait_ready(ns, &log)?;
        pid_of_listener(ns, ports::INBOUND).context("cannot find the proxy's process")
    }

    fn wait_ready(&self, ns: &str, log: &Path) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = crate::workload::http_get(ns, ports::ADMIN, "/ready")
                .map(|(status, _)| status == 200)
                .unwrap_or(false);
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "proxy in {ns} not ready after 20s: {}",
                    fs::read_to_string(log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// HAProxy in the server namespace, TCP mode, splice on, in front of the same application.
    pub fn start_haproxy(&mut self) -> Result<u32> {
        let cfg = self.dir.join("haproxy.cfg");
        fs::write(
            &cfg,
            format!(
                "global\n  maxconn 7000\n  nbthread 2\n\
                 defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\n  option splice-auto\n\
                 listen sink\n  bind {SERVER_IP_PLAIN}:{HAPROXY_SINK_PORT}\n  server app 127.0.0.1:{SINK_PORT}\n\
                 listen echo\n  bind {SERVER_IP_PLAIN}:{HAPROXY_ECHO_PORT}\n  server app 127.0.0.1:{ECHO_PORT}\n\
                 listen sockperf\n  bind {SERVER_IP_PLAIN}:{HAPROXY_SOCKPERF_PORT}\n  server app 127.0.0.1:{SOCKPERF_PORT}\n\
                 listen iperf\n  bind {SERVER_IP_PLAIN}:{HAPROXY_IPERF_PORT}\n  server app 127.0.0.1:{IPERF_PORT}\n"
            ),
        )?;
        let log = File::create(self.dir.join("haproxy.log"))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.server, "haproxy", "-db", "-f"])
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start haproxy (apt-get install haproxy)")?;
        self.children.push(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(pid) = pid_of_listener(&self.server, HAPROXY_SINK_PORT) {
                self.haproxy_pid = Some(pid);
                return Ok(pid);
            }
            if Instant::now() > deadline {
                bail!(
                    "haproxy did not start: {}",
                    fs::read_to_string(self.dir.join("haproxy.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Topology {
    /// Connection tracking in the direct-server namespace: a rule that needs conntrack (and
    /// drops only what conntrack cannot place, which this load never sends).
    pub fn track_direct_connections(&self) -> Result<()> {
        netns::exec_in(
            &self.direct_server,
            "iptables",
            &[
                "-A",
                "INPUT",
                "-m",
                "conntrack",
                "--ctstate",
                "INVALID",
                "-j",
                "DROP",
            ],
        )
        .context("conntrack in the direct-server namespace")?;
        Ok(())
    }

    /// Starts `program args` in `ns` as a child that lives as long as the topology, its output
    /// in `<dir>/<log>.log`; returns the log's path.
    pub fn spawn_in(
        &mut self,
        ns: &str,
        program: &str,
        args: &[&str],
        log: &str,
    ) -> Result<PathBuf> {
        let path = self.dir.join(format!("{log}.log"));
        let out = File::create(&path)?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns, program])
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("cannot start {program} in {ns}"))?;
        self.children.push(child);
        Ok(path)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in self.namespaces() {
            // Whatever still runs inside (setpriv's child), then the namespace.
            netns::purge(ns);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn set_world_readable(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    for e in fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            set_world_readable(&p)?;
        } else {
            fs::set_permissions(&p, fs::Permissions::from_mode(0o644))?;
        }
    }
    Ok(())
}

/// The pid of the process listening on `port` in `ns` (from `ss`).
pub fn pid_of_listener(ns: &str, port: u16) -> Result<u32> {
    let text = netns::exec_in(ns, "ss", &["-Hltnp", &format!("sport = :{port}")])?;
    text.split("pid=")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("nothing listens on {port} in {ns}"))
}

/// Resident memory of a process, in bytes.
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")?;
    Ok(kb * 1024)
}
