use std::collections::BTreeMap;

use json_patch::PatchOperation;
use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{json, Value};

use super::*;
use crate::config::InjectorConfig;
use crate::values::SidecarMode;

fn pod(v: Value) -> Pod {
    serde_json::from_value(v).expect("test pod")
}

fn app_pod() -> Pod {
    pod(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"containers": [{"name": "app", "image": "nginx"}]}
    }))
}

fn with_annotations(mut p: Pod, pairs: &[(&str, &str)]) -> Pod {
    let map = p.metadata.annotations.get_or_insert_with(BTreeMap::new);
    for (k, v) in pairs {
        map.insert(k.to_string(), v.to_string());
    }
    p
}

fn ns(pairs: &[(&str, &str)]) -> NamespaceDefaults {
    NamespaceDefaults::annotations(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

fn no_ns() -> NamespaceDefaults {
    NamespaceDefaults::Disabled
}

/// A namespace that lets its pods weaken their own enforcement.
fn permissive_ns(pairs: &[(&str, &str)]) -> NamespaceDefaults {
    let mut all = vec![("portcullis.dev/allow-pod-overrides", "true")];
    all.extend_from_slice(pairs);
    ns(&all)
}

fn classic() -> InjectorConfig {
    InjectorConfig {
        sidecar_mode: SidecarMode::Classic,
        ..InjectorConfig::default()
    }
}

/// Decide, apply the patch to the pod as JSON, and return the patched pod.
fn inject(p: &Pod, n: &NamespaceDefaults, cfg: &InjectorConfig) -> (Pod, Vec<String>) {
    let d = decide(p, n, cfg);
    let Outcome::Inject { patch, .. } = d.outcome else {
        panic!("expected injection, got {:?}", d.outcome);
    };
    let mut doc = serde_json::to_value(p).expect("pod to json");
    json_patch::patch(&mut doc, &patch).expect("patch applies");
    (
        serde_json::from_value(doc).expect("patched pod"),
        d.warnings,
    )
}

fn skip_reason(p: &Pod, n: &NamespaceDefaults, cfg: &InjectorConfig) -> (SkipReason, Vec<String>) {
    let d = decide(p, n, cfg);
    match d.outcome {
        Outcome::Skip { reason, .. } => (reason, d.warnings),
        other => panic!("expected a skip, got {other:?}"),
    }
}

fn names(cs: Option<&Vec<Container>>) -> Vec<&str> {
    cs.into_iter().flatten().map(|c| c.name.as_str()).collect()
}

fn spec(p: &Pod) -> &PodSpec {
    p.spec.as_ref().expect("spec")
}

fn find<'a>(p: &'a Pod, name: &str) -> &'a Container {
    let s = spec(p);
    s.containers
        .iter()
        .chain(s.init_containers.iter().flatten())
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn env_of(c: &Container) -> BTreeMap<String, String> {
    c.env
        .iter()
        .flatten()
        .map(|e| {
            let v = match (&e.value, &e.value_from) {
                (Some(v), _) => v.clone(),
                (None, Some(from)) => format!(
                    "fieldRef:{}",
                    from.field_ref
                        .as_ref()
                        .map_or("", |f| f.field_path.as_str())
                ),
                (None, None) => String::new(),
            };
            (e.name.clone(), v)
        })
        .collect()
}

fn annotations(p: &Pod) -> BTreeMap<String, String> {
    p.metadata.annotations.clone().unwrap_or_default()
}

fn quantity(c: &Container, kind: &str, res: &str) -> Option<String> {
    let r = c.resources.as_ref()?;
    let m = if kind == "requests" {
        &r.requests
    } else {
        &r.limits
    };
    m.as_ref()?.get(res).map(|q| q.0.clone())
}

#[test]
fn native_mode_on_a_bare_pod() {
    let (p, warnings) = inject(&app_pod(), &no_ns(), &InjectorConfig::default());
    assert!(warnings.is_empty(), "{warnings:?}");
    let s = spec(&p);
    assert_eq!(
        names(s.init_containers.as_ref()),
        ["portcullis-init", "portcullis-proxy"]
    );
    assert_eq!(names(Some(&s.containers)), ["app"]);

    let proxy = find(&p, "portcullis-proxy");
    assert_eq!(proxy.restart_policy.as_deref(), Some("Always"));
    let sc = proxy
        .security_context
        .as_ref()
        .expect("proxy securityContext");
    assert_eq!(sc.run_as_user, Some(2171));
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    // File capabilities need privilege escalation allowed (no no_new_privs); bounded by NET_ADMIN.
    assert_eq!(sc.allow_privilege_escalation, Some(true));
    let caps = sc.capabilities.as_ref().expect("caps");
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    // NET_ADMIN only, for the UDP/SCTP queue.
    assert_eq!(caps.add.as_deref(), Some(&["NET_ADMIN".to_string()][..]));
    let probe_path = |p: &Option<Probe>| {
        let g = p
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .expect("http probe");
        (g.path.clone().unwrap_or_default(), g.port.clone())
    };
    assert_eq!(
        probe_path(&proxy.readiness_probe),
        ("/ready".into(), IntOrString::Int(4191))
    );
    assert_eq!(
        probe_path(&proxy.liveness_probe),
        ("/live".into(), IntOrString::Int(4191))
    );
    let ports: Vec<i32> = proxy
        .ports
        .iter()
        .flatten()
        .map(|p| p.container_port)
        .collect();
    assert_eq!(ports, [4143, 4191]);

    let env = env_of(proxy);
    assert_eq!(env["POD_NAME"], "fieldRef:metadata.name");
    assert_eq!(env["POD_NAMESPACE"], "fieldRef:metadata.namespace");
    assert_eq!(env["POD_IPS"], "fieldRef:status.podIPs");
    assert_eq!(env["HOST_IP"], "fieldRef:status.hostIP");
    assert_eq!(env["PORTCULLIS_MODE"], "enforce");
    assert_eq!(env["PORTCULLIS_LOG"], "info");
    assert_eq!(
        env["PORTCULLIS_CONTROLLER"],
        "https://portcullis-controller.portcullis-system.svc:8443"
    );
    assert_eq!(
        env["PORTCULLIS_TOKEN_FILE"],
        "/var/run/secrets/portcullis.dev/token/token"
    );
    assert_eq!(env["PORTCULLIS_ENFORCE_UDP"], "true");
    assert_eq!(env["PORTCULLIS_NFQUEUE"], "4171");
    assert_eq!(env["PORTCULLIS_PROXY_MARK"], "0x1000");
    assert_eq!(env["PORTCULLIS_INBOUND_TCP"], "queue");
    assert_eq!(
        env_of(find(&p, "portcullis-init"))["PORTCULLIS_INBOUND_TCP"],
        "queue"
    );
    // The app's NET_RAW is dropped.
    let app_caps = find(&p, "app")
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref())
        .and_then(|c| c.drop.clone());
    assert_eq!(app_caps, Some(vec!["NET_RAW".to_string()]));
    let mount = &proxy.volume_mounts.as_ref().expect("mounts")[0];
    assert_eq!(mount.name, "portcullis-token");
    assert_eq!(mount.read_only, Some(true));
    assert_eq!(mount.mount_path, "/var/run/secrets/portcullis.dev/token");

    let init = find(&p, "portcullis-init");
    let sc = init
        .security_context
        .as_ref()
        .expect("init securityContext");
    assert_eq!(sc.run_as_user, Some(0));
    assert_eq!(sc.run_as_non_root, Some(false));
    let add = sc
        .capabilities
        .as_ref()
        .and_then(|c| c.add.clone())
        .unwrap_or_default();
    assert_eq!(add, ["NET_ADMIN", "NET_RAW"]);
    let env = env_of(init);
    assert_eq!(env["PORTCULLIS_PROXY_UID"], "2171");
    assert_eq!(env["PORTCULLIS_INBOUND_PORT"], "4143");
    assert_eq!(env["PORTCULLIS_OUTBOUND_PORT"], "4140");
    assert_eq!(env["PORTCULLIS_ADMIN_PORT"], "4191");
    assert_eq!(env["PORTCULLIS_ENFORCE_UDP"], "true");
    assert!(!env.contains_key("PORTCULLIS_SKIP_INBOUND_PORTS"));
    assert_eq!(quantity(init, "limits", "memory").as_deref(), Some("64Mi"));

    let vols = s.volumes.as_ref().expect("volumes");
    let token = vols
        .iter()
        .find(|v| v.name == "portcullis-token")
        .expect("token volume");
    let proj = token
        .projected
        .as_ref()
        .and_then(|p| p.sources.as_ref())
        .expect("sources");
    let sat = proj[0].service_account_token.as_ref().expect("sa token");
    assert_eq!(sat.audience.as_deref(), Some("portcullis"));
    assert_eq!(sat.path, "token");

    let a = annotations(&p);
    assert_eq!(a["prometheus.io/scrape"], "true");
    assert_eq!(a["prometheus.io/port"], "4191");
    assert_eq!(a["prometheus.io/path"], "/metrics");
    assert_eq!(a["portcullis.dev/injected-version"], crate::config::VERSION);
    assert!(!a.contains_key("kubectl.kubernetes.io/default-container"));
    assert!(
        !a.contains_key("portcullis.dev/exemptions"),
        "no exemption: {a:?}"
    );
}

#[test]
fn classic_mode_puts_the_proxy_first_in_containers() {
    let (p, warnings) = inject(&app_pod(), &no_ns(), &classic());
    assert!(warnings.is_empty(), "{warnings:?}");
    let s = spec(&p);
    assert_eq!(names(s.init_containers.as_ref()), ["portcullis-init"]);
    assert_eq!(names(Some(&s.containers)), ["portcullis-proxy", "app"]);
    assert_eq!(find(&p, "portcullis-proxy").restart_policy, None);
    assert_eq!(
        annotations(&p)["kubectl.kubernetes.io/default-container"],
        "app"
    );
}

#[test]
fn classic_mode_keeps_an_existing_default_container() {
    let p = with_annotations(
        app_pod(),
        &[("kubectl.kubernetes.io/default-container", "x")],
    );
    let (p, _) = inject(&p, &no_ns(), &classic());
    assert_eq!(
        annotations(&p)["kubectl.kubernetes.io/default-container"],
        "x"
    );
}

fn pod_with_inits() -> Pod {
    pod(json!({
        "metadata": {"name": "web"},
        "spec": {
            "initContainers": [{"name": "migrate", "image": "m"}, {"name": "warm", "image": "w"}],
            "containers": [{"name": "app", "image": "a"}, {"name": "log", "image": "l"}],
            "volumes": [{"name": "data", "emptyDir": {}}]
        }
    }))
}

#[test]
fn init_container_runs_before_the_apps_init_containers() {
    let (p, warnings) = inject(&pod_with_inits(), &no_ns(), &InjectorConfig::default());
    assert!(warnings.is_empty(), "{warnings:?}");
    let s = spec(&p);
    assert_eq!(
        names(s.init_containers.as_ref()),
        ["portcullis-init", "portcullis-proxy", "migrate", "warm"]
    );
    assert_eq!(names(Some(&s.containers)), ["app", "log"]);
    let vols: Vec<&str> = s
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(vols, ["data", "portcullis-token", "portcullis-init-run"]);

    let (p, warnings) = inject(&pod_with_inits(), &no_ns(), &classic());
    let s = spec(&p);
    assert_eq!(
        names(s.init_containers.as_ref()),
        ["portcullis-init", "migrate", "warm"]
    );
    assert_eq!(
        names(Some(&s.containers)),
        ["portcullis-proxy", "app", "log"]
    );
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("init containers run before the proxy"));
}

#[test]
fn empty_init_container_list_and_empty_annotations() {
    let p = pod(json!({
        "metadata": {"annotations": {}},
        "spec": {"initContainers": [], "volumes": [], "containers": [{"name": "a"}]}
    }));
    let (p, _) = inject(&p, &no_ns(), &InjectorConfig::default());
    assert_eq!(
        names(spec(&p).init_containers.as_ref()),
        ["portcullis-init", "portcullis-proxy"]
    );
    assert_eq!(annotations(&p).len(), 4);
}

#[test]
fn existing_annotations_are_kept_and_slashes_escaped() {
    let p = with_annotations(app_pod(), &[("team", "payments"), ("a/b", "c")]);
    let d = decide(&p, &no_ns(), &InjectorConfig::default());
    let Outcome::Inject { patch, .. } = &d.outcome else {
        panic!("inject")
    };
    let text = serde_json::to_string(patch).expect("json");
    assert!(
        text.contains("/metadata/annotations/prometheus.io~1scrape"),
        "{text}"
    );
    let (p, _) = inject(&p, &no_ns(), &InjectorConfig::default());
    let a = annotations(&p);
    assert_eq!(a["team"], "payments");
    assert_eq!(a["a/b"], "c");
    assert_eq!(a["prometheus.io/scrape"], "true");
}

#[test]
fn existing_prometheus_annotations_are_not_overwritten() {
    let p = with_annotations(app_pod(), &[("prometheus.io/port", "8080")]);
    let (p, warnings) = inject(&p, &no_ns(), &InjectorConfig::default());
    let a = annotations(&p);
    assert_eq!(a["prometheus.io/port"], "8080");
    assert!(!a.contains_key("prometheus.io/scrape"));
    assert!(a.contains_key("portcullis.dev/injected-version"));
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].contains("prometheus.io"));
}

#[test]
fn opt_out_by_pod_only_where_the_namespace_allows_it() {
    let cfg = InjectorConfig::default();
    let disabled = with_annotations(app_pod(), &[("portcullis.dev/inject", "disabled")]);
    let d = decide(&disabled, &permissive_ns(&[]), &cfg);
    let Outcome::Skip {
        reason: SkipReason::OptedOut,
        patch: Some(patch),
    } = d.outcome
    else {
        panic!("expected an opt-out, got {:?}", d.outcome);
    };
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    let mut doc = serde_json::to_value(&disabled).expect("json");
    json_patch::patch(&mut doc, &patch).expect("applies");
    assert_eq!(
        doc["metadata"]["annotations"]["portcullis.dev/exemptions"],
        "not-injected"
    );

    // Elsewhere the pod's own opt-out is ignored, said, and the pod is injected.
    for namespace in [
        no_ns(),
        ns(&[]),
        ns(&[("portcullis.dev/allow-pod-overrides", "false")]),
    ] {
        let d = decide(&disabled, &namespace, &cfg);
        assert!(matches!(d.outcome, Outcome::Inject { .. }), "{namespace:?}");
        assert_eq!(d.warnings.len(), 1, "{:?}", d.warnings);
        assert!(d.warnings[0].contains("portcullis.dev/inject=\"disabled\" ignored"));
        assert_eq!(
            d.ignored_overrides,
            [crate::overrides::IgnoredOverride {
                annotation: "portcullis.dev/inject".into(),
                value: "disabled".into()
            }]
        );
    }

    // The namespace's own opt-out always counts.
    let ns_off = ns(&[("portcullis.dev/inject", "disabled")]);
    assert_eq!(
        skip_reason(&app_pod(), &ns_off, &cfg).0,
        SkipReason::OptedOut
    );

    // The pod's own "enabled" wins over the namespace default: it only makes things stricter.
    let enabled = with_annotations(app_pod(), &[("portcullis.dev/inject", "enabled")]);
    inject(&enabled, &ns_off, &cfg);

    // Anything else is reported and ignored.
    let typo = with_annotations(app_pod(), &[("portcullis.dev/inject", "off")]);
    let (_, warnings) = inject(&typo, &no_ns(), &cfg);
    assert_eq!(warnings.len(), 1);
    assert!(
        warnings[0].contains("portcullis.dev/inject"),
        "{warnings:?}"
    );
}

#[test]
fn weakening_pod_annotations_need_the_namespace_and_every_exemption_is_written() {
    let weak = with_annotations(
        app_pod(),
        &[
            ("portcullis.dev/policy-mode", "audit"),
            ("portcullis.dev/skip-inbound-ports", "22"),
            ("portcullis.dev/skip-outbound-ports", "5432"),
            ("portcullis.dev/skip-outbound-cidrs", "0.0.0.0/0"),
            ("portcullis.dev/enforce-udp", "false"),
            ("portcullis.dev/drop-net-raw", "false"),
            // A pod cannot allow itself.
            ("portcullis.dev/allow-pod-overrides", "true"),
            // Nor hide or invent exemptions.
            ("portcullis.dev/exemptions", ""),
        ],
    );
    let cfg = InjectorConfig::default();

    // Not allowed: everything stays enforced, six warnings, nothing exempt.
    let (p, warnings) = inject(&weak, &ns(&[]), &cfg);
    assert_eq!(warnings.len(), 6, "{warnings:#?}");
    assert!(warnings
        .iter()
        .all(|w| w.contains("does not allow pod overrides")));
    let proxy = env_of(find(&p, "portcullis-proxy"));
    assert_eq!(proxy["PORTCULLIS_MODE"], "enforce");
    assert_eq!(proxy["PORTCULLIS_ENFORCE_UDP"], "true");
    let init = env_of(find(&p, "portcullis-init"));
    assert!(!init.contains_key("PORTCULLIS_SKIP_OUTBOUND_CIDRS"));
    assert!(!annotations(&p).contains_key("portcullis.dev/exemptions"));
    let d = decide(&weak, &ns(&[]), &cfg);
    assert_eq!(d.ignored_overrides.len(), 6);
    assert_eq!(d.exemptions, None);

    // Allowed: each one counts and is written down.
    let (p, warnings) = inject(&weak, &permissive_ns(&[]), &cfg);
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(warnings[0].contains("egress not enforceable: container \"app\" (NET_RAW)"));
    assert_eq!(
        annotations(&p)["portcullis.dev/exemptions"],
        "audit-mode;skip-inbound-ports=22;skip-outbound-ports=5432;skip-outbound-cidrs=0.0.0.0/0;udp-not-enforced;egress-not-enforceable=NET_RAW"
    );
    let proxy = find(&p, "portcullis-proxy");
    assert_eq!(env_of(proxy)["PORTCULLIS_MODE"], "audit");
    assert_eq!(env_of(proxy)["PORTCULLIS_ENFORCE_UDP"], "false");
    assert!(!env_of(proxy).contains_key("PORTCULLIS_NFQUEUE"));
    let caps = proxy
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref())
        .expect("caps");
    assert_eq!(caps.add, None, "no NET_ADMIN without UDP enforcement");
    assert_eq!(
        env_of(find(&p, "portcullis-init"))["PORTCULLIS_ENFORCE_UDP"],
        "false"
    );
    let app_sc = find(&p, "app").security_context.clone();
    assert_eq!(app_sc, None, "NET_RAW kept as the pod asked");
}

#[test]
fn udp_enforcement_off_by_namespace_or_flag() {
    for (namespace, cfg) in [
        (
            ns(&[("portcullis.dev/enforce-udp", "false")]),
            InjectorConfig::default(),
        ),
        (
            no_ns(),
            InjectorConfig {
                enforce_udp: crate::values::Switch(false),
                ..InjectorConfig::default()
            },
        ),
    ] {
        let (p, warnings) = inject(&app_pod(), &namespace, &cfg);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(
            annotations(&p)["portcullis.dev/exemptions"],
            "udp-not-enforced"
        );
        let proxy = find(&p, "portcullis-proxy");
        assert_eq!(env_of(proxy)["PORTCULLIS_ENFORCE_UDP"], "false");
        // No NET_ADMIN, no mark: neither container is told one (UID 2171 alone is exempt),
        // and inbound TCP is relayed (no queue to judge it in).
        for c in ["portcullis-proxy", "portcullis-init"] {
            assert!(
                !env_of(find(&p, c)).contains_key("PORTCULLIS_PROXY_MARK"),
                "{c}"
            );
            assert_eq!(
                env_of(find(&p, c))["PORTCULLIS_INBOUND_TCP"],
                "proxy",
                "{c}"
            );
        }
        let sc = proxy.security_context.as_ref().expect("securityContext");
        let caps = sc.capabilities.as_ref().expect("caps");
        assert_eq!(caps.add, None);
        // No capability to gain: no privilege escalation either.
        assert_eq!(sc.allow_privilege_escalation, Some(false));
    }
    // A pod may turn it back on where the namespace turned it off: that is stricter.
    let p = with_annotations(app_pod(), &[("portcullis.dev/enforce-udp", "true")]);
    let (p, _) = inject(
        &p,
        &ns(&[("portcullis.dev/enforce-udp", "false")]),
        &InjectorConfig::default(),
    );
    assert_eq!(
        env_of(find(&p, "portcullis-proxy"))["PORTCULLIS_ENFORCE_UDP"],
        "true"
    );
}

#[test]
fn a_forged_exemptions_annotation_is_removed() {
    let p = with_annotations(app_pod(), &[("portcullis.dev/exemptions", "audit-mode")]);
    let (p, _) = inject(&p, &no_ns(), &InjectorConfig::default());
    assert!(!annotations(&p).contains_key("portcullis.dev/exemptions"));
    // And one that hides an exemption is overwritten.
    let p = with_annotations(app_pod(), &[("portcullis.dev/exemptions", "")]);
    let (p, _) = inject(
        &p,
        &ns(&[("portcullis.dev/policy-mode", "audit")]),
        &InjectorConfig::default(),
    );
    assert_eq!(annotations(&p)["portcullis.dev/exemptions"], "audit-mode");
}

#[test]
fn pods_that_run_as_the_proxy_uid_are_refused() {
    let cfg = InjectorConfig::default();
    for spec in [
        json!({"securityContext": {"runAsUser": 2171}, "containers": [{"name": "app"}]}),
        json!({"containers": [{"name": "app", "securityContext": {"runAsUser": 2171}}]}),
        json!({"initContainers": [{"name": "setup", "securityContext": {"runAsUser": 2171}}],
               "containers": [{"name": "app"}]}),
    ] {
        let p = pod(json!({"metadata": {"name": "x"}, "spec": spec}));
        let d = decide(&p, &no_ns(), &cfg);
        let Outcome::Deny(msg) = d.outcome else {
            panic!("expected a refusal for {spec}, got {:?}", d.outcome);
        };
        assert!(
            msg.contains("UID 2171") && msg.contains("runAsUser"),
            "{msg}"
        );
    }
    // The UID is the configured one.
    let p = pod(
        json!({"spec": {"containers": [{"name": "app", "securityContext": {"runAsUser": 2171}}]}}),
    );
    let other = InjectorConfig {
        proxy_uid: 3000,
        ..InjectorConfig::default()
    };
    let (patched, _) = inject(&p, &no_ns(), &other);
    let proxy = find(&patched, "portcullis-proxy");
    assert_eq!(
        proxy.security_context.as_ref().and_then(|s| s.run_as_user),
        Some(3000)
    );
    assert_eq!(
        env_of(find(&patched, "portcullis-init"))["PORTCULLIS_PROXY_UID"],
        "3000"
    );
    // The group alone exempts nothing: allowed.
    let p = pod(
        json!({"spec": {"containers": [{"name": "app", "securityContext": {"runAsGroup": 2171}}]}}),
    );
    inject(&p, &no_ns(), &cfg);
    // A pod that is not injected runs no proxy, so no exemption to abuse.
    let p = pod(
        json!({"spec": {"hostNetwork": true, "containers": [{"name": "app", "securityContext": {"runAsUser": 2171}}]}}),
    );
    assert_eq!(skip_reason(&p, &no_ns(), &cfg).0, SkipReason::HostNetwork);
}

#[test]
fn containers_that_keep_raw_sockets_make_egress_not_enforceable() {
    let p = pod(json!({"spec": {"containers": [
        {"name": "app"},
        {"name": "vpn", "securityContext": {"capabilities": {"add": ["NET_ADMIN"]}}},
        {"name": "debug", "securityContext": {"privileged": true}}
    ]}}));
    let (patched, warnings) = inject(&p, &no_ns(), &InjectorConfig::default());
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("container \"vpn\" (NET_ADMIN)")
            && warnings[0].contains("container \"debug\" (privileged)"),
        "{}",
        warnings[0]
    );
    assert_eq!(
        annotations(&patched)["portcullis.dev/exemptions"],
        "egress-not-enforceable=NET_ADMIN,privileged"
    );
    // NET_RAW is dropped from all three (privileged ignores it, but it costs nothing).
    for name in ["app", "vpn", "debug"] {
        let drop = find(&patched, name)
            .security_context
            .as_ref()
            .and_then(|s| s.capabilities.as_ref())
            .and_then(|c| c.drop.clone())
            .unwrap_or_default();
        assert!(drop.contains(&"NET_RAW".to_string()), "{name}: {drop:?}");
    }
}

#[test]
fn host_network_is_never_injected() {
    let mut p = app_pod();
    if let Some(s) = p.spec.as_mut() {
        s.host_network = Some(true);
    }
    let (reason, warnings) = skip_reason(&p, &no_ns(), &InjectorConfig::default());
    assert_eq!(reason, SkipReason::HostNetwork);
    assert_eq!(warnings.len(), 1);
    // Even when the pod asks for it.
    let p = with_annotations(p, &[("portcullis.dev/inject", "enabled")]);
    assert_eq!(
        skip_reason(&p, &no_ns(), &InjectorConfig::default()).0,
        SkipReason::HostNetwork
    );
}

#[test]
fn reinvocation_is_idempotent_in_both_modes() {
    for cfg in [InjectorConfig::default(), classic()] {
        for original in [app_pod(), pod_with_inits()] {
            let (once, _) = inject(&original, &no_ns(), &cfg);
            let (reason, warnings) = skip_reason(&once, &no_ns(), &cfg);
            assert_eq!(reason, SkipReason::AlreadyInjected);
            assert!(warnings.is_empty());
            // Also when the injector's mode changed in between.
            let other = InjectorConfig {
                sidecar_mode: match cfg.sidecar_mode {
                    SidecarMode::Native => SidecarMode::Classic,
                    SidecarMode::Classic => SidecarMode::Native,
                },
                ..InjectorConfig::default()
            };
            assert_eq!(
                skip_reason(&once, &no_ns(), &other).0,
                SkipReason::AlreadyInjected
            );
        }
    }
}

#[test]
fn conflicting_names_are_refused_unless_the_namespace_allows_opting_out() {
    let cfg = InjectorConfig::default();
    let conflicts = [
        json!({"spec": {"containers": [{"name": "app"}, {"name": "portcullis-init"}]}}),
        json!({"spec": {"containers": [{"name": "app"}],
            "volumes": [{"name": "portcullis-token", "emptyDir": {}}]}}),
        // Mounting the proxy's identity, which the injector is about to add.
        json!({"spec": {"containers": [{"name": "app",
            "volumeMounts": [{"name": "portcullis-token", "mountPath": "/t"}]}]}}),
    ];
    for p in conflicts {
        let p = pod(p);
        let d = decide(&p, &no_ns(), &cfg);
        let Outcome::Deny(msg) = &d.outcome else {
            panic!("expected a refusal, got {:?}", d.outcome);
        };
        assert!(msg.contains("Rename it"), "{msg}");
        let (reason, warnings) = skip_reason(&p, &permissive_ns(&[]), &cfg);
        assert!(matches!(reason, SkipReason::NameConflict(_)));
        assert_eq!(warnings.len(), 1);
    }
}

#[test]
fn look_alike_portcullis_containers_are_refused() {
    let cfg = InjectorConfig::default();
    // A "proxy" that checks nothing, and no init container: the pod would run unpoliced.
    let fake = pod(json!({"spec": {"containers": [
        {"name": "app"}, {"name": "portcullis-proxy", "image": "busybox", "command": ["sleep", "inf"]}
    ]}}));
    let d = decide(&fake, &permissive_ns(&[]), &cfg);
    let Outcome::Deny(msg) = &d.outcome else {
        panic!("expected a refusal, got {:?}", d.outcome);
    };
    assert!(
        msg.contains("portcullis-init is not the first init container"),
        "{msg}"
    );

    // Our containers, with one field changed each time.
    let (injected, _) = inject(&app_pod(), &no_ns(), &cfg);
    let tamper = |f: &dyn Fn(&mut Value)| {
        let mut v = serde_json::to_value(&injected).expect("json");
        f(&mut v);
        pod(v)
    };
    let cases: Vec<(&str, Pod)> = vec![
        (
            "environment",
            tamper(&|v| {
                v["spec"]["initContainers"][0]["env"]
                    .as_array_mut()
                    .expect("env")
                    .push(json!({"name": "PORTCULLIS_SKIP_OUTBOUND_CIDRS", "value": "0.0.0.0/0"}))
            }),
        ),
        (
            "environment",
            tamper(&|v| {
                v["spec"]["initContainers"][1]["env"]
                    .as_array_mut()
                    .expect("env")
                    .retain(|e| e["name"] != "POD_IPS")
            }),
        ),
        (
            "envFrom",
            tamper(&|v| {
                v["spec"]["initContainers"][0]["envFrom"] = json!([{"configMapRef": {"name": "x"}}])
            }),
        ),
        (
            "image",
            tamper(&|v| {
                v["spec"]["initContainers"][1]["image"] =
                    json!("evil.example/portcullis-proxy:0.1.0")
            }),
        ),
        (
            "command",
            tamper(&|v| v["spec"]["initContainers"][0]["command"] = json!(["true"])),
        ),
        (
            "runAsUser",
            tamper(&|v| v["spec"]["initContainers"][1]["securityContext"]["runAsUser"] = json!(0)),
        ),
        (
            "first init container",
            tamper(&|v| {
                v["spec"]["initContainers"]
                    .as_array_mut()
                    .expect("inits")
                    .swap(0, 1)
            }),
        ),
    ];
    for (what, p) in cases {
        let d = decide(&p, &no_ns(), &cfg);
        let Outcome::Deny(msg) = &d.outcome else {
            panic!("{what}: expected a refusal, got {:?}", d.outcome);
        };
        assert!(msg.contains(what), "{what}: {msg}");
    }
    // A variable another webhook adds to every container is not ours to judge.
    let p = tamper(&|v| {
        v["spec"]["initContainers"][1]["env"]
            .as_array_mut()
            .expect("env")
            .push(json!({"name": "HTTP_PROXY", "value": "http://squid:3128"}))
    });
    assert_eq!(
        skip_reason(&p, &no_ns(), &cfg).0,
        SkipReason::AlreadyInjected
    );
}

#[test]
fn pods_without_spec_or_containers_are_left_alone() {
    let cfg = InjectorConfig::default();
    assert_eq!(
        skip_reason(&pod(json!({"metadata": {}})), &no_ns(), &cfg).0,
        SkipReason::InvalidPod
    );
    assert_eq!(
        skip_reason(&pod(json!({"spec": {"containers": []}})), &no_ns(), &cfg).0,
        SkipReason::InvalidPod
    );
}

#[test]
fn pod_annotations_override_everything() {
    let p = with_annotations(
        app_pod(),
        &[
            ("portcullis.dev/skip-inbound-ports", "22, 8000-8100"),
            ("portcullis.dev/skip-outbound-ports", "5432"),
            ("portcullis.dev/skip-outbound-cidrs", "10.0.0.0/8,fd00::/8"),
            ("portcullis.dev/policy-mode", "audit"),
            ("portcullis.dev/log-level", "debug"),
            ("portcullis.dev/proxy-cpu-request", "100m"),
            ("portcullis.dev/proxy-cpu-limit", "1"),
            ("portcullis.dev/proxy-memory-request", "64Mi"),
            ("portcullis.dev/proxy-memory-limit", "512Mi"),
            ("portcullis.dev/sidecar-mode", "classic"),
        ],
    );
    let namespace = permissive_ns(&[
        ("portcullis.dev/policy-mode", "enforce"),
        ("portcullis.dev/log-level", "warn"),
    ]);
    let (p, warnings) = inject(&p, &namespace, &InjectorConfig::default());
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        names(Some(&spec(&p).containers)),
        ["portcullis-proxy", "app"]
    );
    let init = env_of(find(&p, "portcullis-init"));
    assert_eq!(init["PORTCULLIS_SKIP_INBOUND_PORTS"], "22,8000-8100");
    assert_eq!(init["PORTCULLIS_SKIP_OUTBOUND_PORTS"], "5432");
    assert_eq!(
        init["PORTCULLIS_SKIP_OUTBOUND_CIDRS"],
        "10.0.0.0/8,fd00::/8"
    );
    let proxy = find(&p, "portcullis-proxy");
    let env = env_of(proxy);
    assert_eq!(env["PORTCULLIS_MODE"], "audit");
    assert_eq!(env["PORTCULLIS_LOG"], "debug");
    assert_eq!(quantity(proxy, "requests", "cpu").as_deref(), Some("100m"));
    assert_eq!(quantity(proxy, "limits", "cpu").as_deref(), Some("1"));
    assert_eq!(
        quantity(proxy, "requests", "memory").as_deref(),
        Some("64Mi")
    );
    assert_eq!(
        quantity(proxy, "limits", "memory").as_deref(),
        Some("512Mi")
    );
}

#[test]
fn namespace_annotations_are_defaults() {
    let namespace = ns(&[
        ("portcullis.dev/policy-mode", "audit"),
        ("portcullis.dev/skip-outbound-cidrs", "169.254.169.254"),
        ("portcullis.dev/sidecar-mode", "classic"),
        ("unrelated", "x"),
    ]);
    let (p, warnings) = inject(&app_pod(), &namespace, &InjectorConfig::default());
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        env_of(find(&p, "portcullis-proxy"))["PORTCULLIS_MODE"],
        "audit"
    );
    assert_eq!(
        env_of(find(&p, "portcullis-init"))["PORTCULLIS_SKIP_OUTBOUND_CIDRS"],
        "169.254.169.254/32"
    );
    assert_eq!(
        names(Some(&spec(&p).containers)),
        ["portcullis-proxy", "app"]
    );
}

#[test]
fn invalid_pod_value_falls_back_to_namespace_then_default() {
    let p = with_annotations(app_pod(), &[("portcullis.dev/policy-mode", "strict")]);
    let (patched, warnings) = inject(
        &p,
        &ns(&[("portcullis.dev/policy-mode", "audit")]),
        &InjectorConfig::default(),
    );
    assert_eq!(
        env_of(find(&patched, "portcullis-proxy"))["PORTCULLIS_MODE"],
        "audit"
    );
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].contains("invalid pod annotation portcullis.dev/policy-mode=\"strict\""));
    assert!(warnings[0].ends_with("using \"audit\""), "{}", warnings[0]);

    let (patched, warnings) = inject(
        &p,
        &ns(&[("portcullis.dev/policy-mode", "loose")]),
        &InjectorConfig::default(),
    );
    assert_eq!(
        env_of(find(&patched, "portcullis-proxy"))["PORTCULLIS_MODE"],
        "enforce"
    );
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings[1].contains("invalid namespace annotation"));
}

#[test]
fn invalid_values_fall_back_with_warnings() {
    let p = with_annotations(
        app_pod(),
        &[
            ("portcullis.dev/skip-inbound-ports", "22,70000"),
            ("portcullis.dev/skip-outbound-ports", "http"),
            ("portcullis.dev/skip-outbound-cidrs", "10.0.0.0/99"),
            ("portcullis.dev/log-level", "chatty"),
            ("portcullis.dev/proxy-memory-limit", "lots"),
            ("portcullis.dev/sidecar-mode", "sidecar"),
        ],
    );
    let cfg = InjectorConfig {
        skip_inbound_ports: "15000".parse().expect("ports"),
        ..InjectorConfig::default()
    };
    let (p, warnings) = inject(&p, &permissive_ns(&[]), &cfg);
    assert_eq!(warnings.len(), 6, "{warnings:#?}");
    for w in &warnings {
        assert!(w.starts_with("portcullis: invalid pod annotation"), "{w}");
        assert!(w.chars().count() < 256, "{w}");
    }
    let init = env_of(find(&p, "portcullis-init"));
    assert_eq!(init["PORTCULLIS_SKIP_INBOUND_PORTS"], "15000");
    assert!(!init.contains_key("PORTCULLIS_SKIP_OUTBOUND_PORTS"));
    assert!(!init.contains_key("PORTCULLIS_SKIP_OUTBOUND_CIDRS"));
    let proxy = find(&p, "portcullis-proxy");
    assert_eq!(env_of(proxy)["PORTCULLIS_LOG"], "info");
    assert_eq!(
        quantity(proxy, "limits", "memory").as_deref(),
        Some("256Mi")
    );
    assert_eq!(proxy.restart_policy.as_deref(), Some("Always"));
}

#[test]
fn long_invalid_values_are_shortened_in_warnings() {
    let long = "x".repeat(5000);
    let p = with_annotations(app_pod(), &[("portcullis.dev/log-level", &long)]);
    let (_, warnings) = inject(&p, &no_ns(), &InjectorConfig::default());
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].chars().count() < 256, "{}", warnings[0]);
}

#[test]
fn request_above_limit_falls_back_to_defaults() {
    let p = with_annotations(
        app_pod(),
        &[
            ("portcullis.dev/proxy-memory-request", "1Gi"),
            ("portcullis.dev/proxy-cpu-request", "2"),
        ],
    );
    let (p, warnings) = inject(&p, &no_ns(), &InjectorConfig::default());
    // CPU has no default limit: a request of 2 is fine. Memory 1Gi > 256Mi limit.
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("memory request 1Gi exceeds its limit 256Mi"));
    let proxy = find(&p, "portcullis-proxy");
    assert_eq!(
        quantity(proxy, "requests", "memory").as_deref(),
        Some("32Mi")
    );
    assert_eq!(
        quantity(proxy, "limits", "memory").as_deref(),
        Some("256Mi")
    );
    assert_eq!(quantity(proxy, "requests", "cpu").as_deref(), Some("2"));
    assert_eq!(quantity(proxy, "limits", "cpu"), None);
}

#[test]
fn namespace_unavailable_warns_but_injects() {
    let d = decide(
        &app_pod(),
        &NamespaceDefaults::Unavailable("timed out".into()),
        &InjectorConfig::default(),
    );
    assert!(matches!(d.outcome, Outcome::Inject { .. }));
    assert_eq!(d.warnings.len(), 1);
    assert!(d.warnings[0].contains("namespace defaults unavailable (timed out)"));
    // Without the namespace's word, a pod's own opt-out does not count (fail closed).
    let p = with_annotations(app_pod(), &[("portcullis.dev/inject", "disabled")]);
    let d = decide(
        &p,
        &NamespaceDefaults::Unavailable("x".into()),
        &InjectorConfig::default(),
    );
    assert!(matches!(d.outcome, Outcome::Inject { .. }));
    assert_eq!(d.warnings.len(), 2, "{:?}", d.warnings);
    // No warning about the namespace when the pod is not injected anyway.
    let mut host = app_pod();
    if let Some(s) = host.spec.as_mut() {
        s.host_network = Some(true);
    }
    let d = decide(
        &host,
        &NamespaceDefaults::Unavailable("x".into()),
        &InjectorConfig::default(),
    );
    assert_eq!(
        d.warnings.len(),
        1,
        "only the hostNetwork one: {:?}",
        d.warnings
    );
}

#[test]
fn warns_about_ports_the_proxy_uses_and_classic_jobs() {
    let p = pod(json!({"spec": {
        "restartPolicy": "Never",
        "containers": [{"name": "app", "ports": [{"containerPort": 4191}, {"containerPort": 80}]}]
    }}));
    let (_, warnings) = inject(&p, &no_ns(), &InjectorConfig::default());
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("declares port 4191"));
    let (_, warnings) = inject(&p, &no_ns(), &classic());
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings[1].contains("never completes"));
}

#[test]
fn config_is_applied() {
    let cfg = InjectorConfig {
        proxy_image: "registry.local/proxy:dev".into(),
        init_image: "registry.local/init:dev".into(),
        image_pull_policy: Some("Always".into()),
        controller_url: "https://ctl:1".into(),
        controller_ca_pem: Some(
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
        ),
        token_expiration_seconds: 600,
        version: "9.9.9".into(),
        ..InjectorConfig::default()
    };
    let (p, _) = inject(&app_pod(), &no_ns(), &cfg);
    let proxy = find(&p, "portcullis-proxy");
    assert_eq!(proxy.image.as_deref(), Some("registry.local/proxy:dev"));
    assert_eq!(proxy.image_pull_policy.as_deref(), Some("Always"));
    assert_eq!(env_of(proxy)["PORTCULLIS_CONTROLLER"], "https://ctl:1");
    assert!(
        env_of(proxy)["PORTCULLIS_CONTROLLER_CA_PEM"].starts_with("-----BEGIN CERTIFICATE-----")
    );
    let init = find(&p, "portcullis-init");
    assert_eq!(init.image.as_deref(), Some("registry.local/init:dev"));
    assert_eq!(annotations(&p)["portcullis.dev/injected-version"], "9.9.9");
    let vol = spec(&p)
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "portcullis-token")
        .and_then(|v| v.projected.as_ref())
        .and_then(|p| p.sources.as_ref())
        .and_then(|s| s[0].service_account_token.as_ref())
        .and_then(|t| t.expiration_seconds);
    assert_eq!(vol, Some(600));
}

#[test]
fn patch_only_adds_on_a_pod_without_a_forged_exemptions_annotation() {
    let d = decide(&pod_with_inits(), &no_ns(), &InjectorConfig::default());
    let Outcome::Inject { patch, .. } = d.outcome else {
        panic!("inject")
    };
    assert!(patch
        .0
        .iter()
        .all(|op| matches!(op, PatchOperation::Add(_))));
}

#[test]
fn with_net_admin_init_and_proxy_get_the_same_proxy_mark() {
    let (p, _) = inject(&app_pod(), &no_ns(), &InjectorConfig::default());
    let proxy = find(&p, "portcullis-proxy");
    let init = find(&p, "portcullis-init");
    let caps = proxy
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref())
        .and_then(|c| c.add.clone());
    assert_eq!(
        caps,
        Some(vec!["NET_ADMIN".to_string()]),
        "the mark needs NET_ADMIN"
    );
    let mark = env_of(proxy)["PORTCULLIS_PROXY_MARK"].clone();
    assert_eq!(mark, "0x1000");
    assert_eq!(env_of(init)["PORTCULLIS_PROXY_MARK"], mark);
    // Bit 12 only: clear of kube-proxy (0x4000, 0x8000), CNI portmap (0x2000), Cilium's magic
    // nibble (0x0f00), Calico/Weave/Tailscale (upper 16 bits), AWS CNI (0x80) and Istio's
    // ambient bits (0x3f0); see docs/CONVENTIONS.md.
    let value = u32::from_str_radix(mark.trim_start_matches("0x"), 16).expect("hex");
    for taken in [0x4000u32, 0x8000, 0x2000, 0x0f00, 0xffff_0000, 0x80, 0x3f0] {
        assert_eq!(value & taken, 0, "{taken:#x}");
    }
}
