//! `portcullis testbed ...` and `portcullis demo`: argument parsing and printing around
//! [`portcullis_testbed`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use portcullis_policy::matrix::Probe;
use portcullis_policy::Protocol;

use crate::matrix::parse_probe;
use crate::render::{grids, paint, ColorChoice};
use portcullis_testbed::probe::{Cell, Outcome, ServiceCell, ServiceClients};
use portcullis_testbed::{self as testbed, Binaries, State, UpOptions};

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

fn parse_name(s: &str) -> Result<String> {
    if !s.is_empty() && s.len() <= 12 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        Ok(s.to_string())
    } else {
        bail!("use 1-12 letters, digits or '-'")
    }
}

/// Where the binaries the testbed runs are, when not found by themselves.
#[derive(Args, Clone)]
pub struct BinaryArgs {
    /// portcullis-proxy binary (default: next to this one, then PATH).
    #[arg(long)]
    pub proxy_bin: Option<PathBuf>,
    /// portcullis-init binary (default: next to this one, then PATH).
    #[arg(long)]
    pub init_bin: Option<PathBuf>,
    /// portcullis-controller binary (default: next to this one, then PATH).
    #[arg(long)]
    pub controller_bin: Option<PathBuf>,
    /// portcullis-node-guard binary, for `up --node-guard` (default: next to this one, then
    /// PATH).
    #[arg(long)]
    pub node_guard_bin: Option<PathBuf>,
}

impl BinaryArgs {
    pub fn locate(self) -> Result<Binaries> {
        Ok(Binaries::locate(
            self.proxy_bin,
            self.init_bin,
            self.controller_bin,
            self.node_guard_bin,
        )?)
    }
}

#[derive(Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub name: Name,
    /// Manifests (the same as `portcullis matrix` reads).
    #[arg(short = 'f', long = "filename", value_name = "PATH", required = true, num_args = 1..)]
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    pub binaries: BinaryArgs,
    /// Where proxies get their tables: from portcullis-controller (file mode, in the node
    /// namespace), as in a cluster; or each proxy from the policy directory itself.
    #[arg(long, value_enum, default_value_t = testbed::PolicySource::Controller)]
    pub policy_source: testbed::PolicySource,
    /// Extra arguments for every proxy, e.g. `--proxy-arg=--mode=audit`.
    #[arg(long = "proxy-arg", allow_hyphen_values = true)]
    pub proxy_args: Vec<String>,
    /// Ports every pod serves on top of those the manifests name (and that `probe` probes by
    /// default), e.g. `80/TCP,53/UDP`.
    #[arg(long, value_delimiter = ',', value_parser = parse_probe)]
    pub probe: Vec<Probe>,
    /// PORTCULLIS_ENFORCE_UDP for every init container and proxy (UDP/SCTP through the
    /// NFQUEUE); true gives each proxy CAP_NET_ADMIN (ambient) and init and proxy the
    /// proxy's packet mark (PORTCULLIS_PROXY_MARK), as the injector does. The prediction
    /// treats UDP/SCTP as unenforced when false.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub enforce_udp: bool,
    /// Run portcullis-node-guard on the node, as its optional DaemonSet would
    /// (`manifests/node-guard/`): each pod's bridge port bound to its MAC and IP, so that no
    /// pod can forge another's source (or the node's) on the bridge. Off by default, as in the
    /// default install (see docs/testbed.md). Needs nft (Debian: nftables).
    #[arg(long)]
    pub node_guard: bool,
}

#[derive(Args)]
pub struct ProbeArgs {
    #[command(flatten)]
    pub name: Name,
    /// Probes, e.g. `80/TCP,53/UDP` (default: every port the pods serve: `up --probe`,
    /// declared containerPorts, numeric ports of policies; UDP ones only if the testbed's
    /// proxies enforce UDP). UDP probes send a datagram and expect the pod's name back.
    #[arg(long, value_delimiter = ',', value_parser = parse_probe)]
    pub probe: Vec<Probe>,
    #[arg(short, long, value_enum, default_value_t = ProbeOutput::Table)]
    pub output: ProbeOutput,
    /// How long one probe may take before it counts as denied.
    #[arg(long, default_value = "2s", value_parser = portcullis_contract::parse_duration)]
    pub timeout: Duration,
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
    /// Which pods probe every Service port (ClusterIP:port, for the probes' protocols).
    /// Every pod by default; `unenforced`: only pods without a proxy (their connections
    /// reach the node's kube-proxy rules).
    #[arg(long, value_enum, default_value_t = ServiceClients::All)]
    pub service_clients: ServiceClients,
}

#[derive(Subcommand)]
pub enum TestbedCommand {
    /// Build the cluster in network namespaces: a node routing between the pods, one namespace
    /// per pod running portcullis-init, portcullis-proxy (unless the pod is not injected) and a
    /// server that answers with the pod's name on every port it could be probed on (TCP and UDP):
    /// every --probe port, every declared containerPort, every numeric port of any policy.
    Up(UpArgs),
    /// Connect from every pod to every pod on every probe and compare with the engine's
    /// prediction; exits 1 on any difference.
    Probe(ProbeArgs),
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
    /// A pod's proxy's /policy (JSON: table generation, staleness, the table, what it enforces).
    Policy {
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
        /// JSON list of the ports to serve, re-read every 100 ms.
        #[arg(long)]
        wanted: PathBuf,
        /// Where to report the ports it listens on.
        #[arg(long)]
        bound: PathBuf,
    },
}

/// What `probe` saw: pod to pod, and through Services.
#[derive(serde::Serialize)]
pub struct Observation {
    pub probes: Vec<Cell>,
    pub services: Vec<ServiceCell>,
}

/// Probes the testbed (`probes`, or by default every TCP port its pods serve) pod to pod, and
/// every Service port of the probes' protocols from the `clients` pods; predicts every probe from
/// the manifests the proxies see.
pub fn observe(
    state: &State,
    probes: &[Probe],
    clients: ServiceClients,
    timeout: Duration,
) -> Result<Observation> {
    let probes: Vec<Probe> = if probes.is_empty() {
        let set = state.port_set(&state.snapshot()?);
        for note in &set.notes {
            eprintln!("note: {note}");
        }
        testbed::ports::default_probes(&set, state.enforce_udp)
    } else {
        probes.to_vec()
    };
    if probes.is_empty() {
        bail!("nothing to probe: no port in the manifests; pass --probe, e.g. --probe 80/TCP");
    }
    let protocols: BTreeSet<Protocol> = probes.iter().map(|p| p.protocol).collect();
    Ok(Observation {
        probes: testbed::probe::observe(state, &probes, timeout)?,
        services: testbed::probe::observe_services(
            state,
            &protocols,
            clients,
            &testbed::SYSTEM_SERVICES,
            timeout,
        )?,
    })
}

/// Prints the grids (observed against predicted), then every difference and every probe that
/// found nothing listening. Returns whether observed equals predicted.
/// (`with_grids: false`: the summary only.)
pub fn report(
    obs: &Observation,
    color: bool,
    with_grids: bool,
    out: &mut dyn std::io::Write,
) -> Result<bool> {
    let cells = &obs.probes;
    if with_grids {
        for (family, sent) in testbed::probe::per_family(cells) {
            if sent == 0 && family == testbed::Family::IPv6 {
                continue;
            }
            if family == testbed::Family::IPv6 {
                writeln!(out, "== over IPv6 (the dual-stack pods) ==")?;
            }
            let (observed, predicted) = testbed::probe::matrices(cells, family);
            write!(out, "{}", grids(&observed, Some(&predicted), color))?;
        }
        if !obs.services.is_empty() {
            write!(out, "{}", service_grid(&obs.services, color))?;
        }
    }
    let no_listener: Vec<&Cell> = cells
        .iter()
        .filter(|c| c.outcome == Outcome::NoListener)
        .collect();
    // Grouped by port and cause: "nothing listens on 4143/TCP in x/a, x/b (address in use)".
    let mut groups: BTreeMap<(u16, String, String), BTreeSet<&str>> = BTreeMap::new();
    for c in &no_listener {
        groups
            .entry((
                c.port,
                c.protocol.to_string(),
                c.no_listener.clone().unwrap_or_default(),
            ))
            .or_default()
            .insert(&c.to);
    }
    for ((port, protocol, why), pods) in &groups {
        writeln!(
            out,
            "not probed: nothing listens on {port}/{protocol} in {} ({why}); not counted as allowed or denied",
            pods.iter().copied().collect::<Vec<_>>().join(", ")
        )?;
    }
    let mut diffs: Vec<String> = cells
        .iter()
        .filter(|c| c.differs())
        .map(Cell::describe)
        .collect();
    diffs.extend(
        obs.services
            .iter()
            .filter(|c| c.differs())
            .map(ServiceCell::describe),
    );
    let total = cells.len() - no_listener.len() + obs.services.len();
    let families: Vec<String> = testbed::probe::per_family(cells)
        .iter()
        .map(|(f, n)| format!("{n} over {f}"))
        .collect();
    if diffs.is_empty() {
        writeln!(
            out,
            "observed matrix equals the predicted one ({total} probes, {} through Services; pod to pod {})",
            obs.services.len(),
            families.join(", ")
        )?;
    } else {
        writeln!(
            out,
            "{} differences between observed and predicted:",
            diffs.len()
        )?;
        for d in &diffs {
            writeln!(out, "  DIFFERENCE {d}")?;
        }
    }
    Ok(diffs.is_empty())
}

/// One grid for every Service port: rows are client pods, one column per Service port; the cell
/// is the observed outcome (an answer from an allowed backend, no answer, or a difference).
fn service_grid(cells: &[ServiceCell], color: bool) -> String {
    use std::fmt::Write as _;
    let columns: Vec<String> = cells
        .iter()
        .map(ServiceCell::column)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let rows: BTreeSet<&str> = cells.iter().map(|c| c.from.as_str()).collect();
    let width = rows.iter().map(|r| r.len()).max().unwrap_or(8).max(9);
    let mut out = String::from("== through Services (observed) ==\n");
    let _ = write!(out, "{:width$}", "from \\ to");
    for c in &columns {
        let _ = write!(out, " {c}");
    }
    out.push('\n');
    for row in &rows {
        let _ = write!(out, "{row:width$}");
        for col in &columns {
            let cell = cells.iter().find(|c| c.from == *row && c.column() == *col);
            let (text, colour) = match cell {
                None => ("-", ""),
                Some(c) if c.differs() => ("!", "\x1b[33;1m"),
                Some(c) if c.answered_by.is_some() => (".", "\x1b[32m"),
                Some(_) => ("X", "\x1b[31;1m"),
            };
            let padded = format!("{text:>w$}", w = col.len());
            let _ = write!(
                out,
                " {}",
                paint(&padded, colour, color && !colour.is_empty())
            );
        }
        out.push('\n');
    }
    out.push_str("legend: . answered by a backend the policy allows   X no answer (denied)   ! differs from predicted (e.g. a denied backend answered)\n\n");
    out
}

/// What `up` prints: the testbed, where tables come from, and every pod with its proxy or why
/// it has none.
fn print_up(state: &State) {
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
    if let Some(g) = &state.node_guard {
        println!(
            "  portcullis-node-guard (pid {}, log {}) binds every pod's bridge port to its MAC and IP",
            g.pid,
            g.log.display()
        );
    }
    for p in &state.pods {
        let proxy = match &p.not_injected {
            None => "proxy".to_string(),
            Some(why) => format!("no proxy: {why}"),
        };
        let ips: Vec<String> = p.addrs().iter().map(ToString::to_string).collect();
        println!(
            "  {:<40} {:<16} netns {:<20} {proxy}",
            p.key,
            ips.join(","),
            p.netns
        );
    }
    if state.dns.is_some() {
        println!(
            "  cluster DNS: kube-system/kube-dns {} (dnsmasq); each pod's resolv.conf points at it",
            testbed::dns::DNS_IP
        );
    }
}

/// `testbed probe -o`: what was observed beside what was predicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProbeOutput {
    /// One grid per probe, observed; cells that differ from the prediction marked `!`.
    Table,
    /// Observed and predicted matrices, as JSON.
    Json,
    /// The same document, as YAML.
    Yaml,
}

/// `testbed up`: brings the testbed up and prints its pods.
fn up_command(args: UpArgs) -> Result<ExitCode> {
    let binaries = args.binaries.locate()?;
    let state = testbed::up(&UpOptions {
        name: args.name.name,
        files: args.files,
        binaries,
        proxy_args: args.proxy_args,
        policy_source: args.policy_source,
        extra_probes: args.probe,
        enforce_udp: args.enforce_udp,
        node_guard: args.node_guard,
    })?;
    print_up(&state);
    Ok(ExitCode::SUCCESS)
}

/// `testbed probe`: observe, print (grids, or JSON with the summary on stderr); exits 1 when
/// what was observed differs from the prediction.
fn probe_command(args: ProbeArgs) -> Result<ExitCode> {
    let state = State::load(&args.name.name)?;
    let obs = observe(&state, &args.probe, args.service_clients, args.timeout)?;
    let same = match args.output {
        out @ (ProbeOutput::Json | ProbeOutput::Yaml) => {
            crate::render::print_structured(&obs, out == ProbeOutput::Yaml)?;
            report(&obs, false, false, &mut std::io::stderr())?
        }
        ProbeOutput::Table => report(&obs, args.color.enabled(), true, &mut std::io::stdout())?,
    };
    Ok(if same {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub fn run(args: TestbedArgs) -> Result<ExitCode> {
    match args.command {
        TestbedCommand::Up(up) => up_command(up),
        TestbedCommand::Probe(probe) => probe_command(probe),
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
        TestbedCommand::Policy { name, pod } => {
            let state = State::load(&name.name)?;
            println!("{}", testbed::policy(&state, &pod)?);
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
        TestbedCommand::Serve {
            identity,
            wanted,
            bound,
        } => {
            testbed::serve::serve(&identity, &wanted, &bound)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
