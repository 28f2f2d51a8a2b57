//! Where sources put changes in and proxies' streams take tables out.
//!
//! One [`ClusterState`] behind a mutex (changes are applied one batch at a time, off the async
//! runtime), and one `watch` channel per pod that someone has asked for or that has a table.
//! A change wakes only the channels of pods whose table changed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use portcullis_policy::PodTable;
use tokio::sync::watch;

use crate::state::{Applied, Change, ClusterState};
use crate::telemetry;

/// A pod's table as served, with the controller-wide generation at which it last changed.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned {
    pub generation: u64,
    /// `None`: the controller knows no such pod (yet).
    pub table: Option<Arc<PodTable>>,
}

pub struct Hub {
    inner: Mutex<Inner>,
    ready: watch::Sender<bool>,
}

struct Inner {
    state: ClusterState,
    generation: u64,
    channels: HashMap<String, watch::Sender<Versioned>>,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl Hub {
    pub fn new() -> Self {
        Hub {
            inner: Mutex::new(Inner {
                state: ClusterState::new(),
                generation: 0,
                channels: HashMap::new(),
            }),
            ready: watch::Sender::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while applying would leave the state half-updated; the tables already sent stay
        // valid, so keep serving rather than poisoning every stream.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies a batch and notifies the proxies whose table changed. CPU-bound (a relist
    /// recompiles everything): call it from a blocking thread.
    pub fn apply(&self, changes: Vec<Change>) -> Applied {
        let mut inner = self.lock();
        let applied = inner.state.apply(changes);
        for e in &applied.rejected {
            tracing::error!(event = "object_rejected", error = %e, "left out; its last valid version, if any, stays in force");
            metrics::counter!(telemetry::OBJECTS_REJECTED).increment(1);
        }
        if !applied.changed.is_empty() {
            inner.generation += 1;
            let generation = inner.generation;
            let Inner { channels, .. } = &mut *inner;
            for (key, table) in &applied.changed {
                let versioned = Versioned {
                    generation,
                    table: table.clone(),
                };
                match (channels.get(key), table) {
                    (Some(tx), _) => {
                        tx.send_replace(versioned);
                    }
                    (None, Some(_)) => {
                        channels.insert(key.clone(), watch::Sender::new(versioned));
                    }
                    (None, None) => {}
                }
                if table.is_none() {
                    // Keep the channel only while a proxy still listens on it.
                    if channels.get(key).is_some_and(|tx| tx.receiver_count() == 0) {
                        channels.remove(key);
                    }
                }
            }
        }
        metrics::gauge!(telemetry::GENERATION).set(inner.generation as f64);
        metrics::gauge!(telemetry::PODS).set(inner.state.pod_count() as f64);
        metrics::gauge!(telemetry::POLICIES).set(inner.state.policy_count() as f64);
        metrics::counter!(telemetry::TABLES_CHANGED).increment(applied.changed.len() as u64);
        applied
    }

    /// The stream of one pod's table: its current version at once, then every change.
    pub fn subscribe(&self, namespace: &str, pod: &str) -> watch::Receiver<Versioned> {
        let key = format!("{namespace}/{pod}");
        let mut inner = self.lock();
        let generation = inner.generation;
        let current = inner.state.table(&key).cloned();
        inner
            .channels
            .entry(key)
            .or_insert_with(|| {
                watch::Sender::new(Versioned {
                    generation,
                    table: current,
                })
            })
            .subscribe()
    }

    /// Drops channels of pods that are gone and that nobody listens to any more.
    pub fn prune(&self) {
        let mut inner = self.lock();
        let Inner {
            channels, state, ..
        } = &mut *inner;
        channels.retain(|key, tx| tx.receiver_count() > 0 || state.table(key).is_some());
    }

    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    pub fn table(&self, key: &str) -> Option<Arc<PodTable>> {
        self.lock().state.table(key).cloned()
    }

    /// Counts, for logs and the admin endpoint: (namespaces, pods, policies, tables).
    pub fn sizes(&self) -> (usize, usize, usize, usize) {
        let inner = self.lock();
        (
            inner.state.namespace_count(),
            inner.state.pod_count(),
            inner.state.policy_count(),
            inner.state.tables().count(),
        )
    }

    /// Called by the source once it holds a complete view of the cluster (every kind listed).
    pub fn mark_ready(&self) {
        self.ready.send_replace(true);
    }

    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    pub fn ready_changes(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }
}
