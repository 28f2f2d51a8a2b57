//! Network namespaces through iproute2, in one place for the testbed, the load tests and every
//! test that builds namespaces: create and delete them ([`add`], [`delete`], [`Namespace`] which
//! deletes on drop, also when the caller fails half-way), run `ip` and other programs inside
//! them ([`ip_in`], [`exec_in`], [`restore`] for `iptables-restore`), and move a thread into
//! one ([`enter`], [`within`]). Nothing here touches the host's own namespace but `ip netns`.
//!
//! Feature `testing`: the helpers tests share ([`testing`]): panicking variants, a proxy's admin
//! port, metrics and log events, waiting for a condition.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

#[cfg(feature = "testing")]
pub mod testing;

/// Why a namespace operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot run {program} (is it installed?): {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed: {stderr}")]
    Failed { command: String, stderr: String },
    #[error("network namespace {ns} not found: {source}")]
    NotFound { ns: String, source: std::io::Error },
    #[error("cannot enter network namespace {ns}: {source}")]
    Enter { ns: String, source: nix::Error },
    #[error("the thread in network namespace {ns} panicked")]
    Panicked { ns: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Runs a command; its stdout, or an error with its stderr when it fails.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Error::Spawn {
            program: program.to_string(),
            source,
        })?;
    if !out.status.success() {
        return Err(Error::Failed {
            command: format!("{program} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip ARGS...`
pub fn ip(args: &[&str]) -> Result<String> {
    run("ip", args)
}

/// `ip -n NS ARGS...`
pub fn ip_in(ns: &str, args: &[&str]) -> Result<String> {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// `ip netns exec NS PROGRAM ARGS...`
pub fn exec_in(ns: &str, program: &str, args: &[&str]) -> Result<String> {
    let mut all = vec!["netns", "exec", ns, program];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// Feeds `input` to `ip netns exec NS PROGRAM --noflush` (an `iptables-restore`).
pub fn restore(ns: &str, program: &str, input: &str) -> Result<()> {
    let command = format!("ip netns exec {ns} {program} --noflush");
    let spawn = |source| Error::Spawn {
        program: program.to_string(),
        source,
    };
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, program, "--noflush"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).map_err(spawn)?;
    }
    let out = child.wait_with_output().map_err(spawn)?;
    if !out.status.success() {
        return Err(Error::Failed {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Creates namespace `ns` with its loopback up.
pub fn add(ns: &str) -> Result<()> {
    ip(&["netns", "add", ns])?;
    ip_in(ns, &["link", "set", "lo", "up"])?;
    Ok(())
}

/// Deletes namespace `ns`, ignoring that it may already be gone.
pub fn delete(ns: &str) {
    let _ = ip(&["netns", "delete", ns]);
}

/// Kills every process still inside `ns` (SIGKILL), then deletes it; never fails.
pub fn purge(ns: &str) {
    if let Ok(pids) = ip(&["netns", "pids", ns]) {
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    delete(ns);
}

/// The names of the namespaces starting with `prefix`.
pub fn list_with_prefix(prefix: &str) -> Vec<String> {
    ip(&["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

/// A namespace that is deleted when dropped (after a failure too).
#[derive(Debug)]
pub struct Namespace {
    name: String,
}

impl Namespace {
    /// Creates `name` (loopback up); deleted again when the value is dropped.
    pub fn create(name: &str) -> Result<Namespace> {
        add(name)?;
        Ok(Namespace {
            name: name.to_string(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        delete(&self.name);
    }
}

/// A veth pair: `a_if` in namespace `a` with `a_addr` (`IP/LEN`), `b_if` in `b` with `b_addr`,
/// both up.
pub fn veth(a: &str, a_if: &str, a_addr: &str, b: &str, b_if: &str, b_addr: &str) -> Result<()> {
    ip_in(
        a,
        &[
            "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b,
        ],
    )?;
    ip_in(a, &["addr", "add", a_addr, "dev", a_if])?;
    ip_in(b, &["addr", "add", b_addr, "dev", b_if])?;
    ip_in(a, &["link", "set", a_if, "up"])?;
    ip_in(b, &["link", "set", b_if, "up"])?;
    Ok(())
}

/// Moves the calling thread into `ns`. Sockets it opens afterwards live there; other threads
/// are not affected (network namespaces are per thread).
pub fn enter(ns: &str) -> Result<()> {
    let path = Path::new("/run/netns").join(ns);
    let file = File::open(&path).map_err(|source| Error::NotFound {
        ns: ns.to_string(),
        source,
    })?;
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|source| Error::Enter {
        ns: ns.to_string(),
        source,
    })
}

/// Runs `f` on a new thread inside `ns` and returns what it returns.
pub fn within<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let name = ns.to_string();
    std::thread::spawn(move || enter(&name).map(|()| f()))
        .join()
        .map_err(|_| Error::Panicked { ns: ns.to_string() })?
}

/// Whether this process runs as root (namespaces, veths and iptables need it).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}
