//! The one netlink framing of the proxy: a blocking request/answer socket, message headers,
//! attributes (`nlattr`) and acknowledgements. [`super::conntrack`] (ctnetlink) and
//! [`super::sockdiag`] (`SOCK_DESTROY`) speak through it. Every read is bounds-checked: a short or
//! lying answer is an error, never a panic.
//!
//! Hand-written rather than `netlink-packet-core` + `netlink-packet-netfilter` (0.4, whose
//! `conntrack` module has Get/Delete and the tuple, mark and protoinfo attributes) and
//! `netlink-packet-sock-diag` (0.5, `SockDiagDestroy`): checked, they can express both requests,
//! but the proxy sends three fixed messages and reads six attributes; the framing below is the
//! whole of it (~120 lines, tested), while the crates add four dependencies (core, sys,
//! derive_more, zerocopy) and still need `CTA_ID`/`CTA_ZONE` as raw `DefaultNla`s. Moving to them
//! is a follow-up if the proxy ever speaks more netlink than this.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{
    bind, recv, sendto, setsockopt, socket, sockopt, AddressFamily, MsgFlags, NetlinkAddr,
    SockFlag, SockProtocol, SockType,
};
use nix::sys::time::TimeVal;

pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;
/// `sizeof(struct nlmsghdr)`.
pub const HEADER_LEN: usize = 16;

/// A netlink socket to the kernel in the current network namespace.
pub struct Socket {
    fd: OwnedFd,
    seq: u32,
}

impl Socket {
    /// Opens and binds a socket for `protocol`; `receive_buffer` for large dumps.
    pub fn open(protocol: SockProtocol, receive_buffer: Option<usize>) -> io::Result<Socket> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            protocol,
        )?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
        // A kernel that does not answer must not hang the caller.
        setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(2, 0))?;
        if let Some(bytes) = receive_buffer {
            setsockopt(&fd, sockopt::RcvBuf, &bytes)?;
        }
        Ok(Socket { fd, seq: 1 })
    }

    pub fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    pub fn send(&self, request: &[u8]) -> io::Result<()> {
        sendto(
            self.fd.as_raw_fd(),
            request,
            &NetlinkAddr::new(0, 0),
            MsgFlags::empty(),
        )?;
        Ok(())
    }

    /// Reads answers until `NLMSG_DONE` or an `NLMSG_ERROR` (an ack when its code is 0, else the
    /// error it carries), handing the payload of every other message to `each`.
    pub fn receive(&self, mut each: impl FnMut(&[u8])) -> io::Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
            let mut rest = buf.get(..n).unwrap_or(&[]);
            while rest.len() >= HEADER_LEN {
                let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                let kind = u16::from_ne_bytes([rest[4], rest[5]]);
                if len < HEADER_LEN || len > rest.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "bad netlink length",
                    ));
                }
                match kind {
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR => {
                        return match ack_error(&rest[..len]).unwrap_or(-nix::libc::EPROTO) {
                            0 => Ok(()),
                            code => Err(io::Error::from_raw_os_error(-code)),
                        };
                    }
                    _ => each(&rest[HEADER_LEN..len]),
                }
                rest = rest.get(align(len)..).unwrap_or(&[]);
            }
        }
    }
}

pub fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// `nlmsghdr` (port id 0: the kernel) followed by `body`.
pub fn message(kind: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
    let len = HEADER_LEN + body.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(body);
    m
}

/// The error code of an `NLMSG_ERROR` message (0 for an acknowledgement), or `None` when
/// `reply` is no such message or too short to say.
pub fn ack_error(reply: &[u8]) -> Option<i32> {
    let kind = u16::from_ne_bytes(reply.get(4..6)?.try_into().ok()?);
    if kind != NLMSG_ERROR {
        return None;
    }
    Some(i32::from_ne_bytes(
        reply.get(HEADER_LEN..HEADER_LEN + 4)?.try_into().ok()?,
    ))
}

pub fn put_attr(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(align(out.len()), 0);
}

pub fn put_nested(out: &mut Vec<u8>, kind: u16, inner: &[u8]) {
    put_attr(out, kind | NLA_F_NESTED, inner);
}

/// The attributes of a message payload (after any family header) or of a nested attribute:
/// `(type, value)`, stopping at the first one that does not fit.
pub fn attributes(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let head = data.get(..4)?;
        let len = usize::from(u16::from_ne_bytes([head[0], head[1]]));
        let kind = u16::from_ne_bytes([head[2], head[3]]) & NLA_TYPE_MASK;
        let value = data.get(4..len)?;
        data = data.get(align(len)..).unwrap_or(&[]);
        Some((kind, value))
    })
}

pub fn find(data: &[u8], kind: u16) -> Option<&[u8]> {
    attributes(data).find(|(k, _)| *k == kind).map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

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
