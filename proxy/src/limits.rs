//! How many connections the descriptor limit can hold.
//!
//! A proxied connection holds two sockets for its whole life, plus, only while bytes are moving,
//! a pipe (two descriptors) per direction. If `--max-connections` promises more than
//! `RLIMIT_NOFILE` can hold, the proxy would run into `EMFILE` at accept or connect time, in the
//! middle of established traffic; instead it accepts fewer connections at once and refuses
//! (resets) the rest, the same way it refuses beyond `--max-connections`.

use portcullis_serve_guard::Descriptors;

use crate::relay::POOL_PER_THREAD;

pub use portcullis_serve_guard::nofile_limit;

/// Descriptors every connection holds: the accepted socket and the upstream one.
pub const FDS_PER_CONNECTION: u64 = 2;

/// The proxy's own descriptors: standard streams, listeners, the admin port, epoll, eventfds,
/// signal pipes, policy files and the controller stream, with room to spare.
pub const RESERVED_FDS: u64 = 64;

/// What the data path's connections share `RLIMIT_NOFILE` with, with `worker_threads` runtime
/// threads and an admin listener that holds at most `admin_connections`.
///
/// Set aside first: [`RESERVED_FDS`], the admin listener's share (its cap, plus the one
/// connection it accepts and resets at a time beyond the cap), and the pipe pools (one per
/// runtime thread, and one for the thread that runs the runtime). Of the rest, an eighth is kept
/// for pipes that are carrying data right now (when those run out a direction copies through
/// user space instead, so this is headroom, not a hard requirement); the remainder is two
/// descriptors per connection.
pub fn descriptors(worker_threads: usize, admin_connections: usize) -> Descriptors {
    let pools = 2 * POOL_PER_THREAD as u64 * (worker_threads.max(1) as u64 + 1);
    Descriptors {
        reserved: RESERVED_FDS + pools,
        other_servers: admin_connections,
        per_connection: FDS_PER_CONNECTION,
        headroom_divisor: 8,
    }
}

/// Connections that `nofile` descriptors can hold (see [`descriptors`]). Never less than one.
pub fn connection_capacity(nofile: u64, worker_threads: usize, admin_connections: usize) -> usize {
    descriptors(worker_threads, admin_connections).capacity(nofile)
}

/// The limit on connections at once: `requested` (`--max-connections`), or less when `nofile`
/// cannot hold that many. The second value is true when it had to be lowered.
pub fn effective_max_connections(
    requested: usize,
    nofile: u64,
    worker_threads: usize,
    admin_connections: usize,
) -> (usize, bool) {
    let fitted = descriptors(worker_threads, admin_connections).fit(requested, nofile);
    (fitted.max_connections, fitted.lowered)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generous_limit_keeps_max_connections() {
        // The usual container limit.
        assert_eq!(
            effective_max_connections(20_000, 1_048_576, 2, 64),
            (20_000, false)
        );
        assert!(connection_capacity(1_048_576, 2, 64) > 400_000);
    }

    #[test]
    fn a_tight_limit_lowers_it_below_half_the_descriptors() {
        let (effective, lowered) = effective_max_connections(20_000, 20_000, 2, 64);
        assert!(lowered);
        // 20,000 - 64 - 65 (admin) - 192 = 19,679; 19,679 - 19,679 / 8 = 17,220; two per
        // connection.
        assert_eq!(effective, 8_610);
        assert!(effective as u64 * FDS_PER_CONNECTION + 65 < 20_000);
        // More threads, more pooled pipes set aside; a bigger admin cap, more set aside.
        assert!(connection_capacity(20_000, 8, 64) < effective);
        assert!(connection_capacity(20_000, 2, 1_000) < effective);
    }

    #[test]
    fn a_tiny_limit_still_allows_one_connection() {
        assert_eq!(connection_capacity(100, 2, 64), 1);
        assert_eq!(connection_capacity(0, 0, 0), 1);
        assert_eq!(effective_max_connections(5, 100, 2, 64), (1, true));
    }

    #[test]
    fn the_limit_is_readable() {
        assert!(nofile_limit().is_some_and(|n| n > 0));
    }
}
