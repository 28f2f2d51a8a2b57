//! The pod's current policy table, swapped atomically as policy changes.
//!
//! The accept path reads it with one lock-free `load`; sources publish new tables with
//! [`PolicyStore::publish`], which also wakes every established connection so that it can check
//! itself against the new table.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::{ArcSwap, ArcSwapOption};
use portcullis_policy::service::{Frontend, FrontendIndex, ResolvedService, ServiceMap};
use portcullis_policy::{PodTable, Protocol};
use serde::Serialize;
use tokio::sync::watch;

/// One loaded table and where it came from.
#[derive(Debug, Serialize)]
pub struct Snapshot {
    /// Increases by one with every table that differs from the one before (this proxy's own
    /// count: it never goes back, whichever controller replica the proxy talks to).
    pub generation: u64,
    /// The controller's generation of this table, when it came from a controller; each replica
    /// counts its own, so it says which version of the cluster a replica had compiled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_generation: Option<u64>,
    /// `dir:/path` or the controller URL.
    pub source: String,
    /// Seconds since the Unix epoch.
    pub loaded_at: f64,
    pub table: Arc<PodTable>,
}

/// Every Service with a virtual IP and the index from `ClusterIP:port/protocol` to its port.
#[derive(Debug, Default)]
pub struct Services {
    pub map: ServiceMap,
    index: FrontendIndex,
}

impl Services {
    pub fn new(map: ServiceMap) -> Self {
        let index = FrontendIndex::new(&map);
        Services { map, index }
    }

    pub fn from_resolved(services: &BTreeMap<String, Arc<ResolvedService>>) -> Self {
        Services::new(ServiceMap {
            services: services
                .iter()
                .map(|(k, v)| (k.clone(), ResolvedService::clone(v)))
                .collect(),
        })
    }

    /// The Service port behind `ip:port` (TCP), when `ip` is a virtual IP serving that port.
    pub fn frontend(&self, ip: IpAddr, port: u16) -> Option<Frontend<'_>> {
        self.frontend_for(ip, port, Protocol::Tcp)
    }

    /// The Service port behind `ip:port/protocol`, when `ip` is a virtual IP serving it.
    pub fn frontend_for(&self, ip: IpAddr, port: u16, protocol: Protocol) -> Option<Frontend<'_>> {
        self.index.get(&self.map, ip, port, protocol)
    }

    pub fn len(&self) -> usize {
        self.map.services.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.services.is_empty()
    }
}

pub struct PolicyStore {
    current: ArcSwapOption<Snapshot>,
    /// Peer names: streamed by the controller beside the tables, or compiled from
    /// `--policy-dir` beside the table (tables carry none).
    peer_names: ArcSwap<BTreeMap<IpAddr, String>>,
    /// Services, from the controller or the policy directory.
    services: ArcSwap<Services>,
    changed: watch::Sender<u64>,
    stale: std::sync::atomic::AtomicBool,
}

impl Default for PolicyStore {
    fn default() -> Self {
        Self::new()
    }
}

impl PolicyStore {
    pub fn new() -> Self {
        PolicyStore {
            current: ArcSwapOption::empty(),
            peer_names: ArcSwap::default(),
            services: ArcSwap::default(),
            changed: watch::channel(0).0,
            stale: Default::default(),
        }
    }

    /// The table new connections are decided with; `None` until the first one is loaded.
    #[inline]
    pub fn current(&self) -> Option<Arc<Snapshot>> {
        self.current.load_full()
    }

    /// The pod (`namespace/name`) that owns a peer address, for audit lines and metrics, from
    /// the one place peer names are kept, whichever source filled it. (`_table` is no longer
    /// read: the names travel beside the tables; kept so that callers stay as they are.)
    pub fn peer_name(&self, ip: IpAddr) -> Option<String> {
        self.peer_names.load().get(&ip.to_canonical()).cloned()
    }

    pub fn set_peer_names(&self, names: Arc<BTreeMap<IpAddr, String>>) {
        self.peer_names.store(names);
    }

    /// The Services new connections are resolved with (one lock-free load).
    #[inline]
    pub fn services(&self) -> Arc<Services> {
        self.services.load_full()
    }

    /// Installs a new set of Services for new connections; established ones keep their backend.
    pub fn set_services(&self, services: Services) {
        metrics::gauge!(crate::telemetry::SERVICES).set(services.len() as f64);
        self.services.store(Arc::new(services));
    }

    pub fn generation(&self) -> u64 {
        self.current.load().as_ref().map_or(0, |s| s.generation)
    }

    /// Installs `table` unless it equals the current one. Returns the new generation when it
    /// changed anything.
    pub fn publish(
        &self,
        table: Arc<PodTable>,
        source: &str,
        source_generation: Option<u64>,
    ) -> Option<u64> {
        let previous = self.current.load_full();
        if let Some(prev) = &previous {
            if prev.table == table {
                return None;
            }
        }
        let generation = previous.as_ref().map_or(0, |p| p.generation) + 1;
        let loaded_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.current.store(Some(Arc::new(Snapshot {
            generation,
            source_generation,
            source: source.to_string(),
            loaded_at,
            table,
        })));
        metrics::gauge!("portcullis_policy_generation").set(generation as f64);
        metrics::gauge!("portcullis_policy_last_reload_timestamp_seconds").set(loaded_at);
        self.changed.send_replace(generation);
        Some(generation)
    }

    /// Wakes when a new table is published.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Whether the source could not refresh the table lately (the last good table still serves).
    pub fn is_stale(&self) -> bool {
        self.stale.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn set_stale(&self, stale: bool) {
        self.stale
            .store(stale, std::sync::atomic::Ordering::Relaxed);
        metrics::gauge!("portcullis_policy_stale").set(if stale { 1.0 } else { 0.0 });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(name: &str) -> Arc<PodTable> {
        Arc::new(PodTable::unrestricted("x", name, vec![], None))
    }

    #[test]
    fn identical_tables_do_not_bump_the_generation() {
        let store = PolicyStore::new();
        assert!(store.current().is_none());
        assert_eq!(store.publish(table("a"), "test", None), Some(1));
        assert_eq!(store.publish(table("a"), "test", None), None);
        assert_eq!(store.publish(table("b"), "test", None), Some(2));
        assert_eq!(store.generation(), 2);
    }

    #[test]
    fn subscribers_see_each_new_generation() {
        let store = PolicyStore::new();
        let mut rx = store.subscribe();
        store.publish(table("a"), "test", None);
        assert!(rx.has_changed().expect("open"));
        assert_eq!(*rx.borrow_and_update(), 1);
        store.publish(table("a"), "test", None);
        assert!(!rx.has_changed().expect("open"));
    }
}
