//! Results as JSON, a Markdown table, and an SVG chart people can look at.

use std::fmt::Write;

use serde::Serialize;

use crate::workload::Latency;

#[derive(Debug, Clone, Serialize)]
pub struct PathResult {
    pub path: String,
    pub description: String,
    pub throughput_1_gbps: f64,
    pub throughput_16_gbps: f64,
    pub latency: Latency,
    pub connections_per_s: f64,
    /// How long `connect()` waited during the connection-rate run (queued paths: on the
    /// proxy's verdict on the SYN), medians of the rounds' percentiles.
    pub connect_wait: Latency,
    pub connection_failures: u64,
    /// What went wrong with the failed connections, most frequent first.
    pub failure_reasons: Vec<(String, u64)>,
    /// The optional workloads (`None`: not run on this path; the report's notes say why).
    pub tools: ToolResults,
}

/// Standard tools and UDP on one path, medians of the rounds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ToolResults {
    /// `sockperf ping-pong --tcp -m 16 --full-rtt`.
    pub sockperf_tcp: Option<Latency>,
    /// `sockperf ping-pong -m 16 --full-rtt` (UDP, one flow).
    pub sockperf_udp: Option<Latency>,
    pub iperf3_1_gbps: Option<f64>,
    pub iperf3_16_gbps: Option<f64>,
    /// The harness's 1-byte UDP request/response on one established flow.
    pub udp_rr: Option<Latency>,
    /// Datagrams of those runs that went unanswered (within 1 s).
    pub udp_rr_lost: u64,
    /// New UDP flows per second, one datagram (and its echo) each.
    pub udp_new_flows_per_s: Option<f64>,
    pub udp_new_flows_answered: u64,
    /// UDP flows the judging proxy allowed inbound meanwhile (each new flow is one verdict).
    pub udp_new_flows_judged: Option<u64>,
    pub udp_flow_failures: Vec<(String, u64)>,
    /// DNS queries per second to dnsmasq, one socket per worker for the run.
    pub dns_qps: Option<f64>,
    /// The same with a new socket (a new flow) per query, as glibc's stub resolver does.
    pub dns_new_socket_qps: Option<f64>,
    pub dns_failures: Vec<(String, u64)>,
}

/// One process on one path, holding idle connections.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryResult {
    pub path: String,
    pub process: String,
    pub idle_requested: usize,
    /// How many the path actually held (fewer when it refused or stopped answering).
    pub idle_held: usize,
    pub rss_mib: f64,
    /// RSS just before these connections were opened.
    pub rss_baseline_mib: f64,
    /// Open descriptors while holding them, and just before.
    pub fds: Option<usize>,
    pub fds_baseline: Option<usize>,
    /// Why the path held fewer than requested.
    pub shortfall: Option<String>,
}

impl MemoryResult {
    /// Growth per held connection, in KiB.
    pub fn kib_per_connection(&self) -> Option<f64> {
        (self.idle_held > 0)
            .then(|| (self.rss_mib - self.rss_baseline_mib) * 1024.0 / self.idle_held as f64)
    }

    /// Descriptors added per held connection.
    pub fn fds_per_connection(&self) -> Option<f64> {
        match (self.fds, self.fds_baseline) {
            (Some(now), Some(before)) if self.idle_held > 0 => {
                Some((now as f64 - before as f64) / self.idle_held as f64)
            }
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SoakResult {
    pub swaps_requested: usize,
    pub generations_observed: u64,
    pub connections_ok: u64,
    pub connections_failed: u64,
    pub failure_reasons: Vec<(String, u64)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub machine: String,
    /// Conditions of the run worth knowing when reading it (descriptor limits, lowered limits).
    pub notes: Vec<String>,
    pub rounds: usize,
    pub seconds_per_run: f64,
    pub paths: Vec<PathResult>,
    pub memory: Vec<MemoryResult>,
    pub soak: Option<SoakResult>,
    /// The flood test's phases, when it ran.
    pub flood: Vec<crate::flood::FloodPhase>,
    /// `--flow-records compare`: each Portcullis path with flow records off and on.
    pub flow_records: Vec<crate::flow_records::FlowRecordsResult>,
}

fn reasons(r: &[(String, u64)]) -> String {
    r.iter()
        .map(|(why, n)| format!("{n} × {why}"))
        .collect::<Vec<_>>()
        .join("; ")
}

impl Report {
    fn path(&self, name: &str) -> Option<&PathResult> {
        self.paths.iter().find(|p| p.path == name)
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "Machine: {}; median of {} rounds, {:.1}s per run, all paths interleaved in one run.\n",
            self.machine, self.rounds, self.seconds_per_run
        );
        self.paths_markdown(&mut s);
        self.ratios_markdown(&mut s);
        self.tools_markdown(&mut s);
        self.memory_markdown(&mut s);
        self.soak_markdown(&mut s);
        self.flood_markdown(&mut s);
        crate::flow_records::markdown(&self.flow_records, &mut s);
        if !self.notes.is_empty() {
            let _ = writeln!(s);
            for n in &self.notes {
                let _ = writeln!(s, "- {n}");
            }
        }
        s
    }

    /// The main table: throughput, latency and connection rate per path, then failures.
    fn paths_markdown(&self, s: &mut String) {
        let _ = writeln!(s, "| path | 1 stream Gbit/s | 16 streams Gbit/s | p50 µs | p99 µs | p99.9 µs | conn/s | connect() p50 µs | connect() p99 µs | failed |");
        let _ = writeln!(
            s,
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        for p in &self.paths {
            let _ = writeln!(
                s,
                "| {} | {:.2} | {:.2} | {:.1} | {:.1} | {:.1} | {:.0} | {:.1} | {:.1} | {} |",
                p.description,
                p.throughput_1_gbps,
                p.throughput_16_gbps,
                p.latency.p50_us,
                p.latency.p99_us,
                p.latency.p999_us,
                p.connections_per_s,
                p.connect_wait.p50_us,
                p.connect_wait.p99_us,
                p.connection_failures
            );
        }
        for p in self.paths.iter().filter(|p| !p.failure_reasons.is_empty()) {
            let _ = writeln!(
                s,
                "\nFailed connections on {} (connections/s runs): {}.",
                p.path,
                reasons(&p.failure_reasons)
            );
        }
    }

    /// Each path against its baseline, with the targets.
    fn ratios_markdown(&self, s: &mut String) {
        let _ = writeln!(s, "\nRatios (target in brackets):\n");
        let _ = writeln!(
            s,
            "| ratio | 1 stream | 16 streams | p50 latency | conn/s |"
        );
        let _ = writeln!(s, "| --- | ---: | ---: | ---: | ---: |");
        for (a, b, label) in [
            (
                "inbound",
                "direct",
                "portcullis inbound / direct [tput ≥ 0.9, p50 ≤ 1.3]",
            ),
            ("mesh", "direct", "portcullis outbound+inbound / direct"),
            (
                "service",
                "mesh",
                "via a Service's ClusterIP / to the pod IP (2 proxies each)",
            ),
            (
                "inbound",
                "haproxy",
                "portcullis inbound / HAProxy [tput ≥ 1, conn/s ≥ 1]",
            ),
        ] {
            if let (Some(a), Some(b)) = (self.path(a), self.path(b)) {
                let _ = writeln!(
                    s,
                    "| {label} | {:.2} | {:.2} | {:.2} | {:.2} |",
                    a.throughput_1_gbps / b.throughput_1_gbps,
                    a.throughput_16_gbps / b.throughput_16_gbps,
                    a.latency.p50_us / b.latency.p50_us,
                    a.connections_per_s / b.connections_per_s
                );
            }
        }
    }

    /// Idle connections held per path: memory and descriptors per connection.
    fn memory_markdown(&self, s: &mut String) {
        if !self.memory.is_empty() {
            let _ = writeln!(
                s,
                "\nIdle connections (each has exchanged one byte both ways, then sits):\n"
            );
            let _ = writeln!(
                s,
                "| path | process | idle connections | held | RSS MiB | RSS before MiB | KiB per connection | descriptors | per connection |"
            );
            let _ = writeln!(
                s,
                "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
            );
            for m in &self.memory {
                let held = if m.idle_held < m.idle_requested {
                    format!("**{}**", m.idle_held)
                } else {
                    m.idle_held.to_string()
                };
                let per = m
                    .kib_per_connection()
                    .map(|k| format!("{k:.1}"))
                    .unwrap_or_else(|| "-".into());
                let fds = m.fds.map(|n| n.to_string()).unwrap_or_else(|| "-".into());
                let fds_per = m
                    .fds_per_connection()
                    .map(|k| format!("{k:.2}"))
                    .unwrap_or_else(|| "-".into());
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {:.1} | {:.1} | {} | {} | {} |",
                    m.path,
                    m.process,
                    m.idle_requested,
                    held,
                    m.rss_mib,
                    m.rss_baseline_mib,
                    per,
                    fds,
                    fds_per
                );
            }
            let mut shortfalls: Vec<String> = self
                .memory
                .iter()
                .filter_map(|m| {
                    m.shortfall.as_ref().map(|why| {
                        format!(
                            "- {}: held {} of {} idle connections: {why}",
                            m.path, m.idle_held, m.idle_requested
                        )
                    })
                })
                .collect();
            shortfalls.dedup();
            if !shortfalls.is_empty() {
                let _ = writeln!(s);
            }
            for line in shortfalls {
                let _ = writeln!(s, "{line}");
            }
        }
    }

    /// The flood test, when it ran: one row per phase, same run.
    fn flood_markdown(&self, s: &mut String) {
        if self.flood.is_empty() {
            return;
        }
        let _ = writeln!(
            s,
            "\nFlood of new denied UDP flows from one peer at the enforcing pod, while a legitimate \
             peer opens new UDP flows (target: at least 99.9% answered on their first datagram):\n\n\
             | phase | flood sent (datagrams/s) | legitimate flows | answered on the first datagram | server proxy CPU |\n\
             | --- | ---: | ---: | ---: | ---: |"
        );
        for p in &self.flood {
            let _ = writeln!(
                s,
                "| {} | {:.0} | {} | {:.2}% | {:.0}% |",
                p.phase,
                p.flood_pps,
                p.legit_flows,
                p.success_percent(),
                p.proxy_cpu_percent
            );
        }
    }

    /// The policy-swap soak, when it ran.
    fn soak_markdown(&self, s: &mut String) {
        if let Some(soak) = &self.soak {
            let _ = writeln!(
                s,
                "\nPolicy-swap soak: {} swaps requested, {} table generations observed, {} connections ok, **{} failed** (target 0).",
                soak.swaps_requested, soak.generations_observed, soak.connections_ok, soak.connections_failed
            );
            if !soak.failure_reasons.is_empty() {
                let _ = writeln!(s, "Soak failures: {}.", reasons(&soak.failure_reasons));
            }
        }
    }

    /// The standard tools and UDP: a table of figures, then the ratios against direct (and
    /// HAProxy for the TCP tools), then checks and failures.
    fn tools_markdown(&self, s: &mut String) {
        if self.paths.iter().all(|p| {
            let t = &p.tools;
            t.sockperf_tcp.is_none()
                && t.iperf3_1_gbps.is_none()
                && t.udp_rr.is_none()
                && t.dns_qps.is_none()
        }) {
            return;
        }
        self.tools_table(s);
        self.tools_ratios(s);
        self.tools_checks(s);
    }

    fn tools_table(&self, s: &mut String) {
        let _ = writeln!(s, "\nStandard tools and UDP (same run, interleaved; UDP is not proxied: the enforcing paths judge each new flow in the proxy's NFQUEUE, then the kernel carries it):\n");
        let _ = writeln!(s, "| path | sockperf TCP 16 B p50 / p99 µs | iperf3 1 / 16 streams Gbit/s | sockperf UDP 16 B p50 / p99 µs | UDP 1 B RR p50 / p99 µs | new UDP flows/s | DNS q/s | DNS q/s, new socket per query |");
        let _ = writeln!(
            s,
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        let lat = |l: &Option<Latency>| {
            l.as_ref().map_or("-".to_string(), |l| {
                format!("{:.1} / {:.1}", l.p50_us, l.p99_us)
            })
        };
        let num =
            |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
        for p in &self.paths {
            let x = &p.tools;
            let iperf = match (x.iperf3_1_gbps, x.iperf3_16_gbps) {
                (Some(a), Some(b)) => format!("{a:.2} / {b:.2}"),
                _ => "-".into(),
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                p.description,
                lat(&x.sockperf_tcp),
                iperf,
                lat(&x.sockperf_udp),
                lat(&x.udp_rr),
                num(x.udp_new_flows_per_s, 0),
                num(x.dns_qps, 0),
                num(x.dns_new_socket_qps, 0)
            );
        }
    }

    fn tools_ratios(&self, s: &mut String) {
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
            _ => "-".into(),
        };
        let p50 = |l: &Option<Latency>| l.as_ref().map(|l| l.p50_us);
        let _ = writeln!(s, "\n| ratio | sockperf TCP p50 | iperf3 1 stream | iperf3 16 streams | sockperf UDP p50 | UDP RR p50 [≤ 1.05] | new UDP flows/s | DNS q/s | DNS q/s, new socket |");
        let _ = writeln!(
            s,
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        for (a, b, label) in [
            ("inbound", "direct", "portcullis inbound / direct"),
            ("mesh", "direct", "portcullis outbound+inbound / direct"),
            ("service", "mesh", "via ClusterIP / to the pod IP"),
            ("inbound", "haproxy", "portcullis inbound / HAProxy"),
        ] {
            let (Some(a), Some(b)) = (self.path(a), self.path(b)) else {
                continue;
            };
            let (a, b) = (&a.tools, &b.tools);
            let _ = writeln!(
                s,
                "| {label} | {} | {} | {} | {} | {} | {} | {} | {} |",
                ratio(p50(&a.sockperf_tcp), p50(&b.sockperf_tcp)),
                ratio(a.iperf3_1_gbps, b.iperf3_1_gbps),
                ratio(a.iperf3_16_gbps, b.iperf3_16_gbps),
                ratio(p50(&a.sockperf_udp), p50(&b.sockperf_udp)),
                ratio(p50(&a.udp_rr), p50(&b.udp_rr)),
                ratio(a.udp_new_flows_per_s, b.udp_new_flows_per_s),
                ratio(a.dns_qps, b.dns_qps),
                ratio(a.dns_new_socket_qps, b.dns_new_socket_qps)
            );
        }
    }

    fn tools_checks(&self, s: &mut String) {
        for p in &self.paths {
            let x = &p.tools;
            if let Some(judged) = x.udp_new_flows_judged {
                let _ = writeln!(s, "\nNew UDP flows on {}: {} answered, {judged} allowed by the inbound proxy's queue verdicts meanwhile.", p.path, x.udp_new_flows_answered);
            }
            if x.udp_rr_lost > 0 {
                let _ = writeln!(
                    s,
                    "\nUDP request/response on {}: {} datagrams unanswered within 1 s.",
                    p.path, x.udp_rr_lost
                );
            }
            if !x.udp_flow_failures.is_empty() {
                let _ = writeln!(
                    s,
                    "\nFailed new UDP flows on {}: {}.",
                    p.path,
                    reasons(&x.udp_flow_failures)
                );
            }
            if !x.dns_failures.is_empty() {
                let _ = writeln!(
                    s,
                    "\nFailed DNS queries on {}: {}.",
                    p.path,
                    reasons(&x.dns_failures)
                );
            }
        }
    }

    /// One bar chart of `series` (one bar per path and series) at `x0`.
    fn svg_panel(
        &self,
        s: &mut String,
        x0: f64,
        title: &str,
        unit: &str,
        series: &[(&str, Vec<f64>)],
    ) {
        let colors = ["#4e79a7", "#f28e2b", "#59a14f"];
        let (pw, ph, top) = (400.0, 300.0, 50.0);
        let max = series
            .iter()
            .flat_map(|(_, v)| v.iter().copied())
            .fold(0.0f64, f64::max)
            .max(1e-9);
        let _ = writeln!(
            s,
            "<text x='{}' y='25' font-size='15' font-weight='bold'>{title}</text>",
            x0
        );
        let _ = writeln!(
            s,
            "<line x1='{x0}' y1='{}' x2='{}' y2='{}' stroke='black'/>",
            top + ph,
            x0 + pw,
            top + ph
        );
        let groups = self.paths.len().max(1) as f64;
        let gw = pw / groups;
        let bw = gw * 0.8 / series.len() as f64;
        for (gi, p) in self.paths.iter().enumerate() {
            let gx = x0 + gi as f64 * gw;
            let _ = writeln!(
                s,
                "<text x='{}' y='{}' text-anchor='middle'>{}</text>",
                gx + gw / 2.0,
                top + ph + 16.0,
                p.path
            );
            for (si, (_, values)) in series.iter().enumerate() {
                let v = values.get(gi).copied().unwrap_or(0.0);
                let bh = v / max * (ph - 20.0);
                let bx = gx + gw * 0.1 + si as f64 * bw;
                let _ = writeln!(
                    s,
                    "<rect x='{bx:.1}' y='{:.1}' width='{:.1}' height='{bh:.1}' fill='{}'/>",
                    top + ph - bh,
                    bw - 2.0,
                    colors[si % 3]
                );
                let _ = writeln!(
                    s,
                    "<text x='{:.1}' y='{:.1}' text-anchor='middle' font-size='10'>{:.1}</text>",
                    bx + bw / 2.0,
                    top + ph - bh - 3.0,
                    v
                );
            }
        }
        for (si, (name, _)) in series.iter().enumerate() {
            let ly = top + ph + 40.0 + si as f64 * 16.0;
            let _ = writeln!(s, "<rect x='{x0}' y='{}' width='10' height='10' fill='{}'/><text x='{}' y='{}'>{name} ({unit})</text>", ly - 9.0, colors[si % 3], x0 + 14.0, ly);
        }
    }

    /// Two bar charts: throughput per path, latency percentiles per path.
    pub fn svg(&self) -> String {
        let (w, h) = (900.0, 420.0);
        let mut s = format!("<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' font-family='sans-serif' font-size='12'>\n<rect width='100%' height='100%' fill='white'/>\n");
        let col = |f: &dyn Fn(&PathResult) -> f64| self.paths.iter().map(f).collect::<Vec<_>>();
        self.svg_panel(
            &mut s,
            30.0,
            "Bulk throughput",
            "Gbit/s",
            &[
                ("1 stream", col(&|p| p.throughput_1_gbps)),
                ("16 streams", col(&|p| p.throughput_16_gbps)),
            ],
        );
        self.svg_panel(
            &mut s,
            480.0,
            "1-byte request/response latency",
            "µs",
            &[
                ("p50", col(&|p| p.latency.p50_us)),
                ("p99", col(&|p| p.latency.p99_us)),
                ("p99.9", col(&|p| p.latency.p999_us)),
            ],
        );
        s.push_str("</svg>\n");
        s
    }
}
