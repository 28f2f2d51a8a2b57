//! The testbed's application, and the probe that talks to it.
//!
//! The server answers on TCP (a line in, the pod's identity back) and on UDP (a datagram in, the
//! identity back), so a probe knows which pod it reached through the proxies (and, through a
//! Service, which backend). It serves the ports listed in a file the testbed rewrites (`wanted`,
//! a JSON list of `{"port":80,"protocol":"TCP"}`), picks up new ones within 100 ms, and reports
//! in another file (`bound`) which ones it listens on and which it could not bind, and why.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{self, BufRead, BufReader, ErrorKind, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Result;
use portcullis_policy::matrix::Probe;
use portcullis_policy::Protocol;
use serde::{Deserialize, Serialize};

/// What the server reports in its `bound` file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bound {
    pub listening: Vec<Probe>,
    /// Ports it could not listen on (e.g. the proxy's own ports), with the error.
    pub failed: Vec<(Probe, String)>,
}

impl Bound {
    /// Whether the server has tried `probe` (successfully or not).
    pub fn knows(&self, probe: Probe) -> bool {
        self.listening.contains(&probe) || self.failed.iter().any(|(p, _)| *p == probe)
    }
}

/// Serves `identity` on every port listed in `wanted`, forever; reports in `bound`.
pub fn serve(identity: &str, wanted: &Path, bound: &Path) -> Result<()> {
    let identity: Arc<str> = Arc::from(identity);
    let mut tried: BTreeMap<Probe, io::Result<u16>> = BTreeMap::new();
    let mut first = true;
    loop {
        let list: Vec<Probe> = match fs::read(wanted) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                eprintln!(
                    "{}: not a port list ({e}); keeping the current ports",
                    wanted.display()
                );
                Vec::new()
            }),
            Err(e) => {
                eprintln!("cannot read {}: {e}", wanted.display());
                Vec::new()
            }
        };
        let mut changed = first;
        first = false;
        for probe in list {
            if let std::collections::btree_map::Entry::Vacant(slot) = tried.entry(probe) {
                let result = listen(identity.clone(), probe);
                if let Err(e) = &result {
                    eprintln!("cannot listen on {probe}: {e}");
                }
                slot.insert(result);
                changed = true;
            }
        }
        if changed {
            let report = Bound {
                listening: tried
                    .iter()
                    .filter(|(_, r)| r.is_ok())
                    .map(|(p, _)| *p)
                    .collect(),
                failed: tried
                    .iter()
                    .filter_map(|(p, r)| r.as_ref().err().map(|e| (*p, e.to_string())))
                    .collect(),
            };
            write_atomically(bound, &serde_json::to_vec(&report)?)?;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Writes `bytes` to `path` through a rename, so a reader never sees half a file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes)?;
    fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    fs::rename(&tmp, path)?;
    Ok(())
}

/// Starts answering on `probe` (port 0: a free port) in a background thread; returns the port.
pub fn listen(identity: Arc<str>, probe: Probe) -> io::Result<u16> {
    match probe.protocol {
        Protocol::Tcp => {
            let listener = bind_tcp(probe.port)?;
            let port = listener.local_addr()?.port();
            std::thread::spawn(move || {
                for stream in listener.incoming().flatten() {
                    let identity = identity.clone();
                    std::thread::spawn(move || answer_tcp(stream, &identity));
                }
            });
            Ok(port)
        }
        Protocol::Udp => {
            let socket = bind_udp(probe.port)?;
            let port = socket.local_addr()?.port();
            std::thread::spawn(move || answer_udp(&socket, &identity));
            Ok(port)
        }
        Protocol::Sctp | Protocol::Other(_) => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this kernel has no SCTP sockets",
        )),
    }
}

fn bind_tcp(port: u16) -> io::Result<TcpListener> {
    // Dual-stack where the namespace has IPv6, IPv4 otherwise.
    TcpListener::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)))
        .or_else(|_| TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))))
}

fn bind_udp(port: u16) -> io::Result<UdpSocket> {
    UdpSocket::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)))
        .or_else(|_| UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], port))))
}

fn answer_tcp(stream: TcpStream, identity: &str) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(&stream);
    let mut line = String::new();
    if reader.read_line(&mut line).is_ok() {
        let mut w = &stream;
        let _ = writeln!(w, "{identity}");
    }
}

fn answer_udp(socket: &UdpSocket, identity: &str) {
    let mut buf = [0u8; 512];
    let reply = format!("{identity}\n");
    loop {
        match socket.recv_from(&mut buf) {
            Ok((_, from)) => {
                let _ = socket.send_to(reply.as_bytes(), from);
            }
            // ICMP errors of earlier replies surface here; they do not stop the server.
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

/// Why a probe got no identity back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoAnswer {
    /// TCP RST to the SYN, or ICMP port unreachable for UDP.
    Refused,
    /// Reset after the connection was established (a proxy's denial).
    Reset,
    /// Closed without an answer.
    Closed,
    /// Nothing came back in time (a dropped packet, or an unanswered datagram).
    Timeout,
    /// Any other socket error.
    Error,
}

impl fmt::Display for NoAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NoAnswer::Refused => "refused",
            NoAnswer::Reset => "reset",
            NoAnswer::Closed => "closed without an answer",
            NoAnswer::Timeout => "no answer in time",
            NoAnswer::Error => "socket error",
        })
    }
}

fn classify(e: &io::Error) -> NoAnswer {
    match e.kind() {
        ErrorKind::ConnectionRefused => NoAnswer::Refused,
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe => {
            NoAnswer::Reset
        }
        ErrorKind::TimedOut | ErrorKind::WouldBlock => NoAnswer::Timeout,
        _ => NoAnswer::Error,
    }
}

/// A probe: say hello over `protocol` and return the identity that answers. Anything else — a
/// reset, an early close, a timeout — means the connection was not let through (or nothing
/// listens; the testbed knows where its servers listen and tells these apart).
pub fn probe(addr: SocketAddr, protocol: Protocol, timeout: Duration) -> Result<String, NoAnswer> {
    match protocol {
        Protocol::Tcp => probe_tcp(addr, timeout),
        Protocol::Udp => probe_udp(addr, timeout),
        Protocol::Sctp | Protocol::Other(_) => Err(NoAnswer::Error),
    }
}

fn probe_tcp(addr: SocketAddr, timeout: Duration) -> Result<String, NoAnswer> {
    let stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| classify(&e))?;
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    let mut w = &stream;
    writeln!(w, "probe").map_err(|e| classify(&e))?;
    let mut line = String::new();
    match BufReader::new(&stream).read_line(&mut line) {
        Ok(0) => Err(NoAnswer::Closed),
        Ok(_) => Ok(line.trim().to_string()),
        Err(e) => Err(classify(&e)),
    }
}

fn probe_udp(addr: SocketAddr, timeout: Duration) -> Result<String, NoAnswer> {
    let local: SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).map_err(|e| classify(&e))?;
    // Connected: only the probed address's answers count, and ICMP errors are reported.
    socket.connect(addr).map_err(|e| classify(&e))?;
    // Sent up to three times within the timeout, as a UDP client (a resolver) does: a datagram
    // lost on its way (a neighbour still being resolved) is not a denial. Every copy belongs to
    // the one flow the first opened, so a denied flow stays denied.
    let wait = (timeout / UDP_SENDS).max(Duration::from_millis(1));
    let mut last = NoAnswer::Error;
    for _ in 0..UDP_SENDS {
        socket
            .set_read_timeout(Some(wait))
            .map_err(|e| classify(&e))?;
        socket.send(b"probe\n").map_err(|e| classify(&e))?;
        let mut buf = [0u8; 512];
        match socket.recv(&mut buf) {
            Ok(n) => return Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string()),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                last = classify(&e);
            }
            Err(e) => return Err(classify(&e)),
        }
    }
    Err(last)
}

/// Copies of a UDP probe sent within its timeout.
const UDP_SENDS: u32 = 3;

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(2);

    fn loopback(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn tcp_and_udp_probes_get_the_identity_back() {
        let id: Arc<str> = Arc::from("x/a");
        for protocol in [Protocol::Tcp, Protocol::Udp] {
            let port = listen(id.clone(), Probe { port: 0, protocol }).unwrap();
            assert_eq!(probe(loopback(port), protocol, T), Ok("x/a".to_string()));
            // Many in a row: the server keeps answering.
            for _ in 0..5 {
                assert_eq!(probe(loopback(port), protocol, T).as_deref(), Ok("x/a"));
            }
        }
    }

    #[test]
    fn nothing_listening_is_refused_not_answered() {
        for protocol in [Protocol::Tcp, Protocol::Udp] {
            // A port that was free a moment ago and is free again.
            let port = match protocol {
                Protocol::Tcp => TcpListener::bind(loopback(0)).unwrap().local_addr(),
                _ => UdpSocket::bind(loopback(0)).unwrap().local_addr(),
            }
            .unwrap()
            .port();
            assert_eq!(
                probe(loopback(port), protocol, T),
                Err(NoAnswer::Refused),
                "{protocol}"
            );
        }
    }

    #[test]
    fn an_unanswered_datagram_times_out() {
        // A bound socket that never answers: the datagram is swallowed, as a drop rule would.
        let silent = UdpSocket::bind(loopback(0)).unwrap();
        let addr = silent.local_addr().unwrap();
        assert_eq!(
            probe(addr, Protocol::Udp, Duration::from_millis(300)),
            Err(NoAnswer::Timeout)
        );
    }

    #[test]
    fn the_server_serves_what_the_wanted_file_lists_and_reports_failures() {
        let dir = std::env::temp_dir().join(format!("pc-tb-serve-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let (wanted, bound) = (dir.join("wanted.json"), dir.join("bound.json"));
        let free = |p: Protocol| -> u16 {
            match p {
                Protocol::Tcp => TcpListener::bind(("::", 0)).unwrap().local_addr(),
                _ => UdpSocket::bind(("::", 0)).unwrap().local_addr(),
            }
            .unwrap()
            .port()
        };
        // One port held by someone else: the server must report it, not die.
        let taken = TcpListener::bind(("::", 0)).unwrap();
        let taken_port = taken.local_addr().unwrap().port();
        let tcp = Probe {
            port: free(Protocol::Tcp),
            protocol: Protocol::Tcp,
        };
        let udp = Probe {
            port: free(Protocol::Udp),
            protocol: Protocol::Udp,
        };
        let busy = Probe {
            port: taken_port,
            protocol: Protocol::Tcp,
        };
        fs::write(&wanted, serde_json::to_vec(&[tcp]).unwrap()).unwrap();
        let (w, b) = (wanted.clone(), bound.clone());
        std::thread::spawn(move || serve("y/b", &w, &b));
        let wait_for = |done: &dyn Fn(&Bound) -> bool| -> Bound {
            for _ in 0..100 {
                if let Ok(bytes) = fs::read(&bound) {
                    let report: Bound = serde_json::from_slice(&bytes).unwrap();
                    if done(&report) {
                        return report;
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            panic!("the server never reported");
        };
        assert_eq!(wait_for(&|b| b.knows(tcp)).listening, vec![tcp]);
        assert_eq!(
            probe(loopback(tcp.port), Protocol::Tcp, T).as_deref(),
            Ok("y/b")
        );
        // A later list adds ports without a restart.
        fs::write(&wanted, serde_json::to_vec(&[tcp, udp, busy]).unwrap()).unwrap();
        let report = wait_for(&|b| b.knows(udp) && b.knows(busy));
        assert!(report.listening.contains(&udp), "{report:?}");
        assert_eq!(report.failed.len(), 1, "{report:?}");
        assert_eq!(report.failed[0].0, busy);
        assert_eq!(
            probe(loopback(udp.port), Protocol::Udp, T).as_deref(),
            Ok("y/b")
        );
        let _ = fs::remove_dir_all(&dir);
    }
}
