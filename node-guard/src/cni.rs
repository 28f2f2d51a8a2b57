//! The pod list from the container runtime's CNI result cache (`/var/lib/cni/results`): libcni
//! (containerd, CRI-O) writes there the result of every successful ADD, one file per pod
//! network attachment, and removes it on DEL. For the bridge plugin (and Flannel, which
//! delegates to it) a result names the bridge, the host-side veth and the pod's interface with
//! its MAC, and the pod's IPs: exactly a guard entry, from the component that set them up,
//! not from anything a pod can answer (an ARP or neighbour cache, the bridge's forwarding
//! table).
//!
//! ```json
//! {"kind": "cniCacheV1", "containerId": "3f69…", "ifName": "eth0", "networkName": "cbr0",
//!  "cniArgs": [["K8S_POD_NAMESPACE", "default"], ["K8S_POD_NAME", "web-0"]],
//!  "result": {"cniVersion": "1.0.0",
//!    "interfaces": [{"name": "cni0", "mac": "…"}, {"name": "veth1a2b3c4d", "mac": "…"},
//!                   {"name": "eth0", "mac": "0a:58:0a:f4:01:05", "sandbox": "/var/run/netns/…"}],
//!    "ips": [{"address": "10.244.1.5/24", "interface": 2, "gateway": "10.244.1.1"}]}}
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::pods::{Pod, PodError};

/// Why the cache directory could not be read at all (a file that cannot be used is skipped
/// with a warning instead: one bad file must not unguard every other pod).
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("reading the CNI result cache {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Why one cached result gives no guard entry.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CacheError {
    #[error("not JSON: {0}")]
    Json(String),
    #[error("unknown cache kind {0:?}")]
    Kind(String),
    #[error("{0}: no result (CNI spec before 0.3?)")]
    NoResult(String),
    #[error("{0}: no address on an interface inside the pod")]
    NoPodInterface(String),
    #[error("{0}: no host-side interface in the result")]
    NoPort(String),
    #[error("{who}: {source}")]
    Pod { who: String, source: PodError },
}

#[derive(Debug, Deserialize)]
struct Cached {
    kind: String,
    #[serde(default, rename = "cniArgs")]
    cni_args: Vec<(String, String)>,
    result: Option<CniResult>,
}

#[derive(Debug, Deserialize)]
struct CniResult {
    #[serde(default)]
    interfaces: Vec<CniInterface>,
    #[serde(default)]
    ips: Vec<CniIp>,
}

#[derive(Debug, Deserialize)]
struct CniInterface {
    name: String,
    #[serde(default)]
    mac: String,
    #[serde(default)]
    sandbox: String,
}

#[derive(Debug, Deserialize)]
struct CniIp {
    address: String,
    interface: Option<usize>,
}

/// The pods of every usable result in `dir`, and a warning for each file skipped.
pub fn pods(dir: &Path, bridge: Option<&str>) -> Result<(Vec<Pod>, Vec<String>), CniError> {
    let err = |source| CniError::Dir {
        path: dir.to_path_buf(),
        source,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(err)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let (mut pods, mut warnings) = (Vec::new(), Vec::new());
    for file in files {
        // Removed between the listing and the read: the pod is gone.
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        match pod(&text, bridge) {
            Ok(Some(p)) if pods.iter().any(|q: &Pod| q.interface == p.interface) => warnings.push(
                format!("{}: port {} listed twice", file.display(), p.interface),
            ),
            Ok(Some(p)) => pods.push(p),
            Ok(None) => {}
            Err(why) => warnings.push(format!("{}: {why}", file.display())),
        }
    }
    Ok((pods, warnings))
}

/// The pod of one cached result: `None` for what is no pod port (a loopback attachment).
pub fn pod(text: &str, bridge: Option<&str>) -> Result<Option<Pod>, CacheError> {
    let cached: Cached = serde_json::from_str(text).map_err(|e| CacheError::Json(e.to_string()))?;
    if cached.kind != "cniCacheV1" {
        return Err(CacheError::Kind(cached.kind));
    }
    let who = pod_name(&cached.cni_args);
    let result = cached
        .result
        .ok_or_else(|| CacheError::NoResult(who.clone()))?;
    let ifs = &result.interfaces;
    // The pod's interface: the one inside a sandbox that the IPs name.
    let inside = result
        .ips
        .iter()
        .filter_map(|ip| ip.interface)
        .find(|&i| ifs.get(i).is_some_and(|f| !f.sandbox.is_empty()))
        .ok_or_else(|| CacheError::NoPodInterface(who.clone()))?;
    let pod_if = &ifs[inside];
    if pod_if.name == "lo" {
        return Ok(None);
    }
    // Its port: the last interface outside any sandbox before it that is not the bridge (the
    // bridge plugin lists bridge, host veth, pod interface).
    let port = ifs[..inside]
        .iter()
        .rev()
        .find(|f| f.sandbox.is_empty() && Some(f.name.as_str()) != bridge)
        .ok_or_else(|| CacheError::NoPort(who.clone()))?;
    let ips: Vec<String> = result
        .ips
        .iter()
        .filter(|ip| ip.interface == Some(inside))
        .map(|ip| ip.address.split('/').next().unwrap_or_default().to_string())
        .collect();
    Pod::new(&port.name, &pod_if.mac, &ips)
        .map(Some)
        .map_err(|source| CacheError::Pod { who, source })
}

fn pod_name(args: &[(String, String)]) -> String {
    let get = |k: &str| {
        args.iter()
            .find(|(key, _)| key == k)
            .map_or("?", |(_, v)| v.as_str())
    };
    format!("pod {}/{}", get("K8S_POD_NAMESPACE"), get("K8S_POD_NAME"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bridge plugin result as libcni caches it (Flannel's has the same shape).
    const BRIDGE: &str = r#"{"kind": "cniCacheV1", "containerId": "3f69", "ifName": "eth0",
        "networkName": "cbr0", "config": "e30=",
        "cniArgs": [["IgnoreUnknown", "true"], ["K8S_POD_NAMESPACE", "default"],
                    ["K8S_POD_NAME", "web-0"]],
        "result": {"cniVersion": "1.0.0",
          "interfaces": [{"name": "cni0", "mac": "4e:0c:1d:6a:2b:01"},
                         {"name": "veth1a2b3c4d", "mac": "6a:11:22:33:44:55"},
                         {"name": "eth0", "mac": "0a:58:0a:f4:01:05",
                          "sandbox": "/var/run/netns/cni-1234"}],
          "ips": [{"address": "10.244.1.5/24", "interface": 2, "gateway": "10.244.1.1"},
                  {"address": "fd00:10:244:1::5/64", "interface": 2}],
          "routes": [{"dst": "0.0.0.0/0"}], "dns": {}}}"#;

    #[test]
    fn a_bridge_result_gives_port_mac_and_ips() {
        for bridge in [Some("cni0"), None] {
            let pod = pod(BRIDGE, bridge).expect("usable").expect("a pod");
            assert_eq!(pod.interface.as_str(), "veth1a2b3c4d");
            assert_eq!(pod.mac.to_string(), "0a:58:0a:f4:01:05");
            let ips: Vec<String> = pod.ips.iter().map(ToString::to_string).collect();
            assert_eq!(ips, ["10.244.1.5", "fd00:10:244:1::5"]);
        }
    }

    #[test]
    fn loopback_attachments_are_no_pod_and_broken_results_say_whose() {
        let lo = r#"{"kind": "cniCacheV1", "result": {"interfaces":
            [{"name": "lo", "mac": "00:00:00:00:00:00", "sandbox": "/var/run/netns/x"}],
            "ips": [{"address": "127.0.0.1/8", "interface": 0}]}}"#;
        assert_eq!(pod(lo, None), Ok(None));
        let no_port = BRIDGE.replace(r#""name": "veth1a2b3c4d""#, r#""name": "cni0""#);
        let err = pod(&no_port, Some("cni0"))
            .expect_err("no port")
            .to_string();
        assert!(
            err.contains("default/web-0") && err.contains("host-side"),
            "{err}"
        );
        assert!(pod(r#"{"kind": "other"}"#, None).is_err());
        assert!(pod("[", None).is_err());
        let bad_mac = BRIDGE.replace("0a:58:0a:f4:01:05", "zz");
        let err = pod(&bad_mac, None).expect_err("mac").to_string();
        assert!(err.contains("MAC"), "{err}");
    }

    #[test]
    fn a_directory_of_results_skips_bad_files_with_a_warning() {
        let dir = std::env::temp_dir().join(format!("pcng-cni-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("cbr0-a-eth0"), BRIDGE).expect("write");
        std::fs::write(dir.join("cbr0-b-eth0"), "garbage").expect("write");
        let (pods, warnings) = pods(&dir, Some("cni0")).expect("readable");
        std::fs::remove_dir_all(&dir).expect("cleanup");
        assert_eq!(pods.len(), 1);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("cbr0-b-eth0"), "{warnings:?}");
    }
}
