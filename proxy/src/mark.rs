//! `--proxy-mark`: the packet mark (`SO_MARK`) on every socket the proxy connects with.
//!
//! `portcullis-init --proxy-mark M` exempts from the redirect and the UDP/SCTP queue only what
//! the proxy's UID sends *with* mark M; by UID alone, any process running as UID 2171 (an image
//! with `USER 2171`, a debug container) would go out unchecked. Setting a mark takes
//! CAP_NET_ADMIN, which only the proxy has. So every upstream connection ([`connect`]: both
//! directions, and the controller's) carries the mark, and the proxy refuses to start when it
//! cannot set it ([`install`]): an unmarked proxy would have its own connections redirected into
//! itself.

use std::io;
use std::net::SocketAddr;
use std::sync::OnceLock;

use socket2::SockRef;
use tokio::net::TcpSocket;

static MARK: OnceLock<Option<u32>> = OnceLock::new();

/// Why the proxy cannot use `--proxy-mark`. (The I/O error is part of the message, not a
/// `source`, so that a report prints it once.)
#[derive(Debug, thiserror::Error)]
pub enum MarkError {
    /// Setting `SO_MARK` was refused: no CAP_NET_ADMIN.
    #[error(
        "--proxy-mark {mark:#x} (PORTCULLIS_PROXY_MARK) needs CAP_NET_ADMIN to set SO_MARK on the \
         proxy's sockets, and this process cannot ({error}); without the mark portcullis-init's \
         rules would redirect the proxy's own connections into itself. Give the proxy NET_ADMIN \
         (the injector does when UDP is enforced) or unset PORTCULLIS_PROXY_MARK in both the \
         init container and the proxy"
    )]
    NoCapability { mark: u32, error: io::Error },
    /// Any other failure of the check.
    #[error("cannot check --proxy-mark {mark:#x}: {error}")]
    Socket { mark: u32, error: io::Error },
    /// [`install`] was called twice with different marks.
    #[error("--proxy-mark is already {old:?} in this process, not {new:?}")]
    Conflict { old: Option<u32>, new: Option<u32> },
}

/// A packet mark: `0x1000` (hex) or `4096` (decimal), not 0 (the same rules as
/// `portcullis-init --proxy-mark`).
pub fn parse_mark(s: &str) -> Result<u32, portcullis_contract::MarkError> {
    s.parse::<portcullis_contract::Mark>()
        .map(portcullis_contract::Mark::get)
}

/// Checks that the mark can be set (on a throwaway socket) and makes it the mark of every
/// socket [`apply`] sees from now on. Call once at start, after CAP_NET_ADMIN is raised.
pub fn install(mark: Option<u32>) -> Result<(), MarkError> {
    if let Some(m) = mark {
        check(m)?;
    }
    let now = *MARK.get_or_init(|| mark);
    if now != mark {
        return Err(MarkError::Conflict {
            old: now,
            new: mark,
        });
    }
    Ok(())
}

/// Whether this process can set `mark` on a socket.
pub fn check(mark: u32) -> Result<(), MarkError> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .map_err(|error| MarkError::Socket { mark, error })?;
    match socket.set_mark(mark) {
        Ok(()) => Ok(()),
        Err(error) if error.raw_os_error() == Some(nix::libc::EPERM) => {
            Err(MarkError::NoCapability { mark, error })
        }
        Err(error) => Err(MarkError::Socket { mark, error }),
    }
}

/// The mark [`install`] set, if any.
pub fn current() -> Option<u32> {
    MARK.get().copied().flatten()
}

/// Sets the installed mark on `socket` (nothing without `--proxy-mark`).
pub fn apply(socket: &TcpSocket) -> io::Result<()> {
    match current() {
        Some(m) => SockRef::from(socket).set_mark(m),
        None => Ok(()),
    }
}

/// A new TCP socket for `destination`, marked.
pub fn socket_for(destination: SocketAddr) -> io::Result<TcpSocket> {
    let socket = match destination {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    apply(&socket)?;
    Ok(socket)
}

/// Connects to `host:port` with marked sockets, trying each address in turn: the controller
/// client's connection. With a mark, a name is resolved with a marked socket too
/// ([`crate::resolve`]): the libc resolver's unmarked query would meet the pod's own queue.
pub async fn connect_host(host: &str, port: u16) -> io::Result<tokio::net::TcpStream> {
    let addrs: Vec<SocketAddr> = match (host.parse::<std::net::IpAddr>(), current()) {
        (Ok(ip), _) => vec![SocketAddr::new(ip, port)],
        (Err(_), Some(mark)) => crate::resolve::lookup(host, mark)
            .await?
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect(),
        (Err(_), None) => tokio::net::lookup_host((host, port)).await?.collect(),
    };
    let mut last = None;
    for addr in addrs {
        match socket_for(addr)?.connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{host} resolves to no address"),
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_parse_in_hex_and_decimal_and_zero_is_refused() {
        assert_eq!(parse_mark("0x1000"), Ok(0x1000));
        assert_eq!(parse_mark("4096"), Ok(0x1000));
        assert_eq!(parse_mark("0xFFFFFFFF"), Ok(u32::MAX));
        assert!(parse_mark("0")
            .unwrap_err()
            .to_string()
            .contains("must not be 0"));
        for bad in ["", "0x", "mark", "0x100000000", "-1"] {
            assert!(parse_mark(bad)
                .unwrap_err()
                .to_string()
                .contains("not a packet mark"));
        }
    }

    #[test]
    fn the_error_without_the_capability_says_what_is_needed() {
        let e = MarkError::NoCapability {
            mark: 0x1000,
            error: io::Error::from_raw_os_error(nix::libc::EPERM),
        };
        let text = e.to_string();
        assert!(text.contains("--proxy-mark 0x1000"), "{text}");
        assert!(text.contains("needs CAP_NET_ADMIN"), "{text}");
    }
}
