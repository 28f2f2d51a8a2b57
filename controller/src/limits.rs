//! How many table-API connections the descriptor limit can hold.
//!
//! Each proxy holds one connection; a slowloris held 20,000 and the controller ran out of
//! descriptors (new streams and `/ready` hung). The table API's cap is fitted to
//! `RLIMIT_NOFILE` at start, after setting aside the controller's own descriptors (API server
//! watches and reviews, certificate files, listeners, epoll) and the admin port's share, so that
//! neither server can take the descriptors the other, or the controller itself, needs.

use portcullis_serve_guard::Descriptors;

pub use portcullis_serve_guard::{nofile_limit, raise_nofile_limit};

/// The controller's own descriptors, with room to spare.
pub const RESERVED_FDS: u64 = 256;

/// The table API's connection cap: `requested`, or what `nofile` holds next to an admin port of
/// `admin_connections` (each server also holds one connection while it resets it). The second
/// value is true when it had to be lowered. Never less than one.
pub fn fit_api_connections(
    requested: usize,
    nofile: u64,
    admin_connections: usize,
) -> (usize, bool) {
    let descriptors = Descriptors {
        // The table API's own connection being reset beyond its cap.
        reserved: RESERVED_FDS + 1,
        other_servers: admin_connections,
        per_connection: 1,
        headroom_divisor: 0,
    };
    let fitted = descriptors.fit(requested, nofile);
    (fitted.max_connections, fitted.lowered)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_fits_the_descriptor_limit() {
        assert_eq!(fit_api_connections(16_384, 1_048_576, 64), (16_384, false));
        // 20,000 - 256 - 64 - 2.
        assert_eq!(fit_api_connections(16_384, 20_000, 64), (16_384, false));
        assert_eq!(fit_api_connections(16_384, 1_024, 64), (702, true));
        assert_eq!(fit_api_connections(16_384, 100, 64), (1, true));
    }
}
