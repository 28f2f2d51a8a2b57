//! Inbound: what reaches this pod. Where an inbound SYN goes depends on `--inbound-tcp`:
//!
//! - `queue` (the default with `--enforce-udp`): portcullis-init queues the SYN of each new
//!   inbound TCP connection (and the first packet of each inbound UDP/SCTP flow) to NFQUEUE from
//!   `INPUT`; [`crate::queue::reader`] judges it on the ingress table with the packet's source as
//!   the peer, and accepts or drops it. An accepted connection goes straight to the application,
//!   carried by the kernel, its conntrack entry marked `QUEUED_CONNMARK`. A new table that denies
//!   it aborts the application's socket and deletes the entry ([`crate::revoke::queued`]).
//! - `proxy`: portcullis-init redirects it to the inbound listener, and the proxy relays it like
//!   an outbound connection ([`crate::relay`]), forwarding only to this pod's own addresses from
//!   a loopback source ([`relay`]). A new table that denies it resets it
//!   ([`crate::revoke::relayed`]).

pub mod relay;

use crate::config::{Config, InboundTcp};

/// Says at start how inbound TCP is enforced when it goes through the queue.
pub fn log_mode(config: &Config) {
    if config.inbound_tcp() == InboundTcp::Queue {
        tracing::info!(
            event = "inbound_tcp_queued",
            nfqueue = config.nfqueue,
            "inbound TCP connections are decided on their first packet from NFQUEUE {} and \
             then carried by the kernel (--inbound-tcp queue)",
            config.nfqueue
        );
    }
}
