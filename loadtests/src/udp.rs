//! UDP through an enforcing pod against the direct path (issue 11): request/response on an
//! established flow, new flows per second (one datagram each, every one a new conntrack flow,
//! so every one goes through the proxy's NFQUEUE verdict), and DNS queries per second against
//! dnsmasq. UDP is never proxied: once the first packet of a flow is accepted the rest stays in
//! the kernel, so there is no HAProxy counterpart.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::topology::{Topology, DNS_NAME, DNS_PORT, UDP_ECHO_PORT, UDP_ECHO_PORTS};
use crate::workload::{enter, within, Failures, Latency, StepFailed};

/// How long a datagram may go unanswered before it counts as lost.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);
/// Source ports of the new-flow load, cycled through (with the 16 destination ports, 800,000
/// distinct flows before one comes back, far beyond what conntrack still remembers).
const FIRST_SOURCE_PORT: u64 = 10_000;
const SOURCE_PORTS: u64 = 50_000;

/// The UDP echo server on the 16 echo ports of `ns` (a thread per port, in this process).
pub fn start_echo(ns: &str) -> Result<()> {
    for port in UDP_ECHO_PORT..UDP_ECHO_PORT + UDP_ECHO_PORTS {
        let socket = within(ns, move || {
            UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], port)))
                .with_context(|| format!("bind UDP {port}"))
        })?;
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            loop {
                if let Ok((n, from)) = socket.recv_from(&mut buf) {
                    let _ = socket.send_to(&buf[..n], from);
                }
            }
        });
    }
    Ok(())
}

/// 1-byte request/response on one flow (one connected socket), `rounds` times after a tenth
/// as warm-up (the warm-up's first datagram is the flow's only queued one). Lost datagrams are
/// counted, not measured.
pub fn request_response(ns: &str, ip: IpAddr, rounds: usize) -> Result<(Latency, u64)> {
    within(ns, move || {
        let s = UdpSocket::bind(SocketAddr::new(unspecified(ip), 0))?;
        s.connect(SocketAddr::new(ip, UDP_ECHO_PORT))?;
        s.set_read_timeout(Some(ANSWER_TIMEOUT))?;
        let mut samples = Vec::with_capacity(rounds);
        let mut lost = 0;
        let mut b = [0u8; 16];
        for i in 0..rounds + rounds / 10 {
            let t = Instant::now();
            s.send(b"x")?;
            match s.recv(&mut b) {
                Ok(1) if b[0] == b'x' => {}
                Ok(_) => bail!("the UDP echo answered something else"),
                Err(e) if is_timeout(&e) => {
                    lost += 1;
                    if lost > 10 + rounds as u64 / 100 {
                        bail!("{lost} of {i} datagrams unanswered");
                    }
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
            if i >= rounds / 10 {
                samples.push(t.elapsed().as_nanos() as u64);
            }
        }
        Ok((Latency::of(samples), lost))
    })
}

fn unspecified(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::from([0, 0, 0, 0]),
        IpAddr::V6(_) => IpAddr::from([0u16; 8]),
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// The next (source port, destination port) of the new-flow load; one counter per path for
/// the whole run, so rounds never repeat a flow.
#[derive(Default)]
pub struct FlowCounter(AtomicU64);

impl FlowCounter {
    /// A counter whose first flow is the `n`th of the cycle.
    pub fn starting_at(n: u64) -> FlowCounter {
        FlowCounter(AtomicU64::new(n))
    }

    fn next(&self) -> (u16, u16) {
        let n = self.0.fetch_add(1, Ordering::Relaxed);
        let dst = UDP_ECHO_PORT + (n % UDP_ECHO_PORTS as u64) as u16;
        let src = FIRST_SOURCE_PORT + (n / UDP_ECHO_PORTS as u64) % SOURCE_PORTS;
        (src as u16, dst)
    }
}

/// What a new-flow run did.
pub struct Flows {
    pub per_second: f64,
    /// Flows answered (each one datagram out, its echo back).
    pub answered: u64,
}

/// New UDP flows per second with `workers` threads: each flow is a fresh socket on the next
/// source port sending one datagram and waiting for its echo; failures counted by reason.
pub fn new_flows(
    ns: &str,
    ip: IpAddr,
    workers: usize,
    duration: Duration,
    counter: &Arc<FlowCounter>,
    failures: &Arc<Failures>,
) -> Result<Flows> {
    let ok = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..workers {
        let (ns, ok, counter, failures) = (
            ns.to_string(),
            ok.clone(),
            counter.clone(),
            failures.clone(),
        );
        handles.push(std::thread::spawn(move || -> Result<()> {
            enter(&ns)?;
            let deadline = Instant::now() + duration;
            while Instant::now() < deadline {
                let (src, dst) = counter.next();
                match one_flow(ip, src, dst) {
                    Ok(true) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(false) => {} // source port taken here: not a flow
                    Err(why) => failures.record(why),
                }
            }
            Ok(())
        }));
    }
    for h in handles {
        h.join().map_err(|_| anyhow::anyhow!("worker panicked"))??;
    }
    let answered = ok.load(Ordering::Relaxed);
    Ok(Flows {
        per_second: answered as f64 / start.elapsed().as_secs_f64(),
        answered,
    })
}

/// One flow: `Ok(false)` when the source port is in use (skipped), `Err(step: why)` when the
/// datagram went unanswered or a call failed.
fn one_flow(ip: IpAddr, src: u16, dst: u16) -> std::result::Result<bool, StepFailed> {
    let s = match UdpSocket::bind(SocketAddr::new(unspecified(ip), src)) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => return Ok(false),
        Err(e) => return Err(StepFailed::new("bind", e)),
    };
    let step = |what: &'static str| move |e: std::io::Error| io_failure(what, &e);
    s.connect(SocketAddr::new(ip, dst))
        .map_err(step("connect"))?;
    s.set_read_timeout(Some(ANSWER_TIMEOUT))
        .map_err(step("setup"))?;
    s.send(b"x").map_err(step("send"))?;
    let mut b = [0u8; 16];
    s.recv(&mut b).map_err(step("receive"))?;
    Ok(true)
}

/// dnsmasq in `ns` on port 53, answering [`DNS_NAME`] from its own configuration (no upstream,
/// no cache involved, no log per query); waits until it answers.
pub fn start_dnsmasq(topo: &mut Topology, ns: &str, ip: IpAddr) -> Result<()> {
    let record = format!("--host-record={DNS_NAME},10.96.0.20");
    let port = format!("--port={DNS_PORT}");
    let args = [
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--pid-file=",
        "--user=root",
        &port,
        &record,
    ];
    let log = topo.spawn_in(ns, "dnsmasq", &args, &format!("dnsmasq-{ns}"))?;
    let addr = SocketAddr::new(ip, DNS_PORT);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answered = within(ns, move || {
            let s = UdpSocket::bind(SocketAddr::new(unspecified(ip), 0))?;
            s.connect(addr)?;
            s.set_read_timeout(Some(Duration::from_millis(200)))?;
            Ok(query(&s, 1).is_ok())
        })?;
        if answered {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "dnsmasq in {ns} does not answer: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A DNS query for `DNS_NAME`, type A, class IN, recursion desired.
pub fn dns_query(id: u16) -> Vec<u8> {
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in DNS_NAME.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// Whether `answer` answers query `id` with at least one record and no error.
pub fn dns_answer_ok(answer: &[u8], id: u16) -> std::result::Result<(), StepFailed> {
    let wrong = |why: &str| Err(StepFailed::new("answer", why));
    if answer.len() < 12 {
        return wrong("shorter than a DNS header");
    }
    if answer[0..2] != id.to_be_bytes() || answer[2] & 0x80 == 0 {
        return wrong("not a response to this query");
    }
    let rcode = answer[3] & 0x0f;
    if rcode != 0 {
        return wrong(&format!("rcode {rcode}"));
    }
    if u16::from_be_bytes([answer[6], answer[7]]) == 0 {
        return wrong("no record");
    }
    Ok(())
}

/// A failed step of a UDP exchange: a timeout says how long it waited.
fn io_failure(step: &'static str, e: &std::io::Error) -> StepFailed {
    if is_timeout(e) {
        StepFailed::new(step, format_args!("no answer within {ANSWER_TIMEOUT:?}"))
    } else {
        StepFailed::new(step, e)
    }
}

fn query(s: &UdpSocket, id: u16) -> std::result::Result<(), StepFailed> {
    s.send(&dns_query(id))
        .map_err(|e| StepFailed::new("send", e))?;
    let mut buf = [0u8; 512];
    let n = s.recv(&mut buf).map_err(|e| io_failure("receive", &e))?;
    dns_answer_ok(&buf[..n], id)
}

/// DNS queries per second against `ip:53` with `workers` threads, one query in flight each.
/// `fresh_socket`: every query from a new socket (a new flow, as glibc's stub resolver does);
/// otherwise one socket per worker for the whole run (one flow each, as dnsperf does).
pub fn dns_rate(
    ns: &str,
    ip: IpAddr,
    workers: usize,
    duration: Duration,
    fresh_socket: bool,
    failures: &Arc<Failures>,
) -> Result<f64> {
    let ok = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut handles = Vec::new();
    for w in 0..workers {
        let (ns, ok, failures) = (ns.to_string(), ok.clone(), failures.clone());
        handles.push(std::thread::spawn(move || -> Result<()> {
            enter(&ns)?;
            let open = || -> Result<UdpSocket> {
                let s = UdpSocket::bind(SocketAddr::new(unspecified(ip), 0))?;
                s.connect(SocketAddr::new(ip, DNS_PORT))?;
                s.set_read_timeout(Some(ANSWER_TIMEOUT))?;
                Ok(s)
            };
            let mut socket = open()?;
            let deadline = Instant::now() + duration;
            let mut id = (w as u16).wrapping_mul(4099);
            while Instant::now() < deadline {
                id = id.wrapping_add(1);
                if fresh_socket {
                    socket = open()?;
                }
                match query(&socket, id) {
                    Ok(()) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(why) => {
                        failures.record(why);
                        // A late answer must not be read as the next query's.
                        socket = open()?;
                    }
                }
            }
            Ok(())
        }));
    }
    for h in handles {
        h.join().map_err(|_| anyhow::anyhow!("worker panicked"))??;
    }
    Ok(ok.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_names_the_record_and_answers_are_checked() {
        let q = dns_query(0x1234);
        assert_eq!(&q[0..2], &[0x12, 0x34]);
        assert_eq!(q.len(), 12 + DNS_NAME.len() + 2 + 4);
        // dnsmasq's answer shape: same id, QR set, rcode 0, one answer.
        let mut a = q.clone();
        a[2] |= 0x80;
        a[7] = 1;
        assert_eq!(dns_answer_ok(&a, 0x1234), Ok(()));
        assert!(dns_answer_ok(&a, 0x1235).is_err());
        a[3] = 3; // NXDOMAIN
        assert_eq!(
            dns_answer_ok(&a, 0x1234).map_err(|e| e.to_string()),
            Err("answer: rcode 3".into())
        );
        assert!(
            dns_answer_ok(&q, 0x1234).is_err(),
            "a query is not an answer"
        );
    }

    #[test]
    fn flows_do_not_repeat_within_a_cycle() {
        let c = FlowCounter::default();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..(UDP_ECHO_PORTS as usize * 1000) {
            assert!(seen.insert(c.next()));
        }
        assert_eq!(c.next(), (FIRST_SOURCE_PORT as u16 + 1000, UDP_ECHO_PORT));
    }
}
