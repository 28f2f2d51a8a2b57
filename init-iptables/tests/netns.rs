//! portcullis-init against real netfilter, in network namespaces created here: a "pod" and a
//! "peer" joined by a veth pair, IPv4 and IPv6. Needs root; never touches the host's rules.

use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use portcullis_netns::testing::{in_ns, restore, sh};
use socket2::SockRef;

const POD4: &str = "10.215.0.1";
const PEER4: &str = "10.215.0.2";
const PEER4_SKIPPED: &str = "10.215.0.3";
const POD6: &str = "fd00:215::1";
const PEER6: &str = "fd00:215::2";

/// The pod and peer namespaces (deleted on drop), with the init-specific steps.
struct Pair(portcullis_netns::testing::Pair);

impl std::ops::Deref for Pair {
    type Target = portcullis_netns::testing::Pair;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Pair {
    fn new() -> Pair {
        portcullis_netns::testing::require_root(
            "these tests create network namespaces and iptables rules (sudo ./scripts/test.sh)",
        );
        Pair(portcullis_netns::testing::Pair::new(
            "pc-init",
            &[&format!("{POD4}/24"), &format!("{POD6}/64")],
            &[
                &format!("{PEER4}/24"),
                &format!("{PEER6}/64"),
                &format!("{PEER4_SKIPPED}/24"),
            ],
        ))
    }

    fn init(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.pod, &init_binary()])
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

/// The binary under test. `PORTCULLIS_INIT_UNDER_TEST` points the suite at another build (for
/// example an older one, to check that the attack tests fail on it).
fn init_binary() -> String {
    std::env::var("PORTCULLIS_INIT_UNDER_TEST")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_portcullis-init").to_string())
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
    p.init_ok(&["--inbound-tcp=proxy"]);
    let proxy = listen(&p.pod, "0.0.0.0:4143");
    let app = listen(&p.pod, "0.0.0.0:8080");
    let _c = connect(&p.peer, &format!("{POD4}:8080"));
    let s = accepted(&proxy).expect("the connection lands on the inbound port");
    assert_eq!(original_dst(&s), format!("{POD4}:8080").parse().unwrap());
    assert!(accepted(&app).is_none(), "the app must not see it directly");
}

#[test]
fn by_default_inbound_tcp_waits_for_a_verdict_in_the_queue_except_on_skipped_ports() {
    let p = Pair::new();
    p.init_ok(&["--skip-inbound-ports=9090"]);
    let proxy = listen(&p.pod, "0.0.0.0:4143");
    let app = listen(&p.pod, "0.0.0.0:8080");
    let skipped = listen(&p.pod, "0.0.0.0:9090");
    // No proxy reads the queue here: the SYN waits in it and is never answered (fail closed).
    let to: SocketAddr = format!("{POD4}:8080").parse().expect("addr");
    let attempt = in_ns(&p.peer, move || {
        TcpStream::connect_timeout(&to, Duration::from_millis(1500))
    });
    assert!(attempt.is_err(), "no verdict, no connection");
    assert!(
        accepted(&app).is_none(),
        "nothing reaches the app without a verdict"
    );
    assert!(accepted(&proxy).is_none(), "nor the inbound listener");
    let queued = p.save("iptables-save");
    assert!(
        queued.contains("-A PORTCULLIS_UDP_IN -p tcp -m conntrack --ctstate NEW -j CONNMARK")
            && queued.contains("-A PORTCULLIS_UDP_IN -m conntrack --ctstate NEW -j NFQUEUE"),
        "{queued}"
    );
    // A skipped port goes straight to the application.
    let _s = connect(&p.peer, &format!("{POD4}:9090"));
    let s = accepted(&skipped).expect("a skipped port is not queued");
    assert_eq!(
        s.peer_addr().expect("peer").ip().to_string(),
        PEER4,
        "no redirect, no relay"
    );
}

#[test]
fn inbound_ipv6_is_redirected_too() {
    let p = Pair::new();
    p.init_ok(&["--inbound-tcp=proxy"]);
    let proxy = listen(&p.pod, "[::]:4143");
    let _c = connect(&p.peer, &format!("[{POD6}]:8080"));
    let s = accepted(&proxy).expect("IPv6 lands on the inbound port");
    assert_eq!(original_dst(&s), format!("[{POD6}]:8080").parse().unwrap());
}

#[test]
fn outbound_is_redirected_and_the_proxy_uid_is_not() {
    let p = Pair::new();
    p.init_ok(&["--outbound-tcp=proxy"]);
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

/// Runs `input` through `<prefix>-<backend>-restore --noflush` in `ns`.
/// The lines of one table in `iptables-save` output.
fn table_of(save: &str, table: &str) -> Vec<String> {
    save.split(&format!("*{table}\n"))
        .nth(1)
        .and_then(|rest| rest.split("COMMIT").next())
        .map(|t| t.lines().map(str::to_string).collect())
        .unwrap_or_default()
}

const BACKENDS: [&str; 2] = ["nft", "legacy"];

#[test]
fn running_twice_is_idempotent_and_cleanup_restores_the_original_ruleset() {
    for backend in BACKENDS {
        let p = Pair::new();
        let (save4, save6) = (
            format!("iptables-{backend}-save"),
            format!("ip6tables-{backend}-save"),
        );
        // Something that was there before us, in every table we write to, and must survive
        // untouched.
        let pre = "*raw\n-A PREROUTING -p udp -m udp --dport 53 -j CT --notrack\nCOMMIT\n\
            *nat\n:CNI-HOSTPORT - [0:0]\n-A PREROUTING -p tcp -m tcp --dport 30000 -j CNI-HOSTPORT\nCOMMIT\n\
            *filter\n-A INPUT -p tcp -m tcp --dport 23 -j DROP\n-A FORWARD -j ACCEPT\nCOMMIT\n";
        restore(&p.pod, &format!("iptables-{backend}-restore"), pre);
        restore(&p.pod, &format!("ip6tables-{backend}-restore"), pre);
        let before4 = p.save(&save4);
        let before6 = p.save(&save6);
        let backend_flag = format!("--backend={backend}");

        p.init_ok(&[&backend_flag]);
        let once4 = p.save(&save4);
        let once6 = p.save(&save6);
        assert_ne!(once4, before4);
        assert_ne!(once6, before6);
        p.init_ok(&[&backend_flag, "--skip-inbound-ports=22"]);
        p.init_ok(&[&backend_flag]);
        assert_eq!(
            p.save(&save4),
            once4,
            "{backend}: a second run leaves one copy of each rule"
        );
        assert_eq!(p.save(&save6), once6, "{backend}");
        assert_eq!(once4.matches("-j PORTCULLIS_UDP_IN").count(), 1);
        // Switching to the relayed inbound and back leaves no redirect behind.
        p.init_ok(&[&backend_flag, "--inbound-tcp=proxy"]);
        assert_eq!(p.save(&save4).matches("-j PORTCULLIS_INBOUND").count(), 1);
        p.init_ok(&[&backend_flag]);
        assert_eq!(p.save(&save4), once4, "{backend}: back to the queue");
        // Our drops come before what was there: first in raw PREROUTING and filter FORWARD.
        for (table, chain, ours) in [
            ("raw", "PREROUTING", "PORTCULLIS_ANTISPOOF"),
            ("filter", "FORWARD", "PORTCULLIS_FORWARD"),
        ] {
            let first = table_of(&once4, table)
                .into_iter()
                .find(|l| l.starts_with(&format!("-A {chain} ")));
            assert_eq!(
                first,
                Some(format!("-A {chain} -j {ours}")),
                "{backend}:\n{once4}"
            );
        }

        p.init_ok(&[&backend_flag, "--cleanup"]);
        assert_eq!(
            p.save(&save4),
            before4,
            "{backend}: cleanup restores the IPv4 ruleset"
        );
        assert_eq!(
            p.save(&save6),
            before6,
            "{backend}: cleanup restores the IPv6 ruleset"
        );
        // Cleanup twice is fine.
        p.init_ok(&[&backend_flag, "--cleanup"]);
    }
}

#[test]
fn cleanup_in_an_empty_namespace_leaves_no_rule_behind() {
    for backend in BACKENDS {
        let p = Pair::new();
        let backend_flag = format!("--backend={backend}");
        p.init_ok(&[&backend_flag]);
        p.init_ok(&[&backend_flag, "--cleanup"]);
        for program in [
            format!("iptables-{backend}-save"),
            format!("ip6tables-{backend}-save"),
        ] {
            let after = p.save(&program);
            // iptables cannot delete a table: the ones we created stay, empty, every built-in
            // chain with policy ACCEPT, which filters nothing.
            for line in after.lines() {
                assert!(
                    line.starts_with('*')
                        || line == "COMMIT"
                        || (line.starts_with(':') && line.ends_with(" ACCEPT")),
                    "{backend}: `{line}` left after cleanup:\n{after}"
                );
            }
        }
    }
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
    // Every protocol but ICMP is queued (issue 20), inbound TCP with its mark.
    assert!(text.contains("-A PORTCULLIS_UDP_IN -p tcp -m conntrack --ctstate NEW -j CONNMARK"));
    assert!(text.contains("-A PORTCULLIS_UDP_IN -m conntrack --ctstate NEW -j NFQUEUE"));
    assert!(
        !text.contains("PORTCULLIS_INBOUND"),
        "inbound TCP is queued, not redirected"
    );
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
        .arg(init_binary())
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
    assert!(installed.contains("-A INPUT -j PORTCULLIS_UDP_IN"));
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

// ---- The attacks of issue 12 §1, replayed against the rules ----

/// Writes `/proc/sys/<key>` in `ns` (the `net` entries are those of the writer's namespace).
fn set_sysctl(ns: &str, key: &str, value: &str) {
    let (path, value) = (format!("/proc/sys/{key}"), value.to_string());
    in_ns(ns, move || fs::write(&path, value)).expect("sysctl");
}

/// The MAC address of `dev` in `ns`.
fn mac(ns: &str, dev: &str) -> [u8; 6] {
    let out = Command::new("ip")
        .args(["-n", ns, "-o", "link", "show", "dev", dev])
        .output()
        .expect("ip link");
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC in {text}"));
    let mut mac = [0u8; 6];
    for (b, h) in mac.iter_mut().zip(hex.split(':')) {
        *b = u8::from_str_radix(h, 16).expect("hex");
    }
    mac
}

/// The packet counter of `rule` (as `iptables-save` prints it) in `table`, if the rule exists.
fn packets(ns: &str, save: &str, table: &str, rule: &str) -> Option<u64> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, save, "-c", "-t", table])
        .output()
        .expect("iptables-save -c");
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let (counts, r) = l.strip_prefix('[')?.split_once("] ")?;
        (r == rule).then(|| counts.split(':').next()?.parse().ok())?
    })
}

/// The Internet checksum of the concatenated (even-length) slices.
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for part in parts {
        for w in part.chunks(2) {
            sum += u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
        }
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet frame carrying a TCP SYN from `src:sport` to `dst:dport`, as a pod with
/// CAP_NET_RAW writes it on an AF_PACKET socket (no netfilter on the sender's side).
fn syn_frame(
    to_mac: [u8; 6],
    from_mac: [u8; 6],
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
) -> Vec<u8> {
    let mut tcp = Vec::with_capacity(20);
    tcp.extend_from_slice(&sport.to_be_bytes());
    tcp.extend_from_slice(&dport.to_be_bytes());
    tcp.extend_from_slice(&0x1234_5678u32.to_be_bytes()); // seq
    tcp.extend_from_slice(&0u32.to_be_bytes()); // ack
    tcp.extend_from_slice(&[5 << 4, 0x02]); // header length, SYN
    tcp.extend_from_slice(&64240u16.to_be_bytes()); // window
    tcp.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
    let mut frame = Vec::new();
    frame.extend_from_slice(&to_mac);
    frame.extend_from_slice(&from_mac);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let (s, d) = (s.octets(), d.octets());
            let sum = checksum(&[&s, &d, &[0, 6, 0, 20], &tcp]);
            tcp[16..18].copy_from_slice(&sum.to_be_bytes());
            let mut ip = vec![0x45, 0, 0, 40, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0];
            ip.extend_from_slice(&s);
            ip.extend_from_slice(&d);
            let sum = checksum(&[&ip]);
            ip[10..12].copy_from_slice(&sum.to_be_bytes());
            frame.extend_from_slice(&[0x08, 0x00]);
            frame.extend_from_slice(&ip);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let (s, d) = (s.octets(), d.octets());
            let sum = checksum(&[&s, &d, &[0, 0, 0, 20, 0, 0, 0, 6], &tcp]);
            tcp[16..18].copy_from_slice(&sum.to_be_bytes());
            frame.extend_from_slice(&[0x86, 0xdd]);
            frame.extend_from_slice(&[0x60, 0, 0, 0, 0, 20, 6, 64]);
            frame.extend_from_slice(&s);
            frame.extend_from_slice(&d);
        }
        _ => panic!("mixed families"),
    }
    frame.extend_from_slice(&tcp);
    frame
}

/// Sends `frame` on `dev` in `ns` over AF_PACKET and returns the TCP flags of every segment
/// that comes back from `dport` to `sport` within two seconds (a SYN-ACK, or a RST).
fn send_frame_and_watch(ns: &str, dev: &str, frame: Vec<u8>, sport: u16, dport: u16) -> Vec<u8> {
    use nix::libc;
    let dev = std::ffi::CString::new(dev).expect("dev name");
    in_ns(ns, move || {
        // SAFETY: plain socket calls on a descriptor owned here, with buffers that outlive them.
        unsafe {
            let proto = (libc::ETH_P_ALL as u16).to_be();
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto));
            assert!(
                fd >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto;
            sll.sll_ifindex = libc::if_nametoindex(dev.as_ptr()) as i32;
            assert!(sll.sll_ifindex > 0, "no such interface");
            let rc = libc::bind(
                fd,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 100_000,
            };
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            );
            let sent = libc::send(fd, frame.as_ptr().cast(), frame.len(), 0);
            assert_eq!(
                sent,
                frame.len() as isize,
                "send: {}",
                std::io::Error::last_os_error()
            );
            let mut replies = Vec::new();
            let mut buf = [0u8; 2048];
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline {
                let n = libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0);
                if n <= 0 {
                    continue;
                }
                if let Some((s, d, flags)) = tcp_ports(&buf[..n as usize]) {
                    if s == dport && d == sport {
                        replies.push(flags);
                    }
                }
            }
            libc::close(fd);
            replies
        }
    })
}

/// (source port, destination port, flags) of a TCP segment in an Ethernet frame.
fn tcp_ports(frame: &[u8]) -> Option<(u16, u16, u8)> {
    let tcp = match frame.get(12..14)? {
        [0x08, 0x00] if *frame.get(23)? == 6 => &frame[14 + usize::from(frame[14] & 0xf) * 4..],
        [0x86, 0xdd] if *frame.get(20)? == 6 => frame.get(54..)?,
        _ => return None,
    };
    let port = |i: usize| Some(u16::from_be_bytes([*tcp.get(i)?, *tcp.get(i + 1)?]));
    Some((port(0)?, port(2)?, *tcp.get(13)?))
}

#[test]
fn a_forged_packet_to_loopback_arriving_from_outside_is_dropped_before_the_redirect() {
    for backend in BACKENDS {
        let p = Pair::new();
        p.init_ok(&[&format!("--backend={backend}")]);
        // As on a node where kube-proxy set route_localnet=1 and the pod inherited it: the
        // kernel itself would then deliver 127.0.0.1 from eth0 to a localhost-only app.
        set_sysctl(&p.pod, "net/ipv4/conf/all/route_localnet", "1");
        // The inbound proxy (dual-stack), and a localhost-only application behind it.
        let _proxy = listen(&p.pod, "[::]:4143");
        let _app = listen(&p.pod, "127.0.0.1:7777");
        let (to, from) = (mac(&p.pod, &p.pod_dev), mac(&p.peer, &p.peer_dev));
        // (name, source, destination, the drop rule that must count it: program prefix, rule)
        type Case<'a> = (&'a str, IpAddr, IpAddr, Option<(&'a str, &'a str)>);
        let cases: [Case; 3] = [
            (
                "127.0.0.1",
                PEER4.parse().unwrap(),
                "127.0.0.1".parse().unwrap(),
                Some((
                    "iptables",
                    "-A PORTCULLIS_ANTISPOOF -d 127.0.0.0/8 ! -i lo -j DROP",
                )),
            ),
            (
                "::ffff:127.0.0.1",
                PEER6.parse().unwrap(),
                "::ffff:127.0.0.1".parse().unwrap(),
                Some((
                    "ip6tables",
                    "-A PORTCULLIS_ANTISPOOF -d ::ffff:0.0.0.0/96 ! -i lo -j DROP",
                )),
            ),
            // The kernel itself drops IPv6 packets to ::1 from a non-loopback device (before
            // netfilter, so our rule never counts them): checked for what the attacker sees.
            ("::1", PEER6.parse().unwrap(), "::1".parse().unwrap(), None),
        ];
        for (i, (name, src, dst, rule)) in cases.into_iter().enumerate() {
            let sport = 40000 + i as u16;
            let frame = syn_frame(to, from, src, dst, sport, 7777);
            let replies = send_frame_and_watch(&p.peer, &p.peer_dev, frame, sport, 7777);
            assert!(
                replies.is_empty(),
                "{backend}: a SYN to {name}:7777 arriving on the pod's eth0 was answered \
                 (TCP flags {replies:x?}): it reached the pod's TCP stack"
            );
            assert!(
                !half_open(&p.pod, sport),
                "{backend}: a SYN to {name}:7777 arriving on the pod's eth0 reached a listener \
                 in the pod (a half-open connection from port {sport}): it was redirected"
            );
            if let Some((prefix, rule)) = rule {
                let n = packets(&p.pod, &format!("{prefix}-{backend}-save"), "raw", rule);
                assert!(
                    n.is_some_and(|n| n >= 1),
                    "{backend}: `{rule}` counted {n:?} packets"
                );
            }
        }
    }
}

/// Whether a listener in `ns` holds a half-open connection (SYN-RECV) from port `sport`.
fn half_open(ns: &str, sport: u16) -> bool {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "ss", "-Htn", "state", "syn-recv"])
        .output()
        .expect("ss");
    let suffix = format!(":{sport}");
    String::from_utf8_lossy(&out.stdout).lines().any(|l| {
        l.split_whitespace()
            .last()
            .is_some_and(|peer| peer.ends_with(&suffix))
    })
}

/// The original destination of a connection accepted on a dual-stack socket, either family.
fn original_dst_any(s: &TcpStream) -> String {
    let sock = SockRef::from(s);
    match sock.original_dst_v4().or_else(|_| sock.original_dst_v6()) {
        Ok(addr) => format!("{:?}", addr.as_socket()),
        Err(e) => format!("unknown: {e}"),
    }
}

/// Connects from `ns` to `to`, giving up after a second; the result does not matter.
fn try_connect(ns: &str, to: &str) {
    let to: SocketAddr = to.parse().expect("addr");
    let _ = in_ns(ns, move || {
        TcpStream::connect_timeout(&to, Duration::from_secs(1))
    });
}

#[test]
fn a_packet_routed_through_the_pod_toward_another_address_never_reaches_the_proxy() {
    const THIRD4: &str = "10.215.9.9";
    const THIRD6: &str = "fd00:215:9::9";
    for backend in BACKENDS {
        for allow_forwarding in [false, true] {
            let p = Pair::new();
            let mut args = vec![format!("--backend={backend}")];
            if allow_forwarding {
                args.push("--allow-forwarding".into());
            }
            p.init_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
            // A pod whose network namespace forwards (IPv4 forwarding is inherited from the
            // node on many kernels), with its default route, as pods have.
            for (family, sysctl, gw) in [
                ("-4", "net/ipv4/ip_forward", PEER4),
                ("-6", "net/ipv6/conf/all/forwarding", PEER6),
            ] {
                set_sysctl(&p.pod, sysctl, "1");
                sh(&[
                    "ip", "-n", &p.pod, family, "route", "add", "default", "via", gw,
                ]);
            }
            // The neighbour routes a third address via the pod, as kangaroo/worker did for
            // membership/db via storefront/web.
            sh(&[
                "ip",
                "-n",
                &p.peer,
                "route",
                "add",
                &format!("{THIRD4}/32"),
                "via",
                POD4,
            ]);
            sh(&[
                "ip",
                "-n",
                &p.peer,
                "-6",
                "route",
                "add",
                &format!("{THIRD6}/128"),
                "via",
                POD6,
            ]);
            let proxy = listen(&p.pod, "[::]:4143");
            for (third, save) in [
                (format!("{THIRD4}:443"), "iptables"),
                (format!("[{THIRD6}]:443"), "ip6tables"),
            ] {
                try_connect(&p.peer, &third);
                if let Some(s) = accepted(&proxy) {
                    panic!(
                        "{backend}: a connection to {third} routed through the pod reached its \
                         inbound proxy (original destination {}), which would relay it",
                        original_dst_any(&s)
                    );
                }
                let dropped = packets(
                    &p.pod,
                    &format!("{save}-{backend}-save"),
                    "filter",
                    "-A PORTCULLIS_FORWARD -j DROP",
                );
                if allow_forwarding {
                    assert_eq!(dropped, None, "{backend}: no FORWARD rule asked for");
                } else {
                    assert!(
                        dropped.is_some_and(|n| n >= 1),
                        "{backend}: {third}: the FORWARD drop counted {dropped:?}"
                    );
                }
            }
        }
    }
}

/// Sends `hi` to `to` over TCP or UDP from the pod as UID 2171, from a python3 socket with
/// SO_MARK `mark` (CAP_NET_ADMIN, ambient, to set it) or no mark: the proxy's UID, with or
/// without the proxy's mark. True when python3 reports the send done.
fn send_as_proxy_uid(ns: &str, proto: &str, to: &str, mark: Option<u32>) -> bool {
    let to: SocketAddr = to.parse().expect("addr");
    let script = r#"
import socket, sys
proto, host, port, mark = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
s = socket.socket(socket.AF_INET, kind)
if mark:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
s.settimeout(2)
if proto == "tcp":
    s.connect((host, port))
    s.sendall(b"hi\n")
else:
    s.sendto(b"hi\n", (host, port))
s.close()
"#;
    let caps = if mark.is_some() {
        "-all,+net_admin"
    } else {
        "-all"
    };
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "setpriv",
            "--reuid=2171",
            "--regid=2171",
        ])
        .args(["--clear-groups", &format!("--inh-caps={caps}")])
        .args([
            &format!("--ambient-caps={caps}"),
            "--",
            "/usr/bin/python3",
            "-c",
        ])
        .arg(script)
        .args([proto, &to.ip().to_string(), &to.port().to_string()])
        .arg(mark.unwrap_or(0).to_string())
        .output()
        .expect("setpriv python3");
    if !out.status.success() {
        eprintln!("python3: {}", String::from_utf8_lossy(&out.stderr));
    }
    out.status.success()
}

#[test]
fn with_a_proxy_mark_the_proxy_uid_alone_is_redirected_and_queued_like_any_app() {
    let p = Pair::new();
    p.init_ok(&["--proxy-mark=0x1000", "--outbound-tcp=proxy"]);
    // The read-back check accepted what iptables-save prints for the marked rule.
    let outbound = listen(&p.pod, "127.0.0.1:4140");
    let peer = listen(&p.peer, "0.0.0.0:7070");

    // UID 2171 without the mark (an image with `USER 2171`): redirected to the proxy.
    assert!(send_as_proxy_uid(
        &p.pod,
        "tcp",
        &format!("{PEER4}:7070"),
        None
    ));
    let s = accepted(&outbound).expect("UID 2171 without the mark lands on the outbound port");
    assert_eq!(original_dst(&s), format!("{PEER4}:7070").parse().unwrap());
    assert!(
        accepted(&peer).is_none(),
        "it never reached the peer itself"
    );

    // UID 2171 with the mark (the proxy): straight out.
    assert!(send_as_proxy_uid(
        &p.pod,
        "tcp",
        &format!("{PEER4}:7070"),
        Some(0x1000)
    ));
    let mut s = accepted(&peer).expect("the proxy's marked connection reaches the peer");
    s.set_nonblocking(false).expect("blocking");
    let mut hi = String::new();
    s.read_to_string(&mut hi).expect("read");
    assert_eq!(hi, "hi\n");
    assert!(accepted(&outbound).is_none());

    // UDP: without the mark the new flow goes to the queue (nobody reads it: dropped); with it,
    // it goes out.
    let peer_app = udp_socket(&p.peer, "0.0.0.0:5354");
    let mut buf = [0u8; 16];
    assert!(send_as_proxy_uid(
        &p.pod,
        "udp",
        &format!("{PEER4}:5354"),
        None
    ));
    assert!(
        peer_app.recv_from(&mut buf).is_err(),
        "unmarked UDP is queued"
    );
    assert_eq!(queued_packets(&p, "iptables", "PORTCULLIS_UDP_OUT"), 1);
    assert!(send_as_proxy_uid(
        &p.pod,
        "udp",
        &format!("{PEER4}:5354"),
        Some(0x1000)
    ));
    assert!(
        matches!(peer_app.recv_from(&mut buf), Ok((3, _))),
        "marked UDP goes out"
    );
    assert_eq!(queued_packets(&p, "iptables", "PORTCULLIS_UDP_OUT"), 1);

    // A different mark is not the proxy's.
    assert!(send_as_proxy_uid(
        &p.pod,
        "udp",
        &format!("{PEER4}:5354"),
        Some(0x0800)
    ));
    assert!(
        peer_app.recv_from(&mut buf).is_err(),
        "another mark is queued"
    );
    assert_eq!(queued_packets(&p, "iptables", "PORTCULLIS_UDP_OUT"), 2);
}

// ---- Issue 26: outbound TCP judged in the queue, Services relayed ----

/// A TCP connect from `ns` as root, with `SO_MARK` `mark` when given: `"ok"`, `"refused"` or
/// `"timeout"`, and how long `connect()` itself took (timed inside the process, so that a busy
/// machine's process start does not count).
fn connect_marked(ns: &str, to: SocketAddr, mark: Option<u32>) -> (String, Duration) {
    let script = format!(
        "import socket,time\ns=socket.socket(socket.AF_INET6 if ':' in '{ip}' else socket.AF_INET)\n\
         m={mark}\nif m: s.setsockopt(socket.SOL_SOCKET, 36, m)\ns.settimeout(1.5)\n\
         t=time.monotonic()\ntry:\n s.connect(('{ip}',{port})); r='ok'\n\
         except ConnectionRefusedError: r='refused'\nexcept OSError: r='timeout'\n\
         print(r, int((time.monotonic()-t)*1e6))\n",
        ip = to.ip(),
        port = to.port(),
        mark = mark.unwrap_or(0)
    );
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "python3", "-c", &script])
        .output()
        .expect("python3");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let (what, micros) = text.split_once(' ').unwrap_or((&text, "0"));
    (
        what.to_string(),
        Duration::from_micros(micros.parse().unwrap_or(u64::MAX)),
    )
}

#[test]
fn outbound_tcp_is_queued_but_services_are_relayed_and_a_refused_syn_is_reset() {
    let p = Pair::new();
    p.init_ok(&[&format!(
        "--service-cidrs={PEER4_SKIPPED}/32,fd00:215::3/128"
    )]);
    let outbound = listen(&p.pod, "127.0.0.1:4140");
    let peer = listen(&p.peer, "0.0.0.0:7070");

    // A pod IP: the SYN goes to the queue (nobody reads it here: dropped, fail closed), never
    // to the relay.
    let (what, _) = connect_marked(&p.pod, format!("{PEER4}:7070").parse().unwrap(), None);
    assert_eq!(what, "timeout");
    assert!(accepted(&outbound).is_none(), "not relayed");
    assert!(accepted(&peer).is_none(), "not passed unjudged");
    assert!(queued_packets(&p, "iptables", "PORTCULLIS_UDP_OUT") >= 1);

    // The Service range: redirected to the relay, with its original destination.
    let _c = connect(&p.pod, &format!("{PEER4_SKIPPED}:7070"));
    let s = accepted(&outbound).expect("a ClusterIP connection lands on the outbound port");
    assert_eq!(
        original_dst(&s),
        format!("{PEER4_SKIPPED}:7070").parse().unwrap()
    );

    // The proxy's refusal (its verdict repeats the SYN with the refused mark): reset at once.
    for to in [format!("{PEER4}:7070"), format!("[{PEER6}]:7070")] {
        let (what, took) = connect_marked(&p.pod, to.parse().unwrap(), Some(0x2000));
        assert_eq!(what, "refused", "{to}");
        assert!(took < Duration::from_millis(100), "{to}: {took:?}");
    }
    assert!(accepted(&peer).is_none());

    // The proxy's own connections go straight out.
    assert!(send_as_proxy_uid(
        &p.pod,
        "tcp",
        &format!("{PEER4}:7070"),
        None
    ));
    assert!(accepted(&peer).is_some(), "UID 2171 is exempt");
}
