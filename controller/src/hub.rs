//! Where sources put changes in and proxies' streams take tables out.
//!
//! One [`ClusterState`] behind a mutex (changes are applied one batch at a time, off the async
//! runtime), and one `watch` channel per pod that someone has asked for or that has a table.
//! A change wakes only the channels of pods whose table changed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use portcullis_policy::service::ResolvedService;
use portcullis_policy::PodTable;
use portcullis_wire::{Line, Peers, PeersDelta, Services, ServicesDelta};
use tokio::sync::watch;

use crate::feed::{Feed, FeedUpdate};
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
    /// The peer-name version; every stream follows it.
    peers: watch::Sender<u64>,
    /// The Services version; every stream follows it.
    services: watch::Sender<u64>,
}

struct Inner {
    state: ClusterState,
    generation: u64,
    channels: HashMap<String, watch::Sender<Versioned>>,
    peer_feed: PeerFeed,
    service_feed: ServiceFeed,
}

/// Peer names by address. Every proxy needs every name (any pod may connect to it), but a name
/// changes only when a pod comes, goes or changes address: label changes, the frequent kind,
/// never reach this.
type PeerFeed = Feed<IpAddr, String>;

/// Every Service with a virtual IP, resolved to its backends, by `namespace/name`. Every proxy
/// receives the whole map: any pod may call any Service, and which backends its egress allows is
/// decided in the proxy against its own table (so a table change never resends Services).
type ServiceFeed = Feed<String, Arc<ResolvedService>>;

const FEED_LOG_LIMIT: usize = 65_536;

/// What a stream sends to bring a proxy's peer names up to date.
pub type PeerUpdate = FeedUpdate<IpAddr, String>;
/// What a stream sends to bring a proxy's Services up to date.
pub type ServiceUpdate = FeedUpdate<String, Arc<ResolvedService>>;

/// The `peers` / `peers_delta` line of an update.
pub fn peers_line(update: PeerUpdate) -> Line {
    match update {
        FeedUpdate::Full { version, entries } => Line::Peers(Peers {
            version,
            names: entries,
        }),
        FeedUpdate::Delta {
            version,
            set,
            remove,
        } => Line::PeersDelta(PeersDelta {
            version,
            set,
            remove,
        }),
    }
}

/// The `services` / `services_delta` line of an update.
pub fn services_line(update: ServiceUpdate) -> Line {
    match update {
        FeedUpdate::Full { version, entries } => Line::Services(Services {
            version,
            services: entries,
        }),
        FeedUpdate::Delta {
            version,
            set,
            remove,
        } => Line::ServicesDelta(ServicesDelta {
            version,
            set,
            remove,
        }),
    }
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
                peer_feed: Feed::new(FEED_LOG_LIMIT),
                service_feed: Feed::new(FEED_LOG_LIMIT),
            }),
            ready: watch::Sender::new(false),
            peers: watch::Sender::new(0),
            services: watch::Sender::new(0),
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
        let Inner {
            peer_feed, state, ..
        } = &mut *inner;
        let mut peers_changed = false;
        for ip in &applied.peers_touched {
            peers_changed |= peer_feed.record(*ip, state.peer_name(ip).cloned());
        }
        if peers_changed {
            self.peers.send_replace(inner.peer_feed.version());
        }
        let mut services_changed = false;
        for (key, resolved) in &applied.services_changed {
            services_changed |= inner.service_feed.record(key.clone(), resolved.clone());
        }
        if services_changed {
            self.services.send_replace(inner.service_feed.version());
        }
        metrics::gauge!(telemetry::GENERATION).set(inner.generation as f64);
        metrics::gauge!(telemetry::PODS).set(inner.state.pod_count() as f64);
        metrics::gauge!(telemetry::POLICIES).set(inner.state.policy_count() as f64);
        metrics::gauge!(telemetry::SERVICES).set(inner.service_feed.len() as f64);
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

    /// The peer-name version, to follow.
    pub fn peer_changes(&self) -> watch::Receiver<u64> {
        self.peers.subscribe()
    }

    /// What a stream that has sent version `since` (0: nothing yet) must send now, if anything.
    pub fn peers_since(&self, since: u64) -> Option<PeerUpdate> {
        self.lock().peer_feed.since(since)
    }

    /// The Services version, to follow.
    pub fn service_changes(&self) -> watch::Receiver<u64> {
        self.services.subscribe()
    }

    /// What a stream that has sent Services version `since` (0: nothing yet) must send now.
    pub fn services_since(&self, since: u64) -> Option<ServiceUpdate> {
        self.lock().service_feed.since(since)
    }

    /// The resolved Service `namespace/name`, as streamed.
    pub fn service(&self, key: &str) -> Option<Arc<ResolvedService>> {
        self.lock().service_feed.get(&key.to_string()).cloned()
    }

    pub fn service_count(&self) -> usize {
        self.lock().service_feed.len()
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

    /// ClusterNetworkPolicies in force and Nodes known: (valid CNPs, nodes).
    pub fn cnp_sizes(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.state.cnp_count(), inner.state.node_count())
    }

    /// The ClusterNetworkPolicies whose current version is invalid.
    pub fn invalid_cnps(&self) -> Vec<crate::state::InvalidCnp> {
        self.lock().state.invalid_cnps()
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

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_policy::PodInfo;

    fn pod(name: &str, ip: &str) -> PodInfo {
        PodInfo {
            namespace: "shop".into(),
            name: name.into(),
            labels: Default::default(),
            ips: vec![ip.parse().expect("ip")],
            host_ip: None,
            host_network: false,
            ports: Vec::new(),
            terminated: false,
        }
    }

    #[test]
    fn peer_names_travel_as_a_full_map_then_as_deltas() {
        let hub = Hub::new();
        hub.apply(vec![
            Change::Pod(pod("web", "10.0.0.1")),
            Change::Pod(pod("db", "10.0.0.2")),
        ]);
        let Some(PeerUpdate::Full {
            entries: peers,
            version: peers_version,
        }) = hub.peers_since(0)
        else {
            panic!("a new stream gets the whole map");
        };
        assert_eq!(peers.len(), 2);
        assert_eq!(peers[&"10.0.0.2".parse::<IpAddr>().unwrap()], "shop/db");
        assert_eq!(hub.peers_since(peers_version), None);

        // A label change names nobody new: no peer update at all.
        let mut relabelled = pod("web", "10.0.0.1");
        relabelled.labels.insert("app".into(), "web".into());
        hub.apply(vec![Change::Pod(relabelled)]);
        assert_eq!(hub.peers_since(peers_version), None);

        // A pod leaves and another takes a new address: a delta with just that.
        hub.apply(vec![
            Change::PodGone {
                namespace: "shop".into(),
                name: "db".into(),
            },
            Change::Pod(pod("cache", "10.0.0.3")),
        ]);
        let Some(PeerUpdate::Delta { set, remove, .. }) = hub.peers_since(peers_version) else {
            panic!("a stream that is up to date gets a delta");
        };
        assert_eq!(remove, vec!["10.0.0.2".parse::<IpAddr>().unwrap()]);
        assert_eq!(
            set.into_iter().collect::<Vec<_>>(),
            vec![("10.0.0.3".parse().unwrap(), "shop/cache".to_string())]
        );
    }
}
