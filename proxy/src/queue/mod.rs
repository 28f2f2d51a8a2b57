//! The NFQUEUE path, shared by both directions: a verdict on the first packet of each new flow
//! the kernel carries itself. UDP, SCTP and every other IP protocol but ICMP (UDP-Lite, GRE,
//! IPIP, ...: port-less flows for policy) in both directions, inbound TCP SYNs with
//! `--inbound-tcp queue` (see [`crate::inbound`]), and outbound TCP SYNs to anything but a
//! Service with portcullis-init's `--outbound-tcp queue` (see [`crate::outbound`]); a denied
//! outbound SYN is refused with a reset ([`reader::Verdict::Refuse`]).
//!
//! `portcullis-init` sends the first packet of every such flow (conntrack `NEW`) to NFQUEUE
//! `--nfqueue` (4171) from the filter table's `INPUT` (ingress) and `OUTPUT` (egress).
//! [`reader`] reads it on a thread of its own and answers accept or drop with the same table and
//! the same decision as a relayed connection ([`flow::decide_flow`] →
//! `authorize::decide_protocol` → `PodTable::check` with the packet's protocol, peer and
//! destination port); the hook tells the direction. Later packets of an accepted flow are
//! `ESTABLISHED` and never leave the kernel. [`crate::revoke::queued`] deletes the conntrack
//! entries of flows a new table denies. [`packet`] reads the bytes.
//!
//! Fail closed everywhere: no reader → the kernel drops (no `--queue-bypass`); no table yet,
//! a packet that cannot be read, an unknown hook → drop.

pub mod flow;
pub mod packet;
pub mod reader;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use crate::config::Config;
use crate::context::Context;

/// Binds the queue (a failure is a start error: without `CAP_NET_ADMIN` the proxy says so and
/// exits) and starts the reader thread. Revocation of what it let through is
/// [`crate::revoke::start_sweep`]'s. Call from within the runtime.
pub fn start(ctx: &Arc<Context>, config: &Config) -> anyhow::Result<()> {
    let queue = reader::bind(config.nfqueue)?;
    let reader_ctx = ctx.clone();
    std::thread::Builder::new()
        .name("nfqueue".into())
        .spawn(move || {
            let result =
                std::panic::catch_unwind(AssertUnwindSafe(|| reader::run(queue, reader_ctx)));
            let why = match result {
                Ok(e) => format!("the queue socket failed: {e}"),
                Err(_) => "the queue reader panicked".to_string(),
            };
            // Without a reader new UDP/SCTP flows are dropped; restart rather than run on
            // half-blind while reporting ready.
            tracing::error!(event = "fatal", error = %why, "UDP/SCTP enforcement stopped");
            eprintln!("portcullis-proxy: UDP/SCTP enforcement stopped: {why}");
            std::process::exit(1);
        })?;
    Ok(())
}
