//! Serving certificate read from PEM files and reloaded when they change, so that cert-manager
//! (or the plain script) can rotate it without a restart. New handshakes get the new
//! certificate; established connections keep theirs.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

/// Gauge: the Unix time at which the serving certificate in use expires (`notAfter`). The
/// alert `PortcullisCertificateExpiresSoon` (manifests/monitoring) fires 14 days before.
pub const EXPIRY_METRIC: &str = "portcullis_certificate_expiration_timestamp_seconds";

/// Describes [`EXPIRY_METRIC`] (its HELP line) in the installed recorder; every server that
/// reloads a certificate calls it with its own metrics.
pub fn describe_metrics() {
    metrics::describe_gauge!(
        EXPIRY_METRIC,
        metrics::Unit::Seconds,
        "When the serving certificate expires (Unix time)."
    );
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate found")]
    NoCertificate { path: PathBuf },
    #[error("{path}: {message}")]
    Pem { path: PathBuf, message: String },
    #[error("certificate and key do not go together: {0}")]
    Key(rustls::Error),
    #[error("building the TLS configuration: {0}")]
    Config(rustls::Error),
}

/// Parse a PEM certificate chain and private key into a checked [`CertifiedKey`].
pub fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: cert_path.to_path_buf(),
            message: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_path.to_path_buf(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Pem {
        path: key_path.to_path_buf(),
        message: e.to_string(),
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(TlsError::Key)
}

/// A [`ResolvesServerCert`] whose certificate is swapped when the files change.
pub struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<CertifiedKey>,
    /// The file contents last loaded (or last found invalid), to notice changes.
    last_seen: Mutex<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

impl ReloadingCert {
    /// Load the files; fails if they are missing or invalid.
    pub fn load(
        cert_path: impl Into<PathBuf>,
        key_path: impl Into<PathBuf>,
        provider: Arc<CryptoProvider>,
    ) -> Result<Arc<Self>, TlsError> {
        let (cert_path, key_path) = (cert_path.into(), key_path.into());
        let (cert_pem, key_pem) = (read(&cert_path)?, read(&key_path)?);
        let key = certified_key(&cert_pem, &key_pem, &cert_path, &key_path, &provider)?;
        Ok(Arc::new(ReloadingCert {
            cert_path,
            key_path,
            provider,
            current: ArcSwap::from_pointee(key),
            last_seen: Mutex::new((cert_pem, key_pem)),
        }))
    }

    /// Re-read the files; swap the certificate if they changed and are valid. `Ok(true)` when
    /// a new certificate is in use. On error the previous certificate stays in use.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let (cert_pem, key_pem) = (read(&self.cert_path)?, read(&self.key_path)?);
        let mut last = self.last_seen.lock().unwrap_or_else(|p| p.into_inner());
        if last.0 == cert_pem && last.1 == key_pem {
            return Ok(false);
        }
        // Remember these contents even if invalid, so that a half-written pair is reported
        // once and retried when either file changes again.
        *last = (cert_pem.clone(), key_pem.clone());
        let key = certified_key(
            &cert_pem,
            &key_pem,
            &self.cert_path,
            &self.key_path,
            &self.provider,
        )?;
        self.current.store(Arc::new(key));
        Ok(true)
    }

    /// The certificate served to new connections.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }

    /// When the certificate served now expires (its leaf's `notAfter`), in seconds since the
    /// Unix epoch; `None` if the leaf cannot be parsed as X.509 (rustls accepted it, so this
    /// does not happen with a certificate a client would trust).
    pub fn not_after(&self) -> Option<i64> {
        let key = self.current.load();
        let leaf = key.cert.first()?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
        Some(cert.validity().not_after.timestamp())
    }

    /// Poll the files every `interval` until the task is dropped or aborted; each reload is
    /// counted in the counter `reloads_metric`, labelled `result="ok"|"error"`, and the gauge
    /// [`EXPIRY_METRIC`] says when the certificate in use expires (set on every poll, so it is
    /// there whenever the metrics recorder was installed).
    pub fn spawn_watcher(
        self: &Arc<Self>,
        interval: Duration,
        reloads_metric: &'static str,
    ) -> tokio::task::JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                if let Some(t) = this.not_after() {
                    metrics::gauge!(EXPIRY_METRIC).set(t as f64);
                }
                tick.tick().await;
                let this = Arc::clone(&this);
                let result = tokio::task::spawn_blocking(move || this.reload_if_changed()).await;
                match result {
                    Ok(Ok(true)) => {
                        tracing::info!("serving certificate reloaded");
                        metrics::counter!(reloads_metric, "result" => "ok").increment(1);
                    }
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "serving certificate not reloaded; keeping the previous one");
                        metrics::counter!(reloads_metric, "result" => "error").increment(1);
                    }
                    Err(e) => tracing::error!(error = %e, "certificate reload task failed"),
                }
            }
        })
    }

    /// A server configuration (HTTP/1.1, TLS 1.2 and 1.3) that resolves to this certificate.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, TlsError> {
        let mut config = ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_after_is_the_leaf_certificates_expiry() {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(vec!["portcullis-controller".into()]).expect("params");
        params.not_after = rcgen::date_time_ymd(2031, 5, 17);
        let cert = params.self_signed(&key).expect("cert");
        let dir = std::env::temp_dir().join(format!("pc-tls-expiry-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let (cert_path, key_path) = (dir.join("tls.crt"), dir.join("tls.key"));
        std::fs::write(&cert_path, cert.pem()).expect("write");
        std::fs::write(&key_path, key.serialize_pem()).expect("write");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let loaded = ReloadingCert::load(&cert_path, &key_path, provider);
        std::fs::remove_dir_all(&dir).ok();
        // 2031-05-17T00:00:00Z
        assert_eq!(loaded.expect("load").not_after(), Some(1_936_742_400));
    }
}
