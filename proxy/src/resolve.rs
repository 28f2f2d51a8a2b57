//! Resolves the controller's host name with a marked socket (`--proxy-mark`).
//!
//! With the mark on, portcullis-init exempts only the proxy's *marked* packets. The libc resolver
//! (`getaddrinfo`) cannot mark its sockets, so its query to the cluster DNS would go to the pod's
//! own UDP queue, where it is dropped until the proxy has a table, which it gets from the
//! controller whose name it is resolving. So, with a mark, the proxy asks the nameservers of
//! `/etc/resolv.conf` itself (A and AAAA over UDP, the `search` list and `ndots` applied as libc
//! does), from a socket that carries the mark. Only the controller client uses it; everything a
//! peer sends back is bounds-checked and a bad answer is an error, never a panic.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use socket2::SockRef;
use tokio::net::UdpSocket;

/// How long one nameserver has to answer one question.
const TIMEOUT: Duration = Duration::from_secs(2);
const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;

/// What of `/etc/resolv.conf` the lookup uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvConf {
    pub nameservers: Vec<IpAddr>,
    pub search: Vec<String>,
    pub ndots: usize,
}

impl ResolvConf {
    pub fn parse(text: &str) -> ResolvConf {
        let mut conf = ResolvConf {
            nameservers: Vec::new(),
            search: Vec::new(),
            ndots: 1,
        };
        for line in text.lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    if let Some(ip) = words.next().and_then(|w| w.parse().ok()) {
                        conf.nameservers.push(ip);
                    }
                }
                Some("search") | Some("domain") => {
                    conf.search = words.map(|w| w.trim_end_matches('.').to_string()).collect();
                }
                Some("options") => {
                    for o in words {
                        if let Some(n) = o.strip_prefix("ndots:").and_then(|n| n.parse().ok()) {
                            conf.ndots = n;
                        }
                    }
                }
                _ => {}
            }
        }
        if conf.nameservers.is_empty() {
            conf.nameservers.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
        conf
    }

    /// The names to ask, in order, as libc tries them.
    pub fn candidates(&self, name: &str) -> Vec<String> {
        if let Some(absolute) = name.strip_suffix('.') {
            return vec![absolute.to_string()];
        }
        let searched = self.search.iter().map(|d| format!("{name}.{d}"));
        if name.matches('.').count() >= self.ndots {
            std::iter::once(name.to_string()).chain(searched).collect()
        } else {
            searched.chain(std::iter::once(name.to_string())).collect()
        }
    }
}

/// The addresses of `host` (the `/etc/resolv.conf` way), asked from a socket with `mark`.
pub async fn lookup(host: &str, mark: u32) -> io::Result<Vec<IpAddr>> {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    lookup_with(&ResolvConf::parse(&text), host, mark).await
}

pub async fn lookup_with(conf: &ResolvConf, host: &str, mark: u32) -> io::Result<Vec<IpAddr>> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{host}: no such name"));
    for name in conf.candidates(host) {
        for server in &conf.nameservers {
            let mut found = Vec::new();
            let mut answered = false;
            for qtype in [TYPE_A, TYPE_AAAA] {
                match ask(*server, &name, qtype, mark).await {
                    Ok(Some(addrs)) => {
                        answered = true;
                        found.extend(addrs);
                    }
                    Ok(None) => answered = true,
                    Err(e) => last = e,
                }
            }
            if !found.is_empty() {
                return Ok(found);
            }
            if answered {
                // This server says the name has no address: try the next name.
                break;
            }
        }
    }
    Err(last)
}

/// One question to one server: `Some(addresses)` (maybe empty) or `None` for NXDOMAIN.
async fn ask(server: IpAddr, name: &str, qtype: u16, mark: u32) -> io::Result<Option<Vec<IpAddr>>> {
    let local: SocketAddr = match server {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await?;
    SockRef::from(&socket).set_mark(mark)?;
    socket.connect((server, 53)).await?;
    let id = query_id();
    socket.send(&query(id, name, qtype)?).await?;
    let mut buf = vec![0u8; 1500];
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let n = tokio::time::timeout_at(deadline, socket.recv(&mut buf))
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{server}:53 did not answer for {name} within {TIMEOUT:?}"),
                )
            })??;
        match parse_answer(id, qtype, &buf[..n]) {
            Err(Reply::NotOurs) => continue,
            Err(Reply::NxDomain) => return Ok(None),
            Err(Reply::Bad(why)) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{server}:53 about {name}: {why}"),
                ))
            }
            Ok(addrs) => return Ok(Some(addrs)),
        }
    }
}

fn query_id() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() as u16
}

/// A recursive query for `name`/`qtype`, class IN.
pub fn query(id: u16, name: &str, qtype: u16) -> io::Result<Vec<u8>> {
    let mut q = Vec::with_capacity(32 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        if label.len() > 63 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name}: a label is longer than 63 bytes"),
            ));
        }
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    Ok(q)
}

/// Why a datagram gave no addresses.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// Not an answer to our question (another id): keep waiting.
    NotOurs,
    NxDomain,
    Bad(String),
}

/// The addresses of type `qtype` in the answer to query `id`.
pub fn parse_answer(id: u16, qtype: u16, msg: &[u8]) -> Result<Vec<IpAddr>, Reply> {
    let bad = |why: &str| Reply::Bad(why.to_string());
    let u16_at =
        |at: usize| -> Option<u16> { Some(u16::from_be_bytes([*msg.get(at)?, *msg.get(at + 1)?])) };
    let header = |at| u16_at(at).ok_or_else(|| bad("short header"));
    if header(0)? != id || header(2)? & 0x8000 == 0 {
        return Err(Reply::NotOurs);
    }
    match header(2)? & 0x000f {
        0 => {}
        3 => return Err(Reply::NxDomain),
        rcode => return Err(Reply::Bad(format!("error code {rcode}"))),
    }
    let (questions, answers) = (header(4)?, header(6)?);
    let mut at = 12;
    for _ in 0..questions {
        at = skip_name(msg, at).ok_or_else(|| bad("truncated question"))? + 4;
    }
    let mut found = Vec::new();
    for _ in 0..answers {
        at = skip_name(msg, at).ok_or_else(|| bad("truncated answer"))?;
        let rtype = u16_at(at).ok_or_else(|| bad("truncated answer"))?;
        let len = u16_at(at + 8).ok_or_else(|| bad("truncated answer"))? as usize;
        let data = msg
            .get(at + 10..at + 10 + len)
            .ok_or_else(|| bad("truncated record"))?;
        match (rtype, data.len()) {
            (TYPE_A, 4) if qtype == TYPE_A => found.push(IpAddr::V4(Ipv4Addr::new(
                data[0], data[1], data[2], data[3],
            ))),
            (TYPE_AAAA, 16) if qtype == TYPE_AAAA => {
                let mut b = [0u8; 16];
                b.copy_from_slice(data);
                found.push(IpAddr::V6(Ipv6Addr::from(b)));
            }
            // CNAMEs and the rest: the recursive server follows them and adds the addresses.
            _ => {}
        }
        at += 10 + len;
    }
    Ok(found)
}

/// The offset just past the (possibly compressed) name at `at`.
fn skip_name(msg: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *msg.get(at)? as usize;
        if len == 0 {
            return Some(at + 1);
        }
        if len & 0xc0 == 0xc0 {
            msg.get(at + 1)?;
            return Some(at + 2);
        }
        at += 1 + len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBE: &str = "search shop.svc.cluster.local svc.cluster.local cluster.local\n\
                        nameserver 10.96.0.10\noptions ndots:5\n";

    #[test]
    fn resolv_conf_and_the_search_order_are_libc_s() {
        let conf = ResolvConf::parse(KUBE);
        assert_eq!(conf.nameservers, ["10.96.0.10".parse::<IpAddr>().unwrap()]);
        assert_eq!(conf.ndots, 5);
        let names = conf.candidates("portcullis-controller.portcullis-system.svc");
        assert_eq!(
            names,
            [
                "portcullis-controller.portcullis-system.svc.shop.svc.cluster.local",
                "portcullis-controller.portcullis-system.svc.svc.cluster.local",
                "portcullis-controller.portcullis-system.svc.cluster.local",
                "portcullis-controller.portcullis-system.svc",
            ]
        );
        assert_eq!(conf.candidates("a.b.c.d.e.f"), {
            let mut v = vec!["a.b.c.d.e.f".to_string()];
            v.extend(conf.search.iter().map(|d| format!("a.b.c.d.e.f.{d}")));
            v
        });
        assert_eq!(conf.candidates("ctl.example."), ["ctl.example"]);
        assert_eq!(
            ResolvConf::parse("").nameservers,
            [IpAddr::V4(Ipv4Addr::LOCALHOST)]
        );
    }

    /// An answer as a server writes it: the question, a CNAME, then an A record, names
    /// compressed.
    fn answer(id: u16, rcode: u8) -> Vec<u8> {
        let mut m = query(id, "ctl.example", TYPE_A).unwrap();
        m[2] = 0x81;
        m[3] = 0x80 | rcode;
        m[7] = 2;
        m.extend_from_slice(&[0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 30, 0, 2, 0xc0, 12]);
        m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 10, 96, 7, 8]);
        m
    }

    #[test]
    fn answers_are_read_and_anything_else_is_refused_without_panicking() {
        assert_eq!(
            parse_answer(7, TYPE_A, &answer(7, 0)),
            Ok(vec!["10.96.7.8".parse::<IpAddr>().unwrap()])
        );
        assert_eq!(parse_answer(8, TYPE_A, &answer(7, 0)), Err(Reply::NotOurs));
        assert_eq!(parse_answer(7, TYPE_A, &answer(7, 3)), Err(Reply::NxDomain));
        assert!(matches!(
            parse_answer(7, TYPE_A, &answer(7, 2)),
            Err(Reply::Bad(_))
        ));
        assert_eq!(parse_answer(7, TYPE_AAAA, &answer(7, 0)), Ok(vec![]));
        let full = answer(7, 0);
        for cut in 0..full.len() {
            let _ = parse_answer(7, TYPE_A, &full[..cut]);
        }
        let mut lying = full.clone();
        lying[7] = 200; // more answers than there are
        assert!(matches!(
            parse_answer(7, TYPE_A, &lying),
            Err(Reply::Bad(_))
        ));
    }
}
