//! The real proxy, as UID 2171, in a network namespace made by the test, with iptables
//! `REDIRECT` rules in front of it (written here, the way portcullis-init writes them), and a
//! peer in a second namespace across a veth pair. Needs root; never touches the host's netfilter.

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[macro_use]
mod support;

use portcullis_netns::testing::{in_ns, ip_in, sh, veth, Pair, TestNamespace};
use support::ProxyUnderTest;

const POD_IP: &str = "10.214.0.1";
const PEER_IP: &str = "10.214.0.2";
const POD_IP6: &str = "fd14:214::1";
const PEER_IP6: &str = "fd14:214::2";
/// Link-local addresses on the pod–peer veth pair (besides the kernel's own).
const POD_LINK_LOCAL: &str = "fe80::214:1";
const PEER_LINK_LOCAL: &str = "fe80::214:2";
/// A third namespace behind the pod, as another pod on the same node would be.
const NEIGHBOUR_SIDE_IP: &str = "10.214.1.1";
const NEIGHBOUR_IP: &str = "10.214.1.2";
const NEIGHBOUR_SIDE_IP6: &str = "fd14:215::1";
const NEIGHBOUR_IP6: &str = "fd14:215::2";
const NEIGHBOUR_PORT: u16 = 443;
/// An application in the pod that listens on 127.0.0.1 only.
const LOCALHOST_ONLY_PORT: u16 = 7777;
const APP_PORT: u16 = 8080;
const OTHER_APP_PORT: u16 = 9090;
const PEER_PORT: u16 = 7070;
const OTHER_PEER_PORT: u16 = 7071;

const BASE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: x, labels: {app: server}}
spec: {containers: [{name: app, ports: [{containerPort: 8080, name: http}, {containerPort: 9090}]}]}
status: {podIP: 10.214.0.1, podIPs: [{ip: 10.214.0.1}, {ip: "fd14:214::1"}], hostIP: 10.214.0.254, phase: Running}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: x, labels: {app: client}}
status: {podIP: 10.214.0.2, podIPs: [{ip: 10.214.0.2}, {ip: "fd14:214::2"}], hostIP: 10.214.0.254, phase: Running}
"#;

const ALLOW_CLIENT_ON_8080: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-to-http, namespace: x}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{port: http}]
"#;

const ALLOW_CLIENT_ON_9090: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-to-9090, namespace: x}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{port: 9090}]
"#;

const EGRESS_ONLY_7070: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-7070, namespace: x}
spec:
  podSelector: {matchLabels: {app: server}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{port: 7070}]
"#;

fn require_root() {
    portcullis_netns::testing::require_root(
        "these tests create network namespaces and iptables rules",
    );
}

/// A pod namespace with the proxy, a peer namespace, and everything removed on drop (the
/// proxy first, then the namespaces).
struct Setup {
    /// The proxy, its policy directory and log (`support`), reached through `Deref`.
    under: ProxyUnderTest,
    pod_ns: String,
    peer_ns: String,
    /// The pod's end of the veth pair.
    veth_pod: String,
    /// The peer's end of the veth pair (its index scopes link-local addresses in the peer).
    veth_peer: String,
    /// Made by `add_neighbour`; removed like the other two.
    neighbour_ns: String,
    neighbour: std::cell::OnceCell<TestNamespace>,
    _pair: Pair,
}

deref_to_proxy_under_test!(Setup);

/// Where the proxy under test gets its table.
enum Source {
    /// `--policy-dir` with the manifests written by the test.
    Dir,
    /// `--controller`: started by the caller in the pod namespace once it exists.
    Controller(Box<dyn FnOnce(&str) -> String>),
}

impl Setup {
    fn new(manifests: &[&str], proxy_args: &[&str]) -> Setup {
        Setup::with_nofile(manifests, proxy_args, None)
    }

    /// Like `new`, with the proxy's `RLIMIT_NOFILE` (soft and hard) set to `nofile`.
    fn with_nofile(manifests: &[&str], proxy_args: &[&str], nofile: Option<u64>) -> Setup {
        Setup::start(manifests, proxy_args, nofile, Source::Dir)
    }

    /// A proxy that streams its table from a controller: `start(pod_ns)` starts one inside the
    /// pod namespace and returns its URL.
    fn with_controller(start: impl FnOnce(&str) -> String + 'static) -> Setup {
        Setup::start(&[], &[], None, Source::Controller(Box::new(start)))
    }

    fn start(
        manifests: &[&str],
        proxy_args: &[&str],
        nofile: Option<u64>,
        source: Source,
    ) -> Setup {
        require_root();
        let pair = Pair::new(
            "pc-proxy",
            &[
                &format!("{POD_IP}/24"),
                &format!("{POD_IP6}/64"),
                &format!("{POD_LINK_LOCAL}/64"),
            ],
            &[
                &format!("{PEER_IP}/24"),
                &format!("{PEER_IP6}/64"),
                &format!("{PEER_LINK_LOCAL}/64"),
            ],
        );
        let id = pair.id.clone();
        let (pod, veth_pod) = (pair.pod.clone(), pair.pod_dev.clone());
        let mut setup = Setup {
            under: ProxyUnderTest::prepare(&pod, "pc-proxy-test", &id, BASE, manifests),
            pod_ns: pair.pod.clone(),
            peer_ns: pair.peer.clone(),
            veth_pod: pair.pod_dev.clone(),
            veth_peer: pair.peer_dev.clone(),
            neighbour_ns: format!("pc-proxy-{id}-nb"),
            neighbour: std::cell::OnceCell::new(),
            _pair: pair,
        };
        for (restore, loopback) in [
            ("iptables-restore", "127.0.0.0/8"),
            ("ip6tables-restore", "::1/128"),
        ] {
            let rules = format!(
                "*nat\n\
                 -A PREROUTING -p tcp --dport 4191 -j RETURN\n\
                 -A PREROUTING -p tcp -i {veth_pod} -j REDIRECT --to-ports 4143\n\
                 -A OUTPUT -p tcp -m owner --uid-owner 2171 -j RETURN\n\
                 -A OUTPUT -p tcp -d {loopback} -j RETURN\n\
                 -A OUTPUT -p tcp -j REDIRECT --to-ports 4140\n\
                 COMMIT\n"
            );
            portcullis_netns::testing::restore(&pod, restore, &rules);
        }

        let mut cmd = setup.command();
        if let Some(n) = nofile {
            cmd.args(["prlimit", &format!("--nofile={n}:{n}"), "--"]);
        }
        // Only CAP_NET_ADMIN, ambient, as the injector runs it (for the UDP/SCTP queue).
        ProxyUnderTest::as_proxy_user(&mut cmd, "-all,+net_admin");
        cmd.arg(env!("CARGO_BIN_EXE_portcullis-proxy"));
        match source {
            Source::Dir => {
                cmd.arg("--policy-dir")
                    .arg(setup.dir.join("policy"))
                    .args(["--policy-poll-interval", "100ms"]);
            }
            Source::Controller(start) => {
                cmd.args(["--controller", &start(&setup.pod_ns)])
                    .arg("--token-file")
                    .arg(setup.dir.join("no-token"));
            }
        }
        cmd.args(proxy_args);
        setup.spawn(cmd, &format!("{POD_IP},{POD_IP6}"), "10.214.0.254");
        setup
    }

    /// An echo server inside the pod (or the peer) namespace, on `[::]` (IPv4 and IPv6).
    fn echo_server(&self, in_pod: bool, port: u16) {
        let ns = if in_pod { &self.pod_ns } else { &self.peer_ns };
        echo_server_on(ns, SocketAddr::from(([0u16; 8], port)));
    }

    fn connect_from_peer(&self, port: u16) -> std::io::Result<TcpStream> {
        connect_in(&self.peer_ns, format!("{POD_IP}:{port}").parse().unwrap())
    }

    fn connect_from_pod(&self, port: u16) -> std::io::Result<TcpStream> {
        connect_in(&self.pod_ns, format!("{PEER_IP}:{port}").parse().unwrap())
    }

    /// A third namespace behind the pod (another veth pair, the pod's side numbered
    /// `NEIGHBOUR_SIDE_IP`), with a server on `NEIGHBOUR_PORT` that counts who reached it; the
    /// peer routes the neighbour's addresses via the pod, as a hostile pod on the node can.
    fn add_neighbour(&self) -> Arc<AtomicUsize> {
        let (pod, nb) = (&self.pod_ns, &self.neighbour_ns);
        self.neighbour
            .set(TestNamespace::create(nb))
            .expect("one neighbour");
        veth(
            pod,
            &[
                &format!("{NEIGHBOUR_SIDE_IP}/24"),
                &format!("{NEIGHBOUR_SIDE_IP6}/64"),
            ],
            nb,
            &[
                &format!("{NEIGHBOUR_IP}/24"),
                &format!("{NEIGHBOUR_IP6}/64"),
            ],
        );
        ip_in(nb, &["route", "add", "default", "via", NEIGHBOUR_SIDE_IP]);
        ip_in(
            nb,
            &["-6", "route", "add", "default", "via", NEIGHBOUR_SIDE_IP6],
        );
        let peer = &self.peer_ns;
        ip_in(peer, &["route", "add", "10.214.1.0/24", "via", POD_IP]);
        ip_in(
            peer,
            &["-6", "route", "add", "fd14:215::/64", "via", POD_IP6],
        );
        let reached = Arc::new(AtomicUsize::new(0));
        let listener = in_ns(nb, move || TcpListener::bind(("::", NEIGHBOUR_PORT))).expect("bind");
        let count = reached.clone();
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                count.fetch_add(1, Ordering::SeqCst);
                let _ = conn.write_all(b"the neighbour's secret\n");
            }
        });
        reached
    }
}

/// An echo server bound to `addr` inside `ns`.
fn echo_server_on(ns: &str, addr: SocketAddr) {
    {
        let listener = in_ns(ns, move || TcpListener::bind(addr)).expect("bind echo");
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    loop {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if conn.write_all(&buf[..n]).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    let _ = conn.write_all(b"<eof>");
                    let _ = conn.shutdown(Shutdown::Write);
                });
            }
        });
    }
}

fn connect_in(ns: &str, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = in_ns(ns, move || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(3))
    })?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    Ok(s)
}

/// Writes, half-closes, and reads everything back.
fn exchange(mut s: TcpStream, payload: &[u8]) -> std::io::Result<Vec<u8>> {
    s.write_all(payload)?;
    s.shutdown(Shutdown::Write)?;
    let mut back = Vec::new();
    s.read_to_end(&mut back)?;
    Ok(back)
}

/// True when the connection is reset (as the proxy refuses), false when it carries data. The
/// reset can come so fast that `connect` itself reports it.
fn is_reset(connected: std::io::Result<TcpStream>) -> bool {
    let mut s = match connected {
        Ok(s) => s,
        Err(e) => return e.kind() == ErrorKind::ConnectionReset,
    };
    if let Err(e) = s.write_all(b"hello\n") {
        // The reset arrived first and this write consumed it.
        return matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe);
    }
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Err(e) => e.kind() == ErrorKind::ConnectionReset,
        // Data or a clean close: either way, not refused the way the proxy refuses.
        Ok(_n) => false,
    }
}

#[test]
fn inbound_allowed_carries_data_and_denied_is_reset_with_one_audit_line() {
    let t = Setup::new(&[ALLOW_CLIENT_ON_8080], &[]);
    t.echo_server(true, APP_PORT);
    t.echo_server(true, OTHER_APP_PORT);
    t.wait_ready();

    let (status, body) = t.admin("/policy");
    assert_eq!(status, 200);
    let policy: serde_json::Value = serde_json::from_str(&body).expect("JSON /policy");
    assert_eq!(policy["generation"], 1);
    assert_eq!(policy["table"]["name"], "server");
    assert_eq!(
        policy["table"]["ingress"]["isolated_by"][0],
        "x/client-to-http"
    );
    assert_eq!(t.admin("/live").0, 200);

    // Allowed: a megabyte one way, a half-close, and the echo back after it.
    let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
    let back =
        exchange(t.connect_from_peer(APP_PORT).expect("connect"), &payload).expect("exchange");
    assert_eq!(&back[..payload.len()], &payload[..]);
    assert_eq!(
        &back[payload.len()..],
        b"<eof>",
        "the app saw our half-close"
    );

    // Denied: port 9090 is not in the policy.
    assert!(
        is_reset(t.connect_from_peer(OTHER_APP_PORT)),
        "denied connection must be reset"
    );
    t.wait_for("the denial audit line", || {
        !t.log_lines("connection_denied").is_empty()
    });
    std::thread::sleep(Duration::from_millis(300));
    let lines = t.log_lines("connection_denied");
    assert_eq!(lines.len(), 1, "exactly one audit line: {lines:?}");
    let line = &lines[0];
    assert_eq!(line["direction"], "ingress");
    support::assert_audit_schema(line);
    assert_eq!(line["dst_ip"], POD_IP);
    assert_eq!(line["dst_port"], OTHER_APP_PORT);
    assert_eq!(line["src_ip"], PEER_IP);
    assert!(line["src_port"].as_u64().is_some_and(|p| p > 0), "{line}");
    assert_eq!(line["peer_pod"], "client");
    assert_eq!(line["peer_namespace"], "x");
    assert_eq!(line["pod"], "x/server");
    assert_eq!(line["isolated_by"], serde_json::json!(["x/client-to-http"]));
    assert_eq!(line["protocol"], "TCP");
    assert!(line["timestamp"].is_string());

    assert_eq!(
        t.metric(&[
            "portcullis_connections_total{",
            "direction=\"ingress\"",
            "verdict=\"deny\""
        ]),
        1.0
    );
    assert_eq!(
        t.metric(&[
            "portcullis_connections_total{",
            "direction=\"ingress\"",
            "verdict=\"allow\""
        ]),
        1.0
    );
    assert!(
        t.metric(&[
            "portcullis_bytes_total{",
            "direction=\"ingress\"",
            "flow=\"from_peer\""
        ]) >= 1_000_000.0
    );
    assert_eq!(t.metric(&["portcullis_policy_generation"]), 1.0);
}

#[test]
fn a_policy_change_applies_to_new_connections_and_revokes_denied_established_ones() {
    let t = Setup::new(&[ALLOW_CLIENT_ON_8080], &[]);
    t.echo_server(true, APP_PORT);
    t.echo_server(true, OTHER_APP_PORT);
    t.wait_ready();
    assert!(is_reset(t.connect_from_peer(OTHER_APP_PORT)));

    let mut established = t.connect_from_peer(APP_PORT).expect("connect");
    let mut buf = [0u8; 5];
    established.write_all(b"ping1").expect("write");
    established.read_exact(&mut buf).expect("echo");

    // Allow 9090 as well: new connections to it go through, the established one is untouched.
    t.write_policy("900-more.yaml", ALLOW_CLIENT_ON_9090);
    t.wait_for("generation 2", || t.generation() == 2);
    let back = exchange(
        t.connect_from_peer(OTHER_APP_PORT).expect("connect"),
        b"now allowed",
    )
    .expect("exchange");
    assert_eq!(back, b"now allowed<eof>");
    established.write_all(b"ping2").expect("still open");
    established.read_exact(&mut buf).expect("still echoed");
    assert_eq!(&buf, b"ping2");

    // Take 8080 away: the established connection is closed within a second, and logged.
    t.remove_policy("001-policy.yaml");
    t.wait_for("generation 3", || t.generation() == 3);
    let revoked_at = Instant::now();
    let mut one = [0u8; 1];
    let result = established.read(&mut one);
    assert!(
        matches!(&result, Err(e) if e.kind() == ErrorKind::ConnectionReset),
        "expected a reset, got {result:?}"
    );
    assert!(revoked_at.elapsed() < Duration::from_secs(2));
    t.wait_for("the termination line", || {
        !t.log_lines("connection_terminated").is_empty()
    });
    let line = &t.log_lines("connection_terminated")[0];
    assert_eq!(line["dst_ip"], POD_IP);
    assert_eq!(line["dst_port"], APP_PORT);
    assert!(
        line["reason"]
            .as_str()
            .unwrap_or("")
            .contains("x/client-to-9090"),
        "{line}"
    );
    assert_eq!(
        t.metric(&[
            "portcullis_connections_terminated_total{",
            "direction=\"ingress\""
        ]),
        1.0
    );
}

#[test]
fn outbound_connections_are_decided_by_the_egress_table() {
    let t = Setup::new(&[EGRESS_ONLY_7070], &[]);
    t.echo_server(false, PEER_PORT);
    t.echo_server(false, OTHER_PEER_PORT);
    t.wait_ready();
    let back = exchange(t.connect_from_pod(PEER_PORT).expect("connect"), b"out").expect("exchange");
    assert_eq!(back, b"out<eof>");
    assert!(is_reset(t.connect_from_pod(OTHER_PEER_PORT)));
    t.wait_for("the egress denial line", || {
        !t.log_lines("connection_denied").is_empty()
    });
    let line = &t.log_lines("connection_denied")[0];
    assert_eq!(line["direction"], "egress");
    assert_eq!(line["dst_ip"], PEER_IP);
    assert_eq!(line["dst_port"], OTHER_PEER_PORT);
    assert_eq!(line["peer_pod"], "client");
    assert_eq!(
        t.metric(&[
            "portcullis_connections_total{",
            "direction=\"egress\"",
            "verdict=\"deny\""
        ]),
        1.0
    );
}

/// An Admin-tier guardrail denying the client namespace's traffic to the server's port 8080,
/// which ALLOW_CLIENT_ON_8080 (a NetworkPolicy) allows.
const CNP_DENY_8080: &str = r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: guard-http}
spec:
  tier: Admin
  priority: 5
  subject: {pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: server}}}}
  ingress:
  - name: no-http-from-x
    action: Deny
    from: [{namespaces: {matchLabels: {kubernetes.io/metadata.name: x}}}]
    protocols: [{tcp: {destinationPort: {number: 8080}}}]
"#;

#[test]
fn an_admin_cnp_deny_overrides_a_network_policy_allow_on_a_real_connection() {
    let t = Setup::new(&[ALLOW_CLIENT_ON_8080, CNP_DENY_8080], &[]);
    t.echo_server(true, APP_PORT);
    t.wait_ready();
    assert!(
        is_reset(t.connect_from_peer(APP_PORT)),
        "the Admin Deny must win over the NetworkPolicy allow"
    );
    t.wait_for("the denial audit line", || {
        !t.log_lines("connection_denied").is_empty()
    });
    let lines = t.log_lines("connection_denied");
    let line = &lines[0];
    assert_eq!(line["direction"], "ingress");
    assert_eq!(line["tier"], "Admin", "{line}");
    assert_eq!(line["policy"], "guard-http");
    assert_eq!(line["rule"], "no-http-from-x");
    assert_eq!(line["action"], "Deny");
    support::assert_audit_schema(line);
    assert_eq!(line["isolated_by"], serde_json::json!([]));
    assert!(
        line["reason"]
            .as_str()
            .unwrap_or("")
            .contains("denied by Admin-tier ClusterNetworkPolicy guard-http"),
        "{line}"
    );
    assert_eq!(
        t.metric(&[
            "portcullis_connections_total{",
            "direction=\"ingress\"",
            "verdict=\"deny\"",
            "tier=\"admin\""
        ]),
        1.0
    );
}

#[test]
fn audit_mode_lets_a_cnp_denial_through_and_names_the_rule() {
    let t = Setup::new(&[ALLOW_CLIENT_ON_8080, CNP_DENY_8080], &["--mode", "audit"]);
    t.echo_server(true, APP_PORT);
    t.wait_ready();
    let back = exchange(t.connect_from_peer(APP_PORT).expect("connect"), b"x").expect("exchange");
    assert_eq!(back, b"x<eof>");
    t.wait_for("the would-deny line", || {
        !t.log_lines("connection_would_deny").is_empty()
    });
    let lines = t.log_lines("connection_would_deny");
    assert_eq!(lines[0]["policy"], "guard-http", "{:?}", lines[0]);
    assert_eq!(lines[0]["rule"], "no-http-from-x");
    assert!(t.log_lines("connection_denied").is_empty());
}

#[test]
fn audit_mode_lets_denied_connections_through_and_says_so() {
    let t = Setup::new(&[ALLOW_CLIENT_ON_8080], &["--mode", "audit"]);
    t.echo_server(true, OTHER_APP_PORT);
    t.wait_ready();
    let back =
        exchange(t.connect_from_peer(OTHER_APP_PORT).expect("connect"), b"x").expect("exchange");
    assert_eq!(back, b"x<eof>");
    t.wait_for("the would-deny line", || {
        !t.log_lines("connection_would_deny").is_empty()
    });
    assert!(t.log_lines("connection_denied").is_empty());
    assert_eq!(
        t.metric(&[
            "portcullis_connections_total{",
            "direction=\"ingress\"",
            "verdict=\"audit\""
        ]),
        1.0
    );
}

#[test]
fn without_a_table_the_proxy_is_not_ready_and_refuses() {
    let t = Setup::new(&[], &[]);
    t.remove_policy("000-base.yaml");
    t.echo_server(true, APP_PORT);
    t.wait_for("the admin port", || t.admin("/live").0 == 200);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(t.admin("/ready").0, 503);
    assert_eq!(t.admin("/policy").0, 503);
    assert!(is_reset(t.connect_from_peer(APP_PORT)));
    t.write_policy("000-base.yaml", BASE);
    t.wait_ready();
    let back = exchange(t.connect_from_peer(APP_PORT).expect("connect"), b"y").expect("exchange");
    assert_eq!(back, b"y<eof>");
}

#[test]
fn sigterm_stops_accepting_and_drains_established_connections() {
    let mut t = Setup::new(&[ALLOW_CLIENT_ON_8080], &["--shutdown-grace", "10s"]);
    t.echo_server(true, APP_PORT);
    t.wait_ready();
    let mut established = t.connect_from_peer(APP_PORT).expect("connect");
    established.write_all(b"one").expect("write");
    let mut buf = [0u8; 3];
    established.read_exact(&mut buf).expect("echo");

    let pid = t.proxy.as_ref().expect("proxy").id() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    t.wait_for("/ready to turn 503", || t.admin("/ready").0 == 503);
    // New connections find no listener; the established one still works.
    assert!(t.connect_from_peer(APP_PORT).is_err() || is_reset(t.connect_from_peer(APP_PORT)));
    established.write_all(b"two").expect("write while draining");
    established
        .read_exact(&mut buf)
        .expect("echo while draining");
    assert_eq!(&buf, b"two");
    assert!(
        t.proxy
            .as_mut()
            .expect("proxy")
            .try_wait()
            .expect("wait")
            .is_none(),
        "still draining"
    );

    // Closing the last connection lets the proxy exit at once, well before the grace period.
    established.shutdown(Shutdown::Write).expect("half-close");
    let mut rest = Vec::new();
    established.read_to_end(&mut rest).expect("read to end");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(status) = t.proxy.as_mut().expect("proxy").try_wait().expect("wait") {
            assert!(status.success(), "clean exit after draining: {status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the proxy did not exit after draining"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let stopped = t.log_lines("stopped");
    assert_eq!(stopped.len(), 1);
    assert_eq!(stopped[0]["drained"], true);
}

/// The proxy's open descriptors, and how many of them are pipes.
fn proxy_fds(pid: u32) -> (usize, usize) {
    let entries: Vec<String> = fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/PID/fd")
        .filter_map(|e| e.ok())
        .filter_map(|e| fs::read_link(e.path()).ok())
        .map(|l| l.to_string_lossy().into_owned())
        .collect();
    let pipes = entries.iter().filter(|l| l.starts_with("pipe:")).count();
    (entries.len(), pipes)
}

#[test]
fn idle_connections_hold_two_sockets_and_no_pipes() {
    const IDLE: usize = 400;
    let t = Setup::new(&[ALLOW_CLIENT_ON_8080], &[]);
    t.echo_server(true, APP_PORT);
    t.wait_ready();
    let pid = t.proxy.as_ref().expect("proxy").id();
    let (fds_before, _) = proxy_fds(pid);
    let mut idle = Vec::new();
    for i in 0..IDLE {
        let mut s = t.connect_from_peer(APP_PORT).expect("connect");
        // Both directions carry bytes (more than a pipe's worth back on some), then go idle.
        let request = vec![b'q'; if i % 10 == 0 { 200_000 } else { 10 }];
        s.write_all(&request).expect("write");
        let mut back = vec![0u8; request.len()];
        s.read_exact(&mut back).expect("echo");
        assert_eq!(back, request);
        idle.push(s);
    }
    std::thread::sleep(Duration::from_millis(300));
    let (fds, pipes) = proxy_fds(pid);
    eprintln!("{IDLE} idle connections: {fds} descriptors ({fds_before} before), {pipes} pipes");
    // Default 2 worker threads (plus the main thread), 32 pooled pipes each at most.
    let pool_fds = 2 * 32 * 3;
    assert!(
        pipes <= pool_fds,
        "{pipes} pipe descriptors for {IDLE} idle connections: only the per-thread pools may \
         hold pipes"
    );
    assert!(
        fds - fds_before <= 2 * IDLE + pool_fds,
        "{} descriptors for {IDLE} idle connections ({pipes} pipes)",
        fds - fds_before
    );
    // Still alive after idling.
    for s in idle.iter_mut().step_by(37) {
        s.write_all(b"still here").expect("write");
        let mut back = [0u8; 10];
        s.read_exact(&mut back).expect("echo");
        assert_eq!(&back, b"still here");
    }
    drop(idle);
    t.wait_for("the descriptors to be released", || {
        proxy_fds(pid).0 <= fds_before + pool_fds
    });
}

#[test]
fn a_descriptor_limit_below_max_connections_lowers_it_and_refuses_cleanly() {
    // 1,000 descriptors: 64 for the proxy itself, 65 for the admin port (its cap of 64, and one
    // being reset), 192 for the pipe pools (2 workers + main), an eighth of the rest for pipes in
    // flight, two per connection: 297 connections.
    const CAPACITY: usize = 297;
    let t = Setup::with_nofile(&[ALLOW_CLIENT_ON_8080], &[], Some(1000));
    t.echo_server(true, APP_PORT);
    t.wait_ready();
    let lowered = t.log_lines("max_connections_lowered");
    assert_eq!(lowered.len(), 1, "one warning at start-up");
    assert_eq!(lowered[0]["max_connections"], 20_000);
    assert_eq!(lowered[0]["rlimit_nofile"], 1000);
    assert_eq!(lowered[0]["effective_max_connections"], CAPACITY);
    assert_eq!(lowered[0]["level"], "WARN");

    let mut held = Vec::new();
    for i in 0..CAPACITY {
        let mut s = t
            .connect_from_peer(APP_PORT)
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        s.write_all(b"hi").expect("write");
        let mut back = [0u8; 2];
        s.read_exact(&mut back)
            .unwrap_or_else(|e| panic!("connection {i} within the limit: {e}"));
        held.push(s);
    }
    for _ in 0..5 {
        assert!(
            is_reset(t.connect_from_peer(APP_PORT)),
            "beyond the lowered limit: reset"
        );
    }
    assert_eq!(
        t.metric(&[
            "portcullis_connections_refused_total{",
            "direction=\"ingress\"",
            "reason=\"max_connections\""
        ]),
        5.0
    );
    // A slot freed is a slot usable again, and nothing ran out of descriptors on the way.
    drop(held.pop());
    t.wait_for("a free slot", || {
        t.connect_from_peer(APP_PORT)
            .ok()
            .and_then(|s| exchange(s, b"after").ok())
            .is_some_and(|back| back == b"after<eof>")
    });
    let log = fs::read_to_string(&t.log).unwrap_or_default();
    assert!(
        !log.contains("Too many open files"),
        "the proxy hit EMFILE:\n{log}"
    );
}

#[test]
fn short_inbound_connections_do_not_run_out_of_ports_on_time_wait() {
    // The proxy usually closes toward the application first, so each short connection leaves a
    // TIME_WAIT (60 s) on its upstream port. With 40 ephemeral ports, the 41st connection within
    // a minute would find none free unless TIME_WAIT ports are reused, which the kernel does by
    // default only for loopback sources: the proxy connects from 127.0.0.6.
    const CONNECTIONS: usize = 160;
    let t = Setup::new(&[ALLOW_CLIENT_ON_8080], &[]);
    t.echo_server(true, APP_PORT);
    sh(&[
        "ip",
        "netns",
        "exec",
        &t.pod_ns,
        "sysctl",
        "-qw",
        "net.ipv4.ip_local_port_range=40000 40039",
    ]);
    t.wait_ready();
    let mut failures = Vec::new();
    for i in 0..CONNECTIONS {
        let outcome = t
            .connect_from_peer(APP_PORT)
            .and_then(|s| exchange(s, b"ping"));
        match outcome {
            Ok(back) if back == b"ping<eof>" => {}
            other => failures.push(format!("connection {i}: {other:?}")),
        }
        // A reused TIME_WAIT port must be at least a second old.
        std::thread::sleep(Duration::from_millis(35));
    }
    assert!(
        failures.is_empty(),
        "{} of {CONNECTIONS} short connections failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(t.metric(&["portcullis_connect_errors_total"]), 0.0);
}

/// The refused-connections counter for one reason.
fn refused(t: &Setup, reason: &str) -> f64 {
    t.metric(&[
        "portcullis_connections_refused_total{",
        "direction=\"ingress\"",
        &format!("reason=\"{reason}\""),
    ])
}

/// Waits until a `connection_refused` line names `dst`, and returns it.
fn refusal_line(t: &Setup, dst: &str) -> serde_json::Value {
    t.wait_for(&format!("a connection_refused line for {dst}"), || {
        t.log_lines("connection_refused")
            .iter()
            .any(|l| support::socket(l, "dst") == dst)
    });
    t.log_lines("connection_refused")
        .into_iter()
        .find(|l| support::socket(l, "dst") == dst)
        .expect("line")
}

#[test]
fn a_connection_addressed_to_a_neighbour_is_refused_not_relayed() {
    // No policy selects the pod: every peer may reach it on every port. Still, the pod must not
    // become a relay: the peer routes the neighbour's addresses via the pod, the pod's
    // PREROUTING redirects the packets to the inbound proxy, and the original destination is
    // the neighbour's.
    let t = Setup::new(&[], &[]);
    let reached = t.add_neighbour();
    t.echo_server(true, APP_PORT);
    t.wait_ready();
    let mut refusals = 0.0;
    for (target, why) in [
        // Over IPv6 the old proxy connected and spliced: the peer read the neighbour's answer.
        (
            format!("[{NEIGHBOUR_IP6}]:{NEIGHBOUR_PORT}"),
            "not this pod",
        ),
        (format!("{NEIGHBOUR_IP}:{NEIGHBOUR_PORT}"), "not this pod"),
        // The pod's own address toward the neighbour is not in POD_IPS either: the old proxy
        // connected there (from 127.0.0.6) and the peer reached the application through it.
        (format!("{NEIGHBOUR_SIDE_IP}:{APP_PORT}"), "not this pod"),
        (format!("[{NEIGHBOUR_SIDE_IP6}]:{APP_PORT}"), "not this pod"),
    ] {
        let addr: SocketAddr = target.parse().unwrap();
        let outcome = connect_in(&t.peer_ns, addr);
        assert!(
            is_reset(outcome),
            "{target}: the pod relayed the connection"
        );
        refusals += 1.0;
        let line = refusal_line(&t, &target);
        assert_eq!(line["direction"], "ingress", "{line}");
        assert_eq!(line["level"], "WARN", "{line}");
        assert!(
            line["src_ip"] == PEER_IP6 || line["src_ip"] == PEER_IP,
            "{line}"
        );
        assert!(
            line["reason"].as_str().unwrap_or("").contains(why),
            "{line}"
        );
        // One line per second at most: the next case gets its own.
        std::thread::sleep(Duration::from_millis(1100));
    }
    assert_eq!(
        reached.load(Ordering::SeqCst),
        0,
        "the neighbour was reached"
    );
    assert_eq!(refused(&t, "destination_not_pod"), refusals);
    // Connections to the pod itself are untouched, over both families.
    for target in [
        format!("{POD_IP}:{APP_PORT}"),
        format!("[{POD_IP6}]:{APP_PORT}"),
    ] {
        let back = exchange(
            connect_in(&t.peer_ns, target.parse().unwrap()).expect("connect"),
            b"to the pod",
        )
        .expect("exchange");
        assert_eq!(back, b"to the pod<eof>", "{target}");
    }
}

#[test]
fn a_connection_addressed_to_loopback_is_refused() {
    // A localhost-only application in the pod, and a peer that sends packets addressed to
    // 127.0.0.1 to the pod: it takes 127.0.0.1 off its own loopback, routes it via the pod and
    // accepts replies from it (route_localnet), as a hostile pod can in its own namespace (or
    // with a hand-made frame). The pod's PREROUTING redirects the SYN to the inbound proxy
    // before routing could drop it as a martian.
    let t = Setup::new(&[], &[]);
    t.echo_server(true, APP_PORT);
    echo_server_on(
        &t.pod_ns,
        SocketAddr::from(([127, 0, 0, 1], LOCALHOST_ONLY_PORT)),
    );
    let peer = &t.peer_ns;
    sh(&["ip", "-n", peer, "addr", "del", "127.0.0.1/8", "dev", "lo"]);
    sh(&[
        "ip",
        "-n",
        peer,
        "route",
        "add",
        "127.0.0.1/32",
        "via",
        POD_IP,
    ]);
    for conf in ["all", &t.veth_peer] {
        sh(&[
            "ip",
            "netns",
            "exec",
            peer,
            "sysctl",
            "-qw",
            &format!("net.ipv4.conf.{conf}.route_localnet=1"),
        ]);
    }
    t.wait_ready();
    let target = format!("127.0.0.1:{LOCALHOST_ONLY_PORT}");
    let outcome = connect_in(peer, target.parse().unwrap());
    // The handshake completes with the proxy (its SYN-ACK comes from 127.0.0.1): a reset, not
    // the application's echo.
    assert!(
        is_reset(outcome),
        "a peer reached the pod's localhost-only application"
    );
    let line = refusal_line(&t, &target);
    assert!(
        line["reason"].as_str().unwrap_or("").contains("loopback"),
        "{line}"
    );
    assert_eq!(line["src_ip"], PEER_IP, "{line}");
    assert_eq!(refused(&t, "destination_loopback"), 1.0);
    assert_eq!(refused(&t, "destination_not_pod"), 0.0);
    // The application itself still answers inside the pod, and the pod over its IP.
    let back = exchange(
        connect_in(&t.pod_ns, target.parse().unwrap()).expect("connect"),
        b"local",
    )
    .expect("exchange");
    assert_eq!(back, b"local<eof>");
    let back = exchange(t.connect_from_peer(APP_PORT).expect("connect"), b"pod").expect("echo");
    assert_eq!(back, b"pod<eof>");
}

#[test]
fn an_ipv6_link_local_connection_keeps_its_scope() {
    // The peer connects to the pod's link-local address: the original destination is only
    // usable with its interface (scope id); the old proxy dropped it and the connect failed with
    // EINVAL, so the peer was reset.
    let t = Setup::new(&[], &[]);
    t.echo_server(true, APP_PORT);
    t.wait_ready();
    let veth = t.veth_peer.clone();
    let scope = in_ns(&t.peer_ns, move || {
        nix::net::if_::if_nametoindex(veth.as_str()).expect("index")
    });
    let target = SocketAddr::V6(std::net::SocketAddrV6::new(
        POD_LINK_LOCAL.parse().unwrap(),
        APP_PORT,
        0,
        scope,
    ));
    let back =
        exchange(connect_in(&t.peer_ns, target).expect("connect"), b"scoped").expect("exchange");
    assert_eq!(back, b"scoped<eof>");
    assert_eq!(t.metric(&["portcullis_connect_errors_total"]), 0.0);
    assert_eq!(
        t.metric(&[
            "portcullis_connections_total{",
            "direction=\"ingress\"",
            "verdict=\"allow\""
        ]),
        1.0
    );
    // A link-local address that no interface of the pod holds is not the pod, even when the
    // peer sends it to the pod's MAC address.
    let link = Command::new("ip")
        .args(["-n", &t.pod_ns, "-br", "link", "show", "dev", &t.veth_pod])
        .output()
        .expect("ip link");
    let link = String::from_utf8_lossy(&link.stdout).to_string();
    let mac = link
        .split_whitespace()
        .nth(2)
        .expect("the pod's MAC address");
    sh(&[
        "ip",
        "-n",
        &t.peer_ns,
        "-6",
        "neigh",
        "add",
        "fe80::99",
        "lladdr",
        mac,
        "dev",
        &t.veth_peer,
    ]);
    let elsewhere = SocketAddr::V6(std::net::SocketAddrV6::new(
        "fe80::99".parse().unwrap(),
        APP_PORT,
        0,
        scope,
    ));
    assert!(is_reset(connect_in(&t.peer_ns, elsewhere)));
    t.wait_for("the refusal", || refused(&t, "destination_not_pod") == 1.0);
    // The log's `dst_ip` is the address alone: the scope (the interface) is not part of it.
    let line = refusal_line(&t, &format!("[fe80::99]:{APP_PORT}"));
    assert_eq!(line["src_ip"], PEER_LINK_LOCAL, "{line}");
}

/// The proxy's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

/// The inodes of the process's socket descriptors.
fn socket_inodes(pid: u32) -> std::collections::HashSet<String> {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| fs::read_link(e.path()).ok())
                .filter_map(|l| {
                    let l = l.to_string_lossy().into_owned();
                    l.strip_prefix("socket:[")
                        .and_then(|r| r.strip_suffix(']'))
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Established connections on local port `port` that the process itself holds (accepted), as
/// opposed to ones the kernel has queued for it: its socket descriptors matched against its
/// network namespace's TCP table. Reading both is not atomic, so only sockets the process held
/// both before and after reading the table count: they were all held at once, and the count
/// never exceeds what the process really held at one moment.
fn sockets_held_on_port(pid: u32, port: u16) -> usize {
    let before = socket_inodes(pid);
    let port = format!(":{port:04X}");
    let established: Vec<String> = ["tcp", "tcp6"]
        .iter()
        .flat_map(|t| {
            fs::read_to_string(format!("/proc/{pid}/net/{t}"))
                .unwrap_or_default()
                .lines()
                .skip(1)
                .filter_map(|line| {
                    let f: Vec<&str> = line.split_whitespace().collect();
                    (f.len() > 9 && f[1].ends_with(&port) && f[3] == "01").then(|| f[9].to_string())
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let after = socket_inodes(pid);
    established
        .iter()
        .filter(|inode| before.contains(*inode) && after.contains(*inode))
        .count()
}

#[test]
fn a_slowloris_on_the_admin_port_starves_neither_traffic_nor_memory() {
    // Issue 12 §4: half-sent requests to 4191 took every descriptor of the proxy, both traffic
    // listeners failed with EMFILE and the pod's traffic hung. Here: 1,000 descriptors, and an
    // attacker in the peer namespace that keeps 3,000 half-sent requests open (replacing those
    // the proxy drops) from 40 addresses, while the peer's proxied traffic goes on.
    const ADMIN_CAP: usize = 64;
    const HALF_SENT: usize = 3_000;
    const ATTACKERS: u8 = 40;
    let t = Setup::with_nofile(&[], &[], Some(1000));
    t.echo_server(true, APP_PORT);
    t.wait_ready();
    let pid = t.proxy.as_ref().expect("proxy").id();

    // /policy is the pod's whole table: not for a peer. The probes and metrics are.
    let from_peer = |path: &str| {
        let mut s = t.connect_from_peer(4191).expect("admin from the peer");
        write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").expect("request");
        let mut raw = String::new();
        let _ = s.read_to_string(&mut raw);
        raw
    };
    let answer = from_peer("/policy");
    assert!(answer.starts_with("HTTP/1.0 403"), "{answer}");
    assert!(answer.contains("kubectl port-forward"), "{answer}");
    assert!(from_peer("/ready").starts_with("HTTP/1.0 200"));
    assert!(from_peer("/metrics").contains("portcullis_policy_generation"));
    assert_eq!(t.admin("/policy").0, 200, "loopback still gets the table");

    let sources: Vec<std::net::Ipv4Addr> = (0..ATTACKERS)
        .map(|i| std::net::Ipv4Addr::new(10, 214, 0, 100 + i))
        .collect();
    for ip in &sources {
        sh(&[
            "ip",
            "-n",
            &t.peer_ns,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            &t.veth_peer,
        ]);
    }
    let rss_before = rss_kib(pid);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let opened = Arc::new(AtomicUsize::new(0));
    let attack = {
        let (stop, opened) = (stop.clone(), opened.clone());
        let path = format!("/run/netns/{}", t.peer_ns);
        std::thread::spawn(move || {
            let file = fs::File::open(&path).expect("netns");
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let target: SocketAddr = format!("{POD_IP}:4191").parse().unwrap();
            let mut held = std::collections::VecDeque::new();
            let mut i = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let source = SocketAddr::from((sources[i % sources.len()], 0));
                i += 1;
                let Ok(socket) =
                    socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                else {
                    continue;
                };
                if socket.bind(&source.into()).is_err()
                    || socket
                        .connect_timeout(&target.into(), Duration::from_secs(1))
                        .is_err()
                {
                    continue;
                }
                let mut s: TcpStream = socket.into();
                // A request head without its end: the server waits for the rest.
                let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ");
                opened.fetch_add(1, Ordering::SeqCst);
                held.push_back(s);
                if held.len() > HALF_SENT {
                    held.pop_front();
                }
                if held.len() == HALF_SENT {
                    // Full: keep the pressure on without spinning the test machine.
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            held.len()
        })
    };

    // Traffic during the attack, for longer than the admin header timeout (5 s): held
    // connections stay up, new ones keep going through.
    let mut long_lived: Vec<TcpStream> = (0..50)
        .map(|_| t.connect_from_peer(APP_PORT).expect("long-lived"))
        .collect();
    let started = Instant::now();
    let (mut exchanges, mut max_admin_held, mut max_rss) = (0usize, 0usize, 0u64);
    // At least 8 s, and until the attacker has opened its 3,000 (a loaded machine is slower).
    let attacking = || {
        started.elapsed() < Duration::from_secs(8)
            || (opened.load(Ordering::SeqCst) < HALF_SENT
                && started.elapsed() < Duration::from_secs(60))
    };
    while attacking() {
        let back = exchange(
            t.connect_from_peer(APP_PORT)
                .unwrap_or_else(|e| panic!("connection {exchanges} during the attack: {e}")),
            b"during",
        )
        .unwrap_or_else(|e| panic!("exchange {exchanges} during the attack: {e}"));
        assert_eq!(back, b"during<eof>");
        exchanges += 1;
        let s = &mut long_lived[exchanges % 50];
        s.write_all(b"ping").expect("a long-lived connection");
        let mut four = [0u8; 4];
        s.read_exact(&mut four).expect("its echo");
        max_admin_held = max_admin_held.max(sockets_held_on_port(pid, 4191));
        max_rss = max_rss.max(rss_kib(pid));
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::SeqCst);
    let still_held = attack.join().expect("attacker");
    let attempts = opened.load(Ordering::SeqCst);
    eprintln!(
        "slowloris: {attempts} half-sent requests opened ({still_held} held at the end), \
         {exchanges} proxied exchanges meanwhile; admin connections held by the proxy: at most \
         {max_admin_held}; RSS {rss_before} KiB before, at most {max_rss} KiB during"
    );
    assert!(
        attempts >= HALF_SENT,
        "the attack never got going: {attempts}"
    );
    // The cap counts admitted connections; the proxy also holds the one it is resetting (65
    // seen on a quiet machine). Under heavy CPU load more accepted sockets than admitted ones
    // were seen at once (up to 76 at load average 17; the cause is not understood yet), hence a
    // bound of twice the cap, which the proxy's own 64 reserved descriptors cover. Without the
    // cap it held every one of the 3,000 (until its descriptors ran out).
    assert!(
        max_admin_held <= 2 * ADMIN_CAP,
        "the admin port held {max_admin_held} connections (cap {ADMIN_CAP})"
    );
    assert!(
        max_admin_held >= ADMIN_CAP / 2,
        "the attack did not reach the admin port: {max_admin_held}"
    );
    // Generous: a few MiB are what this costs (see the printout); unbounded it was hundreds.
    assert!(
        max_rss < rss_before + 48 * 1024,
        "RSS grew from {rss_before} KiB to {max_rss} KiB"
    );
    drop(long_lived);

    // The attackers are gone: the admin port answers again, everyone's slots are back.
    t.wait_ready();
    t.wait_for("the admin connections to drain", || {
        t.metric(&["portcullis_admin_connections "]) <= 1.0
    });
    assert!(
        t.metric(&[
            "portcullis_admin_connections_refused_total{",
            "reason=\"max_connections\""
        ]) > 0.0
    );
    let log = fs::read_to_string(&t.log).unwrap_or_default();
    assert!(
        !log.contains("Too many open files"),
        "the proxy hit EMFILE:\n{log}"
    );
}
/// A stand-in controller inside the pod namespace: serves one scripted stream per connection
/// (each a list of lines, then the end of the response), and keeps the last one open until the
/// returned sender is dropped.
fn stand_in_controller(
    pod_ns: &str,
    scripts: Vec<Vec<String>>,
) -> (String, std::sync::mpsc::Sender<()>) {
    let listener = in_ns(pod_ns, || TcpListener::bind("127.0.0.1:0")).expect("bind controller");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let last = scripts.len().saturating_sub(1);
        for (i, script) in scripts.into_iter().enumerate() {
            let Ok((mut s, _)) = listener.accept() else {
                return;
            };
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n\
                  transfer-encoding: chunked\r\n\r\n",
            );
            for line in script {
                let _ = write!(s, "{:x}\r\n{line}\n\r\n", line.len() + 1);
            }
            if i == last {
                // Until the test ends; heartbeats keep the proxy's silence timer quiet.
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    hold_rx.recv_timeout(Duration::from_secs(5))
                {
                    let hb = r#"{"heartbeat":{}}"#;
                    let _ = write!(s, "{:x}\r\n{hb}\n\r\n", hb.len() + 1);
                }
            }
            let _ = s.write_all(b"0\r\n\r\n");
        }
    });
    (url, hold_tx)
}

fn table_line(generation: u64, ingress_isolated_by: &[&str]) -> String {
    let mut table: serde_json::Value =
        serde_json::to_value(portcullis_policy::PodTable::unrestricted(
            "x",
            "server",
            vec![POD_IP.parse().unwrap()],
            None,
        ))
        .expect("table");
    table["ingress"]["isolated_by"] = serde_json::json!(ingress_isolated_by);
    serde_json::json!({"table": {"generation": generation, "table": table}}).to_string()
}

#[test]
fn a_stream_line_the_proxy_cannot_read_keeps_the_last_table_marks_it_stale_and_says_why() {
    const HELLO: &str = r#"{"hello":{"v":3}}"#;
    const PEERS: &str = r#"{"peers":{"version":1,"names":{"10.214.0.2":"x/client"}}}"#;
    let hold = std::sync::Arc::new(std::sync::Mutex::new(None));
    let keep = hold.clone();
    let t = Setup::with_controller(move |pod_ns| {
        let (url, tx) = stand_in_controller(
            pod_ns,
            vec![
                // A good start (deny every inbound connection), then a line kind this proxy
                // does not know.
                vec![
                    HELLO.into(),
                    table_line(5, &["x/deny-all"]),
                    PEERS.into(),
                    r#"{"endpoints":{"version":1,"map":{}}}"#.into(),
                ],
                // A replica that speaks a newer version, with a table that would allow all.
                vec![
                    r#"{"hello":{"v":4}}"#.into(),
                    table_line(6, &[]),
                    PEERS.into(),
                ],
                // A field this proxy does not know, inside an otherwise valid table.
                vec![HELLO.into(), {
                    let mut v: serde_json::Value =
                        serde_json::from_str(&table_line(7, &[])).unwrap();
                    v["table"]["table"]["ingress"]["default"] = "allow".into();
                    v.to_string()
                }],
                // Then a good stream again.
                vec![
                    HELLO.into(),
                    table_line(8, &["x/other"]),
                    PEERS.into(),
                    r#"{"services":{"version":1,"services":{}}}"#.into(),
                ],
            ],
        );
        *keep.lock().unwrap() = Some(tx);
        url
    });
    t.echo_server(true, APP_PORT);
    t.wait_ready();
    let policy = |t: &Setup| -> serde_json::Value {
        serde_json::from_str(&t.admin("/policy").1).unwrap_or_default()
    };
    t.wait_for("the unknown line kind to be refused", || {
        t.metric(&[
            "portcullis_stream_rejected_total{",
            "reason=\"unknown_kind\"",
        ]) == 1.0
    });
    t.wait_for("the newer version to be refused", || {
        t.metric(&["portcullis_stream_rejected_total{", "reason=\"version\""]) == 1.0
    });
    let p = policy(&t);
    assert_eq!(p["stale"], true, "{p}");
    assert_eq!(p["generation"], 1);
    assert_eq!(p["table"]["ingress"]["isolated_by"][0], "x/deny-all");
    assert_eq!(t.metric(&["portcullis_policy_stale"]), 1.0);
    // Still enforcing the last good table: denied, not let through by generation 6's.
    assert!(is_reset(t.connect_from_peer(APP_PORT)));

    t.wait_for("the unknown field to be refused", || {
        t.metric(&[
            "portcullis_stream_rejected_total{",
            "reason=\"unknown_field\"",
        ]) == 1.0
    });
    assert!(is_reset(t.connect_from_peer(APP_PORT)));
    let rejected = t.log_lines("stream_rejected");
    let reasons: Vec<&str> = rejected
        .iter()
        .map(|l| l["reason"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(reasons, ["unknown_kind", "version", "unknown_field"]);
    assert!(
        rejected[1]["error"]
            .as_str()
            .unwrap_or("")
            .contains("version 3"),
        "{}",
        rejected[1]
    );
    assert_eq!(rejected[0]["level"], "ERROR");

    // A controller that speaks this proxy's version again: in sync, no longer stale.
    t.wait_for("the next good table", || {
        policy(&t)["table"]["ingress"]["isolated_by"][0] == "x/other"
    });
    t.wait_for("not stale", || policy(&t)["stale"] == false);
    assert_eq!(policy(&t)["generation"], 2);
    drop(hold.lock().unwrap().take());
}

// ---------------------------------------------------------------------------------------------
// Services: connections to a ClusterIP, judged and balanced by the proxy itself (no kube-proxy:
// the pod namespace has only a route for the Service range, and the proxy connects to pod IPs).

const API_1: &str = "10.214.0.3";
const API_2_CANARY: &str = "10.214.0.4";
const API_3: &str = "10.214.0.5";
const API_VIP: &str = "10.96.0.50";
const EMPTY_VIP: &str = "10.96.0.51";
const CLIENT_VIP: &str = "10.96.0.52";
const API_TARGET: u16 = 8080;

const SERVICES: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: api-1, namespace: x, labels: {app: api}}
spec: {containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}
status: {podIP: 10.214.0.3, phase: Running}
---
apiVersion: v1
kind: Pod
metadata: {name: api-2, namespace: x, labels: {app: api, track: canary}}
spec: {containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}
status: {podIP: 10.214.0.4, phase: Running}
---
apiVersion: v1
kind: Pod
metadata: {name: api-3, namespace: x, labels: {app: api}}
spec: {containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}
status: {podIP: 10.214.0.5, phase: Running}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: x}
spec: {clusterIP: 10.96.0.50, selector: {app: api}, ports: [{name: web, port: 80, targetPort: http}]}
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: x}
spec: {clusterIP: 10.96.0.51, selector: {app: nobody}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: client, namespace: x}
spec: {clusterIP: 10.96.0.52, selector: {app: client}, ports: [{port: 80, targetPort: 7070}]}
"#;

/// The server pod may reach stable api pods on 8080, and nothing else.
const EGRESS_STABLE_API: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: to-stable-api, namespace: x}
spec:
  podSelector: {matchLabels: {app: server}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchExpressions: [{key: app, operator: In, values: [api]}, {key: track, operator: DoesNotExist}]}}]
    ports: [{port: 8080}]
"#;

impl Setup {
    /// The api pods' addresses on the peer side, and a route for the Service range in the pod.
    fn add_service_network(&self) {
        for ip in [API_1, API_2_CANARY, API_3] {
            sh(&[
                "ip",
                "-n",
                &self.peer_ns,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                &self.veth_peer,
            ]);
        }
        sh(&[
            "ip",
            "-n",
            &self.pod_ns,
            "route",
            "add",
            "10.96.0.0/12",
            "dev",
            &self.veth_pod,
        ]);
    }

    /// A server on `ip:port` in the peer namespace that answers every connection with its
    /// address and closes.
    fn identity_server(&self, ip: &'static str, port: u16) {
        let listener =
            in_ns(&self.peer_ns, move || TcpListener::bind((ip, port))).expect("bind identity");
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let _ = conn.write_all(ip.as_bytes());
            }
        });
    }

    /// Connects from the pod to `vip:port` and returns who answered.
    fn who_answers(&self, vip: &str, port: u16) -> std::io::Result<String> {
        let mut s = connect_in(&self.pod_ns, format!("{vip}:{port}").parse().unwrap())?;
        let mut back = String::new();
        s.read_to_string(&mut back)?;
        Ok(back)
    }
}

#[test]
fn a_cluster_ip_is_judged_on_its_backends_and_only_allowed_ones_are_reached() {
    let t = Setup::new(&[SERVICES, EGRESS_STABLE_API], &[]);
    t.add_service_network();
    for ip in [API_1, API_2_CANARY, API_3] {
        t.identity_server(ip, API_TARGET);
    }
    t.echo_server(false, PEER_PORT);
    t.wait_ready();

    // Partly allowed: 50 connections, every one answered, none by the canary.
    let mut answered = std::collections::BTreeMap::new();
    for i in 0..50 {
        let who = t
            .who_answers(API_VIP, 80)
            .unwrap_or_else(|e| panic!("connection {i} to {API_VIP}:80: {e}"));
        *answered.entry(who).or_insert(0) += 1;
    }
    assert_eq!(
        answered.keys().map(String::as_str).collect::<Vec<_>>(),
        [API_1, API_3],
        "{answered:?}"
    );
    assert!(answered.values().all(|n| *n >= 10), "spread: {answered:?}");
    assert!(t.log_lines("connection_denied").is_empty());
    assert_eq!(
        t.metric(&[
            "portcullis_service_connections_total{",
            "service=\"x/api\"",
            "outcome=\"allow\""
        ]),
        50.0
    );

    // Denied: the only backend of x/client is refused by the egress table.
    assert!(is_reset(connect_in(
        &t.pod_ns,
        format!("{CLIENT_VIP}:80").parse().unwrap()
    )));
    t.wait_for("the denial line", || {
        !t.log_lines("connection_denied").is_empty()
    });
    let lines = t.log_lines("connection_denied");
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    assert_eq!(line["service"], "x/client");
    assert_eq!(line["service_port"], 80);
    assert_eq!(line["dst_ip"], CLIENT_VIP);
    assert_eq!(line["dst_port"], 80);
    assert_eq!(line["direction"], "egress");
    let refused = line["endpoints_refused"][0].as_str().unwrap_or("");
    assert!(
        refused.starts_with("10.214.0.2:7070 (x/client): denied"),
        "{line}"
    );
    assert!(refused.contains("x/to-stable-api"), "{line}");
    assert_eq!(
        t.metric(&[
            "portcullis_service_connections_total{",
            "service=\"x/client\"",
            "outcome=\"deny\""
        ]),
        1.0
    );

    // No endpoint at all: reset, with its own event, and no policy denial.
    assert!(is_reset(connect_in(
        &t.pod_ns,
        format!("{EMPTY_VIP}:80").parse().unwrap()
    )));
    t.wait_for("the no_endpoints line", || {
        !t.log_lines("no_endpoints").is_empty()
    });
    let line = &t.log_lines("no_endpoints")[0];
    assert_eq!(line["service"], "x/empty");
    assert_eq!(t.log_lines("connection_denied").len(), 1);
    assert_eq!(
        t.metric(&[
            "portcullis_service_connections_total{",
            "service=\"x/empty\"",
            "outcome=\"no_endpoints\""
        ]),
        1.0
    );
}

#[test]
fn a_removed_backend_takes_no_new_connections() {
    let t = Setup::new(&[SERVICES], &[]);
    t.add_service_network();
    for ip in [API_1, API_2_CANARY, API_3] {
        t.identity_server(ip, API_TARGET);
    }
    t.wait_ready();
    t.wait_for("the Services", || t.log_lines("services_loaded").len() == 1);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..30 {
        seen.insert(t.who_answers(API_VIP, 80).expect("answer"));
    }
    assert!(seen.contains(API_3), "{seen:?}");
    // api-3 goes away (its pod is deleted, so the derived slice loses it).
    t.write_policy(
        "001-policy.yaml",
        &SERVICES.replace(
            "metadata: {name: api-3, namespace: x, labels: {app: api}}",
            "metadata: {name: api-3, namespace: x, labels: {app: retired}}",
        ),
    );
    t.wait_for("the new Services", || {
        t.log_lines("services_loaded").len() == 2
    });
    for i in 0..30 {
        let who = t.who_answers(API_VIP, 80).expect("answer");
        assert_ne!(who, API_3, "connection {i} went to the removed backend");
    }
}

#[test]
fn a_backend_that_refuses_is_skipped_and_revocation_judges_the_backend_used() {
    // api-1 has no server: connects to it fail and the proxy tries another allowed backend.
    let t = Setup::new(&[SERVICES, EGRESS_STABLE_API], &[]);
    t.add_service_network();
    t.identity_server(API_3, API_TARGET);
    t.identity_server(API_2_CANARY, API_TARGET);
    t.wait_ready();
    for i in 0..20 {
        let who = t
            .who_answers(API_VIP, 80)
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        assert_eq!(who, API_3, "connection {i}");
    }
    assert!(
        t.metric(&["portcullis_connect_errors_total{", "direction=\"egress\""]) >= 1.0,
        "some connections were first sent to the backend without a server"
    );

    // An established connection through the ClusterIP, to api-3 (an echo server this time).
    let listener = in_ns(&t.peer_ns, || TcpListener::bind((API_3, 9443))).expect("bind");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    t.write_policy(
        "003-secure.yaml",
        r#"
apiVersion: v1
kind: Service
metadata: {name: secure, namespace: x}
spec: {clusterIP: 10.96.0.53, selector: {app: api}, ports: [{port: 443, targetPort: 9443}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: to-api-3-secure, namespace: x}
spec:
  podSelector: {matchLabels: {app: server}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 10.214.0.5/32}}]
    ports: [{port: 9443}]
"#,
    );
    t.wait_for("the secure Service", || t.generation() == 2);
    let mut established =
        connect_in(&t.pod_ns, "10.96.0.53:443".parse().unwrap()).expect("connect");
    established.write_all(b"ping").expect("write");
    let mut buf = [0u8; 4];
    established.read_exact(&mut buf).expect("echo from api-3");

    // A policy change that still allows api-3:9443 leaves it open: it is judged on the backend,
    // not on the ClusterIP (which no policy allows).
    t.write_policy("004-unrelated.yaml", ALLOW_CLIENT_ON_9090);
    t.wait_for("generation 3", || t.generation() == 3);
    std::thread::sleep(Duration::from_millis(200));
    established.write_all(b"pong").expect("still open");
    established.read_exact(&mut buf).expect("still echoed");
    assert_eq!(&buf, b"pong");
    assert!(t.log_lines("connection_terminated").is_empty());

    // Take that backend's port away: the connection is judged again on api-3:9443 and closed.
    t.remove_policy("003-secure.yaml");
    t.write_policy(
        "003-secure.yaml",
        r#"
apiVersion: v1
kind: Service
metadata: {name: secure, namespace: x}
spec: {clusterIP: 10.96.0.53, selector: {app: api}, ports: [{port: 443, targetPort: 9443}]}
"#,
    );
    t.wait_for("the termination line", || {
        !t.log_lines("connection_terminated").is_empty()
    });
    let line = &t.log_lines("connection_terminated")[0];
    assert_eq!(line["service"], "x/secure");
    assert_eq!(line["backend"], format!("{API_3}:9443"));
    assert_eq!(line["dst_ip"], "10.96.0.53");
    assert_eq!(line["dst_port"], 443);
    let mut one = [0u8; 1];
    assert!(
        matches!(established.read(&mut one), Err(e) if e.kind() == ErrorKind::ConnectionReset),
        "the established connection is reset"
    );
}

#[test]
fn audit_mode_lets_a_denied_service_connection_through_and_names_the_service() {
    let t = Setup::new(&[SERVICES, EGRESS_STABLE_API], &["--mode", "audit"]);
    t.add_service_network();
    t.echo_server(false, PEER_PORT);
    t.wait_ready();
    let s = connect_in(&t.pod_ns, format!("{CLIENT_VIP}:80").parse().unwrap()).expect("connect");
    assert_eq!(exchange(s, b"hi").expect("exchange"), b"hi<eof>");
    t.wait_for("the would-deny line", || {
        !t.log_lines("connection_would_deny").is_empty()
    });
    let line = &t.log_lines("connection_would_deny")[0];
    assert_eq!(line["service"], "x/client");
    assert!(t.log_lines("connection_denied").is_empty());
}
