//! The policy directory: the manifests given to `up` and `apply`, copied in (with ClusterIPs
//! allocated as the API server would) and readable by the proxies' user.

use std::collections::BTreeSet;
use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Context, Result};

use crate::services;

/// Copies the manifests given to `up` into the policy directory the proxies will read.
pub(crate) fn prepare_policy_dir(dir: &Path, files: &[PathBuf]) -> Result<PathBuf> {
    let policy_dir = dir.join("policy");
    fs::create_dir_all(policy_dir.join("cluster"))?;
    fs::create_dir_all(policy_dir.join("applied"))?;
    copy_manifests(files, &policy_dir.join("cluster"))?;
    // The proxies run as UID 2171 and must read the policy directory.
    for d in ["/run/portcullis", "/run/portcullis/testbed"] {
        fs::set_permissions(d, fs::Permissions::from_mode(0o755))?;
    }
    make_world_readable(dir)?;
    Ok(policy_dir)
}

pub(crate) fn copy_manifests(files: &[PathBuf], into: &Path) -> Result<()> {
    let mut found = Vec::new();
    for path in files {
        collect(path, &mut found)?;
    }
    let mut taken = cluster_ips_in(&found);
    copy_with_cluster_ips(&found, into, 0, &mut taken)
}

/// Every ClusterIP the manifests under `paths` give (errors are reported by the real load).
pub(crate) fn cluster_ips_in(paths: &[PathBuf]) -> BTreeSet<IpAddr> {
    portcullis_policy_loader::load_paths(paths)
        .cluster
        .services
        .iter()
        .flat_map(|s| s.cluster_ips.iter().copied())
        .collect()
}

/// Copies `files` into `into` as `NNN-name` (numbered from `start + 1`), giving every Service
/// that has no ClusterIP one (see `services.rs`), as the API server would.
pub(crate) fn copy_with_cluster_ips(
    files: &[PathBuf],
    into: &Path,
    start: usize,
    taken: &mut BTreeSet<IpAddr>,
) -> Result<()> {
    for (i, file) in files.iter().enumerate() {
        let name = file
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let target = into.join(format!("{:03}-{name}", start + i + 1));
        let text =
            fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
        let (text, allocated) = services::allocate_cluster_ips(&text, taken);
        for (svc, ip) in allocated {
            match ip {
                IpAddr::V4(_) => {
                    eprintln!("note: Service {svc} has no clusterIP; the testbed gives it {ip}")
                }
                IpAddr::V6(_) => {
                    eprintln!("note: Service {svc} asks for IPv6; the testbed gives it {ip}")
                }
            }
        }
        fs::write(&target, text)
            .with_context(|| format!("cannot copy {} into the testbed", file.display()))?;
        fs::set_permissions(&target, fs::Permissions::from_mode(0o644))?;
    }
    Ok(())
}

pub(crate) fn collect(path: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let meta = fs::metadata(path).with_context(|| format!("{}: cannot read", path.display()))?;
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = fs::read_dir(path)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for e in entries {
            if e.is_dir() || portcullis_policy_loader::is_manifest(&e) {
                collect(&e, out)?;
            }
        }
    } else {
        out.push(path.to_path_buf());
    }
    Ok(())
}

pub(crate) fn make_world_readable(dir: &Path) -> Result<()> {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            make_world_readable(&path)?;
        } else {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644))?;
        }
    }
    Ok(())
}
