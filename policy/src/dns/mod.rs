//! Egress to DNS names (ClusterNetworkPolicy `domainNames`): the name patterns a rule holds
//! ([`DomainPattern`]) and what a pod learned from its own lookups ([`LearnedNames`]), which
//! [`crate::table::PodTable::check_learned`] consults through the [`Learned`] view.
//!
//! Pure: time is passed in (`now`), nothing is read from the network here. The proxy feeds
//! [`LearnedNames`] from the answers it trusts (`docs/dns-policy.md`).

mod learned;
mod pattern;

pub use learned::{
    Learned, LearnedEntry, LearnedLimits, LearnedNames, NoLearned, MAX_IPS_PER_NAME, MIN_TTL,
};
pub use pattern::{normalize, DomainPattern};
