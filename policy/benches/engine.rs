//! Verdict lookup and full compile on a synthetic cluster of 10,000 pods, 1,000 policies and
//! 50 namespaces. Run: `cargo bench -p portcullis-policy`.

use std::hint::black_box;
use std::net::IpAddr;

use criterion::{criterion_group, criterion_main, Criterion};
use portcullis_policy::{compile, synthetic, Direction, Protocol};

const NAMESPACES: usize = 50;
const PODS: usize = 10_000;
const POLICIES: usize = 1_000;

fn lookups(c: &mut Criterion) {
    let cluster = synthetic::cluster(NAMESPACES, PODS, POLICIES, 7);
    let compiled = compile(&cluster);
    assert!(compiled.errors.is_empty(), "{:?}", compiled.errors.first());
    // Every pod's table, probed from a spread of peers on ports that hit and miss rules.
    let tables: Vec<_> = compiled.tables.values().cloned().collect();
    let peers: Vec<IpAddr> = (0..64)
        .map(|i| synthetic::pod_ip((i * 7) % NAMESPACES, (i * 13) % (PODS / NAMESPACES)))
        .chain(["172.16.5.5".parse().unwrap(), "8.8.8.8".parse().unwrap()])
        .collect();
    let ports = [8080u16, 9050, 5432, 443];
    let rules: usize = tables
        .iter()
        .map(|t| t.ingress.rules.len() + t.egress.rules.len())
        .sum();
    println!(
        "cluster: {} tables, {:.1} rules per table on average",
        tables.len(),
        rules as f64 / tables.len() as f64
    );
    let mut i = 0usize;
    c.bench_function("verdict lookup (10k pods, 1k policies)", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let t = &tables[i % tables.len()];
            let peer = peers[i % peers.len()];
            let port = ports[i % ports.len()];
            let dir = if i.is_multiple_of(2) {
                Direction::Ingress
            } else {
                Direction::Egress
            };
            black_box(t.check(dir, black_box(peer), port, Protocol::Tcp).allowed())
        })
    });
}

fn full_compile(c: &mut Criterion) {
    let cluster = synthetic::cluster(NAMESPACES, PODS, POLICIES, 7);
    let mut group = c.benchmark_group("compile");
    group.sample_size(10);
    group.bench_function("full compile (10k pods, 1k policies, 50 ns)", |b| {
        b.iter(|| black_box(compile(black_box(&cluster)).tables.len()))
    });
    group.finish();
}

criterion_group!(benches, lookups, full_compile);
criterion_main!(benches);
