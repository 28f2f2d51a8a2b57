//! Services and EndpointSlices: what a connection to a ClusterIP reaches, and which of those
//! backends a pod's egress table allows.
//!
//! A CNI judges a Service connection after kube-proxy's DNAT, on the backend pod and the backend's
//! port. A sidecar sees the packet before the DNAT (destination `ClusterIP:port`), so it resolves
//! the Service itself:
//!
//! 1. [`ServiceInfo`] and [`EndpointSliceInfo`] keep only what enforcement needs of the API
//!    objects ([`ServiceInfo::from_k8s`], [`EndpointSliceInfo::from_k8s`]);
//! 2. [`derive_slices`] builds the slices the EndpointSlice controller would, for manifests that
//!    give a Service with a selector but no slice;
//! 3. [`ServiceMap`] resolves every Service port to its backends (`podIP:targetPort`, named
//!    target ports resolved per endpoint), keyed by Service; [`FrontendIndex`] finds the Service
//!    port behind a `ClusterIP:port/protocol`;
//! 4. [`judge`] checks each backend kube-proxy could pick against a pod's egress table, with the
//!    same [`PodTable::check`] as any other connection.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::{Deserialize, Serialize};

use crate::cluster::{Cluster, PodInfo};
use crate::error::{ObjectError, ObjectRef};
use crate::ports::{Protocol, UnsupportedProtocol};
use crate::selector::Labels;
use crate::table::{canonical, PodTable};
use crate::verdict::{Direction, Verdict};

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceType {
    ClusterIP,
    NodePort,
    LoadBalancer,
    /// A DNS CNAME only: no virtual IP, no endpoints, nothing for a proxy to resolve.
    ExternalName,
}

/// A `spec.type` this enforcer does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported type {0:?} (expected ClusterIP, NodePort, LoadBalancer or ExternalName)")]
pub struct UnsupportedServiceType(pub String);

impl ServiceType {
    fn parse(s: Option<&str>) -> Result<Self, UnsupportedServiceType> {
        match s.unwrap_or("ClusterIP") {
            "ClusterIP" => Ok(ServiceType::ClusterIP),
            "NodePort" => Ok(ServiceType::NodePort),
            "LoadBalancer" => Ok(ServiceType::LoadBalancer),
            "ExternalName" => Ok(ServiceType::ExternalName),
            other => Err(UnsupportedServiceType(other.to_string())),
        }
    }
}

/// `spec.ports[].targetPort`: a number, or a name resolved against each backend's containerPorts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

impl fmt::Display for TargetPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetPort::Number(n) => write!(f, "{n}"),
            TargetPort::Name(n) => f.write_str(n),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePort {
    /// Required when a Service has several ports; it is what EndpointSlice ports match on.
    pub name: Option<String>,
    pub protocol: Protocol,
    /// What clients dial on the ClusterIP.
    pub port: u16,
    pub target_port: TargetPort,
}

/// What enforcement needs of a Service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInfo {
    pub namespace: String,
    pub name: String,
    pub service_type: ServiceType,
    /// One per family (`spec.clusterIPs`); empty for headless and ExternalName Services.
    pub cluster_ips: Vec<IpAddr>,
    /// `spec.clusterIP: None`: DNS answers with the pod IPs, there is no virtual IP to intercept.
    pub headless: bool,
    /// `None`: endpoints are managed by hand (selector-less Service).
    pub selector: Option<Labels>,
    pub ports: Vec<ServicePort>,
}

impl ServiceInfo {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Extracts what enforcement needs of a Service; invalid fields are errors that name it.
    pub fn from_k8s(svc: &Service, source: Option<&str>) -> Result<Self, ObjectError> {
        let namespace = svc
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = svc.metadata.name.clone().unwrap_or_default();
        let err = object_error("Service", &namespace, &name, source);
        if name.is_empty() {
            return Err(err("metadata.name", "is required".into()));
        }
        let spec = svc.spec.clone().unwrap_or_default();
        let service_type = ServiceType::parse(spec.type_.as_deref())
            .map_err(|e| err("spec.type", e.to_string()))?;
        let (mut cluster_ips, headless) = cluster_ips(&spec, &err)?;
        if headless || service_type == ServiceType::ExternalName {
            cluster_ips.clear();
        }
        let ports = spec
            .ports
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, p)| service_port(&format!("spec.ports[{i}]"), p, &err))
            .collect::<Result<_, _>>()?;
        Ok(ServiceInfo {
            namespace,
            name,
            service_type,
            cluster_ips,
            headless,
            selector: spec.selector.clone().filter(|s| !s.is_empty()),
            ports,
        })
    }
}

/// `spec.clusterIP` and `spec.clusterIPs`, without repeats, and whether the Service is headless
/// (`None`).
fn cluster_ips(
    spec: &k8s_openapi::api::core::v1::ServiceSpec,
    err: &impl Fn(&str, String) -> ObjectError,
) -> Result<(Vec<IpAddr>, bool), ObjectError> {
    let mut cluster_ips = Vec::new();
    let mut headless = false;
    let listed = spec
        .cluster_ip
        .iter()
        .map(|ip| ("spec.clusterIP", ip))
        .chain(
            spec.cluster_ips
                .iter()
                .flatten()
                .map(|ip| ("spec.clusterIPs", ip)),
        );
    for (field, ip) in listed {
        match ip.as_str() {
            "None" => headless = true,
            "" => {}
            s => {
                let ip: IpAddr = s
                    .parse()
                    .map_err(|_| err(field, format!("invalid IP address {s:?}")))?;
                if !cluster_ips.contains(&ip) {
                    cluster_ips.push(ip);
                }
            }
        }
    }
    Ok((cluster_ips, headless))
}

/// One of `spec.ports` (at `field`).
fn service_port(
    field: &str,
    p: &k8s_openapi::api::core::v1::ServicePort,
    err: &impl Fn(&str, String) -> ObjectError,
) -> Result<ServicePort, ObjectError> {
    let port =
        port_number(p.port).ok_or_else(|| err(&format!("{field}.port"), bad_port(p.port)))?;
    let protocol = parse_protocol(p.protocol.as_deref())
        .map_err(|e| err(&format!("{field}.protocol"), e.to_string()))?;
    let target_port = match &p.target_port {
        None => TargetPort::Number(port),
        Some(IntOrString::Int(n)) => TargetPort::Number(
            port_number(*n).ok_or_else(|| err(&format!("{field}.targetPort"), bad_port(*n)))?,
        ),
        Some(IntOrString::String(s)) => match s.parse::<i32>() {
            Ok(n) => TargetPort::Number(
                port_number(n).ok_or_else(|| err(&format!("{field}.targetPort"), bad_port(n)))?,
            ),
            Err(_) if s.is_empty() => TargetPort::Number(port),
            Err(_) => TargetPort::Name(s.clone()),
        },
    };
    Ok(ServicePort {
        name: p.name.clone().filter(|n| !n.is_empty()),
        protocol,
        port,
        target_port,
    })
}

/// `ports[]` of an EndpointSlice: the resolved number of a Service port for this slice's endpoints.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EndpointPort {
    pub name: Option<String>,
    pub protocol: Protocol,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// The endpoint's address (consumers use the first of `addresses`).
    pub ip: IpAddr,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// `namespace/name` of the pod behind it (`targetRef`), when it is a pod.
    pub pod: Option<String>,
    pub node: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointSliceInfo {
    pub namespace: String,
    pub name: String,
    /// The Service it belongs to (label `kubernetes.io/service-name`).
    pub service: String,
    pub ports: Vec<EndpointPort>,
    pub endpoints: Vec<Endpoint>,
}

impl EndpointSliceInfo {
    pub fn service_key(&self) -> String {
        format!("{}/{}", self.namespace, self.service)
    }

    /// Extracts what enforcement needs of an EndpointSlice. A slice without the service-name
    /// label belongs to no Service and is an error (it would silently never be used).
    pub fn from_k8s(slice: &EndpointSlice, source: Option<&str>) -> Result<Self, ObjectError> {
        let namespace = slice
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = slice.metadata.name.clone().unwrap_or_default();
        let err = object_error("EndpointSlice", &namespace, &name, source);
        if name.is_empty() {
            return Err(err("metadata.name", "is required".into()));
        }
        let service = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .cloned()
            .ok_or_else(|| {
                err(
                    "metadata.labels",
                    format!("needs label {SERVICE_NAME_LABEL} naming its Service"),
                )
            })?;
        if slice.address_type == "FQDN" {
            // Deprecated and not used by kube-proxy: nothing to resolve.
            return Ok(EndpointSliceInfo {
                namespace,
                name,
                service,
                ports: Vec::new(),
                endpoints: Vec::new(),
            });
        }
        let mut ports = Vec::new();
        for (i, p) in slice.ports.iter().flatten().enumerate() {
            let field = format!("ports[{i}]");
            let Some(number) = p.port else {
                // No port: the slice carries no traffic for this Service port.
                continue;
            };
            let port = port_number(number)
                .ok_or_else(|| err(&format!("{field}.port"), bad_port(number)))?;
            let protocol = parse_protocol(p.protocol.as_deref())
                .map_err(|e| err(&format!("{field}.protocol"), e.to_string()))?;
            ports.push(EndpointPort {
                name: p.name.clone().filter(|n| !n.is_empty()),
                protocol,
                port,
            });
        }
        let mut endpoints = Vec::new();
        for (i, e) in slice.endpoints.iter().enumerate() {
            if let Some(endpoint) = endpoint(i, e, &namespace, &err)? {
                endpoints.push(endpoint);
            }
        }
        Ok(EndpointSliceInfo {
            namespace,
            name,
            service,
            ports,
            endpoints,
        })
    }
}

/// `endpoints[i]` of a slice in `namespace`; `None` when it has no address.
fn endpoint(
    i: usize,
    e: &k8s_openapi::api::discovery::v1::Endpoint,
    namespace: &str,
    err: &impl Fn(&str, String) -> ObjectError,
) -> Result<Option<Endpoint>, ObjectError> {
    let Some(first) = e.addresses.first() else {
        return Ok(None);
    };
    let ip: IpAddr = first.parse().map_err(|_| {
        err(
            &format!("endpoints[{i}].addresses[0]"),
            format!("invalid IP address {first:?}"),
        )
    })?;
    let c = e.conditions.clone().unwrap_or_default();
    // API reference: a nil `ready` means ready; a nil `serving` defers to `ready`.
    let ready = c.ready.unwrap_or(true);
    let pod = e
        .target_ref
        .as_ref()
        .filter(|r| r.kind.as_deref() == Some("Pod"))
        .and_then(|r| {
            let name = r.name.as_deref()?;
            let ns = r.namespace.as_deref().unwrap_or(namespace);
            Some(format!("{ns}/{name}"))
        });
    Ok(Some(Endpoint {
        ip: canonical(ip),
        ready,
        serving: c.serving.unwrap_or(ready),
        terminating: c.terminating.unwrap_or(false),
        pod,
        node: e.node_name.clone(),
    }))
}

/// The slices the EndpointSlice controller would write for `service`, from `pods`: pods of the
/// Service's namespace that its selector matches and that hold an address; one slice per set of
/// resolved ports (a named targetPort may resolve differently per pod, and a pod that does not
/// declare it is left out of that port). Empty for selector-less Services.
pub fn derive_slices(service: &ServiceInfo, pods: &[PodInfo]) -> Vec<EndpointSliceInfo> {
    let Some(selector) = &service.selector else {
        return Vec::new();
    };
    let mut groups: BTreeMap<Vec<EndpointPort>, Vec<Endpoint>> = BTreeMap::new();
    for pod in pods {
        let selected = pod.namespace == service.namespace
            && !pod.terminated
            && selector.iter().all(|(k, v)| pod.labels.get(k) == Some(v));
        if !selected {
            continue;
        }
        let ports: Vec<EndpointPort> = service
            .ports
            .iter()
            .filter_map(|sp| {
                let port = match &sp.target_port {
                    TargetPort::Number(n) => *n,
                    TargetPort::Name(name) => pod.named_port(name, sp.protocol).next()?,
                };
                Some(EndpointPort {
                    name: sp.name.clone(),
                    protocol: sp.protocol,
                    port,
                })
            })
            .collect();
        for ip in &pod.ips {
            groups.entry(ports.clone()).or_default().push(Endpoint {
                ip: canonical(*ip),
                ready: true,
                serving: true,
                terminating: false,
                pod: Some(pod.key()),
                node: None,
            });
        }
    }
    groups
        .into_iter()
        .enumerate()
        .map(|(i, (ports, endpoints))| EndpointSliceInfo {
            namespace: service.namespace.clone(),
            name: format!("{}-derived-{i}", service.name),
            service: service.name.clone(),
            ports,
            endpoints,
        })
        .collect()
}

/// One backend of a Service port: where kube-proxy would DNAT a connection to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    pub ip: IpAddr,
    /// The resolved target port on this backend.
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

/// One port of a Service with every backend it has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolvedPort {
    pub name: Option<String>,
    pub protocol: Protocol,
    /// The port clients dial on the ClusterIP.
    pub port: u16,
    pub backends: Vec<Backend>,
}

impl ResolvedPort {
    /// The backends a new connection may go to, as kube-proxy picks them: ready endpoints, or,
    /// only when none is ready, serving endpoints that are terminating.
    pub fn candidates(&self) -> impl Iterator<Item = &Backend> {
        let any_ready = self.backends.iter().any(|b| b.ready);
        self.backends.iter().filter(move |b| {
            if any_ready {
                b.ready
            } else {
                b.serving && b.terminating
            }
        })
    }
}

/// A Service as proxies need it: its virtual IPs and, per port, its backends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolvedService {
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<ResolvedPort>,
}

/// Every Service with a virtual IP, resolved, by `namespace/name`. Headless and ExternalName
/// Services have no virtual IP and are not in it (connections go to pod IPs or out of the
/// cluster, and are judged as such).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceMap {
    pub services: BTreeMap<String, ResolvedService>,
}

impl ServiceMap {
    /// Resolves `services` with `slices`; a Service with a selector and no slice at all gets the
    /// slices derived from `pods`.
    pub fn build(
        services: &[ServiceInfo],
        slices: &[EndpointSliceInfo],
        pods: &[PodInfo],
    ) -> ServiceMap {
        let mut by_service: HashMap<String, Vec<&EndpointSliceInfo>> = HashMap::new();
        for s in slices {
            by_service.entry(s.service_key()).or_default().push(s);
        }
        let mut map = ServiceMap::default();
        for svc in services {
            let derived;
            let own: Vec<&EndpointSliceInfo> = match by_service.get(&svc.key()) {
                Some(given) => given.clone(),
                None => {
                    derived = derive_slices(svc, pods);
                    derived.iter().collect()
                }
            };
            if let Some(resolved) = resolve(svc, &own) {
                map.services.insert(svc.key(), resolved);
            }
        }
        map
    }

    pub fn from_cluster(cluster: &Cluster) -> ServiceMap {
        ServiceMap::build(&cluster.services, &cluster.endpoint_slices, &cluster.pods)
    }

    /// The Service port a connection to `ip:port/protocol` is for, if `ip` is a virtual IP.
    /// A linear scan; proxies build a [`FrontendIndex`] once per map.
    pub fn frontend(&self, ip: IpAddr, port: u16, protocol: Protocol) -> Option<Frontend<'_>> {
        let ip = canonical(ip);
        self.services.iter().find_map(|(key, svc)| {
            if !svc.cluster_ips.contains(&ip) {
                return None;
            }
            svc.ports
                .iter()
                .find(|p| p.port == port && p.protocol == protocol)
                .map(|p| Frontend {
                    service: key,
                    port: p,
                })
        })
    }

    /// Whether `ip` is the virtual IP of any Service (on any port).
    pub fn is_virtual_ip(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.services.values().any(|s| s.cluster_ips.contains(&ip))
    }
}

/// `resolve` one Service with its slices; `None` when it has no virtual IP.
pub fn resolve(svc: &ServiceInfo, slices: &[&EndpointSliceInfo]) -> Option<ResolvedService> {
    if svc.cluster_ips.is_empty() {
        return None;
    }
    let ports = svc
        .ports
        .iter()
        .map(|sp| {
            let mut backends: Vec<Backend> = Vec::new();
            for slice in slices {
                // A slice port matches a Service port by name (both unnamed for a one-port
                // Service) and protocol.
                let Some(ep) = slice
                    .ports
                    .iter()
                    .find(|p| p.name == sp.name && p.protocol == sp.protocol)
                else {
                    continue;
                };
                for e in &slice.endpoints {
                    let b = Backend {
                        ip: e.ip,
                        port: ep.port,
                        pod: e.pod.clone(),
                        ready: e.ready,
                        serving: e.serving,
                        terminating: e.terminating,
                    };
                    if !backends.contains(&b) {
                        backends.push(b);
                    }
                }
            }
            backends.sort_by_key(|a| (a.ip, a.port));
            ResolvedPort {
                name: sp.name.clone(),
                protocol: sp.protocol,
                port: sp.port,
                backends,
            }
        })
        .collect();
    Some(ResolvedService {
        cluster_ips: svc.cluster_ips.clone(),
        ports,
    })
}

/// A Service port found behind a virtual IP.
#[derive(Debug, Clone, Copy)]
pub struct Frontend<'a> {
    /// `namespace/name` of the Service.
    pub service: &'a str,
    pub port: &'a ResolvedPort,
}

/// `ClusterIP:port/protocol` → (Service, port index), built once per [`ServiceMap`].
#[derive(Debug, Clone, Default)]
pub struct FrontendIndex {
    index: HashMap<(IpAddr, u16, Protocol), (String, usize)>,
}

impl FrontendIndex {
    pub fn new(map: &ServiceMap) -> FrontendIndex {
        let mut index = HashMap::new();
        for (key, svc) in &map.services {
            for ip in &svc.cluster_ips {
                for (i, p) in svc.ports.iter().enumerate() {
                    index.insert((canonical(*ip), p.port, p.protocol), (key.clone(), i));
                }
            }
        }
        FrontendIndex { index }
    }

    pub fn get<'a>(
        &self,
        map: &'a ServiceMap,
        ip: IpAddr,
        port: u16,
        protocol: Protocol,
    ) -> Option<Frontend<'a>> {
        let (key, i) = self.index.get(&(canonical(ip), port, protocol))?;
        let (service, svc) = map.services.get_key_value(key)?;
        Some(Frontend {
            service,
            port: svc.ports.get(*i)?,
        })
    }
}

/// A backend and what the client's egress table says about it.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendVerdict<'a> {
    pub backend: &'a Backend,
    pub verdict: Verdict,
}

/// Which backends of a Service port a pod may reach. `allowed` and `denied` together are the
/// [candidates](ResolvedPort::candidates); both empty means no endpoint is ready.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceJudgement<'a> {
    pub allowed: Vec<BackendVerdict<'a>>,
    pub denied: Vec<BackendVerdict<'a>>,
}

impl ServiceJudgement<'_> {
    pub fn no_endpoints(&self) -> bool {
        self.allowed.is_empty() && self.denied.is_empty()
    }
}

/// Judges every backend a connection from `table`'s pod to `port` could reach: egress to the
/// backend's IP on its target port, exactly as a CNI sees the connection after the DNAT.
pub fn judge<'a>(table: &PodTable, port: &'a ResolvedPort) -> ServiceJudgement<'a> {
    let mut out = ServiceJudgement {
        allowed: Vec::new(),
        denied: Vec::new(),
    };
    for backend in port.candidates() {
        let verdict = table.check(Direction::Egress, backend.ip, backend.port, port.protocol);
        let v = BackendVerdict { backend, verdict };
        if v.verdict.allowed() {
            out.allowed.push(v);
        } else {
            out.denied.push(v);
        }
    }
    out
}

fn object_error(
    kind: &'static str,
    namespace: &str,
    name: &str,
    source: Option<&str>,
) -> impl Fn(&str, String) -> ObjectError {
    let object = ObjectRef {
        kind: kind.into(),
        namespace: Some(namespace.to_string()),
        name: name.to_string(),
        source: source.map(str::to_string),
    };
    move |field, message| ObjectError {
        object: Box::new(object.clone()),
        field: field.into(),
        message,
    }
}

fn port_number(n: i32) -> Option<u16> {
    u16::try_from(n).ok().filter(|p| *p > 0)
}

fn bad_port(n: i32) -> String {
    format!("{n} is not a port number (1-65535)")
}

fn parse_protocol(s: Option<&str>) -> Result<Protocol, UnsupportedProtocol> {
    match s {
        None => Ok(Protocol::Tcp),
        Some(s) => s.parse(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::load_into;
    use crate::{compile, Cluster};

    const CLUSTER: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: api-1, namespace: shop, labels: {app: api, track: stable}}
spec: {containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}
status: {podIP: 10.0.0.11}
---
apiVersion: v1
kind: Pod
metadata: {name: api-2, namespace: shop, labels: {app: api, track: canary}}
spec: {containers: [{name: c, ports: [{name: http, containerPort: 9090}]}]}
status: {podIP: 10.0.0.12}
---
apiVersion: v1
kind: Pod
metadata: {name: api-3, namespace: shop, labels: {app: api, track: stable}}
status: {podIP: 10.0.0.13}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop, labels: {app: client}}
status: {podIP: 10.0.0.2}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop}
spec:
  clusterIP: 10.96.0.20
  selector: {app: api}
  ports: [{name: web, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: api-headless, namespace: shop}
spec: {clusterIP: None, selector: {app: api}, ports: [{port: 80}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-egress, namespace: shop}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {track: stable}}}]
    ports: [{port: 8080}]
"#;

    fn cluster(text: &str) -> Cluster {
        let mut c = Cluster::new();
        let r = load_into(&mut c, text, "test.yaml");
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        c.ensure_implied_namespaces();
        c
    }

    #[test]
    fn named_target_ports_resolve_per_backend_and_undeclared_pods_are_left_out() {
        let map = ServiceMap::from_cluster(&cluster(CLUSTER));
        assert_eq!(
            map.services.len(),
            1,
            "headless Services have no virtual IP"
        );
        let f = map
            .frontend("10.96.0.20".parse().unwrap(), 80, Protocol::Tcp)
            .expect("frontend");
        assert_eq!(f.service, "shop/api");
        let got: Vec<(String, u16)> = f
            .port
            .backends
            .iter()
            .map(|b| (b.ip.to_string(), b.port))
            .collect();
        assert_eq!(
            got,
            vec![("10.0.0.11".into(), 8080), ("10.0.0.12".into(), 9090)]
        );
        assert!(map
            .frontend("10.96.0.20".parse().unwrap(), 80, Protocol::Udp)
            .is_none());
        let index = FrontendIndex::new(&map);
        let g = index
            .get(
                &map,
                "::ffff:10.96.0.20".parse().unwrap(),
                80,
                Protocol::Tcp,
            )
            .expect("v4-mapped");
        assert_eq!(g.port.backends.len(), 2);
    }

    #[test]
    fn each_backend_is_judged_on_its_own_ip_and_target_port() {
        let c = cluster(CLUSTER);
        let map = ServiceMap::from_cluster(&c);
        let compiled = compile(&c);
        let client = compiled.table("shop/client").expect("table");
        let f = map
            .frontend("10.96.0.20".parse().unwrap(), 80, Protocol::Tcp)
            .unwrap();
        let j = judge(client, f.port);
        let allowed: Vec<_> = j
            .allowed
            .iter()
            .map(|v| v.backend.pod.clone().unwrap())
            .collect();
        let denied: Vec<_> = j
            .denied
            .iter()
            .map(|v| v.backend.pod.clone().unwrap())
            .collect();
        assert_eq!(allowed, vec!["shop/api-1"]);
        assert_eq!(denied, vec!["shop/api-2"], "canary is not stable");
        assert!(!j.no_endpoints());
    }

    #[test]
    fn given_slices_win_and_conditions_are_read() {
        let text = r#"
apiVersion: v1
kind: Service
metadata: {name: kubernetes, namespace: default}
spec: {clusterIP: 10.96.0.1, ports: [{name: https, port: 443, targetPort: 6443}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: kubernetes, namespace: default, labels: {kubernetes.io/service-name: kubernetes}}
addressType: IPv4
ports: [{name: https, port: 6443, protocol: TCP}]
endpoints:
- addresses: [192.168.0.10]
- addresses: [192.168.0.11]
  conditions: {ready: false, serving: true, terminating: true}
"#;
        let map = ServiceMap::from_cluster(&cluster(text));
        let f = map
            .frontend("10.96.0.1".parse().unwrap(), 443, Protocol::Tcp)
            .unwrap();
        assert_eq!(f.port.backends.len(), 2);
        let c: Vec<_> = f.port.candidates().map(|b| b.ip.to_string()).collect();
        assert_eq!(
            c,
            vec!["192.168.0.10"],
            "terminating endpoints only as a last resort"
        );
        assert_eq!(
            f.port.backends[0].pod, None,
            "API server endpoints are not pods"
        );
    }

    #[test]
    fn terminating_endpoints_serve_when_none_is_ready() {
        let port = ResolvedPort {
            name: None,
            protocol: Protocol::Tcp,
            port: 80,
            backends: vec![
                Backend {
                    ip: "10.0.0.1".parse().unwrap(),
                    port: 80,
                    pod: None,
                    ready: false,
                    serving: true,
                    terminating: true,
                },
                Backend {
                    ip: "10.0.0.2".parse().unwrap(),
                    port: 80,
                    pod: None,
                    ready: false,
                    serving: false,
                    terminating: true,
                },
            ],
        };
        let c: Vec<_> = port.candidates().map(|b| b.ip.to_string()).collect();
        assert_eq!(c, vec!["10.0.0.1"]);
    }

    #[test]
    fn invalid_services_and_slices_name_the_object_and_field() {
        let mut c = Cluster::new();
        let r = load_into(
            &mut c,
            "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: x}\nspec: {clusterIP: 10.96.0.300, ports: [{port: 80}]}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: e, namespace: x}\naddressType: IPv4\nendpoints: []\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {name: t, namespace: x}\nspec: {ports: [{port: 80, targetPort: 70000}]}\n",
            "svc.yaml",
        );
        let msgs: Vec<String> = r.errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(msgs.len(), 3, "{msgs:?}");
        assert!(msgs[0].contains("Service x/s") && msgs[0].contains("spec.clusterIP"));
        assert!(msgs[1].contains("EndpointSlice x/e") && msgs[1].contains("service-name"));
        assert!(msgs[2].contains("Service x/t") && msgs[2].contains("targetPort"));
        assert!(c.services.is_empty() && c.endpoint_slices.is_empty());
    }

    #[test]
    fn external_name_services_have_nothing_to_resolve() {
        let c = cluster(
            "apiVersion: v1\nkind: Service\nmetadata: {name: ext, namespace: x}\nspec: {type: ExternalName, externalName: example.com, ports: [{port: 443}]}\n",
        );
        assert_eq!(c.services[0].service_type, ServiceType::ExternalName);
        assert!(ServiceMap::from_cluster(&c).services.is_empty());
    }
}
