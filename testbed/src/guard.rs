//! The node guard on the testbed's node (`up --node-guard`): `portcullis-node-guard` runs in the
//! node namespace as its DaemonSet would on a node, binding each pod's bridge port (`vpN`) to
//! the pod's MAC and IP, with the node's own addresses (every address of `br0`: the pods'
//! `hostIP`s) accepted by pods only from the node side.
//!
//! It is fed the way a cluster feeds it in file mode: the testbed writes the pods of its node
//! (port, MAC, IPs: what the CNI set up, see `pods.rs`) to a JSON list, atomically, and the
//! guard re-reads it every [`INTERVAL`]. [`publish`] returns only once the kernel holds the
//! table of that very list, so that a change the testbed makes (a pod gone, its address handed
//! to another) is in force before the testbed goes on: nothing that depends on the new binding
//! runs before it. Unlisted pod ports (`vp*`) send nothing (`--drop-unlisted`).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Context, Error, Result};
use serde::{Deserialize, Serialize};

use crate::serve::write_atomically;
use crate::sidecars::spawn_in;
use crate::{netns, PodState, State, UpOptions};

/// The bridge the pods' ports join (`pods.rs`).
pub const BRIDGE: &str = "br0";
/// The prefix of every pod port the testbed creates (`pods.rs`: `vp0`, `vp1`, ...).
pub const PORT_PREFIX: &str = "vp";
pub use portcullis_node_guard::ruleset::TABLE;
/// How often the guard re-reads the pod list.
const INTERVAL: &str = "100ms";
/// How long [`publish`] waits for the kernel to hold the new table.
const APPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// The guard of a running testbed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GuardState {
    pub pid: u32,
    pub log: PathBuf,
    /// The pod list it reads.
    pub pods_file: PathBuf,
}

/// One entry of the guard's pod list (`node-guard/README.md`, "--pods-file").
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GuardPod {
    pub interface: String,
    pub mac: String,
    pub ips: Vec<String>,
}

/// The pods of the node, as the guard reads them: every pod on the bridge (with a proxy or
/// without: the guard is about what a pod sends, not about its policy).
pub fn pod_list(pods: &[PodState]) -> Vec<GuardPod> {
    pods.iter()
        .filter(|p| !p.port.is_empty() && !p.mac.is_empty())
        .map(|p| GuardPod {
            interface: p.port.clone(),
            mac: p.mac.clone(),
            ips: p.addrs().iter().map(ToString::to_string).collect(),
        })
        .collect()
}

/// Starts the guard in node namespace `node` with the pods on it, and waits until their
/// bindings are in the kernel. `tag` tells the files of the nodes of a testbed with several
/// apart (empty for the first).
pub(crate) fn start(
    opts: &UpOptions,
    node: &str,
    pods: &[PodState],
    dir: &Path,
    tag: &str,
) -> Result<GuardState> {
    let Some(binary) = &opts.binaries.node_guard else {
        return Err(Error::Environment("--node-guard: cannot find portcullis-node-guard: build it (cargo build -p portcullis-node-guard) or pass --node-guard-bin".into()));
    };
    netns::exec_in(node, "nft", &["--version"])
        .context("--node-guard needs nft (Debian: apt-get install nftables)")?;
    let pods_file = dir.join(format!("guard-pods{tag}.json"));
    write_list(&pods_file, pods)?;
    let log = dir.join(format!("node-guard{tag}.log"));
    let args: Vec<String> = [
        "--pods-file",
        &pods_file.to_string_lossy(),
        "--bridge",
        BRIDGE,
        "--drop-unlisted",
        PORT_PREFIX,
        "--interval",
        INTERVAL,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let pid = spawn_in(node, binary, &args, &[], &log, None)?;
    let guard = GuardState {
        pid,
        log,
        pods_file,
    };
    wait_applied(node, &guard, pods)?;
    Ok(guard)
}

/// The guard of every node (`up --node-guard`), each with the pods on its node.
pub(crate) fn start_all(opts: &UpOptions, state: &mut State, dir: &Path) -> Result<()> {
    let first = state.node_netns.clone();
    state.node_guard = Some(start(opts, &first, &state.pods_on(&first), dir, "")?);
    state.save()?;
    for k in 1..state.nodes.len() {
        let node = state.nodes[k].netns.clone();
        let tag = format!("-node{}", k + 1);
        state.nodes[k].guard = Some(start(opts, &node, &state.pods_on(&node), dir, &tag)?);
        state.save()?;
    }
    Ok(())
}

/// Hands the guard the pods of `state` now, and returns once the kernel holds their table
/// (a removed pod's binding gone, a new one's in place): call it after a pod leaves and before
/// its address is given to another. Does nothing for a testbed without the guard.
pub fn publish(state: &State) -> Result<()> {
    let Some(guard) = &state.node_guard else {
        return Ok(());
    };
    let first = state.pods_on(&state.node_netns);
    write_list(&guard.pods_file, &first)?;
    wait_applied(&state.node_netns, guard, &first)?;
    for node in state.nodes.iter().skip(1) {
        if let Some(guard) = &node.guard {
            let pods = state.pods_on(&node.netns);
            write_list(&guard.pods_file, &pods)?;
            wait_applied(&node.netns, guard, &pods)?;
        }
    }
    Ok(())
}

fn write_list(path: &Path, pods: &[PodState]) -> Result<()> {
    write_atomically(path, &serde_json::to_vec_pretty(&pod_list(pods))?)
        .with_context(|| format!("cannot write the guard's pod list {}", path.display()))
}

/// The guard's table in the node namespace, as `nft list` prints it (empty when there is none).
pub fn table(node: &str) -> String {
    netns::exec_in(node, "nft", &["list", "table", "bridge", TABLE]).unwrap_or_default()
}

/// Whether `listed` (the table) binds exactly the ports of `pods`, each to its MAC.
fn binds_exactly(listed: &str, pods: &[GuardPod]) -> bool {
    let bound = listed.matches(": goto pod_").count();
    bound == pods.len()
        && pods.iter().all(|p| {
            listed.contains(&format!("\"{}\" : goto", p.interface)) && listed.contains(&p.mac)
        })
}

fn wait_applied(node: &str, guard: &GuardState, pods: &[PodState]) -> Result<()> {
    let want = pod_list(pods);
    let deadline = Instant::now() + APPLY_TIMEOUT;
    loop {
        let listed = table(node);
        // A table with no pod has no verdict map: the table itself is enough then.
        if binds_exactly(&listed, &want) && (!want.is_empty() || !listed.is_empty()) {
            return Ok(());
        }
        if Instant::now() > deadline {
            let log = fs::read_to_string(&guard.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(10).collect();
            return Err(Error::Timeout(format!(
                "portcullis-node-guard did not apply the pod list within {APPLY_TIMEOUT:?}; last log lines:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(port: &str, mac: &str, ip: &str) -> PodState {
        PodState {
            key: format!("ns/{port}"),
            netns: format!("n-{port}"),
            ip: ip.parse().expect("ip"),
            ipv6: None,
            port: port.into(),
            mac: mac.into(),
            pids: Vec::new(),
            proxy_log: PathBuf::new(),
            injected: true,
            not_injected: None,
            enforces_udp: false,
            bound: PathBuf::new(),
            system: false,
            node: String::new(),
        }
    }

    #[test]
    fn the_list_is_what_the_guard_parses_and_the_table_check_is_exact() {
        let pods = [
            pod("vp0", "0a:58:0a:00:00:02", "10.0.0.2"),
            pod("vp1", "0a:58:0a:00:00:03", "10.0.0.3"),
        ];
        let list = pod_list(&pods);
        let json = serde_json::to_string(&list).expect("json");
        let parsed = portcullis_node_guard::pods::parse(&json).expect("the guard parses it");
        let seen: Vec<String> = parsed
            .iter()
            .map(|p| format!("{} {} {:?}", p.interface, p.mac, p.ips))
            .collect();
        assert_eq!(
            seen,
            [
                "vp0 0a:58:0a:00:00:02 [10.0.0.2]",
                "vp1 0a:58:0a:00:00:03 [10.0.0.3]"
            ]
        );
        let table = "iifname vmap { \"vp0\" : goto pod_0, \"vp1\" : goto pod_1 }\n\
                     ether saddr != 0a:58:0a:00:00:02 drop\nether saddr != 0a:58:0a:00:00:03 drop";
        assert!(binds_exactly(table, &list));
        // A stale binding beside the current ones, or one missing: not applied yet.
        assert!(!binds_exactly(table, &list[..1]));
        let mut moved = list.clone();
        moved[1].mac = "0a:58:0a:00:00:09".into();
        assert!(!binds_exactly(table, &moved));
    }
}
