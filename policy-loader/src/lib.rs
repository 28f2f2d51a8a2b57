//! Reads manifests from files and directories into a [`Cluster`]: the file-system half of
//! `portcullis-policy`, shared by the CLI, the proxy (`--policy-dir`) and the controller (file mode).

use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use std::collections::BTreeSet;

use portcullis_policy::lint::{cnp_documents, unknown_fields, Check, Finding};
use portcullis_policy::manifest::{load_into, LoadError};
use portcullis_policy::Cluster;

/// The cluster read from paths, and everything that went wrong doing it.
pub struct Loaded {
    pub cluster: Cluster,
    pub errors: Vec<String>,
    pub ignored: Vec<String>,
    /// Unknown fields found while reading (only from [`load_paths_linted`]).
    pub findings: Vec<Finding>,
    /// Namespaces whose Namespace object was read (others exist only by implication).
    pub declared_namespaces: BTreeSet<String>,
    /// Standard input (`<stdin>`) or directories that held no object at all, without another
    /// error, or all the paths when together they held none. A command
    /// line treats them as errors, as `kubectl apply` does (the empty output of a failed `kubectl
    /// get ... | portcullis lint -f -` must not pass a CI job); a watched directory may be empty.
    pub empty: Vec<String>,
}

impl Loaded {
    /// Moves [`Loaded::empty`] into [`Loaded::errors`], worded for a user.
    pub fn empty_is_error(&mut self) {
        for name in self.empty.drain(..) {
            self.errors.push(format!(
                "{name}: no Kubernetes objects (empty input; expected YAML or JSON manifests)"
            ));
        }
    }
}

/// Reads YAML/JSON files; directories are walked recursively (`.yaml`, `.yml`, `.json`), in
/// name order so that results never depend on the file system's order. `-` is standard input.
pub fn load_paths(paths: &[PathBuf]) -> Loaded {
    load(paths, false)
}

/// As [`load_paths`], and also looks for fields the API server would reject as unknown
/// (`portcullis lint`, and the warnings of `matrix` and `explain`).
pub fn load_paths_linted(paths: &[PathBuf]) -> Loaded {
    load(paths, true)
}

fn load(paths: &[PathBuf], lint: bool) -> Loaded {
    let mut loaded = Loaded {
        cluster: Cluster::new(),
        errors: Vec::new(),
        ignored: Vec::new(),
        findings: Vec::new(),
        declared_namespaces: BTreeSet::new(),
        empty: Vec::new(),
    };
    let mut total = 0;
    for path in paths {
        let errors_before = loaded.errors.len();
        let objects = if path.as_os_str() == "-" {
            // `kubectl get ns,pods,networkpolicies -A -o yaml | portcullis matrix -f -`
            let mut text = String::new();
            match std::io::Read::read_to_string(&mut std::io::stdin(), &mut text) {
                Ok(_) => add_text(&mut loaded, &text, "<stdin>", lint),
                Err(e) => {
                    loaded.errors.push(format!("<stdin>: cannot read: {e}"));
                    0
                }
            }
        } else {
            load_path(&mut loaded, path, lint)
        };
        // Standard input and directories must hold something; a file named on its own may be
        // empty (a case with no policies) as long as the whole input is not.
        let stdin_or_dir = path.as_os_str() == "-" || path.is_dir();
        if stdin_or_dir && objects == 0 && loaded.errors.len() == errors_before {
            loaded.empty.push(if path.as_os_str() == "-" {
                "<stdin>".to_string()
            } else {
                path.display().to_string()
            });
        }
        total += objects;
    }
    if total == 0 && loaded.errors.is_empty() && loaded.empty.is_empty() && !paths.is_empty() {
        let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        loaded.empty.push(names.join(", "));
    }
    loaded.declared_namespaces = loaded.cluster.namespaces.keys().cloned().collect();
    loaded.cluster.ensure_implied_namespaces();
    loaded
}

/// Reads a file, or every manifest under a directory; returns how many objects they held.
fn load_path(loaded: &mut Loaded, path: &Path, lint: bool) -> usize {
    let mut files = Vec::new();
    if let Err(e) = collect_files(path, &mut files, true) {
        loaded.errors.push(e.to_string());
        return 0;
    }
    let mut objects = 0;
    for file in files {
        let source = file.display().to_string();
        match fs::read_to_string(&file) {
            Ok(text) => objects += add_text(loaded, &text, &source, lint),
            Err(e) => loaded.errors.push(format!("{source}: cannot read: {e}")),
        }
    }
    objects
}

/// Adds the objects of one text; returns how many it held.
fn add_text(loaded: &mut Loaded, text: &str, source: &str, lint: bool) -> usize {
    if lint {
        loaded.findings.extend(unknown_fields(text, source));
    }
    let cnps_before = loaded.cluster.cnps.len();
    let report = load_into(&mut loaded.cluster, text, source);
    if lint {
        // ClusterNetworkPolicies for lint, read here until the manifest loader reads them (then
        // it has, and only the v1alpha1 notes are added).
        let found = cnp_documents(text, source);
        let loader_took_them = loaded.cluster.cnps.len() > cnps_before
            || (report.errors.iter()).any(|e| e.to_string().contains(portcullis_policy::cnp::KIND));
        for f in found.findings {
            if f.check == Check::AnpV1alpha1NotRead || !loader_took_them {
                loaded.findings.push(f);
            }
        }
        if !loader_took_them {
            loaded.cluster.cnps.extend(found.cnps);
        }
    }
    loaded
        .errors
        .extend(report.errors.iter().map(LoadError::to_string));
    loaded.ignored.extend(report.ignored);
    report.objects
}

/// Why a path given to [`load_paths`] could not be walked.
#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: cannot list directory: {source}", path.display())]
    List {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn collect_files(path: &Path, out: &mut Vec<PathBuf>, explicit: bool) -> Result<(), WalkError> {
    let meta = fs::metadata(path).map_err(|source| WalkError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = fs::read_dir(path)
            .map_err(|source| WalkError::List {
                path: path.to_path_buf(),
                source,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for entry in entries {
            let hidden = entry
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'));
            if !hidden {
                collect_files(&entry, out, false)?;
            }
        }
    } else if explicit || is_manifest(path) {
        out.push(path.to_path_buf());
    }
    Ok(())
}

pub fn is_manifest(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

/// A cheap summary of a directory's state, for polling it: names, sizes, times and inodes of
/// every visible entry (hidden ones, such as staging areas, are ignored). Renaming a new directory
/// into place changes it, as does editing a file in place.
pub fn fingerprint(dir: &Path) -> u64 {
    let mut hasher = DefaultHasher::new();
    walk(dir, &mut hasher);
    hasher.finish()
}

fn walk(path: &Path, hasher: &mut DefaultHasher) {
    let Ok(meta) = std::fs::metadata(path) else {
        path.hash(hasher);
        "missing".hash(hasher);
        return;
    };
    path.hash(hasher);
    if meta.is_dir() {
        // A directory's own times change with hidden entries (staging areas); its inode still
        // tells a directory renamed into place from the old one.
        meta.ino().hash(hasher);
        let Ok(entries) = std::fs::read_dir(path) else {
            return;
        };
        let mut children: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                !p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect();
        children.sort();
        for child in children {
            walk(&child, hasher);
        }
    } else {
        (meta.ino(), meta.size(), meta.mtime(), meta.mtime_nsec()).hash(hasher);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The staged annotation travels from a file to the compiled table: the loader keeps
    /// object metadata, and validation reads `portcullis.dev/staged`.
    #[test]
    fn a_staged_policy_read_from_a_file_is_compiled_staged() {
        let dir =
            std::env::temp_dir().join(format!("portcullis-loader-staged-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("staged.yaml");
        fs::write(
            &file,
            "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: shop}\n\
             status: {podIP: 10.0.0.1}\n---\n\
             apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: deny-all\n  \
             namespace: shop\n  annotations: {portcullis.dev/staged: \"true\"}\nspec: {podSelector: {}}\n",
        )
        .unwrap();
        let loaded = load_paths(std::slice::from_ref(&dir));
        fs::remove_dir_all(&dir).unwrap();
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let compiled = portcullis_policy::compile(&loaded.cluster);
        let table = compiled.table("shop/web").expect("a table");
        assert!(!table.ingress.is_isolated());
        assert!(table.has_staged());
    }
}
