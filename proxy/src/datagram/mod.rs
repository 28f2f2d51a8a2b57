//! UDP and SCTP: a verdict on the first packet of each new flow, in the kernel's queue.
//!
//! `portcullis-init` sends the first packet of every new UDP/SCTP flow (conntrack `NEW`) to
//! NFQUEUE `--nfqueue` (4171) from the filter table's `INPUT` (ingress) and `OUTPUT` (egress).
//! [`queue`] reads it on a thread of its own and answers accept or drop with the same table and
//! the same decision as TCP (`authorize::decide_protocol` → `PodTable::check` with the packet's
//! protocol, peer and destination port). Later packets of an accepted flow are `ESTABLISHED`
//! and never leave the kernel. [`revoke`] deletes the conntrack entries of flows a new table
//! denies. [`packet`] reads the bytes; [`crate::kernel::conntrack`] speaks ctnetlink.
//!
//! Fail closed everywhere: no reader → the kernel drops (no `--queue-bypass`); no table yet,
//! a packet that cannot be read, an unknown hook → drop.

pub mod flow;
pub mod packet;
pub mod queue;
pub mod revoke;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use crate::config::{Config, Mode, OnPolicyChange};
use crate::Context;

/// Binds the queue (a failure is a start error: without `CAP_NET_ADMIN` the proxy says so and
/// exits), starts the reader thread and, unless `--on-policy-change=keep` or audit mode, the
/// revocation of flows that new tables deny. Call from within the runtime.
pub fn start(ctx: Arc<Context>, config: &Config) -> anyhow::Result<()> {
    let queue = queue::bind(config.nfqueue)?;
    let reader_ctx = ctx.clone();
    std::thread::Builder::new()
        .name("nfqueue".into())
        .spawn(move || {
            let result =
                std::panic::catch_unwind(AssertUnwindSafe(|| queue::run(queue, reader_ctx)));
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
    if config.on_policy_change == OnPolicyChange::Close && config.mode == Mode::Enforce {
        // Subscribed here, before the policy source starts, so that the first table is swept too.
        let changes = ctx.store.subscribe();
        tokio::spawn(revoke::on_policy_change(
            ctx,
            config.pod_ips.clone(),
            changes,
        ));
    }
    Ok(())
}
