//! `portcullis-node-guard`: see the crate's README.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use portcullis_node_guard::nft;
use portcullis_node_guard::pods::Interface;
use portcullis_node_guard::ruleset::{self, Ruleset};
use portcullis_node_guard::watch::{Pods, Source, Watcher};

/// Binds each local pod's bridge port to its pod IPs and MAC (IPv4 and IPv6 sources, ARP
/// sender, neighbour discovery link-layer and target addresses) with one nftables `bridge`
/// table, so that no pod on a bridge-based CNI (Flannel, the bridge plugin) can forge another
/// pod's or the node's address. Runs on the host network with NET_ADMIN.
///
/// The pod list is a JSON file (or the CNI result cache, --cni-results), re-read every
/// --interval:
///   [{"interface": "veth1a2b3c", "mac": "0a:58:0a:f4:01:05", "ips": ["10.244.1.5", "fd00::5"]}]
/// `interface` is the pod's port on the bridge (the host-side veth), `mac` the MAC of the
/// pod's own interface, `ips` its addresses. Write it atomically (write, then rename).
#[derive(Debug, Parser)]
#[command(name = "portcullis-node-guard", version, verbatim_doc_comment)]
struct Args {
    /// The pod list (JSON, above). One of --pods-file or --cni-results is required.
    #[arg(
        long,
        env = "PORTCULLIS_GUARD_PODS_FILE",
        required_unless_present_any = ["cleanup", "cni_results"],
        conflicts_with = "cni_results"
    )]
    pods_file: Option<PathBuf>,

    /// Read the pod list from the container runtime's CNI result cache instead (containerd
    /// and CRI-O write one file per pod network there: /var/lib/cni/results). Give --bridge
    /// too, so that the bridge is never taken for a pod's port.
    #[arg(long, env = "PORTCULLIS_GUARD_CNI_RESULTS")]
    cni_results: Option<PathBuf>,

    /// An address of this node, which pods accept only from the node side (repeat, or
    /// comma-separated; e.g. the node's InternalIP).
    #[arg(long, env = "PORTCULLIS_GUARD_NODE_IPS", value_delimiter = ',')]
    node_ip: Vec<IpAddr>,

    /// The CNI bridge (e.g. cni0): its addresses are the node's too, re-read every --interval.
    #[arg(long, env = "PORTCULLIS_GUARD_BRIDGE")]
    bridge: Option<String>,

    /// Accept DHCP discovery and ARP probes from 0.0.0.0 (only for an IPAM that runs DHCP
    /// inside the pod; Kubernetes' host-local and Flannel's IPAM do not).
    #[arg(long)]
    allow_dhcp: bool,

    /// Drop frames from bridge ports whose name starts with this prefix (the CNI's pod ports,
    /// e.g. `veth`) when they are not in the pod list: a pod the list does not know yet sends
    /// nothing instead of anything, at the cost of its first packets until the list has it.
    /// Repeat, or comma-separated.
    #[arg(long, env = "PORTCULLIS_GUARD_DROP_UNLISTED", value_delimiter = ',')]
    drop_unlisted: Vec<Interface>,

    /// Print the ruleset (`nft -f` input) and exit without applying it.
    #[arg(long, conflicts_with = "cleanup")]
    dry_run: bool,

    /// Apply the ruleset once and exit (for an init step or a test) instead of watching.
    #[arg(long, conflicts_with_all = ["cleanup", "dry_run"])]
    once: bool,

    /// Remove the table (every rule this program installs) and exit.
    #[arg(long)]
    cleanup: bool,

    /// How often the pod list and the bridge's addresses are re-read.
    #[arg(long, default_value = "1s", value_parser = portcullis_contract::parse_duration)]
    interval: Duration,

    /// Re-apply the rules this often even when nothing changed (repairs a flushed table).
    #[arg(long, default_value = "60s", value_parser = portcullis_contract::parse_duration)]
    resync: Duration,

    /// The nft program.
    #[arg(long, default_value = "nft")]
    nft: String,
}

fn main() {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(Args::parse()) {
        tracing::error!(event = "fatal", error = %format!("{e:#}"));
        eprintln!("portcullis-node-guard: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    if args.cleanup {
        nft::apply(&args.nft, &ruleset::cleanup()).context("removing the table")?;
        tracing::info!(event = "cleanup", table = ruleset::TABLE);
        return Ok(());
    }
    let pods = match (&args.pods_file, &args.cni_results) {
        (Some(file), _) => Pods::File(file.clone()),
        (None, Some(dir)) => Pods::CniResults(dir.clone()),
        (None, None) => anyhow::bail!("--pods-file or --cni-results is required"),
    };
    let source = Source {
        pods,
        node_ips: args.node_ip.clone(),
        bridge: args.bridge.clone(),
        allow_dhcp: args.allow_dhcp,
        drop_unlisted: args.drop_unlisted.clone(),
    };
    if args.dry_run {
        let (guard, warnings) = source.read()?;
        let mut rules = ruleset::ruleset(&guard);
        rules.warnings.extend(warnings);
        warn(&rules);
        print!("{}", rules.install());
        return Ok(());
    }
    let mut watcher = Watcher::new(source, args.nft.clone(), args.resync);
    if args.once {
        if let Some(rules) = watcher.step()? {
            applied(&rules);
        }
        return Ok(());
    }
    // The same error is logged once, not every interval.
    let mut failing: Option<String> = None;
    loop {
        match watcher.step() {
            Ok(applied_now) => {
                if failing.take().is_some() {
                    tracing::info!(event = "recovered");
                }
                if let Some(rules) = applied_now {
                    applied(&rules);
                }
            }
            // Keep the rules in place and retry: the writer may be between two versions.
            Err(e) => {
                let text = e.to_string();
                if failing.as_deref() != Some(text.as_str()) {
                    tracing::error!(event = "not_applied", error = %text);
                    failing = Some(text);
                }
            }
        }
        std::thread::sleep(args.interval);
    }
}

fn warn(rules: &Ruleset) {
    for w in &rules.warnings {
        tracing::warn!(event = "address_left_out", detail = %w);
    }
}

fn applied(rules: &Ruleset) {
    warn(rules);
    let ports = rules.table.matches(": goto pod_").count();
    tracing::info!(event = "applied", table = ruleset::TABLE, ports);
}
