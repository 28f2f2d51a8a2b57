//! The environment of the two containers: the contract with `portcullis-init` and
//! `portcullis-proxy`, whose flags read these variables (names in [`portcullis_contract::env`]).

use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector};
use portcullis_contract::{env as var, ports, NFQUEUE, PROXY_MARK};

use super::Settings;
use crate::config::{InjectorConfig, TOKEN_FILE};
use crate::values::Switch;

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn env_field(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: None,
                field_path: field_path.to_string(),
            }),
            ..EnvVarSource::default()
        }),
    }
}

/// `portcullis-init`'s variables: the proxy's identity and ports, the skips, UDP enforcement.
pub(super) fn init_env(settings: &Settings, cfg: &InjectorConfig) -> Vec<EnvVar> {
    let mut vars = vec![
        env(var::PROXY_UID, cfg.proxy_uid.to_string()),
        env(var::INBOUND_PORT, ports::INBOUND.to_string()),
        env(var::OUTBOUND_PORT, ports::OUTBOUND.to_string()),
        env(var::ADMIN_PORT, ports::ADMIN.to_string()),
    ];
    // Empty lists are left out rather than set to "": "not set" is the contract's default.
    let skips = [
        (
            var::SKIP_INBOUND_PORTS,
            settings.skip_inbound_ports.is_empty(),
            settings.skip_inbound_ports.to_string(),
        ),
        (
            var::SKIP_OUTBOUND_PORTS,
            settings.skip_outbound_ports.is_empty(),
            settings.skip_outbound_ports.to_string(),
        ),
        (
            var::SKIP_OUTBOUND_CIDRS,
            settings.skip_outbound_cidrs.is_empty(),
            settings.skip_outbound_cidrs.to_string(),
        ),
    ];
    for (name, empty, value) in skips {
        if !empty {
            vars.push(env(name, value));
        }
    }
    if !cfg.service_cidrs.is_empty() {
        vars.push(env(var::SERVICE_CIDRS, cfg.service_cidrs.to_string()));
    }
    vars.extend(udp_env(settings));
    vars
}

/// `portcullis-proxy`'s variables: the Downward API, its mode, the controller, UDP enforcement.
pub(super) fn proxy_env(settings: &Settings, cfg: &InjectorConfig) -> Vec<EnvVar> {
    let mut vars = vec![
        env_field(var::POD_NAME, "metadata.name"),
        env_field(var::POD_NAMESPACE, "metadata.namespace"),
        env_field(var::POD_IPS, "status.podIPs"),
        env_field(var::HOST_IP, "status.hostIP"),
        env(var::MODE, settings.policy_mode.as_str()),
        env(var::LOG, settings.log_level.as_str()),
        env(var::CONTROLLER, cfg.controller_url.clone()),
        env(var::TOKEN_FILE, TOKEN_FILE),
    ];
    vars.extend(udp_env(settings));
    if let Some(pem) = &cfg.controller_ca_pem {
        vars.push(env(var::CONTROLLER_CA_PEM, pem.clone()));
    }
    vars
}

/// `PORTCULLIS_ENFORCE_UDP` and, when on, the queue number and the proxy's packet mark, for both
/// containers. The mark goes with UDP enforcement because both need the proxy's NET_ADMIN: with
/// it, the init rules exempt only UID 2171 *with* the mark, so another process running as 2171
/// is checked like any other; without NET_ADMIN the proxy cannot mark, and UID 2171 alone is
/// exempt (`udp-not-enforced` in the exemptions annotation says so). `PORTCULLIS_INBOUND_TCP`
/// says where inbound TCP is judged: in the same queue when it is read (no relay on the inbound
/// side), else by the inbound listener.
fn udp_env(settings: &Settings) -> Vec<EnvVar> {
    let mut vars = vec![env(
        var::ENFORCE_UDP,
        Switch(settings.enforce_udp).to_string(),
    )];
    if settings.enforce_udp {
        vars.push(env(var::NFQUEUE, NFQUEUE.to_string()));
        vars.push(env(var::PROXY_MARK, PROXY_MARK.to_string()));
    }
    vars.push(env(
        var::INBOUND_TCP,
        if settings.enforce_udp {
            "queue"
        } else {
            "proxy"
        }
        .to_string(),
    ));
    vars
}
