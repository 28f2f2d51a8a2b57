//! The relayed TCP path, shared by both directions: outbound TCP to Services (every outbound
//! connection with portcullis-init's `--outbound-tcp proxy`), and inbound TCP with
//! `--inbound-tcp proxy`. portcullis-init redirects them to the outbound and inbound
//! listeners ([`dataplane`]: one accept loop per worker thread, [`listener`]); [`route`] finds
//! the original destination and the peer; [`connection`] decides (plan → open → relay → report),
//! with the direction's own rules in [`crate::inbound::relay`] and [`crate::outbound`]; the
//! bytes move by [`splice`]. A table that denies an open connection ends it through
//! [`crate::revoke::relayed`].

pub mod connection;
pub mod dataplane;
pub mod listener;
pub mod route;
pub mod splice;

pub use splice::{
    pipes_in_use, pipes_open, relay, ByteCounters, RelayMode, Transferred, POOL_PER_THREAD,
};
