//! Applying a ruleset: `nft -f -`, one transaction per call (the kernel applies all of the
//! input or none of it).

use std::io::Write;
use std::process::{Command, Stdio};

/// Why `nft` did not apply the input.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot run {program} (Debian: apt-get install nftables): {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("writing the ruleset to {program}: {source}")]
    Write {
        program: String,
        source: std::io::Error,
    },
    #[error("{program} -f - failed ({status}): {stderr}")]
    Failed {
        program: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

/// Feeds `input` to `{program} -f -`.
pub fn apply(program: &str, input: &str) -> Result<(), NftError> {
    let mut child = Command::new(program)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| NftError::Spawn {
            program: program.to_string(),
            source,
        })?;
    let written = match child.stdin.take() {
        Some(mut stdin) => stdin.write_all(input.as_bytes()),
        None => Ok(()),
    };
    let out = child.wait_with_output().map_err(|source| NftError::Spawn {
        program: program.to_string(),
        source,
    })?;
    if !out.status.success() {
        return Err(NftError::Failed {
            program: program.to_string(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    written.map_err(|source| NftError::Write {
        program: program.to_string(),
        source,
    })
}
