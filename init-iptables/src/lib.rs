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
use crate::config::{Config, TcpPath};
use crate::rules::Family;

/// What happened, for the summary line.
#[derive(Debug, Default)]
pub struct Report {
    pub lines: Vec<String>,
}

pub fn run(cfg: &Config) -> Result<Report> {
    check_ports(cfg)?;
    if cfg.inbound_tcp() == TcpPath::Queue && !cfg.enforce_udp {
        bail!(
            "--inbound-tcp queue needs the queue rules and a proxy that reads them \
             (--enforce-udp, which gives the proxy CAP_NET_ADMIN); with --enforce-udp=false use \
             --inbound-tcp proxy"
        );
    }
    if cfg.outbound_tcp() == TcpPath::Queue && !cfg.enforce_udp {
        bail!(
            "--outbound-tcp queue needs the queue rules and a proxy that reads them \
             (--enforce-udp); with --enforce-udp=false use --outbound-tcp proxy"
        );
    }
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
            .and_then(|line| Ok([Some(line), run_datagram(cfg, backend, family)?]))
        {
            Ok(lines) => report.lines.extend(lines.into_iter().flatten()),
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
        // A dry run must work without privileges: assume empty tables when it cannot look.
        backend::save_all(backend, family).unwrap_or_default()
    } else {
        backend::save_all(backend, family)?
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
        let after = backend::save_all(backend, family)?;
        let left = rules::owned_chains_left(&after);
        if !left.is_empty() {
            bail!(
                "{}: {} still there after cleanup",
                family.name(),
                left.join(", ")
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
    let mut after = backend::save_all(backend, family)?;
    if cfg.inbound_tcp() == TcpPath::Queue {
        // An earlier run with `--inbound-tcp proxy` left the inbound redirect: remove it, or it
        // would still take inbound TCP away from the queue.
        let stale = [
            (rules::Table::Nat, rules::INBOUND),
            (rules::Table::Nat, rules::IN_REDIRECT),
        ];
        if let Some(input) = rules::cleanup_chains(&after, &stale) {
            backend::restore(backend, family, &input).with_context(|| {
                format!("removing an earlier {} inbound redirect", family.name())
            })?;
            after = backend::save_all(backend, family)?;
        }
    }
    rules::verify(cfg, family, &after)?;
    Ok(summary(cfg, family))
}

/// The report line of an install.
fn summary(cfg: &Config, family: Family) -> String {
    let inbound = match cfg.inbound_tcp() {
        TcpPath::Queue => format!(
            "inbound TCP: first packet of each new connection -> NFQUEUE {}",
            cfg.nfqueue
        ),
        TcpPath::Proxy => format!(
            "inbound TCP to the pod's own addresses -> :{}",
            cfg.inbound_port
        ),
    };
    let services: Vec<String> = cfg
        .service_cidrs
        .0
        .iter()
        .filter(|n| family.holds(n))
        .map(ToString::to_string)
        .collect();
    let outbound = match cfg.outbound_tcp() {
        TcpPath::Queue => format!(
            "outbound TCP: to Services ({}) -> :{}, else first packet -> NFQUEUE {}, refused \
             with a reset",
            if services.is_empty() {
                "none".to_string()
            } else {
                services.join(",")
            },
            cfg.outbound_port,
            cfg.nfqueue
        ),
        TcpPath::Proxy => format!("outbound TCP -> :{}", cfg.outbound_port),
    };
    format!(
        "{}: {inbound}, {outbound} (UID {} exempt), loopback from outside dropped, {}, verified",
        family.name(),
        cfg.proxy_uid,
        if cfg.allow_forwarding {
            "forwarding left alone"
        } else {
            "forwarding dropped"
        }
    )
}

/// The report line for UDP/SCTP (the queue rules are one part of the rule set, installed,
/// verified and cleaned up with the rest). With `--enforce-udp=false` the install writes no
/// queue rules; this removes any that an earlier run left, so that UDP is not dropped by a queue
/// that no proxy reads.
fn run_datagram(cfg: &Config, backend: Backend, family: Family) -> Result<Option<String>> {
    let name = family.name();
    if cfg.cleanup {
        return Ok(None);
    }
    if cfg.enforce_udp {
        return Ok(Some(format!(
            "{name}: the first packet of each new UDP and SCTP flow -> NFQUEUE {} (no bypass: \
             dropped while no proxy reads it)",
            cfg.nfqueue
        )));
    }
    let not =
        format!("{name}: UDP and SCTP are NOT enforced (--enforce-udp=false): no queue rules");
    let current = if cfg.dry_run {
        backend::save_all(backend, family).unwrap_or_default()
    } else {
        backend::save_all(backend, family)?
    };
    let Some(input) = rules::cleanup_chains(&current, &datagram::OWNED) else {
        return Ok(Some(not));
    };
    if cfg.dry_run {
        print!("{input}");
        return Ok(Some(format!(
            "{not}; dry run, an earlier run's left as they are"
        )));
    }
    backend::restore(backend, family, &input)
        .with_context(|| format!("removing the {name} UDP/SCTP queue rules"))?;
    let after = backend::save_all(backend, family)?;
    if rules::cleanup_chains(&after, &datagram::OWNED).is_some() {
        bail!("{name}: PORTCULLIS_UDP_* rules are still there after removing them");
    }
    Ok(Some(format!("{not} (removed an earlier run's)")))
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
