//! With `--proxy-mark`, the proxy reaches its controller by name: portcullis-init's rules (with
//! the mark) exempt only the proxy's marked packets, so the libc resolver's unmarked query would
//! be queued and dropped (no table yet), and the controller never reached. The proxy resolves the
//! name itself from a marked socket. Real rules from portcullis-init's generator, a real
//! dnsmasq as the cluster DNS in a peer namespace, the real proxy as UID 2171 with
//! CAP_NET_ADMIN (ambient). Needs root.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use portcullis_netns::testing::{in_ns, sh, Pair};

const POD_IP: &str = "10.218.0.1";
const PEER_IP: &str = "10.218.0.2";
const CONTROLLER: &str = "portcullis-controller.portcullis-system.svc";

struct Setup {
    pod_ns: String,
    peer_ns: String,
    dir: PathBuf,
    children: Vec<Child>,
    /// The pod and peer namespaces; dropped (deleted) after the children are stopped.
    _pair: Pair,
}

impl Drop for Setup {
    fn drop(&mut self) {
        for mut c in self.children.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = fs::remove_dir_all(format!("/etc/netns/{}", self.pod_ns));
        if std::thread::panicking() {
            for log in ["proxy.log", "dnsmasq.log"] {
                eprintln!(
                    "{log}:\n{}",
                    fs::read_to_string(self.dir.join(log)).unwrap_or_default()
                );
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Setup {
    fn new() -> Setup {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test creates network namespaces and iptables rules: run it as root"
        );
        let pair = Pair::new(
            "pc-proxy-cm",
            &[&format!("{POD_IP}/24")],
            &[&format!("{PEER_IP}/24")],
        );
        let dir = std::env::temp_dir().join(format!("pc-proxy-cm-{}", pair.id));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("mkdir");
        let setup = Setup {
            pod_ns: pair.pod.clone(),
            peer_ns: pair.peer.clone(),
            dir,
            children: Vec::new(),
            _pair: pair,
        };
        let pod = &setup.pod_ns;
        // The pod's /etc/resolv.conf as the kubelet writes it (`ip netns exec` mounts it).
        let etc = format!("/etc/netns/{pod}");
        fs::create_dir_all(&etc).expect("mkdir /etc/netns");
        fs::write(
            format!("{etc}/resolv.conf"),
            format!(
                "search x.svc.cluster.local svc.cluster.local cluster.local\n\
                 nameserver {PEER_IP}\noptions ndots:5\n"
            ),
        )
        .expect("resolv.conf");
        setup
    }

    fn spawn(&mut self, log: &str, cmd: &mut Command) {
        let out = fs::File::create(self.dir.join(log)).expect("log");
        let child = cmd
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        self.children.push(child);
    }
}

#[test]
fn with_a_proxy_mark_the_proxy_resolves_and_reaches_its_controller_by_name() {
    let mut s = Setup::new();
    // The cluster DNS: the controller's Service name, NXDOMAIN for the rest of cluster.local.
    let (pod, peer) = (s.pod_ns.clone(), s.peer_ns.clone());
    s.spawn(
        "dnsmasq.log",
        Command::new("ip")
            .args(["netns", "exec", &peer, "dnsmasq"])
            .args([
                "--keep-in-foreground",
                "--log-facility=-",
                "--log-queries",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                &format!("--listen-address={PEER_IP}"),
                "--local=/cluster.local/",
                &format!("--address=/{CONTROLLER}.cluster.local/{PEER_IP}"),
                &format!("--pid-file={}", s.dir.join("dnsmasq.pid").display()),
            ]),
    );
    // Where the controller would listen.
    let listener = in_ns(&peer, move || {
        TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], 8443)))
    })
    .expect("bind 8443");
    listener.set_nonblocking(true).expect("nonblocking");

    // portcullis-init's rules with the mark (TCP redirect and UDP queue), from its generator.
    let cfg =
        portcullis_init::config::Config::try_parse_from(["portcullis-init", "--proxy-mark=0x1000"])
            .expect("init flags");
    let rules = portcullis_init::rules::install(&cfg, portcullis_init::rules::Family::V4, "");
    assert!(rules.contains("--mark 0x1000/0x1000"), "{rules}");
    let mut restore = Command::new("ip")
        .args(["netns", "exec", &pod, "iptables-restore", "--noflush"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("iptables-restore");
    restore
        .stdin
        .take()
        .expect("stdin")
        .write_all(rules.as_bytes())
        .expect("rules");
    assert!(restore.wait().expect("wait").success());

    fs::write(s.dir.join("token"), "token").expect("token");
    sh(&["chmod", "-R", "a+rX", &s.dir.to_string_lossy()]);
    let token = s.dir.join("token");
    s.spawn(
        "proxy.log",
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &pod,
                "setpriv",
                "--reuid=2171",
                "--regid=2171",
            ])
            .args([
                "--clear-groups",
                "--inh-caps=-all,+net_admin",
                "--ambient-caps=-all,+net_admin",
                "--bounding-set=-all,+net_admin",
                "--",
                env!("CARGO_BIN_EXE_portcullis-proxy"),
                "--proxy-mark=0x1000",
                &format!("--controller=http://{CONTROLLER}:8443"),
            ])
            .arg("--token-file")
            .arg(&token)
            .env("POD_NAME", "server")
            .env("POD_NAMESPACE", "x")
            .env("POD_IPS", POD_IP)
            .env("PORTCULLIS_LOG", "info"),
    );

    // The controller client's request arrives from the pod itself, not through a redirect.
    let deadline = Instant::now() + Duration::from_secs(15);
    let (mut conn, from) = loop {
        match listener.accept() {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("the proxy never reached its controller by name: {e}"),
        }
    };
    assert_eq!(from.ip().to_string(), POD_IP);
    conn.set_nonblocking(false).expect("blocking");
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut head = [0u8; 64];
    let n = conn.read(&mut head).expect("request");
    let head = String::from_utf8_lossy(&head[..n]);
    assert!(head.starts_with("GET /v1/tables/x/server"), "{head}");
}
