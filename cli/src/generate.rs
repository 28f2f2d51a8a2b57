//! `portcullis completion SHELL` and `portcullis man`: shell completions and man pages, generated
//! from the command line's own definition so that they always match its flags.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Command};
use clap_complete::Shell;

#[derive(Args)]
pub struct CompletionArgs {
    /// The shell to complete for; e.g. `source <(portcullis completion bash)`, or write it to
    /// `/usr/share/bash-completion/completions/portcullis`.
    #[arg(value_enum)]
    pub shell: Shell,
}

#[derive(Args)]
pub struct ManArgs {
    /// Write `portcullis.1` and one page per subcommand (`portcullis-matrix.1`, ...) into this
    /// directory instead of printing the main page.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

pub fn completion(args: CompletionArgs, mut command: Command) -> Result<ExitCode> {
    clap_complete::generate(
        args.shell,
        &mut command,
        "portcullis",
        &mut std::io::stdout(),
    );
    Ok(ExitCode::SUCCESS)
}

pub fn man(args: ManArgs, command: Command) -> Result<ExitCode> {
    let Some(dir) = args.dir else {
        clap_mangen::Man::new(command).render(&mut std::io::stdout())?;
        return Ok(ExitCode::SUCCESS);
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    // `portcullis.1`, and `portcullis-matrix.1`... for each subcommand, recursively.
    clap_mangen::generate_to(command, &dir)
        .with_context(|| format!("{}: cannot write the man pages", dir.display()))?;
    Ok(ExitCode::SUCCESS)
}
