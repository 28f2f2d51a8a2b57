//! `--controller URL`: the pod's table streamed by portcullis-controller.
//!
//! `GET /v1/tables/{namespace}/{pod}` answers with newline-delimited JSON, the line types of
//! `portcullis_wire` (a hello with the version, then tables, peer names, heartbeats). The proxy
//! keeps serving its last good table while the controller is away, marks it stale (`/policy`,
//! `portcullis_policy_stale`), and reconnects with exponential back-off and jitter.
//!
//! A line it cannot read (another wire version, an unknown kind or field, a malformed line) ends
//! the stream the same way: nothing of that line is applied, the last good table stays (stale),
//! `stream_rejected` is logged with the reason and counted in
//! `portcullis_stream_rejected_total{reason}`, and the proxy tries again later with a longer
//! back-off (the controller is likely to send the same line again).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use backon::{BackoffBuilder, ExponentialBuilder};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use portcullis_wire::{Decoder, Line, WireError};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::bytes::BytesMut;
use tokio_util::codec::{AnyDelimiterCodec, Decoder as _};

use super::PodIdentity;
use crate::store::{PolicyStore, Services};
use crate::telemetry::STREAM_REJECTED;
use portcullis_policy::service::ResolvedService;

/// With heartbeats every 15 s, a stream this quiet is dead.
const SILENCE_LIMIT: Duration = Duration::from_secs(45);
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// After a refused line: the first retry waits this long, doubling up to [`BACKOFF_MAX`].
const REJECTED_BACKOFF_MIN: Duration = Duration::from_secs(1);

pub struct ControllerSource {
    url: Uri,
    token_file: PathBuf,
    trust: TrustAnchor,
}

/// The CA that signs the controller's certificate.
#[derive(Debug, Clone)]
pub enum TrustAnchor {
    File(PathBuf),
    Pem(String),
}

/// How one stream ended.
#[derive(Debug)]
enum StreamEnd {
    /// The controller closed it.
    Closed,
    /// It sent a line this proxy cannot read.
    Rejected(WireError),
}

/// What one stream has delivered so far.
#[derive(Debug, Default)]
struct Session {
    got_table: bool,
    got_peers: bool,
    got_services: bool,
}

impl Session {
    /// Everything a stream starts with has arrived: the proxy is up to date.
    fn synced(&self) -> bool {
        self.got_table && self.got_peers && self.got_services
    }
}

impl ControllerSource {
    pub fn new(url: &str, token_file: PathBuf, trust: TrustAnchor) -> anyhow::Result<Self> {
        let url: Uri = url
            .parse()
            .map_err(|e| anyhow!("--controller `{url}` is not a URL: {e}"))?;
        match url.scheme_str() {
            Some("http" | "https") => {}
            _ => bail!("--controller `{url}` must start with http:// or https://"),
        }
        if url.host().is_none() {
            bail!("--controller `{url}` has no host");
        }
        Ok(ControllerSource {
            url,
            token_file,
            trust,
        })
    }

    pub async fn run(self, pod: PodIdentity, store: Arc<PolicyStore>) {
        let mut backoff = backoff_from(BACKOFF_MIN);
        let mut rejected_backoff = backoff_from(REJECTED_BACKOFF_MIN);
        loop {
            let mut session = Session::default();
            let result = self.stream_once(&pod, &store, &mut session).await;
            if store.current().is_some() {
                store.set_stale(true);
            }
            if session.synced() {
                backoff = backoff_from(BACKOFF_MIN);
            }
            let wait = match result {
                Ok(StreamEnd::Rejected(e)) => {
                    metrics::counter!(STREAM_REJECTED, "reason" => e.reason()).increment(1);
                    tracing::error!(
                        event = "stream_rejected",
                        controller = %self.url,
                        generation = store.generation(),
                        reason = e.reason(),
                        error = %e,
                        "the controller sent a line this proxy cannot read; nothing of it is \
                         applied, the last good table stays in use (stale)"
                    );
                    rejected_backoff.next().unwrap_or(BACKOFF_MAX)
                }
                Ok(StreamEnd::Closed) => {
                    rejected_backoff = backoff_from(REJECTED_BACKOFF_MIN);
                    tracing::warn!(
                        event = "controller_disconnected",
                        controller = %self.url,
                        generation = store.generation(),
                        "the controller closed the stream; the last good table stays in use"
                    );
                    backoff.next().unwrap_or(BACKOFF_MAX)
                }
                Err(e) => {
                    rejected_backoff = backoff_from(REJECTED_BACKOFF_MIN);
                    tracing::warn!(
                        event = "controller_unreachable",
                        controller = %self.url,
                        generation = store.generation(),
                        error = %format!("{e:#}"),
                        "the last good table stays in use (stale) until the controller answers"
                    );
                    backoff.next().unwrap_or(BACKOFF_MAX)
                }
            };
            tokio::time::sleep(with_jitter(wait)).await;
        }
    }

    async fn stream_once(
        &self,
        pod: &PodIdentity,
        store: &PolicyStore,
        session: &mut Session,
    ) -> anyhow::Result<StreamEnd> {
        let host = self.url.host().unwrap_or_default().to_string();
        let https = self.url.scheme_str() == Some("https");
        let port = self.url.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tcp = tokio::time::timeout(
            Duration::from_secs(5),
            // Marked (`--proxy-mark`), as the proxy's other connections: it is not redirected.
            crate::mark::connect_host(host.trim_matches(['[', ']']), port),
        )
        .await
        .map_err(|_| anyhow!("connecting to {host}:{port} timed out"))?
        .with_context(|| format!("cannot connect to {host}:{port}"))?;
        let _ = tcp.set_nodelay(true);
        if https {
            let tls = tls_connector(&self.trust)?;
            let name =
                rustls::pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_string())
                    .map_err(|e| anyhow!("`{host}` is not a valid TLS server name: {e}"))?;
            let stream = tls
                .connect(name, tcp)
                .await
                .context("TLS handshake failed")?;
            self.request(stream, pod, store, session).await
        } else {
            self.request(tcp, pod, store, session).await
        }
    }

    async fn request<S>(
        &self,
        io: S,
        pod: &PodIdentity,
        store: &PolicyStore,
        session: &mut Session,
    ) -> anyhow::Result<StreamEnd>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
        tokio::spawn(connection);
        let path = portcullis_contract::stream::table_path(&pod.namespace, &pod.name);
        let mut request = Request::get(path).header(
            hyper::header::HOST,
            self.url.authority().map(|a| a.as_str()).unwrap_or_default(),
        );
        // Read on every connect: projected tokens rotate.
        match std::fs::read_to_string(&self.token_file) {
            Ok(token) => {
                request = request.header(
                    hyper::header::AUTHORIZATION,
                    format!("Bearer {}", token.trim()),
                );
            }
            Err(e) => {
                tracing::debug!(file = %self.token_file.display(), error = %e, "no service-account token to send")
            }
        }
        let response = sender
            .send_request(request.body(Empty::<Bytes>::new())?)
            .await?;
        let status = response.status();
        if status != StatusCode::OK {
            let body = response
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            bail!(
                "the controller answered {status}: {}",
                String::from_utf8_lossy(&body).trim()
            );
        }
        read_stream(
            response.into_body(),
            &self.url.to_string(),
            pod,
            store,
            session,
        )
        .await
    }
}

/// Reads the table stream line by line until it ends, falls silent for [`SILENCE_LIMIT`], or
/// sends a line this proxy cannot read. Lines are split by tokio-util's `AnyDelimiterCodec` (its
/// `LinesCodec` on bytes: a line that is not UTF-8 is then named by the wire decoder, as before,
/// rather than by the splitter), bounded by `MAX_LINE_BYTES`.
async fn read_stream(
    mut body: hyper::body::Incoming,
    source: &str,
    pod: &PodIdentity,
    store: &PolicyStore,
    session: &mut Session,
) -> anyhow::Result<StreamEnd> {
    let mut lines = AnyDelimiterCodec::new_with_max_length(
        b"\n".to_vec(),
        b"\n".to_vec(),
        portcullis_wire::MAX_LINE_BYTES,
    );
    let mut pending = BytesMut::new();
    let mut decoder = Decoder::new();
    // A new stream starts with the whole maps; deltas apply to them.
    let mut maps = Maps::default();
    loop {
        let frame = match tokio::time::timeout(SILENCE_LIMIT, body.frame()).await {
            Err(_) => bail!("no data or heartbeat for {SILENCE_LIMIT:?}"),
            Ok(None) => return Ok(StreamEnd::Closed),
            Ok(Some(frame)) => frame?,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        loop {
            let line = match lines.decode(&mut pending) {
                Ok(Some(line)) => line,
                Ok(None) => break,
                // The only error a decode can give: no newline within MAX_LINE_BYTES.
                Err(_) => return Ok(StreamEnd::Rejected(WireError::TooLong)),
            };
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let line = match decoder.decode(&line) {
                Ok(line) => line,
                Err(e) => return Ok(StreamEnd::Rejected(e)),
            };
            apply_line(line, session, &mut maps, store, source, pod);
            if session.synced() {
                store.set_stale(false);
            }
        }
    }
}

/// This stream's copies of the maps the controller sends whole, then as deltas.
#[derive(Default)]
struct Maps {
    peer_names: BTreeMap<IpAddr, String>,
    services: BTreeMap<String, Arc<ResolvedService>>,
}

/// Applies one line that decoded cleanly.
fn apply_line(
    line: Line,
    session: &mut Session,
    maps: &mut Maps,
    store: &PolicyStore,
    source: &str,
    pod: &PodIdentity,
) {
    match line {
        Line::Hello(_) | Line::Heartbeat(_) => {}
        Line::Peers(all) => {
            maps.peer_names = all.names;
            store.set_peer_names(Arc::new(maps.peer_names.clone()));
            session.got_peers = true;
        }
        Line::PeersDelta(delta) => {
            delta.apply_to(&mut maps.peer_names);
            store.set_peer_names(Arc::new(maps.peer_names.clone()));
        }
        Line::Services(all) => {
            maps.services = all.services;
            store.set_services(Services::from_resolved(&maps.services));
            session.got_services = true;
            tracing::info!(
                event = "services_loaded",
                services = maps.services.len(),
                version = all.version
            );
        }
        Line::ServicesDelta(delta) => {
            delta.apply_to(&mut maps.services);
            store.set_services(Services::from_resolved(&maps.services));
            tracing::debug!(
                event = "services_changed",
                set = delta.set.len(),
                removed = delta.remove.len(),
                version = delta.version
            );
        }
        Line::Table(update) => {
            session.got_table = true;
            match update.table {
                Some(table) => {
                    if let Some(generation) = store.publish(table, source, Some(update.generation))
                    {
                        tracing::info!(
                            event = "policy_loaded",
                            generation,
                            controller_generation = update.generation,
                            source = %source
                        );
                    }
                }
                None => tracing::warn!(
                    event = "policy_unknown_pod",
                    pod = %pod.key(),
                    "the controller does not know this pod yet"
                ),
            }
        }
    }
}

/// The wait before the next attempt, doubling the one after it.
/// Reconnect delays: `min`, doubling up to [`BACKOFF_MAX`], for as long as it takes (backon's
/// exponential backoff). Its own jitter adds up to +100%; [`with_jitter`]'s ±25% is kept instead.
fn backoff_from(min: Duration) -> backon::ExponentialBackoff {
    ExponentialBuilder::new()
        .with_min_delay(min)
        .with_max_delay(BACKOFF_MAX)
        .with_factor(2.0)
        .without_max_times()
        .build()
}

fn tls_connector(trust: &TrustAnchor) -> anyhow::Result<tokio_rustls::TlsConnector> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let (certs, origin): (Vec<_>, String) = match trust {
        TrustAnchor::File(path) => (
            CertificateDer::pem_file_iter(path)
                .with_context(|| format!("cannot read the controller CA {}", path.display()))?
                .collect(),
            path.display().to_string(),
        ),
        TrustAnchor::Pem(text) => (
            CertificateDer::pem_slice_iter(text.as_bytes()).collect(),
            "PORTCULLIS_CONTROLLER_CA_PEM".to_string(),
        ),
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        let cert = cert.with_context(|| format!("{origin}: not a PEM certificate"))?;
        roots
            .add(cert)
            .with_context(|| format!("{origin}: unusable CA certificate"))?;
    }
    if roots.is_empty() {
        bail!("{origin}: no CA certificate found");
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// ±25 %, so a fleet of proxies does not reconnect in lockstep after a controller restart.
fn with_jitter(d: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(d.as_nanos() as u64);
    let unit = (h.finish() % 1000) as f64 / 1000.0; // 0..1
    d.mul_f64(0.75 + unit * 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        let ok = ControllerSource::new(
            "https://ctl.portcullis-system:8443",
            "t".into(),
            TrustAnchor::File("c".into()),
        );
        assert!(ok.is_ok());
        let bad = ControllerSource::new("ctl:8443", "t".into(), TrustAnchor::File("c".into()))
            .err()
            .expect("error");
        assert!(bad.to_string().contains("http://"), "{bad}");
    }

    #[test]
    fn reconnects_back_off_doubling_to_the_cap() {
        let waits: Vec<Duration> = backoff_from(BACKOFF_MIN).take(9).collect();
        assert_eq!(waits[0], Duration::from_millis(250));
        assert_eq!(waits[1], Duration::from_millis(500));
        assert_eq!(waits[7], BACKOFF_MAX);
        assert_eq!(waits[8], BACKOFF_MAX);
        let rejected: Vec<u64> = backoff_from(REJECTED_BACKOFF_MIN)
            .take(7)
            .map(|d| d.as_secs())
            .collect();
        assert_eq!(rejected, [1, 2, 4, 8, 16, 30, 30]);
    }

    #[test]
    fn jitter_stays_within_a_quarter() {
        for _ in 0..100 {
            let j = with_jitter(Duration::from_secs(4));
            assert!(
                j >= Duration::from_secs(3) && j <= Duration::from_secs(5),
                "{j:?}"
            );
        }
    }
}

#[cfg(test)]
mod stream_tests {
    //! The real client against a stand-in controller on loopback that writes scripted lines.

    use super::*;
    use portcullis_policy::PodTable;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::oneshot;

    fn chunk(line: &str) -> String {
        format!("{:x}\r\n{line}\n\r\n", line.len() + 1)
    }

    const HELLO: &str = r#"{"hello":{"v":3}}"#;
    const PEERS: &str = r#"{"peers":{"version":3,"names":{"10.0.0.9":"x/db"}}}"#;
    const SERVICES: &str = r#"{"services":{"version":1,"services":{}}}"#;

    fn table_line(generation: u64, name: &str) -> String {
        let t = PodTable::unrestricted("x", name, vec!["10.0.0.1".parse().unwrap()], None);
        Line::Table(portcullis_wire::TableUpdate {
            generation,
            table: Some(Arc::new(t)),
        })
        .encode()
        .map(|b| String::from_utf8(b).unwrap().trim_end().to_string())
        .unwrap()
    }

    enum Step {
        Send(String),
        /// Waits for the test's go-ahead.
        Wait(oneshot::Receiver<()>),
    }

    fn send(line: &str) -> Step {
        Step::Send(line.to_string())
    }

    /// Serves one script per connection, in order, then ends each stream cleanly; connections
    /// beyond the scripts are closed at once. Returns the request heads.
    async fn stand_in(
        scripts: Vec<Vec<Step>>,
    ) -> (std::net::SocketAddr, tokio::task::JoinHandle<Vec<String>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let mut heads = Vec::new();
            for script in scripts {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).await.unwrap();
                    head.extend_from_slice(&buf[..n]);
                }
                heads.push(String::from_utf8_lossy(&head).to_string());
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n").await.unwrap();
                for step in script {
                    match step {
                        Step::Send(line) => {
                            // The proxy may already have hung up on a refused line.
                            let _ = s.write_all(chunk(&line).as_bytes()).await;
                        }
                        Step::Wait(go) => {
                            let _ = go.await;
                        }
                    }
                }
                let _ = s.write_all(b"0\r\n\r\n").await;
            }
            tokio::spawn(async move {
                while let Ok((s, _)) = listener.accept().await {
                    drop(s);
                }
            });
            heads
        });
        (addr, server)
    }

    struct Proxy {
        store: Arc<PolicyStore>,
        task: tokio::task::JoinHandle<()>,
        token: PathBuf,
    }

    impl Drop for Proxy {
        fn drop(&mut self) {
            self.task.abort();
            let _ = std::fs::remove_file(&self.token);
        }
    }

    fn proxy(addr: std::net::SocketAddr, tag: &str) -> Proxy {
        let token =
            std::env::temp_dir().join(format!("pc-proxy-token-{tag}-{}", std::process::id()));
        std::fs::write(&token, "secret-token\n").unwrap();
        let store = Arc::new(PolicyStore::new());
        let source = ControllerSource::new(
            &format!("http://{addr}"),
            token.clone(),
            TrustAnchor::File("none".into()),
        )
        .unwrap();
        let pod = PodIdentity {
            namespace: "x".into(),
            name: "a".into(),
            ips: vec![],
        };
        let task = tokio::spawn(source.run(pod, store.clone()));
        Proxy { store, task, token }
    }

    async fn wait_until(what: &str, ok: impl Fn() -> bool) {
        for _ in 0..500 {
            if ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}");
    }

    fn controller_generation(store: &PolicyStore) -> Option<u64> {
        store.current().and_then(|s| s.source_generation)
    }

    #[tokio::test]
    async fn tables_stream_in_and_a_lost_controller_leaves_the_last_one_stale() {
        let (go_on_tx, go_on_rx) = oneshot::channel::<()>();
        let (addr, server) = stand_in(vec![vec![
            send(HELLO),
            send(&table_line(7, "a")),
            send(PEERS),
            send(SERVICES),
            send(r#"{"heartbeat":{}}"#),
            Step::Wait(go_on_rx),
            send(&table_line(8, "b")),
        ]])
        .await;
        let p = proxy(addr, "lost");
        let store = &p.store;
        wait_until("generation 7", || controller_generation(store) == Some(7)).await;
        wait_until("peer names", || {
            store.peer_name("10.0.0.9".parse().unwrap()) == Some("x/db".into())
        })
        .await;
        assert!(!store.is_stale());
        go_on_tx.send(()).unwrap();
        wait_until("generation 8", || controller_generation(store) == Some(8)).await;
        assert_eq!(store.current().unwrap().table.name, "b");
        let heads = server.await.unwrap();
        let head = &heads[0];
        assert!(head.starts_with("GET /v1/tables/x/a HTTP/1.1"), "{head}");
        assert!(
            head.contains("authorization: Bearer secret-token")
                || head.contains("Authorization: Bearer secret-token"),
            "{head}"
        );
        wait_until("the stale mark", || store.is_stale()).await;
        let last = store.current().unwrap();
        assert_eq!(
            (last.generation, last.source_generation),
            (2, Some(8)),
            "and the last good table stays"
        );
    }

    /// Each bad line, after a good start: the proxy applies nothing of it, keeps its table and
    /// peer names, and marks them stale.
    #[tokio::test]
    async fn a_line_the_proxy_cannot_read_leaves_the_last_table_in_force_and_stale() {
        let mut table_with_unknown_field: serde_json::Value =
            serde_json::from_str(&table_line(8, "b")).unwrap();
        table_with_unknown_field["table"]["table"]["egress"]["default_action"] = "deny".into();
        let bad_lines = [
            (
                "unknown kind",
                r#"{"services":{"version":1,"map":{}}}"#.to_string(),
            ),
            ("unknown field", table_with_unknown_field.to_string()),
            (
                "unknown field in a delta",
                r#"{"peers_delta":{"version":4,"set":{"10.0.0.9":"x/other"},"remove":[],"ttl":5}}"#
                    .to_string(),
            ),
            ("a second hello", r#"{"hello":{"v":3}}"#.to_string()),
            (
                "the unversioned format",
                r#"{"generation":9,"table":null}"#.to_string(),
            ),
        ];
        for (what, bad) in bad_lines {
            let (go_tx, go_rx) = oneshot::channel::<()>();
            let (addr, _server) = stand_in(vec![vec![
                send(HELLO),
                send(&table_line(7, "a")),
                send(PEERS),
                send(SERVICES),
                Step::Wait(go_rx),
                send(&bad),
                send(&table_line(9, "c")),
            ]])
            .await;
            let p = proxy(addr, "bad");
            let store = &p.store;
            wait_until("generation 7", || controller_generation(store) == Some(7)).await;
            wait_until("in sync", || !store.is_stale()).await;
            go_tx.send(()).unwrap();
            wait_until(&format!("{what}: the stale mark"), || store.is_stale()).await;
            // The good line after the bad one is never read either.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let current = store.current().unwrap();
            assert_eq!(
                (current.table.name.as_str(), current.source_generation),
                ("a", Some(7)),
                "{what}: the last good table stays"
            );
            assert_eq!(
                store.peer_name("10.0.0.9".parse().unwrap()),
                Some("x/db".into()),
                "{what}: nothing of the line applied"
            );
        }
    }

    /// A controller replica that speaks a newer version: its table is not taken, even though
    /// it would parse.
    #[tokio::test]
    async fn a_newer_wire_version_is_refused_whole() {
        let (addr, server) = stand_in(vec![
            vec![send(HELLO), send(&table_line(7, "a")), send(PEERS)],
            vec![
                send(r#"{"hello":{"v":4,"features":["services"]}}"#),
                send(&table_line(8, "b")),
                send(PEERS),
            ],
        ])
        .await;
        let p = proxy(addr, "newer");
        let store = &p.store;
        wait_until("generation 7", || controller_generation(store) == Some(7)).await;
        let heads = server.await.unwrap();
        assert_eq!(heads.len(), 2, "the proxy reconnected");
        wait_until("the stale mark", || store.is_stale()).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(store.is_stale());
        assert_eq!(controller_generation(store), Some(7));
        assert_eq!(store.current().unwrap().table.name, "a");
    }

    #[tokio::test]
    async fn a_stream_that_does_not_start_with_a_hello_is_refused() {
        let (addr, server) = stand_in(vec![vec![send(&table_line(7, "a")), send(PEERS)]]).await;
        let p = proxy(addr, "nohello");
        server.await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            p.store.current().is_none(),
            "no table from an unversioned stream"
        );
    }
}
