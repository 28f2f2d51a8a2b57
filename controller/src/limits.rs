//! How many table-API connections the descriptor limit can hold.
//!
//! Each proxy holds one connection; a slowloris held 20,000 and the controller ran out of
//! descriptors (new streams and `/ready` hung). The table API's cap is fitted to
//! `RLIMIT_NOFILE` at start, after setting aside the controller's own descriptors (API server
//! watches and reviews, certificate files, listeners, epoll) and the admin port's share, so that
//! neither server can take the descriptors the other, or the controller itself, needs.

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
    let set_aside = RESERVED_FDS + admin_connections as u64 + 2;
    let capacity = usize::try_from(nofile.saturating_sub(set_aside))
        .unwrap_or(usize::MAX)
        .max(1);
    if requested > capacity {
        (capacity, true)
    } else {
        (requested, false)
    }
}

/// The soft `RLIMIT_NOFILE` (`None` when unlimited or unreadable).
pub fn nofile_limit() -> Option<u64> {
    use nix::sys::resource::{getrlimit, Resource, RLIM_INFINITY};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, _)) if soft != RLIM_INFINITY => Some(soft),
        _ => None,
    }
}

/// Lifts the soft descriptor limit to the hard one, as servers holding many connections do.
pub fn raise_nofile_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
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
