//! A flood of new denied flows at the enforcing pod (issue 20 §5), measured side by side in one
//! run: a peer that the server's policy denies (`FLOODER_IP`, an extra address of the client
//! namespace) sends UDP datagrams to a port no rule opens as fast as `--flood-pps` allows. A
//! denied first packet never confirms its conntrack entry, so *every* datagram of the flood is a
//! new flow that goes to the queue (a SYN flood reaches the queue the same way). Meanwhile the
//! legitimate client opens new UDP flows (the `--udp` new-flow load: one datagram each, its echo
//! awaited for 1 s); a flow whose first datagram is lost counts as a failure, since a real client
//! would wait for its retry (DNS: 1 s or more).
//!
//! Three phases, one after the other on the same pods: no flood; the flood with the init rules
//! as installed (the per-source limit before the queue, `portcullis-init
//! --new-flows-per-source`); the flood with that rule removed (the queue alone). For each: the
//! flood's achieved rate, the legitimate flows' first-packet success, and the server proxy's
//! CPU (user + system time over wall time).

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::topology::{Topology, SERVER_IP_PLAIN};
use crate::udp::{self, FlowCounter};
use crate::workload::{enter, Failures};

/// The flooding peer's address, beside the client's on its link to the server.
pub const FLOODER_IP: &str = "10.210.1.3";
/// A port no policy of the run opens.
const DENIED_PORT: u16 = 9;

#[derive(Debug, Clone, Serialize)]
pub struct FloodPhase {
    pub phase: String,
    /// Flood datagrams sent per second (0: no flood).
    pub flood_pps: f64,
    /// New legitimate flows tried, and those whose first datagram was answered.
    pub legit_flows: u64,
    pub legit_first_packet_ok: u64,
    /// The server proxy's CPU over the phase, in percent of one core.
    pub proxy_cpu_percent: f64,
}

impl FloodPhase {
    pub fn success_percent(&self) -> f64 {
        if self.legit_flows == 0 {
            return 0.0;
        }
        100.0 * self.legit_first_packet_ok as f64 / self.legit_flows as f64
    }
}

/// Runs the three phases for `seconds` each, the flood at `pps`.
pub fn run(topo: &Topology, proxy_pid: u32, seconds: f64, pps: u64) -> Result<Vec<FloodPhase>> {
    portcullis_netns::ip_in(
        &topo.client,
        &["addr", "add", &format!("{FLOODER_IP}/24"), "dev", "eth0"],
    )?;
    let duration = Duration::from_secs_f64(seconds);
    // One counter for the three phases, half a cycle away from the `--udp` load's: every
    // legitimate flow is new to conntrack.
    let flows = Arc::new(FlowCounter::starting_at(400_000));
    let mut phases = vec![phase(topo, proxy_pid, "no flood", duration, 0, &flows)?];
    phases.push(phase(
        topo,
        proxy_pid,
        "flood, per-source limit before the queue (as installed)",
        duration,
        pps,
        &flows,
    )?);
    remove_flood_limit(&topo.server)?;
    phases.push(phase(
        topo,
        proxy_pid,
        "flood, no limit (the queue alone)",
        duration,
        pps,
        &flows,
    )?);
    Ok(phases)
}

fn phase(
    topo: &Topology,
    proxy_pid: u32,
    name: &str,
    duration: Duration,
    pps: u64,
    counter: &Arc<FlowCounter>,
) -> Result<FloodPhase> {
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let flooder = (pps > 0).then(|| {
        let (ns, stop, sent) = (topo.client.clone(), stop.clone(), sent.clone());
        std::thread::spawn(move || flood(&ns, pps, &stop, &sent))
    });
    // Let the flood reach its rate before the legitimate flows start.
    std::thread::sleep(Duration::from_millis(200));
    let cpu_before = cpu_seconds(proxy_pid)?;
    let started = Instant::now();
    let sent_before = sent.load(Ordering::Relaxed);
    let failures: Arc<Failures> = Default::default();
    let flows = udp::new_flows(
        &topo.client,
        SERVER_IP_PLAIN.parse().context("server IP")?,
        2,
        duration,
        counter,
        &failures,
    )?;
    let elapsed = started.elapsed().as_secs_f64();
    let flood_sent = sent.load(Ordering::Relaxed) - sent_before;
    let cpu = cpu_seconds(proxy_pid)? - cpu_before;
    stop.store(true, Ordering::Relaxed);
    if let Some(f) = flooder {
        f.join()
            .map_err(|_| anyhow::anyhow!("the flooder panicked"))??;
    }
    Ok(FloodPhase {
        phase: name.to_string(),
        flood_pps: flood_sent as f64 / elapsed,
        legit_flows: flows.answered + failures.total(),
        legit_first_packet_ok: flows.answered,
        proxy_cpu_percent: 100.0 * cpu / elapsed,
    })
}

/// Sends datagrams from `FLOODER_IP` to the server's denied port at `pps`, in bursts of a
/// millisecond's worth, until `stop`.
fn flood(ns: &str, pps: u64, stop: &AtomicBool, sent: &AtomicU64) -> Result<()> {
    enter(ns)?;
    let socket = UdpSocket::bind(SocketAddr::new(FLOODER_IP.parse()?, 0))?;
    socket.connect(SocketAddr::new(SERVER_IP_PLAIN.parse()?, DENIED_PORT))?;
    let per_ms = pps.div_ceil(1000).max(1);
    let start = Instant::now();
    let mut total = 0u64;
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..per_ms {
            // ENOBUFS or EPERM under load: the datagram is not sent and not counted.
            if socket.send(b"flood").is_ok() {
                total += 1;
            }
        }
        sent.store(total, Ordering::Relaxed);
        let due = Duration::from_micros(total * 1_000_000 / pps);
        if let Some(ahead) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(ahead);
        }
    }
    Ok(())
}

/// Deletes the per-source limit rule portcullis-init installed in `ns`, if any.
fn remove_flood_limit(ns: &str) -> Result<()> {
    let rules = portcullis_netns::exec_in(ns, "iptables", &["-S", "PORTCULLIS_UDP_IN"])?;
    for rule in rules.lines().filter(|l| l.contains("hashlimit")) {
        let spec: Vec<&str> = rule.trim_start_matches("-A ").split_whitespace().collect();
        let mut args = vec!["-D"];
        args.extend(spec);
        portcullis_netns::exec_in(ns, "iptables", &args)?;
    }
    Ok(())
}

/// User plus system CPU time of `pid`, in seconds (`/proc/PID/stat`, clock ticks of 1/100 s).
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command name, which may hold spaces, in parentheses.
    let after = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| -> u64 { f.get(i).and_then(|v| v.parse().ok()).unwrap_or(0) };
    // utime and stime are fields 14 and 15 of the line: 11 and 12 counting from the state.
    Ok((ticks(11) + ticks(12)) as f64 / 100.0)
}
