//! The application (sink and echo servers) and the load generators. Both sides are threads of
//! this process placed in the right network namespace with setns(2).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

pub use portcullis_netns::enter;

/// Runs `f` on a fresh thread inside `ns` and returns its result.
pub fn within<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    portcullis_netns::within(ns, f)?
}

pub fn http_get(ns: &str, port: u16, path: &str) -> Result<(u16, String)> {
    let path = path.to_string();
    within(ns, move || {
        let mut s = TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(1),
        )?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        s.set_write_timeout(Some(Duration::from_secs(3)))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n")?;
        let mut raw = String::new();
        s.read_to_string(&mut raw)?;
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("bad HTTP")?;
        Ok((status, body.to_string()))
    })
}

/// Starts the sink (reads everything, then answers with the byte count) and the echo server on
/// `ports` = (sink, echo) pairs, in namespace `ns`. They run until the process exits.
pub fn start_servers(ns: &str, ports: &[(u16, u16)]) -> Result<()> {
    for &(sink, echo) in ports {
        for (port, is_sink) in [(sink, true), (echo, false)] {
            let listener = within(ns, move || {
                let l = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
                l.set_reuse_address(true)?;
                l.bind(&SocketAddr::from(([0, 0, 0, 0], port)).into())?;
                l.listen(4096)?;
                Ok(TcpListener::from(l))
            })?;
            std::thread::spawn(move || {
                for stream in listener.incoming().flatten() {
                    std::thread::spawn(move || {
                        let _ = if is_sink {
                            sink_conn(stream)
                        } else {
                            echo_conn(stream)
                        };
                    });
                }
            });
        }
    }
    Ok(())
}

fn sink_conn(mut s: TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total: u64 = 0;
    loop {
        match s.read(&mut buf)? {
            0 => break,
            n => total += n as u64,
        }
    }
    s.write_all(&total.to_be_bytes())
}

fn echo_conn(mut s: TcpStream) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf)? {
            0 => return Ok(()),
            n => s.write_all(&buf[..n])?,
        }
    }
}

/// Bulk throughput with `streams` parallel connections for `duration`; bits per second as
/// counted by the receiving application.
pub fn throughput(ns: &str, addr: SocketAddr, streams: usize, duration: Duration) -> Result<f64> {
    let start = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..streams {
        let ns = ns.to_string();
        handles.push(std::thread::spawn(move || -> Result<u64> {
            enter(&ns)?;
            let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
            // A stalled path fails the run instead of hanging it.
            s.set_write_timeout(Some(IO_TIMEOUT))?;
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            let buf = vec![0x5au8; 128 * 1024];
            let deadline = Instant::now() + duration;
            while Instant::now() < deadline {
                s.write_all(&buf)?;
            }
            s.shutdown(Shutdown::Write)?;
            let mut count = [0u8; 8];
            s.read_exact(&mut count)
                .context("the sink did not report its count")?;
            Ok(u64::from_be_bytes(count))
        }));
    }
    let mut bytes = 0;
    for h in handles {
        bytes += h.join().map_err(|_| anyhow::anyhow!("stream panicked"))??;
    }
    Ok(bytes as f64 * 8.0 / start.elapsed().as_secs_f64())
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
}

impl Latency {
    /// Percentiles of samples in nanoseconds, in µs (zero for no sample).
    pub fn of(mut samples: Vec<u64>) -> Latency {
        samples.sort_unstable();
        let pct = |p: f64| {
            samples
                .get(((samples.len() as f64 - 1.0) * p) as usize)
                .map_or(0.0, |&v| v as f64 / 1000.0)
        };
        Latency {
            p50_us: pct(0.50),
            p99_us: pct(0.99),
            p999_us: pct(0.999),
        }
    }
}

/// 1-byte request/response on one persistent connection, `rounds` times.
pub fn latency(ns: &str, addr: SocketAddr, rounds: usize) -> Result<Latency> {
    within(ns, move || {
        let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        let mut samples = Vec::with_capacity(rounds);
        let mut b = [0u8; 1];
        for i in 0..rounds + rounds / 10 {
            let t = Instant::now();
            s.write_all(b"x")?;
            s.read_exact(&mut b)?;
            // The first tenth warms up.
            if i >= rounds / 10 {
                samples.push(t.elapsed().as_nanos() as u64);
            }
        }
        Ok(Latency::of(samples))
    })
}

/// Failed short connections, counted by what went wrong (`connect: Connection refused ...`).
#[derive(Default)]
pub struct Failures(Mutex<BTreeMap<String, u64>>);

impl Failures {
    pub fn record(&self, reason: StepFailed) {
        if let Ok(mut m) = self.0.lock() {
            *m.entry(reason.to_string()).or_default() += 1;
        }
    }

    pub fn total(&self) -> u64 {
        self.0.lock().map(|m| m.values().sum()).unwrap_or(0)
    }

    /// Reasons, most frequent first.
    pub fn reasons(&self) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = self
            .0
            .lock()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default();
        v.sort_by_key(|e| std::cmp::Reverse(e.1));
        v
    }
}

/// What [`connection_rate`] measured: new connections per second, and how long each
/// `connect()` waited for the handshake (for a queued path, on the proxy's verdict on the SYN).
#[derive(Debug, Clone)]
pub struct Rate {
    pub per_s: f64,
    pub connect: Latency,
}

/// New connections per second, each with one 1-byte exchange; failures are counted by reason
/// in `failures`.
pub fn connection_rate(
    ns: &str,
    addr: SocketAddr,
    workers: usize,
    duration: Duration,
    failures: &Arc<Failures>,
) -> Result<Rate> {
    let ok = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..workers {
        let (ns, ok, failures) = (ns.to_string(), ok.clone(), failures.clone());
        handles.push(std::thread::spawn(move || -> Result<Vec<u64>> {
            enter(&ns)?;
            let deadline = Instant::now() + duration;
            let mut waits = Vec::new();
            while Instant::now() < deadline {
                match one_exchange(addr) {
                    Ok(wait) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        waits.push(wait.as_nanos() as u64);
                    }
                    Err(why) => failures.record(why),
                }
            }
            Ok(waits)
        }));
    }
    let mut waits = Vec::new();
    for h in handles {
        waits.extend(h.join().map_err(|_| anyhow::anyhow!("worker panicked"))??);
    }
    Ok(Rate {
        per_s: ok.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64(),
        connect: Latency::of(waits),
    })
}

/// Which step of one exchange failed, and how: what [`Failures`] counts and reports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{step}: {why}")]
pub struct StepFailed {
    pub step: &'static str,
    pub why: String,
}

impl StepFailed {
    pub fn new(step: &'static str, why: impl std::fmt::Display) -> StepFailed {
        StepFailed {
            step,
            why: why.to_string(),
        }
    }
}

/// One short connection with a 1-byte exchange: how long `connect()` took; on failure, which
/// step failed and how.
fn one_exchange(addr: SocketAddr) -> std::result::Result<Duration, StepFailed> {
    let timeout = Duration::from_secs(2);
    let step = |what: &'static str| {
        move |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                StepFailed::new(what, format_args!("no progress within {timeout:?}"))
            }
            std::io::ErrorKind::UnexpectedEof => StepFailed::new(what, "closed without an answer"),
            _ => StepFailed::new(what, e),
        }
    };
    let started = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(step("connect"))?;
    let wait = started.elapsed();
    s.set_read_timeout(Some(timeout)).map_err(step("setup"))?;
    s.set_write_timeout(Some(timeout)).map_err(step("setup"))?;
    s.write_all(b"x").map_err(step("write"))?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b).map_err(step("read"))?;
    Ok(wait)
}

/// Longest any single connect, read or write of the harness may block.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Idle connections held open through a path, and why there are fewer than asked for.
pub struct Idle {
    pub conns: Vec<TcpStream>,
    /// Set when the path did not take all of them: which connection failed, and how.
    pub shortfall: Option<String>,
}

/// Opens up to `n` connections through `addr` and keeps them open (each has exchanged one byte,
/// so the proxy really holds both legs). Stops at the first connection that fails or times out
/// (a path that resets or stops answering is full) or after `budget` overall, and says so
/// instead of waiting; dropping the result closes them.
pub fn open_idle(ns: &str, addr: SocketAddr, n: usize, budget: Duration) -> Result<Idle> {
    within(ns, move || {
        let started = Instant::now();
        let mut conns = Vec::with_capacity(n);
        let mut shortfall = None;
        for i in 0..n {
            if started.elapsed() > budget {
                shortfall = Some(format!(
                    "stopped after {:.0?}: opening {n} connections took too long",
                    budget
                ));
                break;
            }
            match idle_connection(addr) {
                Ok(s) => conns.push(s),
                Err(e) => {
                    shortfall = Some(format!("connection {} of {n}: {e:#}", i + 1));
                    break;
                }
            }
        }
        Ok(Idle { conns, shortfall })
    })
}

fn idle_connection(addr: SocketAddr) -> Result<TcpStream> {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).context("connect")?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.write_all(b"x").context("write")?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b).map_err(|e| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            anyhow::anyhow!("no echo within {IO_TIMEOUT:?} (the path stopped answering)")
        }
        std::io::ErrorKind::UnexpectedEof => {
            anyhow::anyhow!("closed before echoing (refused by the proxy?)")
        }
        _ => anyhow::Error::new(e).context("read the echo"),
    })?;
    Ok(s)
}

/// Short connections flowing while `swap` is called `swaps` times; returns the connections
/// that worked, failures counted by reason in `failures`.
pub fn soak(
    ns: &str,
    addr: SocketAddr,
    swaps: usize,
    failures: &Arc<Failures>,
    mut swap: impl FnMut(usize) -> Result<()>,
) -> Result<u64> {
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for _ in 0..4 {
        let (ns, stop, ok, failures) = (ns.to_string(), stop.clone(), ok.clone(), failures.clone());
        handles.push(std::thread::spawn(move || -> Result<()> {
            enter(&ns)?;
            while !stop.load(Ordering::Relaxed) {
                match one_exchange(addr) {
                    Ok(_) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(why) => failures.record(why),
                }
            }
            Ok(())
        }));
    }
    let result = (0..swaps).try_for_each(&mut swap);
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().map_err(|_| anyhow::anyhow!("worker panicked"))??;
    }
    result?;
    Ok(ok.load(Ordering::Relaxed))
}
