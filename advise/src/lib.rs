//! `portcullis advise`: from observed traffic to least-privilege NetworkPolicies.
//!
//! 1. [`flows`]: read the proxies' `flow_summary` lines back from their logs.
//! 2. [`resolve`]: each record's pod and peer become workloads (pods of one namespace sharing
//!    their stable labels, [`workload`]), Service backends, nodes or outside addresses.
//! 3. [`build`]: one NetworkPolicy per workload, peers by namespace and stable labels, ports by
//!    name where the server declares one, outside addresses as aggregated ipBlocks ([`cidr`]),
//!    DNS to the cluster DNS as the given cluster labels it.
//! 4. [`prove`]: the engine decides every observed flow under the cluster's policies plus the
//!    advised ones (every one must be allowed), and lists what else they allow, the flows seen
//!    once and the flows seen only early in the window.

pub mod build;
pub mod cidr;
pub mod flows;
pub mod prove;
pub mod resolve;
pub mod workload;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use portcullis_contract::log::FlowSummary;
use portcullis_policy::Cluster;

pub use prove::Proof;
pub use resolve::{Observation, Skipped};

/// What the user chose.
#[derive(Debug, Clone)]
pub struct Options {
    /// Annotate every policy `portcullis.dev/staged: "true"`: evaluated, not enforced.
    pub staged: bool,
    /// Also write a default deny (ingress and egress) per namespace that gets a policy.
    pub default_deny: bool,
    /// Allow DNS to the cluster DNS for every advised workload, observed or not (a cached
    /// lookup may not have happened in the window).
    pub dns: bool,
    pub widen: cidr::Widen,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            staged: false,
            default_deny: false,
            dns: true,
            widen: cidr::Widen::default(),
        }
    }
}

/// The advised policies, the proof, and what was left out and why.
#[derive(Debug)]
pub struct Advice {
    pub policies: Vec<NetworkPolicy>,
    pub observations: Vec<Observation>,
    pub skipped: Vec<Skipped>,
    pub warnings: Vec<String>,
    pub proof: Proof,
}

/// Advises policies for `cluster` from `flows`, and proves them.
pub fn advise(cluster: &Cluster, flows: &[FlowSummary], options: &Options) -> Advice {
    let index = workload::Index::new(cluster);
    let resolved = resolve::resolve_all(&index, flows);
    let built = build::build(&index, &resolved.observations, options);
    let mut warnings = resolved.warnings;
    warnings.extend(built.warnings);
    let proof = prove::prove(cluster, &built.policies, &resolved.observations, flows);
    let mut policies = built.policies;
    if let Some((start, end)) = &proof.window {
        let note = format!("{} flow records, {start} to {end}", flows.len());
        for p in &mut policies {
            p.metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(
                    portcullis_contract::keys::ADVISED_FROM.to_string(),
                    note.clone(),
                );
        }
    }
    Advice {
        policies,
        observations: resolved.observations,
        skipped: resolved.skipped,
        warnings,
        proof,
    }
}
