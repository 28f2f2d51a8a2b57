//! Services in the testbed, as the API server and kube-proxy (iptables mode) would make them.
//!
//! - ClusterIPs: a `spec.clusterIP` given in a manifest is kept (it must lie in
//!   [`SERVICE_CIDR`], 10.96.0.0/12, as the API server would demand); a Service without one gets
//!   one allocated there, written into the copy of the manifest the controller and the proxies
//!   read (as the API server writes it into the object). Headless and ExternalName Services get
//!   none.
//! - The node namespace gets kube-proxy's NAT rules ([`kube_proxy_rules`]): `KUBE-SERVICES`
//!   matches `ClusterIP:port/protocol` and jumps to a `KUBE-SVC-*` chain that picks one ready
//!   endpoint at random (`-m statistic --mode random --probability 1/n, 1/(n-1), …`), whose
//!   `KUBE-SEP-*` chain DNATs to `podIP:targetPort`. A pod reaching itself through its Service is
//!   marked for masquerade (hairpin), as kube-proxy does, but here the DNAT'd packet (source =
//!   destination, in and out of the node's bridge) is dropped by the node's routing before
//!   POSTROUTING: a known limitation, predicted as such by `probe` (`probe::HAIRPIN`). A Service
//!   port without a ready endpoint is rejected. The pods' traffic is routed by the node (each pod's default route points at it),
//!   so it passes the node's nat PREROUTING; no bridge netfilter is involved. The rules are
//!   rebuilt, as one `iptables-restore` of the node's nat and filter tables, on `up` and on every
//!   `apply`.
//!
//! Traffic a pod's proxy intercepts never reaches these rules with a ClusterIP: the proxy
//! resolves the Service itself (issue 10); these rules serve pods without Portcullis.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use crate::error::{Context, Error, Result};
use portcullis_policy::service::{ResolvedPort, ServiceMap};
use portcullis_policy::{Cluster, Protocol};
use serde_json::Value;

use crate::{netns, Family};

/// The Service CIDR of the testbed (kubeadm's default).
pub const SERVICE_CIDR: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 96, 0, 0), 12);
/// The IPv6 Service CIDR of the testbed (a dual-stack cluster's second `--service-cluster-ip-range`).
pub const SERVICE_CIDR_V6: (Ipv6Addr, u8) = (Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0), 112);
/// Reserved in the range: the `kubernetes` Service and the cluster DNS.
pub const RESERVED: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 96, 0, 1), Ipv4Addr::new(10, 96, 0, 10)];

/// Both ranges, as the injector passes them to `portcullis-init` (TCP to them is relayed).
pub fn service_cidrs() -> portcullis_injector::values::CidrList {
    let (v4, v4_len) = SERVICE_CIDR;
    let (v6, v6_len) = SERVICE_CIDR_V6;
    format!("{v4}/{v4_len},{v6}/{v6_len}")
        .parse()
        .expect("the testbed's two Service ranges are CIDRs")
}

pub fn in_service_cidr(ip: Ipv4Addr) -> bool {
    let (net, len) = SERVICE_CIDR;
    let mask = u32::MAX << (32 - len);
    u32::from(ip) & mask == u32::from(net) & mask
}

pub fn in_service_cidr_v6(ip: Ipv6Addr) -> bool {
    let (net, len) = SERVICE_CIDR_V6;
    let mask = u128::MAX << (128 - len);
    u128::from(ip) & mask == u128::from(net) & mask
}

/// Fails on a ClusterIP outside the Service CIDRs (the API server would refuse the Service).
pub fn check_cluster_ips(cluster: &Cluster) -> Result<()> {
    for s in &cluster.services {
        for ip in &s.cluster_ips {
            match ip {
                IpAddr::V4(v4) if in_service_cidr(*v4) => {}
                IpAddr::V6(v6) if in_service_cidr_v6(*v6) => {}
                _ => return Err(Error::Manifests(format!(
                    "Service {}: clusterIP {ip} is outside the testbed's Service ranges 10.96.0.0/12 and fd00:10:96::/112",
                    s.key()
                ))),
            }
        }
    }
    Ok(())
}

/// FNV-1a: a stable hash for chain names and allocation (same input, same result, any build).
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A free address for Service `key` in the Service CIDR of `family`, stable for a given key and
/// set of taken addresses (in IPv6, the same offsets as in IPv4 are reserved).
fn allocate(key: &str, family: Family, taken: &BTreeSet<IpAddr>) -> IpAddr {
    let (base, len): (u128, u8) = match family {
        Family::IPv4 => (u32::from(SERVICE_CIDR.0).into(), 32 - SERVICE_CIDR.1),
        Family::IPv6 => (u128::from(SERVICE_CIDR_V6.0), 128 - SERVICE_CIDR_V6.1),
    };
    let size = 1u128 << len;
    let reserved: Vec<u128> = RESERVED
        .iter()
        .map(|r| u128::from(u32::from(*r) - u32::from(SERVICE_CIDR.0)))
        .collect();
    let mut offset = u128::from(fnv(key)) % size;
    loop {
        let n = base + offset;
        let ip = match family {
            // In range: base and offset fit in 32 bits.
            Family::IPv4 => IpAddr::V4(Ipv4Addr::from(n as u32)),
            Family::IPv6 => IpAddr::V6(Ipv6Addr::from(n)),
        };
        let usable = offset != 0 && offset != size - 1 && !reserved.contains(&offset);
        if usable && !taken.contains(&ip) {
            return ip;
        }
        offset = (offset + 1) % size;
    }
}

/// The families a Service asks for (`ipFamilies`, else `ipFamilyPolicy`: a dual-stack policy
/// means both, IPv4 first as in a cluster whose first range is IPv4), and the addresses it
/// already has.
fn families_wanted(spec: &serde_json::Map<String, Value>, given: &[IpAddr]) -> Vec<Family> {
    let named: Vec<Family> = spec
        .get("ipFamilies")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|f| match f.as_str() {
            Some("IPv4") => Some(Family::IPv4),
            Some("IPv6") => Some(Family::IPv6),
            _ => None,
        })
        .collect();
    let dual = matches!(
        spec.get("ipFamilyPolicy").and_then(Value::as_str),
        Some("PreferDualStack" | "RequireDualStack")
    );
    let mut families: Vec<Family> = given.iter().map(|ip| Family::of(*ip)).collect();
    for f in named {
        if !families.contains(&f) {
            families.push(f);
        }
    }
    if families.is_empty() {
        families.push(Family::IPv4);
    }
    if dual {
        for f in [Family::IPv4, Family::IPv6] {
            if !families.contains(&f) {
                families.push(f);
            }
        }
    }
    families.truncate(2);
    families
}

/// Splits a manifest stream into documents (kubectl's rule: lines starting with `---`).
pub(crate) fn yaml_documents(text: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in text.lines() {
        if line.starts_with("---") {
            docs.push(String::new());
        } else if let Some(last) = docs.last_mut() {
            last.push_str(line);
            last.push('\n');
        }
    }
    docs
}

/// Gives `v` a ClusterIP in each family it asks for and has none in, if it is a Service that
/// should have one. Returns the Service's key and the addresses it was given.
fn allocate_in(v: &mut Value, taken: &mut BTreeSet<IpAddr>) -> Vec<(String, IpAddr)> {
    allocate_service(v, taken).unwrap_or_default()
}

fn allocate_service(v: &mut Value, taken: &mut BTreeSet<IpAddr>) -> Option<Vec<(String, IpAddr)>> {
    if v.get("kind").and_then(Value::as_str) != Some("Service") {
        return None;
    }
    let meta = v.get("metadata")?;
    let key = format!(
        "{}/{}",
        meta.get("namespace")
            .and_then(Value::as_str)
            .unwrap_or("default"),
        meta.get("name").and_then(Value::as_str)?
    );
    let spec = v.as_object_mut()?.entry("spec").or_insert(Value::Null);
    if spec.is_null() {
        *spec = Value::Object(Default::default());
    }
    let spec = spec.as_object_mut()?;
    if spec.get("type").and_then(Value::as_str) == Some("ExternalName") {
        return None;
    }
    let texts: Vec<&str> = spec
        .get("clusterIPs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .chain(spec.get("clusterIP").and_then(Value::as_str))
        .collect();
    if texts.contains(&"None") {
        return None;
    }
    let mut ips: Vec<IpAddr> = Vec::new();
    for ip in texts.iter().filter_map(|t| t.parse::<IpAddr>().ok()) {
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    let families = families_wanted(spec, &ips);
    let mut allocated = Vec::new();
    for family in families.iter().copied() {
        if ips.iter().any(|ip| Family::of(*ip) == family) {
            continue;
        }
        let ip = allocate(&key, family, taken);
        taken.insert(ip);
        ips.push(ip);
        allocated.push((key.clone(), ip));
    }
    if allocated.is_empty() {
        return None;
    }
    let list =
        |ips: &[IpAddr]| Value::Array(ips.iter().map(|i| Value::String(i.to_string())).collect());
    spec.insert("clusterIP".into(), Value::String(ips[0].to_string()));
    spec.insert("clusterIPs".into(), list(&ips));
    let names: Vec<Value> = ips
        .iter()
        .map(|ip| Value::String(Family::of(*ip).to_string()))
        .collect();
    spec.insert("ipFamilies".into(), Value::Array(names));
    Some(allocated)
}

/// Rewrites a manifest so that every Service that needs a ClusterIP has one (see the module
/// doc). Returns the new text (unchanged documents are kept byte for byte, rewritten ones become
/// JSON, which is YAML too) and what was allocated.
pub fn allocate_cluster_ips(
    text: &str,
    taken: &mut BTreeSet<IpAddr>,
) -> (String, Vec<(String, IpAddr)>) {
    let mut allocated = Vec::new();
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        let mut values: Vec<Value> = serde_json::Deserializer::from_str(text)
            .into_iter::<Value>()
            .flatten()
            .collect();
        for v in &mut values {
            let items = match v {
                Value::Array(items) => items.iter_mut().collect::<Vec<_>>(),
                Value::Object(o) if o.get("items").is_some_and(Value::is_array) => o
                    .get_mut("items")
                    .and_then(Value::as_array_mut)
                    .map(|a| a.iter_mut().collect())
                    .unwrap_or_default(),
                v => vec![v],
            };
            for item in items {
                allocated.extend(allocate_in(item, taken));
            }
        }
        if allocated.is_empty() {
            return (text.to_string(), allocated);
        }
        let out = values
            .iter()
            .map(|v| serde_json::to_string_pretty(v).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n");
        return (out, allocated);
    }
    let mut out =
        String::from("# ClusterIPs allocated by portcullis testbed where none was given\n");
    for (i, doc) in yaml_documents(text).into_iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        // Only documents that could be a Service are decoded (the others stay byte for byte).
        let mentions_service = doc.contains("Service");
        let parsed = mentions_service
            .then(|| serde_saphyr::from_str::<Value>(&doc).ok())
            .flatten();
        match parsed {
            Some(mut v) => {
                let a = allocate_in(&mut v, taken);
                if a.is_empty() {
                    out.push_str(&doc);
                } else {
                    allocated.extend(a);
                    out.push_str(&serde_json::to_string(&v).unwrap_or_default());
                    out.push('\n');
                }
            }
            None => out.push_str(&doc),
        }
    }
    if allocated.is_empty() {
        return (text.to_string(), allocated);
    }
    (out, allocated)
}

fn chain(prefix: &str, what: &str) -> String {
    format!("{prefix}{:016X}", fnv(what))
}

fn proto(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
        // A Service port is TCP, UDP or SCTP: manifests name no other.
        Protocol::Other(_) => "none",
    }
}

/// kube-proxy's iptables rules for the ClusterIPs of `family` in `services`, as
/// `iptables-restore` (IPv4) or `ip6tables-restore` (IPv6) input for the node's nat and filter
/// tables: as kube-proxy in a dual-stack cluster, a ClusterIP leads only to the endpoints of its
/// own family (EndpointSlices are per family). A pure function of the map, so the rules can be
/// read in a test.
pub fn kube_proxy_rules(services: &ServiceMap, family: Family) -> String {
    let mut chains = Vec::new();
    let mut nat = String::new();
    let mut reject = String::new();
    for (key, svc) in &services.services {
        for ip in svc
            .cluster_ips
            .iter()
            .filter(|ip| Family::of(**ip) == family)
        {
            for port in &svc.ports {
                port_rules(key, *ip, port, &mut chains, &mut nat, &mut reject);
            }
        }
    }
    let mut out = String::from("*nat\n");
    for c in ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"] {
        let _ = writeln!(out, ":{c} ACCEPT [0:0]");
    }
    for c in ["KUBE-SERVICES", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"]
        .iter()
        .map(|s| s.to_string())
        .chain(chains)
    {
        let _ = writeln!(out, ":{c} - [0:0]");
    }
    out.push_str(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
         -A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n\
         -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --set-xmark 0x0/0x4000\n\
         -A KUBE-POSTROUTING -m comment --comment \"hairpin: a pod reaching itself through its Service\" -j MASQUERADE\n",
    );
    out.push_str(&nat);
    out.push_str("COMMIT\n*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n");
    out.push_str(
        "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
    );
    out.push_str(&reject);
    out.push_str("COMMIT\n");
    out
}

fn port_rules(
    key: &str,
    ip: IpAddr,
    port: &ResolvedPort,
    chains: &mut Vec<String>,
    nat: &mut String,
    reject: &mut String,
) {
    let name = format!(
        "{key}:{}",
        port.name.clone().unwrap_or_else(|| port.port.to_string())
    );
    let p = proto(port.protocol);
    let family = Family::of(ip);
    let endpoints: Vec<_> = port
        .candidates()
        .filter(|b| Family::of(b.ip) == family)
        .collect();
    let (host, unreachable) = match family {
        Family::IPv4 => (32, "icmp-port-unreachable"),
        Family::IPv6 => (128, "icmp6-port-unreachable"),
    };
    if endpoints.is_empty() {
        let _ = writeln!(
            reject,
            "-A KUBE-SERVICES -d {ip}/{host} -p {p} -m comment --comment \"{name} has no endpoints\" -m {p} --dport {} -j REJECT --reject-with {unreachable}",
            port.port
        );
        return;
    }
    let svc_chain = chain("KUBE-SVC-", &format!("{name}/{p}"));
    chains.push(svc_chain.clone());
    let _ = writeln!(
        nat,
        "-A KUBE-SERVICES -d {ip}/{host} -p {p} -m comment --comment \"{name} cluster IP\" -m {p} --dport {} -j {svc_chain}",
        port.port
    );
    let n = endpoints.len();
    for (i, b) in endpoints.iter().enumerate() {
        let sep = chain("KUBE-SEP-", &format!("{name}/{p}/{}:{}", b.ip, b.port));
        chains.push(sep.clone());
        let who = b.pod.clone().unwrap_or_else(|| b.ip.to_string());
        let remaining = n - i;
        if remaining > 1 {
            let _ = writeln!(
                nat,
                "-A {svc_chain} -m comment --comment \"{name} -> {who}\" -m statistic --mode random --probability {:.10} -j {sep}",
                1.0 / remaining as f64
            );
        } else {
            let _ = writeln!(
                nat,
                "-A {svc_chain} -m comment --comment \"{name} -> {who}\" -j {sep}"
            );
        }
        let _ = writeln!(nat, "-A {sep} -s {}/{host} -j KUBE-MARK-MASQ", b.ip);
        let _ = writeln!(
            nat,
            "-A {sep} -p {p} -m {p} -j DNAT --to-destination {}",
            SocketAddr::new(b.ip, b.port)
        );
    }
}

/// Replaces the node's nat and filter tables, of both families, with the rules for `services`.
pub fn install(node: &str, services: &ServiceMap, dir: &Path) -> Result<()> {
    for (family, program, file) in [
        (Family::IPv4, "iptables-restore", "kube-proxy.rules"),
        (Family::IPv6, "ip6tables-restore", "kube-proxy.v6.rules"),
    ] {
        let rules = kube_proxy_rules(services, family);
        let file = dir.join(file);
        fs::write(&file, &rules).with_context(|| format!("cannot write {}", file.display()))?;
        netns::exec_in(node, program, &["-w", "5", &file.to_string_lossy()]).with_context(
            || format!("installing the {family} Service rules in the node namespace"),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_policy::manifest::load_into;

    const MANIFEST: &str = "
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: shop, labels: {app: api}}
spec: {containers: [{name: c, image: i, ports: [{name: http, containerPort: 8080}]}]}
status: {podIP: 10.1.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: shop, labels: {app: api}}
spec: {containers: [{name: c, image: i, ports: [{name: http, containerPort: 8081}]}]}
status: {podIP: 10.1.0.2}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop}
spec:
  selector: {app: api}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: fixed, namespace: shop}
spec:
  clusterIP: 10.96.5.5
  selector: {app: nobody}
  ports: [{port: 53, protocol: UDP}]
---
apiVersion: v1
kind: Service
metadata: {name: headless, namespace: shop}
spec: {clusterIP: None, selector: {app: api}, ports: [{port: 80}]}
";

    #[test]
    fn services_without_a_cluster_ip_get_one_in_the_range_and_others_keep_theirs() {
        let mut taken: BTreeSet<IpAddr> = ["10.96.5.5".parse().unwrap()].into();
        let (text, allocated) = allocate_cluster_ips(MANIFEST, &mut taken);
        assert_eq!(allocated.len(), 1, "{allocated:?}");
        assert_eq!(allocated[0].0, "shop/api");
        let ip = allocated[0].1;
        let IpAddr::V4(ip) = ip else {
            panic!("{ip} is not IPv4")
        };
        assert!(in_service_cidr(ip) && !RESERVED.contains(&ip), "{ip}");
        // Stable: the same Service gets the same address again.
        let (_, again) = allocate_cluster_ips(MANIFEST, &mut ["10.96.5.5".parse().unwrap()].into());
        assert_eq!(again, allocated);
        // The rewritten manifest still loads, with the address in it.
        let mut cluster = Cluster::new();
        let report = load_into(&mut cluster, &text, "t");
        assert!(report.errors.is_empty(), "{:?}\n{text}", report.errors);
        let by = |n: &str| cluster.services.iter().find(|s| s.name == n).unwrap();
        assert_eq!(by("api").cluster_ips, vec![IpAddr::V4(ip)]);
        assert_eq!(
            by("fixed").cluster_ips,
            vec!["10.96.5.5".parse::<IpAddr>().unwrap()]
        );
        assert!(by("headless").cluster_ips.is_empty());
        assert_eq!(cluster.pods.len(), 2);
        check_cluster_ips(&cluster).unwrap();
    }

    #[test]
    fn a_quoted_kind_and_a_json_list_are_found_too() {
        let mut taken = BTreeSet::new();
        let yaml = "# comment\napiVersion: v1\nkind: \"Service\"\nmetadata: {name: q}\nspec: {ports: [{port: 1}]}\n";
        let (_, a) = allocate_cluster_ips(yaml, &mut taken);
        assert_eq!(a.len(), 1, "{a:?}");
        let json = r#"{"kind":"List","items":[{"apiVersion":"v1","kind":"Service","metadata":{"name":"j","namespace":"n"},"spec":{"ports":[{"port":1}]}}]}"#;
        let (text, a) = allocate_cluster_ips(json, &mut taken);
        assert_eq!(a[0].0, "n/j");
        let mut cluster = Cluster::new();
        let report = load_into(&mut cluster, &text, "t");
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(cluster.services[0].cluster_ips, vec![a[0].1]);
    }

    #[test]
    fn a_cluster_ip_outside_the_range_is_refused() {
        let mut cluster = Cluster::new();
        load_into(
            &mut cluster,
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {clusterIP: 192.168.1.1, ports: [{port: 1}]}\n",
            "t",
        );
        let e = check_cluster_ips(&cluster).unwrap_err().to_string();
        assert!(
            e.contains("default/s") && e.contains("10.96.0.0/12") && e.contains("fd00:10:96::/112"),
            "{e}"
        );
    }

    #[test]
    fn kube_proxy_rules_pick_each_ready_endpoint_at_random_and_reject_without_any() {
        let mut taken = BTreeSet::new();
        let (text, _) = allocate_cluster_ips(MANIFEST, &mut taken);
        let mut cluster = Cluster::new();
        load_into(&mut cluster, &text, "t");
        let map = ServiceMap::from_cluster(&cluster);
        let rules = kube_proxy_rules(&map, Family::IPv4);
        let api_ip = map.services["shop/api"].cluster_ips[0];
        let lines: Vec<&str> = rules.lines().collect();
        let jump = lines
            .iter()
            .find(|l| l.starts_with(&format!("-A KUBE-SERVICES -d {api_ip}/32 -p tcp")))
            .expect("a KUBE-SERVICES rule for shop/api");
        assert!(jump.contains("--dport 80 -j KUBE-SVC-"), "{jump}");
        let svc = jump.rsplit(' ').next().unwrap();
        let picks: Vec<&&str> = lines
            .iter()
            .filter(|l| l.starts_with(&format!("-A {svc} ")))
            .collect();
        assert_eq!(picks.len(), 2, "{rules}");
        assert!(picks[0].contains("--mode random --probability 0.5000000000"));
        assert!(!picks[1].contains("statistic"));
        // Named targetPort resolved per pod.
        assert!(
            rules.contains("DNAT --to-destination 10.1.0.1:8080"),
            "{rules}"
        );
        assert!(
            rules.contains("DNAT --to-destination 10.1.0.2:8081"),
            "{rules}"
        );
        assert!(
            rules.contains("-A KUBE-SEP-") && rules.contains("-s 10.1.0.1/32 -j KUBE-MARK-MASQ")
        );
        // No endpoint: rejected, not silently dropped.
        assert!(rules.contains(
            "-A KUBE-SERVICES -d 10.96.5.5/32 -p udp -m comment --comment \"shop/fixed:53 has no endpoints\" -m udp --dport 53 -j REJECT"
        ), "{rules}");
        // Headless: no rule at all.
        assert!(!rules.contains("shop/headless"));
        // Every chain used is declared.
        for l in &lines {
            if let Some(target) = l.split(" -j ").nth(1) {
                let target = target.split(' ').next().unwrap();
                if target.starts_with("KUBE-") {
                    assert!(
                        rules.contains(&format!(":{target} - [0:0]")),
                        "{target} undeclared"
                    );
                }
            }
        }
    }

    const DUAL: &str = "
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: shop, labels: {app: api}}
spec: {containers: [{name: c, image: i}]}
status: {podIP: 10.1.0.1, podIPs: [{ip: 10.1.0.1}, {ip: 'fd00:10::a01:1'}]}
---
apiVersion: v1
kind: Service
metadata: {name: dual, namespace: shop}
spec: {ipFamilyPolicy: PreferDualStack, selector: {app: api}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: six, namespace: shop}
spec: {ipFamilies: [IPv6], selector: {app: api}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: given, namespace: shop}
spec: {clusterIP: 10.96.7.7, ipFamilyPolicy: RequireDualStack, selector: {app: api}, ports: [{port: 81}]}
---
apiVersion: v1
kind: Service
metadata: {name: four, namespace: shop}
spec: {selector: {app: api}, ports: [{port: 82}]}
";

    #[test]
    fn dual_stack_services_get_a_cluster_ip_per_family_and_rules_per_family() {
        let mut taken = BTreeSet::new();
        let (text, allocated) = allocate_cluster_ips(DUAL, &mut taken);
        let mut cluster = Cluster::new();
        let report = load_into(&mut cluster, &text, "t");
        assert!(report.errors.is_empty(), "{:?}\n{text}", report.errors);
        check_cluster_ips(&cluster).unwrap();
        let families = |n: &str| -> Vec<Family> {
            let s = cluster.services.iter().find(|s| s.name == n).unwrap();
            s.cluster_ips.iter().map(|ip| Family::of(*ip)).collect()
        };
        assert_eq!(families("dual"), [Family::IPv4, Family::IPv6]);
        assert_eq!(families("six"), [Family::IPv6]);
        assert_eq!(families("given"), [Family::IPv4, Family::IPv6]);
        assert_eq!(families("four"), [Family::IPv4]);
        // One new address for each but `given`, which only needed its IPv6 one.
        assert_eq!(allocated.len(), 5, "{allocated:?}");
        for (_, ip) in &allocated {
            if let IpAddr::V6(v6) = ip {
                assert!(in_service_cidr_v6(*v6), "{v6}");
            }
        }
        let map = ServiceMap::from_cluster(&cluster);
        let v4 = kube_proxy_rules(&map, Family::IPv4);
        let v6 = kube_proxy_rules(&map, Family::IPv6);
        // Each family's ClusterIPs lead to that family's endpoints only.
        assert!(v4.contains("DNAT --to-destination 10.1.0.1:80"), "{v4}");
        assert!(!v4.contains("fd00:"), "{v4}");
        assert!(
            v6.contains("DNAT --to-destination [fd00:10::a01:1]:80"),
            "{v6}"
        );
        assert!(!v6.contains("10.1.0.1"), "{v6}");
        let six = map.services["shop/six"].cluster_ips[0];
        assert!(
            v6.contains(&format!("-A KUBE-SERVICES -d {six}/128 -p tcp")),
            "{v6}"
        );
        assert!(!v4.contains("shop/six"));
    }

    #[test]
    fn an_ipv6_cluster_ip_outside_the_range_is_refused() {
        let mut cluster = Cluster::new();
        load_into(
            &mut cluster,
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {clusterIP: 'fd00:99::1', ports: [{port: 1}]}\n",
            "t",
        );
        assert!(check_cluster_ips(&cluster).is_err());
    }
}
