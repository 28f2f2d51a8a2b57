//! `portcullis demo`: the kangaroo example, live, in one command.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use portcullis_policy::Protocol;

use crate::render::{paint, ColorChoice};
use crate::testbed_cli::{observe, report, BinaryArgs};
use portcullis_testbed::probe::ServiceClients;
use portcullis_testbed::{self as testbed, State, UpOptions};

#[derive(Args)]
pub struct DemoArgs {
    /// The example cluster.
    #[arg(long, default_value = "manifests/examples/kangaroo")]
    pub example: PathBuf,
    /// Dual-stack pods brought up beside the example (the IPv6 step).
    #[arg(long, default_value = "manifests/examples/kangaroo-ipv6")]
    pub ipv6: PathBuf,
    /// The policy change applied while it runs.
    #[arg(long, default_value = "manifests/examples/kangaroo-change")]
    pub change: PathBuf,
    /// The platform team's ClusterNetworkPolicy guardrails applied at the end (an Admin `Deny`
    /// over a namespace's allow, and a `Pass`).
    #[arg(long, default_value = "manifests/examples/kangaroo-guardrails")]
    pub guardrails: PathBuf,
    #[command(flatten)]
    pub binaries: BinaryArgs,
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
    for p in [&args.example, &args.ipv6, &args.change, &args.guardrails] {
        if !Path::new(p).exists() {
            anyhow::bail!(
                "{} not found: run the demo from the repository root or pass --example/--ipv6/--change/--guardrails",
                p.display()
            );
        }
    }
    let binaries = args.binaries.clone().locate()?;
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
        files: vec![args.example.clone(), args.ipv6.clone()],
        binaries,
        proxy_args: Vec::new(),
        policy_source: testbed::PolicySource::Controller,
        extra_probes: Vec::new(),
        enforce_udp: true,
        node_guard: false,
    })?;
    let result = tour(&state, &args, color);
    if args.keep {
        println!("\nthe testbed stays up: portcullis testbed down --name {NAME}");
    } else {
        step(11, "testbed down", color);
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
    // Port 53 is named only by the backend's DNS rule: step 4 shows DNS, the grids leave it out.
    let set = state.port_set(&state.snapshot()?);
    let probes: Vec<_> = testbed::ports::default_probes(&set, state.enforce_udp)
        .into_iter()
        .filter(|p| p.port != 53)
        .collect();
    let cells = observe(state, &probes, ServiceClients::All, Duration::from_secs(2))?;
    report(&cells, color, true, &mut std::io::stdout())
}

/// Steps 2 to 10: probe, Services, DNS, metrics, a live change, probe, controller gone, probe.
/// Whether every probe matched the prediction.
fn tour(state: &State, args: &DemoArgs, color: bool) -> Result<bool> {
    for p in &state.pods {
        match &p.not_injected {
            None => println!("  {:<32} {:<14} portcullis-proxy", p.key, ips(p)),
            Some(why) => println!("  {:<32} {:<14} no proxy: {why}", p.key, ips(p)),
        }
    }
    let ok1 = probe_step(
        state,
        2,
        "probe every pod and every Service from every pod, through the proxies",
        color,
    )?;
    let ipv6_ok = ipv6_step(state)?;
    let services_ok = services_step(state, color)?;
    let dns_ok = dns_step(state, color)?;
    step(
        5,
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
        6,
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
        7,
        "probe again: kangaroo/worker now reaches kangaroo/backend on 80",
        color,
    )?;

    let guardrail_ok = guardrail_step(state, &args.guardrails, color)?;
    step(
        9,
        "stop portcullis-controller: every proxy keeps enforcing its last table",
        color,
    );
    testbed::stop_controller(state)?;
    let ok3 = probe_step(
        state,
        10,
        "probe with the controller gone: nothing changes",
        color,
    )?;
    for line in testbed::metrics(state, "kangaroo/backend")?
        .lines()
        .filter(|l| l.starts_with("portcullis_policy_stale"))
    {
        println!("  {line}   (kangaroo/backend: its table is marked stale, still enforced)");
    }
    Ok(ipv6_ok && services_ok && dns_ok && ok1 && ok2 && ok3 && guardrail_ok)
}

/// The guardrail's ClusterNetworkPolicy and rule (`manifests/examples/kangaroo-guardrails`).
const POLICY: &str = "membership-is-sensitive";
const RULE: &str = "no-app-calls-membership";

/// The CNP guardrail: the backend's own policy allows membership/api on 443; an Admin-tier
/// `Deny` applied live overrides it, and the proxy's audit line names the tier, the
/// ClusterNetworkPolicy and its rule. Whether the call was denied and so audited.
fn guardrail_step(state: &State, guardrails: &Path, color: bool) -> Result<bool> {
    step(
        8,
        &format!(
            "apply {}: an Admin-tier Deny overrides kangaroo's allow to membership/api",
            guardrails.display()
        ),
        color,
    );
    testbed::apply(
        state,
        &[guardrails.to_path_buf()],
        false,
        Duration::from_secs(20),
    )?;
    let (from, to) = ("kangaroo/backend", "membership/api");
    let addr = SocketAddr::new(state.pod(to)?.ip, 443);
    let answers = testbed::connect_from(state, from, addr, Protocol::Tcp, 1)?;
    let denied = !matches!(answers.first(), Some(Ok(_)));
    println!(
        "  {from} -> {to} 443/TCP: {}",
        if denied { "denied" } else { "ANSWERED" }
    );
    let needles = [
        "\"tier\":\"Admin\"",
        &format!("\"policy\":\"{POLICY}\""),
        &format!("\"rule\":\"{RULE}\""),
    ];
    let line = audit_line(state, from, &needles)?;
    match &line {
        Some(l) => println!("  audit ({from}): {l}"),
        None => println!("  no audit line of {from} names Admin/{POLICY}/{RULE}"),
    }
    Ok(denied && line.is_some())
}

/// A pod's addresses, comma-separated.
fn ips(pod: &testbed::PodState) -> String {
    let ips: Vec<String> = pod.addrs().iter().map(ToString::to_string).collect();
    ips.join(",")
}

/// The last audit line of `pod`'s proxy that contains every one of `needles`.
fn audit_line(state: &State, pod: &str, needles: &[&str]) -> Result<Option<String>> {
    Ok(testbed::audit_lines(state, pod, false)?
        .into_iter()
        .rev()
        .find(|l| needles.iter().all(|n| l.contains(n))))
}

/// IPv6 between dual-stack pods (`kangaroo-ipv6`): dualstack/server admits 8080 from
/// dualstack/client's IPv6 address only, so over IPv6 the client is answered and dualstack/other
/// is refused, and the server's proxy logs the refusal with the IPv6 source. Whether both went so.
fn ipv6_step(state: &State) -> Result<bool> {
    let to = "dualstack/server";
    let Ok(server) = state.pod(to) else {
        println!("  no {to} in the manifests: the IPv6 step is skipped");
        return Ok(true);
    };
    let Some(ip) = server.addr(testbed::Family::IPv6) else {
        println!("  {to} has no IPv6 address: the IPv6 step is skipped");
        return Ok(true);
    };
    let addr = SocketAddr::new(ip, 8080);
    println!("  over IPv6: {to} admits 8080 from dualstack/client's IPv6 address only");
    let mut ok = true;
    for (from, allowed) in [("dualstack/client", true), ("dualstack/other", false)] {
        let answer = testbed::connect_from(state, from, addr, Protocol::Tcp, 1)?;
        let answered = answer[0].is_ok();
        println!(
            "    {from} -> {to} ({addr}): {}",
            if answered { "answered" } else { "refused" }
        );
        ok &= answered == allowed;
        let source = state.pod(from)?.addr(testbed::Family::IPv6);
        if let (false, Some(source)) = (allowed, source) {
            let src = format!("\"src_ip\":\"{source}\"");
            let dst = format!("\"dst_ip\":\"{}\",\"dst_port\":{}", addr.ip(), addr.port());
            let line = audit_line(state, to, &["connection_denied", &src, &dst])?;
            match &line {
                Some(line) => println!("      {line}"),
                None => ok = false,
            }
        }
    }
    Ok(ok)
}

/// Connections through Services from kangaroo/backend, whose proxy balances them over the
/// backends its egress allows: membership/membership is partly allowed (api, not db), so every
/// connection lands on membership/api; storefront/web is not allowed at all, and the audit line
/// names the Service. Whether both went as the policy says.
fn services_step(state: &State, color: bool) -> Result<bool> {
    step(
        3,
        "through Services: kangaroo/backend's proxy picks among the backends its egress allows",
        color,
    );
    let from = "kangaroo/backend";
    let partly: SocketAddr = ([10, 96, 20, 9], 443).into();
    let answers = testbed::connect_from(state, from, partly, Protocol::Tcp, 10)?;
    let by_api = answers
        .iter()
        .filter(|a| a.as_deref() == Ok("membership/api"))
        .count();
    println!(
        "  {from} -> Service membership/membership ({partly}; backends membership/api, membership/db):"
    );
    println!(
        "    {by_api} of 10 connections answered, all by membership/api (the egress allows api on 443, not db)"
    );
    let denied: SocketAddr = ([10, 96, 30, 10], 80).into();
    let refused = testbed::connect_from(state, from, denied, Protocol::Tcp, 1)?;
    println!(
        "  {from} -> Service storefront/web ({denied}): {}",
        if refused[0].is_ok() {
            "ANSWERED"
        } else {
            "refused"
        }
    );
    let line = audit_line(
        state,
        from,
        &["connection_denied", "\"service\":\"storefront/web\""],
    )?;
    if let Some(line) = &line {
        println!("    {line}");
    }
    Ok(by_api == 10 && refused[0].is_err() && line.is_some())
}

/// The cluster DNS under default-deny egress: kangaroo/backend's `backend-dns` allows 53/UDP and
/// 53/TCP to the kube-dns pods, so it resolves; kangaroo/worker has no such rule, so it cannot,
/// and its proxy logs the UDP denial. Whether both went so.
fn dns_step(state: &State, color: bool) -> Result<bool> {
    step(
        4,
        "cluster DNS (dnsmasq behind kube-system/kube-dns 10.96.0.10) under default-deny egress",
        color,
    );
    let name = "membership.membership.svc.cluster.local";
    if state.dns.is_none() {
        println!("  the manifests bring their own kube-system/kube-dns: skipped");
        return Ok(true);
    }
    let show = |ips: &[std::net::IpAddr]| {
        if ips.is_empty() {
            "does not resolve".to_string()
        } else {
            let ips: Vec<String> = ips.iter().map(|i| i.to_string()).collect();
            format!("-> {}", ips.join(", "))
        }
    };
    let allowed = testbed::resolve(state, "kangaroo/backend", name)?;
    println!(
        "  kangaroo/backend (backend-dns allows 53 to k8s-app=kube-dns): {name} {}",
        show(&allowed)
    );
    // Fully qualified: the search path would try three more names first.
    let denied = testbed::resolve(state, "kangaroo/worker", &format!("{name}."))?;
    println!(
        "  kangaroo/worker (default-deny only):                         {name} {}",
        show(&denied)
    );
    let line = audit_line(
        state,
        "kangaroo/worker",
        &[
            "connection_denied",
            "\"dst_ip\":\"10.96.0.10\",\"dst_port\":53",
            "\"protocol\":\"UDP\"",
        ],
    )?;
    if let Some(line) = &line {
        println!("    {line}");
    }
    Ok(!allowed.is_empty() && denied.is_empty() && line.is_some())
}

#[cfg(test)]
mod guardrail_tests {
    use super::{POLICY, RULE};
    use portcullis_policy::{compile, Direction, Protocol};
    use std::path::PathBuf;

    /// The data of the guardrail step: without the guardrails the backend reaches membership/api
    /// on 443; with them the Admin-tier Deny the step names denies it.
    #[test]
    fn the_guardrails_deny_what_kangaroo_allows_and_pass_dns() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let example = root.join("manifests/examples/kangaroo");
        let guardrails = root.join("manifests/examples/kangaroo-guardrails");
        let text = std::fs::read_to_string(guardrails.join("guardrails.yaml")).unwrap();
        assert!(text.contains(POLICY) && text.contains(RULE) && text.contains("action: Pass"));
        let check = |paths: &[PathBuf], to: &str, port: u16, protocol: Protocol| {
            let loaded = portcullis_policy_loader::load_paths(paths);
            assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
            let compiled = compile(&loaded.cluster);
            let ip = loaded
                .cluster
                .pods
                .iter()
                .find(|p| p.key() == to)
                .unwrap()
                .ips[0];
            compiled
                .table("kangaroo/backend")
                .unwrap()
                .check(Direction::Egress, ip, port, protocol)
                .allowed()
        };
        let without = [example.clone()];
        let with = [example, guardrails];
        assert!(check(&without, "membership/api", 443, Protocol::Tcp));
        assert!(!check(&with, "membership/api", 443, Protocol::Tcp));
    }
}
