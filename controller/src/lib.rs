//! portcullis-controller: watches Namespaces, Pods and NetworkPolicies once, keeps every pod's
//! compiled table up to date incrementally, and streams each proxy its own pod's table.
//!
//! Where to look: what an event recompiles is `state.rs` (pure); how tables reach proxies is
//! `hub.rs` (per-pod channels) and `serve.rs` (the HTTP stream); where events come from is
//! `file_source.rs` (`--policy-dir`) or `kube_watch.rs` (the API server); who may read which
//! table is `token_review.rs`.

pub mod hub;
pub mod state;
pub mod telemetry;
