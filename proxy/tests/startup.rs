//! The proxy refuses to start without usable `POD_IPS`: the inbound proxy forwards only to the
//! pod's own addresses, so it cannot run without them. Needs no namespace: it exits before
//! binding anything (the listeners point at port 0 on loopback all the same, in case it did not).

use std::process::Command;
use std::time::{Duration, Instant};

fn start(pod_ips: Option<&str>) -> (Option<i32>, String) {
    let dir = std::env::temp_dir().join(format!("pc-proxy-startup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis-proxy"));
    cmd.args([
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
