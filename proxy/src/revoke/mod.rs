//! Revocation: the one owner of what happens to an established connection when a new table
//! denies it. With `--on-policy-change=close` in enforce mode ([`enabled`]) every table swap is
//! checked against what is already open, by the mechanism that can end it:
//!
//! - relayed TCP (outbound to Services, all outbound with `--outbound-tcp proxy`, and inbound
//!   with `--inbound-tcp proxy`): the proxy holds both sockets,
//!   so each relayed connection waits on the swap itself ([`relayed::until_denied`], raced
//!   against the byte relay in [`crate::connection`]) and is reset when the new table denies it;
//! - queued flows (UDP, SCTP, inbound TCP with `--inbound-tcp queue`, outbound TCP that is not
//!   to a Service with portcullis-init's `--outbound-tcp queue`): the kernel carries
//!   them, so one sweep per swap lists their conntrack entries, deletes the denied ones and
//!   aborts a queued TCP socket first ([`queued::on_policy_change`], started by [`start_sweep`]).
//!
//! Both judge with the same table and the same decision functions as a new connection, and
//! write one `connection_terminated` audit line per connection they end.

pub mod queued;
pub mod relayed;

use std::sync::Arc;

use crate::config::{Config, Mode, OnPolicyChange};
use crate::context::Context;

/// Whether established connections are revoked at all.
pub fn enabled(mode: Mode, on_policy_change: OnPolicyChange) -> bool {
    on_policy_change == OnPolicyChange::Close && mode == Mode::Enforce
}

/// Starts the sweep of queued flows, when revocation is on. Call before the policy source
/// starts: it subscribes to table swaps here, so that the first table is swept too.
pub fn start_sweep(ctx: &Arc<Context>, config: &Config) {
    if enabled(config.mode, config.on_policy_change) {
        let changes = ctx.store.subscribe();
        tokio::spawn(queued::on_policy_change(
            ctx.clone(),
            config.pod_ips.clone(),
            changes,
        ));
    }
}
