//! The cluster state policy needs: namespaces with labels, pods with labels, IPs and ports, and
//! NetworkPolicies. Only these facts are kept, never whole Pod objects.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::{Deserialize, Serialize};

use crate::error::{ObjectError, ObjectRef};
use crate::ports::{Protocol, UnsupportedProtocol};
use crate::selector::Labels;

/// Every namespace carries this label, set by the API server to the namespace's name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceInfo {
    pub name: String,
    pub labels: Labels,
}

impl NamespaceInfo {
    pub fn new(name: impl Into<String>, mut labels: Labels) -> Self {
        let name = name.into();
        labels.insert(NAMESPACE_NAME_LABEL.to_string(), name.clone());
        NamespaceInfo { name, labels }
    }

    pub fn from_k8s(ns: &Namespace) -> Self {
        NamespaceInfo::new(
            ns.metadata.name.clone().unwrap_or_default(),
            ns.metadata.labels.clone().unwrap_or_default(),
        )
    }
}

/// A declared container port; named ports are resolved against these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    /// `status.podIPs` (or `status.podIP`); the first is the primary address.
    pub ips: Vec<IpAddr>,
    pub host_ip: Option<IpAddr>,
    pub host_network: bool,
    pub ports: Vec<ContainerPort>,
    /// Pods that have finished (Succeeded/Failed) hold no address; their IP may be reused.
    pub terminated: bool,
}

impl PodInfo {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub fn primary_ip(&self) -> Option<IpAddr> {
        self.ips.first().copied()
    }

    /// Whether selectors may pick this pod as a peer: hostNetwork pods share the node's address
    /// and are identified by IP only; finished pods no longer own their address.
    pub fn selectable(&self) -> bool {
        !self.host_network && !self.terminated
    }

    /// Extracts what policy needs from a Pod. Unparseable addresses and ports are errors that
    /// name the pod; the pod is then left out.
    pub fn from_k8s(pod: &Pod, source: Option<&str>) -> Result<Self, ObjectError> {
        let namespace = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = pod.metadata.name.clone().unwrap_or_default();
        let err = |field: &str, message: String| ObjectError {
            object: Box::new(ObjectRef {
                kind: "Pod".into(),
                namespace: Some(namespace.clone()),
                name: name.clone(),
                source: source.map(str::to_string),
            }),
            field: field.into(),
            message,
        };
        if name.is_empty() {
            return Err(err("metadata.name", "is required".into()));
        }
        let status = pod.status.as_ref();
        let mut ips = Vec::new();
        let mut push_ip = |field: &str, s: &str| -> Result<(), ObjectError> {
            let ip: IpAddr = s
                .parse()
                .map_err(|_| err(field, format!("invalid IP address {s:?}")))?;
            if !ips.contains(&ip) {
                ips.push(ip);
            }
            Ok(())
        };
        if let Some(ip) = status.and_then(|s| s.pod_ip.as_deref()) {
            push_ip("status.podIP", ip)?;
        }
        for (i, p) in status
            .and_then(|s| s.pod_ips.as_ref())
            .into_iter()
            .flatten()
            .enumerate()
        {
            push_ip(&format!("status.podIPs[{i}].ip"), &p.ip)?;
        }
        let host_ip = match status.and_then(|s| s.host_ip.as_deref()) {
            Some(s) => Some(
                s.parse()
                    .map_err(|_| err("status.hostIP", format!("invalid IP address {s:?}")))?,
            ),
            None => None,
        };
        let spec = pod.spec.as_ref();
        let mut ports = Vec::new();
        for (ci, c) in spec
            .map(|s| &s.containers[..])
            .unwrap_or(&[])
            .iter()
            .enumerate()
        {
            for (pi, p) in c.ports.iter().flatten().enumerate() {
                let field = format!("spec.containers[{ci}].ports[{pi}]");
                ports.push(container_port(&field, p, &err)?);
            }
        }
        Ok(PodInfo {
            namespace,
            name,
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            ips,
            host_ip,
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
            ports,
            terminated: matches!(
                status.and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            ),
        })
    }

    /// Resolves a named port against this pod's container ports.
    pub fn named_port(&self, name: &str, protocol: Protocol) -> impl Iterator<Item = u16> + '_ {
        let name = name.to_string();
        self.ports
            .iter()
            .filter(move |p| p.protocol == protocol && p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.port)
    }
}

/// The objects one compile works on.
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    pub namespaces: BTreeMap<String, NamespaceInfo>,
    pub pods: Vec<PodInfo>,
    pub policies: Vec<SourcedPolicy>,
    /// Services and EndpointSlices: what a connection to a ClusterIP reaches (`service.rs`).
    pub services: Vec<crate::service::ServiceInfo>,
    pub endpoint_slices: Vec<crate::service::EndpointSliceInfo>,
    /// ClusterNetworkPolicies (`policy.networking.k8s.io/v1alpha2`), as written: compile validates
    /// them (`cnp::validate`) and reports the invalid ones by name.
    pub cnps: Vec<SourcedCnp>,
    /// Nodes, for ClusterNetworkPolicy `nodes` peers (a Node label selector matching the node's
    /// addresses).
    pub nodes: BTreeMap<String, NodeInfo>,
}

/// A ClusterNetworkPolicy and the file it came from, if any.
#[derive(Debug, Clone)]
pub struct SourcedCnp {
    pub cnp: crate::cnp::ClusterNetworkPolicy,
    pub source: Option<String>,
}

/// What policy needs of a Node: its labels and addresses (`status.addresses` of type
/// `InternalIP`/`ExternalIP`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    pub labels: Labels,
    pub addresses: Vec<IpAddr>,
}

impl NodeInfo {
    pub fn from_k8s(node: &Node) -> Self {
        let addresses = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten()
            .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
            .filter_map(|a| a.address.parse().ok())
            .collect();
        Self {
            name: node.metadata.name.clone().unwrap_or_default(),
            labels: node.metadata.labels.clone().unwrap_or_default(),
            addresses,
        }
    }
}

/// A NetworkPolicy and the file it came from, if any.
#[derive(Debug, Clone)]
pub struct SourcedPolicy {
    pub policy: NetworkPolicy,
    pub source: Option<String>,
}

impl Cluster {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add_namespace(&mut self, ns: NamespaceInfo) {
        self.namespaces.insert(ns.name.clone(), ns);
    }

    pub fn add_pod(&mut self, pod: PodInfo) {
        self.pods.push(pod);
    }

    pub fn add_service(&mut self, service: crate::service::ServiceInfo) {
        self.services.push(service);
    }

    pub fn add_endpoint_slice(&mut self, slice: crate::service::EndpointSliceInfo) {
        self.endpoint_slices.push(slice);
    }

    pub fn add_policy(&mut self, policy: NetworkPolicy, source: Option<String>) {
        self.policies.push(SourcedPolicy { policy, source });
    }

    pub fn add_cnp(&mut self, cnp: crate::cnp::ClusterNetworkPolicy, source: Option<String>) {
        self.cnps.push(SourcedCnp { cnp, source });
    }

    pub fn add_node(&mut self, node: NodeInfo) {
        self.nodes.insert(node.name.clone(), node);
    }

    /// Namespaces that pods or policies live in but that were not declared exist all the same,
    /// with only their name label (as on a real cluster).
    pub fn ensure_implied_namespaces(&mut self) {
        let implied: Vec<String> = self
            .pods
            .iter()
            .map(|p| p.namespace.clone())
            .chain(self.policies.iter().map(|p| {
                p.policy
                    .metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into())
            }))
            .collect();
        for name in implied {
            if !self.namespaces.contains_key(&name) {
                self.add_namespace(NamespaceInfo::new(name, Labels::new()));
            }
        }
    }

    /// Gives every pod without an address a unique one from 240.0.0.0/4 (reserved, never routed),
    /// so that a reachability matrix can still be computed for manifests without `status`.
    /// Returns the pods that received one.
    pub fn assign_placeholder_ips(&mut self) -> Vec<String> {
        let taken: std::collections::HashSet<IpAddr> = self
            .pods
            .iter()
            .flat_map(|p| p.ips.iter().copied())
            .collect();
        let mut assigned = Vec::new();
        let mut next: u32 = u32::from(std::net::Ipv4Addr::new(240, 0, 0, 1));
        for pod in self.pods.iter_mut().filter(|p| p.ips.is_empty()) {
            while taken.contains(&IpAddr::V4(next.into())) {
                next += 1;
            }
            pod.ips.push(IpAddr::V4(next.into()));
            next += 1;
            assigned.push(pod.key());
        }
        assigned
    }
}

/// One of a container's `ports` (at `field`).
fn container_port(
    field: &str,
    p: &k8s_openapi::api::core::v1::ContainerPort,
    err: &impl Fn(&str, String) -> ObjectError,
) -> Result<ContainerPort, ObjectError> {
    let port = u16::try_from(p.container_port)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| {
            err(
                &format!("{field}.containerPort"),
                format!("{} is not a port number (1-65535)", p.container_port),
            )
        })?;
    let protocol = match &p.protocol {
        Some(s) => s
            .parse()
            .map_err(|e: UnsupportedProtocol| err(&format!("{field}.protocol"), e.to_string()))?,
        None => Protocol::Tcp,
    };
    Ok(ContainerPort {
        name: p.name.clone(),
        port,
        protocol,
    })
}
