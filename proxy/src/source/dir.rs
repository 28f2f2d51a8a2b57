//! `--policy-dir`: manifests on disk, polled for changes, compiled in this process.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use portcullis_policy::compile::PeerNames;
use portcullis_policy::service::ServiceMap;
use portcullis_policy::{compile, PodTable};
pub use portcullis_policy_loader::fingerprint;

use super::PodIdentity;
use crate::store::{PolicyStore, Services};
use crate::telemetry::POLICY_RELOAD_FAILURES;

pub struct DirSource {
    dir: PathBuf,
    interval: Duration,
}

/// The outcome of reading the directory once.
#[derive(Debug)]
pub enum DirLoad {
    /// This pod's table, and problems that did not stop it (reported, not fatal on first load).
    Table {
        table: Arc<PodTable>,
        /// Which pod owns each address (compile returns them beside the tables).
        peer_names: Arc<PeerNames>,
        /// Services with a virtual IP, resolved (slices derived from selectors where the
        /// manifests give none).
        services: ServiceMap,
        problems: Vec<String>,
    },
    /// Nothing usable for this pod.
    Failed(Vec<String>),
}

impl DirSource {
    pub fn new(dir: PathBuf, interval: Duration) -> Self {
        DirSource { dir, interval }
    }

    pub async fn run(self, pod: PodIdentity, store: Arc<PolicyStore>) {
        let source = format!("dir:{}", self.dir.display());
        let mut last_seen: Option<u64> = None;
        let mut interval = tokio::time::interval(self.interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let dir = self.dir.clone();
            let Ok(fingerprint) = tokio::task::spawn_blocking(move || fingerprint(&dir)).await
            else {
                continue;
            };
            if Some(fingerprint) == last_seen {
                continue;
            }
            last_seen = Some(fingerprint);
            let dir = self.dir.clone();
            let pod_for_load = pod.clone();
            let Ok(outcome) = tokio::task::spawn_blocking(move || load(&dir, &pod_for_load)).await
            else {
                continue;
            };
            apply(outcome, &pod, &store, &source);
        }
    }
}

/// Publishes a load, or keeps the last good table when the change does not load cleanly.
pub fn apply(outcome: DirLoad, pod: &PodIdentity, store: &PolicyStore, source: &str) {
    let have_table = store.current().is_some();
    match outcome {
        DirLoad::Table {
            table,
            peer_names,
            services,
            problems,
        } if problems.is_empty() || !have_table => {
            for p in &problems {
                tracing::error!(event = "policy_rejected", source, error = %p, "left out of the table");
            }
            if !pod.ips.is_empty() && table.ips != pod.ips {
                tracing::warn!(
                    pod_ips = %join(&pod.ips),
                    manifest_ips = %join(&table.ips),
                    "POD_IPS differ from the pod's IPs in the manifests; the manifests are used"
                );
            }
            if store.services().map != services {
                tracing::info!(
                    event = "services_loaded",
                    source,
                    services = services.services.len()
                );
                store.set_services(Services::new(services));
            }
            // The slot the controller's `peers` lines fill: the proxy looks in one place.
            store.set_peer_names(peer_names);
            let isolated_ingress = table.ingress.isolated_by.join(",");
            let isolated_egress = table.egress.isolated_by.join(",");
            if let Some(generation) = store.publish(table, source, None) {
                tracing::info!(
                    event = "policy_loaded",
                    generation,
                    source,
                    ingress_isolated_by = %isolated_ingress,
                    egress_isolated_by = %isolated_egress,
                );
            }
        }
        DirLoad::Table { problems, .. } | DirLoad::Failed(problems) => {
            metrics::counter!(POLICY_RELOAD_FAILURES).increment(1);
            for p in &problems {
                tracing::error!(event = "policy_rejected", source, error = %p);
            }
            if have_table {
                tracing::error!(
                    event = "policy_reload_failed",
                    source,
                    generation = store.generation(),
                    "the change did not load; the previous table stays in use"
                );
            } else {
                tracing::error!(
                    event = "policy_reload_failed",
                    source,
                    "no table for {} yet; connections are refused until one loads",
                    pod.key()
                );
            }
        }
    }
}

/// Reads and compiles the directory, and picks this pod's table.
pub fn load(dir: &Path, pod: &PodIdentity) -> DirLoad {
    let loaded = portcullis_policy_loader::load_paths(&[dir.to_path_buf()]);
    let compiled = compile(&loaded.cluster);
    let mut problems = loaded.errors;
    problems.extend(compiled.errors.iter().map(ToString::to_string));
    match compiled.table(&pod.key()) {
        Some(table) => DirLoad::Table {
            table: table.clone(),
            peer_names: compiled.peer_names.clone(),
            services: ServiceMap::from_cluster(&loaded.cluster),
            problems,
        },
        None => {
            problems.push(format!(
                "pod {} is not among the Pods in {}; it needs its manifest (labels, IPs) to get a table",
                pod.key(),
                dir.display()
            ));
            DirLoad::Failed(problems)
        }
    }
}

/// `a,b`: addresses as one log field.
fn join(ips: &[std::net::IpAddr]) -> String {
    ips.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x, labels: {app: a}}\nstatus: {podIP: 10.0.0.1}\n";
    const DENY: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {}}\n";
    const BROKEN: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: broken, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: not-a-cidr}}]}]\n";

    fn pod() -> PodIdentity {
        PodIdentity {
            namespace: "x".into(),
            name: "a".into(),
            ips: vec![],
        }
    }

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pc-proxy-dir-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("mkdir");
        d
    }

    #[test]
    fn a_broken_change_keeps_the_last_good_table() {
        let dir = tempdir("broken");
        std::fs::write(dir.join("pod.yaml"), POD).expect("write");
        let store = PolicyStore::new();
        apply(load(&dir, &pod()), &pod(), &store, "test");
        assert_eq!(store.generation(), 1);
        assert!(!store.current().expect("table").table.ingress.is_isolated());

        std::fs::write(dir.join("deny.yaml"), DENY).expect("write");
        apply(load(&dir, &pod()), &pod(), &store, "test");
        assert_eq!(store.generation(), 2);
        assert!(store.current().expect("table").table.ingress.is_isolated());

        std::fs::write(dir.join("z-broken.yaml"), BROKEN).expect("write");
        let outcome = load(&dir, &pod());
        match &outcome {
            DirLoad::Table { problems, .. } => {
                assert!(
                    problems.iter().any(|p| p.contains("x/broken")),
                    "{problems:?}"
                )
            }
            other => panic!("expected a table with problems, got {other:?}"),
        }
        apply(outcome, &pod(), &store, "test");
        assert_eq!(store.generation(), 2, "the last good table stays");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_pod_missing_from_the_manifests_gets_no_table() {
        let dir = tempdir("missing");
        std::fs::write(dir.join("deny.yaml"), DENY).expect("write");
        let store = PolicyStore::new();
        let outcome = load(&dir, &pod());
        assert!(matches!(&outcome, DirLoad::Failed(p) if p.iter().any(|m| m.contains("x/a"))));
        apply(outcome, &pod(), &store, "test");
        assert!(store.current().is_none());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn the_fingerprint_changes_with_content_and_ignores_hidden_entries() {
        let dir = tempdir("fp");
        std::fs::write(dir.join("pod.yaml"), POD).expect("write");
        let before = fingerprint(&dir);
        assert_eq!(before, fingerprint(&dir));
        std::fs::create_dir_all(dir.join(".staging")).expect("mkdir");
        assert_eq!(before, fingerprint(&dir));
        std::fs::write(dir.join("deny.yaml"), DENY).expect("write");
        assert_ne!(before, fingerprint(&dir));
        std::fs::remove_dir_all(&dir).ok();
    }
}
