//! The optional Prometheus Operator manifests (`manifests/monitoring/`) must only speak of
//! metrics that some component really exports: an alert on a misspelt or renamed metric never
//! fires, and nobody notices.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

fn files(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("readable").flatten() {
        let path = entry.path();
        if path.is_dir() {
            files(&path, ext, out);
        } else if path.extension().is_some_and(|e| e == ext) {
            out.push(path);
        }
    }
}

/// `portcullis_…` names in `text`, optionally only those written as string literals.
fn metric_names(text: &str, literals_only: bool) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("portcullis_") {
        let start = i + pos;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_lowercase() || bytes[end] == b'_') {
            end += 1;
        }
        let quoted = start > 0 && bytes[start - 1] == b'"' && bytes.get(end) == Some(&b'"');
        let word_start = start == 0 || !(bytes[start - 1].is_ascii_alphanumeric());
        if (quoted || !literals_only) && word_start {
            names.insert(text[start..end].to_string());
        }
        i = end.max(start + 1);
    }
    names
}

#[test]
fn alerts_and_monitors_name_only_exported_metrics() {
    let root = repo();
    let mut sources = Vec::new();
    for krate in ["proxy", "controller", "injector-webhook", "tls-reload"] {
        files(&root.join(krate).join("src"), "rs", &mut sources);
    }
    let exported: BTreeSet<String> = sources
        .iter()
        .flat_map(|f| metric_names(&fs::read_to_string(f).expect("source"), true))
        .collect();
    assert!(
        exported.contains("portcullis_connections_total")
            && exported.contains("portcullis_controller_generation"),
        "the scan of the sources found too little: {exported:?}"
    );

    let mut manifests = Vec::new();
    files(&root.join("manifests/monitoring"), "yaml", &mut manifests);
    assert!(!manifests.is_empty(), "manifests/monitoring/ is empty");
    let mut used = BTreeSet::new();
    for f in &manifests {
        used.extend(metric_names(
            &fs::read_to_string(f).expect("manifest"),
            false,
        ));
    }
    assert!(used.len() >= 5, "the rules mention only {used:?}");
    let unknown: Vec<&String> = used
        .iter()
        .filter(|name| {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            !exported.contains(base) && !exported.contains(name.as_str())
        })
        .collect();
    assert!(
        unknown.is_empty(),
        "manifests/monitoring names metrics no component exports: {unknown:?}"
    );
}
