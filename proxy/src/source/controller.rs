//! `--controller URL`: the pod's table streamed by portcullis-controller.
//!
//! `GET /v1/tables/{namespace}/{pod}` answers with newline-delimited JSON, one
//! `{"generation":N,"table":{...}}` per change (and `{"heartbeat":true}` while idle). The proxy
//! keeps serving its last good table while the controller is away, marks it stale (`/policy`,
//! `portcullis_policy_stale`), and reconnects with exponential back-off and jitter.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use portcullis_policy::PodTable;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::PodIdentity;
use crate::store::PolicyStore;

/// With heartbeats every 15 s, a stream this quiet is dead.
const SILENCE_LIMIT: Duration = Duration::from_secs(45);
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

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

/// One line of the stream.
#[derive(Debug, Deserialize)]
pub struct StreamLine {
    #[serde(default)]
    pub generation: Option<u64>,
    #[serde(default)]
    pub table: Option<PodTable>,
    #[serde(default)]
    pub heartbeat: bool,
    /// Every peer name (`{"peers":{"10.0.0.7":"shop/web"},"peers_version":N}`), sent first.
    #[serde(default)]
    pub peers: Option<BTreeMap<IpAddr, String>>,
    /// What changed since the previous peers line.
    #[serde(default)]
    pub peers_delta: Option<PeersDelta>,
}

#[derive(Debug, Default, Deserialize)]
pub struct PeersDelta {
    #[serde(default)]
    pub set: BTreeMap<IpAddr, String>,
    #[serde(default)]
    pub remove: Vec<IpAddr>,
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
        let mut backoff = BACKOFF_MIN;
        loop {
            let result = self.stream_once(&pod, &store, &mut backoff).await;
            if store.current().is_some() {
                store.set_stale(true);
            }
            match result {
                Ok(()) => tracing::warn!(
                    event = "controller_disconnected",
                    controller = %self.url,
                    generation = store.generation(),
                    "the controller closed the stream; the last good table stays in use"
                ),
                Err(e) => tracing::warn!(
                    event = "controller_unreachable",
                    controller = %self.url,
                    generation = store.generation(),
                    error = %format!("{e:#}"),
                    "the last good table stays in use (stale) until the controller answers"
                ),
            }
            tokio::time::sleep(with_jitter(backoff)).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    async fn stream_once(
        &self,
        pod: &PodIdentity,
        store: &PolicyStore,
        backoff: &mut Duration,
    ) -> anyhow::Result<()> {
        let host = self.url.host().unwrap_or_default().to_string();
        let https = self.url.scheme_str() == Some("https");
        let port = self.url.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tcp = tokio::time::timeout(
            Duration::from_secs(5),
            TcpStream::connect((host.trim_matches(['[', ']']), port)),
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
            self.request(stream, pod, store, backoff).await
        } else {
            self.request(tcp, pod, store, backoff).await
        }
    }

    async fn request<S>(
        &self,
        io: S,
        pod: &PodIdentity,
        store: &PolicyStore,
        backoff: &mut Duration,
    ) -> anyhow::Result<()>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
        tokio::spawn(connection);
        let path = format!("/v1/tables/{}/{}", pod.namespace, pod.name);
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
        let source = self.url.to_string();
        let mut body = response.into_body();
        let mut pending: Vec<u8> = Vec::new();
        // A new stream starts with the whole map; deltas apply to it.
        let mut peer_names: BTreeMap<IpAddr, String> = BTreeMap::new();
        loop {
            let frame = match tokio::time::timeout(SILENCE_LIMIT, body.frame()).await {
                Err(_) => bail!("no data or heartbeat for {SILENCE_LIMIT:?}"),
                Ok(None) => return Ok(()),
                Ok(Some(frame)) => frame?,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            pending.extend_from_slice(&data);
            if pending.len() > 64 * 1024 * 1024 {
                bail!("a stream line is larger than 64 MiB");
            }
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let parsed: StreamLine = serde_json::from_slice(&line)
                    .context("the controller sent a line that is not a table update")?;
                // A healthy stream: back to quick reconnects next time, and no longer stale.
                *backoff = BACKOFF_MIN;
                store.set_stale(false);
                if parsed.heartbeat {
                    continue;
                }
                if let Some(all) = parsed.peers {
                    peer_names = all;
                    store.set_peer_names(Arc::new(peer_names.clone()));
                    continue;
                }
                if let Some(delta) = parsed.peers_delta {
                    for ip in &delta.remove {
                        peer_names.remove(ip);
                    }
                    peer_names.extend(delta.set);
                    store.set_peer_names(Arc::new(peer_names.clone()));
                    continue;
                }
                match parsed.table {
                    Some(table) => {
                        if let Some(generation) =
                            store.publish(Arc::new(table), &source, parsed.generation)
                        {
                            tracing::info!(
                                event = "policy_loaded",
                                generation,
                                controller_generation = parsed.generation,
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
    fn jitter_stays_within_a_quarter() {
        for _ in 0..100 {
            let j = with_jitter(Duration::from_secs(4));
            assert!(
                j >= Duration::from_secs(3) && j <= Duration::from_secs(5),
                "{j:?}"
            );
        }
    }

    #[test]
    fn stream_lines_parse() {
        let hb: StreamLine = serde_json::from_str(r#"{"heartbeat":true}"#).expect("parse");
        assert!(hb.heartbeat && hb.table.is_none());
        let unknown: StreamLine =
            serde_json::from_str(r#"{"generation":3,"table":null}"#).expect("parse");
        assert_eq!(unknown.generation, Some(3));
        assert!(unknown.table.is_none());
    }
}

#[cfg(test)]
mod stream_tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn chunk(line: &str) -> String {
        format!("{:x}\r\n{line}\n\r\n", line.len() + 1)
    }

    fn table_line(generation: u64, name: &str) -> String {
        let t = PodTable::unrestricted("x", name, vec!["10.0.0.1".parse().unwrap()], None);
        format!(
            r#"{{"generation":{generation},"table":{}}}"#,
            serde_json::to_string(&t).unwrap()
        )
    }

    /// A stand-in controller on loopback: checks the request, streams two tables, hangs up.
    #[tokio::test]
    async fn tables_stream_in_and_a_lost_controller_leaves_the_last_one_stale() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let token = std::env::temp_dir().join(format!("pc-proxy-token-{}", std::process::id()));
        std::fs::write(&token, "secret-token\n").unwrap();
        let (go_on_tx, go_on_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                head.extend_from_slice(&buf[..n]);
            }
            let head = String::from_utf8_lossy(&head).to_string();
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n").await.unwrap();
            s.write_all(chunk(&table_line(7, "a")).as_bytes())
                .await
                .unwrap();
            s.write_all(chunk(r#"{"heartbeat":true}"#).as_bytes())
                .await
                .unwrap();
            let _ = go_on_rx.await;
            s.write_all(chunk(&table_line(8, "b")).as_bytes())
                .await
                .unwrap();
            s.write_all(b"0\r\n\r\n").await.unwrap();
            head
        });
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

        let wait = |want: u64| {
            let store = store.clone();
            async move {
                for _ in 0..200 {
                    if store.current().and_then(|s| s.source_generation) == Some(want) {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                panic!(
                    "controller generation {want} never arrived (have {:?})",
                    store.current().and_then(|s| s.source_generation)
                );
            }
        };
        wait(7).await;
        assert!(!store.is_stale());
        go_on_tx.send(()).unwrap();
        wait(8).await;
        assert_eq!(store.current().unwrap().table.name, "b");
        let head = server.await.unwrap();
        assert!(head.starts_with("GET /v1/tables/x/a HTTP/1.1"), "{head}");
        assert!(
            head.contains("authorization: Bearer secret-token")
                || head.contains("Authorization: Bearer secret-token"),
            "{head}"
        );
        for _ in 0..200 {
            if store.is_stale() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(store.is_stale(), "a lost controller marks the table stale");
        let last = store.current().unwrap();
        assert_eq!(
            (last.generation, last.source_generation),
            (2, Some(8)),
            "and the last good table stays"
        );
        task.abort();
        let _ = std::fs::remove_file(token);
    }
}
