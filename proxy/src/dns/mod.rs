//! Learning, per pod and from the pod's own lookups, which addresses its `domainNames` rules
//! allow (docs/dns-policy.md).
//!
//! The init rules send the pod's outbound DNS queries (UDP port 53, every datagram) and the
//! replies conntrack ties to them to NFQUEUE `DNS_NFQUEUE`; [`reader`] reads that queue. A query
//! is recorded ([`Tracker::on_query`]: id, question, 5-tuple) and then judged as any flow; an
//! answer teaches only when it comes from a trusted resolver (the `kube-system/kube-dns`
//! Service's ClusterIPs and endpoints, and `--dns-resolvers`), on the flow the query opened,
//! with the query's id and question ([`Tracker::on_answer`]). Its A/AAAA records (following
//! CNAME chains inside the response) are learned for names the pod's Admin `domainNames` rules
//! allow, and only then is the answer's verdict issued: the connect that follows the answer
//! cannot race it.
//!
//! Parsing: `hickory-proto` (already the proxy's DNS codec, see `crate::resolve`).

pub mod reader;
pub mod tracker;

pub use tracker::{AnswerOutcome, Ignored, Tracker};

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long after its TTL a learned address still counts for a flow already open when a new
/// table re-judges it (until then, or until the memory bound evicts the pair).
pub const OPEN_FLOW_GRACE: Duration = Duration::from_secs(24 * 3600);

use portcullis_policy::dns::{LearnedLimits, LearnedNames};

/// Learned DNS names of this pod, shared by the DNS reader (writes) and every decision (reads).
pub struct DnsState {
    tracker: Mutex<Tracker>,
    /// `--dns-resolvers`: trusted besides the kube-dns Service.
    pub resolvers: Vec<IpAddr>,
}

impl DnsState {
    pub fn new(resolvers: Vec<IpAddr>, limits: LearnedLimits) -> Self {
        DnsState {
            tracker: Mutex::new(Tracker::new(limits)),
            resolvers,
        }
    }

    /// Runs `f` with the tracker (a poisoned lock still holds consistent data: every update
    /// is complete before it can panic).
    pub fn with<R>(&self, f: impl FnOnce(&mut Tracker) -> R) -> R {
        let mut guard = match self.tracker.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    /// What `/policy` shows: every learned name, its addresses and seconds to expiry.
    pub fn snapshot(&self) -> serde_json::Value {
        let now = Instant::now();
        self.with(|t| learned_json(t.learned(), now))
    }
}

fn learned_json(learned: &LearnedNames, now: Instant) -> serde_json::Value {
    let names: Vec<serde_json::Value> = learned
        .entries()
        .into_iter()
        .map(|(name, entries)| {
            let ips: Vec<serde_json::Value> = entries
                .iter()
                .map(|e| {
                    serde_json::json!({
                        "ip": e.ip,
                        "expires_in_s": e.expires.saturating_duration_since(now).as_secs(),
                    })
                })
                .collect();
            serde_json::json!({ "name": &*name, "addresses": ips })
        })
        .collect();
    serde_json::json!({
        "names": names,
        "pairs": learned.len(),
        "max_pairs": learned.limits().max_entries,
        "evictions": learned.evictions(),
    })
}
