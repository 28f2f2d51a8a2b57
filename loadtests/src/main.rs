//! `portcullis-loadtests`: Portcullis against the direct path and against HAProxy, side by side
//! in one run, in network namespaces this program creates (and removes). See loadtests/README.md.

mod extra;
mod flood;
mod flow_records;
mod memory;
mod report;
mod tools;
mod topology;
mod udp;
mod workload;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use portcullis_contract::ports::ADMIN;

use memory::{measure_memory, Processes};
use report::{MemoryResult, PathResult, Report, SoakResult};
use topology::*;

#[derive(Parser)]
#[command(
    name = "portcullis-loadtests",
    version,
    about = "Measure Portcullis against the direct path and HAProxy (needs root)."
)]
struct Args {
    /// A few seconds in all: tiny durations, one round, 100 idle connections, 20 swaps. For CI.
    #[arg(long)]
    smoke: bool,
    /// Seconds per throughput and connection-rate run.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Rounds; every path runs once per round, interleaved, and the median is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Ping-pong exchanges per latency run.
    #[arg(long, default_value_t = 20_000)]
    latency_rounds: usize,
    /// Idle-connection counts for the memory measurement (each path, each count).
    #[arg(long, value_delimiter = ',', default_value = "100,1000,5000")]
    idle: Vec<usize>,
    /// Policy swaps in the soak.
    #[arg(long, default_value_t = 1000)]
    swaps: usize,
    /// Leave HAProxy out (when it is not installed).
    #[arg(long)]
    no_haproxy: bool,
    /// Where results go (a timestamped folder is created inside).
    #[arg(long, default_value = "loadtests/results")]
    out: PathBuf,
    #[arg(long)]
    proxy_bin: Option<PathBuf>,
    #[arg(long)]
    init_bin: Option<PathBuf>,
    /// Extra arguments for both proxies, e.g. `--proxy-arg=--copy=userspace`.
    #[arg(long = "proxy-arg", allow_hyphen_values = true)]
    proxy_args: Vec<String>,

    /// Where the pods' proxies judge inbound TCP, passed to portcullis-init and both proxies:
    /// `queue` (a verdict on the first packet, then the kernel carries the connection) or
    /// `proxy` (relayed by the inbound listener, hop for hop against HAProxy). Unset: the
    /// binaries' default (`queue` when they enforce UDP).
    #[arg(long, value_parser = ["queue", "proxy"])]
    inbound_tcp: Option<String>,
    /// Where the pods judge outbound TCP to pod IPs, passed to portcullis-init (the mesh
    /// client's is the one that matters): `queue` (a verdict on the SYN, the kernel carries the
    /// connection; Services are still relayed) or `proxy` (every connection relayed by the
    /// outbound listener, as before issue 26). Unset: the binaries' default.
    #[arg(long, value_parser = ["queue", "proxy"])]
    outbound_tcp: Option<String>,
    /// `sockperf ping-pong` 16 B (TCP on every path; UDP beside the UDP workloads). auto: when
    /// installed, off with --smoke.
    #[arg(long, value_enum, default_value = "auto")]
    sockperf: extra::Toggle,
    /// `iperf3`, 1 and 16 streams, on every path. auto: when installed, off with --smoke.
    #[arg(long, value_enum, default_value = "auto")]
    iperf3: extra::Toggle,
    /// UDP request/response and new flows per second, enforcing pod vs direct. auto: when the
    /// proxy has --enforce-udp (tiny with --smoke).
    #[arg(long, value_enum, default_value = "auto")]
    udp: extra::Toggle,
    /// DNS queries per second against dnsmasq, enforcing pod vs direct. auto: when the proxy
    /// has --enforce-udp and dnsmasq is installed (tiny with --smoke).
    #[arg(long, value_enum, default_value = "auto")]
    dns: extra::Toggle,
    /// Turn connection tracking on in the direct-server namespace (one iptables rule that
    /// matches nothing here), so the UDP direct path pays conntrack as the enforcing pod does:
    /// the ratio then shows the queue's cost alone.
    #[arg(long)]
    direct_conntrack: bool,
    /// Seconds per phase of the flood test (no flood; a flood of new denied UDP flows from one
    /// peer with the init rules as installed; the same without the per-source limit), measuring
    /// a legitimate peer's first-packet success and the proxy's CPU. Runs with `--udp`; 0: off.
    #[arg(long, default_value_t = 3.0)]
    flood_seconds: f64,
    /// Datagrams per second of the flood.
    #[arg(long, default_value_t = 100_000)]
    flood_pps: u64,
    /// The proxies' flow records (issue 25): `on` (their default), `off`
    /// (`--flow-summary-interval=0`), or `compare`: after everything else, both proxies are
    /// restarted per setting, off and on alternately each round, and connections per second
    /// and latency are measured on every Portcullis path for each.
    #[arg(long, value_enum, default_value = "on")]
    flow_records: flow_records::FlowRecords,
}

fn locate(explicit: Option<PathBuf>, name: &str) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p);
    }
    let beside = std::env::current_exe()?.parent().map(|d| d.join(name));
    beside.filter(|p| p.is_file()).with_context(|| {
        format!(
            "cannot find {name}; build the workspace or pass --{}-bin",
            name.trim_start_matches("portcullis-")
        )
    })
}

struct PathSpec {
    name: &'static str,
    description: String,
    ns: String,
    sink: SocketAddr,
    echo: SocketAddr,
    /// Where the optional workloads (standard tools, UDP) connect.
    targets: extra::Targets,
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("constant address"), port)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

impl Args {
    /// `--smoke`: one short round of everything, to check that it runs.
    fn shrink_for_smoke(&mut self) {
        self.seconds = 0.3;
        self.rounds = 1;
        self.latency_rounds = 300;
        self.idle = vec![100];
        self.swaps = 10;
        self.flood_seconds = self.flood_seconds.min(0.5);
        self.flood_pps = self.flood_pps.min(20_000);
    }
}

fn main() -> Result<()> {
    let mut args = Args::parse();
    if args.smoke {
        args.shrink_for_smoke();
    }
    raise_fd_limit();
    let proxy = locate(args.proxy_bin.clone(), "portcullis-proxy")?;
    let init = locate(args.init_bin.clone(), "portcullis-init")?;
    let haproxy = !args.no_haproxy;
    if haproxy && which("haproxy").is_none() {
        bail!("haproxy is not installed (apt-get install haproxy), or pass --no-haproxy");
    }
    let mut plan = make_plan(&args, &proxy)?;

    let mut topo = Topology::create()?;
    workload::start_servers(
        &topo.server,
        &[(SINK_PORT, ECHO_PORT), (DIRECT_SINK_PORT, DIRECT_ECHO_PORT)],
    )?;
    start_optional_servers(&mut topo, &plan)?;
    note_conntrack(&topo, &args, &mut plan)?;
    topo.write_policy(0)?;
    let server_ips = format!("{SERVER_IP_PLAIN},{SERVER_IP_MESH}");
    let (server_ns, mesh_ns) = (topo.server.clone(), topo.mesh_client.clone());
    let (init_args, proxy_args) = portcullis_args(&args, &mut plan);
    let server_proxy = topo.start_portcullis(
        &server_ns,
        "server",
        &server_ips,
        (&init, &init_args),
        (&proxy, &proxy_args),
    )?;
    let mesh_proxy = topo.start_portcullis(
        &mesh_ns,
        "mesh-client",
        CLIENT_IP_MESH,
        (&init, &init_args),
        (&proxy, &proxy_args),
    )?;
    let inbound = inbound_mode(&server_ns);
    plan.confirm_udp(&[("server", &server_ns), ("mesh-client", &mesh_ns)])?;
    let haproxy_pid = if haproxy {
        Some(topo.start_haproxy()?)
    } else {
        None
    };

    let paths = path_specs(&topo, haproxy, &inbound);
    let results = run_rounds(&paths, &args, &plan)?;
    let on = Processes {
        server_proxy,
        server_ns,
        mesh_proxy,
        mesh_ns,
        haproxy: haproxy_pid,
    };
    let memory = measure_memory(&paths, &args.idle, &on)?;
    let soak = run_soak(&topo, args.swaps)?;
    let flood = run_flood(&topo, &args, &plan, on.server_proxy)?;
    let flow_records = compare_flow_records(&mut topo, &args, &proxy, &proxy_args, &on, &paths)?;

    let notes = report_notes(&topo, &paths, &inbound, haproxy, &mut plan);
    let report = Report {
        machine: machine(),
        notes,
        rounds: args.rounds,
        seconds_per_run: args.seconds,
        paths: results,
        memory,
        soak: Some(soak),
        flood,
        flow_records,
    };
    write_report(&report, &args)
}

/// The arguments of portcullis-init and of both proxies, from `--inbound-tcp`,
/// `--outbound-tcp` and `--proxy-arg`; notes the outbound mode in the report.
fn portcullis_args(args: &Args, plan: &mut extra::Plan) -> (Vec<String>, Vec<String>) {
    let (mut init_args, mut proxy_args) = (Vec::new(), args.proxy_args.clone());
    proxy_args.extend(args.flow_records.proxy_args());
    if let Some(mode) = &args.inbound_tcp {
        init_args.push(format!("--inbound-tcp={mode}"));
        proxy_args.push(format!("--inbound-tcp={mode}"));
    }
    if let Some(mode) = &args.outbound_tcp {
        init_args.push(format!("--outbound-tcp={mode}"));
    }
    plan.notes.push(format!(
        "Outbound TCP in the mesh client (portcullis-init --outbound-tcp): {}. queue: the SYN to \
         the server's pod IP is judged in NFQUEUE and the kernel carries the connection (issue \
         26); proxy: relayed by the outbound listener.",
        args.outbound_tcp
            .as_deref()
            .unwrap_or("the init's default (queue when it enforces UDP)")
    ));
    (init_args, proxy_args)
}

/// `--flow-records compare`: both proxies restarted per setting (see [`flow_records`]).
fn compare_flow_records(
    topo: &mut Topology,
    args: &Args,
    proxy: &std::path::Path,
    proxy_args: &[String],
    on: &Processes,
    paths: &[PathSpec],
) -> Result<Vec<flow_records::FlowRecordsResult>> {
    if args.flow_records != flow_records::FlowRecords::Compare {
        return Ok(Vec::new());
    }
    let server_ips = format!("{SERVER_IP_PLAIN},{SERVER_IP_MESH}");
    let proxies = flow_records::Proxies {
        binary: proxy,
        args: proxy_args,
        pods: [
            (&on.server_ns, "server", &server_ips),
            (&on.mesh_ns, "mesh-client", CLIENT_IP_MESH),
        ],
    };
    let budget = flow_records::Budget {
        rounds: args.rounds,
        duration: Duration::from_secs_f64(args.seconds),
        latency_rounds: args.latency_rounds,
    };
    flow_records::compare(topo, &proxies, paths, &budget)
}

/// The flood test, with `--udp` and `--flood-seconds` above 0.
fn run_flood(
    topo: &Topology,
    args: &Args,
    plan: &extra::Plan,
    server_proxy: u32,
) -> Result<Vec<flood::FloodPhase>> {
    if !plan.udp || args.flood_seconds <= 0.0 {
        return Ok(Vec::new());
    }
    flood::run(topo, server_proxy, args.flood_seconds, args.flood_pps)
}

/// What runs, from the flags and the tools installed.
fn make_plan(args: &Args, proxy: &std::path::Path) -> Result<extra::Plan> {
    let wanted = extra::Wanted {
        sockperf: args.sockperf,
        iperf3: args.iperf3,
        udp: args.udp,
        dns: args.dns,
    };
    extra::plan(
        &wanted,
        proxy,
        args.smoke,
        args.seconds,
        args.latency_rounds,
    )
}

/// `--direct-conntrack`: conntrack on in the direct-server namespace; either way a note says
/// what the UDP ratios compare.
fn note_conntrack(topo: &Topology, args: &Args, plan: &mut extra::Plan) -> Result<()> {
    if args.direct_conntrack {
        topo.track_direct_connections()?;
        plan.notes.push(
            "--direct-conntrack: the direct-server namespace tracks connections (conntrack on, \
             no queue), so UDP ratios show the queue's cost without conntrack's."
                .into(),
        );
    } else if plan.any_udp() {
        plan.notes.push(
            "The direct-server namespace has no netfilter rules, so no conntrack; the enforcing \
             pods track every flow (--direct-conntrack turns it on there to separate the two)."
                .into(),
        );
    }
    Ok(())
}

/// The report's notes: descriptor limit, inbound mode, what the memory figures mean, the
/// proxies' own notes and the plan's.
fn report_notes(
    topo: &Topology,
    paths: &[PathSpec],
    inbound: &str,
    haproxy: bool,
    plan: &mut extra::Plan,
) -> Vec<String> {
    if haproxy && plan.any_udp() {
        plan.notes.push(
            "HAProxy has no UDP figures: it runs in TCP mode here, and UDP through a pod is not \
             proxied (the enforcing pod is compared with the direct path)."
                .into(),
        );
    }
    let mut notes = vec![
        format!(
            "Descriptor limit (RLIMIT_NOFILE, inherited by both proxies and HAProxy): {}.",
            fd_limit_text()
        ),
        format!(
            "Inbound TCP in the server pod (its proxy's /policy): {inbound}. queue: the first \
             packet of each connection is judged in NFQUEUE and the kernel carries the rest, so \
             the inbound rows measure the verdict and no relay, and the server proxy holds \
             nothing for inbound idle connections; proxy: relayed by the inbound listener \
             (--inbound-tcp proxy for the hop-for-hop comparison with HAProxy)."
        ),
    ];
    if paths.iter().any(|p| p.name == "mesh") && paths.iter().any(|p| p.name == "inbound") {
        notes.push(
            "The server-side proxy serves both the inbound and the mesh path, inbound first: on \
             the mesh path it reuses memory its allocator kept from the inbound phase, so its \
             growth there understates; the inbound rows show its cost per connection. Pipe \
             buffers and socket buffers are kernel memory, not RSS: descriptors show what a \
             connection holds."
                .to_string(),
        );
    }
    for pod in ["server", "mesh-client"] {
        if let Some(line) = lowered_max_connections(&topo.dir.join(format!("{pod}.proxy.log"))) {
            notes.push(format!("Proxy {pod}: {line}"));
        }
    }
    notes.append(&mut plan.notes);
    notes
}

/// Where the server pod's proxy judges inbound TCP, as its `/policy` says (`proxy` for a
/// binary too old to say).
fn inbound_mode(server_ns: &str) -> String {
    workload::http_get(server_ns, ADMIN, "/policy")
        .ok()
        .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
        .and_then(|v| v["inbound_tcp"].as_str().map(str::to_string))
        .unwrap_or_else(|| "proxy".to_string())
}

/// The servers of the optional workloads: in the server namespace (behind Portcullis and
/// HAProxy) and in the direct one (no Portcullis).
fn start_optional_servers(topo: &mut Topology, plan: &extra::Plan) -> Result<()> {
    let server_ip: std::net::IpAddr = SERVER_IP_PLAIN.parse()?;
    let direct_ip: std::net::IpAddr = DIRECT_SERVER_IP.parse()?;
    for (ns, ip) in [
        (topo.server.clone(), server_ip),
        (topo.direct_server.clone(), direct_ip),
    ] {
        tools::start_servers(topo, &ns, plan.sockperf, plan.udp, plan.iperf3)?;
        if plan.udp {
            udp::start_echo(&ns)?;
        }
        if plan.dns {
            udp::start_dnsmasq(topo, &ns, ip)?;
        }
    }
    Ok(())
}

fn path_specs(topo: &Topology, haproxy: bool, inbound: &str) -> Vec<PathSpec> {
    let direct_ip = addr(DIRECT_SERVER_IP, 0).ip();
    let mut paths = vec![
        PathSpec {
            name: "direct",
            description: "direct (no proxy)".into(),
            ns: topo.client.clone(),
            sink: addr(SERVER_IP_PLAIN, DIRECT_SINK_PORT),
            echo: addr(SERVER_IP_PLAIN, DIRECT_ECHO_PORT),
            targets: extra::Targets {
                sockperf: addr(DIRECT_SERVER_IP, SOCKPERF_PORT),
                iperf: addr(DIRECT_SERVER_IP, IPERF_PORT),
                udp: Some(direct_ip),
                verdicts_ns: None,
            },
        },
        PathSpec {
            name: "inbound",
            description: match inbound {
                "queue" => "Portcullis inbound (verdict in the queue, no relay)".into(),
                _ => "Portcullis inbound (1 proxy)".into(),
            },
            ns: topo.client.clone(),
            sink: addr(SERVER_IP_PLAIN, SINK_PORT),
            echo: addr(SERVER_IP_PLAIN, ECHO_PORT),
            targets: extra::Targets {
                sockperf: addr(SERVER_IP_PLAIN, SOCKPERF_PORT),
                iperf: addr(SERVER_IP_PLAIN, IPERF_PORT),
                udp: Some(addr(SERVER_IP_PLAIN, 0).ip()),
                verdicts_ns: Some(topo.server.clone()),
            },
        },
        PathSpec {
            name: "mesh",
            description: "Portcullis outbound+inbound (2 proxies)".into(),
            ns: topo.mesh_client.clone(),
            sink: addr(SERVER_IP_MESH, SINK_PORT),
            echo: addr(SERVER_IP_MESH, ECHO_PORT),
            targets: extra::Targets {
                sockperf: addr(SERVER_IP_MESH, SOCKPERF_PORT),
                iperf: addr(SERVER_IP_MESH, IPERF_PORT),
                udp: Some(addr(SERVER_IP_MESH, 0).ip()),
                verdicts_ns: Some(topo.server.clone()),
            },
        },
        PathSpec {
            name: "service",
            description: "Portcullis via a Service's ClusterIP (2 proxies)".into(),
            ns: topo.mesh_client.clone(),
            sink: addr(SERVICE_IP, SINK_PORT),
            echo: addr(SERVICE_IP, ECHO_PORT),
            targets: extra::Targets {
                sockperf: addr(SERVICE_IP, SOCKPERF_PORT),
                iperf: addr(SERVICE_IP, IPERF_PORT),
                // UDP to a ClusterIP goes on in the kernel to kube-proxy, which this topology
                // does not have: the UDP figures are the mesh path's.
                udp: None,
                verdicts_ns: Some(topo.server.clone()),
            },
        },
    ];
    if haproxy {
        paths.push(PathSpec {
            name: "haproxy",
            description: "HAProxy TCP, splice-auto (1 proxy)".into(),
            ns: topo.client.clone(),
            sink: addr(SERVER_IP_PLAIN, HAPROXY_SINK_PORT),
            echo: addr(SERVER_IP_PLAIN, HAPROXY_ECHO_PORT),
            targets: extra::Targets {
                sockperf: addr(SERVER_IP_PLAIN, HAPROXY_SOCKPERF_PORT),
                iperf: addr(SERVER_IP_PLAIN, HAPROXY_IPERF_PORT),
                udp: None,
                verdicts_ns: None,
            },
        });
    }
    paths
}

/// Every workload on every path, once per round, paths interleaved; medians of the rounds.
fn run_rounds(paths: &[PathSpec], args: &Args, plan: &extra::Plan) -> Result<Vec<PathResult>> {
    let duration = Duration::from_secs_f64(args.seconds);
    let n = paths.len();
    let (mut t1, mut t16, mut cps) = (vec![vec![]; n], vec![vec![]; n], vec![vec![]; n]);
    let mut waits: Vec<Vec<workload::Latency>> = vec![vec![]; n];
    let fails: Vec<std::sync::Arc<workload::Failures>> =
        (0..n).map(|_| Default::default()).collect();
    let mut lat: Vec<Vec<workload::Latency>> = vec![vec![]; n];
    let mut optional: Vec<extra::Samples> = (0..n).map(|_| Default::default()).collect();
    for round in 0..args.rounds {
        eprintln!("round {}/{}", round + 1, args.rounds);
        for (i, p) in paths.iter().enumerate() {
            t1[i].push(
                workload::throughput(&p.ns, p.sink, 1, duration)
                    .with_context(|| format!("{}: 1 stream", p.name))?
                    / 1e9,
            );
            t16[i].push(
                workload::throughput(&p.ns, p.sink, 16, duration)
                    .with_context(|| format!("{}: 16 streams", p.name))?
                    / 1e9,
            );
            lat[i].push(
                workload::latency(&p.ns, p.echo, args.latency_rounds)
                    .with_context(|| format!("{}: latency", p.name))?,
            );
            let rate = workload::connection_rate(&p.ns, p.echo, 4, duration, &fails[i])?;
            cps[i].push(rate.per_s);
            waits[i].push(rate.connect);
            plan.measure(p.name, &p.ns, &p.targets, duration, &mut optional[i])?;
        }
    }
    Ok(paths
        .iter()
        .enumerate()
        .map(|(i, p)| PathResult {
            path: p.name.into(),
            description: p.description.clone(),
            throughput_1_gbps: median(t1[i].clone()),
            throughput_16_gbps: median(t16[i].clone()),
            latency: workload::Latency {
                p50_us: median(lat[i].iter().map(|l| l.p50_us).collect()),
                p99_us: median(lat[i].iter().map(|l| l.p99_us).collect()),
                p999_us: median(lat[i].iter().map(|l| l.p999_us).collect()),
            },
            connections_per_s: median(cps[i].clone()),
            connect_wait: workload::Latency {
                p50_us: median(waits[i].iter().map(|l| l.p50_us).collect()),
                p99_us: median(waits[i].iter().map(|l| l.p99_us).collect()),
                p999_us: median(waits[i].iter().map(|l| l.p999_us).collect()),
            },
            connection_failures: fails[i].total(),
            failure_reasons: fails[i].reasons(),
            tools: optional[i].finish(),
        })
        .collect())
}

/// Policy swaps while connections flow through the inbound proxy.
fn run_soak(topo: &Topology, swaps: usize) -> Result<SoakResult> {
    let server_ns = topo.server.clone();
    let generation = |ns: &str| -> u64 {
        workload::http_get(ns, ADMIN, "/policy")
            .ok()
            .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
            .and_then(|v| v.get("generation").and_then(|g| g.as_u64()))
            .unwrap_or(0)
    };
    let gen_start = generation(&server_ns);
    let topo_ref = &topo;
    let soak_failures: std::sync::Arc<workload::Failures> = Default::default();
    let ok = workload::soak(
        &topo.client,
        addr(SERVER_IP_PLAIN, ECHO_PORT),
        swaps,
        &soak_failures,
        |i| {
            let before = generation(&server_ns);
            topo_ref.write_policy(i + 1)?;
            let deadline = Instant::now() + Duration::from_secs(3);
            while generation(&server_ns) <= before && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            Ok(())
        },
    )?;
    Ok(SoakResult {
        swaps_requested: swaps,
        generations_observed: generation(&server_ns).saturating_sub(gen_start),
        connections_ok: ok,
        connections_failed: soak_failures.total(),
        failure_reasons: soak_failures.reasons(),
    })
}

fn write_report(report: &Report, args: &Args) -> Result<()> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let dir = args
        .out
        .join(format!("{stamp}{}", if args.smoke { "-smoke" } else { "" }));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(report)?,
    )?;
    std::fs::write(dir.join("results.md"), report.markdown())?;
    std::fs::write(dir.join("plot.svg"), report.svg())?;
    println!("{}", report.markdown());
    println!("results: {}", dir.display());
    Ok(())
}

/// `portcullis_connections_refused_total` of the proxy whose admin port is in `ns`, by reason.
fn refused_counts(ns: &str) -> Vec<(String, f64)> {
    let Ok((_, body)) = workload::http_get(ns, ADMIN, "/metrics") else {
        return Vec::new();
    };
    let mut out: Vec<(String, f64)> = Vec::new();
    for line in body
        .lines()
        .filter(|l| l.starts_with("portcullis_connections_refused_total{"))
    {
        let reason = line
            .split("reason=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("?")
            .to_string();
        let n: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        match out.iter_mut().find(|e| e.0 == reason) {
            Some(e) => e.1 += n,
            None => out.push((reason, n)),
        }
    }
    out
}

fn fd_limit_text() -> String {
    use nix::sys::resource::{getrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => format!("soft {soft}, hard {hard}"),
        Err(e) => format!("unknown ({e})"),
    }
}

/// The proxy's start-up warning when the descriptor limit made it lower --max-connections.
fn lowered_max_connections(log: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    let v: serde_json::Value = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "max_connections_lowered")?;
    Some(format!(
        "--max-connections {} lowered to {} for RLIMIT_NOFILE {} (connections beyond it are reset).",
        v["max_connections"], v["effective_max_connections"], v["rlimit_nofile"]
    ))
}

pub(crate) fn which(cmd: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(cmd))
        .find(|p| p.is_file())
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpus} CPUs, Linux {}", kernel.trim())
}

/// Idle connections need two descriptors each here and two in the proxy (which inherits the
/// limit through `ip netns exec`): as many as the system allows.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0);
    if setrlimit(Resource::RLIMIT_NOFILE, nr_open, nr_open).is_err() {
        if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}
