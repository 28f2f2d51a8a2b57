//! Where a redirected connection was going, and who the peer is.
//!
//! Both listeners receive connections that iptables `REDIRECT` rewrote; `SO_ORIGINAL_DST` gives
//! back the destination the client asked for.
//!
//! - Inbound: the peer is the source; the connection goes on to the original destination, the
//!   pod's own IP and port. Connecting to the pod IP rather than 127.0.0.1 keeps Kubernetes'
//!   meaning without a mesh: an application bound only to localhost stays unreachable from other
//!   pods, and one bound only to the pod IP still works. The proxy's own connections are exempt
//!   from redirection by its UID, so this does not loop. Their source is 127.0.0.6 (IPv4), as
//!   with Istio's sidecar, so that TIME_WAIT ports can be reused (see `connection::connect`).
//!   Only the pod's own addresses qualify ([`crate::inbound::relay`]): anything else is a relay or a
//!   crafted packet and is refused here, before any policy decision.
//! - Outbound: the peer is the original destination, and the connection goes there.
//!
//! An IPv6 link-local destination keeps its scope id (the interface), without which it cannot be
//! connected to.

use std::io;
use std::net::{IpAddr, SocketAddr, SocketAddrV6};

use portcullis_policy::table::canonical;
use portcullis_policy::Direction;
use socket2::SockRef;
use tokio::net::TcpStream;

use crate::inbound::relay::{ForeignDestination, PodAddresses};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub direction: Direction,
    /// Who opened the connection.
    pub source: SocketAddr,
    /// Where it was going before the redirect; the proxy connects there.
    pub destination: SocketAddr,
}

impl Route {
    /// The other end, as the policy sees it: the source for ingress, the destination for egress.
    pub fn peer(&self) -> IpAddr {
        match self.direction {
            Direction::Ingress => self.source.ip(),
            Direction::Egress => self.destination.ip(),
        }
    }

    /// The policy port: the destination port in both directions.
    pub fn port(&self) -> u16 {
        self.destination.port()
    }
}

/// Why a connection has no route through the proxy.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// No NAT happened: someone connected to the proxy port itself.
    #[error("connection was not redirected by iptables (no original destination)")]
    NotRedirected,
    /// Inbound only: the original destination is not one of this pod's addresses.
    #[error("{} ({destination})", why.log_reason())]
    ForeignDestination {
        why: ForeignDestination,
        destination: SocketAddr,
    },
    #[error("cannot read the original destination: {0}")]
    Io(io::Error),
}

impl RouteError {
    /// The `reason` label of `portcullis_connections_refused_total`.
    pub fn metric_reason(&self) -> &'static str {
        match self {
            RouteError::NotRedirected => "not_redirected",
            RouteError::ForeignDestination { why, .. } => why.metric_reason(),
            RouteError::Io(_) => "original_destination_unreadable",
        }
    }
}

/// Works out the route of a connection accepted on `listener` (which is `direction`'s port).
/// Inbound, the original destination must be one of `pod`'s addresses.
pub fn route(
    direction: Direction,
    stream: &TcpStream,
    source: SocketAddr,
    listener: SocketAddr,
    pod: &PodAddresses,
) -> Result<Route, RouteError> {
    let mut destination = original_destination(stream, listener.is_ipv6())?;
    if destination.port() == listener.port() && is_local(destination.ip(), stream) {
        // A direct connection to the proxy's port (no NAT entry rewrote it): serving it would
        // connect the proxy to itself.
        return Err(RouteError::NotRedirected);
    }
    if direction == Direction::Ingress {
        destination = pod
            .check(destination)
            .map_err(|why| RouteError::ForeignDestination { why, destination })?;
    }
    Ok(Route {
        direction,
        source: canonical_addr(source),
        destination: canonical_addr(destination),
    })
}

fn is_local(ip: IpAddr, stream: &TcpStream) -> bool {
    ip.is_loopback() || ip.is_unspecified() || stream.local_addr().is_ok_and(|l| l.ip() == ip)
}

/// IPv4-mapped IPv6 becomes IPv4; an IPv6 address keeps its scope id.
fn canonical_addr(addr: SocketAddr) -> SocketAddr {
    match (canonical(addr.ip()), addr) {
        (IpAddr::V6(ip), SocketAddr::V6(v6)) => {
            SocketAddr::V6(SocketAddrV6::new(ip, v6.port(), 0, v6.scope_id()))
        }
        (ip, _) => SocketAddr::new(ip, addr.port()),
    }
}

/// `SO_ORIGINAL_DST` (IPv4) or `IP6T_SO_ORIGINAL_DST` (IPv6), per the socket's family: that of
/// the listener that accepted it (IPv6 listeners are IPv6-only).
pub fn original_destination(stream: &TcpStream, ipv6: bool) -> Result<SocketAddr, RouteError> {
    let socket = SockRef::from(stream);
    let original = if ipv6 {
        socket.original_dst_v6()
    } else {
        socket.original_dst_v4()
    };
    match original {
        Ok(addr) => addr.as_socket().ok_or(RouteError::NotRedirected),
        Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENOENT as i32) => {
            Err(RouteError::NotRedirected)
        }
        Err(e) => Err(RouteError::Io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peer_depends_on_the_direction() {
        let r = Route {
            direction: Direction::Ingress,
            source: "10.0.0.2:5555".parse().unwrap(),
            destination: "10.0.0.1:80".parse().unwrap(),
        };
        assert_eq!(r.peer(), "10.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(r.port(), 80);
        let out = Route {
            direction: Direction::Egress,
            ..r
        };
        assert_eq!(out.peer(), "10.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[tokio::test]
    async fn a_direct_connection_is_not_redirected() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let _client = TcpStream::connect(addr).await.expect("connect");
        let (stream, source) = listener.accept().await.expect("accept");
        let pod = PodAddresses::new(&["10.0.0.1".parse().unwrap()]).expect("pod");
        let err = route(Direction::Ingress, &stream, source, addr, &pod).expect_err("no NAT");
        assert!(matches!(err, RouteError::NotRedirected), "{err}");
        assert_eq!(err.metric_reason(), "not_redirected");
    }

    #[test]
    fn canonical_addresses_keep_the_ipv6_scope() {
        let scoped = SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 80, 7, 3));
        assert_eq!(
            canonical_addr(scoped),
            SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 80, 0, 3))
        );
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:80".parse().unwrap();
        assert_eq!(canonical_addr(mapped), "10.0.0.1:80".parse().unwrap());
    }
}
