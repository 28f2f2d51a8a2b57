//! How many connections the descriptor limit (`RLIMIT_NOFILE`) can hold.
//!
//! A server that promises more connections than its descriptors can hold runs into `EMFILE` at
//! accept time, when other parts of the process (a data path, an API watch, a certificate
//! reload) need a descriptor too. Instead, its cap is fitted at start: the process's own
//! descriptors and every other guarded server's share are set aside first, and the rest is
//! divided among the connections; beyond the fitted cap connections are reset like any beyond
//! the cap.

/// What a server's connections share the descriptor limit with, and what each one costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptors {
    /// Descriptors the process holds besides connections (standard streams, listeners, epoll,
    /// files, pools), with room to spare.
    pub reserved: u64,
    /// The caps of the process's other guarded servers: each holds at most its cap, plus the
    /// one connection it accepts and resets at a time beyond the cap.
    pub other_servers: usize,
    /// Descriptors one connection holds for its whole life.
    pub per_connection: u64,
    /// Of what is left for connections, one part in this many is kept free as headroom (0: none).
    pub headroom_divisor: u64,
}

/// A cap fitted to the descriptor limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fitted {
    /// The cap to use.
    pub max_connections: usize,
    /// True when it is lower than the one asked for.
    pub lowered: bool,
}

impl Descriptors {
    /// Connections that `nofile` descriptors hold next to everything set aside. Never less
    /// than one.
    pub fn capacity(&self, nofile: u64) -> usize {
        let set_aside = self.reserved.saturating_add(self.other_servers as u64 + 1);
        let budget = nofile.saturating_sub(set_aside);
        let headroom = budget.checked_div(self.headroom_divisor).unwrap_or(0);
        let per_connection = self.per_connection.max(1);
        usize::try_from((budget - headroom) / per_connection)
            .unwrap_or(usize::MAX)
            .max(1)
    }

    /// `requested`, or the [capacity](Self::capacity) of `nofile` when that is lower.
    pub fn fit(&self, requested: usize, nofile: u64) -> Fitted {
        let capacity = self.capacity(nofile);
        Fitted {
            max_connections: requested.min(capacity),
            lowered: requested > capacity,
        }
    }
}

/// The soft `RLIMIT_NOFILE` of this process (`None` when it cannot be read or is unlimited).
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
    fn what_is_set_aside_comes_first_and_the_rest_is_divided() {
        let d = Descriptors {
            reserved: 100,
            other_servers: 9,
            per_connection: 2,
            headroom_divisor: 0,
        };
        // 1,000 - 100 - (9 + 1) = 890, two each.
        assert_eq!(d.capacity(1_000), 445);
        assert_eq!(
            d.fit(500, 1_000),
            Fitted {
                max_connections: 445,
                lowered: true
            }
        );
        assert_eq!(
            d.fit(400, 1_000),
            Fitted {
                max_connections: 400,
                lowered: false
            }
        );
        // An eighth kept as headroom: 890 - 111 = 779, two each.
        let d = Descriptors {
            headroom_divisor: 8,
            ..d
        };
        assert_eq!(d.capacity(1_000), 389);
    }

    #[test]
    fn never_less_than_one() {
        let d = Descriptors {
            reserved: 256,
            other_servers: 64,
            per_connection: 0,
            headroom_divisor: 8,
        };
        assert_eq!(d.capacity(0), 1);
        assert_eq!(d.capacity(100), 1);
        assert_eq!(d.fit(5, 100).max_connections, 1);
    }

    #[test]
    fn the_limit_is_readable() {
        raise_nofile_limit();
        assert!(nofile_limit().is_some_and(|n| n > 0));
    }
}
