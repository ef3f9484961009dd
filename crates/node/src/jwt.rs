//! Single sign-on: bearer JWTs from an external identity provider
//! (`[auth.jwt]`, docs/security.md).
//!
//! A token is accepted only when all of these hold:
//! - its header names an algorithm of `auth.jwt.algorithms` (RS256 and
//!   ES256 by default). `none` and the HMAC algorithms are never accepted:
//!   HS256 "signed" with the provider's *public* key is the classic
//!   algorithm-confusion attack;
//! - its `kid` names a key of the provider's JWKS (`jwks_url`), of the
//!   algorithm's family. An unknown `kid` refetches the JWKS (a rotation),
//!   at most once per `jwks_refetch_s`;
//! - the signature verifies; `exp` is in the future and `nbf` (if any) in
//!   the past, both with `leeway_s`; `iss` is `issuer` and `aud` holds
//!   `audience`;
//! - the user claim is a non-empty string.
//!
//! The principal's name is `name_prefix` + the user claim (`sso:` by
//! default, so an identity-provider user never takes the name of a local
//! user). Its role is the highest of the roles claim (`admin`, `editor`,
//! `reader`; none: `reader`) and its collections are the collections claim
//! (`*`: all).
use std::collections::HashMap;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use ragfleet_rag::store::principals::Role;
use serde_json::Value;

use crate::config::JwtConfig;

/// Why a token was refused (said to the client without the token itself).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwtError {
    #[error("the bearer token is not a well-formed JWT")]
    Malformed,
    #[error("JWT algorithm {0} is not accepted")]
    Algorithm(String),
    #[error("the JWT has no key id (kid)")]
    NoKeyId,
    #[error("the JWT's key id is not among the identity provider's keys")]
    UnknownKey,
    #[error("the identity provider's keys could not be fetched")]
    Jwks,
    #[error("the JWT has expired")]
    Expired,
    #[error("the JWT is not valid yet (nbf)")]
    NotYetValid,
    #[error("the JWT's issuer is not the configured one")]
    Issuer,
    #[error("the JWT's audience is not this service")]
    Audience,
    #[error("the JWT's signature does not verify")]
    Signature,
    #[error("the JWT lacks a usable {0} claim")]
    Claim(String),
}

/// What a verified token says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtIdentity {
    pub name: String,
    pub role: Role,
    pub collections: Vec<String>,
}

struct Keys {
    by_kid: HashMap<String, (DecodingKey, Option<Algorithm>)>,
    fetched: Option<Instant>,
}

/// Verifies JWTs against one identity provider's JWKS.
pub struct JwtVerifier {
    cfg: JwtConfig,
    http: reqwest::Client,
    keys: tokio::sync::RwLock<Keys>,
    /// One JWKS fetch at a time.
    fetching: tokio::sync::Mutex<()>,
}

/// A bearer token that has the shape of a JWT (three base64url parts);
/// API keys (`rf_…`) never do.
pub fn looks_like_jwt(token: &str) -> bool {
    let parts: Vec<&str> = token.split('.').collect();
    parts.len() == 3
        && parts[..2].iter().all(|p| !p.is_empty())
        && parts.iter().all(|p| {
            p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

impl JwtVerifier {
    pub fn new(cfg: JwtConfig) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(cfg.jwks_timeout_ms))
            .build()
            .unwrap_or_default();
        Self {
            cfg,
            http,
            keys: tokio::sync::RwLock::new(Keys {
                by_kid: HashMap::new(),
                fetched: None,
            }),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    /// The accepted algorithms (never `none` nor HMAC: config checks it).
    fn accepted(&self, alg: Algorithm) -> bool {
        self.cfg
            .algorithms
            .iter()
            .any(|a| a.parse::<Algorithm>().is_ok_and(|a| a == alg))
    }

    /// Verifies `token` and reads its holder's identity.
    pub async fn verify(&self, token: &str) -> Result<JwtIdentity, JwtError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| JwtError::Malformed)?;
        if !self.accepted(header.alg) || is_hmac(header.alg) {
            return Err(JwtError::Algorithm(format!("{:?}", header.alg)));
        }
        let kid = header.kid.ok_or(JwtError::NoKeyId)?;
        let (key, key_alg) = self.key(&kid).await?;
        if key_alg.is_some_and(|a| a != header.alg) {
            return Err(JwtError::Algorithm(format!("{:?}", header.alg)));
        }
        let mut v = Validation::new(header.alg);
        v.leeway = self.cfg.leeway_s;
        v.validate_nbf = true;
        v.set_issuer(&[&self.cfg.issuer]);
        v.set_audience(&[&self.cfg.audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<Value>(token, &key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::ExpiredSignature => JwtError::Expired,
                K::ImmatureSignature => JwtError::NotYetValid,
                K::InvalidIssuer => JwtError::Issuer,
                K::InvalidAudience => JwtError::Audience,
                K::MissingRequiredClaim(c) => JwtError::Claim(c.clone()),
                K::InvalidAlgorithm => JwtError::Algorithm(format!("{:?}", header.alg)),
                K::InvalidSignature => JwtError::Signature,
                _ => JwtError::Malformed,
            }
        })?;
        self.identity(&data.claims)
    }

    fn identity(&self, claims: &Value) -> Result<JwtIdentity, JwtError> {
        let user = claims
            .get(&self.cfg.user_claim)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|u| !u.is_empty() && u.len() <= 200)
            .ok_or_else(|| JwtError::Claim(self.cfg.user_claim.clone()))?;
        let role = strings(claims.get(&self.cfg.roles_claim))
            .iter()
            .filter_map(|r| r.parse::<Role>().ok())
            .max()
            .unwrap_or(Role::Reader);
        Ok(JwtIdentity {
            name: format!("{}{user}", self.cfg.name_prefix),
            role,
            collections: strings(claims.get(&self.cfg.collections_claim)),
        })
    }

    /// The key for `kid`, refetching the JWKS when it is unknown (at most
    /// once per `jwks_refetch_s`) or older than `jwks_max_age_s`.
    async fn key(&self, kid: &str) -> Result<(DecodingKey, Option<Algorithm>), JwtError> {
        {
            let keys = self.keys.read().await;
            let fresh = keys
                .fetched
                .is_some_and(|t| t.elapsed() < Duration::from_secs(self.cfg.jwks_max_age_s));
            if let (true, Some(k)) = (fresh, keys.by_kid.get(kid)) {
                return Ok(k.clone());
            }
        }
        let _one = self.fetching.lock().await;
        let may_fetch = {
            let keys = self.keys.read().await;
            if let Some(k) = keys.by_kid.get(kid) {
                let fresh = keys
                    .fetched
                    .is_some_and(|t| t.elapsed() < Duration::from_secs(self.cfg.jwks_max_age_s));
                if fresh {
                    return Ok(k.clone());
                }
            }
            keys.fetched
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(self.cfg.jwks_refetch_s))
        };
        if may_fetch {
            match self.fetch().await {
                Ok(by_kid) => {
                    let mut keys = self.keys.write().await;
                    keys.by_kid = by_kid;
                    keys.fetched = Some(Instant::now());
                }
                Err(e) => {
                    tracing::warn!(error = %e, url = %self.cfg.jwks_url, "fetching the JWKS failed");
                    // Keep the keys we have; a known kid still verifies.
                    let keys = self.keys.read().await;
                    return keys.by_kid.get(kid).cloned().ok_or(JwtError::Jwks);
                }
            }
        }
        let keys = self.keys.read().await;
        keys.by_kid.get(kid).cloned().ok_or(JwtError::UnknownKey)
    }

    async fn fetch(&self) -> Result<HashMap<String, (DecodingKey, Option<Algorithm>)>, String> {
        let resp = self
            .http
            .get(&self.cfg.jwks_url)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("HTTP {}", resp.status()));
        }
        let set: JwkSet = resp.json().await.map_err(|e| e.to_string())?;
        let mut out = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            let alg = jwk
                .common
                .key_algorithm
                .and_then(|a| a.to_string().parse::<Algorithm>().ok());
            match DecodingKey::from_jwk(jwk) {
                Ok(k) => {
                    out.insert(kid, (k, alg));
                }
                Err(e) => tracing::warn!(kid, error = %e, "a JWKS key is unusable"),
            }
        }
        Ok(out)
    }
}

fn is_hmac(a: Algorithm) -> bool {
    matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

/// A claim as a list of strings: an array of strings, or one string split
/// at spaces and commas (OAuth's `scope` style).
fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        Some(Value::String(s)) => s
            .split([' ', ','])
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwt_shape() {
        assert!(looks_like_jwt("eyJh.eyJz.c2ln"));
        assert!(looks_like_jwt("eyJh.eyJz."));
        assert!(!looks_like_jwt("rf_abc_def"));
        assert!(!looks_like_jwt("a.b"));
        assert!(!looks_like_jwt("a.b.c.d"));
        assert!(!looks_like_jwt("a+b.c.d"));
    }

    #[test]
    fn claim_lists() {
        assert_eq!(
            strings(Some(&serde_json::json!(["a", " b ", 3]))),
            vec!["a", "b"]
        );
        assert_eq!(
            strings(Some(&serde_json::json!("docs faq,hr"))),
            vec!["docs", "faq", "hr"]
        );
        assert!(strings(None).is_empty());
    }
}
