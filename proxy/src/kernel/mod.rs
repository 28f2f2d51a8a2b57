//! What the proxy asks of the kernel beyond sockets: the conntrack table ([`conntrack`],
//! ctnetlink), aborting a local TCP socket ([`sockdiag`], `SOCK_DESTROY`), both over one netlink
//! framing ([`netlink`]), and the `CAP_NET_ADMIN` they and the queue need ([`caps`]).
//! Everything here is blocking: call it off the async runtime.

pub mod caps;
pub mod conntrack;
pub mod netlink;
pub mod sockdiag;
