//! Revocation of relayed TCP connections: the proxy holds both sockets, so a connection watches
//! the table swaps itself and is reset by its own task when a new table denies it.

use std::net::IpAddr;
use std::sync::Arc;

use portcullis_policy::Direction;

use crate::authorize::{decide, Decision};
use crate::context::Context;
use crate::store::Snapshot;

/// Resolves with the table and the decision that deny the connection to `peer` on `port`,
/// judged again on every table swap from now on; never resolves when revocation is off.
/// Subscribes before returning, so that no swap after the call is missed.
pub fn until_denied(
    ctx: &Context,
    direction: Direction,
    peer: IpAddr,
    port: u16,
) -> impl std::future::Future<Output = (Arc<Snapshot>, Decision)> + '_ {
    let revocable = super::enabled(ctx.mode, ctx.on_policy_change);
    let mut changes = ctx.store.subscribe();
    async move {
        if !revocable {
            return std::future::pending().await;
        }
        loop {
            if changes.changed().await.is_err() {
                // The store is gone: no table will ever change again.
                return std::future::pending().await;
            }
            if let Some(new) = ctx.store.current() {
                let d = decide(&new.table, ctx.mode, direction, peer, port);
                if !d.lets_through() {
                    return (new, d);
                }
            }
        }
    }
}
