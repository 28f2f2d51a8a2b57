//! `portcullis-injector`: the mutating admission webhook that adds `portcullis-init` and the
//! `portcullis-proxy` sidecar to pods in namespaces labelled `portcullis.dev/inject=enabled`.
//!
//! The library has two halves:
//! - pure, always built: [`values`] (annotation value parsers), [`config`], [`inject`] (the
//!   decision: pod + namespace annotations + config → JSONPatch + warnings) and [`review`]
//!   (AdmissionReview parsing and the response);
//! - [`server`] (feature `server`, on by default): HTTPS with certificate reload, metrics,
//!   namespace look-ups through the Kubernetes API.

pub mod app_security;
pub mod config;
pub mod decision;
pub mod exemptions;
pub mod inject;
pub mod overrides;
pub mod pod_security;
pub mod review;
pub mod values;

#[doc(hidden)]
pub mod fuzzing;

#[cfg(feature = "server")]
pub mod server;

pub use config::InjectorConfig;
pub use inject::{decide, Decision, NamespaceDefaults, Outcome, SkipReason};
pub use review::{
    encode_review, parse_review, respond, ParseError, ParsedReview, Reply, ReviewResult, Target,
};
