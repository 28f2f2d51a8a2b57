//! Dual-stack variants of IPv4 manifests, so that a case written for IPv4 runs over IPv6 too
//! with the same truth table: every IPv4 address `a.b.c.d` has the IPv6 twin
//! `fd00:10::a.b.c.d` ([`PREFIX`], the address in the last 32 bits), a pod gets its twin as a
//! second `status.podIPs` entry ([`with_pod_ipv6`]), and an `ipBlock` on IPv4 gets a twin peer
//! on IPv6 beside it, `except` included ([`with_ipv6_blocks`]): `10.3.0.0/16` becomes
//! `fd00:10::a03:0/112`. An IPv4 block itself still never matches an IPv6 peer; the twin is
//! what lets the IPv6 half of a case mean what the IPv4 half means.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde_json::Value;

use crate::services::yaml_documents;

/// The /96 the IPv4 twins live in.
pub const PREFIX: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, 0);

/// The IPv6 twin of an IPv4 address.
pub fn ipv6_of(v4: Ipv4Addr) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(PREFIX) | u128::from(u32::from(v4)))
}

/// The IPv6 twin of an IPv4 CIDR (`None` for anything else).
pub fn ipv6_cidr(cidr: &str) -> Option<String> {
    let (ip, len) = cidr.split_once('/')?;
    let ip: Ipv4Addr = ip.parse().ok()?;
    let len: u8 = len.parse().ok().filter(|l| *l <= 32)?;
    Some(format!("{}/{}", ipv6_of(ip), 96 + len))
}

/// Adds to every pod with an IPv4 `- ip:` entry in `status.podIPs` its IPv6 twin (the manifest
/// text otherwise unchanged; the model's layout: `podIPs:` then `- ip: A.B.C.D` lines).
pub fn with_pod_ipv6(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        out.push_str(line);
        out.push('\n');
        let trimmed = line.trim_start();
        if let Some(v4) = trimmed
            .strip_prefix("- ip: ")
            .and_then(|ip| ip.trim().parse::<Ipv4Addr>().ok())
        {
            let indent = &line[..line.len() - trimmed.len()];
            out.push_str(&format!("{indent}- ip: \"{}\"\n", ipv6_of(v4)));
        }
    }
    out
}

/// Every NetworkPolicy of `text` with an IPv6 twin beside each IPv4 `ipBlock` peer. The
/// documents come back as a stream of JSON objects, one a line (as the loader reads JSON).
pub fn with_ipv6_blocks(text: &str) -> String {
    let mut docs = Vec::new();
    for doc in yaml_documents(text) {
        let Ok(mut v) = serde_saphyr::from_str::<Value>(&doc) else {
            continue;
        };
        if v.is_null() {
            continue;
        }
        if let Some(spec) = v.get_mut("spec") {
            for (rules, peers) in [("ingress", "from"), ("egress", "to")] {
                let list = spec.get_mut(rules).and_then(Value::as_array_mut);
                for rule in list.into_iter().flatten() {
                    if let Some(peers) = rule.get_mut(peers).and_then(Value::as_array_mut) {
                        let twins: Vec<Value> = peers.iter().filter_map(twin).collect();
                        peers.extend(twins);
                    }
                }
            }
        }
        docs.push(serde_json::to_string(&v).unwrap_or_default());
    }
    docs.join("\n") + "\n"
}

/// The IPv6 twin of an `ipBlock` peer on IPv4.
fn twin(peer: &Value) -> Option<Value> {
    let block = peer.get("ipBlock")?;
    let cidr = ipv6_cidr(block.get("cidr")?.as_str()?)?;
    let except: Vec<Value> = block
        .get("except")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| e.as_str().and_then(ipv6_cidr).map(Value::String))
        .collect();
    let mut out = serde_json::json!({"ipBlock": {"cidr": cidr}});
    if !except.is_empty() {
        out["ipBlock"]["except"] = Value::Array(except);
    }
    Some(out)
}

/// Whether `ip` is the IPv6 twin of an IPv4 address.
pub fn is_twin(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V6(v6) => u128::from(v6) >> 32 == u128::from(PREFIX) >> 32,
        IpAddr::V4(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_policy::manifest::load_into;
    use portcullis_policy::{compile, Cluster, Direction, Protocol};

    #[test]
    fn twins_keep_the_prefix_length_and_the_last_32_bits() {
        assert_eq!(
            ipv6_of("10.3.0.2".parse().unwrap()).to_string(),
            "fd00:10::a03:2"
        );
        assert_eq!(ipv6_cidr("10.3.0.0/16").unwrap(), "fd00:10::a03:0/112");
        assert_eq!(ipv6_cidr("0.0.0.0/0").unwrap(), "fd00:10::/96");
        assert!(ipv6_cidr("fd00::/8").is_none());
        assert!(is_twin("fd00:10::a03:2".parse().unwrap()));
        assert!(!is_twin("fd00:11::a03:2".parse().unwrap()));
    }

    const CASE: &str = "
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x}
status:
  podIP: 10.1.0.1
  podIPs:
    - ip: 10.1.0.1
---
apiVersion: v1
kind: Pod
metadata: {name: z, namespace: z}
status:
  podIP: 10.3.0.1
  podIPs:
    - ip: 10.3.0.1
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-10-not-z, namespace: x}
spec:
  podSelector: {}
  ingress:
  - from:
    - ipBlock:
        cidr: 10.0.0.0/8
        except: [10.3.0.0/16]
";

    #[test]
    fn the_ipv6_half_of_a_case_judges_as_its_ipv4_half() {
        let (pods, policy_text) = CASE.split_once("---\napiVersion: networking").unwrap();
        let policy_text = format!("apiVersion: networking{policy_text}");
        let pods = with_pod_ipv6(pods);
        let policy = with_ipv6_blocks(&policy_text);
        let mut cluster = Cluster::new();
        let r = load_into(&mut cluster, &pods, "pods");
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        let twin_z: IpAddr = "fd00:10::a03:1".parse().unwrap();
        assert!(cluster.pods[1].ips.contains(&twin_z), "{pods}");
        let check = |t: &portcullis_policy::PodTable, ip: &str| {
            t.check(Direction::Ingress, ip.parse().unwrap(), 80, Protocol::Tcp)
                .allowed()
        };
        // The policy on IPv4 only: the IPv6 twin of an allowed address is not allowed.
        let mut v4_only = cluster.clone();
        load_into(&mut v4_only, &policy_text, "policy");
        let t = compile(&v4_only).table("x/a").unwrap().clone();
        assert!(check(&t, "10.2.0.1") && !check(&t, "10.3.0.1"));
        assert!(!check(&t, "fd00:10::a02:1"));
        // With the twins: both families alike, except included.
        let r = load_into(&mut cluster, &policy, "policy");
        assert!(r.errors.is_empty(), "{:?}\n{policy}", r.errors);
        let t = compile(&cluster).table("x/a").unwrap().clone();
        assert!(check(&t, "10.2.0.1") && check(&t, "fd00:10::a02:1"));
        assert!(!check(&t, "10.3.0.1") && !check(&t, "fd00:10::a03:1"));
        // Neither block matches outside itself, in either family.
        assert!(!check(&t, "11.0.0.1") && !check(&t, "fd00:11::a02:1"));
    }
}
