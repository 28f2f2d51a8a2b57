//! Revocation of queued flows: when a new table denies a UDP or SCTP flow, or a TCP connection the
//! queue let through (inbound with `--inbound-tcp queue`, outbound to anything but a Service
//! with portcullis-init's `--outbound-tcp queue`), that is already established, its conntrack entry
//! is deleted, so its next packet is `NEW` again, goes to the queue, and meets the new table; a
//! TCP connection's socket is reset first, so that both ends see it end. One
//! `connection_terminated` line per flow, as for relayed TCP.

use std::collections::HashSet;
use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use portcullis_policy::table::canonical;
use portcullis_policy::{Direction, Protocol};

use crate::audit::{AuditEvent, AuditRecord};
use crate::context::Context;
use crate::kernel::conntrack::{Conntrack, Entry};
use crate::kernel::sockdiag;
use crate::queue::flow::decide_flow;
use crate::telemetry::{count_flow_terminated, QUEUE_ERRORS};

/// How a conntrack entry looks from the pod: its direction, peer and policy port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Judged {
    pub direction: Direction,
    pub peer: IpAddr,
    pub port: u16,
}

/// Places an entry, or `None` for flows the queue never judges: loopback, the pod talking to
/// itself, traffic that is neither from nor to the pod, and the proxy's own flows (`own_ports`:
/// local UDP ports of the proxy's own sockets, exempt from the queue by their mark).
pub fn place(entry: &Entry, local: &HashSet<IpAddr>, own_ports: &HashSet<u16>) -> Option<Judged> {
    let from = canonical(entry.original.source.ip());
    // Where the first packet really went: the source of the replies (after any DNAT).
    let to = canonical(entry.reply.source.ip());
    if from.is_loopback() || to.is_loopback() {
        return None;
    }
    let port = entry.reply.source.port();
    match (local.contains(&from), local.contains(&to)) {
        (true, true) => None,
        // Only UDP: the proxy's own lookups; other protocols' "ports" (a GRE key) are not ports.
        (true, false)
            if entry.protocol == Protocol::Udp
                && own_ports.contains(&entry.original.source.port()) =>
        {
            None
        }
        (true, false) => Some(Judged {
            direction: Direction::Egress,
            peer: to,
            port,
        }),
        (false, true) => Some(Judged {
            direction: Direction::Ingress,
            peer: from,
            port,
        }),
        (false, false) => None,
    }
}

/// Waits for table changes and revokes what each new table denies, the first table included
/// (flows a previous proxy accepted under an older policy survive its restart in conntrack).
/// `changes` is subscribed before any table can be published. Runs the blocking netlink work on
/// the blocking pool, never on a runtime worker.
pub async fn on_policy_change(
    ctx: Arc<Context>,
    pod_ips: Vec<IpAddr>,
    mut changes: tokio::sync::watch::Receiver<u64>,
) {
    while changes.changed().await.is_ok() {
        let (c, ips) = (ctx.clone(), pod_ips.clone());
        let _ = tokio::task::spawn_blocking(move || {
            let generation = c.store.generation();
            sweep_logged(&c, &ips);
            // A packet judged with the old table an instant before the swap may confirm its
            // conntrack entry just after the first sweep: a second look closes that window.
            std::thread::sleep(Duration::from_millis(200));
            if c.store.generation() == generation {
                sweep_logged(&c, &ips);
            }
        })
        .await;
    }
}

fn sweep_logged(ctx: &Context, pod_ips: &[IpAddr]) {
    if let Err(e) = sweep(ctx, pod_ips) {
        metrics::counter!(QUEUE_ERRORS, "operation" => "conntrack").increment(1);
        tracing::error!(
            event = "revocation_failed",
            protocol = "UDP/SCTP/queued TCP",
            error = %e,
            "cannot list or delete conntrack entries: established UDP/SCTP flows that the new \
             table denies may go on"
        );
    }
}

/// Deletes the conntrack entry of every UDP/SCTP flow the current table denies. Returns how
/// many it deleted.
pub fn sweep(ctx: &Context, pod_ips: &[IpAddr]) -> io::Result<usize> {
    let Some(snapshot) = ctx.store.current() else {
        return Ok(0);
    };
    let services = ctx.store.services();
    let local = local_addresses(pod_ips);
    let own_ports = own_udp_ports();
    let mut ct = Conntrack::open()?;
    let mut revoked = 0;
    for entry in ct.judged_flows()? {
        let Some(j) = place(&entry, &local, &own_ports) else {
            continue;
        };
        // An open flow to a learned address outlives its TTL (docs/dns-policy.md).
        let now = std::time::Instant::now();
        let flow = ctx.dns.with(|dns| {
            decide_flow(
                &snapshot,
                &services,
                ctx.mode,
                j.direction,
                j.peer,
                j.port,
                entry.protocol,
                &dns.learned()
                    .for_open_flows(now, crate::dns::OPEN_FLOW_GRACE),
            )
        });
        if flow.lets_through() {
            continue;
        }
        if entry.protocol == Protocol::Tcp {
            // Reset the application's socket first: its reset leaves through the entry it has.
            reset_socket(&entry, j.direction);
        }
        if !ct.delete(&entry)? {
            continue;
        }
        revoked += 1;
        count_flow_terminated(j.direction, entry.protocol);
        ctx.audit.record(AuditRecord {
            event: AuditEvent::Terminated,
            direction: j.direction,
            source: entry.original.source,
            destination: entry.reply.source,
            peer_pod: ctx.store.peer_name(j.peer),
            pod: ctx.pod.clone(),
            verdict: flow.decision.as_ref().map(|d| d.verdict().clone()),
            service: flow.service,
            generation: snapshot.generation,
            protocol: entry.protocol,
            staged_by: Vec::new(),
        });
    }
    Ok(revoked)
}

/// Aborts the application's end of a queued TCP connection (the peer gets a reset), inbound or
/// outbound. When the kernel cannot, deleting the entry still ends it: the next packet is
/// judged again.
fn reset_socket(entry: &Entry, direction: Direction) {
    let (local, peer) = match direction {
        // Inbound, not translated: the application's socket is the reply's source.
        Direction::Ingress => (entry.reply.source, entry.original.source),
        // Outbound: the application's socket opened the connection, to the original
        // destination (the queue saw it before any translation on the node).
        Direction::Egress => (entry.original.source, entry.original.destination),
    };
    match sockdiag::destroy_tcp(local, peer) {
        Ok(_) => {}
        Err(e) => tracing::debug!(
            event = "socket_reset_failed",
            local = %local,
            peer = %peer,
            error = %e,
            "the connection's conntrack entry is deleted, so its next packet is judged and dropped"
        ),
    }
}

/// The pod's addresses: `POD_IPS` and every address on its interfaces.
fn local_addresses(pod_ips: &[IpAddr]) -> HashSet<IpAddr> {
    let mut local: HashSet<IpAddr> = pod_ips.iter().map(|ip| canonical(*ip)).collect();
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for a in addrs {
            let Some(addr) = a.address else { continue };
            if let Some(v4) = addr.as_sockaddr_in() {
                local.insert(IpAddr::V4(v4.ip()));
            } else if let Some(v6) = addr.as_sockaddr_in6() {
                local.insert(canonical(IpAddr::V6(v6.ip())));
            }
        }
    }
    local
}

/// Local ports of this process's own UDP sockets: the proxy's own lookups, which the queue never
/// judged (they carry the proxy's mark). Recognised by the socket itself, never by UID: an
/// application of the pod running as the proxy's UID owns sockets with that UID too, and its
/// flows are judged and revoked like any other. A socket is the proxy's when its inode is one of
/// this process's descriptors (`/proc/self/fd`); `/proc/net/udp` and `udp6` give each socket's
/// local port and inode.
fn own_udp_ports() -> HashSet<u16> {
    let inodes = own_socket_inodes();
    let mut ports = HashSet::new();
    for file in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        ports.extend(ports_of_sockets(&text, &inodes));
    }
    ports
}

/// The inodes of the sockets this process holds open (`/proc/self/fd/N -> socket:[inode]`).
fn own_socket_inodes() -> HashSet<u64> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return HashSet::new();
    };
    dir.filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_str()?;
            target
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

/// The local ports of the rows of a `/proc/net/udp`-style table whose inode is in `inodes`.
fn ports_of_sockets(table: &str, inodes: &HashSet<u64>) -> Vec<u16> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let port = f
                .get(1)
                .and_then(|local| local.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok())?;
            let inode = f.get(9).and_then(|i| i.parse::<u64>().ok())?;
            inodes.contains(&inode).then_some(port)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::conntrack::Tuple;
    use portcullis_policy::Protocol;

    fn entry(src: &str, dst: &str, reply_src: &str) -> Entry {
        Entry {
            protocol: Protocol::Udp,
            original: Tuple {
                source: src.parse().unwrap(),
                destination: dst.parse().unwrap(),
            },
            reply: Tuple {
                source: reply_src.parse().unwrap(),
                destination: src.parse().unwrap(),
            },
            id: None,
            zone: None,
        }
    }

    #[test]
    fn entries_are_placed_by_which_end_is_the_pod() {
        let local: HashSet<IpAddr> = ["10.0.0.1".parse().unwrap()].into();
        let none = HashSet::new();
        let out = place(
            &entry("10.0.0.1:4000", "10.0.0.2:53", "10.0.0.2:53"),
            &local,
            &none,
        );
        assert_eq!(
            out,
            Some(Judged {
                direction: Direction::Egress,
                peer: "10.0.0.2".parse().unwrap(),
                port: 53
            })
        );
        // After DNAT (a ClusterIP), the backend that answers is the peer.
        let dnat = place(
            &entry("10.0.0.1:4000", "10.96.0.10:53", "10.0.0.9:5353"),
            &local,
            &none,
        );
        assert_eq!(
            dnat.map(|j| (j.peer, j.port)),
            Some(("10.0.0.9".parse().unwrap(), 5353))
        );
        let inbound = place(
            &entry("10.0.0.2:4000", "10.0.0.1:53", "10.0.0.1:53"),
            &local,
            &none,
        );
        assert_eq!(inbound.map(|j| j.direction), Some(Direction::Ingress));
        assert_eq!(
            place(
                &entry("127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:2"),
                &local,
                &none
            ),
            None
        );
        assert_eq!(
            place(
                &entry("10.0.0.1:1", "10.0.0.1:2", "10.0.0.1:2"),
                &local,
                &none
            ),
            None
        );
        assert_eq!(
            place(
                &entry("10.0.0.7:1", "10.0.0.8:2", "10.0.0.8:2"),
                &local,
                &none
            ),
            None
        );
        let own: HashSet<u16> = [4000].into();
        assert_eq!(
            place(
                &entry("10.0.0.1:4000", "10.0.0.2:53", "10.0.0.2:53"),
                &local,
                &own
            ),
            None
        );
    }

    #[test]
    fn own_ports_are_this_process_s_sockets_whatever_their_uid() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  1: 00000000:0FA0 00000000:0000 07 00000000:00000000 00:00000000 00000000  2171        0 111 2 0000000000000000 0
  2: 00000000:0FA1 00000000:0000 07 00000000:00000000 00:00000000 00000000  2171        0 222 2 0000000000000000 0
";
        let mine: HashSet<u64> = [222].into();
        assert_eq!(ports_of_sockets(table, &mine), vec![4001]);
        assert!(ports_of_sockets("header only\n", &mine).is_empty());
        assert!(ports_of_sockets(&format!("{table}garbage: line\n"), &mine).len() == 1);
    }

    #[test]
    fn a_socket_this_process_opens_is_its_own_and_another_process_s_is_not() {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let port = sock.local_addr().expect("addr").port();
        assert!(own_udp_ports().contains(&port), "our socket on {port}");
        // A child process of the same UID binds another port: not the proxy's.
        let mut child = std::process::Command::new("python3")
            .args([
                "-c",
                "import socket,sys,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
                 s.bind(('127.0.0.1',0))\nprint(s.getsockname()[1],flush=True)\ntime.sleep(5)",
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
            &mut line,
        )
        .expect("child port");
        let theirs: u16 = line.trim().parse().expect("port");
        let own = own_udp_ports();
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            !own.contains(&theirs),
            "a same-UID child's socket on {theirs} counted as the proxy's"
        );
        assert!(own.contains(&port));
    }
}
