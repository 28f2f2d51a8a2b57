//! portcullis-init against real netfilter, in network namespaces created here: a "pod" and a
//! "peer" joined by a veth pair, IPv4 and IPv6. Needs root; never touches the host's rules.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use socket2::SockRef;

const POD4: &str = "10.215.0.1";
const PEER4: &str = "10.215.0.2";
const PEER4_SKIPPED: &str = "10.215.0.3";
const POD6: &str = "fd00:215::1";
const PEER6: &str = "fd00:215::2";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

struct Pair {
    pod: String,
    peer: String,
}

impl Drop for Pair {
    fn drop(&mut self) {
        for ns in [&self.pod, &self.peer] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Pair {
    fn new() -> Pair {
        assert!(
            nix::unistd::geteuid().is_root(),
            "these tests create network namespaces and iptables rules: run them as root \
             (sudo ./scripts/test.sh)"
        );
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let id = format!("{}-{n}", std::process::id());
        let pair = Pair {
            pod: format!("pc-init-{id}-pod"),
            peer: format!("pc-init-{id}-peer"),
        };
        sh(&["ip", "netns", "add", &pair.pod]);
        sh(&["ip", "netns", "add", &pair.peer]);
        let tag = std::process::id() % 100000;
        let (a, b) = (format!("pia{n}x{tag}"), format!("pib{n}x{tag}"));
        sh(&[
            "ip", "link", "add", &a, "netns", &pair.pod, "type", "veth", "peer", "name", &b,
            "netns", &pair.peer,
        ]);
        for (ns, dev, v4, v6) in [(&pair.pod, &a, POD4, POD6), (&pair.peer, &b, PEER4, PEER6)] {
            sh(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{v4}/24"),
                "dev",
                dev,
            ]);
            sh(&[
                "ip",
                "-n",
                ns,
                "-6",
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                dev,
                "nodad",
            ]);
            sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        sh(&[
            "ip",
            "-n",
            &pair.peer,
            "addr",
            "add",
            &format!("{PEER4_SKIPPED}/24"),
            "dev",
            &b,
        ]);
        pair
    }

    fn init(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.pod,
                env!("CARGO_BIN_EXE_portcullis-init"),
            ])
            .args(args)
            .output()
            .expect("run portcullis-init")
    }

    fn init_ok(&self, args: &[&str]) {
        let out = self.init(args);
        assert!(
            out.status.success(),
            "portcullis-init {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn save(&self, program: &str) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.pod, program])
            .output()
            .expect("iptables-save");
        normalize(&String::from_utf8_lossy(&out.stdout))
    }
}

/// `iptables-save` output without comment lines and packet counters.
fn normalize(save: &str) -> String {
    save.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| match l.rfind(" [") {
            Some(i) if l.starts_with(':') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = fs::File::open(&path).expect("netns file");
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("thread")
}

fn listen(ns: &str, addr: &str) -> TcpListener {
    let addr: SocketAddr = addr.parse().expect("addr");
    let l = in_ns(ns, move || TcpListener::bind(addr)).expect("bind");
    l.set_nonblocking(true).expect("nonblocking");
    l
}

/// The connection `listener` accepts within two seconds, if any.
fn accepted(listener: &TcpListener) -> Option<TcpStream> {
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        match listener.accept() {
            Ok((s, _)) => return Some(s),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    None
}

fn connect(ns: &str, to: &str) -> TcpStream {
    let to: SocketAddr = to.parse().expect("addr");
    in_ns(ns, move || {
        TcpStream::connect_timeout(&to, Duration::from_secs(2))
    })
    .expect("connect")
}

fn original_dst(s: &TcpStream) -> SocketAddr {
    let sock = SockRef::from(s);
    let addr = match s.local_addr().expect("local") {
        SocketAddr::V4(_) => sock.original_dst_v4(),
        SocketAddr::V6(_) => sock.original_dst_v6(),
    };
    addr.expect("SO_ORIGINAL_DST").as_socket().expect("inet")
}

#[test]
fn inbound_is_redirected_to_the_inbound_port_with_the_original_destination() {
    let p = Pair::new();
    p.init_ok(&[]);
    let proxy = listen(&p.pod, "0.0.0.0:4143");
    let app = listen(&p.pod, "0.0.0.0:8080");
    let _c = connect(&p.peer, &format!("{POD4}:8080"));
    let s = accepted(&proxy).expect("the connection lands on the inbound port");
    assert_eq!(original_dst(&s), format!("{POD4}:8080").parse().unwrap());
    assert!(accepted(&app).is_none(), "the app must not see it directly");
}

#[test]
fn inbound_ipv6_is_redirected_too() {
    let p = Pair::new();
    p.init_ok(&[]);
    let proxy = listen(&p.pod, "[::]:4143");
    let _c = connect(&p.peer, &format!("[{POD6}]:8080"));
    let s = accepted(&proxy).expect("IPv6 lands on the inbound port");
    assert_eq!(original_dst(&s), format!("[{POD6}]:8080").parse().unwrap());
}

#[test]
fn outbound_is_redirected_and_the_proxy_uid_is_not() {
    let p = Pair::new();
    p.init_ok(&[]);
    let outbound = listen(&p.pod, "127.0.0.1:4140");
    let peer = listen(&p.peer, "0.0.0.0:7070");

    let _c = connect(&p.pod, &format!("{PEER4}:7070"));
    let s = accepted(&outbound).expect("the app's connection lands on the outbound port");
    assert_eq!(original_dst(&s), format!("{PEER4}:7070").parse().unwrap());
    assert!(accepted(&peer).is_none());

    // The proxy's own upstream connection (UID 2171) goes straight out.
    let status = Command::new("ip")
        .args([
            "netns",
            "exec",
            &p.pod,
            "setpriv",
            "--reuid=2171",
            "--regid=2171",
            "--clear-groups",
            "--",
        ])
        .args([
            "bash",
            "-c",
            &format!("exec 3<>/dev/tcp/{PEER4}/7070 && echo hi >&3"),
        ])
        .status()
        .expect("setpriv");
    assert!(status.success());
    let mut s = accepted(&peer).expect("UID 2171 reaches the peer directly");
    s.set_nonblocking(false).expect("blocking");
    let mut hi = String::new();
    s.read_to_string(&mut hi).expect("read");
    assert_eq!(hi, "hi\n");
    assert!(accepted(&outbound).is_none());

    // Loopback is never redirected.
    let local = listen(&p.pod, "127.0.0.1:9999");
    let _l = connect(&p.pod, "127.0.0.1:9999");
    assert!(accepted(&local).is_some(), "loopback reaches its listener");
}

#[test]
fn skipped_ports_and_cidrs_are_not_redirected() {
    let p = Pair::new();
    p.init_ok(&[
        "--skip-inbound-ports=22,9000-9010",
        "--skip-outbound-ports=7071",
        &format!("--skip-outbound-cidrs={PEER4_SKIPPED}/32"),
    ]);
    let proxy_in = listen(&p.pod, "0.0.0.0:4143");
    let proxy_out = listen(&p.pod, "127.0.0.1:4140");

    let app = listen(&p.pod, "0.0.0.0:9005");
    let _a = connect(&p.peer, &format!("{POD4}:9005"));
    assert!(accepted(&app).is_some(), "9005 is in a skipped range");
    assert!(accepted(&proxy_in).is_none());

    let peer_port = listen(&p.peer, "0.0.0.0:7071");
    let _b = connect(&p.pod, &format!("{PEER4}:7071"));
    assert!(
        accepted(&peer_port).is_some(),
        "7071 is a skipped outbound port"
    );

    let peer_skipped = listen(&p.peer, &format!("{PEER4_SKIPPED}:7070"));
    let _c = connect(&p.pod, &format!("{PEER4_SKIPPED}:7070"));
    assert!(accepted(&peer_skipped).is_some(), "skipped CIDR");
    assert!(accepted(&proxy_out).is_none());

    // The proxy's admin port is never redirected either.
    let admin = listen(&p.pod, "0.0.0.0:4191");
    let _d = connect(&p.peer, &format!("{POD4}:4191"));
    assert!(accepted(&admin).is_some());
}

#[test]
fn running_twice_is_idempotent_and_cleanup_restores_the_original_ruleset() {
    let p = Pair::new();
    // Something that was there before us, and must survive untouched.
    let mut pre = Command::new("ip")
        .args(["netns", "exec", &p.pod, "iptables-restore", "--noflush"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("iptables-restore");
    pre.stdin
        .take()
        .expect("stdin")
        .write_all(b"*nat\n:CNI-HOSTPORT - [0:0]\n-A PREROUTING -p tcp --dport 30000 -j CNI-HOSTPORT\nCOMMIT\n*filter\n-A INPUT -p tcp --dport 23 -j DROP\nCOMMIT\n")
        .expect("write");
    assert!(pre.wait().expect("wait").success());
    let before4 = p.save("iptables-save");
    let before6 = p.save("ip6tables-save");

    p.init_ok(&[]);
    let once4 = p.save("iptables-save");
    let once6 = p.save("ip6tables-save");
    assert_ne!(once4, before4);
    p.init_ok(&["--skip-inbound-ports=22"]);
    p.init_ok(&[]);
    assert_eq!(
        p.save("iptables-save"),
        once4,
        "a second run leaves one copy of each rule"
    );
    assert_eq!(p.save("ip6tables-save"), once6);
    assert_eq!(once4.matches("-j PORTCULLIS_INBOUND").count(), 1);
    assert_eq!(
        once4.matches("-j PORTCULLIS_UDP_IN").count(),
        2,
        "udp and sctp jumps"
    );
    assert!(once6.contains("NFQUEUE --queue-num 4171"), "{once6}");

    p.init_ok(&["--cleanup"]);
    assert_eq!(
        p.save("iptables-save"),
        before4,
        "cleanup restores the IPv4 ruleset"
    );
    let after6 = p.save("ip6tables-save");
    assert!(!after6.contains("PORTCULLIS"), "{after6}");
    assert!(before6.is_empty() || after6 == before6);
    // Cleanup twice is fine.
    p.init_ok(&["--cleanup"]);
}

#[test]
fn dry_run_prints_the_rules_and_changes_nothing() {
    let p = Pair::new();
    let before = p.save("iptables-save");
    let out = p.init(&["--dry-run", "--skip-outbound-cidrs=10.96.0.0/12"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("*nat"));
    assert!(text.contains("-A PORTCULLIS_OUTPUT -d 10.96.0.0/12 -j RETURN"));
    assert!(text.contains("-A PREROUTING -p tcp -j PORTCULLIS_INBOUND"));
    assert_eq!(p.save("iptables-save"), before);
}

#[test]
fn bad_input_fails_clearly_before_touching_anything() {
    let p = Pair::new();
    let before = p.save("iptables-save");
    let out = p.init(&["--skip-inbound-ports=22,http"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--skip-inbound-ports") && err.contains("`http`"),
        "{err}"
    );
    let out = p.init(&["--inbound-port=4140"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("both 4140"));
    assert_eq!(p.save("iptables-save"), before);
}

#[test]
fn without_privileges_it_says_what_is_missing() {
    let p = Pair::new();
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &p.pod,
            "setpriv",
            "--reuid=2171",
            "--regid=2171",
            "--clear-groups",
            "--inh-caps=-all",
            "--",
        ])
        .arg(env!("CARGO_BIN_EXE_portcullis-init"))
        .output()
        .expect("run");
    assert!(!out.status.success(), "must exit non-zero");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("NET_ADMIN")
            || err.contains("Permission denied")
            || err.contains("permission"),
        "{err}"
    );
}

// UDP and SCTP: the first packet of each new flow goes to NFQUEUE 4171, which nobody reads in
// these tests, so it is dropped (fail closed); what is not queued gets through.

fn udp_socket(ns: &str, addr: &str) -> std::net::UdpSocket {
    let addr: SocketAddr = addr.parse().expect("addr");
    let s = in_ns(ns, move || std::net::UdpSocket::bind(addr)).expect("bind udp");
    s.set_read_timeout(Some(Duration::from_millis(700)))
        .expect("timeout");
    s
}

/// Whether a datagram sent from `from` (in its namespace) to `to` arrives at `receiver`.
fn datagram_arrives(from: &std::net::UdpSocket, to: &str, receiver: &std::net::UdpSocket) -> bool {
    let to: SocketAddr = to.parse().expect("addr");
    from.send_to(b"ping", to).expect("send");
    let mut buf = [0u8; 16];
    matches!(receiver.recv_from(&mut buf), Ok((4, _)))
}

fn queued_packets(p: &Pair, program: &str, chain: &str) -> u64 {
    let out = Command::new("ip")
        .args([
            "netns", "exec", &p.pod, program, "-t", "filter", "-L", chain, "-v", "-x", "-n",
        ])
        .output()
        .expect("iptables -L");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("NFQUEUE"))
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn new_udp_flows_go_to_the_queue_and_are_dropped_while_nobody_reads_it() {
    let p = Pair::new();
    let pod_app = udp_socket(&p.pod, "0.0.0.0:5353");
    let peer_app = udp_socket(&p.peer, "0.0.0.0:5354");
    let peer_client = udp_socket(&p.peer, "0.0.0.0:0");
    let pod_client = udp_socket(&p.pod, "0.0.0.0:0");
    // Before: both directions pass.
    assert!(datagram_arrives(
        &peer_client,
        &format!("{POD4}:5353"),
        &pod_app
    ));
    assert!(datagram_arrives(
        &pod_client,
        &format!("{PEER4}:5354"),
        &peer_app
    ));

    p.init_ok(&[]);
    // New flows (fresh source ports, so conntrack sees them as NEW) are queued, and dropped.
    let peer_client = udp_socket(&p.peer, "0.0.0.0:0");
    let pod_client = udp_socket(&p.pod, "0.0.0.0:0");
    assert!(
        !datagram_arrives(&peer_client, &format!("{POD4}:5353"), &pod_app),
        "inbound"
    );
    assert!(
        !datagram_arrives(&pod_client, &format!("{PEER4}:5354"), &peer_app),
        "outbound"
    );
    assert_eq!(queued_packets(&p, "iptables", "PORTCULLIS_UDP_IN"), 1);
    assert_eq!(queued_packets(&p, "iptables", "PORTCULLIS_UDP_OUT"), 1);
    // IPv6 too.
    let pod_app6 = udp_socket(&p.pod, &format!("[{POD6}]:5353"));
    let peer_client6 = udp_socket(&p.peer, "[::]:0");
    assert!(!datagram_arrives(
        &peer_client6,
        &format!("[{POD6}]:5353"),
        &pod_app6
    ));
    assert_eq!(queued_packets(&p, "ip6tables", "PORTCULLIS_UDP_IN"), 1);

    // Loopback inside the pod is not queued.
    let local = udp_socket(&p.pod, "127.0.0.1:5355");
    assert!(datagram_arrives(&pod_client, "127.0.0.1:5355", &local));
    // Nor is what the proxy's UID sends.
    let status = Command::new("ip")
        .args([
            "netns",
            "exec",
            &p.pod,
            "setpriv",
            "--reuid=2171",
            "--regid=2171",
        ])
        .args(["--clear-groups", "--", "bash", "-c"])
        .arg(format!("echo ping > /dev/udp/{PEER4}/5354"))
        .status()
        .expect("setpriv");
    assert!(status.success());
    let mut buf = [0u8; 16];
    assert!(peer_app.recv_from(&mut buf).is_ok(), "UID 2171 is exempt");

    // --enforce-udp=false takes the queue rules away again: UDP passes unjudged.
    let out = p.init(&["--enforce-udp=false"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("NOT enforced"));
    assert!(!p.save("iptables-save").contains("PORTCULLIS_UDP"));
    assert!(
        p.save("iptables-save").contains("PORTCULLIS_INBOUND"),
        "TCP stays"
    );
    let peer_client = udp_socket(&p.peer, "0.0.0.0:0");
    assert!(datagram_arrives(
        &peer_client,
        &format!("{POD4}:5353"),
        &pod_app
    ));
}

#[test]
fn enforce_udp_false_installs_no_queue_rules() {
    let p = Pair::new();
    p.init_ok(&["--enforce-udp=false"]);
    let saved = p.save("iptables-save");
    assert!(
        !saved.contains("NFQUEUE") && !saved.contains("PORTCULLIS_UDP"),
        "{saved}"
    );
    let pod_app = udp_socket(&p.pod, "0.0.0.0:5353");
    let peer_client = udp_socket(&p.peer, "0.0.0.0:0");
    assert!(datagram_arrives(
        &peer_client,
        &format!("{POD4}:5353"),
        &pod_app
    ));
}

#[test]
fn the_legacy_backend_gets_the_same_queue_rules_and_cleanup_removes_them_exactly() {
    let p = Pair::new();
    let before = p.save("iptables-legacy-save");
    let before6 = p.save("ip6tables-legacy-save");
    p.init_ok(&["--backend=legacy"]);
    let installed = p.save("iptables-legacy-save");
    assert!(
        installed.contains(
            "-A PORTCULLIS_UDP_IN -m conntrack --ctstate NEW -j NFQUEUE --queue-num 4171"
        ),
        "{installed}"
    );
    assert!(installed.contains("-A INPUT -p sctp -j PORTCULLIS_UDP_IN"));
    assert!(
        !p.save("iptables-nft-save").contains("PORTCULLIS"),
        "nothing in nft"
    );
    let pod_app = udp_socket(&p.pod, "0.0.0.0:5353");
    let peer_client = udp_socket(&p.peer, "0.0.0.0:0");
    assert!(!datagram_arrives(
        &peer_client,
        &format!("{POD4}:5353"),
        &pod_app
    ));
    p.init_ok(&["--backend=legacy"]);
    assert_eq!(p.save("iptables-legacy-save"), installed, "idempotent");
    p.init_ok(&["--backend=legacy", "--cleanup"]);
    // Legacy lists a table once it has been used; compare the rules and the chains.
    let rules = |save: String| -> Vec<String> {
        save.lines()
            .filter(|l| l.starts_with("-A") || l.starts_with(":PORTCULLIS"))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(rules(p.save("iptables-legacy-save")), rules(before));
    assert_eq!(rules(p.save("ip6tables-legacy-save")), rules(before6));
    assert!(!p.save("iptables-legacy-save").contains("PORTCULLIS"));
}

#[test]
fn queue_jumps_come_before_an_accept_already_in_input() {
    let p = Pair::new();
    let mut pre = Command::new("ip")
        .args(["netns", "exec", &p.pod, "iptables-restore", "--noflush"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("iptables-restore");
    pre.stdin
        .take()
        .expect("stdin")
        .write_all(b"*filter\n-A INPUT -j ACCEPT\n-A OUTPUT -j ACCEPT\nCOMMIT\n")
        .expect("write");
    assert!(pre.wait().expect("wait").success());
    p.init_ok(&[]);
    let pod_app = udp_socket(&p.pod, "0.0.0.0:5353");
    let peer_client = udp_socket(&p.peer, "0.0.0.0:0");
    assert!(
        !datagram_arrives(&peer_client, &format!("{POD4}:5353"), &pod_app),
        "an earlier ACCEPT must not bypass the queue"
    );
}
