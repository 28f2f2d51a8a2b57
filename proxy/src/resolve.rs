//! Resolves the controller's host name with a marked socket (`--proxy-mark`).
//!
//! With the mark on, portcullis-init exempts only the proxy's *marked* packets. The libc resolver
//! (`getaddrinfo`) cannot mark its sockets, so its query to the cluster DNS would go to the pod's
//! own UDP queue, where it is dropped until the proxy has a table, which it gets from the
//! controller whose name it is resolving. So, with a mark, the proxy asks the nameservers of
//! `/etc/resolv.conf` itself (A and AAAA over UDP, the `search` list and `ndots` applied as libc
//! does), from a socket that carries the mark. Only the controller client uses it. Messages are
//! encoded and decoded by `hickory-proto` (the DNS library of the Rust ecosystem); the socket,
//! the mark and `resolv.conf` are ours. A bad answer is an error, never a panic.
//!
//! Not `hickory-resolver` (yet): it could send from a marked socket through a custom
//! `RuntimeProvider` whose `bind_udp` sets `SO_MARK`, and would bring `resolv.conf` parsing and
//! TCP fallback. Kept because that provider (Handle, Timer, Udp and Tcp types), the resolver's
//! own option mapping and its dependency tree are larger than this file's one job (A/AAAA over
//! UDP for one host name at start and on reconnect), and the switch needs the netns tests that
//! exercise the marked lookup; it is a listed follow-up.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use socket2::SockRef;
use tokio::net::UdpSocket;

/// How long one nameserver has to answer one question.
const TIMEOUT: Duration = Duration::from_secs(2);

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
            for qtype in [RecordType::A, RecordType::AAAA] {
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
async fn ask(
    server: IpAddr,
    name: &str,
    qtype: RecordType,
    mark: u32,
) -> io::Result<Option<Vec<IpAddr>>> {
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

/// A recursive query for `name`/`qtype`, class IN, encoded by `hickory-proto`.
pub fn query(id: u16, name: &str, qtype: RecordType) -> io::Result<Vec<u8>> {
    let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidInput, format!("{name}: {e}"));
    let name = Name::from_ascii(name).map_err(|e| invalid(e.to_string()))?;
    let mut message = Message::new();
    message
        .set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(name, qtype));
    message.to_vec().map_err(|e| invalid(e.to_string()))
}

/// Why a datagram gave no addresses.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// Not an answer to our question (another id, or not a response): keep waiting.
    NotOurs,
    NxDomain,
    Bad(String),
}

/// The addresses of type `qtype` in the answer to query `id`, decoded by `hickory-proto`
/// (anything it cannot decode is `Bad`, never a panic).
pub fn parse_answer(id: u16, qtype: RecordType, msg: &[u8]) -> Result<Vec<IpAddr>, Reply> {
    if msg.len() >= 2 && u16::from_be_bytes([msg[0], msg[1]]) != id {
        return Err(Reply::NotOurs);
    }
    let message = Message::from_vec(msg).map_err(|e| Reply::Bad(e.to_string()))?;
    if message.id() != id || message.message_type() != MessageType::Response {
        return Err(Reply::NotOurs);
    }
    match message.response_code() {
        ResponseCode::NoError => {}
        ResponseCode::NXDomain => return Err(Reply::NxDomain),
        rcode => return Err(Reply::Bad(format!("error code {rcode}"))),
    }
    let found = message
        .answers()
        .iter()
        .filter_map(|record| match record.data() {
            RData::A(a) if qtype == RecordType::A => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) if qtype == RecordType::AAAA => Some(IpAddr::V6(a.0)),
            // CNAMEs and the rest: the recursive server follows them and adds the addresses.
            _ => None,
        })
        .collect();
    Ok(found)
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

    /// An answer as a server writes it: the question, a CNAME, then an A record.
    fn answer(id: u16, rcode: ResponseCode) -> Vec<u8> {
        use hickory_proto::rr::rdata::{A, CNAME};
        use hickory_proto::rr::Record;
        let name = Name::from_ascii("ctl.example.").unwrap();
        let target = Name::from_ascii("real.example.").unwrap();
        let mut m = Message::new();
        m.set_id(id)
            .set_message_type(MessageType::Response)
            .set_op_code(OpCode::Query)
            .set_response_code(rcode)
            .add_query(Query::query(name.clone(), RecordType::A))
            .add_answer(Record::from_rdata(
                name,
                30,
                RData::CNAME(CNAME(target.clone())),
            ))
            .add_answer(Record::from_rdata(
                target,
                30,
                RData::A(A::new(10, 96, 7, 8)),
            ));
        m.to_vec().unwrap()
    }

    #[test]
    fn answers_are_read_and_anything_else_is_refused_without_panicking() {
        assert_eq!(
            parse_answer(7, RecordType::A, &answer(7, ResponseCode::NoError)),
            Ok(vec!["10.96.7.8".parse::<IpAddr>().unwrap()])
        );
        let ok = answer(7, ResponseCode::NoError);
        assert_eq!(parse_answer(8, RecordType::A, &ok), Err(Reply::NotOurs));
        assert_eq!(
            parse_answer(7, RecordType::A, &answer(7, ResponseCode::NXDomain)),
            Err(Reply::NxDomain)
        );
        let query = query(7, "ctl.example", RecordType::A).unwrap();
        assert_eq!(parse_answer(7, RecordType::A, &query), Err(Reply::NotOurs));
        assert!(matches!(
            parse_answer(7, RecordType::A, &answer(7, ResponseCode::ServFail)),
            Err(Reply::Bad(_))
        ));
        assert_eq!(parse_answer(7, RecordType::AAAA, &ok), Ok(vec![]));
        let full = ok;
        for cut in 0..full.len() {
            let _ = parse_answer(7, RecordType::A, &full[..cut]);
        }
        let mut lying = full.clone();
        lying[7] = 200; // more answers than there are
        assert!(matches!(
            parse_answer(7, RecordType::A, &lying),
            Err(Reply::Bad(_))
        ));
    }
}
