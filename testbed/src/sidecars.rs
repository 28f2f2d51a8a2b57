//! The processes of a pod: its server, portcullis-init and portcullis-proxy (as the
//! injector configures them), each started inside the pod's namespace.

use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result};
use portcullis_policy::PodInfo;

use crate::pods::gateway_of;
use crate::{PodState, PolicySource, UpOptions, CONTROLLER_PORT, PROXY_MARK, PROXY_UID};

/// The pod's application: `portcullis testbed serve` on the ports of `wanted`.
pub(crate) fn start_server(pod: &PodState, wanted: &Path) -> Result<u32> {
    let self_exe = std::env::current_exe().context("cannot find the portcullis executable")?;
    spawn_in(
        &pod.netns,
        &self_exe,
        &[
            "testbed".into(),
            "serve".into(),
            "--identity".into(),
            pod.key.clone(),
            "--wanted".into(),
            wanted.to_string_lossy().into_owned(),
            "--bound".into(),
            pod.bound.to_string_lossy().into_owned(),
        ],
        &[],
        &pod.bound.with_extension("log"),
        None,
    )
}

/// The pod's portcullis-proxy, as its own user, with the Downward API environment.
pub(crate) fn start_proxy(
    opts: &UpOptions,
    pod: &PodState,
    info: &PodInfo,
    policy_dir: &Path,
) -> Result<u32> {
    let ips: Vec<String> = info.ips.iter().map(IpAddr::to_string).collect();
    let mut env = vec![
        ("POD_NAME".to_string(), info.name.clone()),
        ("POD_NAMESPACE".to_string(), info.namespace.clone()),
        ("POD_IPS".to_string(), ips.join(",")),
        ("PORTCULLIS_LOG".to_string(), "info".to_string()),
        (
            "PORTCULLIS_ENFORCE_UDP".to_string(),
            opts.enforce_udp.to_string(),
        ),
    ];
    if let Some(h) = info.host_ip {
        env.push(("HOST_IP".into(), h.to_string()));
    }
    env.extend(
        sidecar_env(opts)
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let mut args = match opts.policy_source {
        PolicySource::Dir => vec![
            "--policy-dir".to_string(),
            policy_dir.to_string_lossy().into_owned(),
        ],
        // The node's address on the pod's side of the bridge, as a Service would route it.
        PolicySource::Controller => vec![
            "--controller".to_string(),
            format!("http://{}:{CONTROLLER_PORT}", gateway_of(info)),
        ],
    };
    args.extend(opts.proxy_args.iter().cloned());
    let user = User {
        uid: PROXY_UID,
        net_admin: opts.enforce_udp,
    };
    spawn_in(
        &pod.netns,
        &opts.binaries.proxy,
        &args,
        &env,
        &pod.proxy_log,
        Some(user),
    )
}

/// What the injector sets on both init and proxy besides `PORTCULLIS_ENFORCE_UDP`:
/// `PORTCULLIS_PROXY_MARK` only when the proxy has CAP_NET_ADMIN (UDP enforced), without which
/// it cannot mark its sockets, and `PORTCULLIS_INBOUND_TCP`: judged in the queue when the proxy
/// reads one, else relayed.
pub(crate) fn sidecar_env(opts: &UpOptions) -> Vec<(&'static str, &'static str)> {
    if opts.enforce_udp {
        vec![
            ("PORTCULLIS_PROXY_MARK", PROXY_MARK),
            ("PORTCULLIS_INBOUND_TCP", "queue"),
        ]
    } else {
        vec![("PORTCULLIS_INBOUND_TCP", "proxy")]
    }
}

/// Whom a process runs as: an unprivileged UID, with CAP_NET_ADMIN (ambient) or no capability.
#[derive(Debug, Clone, Copy)]
pub(crate) struct User {
    pub(crate) uid: u32,
    pub(crate) net_admin: bool,
}

/// Starts a long-running process inside `ns`, detached from our session, output to `log`.
pub(crate) fn spawn_in(
    ns: &str,
    program: &Path,
    args: &[String],
    env: &[(String, String)],
    log: &Path,
    user: Option<User>,
) -> Result<u32> {
    let out = fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    fs::set_permissions(log, fs::Permissions::from_mode(0o644))?;
    let err = out.try_clone()?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]);
    if let Some(User { uid, net_admin }) = user {
        // The proxy runs as its own unprivileged user, as in a pod: no capability, or only
        // CAP_NET_ADMIN (ambient) when it reads the UDP/SCTP queue.
        let caps = if net_admin { "-all,+net_admin" } else { "-all" };
        cmd.args([
            "setpriv",
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
            &format!("--inh-caps={caps}"),
            &format!("--ambient-caps={caps}"),
            &format!("--bounding-set={caps}"),
            "--",
        ]);
    }
    cmd.arg(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start {} in {ns}", program.display()))?;
    Ok(child.id())
}
