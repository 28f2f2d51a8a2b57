//! The input: the pods of this node, each as its bridge port (the host-side veth), the MAC of
//! its interface inside the pod and its IPs. Parsed from JSON and validated here, so that the
//! ruleset generator only ever sees well-formed values (nothing from the file reaches `nft`
//! unchecked).

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

use serde::Deserialize;

/// What is wrong with one entry of the pod list.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PodError {
    #[error("the pod list is not a JSON list of {{interface, mac, ips}}: {0}")]
    Json(String),
    #[error("interface name {0:?}: 1 to 15 bytes of letters, digits, '.', '-', '_' or '@'")]
    Interface(String),
    #[error("MAC address {0:?}: six hex bytes separated by ':' (unicast, not all zero)")]
    Mac(String),
    #[error("pod {interface}: IP {ip:?} is not an address")]
    Ip { interface: String, ip: String },
    #[error(
        "pod {interface}: {ip} cannot be a pod's source address \
         (unspecified, loopback, multicast, broadcast or IPv4-mapped)"
    )]
    SpecialIp { interface: String, ip: IpAddr },
    #[error("interface {0} is listed twice")]
    DuplicateInterface(String),
}

/// A bridge port name, checked: at most 15 bytes (`IFNAMSIZ - 1`) of a conservative alphabet,
/// so it can be quoted in the ruleset as is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Interface(String);

impl Interface {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Interface {
    type Err = PodError;

    fn from_str(s: &str) -> Result<Self, PodError> {
        let ok = (1..=15).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'@'));
        if ok {
            Ok(Interface(s.to_string()))
        } else {
            Err(PodError::Interface(s.to_string()))
        }
    }
}

impl fmt::Display for Interface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A unicast Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// The 48 bits as one hex number, as `nft` compares a raw payload field (`@th,208,48`).
    pub fn hex(&self) -> String {
        let mut s = String::from("0x");
        for b in self.0 {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    /// The IPv6 link-local address the kernel derives from this MAC (modified EUI-64, the
    /// default `addr_gen_mode`): a pod's router and neighbour solicitations come from it.
    pub fn eui64_link_local(&self) -> Ipv6Addr {
        let m = self.0;
        Ipv6Addr::from([
            0xfe,
            0x80,
            0,
            0,
            0,
            0,
            0,
            0,
            m[0] ^ 0x02,
            m[1],
            m[2],
            0xff,
            0xfe,
            m[3],
            m[4],
            m[5],
        ])
    }
}

impl FromStr for Mac {
    type Err = PodError;

    fn from_str(s: &str) -> Result<Self, PodError> {
        let bad = || PodError::Mac(s.to_string());
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in out.iter_mut() {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() || out[0] & 1 == 1 || out == [0; 6] {
            return Err(bad());
        }
        Ok(Mac(out))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// One local pod, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    /// Its port on the bridge: the host-side end of its veth pair.
    pub interface: Interface,
    /// The MAC of its interface inside the pod (the source of every frame it sends).
    pub mac: Mac,
    /// Its addresses, in the order given, without duplicates.
    pub ips: Vec<IpAddr>,
}

/// One entry of the pod list as written in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPod {
    interface: String,
    mac: String,
    #[serde(default)]
    ips: Vec<String>,
}

/// Parses and validates a JSON list of `{"interface": "veth1", "mac": "02:..", "ips": [..]}`.
pub fn parse(json: &str) -> Result<Vec<Pod>, PodError> {
    let raw: Vec<RawPod> = serde_json::from_str(json).map_err(|e| PodError::Json(e.to_string()))?;
    let mut pods: Vec<Pod> = Vec::with_capacity(raw.len());
    for r in raw {
        let pod = Pod::new(&r.interface, &r.mac, &r.ips)?;
        if pods.iter().any(|p| p.interface == pod.interface) {
            return Err(PodError::DuplicateInterface(r.interface));
        }
        pods.push(pod);
    }
    Ok(pods)
}

impl Pod {
    /// Validates one pod: its port name, MAC and addresses (duplicates folded).
    pub fn new(interface: &str, mac: &str, ips: &[String]) -> Result<Pod, PodError> {
        let interface: Interface = interface.parse()?;
        let mac: Mac = mac.parse()?;
        let mut out = Vec::with_capacity(ips.len());
        for text in ips {
            let ip = pod_ip(&interface, text)?;
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
        Ok(Pod {
            interface,
            mac,
            ips: out,
        })
    }
}

fn pod_ip(interface: &Interface, text: &str) -> Result<IpAddr, PodError> {
    let ip: IpAddr = text.trim().parse().map_err(|_| PodError::Ip {
        interface: interface.to_string(),
        ip: text.to_string(),
    })?;
    let special = match ip {
        IpAddr::V4(v4) => {
            v4.is_unspecified() || v4.is_loopback() || v4.is_multicast() || v4.is_broadcast()
        }
        IpAddr::V6(v6) => {
            v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || v6.to_ipv4_mapped().is_some()
        }
    };
    if special {
        return Err(PodError::SpecialIp {
            interface: interface.to_string(),
            ip,
        });
    }
    Ok(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_pod_list() {
        let pods = parse(
            r#"[{"interface": "veth1a", "mac": "02:AB:00:00:00:01",
                 "ips": ["10.0.0.2", "fd00::2", "10.0.0.2"]}]"#,
        )
        .expect("valid");
        assert_eq!(pods.len(), 1);
        assert_eq!(pods[0].interface.as_str(), "veth1a");
        assert_eq!(pods[0].mac.to_string(), "02:ab:00:00:00:01");
        assert_eq!(pods[0].mac.hex(), "0x02ab00000001");
        assert_eq!(pods[0].ips.len(), 2, "duplicates folded");
    }

    #[test]
    fn link_local_is_modified_eui64() {
        let mac: Mac = "02:16:00:00:00:0a".parse().expect("mac");
        assert_eq!(mac.eui64_link_local().to_string(), "fe80::16:ff:fe00:a");
    }

    #[test]
    fn rejects_what_could_escape_the_ruleset_or_name_no_pod() {
        for (json, want) in [
            (r#"{"interface": "a"}"#, "JSON list"),
            (
                r#"[{"interface": "a\" accept", "mac": "02:00:00:00:00:01"}]"#,
                "interface name",
            ),
            (
                r#"[{"interface": "", "mac": "02:00:00:00:00:01"}]"#,
                "interface name",
            ),
            (
                r#"[{"interface": "abcdefghijklmnop", "mac": "02:00:00:00:00:01"}]"#,
                "interface name",
            ),
            (r#"[{"interface": "a", "mac": "03:00:00:00:00:01"}]"#, "MAC"),
            (r#"[{"interface": "a", "mac": "00:00:00:00:00:00"}]"#, "MAC"),
            (r#"[{"interface": "a", "mac": "02:00:00:00:00"}]"#, "MAC"),
            (
                r#"[{"interface": "a", "mac": "02:00:00:00:00:01:02"}]"#,
                "MAC",
            ),
            (r#"[{"interface": "a", "mac": "02:00:00:00:00:+1"}]"#, "MAC"),
            (
                r#"[{"interface": "a", "mac": "02:00:00:00:00:01", "ips": ["x"]}]"#,
                "not an address",
            ),
            (
                r#"[{"interface": "a", "mac": "02:00:00:00:00:01", "ips": ["0.0.0.0"]}]"#,
                "cannot be",
            ),
            (
                r#"[{"interface": "a", "mac": "02:00:00:00:00:01", "ips": ["::ffff:10.0.0.1"]}]"#,
                "cannot be",
            ),
            (
                r#"[{"interface": "a", "mac": "02:00:00:00:00:01", "ips": ["127.0.0.1"]}]"#,
                "cannot be",
            ),
            (
                r#"[{"interface": "a", "mac": "02:00:00:00:00:01", "ips": ["ff02::1"]}]"#,
                "cannot be",
            ),
            (
                r#"[{"interface": "a", "mac": "02:00:00:00:00:01", "extra": 1}]"#,
                "JSON list",
            ),
            (
                r#"[{"interface": "a", "mac": "02:00:00:00:00:01"},
                    {"interface": "a", "mac": "02:00:00:00:00:02"}]"#,
                "twice",
            ),
        ] {
            let err = parse(json).expect_err(json).to_string();
            assert!(err.contains(want), "{json}: {err}");
        }
    }
}
