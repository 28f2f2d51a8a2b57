//! `PodTable::check` and a full compile at 10,000 pods, 1,000 NetworkPolicies and 50 namespaces,
//! with and without 200 ClusterNetworkPolicies of 25 rules (issue 23: the lookup within 2× of
//! the cluster without CNPs, the compile under 1 s).
//! Run: `cargo bench -p portcullis-policy --bench cnp -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;
use std::net::IpAddr;

use criterion::{criterion_group, criterion_main, Criterion};
use portcullis_policy::{compile, synthetic, Cluster, Direction, Protocol};

const NAMESPACES: usize = 50;
const PODS: usize = 10_000;
const POLICIES: usize = 1_000;
const CNPS: usize = 200;
const RULES: usize = 25;

fn clusters() -> [(&'static str, Cluster); 2] {
    let plain = synthetic::cluster(NAMESPACES, PODS, POLICIES, 7);
    let mut with = plain.clone();
    synthetic::add_cnps(&mut with, NAMESPACES, CNPS, RULES, 11);
    [("without CNPs", plain), ("200 CNPs x 25 rules", with)]
}

fn lookups(c: &mut Criterion) {
    let peers: Vec<IpAddr> = (0..64)
        .map(|i| synthetic::pod_ip((i * 7) % NAMESPACES, (i * 13) % (PODS / NAMESPACES)))
        .chain([
            "172.20.5.5".parse().unwrap(),
            "192.168.1.1".parse().unwrap(),
        ])
        .collect();
    let ports = [8080u16, 9050, 5432, 443];
    for (name, cluster) in clusters() {
        let compiled = compile(&cluster);
        assert!(compiled.errors.is_empty(), "{:?}", compiled.errors.first());
        let tables: Vec<_> = compiled.tables.values().cloned().collect();
        let tier_rules: usize = tables
            .iter()
            .map(|t| {
                t.ingress.admin.len()
                    + t.egress.admin.len()
                    + t.ingress.baseline.len()
                    + t.egress.baseline.len()
            })
            .sum();
        println!(
            "{name}: {} tables, {:.1} CNP rules per table on average",
            tables.len(),
            tier_rules as f64 / tables.len() as f64
        );
        let mut i = 0usize;
        c.bench_function(
            &format!("verdict lookup (10k pods, 1k policies, {name})"),
            |b| {
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
            },
        );
    }
}

fn full_compile(c: &mut Criterion) {
    let [_, (name, cluster)] = clusters();
    let mut group = c.benchmark_group("compile");
    group.sample_size(10);
    group.bench_function(
        format!("full compile (10k pods, 1k policies, {name})"),
        |b| b.iter(|| black_box(compile(black_box(&cluster)).tables.len())),
    );
    group.finish();
}

criterion_group!(benches, lookups, full_compile);
criterion_main!(benches);
