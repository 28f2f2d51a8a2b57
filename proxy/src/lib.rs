//! `portcullis-proxy`: the per-pod sidecar that enforces Kubernetes NetworkPolicy on every TCP
//! connection and every UDP/SCTP flow.
//!
//! Laid out by direction, then mechanism. Where to look:
//! - what happens to an inbound SYN or datagram: [`inbound`]; to an outbound one: [`outbound`];
//! - the relayed TCP path both directions share (listeners, original destination, plan → open
//!   → relay → report, splice): [`relay`];
//! - the NFQUEUE path both directions share (first packet of each UDP/SCTP flow and of each
//!   queued inbound TCP connection): [`queue`];
//! - ending what a new table denies, relayed or queued: [`revoke`];
//! - the kernel beyond sockets (conntrack, `SOCK_DESTROY`, one netlink framing, capabilities):
//!   [`kernel`]; the proxy's own socket mark: [`mark`];
//! - the allow/deny decision: [`authorize`] (on top of `PodTable::check` in the policy crate);
//!   what staged policies would change about it: [`staged`];
//! - policy tables: [`store`] (arc-swap) fed by a [`source`] (directory or controller stream,
//!   the controller's name resolved by [`resolve`]);
//! - what every task shares: [`context`]; start and drain: [`run`]; flags: [`config`];
//! - audit lines: [`audit`] (the schema is `portcullis_contract::log`); flow records:
//!   [`flows`]; metrics: [`telemetry`]; `/metrics`, `/ready`, `/live`, `/policy`:
//!   [`admin`]; descriptor budget: [`limits`].

pub mod admin;
pub mod audit;
pub mod authorize;
pub mod config;
pub mod context;
pub mod dns;
pub mod flows;
pub mod inbound;
pub mod kernel;
pub mod limits;
pub mod mark;
pub mod outbound;
pub mod queue;
pub mod relay;
pub mod resolve;
pub mod revoke;
mod run;
pub mod source;
pub mod staged;
pub mod store;
pub mod telemetry;

pub use context::Context;
pub use run::run;
