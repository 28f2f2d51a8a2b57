//! Kube mode: one watch per kind (Namespaces, Pods, NetworkPolicies, cluster-wide), turned into
//! [`Change`]s for the hub.
//!
//! kube-runtime's watcher does the protocol work: the initial list, resuming from the last
//! resourceVersion (bookmarks keep it fresh), and a full relist when the API server answers
//! 410 Gone. A relist arrives as `Init`, `InitApply`..., `InitDone`; it is buffered and applied as
//! one `Reset*` change, so objects deleted while the watch was down disappear too. Only what
//! policy needs is kept from each object ([`PodInfo`], [`NamespaceInfo`], validated policies).

use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource};
use portcullis_policy::cluster::SourcedPolicy;
use portcullis_policy::{NamespaceInfo, PodInfo};
use tokio::sync::{mpsc, watch};

use crate::hub::Hub;
use crate::state::Change;
use crate::telemetry;

/// Which kinds have completed their first list; the hub is ready when all have.
#[derive(Default)]
struct Listed {
    namespaces: bool,
    pods: bool,
    policies: bool,
}

/// What one watch event means for the cluster state, per kind.
trait Kind: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static {
    const NAME: &'static str;
    fn upsert(obj: &Self) -> Option<Change>;
    fn gone(obj: &Self) -> Change;
    fn reset(objs: &[Self]) -> Change;
}

impl Kind for Namespace {
    const NAME: &'static str = "namespaces";
    fn upsert(obj: &Self) -> Option<Change> {
        Some(Change::Namespace(NamespaceInfo::from_k8s(obj)))
    }
    fn gone(obj: &Self) -> Change {
        Change::NamespaceGone(obj.metadata.name.clone().unwrap_or_default())
    }
    fn reset(objs: &[Self]) -> Change {
        Change::ResetNamespaces(objs.iter().map(NamespaceInfo::from_k8s).collect())
    }
}

impl Kind for Pod {
    const NAME: &'static str = "pods";
    fn upsert(obj: &Self) -> Option<Change> {
        match PodInfo::from_k8s(obj, None) {
            Ok(pod) => Some(Change::Pod(pod)),
            Err(e) => {
                // Keep what was known of the pod rather than forget it on a bad update.
                tracing::error!(event = "object_rejected", error = %e);
                metrics::counter!(telemetry::OBJECTS_REJECTED).increment(1);
                None
            }
        }
    }
    fn gone(obj: &Self) -> Change {
        Change::PodGone {
            namespace: obj.metadata.namespace.clone().unwrap_or_default(),
            name: obj.metadata.name.clone().unwrap_or_default(),
        }
    }
    fn reset(objs: &[Self]) -> Change {
        Change::ResetPods(
            objs.iter()
                .filter_map(|p| match Self::upsert(p) {
                    Some(Change::Pod(pod)) => Some(pod),
                    _ => None,
                })
                .collect(),
        )
    }
}

impl Kind for NetworkPolicy {
    const NAME: &'static str = "networkpolicies";
    fn upsert(obj: &Self) -> Option<Change> {
        Some(Change::Policy(Box::new(sourced(obj))))
    }
    fn gone(obj: &Self) -> Change {
        Change::PolicyGone {
            namespace: obj.metadata.namespace.clone().unwrap_or_default(),
            name: obj.metadata.name.clone().unwrap_or_default(),
        }
    }
    fn reset(objs: &[Self]) -> Change {
        Change::ResetPolicies(objs.iter().map(sourced).collect())
    }
}

fn sourced(policy: &NetworkPolicy) -> SourcedPolicy {
    let mut policy = policy.clone();
    // Policy needs spec, name and namespace only; managedFields alone can outweigh the spec.
    policy.metadata.managed_fields = None;
    policy.metadata.annotations = None;
    SourcedPolicy {
        policy,
        source: None,
    }
}

/// Watches the three kinds until shutdown, applying changes to the hub in batches.
pub async fn run(client: Client, hub: Arc<Hub>, mut shutdown: watch::Receiver<bool>) {
    let (tx, mut rx) = mpsc::channel::<(&'static str, Batch)>(1024);
    let config = watcher::Config::default();
    let tasks = [
        tokio::spawn(forward(
            watcher::watcher(Api::<Namespace>::all(client.clone()), config.clone()),
            tx.clone(),
        )),
        tokio::spawn(forward(
            watcher::watcher(Api::<Pod>::all(client.clone()), config.clone()),
            tx.clone(),
        )),
        tokio::spawn(forward(
            watcher::watcher(Api::<NetworkPolicy>::all(client), config),
            tx,
        )),
    ];
    let mut listed = Listed::default();
    loop {
        let first = tokio::select! {
            m = rx.recv() => m,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let Some(first) = first else { break };
        // Whatever else is already queued goes into the same batch: one recompile for a burst.
        let mut batch = vec![first];
        while batch.len() < 256 {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let mut changes = Vec::new();
        for (kind, b) in batch {
            match b {
                Batch::Change(c) => changes.push(c),
                Batch::Listed(c) => {
                    changes.push(c);
                    match kind {
                        "namespaces" => listed.namespaces = true,
                        "pods" => listed.pods = true,
                        _ => listed.policies = true,
                    }
                }
            }
        }
        let hub2 = hub.clone();
        let started = std::time::Instant::now();
        let applied = tokio::task::spawn_blocking(move || hub2.apply(changes)).await;
        metrics::histogram!(telemetry::APPLY_SECONDS).record(started.elapsed().as_secs_f64());
        if let Err(e) = applied {
            tracing::error!(error = %e, "applying changes failed");
        }
        if !hub.is_ready() && listed.namespaces && listed.pods && listed.policies {
            let (namespaces, pods, policies, tables) = hub.sizes();
            tracing::info!(
                event = "cluster_listed",
                namespaces,
                pods,
                policies,
                tables,
                "every kind is listed; serving tables"
            );
            hub.mark_ready();
        }
    }
    for t in tasks {
        t.abort();
    }
}

/// What a watcher hands the applying loop.
enum Batch {
    Change(Change),
    /// A complete list (first one, or a relist after 410 Gone or a lost watch).
    Listed(Change),
}

/// Drives one watcher, buffering relists, and sends its changes on.
async fn forward<K, S>(events: S, tx: mpsc::Sender<(&'static str, Batch)>)
where
    K: Kind,
    S: Stream<Item = Result<Event<K>, watcher::Error>> + Send,
{
    let events = events.default_backoff();
    futures_util::pin_mut!(events);
    let mut relist: Option<Vec<K>> = None;
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                // The backoff retries; the last good tables keep being served meanwhile.
                tracing::warn!(event = "watch_error", kind = K::NAME, error = %e);
                metrics::counter!(telemetry::WATCH_ERRORS, "kind" => K::NAME).increment(1);
                continue;
            }
        };
        metrics::counter!(telemetry::WATCH_EVENTS, "kind" => K::NAME).increment(1);
        let out = match event {
            Event::Init => {
                relist = Some(Vec::new());
                None
            }
            Event::InitApply(obj) => {
                relist.get_or_insert_with(Vec::new).push(obj);
                None
            }
            Event::InitDone => {
                let objs = relist.take().unwrap_or_default();
                tracing::info!(event = "listed", kind = K::NAME, count = objs.len());
                Some(Batch::Listed(K::reset(&objs)))
            }
            Event::Apply(obj) => K::upsert(&obj).map(Batch::Change),
            Event::Delete(obj) => Some(Batch::Change(K::gone(&obj))),
        };
        if let Some(out) = out {
            if tx.send((K::NAME, out)).await.is_err() {
                return;
            }
        }
    }
}

/// Builds the client: in-cluster service account, or the local kubeconfig.
pub async fn client() -> anyhow::Result<Client> {
    let client = tokio::time::timeout(Duration::from_secs(30), Client::try_default())
        .await
        .map_err(|_| anyhow::anyhow!("timed out loading Kubernetes credentials"))??;
    Ok(client)
}
