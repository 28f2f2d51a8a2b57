//! Workloads (pods grouped by namespace and stable labels) and what a flow's peer is.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use portcullis_policy::service::TargetPort;
use portcullis_policy::{Cluster, PodInfo, Protocol};

use portcullis_policy::selector::Labels;

/// Labels a controller sets per pod or per revision: a policy that selects by them would stop
/// matching at the next rollout, or match one pod only. Never used in an advised selector.
pub const UNSTABLE_LABELS: &[&str] = &[
    "pod-template-hash",
    "controller-revision-hash",
    "pod-template-generation",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
    "controller-uid",
    "batch.kubernetes.io/controller-uid",
    "job-name",
    "batch.kubernetes.io/job-name",
    "batch.kubernetes.io/job-completion-index",
];

/// A pod's labels without the unstable ones.
pub fn stable_labels(labels: &Labels) -> Labels {
    labels
        .iter()
        .filter(|(k, _)| !UNSTABLE_LABELS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Pods of one namespace that share their stable labels: what a Deployment, StatefulSet or
/// DaemonSet runs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkloadId {
    pub namespace: String,
    pub labels: Labels,
}

impl WorkloadId {
    /// A short readable name: the values of its labels joined (`app=kangaroo,role=backend` →
    /// `kangaroo-backend`) when there are at most three, else the usual name label.
    pub fn name(&self) -> String {
        const NAME_KEYS: &[&str] = &[
            "app.kubernetes.io/name",
            "app",
            "k8s-app",
            "name",
            "component",
        ];
        if (1..=3).contains(&self.labels.len()) {
            let mut values: Vec<&str> = Vec::new();
            for v in self.labels.values() {
                if !values.contains(&v.as_str()) {
                    values.push(v);
                }
            }
            return values.join("-");
        }
        NAME_KEYS
            .iter()
            .find_map(|k| self.labels.get(*k))
            .or_else(|| self.labels.values().next())
            .cloned()
            .unwrap_or_else(|| "pods".into())
    }
}

impl std::fmt::Display for WorkloadId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let labels: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        write!(f, "{}/{{{}}}", self.namespace, labels.join(","))
    }
}

/// What a flow's other end is, as a policy can name it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peer {
    Workload(WorkloadId),
    /// A pod the logs named whose workload is not in the cluster objects any more: the whole
    /// namespace (reported as a warning).
    Namespace(String),
    /// A node's address (host-network pods, node agents, kubelet probes): an ipBlock.
    Node {
        name: String,
        ip: IpAddr,
    },
    /// Anything else: an ipBlock.
    External(IpAddr),
}

/// The cluster objects, indexed for advise.
pub struct Index<'a> {
    pub cluster: &'a Cluster,
    by_key: BTreeMap<String, &'a PodInfo>,
    by_ip: BTreeMap<IpAddr, &'a PodInfo>,
    nodes_by_ip: BTreeMap<IpAddr, String>,
}

impl<'a> Index<'a> {
    pub fn new(cluster: &'a Cluster) -> Self {
        let pods = cluster.pods.iter().filter(|p| !p.terminated);
        let by_key = pods.clone().map(|p| (p.key(), p)).collect();
        let by_ip = pods
            .clone()
            .filter(|p| p.selectable())
            .flat_map(|p| p.ips.iter().map(move |ip| (*ip, p)))
            .collect();
        let mut nodes_by_ip: BTreeMap<IpAddr, String> = cluster
            .nodes
            .values()
            .flat_map(|n| n.addresses.iter().map(|ip| (*ip, n.name.clone())))
            .collect();
        for pod in cluster.pods.iter() {
            if let Some(host) = pod.host_ip {
                nodes_by_ip
                    .entry(host)
                    .or_insert_with(|| format!("node of {}", pod.key()));
            }
        }
        Index {
            cluster,
            by_key,
            by_ip,
            nodes_by_ip,
        }
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Option<&'a PodInfo> {
        self.by_key.get(&format!("{namespace}/{name}")).copied()
    }

    pub fn pod_at(&self, ip: IpAddr) -> Option<&'a PodInfo> {
        self.by_ip.get(&ip).copied()
    }

    pub fn workload_of(pod: &PodInfo) -> WorkloadId {
        WorkloadId {
            namespace: pod.namespace.clone(),
            labels: stable_labels(&pod.labels),
        }
    }

    /// The pods of a workload, in name order.
    pub fn members(&self, workload: &WorkloadId) -> Vec<&'a PodInfo> {
        self.by_key
            .values()
            .filter(|p| p.selectable() && Self::workload_of(p) == *workload)
            .copied()
            .collect()
    }

    /// A pod the logs name that is gone: a live pod of the same namespace whose name shares the
    /// controller-generated prefix (`web-7d9f8c-x2x9z` and `web-7d9f8c-q1r2s`, `db-0` and
    /// `db-1`) stands for its workload.
    pub fn successor(&self, namespace: &str, name: &str) -> Option<&'a PodInfo> {
        let prefix = name.rsplit_once('-').map(|(p, _)| p)?;
        self.by_key
            .values()
            .filter(|p| p.namespace == namespace && p.selectable())
            .find(|p| p.name.rsplit_once('-').map(|(q, _)| q) == Some(prefix))
            .copied()
    }

    pub fn node_at(&self, ip: IpAddr) -> Option<&str> {
        self.nodes_by_ip.get(&ip).map(String::as_str)
    }

    /// The name a workload's pods give `port`/`protocol`, when they all declare the same one.
    pub fn port_name(
        &self,
        workload: &WorkloadId,
        port: u16,
        protocol: Protocol,
    ) -> Option<String> {
        let names: BTreeSet<Option<&str>> = self
            .members(workload)
            .iter()
            .map(|p| {
                p.ports
                    .iter()
                    .find(|c| c.port == port && c.protocol == protocol)
                    .and_then(|c| c.name.as_deref())
            })
            .collect();
        match names.into_iter().collect::<Vec<_>>().as_slice() {
            [Some(name)] => Some(name.to_string()),
            _ => None,
        }
    }

    /// The backends a Service port leads to: each workload behind it, with the target port.
    /// `port` is what the client dialled on the ClusterIP.
    pub fn service_backends(
        &self,
        service: &str,
        port: u16,
        protocol: Protocol,
    ) -> Vec<(WorkloadId, u16)> {
        let Some(svc) = self.cluster.services.iter().find(|s| s.key() == service) else {
            return Vec::new();
        };
        let Some(sp) = svc
            .ports
            .iter()
            .find(|p| p.port == port && p.protocol == protocol)
        else {
            return Vec::new();
        };
        let Some(selector) = &svc.selector else {
            return Vec::new();
        };
        let mut out = BTreeSet::new();
        for pod in self.by_key.values().filter(|p| {
            p.namespace == svc.namespace
                && p.selectable()
                && selector.iter().all(|(k, v)| p.labels.get(k) == Some(v))
        }) {
            let target = match &sp.target_port {
                TargetPort::Number(n) => Some(*n),
                TargetPort::Name(name) => pod
                    .ports
                    .iter()
                    .find(|c| c.name.as_deref() == Some(name) && c.protocol == protocol)
                    .map(|c| c.port),
            };
            if let Some(target) = target {
                out.insert((Self::workload_of(pod), target));
            }
        }
        out.into_iter().collect()
    }

    /// The cluster DNS, as the given cluster labels it: the workloads behind `kube-system/kube-dns`
    /// (or pods labelled `k8s-app=kube-dns` when the Service is not among the objects).
    pub fn cluster_dns(&self) -> Vec<WorkloadId> {
        let by_service: BTreeSet<WorkloadId> = [Protocol::Udp, Protocol::Tcp]
            .into_iter()
            .flat_map(|proto| self.service_backends("kube-system/kube-dns", 53, proto))
            .map(|(w, _)| w)
            .collect();
        if !by_service.is_empty() {
            return by_service.into_iter().collect();
        }
        self.by_key
            .values()
            .filter(|p| {
                p.namespace == "kube-system"
                    && p.labels.get("k8s-app").map(String::as_str) == Some("kube-dns")
            })
            .map(|p| Self::workload_of(p))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unstable_labels_never_reach_a_selector() {
        let labels: Labels = [
            ("app", "web"),
            ("pod-template-hash", "7d9f8c"),
            ("statefulset.kubernetes.io/pod-name", "web-0"),
            ("tier", "front"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let stable = stable_labels(&labels);
        assert_eq!(stable.keys().collect::<Vec<_>>(), ["app", "tier"]);
    }
}
