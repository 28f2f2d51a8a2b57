//! Kube mode: one watch per kind (Namespaces, Pods, NetworkPolicies, Services, EndpointSlices,
//! cluster-wide; ClusterNetworkPolicies and Nodes when the CRD is installed, see
//! [`crate::cnp_watch`]), turned into [`Change`]s for the hub.
//!
//! kube-runtime's watcher does the protocol work: the initial list, resuming from the last
//! resourceVersion (bookmarks keep it fresh), and a full relist when the API server answers
//! 410 Gone. A relist arrives as `Init`, `InitApply`..., `InitDone`; it is buffered and applied as
//! one `Reset*` change, so objects deleted while the watch was down disappear too. Only what
//! policy needs is kept from each object ([`PodInfo`], [`NamespaceInfo`], validated policies,
//! [`ServiceInfo`], [`EndpointSliceInfo`]).

use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource};
use portcullis_policy::cluster::SourcedPolicy;
use portcullis_policy::protection::Tracker;
use portcullis_policy::service::{EndpointSliceInfo, ServiceInfo};
use portcullis_policy::{NamespaceInfo, ObjectError, PodInfo};
use tokio::sync::{mpsc, watch};

use crate::hub::Hub;
use crate::protection::{self, Protection};
use crate::state::Change;
use crate::telemetry;

/// Which kinds have completed their first list; the hub is ready when all have.
#[derive(Default)]
struct Listed {
    namespaces: bool,
    pods: bool,
    policies: bool,
    services: bool,
    slices: bool,
    /// Listed, or known not to exist (no CRD): [`crate::cnp_watch`] says which.
    cnps: bool,
    nodes: bool,
}

impl Listed {
    fn set(&mut self, kind: &str) {
        match kind {
            Namespace::NAME => self.namespaces = true,
            Pod::NAME => self.pods = true,
            NetworkPolicy::NAME => self.policies = true,
            Service::NAME => self.services = true,
            EndpointSlice::NAME => self.slices = true,
            crate::cnp_watch::CNPS => self.cnps = true,
            crate::cnp_watch::NODES => self.nodes = true,
            _ => {}
        }
    }

    fn all(&self) -> bool {
        self.namespaces
            && self.pods
            && self.policies
            && self.services
            && self.slices
            && self.cnps
            && self.nodes
    }
}

/// What one watch event means for the cluster state, per kind.
pub(crate) trait Kind:
    Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static
{
    const NAME: &'static str;
    fn upsert(obj: &Self) -> Option<Change>;
    fn gone(obj: &Self) -> Change;
    fn reset(objs: &[Self]) -> Change;
    /// What the object says about which pods are protected (Pods and Namespaces only).
    fn protection(_tracker: &mut Tracker, _event: Observed<'_, Self>) {}
}

/// A watch event as the protection tracker sees it.
pub(crate) enum Observed<'a, K> {
    Upsert(&'a K),
    Gone(&'a K),
    Relisted(&'a [K]),
}

impl Kind for Namespace {
    const NAME: &'static str = "namespaces";
    fn protection(tracker: &mut Tracker, event: Observed<'_, Self>) {
        match event {
            Observed::Upsert(ns) => tracker.namespace(ns),
            Observed::Gone(ns) => tracker.namespace_gone(ns.metadata.name.as_deref().unwrap_or("")),
            Observed::Relisted(all) => tracker.reset_namespaces(all),
        }
    }
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
    fn protection(tracker: &mut Tracker, event: Observed<'_, Self>) {
        let version = Some(protection::VERSION);
        match event {
            Observed::Upsert(pod) => tracker.pod(pod, version),
            Observed::Gone(pod) => tracker.pod_gone(
                pod.metadata.namespace.as_deref().unwrap_or(""),
                pod.metadata.name.as_deref().unwrap_or(""),
            ),
            Observed::Relisted(all) => tracker.reset_pods(all, version),
        }
    }
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
        let mut pods = Vec::with_capacity(objs.len());
        let mut unreadable = Vec::new();
        for obj in objs {
            match Self::upsert(obj) {
                Some(Change::Pod(pod)) => pods.push(pod),
                _ => unreadable.push(format!(
                    "{}/{}",
                    obj.metadata.namespace.as_deref().unwrap_or("default"),
                    obj.metadata.name.as_deref().unwrap_or_default()
                )),
            }
        }
        if unreadable.is_empty() {
            Change::ResetPods(pods)
        } else {
            // Rejected, not deleted: what was known of them stays.
            Change::ResetPodsKeeping { pods, unreadable }
        }
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

/// An object that cannot be read: logged and counted; what was known of it stays.
fn rejected(e: &ObjectError) {
    tracing::error!(event = "object_rejected", error = %e);
    metrics::counter!(telemetry::OBJECTS_REJECTED).increment(1);
}

/// A relist of a kind read with `read`: objects that cannot be read are left out of the reset,
/// and so disappear (unlike pods, whose last state is kept: a Service or slice that cannot be
/// read has no safe last state to route by, and no backend is better than a wrong one).
fn read_all<K, T>(objs: &[K], read: impl Fn(&K) -> Result<T, ObjectError>) -> Vec<T> {
    objs.iter()
        .filter_map(|o| read(o).map_err(|e| rejected(&e)).ok())
        .collect()
}

impl Kind for Service {
    const NAME: &'static str = "services";
    fn upsert(obj: &Self) -> Option<Change> {
        match ServiceInfo::from_k8s(obj, None) {
            Ok(svc) => Some(Change::Service(svc)),
            Err(e) => {
                rejected(&e);
                // Not routable any more: remove it rather than keep routing by an old version.
                Some(Self::gone(obj))
            }
        }
    }
    fn gone(obj: &Self) -> Change {
        Change::ServiceGone {
            namespace: obj.metadata.namespace.clone().unwrap_or_default(),
            name: obj.metadata.name.clone().unwrap_or_default(),
        }
    }
    fn reset(objs: &[Self]) -> Change {
        Change::ResetServices(read_all(objs, |o| ServiceInfo::from_k8s(o, None)))
    }
}

impl Kind for EndpointSlice {
    const NAME: &'static str = "endpointslices";
    fn upsert(obj: &Self) -> Option<Change> {
        match EndpointSliceInfo::from_k8s(obj, None) {
            Ok(slice) => Some(Change::EndpointSlice(slice)),
            Err(e) => {
                rejected(&e);
                Some(Self::gone(obj))
            }
        }
    }
    fn gone(obj: &Self) -> Change {
        Change::EndpointSliceGone {
            namespace: obj.metadata.namespace.clone().unwrap_or_default(),
            name: obj.metadata.name.clone().unwrap_or_default(),
        }
    }
    fn reset(objs: &[Self]) -> Change {
        Change::ResetEndpointSlices(read_all(objs, |o| EndpointSliceInfo::from_k8s(o, None)))
    }
}

fn sourced(policy: &NetworkPolicy) -> SourcedPolicy {
    let mut policy = policy.clone();
    // Policy needs spec, name, namespace and the staged annotation only; managedFields alone
    // can outweigh the spec.
    policy.metadata.managed_fields = None;
    policy.metadata.annotations = staged_only(policy.metadata.annotations.take());
    SourcedPolicy {
        policy,
        source: None,
    }
}

/// Of an object's annotations, only `portcullis.dev/staged`, which policy reads.
pub(crate) fn staged_only(
    annotations: Option<std::collections::BTreeMap<String, String>>,
) -> Option<std::collections::BTreeMap<String, String>> {
    let kept: std::collections::BTreeMap<String, String> = annotations?
        .into_iter()
        .filter(|(k, _)| k == portcullis_contract::keys::STAGED)
        .collect();
    (!kept.is_empty()).then_some(kept)
}

/// Watches the five kinds (and ClusterNetworkPolicies and Nodes while their CRD is installed)
/// until shutdown, applying changes to the hub in batches.
pub async fn run(
    client: Client,
    hub: Arc<Hub>,
    protection: Arc<Protection>,
    cnp_status: Arc<crate::cnp_watch::CnpStatus>,
    mut shutdown: watch::Receiver<bool>,
) {
    let (tx, mut rx) = mpsc::channel::<(&'static str, Batch)>(1024);
    let cnps = tokio::spawn(crate::cnp_watch::supervise(
        client.clone(),
        tx.clone(),
        cnp_status,
    ));
    let tasks = spawn_watchers(client, tx, protection);
    let mut listed = Listed::default();
    loop {
        let first = tokio::select! {
            m = rx.recv() => m,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let Some(first) = first else { break };
        // Whatever else is already queued goes into the same batch: one recompile for a burst.
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        apply_batch(&hub, batch, &mut listed).await;
    }
    for t in tasks {
        t.abort();
    }
    cnps.abort();
}

/// Messages applied in one recompile at most.
const MAX_BATCH: usize = 256;

/// One watcher task per kind, each sending its changes on `tx`.
fn spawn_watchers(
    client: Client,
    tx: mpsc::Sender<(&'static str, Batch)>,
    protection: Arc<Protection>,
) -> [tokio::task::JoinHandle<()>; 5] {
    let config = watcher::Config::default();
    [
        tokio::spawn(forward(
            watcher::watcher(Api::<Namespace>::all(client.clone()), config.clone()),
            tx.clone(),
            protection.clone(),
        )),
        tokio::spawn(forward(
            watcher::watcher(Api::<Pod>::all(client.clone()), config.clone()),
            tx.clone(),
            protection.clone(),
        )),
        tokio::spawn(forward(
            watcher::watcher(Api::<NetworkPolicy>::all(client.clone()), config.clone()),
            tx.clone(),
            protection.clone(),
        )),
        tokio::spawn(forward(
            watcher::watcher(Api::<Service>::all(client.clone()), config.clone()),
            tx.clone(),
            protection.clone(),
        )),
        tokio::spawn(forward(
            watcher::watcher(Api::<EndpointSlice>::all(client), config),
            tx,
            protection,
        )),
    ]
}

/// Applies one batch to the hub (off the runtime's threads), and marks the hub ready once every
/// kind has been listed.
async fn apply_batch(hub: &Arc<Hub>, batch: Vec<(&'static str, Batch)>, listed: &mut Listed) {
    let mut changes = Vec::new();
    for (kind, b) in batch {
        match b {
            Batch::Change(c) => changes.push(c),
            Batch::Listed(c) => {
                changes.push(c);
                listed.set(kind);
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
    if !hub.is_ready() && listed.all() {
        let (namespaces, pods, policies, tables) = hub.sizes();
        let (cluster_network_policies, _) = hub.cnp_sizes();
        tracing::info!(
            event = "cluster_listed",
            namespaces,
            pods,
            policies,
            cluster_network_policies,
            services = hub.service_count(),
            tables,
            "every kind is listed; serving tables"
        );
        hub.mark_ready();
    }
}

/// What a watcher hands the applying loop.
pub(crate) enum Batch {
    Change(Change),
    /// A complete list (first one, or a relist after 410 Gone or a lost watch).
    Listed(Change),
}

/// Drives one watcher, buffering relists, and sends its changes on.
pub(crate) async fn forward<K, S>(
    events: S,
    tx: mpsc::Sender<(&'static str, Batch)>,
    protection: Arc<Protection>,
) where
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
                protection.update(|t| K::protection(t, Observed::Relisted(&objs)));
                Some(Batch::Listed(K::reset(&objs)))
            }
            Event::Apply(obj) => {
                protection.update(|t| K::protection(t, Observed::Upsert(&obj)));
                K::upsert(&obj).map(Batch::Change)
            }
            Event::Delete(obj) => {
                protection.update(|t| K::protection(t, Observed::Gone(&obj)));
                Some(Batch::Change(K::gone(&obj)))
            }
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

#[cfg(test)]
mod tests {
    //! Conversion of recorded API objects, and how a watcher's events become changes. The same
    //! recordings drive `tests/replay.rs` through a real watcher.

    use kube::core::{ObjectList, WatchEvent};
    use portcullis_policy::Protocol;

    use super::*;

    const PODS_PAGE_1: &str = include_str!("../tests/recorded/pods-list-1-page-1.json");
    const PODS_PAGE_2: &str = include_str!("../tests/recorded/pods-list-1-page-2.json");
    const NAMESPACES: &str = include_str!("../tests/recorded/namespaces-list.json");
    const POLICIES: &str = include_str!("../tests/recorded/networkpolicies-list.json");

    fn list<K: Clone + serde::de::DeserializeOwned>(json: &str) -> Vec<K> {
        serde_json::from_str::<ObjectList<K>>(json).unwrap().items
    }

    fn pods() -> Vec<Pod> {
        let mut pods = list::<Pod>(PODS_PAGE_1);
        pods.extend(list::<Pod>(PODS_PAGE_2));
        pods
    }

    fn pod(pods: &[PodInfo], key: &str) -> PodInfo {
        pods.iter()
            .find(|p| p.key() == key)
            .unwrap_or_else(|| panic!("{key} missing"))
            .clone()
    }

    #[test]
    fn every_recorded_watch_line_parses_as_kube_does() {
        fn check<K: Clone + serde::de::DeserializeOwned>(ndjson: &str) -> Vec<String> {
            ndjson
                .lines()
                .map(
                    |l| match serde_json::from_str::<WatchEvent<K>>(l).unwrap() {
                        WatchEvent::Added(_) => "ADDED".to_string(),
                        WatchEvent::Modified(_) => "MODIFIED".into(),
                        WatchEvent::Deleted(_) => "DELETED".into(),
                        WatchEvent::Bookmark(b) => {
                            format!("BOOKMARK {}", b.metadata.resource_version)
                        }
                        WatchEvent::Error(s) => format!("ERROR {} {}", s.code, s.reason),
                    },
                )
                .collect()
        }
        let rec = |f: &str| {
            std::fs::read_to_string(format!("{}/tests/recorded/{f}", env!("CARGO_MANIFEST_DIR")))
                .unwrap()
        };
        assert_eq!(
            check::<Pod>(&rec("pods-watch-1.ndjson")),
            ["ADDED", "MODIFIED", "MODIFIED", "BOOKMARK 184620"]
        );
        assert_eq!(
            check::<Pod>(&rec("pods-watch-2-expired.ndjson")),
            ["ERROR 410 Expired"]
        );
        assert_eq!(
            check::<Pod>(&rec("pods-watch-3.ndjson")),
            ["DELETED", "BOOKMARK 185100"]
        );
        assert_eq!(
            check::<Pod>(&rec("pods-watch-4.ndjson")),
            ["ADDED", "MODIFIED"]
        );
        assert_eq!(
            check::<Namespace>(&rec("namespaces-watch-1.ndjson")),
            ["MODIFIED", "BOOKMARK 184620"]
        );
        assert_eq!(
            check::<NetworkPolicy>(&rec("networkpolicies-watch-1.ndjson")),
            ["MODIFIED", "BOOKMARK 184620"]
        );
        assert_eq!(
            check::<Service>(&rec("services-watch-1.ndjson")),
            ["MODIFIED", "DELETED", "BOOKMARK 184620"]
        );
        assert_eq!(
            check::<EndpointSlice>(&rec("endpointslices-watch-1.ndjson")),
            ["MODIFIED", "MODIFIED", "DELETED", "BOOKMARK 184620"]
        );
    }

    #[test]
    fn services_and_slices_keep_what_enforcement_needs() {
        let Change::ResetServices(services) =
            Service::reset(&list(include_str!("../tests/recorded/services-list.json")))
        else {
            panic!("not a Service reset")
        };
        assert_eq!(services.len(), 5);
        let frontend = services
            .iter()
            .find(|s| s.key() == "shop/frontend")
            .unwrap();
        assert_eq!(frontend.cluster_ips.len(), 2, "both families");
        assert_eq!(
            frontend.ports[0].target_port,
            portcullis_policy::service::TargetPort::Name("http".into())
        );
        let redis = services.iter().find(|s| s.key() == "shop/redis").unwrap();
        assert!(redis.headless && redis.cluster_ips.is_empty());
        let Change::ResetEndpointSlices(slices) = EndpointSlice::reset(&list(include_str!(
            "../tests/recorded/endpointslices-list.json"
        ))) else {
            panic!("not a slice reset")
        };
        assert_eq!(slices.len(), 6);
        let api_server = slices.iter().find(|s| s.service == "kubernetes").unwrap();
        assert_eq!(
            api_server.endpoints[0].pod, None,
            "not a pod: judged as an IP"
        );
        let v6 = slices.iter().find(|s| s.name == "frontend-q9x4w").unwrap();
        assert_eq!(
            v6.endpoints[0].pod.as_deref(),
            Some("shop/frontend-6d8f7b9c5-x2kqp")
        );
        assert!(v6.endpoints[0].ip.is_ipv6());

        // A slice without its Service label is unreadable: removed, never kept half-known.
        let mut bad: EndpointSlice =
            list::<EndpointSlice>(include_str!("../tests/recorded/endpointslices-list.json"))
                .remove(2);
        bad.metadata.labels = None;
        assert!(matches!(
            EndpointSlice::upsert(&bad),
            Some(Change::EndpointSliceGone { .. })
        ));
    }

    #[test]
    fn pods_keep_what_policy_needs() {
        let Change::ResetPods(infos) = Pod::reset(&pods()) else {
            panic!("not a pod reset")
        };
        assert_eq!(infos.len(), 8);
        let frontend = pod(&infos, "shop/frontend-6d8f7b9c5-x2kqp");
        assert_eq!(
            frontend.ips,
            [
                "10.244.1.17".parse::<std::net::IpAddr>().unwrap(),
                "fd00:10:244:1::11".parse().unwrap()
            ]
        );
        assert_eq!(frontend.host_ip, Some("10.0.1.12".parse().unwrap()));
        assert_eq!(frontend.labels["app"], "frontend");
        assert_eq!(
            frontend
                .named_port("metrics", Protocol::Tcp)
                .collect::<Vec<_>>(),
            [9102]
        );
        let coredns = pod(&infos, "kube-system/coredns-7db6d8ff4d-4xzpl");
        assert_eq!(
            coredns.named_port("dns", Protocol::Udp).collect::<Vec<_>>(),
            [53]
        );
        assert_eq!(coredns.named_port("dns", Protocol::Tcp).count(), 0);
        assert!(pod(&infos, "kube-system/kube-proxy-8wq2n").host_network);
        assert!(pod(&infos, "shop/db-migrate-29371520-9kq7d").terminated);
        assert!(!frontend.terminated && !frontend.host_network);
    }

    #[test]
    fn a_pod_with_a_bad_address_is_rejected_not_forgotten() {
        let mut bad = pods()[0].clone();
        bad.status.as_mut().unwrap().pod_ip = Some("10.244.1.999".into());
        // Apply: no change, so the last good version stays in force.
        assert!(Pod::upsert(&bad).is_none());
        // Deleted: gone by namespace and name, whatever its contents.
        match Pod::gone(&bad) {
            Change::PodGone { namespace, name } => {
                assert_eq!(
                    (namespace.as_str(), name.as_str()),
                    ("kube-system", "coredns-7db6d8ff4d-4xzpl")
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_relist_keeps_a_pod_it_cannot_read() {
        let mut hub_state = crate::state::ClusterState::new();
        let all = pods();
        hub_state.apply([Pod::reset(&all)]);
        let key = "kube-system/coredns-7db6d8ff4d-4xzpl";
        let before = hub_state.table(key).cloned().expect("a table");
        let mut relisted = all.clone();
        relisted[0].status.as_mut().unwrap().pod_ip = Some("10.244.1.999".into());
        let reset = Pod::reset(&relisted);
        assert!(
            matches!(&reset, Change::ResetPodsKeeping { unreadable, .. } if unreadable == &[key.to_string()]),
            "{reset:?}"
        );
        let applied = hub_state.apply([reset]);
        assert!(applied.changed.is_empty(), "{:?}", applied.changed);
        assert_eq!(hub_state.table(key), Some(&before));
        // A pod really missing from the relist is gone.
        let applied = hub_state.apply([Pod::reset(&all[1..])]);
        assert!(applied.changed.iter().any(|(k, t)| k == key && t.is_none()));
    }

    #[test]
    fn namespaces_and_policies_convert() {
        let Change::ResetNamespaces(namespaces) = Namespace::reset(&list(NAMESPACES)) else {
            panic!("not a namespace reset")
        };
        let shop = namespaces.iter().find(|n| n.name == "shop").unwrap();
        assert_eq!(shop.labels["team"], "storefront");
        assert_eq!(shop.labels["kubernetes.io/metadata.name"], "shop");

        let policies = list::<NetworkPolicy>(POLICIES);
        assert!(
            policies[0].metadata.managed_fields.is_some(),
            "the recording has managedFields"
        );
        let Change::ResetPolicies(sourced) = NetworkPolicy::reset(&policies) else {
            panic!("not a policy reset")
        };
        assert_eq!(sourced.len(), 3);
        for (sp, original) in sourced.iter().zip(&policies) {
            // Only what policy needs is kept: managedFields and the last-applied copy of the
            // whole object go.
            assert_eq!(sp.policy.metadata.managed_fields, None);
            assert_eq!(sp.policy.metadata.annotations, None);
            assert_eq!(sp.policy.metadata.name, original.metadata.name);
            assert_eq!(sp.policy.metadata.namespace, original.metadata.namespace);
            assert_eq!(sp.policy.spec, original.spec);
        }
    }

    /// A staged policy keeps its `portcullis.dev/staged` annotation (and only it) through the
    /// watch, its pods' tables carry it as staged, and removing the annotation (promoting it)
    /// recompiles them, enforced.
    #[test]
    fn a_staged_policy_is_compiled_staged_and_promoted_by_removing_the_annotation() {
        let mut policy: NetworkPolicy = serde_json::from_value(serde_json::json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "deny-all", "namespace": "shop", "annotations": {
                "portcullis.dev/staged": "true",
                "kubectl.kubernetes.io/last-applied-configuration": "{}"}},
            "spec": {"podSelector": {}}
        }))
        .unwrap();
        let Change::ResetPolicies(sourced) = NetworkPolicy::reset(std::slice::from_ref(&policy))
        else {
            panic!("not a policy reset")
        };
        assert_eq!(
            sourced[0].policy.metadata.annotations,
            Some([("portcullis.dev/staged".to_string(), "true".to_string())].into())
        );
        let mut state = crate::state::ClusterState::new();
        state.apply([Pod::reset(&pods()), Change::ResetPolicies(sourced)]);
        let key = "shop/db-migrate-29371520-9kq7d";
        let staged = state.table(key).cloned().expect("a table");
        assert!(!staged.ingress.is_isolated(), "staged: not enforced");
        let parts = staged.staged.as_deref().expect("the staged part");
        assert_eq!(&*parts.policies, &[Arc::from("shop/deny-all")]);
        assert!(parts.ingress.as_ref().is_some_and(|t| t.is_isolated()));

        policy.metadata.annotations = None;
        let promoted = NetworkPolicy::upsert(&policy).expect("a change");
        let applied = state.apply([promoted]);
        assert!(applied.changed.iter().any(|(k, _)| k == key));
        let enforced = state.table(key).cloned().expect("a table");
        assert!(enforced.ingress.is_isolated(), "promoted: enforced");
        assert_eq!(enforced.staged, None);
    }

    /// A relist (Init, InitApply..., InitDone) is buffered into one reset; watch events pass
    /// through one by one; a second relist replaces the first.
    #[tokio::test]
    async fn relists_become_one_reset() {
        let all = pods();
        let (a, b, c) = (all[0].clone(), all[1].clone(), all[2].clone());
        let events = futures_util::stream::iter(
            [
                Event::Init,
                Event::InitApply(a.clone()),
                Event::InitApply(b.clone()),
                Event::InitDone,
                Event::Apply(c.clone()),
                Event::Delete(a.clone()),
                Event::Init,
                Event::InitApply(b.clone()),
                Event::InitDone,
            ]
            .map(Ok),
        );
        let (tx, mut rx) = mpsc::channel(16);
        forward::<Pod, _>(events, tx, Arc::default()).await;
        let mut out = Vec::new();
        while let Some((kind, batch)) = rx.recv().await {
            assert_eq!(kind, "pods");
            out.push(match batch {
                Batch::Listed(Change::ResetPods(p)) => {
                    format!("reset {:?}", p.iter().map(PodInfo::key).collect::<Vec<_>>())
                }
                Batch::Change(Change::Pod(p)) => format!("pod {}", p.key()),
                Batch::Change(Change::PodGone { namespace, name }) => {
                    format!("gone {namespace}/{name}")
                }
                Batch::Listed(c) | Batch::Change(c) => panic!("unexpected {c:?}"),
            });
        }
        assert_eq!(
            out,
            [
                r#"reset ["kube-system/coredns-7db6d8ff4d-4xzpl", "kube-system/kube-proxy-8wq2n"]"#,
                "pod monitoring/prometheus-k8s-0",
                "gone kube-system/coredns-7db6d8ff4d-4xzpl",
                r#"reset ["kube-system/kube-proxy-8wq2n"]"#,
            ]
        );
    }
}
