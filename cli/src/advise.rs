//! `portcullis advise`: the proxies' flow records in, least-privilege NetworkPolicies out, with
//! the engine's proof of what they allow.

use std::fs::File;
use std::io::{BufReader, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use portcullis_advise::cidr::Widen;
use portcullis_advise::flows::FlowLog;
use portcullis_advise::{advise, Advice, Options};
use portcullis_contract::log::FlowSummary;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Multi-document YAML, ready for `kubectl apply -f -` or a GitOps repository.
    Yaml,
    /// A `List` of the policies, as JSON.
    Json,
}

#[derive(Args)]
#[command(after_help = "The observe → advise → stage → enforce path:\n  \
    kubectl get ns,pods,svc,endpointslices,nodes,netpol -A -o yaml > cluster.yaml\n  \
    kubectl logs -n shop -l app=web -c portcullis-proxy --since 24h > web.log\n  \
    portcullis advise -f cluster.yaml --flows web.log --staged > advised.yaml\n  \
    kubectl apply -f advised.yaml   # staged: connection_would_deny lines show what would break\n  \
    then remove the portcullis.dev/staged annotation to enforce.\n\n\
    Policies go to standard output; the report (proof, what else is allowed, flows seen once or \
    only early) to standard error. Exit status 1 when a flow record cannot be read, nothing was \
    advised, or the engine does not allow every observed flow under the advised policies.")]
pub struct AdviseArgs {
    /// Cluster objects (Namespaces, Pods with status, Services, EndpointSlices, Nodes, existing
    /// NetworkPolicies): files or directories; `-` reads standard input.
    #[arg(short = 'f', long = "filename", value_name = "PATH", required = true, num_args = 1..)]
    pub files: Vec<PathBuf>,
    /// Proxy logs with `flow_summary` lines (`kubectl logs ... -c portcullis-proxy`, with or
    /// without `--prefix`); other lines are skipped. `-` reads standard input.
    #[arg(long = "flows", value_name = "LOG", required = true, num_args = 1..)]
    pub flows: Vec<PathBuf>,
    /// Annotate every policy `portcullis.dev/staged: "true"`: evaluated and reported, not
    /// enforced, until the annotation is removed.
    #[arg(long)]
    pub staged: bool,
    /// Also write a default deny (ingress and egress) for every namespace that gets a policy.
    #[arg(long)]
    pub default_deny: bool,
    /// Do not add DNS egress to the cluster DNS for every advised workload (it is added by
    /// default: a lookup answered from a cache may not show in the window).
    #[arg(long)]
    pub no_dns: bool,
    /// Widen outside IPv4 addresses to this prefix before merging them into ipBlocks (32:
    /// exactly the addresses seen; 24: their /24s). Node addresses are never widened.
    #[arg(long, value_name = "BITS", default_value_t = 32, value_parser = clap::value_parser!(u8).range(0..=32))]
    pub ipv4_prefix: u8,
    /// Likewise for IPv6 (128: exact).
    #[arg(long, value_name = "BITS", default_value_t = 128, value_parser = clap::value_parser!(u8).range(0..=128))]
    pub ipv6_prefix: u8,
    #[arg(short, long, value_enum, default_value_t = Output::Yaml)]
    pub output: Output,
    /// Also draw the observed flows and what the advised policies allow, as SVG, or as one
    /// self-contained HTML page when the name ends in `.html`.
    #[arg(long, value_name = "FILE")]
    pub draw: Option<PathBuf>,
}

fn read_flows(paths: &[PathBuf]) -> Result<FlowLog> {
    let mut log = FlowLog::default();
    for path in paths {
        if path.as_os_str() == "-" {
            log.read(std::io::stdin().lock(), "<stdin>")?;
            continue;
        }
        let file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        log.read(BufReader::new(file), &path.display().to_string())?;
    }
    Ok(log)
}

pub fn run(args: AdviseArgs) -> Result<ExitCode> {
    let stdin_twice = args.files.iter().any(|p| p.as_os_str() == "-")
        && args.flows.iter().any(|p| p.as_os_str() == "-");
    if stdin_twice {
        bail!("-f - and --flows - both read standard input: give one of them as a file");
    }
    let log = read_flows(&args.flows)?;
    if log.flows.is_empty() {
        bail!(
            "no flow_summary line in {} ({} lines read): are the proxies' flow records on \
             (--flow-summary-interval), and were the logs taken from the portcullis-proxy container?",
            names(&args.flows),
            log.lines
        );
    }
    let loaded = crate::load(&args.files);
    let mut failed = crate::report_load(&loaded, false);
    let options = Options {
        staged: args.staged,
        default_deny: args.default_deny,
        dns: !args.no_dns,
        widen: Widen {
            v4: args.ipv4_prefix,
            v6: args.ipv6_prefix,
        },
    };
    let advice = advise(&loaded.cluster, &log.flows, &options);
    print_policies(&advice, args.output)?;
    report(&advice, &log, &mut std::io::stderr().lock())?;
    if let Some(path) = &args.draw {
        crate::draw::write(path, &crate::draw::advised(&loaded.cluster, &advice))?;
        eprintln!("drew {}", path.display());
    }
    failed |= advice.policies.is_empty() || !advice.proof.holds();
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn names(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_policies(advice: &Advice, output: Output) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match output {
        Output::Yaml => {
            for (i, policy) in advice.policies.iter().enumerate() {
                if i > 0 {
                    writeln!(out, "---")?;
                }
                write!(out, "{}", serde_saphyr::to_string(policy)?)?;
            }
        }
        Output::Json => {
            let list =
                serde_json::json!({"apiVersion": "v1", "kind": "List", "items": advice.policies});
            writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
        }
    }
    Ok(())
}

fn flow_text(f: &FlowSummary) -> String {
    let peer = match (&f.peer_namespace, &f.peer_pod) {
        (Some(ns), Some(pod)) => format!("{ns}/{pod} ({})", f.peer_ip),
        _ => f.peer_ip.to_string(),
    };
    let via = f
        .service
        .as_deref()
        .map(|s| format!(" via Service {s}"))
        .unwrap_or_default();
    let arrow = match f.direction {
        portcullis_contract::log::FlowDirection::Egress => "→",
        portcullis_contract::log::FlowDirection::Ingress => "←",
    };
    format!(
        "{}/{} {arrow} {peer} {}/{}{via} ×{}",
        f.pod_namespace, f.pod, f.port, f.protocol, f.count
    )
}

/// The report on standard error: what was read, written, proven, and what to look at.
fn report(advice: &Advice, log: &FlowLog, out: &mut impl Write) -> Result<()> {
    let flows = &log.flows;
    writeln!(
        out,
        "advise: {} flow records read; {} observations advised, {} records left out",
        flows.len(),
        advice.observations.len(),
        advice.skipped.len()
    )?;
    for s in &advice.skipped {
        writeln!(
            out,
            "  left out: {}: {}",
            flow_text(&flows[s.flow]),
            s.reason
        )?;
    }
    for d in &log.dropped {
        writeln!(
            out,
            "  warning: the proxy of {}/{} dropped {} flow records (bound reached): traffic may be missing",
            d.pod_namespace, d.pod, d.dropped
        )?;
    }
    let written: Vec<String> = advice
        .policies
        .iter()
        .map(|p| {
            format!(
                "{}/{}",
                p.metadata.namespace.as_deref().unwrap_or_default(),
                p.metadata.name.as_deref().unwrap_or_default()
            )
        })
        .collect();
    writeln!(
        out,
        "wrote {} NetworkPolicies: {}",
        written.len(),
        written.join(", ")
    )?;
    proof(advice, out)?;
    for w in &advice.warnings {
        writeln!(out, "warning: {w}")?;
    }
    timing(advice, flows, out)
}

fn proof(advice: &Advice, out: &mut impl Write) -> Result<()> {
    let p = &advice.proof;
    if p.holds() {
        writeln!(
            out,
            "proof: the engine allows all {} observed flows under the cluster's policies plus these",
            p.allowed
        )?;
    } else {
        writeln!(
            out,
            "proof FAILED: {} of {} observed flows refused",
            p.refused.len(),
            p.allowed + p.refused.len()
        )?;
    }
    for e in &p.errors {
        writeln!(out, "  error: {e}")?;
    }
    for (o, why) in &p.refused {
        writeln!(
            out,
            "  refused: {} {} {}/{}: {why}",
            o.subject_pod, o.direction, o.port, o.protocol
        )?;
    }
    writeln!(
        out,
        "also allowed, never observed ({}):",
        p.also_allowed.len()
    )?;
    for a in &p.also_allowed {
        writeln!(out, "  {} → {} {}/{}", a.from, a.to, a.port, a.protocol)?;
    }
    Ok(())
}

fn timing(advice: &Advice, flows: &[FlowSummary], out: &mut impl Write) -> Result<()> {
    let p = &advice.proof;
    if !p.seen_once.is_empty() {
        writeln!(
            out,
            "seen once ({}): check these are meant to last",
            p.seen_once.len()
        )?;
        for i in &p.seen_once {
            writeln!(out, "  {}", flow_text(&flows[*i]))?;
        }
    }
    if let Some((start, end)) = &p.window {
        if !p.seen_early.is_empty() {
            writeln!(
                out,
                "seen only early in the window {start} to {end} ({}): a start-up or a CronJob; \
                 a longer window shows whether they recur",
                p.seen_early.len()
            )?;
            for i in &p.seen_early {
                writeln!(out, "  {}", flow_text(&flows[*i]))?;
            }
        }
    }
    Ok(())
}
