//! The standard tools beside the harness's own workloads, so figures compare with published
//! ones: `sockperf` ping-pong (16-byte messages, TCP and UDP, full round trip) and `iperf3`
//! (1 and 16 streams). Both are Debian packages, run as child processes in the client's
//! namespace against their servers in the server namespace and in the direct one.

use std::io::Read;
use std::net::SocketAddr;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::topology::{pid_of_listener, Topology, IPERF_PORT, SOCKPERF_PORT};
use crate::workload::Latency;

/// Message size of the sockperf ping-pong, as in published sockperf figures.
pub const SOCKPERF_MSG: usize = 16;

/// Starts the servers of the enabled tools in `ns` and waits until they listen.
pub fn start_servers(
    topo: &mut Topology,
    ns: &str,
    sockperf: bool,
    udp: bool,
    iperf: bool,
) -> Result<()> {
    let port = SOCKPERF_PORT.to_string();
    if sockperf {
        let args = ["server", "--tcp", "-i", "0.0.0.0", "-p", &port];
        topo.spawn_in(ns, "sockperf", &args, &format!("sockperf-tcp-{ns}"))?;
        wait_listening(ns, SOCKPERF_PORT, "sockperf server --tcp")?;
        if udp {
            let args = ["server", "-i", "0.0.0.0", "-p", &port];
            topo.spawn_in(ns, "sockperf", &args, &format!("sockperf-udp-{ns}"))?;
            wait_udp_bound(ns, SOCKPERF_PORT)?;
        }
    }
    if iperf {
        let port = IPERF_PORT.to_string();
        topo.spawn_in(ns, "iperf3", &["-s", "-p", &port], &format!("iperf3-{ns}"))?;
        wait_listening(ns, IPERF_PORT, "iperf3 -s")?;
    }
    Ok(())
}

fn wait_listening(ns: &str, port: u16, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while pid_of_listener(ns, port).is_err() {
        if Instant::now() > deadline {
            bail!("{what} does not listen on {port} in {ns} after 10s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn wait_udp_bound(ns: &str, port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = portcullis_netns::exec_in(ns, "ss", &["-Hlun", &format!("sport = :{port}")])?;
        if !out.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("nothing is bound to UDP {port} in {ns} after 10s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `program args` in `ns`, killed after `timeout` (a stalled path fails the run, never
/// hangs it).
fn run_in(ns: &str, program: &str, args: &[String], timeout: Duration) -> Result<Output> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, program])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {program}"))?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{program} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// Reads a child's pipe to the end on a thread of its own (so a full pipe never blocks it).
fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        buf
    })
}

/// `sockperf ping-pong` with 16-byte messages for `seconds` (sockperf's own warm-up excluded),
/// round-trip percentiles (`--full-rtt`).
pub fn sockperf(ns: &str, addr: SocketAddr, tcp: bool, seconds: u64) -> Result<Latency> {
    let mut args: Vec<String> = vec!["ping-pong".into()];
    if tcp {
        args.push("--tcp".into());
    }
    for a in [
        "-i".to_string(),
        addr.ip().to_string(),
        "-p".into(),
        addr.port().to_string(),
        "-m".into(),
        SOCKPERF_MSG.to_string(),
        "-t".into(),
        seconds.max(1).to_string(),
        "--full-rtt".into(),
    ] {
        args.push(a);
    }
    let out = run_in(ns, "sockperf", &args, Duration::from_secs(seconds + 20))?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("sockperf failed ({}): {}", out.status, last_lines(&text));
    }
    parse_sockperf(&text)
        .with_context(|| format!("unexpected sockperf output: {}", last_lines(&text)))
}

/// The 50th, 99th and 99.9th percentiles of sockperf's report (`---> percentile 50.000 = 13.650`).
pub fn parse_sockperf(text: &str) -> Option<Latency> {
    let pct = |which: &str| {
        text.lines()
            .find(|l| l.contains(&format!("percentile {which} =")))
            .and_then(|l| l.rsplit('=').next())
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    Some(Latency {
        p50_us: pct("50.000")?,
        p99_us: pct("99.000")?,
        p999_us: pct("99.900")?,
    })
}

/// `iperf3` with `streams` parallel streams for `seconds` (whole seconds, at least 1); bits
/// per second received, as iperf3's receiver counts them.
pub fn iperf3(ns: &str, addr: SocketAddr, streams: usize, seconds: u64) -> Result<f64> {
    let args: Vec<String> = [
        "-c",
        &addr.ip().to_string(),
        "-p",
        &addr.port().to_string(),
        "-P",
        &streams.to_string(),
        "-t",
        &seconds.max(1).to_string(),
        "--connect-timeout",
        "5000",
        "-J",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut last = String::new();
    // The server takes one test at a time; right after the previous one it may still say busy.
    for attempt in 0..3 {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(300));
        }
        let out = run_in(ns, "iperf3", &args, Duration::from_secs(seconds + 30))?;
        let text = String::from_utf8_lossy(&out.stdout);
        match parse_iperf3(&text) {
            Ok(bps) => return Ok(bps),
            Err(e) => last = format!("{e:#}"),
        }
        if !last.contains("busy") {
            break;
        }
    }
    bail!("iperf3 -P {streams}: {last}")
}

/// `end.sum_received.bits_per_second` of iperf3's JSON report, or its `error`.
pub fn parse_iperf3(json: &str) -> Result<f64> {
    let v: serde_json::Value = serde_json::from_str(json).context("iperf3 printed no JSON")?;
    if let Some(e) = v["error"].as_str() {
        bail!("{e}");
    }
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("no end.sum_received.bits_per_second in iperf3's report")
}

fn last_lines(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(3)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_sockperf_percentiles() {
        let text = "sockperf: Summary: Round trip is 28.226 usec\n\
                    sockperf: ---> percentile 99.900 = 3813.739\n\
                    sockperf: ---> percentile 99.000 =   45.376\n\
                    sockperf: ---> percentile 50.000 =   13.650\n";
        let l = parse_sockperf(text).expect("parsed");
        assert_eq!((l.p50_us, l.p99_us, l.p999_us), (13.650, 45.376, 3813.739));
        assert!(parse_sockperf("sockperf: ERROR: no connection").is_none());
    }

    #[test]
    fn reads_iperf3_receiver_rate_or_error() {
        let ok = r#"{"end":{"sum_received":{"bits_per_second":1.5e10}}}"#;
        assert_eq!(parse_iperf3(ok).expect("rate"), 1.5e10);
        let busy = r#"{"error":"the server is busy running a test. try again later"}"#;
        assert!(format!("{:#}", parse_iperf3(busy).unwrap_err()).contains("busy"));
    }
}
