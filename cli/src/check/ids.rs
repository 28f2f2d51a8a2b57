//! Stable check ids: each line of `portcullis check` carries one, and `docs/checks.md` has a
//! section per id (`see docs/checks.md#<id>` under every warning and failure). Ids are part of
//! the command's interface (`-o json`): never rename one; retire it and add another.

/// One check: its stable id and the category it is printed under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Id {
    pub id: &'static str,
    pub category: &'static str,
}

const fn id(id: &'static str, category: &'static str) -> Id {
    Id { id, category }
}

const API: &str = "kubernetes-api";
const PRE: &str = "pre-install";
const CONTROL: &str = "control-plane";
const WEBHOOK: &str = "webhook";
const MESHES: &str = "other-meshes";
const POD_SECURITY: &str = "pod-security";
const DATA: &str = "data-plane";
const PROXIES: &str = "proxies";
const NODE_GUARD_CATEGORY: &str = "node-guard";
const CNP: &str = "cluster-network-policy";

pub const KUBECONFIG: Id = id("pc-kubeconfig", API);
pub const API_REACHABLE: Id = id("pc-api-reachable", API);
pub const API_VERSION: Id = id("pc-api-version", API);
pub const CHECK_TIMEOUT: Id = id("pc-check-timeout", API);
pub const NAMESPACES_READABLE: Id = id("pc-namespaces-readable", API);
pub const INSTALL_RBAC: Id = id("pc-install-rbac", PRE);
pub const SYSTEM_NAMESPACE_FREE: Id = id("pc-system-namespace-free", PRE);
pub const NAMESPACES_LABELLED: Id = id("pc-namespaces-labelled", PRE);
pub const SYSTEM_NAMESPACE: Id = id("pc-system-namespace", CONTROL);
pub const CONTROL_PLANE_READY: Id = id("pc-control-plane-ready", CONTROL);
pub const WEBHOOK_EXISTS: Id = id("pc-webhook-exists", WEBHOOK);
pub const WEBHOOK_SERVICE: Id = id("pc-webhook-service", WEBHOOK);
pub const WEBHOOK_CA_BUNDLE: Id = id("pc-webhook-ca-bundle", WEBHOOK);
pub const WEBHOOK_CA_SECRET: Id = id("pc-webhook-ca-secret", WEBHOOK);
pub const WEBHOOK_FAIL_OPEN: Id = id("pc-webhook-fail-open", WEBHOOK);
pub const OTHER_MESHES: Id = id("pc-other-meshes", MESHES);
pub const POD_SECURITY_ENFORCE: Id = id("pc-pod-security-enforce", POD_SECURITY);
pub const POD_SECURITY_WARN: Id = id("pc-pod-security-warn", POD_SECURITY);
pub const PODS_PROTECTED: Id = id("pc-pods-protected", DATA);
pub const PODS_INJECTED: Id = id("pc-pods-injected", DATA);
pub const PROXY_VERSION: Id = id("pc-proxy-version", DATA);
pub const POD_EXEMPTIONS: Id = id("pc-pod-exemptions", DATA);
pub const CONTROLLER_STATUS: Id = id("pc-controller-status", PROXIES);
pub const PROXY_READY: Id = id("pc-proxy-ready", PROXIES);
pub const PROXY_CURRENT: Id = id("pc-proxy-current", PROXIES);
pub const NODE_GUARD: Id = id("pc-node-guard", NODE_GUARD_CATEGORY);
pub const NODE_NET_RAW: Id = id("pc-node-net-raw", NODE_GUARD_CATEGORY);
pub const CNP_CRD: Id = id("pc-cnp-crd", CNP);
pub const CNP_WATCHED: Id = id("pc-cnp-watched", CNP);

/// Every id, for the documentation's test.
#[cfg(test)]
pub const ALL: [Id; 29] = [
    KUBECONFIG,
    API_REACHABLE,
    API_VERSION,
    CHECK_TIMEOUT,
    NAMESPACES_READABLE,
    INSTALL_RBAC,
    SYSTEM_NAMESPACE_FREE,
    NAMESPACES_LABELLED,
    SYSTEM_NAMESPACE,
    CONTROL_PLANE_READY,
    WEBHOOK_EXISTS,
    WEBHOOK_SERVICE,
    WEBHOOK_CA_BUNDLE,
    WEBHOOK_CA_SECRET,
    WEBHOOK_FAIL_OPEN,
    OTHER_MESHES,
    POD_SECURITY_ENFORCE,
    POD_SECURITY_WARN,
    PODS_PROTECTED,
    PODS_INJECTED,
    PROXY_VERSION,
    POD_EXEMPTIONS,
    CONTROLLER_STATUS,
    PROXY_READY,
    PROXY_CURRENT,
    NODE_GUARD,
    NODE_NET_RAW,
    CNP_CRD,
    CNP_WATCHED,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_prefixed_and_each_has_a_section_in_the_docs() {
        let docs = include_str!("../../../docs/checks.md");
        let mut seen = std::collections::BTreeSet::new();
        for Id { id, .. } in ALL {
            assert!(id.starts_with("pc-"), "{id}");
            assert!(seen.insert(id), "{id} twice");
            // A Markdown heading whose anchor is the id itself.
            assert!(
                docs.lines().any(|l| l == format!("## {id}")),
                "docs/checks.md has no section `## {id}`"
            );
        }
    }
}
