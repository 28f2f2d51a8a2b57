//! Which backend of a Service a new connection goes to: power of two choices on active
//! connections (two backends drawn at random, the one with fewer connections from this proxy
//! wins), as Linkerd's sidecar does. Only backends the pod's egress table allows are ever
//! offered (see `connection::plan`).

use std::cell::Cell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

/// Active connections per backend, for this proxy.
#[derive(Default)]
pub struct Balancer {
    active: Mutex<HashMap<SocketAddr, u32>>,
}

impl Balancer {
    pub fn new() -> Self {
        Self::default()
    }

    fn count(&self, addr: &SocketAddr) -> u32 {
        self.lock().get(addr).copied().unwrap_or(0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, u32>> {
        self.active.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Picks one of `candidates` (power of two choices); `None` when there is none.
    pub fn pick(&self, candidates: &[SocketAddr]) -> Option<SocketAddr> {
        match candidates.len() {
            0 => None,
            1 => Some(candidates[0]),
            n => {
                let a = random_below(n);
                let b = (a + 1 + random_below(n - 1)) % n;
                let (x, y) = (candidates[a], candidates[b]);
                Some(if self.count(&y) < self.count(&x) {
                    y
                } else {
                    x
                })
            }
        }
    }

    /// Counts a connection to `addr` until the guard drops.
    pub fn track(&self, addr: SocketAddr) -> Active<'_> {
        *self.lock().entry(addr).or_default() += 1;
        Active {
            balancer: self,
            addr,
        }
    }
}

/// One active connection to a backend.
pub struct Active<'a> {
    balancer: &'a Balancer,
    addr: SocketAddr,
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        let mut active = self.balancer.lock();
        if let Some(n) = active.get_mut(&self.addr) {
            *n -= 1;
            if *n == 0 {
                active.remove(&self.addr);
            }
        }
    }
}

/// A per-thread xorshift generator: choosing a backend needs spread, not secrecy.
fn random_below(n: usize) -> usize {
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(0x9e37_79b9_7f4a_7c15);
            h.finish() | 1
        });
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        (x % n as u64) as usize
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: u16) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| SocketAddr::from(([10, 0, 0, i as u8 + 1], 8080)))
            .collect()
    }

    #[test]
    fn picks_only_among_candidates_and_spreads_load() {
        let b = Balancer::new();
        assert_eq!(b.pick(&[]), None);
        let one = addrs(1);
        assert_eq!(b.pick(&one), Some(one[0]));
        let four = addrs(4);
        let mut held = Vec::new();
        for _ in 0..400 {
            let a = b.pick(&four).expect("a backend");
            assert!(four.contains(&a));
            held.push(b.track(a));
        }
        let counts: Vec<u32> = four.iter().map(|a| b.count(a)).collect();
        // Two choices keep the spread tight: no backend far above the mean of 100.
        assert!(counts.iter().all(|c| (80..=120).contains(c)), "{counts:?}");
        drop(held);
        assert!(four.iter().all(|a| b.count(a) == 0));
    }

    #[test]
    fn the_less_loaded_of_two_wins() {
        let b = Balancer::new();
        let two = addrs(2);
        let _busy: Vec<_> = (0..5).map(|_| b.track(two[0])).collect();
        for _ in 0..20 {
            assert_eq!(b.pick(&two), Some(two[1]));
        }
    }
}
