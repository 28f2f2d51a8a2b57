//! `--flow-records compare`: what the proxy's flow records (issue 25) cost, measured in the same
//! run: each round restarts both proxies with flow records off, then on (the order alternates
//! from round to round), and measures new connections per second and the ping-pong latency on
//! every Portcullis path. Flow records are written every second while on, so the comparison
//! includes writing them, not only counting.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::topology::Topology;
use crate::workload::{self, Failures};
use crate::{median, PathSpec};

/// `--flow-records`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FlowRecords {
    /// The proxies' default: flow records on.
    On,
    /// `--flow-summary-interval=0` for both proxies.
    Off,
    /// The main measurements with records on, then the on/off comparison.
    Compare,
}

impl FlowRecords {
    /// The proxy arguments for the main measurements.
    pub fn proxy_args(self) -> Vec<String> {
        match self {
            FlowRecords::Off => vec![interval_arg(false)],
            FlowRecords::On | FlowRecords::Compare => Vec::new(),
        }
    }
}

fn interval_arg(on: bool) -> String {
    format!("--flow-summary-interval={}", if on { "1s" } else { "0" })
}

/// One path with flow records on or off: medians of the rounds.
#[derive(Debug, Clone, Serialize)]
pub struct FlowRecordsResult {
    pub path: String,
    pub flow_records: bool,
    pub connections_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

/// The proxies to restart: the binary, the arguments of the run, and each pod's
/// (namespace, name, IPs).
pub struct Proxies<'a> {
    pub binary: &'a Path,
    pub args: &'a [String],
    pub pods: [(&'a str, &'a str, &'a str); 2],
}

/// How much each comparison measures.
pub struct Budget {
    pub rounds: usize,
    pub duration: Duration,
    pub latency_rounds: usize,
}

/// Runs the comparison on every path but the direct one; leaves the proxies running with flow
/// records on.
pub fn compare(
    topo: &mut Topology,
    proxies: &Proxies<'_>,
    paths: &[PathSpec],
    budget: &Budget,
) -> Result<Vec<FlowRecordsResult>> {
    let paths: Vec<&PathSpec> = paths
        .iter()
        .filter(|p| p.name != "direct" && p.name != "haproxy")
        .collect();
    // samples[on][path] = (connections/s, p50, p99) per round
    let mut samples = vec![vec![Vec::new(); paths.len()]; 2];
    for round in 0..budget.rounds {
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for on in order {
            eprintln!(
                "flow records {}: round {}/{}",
                if on { "on" } else { "off" },
                round + 1,
                budget.rounds
            );
            restart(topo, proxies, on)?;
            for (i, p) in paths.iter().enumerate() {
                let fails = std::sync::Arc::new(Failures::default());
                let cps =
                    workload::connection_rate(&p.ns, p.echo, 4, budget.duration, &fails)?.per_s;
                let lat = workload::latency(&p.ns, p.echo, budget.latency_rounds)
                    .with_context(|| format!("{}: latency", p.name))?;
                samples[usize::from(on)][i].push((cps, lat.p50_us, lat.p99_us));
            }
        }
    }
    restart(topo, proxies, true)?;
    let mut out = Vec::new();
    for (i, p) in paths.iter().enumerate() {
        for on in [false, true] {
            let s = &samples[usize::from(on)][i];
            out.push(FlowRecordsResult {
                path: p.name.to_string(),
                flow_records: on,
                connections_per_s: median(s.iter().map(|x| x.0).collect()),
                p50_us: median(s.iter().map(|x| x.1).collect()),
                p99_us: median(s.iter().map(|x| x.2).collect()),
            });
        }
    }
    Ok(out)
}

fn restart(topo: &mut Topology, proxies: &Proxies<'_>, on: bool) -> Result<()> {
    let mut args = proxies.args.to_vec();
    args.push(interval_arg(on));
    for (ns, pod, ips) in proxies.pods {
        topo.restart_proxy(ns, pod, ips, (proxies.binary, &args))?;
    }
    Ok(())
}

/// The markdown table: each path off and on, and the ratio on/off.
pub fn markdown(results: &[FlowRecordsResult], s: &mut String) {
    use std::fmt::Write;
    if results.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "\n### Flow records on vs off (same run, proxies restarted per setting, order alternating)\n\n\
         | path | conn/s off | conn/s on | on/off | p50 µs off | p50 µs on | on/off |\n\
         | --- | --- | --- | --- | --- | --- | --- |"
    );
    for pair in results.chunks(2) {
        let [off, on] = pair else { continue };
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.0} | {:.3} | {:.1} | {:.1} | {:.3} |",
            off.path,
            off.connections_per_s,
            on.connections_per_s,
            ratio(on.connections_per_s, off.connections_per_s),
            off.p50_us,
            on.p50_us,
            ratio(on.p50_us, off.p50_us),
        );
    }
}
