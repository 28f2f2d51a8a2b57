//! Resets a local TCP socket by its addresses: `SOCK_DESTROY` over `NETLINK_SOCK_DIAG`, as
//! `ss -K` does. The kernel aborts the socket: the application's next call fails with
//! `ECONNABORTED` and the peer receives a reset. Revocation uses it for inbound TCP that the queue
//! let through (`--inbound-tcp queue`), so that a revoked connection ends at both ends as it does
//! through the relay. Needs `CAP_NET_ADMIN` and a kernel with `CONFIG_INET_DIAG_DESTROY`; without
//! them the caller still deletes the conntrack entry, and the connection's next packet is judged
//! and dropped. Blocking: call it off the async runtime.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;

use nix::sys::socket::{
    recv, send, setsockopt, socket, sockopt, AddressFamily, MsgFlags, SockFlag, SockProtocol,
    SockType,
};
use nix::sys::time::TimeVal;

const SOCK_DESTROY: u16 = 21;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLMSG_ERROR: u16 = 2;
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
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )?;
    setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(2, 0))?;
    let request = request(local, remote);
    send(fd.as_raw_fd(), &request, MsgFlags::empty())?;
    let mut buf = [0u8; 512];
    let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
    match ack_error(buf.get(..n).unwrap_or(&[])) {
        Some(0) => Ok(Destroyed::Yes),
        Some(e) if -e == nix::libc::ENOENT => Ok(Destroyed::Gone),
        Some(e) => Err(io::Error::from_raw_os_error(-e)),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "SOCK_DESTROY: no acknowledgement from the kernel",
        )),
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
    let mut msg = Vec::with_capacity(16 + body.len());
    msg.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
    msg.extend_from_slice(&SOCK_DESTROY.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&body);
    msg
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

/// The error code of an `NLMSG_ERROR` acknowledgement (0 for success).
fn ack_error(reply: &[u8]) -> Option<i32> {
    let kind = u16::from_ne_bytes(reply.get(4..6)?.try_into().ok()?);
    if kind != NLMSG_ERROR {
        return None;
    }
    Some(i32::from_ne_bytes(reply.get(16..20)?.try_into().ok()?))
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

    #[test]
    fn acknowledgements_are_read_without_trusting_their_length() {
        assert_eq!(ack_error(&[]), None);
        let mut ok = vec![0u8; 36];
        ok[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        assert_eq!(ack_error(&ok), Some(0));
        ok[16..20].copy_from_slice(&(-2i32).to_ne_bytes());
        assert_eq!(ack_error(&ok), Some(-2));
        assert_eq!(ack_error(&ok[..18]), None);
    }
}
