//! What a running testbed is asked: its proxies' admin ports (`/policy`, `/metrics`), audit
//! lines, name resolution and connections from inside a pod.

use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::error::{Context, Error, Result};

use portcullis_contract::ports::ADMIN;

use crate::{netns, serve, PodState, State};

/// `GET path` on the proxy's admin port, from inside the pod. Returns (status, body).
pub fn admin_get(ns: &str, path: &str) -> Result<(u16, String)> {
    http_get_in(ns, ADMIN, path)
}

/// `GET path` on `127.0.0.1:port` inside `ns`. Returns (status, body).
pub fn http_get_in(ns: &str, port: u16, path: &str) -> Result<(u16, String)> {
    let path = path.to_string();
    netns::within(ns, move || -> Result<(u16, String)> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        write!(
            s,
            "GET {path} HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Error::Answer("malformed HTTP response".into()))?;
        Ok((status, body.to_string()))
    })?
}

/// The proxy's audit lines (`"event":"connection_*"`) of one pod.
pub fn audit_lines(state: &State, pod: &str, all: bool) -> Result<Vec<String>> {
    let pod = injected_pod(state, pod)?;
    let log = fs::read_to_string(&pod.proxy_log)
        .with_context(|| format!("cannot read {}", pod.proxy_log.display()))?;
    Ok(log
        .lines()
        .filter(|l| all || l.contains("\"event\":\"connection_"))
        .map(str::to_string)
        .collect())
}

pub fn metrics(state: &State, pod: &str) -> Result<String> {
    let pod = injected_pod(state, pod)?;
    let (status, body) = admin_get(&pod.netns, "/metrics")?;
    if status != 200 {
        return Err(Error::Answer(format!(
            "the proxy of {} answered /metrics with HTTP {status}",
            pod.key
        )));
    }
    Ok(body)
}

/// `getent hosts NAME` inside a pod's network namespace (through its resolv.conf, i.e. the
/// cluster DNS): the addresses, empty when the name does not resolve. One try of at most 2 s
/// per query (`RES_OPTIONS`), so that a denied lookup fails quickly.
pub fn resolve(state: &State, pod: &str, name: &str) -> Result<Vec<IpAddr>> {
    let pod = state.pod(pod)?;
    let out = Command::new("ip")
        .args(["netns", "exec", &pod.netns, "getent", "hosts", name])
        .env("RES_OPTIONS", "timeout:2 attempts:1")
        .stdin(Stdio::null())
        .output()
        .context("cannot run getent")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect())
}

/// `n` TCP connections (or UDP exchanges) from inside `pod` to `addr`, one after the other: the
/// identity each answer carried, or why nothing answered.
pub fn connect_from(
    state: &State,
    pod: &str,
    addr: SocketAddr,
    protocol: portcullis_policy::Protocol,
    n: usize,
) -> Result<Vec<Result<String, serve::NoAnswer>>> {
    let pod = state.pod(pod)?;
    Ok(netns::within(&pod.netns, move || {
        (0..n)
            .map(|_| serve::probe(addr, protocol, Duration::from_secs(2)))
            .collect()
    })?)
}

/// A pod's proxy's view of its table (`/policy` on the admin port: generation, staleness,
/// the table, and what the proxy enforces).
pub fn policy(state: &State, pod: &str) -> Result<String> {
    let pod = injected_pod(state, pod)?;
    let (status, body) = admin_get(&pod.netns, "/policy")?;
    if status != 200 {
        return Err(Error::Answer(format!(
            "the proxy of {} answered /policy with HTTP {status}",
            pod.key
        )));
    }
    Ok(body)
}

pub(crate) fn injected_pod<'a>(state: &'a State, key: &str) -> Result<&'a PodState> {
    let pod = state.pod(key)?;
    if let Some(why) = &pod.not_injected {
        return Err(Error::Usage(format!(
            "{key} has no portcullis-proxy ({why})"
        )));
    }
    Ok(pod)
}
