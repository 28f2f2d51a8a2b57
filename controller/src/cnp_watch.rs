//! ClusterNetworkPolicies (`policy.networking.k8s.io/v1alpha2`) and Nodes, in kube mode, while
//! the CRD is installed.
//!
//! The CRD is optional. [`supervise`] asks the API server's discovery (`/apis`, readable by every
//! authenticated client: no RBAC on CustomResourceDefinitions is needed) which versions of the
//! group it serves, at start and every [`PROBE_INTERVAL`]:
//! - `v1alpha2` served with `clusternetworkpolicies`: it starts the two watches (CNPs, and Nodes
//!   for `nodes` peers);
//! - not served: it says so once (log line `cnp_crd_missing`, the admin port's
//!   `/v1/cluster-network-policies`), counts both kinds as listed (empty) so that tables are
//!   served, and NetworkPolicy v1 alone is enforced; when the CRD appears later, the watches start
//!   without a restart; when it goes, they stop and every CNP is dropped.
//!
//! CNPs are read strictly (an unknown field is an error naming the object: its last valid version
//! stays in force, as for an invalid NetworkPolicy) and validated in the state
//! (`state/cnp.rs`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::watcher;
use kube::{Api, Client};
use portcullis_policy::cluster::{NodeInfo, SourcedCnp};
use portcullis_policy::cnp::{self, ClusterNetworkPolicy};
use portcullis_policy::{ObjectError, ObjectRef};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::kube_watch::{forward, Batch, Kind};
use crate::protection::Protection;
use crate::state::Change;

pub const GROUP: &str = "policy.networking.k8s.io";
pub const VERSION: &str = "v1alpha2";
/// The resource, and the watch's kind name in logs and metrics.
pub const CNPS: &str = "clusternetworkpolicies";
pub const NODES: &str = "nodes";
/// The CRD's name, as `kubectl get crd` shows it.
pub const CRD: &str = "clusternetworkpolicies.policy.networking.k8s.io";
/// How often discovery is asked whether the CRD was installed or removed.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(30);
/// After a failed discovery request.
const RETRY_INTERVAL: Duration = Duration::from_secs(5);

/// Whether ClusterNetworkPolicies are watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CrdState {
    /// Discovery has not answered yet.
    Unknown,
    /// The CRD serves `v1alpha2`: CNPs and Nodes are watched and enforced.
    Watching,
    /// No `v1alpha2` ClusterNetworkPolicy API: NetworkPolicy v1 alone is enforced.
    NotInstalled,
}

/// What the admin port's `/v1/cluster-network-policies` says about the CRD.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CrdStatus {
    pub state: CrdState,
    /// The versions of `policy.networking.k8s.io` the API server serves.
    pub served_versions: Vec<String>,
    pub message: String,
}

/// The CRD's state, shared with the admin endpoint.
pub struct CnpStatus {
    inner: Mutex<CrdStatus>,
}

impl Default for CnpStatus {
    fn default() -> Self {
        Self::new(
            CrdState::Unknown,
            Vec::new(),
            "discovery has not answered yet".into(),
        )
    }
}

impl CnpStatus {
    pub fn new(state: CrdState, served_versions: Vec<String>, message: String) -> Self {
        CnpStatus {
            inner: Mutex::new(CrdStatus {
                state,
                served_versions,
                message,
            }),
        }
    }

    /// File mode: CNPs come from the manifests, there is no CRD to watch.
    pub fn file_mode() -> Self {
        Self::new(
            CrdState::Watching,
            vec![VERSION.into()],
            "file mode: ClusterNetworkPolicies are read from the policy directory".into(),
        )
    }

    pub fn get(&self) -> CrdStatus {
        self.inner
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// Records a new status; true if the state or versions changed (then it is logged).
    fn set(&self, status: CrdStatus) -> bool {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let changed =
            inner.state != status.state || inner.served_versions != status.served_versions;
        *inner = status;
        changed
    }
}

/// What discovery says: the served versions of the group, and whether `v1alpha2` has the
/// `clusternetworkpolicies` resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    pub served_versions: Vec<String>,
    pub cnps: bool,
}

/// The status (and its one log line) for what discovery says.
pub fn describe(found: &Discovered) -> CrdStatus {
    let served = found.served_versions.clone();
    let (state, message) = if found.cnps {
        (
            CrdState::Watching,
            format!("watching ClusterNetworkPolicies ({GROUP}/{VERSION}) and Nodes"),
        )
    } else if served.is_empty() {
        (
            CrdState::NotInstalled,
            format!(
                "the ClusterNetworkPolicy CRD ({CRD}) is not installed: enforcing NetworkPolicy v1 \
                 alone; install it (docs/cluster-network-policy.md) and the controller starts \
                 watching within {}s, no restart needed",
                PROBE_INTERVAL.as_secs()
            ),
        )
    } else {
        (
            CrdState::NotInstalled,
            format!(
                "{GROUP} serves {} but not {VERSION}: v1alpha1 AdminNetworkPolicy and \
                 BaselineAdminNetworkPolicy objects are NOT read nor enforced; install the \
                 {VERSION} ClusterNetworkPolicy CRD ({CRD}) and rewrite them as \
                 ClusterNetworkPolicies (docs/cluster-network-policy.md); enforcing \
                 NetworkPolicy v1 alone",
                served.join(", ")
            ),
        )
    };
    CrdStatus {
        state,
        served_versions: served,
        message,
    }
}

/// Asks discovery which versions of the group are served and whether `v1alpha2` has CNPs.
/// A 404 (a server without the aggregated `/apis` list, or without the group version) means
/// nothing is served.
async fn discover(client: &Client) -> Result<Discovered, kube::Error> {
    let none = Discovered {
        served_versions: Vec::new(),
        cnps: false,
    };
    let groups = match client.list_api_groups().await {
        Err(e) if is_not_found(&e) => return Ok(none),
        other => other?,
    };
    let served_versions: Vec<String> = groups
        .groups
        .iter()
        .filter(|g| g.name == GROUP)
        .flat_map(|g| g.versions.iter().map(|v| v.version.clone()))
        .collect();
    let cnps = if served_versions.iter().any(|v| v == VERSION) {
        match client
            .list_api_group_resources(&format!("{GROUP}/{VERSION}"))
            .await
        {
            Ok(resources) => resources.resources.iter().any(|r| r.name == CNPS),
            Err(e) if is_not_found(&e) => false,
            Err(e) => return Err(e),
        }
    } else {
        false
    };
    Ok(Discovered {
        served_versions,
        cnps,
    })
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Starts and stops the CNP and Node watches as the CRD comes and goes, until aborted.
pub(crate) async fn supervise(
    client: Client,
    tx: mpsc::Sender<(&'static str, Batch)>,
    status: Arc<CnpStatus>,
) {
    let mut running: Option<[JoinHandle<()>; 2]> = None;
    let mut listed_empty = false;
    loop {
        let found = match discover(&client).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(event = "cnp_discovery_failed", error = %e, "cannot tell whether the ClusterNetworkPolicy CRD is installed; retrying");
                tokio::time::sleep(RETRY_INTERVAL).await;
                continue;
            }
        };
        let now = describe(&found);
        if status.set(now.clone()) {
            match now.state {
                CrdState::Watching => {
                    tracing::info!(event = "cnp_watching", message = %now.message)
                }
                _ => {
                    tracing::warn!(event = "cnp_crd_missing", served_versions = %now.served_versions.join(","), message = %now.message)
                }
            }
        }
        match (found.cnps, running.is_some()) {
            (true, false) => {
                running = Some(spawn(&client, &tx));
                listed_empty = false;
            }
            (false, _) if !listed_empty => {
                for task in running.take().into_iter().flatten() {
                    task.abort();
                }
                // Nothing to list: both kinds count as listed, with nothing in them.
                let empty = [
                    (
                        CNPS,
                        Change::ResetCnps {
                            cnps: Vec::new(),
                            unreadable: Vec::new(),
                        },
                    ),
                    (NODES, Change::ResetNodes(Vec::new())),
                ];
                for (kind, change) in empty {
                    if tx.send((kind, Batch::Listed(change))).await.is_err() {
                        return;
                    }
                }
                listed_empty = true;
            }
            _ => {}
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

fn spawn(client: &Client, tx: &mpsc::Sender<(&'static str, Batch)>) -> [JoinHandle<()>; 2] {
    let config = watcher::Config::default();
    let resource = api_resource();
    // CNPs and Nodes say nothing about protection; the tracker is a throwaway one.
    let protection = Arc::new(Protection::default());
    [
        tokio::spawn(forward(
            watcher::watcher(
                Api::<DynamicObject>::all_with(client.clone(), &resource),
                config.clone(),
            ),
            tx.clone(),
            protection.clone(),
        )),
        tokio::spawn(forward(
            watcher::watcher(Api::<Node>::all(client.clone()), config),
            tx.clone(),
            protection,
        )),
    ]
}

pub fn api_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, VERSION, cnp::KIND), CNPS)
}

/// A watched CNP as the policy library's strict type; unknown fields are an error naming it.
pub fn read_cnp(obj: &DynamicObject) -> Result<SourcedCnp, ObjectError> {
    let mut value = serde_json::to_value(obj).unwrap_or_default();
    // List items may come without their type; a CNP's is known.
    value["apiVersion"] = cnp::API_VERSION.into();
    value["kind"] = cnp::KIND.into();
    // Bookkeeping the API server adds; the policy needs spec, name and the staged annotation.
    if let Some(meta) = value["metadata"].as_object_mut() {
        meta.remove("managedFields");
        let staged = obj
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(portcullis_contract::keys::STAGED));
        match staged {
            Some(v) => {
                meta.insert(
                    "annotations".into(),
                    serde_json::json!({ portcullis_contract::keys::STAGED: v }),
                );
            }
            None => {
                meta.remove("annotations");
            }
        }
    }
    match serde_json::from_value::<ClusterNetworkPolicy>(value) {
        Ok(cnp) => Ok(SourcedCnp { cnp, source: None }),
        Err(e) => Err(ObjectError {
            object: Box::new(ObjectRef {
                kind: cnp::KIND.into(),
                namespace: None,
                name: obj.metadata.name.clone().unwrap_or_default(),
                source: None,
            }),
            field: "(object)".into(),
            message: format!("cannot be read: {e}"),
        }),
    }
}

impl Kind for DynamicObject {
    const NAME: &'static str = CNPS;
    fn upsert(obj: &Self) -> Option<Change> {
        Some(match read_cnp(obj) {
            Ok(c) => Change::Cnp(Box::new(c)),
            Err(e) => Change::CnpUnreadable(e),
        })
    }
    fn gone(obj: &Self) -> Change {
        Change::CnpGone(obj.metadata.name.clone().unwrap_or_default())
    }
    fn reset(objs: &[Self]) -> Change {
        let (mut cnps, mut unreadable) = (Vec::new(), Vec::new());
        for obj in objs {
            match read_cnp(obj) {
                Ok(c) => cnps.push(c),
                Err(e) => unreadable.push(e),
            }
        }
        Change::ResetCnps { cnps, unreadable }
    }
}

impl Kind for Node {
    const NAME: &'static str = NODES;
    fn upsert(obj: &Self) -> Option<Change> {
        Some(Change::Node(NodeInfo::from_k8s(obj)))
    }
    fn gone(obj: &Self) -> Change {
        Change::NodeGone(obj.metadata.name.clone().unwrap_or_default())
    }
    fn reset(objs: &[Self]) -> Change {
        Change::ResetNodes(objs.iter().map(NodeInfo::from_k8s).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_the_crd_it_says_v1_alone_and_names_v1alpha1_plainly() {
        let none = describe(&Discovered {
            served_versions: Vec::new(),
            cnps: false,
        });
        assert_eq!(none.state, CrdState::NotInstalled);
        assert!(none
            .message
            .contains("is not installed: enforcing NetworkPolicy v1 alone"));
        let old = describe(&Discovered {
            served_versions: vec!["v1alpha1".into()],
            cnps: false,
        });
        assert_eq!(old.state, CrdState::NotInstalled);
        assert!(
            old.message.contains("serves v1alpha1 but not v1alpha2")
                && old.message.contains("NOT read nor enforced"),
            "{}",
            old.message
        );
        let both = describe(&Discovered {
            served_versions: vec!["v1alpha2".into(), "v1alpha1".into()],
            cnps: true,
        });
        assert_eq!(both.state, CrdState::Watching);
        let status = CnpStatus::default();
        assert!(status.set(none.clone()), "a first answer is news");
        assert!(!status.set(none), "the same answer is said once");
        assert!(status.set(both));
    }

    #[test]
    fn watched_objects_are_read_strictly_and_named_when_they_cannot_be() {
        let obj: DynamicObject = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "guard", "managedFields": [{ "manager": "kubectl" }] },
            "spec": { "tier": "Admin", "priority": 1,
                      "subject": { "namespaces": {} },
                      "ingress": [{ "action": "Deny", "from": [{ "namespaces": {} }] }] },
        }))
        .unwrap();
        let Some(Change::Cnp(c)) = DynamicObject::upsert(&obj) else {
            panic!("not a CNP change")
        };
        assert_eq!(c.cnp.name(), "guard");
        assert_eq!(c.cnp.api_version, cnp::API_VERSION);
        let mut newer = obj.clone();
        newer.data["spec"]["futureField"] = serde_json::json!(true);
        let Change::ResetCnps { cnps, unreadable } = DynamicObject::reset(&[obj, newer]) else {
            panic!("not a reset")
        };
        assert_eq!(cnps.len(), 1);
        assert_eq!(unreadable[0].object.name, "guard");
        assert!(
            unreadable[0].message.contains("futureField"),
            "{}",
            unreadable[0]
        );
    }

    #[test]
    fn a_staged_cnp_keeps_its_staged_annotation_and_nothing_else() {
        let obj: DynamicObject = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "guard", "annotations": {
                "portcullis.dev/staged": "true", "note": "x" } },
            "spec": { "tier": "Admin", "priority": 1,
                      "subject": { "namespaces": {} },
                      "ingress": [{ "action": "Deny", "from": [{ "namespaces": {} }] }] },
        }))
        .unwrap();
        let c = read_cnp(&obj).expect("readable");
        assert_eq!(
            c.cnp.metadata.annotations,
            Some([("portcullis.dev/staged".to_string(), "true".to_string())].into())
        );
        let valid = portcullis_policy::cnp::validate(&c.cnp, cnp::Mode::FromApiServer).unwrap();
        assert!(valid.staged);
    }
}
