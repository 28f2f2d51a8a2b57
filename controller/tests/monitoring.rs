//! The optional Prometheus Operator manifests and the Grafana dashboard (`manifests/monitoring/`)
//! must only speak of metrics that some component really exports: an alert or a panel on a
//! misspelt or renamed metric never fires or stays empty, and nobody notices.

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

/// Metrics the dashboard and alerts may use before the component that will export them does.
/// Remove a name once it is exported: the test fails until then so that this list cannot go
/// stale. (Empty: portcullis_unprotected_pods, the last one, is exported by the controller.)
const PLANNED: &[&str] = &[];

/// Metrics of other exporters that the dashboard reads (cAdvisor, through the kubelet).
const EXTERNAL: &[&str] = &[
    "container_cpu_usage_seconds_total",
    "container_memory_working_set_bytes",
];

/// Every `portcullis_…` name the components' sources write as a string literal.
fn exported_metrics() -> BTreeSet<String> {
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
    for planned in PLANNED {
        assert!(
            !exported.contains(*planned),
            "{planned} is exported now: remove it from PLANNED in {}",
            file!()
        );
    }
    exported
}

fn is_known(name: &str, exported: &BTreeSet<String>) -> bool {
    let base = ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name);
    exported.contains(base)
        || exported.contains(name)
        || PLANNED.contains(&name)
        || EXTERNAL.contains(&name)
}

/// The metric names a PromQL expression reads: identifiers that are not functions,
/// aggregations, keywords, label names (in `{…}` or `by (…)`), strings, ranges or numbers.
fn promql_metrics(expr: &str) -> BTreeSet<String> {
    // Aggregations may put `by (…)` before their parentheses: `sum by (pod) (x)`.
    const KEYWORDS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "inf",
        "nan",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ];
    const GROUPING: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let skip_to = |i: usize, close: char| {
        let mut j = i;
        while j < chars.len() && chars[j] != close {
            j += if chars[j] == '\\' { 2 } else { 1 };
        }
        j + 1
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => i = skip_to(i + 1, c),
            '{' => i = skip_to(i + 1, '}'),
            '[' => i = skip_to(i + 1, ']'),
            '$' => {
                i += 1;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
            }
            c if c.is_ascii_digit() || c == '.' => {
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut next = i;
                while next < chars.len() && chars[next].is_whitespace() {
                    next += 1;
                }
                let call = chars.get(next) == Some(&'(');
                if GROUPING.contains(&word.as_str()) && call {
                    i = skip_to(next + 1, ')'); // label names
                } else if !call && !KEYWORDS.contains(&word.as_str()) {
                    names.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

#[test]
fn promql_metric_extraction() {
    assert_eq!(
        promql_metrics(
            r#"topk(10, sum by (namespace, peer_namespace) (increase(portcullis_connections_total{verdict="deny", namespace=~"$namespace"}[$__range]))) > 0"#
        ),
        BTreeSet::from(["portcullis_connections_total".to_string()])
    );
    assert_eq!(
        promql_metrics(
            "histogram_quantile(0.99, sum by (le) (rate(a_bucket[5m]))) / on (pod) group_left b and c offset 1h or vector(0)"
        ),
        BTreeSet::from(["a_bucket", "b", "c"].map(String::from))
    );
}

#[test]
fn dashboard_panels_query_only_exported_metrics() {
    let exported = exported_metrics();
    let path = repo().join("manifests/monitoring/grafana-dashboard.json");
    let dash: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).expect("dashboard")).expect("JSON");
    let mut queried = BTreeSet::new();
    let mut panels = 0;
    for panel in dash["panels"].as_array().expect("panels") {
        if panel["type"] == "row" {
            continue;
        }
        panels += 1;
        let title = panel["title"].as_str().unwrap_or("?");
        let targets = panel["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or("");
            let names = promql_metrics(expr);
            assert!(
                !names.is_empty(),
                "panel {title:?}: {expr:?} reads no metric"
            );
            for name in names {
                assert!(
                    is_known(&name, &exported),
                    "panel {title:?} queries {name}, which no component exports: {expr}"
                );
                queried.insert(name);
            }
        }
    }
    for var in dash["templating"]["list"].as_array().expect("templating") {
        if let Some(q) = var["query"]["query"].as_str() {
            let inner = q.trim_start_matches("label_values(");
            for name in promql_metrics(inner.split(',').next().unwrap_or("")) {
                assert!(is_known(&name, &exported), "variable queries {name}: {q}");
            }
        }
    }
    assert!(panels >= 10, "only {panels} panels");
    // What the dashboard is for: each of these has a panel.
    for needed in [
        "portcullis_connections_total",
        "portcullis_unprotected_pods",
        "portcullis_policy_stale",
        "portcullis_policy_last_reload_timestamp_seconds",
        "portcullis_connection_duration_seconds_bucket",
        "container_cpu_usage_seconds_total",
        "container_memory_working_set_bytes",
    ] {
        assert!(queried.contains(needed), "no panel reads {needed}");
    }
}

#[test]
fn alerts_and_monitors_name_only_exported_metrics() {
    let root = repo();
    let exported = exported_metrics();

    let mut manifests = Vec::new();
    files(&root.join("manifests/monitoring"), "yaml", &mut manifests);
    files(&root.join("manifests/monitoring"), "json", &mut manifests);
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
        .filter(|name| !is_known(name, &exported))
        .collect();
    assert!(
        unknown.is_empty(),
        "manifests/monitoring names metrics no component exports: {unknown:?}"
    );
}
