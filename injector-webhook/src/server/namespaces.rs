//! Namespace annotations (defaults for the namespace's pods), read through the Kubernetes API
//! with a short timeout and a small time-bounded cache. Needs RBAC `get` on `namespaces`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;

use crate::inject::{NamespaceDefaults, NamespaceMeta};

/// Where namespace annotations come from.
pub enum NamespaceSource {
    /// Look-ups turned off: no namespace defaults, no warning.
    Disabled,
    /// No API access (reason given at start-up): every injection carries a warning.
    Unavailable(String),
    /// A fixed map, for tests and local runs.
    Static(HashMap<String, NamespaceMeta>),
    /// Through the API server.
    Api(Box<ApiNamespaces>),
}

impl NamespaceSource {
    pub async fn defaults(&self, namespace: Option<&str>) -> NamespaceDefaults {
        let Some(ns) = namespace else {
            return match self {
                NamespaceSource::Disabled => NamespaceDefaults::Disabled,
                _ => NamespaceDefaults::Unavailable("request has no namespace".to_string()),
            };
        };
        match self {
            NamespaceSource::Disabled => NamespaceDefaults::Disabled,
            NamespaceSource::Unavailable(why) => NamespaceDefaults::Unavailable(why.clone()),
            NamespaceSource::Static(map) => {
                NamespaceDefaults::Known(map.get(ns).cloned().unwrap_or_default())
            }
            NamespaceSource::Api(api) => api.defaults(ns).await,
        }
    }
}

/// What the injector keeps of a namespace: only our annotations (keeps the cache small: no
/// last-applied-configuration) and the Pod Security `enforce` label.
fn namespace_meta(meta: ObjectMeta) -> NamespaceMeta {
    NamespaceMeta {
        annotations: meta
            .annotations
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| k.starts_with(portcullis_contract::keys::PREFIX))
            .collect(),
        pod_security_enforce: meta
            .labels
            .unwrap_or_default()
            .remove(crate::pod_security::ENFORCE_LABEL),
    }
}

/// Why a namespace's annotations could not be read (cached briefly, like an answer).
#[derive(Debug, Clone, thiserror::Error)]
pub enum LookupError {
    #[error("reading namespace {ns}: {error}")]
    Api { ns: String, error: Arc<kube::Error> },
    #[error(
        "reading namespace {ns}: timed out after {}",
        portcullis_contract::format_duration(*.timeout)
    )]
    Timeout { ns: String, timeout: Duration },
}

type Lookup = Result<NamespaceMeta, LookupError>;
type CacheEntry = (Instant, Lookup);

/// `GET /api/v1/namespaces/{name}` (metadata only), cached.
pub struct ApiNamespaces {
    api: Api<Namespace>,
    timeout: Duration,
    ttl: Duration,
    error_ttl: Duration,
    cache: Mutex<HashMap<String, CacheEntry>>,
}

/// Entries kept at most; past this, expired entries are dropped, then everything.
const MAX_ENTRIES: usize = 4096;

impl ApiNamespaces {
    pub fn new(client: kube::Client, timeout: Duration, ttl: Duration) -> Self {
        ApiNamespaces {
            api: Api::all(client),
            timeout,
            ttl,
            error_ttl: Duration::from_secs(5).min(ttl),
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, ns: &str) -> Option<Lookup> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let (at, value) = cache.get(ns)?;
        let ttl = if value.is_ok() {
            self.ttl
        } else {
            self.error_ttl
        };
        (at.elapsed() < ttl).then(|| value.clone())
    }

    fn store(&self, ns: &str, value: Lookup) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_ENTRIES {
            let ttl = self.ttl;
            cache.retain(|_, (at, _)| at.elapsed() < ttl);
            if cache.len() >= MAX_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(ns.to_string(), (Instant::now(), value));
    }

    pub async fn defaults(&self, ns: &str) -> NamespaceDefaults {
        let result = match self.cached(ns) {
            Some(hit) => {
                metrics::counter!(crate::server::metrics::NAMESPACE_LOOKUPS, "result" => "cached")
                    .increment(1);
                hit
            }
            None => {
                let fetched =
                    match tokio::time::timeout(self.timeout, self.api.get_metadata(ns)).await {
                        Ok(Ok(meta)) => Ok(namespace_meta(meta.metadata)),
                        // The pod's namespace exists (the API server checked); a 404 here means a
                        // race with deletion: no defaults.
                        Ok(Err(kube::Error::Api(status))) if status.code == 404 => {
                            Ok(NamespaceMeta::default())
                        }
                        Ok(Err(e)) => Err(LookupError::Api {
                            ns: ns.to_string(),
                            error: Arc::new(e),
                        }),
                        Err(_) => Err(LookupError::Timeout {
                            ns: ns.to_string(),
                            timeout: self.timeout,
                        }),
                    };
                let label = if fetched.is_ok() { "fetched" } else { "error" };
                metrics::counter!(crate::server::metrics::NAMESPACE_LOOKUPS, "result" => label)
                    .increment(1);
                if let Err(e) = &fetched {
                    tracing::warn!(namespace = ns, error = %e, "namespace look-up failed");
                }
                self.store(ns, fetched.clone());
                fetched
            }
        };
        match result {
            Ok(meta) => NamespaceDefaults::Known(meta),
            Err(e) => NamespaceDefaults::Unavailable(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn keeps_our_annotations_and_the_pod_security_enforce_label_only() {
        let kv = |pairs: &[(&str, &str)]| -> Option<BTreeMap<String, String>> {
            Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        let meta = namespace_meta(ObjectMeta {
            annotations: kv(&[
                ("portcullis.dev/enforce-udp", "false"),
                ("kubectl.kubernetes.io/last-applied-configuration", "{}"),
            ]),
            labels: kv(&[
                ("pod-security.kubernetes.io/enforce", "baseline"),
                ("pod-security.kubernetes.io/warn", "restricted"),
            ]),
            ..ObjectMeta::default()
        });
        assert_eq!(
            meta.annotations,
            BTreeMap::from([("portcullis.dev/enforce-udp".into(), "false".into())])
        );
        assert_eq!(meta.pod_security_enforce.as_deref(), Some("baseline"));
    }
}
