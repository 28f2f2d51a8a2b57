//! The data plane: `--worker-threads` threads, each running its own single-threaded runtime with
//! its own listening sockets. The sockets of one address form an `SO_REUSEPORT` group, so the
//! kernel spreads new connections over the threads, and a connection then lives on the thread
//! that accepted it: accept, decision, upstream connect and both directions of the relay run
//! there, and no byte ever waits for a wakeup from another thread. (With one shared
//! work-stealing runtime, a readable socket was often noticed by one thread and served by the
//! other.) The control plane (policy source, admin port, audit flushing) runs elsewhere.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use portcullis_policy::Direction;
use tokio::sync::{mpsc, watch};

use super::listener;
use crate::context::Context;

/// The listening sockets of one worker thread.
pub struct WorkerListeners {
    sockets: Vec<(std::net::TcpListener, Direction)>,
}

/// Binds one socket per address per worker. The first worker's binding decides which addresses
/// are served (an IPv6 address the pod cannot bind is skipped with a warning, as before); the
/// other workers must then bind exactly those.
pub fn bind(
    inbound: &[SocketAddr],
    outbound: &[SocketAddr],
    workers: usize,
) -> anyhow::Result<Vec<WorkerListeners>> {
    let first_in = listener::bind_all(inbound, "inbound")?;
    let first_out = listener::bind_all(outbound, "outbound")?;
    let mut addrs = Vec::new();
    let mut first = Vec::new();
    for (sockets, direction) in [
        (first_in, Direction::Ingress),
        (first_out, Direction::Egress),
    ] {
        for s in sockets {
            addrs.push((s.local_addr()?, direction));
            first.push((s, direction));
        }
    }
    let mut all = vec![WorkerListeners { sockets: first }];
    for _ in 1..workers.max(1) {
        let mut sockets = Vec::new();
        for (addr, direction) in &addrs {
            let s = listener::bind_shared(*addr).map_err(|e| {
                anyhow::anyhow!(
                    "cannot bind another {} listener on {addr}: {e}",
                    direction.as_str()
                )
            })?;
            sockets.push((s, *direction));
        }
        all.push(WorkerListeners { sockets });
    }
    Ok(all)
}

/// The running worker threads.
pub struct DataPlane {
    threads: Vec<JoinHandle<()>>,
    /// Dropped by each worker once its listeners are closed.
    closed: mpsc::Receiver<()>,
    exit: watch::Sender<bool>,
}

impl DataPlane {
    /// Starts one thread per [`WorkerListeners`]. The listeners close when `stop` turns true;
    /// connections keep being served until [`DataPlane::exit`].
    pub fn start(
        ctx: &Arc<Context>,
        workers: Vec<WorkerListeners>,
        stop: &watch::Receiver<bool>,
    ) -> anyhow::Result<DataPlane> {
        let (closed_tx, closed) = mpsc::channel(1);
        let (exit, exit_rx) = watch::channel(false);
        let mut threads = Vec::new();
        for (i, listeners) in workers.into_iter().enumerate() {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let ctx = ctx.clone();
            let stop = stop.clone();
            let closed_tx = closed_tx.clone();
            let mut exit_rx = exit_rx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("portcullis-data-{i}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        let mut loops = Vec::new();
                        for (socket, direction) in listeners.sockets {
                            match tokio::net::TcpListener::from_std(socket) {
                                Ok(l) => loops.push(tokio::spawn(listener::accept_loop(
                                    l,
                                    direction,
                                    ctx.clone(),
                                    stop.clone(),
                                ))),
                                Err(e) => tracing::error!(error = %e, "cannot register a listener"),
                            }
                        }
                        for l in loops {
                            let _ = l.await;
                        }
                        drop(closed_tx);
                        let _ = exit_rx.wait_for(|exit| *exit).await;
                    });
                })?;
            threads.push(thread);
        }
        Ok(DataPlane {
            threads,
            closed,
            exit,
        })
    }

    /// Waits until every worker has closed its listeners (after `stop` turned true).
    pub async fn listeners_closed(&mut self) {
        while self.closed.recv().await.is_some() {}
    }

    /// Ends the worker threads; connections still open are cut.
    pub async fn exit(self) {
        self.exit.send_replace(true);
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}
