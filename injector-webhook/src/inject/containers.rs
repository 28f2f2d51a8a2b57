//! The two containers the injector adds: `portcullis-init` (installs the rules, exits) and
//! `portcullis-proxy` (the sidecar): image, resources, security context, probes, mounts.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, HTTPGetAction, Probe, ResourceRequirements,
    SeccompProfile, SecurityContext, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as K8sQuantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use portcullis_contract::ports;

use super::env::{init_env, proxy_env};
use super::Settings;
use crate::config::{
    InjectorConfig, ADMIN_PORT_NAME, INBOUND_PORT_NAME, INIT_CONTAINER_NAME, INIT_RUN_VOLUME_NAME,
    PROXY_CONTAINER_NAME, TOKEN_DIR, TOKEN_VOLUME_NAME,
};
use crate::values::{Quantity, SidecarMode};

fn quantities(pairs: &[(&str, &Option<Quantity>)]) -> Option<BTreeMap<String, K8sQuantity>> {
    let map: BTreeMap<String, K8sQuantity> = pairs
        .iter()
        .filter_map(|(k, q)| {
            q.as_ref()
                .map(|q| (k.to_string(), K8sQuantity(q.as_str().to_string())))
        })
        .collect();
    (!map.is_empty()).then_some(map)
}

/// The `portcullis-init` container: installs the redirect rules, then exits.
pub fn init_container(settings: &Settings, cfg: &InjectorConfig) -> Container {
    let small = |cpu: &str, mem: &str| {
        let q = |s: &str| K8sQuantity(s.to_string());
        Some(BTreeMap::from([
            ("cpu".to_string(), q(cpu)),
            ("memory".to_string(), q(mem)),
        ]))
    };
    Container {
        name: INIT_CONTAINER_NAME.to_string(),
        image: Some(cfg.init_image.clone()),
        image_pull_policy: cfg.image_pull_policy.clone(),
        env: Some(init_env(settings, cfg)),
        resources: Some(ResourceRequirements {
            requests: small("10m", "16Mi"),
            limits: small("100m", "64Mi"),
            ..ResourceRequirements::default()
        }),
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            run_as_group: Some(0),
            run_as_non_root: Some(false),
            privileged: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".to_string(), "NET_RAW".to_string()]),
                drop: Some(vec!["ALL".to_string()]),
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: INIT_RUN_VOLUME_NAME.to_string(),
            mount_path: "/run".to_string(),
            ..VolumeMount::default()
        }]),
        termination_message_policy: Some("FallbackToLogsOnError".to_string()),
        ..Container::default()
    }
}

fn http_probe(path: &str, period: i32, failures: i32) -> Option<Probe> {
    Some(Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::Int(i32::from(ports::ADMIN)),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(1),
        ..Probe::default()
    })
}

/// The `portcullis-proxy` container, in either sidecar mode.
pub fn proxy_container(settings: &Settings, cfg: &InjectorConfig) -> Container {
    let r = &settings.proxy_resources;
    let port = |name: &str, port: u16| ContainerPort {
        name: Some(name.to_string()),
        container_port: i32::from(port),
        protocol: Some("TCP".to_string()),
        ..ContainerPort::default()
    };
    Container {
        name: PROXY_CONTAINER_NAME.to_string(),
        image: Some(cfg.proxy_image.clone()),
        image_pull_policy: cfg.image_pull_policy.clone(),
        restart_policy: (settings.sidecar_mode == SidecarMode::Native)
            .then(|| "Always".to_string()),
        ports: Some(vec![
            port(INBOUND_PORT_NAME, ports::INBOUND),
            port(ADMIN_PORT_NAME, ports::ADMIN),
        ]),
        env: Some(proxy_env(settings, cfg)),
        resources: Some(ResourceRequirements {
            requests: quantities(&[("cpu", &r.cpu_request), ("memory", &r.memory_request)]),
            limits: quantities(&[("cpu", &r.cpu_limit), ("memory", &r.memory_limit)]),
            ..ResourceRequirements::default()
        }),
        security_context: Some(SecurityContext {
            run_as_user: Some(cfg.proxy_uid),
            run_as_group: Some(cfg.proxy_uid),
            run_as_non_root: Some(true),
            privileged: Some(false),
            // File capabilities count only without no_new_privs, which
            // `allowPrivilegeEscalation: false` sets; so it is allowed exactly when the proxy
            // needs NET_ADMIN. What it can escalate to is bounded by the bounding set: NET_ADMIN.
            allow_privilege_escalation: Some(settings.enforce_udp),
            read_only_root_filesystem: Some(true),
            // NET_ADMIN, only to read the NFQUEUE and delete conntrack entries (UDP/SCTP
            // enforcement). As UID 2171 the kernel grants it only through the binary's file
            // capability (`cap_net_admin+p`); the bounding set keeps it the only one.
            capabilities: Some(Capabilities {
                add: settings.enforce_udp.then(|| vec!["NET_ADMIN".to_string()]),
                drop: Some(vec!["ALL".to_string()]),
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_string(),
                localhost_profile: None,
            }),
            ..SecurityContext::default()
        }),
        // Until /ready answers, the kubelet holds back the next containers (native mode) and
        // liveness checks; two minutes for the proxy to load its policy.
        startup_probe: http_probe("/ready", 1, 120),
        readiness_probe: http_probe("/ready", 5, 3),
        liveness_probe: http_probe("/live", 10, 3),
        volume_mounts: Some(vec![VolumeMount {
            name: TOKEN_VOLUME_NAME.to_string(),
            mount_path: TOKEN_DIR.to_string(),
            read_only: Some(true),
            ..VolumeMount::default()
        }]),
        termination_message_policy: Some("FallbackToLogsOnError".to_string()),
        ..Container::default()
    }
}
