//! `portcullis explain --to-service`: a connection to a Service, judged on each backend behind it.
//!
//! As a CNI sees it after kube-proxy's DNAT: the client's egress on the backend's IP and target
//! port, the backend's ingress on the client's IP. The client's Portcullis proxy balances only
//! over the backends its egress allows, so a Service is reachable when one of those also admits
//! the client.

use std::process::ExitCode;

use anyhow::{bail, Result};
use portcullis_policy::service::{judge, Frontend};
use portcullis_policy::{CompiledCluster, Direction, Verdict};
use serde::Serialize;

use crate::explain::{Endpoint, ExplainArgs};
use crate::render::allowed_word;

#[derive(Serialize)]
struct ServiceExplanation {
    from: String,
    service: String,
    port: u16,
    protocol: String,
    /// Some backend admits the connection both ways.
    allowed: bool,
    /// No endpoint is ready (or serving while terminating): nothing to connect to at all.
    no_endpoints: bool,
    backends: Vec<BackendExplanation>,
}

#[derive(Serialize)]
struct BackendExplanation {
    /// `namespace/name`, when the endpoint is a pod.
    pod: Option<String>,
    ip: String,
    target_port: u16,
    allowed: bool,
    /// None when the client is outside the cluster.
    egress: Option<Verdict>,
    /// None when the backend is not a pod of the manifests.
    ingress: Option<Verdict>,
}

pub fn run(
    compiled: &CompiledCluster,
    from: &Endpoint<'_>,
    target: Frontend<'_>,
    args: &ExplainArgs,
    failed: bool,
) -> Result<ExitCode> {
    let Some(from_ip) = from.ip() else {
        bail!("the source pod needs an address (status.podIP)");
    };
    let protocol = target.port.protocol;
    let judged: Vec<(&portcullis_policy::service::Backend, Option<Verdict>)> = match from {
        Endpoint::Pod(table) => {
            let j = judge(table, target.port);
            j.allowed
                .into_iter()
                .chain(j.denied)
                .map(|v| (v.backend, Some(v.verdict)))
                .collect()
        }
        Endpoint::External(_) => target.port.candidates().map(|b| (b, None)).collect(),
    };
    let mut backends: Vec<BackendExplanation> = judged
        .into_iter()
        .map(|(b, egress)| {
            let ingress = compiled
                .tables
                .values()
                .find(|t| t.ips.contains(&b.ip))
                .map(|t| t.check(Direction::Ingress, from_ip, b.port, protocol));
            BackendExplanation {
                pod: b.pod.clone(),
                ip: b.ip.to_string(),
                target_port: b.port,
                allowed: egress.as_ref().is_none_or(Verdict::allowed)
                    && ingress.as_ref().is_none_or(Verdict::allowed),
                egress,
                ingress,
            }
        })
        .collect();
    backends.sort_by(|a, b| b.allowed.cmp(&a.allowed).then(a.ip.cmp(&b.ip)));
    let explanation = ServiceExplanation {
        from: from.name(),
        service: target.service.to_string(),
        port: target.port.port,
        protocol: protocol.to_string(),
        allowed: backends.iter().any(|b| b.allowed),
        no_endpoints: backends.is_empty(),
        backends,
    };
    if args.output != "text" {
        crate::render::print_structured(&explanation, args.output == "yaml")?;
    } else {
        print_text(&explanation, args.color.enabled());
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn print_text(e: &ServiceExplanation, color: bool) {
    let head = format!(
        "{} -> Service {} on {}/{}",
        e.from, e.service, e.port, e.protocol
    );
    if e.no_endpoints {
        println!("{head}: {} (no ready endpoint)", allowed_word(false, color));
        return;
    }
    let allowed = e.backends.iter().filter(|b| b.allowed).count();
    println!(
        "{head}: {} ({allowed} of {} backends)",
        allowed_word(e.allowed, color),
        e.backends.len()
    );
    for b in &e.backends {
        let who = b.pod.clone().unwrap_or_else(|| "(not a pod)".into());
        println!(
            "  {who} {}:{}: {}",
            b.ip,
            b.target_port,
            allowed_word(b.allowed, color)
        );
        match &b.egress {
            Some(v) => println!("    egress of {}: {v}", e.from),
            None => println!("    egress: {} is outside the cluster", e.from),
        }
        match &b.ingress {
            Some(v) => println!("    ingress of {who}: {v}"),
            None => println!("    ingress: the backend is not a pod; no policy governs it"),
        }
    }
    let egress_ok = e
        .backends
        .iter()
        .filter(|b| b.egress.as_ref().is_none_or(Verdict::allowed))
        .count();
    if egress_ok > allowed {
        println!(
            "  note: the client's proxy balances over the {egress_ok} backends its egress allows; \
             {} of them refuse the client on ingress, so some connections will be reset",
            egress_ok - allowed
        );
    }
}
