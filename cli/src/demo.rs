//! `portcullis demo`: the kangaroo example, live, in one command.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

use crate::render::{paint, ColorChoice};
use crate::testbed::probe::ServiceClients;
use crate::testbed::{self, Binaries, State, UpOptions};
use crate::testbed_cli::{observe, report};

#[derive(Args)]
pub struct DemoArgs {
    /// The example cluster.
    #[arg(long, default_value = "manifests/examples/kangaroo")]
    pub example: PathBuf,
    /// The policy change applied while it runs.
    #[arg(long, default_value = "manifests/examples/kangaroo-change")]
    pub change: PathBuf,
    #[arg(long)]
    pub proxy_bin: Option<PathBuf>,
    #[arg(long)]
    pub init_bin: Option<PathBuf>,
    #[arg(long)]
    pub controller_bin: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
    /// Leave the testbed up at the end (remove it with `portcullis testbed down --name demo`).
    #[arg(long)]
    pub keep: bool,
}

const NAME: &str = "demo";

fn step(n: u32, title: &str, color: bool) {
    println!(
        "\n{}",
        paint(&format!("━━ {n}. {title} ━━"), "\x1b[1;36m", color)
    );
}

pub fn run(args: DemoArgs) -> Result<ExitCode> {
    let color = args.color.enabled();
    for p in [&args.example, &args.change] {
        if !Path::new(p).exists() {
            anyhow::bail!(
                "{} not found: run the demo from the repository root or pass --example/--change",
                p.display()
            );
        }
    }
    let binaries = Binaries::locate(
        args.proxy_bin.clone(),
        args.init_bin.clone(),
        args.controller_bin.clone(),
    )?;
    // A leftover of an interrupted demo would block `up`.
    testbed::down(NAME);
    step(
        1,
        &format!(
            "testbed up: {} in network namespaces, tables from portcullis-controller",
            args.example.display()
        ),
        color,
    );
    let state = testbed::up(&UpOptions {
        name: NAME.into(),
        files: vec![args.example.clone()],
        binaries,
        proxy_args: Vec::new(),
        policy_source: testbed::PolicySource::Controller,
        extra_probes: Vec::new(),
        enforce_udp: true,
    })?;
    let result = tour(&state, &args, color);
    if args.keep {
        println!("\nthe testbed stays up: portcullis testbed down --name {NAME}");
    } else {
        step(9, "testbed down", color);
        let removed = testbed::down(NAME);
        println!("  removed {} network namespaces", removed.len());
    }
    match result {
        Ok(true) => Ok(ExitCode::SUCCESS),
        Ok(false) => Ok(ExitCode::FAILURE),
        Err(e) => Err(e),
    }
}

fn probe_step(state: &State, n: u32, title: &str, color: bool) -> Result<bool> {
    step(n, title, color);
    let cells = observe(state, &[], ServiceClients::All, Duration::from_secs(2))?;
    report(&cells, color, true, &mut std::io::stdout())
}

/// Steps 2 to 8: probe, denials, metrics, a live change, probe, controller gone, probe.
/// Whether every probe matched the prediction.
fn tour(state: &State, args: &DemoArgs, color: bool) -> Result<bool> {
    for p in &state.pods {
        match &p.not_injected {
            None => println!("  {:<32} {:<14} portcullis-proxy", p.key, p.ip),
            Some(why) => println!("  {:<32} {:<14} no proxy: {why}", p.key, p.ip),
        }
    }
    let dns_ok = dns_lookup(state);
    let ok1 = probe_step(
        state,
        2,
        "probe every pod from every pod, through the proxies",
        color,
    )?;

    step(
        3,
        "denials, as the proxy of kangaroo/backend logs them (kubectl logs)",
        color,
    );
    for line in testbed::audit_lines(state, "kangaroo/backend", false)?
        .iter()
        .take(3)
    {
        println!("  {line}");
    }
    step(
        4,
        "metrics of kangaroo/backend (Prometheus, :4191/metrics)",
        color,
    );
    let metrics = testbed::metrics(state, "kangaroo/backend")?;
    for line in metrics
        .lines()
        .filter(|l| {
            l.starts_with("portcullis_connections_total")
                || l.starts_with("portcullis_policy_generation")
        })
        .take(12)
    {
        println!("  {line}");
    }

    step(
        5,
        &format!(
            "apply {} without restarting anything",
            args.change.display()
        ),
        color,
    );
    for f in std::fs::read_dir(&args.change).context("reading the change")? {
        let path = f?.path();
        println!("  + {}", path.display());
    }
    testbed::apply(
        state,
        std::slice::from_ref(&args.change),
        false,
        Duration::from_secs(20),
    )?;
    let ok2 = probe_step(
        state,
        6,
        "probe again: kangaroo/worker now reaches kangaroo/backend on 80",
        color,
    )?;

    step(
        7,
        "stop portcullis-controller: every proxy keeps enforcing its last table",
        color,
    );
    testbed::stop_controller(state)?;
    let ok3 = probe_step(
        state,
        8,
        "probe with the controller gone: nothing changes",
        color,
    )?;
    for line in testbed::metrics(state, "kangaroo/backend")?
        .lines()
        .filter(|l| l.starts_with("portcullis_policy_stale"))
    {
        println!("  {line}   (kangaroo/backend: its table is marked stale, still enforced)");
    }
    Ok(dns_ok && ok1 && ok2 && ok3)
}

/// The cluster DNS, as an application uses it: a Service name from a pod.
fn dns_lookup(state: &State) -> bool {
    let (pod, name) = ("storefront/web", "backend.kangaroo.svc.cluster.local");
    if state.dns.is_none() || state.pod(pod).is_err() {
        return true;
    }
    match testbed::resolve(state, pod, name) {
        Ok(ips) if !ips.is_empty() => {
            let ips: Vec<String> = ips.iter().map(|i| i.to_string()).collect();
            println!(
                "  cluster DNS (dnsmasq behind kube-system/kube-dns {}): {pod} resolves {name} -> {}",
                testbed::dns::DNS_IP,
                ips.join(", ")
            );
            true
        }
        other => {
            println!("  DIFFERENCE cluster DNS: {pod} cannot resolve {name} ({other:?})");
            false
        }
    }
}
