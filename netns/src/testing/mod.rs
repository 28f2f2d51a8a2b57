//! Helpers for the tests that build real network namespaces (proxy, init, testbed), in one place
//! instead of a copy per test file (feature `testing`, for `[dev-dependencies]`). They panic
//! with the failure, which is what a test wants.
//!
//! - [`sh`], [`restore`]: run a command (or `iptables-restore --noflush`) and fail the test with
//!   its stderr;
//! - [`in_ns`]: run a closure on a thread that has entered a named network namespace;
//! - [`Pair`], [`veth`], [`TestNamespace`]: namespaces joined by veth pairs, with addresses,
//!   unique names, and deleted when the test ends;
//! - [`admin`]: what a test reads from a proxy's admin port (`/ready`, `/policy`, `/metrics`),
//!   its JSON log lines, and waiting for a condition.

use std::process::Command;

pub mod admin;
mod pair;

pub use pair::{add_addrs, ip_in, unique_id, veth, Pair, TestNamespace};

/// Runs `args[0]` with the rest as arguments; panics with its stderr when it fails.
pub fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Panics with `why` unless the test runs as root (network namespaces and iptables need it).
pub fn require_root(why: &str) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "{why}: run it as root (./scripts/test.sh)"
    );
}

/// Runs `f` on a new thread that has joined the network namespace `/run/netns/{ns}`, and
/// returns what it returns. Sockets it creates stay in that namespace.
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    crate::within(ns, f).unwrap_or_else(|e| panic!("{e}"))
}

/// Builds what the testbed runs beside `portcullis` (the proxy, init and the controller) with
/// `cargo` (the caller's `env!("CARGO")`) in `repo`, so that they are current even when only the
/// CLI's tests were asked for.
pub fn build_testbed_components(cargo: &str, repo: &std::path::Path) {
    let packages = [
        "portcullis-proxy",
        "portcullis-init",
        "portcullis-controller",
    ];
    let status = Command::new(cargo)
        .args(["build", "-q"])
        .args(packages.iter().flat_map(|p| ["-p", p]))
        .current_dir(repo)
        .status()
        .expect("run cargo");
    assert!(status.success(), "building {} failed", packages.join(", "));
}

/// Feeds `input` to `ip netns exec {ns} {program} --noflush` (an `iptables-restore`).
pub fn restore(ns: &str, program: &str, input: &str) {
    crate::restore(ns, program, input).unwrap_or_else(|e| panic!("{e} (apt-get install iptables)"));
}
