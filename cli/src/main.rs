//! `portcullis`: the user's command line for Portcullis.

mod advise;
mod check;
mod demo;
mod draw;
mod explain;
mod explain_service;
mod generate;
mod lint;

mod matrix;
mod render;
mod testbed_cli;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "Portcullis: Kubernetes NetworkPolicy, enforced per pod by a sidecar L4 proxy.",
    long_about = "Portcullis: Kubernetes NetworkPolicy, enforced per pod by a sidecar L4 proxy.\n\n\
                  This command works offline on manifests (YAML or JSON files, or directories of \
                  them, holding Namespaces, Pods with status.podIP, and NetworkPolicies): it shows \
                  which pod may reach which, and explains why."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the reachability matrix of every pod to every pod, per port/protocol.
    Matrix(matrix::MatrixArgs),
    /// Explain the verdict for one connection, in words.
    Explain(explain::ExplainArgs),
    /// Check the cluster of the kubeconfig: before installing (--pre), or that Portcullis runs
    /// and every pod of every labelled namespace is protected. Exit status 1 on a failed check.
    Check(check::CheckArgs),
    /// Find unknown fields (errors, as the API server's strict validation) and policies that
    /// probably do not do what was meant (warnings). Exit status 1 on errors.
    Lint(lint::LintArgs),
    /// A local cluster in network namespaces with the real init container and proxies (root).
    Testbed(testbed_cli::TestbedArgs),
    /// Run the kangaroo example end to end in a testbed, apply a policy change live (root).
    Demo(demo::DemoArgs),
    /// Write least-privilege NetworkPolicies from the proxies' flow records, and prove them
    /// with the engine: every observed flow allowed, what else they allow listed.
    Advise(advise::AdviseArgs),
    /// Print shell completions: bash, zsh, fish, elvish or powershell.
    Completion(generate::CompletionArgs),
    /// Print the man page (roff), or write every page into a directory with --dir.
    Man(generate::ManArgs),
}

fn main() -> ExitCode {
    restore_sigpipe();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Matrix(args) => matrix::run(args),
        Command::Explain(args) => explain::run(args),
        Command::Lint(args) => lint::run(args),
        Command::Advise(args) => advise::run(args),
        Command::Check(args) => check::run(args),
        Command::Testbed(args) => testbed_cli::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Completion(args) => generate::completion(args, Cli::command()),
        Command::Man(args) => generate::man(args, Cli::command()),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `portcullis matrix | head` ends quietly, as Unix tools do, instead of panicking in `println!`
/// on a closed pipe (Rust ignores SIGPIPE by default). Sockets are unaffected: the standard
/// library and tokio send with MSG_NOSIGNAL.
fn restore_sigpipe() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: installing the default disposition, before any thread is started.
    if let Err(e) = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) } {
        eprintln!("warning: cannot restore SIGPIPE: {e}");
    }
}

/// Reads manifests for a command: lint's unknown-field findings included, and an input that
/// holds no object at all an error.
fn load(files: &[std::path::PathBuf]) -> portcullis_policy_loader::Loaded {
    let mut loaded = portcullis_policy_loader::load_paths_linted(files);
    loaded.empty_is_error();
    loaded
}

/// Prints load problems to stderr. Returns whether there were errors.
fn report_load(loaded: &portcullis_policy_loader::Loaded, verbose: bool) -> bool {
    for e in &loaded.errors {
        eprintln!("error: {e}");
    }
    if verbose {
        for i in &loaded.ignored {
            eprintln!(
                "note: ignored {i}: not a Namespace, Pod, NetworkPolicy, Service or EndpointSlice"
            );
        }
    }
    !loaded.errors.is_empty()
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap's own consistency checks over every subcommand and flag (duplicate short flags,
    /// conflicting names, defaults outside their value sets...).
    #[test]
    fn the_command_line_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
