//! Human-readable output: truth-table grids like the Kubernetes e2e tests print.

use std::fmt::Write;
use std::io::IsTerminal;

use portcullis_policy::matrix::Probe;
use portcullis_policy::Matrix;

/// `-o json` or `-o yaml`: the same document, in either syntax.
pub fn print_structured(value: &impl serde::Serialize, yaml: bool) -> anyhow::Result<()> {
    if yaml {
        print!("{}", serde_saphyr::to_string(value)?);
    } else {
        println!("{}", serde_json::to_string_pretty(value)?);
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

impl ColorChoice {
    pub fn enabled(self) -> bool {
        match self {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => {
                std::env::var_os("NO_COLOR").is_none() && std::io::stdout().is_terminal()
            }
        }
    }
}

const GREEN: &str = "\x1b[32m";
const RED: &str = "\x1b[31;1m";
const YELLOW: &str = "\x1b[33;1m";
const RESET: &str = "\x1b[0m";

pub fn paint(text: &str, color: &str, enabled: bool) -> String {
    if enabled {
        format!("{color}{text}{RESET}")
    } else {
        text.to_string()
    }
}

pub fn allowed_word(allowed: bool, color: bool) -> String {
    if allowed {
        paint("ALLOWED", GREEN, color)
    } else {
        paint("DENIED", RED, color)
    }
}

/// One grid per probe: rows are sources, columns destinations; `.` allowed, `X` denied.
/// With `compare`, cells that differ from it are marked `!` (observed vs predicted).
pub fn grids(matrix: &Matrix, compare: Option<&Matrix>, color: bool) -> String {
    let pods = matrix.pods();
    let cells = matrix.index();
    let expected = compare.map(Matrix::index);
    let width = pods.iter().map(String::len).max().unwrap_or(3).max(8);
    let mut out = String::new();
    for probe in matrix.probe_list() {
        let _ = writeln!(out, "{}", grid_header(probe, compare.is_some()));
        let _ = write!(out, "{:width$}", "from \\ to");
        for to in &pods {
            let _ = write!(out, " {to:>w$}", w = to.len().max(3));
        }
        out.push('\n');
        let columns: Vec<(Option<usize>, Option<usize>, usize)> = pods
            .iter()
            .map(|to| {
                let at = |m: &portcullis_policy::matrix::MatrixIndex| m.position(to);
                (at(&cells), expected.as_ref().and_then(at), to.len().max(3))
            })
            .collect();
        for from in &pods {
            let _ = write!(out, "{from:width$}");
            let row = cells.row(from, probe).unwrap_or_default();
            let predicted_row = expected
                .as_ref()
                .and_then(|m| m.row(from, probe))
                .unwrap_or_default();
            for &(at, predicted_at, w) in &columns {
                let cell = at.and_then(|i| row.get(i).copied().flatten());
                let predicted = predicted_at.and_then(|i| predicted_row.get(i).copied().flatten());
                let (text, colour) = match (cell, predicted) {
                    (None, _) => ("-", ""),
                    (Some(c), Some(p)) if c.allowed != p.allowed => ("!", YELLOW),
                    (Some(c), _) if c.staged.is_some() => staged_mark(c.allowed),
                    (Some(c), _) if c.allowed => (".", GREEN),
                    (Some(_), _) => ("X", RED),
                };
                if colour.is_empty() || !color {
                    let _ = write!(out, " {text:>w$}");
                } else {
                    let _ = write!(out, " {}", paint(&format!("{text:>w$}"), colour, color));
                }
            }
            out.push('\n');
        }
        out.push('\n');
    }
    let legend = if compare.is_some() {
        "legend: . allowed   X denied   ! observed differs from predicted"
    } else {
        "legend: . allowed   X denied"
    };
    let _ = writeln!(out, "{legend}");
    if matrix.probes.iter().any(|p| p.staged.is_some()) {
        let _ = writeln!(out, "{STAGED_LEGEND}");
    }
    out
}

/// Cells where the staged policies (`portcullis.dev/staged`) would change the verdict.
const STAGED_LEGEND: &str = "staged: x allowed, a staged policy would deny   \
                             + denied, a staged policy would allow";

/// The mark of a cell whose verdict a staged policy would change; `allowed` is the enforced one.
fn staged_mark(allowed: bool) -> (&'static str, &'static str) {
    if allowed {
        ("x", YELLOW)
    } else {
        ("+", YELLOW)
    }
}

fn grid_header(probe: Probe, observed: bool) -> String {
    if observed {
        format!("== {probe} (observed) ==")
    } else {
        format!("== {probe} ==")
    }
}
