//! The table stream over real HTTPS (test CA from rcgen), consumed by the real proxy client:
//! a proxy gets its pod's table on connect, a new version when a change affects its pod, nothing
//! but heartbeats when a change affects other pods, and keeps its last table (marked stale) when
//! the controller shuts down.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_controller::hub::Hub;
use portcullis_controller::serve::{ServeOptions, TableServer};
use portcullis_controller::state::Change;
use portcullis_controller::token_review::Authenticator;
use portcullis_policy::cluster::SourcedPolicy;
use portcullis_policy::manifest::load_into;
use portcullis_policy::{Cluster, Direction, Protocol};
use portcullis_proxy::source::controller::{ControllerSource, TrustAnchor};
use portcullis_proxy::source::PodIdentity;
use portcullis_proxy::store::PolicyStore;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec: {containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}
status: {podIP: 10.1.0.10, hostIP: 192.168.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: shop, labels: {app: db}}
spec: {containers: [{name: c, ports: [{containerPort: 5432}]}]}
status: {podIP: 10.1.0.20, hostIP: 192.168.0.1}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec: {clusterIP: 10.96.0.20, selector: {app: db}, ports: [{port: 5432}]}
"#;

fn policy(name: &str, app: &str, port: u16) -> SourcedPolicy {
    let yaml = format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: shop}}\n\
         spec:\n  podSelector: {{matchLabels: {{app: {app}}}}}\n  ingress:\n  - ports: [{{port: {port}}}]\n"
    );
    let mut c = Cluster::new();
    let report = load_into(&mut c, &yaml, "test");
    assert!(report.errors.is_empty());
    c.policies.remove(0)
}

struct Pki {
    dir: PathBuf,
    ca_pem: String,
}

impl Pki {
    fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca =
            CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("ca");
        let mut leaf =
            CertificateParams::new(vec!["portcullis-controller.portcullis-system.svc".into()])
                .expect("params");
        leaf.subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
        let key = KeyPair::generate().expect("key");
        let cert = leaf.signed_by(&key, &ca).expect("leaf");
        // One directory per test: the certificate files are watched and reloaded.
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("pc-ctl-stream-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("tls.crt"), cert.pem()).expect("cert");
        std::fs::write(dir.join("tls.key"), key.serialize_pem()).expect("key");
        Pki {
            dir,
            ca_pem: ca.pem(),
        }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn allows(table: &portcullis_policy::PodTable, port: u16) -> bool {
    let db = "10.1.0.20".parse().expect("ip");
    table
        .check(Direction::Ingress, db, port, Protocol::Tcp)
        .allowed()
}

async fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A bare client: the raw ndjson lines of one pod's stream.
async fn raw_lines(
    addr: SocketAddr,
    connector: tokio_rustls::TlsConnector,
    path: &str,
) -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let mut tls = connector.connect(name, tcp).await.expect("handshake");
    tls.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .expect("request");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(tls).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            // Chunk-size lines and blank separators are framing; keep the JSON.
            if line.starts_with('{') && tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

#[tokio::test]
async fn tables_stream_over_https_to_the_proxy_and_only_affected_pods_hear_of_changes() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pki = Pki::new();
    let hub = Arc::new(Hub::new());
    let mut cluster = Cluster::new();
    load_into(&mut cluster, CLUSTER, "test");
    hub.apply(vec![
        Change::ResetNamespaces(cluster.namespaces.values().cloned().collect()),
        Change::ResetPods(cluster.pods.clone()),
        Change::Policy(Box::new(policy("web-in", "web", 8080))),
        Change::ResetServices(cluster.services.clone()),
        Change::ResetEndpointSlices(portcullis_policy::service::derive_slices(
            &cluster.services[0],
            &cluster.pods,
        )),
    ]);
    hub.mark_ready();

    let cert = portcullis_tls::ReloadingCert::load(
        pki.dir.join("tls.crt"),
        pki.dir.join("tls.key"),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .expect("cert");
    let acceptor = tokio_rustls::TlsAcceptor::from(cert.server_config().expect("config"));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop_tx, stop_rx) = watch::channel(false);
    let server = TableServer::new(
        hub.clone(),
        Authenticator::Disabled,
        ServeOptions {
            heartbeat: Duration::from_millis(200),
            ..Default::default()
        },
    );
    let serving = tokio::spawn(server.serve(listener, Some(acceptor), stop_rx));

    // The real proxy client, trusting the test CA.
    let store = Arc::new(PolicyStore::new());
    let source = ControllerSource::new(
        &format!("https://127.0.0.1:{}", addr.port()),
        pki.dir.join("no-token"),
        TrustAnchor::Pem(pki.ca_pem.clone()),
    )
    .expect("source");
    let web = PodIdentity {
        namespace: "shop".into(),
        name: "web".into(),
        ips: Vec::new(),
    };
    let proxy = tokio::spawn(source.run(web, store.clone()));
    wait_for("the first table", || store.current().is_some()).await;
    let first = store.current().expect("table");
    assert_eq!(first.table.name, "web");
    assert_eq!(
        &*first.table.ingress.isolated_by,
        [Arc::from("shop/web-in")]
    );
    assert!(allows(&first.table, 8080));
    assert!(!allows(&first.table, 9090));

    // A raw stream for web too, to see every line the controller sends it.
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pki.ca_pem.as_bytes()) {
        roots.add(cert.expect("pem")).expect("root");
    }
    let connector = tokio_rustls::TlsConnector::from(Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ));
    let mut web_lines = raw_lines(addr, connector, "/v1/tables/shop/web").await;
    let line = web_lines.recv().await.expect("first line");
    assert_eq!(line, r#"{"hello":{"v":3}}"#, "the wire version first");
    let line = web_lines.recv().await.expect("table line");
    assert!(line.starts_with(r#"{"table":{"generation":"#), "{line}");
    assert!(line.contains("\"name\":\"web\""), "{line}");
    // Then every Service and every peer's name (for audit lines), once each.
    let one = web_lines.recv().await.expect("services line");
    let two = web_lines.recv().await.expect("peers line");
    let (services_line, line) = if one.starts_with(r#"{"services""#) {
        (one, two)
    } else {
        (two, one)
    };
    let peers: serde_json::Value = serde_json::from_str(&line).expect("json");
    assert_eq!(peers["peers"]["names"]["10.1.0.20"], "shop/db", "{line}");
    assert_eq!(peers["peers"]["names"]["10.1.0.10"], "shop/web", "{line}");
    let line = services_line;
    let services: serde_json::Value = serde_json::from_str(&line).expect("json");
    assert_eq!(
        services["services"]["services"]["shop/db"]["ports"][0]["backends"][0]["ip"], "10.1.0.20",
        "{line}"
    );
    wait_for("the Service at the proxy", || {
        let services = store.services();
        services
            .frontend("10.96.0.20".parse().unwrap(), 5432)
            .is_some_and(|f| f.port.backends.len() == 1)
    })
    .await;
    wait_for("peer names at the proxy", || {
        store.peer_name("10.1.0.20".parse().unwrap()).as_deref() == Some("shop/db")
    })
    .await;

    // A change for db only: web's stream carries heartbeats, nothing else.
    hub.apply(vec![Change::Policy(Box::new(policy("db-in", "db", 5432)))]);
    let until = Instant::now() + Duration::from_millis(700);
    let mut heartbeats = 0;
    while let Ok(Some(line)) = tokio::time::timeout(
        until.saturating_duration_since(Instant::now()),
        web_lines.recv(),
    )
    .await
    {
        assert_eq!(line, r#"{"heartbeat":{}}"#, "web heard of a change to db");
        heartbeats += 1;
    }
    assert!(heartbeats >= 2, "no heartbeats while quiet");
    assert_eq!(store.generation(), first.generation);

    // A change for web: the proxy has it at once, with the controller's generation.
    hub.apply(vec![Change::Policy(Box::new(policy(
        "web-in", "web", 9090,
    )))]);
    wait_for("the new table", || store.generation() > first.generation).await;
    let second = store.current().expect("table");
    assert_eq!(second.source_generation, Some(hub.generation()));
    assert!(allows(&second.table, 9090));
    assert!(!store.is_stale());

    // A new pod: its name reaches every stream as a delta, the tables stay as they are.
    let mut cache = cluster.pods[1].clone();
    cache.name = "cache".into();
    cache.ips = vec!["10.1.0.30".parse().unwrap()];
    cache.labels.insert("app".into(), "cache".into());
    hub.apply(vec![Change::Pod(cache)]);
    let line = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            let line = web_lines.recv().await.expect("stream open");
            // Heartbeats, and web's own table change from above, come first.
            if line != r#"{"heartbeat":{}}"# && !line.starts_with(r#"{"table""#) {
                return line;
            }
        }
    })
    .await
    .expect("a peers delta within the update interval");
    assert!(
        line.starts_with(r#"{"peers_delta":{"version":"#)
            && line.contains(r#""set":{"10.1.0.30":"shop/cache"}"#),
        "{line}"
    );
    wait_for("the new peer's name at the proxy", || {
        store.peer_name("10.1.0.30".parse().unwrap()).as_deref() == Some("shop/cache")
    })
    .await;
    assert_eq!(
        store.generation(),
        second.generation,
        "a new peer changed web's table"
    );

    // A second endpoint for the Service: a delta reaches the proxy, the tables stay.
    let mut slices = portcullis_policy::service::derive_slices(&cluster.services[0], &cluster.pods);
    let mut extra = slices[0].endpoints[0].clone();
    extra.ip = "10.1.0.21".parse().unwrap();
    extra.pod = None;
    slices[0].endpoints.push(extra);
    hub.apply(vec![Change::ResetEndpointSlices(slices)]);
    let line = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            let line = web_lines.recv().await.expect("stream open");
            if line.starts_with(r#"{"services_delta""#) {
                return line;
            }
        }
    })
    .await
    .expect("a services delta");
    assert!(line.contains("10.1.0.21"), "{line}");
    wait_for("the new endpoint at the proxy", || {
        store
            .services()
            .frontend("10.96.0.20".parse().unwrap(), 5432)
            .is_some_and(|f| f.port.backends.len() == 2)
    })
    .await;
    assert_eq!(store.generation(), second.generation);

    // The controller goes away: the proxy keeps its table, marked stale.
    stop_tx.send(true).expect("stop");
    serving.await.expect("server task");
    wait_for("the stale mark", || store.is_stale()).await;
    assert_eq!(
        store.current().expect("table").generation,
        second.generation
    );
    proxy.abort();
    let _ = std::io::stdout().flush();
}

fn connector(ca_pem: &str) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("pem")).expect("root");
    }
    tokio_rustls::TlsConnector::from(Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_on_the_table_api_stops_neither_streams_nor_the_server() {
    // Issue 12 §4: 20,000 connections that never finish their TLS handshake or request took
    // every descriptor of the controller (~450 MB); new streams hung. Here: an attacker from 40
    // loopback addresses keeps 1,000 such connections open (replacing those the server drops)
    // against a server capped at 128 connections, 16 per address, 2 s to handshake and send a
    // request head, while a proxy's stream is open.
    const CAP: usize = 128;
    const HALF_OPEN: usize = 1_000;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pki = Pki::new();
    let hub = Arc::new(Hub::new());
    let mut cluster = Cluster::new();
    load_into(&mut cluster, CLUSTER, "test");
    hub.apply(vec![
        Change::ResetNamespaces(cluster.namespaces.values().cloned().collect()),
        Change::ResetPods(cluster.pods.clone()),
        Change::Policy(Box::new(policy("web-in", "web", 8080))),
    ]);
    hub.mark_ready();
    let cert = portcullis_tls::ReloadingCert::load(
        pki.dir.join("tls.crt"),
        pki.dir.join("tls.key"),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .expect("cert");
    let acceptor = tokio_rustls::TlsAcceptor::from(cert.server_config().expect("config"));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (_stop_tx, stop_rx) = watch::channel(false);
    let server = TableServer::new(
        hub.clone(),
        Authenticator::Disabled,
        ServeOptions {
            heartbeat: Duration::from_millis(200),
            limits: portcullis_serve_guard::Limits {
                max_connections: CAP,
                max_connections_per_peer: 16,
                header_read_timeout: Duration::from_secs(2),
                idle_timeout: Duration::from_secs(60),
            },
        },
    );
    tokio::spawn(server.clone().serve(listener, Some(acceptor), stop_rx));

    let store = Arc::new(PolicyStore::new());
    let source = ControllerSource::new(
        &format!("https://127.0.0.1:{}", addr.port()),
        pki.dir.join("no-token"),
        TrustAnchor::Pem(pki.ca_pem.clone()),
    )
    .expect("source");
    let web = PodIdentity {
        namespace: "shop".into(),
        name: "web".into(),
        ips: Vec::new(),
    };
    let proxy = tokio::spawn(source.run(web, store.clone()));
    wait_for("the first table", || store.current().is_some()).await;
    let first = store.generation();

    let rss_before = rss_kib();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let opened = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let attack = {
        let (stop, opened) = (stop.clone(), opened.clone());
        std::thread::spawn(move || {
            use std::sync::atomic::Ordering;
            let mut held = std::collections::VecDeque::new();
            let mut i = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let source: SocketAddr = ([127, 0, 1, 1 + (i % 40) as u8], 0).into();
                i += 1;
                let Ok(socket) =
                    socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                else {
                    continue;
                };
                if socket.bind(&source.into()).is_err()
                    || socket
                        .connect_timeout(&addr.into(), Duration::from_secs(1))
                        .is_err()
                {
                    continue;
                }
                let mut s: std::net::TcpStream = socket.into();
                // The first bytes of a TLS record, and then nothing.
                let _ = std::io::Write::write_all(&mut s, &[0x16, 0x03, 0x01]);
                opened.fetch_add(1, Ordering::SeqCst);
                held.push_back(s);
                if held.len() > HALF_OPEN {
                    held.pop_front();
                }
                if held.len() == HALF_OPEN {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        })
    };

    // For longer than the header timeout: the open stream keeps carrying changes, and the
    // server never holds more than its cap.
    let started = Instant::now();
    let (mut max_active, mut max_rss, mut changes) = (0usize, 0u64, 0u16);
    // At least 5 s, and until the attacker has opened its 1,000 (a loaded machine is slower).
    let attacking = || {
        started.elapsed() < Duration::from_secs(5)
            || (opened.load(std::sync::atomic::Ordering::SeqCst) < HALF_OPEN
                && started.elapsed() < Duration::from_secs(60))
    };
    while attacking() {
        changes += 1;
        hub.apply(vec![Change::Policy(Box::new(policy(
            "web-in",
            "web",
            9000 + changes,
        )))]);
        let want = first + u64::from(changes);
        for _ in 0..100 {
            max_active = max_active.max(server.guard.active());
            if store.generation() >= want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            store.generation() >= want,
            "change {changes} did not reach the open stream during the attack"
        );
        max_rss = max_rss.max(rss_kib());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    attack.join().expect("attacker");
    let attempts = opened.load(std::sync::atomic::Ordering::SeqCst);
    eprintln!(
        "slowloris on the table API: {attempts} half-open connections, {changes} table changes \
         streamed meanwhile; connections held by the server at most {max_active} (cap {CAP}); \
         test process RSS {rss_before} KiB before, at most {max_rss} KiB during"
    );
    assert!(
        attempts >= HALF_OPEN,
        "the attack never got going: {attempts}"
    );
    assert!(
        max_active <= CAP,
        "{max_active} connections held (cap {CAP})"
    );
    assert!(max_active >= CAP / 2, "the attack did not reach the server");
    assert!(
        max_rss < rss_before + 64 * 1024,
        "RSS grew from {rss_before} KiB to {max_rss} KiB"
    );

    // The attackers are gone: new streams open again.
    wait_for("the attackers' slots to be given back", || {
        server.guard.active() <= 1
    })
    .await;
    let mut db_lines = raw_lines(addr, connector(&pki.ca_pem), "/v1/tables/shop/db").await;
    let mut lines = Vec::new();
    for _ in 0..2 {
        lines.push(
            tokio::time::timeout(Duration::from_secs(5), db_lines.recv())
                .await
                .expect("a new stream answers")
                .expect("a line"),
        );
    }
    assert!(lines[0].contains("\"hello\""), "{}", lines[0]);
    let line = &lines[1];
    assert!(line.contains("\"name\":\"db\""), "{line}");
    proxy.abort();
}
