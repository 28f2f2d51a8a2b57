//! Protocols and port ranges.

use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;

use serde::{Deserialize, Serialize};

/// Transport protocols NetworkPolicy knows (the default, when a policy omits it, is TCP), and
/// every other IP protocol a packet can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
    /// Any other IP protocol, by number (UDP-Lite 136, GRE 47, IPIP 4, ...): a flow the queue
    /// judges that NetworkPolicy cannot name. It is port-less for policy, as CNIs treat it: only
    /// a rule without `ports` matches it ([`crate::table::CompiledRule::matches`]). Never read
    /// from a policy; build it with [`Protocol::from_number`].
    Other(u8),
}

/// IP protocols with a name of their own in audit lines and metrics: IANA's keyword, upper case
/// as Kubernetes spells TCP. Every other number reads `IP-PROTO-<n>`.
const NAMED: [(u8, &str); 14] = [
    (1, "ICMP"),
    (2, "IGMP"),
    (4, "IPIP"),
    (33, "DCCP"),
    (41, "IPV6"),
    (47, "GRE"),
    (50, "ESP"),
    (51, "AH"),
    (58, "ICMPV6"),
    (89, "OSPF"),
    (103, "PIM"),
    (112, "VRRP"),
    (115, "L2TP"),
    (136, "UDPLITE"),
];

/// `IP-PROTO-0` … `IP-PROTO-255`, made once, so that [`Protocol::as_str`] stays `&'static`.
static NUMBERED: LazyLock<Vec<String>> =
    LazyLock::new(|| (0..=255u8).map(|n| format!("IP-PROTO-{n}")).collect());

impl Protocol {
    /// The protocol of IP protocol number `n` (6, 17 and 132 are the named variants).
    pub fn from_number(n: u8) -> Protocol {
        match n {
            6 => Protocol::Tcp,
            17 => Protocol::Udp,
            132 => Protocol::Sctp,
            n => Protocol::Other(n),
        }
    }

    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
            Protocol::Other(n) => n,
        }
    }

    /// A protocol NetworkPolicy cannot name: no rule with `ports` ever matches it.
    pub fn is_portless(self) -> bool {
        matches!(self, Protocol::Other(_))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
            Protocol::Other(n) => NAMED
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, name)| *name)
                .unwrap_or_else(|| NUMBERED[usize::from(n)].as_str()),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A protocol NetworkPolicy does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported protocol {0:?} (expected TCP, UDP or SCTP)")]
pub struct UnsupportedProtocol(pub String);

impl FromStr for Protocol {
    type Err = UnsupportedProtocol;

    /// Kubernetes spells protocols in upper case; accept any case from people typing flags.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "TCP" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            "SCTP" => Ok(Protocol::Sctp),
            _ => Err(UnsupportedProtocol(s.to_string())),
        }
    }
}

/// An inclusive range of ports of one protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortRange {
    pub protocol: Protocol,
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn single(protocol: Protocol, port: u16) -> Self {
        PortRange {
            protocol,
            first: port,
            last: port,
        }
    }

    /// Every port of a protocol: a policy port entry with a protocol and no port.
    pub fn all(protocol: Protocol) -> Self {
        PortRange {
            protocol,
            first: 0,
            last: u16::MAX,
        }
    }

    #[inline]
    pub fn contains(&self, protocol: Protocol, port: u16) -> bool {
        self.protocol == protocol && self.first <= port && port <= self.last
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == 0 && self.last == u16::MAX {
            write!(f, "any/{}", self.protocol)
        } else if self.first == self.last {
            write!(f, "{}/{}", self.first, self.protocol)
        } else {
            write!(f, "{}-{}/{}", self.first, self.last, self.protocol)
        }
    }
}

/// Why a text is not a `port/protocol` probe.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortProtocolError {
    #[error(transparent)]
    Protocol(#[from] UnsupportedProtocol),
    #[error("invalid port {port:?} in {text:?} (expected e.g. 80/TCP)")]
    Port { port: String, text: String },
    #[error("port 0 in {0:?} is not a valid port")]
    Zero(String),
}

/// Parses `80/TCP`, `81/udp` or a bare `80` (TCP), as people write probes on the command line.
pub fn parse_port_protocol(s: &str) -> Result<(u16, Protocol), PortProtocolError> {
    let (port, protocol) = match s.split_once('/') {
        Some((port, protocol)) => (port, protocol.parse::<Protocol>()?),
        None => (s, Protocol::Tcp),
    };
    let port: u16 = port.trim().parse().map_err(|_| PortProtocolError::Port {
        port: port.to_string(),
        text: s.to_string(),
    })?;
    if port == 0 {
        return Err(PortProtocolError::Zero(s.to_string()));
    }
    Ok((port, protocol))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_ip_protocols_have_one_readable_name_and_no_port_range_holds_them() {
        assert_eq!(Protocol::from_number(136).as_str(), "UDPLITE");
        assert_eq!(Protocol::from_number(47).to_string(), "GRE");
        assert_eq!(Protocol::from_number(4).as_str(), "IPIP");
        assert_eq!(Protocol::from_number(253).as_str(), "IP-PROTO-253");
        assert_eq!(Protocol::from_number(0).as_str(), "IP-PROTO-0");
        assert_eq!(Protocol::from_number(17), Protocol::Udp);
        for n in 0..=255u8 {
            assert_eq!(Protocol::from_number(n).number(), n);
        }
        assert!(Protocol::Other(136).is_portless() && !Protocol::Udp.is_portless());
        // A policy cannot name one.
        assert!("UDPLITE".parse::<Protocol>().is_err());
        assert!("IP-PROTO-253".parse::<Protocol>().is_err());
        for p in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
            assert!(!PortRange::all(p).contains(Protocol::Other(136), 53));
        }
    }

    #[test]
    fn parses_probe_specs() {
        assert_eq!(parse_port_protocol("80/TCP"), Ok((80, Protocol::Tcp)));
        assert_eq!(parse_port_protocol("81/udp"), Ok((81, Protocol::Udp)));
        assert_eq!(parse_port_protocol("9000"), Ok((9000, Protocol::Tcp)));
        assert!(parse_port_protocol("80/ICMP").is_err());
        assert!(parse_port_protocol("http/TCP").is_err());
        assert!(parse_port_protocol("0").is_err());
        assert!(parse_port_protocol("70000").is_err());
    }

    #[test]
    fn range_contains_only_its_protocol() {
        let r = PortRange {
            protocol: Protocol::Tcp,
            first: 80,
            last: 90,
        };
        assert!(r.contains(Protocol::Tcp, 80));
        assert!(r.contains(Protocol::Tcp, 90));
        assert!(!r.contains(Protocol::Tcp, 91));
        assert!(!r.contains(Protocol::Udp, 85));
        assert_eq!(r.to_string(), "80-90/TCP");
    }
}
