//! `portcullis matrix` at scale: the matrix of 2,000 pods on one probe, computed as the table view does (no reasons) and then walked
//! cell by cell through its index, as the table view does. Must stay well under 2 s (issue 22:
//! the per-cell scan it replaces took 77 s for 400 pods). Run: `cargo bench -p portcullis-policy
//! --bench matrix`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use portcullis_policy::matrix::{Detail, Probe};
use portcullis_policy::{compile, synthetic, Matrix, Protocol};

const NAMESPACES: usize = 20;
const PODS: usize = 2_000;
const POLICIES: usize = 200;

/// Every cell looked up through the index, as the table view does; the allowed count.
fn walk(m: &Matrix) -> usize {
    let pods = m.pods();
    let index = m.index();
    let mut allowed = 0usize;
    for probe in m.probe_list() {
        for from in &pods {
            for to in &pods {
                allowed += usize::from(index.get(from, to, probe).is_some_and(|c| c.allowed));
            }
        }
    }
    allowed
}

fn matrix(c: &mut Criterion) {
    let cluster = synthetic::cluster(NAMESPACES, PODS, POLICIES, 7);
    let compiled = compile(&cluster);
    assert!(compiled.errors.is_empty(), "{:?}", compiled.errors.first());
    let probes = [Probe {
        port: 8080,
        protocol: Protocol::Tcp,
    }];
    let mut group = c.benchmark_group("matrix");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    for (name, detail) in [
        (
            "2000 pods, 1 probe: table view (allowed only), every cell walked",
            Detail::AllowedOnly,
        ),
        (
            "2000 pods, 1 probe: with every reason (JSON), every cell walked",
            Detail::Reasons,
        ),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let m = Matrix::compute_for(&compiled, &probes, None, detail);
                black_box(walk(&m))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, matrix);
criterion_main!(benches);
