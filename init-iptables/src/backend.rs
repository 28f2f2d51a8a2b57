//! Which iptables to drive: nft or legacy, as the network namespace already uses.
//!
//! Rules of the two backends do not see each other, so writing with the wrong one would leave a
//! redirect that the packets never meet. Like Linkerd and Istio, prefer the backend that already
//! holds rules; with none anywhere, nft (the default of every current distribution).

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context, Result};

use crate::config::BackendChoice;
use crate::rules::Family;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Nft,
    Legacy,
    /// Only unsuffixed `iptables-restore` is installed: whatever it is.
    Default,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Nft => "nft",
            Backend::Legacy => "legacy",
            Backend::Default => "default",
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Backend::Nft => "-nft",
            Backend::Legacy => "-legacy",
            Backend::Default => "",
        }
    }

    pub fn restore(self, family: Family) -> String {
        format!("{}{}-restore", prefix(family), self.suffix())
    }

    pub fn save(self, family: Family) -> String {
        format!("{}{}-save", prefix(family), self.suffix())
    }
}

fn prefix(family: Family) -> &'static str {
    match family {
        Family::V4 => "iptables",
        Family::V6 => "ip6tables",
    }
}

pub fn installed(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

/// Picks the backend for `choice`, checking that its programs exist.
pub fn select(choice: BackendChoice) -> Result<Backend> {
    let backend = match choice {
        BackendChoice::Nft => Backend::Nft,
        BackendChoice::Legacy => Backend::Legacy,
        BackendChoice::Auto => detect(),
    };
    for program in [backend.restore(Family::V4), backend.save(Family::V4)] {
        if !installed(&program) {
            bail!(
                "{program} not found: install the iptables package (Debian: apt-get install iptables){}",
                if choice == BackendChoice::Auto { "" } else { ", or choose another --backend" }
            );
        }
    }
    Ok(backend)
}

fn detect() -> Backend {
    let both = [Backend::Nft, Backend::Legacy]
        .iter()
        .all(|b| installed(&b.restore(Family::V4)) && installed(&b.save(Family::V4)));
    if !both {
        return if installed(&Backend::Nft.restore(Family::V4)) {
            Backend::Nft
        } else if installed(&Backend::Legacy.restore(Family::V4)) {
            Backend::Legacy
        } else {
            Backend::Default
        };
    }
    let rules = |b: Backend| -> usize {
        [Family::V4, Family::V6]
            .iter()
            .filter_map(|f| Command::new(b.save(*f)).output().ok())
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter(|l| l.starts_with("-A "))
                    .count()
            })
            .sum()
    };
    if rules(Backend::Legacy) > rules(Backend::Nft) {
        Backend::Legacy
    } else {
        Backend::Nft
    }
}

/// Everything `iptables-save` prints (all tables), for comparisons.
pub fn save_all(backend: Backend, family: Family) -> Result<String> {
    let program = backend.save(family);
    let out = Command::new(&program)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        return Err(explain(&program, &String::from_utf8_lossy(&out.stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Applies `input` in one transaction: `iptables-restore --noflush`.
pub fn restore(backend: Backend, family: Family, input: &str) -> Result<()> {
    let program = backend.restore(family);
    let mut child = Command::new(&program)
        .args(["--noflush", "--wait", "10"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {program}"))?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow!("no stdin for {program}"))?
        .write_all(input.as_bytes())
        .with_context(|| format!("cannot write to {program}"))?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(explain(&program, &String::from_utf8_lossy(&out.stderr)));
    }
    Ok(())
}

fn explain(program: &str, stderr: &str) -> anyhow::Error {
    let stderr = stderr.trim();
    if stderr.contains("Permission denied") || stderr.contains("Operation not permitted") {
        anyhow!(
            "{program}: permission denied. portcullis-init needs root with the NET_ADMIN and \
             NET_RAW capabilities in the pod's network namespace ({stderr})"
        )
    } else {
        anyhow!("{program} failed: {stderr}")
    }
}
