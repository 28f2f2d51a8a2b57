//! Moves bytes between the two sockets of a proxied connection.
//!
//! Where both ends are TCP sockets (always, here) each direction goes through a pipe with
//! `splice(2)`, so payload never enters user space. A direction ends at end-of-stream, which is
//! passed on as a half-close (`shutdown(SHUT_WR)`), so protocols that half-close keep working.
//! Pipes are created when a direction first has data: idle connections cost no pipe.

use std::io;
use std::net::Shutdown;
use std::os::fd::{AsFd, OwnedFd};

use metrics::Counter;
use nix::fcntl::{splice, OFlag, SpliceFFlags};
use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Largest amount moved by one `splice` call: the default pipe capacity.
const CHUNK: usize = 64 * 1024;

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

/// Relays until both directions reach end-of-stream, or until either side fails.
pub async fn relay(
    client: &mut TcpStream,
    server: &mut TcpStream,
    counters: &ByteCounters,
) -> io::Result<Transferred> {
    let (c, s) = (&*client, &*server);
    let upstream = splice_one_way(c, s, &counters.client_to_server);
    let downstream = splice_one_way(s, c, &counters.server_to_client);
    match tokio::try_join!(upstream, downstream) {
        Ok((up, down)) => Ok(Transferred {
            client_to_server: up,
            server_to_client: down,
        }),
        Err(SpliceError::Unsupported) => {
            // No pipes to be had (fd limit) or splice refused: copy through user space.
            let (up, down) =
                tokio::io::copy_bidirectional_with_sizes(client, server, CHUNK, CHUNK).await?;
            counters.client_to_server.increment(up);
            counters.server_to_client.increment(down);
            Ok(Transferred {
                client_to_server: up,
                server_to_client: down,
            })
        }
        Err(SpliceError::Io(e)) => Err(e),
    }
}

enum SpliceError {
    /// Nothing moved yet and splice cannot be used: fall back to copying.
    Unsupported,
    Io(io::Error),
}

impl From<io::Error> for SpliceError {
    fn from(e: io::Error) -> Self {
        SpliceError::Io(e)
    }
}

struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

async fn splice_one_way(
    src: &TcpStream,
    dst: &TcpStream,
    counter: &Counter,
) -> Result<u64, SpliceError> {
    let mut total = 0u64;
    let mut pipe: Option<Pipe> = None;
    loop {
        src.readable().await?;
        let pipe_ref = match &pipe {
            Some(p) => p,
            None => {
                let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)
                    .map_err(|_| SpliceError::Unsupported)?;
                pipe.insert(Pipe { read, write })
            }
        };
        let moved = src.try_io(Interest::READABLE, || {
            splice(
                src.as_fd(),
                None,
                pipe_ref.write.as_fd(),
                None,
                CHUNK,
                SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK,
            )
            .map_err(io::Error::from)
        });
        let n = match moved {
            Ok(0) => {
                // End of stream: pass the half-close on. The peer may be gone already.
                let _ = SockRef::from(dst).shutdown(Shutdown::Write);
                return Ok(total);
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) if total == 0 && e.raw_os_error() == Some(libc_einval()) => {
                return Err(SpliceError::Unsupported)
            }
            Err(e) => return Err(e.into()),
        };
        let mut pending = n;
        while pending > 0 {
            dst.writable().await?;
            let written = dst.try_io(Interest::WRITABLE, || {
                splice(
                    pipe_ref.read.as_fd(),
                    None,
                    dst.as_fd(),
                    None,
                    pending,
                    SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK,
                )
                .map_err(io::Error::from)
            });
            match written {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero).into()),
                Ok(m) => pending -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e.into()),
            }
        }
        total += n as u64;
        counter.increment(n as u64);
    }
}

fn libc_einval() -> i32 {
    nix::errno::Errno::EINVAL as i32
}

#[cfg(test)]
mod tests {
    use super::*;
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
        let front = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let back = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let front_addr = front.local_addr().expect("addr");
        let back_addr = back.local_addr().expect("addr");
        let client = TcpStream::connect(front_addr).await.expect("connect");
        let (mut accepted, _) = front.accept().await.expect("accept");
        let mut upstream = TcpStream::connect(back_addr).await.expect("connect");
        let (server, _) = back.accept().await.expect("accept");
        let task =
            tokio::spawn(async move { relay(&mut accepted, &mut upstream, &counters()).await });
        (client, server, task)
    }

    #[tokio::test]
    async fn bytes_flow_both_ways_and_half_close_propagates() {
        let (mut client, mut server, task) = relayed_pair().await;
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
