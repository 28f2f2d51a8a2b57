//! The cost of staged policies on the decision: `PodTable::check` on a cluster with nothing
//! staged, `check_staged` on the same tables (the staged half returns at once), and
//! `check_staged` with a staged default deny in every namespace (both tables consulted).
//! Run: `cargo bench -p portcullis-policy --bench staged`.

use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use portcullis_policy::manifest::load_into;
use portcullis_policy::{compile, synthetic, Direction, PodTable, Protocol};

const NAMESPACES: usize = 50;
const PODS: usize = 10_000;
const POLICIES: usize = 1_000;

fn tables(staged: bool) -> Vec<Arc<PodTable>> {
    let mut cluster = synthetic::cluster(NAMESPACES, PODS, POLICIES, 7);
    if staged {
        for ns in 0..NAMESPACES {
            let text = format!(
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: staged-deny\n  \
                 namespace: {}\n  annotations: {{portcullis.dev/staged: \"true\"}}\n\
                 spec: {{podSelector: {{}}, policyTypes: [Ingress, Egress]}}\n",
                synthetic::namespace_name(ns)
            );
            assert!(load_into(&mut cluster, &text, "bench").errors.is_empty());
        }
    }
    let compiled = compile(&cluster);
    assert!(compiled.errors.is_empty(), "{:?}", compiled.errors.first());
    compiled.tables.values().cloned().collect()
}

fn lookups(c: &mut Criterion) {
    let peers: Vec<IpAddr> = (0..64)
        .map(|i| synthetic::pod_ip((i * 7) % NAMESPACES, (i * 13) % (PODS / NAMESPACES)))
        .chain(["172.16.5.5".parse().unwrap(), "8.8.8.8".parse().unwrap()])
        .collect();
    let ports = [8080u16, 9050, 5432, 443];
    let probe = |i: usize| {
        let dir = if i.is_multiple_of(2) {
            Direction::Ingress
        } else {
            Direction::Egress
        };
        (dir, peers[i % peers.len()], ports[i % ports.len()])
    };
    let plain = tables(false);
    let staged = tables(true);
    let mut group = c.benchmark_group("staged");
    let mut i = 0usize;
    group.bench_function("check, nothing staged", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let (dir, peer, port) = probe(i);
            let t = &plain[i % plain.len()];
            black_box(t.check(dir, black_box(peer), port, Protocol::Tcp).allowed())
        })
    });
    group.bench_function("check_staged, nothing staged", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let (dir, peer, port) = probe(i);
            let t = &plain[i % plain.len()];
            let out = t.check_staged(dir, black_box(peer), port, Protocol::Tcp);
            black_box((out.enforced.allowed(), out.staged.is_some()))
        })
    });
    group.bench_function("check, staged deny-all everywhere", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let (dir, peer, port) = probe(i);
            let t = &staged[i % staged.len()];
            black_box(t.check(dir, black_box(peer), port, Protocol::Tcp).allowed())
        })
    });
    group.bench_function("check_staged, staged deny-all everywhere", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let (dir, peer, port) = probe(i);
            let t = &staged[i % staged.len()];
            let out = t.check_staged(dir, black_box(peer), port, Protocol::Tcp);
            black_box((out.enforced.allowed(), out.staged.is_some()))
        })
    });
    group.finish();
}

criterion_group!(benches, lookups);
criterion_main!(benches);
