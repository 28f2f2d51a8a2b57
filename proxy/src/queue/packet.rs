//! What a queued packet is: IPv4 or IPv6, which IP protocol, from where to where (with ports
//! for the protocols that have them).
//!
//! Everything here reads bytes a peer (or an application in the pod) chose: every length is
//! checked, nothing panics, and anything that is not exactly an unfragmented first IP packet
//! (ports included, where the protocol has them) is [`Malformed`], which the reader drops and
//! counts. Addresses are never moved into the other family: an IPv6 packet with an IPv4-mapped
//! address is refused, not judged as the IPv4 address (issue 20).
//!
//! Hand-written rather than `etherparse`, measured side by side (`benches/packet.rs`, criterion,
//! release, 2 busy cores): UDP/IPv4 64 B 123 ns vs 126 ns; a 256-byte copy of a 1400-byte
//! UDP/IPv4 packet 116 vs 147 ns; the same over IPv6 with a hop-by-hop header 164 vs 212 ns;
//! both read the same flows. Beyond speed: the queue copies only the first 256 bytes, which
//! etherparse's strict `SlicedPacket` refuses (its lax slicer is needed); it has no SCTP header
//! (the ports would still be read by hand); and this parser's errors are the metric's labels.
//! Safety is even: both bounds-check every read, and the tests below feed every truncation.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use portcullis_policy::Protocol;

const ICMP: u8 = 1;
const TCP: u8 = 6;
const UDP: u8 = 17;
const DCCP: u8 = 33;
const ICMPV6: u8 = 58;
const SCTP: u8 = 132;
const UDPLITE: u8 = 136;

/// One new flow, as its first packet shows it. Port-less protocols have port 0 on both ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    pub protocol: Protocol,
    pub source: SocketAddr,
    pub destination: SocketAddr,
}

/// Why a packet could not be read; the `reason` label of
/// `portcullis_datagrams_malformed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// Shorter than its headers say, or than the ports.
    Truncated,
    /// Not IP version 4 or 6.
    NotIp,
    /// An IPv4 header length below 20 bytes.
    BadHeaderLength,
    /// A fragment other than the first (conntrack reassembles before the queue, so this is not
    /// a packet the queue should ever carry).
    Fragment,
    /// ICMP or ICMPv6, which the init rules never queue (they pass unjudged, see
    /// docs/enforcement.md).
    OtherProtocol,
    /// More IPv6 extension headers than any real packet has.
    TooManyExtensions,
    /// An address no pod's wire legitimately carries, dropped before any verdict: an
    /// IPv4-mapped IPv6 address (`::ffff:0:0/96`) as source or destination (it would be judged
    /// as the IPv4 address: `::ffff:127.0.0.1` as the pod itself), or as source an IPv4
    /// `0.0.0.0/8`, multicast or `255.255.255.255`, an IPv6 `::/96` (unspecified, loopback,
    /// IPv4-compatible) or multicast address.
    SpecialAddress,
}

impl Malformed {
    pub fn label(self) -> &'static str {
        match self {
            Malformed::Truncated => "truncated",
            Malformed::NotIp => "not_ip",
            Malformed::BadHeaderLength => "bad_header_length",
            Malformed::Fragment => "fragment",
            Malformed::OtherProtocol => "other_protocol",
            Malformed::TooManyExtensions => "too_many_extensions",
            Malformed::SpecialAddress => "special_address",
        }
    }
}

/// Reads the IP header of `packet`, and the ports of the protocols that start with them (which
/// may be cut short after the ports: the queue copies only the start of each packet).
pub fn parse(packet: &[u8]) -> Result<Flow, Malformed> {
    parse_at(packet).map(|(flow, _)| flow)
}

/// A UDP datagram's flow and its payload (what `crate::dns` reads of queries and answers).
pub fn udp_payload(packet: &[u8]) -> Result<(Flow, &[u8]), Malformed> {
    let (flow, l4) = parse_at(packet)?;
    if flow.protocol != Protocol::Udp {
        return Err(Malformed::OtherProtocol);
    }
    let payload = packet.get(l4 + 8..).ok_or(Malformed::Truncated)?;
    Ok((flow, payload))
}

/// The flow, and where its transport header starts.
fn parse_at(packet: &[u8]) -> Result<(Flow, usize), Malformed> {
    let first = *packet.first().ok_or(Malformed::Truncated)?;
    let (src, dst, proto, l4) = match first >> 4 {
        4 => ipv4(packet)?,
        6 => ipv6(packet)?,
        _ => return Err(Malformed::NotIp),
    };
    if special_source(src) || is_v4_mapped(dst) {
        return Err(Malformed::SpecialAddress);
    }
    if matches!(proto, ICMP | ICMPV6) {
        return Err(Malformed::OtherProtocol);
    }
    // UDP, UDP-Lite, SCTP, TCP and DCCP all start with the source and destination ports. A
    // UDP-Lite flow keeps them for the audit line; policy still treats it as port-less.
    let (sport, dport) = if matches!(proto, TCP | UDP | SCTP | UDPLITE | DCCP) {
        let ports = packet.get(l4..l4 + 4).ok_or(Malformed::Truncated)?;
        (
            u16::from_be_bytes([ports[0], ports[1]]),
            u16::from_be_bytes([ports[2], ports[3]]),
        )
    } else {
        (0, 0)
    };
    let flow = Flow {
        protocol: Protocol::from_number(proto),
        source: SocketAddr::new(src, sport),
        destination: SocketAddr::new(dst, dport),
    };
    Ok((flow, l4))
}

fn is_v4_mapped(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some())
}

/// A source that never legitimately arrives on (or leaves from) a pod's interface; the init
/// rules drop the same ones in raw PREROUTING.
fn special_source(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.octets()[0] == 0 || v4.is_multicast() || v4.is_broadcast(),
        IpAddr::V6(v6) => is_v4_mapped(ip) || v6.segments()[..6] == [0; 6] || v6.is_multicast(),
    }
}

/// Source, destination, protocol, and where the transport header starts.
type Header = (IpAddr, IpAddr, u8, usize);

fn ipv4(p: &[u8]) -> Result<Header, Malformed> {
    let h = p.get(..20).ok_or(Malformed::Truncated)?;
    let ihl = usize::from(h[0] & 0x0f) * 4;
    if ihl < 20 {
        return Err(Malformed::BadHeaderLength);
    }
    if p.len() < ihl {
        return Err(Malformed::Truncated);
    }
    let fragment_offset = u16::from_be_bytes([h[6], h[7]]) & 0x1fff;
    if fragment_offset != 0 {
        return Err(Malformed::Fragment);
    }
    let src = Ipv4Addr::new(h[12], h[13], h[14], h[15]);
    let dst = Ipv4Addr::new(h[16], h[17], h[18], h[19]);
    Ok((src.into(), dst.into(), h[9], ihl))
}

fn ipv6(p: &[u8]) -> Result<Header, Malformed> {
    let h = p.get(..40).ok_or(Malformed::Truncated)?;
    let addr = |at: usize| -> Ipv6Addr {
        let mut b = [0u8; 16];
        b.copy_from_slice(&h[at..at + 16]);
        Ipv6Addr::from(b)
    };
    let (src, dst) = (addr(8), addr(24));
    let mut next = h[6];
    let mut at = 40;
    // Extension headers, as ip6tables' `-p udp` skips them.
    for _ in 0..8 {
        match next {
            // Hop-by-hop, routing, destination options: (length + 1) * 8 bytes.
            0 | 43 | 60 => {
                let ext = p.get(at..at + 2).ok_or(Malformed::Truncated)?;
                next = ext[0];
                at += (usize::from(ext[1]) + 1) * 8;
            }
            // Fragment: 8 bytes; only the first fragment carries the ports.
            44 => {
                let ext = p.get(at..at + 8).ok_or(Malformed::Truncated)?;
                if u16::from_be_bytes([ext[2], ext[3]]) >> 3 != 0 {
                    return Err(Malformed::Fragment);
                }
                next = ext[0];
                at += 8;
            }
            // Authentication header: (length + 2) * 4 bytes.
            51 => {
                let ext = p.get(at..at + 2).ok_or(Malformed::Truncated)?;
                next = ext[0];
                at += (usize::from(ext[1]) + 2) * 4;
            }
            _ => return Ok((src.into(), dst.into(), next, at)),
        }
    }
    Err(Malformed::TooManyExtensions)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn udp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 32, 0, 0, 0x40, 0, 64, UDP, 0, 0];
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(&sport.to_be_bytes());
        p.extend_from_slice(&dport.to_be_bytes());
        p.extend_from_slice(&[0, 12, 0, 0, b'p', b'i', b'n', b'g']);
        p
    }

    fn ipv6_with(next: u8, extensions: &[u8], l4: &[u8]) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0, 0, 0, next, 64];
        p.extend_from_slice(&"fd00::2".parse::<Ipv6Addr>().unwrap().octets());
        p.extend_from_slice(&"fd00::1".parse::<Ipv6Addr>().unwrap().octets());
        p.extend_from_slice(extensions);
        p.extend_from_slice(l4);
        p
    }

    #[test]
    fn ipv4_udp_and_sctp() {
        let f = parse(&udp4([10, 0, 0, 2], [10, 0, 0, 1], 40000, 53)).expect("udp");
        assert_eq!(f.protocol, Protocol::Udp);
        assert_eq!(f.source, "10.0.0.2:40000".parse().unwrap());
        assert_eq!(f.destination, "10.0.0.1:53".parse().unwrap());
        let mut sctp = udp4([10, 0, 0, 2], [10, 0, 0, 1], 5000, 38412);
        sctp[9] = SCTP;
        assert_eq!(parse(&sctp).expect("sctp").protocol, Protocol::Sctp);
        // Options make the header longer.
        let mut opts = vec![
            0x46, 0, 0, 36, 0, 0, 0, 0, 64, UDP, 0, 0, 10, 0, 0, 2, 10, 0, 0, 1,
        ];
        opts.extend_from_slice(&[1, 1, 1, 0]);
        opts.extend_from_slice(&[0x13, 0x88, 0x00, 0x50]);
        assert_eq!(parse(&opts).expect("options").destination.port(), 80);
    }

    #[test]
    fn ipv6_with_extension_headers() {
        let ports = [0x9c, 0x40, 0x00, 0x35];
        let plain = parse(&ipv6_with(UDP, &[], &ports)).expect("udp6");
        assert_eq!(plain.destination, "[fd00::1]:53".parse().unwrap());
        // Hop-by-hop (8 bytes) then a first fragment, then UDP.
        let mut ext = vec![44, 0, 0, 0, 0, 0, 0, 0];
        ext.extend_from_slice(&[UDP, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(
            parse(&ipv6_with(0, &ext, &ports))
                .expect("ext")
                .source
                .port(),
            40000
        );
        // A later fragment is refused.
        let later = [UDP, 0, 0x00, 0x08, 0, 0, 0, 1];
        assert_eq!(
            parse(&ipv6_with(44, &later, &ports)),
            Err(Malformed::Fragment)
        );
        // An IPv4-mapped address is refused, never judged as the IPv4 address.
        for (at, addr) in [
            (8, "::ffff:127.0.0.1"),
            (8, "::ffff:10.0.0.2"),
            (24, "::ffff:10.0.0.1"),
        ] {
            let mut mapped = ipv6_with(UDP, &[], &ports);
            mapped[at..at + 16].copy_from_slice(&addr.parse::<Ipv6Addr>().unwrap().octets());
            assert_eq!(parse(&mapped), Err(Malformed::SpecialAddress), "{addr}");
        }
    }

    #[test]
    fn special_sources_are_refused_before_any_verdict() {
        for src in [
            [0, 0, 0, 0],
            [0, 1, 2, 3],
            [224, 0, 0, 251],
            [239, 1, 1, 1],
            [255; 4],
        ] {
            assert_eq!(
                parse(&udp4(src, [10, 0, 0, 1], 68, 67)),
                Err(Malformed::SpecialAddress),
                "{src:?}"
            );
        }
        // As destinations, multicast and broadcast are ordinary (mDNS, egress broadcasts).
        assert!(parse(&udp4([10, 0, 0, 2], [224, 0, 0, 251], 5353, 5353)).is_ok());
        assert!(parse(&udp4([10, 0, 0, 2], [255; 4], 68, 67)).is_ok());
        for src in ["::", "::1", "::10.0.0.2", "ff02::1"] {
            let mut p = ipv6_with(UDP, &[], &[0x9c, 0x40, 0x00, 0x35]);
            p[8..24].copy_from_slice(&src.parse::<Ipv6Addr>().unwrap().octets());
            assert_eq!(parse(&p), Err(Malformed::SpecialAddress), "{src}");
        }
        // Link-local and NAT64 sources are ordinary.
        for src in ["fe80::1", "64:ff9b::a00:2"] {
            let mut p = ipv6_with(UDP, &[], &[0x9c, 0x40, 0x00, 0x35]);
            p[8..24].copy_from_slice(&src.parse::<Ipv6Addr>().unwrap().octets());
            assert!(parse(&p).is_ok(), "{src}");
        }
    }

    #[test]
    fn every_ip_protocol_but_icmp_is_a_flow() {
        let mut udplite = udp4([10, 0, 0, 2], [10, 0, 0, 1], 40000, 9000);
        udplite[9] = UDPLITE;
        let f = parse(&udplite).expect("udplite");
        assert_eq!(f.protocol, Protocol::Other(136));
        assert_eq!(f.destination, "10.0.0.1:9000".parse().unwrap());
        for proto in [4u8, 47, 50, 253, 255] {
            let mut p = udp4([10, 0, 0, 2], [10, 0, 0, 1], 1, 2);
            p[9] = proto;
            // Port-less: only the IP header is needed.
            let f = parse(&p[..20]).expect("port-less");
            assert_eq!(f.protocol, Protocol::Other(proto));
            assert_eq!(f.source, "10.0.0.2:0".parse().unwrap());
            assert_eq!(f.destination, "10.0.0.1:0".parse().unwrap());
        }
        // GRE over IPv6, after a hop-by-hop header.
        let f = parse(&ipv6_with(0, &[47, 0, 0, 0, 0, 0, 0, 0], &[])).expect("gre6");
        assert_eq!(f.protocol, Protocol::Other(47));
        let mut short = udplite.clone();
        short.truncate(22);
        assert_eq!(parse(&short), Err(Malformed::Truncated));
        assert_eq!(
            parse(&ipv6_with(ICMPV6, &[], &[128, 0, 0, 0])),
            Err(Malformed::OtherProtocol)
        );
    }

    #[test]
    fn malformed_packets_are_named_not_panicked_on() {
        assert_eq!(parse(&[]), Err(Malformed::Truncated));
        assert_eq!(parse(&[0x20; 40]), Err(Malformed::NotIp));
        let good = udp4([10, 0, 0, 2], [10, 0, 0, 1], 1, 2);
        for cut in 0..24 {
            assert!(parse(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut short_ihl = good.clone();
        short_ihl[0] = 0x44;
        assert_eq!(parse(&short_ihl), Err(Malformed::BadHeaderLength));
        let mut long_ihl = good.clone();
        long_ihl[0] = 0x4f;
        assert_eq!(parse(&long_ihl), Err(Malformed::Truncated));
        let mut fragment = good.clone();
        fragment[7] = 1;
        assert_eq!(parse(&fragment), Err(Malformed::Fragment));
        let mut icmp = good.clone();
        icmp[9] = 1;
        assert_eq!(parse(&icmp), Err(Malformed::OtherProtocol));
        // Extension headers that never end, or point past the packet.
        let endless: Vec<u8> = std::iter::repeat_n([60u8, 0, 0, 0, 0, 0, 0, 0], 9)
            .flatten()
            .collect();
        assert_eq!(
            parse(&ipv6_with(60, &endless, &[])),
            Err(Malformed::TooManyExtensions)
        );
        assert_eq!(
            parse(&ipv6_with(60, &[UDP, 255], &[])),
            Err(Malformed::Truncated)
        );
    }

    #[test]
    fn no_input_panics() {
        // Every prefix of every byte pattern of a small set of shapes: parse returns, always.
        let mut state = 0x2545_f491_u32;
        for len in 0..200usize {
            for _ in 0..50 {
                let mut p: Vec<u8> = (0..len)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 17;
                        state ^= state << 5;
                        state as u8
                    })
                    .collect();
                if let Some(b) = p.first_mut() {
                    *b = if state.is_multiple_of(2) {
                        0x45 | (*b & 0x0f)
                    } else {
                        0x60
                    };
                }
                let _ = parse(&p);
            }
        }
    }
}
