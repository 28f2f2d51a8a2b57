//! The cluster DNS the testbed runs: its manifests added to the policy directory, dnsmasq
//! started in the DNS pod, its hosts file refreshed (the names are in `dns.rs`).

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::{Context, Error, Result};

use crate::sidecars::spawn_in;
use crate::state::load_cluster;
use crate::{dns, netns, serve, DnsState, Snapshot, State};

/// Writes the cluster DNS's pod, Service and namespace into the policy directory (see
/// `dns.rs`), unless the manifests bring their own `kube-system/kube-dns`. Returns whether it did.
pub(crate) fn add_cluster_dns(policy_dir: &Path) -> Result<bool> {
    let user = load_cluster(&[policy_dir.to_path_buf()])?;
    let Some(text) = dns::manifest(&user)? else {
        eprintln!(
            "note: the manifests define {}; the testbed runs no DNS of its own",
            dns::SERVICE_KEY
        );
        return Ok(false);
    };
    let path = policy_dir.join("cluster").join("000-testbed-dns.yaml");
    fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644))?;
    Ok(true)
}

/// Starts dnsmasq in the DNS pod on a hosts file of every Service, and waits until it answers
/// on TCP 53 (its UDP socket is bound before).
pub(crate) fn start_dns(state: &State, snapshot: &Snapshot, dir: &Path) -> Result<DnsState> {
    let pod = state.pod(dns::POD_KEY)?;
    let hosts = dir.join("dns.hosts");
    fs::write(&hosts, dns::hosts(&snapshot.cluster, &snapshot.services))?;
    fs::set_permissions(&hosts, fs::Permissions::from_mode(0o644))?;
    let dnsmasq = Path::new("/usr/sbin/dnsmasq");
    if !dnsmasq.is_file() {
        return Err(Error::Environment("the testbed's cluster DNS needs dnsmasq (Debian package dnsmasq-base: apt-get install dnsmasq-base)".into()));
    }
    let log = dir.join("dns.log");
    let pid = spawn_in(
        &pod.netns,
        dnsmasq,
        &dns::dnsmasq_args(&hosts),
        &[],
        &log,
        None,
    )?;
    let ns = pod.netns.clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ns = ns.clone();
        let up = netns::within(&ns, || {
            TcpStream::connect_timeout(
                &SocketAddr::from(([127, 0, 0, 1], 53)),
                Duration::from_millis(200),
            )
            .is_ok()
        })?;
        if up {
            break;
        }
        if Instant::now() > deadline {
            return Err(Error::Timeout(format!(
                "dnsmasq did not start in {}: {}",
                dns::POD_KEY,
                fs::read_to_string(&log).unwrap_or_default()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(DnsState { pid, hosts })
}

/// Rewrites the DNS's hosts file and has dnsmasq re-read it (SIGHUP).
pub(crate) fn refresh_dns(state: &State, snapshot: &Snapshot) -> Result<()> {
    let Some(d) = &state.dns else {
        return Ok(());
    };
    serve::write_atomically(
        &d.hosts,
        dns::hosts(&snapshot.cluster, &snapshot.services).as_bytes(),
    )?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(d.pid as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .map_err(std::io::Error::from)
    .context("cannot signal dnsmasq")?;
    Ok(())
}
