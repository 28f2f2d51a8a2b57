//! Idle connections hold no pipes: after a request/response on each of many relayed
//! connections, every pipe is back in a per-thread pool (bounded) and none is lent out.
//! Alone in its own test binary, so the process-wide pipe counters see only this test.

use std::time::{Duration, Instant};

use metrics::Counter;
use portcullis_proxy::relay::{
    pipes_in_use, pipes_open, relay, ByteCounters, RelayMode, POOL_PER_THREAD,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CONNECTIONS: usize = 300;
const WORKERS: usize = 2;

fn pipe_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|e| e.ok())
        .filter(|e| {
            std::fs::read_link(e.path())
                .map(|l| l.to_string_lossy().starts_with("pipe:"))
                .unwrap_or(false)
        })
        .count()
}

async fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_relayed_connections_hold_no_pipes() {
    let pipes_before = pipe_fds();
    let front = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let back = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let (front_addr, back_addr) = (
        front.local_addr().expect("addr"),
        back.local_addr().expect("addr"),
    );
    let mut pairs = Vec::new();
    let mut relays = Vec::new();
    for _ in 0..CONNECTIONS {
        let client = TcpStream::connect(front_addr).await.expect("connect");
        let (mut accepted, _) = front.accept().await.expect("accept");
        let mut upstream = TcpStream::connect(back_addr).await.expect("connect");
        let (server, _) = back.accept().await.expect("accept");
        relays.push(tokio::spawn(async move {
            let counters = ByteCounters {
                client_to_server: Counter::noop(),
                server_to_client: Counter::noop(),
            };
            relay(&mut accepted, &mut upstream, &counters, RelayMode::Splice).await
        }));
        pairs.push((client, server));
    }
    // A request and a response on every connection: both directions have carried bytes.
    for (i, (client, server)) in pairs.iter_mut().enumerate() {
        let request = format!("request {i}");
        client.write_all(request.as_bytes()).await.expect("write");
        let mut got = vec![0u8; request.len()];
        server.read_exact(&mut got).await.expect("read request");
        assert_eq!(got, request.as_bytes());
        let response = vec![b'r'; 100_000 + i];
        server.write_all(&response).await.expect("write response");
        let mut got = vec![0u8; response.len()];
        client.read_exact(&mut got).await.expect("read response");
        assert_eq!(got, response);
    }

    wait_until("every pipe back in a pool", || pipes_in_use() == 0).await;
    let open = pipes_open();
    assert!(
        open <= POOL_PER_THREAD * (WORKERS + 1),
        "{open} pipes open for {CONNECTIONS} idle connections: only the pools may hold pipes"
    );
    let pipe_fd_count = pipe_fds().saturating_sub(pipes_before);
    assert!(
        pipe_fd_count <= 2 * open,
        "{pipe_fd_count} pipe descriptors open, {open} pipes counted"
    );
    assert!(
        pipe_fd_count < CONNECTIONS,
        "{pipe_fd_count} pipe descriptors for {CONNECTIONS} idle connections"
    );

    // The idle connections still work, and are idle again afterwards.
    for (client, server) in pairs.iter_mut().step_by(7) {
        client.write_all(b"again").await.expect("write");
        let mut got = [0u8; 5];
        server.read_exact(&mut got).await.expect("read");
        server.write_all(b"back!").await.expect("write");
        client.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"back!");
    }
    wait_until("every pipe back in a pool again", || pipes_in_use() == 0).await;

    drop(pairs);
    for r in relays {
        let _ = tokio::time::timeout(Duration::from_secs(5), r)
            .await
            .expect("relays end when both sides close");
    }
    assert_eq!(pipes_in_use(), 0);
}
