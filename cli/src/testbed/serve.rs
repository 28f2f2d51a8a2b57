//! The testbed's application: on every declared TCP port, answer each connection with the pod's
//! identity, so a probe knows it reached the right pod through the proxies.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result};

pub fn serve(identity: &str, ports: &[u16]) -> Result<()> {
    let mut handles = Vec::new();
    for &port in ports {
        let listener = bind(port)?;
        let identity = identity.to_string();
        handles.push(std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let identity = identity.clone();
                std::thread::spawn(move || answer(stream, &identity));
            }
        }));
    }
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

fn bind(port: u16) -> Result<TcpListener> {
    // Dual-stack where the namespace has IPv6, IPv4 otherwise.
    TcpListener::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)))
        .or_else(|_| TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))))
        .with_context(|| format!("cannot listen on port {port}"))
}

fn answer(stream: TcpStream, identity: &str) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(&stream);
    let mut line = String::new();
    if reader.read_line(&mut line).is_ok() {
        let mut w = &stream;
        let _ = writeln!(w, "{identity}");
    }
}

/// A probe: connect, say hello, and expect the destination's identity back. Anything else — a
/// reset, an early close, a timeout — means the connection was not allowed through.
pub fn probe(addr: SocketAddr, expect: &str, timeout: Duration) -> bool {
    let Ok(stream) = TcpStream::connect_timeout(&addr, timeout) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    let mut w = &stream;
    if writeln!(w, "probe").is_err() {
        return false;
    }
    let mut line = String::new();
    match BufReader::new(&stream).read_line(&mut line) {
        Ok(n) if n > 0 => line.trim() == expect,
        _ => false,
    }
}
