//! portcullis-controller in the node namespace, streaming each proxy its table.

use std::fs;

use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

use portcullis_contract::ports::{CONTROLLER_ADMIN, CONTROLLER_STREAM};

use crate::queries::{admin_get, http_get_in};
use crate::sidecars::spawn_in;
use crate::{ControllerState, State, UpOptions};

/// Starts portcullis-controller in file mode in the node namespace and waits until it serves.
pub(crate) fn start_controller(
    opts: &UpOptions,
    node: &str,
    policy_dir: &Path,
    dir: &Path,
) -> Result<ControllerState> {
    let Some(binary) = &opts.binaries.controller else {
        return Err(Error::Environment("cannot find portcullis-controller: build it (cargo build -p portcullis-controller), pass --controller-bin, or use --policy-source dir".into()));
    };
    let log = dir.join("controller.log");
    let args: Vec<String> = [
        "--policy-dir",
        &policy_dir.to_string_lossy(),
        "--listen",
        &format!("0.0.0.0:{CONTROLLER_STREAM}"),
        "--admin-listen",
        &format!("0.0.0.0:{CONTROLLER_ADMIN}"),
        "--poll-interval",
        "100ms",
        "--shutdown-delay",
        "0s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let pid = spawn_in(node, binary, &args, &[], &log, None)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !matches!(http_get_in(node, CONTROLLER_ADMIN, "/ready"), Ok((200, _))) {
        if Instant::now() > deadline {
            let text = fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(10).collect();
            return Err(Error::Timeout(format!(
                "portcullis-controller is not ready after 20s; last log lines:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(ControllerState { pid, log })
}

/// Stops the testbed's controller (SIGTERM, then SIGKILL after 5 s) and waits until every proxy
/// has noticed (its table is marked stale); the proxies keep enforcing their last tables.
pub fn stop_controller(state: &State) -> Result<()> {
    let Some(c) = &state.controller else {
        return Err(Error::Usage(format!(
            "testbed {:?} has no controller (its proxies read the policy directory)",
            state.name
        )));
    };
    let group = nix::unistd::Pid::from_raw(-(c.pid as i32));
    let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while nix::sys::signal::kill(group, None).is_ok() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(10);
    for pod in state.pods.iter().filter(|p| p.injected) {
        loop {
            let stale = admin_get(&pod.netns, "/policy")
                .ok()
                .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
                .and_then(|v| v.get("stale").and_then(|s| s.as_bool()))
                .unwrap_or(false);
            if stale {
                break;
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout(format!(
                    "the proxy of {} did not notice the controller stopping",
                    pod.key
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}
