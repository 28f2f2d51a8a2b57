//! Flow records (issue 25): what this pod did, aggregated per (direction, protocol, peer, server
//! port, Service, verdict) with a count and the first and last time seen, written every
//! `--flow-summary-interval` as `flow_summary` lines (`portcullis_contract::log::FlowSummary`)
//! and once more at shutdown. `kubectl logs -c portcullis-proxy` is all `portcullis advise` needs.
//!
//! Every decision point records: relayed TCP both ways (Services included, on the backend the
//! connection went to), and every flow the queue judges (inbound and outbound queued TCP, UDP,
//! SCTP), denials included. Flows of other IP protocols (GRE, UDP-Lite, ...) have their audit
//! lines but no flow record: a NetworkPolicy cannot name them.
//!
//! **Bounded**: at most `--flow-records-max` keys per period; a flow with a new key beyond that
//! is counted in `portcullis_flow_records_dropped_total` and the period's `flow_records_dropped`
//! line (it is still enforced and audited). **Cheap on the data path**: the map is split in
//! [`SHARDS`] mutexes by peer address and port, each held for one map update; no allocation
//! beyond the key the caller already built, no I/O (lines are written by the emitter's task).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use metrics::Counter;
use portcullis_contract::log::{
    self, FlowDirection, FlowProtocol, FlowSummary, FlowVerdict, FlowsDropped, FLOWS_DROPPED,
    FLOWS_TARGET, FLOW_SUMMARY, LOG_SCHEMA,
};
use portcullis_policy::{Direction, Protocol};

use crate::audit::json;
use crate::telemetry::FLOW_RECORDS_DROPPED;

/// How many mutexes the map is split in.
pub const SHARDS: usize = 16;

/// What one flow record aggregates by.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub direction: FlowDirection,
    pub protocol: FlowProtocol,
    pub peer_ip: IpAddr,
    /// `namespace/name` of the peer pod, as the table knew the address when the flow was seen.
    pub peer_pod: Option<String>,
    /// The server's port (this pod's for ingress, the peer's for egress).
    pub port: u16,
    /// `namespace/name` of the Service, for a connection or flow to its ClusterIP.
    pub service: Option<String>,
    pub verdict: FlowVerdict,
}

impl FlowKey {
    /// The key of a flow of `protocol`, or `None` for a protocol no NetworkPolicy can name.
    pub fn new(
        direction: Direction,
        protocol: Protocol,
        peer_ip: IpAddr,
        port: u16,
        went_through: bool,
    ) -> Option<FlowKey> {
        let protocol = match protocol {
            Protocol::Tcp => FlowProtocol::Tcp,
            Protocol::Udp => FlowProtocol::Udp,
            Protocol::Sctp => FlowProtocol::Sctp,
            Protocol::Other(_) => return None,
        };
        Some(FlowKey {
            direction: crate::audit::flow_direction(direction),
            protocol,
            peer_ip: peer_ip.to_canonical(),
            peer_pod: None,
            port,
            service: None,
            verdict: if went_through {
                FlowVerdict::Allowed
            } else {
                FlowVerdict::Denied
            },
        })
    }

    pub fn with_peer_pod(mut self, peer_pod: Option<String>) -> Self {
        self.peer_pod = peer_pod;
        self
    }

    pub fn with_service(mut self, service: Option<String>) -> Self {
        self.service = service;
        self
    }

    fn shard(&self) -> usize {
        let ip = match self.peer_ip {
            IpAddr::V4(a) => u32::from(a) as usize,
            IpAddr::V6(a) => (u128::from(a) as usize) ^ ((u128::from(a) >> 64) as usize),
        };
        (ip ^ (ip >> 8) ^ usize::from(self.port)) % SHARDS
    }
}

/// A record's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowStats {
    pub count: u64,
    pub first_seen: SystemTime,
    pub last_seen: SystemTime,
}

/// What one period recorded.
#[derive(Debug, Default)]
pub struct Period {
    /// Sorted by key.
    pub records: Vec<(FlowKey, FlowStats)>,
    /// Flows not recorded because the bound was reached.
    pub dropped: u64,
}

/// The process-wide flow records of one pod.
pub struct FlowRecords {
    shards: Box<[Mutex<HashMap<FlowKey, FlowStats>>]>,
    /// Keys held in all shards together.
    keys: AtomicUsize,
    max: usize,
    dropped: AtomicU64,
    dropped_total: Counter,
    pod_namespace: String,
    pod: String,
}

impl FlowRecords {
    /// Records for pod `namespace/name`, at most `max` keys per period.
    pub fn new(pod_namespace: &str, pod: &str, max: usize) -> Self {
        FlowRecords {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            keys: AtomicUsize::new(0),
            max,
            dropped: AtomicU64::new(0),
            dropped_total: metrics::counter!(FLOW_RECORDS_DROPPED),
            pod_namespace: pod_namespace.to_string(),
            pod: pod.to_string(),
        }
    }

    /// Counts one connection or flow.
    pub fn record(&self, key: FlowKey, now: SystemTime) {
        let mut shard = lock(&self.shards[key.shard()]);
        if let Some(stats) = shard.get_mut(&key) {
            stats.count += 1;
            stats.first_seen = stats.first_seen.min(now);
            stats.last_seen = stats.last_seen.max(now);
            return;
        }
        // Reserve a slot before inserting, so that the bound holds across shards.
        if self.keys.fetch_add(1, Ordering::Relaxed) >= self.max {
            self.keys.fetch_sub(1, Ordering::Relaxed);
            drop(shard);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            self.dropped_total.increment(1);
            return;
        }
        shard.insert(
            key,
            FlowStats {
                count: 1,
                first_seen: now,
                last_seen: now,
            },
        );
    }

    /// Ends the period: everything recorded since the last call, and the drop count.
    pub fn take(&self) -> Period {
        let mut records = Vec::new();
        for shard in self.shards.iter() {
            let taken = std::mem::take(&mut *lock(shard));
            self.keys.fetch_sub(taken.len(), Ordering::Relaxed);
            records.extend(taken);
        }
        records.sort_by(|a, b| a.0.cmp(&b.0));
        Period {
            records,
            dropped: self.dropped.swap(0, Ordering::Relaxed),
        }
    }

    /// Ends the period and writes its `flow_summary` lines, then a `flow_records_dropped` line
    /// when the bound dropped some.
    pub fn emit(&self) {
        let period = self.take();
        if !tracing::enabled!(target: FLOWS_TARGET, tracing::Level::INFO) {
            return;
        }
        for line in self.summaries(&period) {
            json::write(json::Level::Info, FLOWS_TARGET, &line);
        }
        if let Some(line) = self.dropped_line(&period) {
            json::write(json::Level::Warn, FLOWS_TARGET, &line);
        }
    }

    /// The `flow_summary` lines of a period.
    pub fn summaries(&self, period: &Period) -> Vec<FlowSummary> {
        period
            .records
            .iter()
            .map(|(k, s)| {
                let (peer_namespace, peer_pod) =
                    match k.peer_pod.as_deref().and_then(|p| p.split_once('/')) {
                        Some((ns, name)) => (Some(ns.to_string()), Some(name.to_string())),
                        None => (None, None),
                    };
                FlowSummary {
                    event: FLOW_SUMMARY.to_string(),
                    schema: LOG_SCHEMA,
                    pod_namespace: self.pod_namespace.clone(),
                    pod: self.pod.clone(),
                    direction: k.direction,
                    protocol: k.protocol,
                    peer_ip: k.peer_ip,
                    peer_namespace,
                    peer_pod,
                    port: k.port,
                    service: k.service.clone(),
                    verdict: k.verdict,
                    count: s.count,
                    first_seen: log::seconds(s.first_seen),
                    last_seen: log::seconds(s.last_seen),
                }
            })
            .collect()
    }

    /// The `flow_records_dropped` line of a period, if the bound dropped anything.
    pub fn dropped_line(&self, period: &Period) -> Option<FlowsDropped> {
        (period.dropped > 0).then(|| FlowsDropped {
            event: FLOWS_DROPPED.to_string(),
            schema: LOG_SCHEMA,
            pod_namespace: self.pod_namespace.clone(),
            pod: self.pod.clone(),
            dropped: period.dropped,
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Writes the records every `interval` (the first after one interval), until the process ends;
/// [`crate::run`] writes the last ones at shutdown.
pub fn spawn_emitter(records: Arc<FlowRecords>, interval: Duration) {
    tokio::spawn(async move {
        let start = tokio::time::Instant::now() + interval;
        let mut tick = tokio::time::interval_at(start, interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            records.emit();
        }
    });
}

#[cfg(test)]
mod tests;
