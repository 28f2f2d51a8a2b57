//! The cluster DNS of the testbed: pod `kube-system/coredns` (labels `k8s-app: kube-dns`, never
//! injected, as kube-system is never) serving with Debian's `dnsmasq` behind Service
//! `kube-system/kube-dns` at 10.96.0.10, ports 53/UDP and 53/TCP. It answers
//! `NAME.NAMESPACE.svc.cluster.local` for every Service (its ClusterIP; a headless Service: the
//! IPs of its ready pods) and nothing else under `cluster.local` (NXDOMAIN; no upstream servers).
//! Every pod namespace gets `/etc/netns/<netns>/resolv.conf` (which `ip netns exec` mounts over
//! `/etc/resolv.conf`) pointing at 10.96.0.10 with the usual search path and `ndots:5`, so
//! `ip netns exec <pod-netns> getent hosts api.shop.svc.cluster.local` works.
//!
//! The pod, its Service and its namespace are written into the policy directory beside the
//! manifests, so the controller, the proxies and the prediction know them as any other pod: a
//! policy allowing egress to `k8s-app: kube-dns` in `kube-system` selects it. If the manifests
//! already define `kube-system/kube-dns`, the testbed adds nothing and runs no DNS.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use crate::error::{Context, Error, Result};
use portcullis_policy::service::ServiceMap;
use portcullis_policy::Cluster;

pub const DNS_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub const POD_KEY: &str = "kube-system/coredns";
pub const SERVICE_KEY: &str = "kube-system/kube-dns";
pub const DOMAIN: &str = "cluster.local";

/// The manifest that adds the cluster DNS to `cluster` (as loaded from the user's manifests),
/// or `None` when they define `kube-system/kube-dns` themselves.
pub fn manifest(cluster: &Cluster) -> Result<Option<String>> {
    if cluster.services.iter().any(|s| s.key() == SERVICE_KEY) {
        return Ok(None);
    }
    if let Some(s) = cluster
        .services
        .iter()
        .find(|s| s.cluster_ips.contains(&IpAddr::V4(DNS_IP)))
    {
        return Err(Error::Manifests(format!(
            "Service {} has clusterIP {DNS_IP}, the cluster DNS's address in the testbed",
            s.key()
        )));
    }
    if cluster.pods.iter().any(|p| p.key() == POD_KEY) {
        return Err(Error::Manifests(format!("the manifests define pod {POD_KEY} but no Service {SERVICE_KEY}: the testbed runs its own cluster DNS under that name")));
    }
    let taken: BTreeSet<IpAddr> = cluster.pods.iter().flat_map(|p| p.ips.clone()).collect();
    let ip = (53u8..=255)
        .map(|last| IpAddr::V4(Ipv4Addr::new(10, 244, 0, last)))
        .find(|ip| !taken.contains(ip))
        .ok_or_else(|| {
            Error::Manifests("no free address for the cluster DNS pod in 10.244.0.53-255".into())
        })?;
    // On the node most pods are on, so that it is "a pod of the node" like the others.
    let host_ip = most_common_host_ip(cluster);
    let status = match host_ip {
        Some(h) => format!("{{phase: Running, podIP: {ip}, hostIP: {h}}}"),
        None => format!("{{phase: Running, podIP: {ip}}}"),
    };
    Ok(Some(format!(
        "# The cluster DNS, added by portcullis testbed (dnsmasq in pod {POD_KEY}).
apiVersion: v1
kind: Namespace
metadata: {{name: kube-system}}
---
apiVersion: v1
kind: Pod
metadata:
  name: coredns
  namespace: kube-system
  labels: {{k8s-app: kube-dns}}
spec: {{containers: [{{name: dnsmasq, image: debian/dnsmasq-base}}]}}
status: {status}
---
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels: {{k8s-app: kube-dns}}
spec:
  clusterIP: {DNS_IP}
  selector: {{k8s-app: kube-dns}}
  ports:
    - {{name: dns, port: 53, targetPort: 53, protocol: UDP}}
    - {{name: dns-tcp, port: 53, targetPort: 53, protocol: TCP}}
"
    )))
}

fn most_common_host_ip(cluster: &Cluster) -> Option<IpAddr> {
    let mut counts: std::collections::BTreeMap<IpAddr, usize> = Default::default();
    for h in cluster.pods.iter().filter_map(|p| p.host_ip) {
        *counts.entry(h).or_default() += 1;
    }
    counts.into_iter().max_by_key(|(_, n)| *n).map(|(h, _)| h)
}

/// The hosts file dnsmasq serves: every Service's name with its ClusterIP, and every headless
/// Service's name with the IPs of its ready pods.
pub fn hosts(cluster: &Cluster, services: &ServiceMap) -> String {
    let mut out =
        String::from("# NAME.NAMESPACE.svc.cluster.local of every Service (portcullis testbed)\n");
    for s in &cluster.services {
        let name = format!("{}.{}.svc.{DOMAIN}", s.name, s.namespace);
        let ips: Vec<IpAddr> = if s.headless {
            headless_ips(cluster, s)
        } else if let Some(r) = services.services.get(&s.key()) {
            r.cluster_ips.clone()
        } else {
            Vec::new()
        };
        for ip in ips {
            let _ = writeln!(out, "{ip} {name}");
        }
    }
    out
}

/// The ready pods behind a headless Service: its EndpointSlices if given, else its selector.
fn headless_ips(cluster: &Cluster, s: &portcullis_policy::service::ServiceInfo) -> Vec<IpAddr> {
    let given: Vec<_> = cluster
        .endpoint_slices
        .iter()
        .filter(|e| e.service_key() == s.key())
        .collect();
    let slices = if given.is_empty() {
        portcullis_policy::service::derive_slices(s, &cluster.pods)
    } else {
        given.into_iter().cloned().collect()
    };
    let mut ips: Vec<IpAddr> = slices
        .iter()
        .flat_map(|sl| sl.endpoints.iter())
        .filter(|e| e.ready)
        .map(|e| e.ip)
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

/// What each pod's `/etc/resolv.conf` says, as the kubelet writes it for `ClusterFirst`.
pub fn resolv_conf(namespace: &str) -> String {
    format!(
        "nameserver {DNS_IP}\nsearch {namespace}.svc.{DOMAIN} svc.{DOMAIN} {DOMAIN}\noptions ndots:5\n"
    )
}

/// `/etc/netns/<netns>`: what `ip netns exec` mounts over `/etc`.
pub fn etc_dir(netns: &str) -> PathBuf {
    Path::new("/etc/netns").join(netns)
}

pub fn write_resolv_conf(netns: &str, namespace: &str) -> Result<()> {
    let dir = etc_dir(netns);
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    fs::write(dir.join("resolv.conf"), resolv_conf(namespace))
        .with_context(|| format!("cannot write {}/resolv.conf", dir.display()))
}

/// dnsmasq's command line: only the hosts file, authoritative for cluster.local, no upstream.
pub fn dnsmasq_args(hosts: &Path) -> Vec<String> {
    [
        "--keep-in-foreground",
        "--no-daemon",
        "--no-resolv",
        "--no-hosts",
        "--no-poll",
        "--user=root",
        "--pid-file=",
        "--port=53",
        "--log-facility=-",
        &format!("--local=/{DOMAIN}/"),
        &format!("--addn-hosts={}", hosts.display()),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_policy::manifest::load_into;

    const USER: &str = "
apiVersion: v1
kind: Pod
metadata: {name: api, namespace: shop, labels: {app: api}}
spec: {containers: [{name: c, image: i}]}
status: {podIP: 10.244.0.53, hostIP: 172.18.0.2}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop}
spec: {clusterIP: 10.96.1.1, selector: {app: api}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: pods, namespace: shop}
spec: {clusterIP: None, selector: {app: api}, ports: [{port: 80}]}
";

    #[test]
    fn the_dns_pod_gets_a_free_address_and_every_service_a_name() {
        let mut cluster = Cluster::new();
        load_into(&mut cluster, USER, "t");
        let text = manifest(&cluster).unwrap().expect("a DNS manifest");
        let report = load_into(&mut cluster, &text, "dns");
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        let dns = cluster.pods.iter().find(|p| p.key() == POD_KEY).unwrap();
        // 10.244.0.53 is taken by shop/api.
        assert_eq!(dns.ips, vec!["10.244.0.54".parse::<IpAddr>().unwrap()]);
        assert_eq!(dns.host_ip, Some("172.18.0.2".parse().unwrap()));
        assert_eq!(
            dns.labels.get("k8s-app").map(String::as_str),
            Some("kube-dns")
        );
        let map = ServiceMap::from_cluster(&cluster);
        let kube_dns = &map.services[SERVICE_KEY];
        assert_eq!(kube_dns.cluster_ips, vec![IpAddr::V4(DNS_IP)]);
        assert_eq!(kube_dns.ports.len(), 2);
        let hosts = hosts(&cluster, &map);
        assert!(
            hosts.contains("10.96.1.1 api.shop.svc.cluster.local\n"),
            "{hosts}"
        );
        assert!(
            hosts.contains("10.244.0.53 pods.shop.svc.cluster.local\n"),
            "{hosts}"
        );
        assert!(
            hosts.contains("10.96.0.10 kube-dns.kube-system.svc.cluster.local\n"),
            "{hosts}"
        );
        // Once it is there, it is not added twice.
        assert!(manifest(&cluster).unwrap().is_none());
    }

    #[test]
    fn resolv_conf_is_the_kubelets() {
        assert_eq!(
            resolv_conf("shop"),
            "nameserver 10.96.0.10\nsearch shop.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"
        );
    }
}
