//! `portcullis lint`, and the same warnings on stderr for `matrix` and `explain`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, ValueEnum};
use portcullis_policy::lint::{check_cluster, Finding, Severity};
use portcullis_policy::validate::with_every_policy_error;
use portcullis_policy::CompiledCluster;
use portcullis_policy_loader::Loaded;
use serde::Serialize;

use crate::render::print_structured;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// One line per finding: severity, code, check, object, field, message; then a count.
    Table,
    /// `{"findings":[{"severity","code","check","object":{kind,namespace,name,source},"field",
    /// "message"}],"errors":N,"warnings":N,"notes":N}`
    Json,
    /// The JSON document, as YAML.
    Yaml,
}

/// The least severe finding that fails the run (exit status 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Threshold {
    /// Errors only (the default): what the API server or the engine rejects.
    Error,
    /// Errors and warnings.
    Warning,
    /// Any finding, notes included.
    #[value(alias = "note")]
    Info,
}

impl Threshold {
    fn fails(self, severity: Severity) -> bool {
        match self {
            Threshold::Error => severity == Severity::Error,
            Threshold::Warning => severity <= Severity::Warning,
            Threshold::Info => true,
        }
    }
}

#[derive(Args)]
pub struct LintArgs {
    /// Manifest files or directories (as for `matrix`); `-` reads standard input, e.g.
    /// `kubectl get ns,pods,netpol -A -o yaml | portcullis lint -f -`.
    #[arg(short = 'f', long = "filename", value_name = "PATH", required = true, num_args = 1..)]
    pub files: Vec<PathBuf>,
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// The least severe finding that makes the exit status 1.
    #[arg(long, value_enum, default_value_t = Threshold::Error)]
    pub failure_threshold: Threshold,
}

/// What lint says about what `loaded` holds: unknown fields, then the meaning checks.
/// (Unreadable files and invalid objects are not included: callers report them their way.)
pub fn findings(loaded: &Loaded) -> Vec<Finding> {
    let mut out = loaded.findings.clone();
    out.extend(check_cluster(&loaded.cluster, &loaded.declared_namespaces));
    out
}

/// For `matrix` and `explain`: prints lint's findings on stderr; returns whether any is an error.
pub fn report(loaded: &Loaded) -> bool {
    let found = findings(loaded);
    for f in &found {
        eprintln!("{f}");
    }
    found.iter().any(|f| f.severity == Severity::Error)
}

#[derive(Serialize)]
struct Report<'a> {
    findings: &'a [Finding],
    errors: usize,
    warnings: usize,
    notes: usize,
}

pub fn run(args: LintArgs) -> Result<ExitCode> {
    let loaded = crate::load(&args.files);
    let compiled: CompiledCluster = portcullis_policy::compile(&loaded.cluster);
    let mut all: Vec<Finding> = loaded
        .errors
        .iter()
        .map(|e| Finding::invalid_text(e.clone()))
        .collect();
    // ClusterNetworkPolicies: lint validates them itself, strictly, with every error (PC004).
    let errors: Vec<_> = (compiled.errors.iter())
        .filter(|e| e.object.kind != portcullis_policy::cnp::KIND)
        .cloned()
        .collect();
    let invalid = with_every_policy_error(&loaded.cluster.policies, &errors);
    all.extend(invalid.iter().map(Finding::invalid));
    all.extend(findings(&loaded));
    all.sort_by_key(|f| f.severity); // stable: errors first, each group in input order
    let count = |s: Severity| all.iter().filter(|f| f.severity == s).count();
    let report = Report {
        findings: &all,
        errors: count(Severity::Error),
        warnings: count(Severity::Warning),
        notes: count(Severity::Note),
    };
    match args.output {
        Output::Json | Output::Yaml => print_structured(&report, args.output == Output::Yaml)?,
        Output::Table => print!("{}", table(&report)),
    }
    let failed = all.iter().any(|f| args.failure_threshold.fails(f.severity));
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn table(report: &Report<'_>) -> String {
    let rows: Vec<[String; 6]> = report
        .findings
        .iter()
        .map(|f| {
            [
                f.severity.to_string(),
                f.code.to_string(),
                f.check.as_str().to_string(),
                f.object.as_ref().map(|o| o.to_string()).unwrap_or_default(),
                f.field.clone(),
                f.message.clone(),
            ]
        })
        .collect();
    let header = ["SEVERITY", "CODE", "CHECK", "OBJECT", "FIELD", "MESSAGE"].map(String::from);
    let mut widths = [0usize; 5];
    for row in std::iter::once(&header).chain(&rows) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    if !rows.is_empty() {
        for row in std::iter::once(&header).chain(&rows) {
            for (w, cell) in widths.iter().zip(row) {
                out.push_str(&format!("{cell:<w$}  "));
            }
            out.push_str(&row[5]);
            out.push('\n');
        }
    }
    out.push_str(&format!(
        "{} error(s), {} warning(s), {} note(s)\n",
        report.errors, report.warnings, report.notes
    ));
    out
}
