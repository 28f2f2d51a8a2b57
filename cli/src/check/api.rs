//! The API server as `check` talks to it: a client from the kubeconfig (as kubectl reads it)
//! with a connect and a per-request timeout, and errors that say, in words, which server, which
//! credentials and what to do: never a library's debug structure.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// Why the API server did not answer as asked.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot read kubeconfig {path}: {reason}")]
    Kubeconfig { path: String, reason: String },
    #[error("cannot configure a client from the kubeconfig: {0}")]
    Config(String),
    #[error("no answer from the API server {server} within {timeout} (--request-timeout)")]
    Timeout { server: String, timeout: String },
    #[error("cannot reach the API server {server}: {reason}")]
    Unreachable { server: String, reason: String },
    #[error(
        "the API server {server} refused the credentials of {who}: 401 Unauthorized ({message})"
    )]
    Unauthorized {
        server: String,
        who: String,
        message: String,
    },
    #[error("{who} may not {what}: 403 Forbidden from {server} ({message})")]
    Forbidden {
        server: String,
        who: String,
        what: String,
        message: String,
    },
    #[error("the API server {server} answered {code} to `{what}`: {message}")]
    Status {
        server: String,
        what: String,
        code: u16,
        message: String,
    },
    #[error("unexpected answer from the API server {server} to `{what}`: {reason}")]
    Other {
        server: String,
        what: String,
        reason: String,
    },
}

impl ApiError {
    /// What to do about it, for the line's hint.
    pub fn hint(&self) -> String {
        match self {
            ApiError::Kubeconfig { .. } | ApiError::Config(_) => {
                "check the kubeconfig (--kubeconfig, --context, KUBECONFIG) as for kubectl".into()
            }
            ApiError::Timeout { .. } => "the server accepted the connection but did not answer: check the kubeconfig's server address (a proxy, a load balancer without backends?), or allow more time with --request-timeout".into(),
            ApiError::Unreachable { .. } => {
                "check the kubeconfig's server and credentials (kubectl version should work)".into()
            }
            ApiError::Unauthorized { .. } => "the token or client certificate is wrong or expired: log in again (kubectl version should work with the same kubeconfig and context)".into(),
            ApiError::Forbidden { what, .. } => format!("ask a cluster admin for RBAC that allows it: `kubectl auth can-i {what}` must say yes"),
            ApiError::Status { .. } | ApiError::Other { .. } => {
                "retry; if it persists, the API server's logs say why".into()
            }
        }
    }

    pub fn is_connection(&self) -> bool {
        matches!(
            self,
            ApiError::Timeout { .. } | ApiError::Unreachable { .. } | ApiError::Unauthorized { .. }
        )
    }
}

/// Where to connect and how long to wait.
pub struct Settings {
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    pub request_timeout: Duration,
}

/// A client, and what the error messages name: the server and the credentials.
#[derive(Clone)]
pub struct Kube {
    pub client: Client,
    pub server: String,
    /// `user "u" of context "c" (kubeconfig PATH)`, or the pod's service account.
    pub who: String,
    pub request_timeout: Duration,
}

impl Kube {
    pub async fn connect(settings: &Settings) -> Result<Kube, ApiError> {
        let (mut config, who) = config(settings).await?;
        config.connect_timeout = Some(settings.request_timeout);
        config.read_timeout = Some(settings.request_timeout);
        config.write_timeout = Some(settings.request_timeout);
        // kube retries 429/503/504 for up to 15 tries by default: a proxy's 503 on /ready is an
        // answer here ("not ready"), and `--wait` is how `check` retries.
        config.default_retry = false;
        let server = config.cluster_url.to_string();
        let server = server.trim_end_matches('/').to_string();
        let client = Client::try_from(config).map_err(|e| ApiError::Config(innermost(&e)))?;
        Ok(Kube {
            client,
            server,
            who,
            request_timeout: settings.request_timeout,
        })
    }

    /// Runs one request with the request timeout; `what` is what it asks, as kubectl's verbs
    /// say it (`list namespaces`, `get secrets -n portcullis-system`), for the messages.
    pub async fn call<T>(
        &self,
        what: &str,
        request: impl Future<Output = kube::Result<T>>,
    ) -> Result<T, ApiError> {
        match tokio::time::timeout(self.request_timeout, request).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.explain(what, &e)),
            Err(_) => Err(self.timeout()),
        }
    }

    /// GET of a raw path (the pod proxy subresource), as text.
    pub async fn get_text(&self, what: &str, path: &str) -> Result<String, ApiError> {
        let request = http::Request::get(path)
            .body(Vec::new())
            .map_err(|e| ApiError::Other {
                server: self.server.clone(),
                what: what.into(),
                reason: e.to_string(),
            })?;
        self.call(what, self.client.request_text(request)).await
    }

    pub fn timeout(&self) -> ApiError {
        ApiError::Timeout {
            server: self.server.clone(),
            timeout: humanize(self.request_timeout),
        }
    }

    fn explain(&self, what: &str, e: &kube::Error) -> ApiError {
        let server = self.server.clone();
        if let kube::Error::Api(status) = e {
            let message = status.message.clone();
            return match status.code {
                401 => ApiError::Unauthorized {
                    server,
                    who: self.who.clone(),
                    message,
                },
                403 => ApiError::Forbidden {
                    server,
                    who: self.who.clone(),
                    what: what.into(),
                    message,
                },
                code => ApiError::Status {
                    server,
                    what: what.into(),
                    code,
                    message,
                },
            };
        }
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(err) = source {
            if let Some(io) = err.downcast_ref::<std::io::Error>() {
                if io.kind() == std::io::ErrorKind::TimedOut {
                    return self.timeout();
                }
                return ApiError::Unreachable {
                    server,
                    reason: innermost(io),
                };
            }
            source = err.source();
        }
        match e {
            kube::Error::HyperError(_) | kube::Error::Service(_) => ApiError::Unreachable {
                server,
                reason: innermost(e),
            },
            _ => ApiError::Other {
                server,
                what: what.into(),
                reason: innermost(e),
            },
        }
    }
}

/// The kubeconfig as kubectl reads it ($KUBECONFIG, then ~/.kube/config), else in-cluster.
async fn config(settings: &Settings) -> Result<(Config, String), ApiError> {
    let options = KubeConfigOptions {
        context: settings.context.clone(),
        ..Default::default()
    };
    let (kubeconfig, origin) = match &settings.kubeconfig {
        Some(path) => {
            let k = Kubeconfig::read_from(path).map_err(|e| ApiError::Kubeconfig {
                path: path.display().to_string(),
                reason: innermost(&e),
            })?;
            (k, path.display().to_string())
        }
        None => match Kubeconfig::read() {
            Ok(k) => (k, kubeconfig_origin()),
            Err(_) if settings.context.is_none() => {
                let config = Config::incluster().map_err(|e| {
                    ApiError::Config(format!(
                        "no kubeconfig ($KUBECONFIG, ~/.kube/config) and not in a pod ({})",
                        innermost(&e)
                    ))
                })?;
                return Ok((config, "the pod's service account".into()));
            }
            Err(e) => return Err(ApiError::Config(innermost(&e))),
        },
    };
    let who = who(&kubeconfig, settings.context.as_deref(), &origin);
    let config = Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .map_err(|e| ApiError::Config(innermost(&e)))?;
    Ok((config, who))
}

fn kubeconfig_origin() -> String {
    std::env::var("KUBECONFIG").unwrap_or_else(|_| "~/.kube/config".into())
}

/// `user "u" of context "c" (kubeconfig PATH)`.
fn who(kubeconfig: &Kubeconfig, context: Option<&str>, origin: &str) -> String {
    let context = context.or(kubeconfig.current_context.as_deref());
    let user = context.and_then(|name| {
        let c = kubeconfig.contexts.iter().find(|c| c.name == name)?;
        c.context.as_ref()?.user.clone()
    });
    format!(
        "user {:?} of context {:?} (kubeconfig {origin})",
        user.unwrap_or_default(),
        context.unwrap_or_default()
    )
}

/// The deepest cause's text: the one that says what happened (`Connection refused (os error
/// 111)`, `invalid peer certificate: UnknownIssuer`), without the wrappers' debug structures.
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last = e;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

/// `10s`, `1m30s`, `500ms` (whole seconds from one second up).
pub fn humanize(d: Duration) -> String {
    let (secs, millis) = (d.as_secs(), d.subsec_millis());
    match (secs / 60, secs % 60, millis) {
        (0, 0, ms) => format!("{ms}ms"),
        (0, s, _) => format!("{s}s"),
        (m, 0, _) => format!("{m}m"),
        (m, s, _) => format!("{m}m{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_they_were_given() {
        assert_eq!(humanize(Duration::from_secs(10)), "10s");
        assert_eq!(humanize(Duration::from_millis(500)), "500ms");
        assert_eq!(humanize(Duration::from_secs(90)), "1m30s");
        assert_eq!(humanize(Duration::from_secs(120)), "2m");
    }

    #[test]
    fn the_innermost_cause_is_what_the_user_reads() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = kube::Error::Service(Box::new(io));
        assert_eq!(innermost(&e), "refused");
    }
}
