//! Who may read which table: a proxy presents its pod's projected service-account token
//! (audience `portcullis`); a TokenReview tells whether it is valid and which pod it is bound
//! to; the proxy then gets that pod's table and no other.
//!
//! Reviews are cached briefly by token, so that a restarted controller facing a thousand
//! reconnecting proxies asks the API server once per proxy, not once per reconnect.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::PostParams;
use kube::{Api, Client};

/// The pod a token is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodIdentity {
    pub namespace: String,
    pub pod: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "no bearer token; send the pod's projected service-account token (audience portcullis)"
    )]
    MissingToken,
    #[error("token rejected: {0}")]
    Unauthenticated(String),
    #[error("token is not bound to a pod: {0}")]
    NotAPod(String),
    #[error("token belongs to pod {token_pod}, not {asked}")]
    WrongPod { token_pod: String, asked: String },
    #[error("cannot review the token now: {0}")]
    Unavailable(String),
}

impl AuthError {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::MissingToken => "missing_token",
            AuthError::Unauthenticated(_) => "unauthenticated",
            AuthError::NotAPod(_) => "not_a_pod",
            AuthError::WrongPod { .. } => "wrong_pod",
            AuthError::Unavailable(_) => "unavailable",
        }
    }
}

pub enum Authenticator {
    /// File mode only: every request is served. Said loudly at start-up.
    Disabled,
    TokenReview(Box<TokenReviewer>),
}

impl Authenticator {
    /// Whether the bearer of `token` may read the table of `namespace/pod`.
    pub async fn authorize(
        &self,
        token: Option<&str>,
        namespace: &str,
        pod: &str,
    ) -> Result<(), AuthError> {
        match self {
            Authenticator::Disabled => Ok(()),
            Authenticator::TokenReview(reviewer) => {
                let token = token
                    .filter(|t| !t.is_empty())
                    .ok_or(AuthError::MissingToken)?;
                let identity = reviewer.review(token).await?;
                if identity.namespace == namespace && identity.pod == pod {
                    Ok(())
                } else {
                    Err(AuthError::WrongPod {
                        token_pod: format!("{}/{}", identity.namespace, identity.pod),
                        asked: format!("{namespace}/{pod}"),
                    })
                }
            }
        }
    }
}

pub struct TokenReviewer {
    api: Api<TokenReview>,
    audience: String,
    ttl: Duration,
    cache: Mutex<HashMap<String, CachedReview>>,
}

/// When a token was reviewed, and what came of it.
type CachedReview = (Instant, Result<PodIdentity, AuthError>);

/// The extra field the API server sets on tokens bound to a pod.
const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";

impl TokenReviewer {
    pub fn new(client: Client, audience: impl Into<String>, ttl: Duration) -> Self {
        TokenReviewer {
            api: Api::all(client),
            audience: audience.into(),
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub async fn review(&self, token: &str) -> Result<PodIdentity, AuthError> {
        if let Some(cached) = self.cached(token) {
            return cached;
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..Default::default()
        };
        let answer = self
            .api
            .create(&PostParams::default(), &review)
            .await
            // Not cached: the next attempt may reach a healthy API server.
            .map_err(|e| AuthError::Unavailable(e.to_string()))?;
        let result = identity_from_review(&answer, &self.audience);
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        cache.retain(|_, (at, _)| now.duration_since(*at) < self.ttl);
        cache.insert(token.to_string(), (now, result.clone()));
        result
    }

    fn cached(&self, token: &str) -> Option<Result<PodIdentity, AuthError>> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get(token)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, r)| r.clone())
    }
}

/// Reads a TokenReview's answer: authenticated, for our audience, a service account's token
/// bound to a pod (`system:serviceaccount:{namespace}:{sa}` + the pod-name extra).
pub fn identity_from_review(
    review: &TokenReview,
    audience: &str,
) -> Result<PodIdentity, AuthError> {
    let status = review
        .status
        .as_ref()
        .ok_or_else(|| AuthError::Unavailable("the TokenReview came back without status".into()))?;
    if status.authenticated != Some(true) {
        return Err(AuthError::Unauthenticated(
            status
                .error
                .clone()
                .unwrap_or_else(|| "not authenticated".into()),
        ));
    }
    if let Some(audiences) = &status.audiences {
        if !audiences.iter().any(|a| a == audience) {
            return Err(AuthError::Unauthenticated(format!(
                "token is for audiences {audiences:?}, not {audience:?}"
            )));
        }
    }
    let user = status.user.as_ref();
    let username = user.and_then(|u| u.username.as_deref()).unwrap_or_default();
    let namespace = username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
        .map(|(ns, _)| ns.to_string())
        .ok_or_else(|| AuthError::NotAPod(format!("user {username:?} is not a service account")))?;
    let pod = user
        .and_then(|u| u.extra.as_ref())
        .and_then(|extra| extra.get(POD_NAME_EXTRA))
        .and_then(|v| v.first())
        .cloned()
        .ok_or_else(|| {
            AuthError::NotAPod(format!(
                "{username} token carries no {POD_NAME_EXTRA}; mount a projected token, not a secret-based one"
            ))
        })?;
    Ok(PodIdentity { namespace, pod })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn review(json: &str) -> TokenReview {
        serde_json::from_str(json).expect("TokenReview JSON")
    }

    /// The shape the API server answers with for a projected token of pod shop/web-1.
    const BOUND: &str = r#"{
      "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
      "metadata": {"creationTimestamp": null},
      "spec": {"audiences": ["portcullis"], "token": "x"},
      "status": {
        "audiences": ["portcullis"], "authenticated": true,
        "user": {
          "username": "system:serviceaccount:shop:web",
          "uid": "7a6c0d1e-2d3b-4c8a-9f1e-0123456789ab",
          "groups": ["system:serviceaccounts", "system:serviceaccounts:shop", "system:authenticated"],
          "extra": {
            "authentication.kubernetes.io/credential-id": ["JTI=5f0c"],
            "authentication.kubernetes.io/node-name": ["node-1"],
            "authentication.kubernetes.io/node-uid": ["d3c1"],
            "authentication.kubernetes.io/pod-name": ["web-1"],
            "authentication.kubernetes.io/pod-uid": ["0b6e"]
          }
        }
      }
    }"#;

    #[test]
    fn a_projected_token_names_its_pod() {
        assert_eq!(
            identity_from_review(&review(BOUND), "portcullis"),
            Ok(PodIdentity {
                namespace: "shop".into(),
                pod: "web-1".into()
            })
        );
    }

    #[test]
    fn other_audiences_and_unbound_tokens_are_refused() {
        assert!(matches!(
            identity_from_review(&review(BOUND), "vault"),
            Err(AuthError::Unauthenticated(_))
        ));
        let unbound = BOUND.replace(r#""authentication.kubernetes.io/pod-name": ["web-1"],"#, "");
        assert!(matches!(
            identity_from_review(&review(&unbound), "portcullis"),
            Err(AuthError::NotAPod(_))
        ));
        let user = BOUND.replace("system:serviceaccount:shop:web", "alice");
        assert!(matches!(
            identity_from_review(&review(&user), "portcullis"),
            Err(AuthError::NotAPod(_))
        ));
        let rejected =
            r#"{"spec":{},"status":{"authenticated":false,"error":"token has expired"}}"#;
        assert_eq!(
            identity_from_review(&review(rejected), "portcullis"),
            Err(AuthError::Unauthenticated("token has expired".into()))
        );
    }

    #[tokio::test]
    async fn disabled_mode_serves_anyone() {
        assert_eq!(
            Authenticator::Disabled
                .authorize(None, "shop", "web-1")
                .await,
            Ok(())
        );
    }
}
