//! Memory and descriptors of the processes on a path while idle connections are held open.

use super::*;

/// Processes whose memory the idle-connection runs sample, and where their admin ports are.
pub(crate) struct Processes {
    pub(crate) server_proxy: u32,
    pub(crate) server_ns: String,
    pub(crate) mesh_proxy: u32,
    pub(crate) mesh_ns: String,
    pub(crate) haproxy: Option<u32>,
}

/// The processes on path `p`: (what, pid, namespace of its admin port for Portcullis proxies);
/// the harness itself for the direct path (its echo server is the application).
fn processes_on<'a>(p: &PathSpec, on: &'a Processes) -> Vec<(&'static str, u32, Option<&'a str>)> {
    let harness = std::process::id();
    let (server, mesh) = (Some(on.server_ns.as_str()), Some(on.mesh_ns.as_str()));
    match p.name {
        "direct" => vec![("echo server (application, in the harness)", harness, None)],
        "inbound" => vec![("portcullis-proxy (inbound)", on.server_proxy, server)],
        "mesh" => vec![
            (
                "portcullis-proxy (outbound, client side)",
                on.mesh_proxy,
                mesh,
            ),
            (
                "portcullis-proxy (inbound, server side)",
                on.server_proxy,
                server,
            ),
        ],
        "haproxy" => on
            .haproxy
            .map(|pid| vec![("haproxy", pid, None)])
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// Memory with idle connections held open through each path, for each count.
pub(crate) fn measure_memory(
    paths: &[PathSpec],
    idle: &[usize],
    on: &Processes,
) -> Result<Vec<MemoryResult>> {
    let mut memory = Vec::new();
    for p in paths {
        let processes = processes_on(p, on);
        if processes.is_empty() {
            continue;
        }
        for &count in idle {
            memory.extend(sample_idle(p, count, &processes)?);
        }
    }
    Ok(memory)
}

/// Holds `count` idle connections through `p` and samples the processes on it.
fn sample_idle(
    p: &PathSpec,
    count: usize,
    processes: &[(&str, u32, Option<&str>)],
) -> Result<Vec<MemoryResult>> {
    let mut out = Vec::new();
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
        out.push(MemoryResult {
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
    std::thread::sleep(Duration::from_millis(200) + Duration::from_micros(200) * count as u32);
    Ok(out)
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
