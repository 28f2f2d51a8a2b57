//! The proxy refuses to start without usable `POD_IPS`: the inbound proxy forwards only to the
//! pod's own addresses, so it cannot run without them. Needs no namespace: it exits before
//! binding anything (the listeners point at port 0 on loopback all the same, in case it did not).

use std::process::Command;
use std::time::{Duration, Instant};

fn start(pod_ips: Option<&str>) -> (Option<i32>, String) {
    start_as(&[], &[], pod_ips, "")
}

/// Runs the proxy (behind `wrapper`, e.g. setpriv, with `extra` flags) until it exits or 10 s
/// have passed (`None`: still running, then killed).
fn start_as(
    wrapper: &[&str],
    extra: &[&str],
    pod_ips: Option<&str>,
    tag: &str,
) -> (Option<i32>, String) {
    let dir = std::env::temp_dir().join(format!("pc-proxy-startup-{}{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let proxy = env!("CARGO_BIN_EXE_portcullis-proxy");
    let mut cmd = match wrapper.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg("--").arg(proxy);
            c
        }
        None => Command::new(proxy),
    };
    cmd.args(extra)
        .args([
            "--pod-name",
            "web",
            "--pod-namespace",
            "shop",
            "--policy-dir",
        ])
        .arg(&dir)
        .args([
            "--inbound-listen=127.0.0.1:0",
            "--outbound-listen=127.0.0.1:0",
            "--admin-listen=127.0.0.1:0",
        ])
        .env_remove("POD_IPS")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    if let Some(ips) = pod_ips {
        cmd.env("POD_IPS", ips);
    }
    let mut child = cmd.spawn().expect("start the proxy");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().expect("output");
    let _ = std::fs::remove_dir_all(&dir);
    (
        status,
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout),
    )
}

#[test]
fn missing_or_empty_pod_ips_stop_the_proxy_with_a_clear_error() {
    let (status, output) = start(None);
    assert_eq!(status, Some(1), "must not start: {output}");
    assert!(
        output.contains("POD_IPS") && output.contains("status.podIPs"),
        "{output}"
    );
    // Set but empty: the command line parser refuses the empty address.
    let (status, output) = start(Some(""));
    assert_eq!(status, Some(2), "must not start: {output}");
    assert!(output.contains("POD_IPS"), "{output}");
}

#[test]
fn unusable_pod_ips_stop_the_proxy() {
    let (status, output) = start(Some("10.0.0.5,127.0.0.1"));
    assert_eq!(status, Some(1), "{output}");
    assert!(output.contains("127.0.0.1"), "{output}");
    // Unparsable: the command line parser says which value.
    let (status, output) = start(Some("10.0.0.5,pod-ip"));
    assert_eq!(status, Some(2), "{output}");
    assert!(output.contains("pod-ip"), "{output}");
}

/// As the injector runs it: UID 2171, all capabilities dropped, or only CAP_NET_ADMIN.
fn as_proxy_user(caps: &str) -> Vec<String> {
    [
        "setpriv",
        "--reuid=2171",
        "--regid=2171",
        "--clear-groups",
        &format!("--inh-caps={caps}"),
        &format!("--ambient-caps={caps}"),
        &format!("--bounding-set={caps}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn a_proxy_mark_without_cap_net_admin_stops_the_proxy_with_a_clear_error() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test changes user with setpriv: run it as root"
    );
    let flags = ["--proxy-mark=0x1000", "--enforce-udp=false"];
    let without = as_proxy_user("-all");
    let without: Vec<&str> = without.iter().map(String::as_str).collect();
    let (status, output) = start_as(&without, &flags, Some("10.0.0.5"), "-nocap");
    assert_eq!(status, Some(1), "must not start: {output}");
    assert!(
        output.contains("--proxy-mark 0x1000") && output.contains("needs CAP_NET_ADMIN"),
        "{output}"
    );
    // With CAP_NET_ADMIN it sets the mark and runs (until killed after 10 s).
    let with = as_proxy_user("-all,+net_admin");
    let with: Vec<&str> = with.iter().map(String::as_str).collect();
    let (status, output) = start_as(&with, &flags, Some("10.0.0.5"), "-cap");
    assert_eq!(status, None, "starts and keeps running: {output}");
    assert!(!output.contains("CAP_NET_ADMIN"), "{output}");
}
