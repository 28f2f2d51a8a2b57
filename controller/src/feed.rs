//! A map every proxy receives whole, then as deltas: peer names and Services.
//!
//! The current map, a version that grows by one per changed entry, and a bounded log of recent
//! changes, so that a stream can send what changed since its last update instead of the whole
//! map. A stream further behind than the log gets the whole map again.

use std::collections::{BTreeMap, VecDeque};

/// What a stream must send to bring a proxy's copy up to date.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedUpdate<K, V> {
    Full {
        version: u64,
        entries: BTreeMap<K, V>,
    },
    Delta {
        version: u64,
        set: BTreeMap<K, V>,
        remove: Vec<K>,
    },
}

impl<K, V> FeedUpdate<K, V> {
    pub fn version(&self) -> u64 {
        match self {
            FeedUpdate::Full { version, .. } | FeedUpdate::Delta { version, .. } => *version,
        }
    }
}

pub struct Feed<K, V> {
    entries: BTreeMap<K, V>,
    version: u64,
    /// (version, key, new value); bounded by `limit`.
    log: VecDeque<(u64, K, Option<V>)>,
    limit: usize,
}

impl<K: Ord + Clone, V: Clone + PartialEq> Feed<K, V> {
    pub fn new(limit: usize) -> Self {
        Feed {
            entries: BTreeMap::new(),
            version: 0,
            log: VecDeque::new(),
            limit,
        }
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.entries.get(key)
    }

    /// Sets (or with `None` removes) one entry; true when that changed anything.
    pub fn record(&mut self, key: K, now: Option<V>) -> bool {
        if self.entries.get(&key) == now.as_ref() {
            return false;
        }
        match &now {
            Some(v) => self.entries.insert(key.clone(), v.clone()),
            None => self.entries.remove(&key),
        };
        self.version += 1;
        self.log.push_back((self.version, key, now));
        if self.log.len() > self.limit {
            self.log.pop_front();
        }
        true
    }

    /// What a stream that has sent version `since` (0: nothing yet) must send now, if anything.
    pub fn since(&self, since: u64) -> Option<FeedUpdate<K, V>> {
        if since == self.version && since != 0 {
            return None;
        }
        let oldest_kept = self.log.front().map_or(self.version + 1, |(v, _, _)| *v);
        if since == 0 || since + 1 < oldest_kept || since > self.version {
            return Some(FeedUpdate::Full {
                version: self.version,
                entries: self.entries.clone(),
            });
        }
        let mut latest: BTreeMap<K, Option<V>> = BTreeMap::new();
        for (_, key, value) in self.log.iter().filter(|(v, _, _)| *v > since) {
            latest.insert(key.clone(), value.clone());
        }
        let mut set = BTreeMap::new();
        let mut remove = Vec::new();
        for (key, value) in latest {
            match value {
                Some(v) => {
                    set.insert(key, v);
                }
                None => remove.push(key),
            }
        }
        Some(FeedUpdate::Delta {
            version: self.version,
            set,
            remove,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_gets_the_whole_map_then_what_changed_then_the_whole_map_if_too_far_behind() {
        let mut f: Feed<u32, &str> = Feed::new(3);
        assert!(f.record(1, Some("a")));
        assert!(f.record(2, Some("b")));
        assert!(!f.record(2, Some("b")), "no change, no version");
        let Some(FeedUpdate::Full { version, entries }) = f.since(0) else {
            panic!("whole map first")
        };
        assert_eq!((version, entries.len()), (2, 2));
        assert_eq!(f.since(2), None);
        f.record(1, None);
        f.record(3, Some("c"));
        assert_eq!(
            f.since(2),
            Some(FeedUpdate::Delta {
                version: 4,
                set: [(3, "c")].into(),
                remove: vec![1],
            })
        );
        f.record(4, Some("d"));
        f.record(5, Some("e"));
        // The log holds versions 4..=6 only: a stream at 2 is too far behind.
        assert!(matches!(
            f.since(2),
            Some(FeedUpdate::Full { version: 6, .. })
        ));
        assert!(matches!(
            f.since(4),
            Some(FeedUpdate::Delta { version: 6, .. })
        ));
    }
}
