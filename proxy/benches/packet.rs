//! The queue's packet parser against etherparse's lax IP slicer, on what the queue hands over:
//! the first 256 bytes of a packet (COPY_RANGE), IPv4 or IPv6 (with a hop-by-hop header).
use std::hint::black_box;
use std::net::IpAddr;

use criterion::{criterion_group, criterion_main, Criterion};
use portcullis_proxy::queue::packet::parse;

fn udp4(total: u16) -> Vec<u8> {
    let mut p = vec![
        0x45, 0, 0, 0, 0, 1, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
    ];
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0x9c, 0x40, 0, 53, 0, 0, 0, 0]);
    p.resize(usize::from(total).min(256), 0xab);
    p
}

fn udp6_hbh(total_payload: u16) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0, 0, 0, 0, 64];
    p[4..6].copy_from_slice(&total_payload.to_be_bytes());
    p.extend_from_slice(&"fd00::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
    p.extend_from_slice(&"fd00::2".parse::<std::net::Ipv6Addr>().unwrap().octets());
    p.extend_from_slice(&[17, 0, 1, 4, 0, 0, 0, 0]); // hop-by-hop: next UDP, PadN
    p.extend_from_slice(&[0x9c, 0x40, 0, 53, 0, 0, 0, 0]);
    p.resize((40 + usize::from(total_payload)).min(256), 0xab);
    p
}

type Ports = (IpAddr, u16, IpAddr, u16, u8);

fn ours(p: &[u8]) -> Option<Ports> {
    let f = parse(p).ok()?;
    let n = f.protocol.number();
    Some((
        f.source.ip(),
        f.source.port(),
        f.destination.ip(),
        f.destination.port(),
        n,
    ))
}

fn etherparse_lax(p: &[u8]) -> Option<Ports> {
    let (ip, _) = etherparse::LaxIpSlice::from_slice(p).ok()?;
    let payload = ip.payload();
    let n = payload.ip_number.0;
    if payload.fragmented || !matches!(n, 6 | 17 | 132) {
        return None;
    }
    let b = payload.payload.get(..4)?;
    Some((
        ip.source_addr(),
        u16::from_be_bytes([b[0], b[1]]),
        ip.destination_addr(),
        u16::from_be_bytes([b[2], b[3]]),
        n,
    ))
}

fn bench(c: &mut Criterion) {
    let cases = [
        ("udp4_full_64", udp4(64)),
        ("udp4_cut_at_256_of_1400", udp4(1400)),
        ("udp6_hbh_cut_at_256_of_1400", udp6_hbh(1360)),
    ];
    for (name, p) in &cases {
        assert_eq!(
            ours(p),
            etherparse_lax(p),
            "{name}: both read the same flow"
        );
        let mut g = c.benchmark_group(*name);
        g.bench_function("hand_written", |b| b.iter(|| ours(black_box(p))));
        g.bench_function("etherparse_lax", |b| {
            b.iter(|| etherparse_lax(black_box(p)))
        });
        g.finish();
    }
    // Strict etherparse (SlicedPacket::from_ip) refuses what the queue copies: a cut packet.
    let cut = udp4(1400);
    println!(
        "strict etherparse on a 256-byte copy of a 1400-byte packet: {}",
        if etherparse::SlicedPacket::from_ip(&cut).is_ok() {
            "accepted"
        } else {
            "refused"
        }
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
