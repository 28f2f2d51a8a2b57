//! The settings in force for one pod: pod annotations first, then the namespace's, then the
//! injector's configuration; invalid values become warnings.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::str::FromStr;

use portcullis_contract::keys;

use super::shorten;
use crate::config::{annotations as ann, InjectorConfig, ProxyResources};
use crate::values::{CidrList, LogLevel, PolicyMode, PortList, Quantity, SidecarMode, ValueError};

/// The settings in force for one pod once annotations are applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub sidecar_mode: SidecarMode,
    pub policy_mode: PolicyMode,
    pub log_level: LogLevel,
    pub proxy_resources: ProxyResources,
    pub skip_inbound_ports: PortList,
    pub skip_outbound_ports: PortList,
    pub skip_outbound_cidrs: CidrList,
    /// UDP and SCTP enforced (the proxy gets NET_ADMIN for its NFQUEUE).
    pub enforce_udp: bool,
    /// NET_RAW dropped from application containers that do not add it.
    pub drop_net_raw: bool,
}

/// Values that did not parse: where they were (`pod` or `namespace`), the text, the reason.
type Invalid<'a> = Vec<(&'static str, &'a String, ValueError)>;

/// Pod annotations first, namespace annotations second.
pub(super) struct Layers<'a> {
    pub(super) pod: Option<&'a BTreeMap<String, String>>,
    pub(super) namespace: Option<&'a BTreeMap<String, String>>,
}

impl<'a> Layers<'a> {
    fn iter(&self, key: &str) -> impl Iterator<Item = (&'static str, &'a String)> + '_ {
        let key = key.to_string();
        [("pod", self.pod), ("namespace", self.namespace)]
            .into_iter()
            .filter_map(move |(source, map)| map.and_then(|m| m.get(&key)).map(|v| (source, v)))
    }

    /// The first value of `key` that parses, and the invalid ones before it.
    fn first_valid<T>(&self, key: &str) -> (Option<T>, Invalid<'a>)
    where
        T: FromStr<Err = ValueError>,
    {
        let mut invalid = Vec::new();
        for (source, raw) in self.iter(key) {
            match raw.parse::<T>() {
                Ok(v) => return (Some(v), invalid),
                Err(e) => invalid.push((source, raw, e)),
            }
        }
        (None, invalid)
    }

    /// The first valid value of `key`, or `default`. Invalid values become warnings naming the
    /// value finally used.
    fn pick<T>(&self, key: &str, default: T, warnings: &mut Vec<String>) -> T
    where
        T: FromStr<Err = ValueError> + Display,
    {
        let (chosen, invalid) = self.first_valid::<T>(key);
        let value = chosen.unwrap_or(default);
        for (source, raw, e) in invalid {
            warnings.push(invalid_warning(
                source,
                key,
                raw,
                &e,
                &display_or_empty(&value),
            ));
        }
        value
    }

    /// Like [`Layers::pick`] for a value whose default may be unset.
    fn pick_opt<T>(&self, key: &str, default: Option<T>, warnings: &mut Vec<String>) -> Option<T>
    where
        T: FromStr<Err = ValueError> + Display + Clone,
    {
        let (chosen, invalid) = self.first_valid::<T>(key);
        let value = chosen.or(default);
        let shown = value
            .as_ref()
            .map_or_else(|| "no value".to_string(), display_or_empty);
        for (source, raw, e) in invalid {
            warnings.push(invalid_warning(source, key, raw, &e, &shown));
        }
        value
    }
}

fn display_or_empty<T: Display>(v: &T) -> String {
    let s = v.to_string();
    if s.is_empty() {
        "none".to_string()
    } else {
        format!("{s:?}")
    }
}

fn invalid_warning(source: &str, key: &str, raw: &str, e: &ValueError, using: &str) -> String {
    format!(
        "portcullis: invalid {source} annotation {key}={:?} ({}); using {using}",
        shorten(raw, 40),
        shorten(&e.0, 80)
    )
}

pub(super) fn opted_out(layers: &Layers<'_>, warnings: &mut Vec<String>) -> bool {
    for (source, raw) in layers.iter(ann::INJECT) {
        match raw.trim() {
            keys::DISABLED => return true,
            keys::ENABLED => return false,
            other => warnings.push(format!(
                "portcullis: invalid {source} annotation {}={:?} (expected enabled or disabled); ignored",
                ann::INJECT,
                shorten(other, 40)
            )),
        }
    }
    false
}

pub(super) fn resolve_settings(
    layers: &Layers<'_>,
    cfg: &InjectorConfig,
    warnings: &mut Vec<String>,
) -> Settings {
    let sidecar_mode = layers.pick(ann::SIDECAR_MODE, cfg.sidecar_mode, warnings);
    let policy_mode = layers.pick(ann::POLICY_MODE, cfg.policy_mode, warnings);
    let log_level = layers.pick(ann::LOG_LEVEL, cfg.log_level.clone(), warnings);
    let skip_inbound_ports = layers.pick(
        ann::SKIP_INBOUND_PORTS,
        cfg.skip_inbound_ports.clone(),
        warnings,
    );
    let skip_outbound_ports = layers.pick(
        ann::SKIP_OUTBOUND_PORTS,
        cfg.skip_outbound_ports.clone(),
        warnings,
    );
    let skip_outbound_cidrs = layers.pick(
        ann::SKIP_OUTBOUND_CIDRS,
        cfg.skip_outbound_cidrs.clone(),
        warnings,
    );

    let d = &cfg.proxy_resources;
    let (cpu_request, cpu_limit) = request_limit_pair(
        "cpu",
        layers.pick_opt(ann::PROXY_CPU_REQUEST, d.cpu_request.clone(), warnings),
        layers.pick_opt(ann::PROXY_CPU_LIMIT, d.cpu_limit.clone(), warnings),
        (&d.cpu_request, &d.cpu_limit),
        warnings,
    );
    let (memory_request, memory_limit) = request_limit_pair(
        "memory",
        layers.pick_opt(
            ann::PROXY_MEMORY_REQUEST,
            d.memory_request.clone(),
            warnings,
        ),
        layers.pick_opt(ann::PROXY_MEMORY_LIMIT, d.memory_limit.clone(), warnings),
        (&d.memory_request, &d.memory_limit),
        warnings,
    );

    let enforce_udp = layers.pick(ann::ENFORCE_UDP, cfg.enforce_udp, warnings).0;
    let drop_net_raw = layers.pick(ann::DROP_NET_RAW, cfg.drop_net_raw, warnings).0;

    Settings {
        enforce_udp,
        drop_net_raw,
        sidecar_mode,
        policy_mode,
        log_level,
        proxy_resources: ProxyResources {
            cpu_request,
            cpu_limit,
            memory_request,
            memory_limit,
        },
        skip_inbound_ports,
        skip_outbound_ports,
        skip_outbound_cidrs,
    }
}

/// Kubernetes rejects a container whose request exceeds its limit, which would block the pod:
/// fall back to the injector's pair for that resource instead.
fn request_limit_pair(
    resource: &str,
    request: Option<Quantity>,
    limit: Option<Quantity>,
    defaults: (&Option<Quantity>, &Option<Quantity>),
    warnings: &mut Vec<String>,
) -> (Option<Quantity>, Option<Quantity>) {
    match (&request, &limit) {
        (Some(r), Some(l)) if r.value() > l.value() => {
            warnings.push(format!(
                "portcullis: proxy {resource} request {r} exceeds its limit {l}; using the injector defaults for {resource}"
            ));
            (defaults.0.clone(), defaults.1.clone())
        }
        _ => (request, limit),
    }
}
