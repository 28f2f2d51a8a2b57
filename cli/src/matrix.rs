//! `portcullis matrix`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, ValueEnum};
use portcullis_policy::matrix::{default_probes, Detail, Probe};
use portcullis_policy::ports::{parse_port_protocol, PortProtocolError};
use portcullis_policy::validate::with_every_policy_error;
use portcullis_policy::{compile, Matrix};

use crate::render::{grids, print_structured, ColorChoice};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// One grid per probe, rows = from, columns = to; `.` allowed, `X` denied.
    Table,
    /// `{"probes":[{"from":"NS/POD","to":"NS/POD","port":80,"protocol":"TCP","allowed":true,"reason":"..."}]}`
    Json,
    /// The JSON document, as YAML.
    Yaml,
    /// A picture: namespaces as arcs of a circle, pods on them, an arrow per pair of pods with
    /// any allowed probe (ports in its tooltip). Standalone SVG.
    Svg,
    /// The picture and a table of its arrows, as one self-contained HTML page.
    Html,
}

#[derive(Args)]
pub struct MatrixArgs {
    /// Manifest files or directories (YAML, multi-document YAML, JSON, List objects); `-` reads
    /// standard input, e.g. `kubectl get ns,pods,netpol -A -o yaml | portcullis matrix -f -`.
    #[arg(short = 'f', long = "filename", value_name = "PATH", required = true, num_args = 1..)]
    pub files: Vec<PathBuf>,
    /// Probes to evaluate, e.g. `80/TCP,81/UDP` (default: every containerPort any pod declares).
    #[arg(long, value_delimiter = ',', value_parser = parse_probe)]
    pub probe: Vec<Probe>,
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Colour the grid.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
    /// Also list objects of other kinds that were skipped.
    #[arg(short, long)]
    pub verbose: bool,
    /// Only the pods of this namespace, as rows and columns (the policies of every namespace
    /// still decide).
    #[arg(short = 'n', long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
}

pub fn parse_probe(s: &str) -> Result<Probe, PortProtocolError> {
    parse_port_protocol(s).map(|(port, protocol)| Probe { port, protocol })
}

/// Loads, compiles and computes the matrix; reports problems on stderr.
/// Over the pods of `namespace` only when given.
fn predicted(
    files: &[PathBuf],
    probes: &[Probe],
    verbose: bool,
    namespace: Option<&str>,
    detail: Detail,
) -> (Matrix, bool) {
    let mut loaded = crate::load(files);
    let mut failed = crate::report_load(&loaded, verbose);
    failed |= crate::lint::report(&loaded);
    for pod in loaded.cluster.assign_placeholder_ips() {
        eprintln!(
            "warning: pod {pod} has no status.podIP; using a placeholder address from 240.0.0.0/4"
        );
    }
    let compiled = compile(&loaded.cluster);
    for e in &with_every_policy_error(&loaded.cluster.policies, &compiled.errors) {
        eprintln!("error: {e}");
        failed = true;
    }
    let probes = if probes.is_empty() {
        default_probes(&compiled.pods)
    } else {
        probes.to_vec()
    };
    if probes.is_empty() {
        eprintln!("warning: no pod declares a containerPort; pass --probe, e.g. --probe 80/TCP");
    }
    if let Some(ns) = namespace {
        if !compiled.tables.values().any(|t| t.namespace == ns) {
            eprintln!("error: no pod in namespace {ns:?}");
            failed = true;
        }
    }
    (
        Matrix::compute_for(&compiled, &probes, namespace, detail),
        failed,
    )
}

pub fn run(args: MatrixArgs) -> Result<ExitCode> {
    let namespace = args.namespace.as_deref();
    // The table shows allowed or denied only: no reasons to write for it.
    let detail = match args.output {
        Output::Json | Output::Yaml => Detail::Reasons,
        Output::Table | Output::Svg | Output::Html => Detail::AllowedOnly,
    };
    let (matrix, failed) = predicted(&args.files, &args.probe, args.verbose, namespace, detail);
    match args.output {
        Output::Json | Output::Yaml => print_structured(&matrix, args.output == Output::Yaml)?,
        Output::Table => print!("{}", grids(&matrix, None, args.color.enabled())),
        Output::Svg => print!("{}", crate::draw::svg(&crate::draw::matrix(&matrix))),
        Output::Html => print!("{}", crate::draw::html(&crate::draw::matrix(&matrix))),
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
