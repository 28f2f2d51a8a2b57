//! Protocols and port ranges.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Transport protocols NetworkPolicy knows. The default, when a policy omits it, is TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
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
