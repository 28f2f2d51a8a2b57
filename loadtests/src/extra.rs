//! The optional workloads, interleaved with the harness's own in every round so each figure is
//! a ratio from one run: the standard tools (`sockperf`, `iperf3`) and UDP (issue 11). Each is
//! `auto` (run when its tool is installed and the path supports it, otherwise skipped with a
//! note in the report), `on` (missing tool: the run fails) or `off`.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use portcullis_contract::ports::ADMIN;

use crate::report::ToolResults;
use crate::tools;
use crate::udp::{self, FlowCounter};
use crate::workload::{self, Failures, Latency};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Toggle {
    /// When the tool is installed (and, for UDP, the proxy enforces it); off with --smoke for
    /// sockperf and iperf3.
    Auto,
    On,
    Off,
}

/// Which optional workloads this run has, and why the others are left out.
pub struct Plan {
    pub sockperf: bool,
    pub iperf3: bool,
    /// UDP request/response and new flows (and sockperf UDP when sockperf runs).
    pub udp: bool,
    pub dns: bool,
    /// Whole seconds per sockperf and iperf3 run.
    pub tool_seconds: u64,
    /// Requests per UDP request/response run.
    pub udp_rounds: usize,
    /// `--udp=on` or `--dns=on`: a proxy that does not enforce UDP fails the run.
    udp_required: bool,
    pub notes: Vec<String>,
}

pub struct Wanted {
    pub sockperf: Toggle,
    pub iperf3: Toggle,
    pub udp: Toggle,
    pub dns: Toggle,
}

/// Whether `portcullis-proxy` knows `--enforce-udp` (UDP/SCTP verdicts from NFQUEUE).
pub fn proxy_has_enforce_udp(proxy: &Path) -> bool {
    std::process::Command::new(proxy)
        .arg("--help")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("--enforce-udp"))
        .unwrap_or(false)
}

/// Decides what runs, before anything starts.
pub fn plan(
    w: &Wanted,
    proxy: &Path,
    smoke: bool,
    seconds: f64,
    latency_rounds: usize,
) -> Result<Plan> {
    let mut notes = Vec::new();
    let mut decide = |what: &str, toggle: Toggle, missing: Option<String>, smoke_off: bool| match (
        toggle, missing,
    ) {
        (Toggle::Off, _) => Ok(false),
        (Toggle::On, None) => Ok(true),
        (Toggle::On, Some(why)) => bail!("--{what}=on, but {why}"),
        (Toggle::Auto, None) if smoke && smoke_off => Ok(false),
        (Toggle::Auto, None) => Ok(true),
        (Toggle::Auto, Some(why)) => {
            notes.push(format!("{what} skipped: {why}."));
            Ok(false)
        }
    };
    let installed = |cmd: &str, package: &str| {
        crate::which(cmd)
            .is_none()
            .then(|| format!("`{cmd}` is not installed (apt-get install {package})"))
    };
    let sockperf = decide(
        "sockperf",
        w.sockperf,
        installed("sockperf", "sockperf"),
        true,
    )?;
    let iperf3 = decide("iperf3", w.iperf3, installed("iperf3", "iperf3"), true)?;
    let enforces = if proxy_has_enforce_udp(proxy) {
        None
    } else {
        Some(format!(
            "{} has no --enforce-udp, so no pod path enforces UDP and there is nothing to \
             compare the direct path with",
            proxy.display()
        ))
    };
    let udp = decide("udp", w.udp, enforces.clone(), false)?;
    let dns_missing = enforces.or_else(|| installed("dnsmasq", "dnsmasq-base"));
    let dns = decide("dns", w.dns, dns_missing, false)?;
    Ok(Plan {
        sockperf,
        iperf3,
        udp,
        dns,
        tool_seconds: (seconds.ceil() as u64).max(1),
        udp_rounds: latency_rounds,
        udp_required: w.udp == Toggle::On || w.dns == Toggle::On,
        notes,
    })
}

impl Plan {
    pub fn any_udp(&self) -> bool {
        self.udp || self.dns
    }

    /// After the proxies started: UDP paths run only where the proxy says it enforces UDP
    /// (`portcullis_enforced_protocols{protocol="UDP"} 1`); otherwise they are skipped, or
    /// the run fails when they were asked for with `on`.
    pub fn confirm_udp(&mut self, proxies: &[(&str, &str)]) -> Result<()> {
        if !self.any_udp() {
            return Ok(());
        }
        for &(what, ns) in proxies {
            if enforced_udp(ns) != Some(true) {
                let why = format!(
                    "the {what} proxy does not report UDP enforced ({UDP_ENFORCED} is not 1)"
                );
                if self.udp_required {
                    bail!("--udp/--dns=on, but {why}");
                }
                self.notes.push(format!("udp and dns skipped: {why}."));
                self.udp = false;
                self.dns = false;
                return Ok(());
            }
        }
        Ok(())
    }
}

/// The proxy's metric that says whether it enforces UDP.
const UDP_ENFORCED: &str = r#"portcullis_enforced_protocols{protocol="UDP"}"#;

/// [`UDP_ENFORCED`] of the proxy whose admin port is in `ns`.
fn enforced_udp(ns: &str) -> Option<bool> {
    let (_, body) = workload::http_get(ns, ADMIN, "/metrics").ok()?;
    body.lines()
        .find(|l| {
            l.starts_with("portcullis_enforced_protocols{") && l.contains(r#"protocol="UDP""#)
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v == 1.0)
}

/// UDP flows the proxy in `ns` has allowed inbound (`portcullis_connections_total`).
fn udp_allowed_inbound(ns: &str) -> Option<u64> {
    let (_, body) = workload::http_get(ns, ADMIN, "/metrics").ok()?;
    let lines = body.lines().filter(|l| {
        l.starts_with("portcullis_connections_total{")
            && l.contains("protocol=\"UDP\"")
            && l.contains("direction=\"ingress\"")
            && l.contains("verdict=\"allow\"")
    });
    let mut total = None;
    for l in lines {
        let v: f64 = l.rsplit(' ').next()?.parse().ok()?;
        *total.get_or_insert(0) += v as u64;
    }
    Some(total.unwrap_or(0))
}

/// Where a path's optional workloads connect.
pub struct Targets {
    pub sockperf: SocketAddr,
    pub iperf: SocketAddr,
    /// The UDP server's address; `None` where the path carries no UDP (HAProxy in TCP mode).
    pub udp: Option<IpAddr>,
    /// Namespace of the proxy that judges this path's inbound UDP flows (its admin port).
    pub verdicts_ns: Option<String>,
}

/// One path's samples over the rounds.
#[derive(Default)]
pub struct Samples {
    sockperf_tcp: Vec<Latency>,
    sockperf_udp: Vec<Latency>,
    iperf3_1: Vec<f64>,
    iperf3_16: Vec<f64>,
    udp_rr: Vec<Latency>,
    udp_lost: u64,
    flows: Vec<f64>,
    flows_answered: u64,
    flows_judged: Option<u64>,
    dns: Vec<f64>,
    dns_fresh: Vec<f64>,
    counter: Arc<FlowCounter>,
    flow_failures: Arc<Failures>,
    dns_failures: Arc<Failures>,
}

impl Plan {
    /// One round of the enabled workloads on one path.
    pub fn measure(
        &self,
        name: &str,
        ns: &str,
        t: &Targets,
        duration: Duration,
        s: &mut Samples,
    ) -> Result<()> {
        let secs = self.tool_seconds;
        if self.sockperf {
            s.sockperf_tcp.push(
                tools::sockperf(ns, t.sockperf, true, secs)
                    .with_context(|| format!("{name}: sockperf TCP"))?,
            );
        }
        if self.iperf3 {
            for (streams, into) in [(1, &mut s.iperf3_1), (16, &mut s.iperf3_16)] {
                into.push(
                    tools::iperf3(ns, t.iperf, streams, secs)
                        .with_context(|| format!("{name}: iperf3 -P {streams}"))?
                        / 1e9,
                );
            }
        }
        let Some(ip) = t.udp else { return Ok(()) };
        if self.udp && self.sockperf {
            let addr = SocketAddr::new(ip, t.sockperf.port());
            s.sockperf_udp.push(
                tools::sockperf(ns, addr, false, secs)
                    .with_context(|| format!("{name}: sockperf UDP"))?,
            );
        }
        if self.udp {
            let (lat, lost) = udp::request_response(ns, ip, self.udp_rounds)
                .with_context(|| format!("{name}: UDP request/response"))?;
            s.udp_rr.push(lat);
            s.udp_lost += lost;
            let before = t.verdicts_ns.as_deref().and_then(udp_allowed_inbound);
            let flows = udp::new_flows(ns, ip, 4, duration, &s.counter, &s.flow_failures)
                .with_context(|| format!("{name}: new UDP flows"))?;
            s.flows.push(flows.per_second);
            s.flows_answered += flows.answered;
            let after = t.verdicts_ns.as_deref().and_then(udp_allowed_inbound);
            if let (Some(b), Some(a)) = (before, after) {
                *s.flows_judged.get_or_insert(0) += a.saturating_sub(b);
            }
        }
        if self.dns {
            for (fresh, into) in [(false, &mut s.dns), (true, &mut s.dns_fresh)] {
                into.push(
                    udp::dns_rate(ns, ip, 4, duration, fresh, &s.dns_failures)
                        .with_context(|| format!("{name}: DNS queries"))?,
                );
            }
        }
        Ok(())
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied()
}

fn median_latency(v: &[Latency]) -> Option<Latency> {
    Some(Latency {
        p50_us: median(v.iter().map(|l| l.p50_us).collect())?,
        p99_us: median(v.iter().map(|l| l.p99_us).collect())?,
        p999_us: median(v.iter().map(|l| l.p999_us).collect())?,
    })
}

impl Samples {
    pub fn finish(&self) -> ToolResults {
        ToolResults {
            sockperf_tcp: median_latency(&self.sockperf_tcp),
            sockperf_udp: median_latency(&self.sockperf_udp),
            iperf3_1_gbps: median(self.iperf3_1.clone()),
            iperf3_16_gbps: median(self.iperf3_16.clone()),
            udp_rr: median_latency(&self.udp_rr),
            udp_rr_lost: self.udp_lost,
            udp_new_flows_per_s: median(self.flows.clone()),
            udp_new_flows_answered: self.flows_answered,
            udp_new_flows_judged: self.flows_judged,
            udp_flow_failures: self.flow_failures.reasons(),
            dns_qps: median(self.dns.clone()),
            dns_new_socket_qps: median(self.dns_fresh.clone()),
            dns_failures: self.dns_failures.reasons(),
        }
    }
}
