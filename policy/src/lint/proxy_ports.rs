//! Application ports that collide with the ports the injected proxy listens on.

use super::{Check, Finding, Severity, INJECT_LABEL, PROXY_PORTS};
use crate::cluster::Cluster;
use crate::error::ObjectRef;
use crate::ports::Protocol;

/// Pods of opted-in namespaces that declare a port the proxy listens on.
pub(super) fn proxy_ports(cluster: &Cluster, out: &mut Vec<Finding>) {
    let (key, value) = INJECT_LABEL;
    for pod in &cluster.pods {
        let injected = cluster
            .namespaces
            .get(&pod.namespace)
            .is_some_and(|ns| ns.labels.get(key).map(String::as_str) == Some(value));
        if !injected || pod.host_network {
            continue;
        }
        for c in pod.ports.iter().filter(|c| c.protocol == Protocol::Tcp) {
            if let Some((_, what)) = PROXY_PORTS.iter().find(|(p, _)| *p == c.port) {
                let object = ObjectRef {
                    kind: "Pod".into(),
                    namespace: Some(pod.namespace.clone()),
                    name: pod.name.clone(),
                    source: None,
                };
                out.push(Finding::new(
                    Severity::Warning,
                    Check::ProxyPortConflict,
                    &object,
                    "spec.containers[].ports",
                    format!(
                        "containerPort {}/TCP is the Portcullis proxy's {what} port in this \
                         opted-in namespace: the application cannot bind it next to the proxy",
                        c.port
                    ),
                ));
            }
        }
    }
}
