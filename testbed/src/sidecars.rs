//! The processes of a pod: its server, portcullis-init and portcullis-proxy (as the
//! injector configures them), each started inside the pod's namespace.

use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::error::{Context, Result};
use portcullis_policy::PodInfo;

use portcullis_contract::ports::CONTROLLER_STREAM;
use portcullis_contract::{env, PROXY_UID};
use portcullis_injector::decision::SidecarEnv;

use crate::{netns, PodState, PolicySource, UpOptions};

/// The pod's application: `portcullis testbed serve` on the ports of `wanted`.
pub(crate) fn start_server(ns: &str, identity: &str, wanted: &Path, bound: &Path) -> Result<u32> {
    let self_exe = std::env::current_exe().context("cannot find the portcullis executable")?;
    spawn_in(
        ns,
        &self_exe,
        &[
            "testbed".into(),
            "serve".into(),
            "--identity".into(),
            identity.to_string(),
            "--wanted".into(),
            wanted.to_string_lossy().into_owned(),
            "--bound".into(),
            bound.to_string_lossy().into_owned(),
        ],
        &[],
        &bound.with_extension("log"),
        None,
    )
}

/// A pod's processes: when the injector gives it Portcullis, `portcullis-init` to completion
/// first, then its server, then the proxy; else only its server. `controller`: the address
/// the proxy reaches the controller at (the first node's).
pub(crate) fn start_pod(
    opts: &UpOptions,
    pod: &mut PodState,
    info: &PodInfo,
    sidecars: Option<&SidecarEnv>,
    wanted: &Path,
    policy_dir: &Path,
    controller: &str,
) -> Result<()> {
    if let Some(env) = sidecars {
        run_init(opts, pod, env)?;
    }
    pod.pids
        .push(start_server(&pod.netns, &pod.key, wanted, &pod.bound)?);
    if let Some(env) = sidecars {
        pod.pids
            .push(start_proxy(opts, pod, info, env, policy_dir, controller)?);
    }
    Ok(())
}

/// `portcullis-init` in the pod's namespace, with the environment the injector gives it
/// (through env(1): it reads its settings from the environment).
fn run_init(opts: &UpOptions, pod: &PodState, sidecars: &SidecarEnv) -> Result<()> {
    let mut args: Vec<String> = sidecars
        .init
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    args.push(opts.binaries.init.to_string_lossy().into_owned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    netns::exec_in(&pod.netns, "env", &args)
        .with_context(|| format!("portcullis-init failed in {}", pod.key))?;
    Ok(())
}

/// The injector's proxy variables that only make sense in a cluster: the testbed gives the
/// proxy its table source as an argument (`--controller` over plain HTTP, or `--policy-dir`)
/// and no service-account token.
const CLUSTER_ONLY: [&str; 3] = [env::CONTROLLER, env::CONTROLLER_CA_PEM, env::TOKEN_FILE];

/// The pod's portcullis-proxy, as its own user, with the injector's environment and the
/// Downward API's.
fn start_proxy(
    opts: &UpOptions,
    pod: &PodState,
    info: &PodInfo,
    sidecars: &SidecarEnv,
    policy_dir: &Path,
    controller: &str,
) -> Result<u32> {
    let ips: Vec<String> = info.ips.iter().map(IpAddr::to_string).collect();
    let mut vars = vec![
        (env::POD_NAME.to_string(), info.name.clone()),
        (env::POD_NAMESPACE.to_string(), info.namespace.clone()),
        (env::POD_IPS.to_string(), ips.join(",")),
    ];
    if let Some(h) = info.host_ip {
        vars.push((env::HOST_IP.into(), h.to_string()));
    }
    vars.extend(
        sidecars
            .proxy
            .iter()
            .filter(|(k, _)| !CLUSTER_ONLY.contains(&k.as_str()))
            .cloned(),
    );
    let mut args = match opts.policy_source {
        PolicySource::Dir => vec![
            "--policy-dir".to_string(),
            policy_dir.to_string_lossy().into_owned(),
        ],
        PolicySource::Controller => vec![
            "--controller".to_string(),
            format!("http://{controller}:{CONTROLLER_STREAM}"),
        ],
    };
    args.extend(opts.proxy_args.iter().cloned());
    let user = User {
        uid: PROXY_UID,
        net_admin: sidecars.enforce_udp,
    };
    spawn_in(
        &pod.netns,
        &opts.binaries.proxy,
        &args,
        &vars,
        &pod.proxy_log,
        Some(user),
    )
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
