//! `portcullis-loadtests`: Portcullis against the direct path and against HAProxy, side by side
//! in one run, in network namespaces this program creates (and removes). See loadtests/README.md.

mod report;
mod topology;
mod workload;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;

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
    description: &'static str,
    ns: String,
    sink: SocketAddr,
    echo: SocketAddr,
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("constant address"), port)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn main() -> Result<()> {
    let mut args = Args::parse();
    if args.smoke {
        args.seconds = 0.3;
        args.rounds = 1;
        args.latency_rounds = 300;
        args.idle = vec![100];
        args.swaps = 10;
    }
    raise_fd_limit();
    let proxy = locate(args.proxy_bin.clone(), "portcullis-proxy")?;
    let init = locate(args.init_bin.clone(), "portcullis-init")?;
    let haproxy = !args.no_haproxy;
    if haproxy && which("haproxy").is_none() {
        bail!("haproxy is not installed (apt-get install haproxy), or pass --no-haproxy");
    }

    let mut topo = Topology::create()?;
    workload::start_servers(
        &topo.server,
        &[(SINK_PORT, ECHO_PORT), (DIRECT_SINK_PORT, DIRECT_ECHO_PORT)],
    )?;
    topo.write_policy(0)?;
    let server_ips = format!("{SERVER_IP_PLAIN},{SERVER_IP_MESH}");
    let (server_ns, mesh_ns) = (topo.server.clone(), topo.mesh_client.clone());
    let server_proxy = topo.start_portcullis(
        &server_ns,
        "server",
        &server_ips,
        &init,
        &proxy,
        &args.proxy_args,
    )?;
    let mesh_proxy = topo.start_portcullis(
        &mesh_ns,
        "mesh-client",
        CLIENT_IP_MESH,
        &init,
        &proxy,
        &args.proxy_args,
    )?;
    let haproxy_pid = if haproxy {
        Some(topo.start_haproxy()?)
    } else {
        None
    };

    let mut paths = vec![
        PathSpec {
            name: "direct",
            description: "direct (no proxy)",
            ns: topo.client.clone(),
            sink: addr(SERVER_IP_PLAIN, DIRECT_SINK_PORT),
            echo: addr(SERVER_IP_PLAIN, DIRECT_ECHO_PORT),
        },
        PathSpec {
            name: "inbound",
            description: "Portcullis inbound (1 proxy)",
            ns: topo.client.clone(),
            sink: addr(SERVER_IP_PLAIN, SINK_PORT),
            echo: addr(SERVER_IP_PLAIN, ECHO_PORT),
        },
        PathSpec {
            name: "mesh",
            description: "Portcullis outbound+inbound (2 proxies)",
            ns: topo.mesh_client.clone(),
            sink: addr(SERVER_IP_MESH, SINK_PORT),
            echo: addr(SERVER_IP_MESH, ECHO_PORT),
        },
    ];
    if haproxy {
        paths.push(PathSpec {
            name: "haproxy",
            description: "HAProxy TCP, splice-auto (1 proxy)",
            ns: topo.client.clone(),
            sink: addr(SERVER_IP_PLAIN, HAPROXY_SINK_PORT),
            echo: addr(SERVER_IP_PLAIN, HAPROXY_ECHO_PORT),
        });
    }

    let duration = Duration::from_secs_f64(args.seconds);
    let n = paths.len();
    let (mut t1, mut t16, mut cps) = (vec![vec![]; n], vec![vec![]; n], vec![vec![]; n]);
    let fails: Vec<std::sync::Arc<workload::Failures>> =
        (0..n).map(|_| Default::default()).collect();
    let mut lat: Vec<Vec<workload::Latency>> = vec![vec![]; n];
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
            cps[i].push(workload::connection_rate(
                &p.ns, p.echo, 4, duration, &fails[i],
            )?);
        }
    }
    let results: Vec<PathResult> = paths
        .iter()
        .enumerate()
        .map(|(i, p)| PathResult {
            path: p.name.into(),
            description: p.description.into(),
            throughput_1_gbps: median(t1[i].clone()),
            throughput_16_gbps: median(t16[i].clone()),
            latency: workload::Latency {
                p50_us: median(lat[i].iter().map(|l| l.p50_us).collect()),
                p99_us: median(lat[i].iter().map(|l| l.p99_us).collect()),
                p999_us: median(lat[i].iter().map(|l| l.p999_us).collect()),
            },
            connections_per_s: median(cps[i].clone()),
            connection_failures: fails[i].total(),
            failure_reasons: fails[i].reasons(),
        })
        .collect();

    // Memory with idle connections held open through each path: the processes on the path
    // (the harness itself for the direct path: its echo server is the application).
    let mut memory = Vec::new();
    let harness = std::process::id();
    for p in &paths {
        // (what, pid, namespace of its admin port for Portcullis proxies)
        let processes: Vec<(&str, u32, Option<&str>)> = match p.name {
            "direct" => vec![("echo server (application, in the harness)", harness, None)],
            "inbound" => vec![("portcullis-proxy (inbound)", server_proxy, Some(&server_ns))],
            "mesh" => vec![
                (
                    "portcullis-proxy (outbound, client side)",
                    mesh_proxy,
                    Some(&mesh_ns),
                ),
                (
                    "portcullis-proxy (inbound, server side)",
                    server_proxy,
                    Some(&server_ns),
                ),
            ],
            "haproxy" => match haproxy_pid {
                Some(pid) => vec![("haproxy", pid, None)],
                None => continue,
            },
            _ => continue,
        };
        for &count in &args.idle {
            eprintln!("idle: {count} connections through {}", p.name);
            let before: Vec<f64> = processes
                .iter()
                .map(|&(_, pid, _)| rss_mib(pid))
                .collect::<Result<_>>()?;
            let fds_before: Vec<Option<usize>> =
                processes.iter().map(|&(_, pid, _)| fd_count(pid)).collect();
            let refused_before: Vec<_> = processes
                .iter()
                .map(|&(_, _, admin)| admin.map(refused_counts).unwrap_or_default())
                .collect();
            let budget = Duration::from_secs(60) + Duration::from_millis(10) * count as u32;
            let mut idle = workload::open_idle(&p.ns, p.echo, count, budget)
                .with_context(|| format!("{count} idle connections through {}", p.name))?;
            if let Some(why) = &mut idle.shortfall {
                // Say which proxy refused, and why, when one did.
                for (&(process, _, admin), earlier) in processes.iter().zip(&refused_before) {
                    let Some(ns) = admin else { continue };
                    for (reason, n) in refused_counts(ns) {
                        let new = n - earlier.iter().find(|e| e.0 == reason).map_or(0.0, |e| e.1);
                        if new > 0.0 {
                            why.push_str(&format!("; {process} refused {new} ({reason})"));
                        }
                    }
                }
            }
            if let Some(why) = &idle.shortfall {
                eprintln!("  {}: held {} of {count}: {why}", p.name, idle.conns.len());
            }
            std::thread::sleep(Duration::from_millis(300));
            for ((&(process, pid, _), baseline), fds_baseline) in
                processes.iter().zip(before).zip(fds_before)
            {
                memory.push(MemoryResult {
                    fds: fd_count(pid),
                    fds_baseline,
                    path: p.name.into(),
                    process: process.into(),
                    idle_requested: count,
                    idle_held: idle.conns.len(),
                    rss_mib: rss_mib(pid)?,
                    rss_baseline_mib: baseline,
                    shortfall: idle.shortfall.clone(),
                });
            }
            drop(idle);
            // Let both proxies and the echo threads see the closes before the next sample.
            std::thread::sleep(
                Duration::from_millis(200) + Duration::from_micros(200) * count as u32,
            );
        }
    }

    // Policy swaps while connections flow through the inbound proxy.
    let generation = |ns: &str| -> u64 {
        workload::http_get(ns, 4191, "/policy")
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
        args.swaps,
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
    let soak = SoakResult {
        swaps_requested: args.swaps,
        generations_observed: generation(&server_ns).saturating_sub(gen_start),
        connections_ok: ok,
        connections_failed: soak_failures.total(),
        failure_reasons: soak_failures.reasons(),
    };

    let mut notes = vec![format!(
        "Descriptor limit (RLIMIT_NOFILE, inherited by both proxies and HAProxy): {}.",
        fd_limit_text()
    )];
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
    let report = Report {
        machine: machine(),
        notes,
        rounds: args.rounds,
        seconds_per_run: args.seconds,
        paths: results,
        memory,
        soak: Some(soak),
    };
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let dir = args
        .out
        .join(format!("{stamp}{}", if args.smoke { "-smoke" } else { "" }));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    std::fs::write(dir.join("results.md"), report.markdown())?;
    std::fs::write(dir.join("plot.svg"), report.svg())?;
    println!("{}", report.markdown());
    println!("results: {}", dir.display());
    Ok(())
}

/// `portcullis_connections_refused_total` of the proxy whose admin port is in `ns`, by reason.
fn refused_counts(ns: &str) -> Vec<(String, f64)> {
    let Ok((_, body)) = workload::http_get(ns, 4191, "/metrics") else {
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

/// Open descriptors of a process (pipes, sockets, files).
fn fd_count(pid: u32) -> Option<usize> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count())
}

/// Resident memory of a process, in MiB.
fn rss_mib(pid: u32) -> Result<f64> {
    Ok(rss_bytes(pid)? as f64 / 1048576.0)
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

fn which(cmd: &str) -> Option<PathBuf> {
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
