//! What the proxy's netns tests share (`mod support;` in each): the real proxy, as UID 2171, in
//! a pod namespace, with its policy directory and its log, and what a test reads from it. The
//! namespaces themselves come from `portcullis_netns::testing`.

#![allow(dead_code)] // each test file uses a part

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command};

use portcullis_contract::PROXY_UID;
use portcullis_netns::testing::admin;

/// The proxy under test and its files; stopped, and its files removed, on drop.
pub struct ProxyUnderTest {
    /// The pod namespace it runs in.
    pub pod_ns: String,
    /// Holds `policy/` (the `--policy-dir`) and the log.
    pub dir: PathBuf,
    pub log: PathBuf,
    pub proxy: Option<Child>,
}

impl Drop for ProxyUnderTest {
    fn drop(&mut self) {
        if let Some(mut p) = self.proxy.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "proxy log:\n{}",
                fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl ProxyUnderTest {
    /// `{tmp}/{tag}-{id}/policy` holding `base` then `manifests`, in that order; no proxy yet.
    pub fn prepare(pod_ns: &str, tag: &str, id: &str, base: &str, manifests: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!("{tag}-{id}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("policy")).expect("mkdir");
        let under = ProxyUnderTest {
            pod_ns: pod_ns.to_string(),
            log: dir.join("proxy.log"),
            dir,
            proxy: None,
        };
        under.write_policy("000-base.yaml", base);
        for (i, m) in manifests.iter().enumerate() {
            under.write_policy(&format!("{:03}-policy.yaml", i + 1), m);
        }
        under
    }

    /// `ip netns exec POD`, to which the caller adds what runs the proxy.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.pod_ns]);
        cmd
    }

    /// Appends `setpriv` as the proxy's UID and group with `caps` (inheritable, ambient and
    /// bounding: `-all`, or `-all,+net_admin` as the injector gives it), then `--`.
    pub fn as_proxy_user(cmd: &mut Command, caps: &str) {
        cmd.arg("setpriv");
        ProxyUnderTest::as_proxy_uid(cmd);
        cmd.arg(format!("--inh-caps={caps}"))
            .arg(format!("--ambient-caps={caps}"))
            .arg(format!("--bounding-set={caps}"))
            .arg("--");
    }

    /// `--reuid`/`--regid` the proxy's UID, `--clear-groups` (setpriv's part shared by every
    /// way of giving capabilities).
    pub fn as_proxy_uid(cmd: &mut Command) {
        cmd.arg(format!("--reuid={PROXY_UID}"))
            .arg(format!("--regid={PROXY_UID}"))
            .arg("--clear-groups");
    }

    /// Starts `cmd` (which ends with the proxy and its arguments) as pod `x/server` with
    /// `pod_ips` and `host_ip`, its output to the log.
    pub fn spawn(&mut self, mut cmd: Command, pod_ips: &str, host_ip: &str) {
        let log = fs::File::create(&self.log).expect("log");
        cmd.env("POD_NAME", "server")
            .env("POD_NAMESPACE", "x")
            .env("POD_IPS", pod_ips)
            .env("HOST_IP", host_ip)
            .env("PORTCULLIS_LOG", "info")
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        self.proxy = Some(cmd.spawn().expect("start portcullis-proxy"));
    }

    pub fn write_policy(&self, name: &str, text: &str) {
        fs::write(self.dir.join("policy").join(name), text).expect("write manifest");
        // The proxy runs as UID 2171 and must read it.
        Command::new("chmod")
            .args(["-R", "a+rX"])
            .arg(&self.dir)
            .status()
            .expect("chmod");
    }

    pub fn remove_policy(&self, name: &str) {
        fs::remove_file(self.dir.join("policy").join(name)).expect("remove manifest");
    }

    pub fn admin(&self, path: &str) -> (u16, String) {
        admin::get(&self.pod_ns, path)
    }

    pub fn wait_for(&self, what: &str, ok: impl FnMut() -> bool) {
        admin::wait_for(what, ok)
    }

    pub fn wait_ready(&self) {
        self.wait_for("/ready to answer 200", || self.admin("/ready").0 == 200);
    }

    pub fn generation(&self) -> u64 {
        admin::generation(&self.pod_ns)
    }

    /// The proxy's JSON log lines whose `event` is `event`.
    pub fn log_lines(&self, event: &str) -> Vec<serde_json::Value> {
        admin::events(&self.log, event)
    }

    pub fn metric(&self, parts: &[&str]) -> f64 {
        admin::metric(&self.admin("/metrics").1, parts)
    }
}

/// `ip:port` (`[ip]:port` for IPv6) of an audit line's `src` or `dst` side, from its separate
/// `{side}_ip` and `{side}_port` fields (a line without them gives an empty string).
pub fn socket(line: &serde_json::Value, side: &str) -> String {
    let ip = line[format!("{side}_ip")]
        .as_str()
        .and_then(|ip| ip.parse::<std::net::IpAddr>().ok());
    let port = line[format!("{side}_port")]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok());
    match (ip, port) {
        (Some(ip), Some(port)) => std::net::SocketAddr::new(ip, port).to_string(),
        _ => String::new(),
    }
}

/// The audit schema's fixed parts, which every audit line carries.
pub fn assert_audit_schema(line: &serde_json::Value) {
    assert_eq!(
        line["schema"],
        portcullis_contract::log::LOG_SCHEMA,
        "{line}"
    );
    assert_eq!(
        line["target"],
        portcullis_contract::log::AUDIT_TARGET,
        "{line}"
    );
    assert_eq!(line["level"], "WARN", "{line}");
    assert!(line["isolated_by"].is_array(), "{line}");
    for side in ["src", "dst"] {
        assert!(!socket(line, side).is_empty(), "{side}: {line}");
        assert!(
            line.get(side).is_none(),
            "no `{side}` string any more: {line}"
        );
    }
}

/// `Deref`/`DerefMut` from a test's setup to its `under: ProxyUnderTest` field, so that the
/// test reads `t.admin(..)`, `t.log`, `t.proxy` directly.
macro_rules! deref_to_proxy_under_test {
    ($setup:ty) => {
        impl std::ops::Deref for $setup {
            type Target = support::ProxyUnderTest;

            fn deref(&self) -> &support::ProxyUnderTest {
                &self.under
            }
        }

        impl std::ops::DerefMut for $setup {
            fn deref_mut(&mut self) -> &mut support::ProxyUnderTest {
                &mut self.under
            }
        }
    };
}
