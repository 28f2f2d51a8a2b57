//! The upstream ClusterNetworkPolicy conformance suite as this repository transcribes it
//! (`policy/tests/cnp-conformance/`, see its README): its tests, their steps in order, each
//! step's objects and expected probes. Read by the engine's test (`tests/cnp_vectors.rs`) and
//! by the testbed's, on real sockets (`cli/tests/cnp_conformance.rs`).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::Protocol;

/// Why the vectors cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum VectorError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} is not an expected.json: {source}")]
    Expected {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// Where the vectors are.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cnp-conformance")
}

/// One probe of a step: from a client pod to a server pod (`namespace/name`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct VectorProbe {
    pub from: String,
    pub to: String,
    pub port: u16,
    pub protocol: Protocol,
    pub allowed: bool,
}

#[derive(Deserialize)]
struct Expected {
    probes: Vec<VectorProbe>,
}

/// One step: every policy object present during it (`objects.yaml`, the whole state) and its
/// probes.
#[derive(Debug, Clone)]
pub struct Step {
    pub dir: PathBuf,
    pub objects: String,
    pub probes: Vec<VectorProbe>,
}

/// One upstream test (a directory named after its `ShortName`) and its steps in order.
#[derive(Debug, Clone)]
pub struct VectorTest {
    pub name: String,
    pub steps: Vec<Step>,
}

fn read(path: &Path) -> Result<String, VectorError> {
    fs::read_to_string(path).map_err(|source| VectorError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn sorted_dirs(dir: &Path, marker: &str) -> Result<Vec<PathBuf>, VectorError> {
    let entries = fs::read_dir(dir).map_err(|source| VectorError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut out: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join(marker).is_file())
        .collect();
    out.sort();
    Ok(out)
}

/// `base.yaml`: the namespaces, nodes and pods every test starts from.
pub fn base() -> Result<String, VectorError> {
    read(&root().join("base.yaml"))
}

/// Every test, by name, each with its steps in order.
pub fn tests() -> Result<Vec<VectorTest>, VectorError> {
    let mut out = Vec::new();
    for test in sorted_dirs(&root(), "test.yaml")? {
        let mut steps = Vec::new();
        for dir in sorted_dirs(&test, "expected.json")? {
            let objects = read(&dir.join("objects.yaml"))?;
            let path = dir.join("expected.json");
            let expected: Expected = serde_json::from_str(&read(&path)?)
                .map_err(|source| VectorError::Expected { path, source })?;
            steps.push(Step {
                dir,
                objects,
                probes: expected.probes,
            });
        }
        let name = test
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        out.push(VectorTest { name, steps });
    }
    Ok(out)
}

/// The YAML documents of a file that hold an object (not only comments).
pub fn documents(text: &str) -> Vec<&str> {
    text.split("\n---\n")
        .filter(|d| {
            d.lines()
                .any(|l| !l.trim().is_empty() && !l.starts_with('#'))
        })
        .collect()
}

/// A document's top-level `kind`, and its `metadata.name` (first `  name:` line after
/// `metadata:`).
pub fn kind_and_name(doc: &str) -> (Option<&str>, Option<&str>) {
    let kind = doc
        .lines()
        .find_map(|l| l.strip_prefix("kind:"))
        .map(str::trim);
    let name = doc
        .lines()
        .skip_while(|l| !l.starts_with("metadata:"))
        .find_map(|l| l.strip_prefix("  name:"))
        .map(str::trim);
    (kind, name)
}

/// The Namespaces of `base` a step's `objects` does not list: applied with the step, they give
/// each namespace not relabelled its `base.yaml` labels back.
pub fn base_namespaces_not_in<'a>(base: &'a str, objects: &str) -> Vec<&'a str> {
    let listed: Vec<&str> = documents(objects)
        .into_iter()
        .filter_map(|d| match kind_and_name(d) {
            (Some("Namespace"), name) => name,
            _ => None,
        })
        .collect();
    documents(base)
        .into_iter()
        .filter(|d| match kind_and_name(d) {
            (Some("Namespace"), Some(name)) => !listed.contains(&name),
            _ => false,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_test_and_step_and_probe_of_the_readme() {
        let tests = tests().unwrap();
        let steps: usize = tests.iter().map(|t| t.steps.len()).sum();
        let probes: usize = tests
            .iter()
            .flat_map(|t| &t.steps)
            .map(|s| s.probes.len())
            .sum();
        assert_eq!((tests.len(), steps, probes), (24, 96, 301));
    }

    #[test]
    fn a_relabelled_namespace_replaces_its_base_one() {
        let base = "kind: Namespace\nmetadata:\n  name: a\n---\nkind: Namespace\nmetadata:\n  name: b\n---\nkind: Pod\nmetadata:\n  name: p\n";
        let objects = "# x\n---\nkind: Namespace\nmetadata:\n  name: b\n  labels: {x: y}\n";
        let kept = base_namespaces_not_in(base, objects);
        assert_eq!(kept.len(), 1);
        assert!(kept[0].contains("name: a"));
    }
}
