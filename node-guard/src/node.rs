//! The node's own addresses, read from an interface (the CNI bridge's gateway address).

use std::net::IpAddr;

/// Why the addresses of an interface could not be read.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("listing interface addresses: {0}")]
    Getifaddrs(#[from] nix::Error),
}

/// The IPv4 and IPv6 addresses on `interface` (none when it does not exist yet: the CNI
/// creates its bridge with the first pod).
pub fn addresses(interface: &str) -> Result<Vec<IpAddr>, NodeError> {
    let mut out = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs()? {
        if ifa.interface_name != interface {
            continue;
        }
        let Some(addr) = ifa.address else { continue };
        let ip = if let Some(v4) = addr.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            IpAddr::V6(v6.ip())
        } else {
            continue;
        };
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    Ok(out)
}
