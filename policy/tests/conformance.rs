//! The Kubernetes e2e NetworkPolicy cases, as fixtures: `conformance/<case>/policy.yaml` applied
//! to `conformance/model.yaml` must give exactly `conformance/<case>/expected.json`.
//! The expectations are written by hand (`expected.txt`, expanded by `expand.py`), never
//! produced by this engine.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use portcullis_policy::manifest::load_into;
use portcullis_policy::matrix::default_probes;
use portcullis_policy::{compile, Cluster, Matrix};

fn conformance_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance")
}

fn cases() -> Vec<PathBuf> {
    let mut cases: Vec<PathBuf> = fs::read_dir(conformance_dir())
        .expect("conformance dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("expected.json").is_file())
        .collect();
    cases.sort();
    cases
}

type Cells = BTreeMap<(String, String, u16, String), bool>;

fn cells(m: &Matrix) -> Cells {
    m.probes
        .iter()
        .map(|p| {
            (
                (p.from.clone(), p.to.clone(), p.port, p.protocol.to_string()),
                p.allowed,
            )
        })
        .collect()
}

fn load(cluster: &mut Cluster, path: &Path) {
    let text = fs::read_to_string(path).unwrap();
    let report = load_into(cluster, &text, &path.display().to_string());
    assert!(report.errors.is_empty(), "{path:?}: {:?}", report.errors);
}

#[test]
fn every_e2e_case_matches_its_truth_table() {
    let cases = cases();
    assert!(cases.len() >= 40, "only {} conformance cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let mut cluster = Cluster::new();
        load(&mut cluster, &conformance_dir().join("model.yaml"));
        load(&mut cluster, &case.join("policy.yaml"));
        let compiled = compile(&cluster);
        assert!(
            compiled.errors.is_empty(),
            "{case:?}: {:?}",
            compiled.errors
        );
        let probes = default_probes(&compiled.pods);
        let got = Matrix::compute(&compiled, &probes);
        let expected: Matrix =
            serde_json::from_str(&fs::read_to_string(case.join("expected.json")).unwrap()).unwrap();
        let (got_cells, want) = (cells(&got), cells(&expected));
        assert_eq!(
            got_cells.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "{case:?}: different cells"
        );
        for (key, allowed) in &want {
            if got_cells[key] != *allowed {
                let reason = got
                    .get(
                        &key.0,
                        &key.1,
                        portcullis_policy::Probe {
                            port: key.2,
                            protocol: key.3.parse().unwrap(),
                        },
                    )
                    .and_then(|p| p.reason.clone())
                    .unwrap_or_default();
                failures.push(format!(
                    "{}: {} -> {} {}/{}: expected {}, engine says {} ({reason})",
                    case.file_name().unwrap().to_string_lossy(),
                    key.0,
                    key.1,
                    key.2,
                    key.3,
                    allowed,
                    !allowed
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} cells differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
