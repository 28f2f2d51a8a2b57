//! Kubernetes `networking.k8s.io/v1` NetworkPolicy semantics, with no I/O.
//!
//! Objects go in ([`manifest`] parses them from YAML/JSON text, [`Cluster`] holds them), compiled
//! per-pod tables come out ([`compile`]), and a table answers "may this peer IP reach this port?"
//! with a [`Verdict`] that says why. Label selectors are resolved to IP sets at compile time, so a
//! lookup never evaluates a selector.
//!
//! Where to look: the allow/deny decision is [`PodTable::check`] in `table.rs` (the Admin tier
//! of ClusterNetworkPolicy, then NetworkPolicy v1, then the Baseline tier); how NetworkPolicy
//! objects become those tables is `compile.rs`, ClusterNetworkPolicies `cnp/resolve.rs`; what
//! counts as a valid object is `validate.rs` and `cnp/validate.rs`.

pub mod cluster;
pub mod cnp;
pub mod compile;
pub mod conformance;
pub mod dns;
pub mod error;
pub mod ipset;
pub mod lint;
pub mod manifest;
pub mod matrix;
pub mod ports;
pub mod protection;
pub mod selector;
pub mod service;
pub mod staged;
pub mod synthetic;
pub mod table;
pub mod validate;
pub mod verdict;

pub use cluster::{Cluster, NamespaceInfo, PodInfo};
pub use compile::{compile, CompiledCluster};
pub use error::{ObjectError, ObjectRef};
pub use ipset::IpSet;
pub use matrix::{Matrix, Probe, ProbeResult};
pub use ports::{PortRange, Protocol};
pub use service::{ServiceInfo, ServiceMap};
pub use staged::{Checked, Effect, StagedTables, StagedVerdict};
pub use table::{CompiledRule, DirectionTable, PodTable, TierRule};
pub use verdict::{Direction, DnsNote, Reason, Verdict};
