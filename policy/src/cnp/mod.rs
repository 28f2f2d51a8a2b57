//! ClusterNetworkPolicy (`policy.networking.k8s.io/v1alpha2`, sig-network's network-policy-api):
//! the admin tiers evaluated around NetworkPolicy v1.
//!
//! - [`types`]: the object as written (serde, strict about unknown fields).
//! - [`validate()`]: the CRD's schema and CEL rules → a [`ValidCnp`] or every [`CnpError`].
//! - [`eval`]: the tier algorithm as pure functions over resolved facts, the reference the
//!   compiled tables must agree with.
//! - [`resolve`]: peers to addresses, and each pod's tier rules in evaluation order (what
//!   [`crate::compile()`] puts in the tables).
//!
//! `v1alpha1` AdminNetworkPolicy / BaselineAdminNetworkPolicy objects are not read.

pub mod error;
pub mod eval;
pub mod model;
pub mod resolve;
pub mod types;
pub mod validate;

pub use error::CnpError;
pub use model::{Action, Peer, PodSet, PortMatch, Rule, Tier, ValidCnp};
pub use resolve::{resolve_cnp, ResolvedCnp};
pub use types::{parse, ClusterNetworkPolicy, ParseError, API_VERSION, KIND};
pub use validate::{validate, Mode};
