//! `portcullis testbed ...` and `portcullis demo`: argument parsing and printing around
//! [`crate::testbed`].

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use portcullis_policy::matrix::Probe;
use portcullis_policy::{Matrix, Protocol};
use serde::Serialize;

use crate::matrix::parse_probe;
use crate::render::{grids, ColorChoice};
use crate::testbed::{self, Binaries, State, UpOptions};

#[derive(Args)]
pub struct TestbedArgs {
    #[command(subcommand)]
    pub command: TestbedCommand,
}

#[derive(Args, Clone)]
pub struct Name {
    /// Name of the testbed; several can run at once under different names.
    #[arg(long, default_value = "default", global = true, value_parser = parse_name)]
    pub name: String,
}

fn parse_name(s: &str) -> Result<String, String> {
    if !s.is_empty() && s.len() <= 12 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        Ok(s.to_string())
    } else {
        Err("use 1-12 letters, digits or '-'".into())
    }
}

#[derive(Subcommand)]
pub enum TestbedCommand {
    /// Build the cluster in network namespaces: a node with a bridge, one namespace per pod
    /// running portcullis-init, portcullis-proxy and a server on every TCP port any pod declares.
    Up {
        #[command(flatten)]
        name: Name,
        /// Manifests (the same as `portcullis matrix` reads).
        #[arg(short = 'f', long = "filename", value_name = "PATH", required = true, num_args = 1..)]
        files: Vec<PathBuf>,
        /// portcullis-proxy binary (default: next to this one, then PATH).
        #[arg(long)]
        proxy_bin: Option<PathBuf>,
        /// portcullis-init binary (default: next to this one, then PATH).
        #[arg(long)]
        init_bin: Option<PathBuf>,
        /// portcullis-controller binary (default: next to this one, then PATH).
        #[arg(long)]
        controller_bin: Option<PathBuf>,
        /// Where proxies get their tables: from portcullis-controller (file mode, in the node
        /// namespace), as in a cluster; or each proxy from the policy directory itself.
        #[arg(long, value_enum, default_value_t = testbed::PolicySource::Controller)]
        policy_source: testbed::PolicySource,
        /// Extra arguments for every proxy, e.g. `--proxy-arg=--mode=audit`.
        #[arg(long = "proxy-arg", allow_hyphen_values = true)]
        proxy_args: Vec<String>,
    },
    /// Connect from every pod to every pod on every probe and compare with the engine's
    /// prediction; exits 1 on any difference.
    Probe {
        #[command(flatten)]
        name: Name,
        /// TCP probes, e.g. `80/TCP,81/TCP` (default: every TCP containerPort).
        #[arg(long, value_delimiter = ',', value_parser = parse_probe)]
        probe: Vec<Probe>,
        #[arg(short, long, value_enum, default_value_t = crate::matrix::Output::Table)]
        output: crate::matrix::Output,
        /// How long one probe may take before it counts as denied.
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        timeout: Duration,
        #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
        color: ColorChoice,
    },
    /// Add manifests (new or changed policies) to the running testbed; the proxies pick them
    /// up without a restart. Waits until every proxy serves the new tables.
    Apply {
        #[command(flatten)]
        name: Name,
        #[arg(short = 'f', long = "filename", value_name = "PATH", num_args = 1..)]
        files: Vec<PathBuf>,
        /// Remove what earlier `apply` calls added first (the files given to `up` stay).
        #[arg(long)]
        replace: bool,
    },
    /// A pod's audit lines (denials, terminations), from its proxy's log.
    Logs {
        #[command(flatten)]
        name: Name,
        /// NAMESPACE/POD
        pod: String,
        /// Every log line, not only audit events.
        #[arg(long)]
        all: bool,
    },
    /// A pod's proxy metrics (Prometheus text).
    Metrics {
        #[command(flatten)]
        name: Name,
        /// NAMESPACE/POD
        pod: String,
    },
    /// Stop the testbed's portcullis-controller (SIGTERM) and wait until every proxy marks its
    /// table stale; the proxies keep enforcing their last tables.
    StopController {
        #[command(flatten)]
        name: Name,
    },
    /// Remove everything the testbed created (also leftovers of a crashed run).
    Down {
        #[command(flatten)]
        name: Name,
    },
    /// (internal) The server the testbed runs in each pod.
    #[command(hide = true)]
    Serve {
        #[arg(long)]
        identity: String,
        #[arg(long, value_delimiter = ',')]
        ports: Vec<u16>,
    },
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(
        s.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len()),
    );
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (e.g. 500ms, 2s)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        _ => return Err(format!("invalid duration unit in {s:?} (use ms, s or m)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

#[derive(Serialize)]
struct ObservedEntry<'a> {
    from: &'a str,
    to: &'a str,
    port: u16,
    protocol: Protocol,
    allowed: bool,
    predicted: Option<bool>,
}

/// Observed and predicted matrices for the testbed's current manifests.
pub fn observe(
    state: &State,
    probes: &[Probe],
    timeout: Duration,
) -> Result<(Matrix, Matrix, bool)> {
    let (predicted, failed) = crate::matrix::predicted(&state.manifest_paths(), probes, false);
    let probes: Vec<Probe> = if probes.is_empty() {
        predicted
            .probe_list()
            .into_iter()
            .filter(|p| p.protocol == Protocol::Tcp)
            .collect()
    } else {
        probes.to_vec()
    };
    let observed = testbed::probe(state, &probes, timeout)?;
    Ok((observed, predicted, failed))
}

pub fn differences(observed: &Matrix, predicted: &Matrix) -> Vec<String> {
    observed
        .probes
        .iter()
        .filter_map(|o| {
            let p = predicted.get(
                &o.from,
                &o.to,
                Probe {
                    port: o.port,
                    protocol: o.protocol,
                },
            )?;
            (p.allowed != o.allowed).then(|| {
                format!(
                    "{} -> {} on {}/{}: observed {}, predicted {} ({})",
                    o.from,
                    o.to,
                    o.port,
                    o.protocol,
                    if o.allowed { "allowed" } else { "denied" },
                    if p.allowed { "allowed" } else { "denied" },
                    p.reason.as_deref().unwrap_or("")
                )
            })
        })
        .collect()
}

pub fn run(args: TestbedArgs) -> Result<ExitCode> {
    match args.command {
        TestbedCommand::Up {
            name,
            files,
            proxy_bin,
            init_bin,
            controller_bin,
            policy_source,
            proxy_args,
        } => {
            let binaries = Binaries::locate(proxy_bin, init_bin, controller_bin)?;
            let state = testbed::up(&UpOptions {
                name: name.name,
                files,
                binaries,
                proxy_args,
                policy_source,
            })?;
            println!(
                "testbed {:?} is up: {} pods, node namespace {}",
                state.name,
                state.pods.len(),
                state.node_netns
            );
            match &state.controller {
                Some(c) => println!(
                    "  tables from portcullis-controller (pid {}, log {}) in the node namespace",
                    c.pid,
                    c.log.display()
                ),
                None => println!("  every proxy reads {} itself", state.policy_dir.display()),
            }
            for p in &state.pods {
                println!("  {:<40} {:<16} netns {}", p.key, p.ip, p.netns);
            }
            Ok(ExitCode::SUCCESS)
        }
        TestbedCommand::Probe {
            name,
            probe,
            output,
            timeout,
            color,
        } => {
            let state = State::load(&name.name)?;
            let (observed, predicted, _) = observe(&state, &probe, timeout)?;
            let diffs = differences(&observed, &predicted);
            match output {
                crate::matrix::Output::Json => {
                    let probes: Vec<ObservedEntry> = observed
                        .probes
                        .iter()
                        .map(|o| ObservedEntry {
                            from: &o.from,
                            to: &o.to,
                            port: o.port,
                            protocol: o.protocol,
                            allowed: o.allowed,
                            predicted: predicted
                                .get(
                                    &o.from,
                                    &o.to,
                                    Probe {
                                        port: o.port,
                                        protocol: o.protocol,
                                    },
                                )
                                .map(|p| p.allowed),
                        })
                        .collect();
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&serde_json::json!({ "probes": probes }))?
                    );
                }
                crate::matrix::Output::Table => {
                    print!("{}", grids(&observed, Some(&predicted), color.enabled()));
                }
            }
            if diffs.is_empty() {
                eprintln!(
                    "observed matrix equals the predicted one ({} probes)",
                    observed.probes.len()
                );
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!(
                    "{} differences between observed and predicted:",
                    diffs.len()
                );
                for d in &diffs {
                    eprintln!("  {d}");
                }
                Ok(ExitCode::FAILURE)
            }
        }
        TestbedCommand::Apply {
            name,
            files,
            replace,
        } => {
            let state = State::load(&name.name)?;
            if files.is_empty() && !replace {
                bail!("nothing to apply: pass -f PATH (or --replace to remove applied manifests)");
            }
            testbed::apply(&state, &files, replace, Duration::from_secs(20))?;
            println!("applied; every proxy serves the new tables");
            Ok(ExitCode::SUCCESS)
        }
        TestbedCommand::Logs { name, pod, all } => {
            let state = State::load(&name.name)?;
            for line in testbed::audit_lines(&state, &pod, all)? {
                println!("{line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        TestbedCommand::Metrics { name, pod } => {
            let state = State::load(&name.name)?;
            print!("{}", testbed::metrics(&state, &pod)?);
            Ok(ExitCode::SUCCESS)
        }
        TestbedCommand::StopController { name } => {
            let state = State::load(&name.name)?;
            testbed::stop_controller(&state)?;
            println!(
                "portcullis-controller of testbed {:?} stopped; {} proxies keep their last tables (stale)",
                name.name,
                state.pods.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        TestbedCommand::Down { name } => {
            let removed = testbed::down(&name.name);
            println!(
                "testbed {:?} is down ({} namespaces removed)",
                name.name,
                removed.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        TestbedCommand::Serve { identity, ports } => {
            testbed::serve::serve(&identity, &ports)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
