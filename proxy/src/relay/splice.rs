//! Moves bytes between the two sockets of a proxied connection.
//!
//! Where both ends are TCP sockets (always, here) each direction goes through a pipe with
//! `splice(2)`, so payload never enters user space; in [`RelayMode::Auto`] (the default) only
//! bursts that fill a first 16 KiB read do, and small exchanges are a plain read and write. A direction ends at end-of-stream, which is
//! passed on as a half-close (`shutdown(SHUT_WR)`), so protocols that half-close keep working.
//!
//! Pipes are not owned by connections. Each runtime thread keeps a small pool of empty pipes
//! ([`POOL_PER_THREAD`] at most, extras are closed): a direction takes one when its socket turns
//! readable, splices through it for as long as data keeps coming, and gives it back as soon as
//! the socket has nothing more to read and the pipe has been drained into the destination. An
//! idle connection therefore holds its two sockets and nothing else (no pipe descriptors, no
//! pipe buffers), and the steady state costs no extra system call: taking and returning a pipe
//! is a push and a pop on a thread-local vector. A pipe that may still hold data (the relay
//! failed or was dropped mid-transfer) is closed, never returned.
//!
//! When no pipe can be had (descriptor limit) a direction copies that burst through a buffer in
//! user space instead, and when the kernel refuses to splice a socket (`EINVAL`) the direction
//! copies from then on; the buffer, too, goes back to a per-thread pool whenever the source runs
//! dry.
//!
//! System calls per message are kept to what the bytes need: a copy whose `recv` returns less
//! than it asked for ends the burst without a second read to hear "would block" (`drained`), and of the
//! two half-closes at the end only the first is sent (the close right after sends the second).

use std::cell::RefCell;
use std::io;
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use metrics::Counter;
use nix::errno::Errno;
use nix::fcntl::{splice, OFlag, SpliceFFlags};
use nix::sys::socket::MsgFlags;
use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Largest amount moved by one `splice` call (or one copy): the default pipe capacity.
const CHUNK: usize = 64 * 1024;

/// Empty pipes kept per runtime thread for the next readable socket; more are closed.
pub const POOL_PER_THREAD: usize = 32;

/// Pipes open in this process: pooled plus in use.
static PIPES_OPEN: AtomicUsize = AtomicUsize::new(0);
/// Pipes taken by a direction that is moving data right now.
static PIPES_IN_USE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static POOL: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

/// Pipes currently lent to a direction that is moving data (0 when every connection is idle).
pub fn pipes_in_use() -> usize {
    PIPES_IN_USE.load(Ordering::Relaxed)
}

/// Pipes open in the process: in use plus pooled (at most [`POOL_PER_THREAD`] per thread).
pub fn pipes_open() -> usize {
    PIPES_OPEN.load(Ordering::Relaxed)
}

/// Both ends of one pipe; closed on drop.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        PIPES_OPEN.fetch_add(1, Ordering::Relaxed);
        Ok(Pipe { read, write })
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        PIPES_OPEN.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A pipe lent to one direction, with the number of bytes it holds. Dropping it returns the
/// pipe to this thread's pool when it is empty and closes it otherwise (its bytes are lost with
/// the connection that owned them; they must never reach another one).
struct Lease {
    pipe: Option<Pipe>,
    pending: usize,
}

impl Lease {
    fn take() -> io::Result<Lease> {
        let pooled = POOL.try_with(|pool| pool.borrow_mut().pop()).ok().flatten();
        let pipe = match pooled {
            Some(p) => p,
            None => Pipe::new()?,
        };
        PIPES_IN_USE.fetch_add(1, Ordering::Relaxed);
        Ok(Lease {
            pipe: Some(pipe),
            pending: 0,
        })
    }

    fn pipe(&self) -> &Pipe {
        self.pipe
            .as_ref()
            .expect("a lease holds its pipe until dropped")
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(pipe) = self.pipe.take() else {
            return;
        };
        PIPES_IN_USE.fetch_sub(1, Ordering::Relaxed);
        if self.pending != 0 {
            return; // `pipe` is closed here, with whatever it still holds.
        }
        // Full pool, or the thread is going away: close it instead (outside the borrow).
        let _closed = POOL
            .try_with(|pool| {
                let mut pool = pool.borrow_mut();
                if pool.len() < POOL_PER_THREAD {
                    pool.push(pipe);
                    None
                } else {
                    Some(pipe)
                }
            })
            .unwrap_or(None);
    }
}

/// A copy buffer lent to one direction for one burst, from a per-thread pool like the pipes':
/// a small request/response exchange then costs no allocation and no zeroing of 16 KiB per
/// message, and an idle connection still holds no buffer.
struct Buffer {
    bytes: Box<[u8]>,
}

/// Copy buffers kept per runtime thread (each at most [`CHUNK`] bytes).
const BUFFERS_PER_THREAD: usize = 8;

thread_local! {
    static BUFFERS: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

impl Buffer {
    fn take(size: usize) -> Buffer {
        let pooled = BUFFERS
            .try_with(|pool| {
                let mut pool = pool.borrow_mut();
                let at = pool.iter().position(|b| b.len() == size)?;
                Some(pool.swap_remove(at))
            })
            .ok()
            .flatten();
        Buffer {
            bytes: pooled.unwrap_or_else(|| vec![0u8; size].into_boxed_slice()),
        }
    }

    fn bytes(&mut self) -> &mut [u8] {
        &mut self.bytes
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        let bytes = std::mem::take(&mut self.bytes);
        // Full pool, or the thread is going away: free it (outside the borrow).
        let _freed = BUFFERS
            .try_with(|pool| {
                let mut pool = pool.borrow_mut();
                if pool.len() < BUFFERS_PER_THREAD {
                    pool.push(bytes);
                    None
                } else {
                    Some(bytes)
                }
            })
            .unwrap_or(None);
    }
}

/// Bytes moved in each direction.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Transferred {
    /// From the side that opened the connection to the side that accepted it.
    pub client_to_server: u64,
    pub server_to_client: u64,
}

/// Byte counters to advance as data moves (so long connections show up before they end).
#[derive(Clone)]
pub struct ByteCounters {
    pub client_to_server: Counter,
    pub server_to_client: Counter,
}

/// How bytes cross the proxy (`--relay`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RelayMode {
    /// Every burst through a pipe with `splice(2)`: payload never enters user space.
    Splice,
    /// Every burst through a user-space buffer (`read`/`write`).
    Copy,
    /// Each burst starts with a copy through a small buffer; one that fills it (bulk data) goes on
    /// through a pipe. Small request/response exchanges then cost two system calls, not the
    /// pipe's four, and bulk transfers still avoid user space.
    Auto,
}

/// A burst whose first read fills this much goes on through a pipe, in `auto` mode.
const AUTO_PROBE: usize = 16 * 1024;

/// Relays until both directions reach end-of-stream, or until either side fails.
pub async fn relay(
    client: &mut TcpStream,
    server: &mut TcpStream,
    counters: &ByteCounters,
    mode: RelayMode,
) -> io::Result<Transferred> {
    relay_with(client, server, counters, mode).await
}

async fn relay_with(
    client: &TcpStream,
    server: &TcpStream,
    counters: &ByteCounters,
    mode: RelayMode,
) -> io::Result<Transferred> {
    let ended = AtomicBool::new(false);
    let (up, down) = tokio::try_join!(
        one_way(client, server, &counters.client_to_server, mode, &ended),
        one_way(server, client, &counters.server_to_client, mode, &ended),
    )?;
    Ok(Transferred {
        client_to_server: up,
        server_to_client: down,
    })
}

/// What one step of a direction did.
enum Step {
    /// This many bytes reached the destination; `drained`: the read emptied the source (a short
    /// read), so the burst is over.
    Moved { n: usize, drained: bool },
    /// The source has nothing to read right now.
    Idle,
    /// The source reached end-of-stream.
    Eof,
    /// The kernel will not splice this socket; nothing was moved.
    NoSplice,
}

/// One direction, `src` to `dst`, until end-of-stream (passed on as a half-close). `ended` is
/// shared by the two directions of a connection: the one that ends last skips its half-close,
/// since both sockets are closed right after and the close sends the same FIN.
async fn one_way(
    src: &TcpStream,
    dst: &TcpStream,
    counter: &Counter,
    mode: RelayMode,
    ended: &AtomicBool,
) -> io::Result<u64> {
    let mut total = 0u64;
    let mut can_splice = mode != RelayMode::Copy;
    // Held only while data flows: both are released as soon as `src` runs dry.
    let mut lease: Option<Lease> = None;
    let mut buffer: Option<Buffer> = None;
    loop {
        src.readable().await?;
        // Whether this step should splice: always in `splice` mode; in `auto` mode once the burst
        // has shown itself to be bulk (a pipe is already lent to it).
        let want_pipe = can_splice && (mode == RelayMode::Splice || lease.is_some());
        if want_pipe && lease.is_none() && buffer.is_none() {
            match Lease::take() {
                Ok(l) => lease = Some(l),
                Err(e) => {
                    // Out of descriptors, most likely: copy this burst instead.
                    tracing::debug!(error = %e, "no pipe for splice; copying through user space");
                }
            }
        }
        let step = match lease.as_mut() {
            Some(l) if can_splice => splice_step(src, dst, l).await?,
            _ => {
                let size = if mode == RelayMode::Auto && can_splice {
                    AUTO_PROBE
                } else {
                    CHUNK
                };
                let buf = buffer.get_or_insert_with(|| Buffer::take(size));
                copy_step(src, dst, buf.bytes()).await?
            }
        };
        match step {
            Step::Moved { n, drained: true } => {
                total += n as u64;
                counter.increment(n as u64);
                lease = None;
                buffer = None;
            }
            Step::Moved { n, drained: false } => {
                total += n as u64;
                counter.increment(n as u64);
                if mode == RelayMode::Auto && can_splice && lease.is_none() && n == AUTO_PROBE {
                    // Bulk: the rest of this burst goes through a pipe.
                    buffer = None;
                    if let Ok(l) = Lease::take() {
                        lease = Some(l);
                    }
                }
            }
            Step::Idle => {
                lease = None;
                buffer = None;
            }
            Step::Eof => {
                if !ended.swap(true, Ordering::Relaxed) {
                    // Pass the half-close on. The peer may be gone already.
                    let _ = SockRef::from(dst).shutdown(Shutdown::Write);
                }
                return Ok(total);
            }
            Step::NoSplice => {
                can_splice = false;
                lease = None;
            }
        }
    }
}

/// Splices what `src` has (up to a pipe's worth) into the pipe, then all of it into `dst`.
async fn splice_step(src: &TcpStream, dst: &TcpStream, lease: &mut Lease) -> io::Result<Step> {
    debug_assert_eq!(lease.pending, 0, "a pipe is drained before it is filled");
    let moved = src.try_io(Interest::READABLE, || {
        splice(
            src.as_fd(),
            None,
            lease.pipe().write.as_fd(),
            None,
            CHUNK,
            SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK,
        )
        .map_err(io::Error::from)
    });
    // A short splice does not mean the socket is empty: the pipe holds a limited number of
    // buffers (one per socket buffer fragment), so it can fill before `CHUNK` bytes. The next
    // step reads on until "would block".
    let n = match moved {
        Ok(0) => return Ok(Step::Eof),
        Ok(n) => n,
        // The pipe is empty, so "would block" can only mean the socket is.
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Step::Idle),
        Err(e) if e.raw_os_error() == Some(Errno::EINVAL as i32) => return Ok(Step::NoSplice),
        Err(e) => return Err(e),
    };
    lease.pending = n;
    while lease.pending > 0 {
        dst.writable().await?;
        let written = dst.try_io(Interest::WRITABLE, || {
            splice(
                lease.pipe().read.as_fd(),
                None,
                dst.as_fd(),
                None,
                lease.pending,
                SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK,
            )
            .map_err(io::Error::from)
        });
        match written {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(m) => lease.pending = lease.pending.saturating_sub(m),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(Step::Moved { n, drained: false })
}

/// Inside a `recv`'s `try_io`: a `recv` that returned less than it asked for emptied the
/// socket's receive queue (TCP copies all it has, up to the size asked; an end-of-stream behind
/// the data stays visible, as tokio never clears a read-closed readiness), so its read readiness
/// is forgotten at once, and the next step waits for the
/// kernel's next event instead of paying a read that can only say "would block" (the
/// edge-triggered rule nginx and HAProxy follow). Answering `WouldBlock` is how tokio is told to
/// clear the readiness it observed *before* the read, so an event that arrives after the read
/// is never lost; the byte count travels in `short`.
fn drained_if_short(n: usize, asked: usize, short: &mut Option<usize>) -> io::Result<usize> {
    if n > 0 && n < asked {
        *short = Some(n);
        return Err(io::ErrorKind::WouldBlock.into());
    }
    Ok(n)
}

/// Reads what `src` has (up to `buf.len()`) and writes all of it to `dst`.
async fn copy_step(src: &TcpStream, dst: &TcpStream, buf: &mut [u8]) -> io::Result<Step> {
    let asked = buf.len();
    let mut short = None;
    let read = src.try_io(Interest::READABLE, || {
        let n = nix::sys::socket::recv(src.as_raw_fd(), buf, MsgFlags::empty())
            .map_err(io::Error::from)?;
        drained_if_short(n, asked, &mut short)
    });
    let (n, drained) = match (read, short) {
        (Err(e), Some(n)) if e.kind() == io::ErrorKind::WouldBlock => (n, true),
        (Ok(0), _) => return Ok(Step::Eof),
        (Ok(n), _) => (n, false),
        (Err(e), _) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Step::Idle),
        (Err(e), _) => return Err(e),
    };
    let mut done = 0;
    while done < n {
        dst.writable().await?;
        match dst.try_write(&buf[done..n]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(m) => done += m,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(Step::Moved { n, drained })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn counters() -> ByteCounters {
        ByteCounters {
            client_to_server: Counter::noop(),
            server_to_client: Counter::noop(),
        }
    }

    /// client <-> [proxy_in | relay | proxy_out] <-> server, all on loopback.
    async fn relayed_pair() -> (
        TcpStream,
        TcpStream,
        tokio::task::JoinHandle<io::Result<Transferred>>,
    ) {
        relayed_pair_with(RelayMode::Splice).await
    }

    async fn relayed_pair_with(
        mode: RelayMode,
    ) -> (
        TcpStream,
        TcpStream,
        tokio::task::JoinHandle<io::Result<Transferred>>,
    ) {
        let front = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let back = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let front_addr = front.local_addr().expect("addr");
        let back_addr = back.local_addr().expect("addr");
        let client = TcpStream::connect(front_addr).await.expect("connect");
        let (mut accepted, _) = front.accept().await.expect("accept");
        let mut upstream = TcpStream::connect(back_addr).await.expect("connect");
        let (server, _) = back.accept().await.expect("accept");
        let task =
            tokio::spawn(
                async move { relay(&mut accepted, &mut upstream, &counters(), mode).await },
            );
        (client, server, task)
    }

    fn pooled() -> Vec<i32> {
        POOL.with(|p| p.borrow().iter().map(|p| p.read.as_raw_fd()).collect())
    }

    #[test]
    fn an_empty_pipe_goes_back_to_the_pool_and_a_full_one_is_closed() {
        // A plain test thread: its pool is its own.
        assert!(pooled().is_empty());
        let lease = Lease::take().expect("pipe");
        let fd = lease.pipe().read.as_raw_fd();
        drop(lease);
        assert_eq!(pooled(), vec![fd], "empty: pooled");

        let mut lease = Lease::take().expect("pipe");
        assert_eq!(lease.pipe().read.as_raw_fd(), fd, "reused, no new pipe");
        assert!(pooled().is_empty());
        nix::unistd::write(&lease.pipe().write, b"stale").expect("fill");
        lease.pending = 5;
        drop(lease);
        assert!(pooled().is_empty(), "a pipe holding data is never pooled");
        let fresh = Lease::take().expect("pipe");
        let mut buf = [0u8; 8];
        assert!(
            nix::unistd::read(&fresh.pipe().read, &mut buf).is_err(),
            "a new pipe is empty (EAGAIN), nothing of the old bytes"
        );
        drop(fresh);

        let many: Vec<Lease> = (0..POOL_PER_THREAD + 8)
            .map(|_| Lease::take().expect("pipe"))
            .collect();
        drop(many);
        assert_eq!(pooled().len(), POOL_PER_THREAD, "the pool is bounded");
    }

    #[tokio::test]
    async fn bytes_flow_both_ways_and_half_close_propagates() {
        half_close_round_trip(RelayMode::Splice).await;
    }

    #[tokio::test]
    async fn the_user_space_fallback_keeps_bytes_and_half_close() {
        half_close_round_trip(RelayMode::Copy).await;
    }

    #[tokio::test]
    async fn auto_mode_keeps_bytes_and_half_close() {
        half_close_round_trip(RelayMode::Auto).await;
    }

    async fn half_close_round_trip(mode: RelayMode) {
        let (mut client, mut server, task) = relayed_pair_with(mode).await;
        let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let sent = payload.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.expect("write");
            client.shutdown().await.expect("half-close");
            let mut reply = Vec::new();
            client.read_to_end(&mut reply).await.expect("read reply");
            reply
        });
        let mut received = Vec::new();
        server
            .read_to_end(&mut received)
            .await
            .expect("server reads to EOF");
        assert_eq!(received, payload, "server got every byte, then EOF");
        server
            .write_all(b"done after your EOF")
            .await
            .expect("write after half-close");
        server.shutdown().await.expect("shutdown");
        let reply = writer.await.expect("join");
        assert_eq!(reply, b"done after your EOF");
        let moved = task.await.expect("join").expect("relay ok");
        assert_eq!(moved.client_to_server, 1_000_000);
        assert_eq!(moved.server_to_client, 19);
    }

    /// Several connections at once, each carrying megabytes both ways at the same time, with
    /// small and odd-sized writes mixed in: every byte arrives, in order, and is counted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 3)]
    async fn large_concurrent_transfers_arrive_intact() {
        large_concurrent_transfers(RelayMode::Splice).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 3)]
    async fn large_concurrent_transfers_arrive_intact_when_copying() {
        large_concurrent_transfers(RelayMode::Copy).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 3)]
    async fn large_concurrent_transfers_arrive_intact_in_auto_mode() {
        large_concurrent_transfers(RelayMode::Auto).await;
    }

    async fn large_concurrent_transfers(mode: RelayMode) {
        const CONNECTIONS: usize = 6;
        const SIZE: usize = 6 * 1024 * 1024 + 4321;
        fn pattern(seed: usize, len: usize) -> Vec<u8> {
            (0..len)
                .map(|i| ((i * 31 + seed * 7 + i / 997) % 256) as u8)
                .collect()
        }
        async fn send(mut w: tokio::net::tcp::OwnedWriteHalf, data: Vec<u8>) {
            let mut off = 0;
            let mut step = 1;
            while off < data.len() {
                let end = (off + step).min(data.len());
                w.write_all(&data[off..end]).await.expect("write");
                off = end;
                // 1 B, 3 B, ... up to 200 KB: more than a pipe's worth at the high end.
                step = (step * 3 + 1) % 200_000 + 1;
            }
            w.shutdown().await.expect("half-close");
        }
        async fn receive(mut r: tokio::net::tcp::OwnedReadHalf) -> Vec<u8> {
            let mut got = Vec::new();
            r.read_to_end(&mut got).await.expect("read");
            got
        }
        let mut handles = Vec::new();
        for c in 0..CONNECTIONS {
            handles.push(tokio::spawn(async move {
                let (client, server, task) = relayed_pair_with(mode).await;
                let (up, down) = (pattern(c, SIZE), pattern(c + 100, SIZE + c));
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                let (_, _, at_server, at_client) = tokio::join!(
                    tokio::spawn(send(cw, up.clone())),
                    tokio::spawn(send(sw, down.clone())),
                    tokio::spawn(receive(sr)),
                    tokio::spawn(receive(cr)),
                );
                assert!(at_server.expect("join") == up, "upstream bytes intact");
                assert!(at_client.expect("join") == down, "downstream bytes intact");
                let moved = task.await.expect("join").expect("relay ok");
                assert_eq!(moved.client_to_server, SIZE as u64);
                assert_eq!(moved.server_to_client, (SIZE + c) as u64);
            }));
        }
        for h in handles {
            tokio::time::timeout(std::time::Duration::from_secs(120), h)
                .await
                .expect("transfers finish")
                .expect("transfer ok");
        }
    }

    /// A sender that writes a large burst and then waits for an answer without closing: every
    /// byte must reach the server although no new data (and no end-of-stream) arrives to wake
    /// the relay once the sender is done. A relay that took a short splice for a drained socket
    /// stranded the tail of the burst here.
    #[tokio::test]
    async fn a_burst_followed_by_silence_is_delivered_whole() {
        for mode in [RelayMode::Splice, RelayMode::Auto, RelayMode::Copy] {
            let (mut client, mut server, task) = relayed_pair_with(mode).await;
            const LEN: usize = 200 * 20_000;
            let exchange = async {
                let writer = async {
                    // Many small segments: each takes a pipe buffer of its own, so a splice
                    // fills the pipe long before `CHUNK` bytes while more wait in the socket.
                    client.set_nodelay(true).expect("nodelay");
                    let piece = [7u8; 200];
                    for _ in 0..LEN / piece.len() {
                        client.write_all(&piece).await.expect("write");
                    }
                    let mut answer = [0u8; 2];
                    client.read_exact(&mut answer).await.expect("answer");
                    answer
                };
                let reader = async {
                    let mut got = vec![0u8; LEN];
                    // Start late, so the burst piles up in the relay's socket first.
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    server.read_exact(&mut got).await.expect("every byte");
                    server.write_all(b"ok").await.expect("answer");
                };
                tokio::join!(writer, reader).0
            };
            let answer = tokio::time::timeout(std::time::Duration::from_secs(20), exchange)
                .await
                .unwrap_or_else(|_| panic!("{mode:?}: the tail of the burst was stranded"));
            assert_eq!(&answer, b"ok");
            drop(client);
            drop(server);
            let _ = task.await;
        }
    }

    /// Thousands of small exchanges, each a short read that ends its burst without a second
    /// read: every message is relayed (a lost wakeup would hang an exchange), on a runtime whose
    /// driver runs on another thread as often as not, in every relay mode.
    #[tokio::test(flavor = "multi_thread", worker_threads = 3)]
    async fn short_messages_back_and_forth_are_never_stranded() {
        for mode in [RelayMode::Auto, RelayMode::Copy, RelayMode::Splice] {
            let (mut client, mut server, task) = relayed_pair_with(mode).await;
            let echo = tokio::spawn(async move {
                let mut buf = [0u8; 64];
                loop {
                    let n = server.read(&mut buf).await.expect("server read");
                    if n == 0 {
                        break;
                    }
                    server.write_all(&buf[..n]).await.expect("server write");
                }
            });
            for i in 0..3_000usize {
                let message = vec![(i % 251) as u8; 1 + i % 37];
                let exchange = async {
                    client.write_all(&message).await.expect("write");
                    let mut back = vec![0u8; message.len()];
                    client.read_exact(&mut back).await.expect("read");
                    back
                };
                let back = tokio::time::timeout(std::time::Duration::from_secs(10), exchange)
                    .await
                    .unwrap_or_else(|_| panic!("{mode:?}: exchange {i} stranded"));
                assert_eq!(back, message, "{mode:?}: exchange {i}");
            }
            client.shutdown().await.expect("half-close");
            echo.await.expect("echo ends at EOF");
            let mut rest = Vec::new();
            client.read_to_end(&mut rest).await.expect("EOF back");
            assert!(rest.is_empty());
            task.await.expect("join").expect("relay ok");
        }
    }

    #[tokio::test]
    async fn a_reset_on_one_side_ends_the_relay() {
        let (client, mut server, task) = relayed_pair().await;
        SockRef::from(&client)
            .set_linger(Some(std::time::Duration::ZERO))
            .expect("linger");
        drop(client);
        let result = tokio::time::timeout(std::time::Duration::from_secs(5), task)
            .await
            .expect("relay ends promptly")
            .expect("join");
        // A reset is an error; a plain EOF would be fine too, depending on timing.
        let _ = result;
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), server.read(&mut buf))
            .await
            .expect("server sees the end");
        assert!(matches!(n, Ok(0) | Err(_)));
    }
}
