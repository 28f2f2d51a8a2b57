//! `--policy-dir`: the cluster read from manifests on disk instead of the API server, for the
//! local testbed (ClusterNetworkPolicies and Nodes included, as the loader reads them). The
//! directory is polled; each change becomes a relist of every kind, which
//! [`crate::state::ClusterState`] turns into the few table updates it really implies.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use portcullis_policy::service::{derive_slices, EndpointSliceInfo, ServiceInfo};
use portcullis_policy::{NamespaceInfo, PodInfo};
use portcullis_policy_loader::fingerprint;
use tokio::sync::watch;

use crate::hub::Hub;
use crate::state::Change;

/// Why the directory's contents were not applied.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{}: not a directory", .0.display())]
    NotADirectory(PathBuf),
    /// Objects that did not load, once tables are served: the change is refused whole.
    #[error("{}", .0.join("; "))]
    Rejected(Vec<String>),
}

/// Reads the directory once into relist changes and the problems of the objects that did not
/// load, or says why it could not.
pub fn read(dir: &Path) -> Result<(Vec<Change>, Vec<String>), ReadError> {
    if !dir.is_dir() {
        return Err(ReadError::NotADirectory(dir.to_path_buf()));
    }
    let loaded = portcullis_policy_loader::load_paths(&[dir.to_path_buf()]);
    let namespaces: Vec<NamespaceInfo> = loaded.cluster.namespaces.into_values().collect();
    let mut pods: Vec<PodInfo> = Vec::new();
    let mut problems = loaded.errors;
    for pod in loaded.cluster.pods {
        if pods.iter().any(|p| p.key() == pod.key()) {
            problems.push(format!(
                "Pod {}: defined more than once; the first definition is used",
                pod.key()
            ));
        } else {
            pods.push(pod);
        }
    }
    let slices = slices_with_derived(
        &loaded.cluster.services,
        loaded.cluster.endpoint_slices,
        &pods,
    );
    Ok((
        vec![
            Change::ResetNamespaces(namespaces),
            Change::ResetPods(pods),
            Change::ResetPolicies(loaded.cluster.policies),
            Change::ResetServices(loaded.cluster.services),
            Change::ResetEndpointSlices(slices),
            Change::ResetCnps {
                cnps: loaded.cluster.cnps,
                unreadable: Vec::new(),
            },
            Change::ResetNodes(loaded.cluster.nodes.into_values().collect()),
        ],
        problems,
    ))
}

/// The EndpointSlices the manifests give, plus, for each Service with a selector and no slice
/// at all, the ones the EndpointSlice controller would write from the manifests' pods.
fn slices_with_derived(
    services: &[ServiceInfo],
    given: Vec<EndpointSliceInfo>,
    pods: &[PodInfo],
) -> Vec<EndpointSliceInfo> {
    let mut slices = given;
    for svc in services {
        let key = svc.key();
        if !slices.iter().any(|s| s.service_key() == key) {
            slices.extend(derive_slices(svc, pods));
        }
    }
    slices
}

/// Polls `dir` every `interval`, applying each change, until shutdown.
pub async fn run(
    dir: PathBuf,
    interval: Duration,
    hub: Arc<Hub>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut last_seen = None;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let d = dir.clone();
        let Ok(print) = tokio::task::spawn_blocking(move || fingerprint(&d)).await else {
            continue;
        };
        if last_seen == Some(print) {
            continue;
        }
        last_seen = Some(print);
        let d = dir.clone();
        let hub2 = hub.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let (changes, problems) = read(&d)?;
            // A file that does not parse would look like its objects were deleted: once tables
            // are served, such a change is refused whole, as the proxy's own --policy-dir does.
            if !problems.is_empty() && hub2.is_ready() {
                return Err(ReadError::Rejected(problems));
            }
            for p in &problems {
                tracing::error!(event = "object_rejected", error = %p);
            }
            let started = std::time::Instant::now();
            let applied = hub2.apply(changes);
            Ok::<_, ReadError>((applied, started.elapsed()))
        })
        .await;
        match outcome {
            Ok(Ok((applied, took))) => {
                let (namespaces, pods, policies, _) = hub.sizes();
                tracing::info!(
                    event = "cluster_loaded",
                    source = %dir.display(),
                    generation = hub.generation(),
                    namespaces,
                    pods,
                    policies,
                    tables_changed = applied.changed.len(),
                    took_ms = took.as_millis() as u64,
                );
                if !hub.is_ready() {
                    hub.mark_ready();
                }
            }
            Ok(Err(e)) => {
                tracing::error!(event = "policy_reload_failed", source = %dir.display(), error = %e, "the change did not load; the tables already served stay in force")
            }
            Err(e) => tracing::error!(error = %e, "reading the policy directory failed"),
        }
    }
}
