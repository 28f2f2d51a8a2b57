//! The controller's ClusterRole, exactly: read-only on what it watches, TokenReview create, and
//! nothing else. A new right must be added here on purpose, with its reason in the manifest.

const RBAC: &str = include_str!("../../manifests/base/controller/rbac.yaml");

/// The `rules:` of the ClusterRole, as written.
fn rules() -> String {
    let role = RBAC.split("\n---\n").next().expect("the ClusterRole");
    let rules = role.split("\nrules:\n").nth(1).expect("rules");
    rules.trim_end().to_string()
}

#[test]
fn the_cluster_role_grants_reads_of_the_watched_kinds_and_token_reviews_only() {
    assert_eq!(
        rules(),
        r#"  - apiGroups: [""]
    resources: ["pods", "namespaces", "services", "nodes"]
    verbs: ["get", "list", "watch"]
  - apiGroups: ["discovery.k8s.io"]
    resources: ["endpointslices"]
    verbs: ["get", "list", "watch"]
  - apiGroups: ["networking.k8s.io"]
    resources: ["networkpolicies"]
    verbs: ["get", "list", "watch"]
  - apiGroups: ["policy.networking.k8s.io"]
    resources: ["clusternetworkpolicies"]
    verbs: ["get", "list", "watch"]
  - apiGroups: ["authentication.k8s.io"]
    resources: ["tokenreviews"]
    verbs: ["create"]"#
    );
    // Every watched resource is in it (the CNP watch's resource name included).
    for resource in [
        portcullis_controller::cnp_watch::CNPS,
        portcullis_controller::cnp_watch::NODES,
    ] {
        assert!(rules().contains(&format!("\"{resource}\"")), "{resource}");
    }
    assert!(rules().contains(portcullis_controller::cnp_watch::GROUP));
}
