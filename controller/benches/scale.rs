//! The controller at cluster scale, in one process: a synthetic cluster (default 10,000 pods,
//! 1,000 policies, 50 namespaces) and 1,000 subscribed proxies (in-memory streams: the hub's
//! per-pod channels, each line serialised as the HTTP stream would send it).
//!
//! Reports: memory held by the controller state, the initial compile, and for a series of
//! single-pod label changes: time from the change to the new table at every affected proxy
//! (p50/p99), bytes sent per change, and how many unaffected proxies received anything (must be 0).
//!
//! Services: 2,000 Services (each selecting one app of a namespace, ~10 endpoints) with their
//! EndpointSlices. Every subscribed proxy also follows the service map as its stream does (the
//! whole map, then deltas at most every 100 ms, each serialised as the line it would send), and
//! for a series of endpoint changes (one endpoint of one slice turning not ready, or ready
//! again) the bench reports the time from the change to the delta at every proxy.
//!
//! ClusterNetworkPolicies: 200 CNPs of 25 rules each (half Admin, half Baseline, each selecting
//! one namespace, every rule naming another), applied as one relist, then single-CNP changes: the
//! apply time and the pods reassembled per change (only the changed CNP's subjects).
//!
//! `cargo bench -p portcullis-controller --bench scale` (env SCALE_PODS, SCALE_POLICIES,
//! SCALE_NAMESPACES, SCALE_PROXIES, SCALE_CHANGES, SCALE_SERVICES, SCALE_ENDPOINT_CHANGES,
//! SCALE_CNPS to resize).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_controller::hub::{services_line, Hub};
use portcullis_controller::state::Change;
use portcullis_policy::cluster::SourcedCnp;
use portcullis_policy::service::{
    derive_slices, EndpointSliceInfo, ServiceInfo, ServicePort, ServiceType, TargetPort,
};
use portcullis_policy::{synthetic, PodInfo, Protocol};
use tokio::sync::mpsc;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// What each simulated proxy reports: (proxy index, when the update arrived, bytes).
type Arrival = (usize, Instant, usize);

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing. Both just run.
    let pods = env("SCALE_PODS", 10_000);
    let policies = env("SCALE_POLICIES", 1_000);
    let namespaces = env("SCALE_NAMESPACES", 50);
    let proxies = env("SCALE_PROXIES", 1_000).min(pods);
    let changes = env("SCALE_CHANGES", 200);
    let service_count = env("SCALE_SERVICES", 2_000);
    let endpoint_changes = env("SCALE_ENDPOINT_CHANGES", 100);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let rss_start = rss_kib();
    let cluster = synthetic::cluster(namespaces, pods, policies, 7);
    let pod_keys: Vec<(String, String)> = cluster
        .pods
        .iter()
        .map(|p| (p.namespace.clone(), p.name.clone()))
        .collect();
    let mut pod_infos = cluster.pods.clone();
    let hub = Arc::new(Hub::new());
    let started = Instant::now();
    hub.apply(vec![
        Change::ResetNamespaces(cluster.namespaces.values().cloned().collect()),
        Change::ResetPods(cluster.pods.clone()),
        Change::ResetPolicies(cluster.policies.clone()),
    ]);
    let initial = started.elapsed();
    let (services, mut slices) = synthetic_services(service_count, namespaces, &cluster.pods);
    let endpoints: usize = slices.iter().map(|s| s.endpoints.len()).sum();
    let started = Instant::now();
    hub.apply(vec![
        Change::ResetServices(services),
        Change::ResetEndpointSlices(slices.clone()),
    ]);
    let services_initial = started.elapsed();
    let namespace_names: Vec<String> = cluster.namespaces.keys().cloned().collect();
    drop(cluster);
    hub.mark_ready();

    // 1,000 proxies, spread over the cluster: every tenth pod.
    let stride = (pods / proxies).max(1);
    let subscribed: Vec<usize> = (0..proxies).map(|i| i * stride).collect();
    let (tx, mut rx) = mpsc::unbounded_channel::<Arrival>();
    let received_total = Arc::new(AtomicU64::new(0));
    runtime.block_on(async {
        for (proxy, &pod) in subscribed.iter().enumerate() {
            let (ns, name) = &pod_keys[pod];
            let mut updates = hub.subscribe(ns, name);
            updates.borrow_and_update();
            let tx = tx.clone();
            let received_total = received_total.clone();
            tokio::spawn(async move {
                while updates.changed().await.is_ok() {
                    let v = updates.borrow_and_update().clone();
                    // What the stream would write for this update.
                    let bytes = portcullis_wire::Line::Table(portcullis_wire::TableUpdate {
                        generation: v.generation,
                        table: v.table.clone(),
                    })
                    .encode()
                    .map(|b| b.len())
                    .unwrap_or(0);
                    received_total.fetch_add(1, Ordering::Relaxed);
                    if tx.send((proxy, Instant::now(), bytes)).is_err() {
                        return;
                    }
                }
            });
        }
    });
    // Every proxy follows the service map as its stream would.
    let (svc_tx, mut svc_rx) = mpsc::unbounded_channel::<(usize, u64, Instant, usize)>();
    runtime.block_on(async {
        for proxy in 0..subscribed.len() {
            let hub = hub.clone();
            let tx = svc_tx.clone();
            let mut changes = hub.service_changes();
            tokio::spawn(async move {
                let mut sent = 0u64;
                let mut last = Instant::now() - Duration::from_secs(1);
                loop {
                    // Like serve.rs: at most one update per interval.
                    tokio::time::sleep_until((last + Duration::from_millis(100)).into()).await;
                    changes.borrow_and_update();
                    if let Some(update) = hub.services_since(sent) {
                        sent = update.version();
                        last = Instant::now();
                        let bytes = services_line(update).encode().map_or(0, |b| b.len());
                        if tx.send((proxy, sent, Instant::now(), bytes)).is_err() {
                            return;
                        }
                    }
                    if changes.changed().await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    // The whole map, once per proxy.
    let mut full_map_bytes = 0;
    runtime.block_on(async {
        for _ in 0..subscribed.len() {
            let (_, _, _, n) = svc_rx.recv().await.expect("initial service map");
            full_map_bytes = n;
        }
    });
    let rss_loaded = rss_kib();
    let by_pod: std::collections::HashMap<String, usize> = subscribed
        .iter()
        .enumerate()
        .map(|(proxy, &pod)| (format!("{}/{}", pod_keys[pod].0, pod_keys[pod].1), proxy))
        .collect();

    let mut latencies = Vec::new();
    let mut bytes_per_change = Vec::new();
    let mut affected_per_change = Vec::new();
    let mut unaffected_wakeups = 0u64;
    let mut apply_times = Vec::new();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..changes {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let victim = (seed % pod_infos.len() as u64) as usize;
        // A label change that moves the pod between apps: selectors on both sides notice.
        let pod = &mut pod_infos[victim];
        let app = format!("app-{}", seed % synthetic::APPS_PER_NAMESPACE as u64);
        pod.labels.insert("app".into(), app);
        let change = Change::Pod(pod.clone());

        let t0 = Instant::now();
        let applied = hub.apply(vec![change]);
        apply_times.push(t0.elapsed());
        let affected: HashSet<usize> = applied
            .changed
            .iter()
            .filter_map(|(k, _)| by_pod.get(k).copied())
            .collect();
        affected_per_change.push(affected.len());
        let mut waiting = affected.clone();
        let mut bytes = 0usize;
        runtime.block_on(async {
            while !waiting.is_empty() {
                match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
                    Ok(Some((proxy, at, n))) => {
                        if waiting.remove(&proxy) {
                            latencies.push(at.duration_since(t0));
                            bytes += n;
                        } else {
                            unaffected_wakeups += 1;
                        }
                    }
                    _ => panic!("an affected proxy never received its table"),
                }
            }
            // Anything else that arrives shortly after went to a proxy that should not have
            // heard about this change.
            while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(2), rx.recv()).await
            {
                unaffected_wakeups += 1;
            }
        });
        bytes_per_change.push(bytes);
    }
    // Endpoint changes: one endpoint of one slice flips readiness; every proxy must get it.
    let mut endpoint_latencies = Vec::new();
    let mut endpoint_apply = Vec::new();
    let mut delta_bytes = Vec::new();
    for _ in 0..endpoint_changes {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let i = (seed % slices.len() as u64) as usize;
        let slice = &mut slices[i];
        if slice.endpoints.is_empty() {
            continue;
        }
        let e = (seed >> 20) as usize % slice.endpoints.len();
        let ep = &mut slice.endpoints[e];
        ep.ready = !ep.ready;
        ep.serving = ep.ready;
        let change = Change::EndpointSlice(slice.clone());
        let t0 = Instant::now();
        let applied = hub.apply(vec![change]);
        endpoint_apply.push(t0.elapsed());
        assert_eq!(applied.services_changed.len(), 1, "one Service changed");
        assert!(
            applied.changed.is_empty(),
            "an endpoint change recompiles no table"
        );
        let want = hub.services_since(0).map(|u| u.version()).expect("version");
        let mut waiting: HashSet<usize> = (0..subscribed.len()).collect();
        runtime.block_on(async {
            while !waiting.is_empty() {
                match tokio::time::timeout(Duration::from_secs(10), svc_rx.recv()).await {
                    Ok(Some((proxy, version, at, n))) => {
                        if version >= want && waiting.remove(&proxy) {
                            endpoint_latencies.push(at.duration_since(t0));
                            delta_bytes.push(n);
                        }
                    }
                    _ => panic!("a proxy never received the endpoint change"),
                }
            }
        });
    }
    endpoint_latencies.sort();
    endpoint_apply.sort();
    delta_bytes.sort();
    let rss_end = rss_kib();

    latencies.sort();
    apply_times.sort();
    let mut sorted_bytes = bytes_per_change.clone();
    sorted_bytes.sort();
    let mean_affected =
        affected_per_change.iter().sum::<usize>() as f64 / affected_per_change.len().max(1) as f64;

    println!("controller scale: {pods} pods, {policies} policies, {namespaces} namespaces, {proxies} proxies subscribed, {changes} label changes");
    println!(
        "  initial compile (relist of everything): {:.0} ms",
        initial.as_secs_f64() * 1000.0
    );
    println!(
        "  memory: {:.1} MiB resident after load + subscriptions ({:.1} MiB at start)",
        rss_loaded as f64 / 1024.0,
        rss_start as f64 / 1024.0
    );
    println!(
        "  apply per change: p50 {:.2} ms, p99 {:.2} ms",
        percentile(&apply_times, 0.5).as_secs_f64() * 1000.0,
        percentile(&apply_times, 0.99).as_secs_f64() * 1000.0
    );
    println!(
        "  change -> new table at every affected proxy: p50 {:.2} ms, p99 {:.2} ms ({} deliveries)",
        percentile(&latencies, 0.5).as_secs_f64() * 1000.0,
        percentile(&latencies, 0.99).as_secs_f64() * 1000.0,
        latencies.len()
    );
    println!(
        "  affected proxies per change: mean {mean_affected:.1} of {proxies}; bytes sent per change: p50 {} B, max {} B",
        percentile_usize(&sorted_bytes, 0.5),
        sorted_bytes.last().copied().unwrap_or(0)
    );
    println!("  unaffected proxies that received anything: {unaffected_wakeups}");
    println!(
        "  total updates received: {}",
        received_total.load(Ordering::Relaxed)
    );
    println!(
        "services: {service_count} Services, {} EndpointSlices, {endpoints} endpoints; {endpoint_changes} endpoint changes",
        slices.len()
    );
    println!(
        "  initial resolve: {:.0} ms; whole map per proxy: {} B",
        services_initial.as_secs_f64() * 1000.0,
        full_map_bytes
    );
    println!(
        "  apply per endpoint change: p50 {:.2} ms, p99 {:.2} ms",
        percentile(&endpoint_apply, 0.5).as_secs_f64() * 1000.0,
        percentile(&endpoint_apply, 0.99).as_secs_f64() * 1000.0
    );
    println!(
        "  endpoint change -> delta at every proxy: p50 {:.2} ms, p99 {:.2} ms ({} deliveries); delta p50 {} B",
        percentile(&endpoint_latencies, 0.5).as_secs_f64() * 1000.0,
        percentile(&endpoint_latencies, 0.99).as_secs_f64() * 1000.0,
        endpoint_latencies.len(),
        percentile_usize(&delta_bytes, 0.5)
    );
    println!(
        "  memory at the end: {:.1} MiB resident",
        rss_end as f64 / 1024.0
    );
    cnp_phase(&hub, &namespace_names, env("SCALE_CNPS", 200));
}

/// One CNP: tier by parity, subject one namespace, 25 ingress rules each naming another.
fn synthetic_cnp(i: usize, priority: usize, namespaces: &[String]) -> SourcedCnp {
    let ns = |k: usize| namespaces[k % namespaces.len()].clone();
    let rules: Vec<serde_json::Value> = (0..25usize)
        .map(|r| {
            serde_json::json!({
                "name": format!("r{r}"),
                "action": if r.is_multiple_of(3) { "Deny" } else { "Accept" },
                "from": [{ "namespaces": { "matchLabels": { "kubernetes.io/metadata.name": ns(i + r + 1) } } }],
                "protocols": [{ "tcp": { "destinationPort": { "number": 8000 + r } } }],
            })
        })
        .collect();
    let text = serde_json::json!({
        "apiVersion": "policy.networking.k8s.io/v1alpha2",
        "kind": "ClusterNetworkPolicy",
        "metadata": { "name": format!("cnp-{i}") },
        "spec": {
            "tier": if i.is_multiple_of(2) { "Admin" } else { "Baseline" },
            "priority": priority,
            "subject": { "namespaces": { "matchLabels": { "kubernetes.io/metadata.name": ns(i) } } },
            "ingress": rules,
        },
    });
    SourcedCnp {
        cnp: portcullis_policy::cnp::parse(&text.to_string()).expect("synthetic CNP"),
        source: None,
    }
}

/// 200 CNPs as one relist, then single-CNP changes.
fn cnp_phase(hub: &Hub, namespaces: &[String], count: usize) {
    let all: Vec<SourcedCnp> = (0..count)
        .map(|i| synthetic_cnp(i, i % 1000, namespaces))
        .collect();
    let started = Instant::now();
    let applied = hub.apply(vec![Change::ResetCnps {
        cnps: all,
        unreadable: Vec::new(),
    }]);
    let initial = started.elapsed();
    assert!(applied.rejected.is_empty(), "{:?}", applied.rejected);
    let mut times = Vec::new();
    let mut assembled = Vec::new();
    for k in 0..20 {
        let i = (k * 7) % count.max(1);
        let changed = synthetic_cnp(i, (i + 500) % 1000, namespaces);
        let started = Instant::now();
        let applied = hub.apply(vec![Change::Cnp(Box::new(changed))]);
        times.push(started.elapsed());
        assembled.push(applied.tables_assembled);
    }
    times.sort();
    assembled.sort();
    println!(
        "cluster network policies: {count} CNPs of 25 rules; relist applied in {:.0} ms ({} tables assembled)",
        initial.as_secs_f64() * 1000.0,
        applied.tables_assembled
    );
    println!(
        "  apply per CNP change: p50 {:.2} ms, p99 {:.2} ms; tables reassembled per change: p50 {}",
        percentile(&times, 0.5).as_secs_f64() * 1000.0,
        percentile(&times, 0.99).as_secs_f64() * 1000.0,
        percentile_usize(&assembled, 0.5)
    );
}

/// `count` Services spread over the namespaces, each selecting one app (port 80 → 8080), with
/// the slices the EndpointSlice controller would write.
fn synthetic_services(
    count: usize,
    namespaces: usize,
    pods: &[PodInfo],
) -> (Vec<ServiceInfo>, Vec<EndpointSliceInfo>) {
    let mut services = Vec::with_capacity(count);
    let mut slices = Vec::new();
    let mut by_namespace: std::collections::HashMap<&str, Vec<PodInfo>> = Default::default();
    for p in pods {
        by_namespace
            .entry(p.namespace.as_str())
            .or_default()
            .push(p.clone());
    }
    for i in 0..count {
        let ns = synthetic::namespace_name(i % namespaces);
        let app = format!("app-{}", (i / namespaces) % synthetic::APPS_PER_NAMESPACE);
        let ip = std::net::Ipv4Addr::from(0x0a60_0000u32 + 10 + i as u32);
        let svc = ServiceInfo {
            namespace: ns.clone(),
            name: format!("svc-{i}"),
            service_type: ServiceType::ClusterIP,
            cluster_ips: vec![ip.into()],
            headless: false,
            selector: Some([("app".to_string(), app)].into()),
            ports: vec![ServicePort {
                name: None,
                protocol: Protocol::Tcp,
                port: 80,
                target_port: TargetPort::Number(8080),
            }],
        };
        slices.extend(derive_slices(
            &svc,
            by_namespace.get(ns.as_str()).map_or(&[][..], |v| &v[..]),
        ));
        services.push(svc);
    }
    (services, slices)
}

fn percentile_usize(sorted: &[usize], p: f64) -> usize {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}
