//! Outbound: what leaves this pod.
//!
//! - TCP to anything but a Service (pod IPs, node IPs, outside the cluster; issue 26, the
//!   default with portcullis-init's `--outbound-tcp queue`): the SYN waits in NFQUEUE for a
//!   verdict from the same egress table ([`crate::queue::reader`]) and the kernel carries an
//!   allowed connection; a denied one is refused with a reset (`ECONNREFUSED` at once).
//! - TCP to the Service ranges (`--service-cidrs`), or every outbound connection with
//!   `--outbound-tcp proxy`: redirected to the outbound listener, and
//!   [`crate::relay::connection`] judges it on the egress table with its original destination as
//!   the peer. A connection to a Service's virtual IP is judged on its backends and sent to an
//!   allowed one ([`service`]), spread by active connections ([`balance`]).
//! - UDP and SCTP: the first packet of each new flow waits in NFQUEUE for a verdict
//!   ([`crate::queue`], hook `OUTPUT`); a flow to a Service is accepted only when every backend
//!   is allowed ([`crate::queue::flow`]).
//! - A new table that denies an open connection ends it ([`crate::revoke`]).

pub mod balance;
pub mod service;
