use std::convert::Infallible;
use std::net::SocketAddr;

use http_body_util::Full;
use hyper::body::{Bytes, Frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

fn limits(total: usize, per_peer: usize) -> Limits {
    Limits {
        max_connections: total,
        max_connections_per_peer: per_peer,
        header_read_timeout: Duration::from_millis(200),
        idle_timeout: Duration::from_millis(300),
    }
}

#[test]
fn the_cap_holds_in_total_and_per_peer_and_slots_come_back() {
    let guard = Guard::new(limits(3, 2), GuardMetrics::default());
    let a: IpAddr = "10.0.0.1".parse().unwrap();
    let b: IpAddr = "10.0.0.2".parse().unwrap();
    let a1 = guard.admit(a).expect("first");
    let _a2 = guard.admit(a).expect("second");
    // The same peer in its IPv4-mapped form is the same peer.
    assert_eq!(
        guard.admit("::ffff:10.0.0.1".parse().unwrap()).err(),
        Some(Refusal::PeerFull)
    );
    let _b1 = guard.admit(b).expect("another peer");
    assert_eq!(guard.admit(b).err(), Some(Refusal::Full));
    assert_eq!(guard.active(), 3);
    drop(a1);
    assert_eq!(guard.active(), 2);
    let _b2 = guard.admit(b).expect("a freed slot");
    assert_eq!(Refusal::Full.label(), "max_connections");
    assert_eq!(Refusal::PeerFull.label(), "max_connections_per_peer");
}

#[test]
fn zero_means_no_per_peer_limit() {
    let guard = Guard::new(limits(5, 0), GuardMetrics::default());
    let a: IpAddr = "10.0.0.1".parse().unwrap();
    let held: Vec<_> = (0..5).map(|_| guard.admit(a).expect("admitted")).collect();
    assert_eq!(guard.admit(a).err(), Some(Refusal::Full));
    drop(held);
    assert_eq!(guard.active(), 0);
}

/// A body that never produces anything.
struct Silent;

impl Body for Silent {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Pending
    }
}

/// A guarded server: `/silent` answers with headers and then a body that never comes.
async fn server(guard: Arc<Guard>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                continue;
            };
            let Ok(admission) = guard.admit(peer.ip()) else {
                reset(stream);
                continue;
            };
            let guard = guard.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let body: http_body_util::Either<Full<Bytes>, Silent> =
                        if req.uri().path() == "/silent" {
                            http_body_util::Either::Right(Silent)
                        } else {
                            http_body_util::Either::Left(Full::new(Bytes::from_static(b"ok\n")))
                        };
                    Ok::<_, Infallible>(Response::new(body))
                });
                let _ = guard.serve(stream, service).await;
                drop(admission);
            });
        }
    });
    addr
}

/// Reads until the server closes; what it sent.
async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut all = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut all))
        .await
        .expect("the server closed the connection");
    String::from_utf8_lossy(&all).into_owned()
}

#[tokio::test]
async fn a_half_sent_request_is_dropped_at_the_header_timeout_and_its_slot_freed() {
    let guard = Guard::new(limits(1, 1), GuardMetrics::default());
    let addr = server(guard.clone()).await;
    let mut slow = TcpStream::connect(addr).await.expect("connect");
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("half a request");
    // Held: the only slot is taken, a second client is reset.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(guard.active(), 1);
    let mut second = TcpStream::connect(addr).await.expect("connect");
    let _ = second.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let mut buf = [0u8; 16];
    let read = second.read(&mut buf).await;
    assert!(
        matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "beyond the cap: reset, got {read:?}"
    );
    // The slow one is disconnected (hyper answers 408 or just closes), and the slot is back.
    let said = read_to_close(&mut slow).await;
    assert!(said.is_empty() || said.contains("408"), "{said}");
    let mut third = TcpStream::connect(addr).await.expect("connect");
    third
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let answer = read_to_close(&mut third).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("ok\n"), "{answer}");
}

#[tokio::test]
async fn a_connection_that_moves_nothing_is_closed_at_the_idle_timeout() {
    let mut l = limits(4, 0);
    l.header_read_timeout = Duration::from_secs(30);
    let guard = Guard::new(l, GuardMetrics::default());
    let addr = server(guard.clone()).await;
    let mut client = TcpStream::connect(addr).await.expect("connect");
    client
        .write_all(b"GET /silent HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("request");
    let said = read_to_close(&mut client).await;
    assert!(said.starts_with("HTTP/1.1 200"), "{said}");
    tokio::time::timeout(Duration::from_secs(10), async {
        while guard.active() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the slot is given back");
}

#[tokio::test]
async fn a_slow_handshake_times_out() {
    let guard = Guard::new(limits(1, 0), GuardMetrics::default());
    let never = std::future::pending::<Result<(), std::io::Error>>();
    assert!(matches!(
        guard.handshake(never).await,
        Err(ConnectionEnd::TimedOut)
    ));
    let done = async { Ok::<_, std::io::Error>(7) };
    assert_eq!(guard.handshake(done).await.ok(), Some(7));
}
