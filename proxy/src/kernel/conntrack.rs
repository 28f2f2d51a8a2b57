//! The pod's conntrack table over ctnetlink (`NETLINK_NETFILTER`, subsystem `CTNETLINK`): list
//! the entries the queue judged (UDP, SCTP, and TCP marked [`QUEUED_TCP_CONNMARK`], both ways),
//! delete one. Needs `CAP_NET_ADMIN` in the pod's network namespace.
//!
//! Two messages (a dump request and a delete by tuple and id) and the few attributes they carry,
//! framed by [`super::netlink`] (why not a netlink crate: see there). Every read is
//! bounds-checked. Blocking: run it off the async runtime (`spawn_blocking`).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use nix::sys::socket::{AddressFamily, SockProtocol};
use portcullis_policy::Protocol;

#[cfg(test)]
use super::netlink::NLA_F_NESTED;
use super::netlink::{self, find, put_attr, put_nested, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_PROTOINFO: u16 = 4;
const CTA_MARK: u16 = 8;
const CTA_ID: u16 = 12;
const CTA_PROTOINFO_TCP: u16 = 1;
const CTA_PROTOINFO_TCP_STATE: u16 = 1;
/// `enum tcp_conntrack`: a connection in these states is over; nothing to revoke.
const TCP_CONNTRACK_TIME_WAIT: u8 = 7;
const TCP_CONNTRACK_CLOSE: u8 = 8;

/// The conntrack mark bit portcullis-init's queue rules set on each TCP
/// connection they queue (`docs/CONVENTIONS.md`): only those are the queue's to revoke; TCP to
/// the proxy's own ports, to skipped ports, and everything the proxy relays carry no such bit.
pub const QUEUED_TCP_CONNMARK: u32 = portcullis_contract::QUEUED_CONNMARK.0;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;

/// One direction of a conntrack entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuple {
    pub source: SocketAddr,
    pub destination: SocketAddr,
}

/// A conntrack entry the queue judged: UDP, SCTP, or queued TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub protocol: Protocol,
    /// As the first packet went.
    pub original: Tuple,
    /// As replies come back: its source is where the first packet really went (after DNAT).
    pub reply: Tuple,
    pub id: Option<u32>,
    pub zone: Option<u16>,
}

/// A ctnetlink socket in the current network namespace.
pub struct Conntrack {
    socket: netlink::Socket,
}

impl Conntrack {
    pub fn open() -> io::Result<Conntrack> {
        let socket = netlink::Socket::open(SockProtocol::NetlinkNetFilter, Some(1 << 20))?;
        Ok(Conntrack { socket })
    }

    /// Every entry the queue judged (UDP, SCTP, any other protocol but ICMP) and every live
    /// queued TCP connection, IPv4 and IPv6.
    pub fn judged_flows(&mut self) -> io::Result<Vec<Entry>> {
        let mut entries = Vec::new();
        for family in [libc_af(AddressFamily::Inet), libc_af(AddressFamily::Inet6)] {
            let request = message(
                IPCTNL_MSG_CT_GET,
                NLM_F_REQUEST | NLM_F_DUMP,
                family,
                self.socket.next_seq(),
                &[],
            );
            self.socket.send(&request)?;
            self.socket.receive(|payload| {
                if let Some(e) = parse_entry(payload) {
                    entries.push(e);
                }
            })?;
        }
        Ok(entries)
    }

    /// Deletes `entry` (by its original tuple, and its id when known, so that a new flow that
    /// reused the tuple is left alone). A flow already gone is not an error.
    pub fn delete(&mut self, entry: &Entry) -> io::Result<bool> {
        let mut attrs = Vec::new();
        put_tuple(&mut attrs, CTA_TUPLE_ORIG, entry.protocol, &entry.original);
        if let Some(id) = entry.id {
            put_attr(&mut attrs, CTA_ID, &id.to_be_bytes());
        }
        if let Some(zone) = entry.zone {
            put_attr(&mut attrs, CTA_ZONE, &zone.to_be_bytes());
        }
        let family = match entry.original.source {
            SocketAddr::V4(_) => libc_af(AddressFamily::Inet),
            SocketAddr::V6(_) => libc_af(AddressFamily::Inet6),
        };
        let request = message(
            IPCTNL_MSG_CT_DELETE,
            NLM_F_REQUEST | NLM_F_ACK,
            family,
            self.socket.next_seq(),
            &attrs,
        );
        self.socket.send(&request)?;
        match self.socket.receive(|_| {}) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

fn libc_af(family: AddressFamily) -> u8 {
    family as i32 as u8
}

/// `nlmsghdr` + `nfgenmsg` (family, version 0, resource id 0) + `attrs`.
fn message(kind: u16, flags: u16, family: u8, seq: u32, attrs: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(4 + attrs.len());
    body.extend_from_slice(&[family, 0, 0, 0]);
    body.extend_from_slice(attrs);
    netlink::message((NFNL_SUBSYS_CTNETLINK << 8) | kind, flags, seq, &body)
}

fn put_tuple(out: &mut Vec<u8>, kind: u16, protocol: Protocol, t: &Tuple) {
    let mut ip = Vec::new();
    match (t.source.ip(), t.destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            put_attr(&mut ip, CTA_IP_V4_SRC, &s.octets());
            put_attr(&mut ip, CTA_IP_V4_DST, &d.octets());
        }
        (s, d) => {
            put_attr(&mut ip, CTA_IP_V6_SRC, &v6(s).octets());
            put_attr(&mut ip, CTA_IP_V6_DST, &v6(d).octets());
        }
    }
    let mut proto = Vec::new();
    put_attr(&mut proto, CTA_PROTO_NUM, &[protocol.number()]);
    put_attr(
        &mut proto,
        CTA_PROTO_SRC_PORT,
        &t.source.port().to_be_bytes(),
    );
    put_attr(
        &mut proto,
        CTA_PROTO_DST_PORT,
        &t.destination.port().to_be_bytes(),
    );
    let mut tuple = Vec::new();
    put_nested(&mut tuple, CTA_TUPLE_IP, &ip);
    put_nested(&mut tuple, CTA_TUPLE_PROTO, &proto);
    put_nested(out, kind, &tuple);
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    }
}

fn be16(v: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(v.get(..2)?.try_into().ok()?))
}

fn parse_tuple(data: &[u8]) -> Option<(u8, Tuple)> {
    let ip = find(data, CTA_TUPLE_IP)?;
    let proto = find(data, CTA_TUPLE_PROTO)?;
    let number = *find(proto, CTA_PROTO_NUM)?.first()?;
    // Protocols conntrack tracks without ports (GRE without its helper, IPIP, 253 ...) have
    // none: port 0, as the queue's parser says. One that is there must be whole.
    let port = |kind| find(proto, kind).map_or(Some(0), be16);
    let sport = port(CTA_PROTO_SRC_PORT)?;
    let dport = port(CTA_PROTO_DST_PORT)?;
    let v4 = |k| -> Option<IpAddr> {
        let b: [u8; 4] = find(ip, k)?.get(..4)?.try_into().ok()?;
        Some(Ipv4Addr::from(b).into())
    };
    let v6 = |k| -> Option<IpAddr> {
        let b: [u8; 16] = find(ip, k)?.get(..16)?.try_into().ok()?;
        Some(Ipv6Addr::from(b).into())
    };
    let (src, dst) = match (v4(CTA_IP_V4_SRC), v4(CTA_IP_V4_DST)) {
        (Some(s), Some(d)) => (s, d),
        _ => (v6(CTA_IP_V6_SRC)?, v6(CTA_IP_V6_DST)?),
    };
    Some((
        number,
        Tuple {
            source: SocketAddr::new(src, sport),
            destination: SocketAddr::new(dst, dport),
        },
    ))
}

/// One dumped entry, when the queue judged it: any protocol but ICMP and TCP, or a TCP connection that carries
/// [`QUEUED_TCP_CONNMARK`] and is not over yet.
fn parse_entry(payload: &[u8]) -> Option<Entry> {
    let attrs = payload.get(4..)?;
    let (number, original) = parse_tuple(find(attrs, CTA_TUPLE_ORIG)?)?;
    let protocol = match number {
        6 if queued_tcp_alive(attrs) => Protocol::Tcp,
        // TCP the queue did not judge (the outbound relay's), and ICMP, which is never queued.
        6 | 1 | 58 => return None,
        // UDP, SCTP, and every other protocol the queue judges (issue 20).
        n => Protocol::from_number(n),
    };
    let (_, reply) = parse_tuple(find(attrs, CTA_TUPLE_REPLY)?)?;
    let id =
        find(attrs, CTA_ID).and_then(|v| Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?)));
    let zone = find(attrs, CTA_ZONE).and_then(be16);
    Some(Entry {
        protocol,
        original,
        reply,
        id,
        zone,
    })
}

fn queued_tcp_alive(attrs: &[u8]) -> bool {
    let mark = find(attrs, CTA_MARK)
        .and_then(|v| Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?)))
        .unwrap_or(0);
    let state = find(attrs, CTA_PROTOINFO)
        .and_then(|p| find(p, CTA_PROTOINFO_TCP))
        .and_then(|t| find(t, CTA_PROTOINFO_TCP_STATE))
        .and_then(|v| v.first().copied());
    mark & QUEUED_TCP_CONNMARK != 0
        && !matches!(state, Some(TCP_CONNTRACK_TIME_WAIT | TCP_CONNTRACK_CLOSE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_survives_a_round_trip_through_the_attribute_format() {
        let original = Tuple {
            source: "10.0.0.1:40000".parse().unwrap(),
            destination: "10.96.0.10:53".parse().unwrap(),
        };
        let reply = Tuple {
            source: "10.0.0.9:53".parse().unwrap(),
            destination: "10.0.0.1:40000".parse().unwrap(),
        };
        let mut attrs = vec![2, 0, 0, 0];
        put_tuple(&mut attrs, CTA_TUPLE_ORIG, Protocol::Udp, &original);
        put_tuple(&mut attrs, CTA_TUPLE_REPLY, Protocol::Udp, &reply);
        put_attr(&mut attrs, CTA_ID, &7u32.to_be_bytes());
        let e = parse_entry(&attrs).expect("entry");
        assert_eq!(e.original, original);
        assert_eq!(e.reply, reply);
        assert_eq!(e.protocol, Protocol::Udp);
        assert_eq!(e.id, Some(7));
        // Every truncation of it parses to something or nothing, never panics.
        for cut in 0..attrs.len() {
            let _ = parse_entry(&attrs[..cut]);
        }
    }

    /// A tuple as conntrack dumps a protocol it tracks without ports (GRE without its helper,
    /// IPIP, 253, ICMP's type/code aside): no port attributes at all.
    fn portless(number: u8, t: &Tuple) -> Vec<u8> {
        let mut attrs = vec![2, 0, 0, 0];
        for kind in [CTA_TUPLE_ORIG, CTA_TUPLE_REPLY] {
            let (mut ip, mut proto, mut tuple) = (Vec::new(), Vec::new(), Vec::new());
            put_attr(&mut ip, CTA_IP_V4_SRC, &v4(t.source.ip()));
            put_attr(&mut ip, CTA_IP_V4_DST, &v4(t.destination.ip()));
            put_attr(&mut proto, CTA_PROTO_NUM, &[number]);
            put_nested(&mut tuple, CTA_TUPLE_IP, &ip);
            put_nested(&mut tuple, CTA_TUPLE_PROTO, &proto);
            put_nested(&mut attrs, kind, &tuple);
        }
        attrs
    }

    fn v4(ip: IpAddr) -> [u8; 4] {
        match ip {
            IpAddr::V4(v4) => v4.octets(),
            IpAddr::V6(_) => [0; 4],
        }
    }

    /// Issue 20: flows of every protocol the queue judges are revoked through their entries,
    /// port-less ones included; ICMP's are never the queue's.
    #[test]
    fn port_less_entries_are_the_queues_and_icmp_is_not() {
        let t = Tuple {
            source: "10.0.0.1:0".parse().unwrap(),
            destination: "10.0.0.2:0".parse().unwrap(),
        };
        for number in [4u8, 47, 253] {
            let e = parse_entry(&portless(number, &t)).expect("a port-less entry");
            assert_eq!(e.protocol, Protocol::Other(number));
            assert_eq!(e.original, t);
        }
        assert!(parse_entry(&portless(1, &t)).is_none());
        assert!(parse_entry(&portless(58, &t)).is_none());
        // UDP-Lite keeps its ports.
        let lite = Tuple {
            source: "10.0.0.1:40000".parse().unwrap(),
            destination: "10.0.0.2:9000".parse().unwrap(),
        };
        let mut attrs = vec![2, 0, 0, 0];
        put_tuple(&mut attrs, CTA_TUPLE_ORIG, Protocol::Other(136), &lite);
        put_tuple(&mut attrs, CTA_TUPLE_REPLY, Protocol::Other(136), &lite);
        let e = parse_entry(&attrs).expect("udplite");
        assert_eq!((e.protocol, e.original), (Protocol::Other(136), lite));
    }

    fn tcp(t: &Tuple, mark: Option<u32>, state: Option<u8>) -> Vec<u8> {
        let mut attrs = vec![10, 0, 0, 0];
        put_tuple(&mut attrs, CTA_TUPLE_ORIG, Protocol::Tcp, t);
        put_tuple(&mut attrs, CTA_TUPLE_REPLY, Protocol::Tcp, t);
        if let Some(m) = mark {
            put_attr(&mut attrs, CTA_MARK, &m.to_be_bytes());
        }
        if let Some(state) = state {
            let mut inner = Vec::new();
            put_attr(&mut inner, CTA_PROTOINFO_TCP_STATE, &[state]);
            let mut tcp = Vec::new();
            put_attr(&mut tcp, CTA_PROTOINFO_TCP | NLA_F_NESTED, &inner);
            put_attr(&mut attrs, CTA_PROTOINFO | NLA_F_NESTED, &tcp);
        }
        attrs
    }

    #[test]
    fn only_queued_live_tcp_entries_are_the_queues() {
        let t = Tuple {
            source: "[fd00::1]:1".parse().unwrap(),
            destination: "[fd00::2]:2".parse().unwrap(),
        };
        // What the proxy relays, or what reached a skipped port: no mark.
        assert_eq!(parse_entry(&tcp(&t, None, Some(3))), None);
        assert_eq!(parse_entry(&tcp(&t, Some(0x0800), Some(3))), None);
        let established = parse_entry(&tcp(&t, Some(0x1001), Some(3))).expect("queued");
        assert_eq!(established.protocol, Protocol::Tcp);
        assert_eq!(
            parse_entry(&tcp(&t, Some(0x1000), None)).map(|e| e.original),
            Some(t)
        );
        // Over already: nothing to revoke.
        assert_eq!(parse_entry(&tcp(&t, Some(0x1000), Some(7))), None);
        assert_eq!(parse_entry(&tcp(&t, Some(0x1000), Some(8))), None);
        let full = tcp(&t, Some(0x1000), Some(3));
        for cut in 0..full.len() {
            let _ = parse_entry(&full[..cut]);
        }
        let mut sctp = vec![10, 0, 0, 0];
        put_tuple(&mut sctp, CTA_TUPLE_ORIG, Protocol::Sctp, &t);
        put_tuple(&mut sctp, CTA_TUPLE_REPLY, Protocol::Sctp, &t);
        assert_eq!(parse_entry(&sctp).expect("sctp").original, t);
    }
}
