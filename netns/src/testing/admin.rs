//! A proxy's admin port and log, as a test reads them.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use super::in_ns;

/// `GET {path}` on the admin port (127.0.0.1:4191, `portcullis_contract::ports::ADMIN`) inside `ns`: the status and the body, or
/// `(0, "")` when nothing answers.
pub fn get(ns: &str, path: &str) -> (u16, String) {
    let path = path.to_string();
    in_ns(ns, move || {
        let admin = SocketAddr::from(([127, 0, 0, 1], portcullis_contract::ports::ADMIN));
        let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n")?;
        let mut raw = String::new();
        s.read_to_string(&mut raw)?;
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        Ok::<_, std::io::Error>((status, body.to_string()))
    })
    .unwrap_or((0, String::new()))
}

/// The value of the first sample line of a Prometheus exposition that contains every part
/// (a metric name, `label="value"` pairs); 0 when none does.
pub fn metric(exposition: &str, parts: &[&str]) -> f64 {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| parts.iter().all(|part| l.contains(part)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The policy generation `/policy` reports (0 when unreadable).
pub fn generation(ns: &str) -> u64 {
    let (_, body) = get(ns, "/policy");
    serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["generation"].as_u64())
        .unwrap_or(0)
}

/// The JSON log lines of `log` whose `event` is `event`.
pub fn events(log: &Path, event: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == event)
        .collect()
}

/// Polls `ok` every 50 ms; panics naming `what` after 15 s.
pub fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What Prometheus' own linter says of a real scrape (`promtool check metrics`: HELP and TYPE
/// per family, naming conventions, valid exposition). `scripts/test.sh` installs promtool.
pub fn promtool_check_metrics(scrape: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian: apt-get install prometheus; scripts/test.sh installs it)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(scrape.as_bytes())
        .expect("write the scrape");
    let out = child.wait_with_output().expect("promtool ran");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{scrape}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
