//! `portcullis explain`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Args;
use portcullis_policy::matrix::Probe;
use portcullis_policy::service::Frontend;
use portcullis_policy::validate::with_every_policy_error;
use portcullis_policy::{compile, Direction, PodTable, ServiceMap, StagedVerdict, Verdict};
use serde::Serialize;

use crate::matrix::parse_probe;
use crate::render::{allowed_word, ColorChoice};

#[derive(Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["from", "from_ip"])))]
#[command(group(clap::ArgGroup::new("destination").required(true).args(["to", "to_ip", "to_service"])))]
pub struct ExplainArgs {
    /// Manifest files or directories; `-` reads standard input.
    #[arg(short = 'f', long = "filename", value_name = "PATH", required = true, num_args = 1..)]
    pub files: Vec<PathBuf>,
    /// Source pod, as NAMESPACE/POD.
    #[arg(long, value_name = "NS/POD")]
    pub from: Option<String>,
    /// Source address, for clients outside the cluster (a pod's address names that pod).
    #[arg(long, value_name = "IP")]
    pub from_ip: Option<IpAddr>,
    /// Destination pod, as NAMESPACE/POD.
    #[arg(long, value_name = "NS/POD")]
    pub to: Option<String>,
    /// Destination address, for servers outside the cluster. A Service's ClusterIP is explained
    /// as the Service (see --to-service).
    #[arg(long, value_name = "IP")]
    pub to_ip: Option<IpAddr>,
    /// Destination Service, as NAMESPACE/NAME: the connection is judged on each backend pod
    /// behind it (its IP and target port), as a CNI judges it after kube-proxy's DNAT. --port is
    /// then the Service port.
    #[arg(long, value_name = "NS/NAME")]
    pub to_service: Option<String>,
    /// Destination port and protocol, e.g. 80/TCP.
    #[arg(long, value_parser = parse_probe)]
    pub port: Probe,
    /// `text`, `json` or `yaml`.
    #[arg(short, long, default_value = "text", value_parser = ["text", "json", "yaml"])]
    pub output: String,
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
}

#[derive(Serialize)]
struct Explanation {
    from: String,
    to: String,
    port: u16,
    protocol: String,
    allowed: bool,
    /// None when the source is outside the cluster (no egress policy applies to it).
    egress: Option<Verdict>,
    /// None when the destination is outside the cluster.
    ingress: Option<Verdict>,
    /// The Admin-tier `Pass` rule that sent the egress on to NetworkPolicy and the Baseline tier.
    #[serde(skip_serializing_if = "Option::is_none")]
    egress_admin_pass: Option<AdminPass>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ingress_admin_pass: Option<AdminPass>,
    /// With the staged policies (`portcullis.dev/staged`) added, when that changes the
    /// connection's verdict: allowed or not, and each direction they change.
    #[serde(skip_serializing_if = "Option::is_none")]
    staged_allowed: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    egress_staged: Option<StagedVerdict>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ingress_staged: Option<StagedVerdict>,
}

/// What the staged policies selecting `e` would decide instead of `enforced`, if different.
fn staged_of(
    e: &Endpoint<'_>,
    enforced: Option<&Verdict>,
    peer: IpAddr,
    probe: Probe,
) -> Option<StagedVerdict> {
    match (e, enforced) {
        (Endpoint::Pod(t), Some(v)) => t.staged_verdict(v, peer, probe.port, probe.protocol),
        _ => None,
    }
}

/// The connection's verdict with the staged policies, when it differs from the enforced one.
fn staged_allowed(e: &Explanation) -> Option<bool> {
    let half = |enforced: &Option<Verdict>, staged: &Option<StagedVerdict>| match staged {
        Some(s) => s.verdict.allowed(),
        None => enforced.as_ref().is_none_or(Verdict::allowed),
    };
    let with_staged = half(&e.egress, &e.egress_staged) && half(&e.ingress, &e.ingress_staged);
    let allowed = e.allowed;
    (with_staged != allowed).then_some(with_staged)
}

/// An Admin-tier ClusterNetworkPolicy rule with `action: Pass` that matched.
#[derive(Serialize)]
struct AdminPass {
    policy: String,
    rule: String,
}

impl AdminPass {
    fn of(t: &PodTable, direction: Direction, peer: IpAddr, probe: Probe) -> Option<Self> {
        t.admin_pass(direction, peer, probe.port, probe.protocol)
            .map(|r| AdminPass {
                policy: r.matcher.policy.to_string(),
                rule: r.label.to_string(),
            })
    }
}

pub(crate) enum Endpoint<'a> {
    Pod(&'a PodTable),
    External(IpAddr),
}

impl Endpoint<'_> {
    pub(crate) fn ip(&self) -> Option<IpAddr> {
        match self {
            Endpoint::Pod(t) => t.ips.first().copied(),
            Endpoint::External(ip) => Some(*ip),
        }
    }
    pub(crate) fn name(&self) -> String {
        match self {
            Endpoint::Pod(t) => t.key(),
            Endpoint::External(ip) => ip.to_string(),
        }
    }
}

pub fn run(args: ExplainArgs) -> Result<ExitCode> {
    let mut loaded = crate::load(&args.files);
    let failed = crate::report_load(&loaded, false) | crate::lint::report(&loaded);
    loaded.cluster.assign_placeholder_ips();
    let compiled = compile(&loaded.cluster);
    for e in with_every_policy_error(&loaded.cluster.policies, &compiled.errors) {
        eprintln!("error: {e}");
    }
    let resolve = |pod: &Option<String>, ip: &Option<IpAddr>| -> Result<Endpoint<'_>> {
        if let Some(key) = pod {
            return match compiled.table(key) {
                Some(t) => Ok(Endpoint::Pod(t)),
                None if !key.contains('/') => bail!("{key:?}: write pods as NAMESPACE/POD"),
                None => bail!("pod {key} is not in the manifests"),
            };
        }
        let Some(ip) = ip else {
            bail!("a source and a destination are required")
        };
        Ok(
            match compiled
                .tables
                .values()
                .find(|t| t.ips.contains(ip) && !is_host_network(&compiled, t))
            {
                Some(t) => Endpoint::Pod(t),
                None => Endpoint::External(*ip),
            },
        )
    };
    let from = resolve(&args.from, &args.from_ip)?;
    let services = ServiceMap::from_cluster(&loaded.cluster);
    if let Some(target) = service_target(&args, &services)? {
        let failed = failed || !compiled.errors.is_empty();
        return crate::explain_service::run(&compiled, &from, target, &args, failed);
    }
    let to = resolve(&args.to, &args.to_ip)?;
    let (Some(from_ip), Some(to_ip)) = (from.ip(), to.ip()) else {
        bail!("both pods need an address (status.podIP)");
    };
    let Probe { port, protocol } = args.port;
    let egress = match &from {
        Endpoint::Pod(t) => Some(t.check(Direction::Egress, to_ip, port, protocol)),
        Endpoint::External(_) => None,
    };
    let ingress = match &to {
        Endpoint::Pod(t) => Some(t.check(Direction::Ingress, from_ip, port, protocol)),
        Endpoint::External(_) => None,
    };
    let allowed = egress.as_ref().is_none_or(Verdict::allowed)
        && ingress.as_ref().is_none_or(Verdict::allowed);
    let pass = |e: &Endpoint<'_>, direction, peer| match e {
        Endpoint::Pod(t) => AdminPass::of(t, direction, peer, args.port),
        Endpoint::External(_) => None,
    };
    let egress_staged = staged_of(&from, egress.as_ref(), to_ip, args.port);
    let ingress_staged = staged_of(&to, ingress.as_ref(), from_ip, args.port);
    let mut explanation = Explanation {
        from: from.name(),
        to: to.name(),
        port,
        protocol: protocol.to_string(),
        allowed,
        staged_allowed: None,
        egress,
        ingress,
        egress_admin_pass: pass(&from, Direction::Egress, to_ip),
        ingress_admin_pass: pass(&to, Direction::Ingress, from_ip),
        egress_staged,
        ingress_staged,
    };
    explanation.staged_allowed = staged_allowed(&explanation);
    print_explanation(&explanation, &args)?;
    Ok(if failed || !compiled.errors.is_empty() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The explanation as JSON, or in words.
fn print_explanation(explanation: &Explanation, args: &ExplainArgs) -> Result<()> {
    if args.output != "text" {
        return crate::render::print_structured(explanation, args.output == "yaml");
    }
    let color = args.color.enabled();
    println!(
        "{} -> {} on {}/{}: {}",
        explanation.from,
        explanation.to,
        explanation.port,
        explanation.protocol,
        allowed_word(explanation.allowed, color)
    );
    if let Some(with_staged) = explanation.staged_allowed {
        println!(
            "  with the staged policies: {} (not enforced)",
            allowed_word(with_staged, color)
        );
    }
    let passed = |p: &Option<AdminPass>, d: &str| {
        if let Some(p) = p {
            println!(
                "    (Admin-tier ClusterNetworkPolicy {}, {d} rule {} passed it on (Pass): \
                 NetworkPolicy, then the Baseline tier decide)",
                p.policy, p.rule
            );
        }
    };
    let staged = |s: &Option<StagedVerdict>| {
        if let Some(s) = s {
            println!("    {}: {s}", s.effect());
        }
    };
    match &explanation.egress {
        Some(v) => {
            println!("  egress of {}: {v}", explanation.from);
            passed(&explanation.egress_admin_pass, "egress");
            staged(&explanation.egress_staged);
        }
        None => println!(
            "  egress: {} is outside the cluster; no policy governs it",
            explanation.from
        ),
    }
    match &explanation.ingress {
        Some(v) => {
            println!("  ingress of {}: {v}", explanation.to);
            passed(&explanation.ingress_admin_pass, "ingress");
            staged(&explanation.ingress_staged);
        }
        None => println!(
            "  ingress: {} is outside the cluster; no policy governs it",
            explanation.to
        ),
    }
    Ok(())
}

fn is_host_network(compiled: &portcullis_policy::CompiledCluster, t: &PodTable) -> bool {
    compiled.pod(&t.key()).is_some_and(|p| p.host_network)
}

/// The Service port the destination names, if it names one: `--to-service`, or `--to-ip` of a
/// ClusterIP.
fn service_target<'a>(
    args: &ExplainArgs,
    services: &'a ServiceMap,
) -> Result<Option<Frontend<'a>>> {
    let Probe { port, protocol } = args.port;
    if let Some(key) = &args.to_service {
        if !key.contains('/') {
            bail!("{key:?}: write Services as NAMESPACE/NAME");
        }
        let Some((name, svc)) = services.services.get_key_value(key) else {
            bail!(
                "Service {key} has no ClusterIP in the manifests (missing, headless or \
                 ExternalName: connections to it go to pod IPs or outside the cluster; use --to or --to-ip)"
            );
        };
        let Some(p) = svc
            .ports
            .iter()
            .find(|p| p.port == port && p.protocol == protocol)
        else {
            let have: Vec<String> = svc
                .ports
                .iter()
                .map(|p| format!("{}/{}", p.port, p.protocol))
                .collect();
            bail!(
                "Service {key} has no port {port}/{protocol} (it has {})",
                have.join(", ")
            );
        };
        return Ok(Some(Frontend {
            service: name,
            port: p,
        }));
    }
    Ok(args
        .to_ip
        .and_then(|ip| services.frontend(ip, port, protocol)))
}
