//! What `up` is asked for: the manifests, the binaries it runs, where proxies get tables.

use std::path::PathBuf;

use crate::error::{Error, Result};
use portcullis_policy::matrix::Probe;
use serde::{Deserialize, Serialize};

/// Where to find the binaries the testbed runs.
pub struct Binaries {
    pub proxy: PathBuf,
    pub init: PathBuf,
    /// Needed only when the proxies get their tables from the controller.
    pub controller: Option<PathBuf>,
    /// Needed only with `--node-guard`.
    pub node_guard: Option<PathBuf>,
}

impl Binaries {
    /// Next to this executable (cargo puts all workspace binaries together), else on PATH.
    pub fn locate(
        proxy: Option<PathBuf>,
        init: Option<PathBuf>,
        controller: Option<PathBuf>,
        node_guard: Option<PathBuf>,
    ) -> Result<Binaries> {
        let find = |explicit: Option<PathBuf>, name: &str| -> Result<PathBuf> {
            if let Some(p) = explicit {
                return Ok(p);
            }
            let beside = std::env::current_exe()
                .ok()
                .and_then(|e| e.parent().map(|d| d.join(name)));
            if let Some(p) = beside.filter(|p| p.is_file()) {
                return Ok(p);
            }
            for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
                let p = dir.join(name);
                if p.is_file() {
                    return Ok(p);
                }
            }
            Err(Error::Environment(format!(
                "cannot find {name}: build it (cargo build -p {name}) or pass its path"
            )))
        };
        Ok(Binaries {
            proxy: find(proxy, "portcullis-proxy")?,
            init: find(init, "portcullis-init")?,
            controller: find(controller, "portcullis-controller").ok(),
            node_guard: find(node_guard, "portcullis-node-guard").ok(),
        })
    }
}

pub struct UpOptions {
    pub name: String,
    pub files: Vec<PathBuf>,
    pub binaries: Binaries,
    pub proxy_args: Vec<String>,
    pub policy_source: PolicySource,
    /// `--probe`: ports every pod serves (and `probe` probes by default) on top of those the
    /// manifests name.
    pub extra_probes: Vec<Probe>,
    /// `PORTCULLIS_ENFORCE_UDP` for every init container and proxy; when true the proxy gets
    /// CAP_NET_ADMIN (ambient, as the injector gives it) to read the UDP/SCTP queue.
    pub enforce_udp: bool,
    /// Run `portcullis-node-guard` on the node (`guard.rs`): every pod's bridge port bound to
    /// its MAC and IP, the node's addresses accepted only from the node side.
    pub node_guard: bool,
}

/// Where the testbed's proxies get their tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PolicySource {
    /// As in a cluster: portcullis-controller (file mode) in the node namespace streams each
    /// proxy its table (`--controller`).
    Controller,
    /// Each proxy reads and compiles the policy directory itself (`--policy-dir`).
    Dir,
}
