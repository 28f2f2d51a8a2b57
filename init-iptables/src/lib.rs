//! `portcullis-init`: installs (or removes) the iptables redirect into portcullis-proxy.
//!
//! [`rules`] decides what to write (pure, golden-tested); [`backend`] runs iptables;
//! [`run`] puts them together for each address family.

pub mod backend;
pub mod config;
pub mod datagram;
pub mod rules;

use anyhow::{bail, Context, Result};

use crate::backend::Backend;
use crate::config::Config;
use crate::rules::Family;

/// What happened, for the summary line.
#[derive(Debug, Default)]
pub struct Report {
    pub lines: Vec<String>,
}

pub fn run(cfg: &Config) -> Result<Report> {
    check_ports(cfg)?;
    let backend = backend::select(cfg.backend)?;
    let mut report = Report::default();
    report
        .lines
        .push(format!("iptables backend: {}", backend.name()));
    for family in [Family::V4, Family::V6] {
        if family == Family::V6 && !ipv6_available(backend) {
            report
                .lines
                .push("IPv6: not available in this network namespace; skipped".into());
            continue;
        }
        match run_family(cfg, backend, family)
            .and_then(|line| Ok([line, run_datagram(cfg, backend, family)?]))
        {
            Ok(lines) => report.lines.extend(lines),
            Err(e) if family == Family::V6 && !has_ipv6_address() => {
                // No IPv6 address but for ::1: there is no IPv6 traffic to redirect.
                report.lines.push(format!(
                    "IPv6: skipped, the pod has no IPv6 address ({e:#})"
                ));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(report)
}

fn run_family(cfg: &Config, backend: Backend, family: Family) -> Result<String> {
    let current = if cfg.dry_run {
        // A dry run must work without privileges: assume an empty table when it cannot look.
        backend::save_nat(backend, family).unwrap_or_default()
    } else {
        backend::save_nat(backend, family)?
    };
    if cfg.cleanup {
        let Some(input) = rules::cleanup(&current) else {
            return Ok(format!("{}: nothing of ours to remove", family.name()));
        };
        if cfg.dry_run {
            print!("{input}");
            return Ok(format!("{}: dry run, nothing changed", family.name()));
        }
        backend::restore(backend, family, &input)
            .with_context(|| format!("removing the {} rules", family.name()))?;
        let after = backend::save_nat(backend, family)?;
        if rules::CHAINS
            .iter()
            .any(|c| after.contains(&format!(":{c} ")))
        {
            bail!(
                "{}: PORTCULLIS_* chains are still there after cleanup",
                family.name()
            );
        }
        return Ok(format!("{}: removed", family.name()));
    }
    let input = rules::install(cfg, family, &current);
    if cfg.dry_run {
        print!("{input}");
        return Ok(format!("{}: dry run, nothing changed", family.name()));
    }
    backend::restore(backend, family, &input)
        .with_context(|| format!("installing the {} redirect", family.name()))?;
    // Validation: read back what the kernel holds, not what we meant to write.
    let after = backend::save_nat(backend, family)?;
    rules::verify(cfg, family, &after).map_err(anyhow::Error::msg)?;
    Ok(format!(
        "{}: inbound TCP -> :{}, outbound TCP -> :{} (UID {} exempt), verified",
        family.name(),
        cfg.inbound_port,
        cfg.outbound_port,
        cfg.proxy_uid
    ))
}

/// The UDP/SCTP queue rules of one family (filter table): installed and verified, or, with
/// `--cleanup` or `--enforce-udp=false`, removed.
fn run_datagram(cfg: &Config, backend: Backend, family: Family) -> Result<String> {
    let name = family.name();
    let current = if cfg.dry_run {
        backend::save_table(backend, family, "filter").unwrap_or_default()
    } else {
        backend::save_table(backend, family, "filter")?
    };
    if cfg.cleanup || !cfg.enforce_udp {
        let absent = if cfg.cleanup {
            format!("{name}: no UDP/SCTP queue rules of ours to remove")
        } else {
            format!("{name}: UDP and SCTP are NOT enforced (--enforce-udp=false): no queue rules")
        };
        let Some(input) = datagram::cleanup(&current) else {
            return Ok(absent);
        };
        if cfg.dry_run {
            print!("{input}");
            return Ok(format!(
                "{name}: dry run, UDP/SCTP queue rules left as they are"
            ));
        }
        backend::restore(backend, family, &input)
            .with_context(|| format!("removing the {name} UDP/SCTP queue rules"))?;
        let after = backend::save_table(backend, family, "filter")?;
        if datagram::cleanup(&after).is_some() {
            bail!("{name}: PORTCULLIS_UDP_* rules are still there after removing them");
        }
        return Ok(format!("{absent} (removed the ones there were)"));
    }
    let input = datagram::install(cfg, family, &current);
    if cfg.dry_run {
        print!("{input}");
        return Ok(format!("{name}: dry run, UDP/SCTP queue rules not written"));
    }
    backend::restore(backend, family, &input)
        .with_context(|| format!("installing the {name} UDP/SCTP queue rules"))?;
    let after = backend::save_table(backend, family, "filter")?;
    datagram::verify(cfg, family, &after).map_err(anyhow::Error::msg)?;
    Ok(format!(
        "{name}: the first packet of each new UDP and SCTP flow -> NFQUEUE {} (no bypass: \
         dropped while no proxy reads it), verified",
        cfg.nfqueue
    ))
}

fn check_ports(cfg: &Config) -> Result<()> {
    let ports = [
        ("--inbound-port", cfg.inbound_port),
        ("--outbound-port", cfg.outbound_port),
        ("--admin-port", cfg.admin_port),
    ];
    for (i, (name_a, a)) in ports.iter().enumerate() {
        if *a == 0 {
            bail!("{name_a} must not be 0");
        }
        for (name_b, b) in &ports[i + 1..] {
            if a == b {
                bail!("{name_a} and {name_b} are both {a}; the proxy needs three different ports");
            }
        }
    }
    Ok(())
}

fn ipv6_available(backend: Backend) -> bool {
    std::path::Path::new("/proc/net/if_inet6").exists()
        && backend::installed(&backend.restore(Family::V6))
        && backend::installed(&backend.save(Family::V6))
}

/// Any IPv6 address on an interface other than `lo`.
fn has_ipv6_address() -> bool {
    std::fs::read_to_string("/proc/net/if_inet6")
        .map(|t| {
            t.lines()
                .any(|l| l.split_whitespace().last().is_some_and(|dev| dev != "lo"))
        })
        .unwrap_or(false)
}
