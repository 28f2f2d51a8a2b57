//! The webhook's decision as plain values, for a caller that starts the containers itself (the
//! testbed): whether a pod gets Portcullis and, when it does, the environment the webhook gives
//! `portcullis-init` and `portcullis-proxy`. It is [`decide`] itself, read back from the
//! containers it would add, so such a caller cannot decide differently from the webhook.

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::config::{annotations as ann, InjectorConfig};
use crate::inject::{decide, init_container, proxy_container, NamespaceDefaults, Outcome};
use crate::SkipReason;

/// What the webhook does to a pod, as a caller running its containers needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sidecars {
    /// Injected: the environment of both containers (literal values only; the Downward API's
    /// `POD_NAME`, `POD_NAMESPACE`, `POD_IPS` and `HOST_IP` are the caller's to fill).
    Injected(SidecarEnv),
    /// Left without Portcullis (or refused), and why, in words.
    NotInjected(String),
}

/// The literal environment of the two containers the webhook adds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarEnv {
    pub init: Vec<(String, String)>,
    pub proxy: Vec<(String, String)>,
    /// Whether the proxy reads the UDP/SCTP queue, for which it gets `NET_ADMIN`.
    pub enforce_udp: bool,
}

/// The webhook's decision for `pod` in a namespace with `namespace` defaults.
pub fn sidecars(pod: &Pod, namespace: &NamespaceDefaults, cfg: &InjectorConfig) -> Sidecars {
    let decision = decide(pod, namespace, cfg);
    match decision.outcome {
        Outcome::Inject { settings, .. } => Sidecars::Injected(SidecarEnv {
            init: literal_env(&init_container(&settings, cfg)),
            proxy: literal_env(&proxy_container(&settings, cfg)),
            enforce_udp: settings.enforce_udp,
        }),
        Outcome::Skip { reason, .. } => {
            let pod_opted_out = pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ann::INJECT))
                .is_some_and(|v| v.trim() == "disabled")
                && !decision
                    .ignored_overrides
                    .iter()
                    .any(|o| o.annotation == ann::INJECT);
            Sidecars::NotInjected(skip_words(&reason, pod_opted_out))
        }
        Outcome::Deny(message) => {
            Sidecars::NotInjected(format!("the injector refuses the pod: {message}"))
        }
    }
}

fn skip_words(reason: &SkipReason, pod_opted_out: bool) -> String {
    match reason {
        SkipReason::OptedOut if pod_opted_out => {
            format!("pod annotation {}: disabled", ann::INJECT)
        }
        SkipReason::OptedOut => format!("namespace annotation {}: disabled", ann::INJECT),
        SkipReason::HostNetwork => "a hostNetwork pod".to_string(),
        SkipReason::AlreadyInjected => "it already has a portcullis-proxy container".to_string(),
        SkipReason::NameConflict(what) => format!("it has a {what}, a name Portcullis needs"),
        SkipReason::InvalidPod => "a pod without containers".to_string(),
    }
}

/// The `name=value` pairs of a container's environment (not those taken from fields).
fn literal_env(container: &Container) -> Vec<(String, String)> {
    container
        .env
        .iter()
        .flatten()
        .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::values::Switch;
    use std::collections::BTreeMap;

    fn pod(annotations: &[(&str, &str)]) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "p",
                "namespace": "n",
                "annotations": annotations.iter().cloned().collect::<BTreeMap<_, _>>(),
            },
            "spec": {"containers": [{"name": "app", "image": "i"}]},
        }))
        .expect("pod")
    }

    fn env_of<'a>(list: &'a [(String, String)], name: &str) -> Option<&'a str> {
        list.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn injected_pods_get_the_webhooks_environment() {
        let cfg = InjectorConfig {
            enforce_udp: Switch(false),
            ..InjectorConfig::default()
        };
        let Sidecars::Injected(env) = sidecars(&pod(&[]), &NamespaceDefaults::Disabled, &cfg)
        else {
            panic!("not injected");
        };
        assert!(!env.enforce_udp);
        assert_eq!(env_of(&env.init, "PORTCULLIS_INBOUND_TCP"), Some("proxy"));
        assert_eq!(env_of(&env.proxy, "PORTCULLIS_ENFORCE_UDP"), Some("false"));
        assert_eq!(env_of(&env.proxy, "PORTCULLIS_PROXY_MARK"), None);
        // Fields of the Downward API are not literal values.
        assert_eq!(env_of(&env.proxy, "POD_NAME"), None);

        let Sidecars::Injected(env) = sidecars(
            &pod(&[]),
            &NamespaceDefaults::Disabled,
            &InjectorConfig::default(),
        ) else {
            panic!("not injected");
        };
        assert!(env.enforce_udp);
        assert_eq!(env_of(&env.init, "PORTCULLIS_PROXY_MARK"), Some("0x1000"));
        assert_eq!(env_of(&env.proxy, "PORTCULLIS_INBOUND_TCP"), Some("queue"));
        // Not configured: portcullis-init's own default Service range applies.
        assert_eq!(env_of(&env.init, "PORTCULLIS_SERVICE_CIDRS"), None);

        let cfg = InjectorConfig {
            service_cidrs: "10.43.0.0/16,fd00:43::/112".parse().expect("cidrs"),
            ..InjectorConfig::default()
        };
        let Sidecars::Injected(env) = sidecars(&pod(&[]), &NamespaceDefaults::Disabled, &cfg)
        else {
            panic!("not injected");
        };
        assert_eq!(
            env_of(&env.init, "PORTCULLIS_SERVICE_CIDRS"),
            Some("10.43.0.0/16,fd00:43::/112")
        );
    }

    #[test]
    fn the_reason_names_whose_annotation_opted_out() {
        let cfg = InjectorConfig::default();
        let allow = NamespaceDefaults::annotations(BTreeMap::from([(
            ann::ALLOW_POD_OVERRIDES.to_string(),
            "true".to_string(),
        )]));
        let out = sidecars(&pod(&[(ann::INJECT, "disabled")]), &allow, &cfg);
        assert_eq!(
            out,
            Sidecars::NotInjected("pod annotation portcullis.dev/inject: disabled".into())
        );
        let ns = NamespaceDefaults::annotations(BTreeMap::from([(
            ann::INJECT.to_string(),
            "disabled".to_string(),
        )]));
        let out = sidecars(&pod(&[(ann::INJECT, "disabled")]), &ns, &cfg);
        assert_eq!(
            out,
            Sidecars::NotInjected("namespace annotation portcullis.dev/inject: disabled".into())
        );
        // Without the namespace's word a pod cannot opt itself out.
        let out = sidecars(
            &pod(&[(ann::INJECT, "disabled")]),
            &NamespaceDefaults::Disabled,
            &cfg,
        );
        assert!(matches!(out, Sidecars::Injected(_)));
    }
}
