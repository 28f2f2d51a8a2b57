//! The daemon: re-read the pod list (and the bridge's addresses) every interval, and replace
//! the table whenever the rules they give differ from the ones last applied, or every `resync`
//! anyway (someone may have flushed the table). A list that cannot be read or parsed keeps the
//! rules in place: the last consistent binding is safer than none.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::cni::{self, CniError};
use crate::nft::{self, NftError};
use crate::node::{self, NodeError};
use crate::pods::{self, Interface, PodError};
use crate::ruleset::{self, Guard, Ruleset};

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("reading the pod list {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the pod list {path}: {source}")]
    Pods { path: PathBuf, source: PodError },
    #[error(transparent)]
    Cni(#[from] CniError),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(transparent)]
    Nft(#[from] NftError),
}

/// Where the pod list comes from.
#[derive(Debug, Clone)]
pub enum Pods {
    /// A JSON list of `{interface, mac, ips}` (see [`pods::parse`]).
    File(PathBuf),
    /// The container runtime's CNI result cache (see [`cni`]).
    CniResults(PathBuf),
}

/// Where the rules come from.
#[derive(Debug, Clone)]
pub struct Source {
    pub pods: Pods,
    /// The node's addresses given on the command line.
    pub node_ips: Vec<IpAddr>,
    /// An interface whose addresses are the node's too (the CNI bridge).
    pub bridge: Option<String>,
    pub allow_dhcp: bool,
    pub drop_unlisted: Vec<Interface>,
}

impl Source {
    /// Reads the pod list and the node's addresses now, with a warning for each pod left out.
    pub fn read(&self) -> Result<(Guard, Vec<String>), WatchError> {
        let (pods, warnings) = match &self.pods {
            Pods::File(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| WatchError::Read {
                    path: path.clone(),
                    source,
                })?;
                let pods = pods::parse(&text).map_err(|source| WatchError::Pods {
                    path: path.clone(),
                    source,
                })?;
                (pods, Vec::new())
            }
            Pods::CniResults(dir) => cni::pods(dir, self.bridge.as_deref())?,
        };
        let mut node_ips = self.node_ips.clone();
        if let Some(bridge) = &self.bridge {
            for ip in node::addresses(bridge)? {
                if !node_ips.contains(&ip) {
                    node_ips.push(ip);
                }
            }
        }
        let guard = Guard {
            pods,
            node_ips,
            allow_dhcp: self.allow_dhcp,
            drop_unlisted: self.drop_unlisted.clone(),
        };
        Ok((guard, warnings))
    }
}

/// The daemon's state: what it applied last, and when.
pub struct Watcher {
    pub source: Source,
    /// The `nft` program.
    pub nft: String,
    pub resync: Duration,
    last: Option<(String, Instant)>,
}

impl Watcher {
    pub fn new(source: Source, nft: String, resync: Duration) -> Watcher {
        Watcher {
            source,
            nft,
            resync,
            last: None,
        }
    }

    /// Reads the sources and applies the rules if they changed (or `resync` passed). Returns
    /// the ruleset when it applied one.
    pub fn step(&mut self) -> Result<Option<Ruleset>, WatchError> {
        let (guard, mut warnings) = self.source.read()?;
        let mut rules = ruleset::ruleset(&guard);
        warnings.append(&mut rules.warnings);
        rules.warnings = warnings;
        let install = rules.install();
        let fresh = match &self.last {
            Some((text, at)) => *text == install && at.elapsed() < self.resync,
            None => false,
        };
        if fresh {
            return Ok(None);
        }
        nft::apply(&self.nft, &install)?;
        self.last = Some((install, Instant::now()));
        Ok(Some(rules))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A stand-in for `nft` that appends its input to `log`.
    fn fake_nft(dir: &std::path::Path) -> (String, PathBuf) {
        let log = dir.join("applied.log");
        let script = dir.join("nft");
        let body = format!("#!/bin/sh\ncat >> '{}'\n", log.display());
        std::fs::write(&script, body).expect("write");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        (script.display().to_string(), log)
    }

    #[test]
    fn applies_on_change_and_on_resync_only_and_keeps_rules_on_a_bad_list() {
        let dir = std::env::temp_dir().join(format!("pcng-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let (nft, log) = fake_nft(&dir);
        let file = dir.join("pods.json");
        let pod = |mac: &str| {
            format!(r#"[{{"interface": "veth0", "mac": "{mac}", "ips": ["10.0.0.2"]}}]"#)
        };
        std::fs::write(&file, pod("02:00:00:00:00:01")).expect("write");
        let source = Source {
            pods: Pods::File(file.clone()),
            node_ips: vec!["10.0.0.1".parse().expect("ip")],
            bridge: None,
            allow_dhcp: false,
            drop_unlisted: Vec::new(),
        };
        let mut w = Watcher::new(source, nft, Duration::from_secs(3600));
        assert!(w.step().expect("first").is_some(), "first read applies");
        assert!(w.step().expect("same").is_none(), "nothing changed");
        std::fs::write(&file, pod("02:00:00:00:00:02")).expect("write");
        assert!(w.step().expect("changed").is_some(), "a change applies");
        std::fs::write(&file, "[{").expect("write");
        assert!(matches!(w.step(), Err(WatchError::Pods { .. })));
        std::fs::write(&file, pod("02:00:00:00:00:02")).expect("write");
        assert!(
            w.step().expect("back").is_none(),
            "same rules as before the bad list"
        );
        w.resync = Duration::ZERO;
        assert!(w.step().expect("resync").is_some(), "resync re-applies");
        let applied = std::fs::read_to_string(&log).expect("log");
        std::fs::remove_dir_all(&dir).expect("cleanup");
        assert_eq!(
            applied
                .matches("delete table bridge portcullis_guard")
                .count(),
            3
        );
    }
}
