//! Outbound: what leaves this pod.
//!
//! - TCP is always relayed: portcullis-init redirects every outbound connection to the outbound
//!   listener, and [`crate::relay::connection`] judges it on the egress table with its original
//!   destination as the peer. A connection to a Service's virtual IP is judged on its backends and
//!   sent to an allowed one ([`service`]), spread by active connections ([`balance`]).
//! - UDP and SCTP: the first packet of each new flow waits in NFQUEUE for a verdict
//!   ([`crate::queue`], hook `OUTPUT`); a flow to a Service is accepted only when every backend
//!   is allowed ([`crate::queue::flow`]).
//! - A new table that denies an open connection ends it ([`crate::revoke`]).

pub mod balance;
pub mod service;
