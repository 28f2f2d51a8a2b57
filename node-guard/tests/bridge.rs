//! The node guard against real forged frames: a "node" network namespace holding a bridge (with
//! the node's own address on it) and three pods on veths into it: a victim server, an allowed
//! client and an attacker that sends what a pod with `CAP_NET_RAW` can (raw Ethernet frames from
//! `tests/craft.py`, AF_PACKET). Each attack is shown to work without the guard (so the test
//! sees it) and to fail with it; legitimate IPv4 and IPv6 traffic (neighbour discovery
//! included) still flows with it. Needs root; run under `flock /tmp/portcullis-netns.lock`.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, SocketAddrV6, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use portcullis_netns::testing::{in_ns, require_root, sh};
use socket2::{Domain, Socket, Type};

const NODE4: &str = "10.217.0.1";
const NODE6: &str = "fd00:217::1";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

#[derive(Clone)]
struct Pod {
    ns: String,
    /// Its port on the bridge (the host-side veth, in the node namespace).
    port: &'static str,
    mac: &'static str,
    v4: &'static str,
    v6: &'static str,
}

struct Net {
    node: String,
    victim: Pod,
    client: Pod,
    attacker: Pod,
    pods_file: PathBuf,
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in [
            &self.node,
            &self.victim.ns,
            &self.client.ns,
            &self.attacker.ns,
        ] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_file(&self.pods_file);
    }
}

impl Net {
    fn new() -> Net {
        require_root("the node guard test builds a bridge in network namespaces");
        let tag = format!(
            "{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let pod = |name: &str, port, mac, v4, v6| Pod {
            ns: format!("pcng-{tag}-{name}"),
            port,
            mac,
            v4,
            v6,
        };
        let net = Net {
            node: format!("pcng-{tag}-node"),
            victim: pod(
                "victim",
                "pod-victim",
                "02:17:00:00:00:10",
                "10.217.0.10",
                "fd00:217::10",
            ),
            client: pod(
                "client",
                "pod-client",
                "02:17:00:00:00:20",
                "10.217.0.20",
                "fd00:217::20",
            ),
            attacker: pod(
                "attacker",
                "pod-attacker",
                "02:17:00:00:00:30",
                "10.217.0.30",
                "fd00:217::30",
            ),
            pods_file: std::env::temp_dir().join(format!("pcng-{tag}.json")),
        };
        let node = net.node.as_str();
        sh(&["ip", "netns", "add", node]);
        ip_n(node, "link set lo up");
        ip_n(node, "link add br0 type bridge");
        ip_n(node, "link set br0 up");
        ip_n(node, &format!("addr add {NODE4}/24 dev br0"));
        ip_n(node, &format!("addr add {NODE6}/64 dev br0 nodad"));
        for p in [&net.victim, &net.client, &net.attacker] {
            let ns = p.ns.as_str();
            sh(&["ip", "netns", "add", ns]);
            ip_n(
                node,
                &format!("link add {} type veth peer name eth0 netns {ns}", p.port),
            );
            ip_n(node, &format!("link set {} master br0 up", p.port));
            ip_n(ns, &format!("link set eth0 address {}", p.mac));
            ip_n(ns, "link set lo up");
            ip_n(ns, "link set eth0 up");
            ip_n(ns, &format!("addr add {}/24 dev eth0", p.v4));
            // With duplicate address detection: its neighbour solicitation from `::` must pass.
            ip_n(ns, &format!("addr add {}/64 dev eth0", p.v6));
        }
        net.wait_addresses();
        net
    }

    fn pods(&self) -> [&Pod; 3] {
        [&self.victim, &self.client, &self.attacker]
    }

    /// Until no IPv6 address is tentative any more (DAD done, link-local ones included).
    fn wait_addresses(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        for p in self.pods() {
            loop {
                let out = Command::new("ip")
                    .args(["-n", &p.ns, "-6", "addr", "show", "tentative"])
                    .output()
                    .expect("ip addr");
                if out.stdout.is_empty() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{}: addresses stay tentative",
                    p.ns
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    fn pods_json(&self) -> String {
        pods_json(&self.pods().map(|p| (p.port, p.mac, [p.v4, p.v6])))
    }

    /// Runs the guard binary in the node namespace.
    fn guard_binary(&self, args: &[&str]) {
        let file = self.pods_file.to_str().expect("utf-8 path");
        let mut all = vec![
            "netns",
            "exec",
            &self.node,
            env!("CARGO_BIN_EXE_portcullis-node-guard"),
        ];
        all.extend_from_slice(&["--pods-file", file]);
        all.extend_from_slice(args);
        let out = Command::new("ip")
            .args(&all)
            .output()
            .expect("run the guard");
        assert!(
            out.status.success(),
            "portcullis-node-guard {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Installs the guard for the three pods, with the bridge's addresses as the node's.
    fn guard_on(&self) {
        std::fs::write(&self.pods_file, self.pods_json()).expect("write the pod list");
        self.guard_binary(&["--bridge", "br0", "--once"]);
        let listed = nft_list(&self.node);
        assert!(listed.contains(self.attacker.mac), "{listed}");
    }

    fn guard_off(&self) {
        self.guard_binary(&["--cleanup"]);
        assert_eq!(nft_list(&self.node), "", "the table is gone");
    }

    fn flush_neighbours(&self) {
        for ns in [
            &self.node,
            &self.victim.ns,
            &self.client.ns,
            &self.attacker.ns,
        ] {
            ip_n(ns, "neigh flush all");
        }
    }

    /// The attacker sends raw frames (`tests/craft.py` with `args`).
    fn craft(&self, args: &[&str]) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/craft.py");
        let mut all = vec!["ip", "netns", "exec", &self.attacker.ns, "python3", script];
        all.extend_from_slice(args);
        sh(&all);
    }

    /// Whether a UDP datagram the attacker forges from `src_ip` (Ethernet source `eth_src`)
    /// reaches the victim's socket with that source.
    fn forged_udp_delivered(&self, src_ip: &str, eth_src: &str, port: u16) -> bool {
        let src: IpAddr = src_ip.parse().expect("ip");
        let dst = if src.is_ipv4() {
            self.victim.v4
        } else {
            self.victim.v6
        };
        let sock = udp(
            &self.victim.ns,
            SocketAddr::new(dst.parse().expect("ip"), port),
        );
        let token = format!("forged-{port}");
        let (sport, dport) = ("5555".to_string(), port.to_string());
        self.craft(&[
            "udp",
            "eth0",
            eth_src,
            self.victim.mac,
            src_ip,
            dst,
            &sport,
            &dport,
            &token,
        ]);
        received(&sock, Duration::from_millis(700))
            .iter()
            .any(|(from, text)| from.ip() == src && *text == token)
    }

    /// Whether the attacker, claiming `claimed` (the client's or the node's address) by ARP
    /// replies (IPv4) or unsolicited neighbour advertisements (IPv6) to the victim, completes
    /// a TCP handshake with the victim as `claimed` and gets its own bytes accepted. `warm` is
    /// the namespace that really owns `claimed`: it sends first, so that the victim has a
    /// neighbour entry to poison. Returns whether the victim's neighbour entry for `claimed`
    /// named the attacker's MAC after the poisoning, and whether the handshake completed.
    fn poisoned_handshake(&self, claimed: &str, warm: &str, port: u16) -> (bool, bool) {
        let src: IpAddr = claimed.parse().expect("ip");
        let victim_ip: IpAddr = if src.is_ipv4() {
            self.victim.v4
        } else {
            self.victim.v6
        }
        .parse()
        .expect("ip");
        let listener = listen(&self.victim.ns, SocketAddr::new(victim_ip, port));
        // The real owner talks to the victim first (ARP or ND both ways, a neighbour entry).
        let sink = udp(&self.victim.ns, SocketAddr::new(victim_ip, port + 1));
        let (from, to) = (
            SocketAddr::new(src, 0),
            SocketAddr::new(victim_ip, port + 1),
        );
        in_ns(warm, move || {
            let s = UdpSocket::bind(from).expect("bind");
            s.send_to(b"hello", to).expect("send");
        });
        assert!(
            !received(&sink, Duration::from_millis(500)).is_empty(),
            "warm-up"
        );
        // The attacker uses the claimed address with its own stack (what a pod with NET_RAW
        // does in user space: the frames on the bridge are the same) and poisons the victim.
        let attacker = &self.attacker;
        let (a, v) = (attacker.mac, self.victim.mac);
        let own = format!("{claimed}/{}", if src.is_ipv4() { 32 } else { 128 });
        ip_n(&attacker.ns, &format!("addr add {own} dev eth0 nodad"));
        let victim_text = victim_ip.to_string();
        if src.is_ipv4() {
            self.craft(&[
                "arp",
                "eth0",
                v,
                "2",
                a,
                claimed,
                v,
                &victim_text,
                "8",
                "0.25",
            ]);
        } else {
            // From the attacker's own link-local address: only the target gives it away.
            let ll = "fe80::17:ff:fe00:30";
            self.craft(&[
                "na",
                "eth0",
                a,
                v,
                ll,
                &victim_text,
                claimed,
                a,
                "8",
                "0.25",
            ]);
        }
        let neigh = Command::new("ip")
            .args(["-n", &self.victim.ns, "neigh", "show", claimed])
            .output()
            .expect("ip neigh");
        let poisoned = String::from_utf8_lossy(&neigh.stdout).contains(a);
        let dst = SocketAddr::new(victim_ip, port);
        let connected = in_ns(&attacker.ns, move || {
            let s = Socket::new(Domain::for_address(dst), Type::STREAM, None).expect("socket");
            s.bind(&SocketAddr::new(src, 0).into())
                .expect("bind the claimed address");
            s.connect_timeout(&dst.into(), Duration::from_secs(3))
                .and_then(|()| {
                    let mut t: TcpStream = s.into();
                    t.write_all(b"attacker").map(|()| t)
                })
                .is_ok()
        });
        let accepted = accept_within(&listener, Duration::from_secs(2));
        ip_n(&attacker.ns, &format!("addr del {own} dev eth0"));
        self.flush_neighbours();
        let Some((mut stream, peer)) = accepted else {
            return (poisoned, false);
        };
        let mut got = [0u8; 8];
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let read = stream.read_exact(&mut got).is_ok();
        let handshake = connected && read && peer.ip() == src && &got == b"attacker";
        (poisoned, handshake)
    }
}

/// `ip -n {ns} {args}` (words separated by spaces).
fn ip_n(ns: &str, args: &str) {
    let mut all = vec!["ip", "-n", ns];
    all.extend(args.split_whitespace());
    sh(&all);
}

fn nft_list(ns: &str) -> String {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "nft",
            "list",
            "table",
            "bridge",
            "portcullis_guard",
        ])
        .output()
        .expect("nft (apt-get install nftables)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn udp(ns: &str, addr: SocketAddr) -> UdpSocket {
    let s = in_ns(ns, move || UdpSocket::bind(addr)).expect("bind udp");
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    s
}

/// Every datagram that arrives within `window`.
fn received(sock: &UdpSocket, window: Duration) -> Vec<(SocketAddr, String)> {
    let deadline = Instant::now() + window;
    let mut out = Vec::new();
    let mut buf = [0u8; 1500];
    while Instant::now() < deadline {
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            out.push((from, String::from_utf8_lossy(&buf[..n]).into_owned()));
        }
    }
    out
}

fn listen(ns: &str, addr: SocketAddr) -> TcpListener {
    let l = in_ns(ns, move || TcpListener::bind(addr)).expect("listen");
    l.set_nonblocking(true).expect("nonblocking");
    l
}

fn accept_within(l: &TcpListener, window: Duration) -> Option<(TcpStream, SocketAddr)> {
    let deadline = Instant::now() + window;
    while Instant::now() < deadline {
        if let Ok((s, peer)) = l.accept() {
            s.set_nonblocking(false).expect("blocking");
            return Some((s, peer));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// A TCP exchange from `from_ns` to `to` (served in `to_ns`): the server sees `expect_peer`
/// and the bytes go both ways.
fn tcp_works(from_ns: &str, to_ns: &str, to: SocketAddr, expect_peer: IpAddr) {
    let l = listen(to_ns, to);
    let mut c = in_ns(from_ns, move || {
        TcpStream::connect_timeout(&to, Duration::from_secs(3))
    })
    .unwrap_or_else(|e| panic!("{from_ns} → {to}: {e}"));
    let (mut s, peer) = accept_within(&l, Duration::from_secs(3)).expect("accepted");
    assert_eq!(peer.ip(), expect_peer);
    c.write_all(b"ping").expect("write");
    let mut got = [0u8; 4];
    s.read_exact(&mut got).expect("read");
    s.write_all(b"pong").expect("write back");
    c.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    c.read_exact(&mut got).expect("read back");
    assert_eq!(&got, b"pong");
}

/// A UDP datagram from `from_ns` to `to` arrives from `expect_peer`.
/// A pod list of (port, MAC, IPs).
fn pods_json(pods: &[(&str, &str, [&str; 2])]) -> String {
    let entries: Vec<String> = pods
        .iter()
        .map(|(port, mac, [a, b])| {
            format!(r#"{{"interface": "{port}", "mac": "{mac}", "ips": ["{a}", "{b}"]}}"#)
        })
        .collect();
    format!("[{}]", entries.join(", "))
}

fn udp_works(from_ns: &str, to_ns: &str, to: SocketAddr, expect_peer: IpAddr) {
    assert!(
        udp_delivered(from_ns, to_ns, to, expect_peer),
        "{from_ns} → {to}"
    );
}

/// Whether a UDP datagram sent by `from_ns`'s own stack to `to` arrives from `expect_peer`.
fn udp_delivered(from_ns: &str, to_ns: &str, to: SocketAddr, expect_peer: IpAddr) -> bool {
    let sock = udp(to_ns, to);
    let unspecified: SocketAddr = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
        .parse()
        .expect("addr");
    in_ns(from_ns, move || {
        let s = UdpSocket::bind(unspecified).expect("bind");
        s.send_to(b"legit", to).expect("send");
    });
    received(&sock, Duration::from_millis(1500))
        .iter()
        .any(|(f, t)| f.ip() == expect_peer && t == "legit")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

#[test]
fn forged_udp_sources_are_delivered_without_the_guard_and_dropped_with_it() {
    let net = Net::new();
    let a = net.attacker.mac;
    let cases = [
        ("client's IPv4", net.client.v4, a),
        ("client's IPv4 and MAC", net.client.v4, net.client.mac),
        ("node's IPv4", NODE4, a),
        ("client's IPv6", net.client.v6, a),
        ("node's IPv6", NODE6, a),
    ];
    let run = |base: u16, want: bool, guard: &str| {
        for (i, (what, src, mac)) in cases.iter().enumerate() {
            let got = net.forged_udp_delivered(src, mac, base + i as u16);
            assert_eq!(got, want, "{guard} the guard: {what} delivered");
        }
    };
    run(7000, true, "without");
    net.guard_on();
    run(7100, false, "with");
    // The attacker's own source still passes: the guard binds, it does not isolate.
    assert!(net.forged_udp_delivered(net.attacker.v4, a, 7200));
    net.guard_off();
    assert!(
        net.forged_udp_delivered(net.client.v4, a, 7201),
        "cleanup removed it all"
    );
}

#[test]
fn poisoned_tcp_handshakes_complete_without_the_guard_and_fail_with_it() {
    let net = Net::new();
    let (client, node) = (net.client.ns.clone(), net.node.clone());
    let cases = [
        ("ARP, as the client", net.client.v4, &client),
        ("ARP, as the node", NODE4, &node),
        (
            "neighbour advertisement, as the client",
            net.client.v6,
            &client,
        ),
        ("neighbour advertisement, as the node", NODE6, &node),
    ];
    let run = |base: u16, want: (bool, bool), guard: &str| {
        for (i, (what, claimed, warm)) in cases.iter().enumerate() {
            let got = net.poisoned_handshake(claimed, warm, base + 10 * i as u16);
            assert_eq!(got, want, "{guard} the guard: {what} (poisoned, handshake)");
        }
    };
    run(8000, (true, true), "without");
    net.guard_on();
    run(8100, (false, false), "with");
    // The real owners still reach the victim after the attempts.
    for (i, (peer, to)) in [
        (net.client.v4, net.victim.v4),
        (net.client.v6, net.victim.v6),
    ]
    .into_iter()
    .enumerate()
    {
        let at = SocketAddr::new(ip(to), 8200 + i as u16);
        tcp_works(&client, &net.victim.ns, at, ip(peer));
    }
}

#[test]
fn legitimate_ipv4_and_ipv6_traffic_flows_through_the_guard() {
    let net = Net::new();
    net.guard_on();
    net.flush_neighbours();
    let (c, v, n) = (&net.client.ns, &net.victim.ns, &net.node);
    for (i, (to, from)) in [
        (net.victim.v4, net.client.v4),
        (net.victim.v6, net.client.v6),
    ]
    .into_iter()
    .enumerate()
    {
        let port = 9000 + 10 * i as u16;
        tcp_works(c, v, SocketAddr::new(ip(to), port), ip(from));
        udp_works(c, v, SocketAddr::new(ip(to), port + 1), ip(from));
        // The node side is not a pod port: the node's address reaches pods, both ways.
        tcp_works(
            n,
            v,
            SocketAddr::new(ip(to), port + 2),
            ip(if i == 0 { NODE4 } else { NODE6 }),
        );
        tcp_works(
            v,
            n,
            SocketAddr::new(ip(if i == 0 { NODE4 } else { NODE6 }), port + 3),
            ip(to),
        );
    }
    // Link-local IPv6 (neighbour discovery's own addresses, derived from the MAC).
    let scope = in_ns(c, || nix::net::if_::if_nametoindex("eth0")).expect("ifindex");
    let victim_ll: std::net::Ipv6Addr = "fe80::17:ff:fe00:10".parse().expect("ip");
    let client_ll: IpAddr = "fe80::17:ff:fe00:20".parse().expect("ip");
    let vscope = in_ns(v, || nix::net::if_::if_nametoindex("eth0")).expect("ifindex");
    let sock = udp(
        v,
        SocketAddr::V6(SocketAddrV6::new(victim_ll, 9100, 0, vscope)),
    );
    in_ns(c, move || {
        let s = UdpSocket::bind("[::]:0").expect("bind");
        let to = SocketAddrV6::new(victim_ll, 9100, 0, scope);
        s.send_to(b"legit", to).expect("send");
    });
    let got = received(&sock, Duration::from_millis(1500));
    assert!(
        got.iter().any(|(f, t)| f.ip() == client_ll && t == "legit"),
        "{got:?}"
    );
    net.guard_off();
}

/// The guard running as a daemon in the node namespace; killed when dropped.
struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Until the node's table `has` (or, with `false`, lacks) `text`.
fn wait_table(net: &Net, text: &str, has: bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while nft_list(&net.node).contains(text) != has {
        assert!(Instant::now() < deadline, "table never {has} for {text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_daemon_follows_the_pod_list_and_unlisted_pod_ports_send_nothing() {
    let net = Net::new();
    let (v, c, a) = (&net.victim, &net.client, &net.attacker);
    let write = |pods: &[(&str, &str, [&str; 2])]| {
        let tmp = net.pods_file.with_extension("tmp");
        std::fs::write(&tmp, pods_json(pods)).expect("write");
        std::fs::rename(&tmp, &net.pods_file).expect("rename");
    };
    write(&[(v.port, v.mac, [v.v4, v.v6]), (c.port, c.mac, [c.v4, c.v6])]);
    let file = net.pods_file.to_str().expect("utf-8").to_string();
    let bin = env!("CARGO_BIN_EXE_portcullis-node-guard");
    let args = [
        "--bridge",
        "br0",
        "--drop-unlisted",
        "pod-",
        "--interval",
        "100ms",
    ];
    let child = Command::new("ip")
        .args(["netns", "exec", &net.node, bin, "--pods-file", &file])
        .args(args)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the guard");
    let _daemon = Daemon(child);
    wait_table(&net, c.mac, true);
    let to = |port| SocketAddr::new(ip(v.v4), port);
    // The attacker's port is not listed yet: even its own address sends nothing.
    assert!(udp_delivered(&c.ns, &v.ns, to(9300), ip(c.v4)));
    assert!(!udp_delivered(&a.ns, &v.ns, to(9301), ip(a.v4)));
    // The client is deleted and its addresses handed to the new pod on the attacker's port, in
    // one version of the list: one transaction unbinds the old port and binds the new one.
    write(&[(v.port, v.mac, [v.v4, v.v6]), (a.port, a.mac, [c.v4, c.v6])]);
    wait_table(&net, c.mac, false);
    wait_table(&net, a.mac, true);
    sh(&[
        "ip",
        "-n",
        &a.ns,
        "addr",
        "add",
        &format!("{}/32", c.v4),
        "dev",
        "eth0",
    ]);
    // The old pod (its port unlisted now) no longer sends as that address; the new one does.
    assert!(!udp_delivered(&c.ns, &v.ns, to(9302), ip(c.v4)));
    let from_new = SocketAddr::new(ip(c.v4), 0);
    let sock = udp(&v.ns, to(9303));
    in_ns(&a.ns, move || {
        let s = UdpSocket::bind(from_new).expect("bind");
        s.send_to(b"legit", SocketAddr::new(ip("10.217.0.10"), 9303))
            .expect("send");
    });
    let got = received(&sock, Duration::from_millis(1500));
    assert!(got.iter().any(|(f, _)| f.ip() == ip(c.v4)), "{got:?}");
    // A list that does not parse keeps the rules in place.
    std::fs::write(&net.pods_file, "not json").expect("write");
    std::thread::sleep(Duration::from_millis(500));
    assert!(nft_list(&net.node).contains(a.mac));
}

/// A CNI result as libcni caches it for the bridge plugin: bridge, host veth, pod interface.
fn cni_result(p: &Pod) -> String {
    format!(
        r#"{{"kind": "cniCacheV1", "containerId": "{ns}", "ifName": "eth0", "networkName": "t",
            "cniArgs": [["K8S_POD_NAMESPACE", "default"], ["K8S_POD_NAME", "{ns}"]],
            "result": {{"cniVersion": "1.0.0",
              "interfaces": [{{"name": "br0", "mac": "02:17:00:00:00:01"}},
                             {{"name": "{port}", "mac": "02:17:00:00:01:01"}},
                             {{"name": "eth0", "mac": "{mac}", "sandbox": "/var/run/netns/{ns}"}}],
              "ips": [{{"address": "{v4}/24", "interface": 2}},
                      {{"address": "{v6}/64", "interface": 2}}]}}}}"#,
        ns = p.ns,
        port = p.port,
        mac = p.mac,
        v4 = p.v4,
        v6 = p.v6
    )
}

#[test]
fn the_cni_result_cache_mode_guards_the_same() {
    let net = Net::new();
    let dir = net.pods_file.with_extension("d");
    std::fs::create_dir_all(&dir).expect("mkdir");
    for p in net.pods() {
        std::fs::write(dir.join(format!("t-{}-eth0", p.ns)), cni_result(p)).expect("write");
    }
    let bin = env!("CARGO_BIN_EXE_portcullis-node-guard");
    let d = dir.to_str().expect("utf-8");
    let ok = ["--cni-results", d, "--bridge", "br0", "--once"];
    sh(&[&["ip", "netns", "exec", &net.node, bin][..], &ok[..]].concat());
    let _ = std::fs::remove_dir_all(&dir);
    let a = net.attacker.mac;
    assert!(!net.forged_udp_delivered(net.client.v4, a, 9400));
    assert!(!net.forged_udp_delivered(NODE6, a, 9401));
    let to = SocketAddr::new(ip(net.victim.v6), 9402);
    udp_works(&net.client.ns, &net.victim.ns, to, ip(net.client.v6));
}
