//! What the submitted pod is checked for: names the injector needs, look-alike
//! `portcullis-*` containers, and set-ups that work but not as their owner may expect.

use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec};
use portcullis_contract::ports;

use super::containers::{init_container, proxy_container};
use super::{shorten, Settings};
use crate::config::{
    InjectorConfig, INIT_CONTAINER_NAME, INIT_RUN_VOLUME_NAME, PROXY_CONTAINER_NAME,
    TOKEN_VOLUME_NAME,
};
use crate::values::SidecarMode;

/// What differs between the pod's `portcullis-*` containers and ours, if anything.
pub(super) fn injected_mismatch(
    spec: &PodSpec,
    settings: &Settings,
    cfg: &InjectorConfig,
) -> Option<String> {
    let inits = spec.init_containers.as_deref().unwrap_or_default();
    let Some(init) = inits.first().filter(|c| c.name == INIT_CONTAINER_NAME) else {
        return Some(format!(
            "{INIT_CONTAINER_NAME} is not the first init container"
        ));
    };
    let proxy = inits
        .iter()
        .chain(spec.containers.iter())
        .find(|c| c.name == PROXY_CONTAINER_NAME)?;
    for (got, want) in [
        (init, init_container(settings, cfg)),
        (proxy, proxy_container(settings, cfg)),
    ] {
        let name = &want.name;
        // Other webhooks may add unrelated variables; ours must be exactly ours.
        let ours = |c: &Container| -> Vec<EnvVar> {
            c.env
                .iter()
                .flatten()
                .filter(|e| {
                    e.name.starts_with(portcullis_contract::env::PREFIX)
                        || want.env.iter().flatten().any(|w| w.name == e.name)
                })
                .cloned()
                .collect()
        };
        if got.image != want.image {
            return Some(format!(
                "{name} image {:?}",
                got.image.as_deref().unwrap_or("")
            ));
        }
        if got.command.is_some() || got.args.is_some() {
            return Some(format!("{name} has a command or args"));
        }
        if got.env_from.is_some() {
            return Some(format!("{name} has envFrom"));
        }
        if ours(got) != ours(&want) {
            return Some(format!("{name} environment"));
        }
        let uid = |c: &Container| c.security_context.as_ref().and_then(|s| s.run_as_user);
        if uid(got) != uid(&want) {
            return Some(format!("{name} runAsUser"));
        }
    }
    None
}

pub(super) fn name_conflict(spec: &PodSpec) -> Option<String> {
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    for c in containers {
        if c.name == INIT_CONTAINER_NAME {
            return Some(format!("container named {INIT_CONTAINER_NAME}"));
        }
        // The proxy's identity (its token) and the init container's /run are not the app's.
        for m in c.volume_mounts.iter().flatten() {
            if m.name == TOKEN_VOLUME_NAME || m.name == INIT_RUN_VOLUME_NAME {
                return Some(format!(
                    "container {:?} that mounts volume {}",
                    shorten(&c.name, 63),
                    m.name
                ));
            }
        }
    }
    for v in spec.volumes.iter().flatten() {
        if v.name == TOKEN_VOLUME_NAME || v.name == INIT_RUN_VOLUME_NAME {
            return Some(format!("volume named {}", v.name));
        }
    }
    None
}

/// Warnings about pods that work, but not as their owner may expect.
pub(super) fn warn_about_pod(spec: &PodSpec, settings: &Settings, warnings: &mut Vec<String>) {
    let reserved = ports::PROXY.map(|(port, _)| i32::from(port));
    for c in spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
    {
        for p in c.ports.iter().flatten() {
            if reserved.contains(&p.container_port) {
                warnings.push(format!(
                    "portcullis: container {} declares port {}, which the Portcullis proxy uses",
                    shorten(&c.name, 63),
                    p.container_port
                ));
            }
        }
    }
    if settings.sidecar_mode == SidecarMode::Classic {
        if spec.init_containers.as_ref().is_some_and(|v| !v.is_empty()) {
            warnings.push(
                "portcullis: classic sidecar mode: the pod's init containers run before the proxy, so their redirected traffic fails; use native mode or skip their ports".to_string(),
            );
        }
        if matches!(spec.restart_policy.as_deref(), Some("Never" | "OnFailure")) {
            warnings.push(
                "portcullis: classic sidecar mode: the proxy does not exit, so this run-to-completion pod never completes; use native mode".to_string(),
            );
        }
    }
}
