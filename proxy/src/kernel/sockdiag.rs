//! Resets a local TCP socket by its addresses: `SOCK_DESTROY` over `NETLINK_SOCK_DIAG`, as
//! `ss -K` does. The kernel aborts the socket: the application's next call fails with
//! `ECONNABORTED` and the peer receives a reset. Revocation uses it for inbound TCP that the queue
//! let through (`--inbound-tcp queue`), so that a revoked connection ends at both ends as it does
//! through the relay. Needs `CAP_NET_ADMIN` and a kernel with `CONFIG_INET_DIAG_DESTROY`; without
//! them the caller still deletes the conntrack entry, and the connection's next packet is judged
//! and dropped. Blocking: call it off the async runtime.

use std::io;
use std::net::{IpAddr, SocketAddr};

use nix::sys::socket::SockProtocol;

use super::netlink::{self, NLM_F_ACK, NLM_F_REQUEST};

const SOCK_DESTROY: u16 = 21;
const IPPROTO_TCP: u8 = 6;
/// `INET_DIAG_NOCOOKIE`: find the socket by its addresses alone.
const NO_COOKIE: u32 = u32::MAX;

/// What came of a reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destroyed {
    Yes,
    /// No such socket (already closed).
    Gone,
}

/// Aborts the TCP socket bound to `local` and connected to `remote` in this network namespace.
pub fn destroy_tcp(local: SocketAddr, remote: SocketAddr) -> io::Result<Destroyed> {
    let socket = netlink::Socket::open(SockProtocol::NetlinkSockDiag, None)?;
    socket.send(&request(local, remote))?;
    match socket.receive(|_| {}) {
        Ok(()) => Ok(Destroyed::Yes),
        Err(e) if e.raw_os_error() == Some(nix::libc::ENOENT) => Ok(Destroyed::Gone),
        Err(e) => Err(e),
    }
}

/// `nlmsghdr` + `inet_diag_req_v2` for `SOCK_DESTROY`. Addresses as the socket holds them: an
/// IPv4 peer of a dual-stack socket is found by its IPv4 addresses too.
fn request(local: SocketAddr, remote: SocketAddr) -> Vec<u8> {
    let (family, src, dst) = match (local.ip(), remote.ip()) {
        (IpAddr::V4(l), IpAddr::V4(r)) => {
            (nix::libc::AF_INET, pad16(&l.octets()), pad16(&r.octets()))
        }
        (l, r) => (nix::libc::AF_INET6, v6(l).octets(), v6(r).octets()),
    };
    let mut body = Vec::with_capacity(56);
    body.extend_from_slice(&[family as u8, IPPROTO_TCP, 0, 0]);
    body.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    body.extend_from_slice(&local.port().to_be_bytes());
    body.extend_from_slice(&remote.port().to_be_bytes());
    body.extend_from_slice(&src);
    body.extend_from_slice(&dst);
    body.extend_from_slice(&0u32.to_ne_bytes()); // any interface
    body.extend_from_slice(&NO_COOKIE.to_ne_bytes());
    body.extend_from_slice(&NO_COOKIE.to_ne_bytes());
    netlink::message(SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, 1, &body)
}

fn pad16(v4: &[u8; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(v4);
    out
}

fn v6(ip: IpAddr) -> std::net::Ipv6Addr {
    match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_names_the_socket_by_both_ends() {
        let m = request(
            "10.0.0.1:8080".parse().unwrap(),
            "10.0.0.2:40000".parse().unwrap(),
        );
        assert_eq!(m.len(), 16 + 56);
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), SOCK_DESTROY);
        assert_eq!(m[16], nix::libc::AF_INET as u8);
        assert_eq!(&m[24..26], &8080u16.to_be_bytes());
        assert_eq!(&m[26..28], &40000u16.to_be_bytes());
        assert_eq!(&m[28..32], &[10, 0, 0, 1]);
        assert_eq!(&m[44..48], &[10, 0, 0, 2]);
        let v6 = request(
            "[fd00::1]:80".parse().unwrap(),
            "[fd00::2]:1".parse().unwrap(),
        );
        assert_eq!(v6[16], nix::libc::AF_INET6 as u8);
    }
}
