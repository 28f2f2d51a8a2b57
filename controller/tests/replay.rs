//! The kube watch layer against a replayed Kubernetes API server.
//!
//! A real HTTP/1.1 server on 127.0.0.1 answers `kube_watch::run`'s three watchers with responses
//! recorded in the API server's wire format (`tests/recorded/`, described in its README), in a
//! scripted order, while the test checks what a proxy would be served after each phase:
//!
//! 0. namespaces and pods are listed (the pod list in two pages); the policy list is held back,
//!    so the controller must not be ready;
//! 1. the policy list arrives: ready, and every table reflects the three policies;
//! 2. watch events: a new pod goes Pending → Running, a namespace gains a label a policy selects
//!    on, a policy's port changes; then a BOOKMARK on every watch;
//! 3. the pod watch ends (its timeout), resumes from the bookmark, and is answered 410 Gone: the
//!    watcher relists, and the relist lacks a pod deleted while the watch was down, so that pod's
//!    table goes away and its subscribers receive `table: None`;
//! 4. the pod watch sends a DELETED and a BOOKMARK, then the connection is cut in the middle of
//!    an event; the watcher resumes from the bookmark and receives that event again.
//!
//! Services and EndpointSlices are listed in phase 0 (ClusterIPs of both families, a named
//! targetPort, a headless Service, the `kubernetes` Service whose endpoint is no pod) and change
//! in phase 2 (a port added to a Service and its slice, a new ready endpoint, one turning
//! terminating, a headless Service and its slice deleted); the test checks the service map every
//! proxy is streamed.
//!
//! Every request is recorded, so the test also checks how the watcher talked to the server.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portcullis_controller::hub::Hub;
use portcullis_controller::kube_watch;
use portcullis_controller::protection::Protection;
use portcullis_policy::{Direction, Protocol};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const RECORDED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/recorded");
/// How long any one expectation may take: the watcher's back-off after the 410 is at most 1.6 s.
const DEADLINE: Duration = Duration::from_secs(5);

const FRONTEND_1: &str = "shop/frontend-6d8f7b9c5-x2kqp";
const FRONTEND_1_IP: &str = "10.244.1.17";
const FRONTEND_1_IP6: &str = "fd00:10:244:1::11";
/// Deleted while the pod watch was down (absent from the relist after the 410).
const FRONTEND_2: &str = "shop/frontend-6d8f7b9c5-7hlzm";
const FRONTEND_2_IP: &str = "10.244.2.31";
/// Added by watch events (Pending, scheduled, Running), deleted in phase 4.
const FRONTEND_3: &str = "shop/frontend-6d8f7b9c5-mq8vd";
const FRONTEND_3_IP: &str = "10.244.1.35";
/// Created while the pod watch was down: known only from the relist.
const FRONTEND_4: &str = "shop/frontend-6d8f7b9c5-r7tnj";
const FRONTEND_4_IP: &str = "10.244.2.44";
/// Its ADDED event is the one the cut connection loses; the resumed watch delivers it.
const FRONTEND_5: &str = "shop/frontend-6d8f7b9c5-zt5wx";
const FRONTEND_5_IP: &str = "10.244.1.51";
const CART: &str = "shop/cart-5b7d9c8f6-q4wnv";
const PROMETHEUS: &str = "monitoring/prometheus-k8s-0";
const PROMETHEUS_IP: &str = "10.244.2.9";
/// What isolates every pod of the shop namespace (both select all of its pods).
const SHOP_DEFAULT: [&str; 2] = ["shop/allow-metrics-scrape", "shop/default-deny-ingress"];
const GRPC: u16 = 7070;
const GRPC_TLS: u16 = 7443;
const HTTP: u16 = 8080;
const METRICS: u16 = 9102;

const LIST_1_CONTINUE: &str = "eyJ2IjoibWV0YS5rOHMuaW8vdjEiLCJydiI6MTg0NTAwLCJzdGFydCI6InNob3AvY2FydC01YjdkOWM4ZjYtcTR3bnZcdTAwMDAifQ";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Namespaces,
    Pods,
    Policies,
    Services,
    Slices,
}

/// One request the server received.
#[derive(Debug, Clone)]
struct Seen {
    kind: Kind,
    watch: bool,
    query: BTreeMap<String, String>,
    target: String,
}

impl Seen {
    fn param(&self, key: &str) -> Option<&str> {
        self.query.get(key).map(String::as_str)
    }
}

/// What the server does on a watch connection, in order.
enum Step {
    /// Waits until the test has reached this phase.
    Phase(u32),
    /// Sends every line of a recorded file, one chunk per event, as the API server does.
    Events(&'static str),
    /// Ends the response with the terminating chunk: the API server ended the watch (its
    /// timeoutSeconds ran out, or after an ERROR event).
    End,
    /// Sends half of the first event of this file and closes the socket: a connection cut
    /// mid-stream, without the terminating chunk.
    CutInside(&'static str),
}

struct ListReply {
    /// Held back until the test reaches this phase.
    phase: u32,
    file: &'static str,
}

#[derive(Default)]
struct Script {
    lists: HashMap<Kind, VecDeque<ListReply>>,
    watches: HashMap<Kind, VecDeque<Vec<Step>>>,
}

fn script() -> Script {
    let mut s = Script::default();
    let list = |phase, file| ListReply { phase, file };
    s.lists.insert(
        Kind::Namespaces,
        VecDeque::from([list(0, "namespaces-list.json")]),
    );
    s.lists.insert(
        Kind::Pods,
        VecDeque::from([
            list(0, "pods-list-1-page-1.json"),
            list(0, "pods-list-1-page-2.json"),
            // The relist after the 410.
            list(3, "pods-list-2.json"),
        ]),
    );
    s.lists.insert(
        Kind::Policies,
        VecDeque::from([list(1, "networkpolicies-list.json")]),
    );
    s.lists.insert(
        Kind::Services,
        VecDeque::from([list(0, "services-list.json")]),
    );
    s.lists.insert(
        Kind::Slices,
        VecDeque::from([list(0, "endpointslices-list.json")]),
    );
    for (kind, file) in [
        (Kind::Services, "services-watch-1.ndjson"),
        (Kind::Slices, "endpointslices-watch-1.ndjson"),
    ] {
        s.watches.insert(
            kind,
            VecDeque::from([vec![Step::Phase(2), Step::Events(file)]]),
        );
    }
    s.watches.insert(
        Kind::Namespaces,
        VecDeque::from([vec![
            Step::Phase(2),
            Step::Events("namespaces-watch-1.ndjson"),
        ]]),
    );
    s.watches.insert(
        Kind::Policies,
        VecDeque::from([vec![
            Step::Phase(2),
            Step::Events("networkpolicies-watch-1.ndjson"),
        ]]),
    );
    s.watches.insert(
        Kind::Pods,
        VecDeque::from([
            vec![
                Step::Phase(2),
                Step::Events("pods-watch-1.ndjson"),
                Step::Phase(3),
                Step::End,
            ],
            vec![Step::Events("pods-watch-2-expired.ndjson"), Step::End],
            vec![
                Step::Phase(4),
                Step::Events("pods-watch-3.ndjson"),
                Step::CutInside("pods-watch-4.ndjson"),
            ],
            vec![Step::Events("pods-watch-4.ndjson")],
        ]),
    );
    s
}

struct Shared {
    script: Mutex<Script>,
    seen: Mutex<Vec<Seen>>,
    phase: watch::Sender<u32>,
}

struct Replay {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Replay {
    async fn start(script: Script) -> Replay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            script: Mutex::new(script),
            seen: Mutex::new(Vec::new()),
            phase: watch::Sender::new(0),
        });
        let s = shared.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let _ = serve(stream, s).await;
                });
            }
        });
        Replay { addr, shared }
    }

    fn advance(&self, phase: u32) {
        self.shared.phase.send_replace(phase);
    }

    fn seen(&self, kind: Kind) -> Vec<Seen> {
        let seen = self.shared.seen.lock().unwrap();
        seen.iter().filter(|s| s.kind == kind).cloned().collect()
    }
}

async fn serve(mut stream: TcpStream, shared: Arc<Shared>) -> std::io::Result<()> {
    let Some(target) = read_request_target(&mut stream).await? else {
        return Ok(());
    };
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let query: BTreeMap<String, String> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    let kind = match path {
        "/api/v1/namespaces" => Kind::Namespaces,
        "/api/v1/pods" => Kind::Pods,
        "/apis/networking.k8s.io/v1/networkpolicies" => Kind::Policies,
        "/api/v1/services" => Kind::Services,
        "/apis/discovery.k8s.io/v1/endpointslices" => Kind::Slices,
        _ => {
            let body = status_json(
                404,
                "NotFound",
                &format!("the server could not find the requested resource ({path})"),
            );
            return respond(&mut stream, "404 Not Found", &body).await;
        }
    };
    let watch = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    shared.seen.lock().unwrap().push(Seen {
        kind,
        watch,
        query,
        target: target.clone(),
    });
    let mut phase = shared.phase.subscribe();
    if !watch {
        let reply = shared
            .script
            .lock()
            .unwrap()
            .lists
            .get_mut(&kind)
            .and_then(VecDeque::pop_front);
        let Some(reply) = reply else {
            let body = status_json(
                500,
                "InternalError",
                "replay: no list response left for this request",
            );
            return respond(&mut stream, "500 Internal Server Error", &body).await;
        };
        let _ = phase.wait_for(|p| *p >= reply.phase).await;
        return respond(&mut stream, "200 OK", &recorded(reply.file)).await;
    }

    let steps = shared
        .script
        .lock()
        .unwrap()
        .watches
        .get_mut(&kind)
        .and_then(VecDeque::pop_front)
        .unwrap_or_default();
    stream
        .write_all(
            b"HTTP/1.1 200 OK\r\n\
              Audit-Id: 6f1d3c2e-8b4a-4f0e-9c7d-2a5b8e1f4c3d\r\n\
              Cache-Control: no-cache, private\r\n\
              Content-Type: application/json\r\n\
              Transfer-Encoding: chunked\r\n\
              Connection: close\r\n\r\n",
        )
        .await?;
    stream.flush().await?;
    for step in steps {
        match step {
            Step::Phase(n) => {
                let _ = phase.wait_for(|p| *p >= n).await;
            }
            Step::Events(file) => {
                for line in recorded(file).lines().filter(|l| !l.is_empty()) {
                    let event = format!("{line}\n");
                    stream
                        .write_all(format!("{:x}\r\n{event}\r\n", event.len()).as_bytes())
                        .await?;
                    stream.flush().await?;
                }
            }
            Step::End => {
                stream.write_all(b"0\r\n\r\n").await?;
                stream.flush().await?;
                return Ok(());
            }
            Step::CutInside(file) => {
                let event = format!("{}\n", recorded(file).lines().next().unwrap_or_default());
                let half = &event.as_bytes()[..event.len() / 2];
                stream
                    .write_all(format!("{:x}\r\n", event.len()).as_bytes())
                    .await?;
                stream.write_all(half).await?;
                stream.flush().await?;
                return Ok(()); // dropping the stream closes the socket
            }
        }
    }
    // Nothing more scripted: keep the watch open, silent, until the client goes away.
    let mut buf = [0u8; 512];
    while stream.read(&mut buf).await? > 0 {}
    Ok(())
}

/// Reads the request head; returns the request target (`/path?query`).
async fn read_request_target(stream: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    let request_line = head.lines().next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    match (parts.next(), parts.next()) {
        (Some("GET"), Some(target)) => Ok(Some(target.to_string())),
        _ => Ok(None),
    }
}

async fn respond(stream: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\n\
         Audit-Id: 0b7c4e2a-5d3f-4a1b-8e6c-9f2d1a3b5c7e\r\n\
         Cache-Control: no-cache, private\r\n\
         Content-Type: application/json\r\n\
         Content-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.flush().await
}

fn status_json(code: u16, reason: &str, message: &str) -> String {
    serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code,
    })
    .to_string()
}

fn recorded(file: &str) -> String {
    let path = format!("{RECORDED}/{file}");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
                continue;
            }
            (b'+', _) => out.push(b' '),
            (b, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Polls until `check` holds; panics with `what` after [`DEADLINE`].
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let until = Instant::now() + DEADLINE;
    while !check() {
        assert!(Instant::now() < until, "not within {DEADLINE:?}: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The ingress verdict `pod`'s proxy would reach for a TCP connection from `peer` to `port`;
/// `None` when the pod has no table.
fn ingress_allowed(hub: &Hub, pod: &str, peer: &str, port: u16) -> Option<bool> {
    let peer: IpAddr = peer.parse().unwrap();
    hub.table(pod).map(|t| {
        t.check(Direction::Ingress, peer, port, Protocol::Tcp)
            .allowed()
    })
}

fn isolated_by(hub: &Hub, pod: &str) -> Vec<String> {
    let table = hub
        .table(pod)
        .unwrap_or_else(|| panic!("{pod} has no table"));
    table
        .ingress
        .isolated_by
        .iter()
        .map(|p| p.to_string())
        .collect()
}

fn ips(hub: &Hub, pod: &str) -> Vec<String> {
    hub.table(pod)
        .map(|t| t.ips.iter().map(IpAddr::to_string).collect())
        .unwrap_or_default()
}

/// A Service port's backends as proxies are streamed them: `ip:port` and its state (`ready`,
/// `terminating`, `not-ready`), sorted; `None` when the Service is not in the map.
fn backends(hub: &Hub, service: &str, port: u16) -> Option<Vec<String>> {
    let svc = hub.service(service)?;
    let port = svc.ports.iter().find(|p| p.port == port)?;
    Some(
        port.backends
            .iter()
            .map(|b| {
                let state = if b.ready {
                    "ready"
                } else if b.terminating {
                    "terminating"
                } else {
                    "not-ready"
                };
                format!("{} {state}", SocketAddr::new(b.ip, b.port))
            })
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_layer_follows_a_replayed_api_server() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let started = Instant::now();
    let server = Replay::start(script()).await;
    let config = kube::Config::new(format!("http://{}", server.addr).parse().unwrap());
    let client = kube::Client::try_from(config).expect("a client for plain http");
    let hub = Arc::new(Hub::new());
    let (stop, stop_rx) = watch::channel(false);
    let protection = Arc::new(Protection::default());
    let cnps = Arc::new(portcullis_controller::cnp_watch::CnpStatus::default());
    let watching = tokio::spawn(kube_watch::run(
        client,
        hub.clone(),
        protection.clone(),
        cnps.clone(),
        stop_rx,
    ));

    // Phase 0: namespaces and both pages of pods listed, the policy list held back.
    eventually("pods of both list pages have tables", || {
        hub.table(FRONTEND_1).is_some() && hub.table(PROMETHEUS).is_some()
    })
    .await;
    // `shop` is opted in: its pods without the proxy, or with an exemption, are reported; the
    // finished job and the pods of other namespaces are not.
    let unprotected: Vec<String> = protection
        .unprotected()
        .iter()
        .map(|u| {
            let reasons: Vec<&str> = u.gaps.iter().map(|g| g.label()).collect();
            format!("{}/{} {}", u.namespace, u.pod, reasons.join(","))
        })
        .collect();
    assert_eq!(
        unprotected,
        [
            format!("{CART} not_injected"),
            format!("{FRONTEND_1} audit_mode"),
            "shop/redis-0 not_injected".to_string(),
        ]
    );
    eventually("the policy list is requested", || {
        !server.seen(Kind::Policies).is_empty()
    })
    .await;
    assert!(
        !hub.is_ready(),
        "ready before the NetworkPolicies were listed: every pod would be served unrestricted"
    );

    // Phase 1: the policy list arrives.
    server.advance(1);
    eventually("ready once every kind is listed", || hub.is_ready()).await;
    let phase1 = started.elapsed();
    // This server has no ClusterNetworkPolicy CRD: said so, and v1 alone is enforced.
    assert_eq!(
        cnps.get().state,
        portcullis_controller::cnp_watch::CrdState::NotInstalled
    );
    assert_eq!(isolated_by(&hub, FRONTEND_1), SHOP_DEFAULT);
    assert_eq!(ips(&hub, FRONTEND_1), [FRONTEND_1_IP, FRONTEND_1_IP6]);
    assert_eq!(
        ingress_allowed(&hub, FRONTEND_1, FRONTEND_2_IP, HTTP),
        Some(false)
    );
    assert_eq!(
        isolated_by(&hub, CART),
        [
            "shop/allow-cart-from-frontend",
            "shop/allow-metrics-scrape",
            "shop/default-deny-ingress"
        ]
    );
    // allow-cart-from-frontend: frontends on the named port grpc (7070), over both families.
    assert_eq!(ingress_allowed(&hub, CART, FRONTEND_1_IP, GRPC), Some(true));
    assert_eq!(
        ingress_allowed(&hub, CART, FRONTEND_1_IP6, GRPC),
        Some(true)
    );
    assert_eq!(ingress_allowed(&hub, CART, FRONTEND_2_IP, GRPC), Some(true));
    assert_eq!(
        ingress_allowed(&hub, CART, FRONTEND_1_IP, GRPC_TLS),
        Some(false)
    );
    assert_eq!(
        ingress_allowed(&hub, CART, PROMETHEUS_IP, GRPC),
        Some(false)
    );
    // allow-metrics-scrape selects namespaces labelled as scrapers; monitoring is not, yet.
    assert_eq!(
        ingress_allowed(&hub, CART, PROMETHEUS_IP, METRICS),
        Some(false)
    );
    assert!(
        isolated_by(&hub, PROMETHEUS).is_empty(),
        "no policy in monitoring"
    );
    // Services: both ClusterIPs, the named targetPort resolved by the slices, both families.
    let frontend = hub.service("shop/frontend").expect("frontend Service");
    assert_eq!(
        frontend.cluster_ips,
        [
            "10.96.12.40".parse::<IpAddr>().unwrap(),
            "fd00:10:96::c28".parse().unwrap()
        ]
    );
    assert_eq!(
        backends(&hub, "shop/frontend", 80).unwrap(),
        [
            "10.244.1.17:8080 ready",
            "10.244.2.31:8080 ready",
            "[fd00:10:244:1::11]:8080 ready",
            "[fd00:10:244:2::1f]:8080 ready"
        ]
    );
    let pods: Vec<Option<String>> = frontend.ports[0]
        .backends
        .iter()
        .map(|b| b.pod.clone())
        .collect();
    assert_eq!(
        pods[..2],
        [Some(FRONTEND_1.to_string()), Some(FRONTEND_2.to_string())]
    );
    // The API server's endpoint is no pod: proxies judge it as an IP.
    assert_eq!(
        backends(&hub, "default/kubernetes", 443).unwrap(),
        ["10.0.0.2:6443 ready"]
    );
    assert_eq!(
        hub.service("default/kubernetes").unwrap().ports[0].backends[0].pod,
        None
    );
    assert_eq!(
        hub.service("kube-system/kube-dns").unwrap().ports.len(),
        3,
        "dns (UDP), dns-tcp, metrics"
    );
    assert!(
        hub.service("shop/redis").is_none(),
        "headless: no virtual IP to intercept"
    );
    assert_eq!(backends(&hub, "shop/cart", 7443), None);
    assert_eq!(hub.service_count(), 4);

    // Phase 2: watch events on every kind.
    server.advance(2);
    eventually("the new frontend runs, with its addresses", || {
        ips(&hub, FRONTEND_3).first().map(String::as_str) == Some(FRONTEND_3_IP)
    })
    .await;
    eventually("the cart policy's port moved from grpc to grpc-tls", || {
        ingress_allowed(&hub, CART, FRONTEND_1_IP, GRPC) == Some(false)
    })
    .await;
    assert_eq!(
        ingress_allowed(&hub, CART, FRONTEND_1_IP, GRPC_TLS),
        Some(true)
    );
    eventually("the new frontend is a peer of the cart policy", || {
        ingress_allowed(&hub, CART, FRONTEND_3_IP, GRPC_TLS) == Some(true)
    })
    .await;
    assert_eq!(isolated_by(&hub, FRONTEND_3), SHOP_DEFAULT);
    eventually("the monitoring namespace is now labelled a scraper", || {
        ingress_allowed(&hub, FRONTEND_1, PROMETHEUS_IP, METRICS) == Some(true)
    })
    .await;
    assert_eq!(
        ingress_allowed(&hub, CART, PROMETHEUS_IP, METRICS),
        Some(true)
    );
    assert_eq!(
        ingress_allowed(&hub, FRONTEND_1, PROMETHEUS_IP, HTTP),
        Some(false)
    );
    // Services and EndpointSlices changed: a new port, a new endpoint, one terminating.
    eventually("the cart Service's new port has its backend", || {
        backends(&hub, "shop/cart", 7443) == Some(vec!["10.244.1.22:7443 ready".to_string()])
    })
    .await;
    eventually("the frontend endpoints moved", || {
        backends(&hub, "shop/frontend", 80).is_some_and(|b| {
            b[..3]
                == [
                    "10.244.1.17:8080 ready",
                    "10.244.1.35:8080 ready",
                    "10.244.2.31:8080 terminating",
                ]
        })
    })
    .await;
    assert!(hub.service("shop/redis").is_none());

    // Phase 3: the pod watch ends, resumes from the bookmark, gets 410 Gone, relists.
    let mut frontend_2 = hub.subscribe("shop", "frontend-6d8f7b9c5-7hlzm");
    assert!(frontend_2.borrow_and_update().table.is_some());
    server.advance(3);
    let gone = tokio::time::timeout(DEADLINE, frontend_2.wait_for(|v| v.table.is_none())).await;
    assert!(
        matches!(gone, Ok(Ok(_))),
        "a proxy subscribed to the pod deleted during the outage must receive table: None"
    );
    let phase3 = started.elapsed();
    assert!(hub.table(FRONTEND_2).is_none());
    eventually("the pod created during the outage has a table", || {
        ips(&hub, FRONTEND_4).first().map(String::as_str) == Some(FRONTEND_4_IP)
    })
    .await;
    assert_eq!(isolated_by(&hub, FRONTEND_4), SHOP_DEFAULT);
    assert_eq!(
        ingress_allowed(&hub, CART, FRONTEND_4_IP, GRPC_TLS),
        Some(true)
    );
    assert_eq!(
        ingress_allowed(&hub, CART, FRONTEND_2_IP, GRPC_TLS),
        Some(false),
        "the deleted pod's address is no longer a peer"
    );
    assert!(hub.table(FRONTEND_3).is_some(), "kept by the relist");
    assert!(
        hub.is_ready(),
        "a relist does not make the controller unready"
    );

    // Phase 4: a DELETED and a bookmark, then the connection is cut mid-event.
    server.advance(4);
    eventually("the pod deleted by a watch event has no table", || {
        hub.table(FRONTEND_3).is_none()
    })
    .await;
    eventually(
        "the event cut off is received again after the resume",
        || ips(&hub, FRONTEND_5).first().map(String::as_str) == Some(FRONTEND_5_IP),
    )
    .await;
    assert_eq!(
        ingress_allowed(&hub, CART, FRONTEND_5_IP, GRPC_TLS),
        Some(true)
    );
    assert_eq!(
        ingress_allowed(&hub, CART, FRONTEND_3_IP, GRPC_TLS),
        Some(false)
    );
    let phase4 = started.elapsed();

    // How the watcher talked to the server.
    let pods = server.seen(Kind::Pods);
    let shape: Vec<(bool, Option<&str>)> = pods
        .iter()
        .map(|s| (s.watch, s.param("resourceVersion")))
        .collect();
    assert_eq!(
        shape,
        [
            (false, None),          // list, page 1
            (false, None),          // list, page 2
            (true, Some("184500")), // watch from the list
            (true, Some("184620")), // resumed from the BOOKMARK after the watch ended
            (false, None),          // relist after 410 Gone
            (true, Some("184990")), // watch from the relist
            (true, Some("185100")), // resumed from the BOOKMARK after the cut
        ],
        "pod requests: {:#?}",
        pods.iter().map(|s| &s.target).collect::<Vec<_>>()
    );
    assert_eq!(pods[0].param("limit"), Some("500"));
    assert_eq!(pods[0].param("continue"), None);
    assert_eq!(pods[1].param("continue"), Some(LIST_1_CONTINUE));
    assert_eq!(pods[4].param("continue"), None, "a relist starts over");
    for w in pods.iter().filter(|s| s.watch) {
        assert_eq!(w.param("allowWatchBookmarks"), Some("true"), "{}", w.target);
    }
    for kind in [
        Kind::Namespaces,
        Kind::Policies,
        Kind::Services,
        Kind::Slices,
    ] {
        let seen = server.seen(kind);
        let shape: Vec<(bool, Option<&str>)> = seen
            .iter()
            .map(|s| (s.watch, s.param("resourceVersion")))
            .collect();
        assert_eq!(shape, [(false, None), (true, Some("184500"))], "{kind:?}");
    }

    stop.send_replace(true);
    tokio::time::timeout(DEADLINE, watching)
        .await
        .expect("kube_watch::run ends on shutdown")
        .unwrap();
    eprintln!(
        "replay: ready at {phase1:?}, relist applied at {phase3:?}, resumed after the cut at {phase4:?}, total {:?}",
        started.elapsed()
    );
}
