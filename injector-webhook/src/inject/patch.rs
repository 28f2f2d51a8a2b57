//! The JSONPatch that injects a pod: the two containers, the two volumes, the annotations.

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation, RemoveOperation};
use k8s_openapi::api::core::v1::{Pod, PodSpec};
use portcullis_contract::ports;
use serde_json::Value;

use super::containers::{init_container, proxy_container};
use super::volumes::{init_run_volume, token_volume};
use super::Settings;
use crate::app_security::CapabilityPlan;
use crate::config::{annotations as ann, InjectorConfig};
use crate::values::SidecarMode;

fn pointer(tokens: &[&str]) -> PointerBuf {
    PointerBuf::from_tokens(tokens.iter().copied())
}

fn add(tokens: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: pointer(tokens),
        value,
    })
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    // k8s-openapi types serialize to JSON objects infallibly (no maps with non-string keys).
    serde_json::to_value(v).unwrap_or(Value::Null)
}

pub(super) fn build_patch(
    pod: &Pod,
    spec: &PodSpec,
    settings: &Settings,
    cfg: &InjectorConfig,
    plan: &CapabilityPlan,
    exemptions: Option<&str>,
    warnings: &mut Vec<String>,
) -> Patch {
    // First, while the pod's container indexes are still the original ones.
    let mut ops = plan.ops.clone();
    let init = to_value(&init_container(settings, cfg));
    let proxy = to_value(&proxy_container(settings, cfg));

    // portcullis-init runs first of all init containers, so that the app's own init
    // containers are policed too; in native mode the proxy follows it at once.
    let mut new_inits = vec![init];
    let mut proxy_slot = Some(proxy);
    if settings.sidecar_mode == SidecarMode::Native {
        new_inits.extend(proxy_slot.take());
    }
    match &spec.init_containers {
        None => ops.push(add(&["spec", "initContainers"], Value::Array(new_inits))),
        Some(_) => {
            for (i, c) in new_inits.into_iter().enumerate() {
                ops.push(add(&["spec", "initContainers", &i.to_string()], c));
            }
        }
    }
    if let Some(proxy) = proxy_slot {
        // Classic mode: first container, so that the kubelet starts it first.
        ops.push(add(&["spec", "containers", "0"], proxy));
    }

    let volumes = [token_volume(cfg), init_run_volume()].map(|v| to_value(&v));
    match &spec.volumes {
        None => ops.push(add(&["spec", "volumes"], Value::Array(volumes.to_vec()))),
        Some(_) => {
            for v in volumes {
                ops.push(add(&["spec", "volumes", "-"], v));
            }
        }
    }

    let existing = pod.metadata.annotations.as_ref();
    let has = |k: &str| existing.is_some_and(|m| m.contains_key(k));
    let mut new_annotations: Vec<(&str, String)> = Vec::new();
    let prometheus = [
        ann::PROMETHEUS_SCRAPE,
        ann::PROMETHEUS_PORT,
        ann::PROMETHEUS_PATH,
    ];
    if prometheus.iter().any(|k| has(k)) {
        warnings.push(
            "portcullis: pod already has prometheus.io annotations; kept, so the proxy's metrics (port 4191) are not advertised".to_string(),
        );
    } else {
        new_annotations.push((ann::PROMETHEUS_SCRAPE, "true".to_string()));
        new_annotations.push((ann::PROMETHEUS_PORT, ports::ADMIN.to_string()));
        new_annotations.push((ann::PROMETHEUS_PATH, "/metrics".to_string()));
    }
    new_annotations.push((ann::INJECTED_VERSION, cfg.version.clone()));
    if settings.sidecar_mode == SidecarMode::Classic && !has(ann::DEFAULT_CONTAINER) {
        if let Some(first) = spec.containers.first() {
            new_annotations.push((ann::DEFAULT_CONTAINER, first.name.clone()));
        }
    }
    ops.extend(annotation_ops(pod, &new_annotations, exemptions));
    Patch(ops)
}

/// Sets `annotations` and `portcullis.dev/exemptions` (to `exemptions`, or removes one the pod
/// author wrote when there is none).
pub(super) fn annotation_ops(
    pod: &Pod,
    annotations: &[(&str, String)],
    exemptions: Option<&str>,
) -> Vec<PatchOperation> {
    let mut all: Vec<(&str, String)> = annotations.to_vec();
    if let Some(value) = exemptions {
        all.push((ann::EXEMPTIONS, value.to_string()));
    }
    let Some(existing) = pod.metadata.annotations.as_ref() else {
        if all.is_empty() {
            return Vec::new();
        }
        let map: serde_json::Map<String, Value> = all
            .into_iter()
            .map(|(k, v)| (k.to_string(), Value::String(v)))
            .collect();
        return vec![add(&["metadata", "annotations"], Value::Object(map))];
    };
    let mut ops: Vec<PatchOperation> = all
        .into_iter()
        .map(|(k, v)| add(&["metadata", "annotations", k], Value::String(v)))
        .collect();
    if exemptions.is_none() && existing.contains_key(ann::EXEMPTIONS) {
        ops.push(PatchOperation::Remove(RemoveOperation {
            path: pointer(&["metadata", "annotations", ann::EXEMPTIONS]),
        }));
    }
    ops
}
