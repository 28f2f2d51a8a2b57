//! `portcullis-proxy`: the per-pod sidecar that enforces Kubernetes NetworkPolicy on every TCP
//! connection.
//!
//! Where to look:
//! - the allow/deny decision: [`authorize`] (on top of `PodTable::check` in the policy crate);
//! - what happens to one connection: [`connection`] (plan → open → relay → report; a
//!   connection to a Service's ClusterIP is judged on its backends there); who the peer is:
//!   [`route`]; which backend of a Service: [`balance`];
//! - where inbound connections may go (only this pod's addresses): [`inbound`];
//! - UDP and SCTP (verdicts on the first packet of each flow, from NFQUEUE): [`datagram`];
//! - moving bytes: [`relay`] (splice); audit lines: [`audit`]; metrics: [`telemetry`];
//! - policy tables: [`store`] (arc-swap) fed by a [`source`];
//! - `/metrics`, `/ready`, `/live`, `/policy`: [`admin`]; descriptor budget: [`limits`].

pub mod admin;
pub mod audit;
pub mod authorize;
pub mod balance;
pub mod config;
pub mod connection;
pub mod context;
pub mod dataplane;
pub mod inbound;
pub mod kernel;
pub mod limits;
pub mod listener;
pub mod mark;
pub mod queue;
pub mod relay;
pub mod resolve;
pub mod revoke;
pub mod route;
mod run;
pub mod source;
pub mod store;
pub mod telemetry;

pub use context::Context;
pub use run::run;
