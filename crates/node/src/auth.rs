//! Authentication and authorization of the data routes (issue 14).
//!
//! Every request to `/api/v1/*` (but the OpenAPI document, its page and the
//! login) and `/v1/*` goes through the middleware in `api::authn`, which
//! resolves its credentials with the rules below to a [`Principal`] put in
//! the request's extensions:
//!
//! - `Authorization: Bearer rf_…`: an API key, looked up by its public id
//!   and checked by the SHA-256 of the whole key (constant-time), then for
//!   revocation and expiry. Its role is the lower of the key's and its
//!   owner's; its collections are the owner's grants narrowed by the key's.
//! - the page's session cookie (`ragfleet_session`), with a CSRF header
//!   (`X-CSRF-Token`) on state-changing requests.
//!
//! Without credentials, or with invalid ones: 401 with `WWW-Authenticate`;
//! handlers answer 403 outside a principal's role or grants. A verified key
//! or session is cached for `auth.cache_ttl_ms` (≤ 1 s), so a key revoked on
//! any node sharing the store is refused everywhere within that time.
//!
//! With `[auth] enabled = false` (`--no-auth`) every request acts as the
//! built-in `anonymous` admin.
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap};
use ragfleet_rag::store::principals::{KeyAuth, Role, Scope, SessionAuth, UserRecord};

use crate::error::ApiError;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "ragfleet_session";
/// The CSRF header a session-authenticated state-changing request carries.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// The principal `--no-auth` requests act as.
pub const ANONYMOUS: &str = "anonymous";
/// The gateway's identity header (the verified subject) and its signature
/// (`t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<subject>\n<t>")>`).
pub const PRINCIPAL_HEADER: &str = "x-ragfleet-principal";
pub const PRINCIPAL_SIG_HEADER: &str = "x-ragfleet-principal-signature";
/// How far a signature's time may be from now.
const SIG_SKEW_S: u64 = 60;

/// The signature the gateway puts beside `subject` at `unix` seconds.
pub fn sign_principal(secret: &str, subject: &str, unix: u64) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(format!("{subject}\n{unix}").as_bytes());
    format!("t={unix},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// The subject of a correctly signed, fresh identity header.
pub(crate) fn verified_subject<'a>(secret: &str, headers: &'a HeaderMap) -> Option<&'a str> {
    use hmac::Mac;
    if secret.is_empty() {
        return None;
    }
    let subject = headers.get(PRINCIPAL_HEADER)?.to_str().ok()?;
    let sig = headers.get(PRINCIPAL_SIG_HEADER)?.to_str().ok()?;
    let (t, v1) = sig.split_once(',')?;
    let t: u64 = t.strip_prefix("t=")?.parse().ok()?;
    let v1 = hex::decode(v1.strip_prefix("v1=")?).ok()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    if now.abs_diff(t) > SIG_SKEW_S {
        return None;
    }
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).ok()?;
    mac.update(format!("{subject}\n{t}").as_bytes());
    mac.verify_slice(&v1).ok()?;
    Some(subject)
}

/// How a principal authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// An API key (its public id).
    Key(String),
    /// A web-page session.
    Session,
    /// `--no-auth`.
    Anonymous,
    /// The gateway's signed identity header.
    Gateway,
    /// A single-sign-on JWT (`[auth.jwt]`).
    Jwt,
}

/// Who is calling, and what they may do.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The user (owner of what they create).
    pub name: String,
    pub role: Role,
    /// Collections visible to this principal (admins: all).
    pub scope: Scope,
    pub via: Via,
    /// `X-Request-Id` of the request (audit records).
    pub request_id: String,
}

impl Principal {
    pub fn anonymous() -> Self {
        Self {
            name: ANONYMOUS.into(),
            role: Role::Admin,
            scope: Scope::All,
            via: Via::Anonymous,
            request_id: String::new(),
        }
    }

    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// The collections retrieval is limited to (`None`: all).
    pub fn scope_list(&self) -> Option<Vec<String>> {
        self.scope.as_list()
    }

    /// May search and chat in `collection`.
    pub fn can_read(&self, collection: &str) -> bool {
        self.scope.allows(collection)
    }

    /// 403 unless the principal may read `collection`.
    pub fn check_read(&self, collection: &str) -> Result<(), ApiError> {
        if self.can_read(collection) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "no access to collection {collection:?}"
            )))
        }
    }

    /// 403 unless the principal may ingest into and delete from `collection`.
    pub fn check_write(&self, collection: &str) -> Result<(), ApiError> {
        self.check_role(Role::Editor)?;
        if self.can_read(collection) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "no write access to collection {collection:?}"
            )))
        }
    }

    /// 403 unless the principal's role is at least `role`.
    pub fn check_role(&self, role: Role) -> Result<(), ApiError> {
        if self.role >= role {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "this needs the {role} role; {} has {}",
                self.name, self.role
            )))
        }
    }

    /// May read or delete something `owner` created (admins: everything).
    pub fn owns(&self, owner: &str) -> bool {
        self.name == owner || self.is_admin()
    }

    pub(crate) fn from_key(k: &KeyAuth, request_id: String) -> Self {
        let role = k.key.role.min(k.user.role);
        let mut scope = user_scope(&k.user);
        if let Some(cols) = &k.key.collections {
            scope = scope.intersect(&Scope::from_grants(cols));
        }
        if role == Role::Admin {
            scope = Scope::All;
        }
        Self {
            name: k.user.name.clone(),
            role,
            scope,
            via: Via::Key(k.key.id.clone()),
            request_id,
        }
    }

    pub(crate) fn from_session(user: &UserRecord, request_id: String) -> Self {
        Self {
            name: user.name.clone(),
            role: user.role,
            scope: user_scope(user),
            via: Via::Session,
            request_id,
        }
    }
}

fn user_scope(u: &UserRecord) -> Scope {
    if u.role == Role::Admin {
        Scope::All
    } else {
        Scope::from_grants(&u.grants)
    }
}

pub(crate) enum Cached {
    Key(Option<KeyAuth>),
    Session(Option<SessionAuth>),
    User(Option<UserRecord>),
}

/// Caches of verified credentials and the login throttle.
pub struct AuthState {
    ttl: Duration,
    cache: Mutex<HashMap<String, (Instant, std::sync::Arc<Cached>)>>,
    touched: Mutex<HashMap<String, Instant>>,
    failures: Mutex<HashMap<String, Vec<Instant>>>,
}

/// How often a key's `last_used` is written (not on every request).
const TOUCH_EVERY: Duration = Duration::from_secs(60);

impl AuthState {
    pub fn new(cfg: &crate::config::AuthConfig) -> Self {
        Self {
            ttl: Duration::from_millis(cfg.cache_ttl_ms.min(1000)),
            cache: Mutex::new(HashMap::new()),
            touched: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn cached(&self, k: &str) -> Option<std::sync::Arc<Cached>> {
        let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        match c.get(k) {
            Some((at, v)) if at.elapsed() < self.ttl => Some(v.clone()),
            Some(_) => {
                c.remove(k);
                None
            }
            None => None,
        }
    }

    pub(crate) fn remember(&self, k: String, v: Cached) -> std::sync::Arc<Cached> {
        let v = std::sync::Arc::new(v);
        if self.ttl.is_zero() {
            return v;
        }
        let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if c.len() > 10_000 {
            let ttl = self.ttl;
            c.retain(|_, (at, _)| at.elapsed() < ttl);
        }
        c.insert(k, (Instant::now(), v.clone()));
        v
    }

    /// Forgets a cached session or key at once (logout, revocation here).
    pub fn forget(&self, cache_key: &str) {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(cache_key);
    }

    pub(crate) fn should_touch(&self, id: &str) -> bool {
        let mut t = self.touched.lock().unwrap_or_else(|p| p.into_inner());
        match t.get(id) {
            Some(at) if at.elapsed() < TOUCH_EVERY => false,
            _ => {
                t.insert(id.to_string(), Instant::now());
                true
            }
        }
    }

    /// Failed logins of `who` within `window`; records one more when `fail`.
    pub fn login_failures(&self, who: &str, window: Duration, fail: bool) -> usize {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if f.len() > 10_000 {
            f.retain(|_, v| v.iter().any(|t| t.elapsed() < window));
        }
        let v = f.entry(who.to_string()).or_default();
        v.retain(|t| t.elapsed() < window);
        if fail {
            v.push(Instant::now());
        }
        v.len()
    }

    /// Clears `who`'s failures after a successful login.
    pub fn login_succeeded(&self, who: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(who);
    }
}

/// One structured audit record per security-relevant action (target
/// `ragfleet::audit`), never with a secret.
/// The client's address behind trusted proxies: `peer` unless it is one of
/// `trusted`; then `X-Forwarded-For` is read from the right (each proxy
/// appends the address it saw), skipping trusted hops, and the first
/// address not trusted is the client. A malformed entry stops the walk at
/// the hop that sent it; only trusted hops all the way: the leftmost.
pub fn client_ip(
    headers: &http::HeaderMap,
    peer: std::net::IpAddr,
    trusted: &[ipnet::IpNet],
) -> std::net::IpAddr {
    let is_trusted = |ip: &std::net::IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect::<Vec<_>>();
    for hop in hops.iter().rev() {
        let Ok(ip) = hop.trim().parse::<std::net::IpAddr>() else {
            return client;
        };
        client = ip;
        if !is_trusted(&ip) {
            return ip;
        }
    }
    client
}

pub fn audit(action: &str, principal: &str, request_id: &str, outcome: &str, detail: &str) {
    tracing::info!(
        target: "ragfleet::audit",
        action,
        principal,
        request_id,
        outcome,
        detail,
        at = %ragfleet_rag::store::now_rfc3339(),
        "audit"
    );
}

/// The bearer token, if the request has an `Authorization: Bearer` header.
/// `Err` when the header is there but is not a bearer token.
pub(crate) fn bearer(headers: &HeaderMap) -> Result<Option<&str>, ()> {
    let Some(v) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let v = v.to_str().map_err(|_| ())?.trim();
    let (scheme, token) = v.split_once(' ').ok_or(())?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(());
    }
    Ok(Some(token.trim()))
}

/// The value of a cookie.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

pub(crate) fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 128)
        .unwrap_or("")
        .to_string()
}

/// Creates the bootstrap admin and its key on a store that has none; the
/// key is written to `data_dir/admin.key` (mode 0600) and printed once.
/// `Ok(false)`: the store had its admin already.
pub async fn bootstrap<S: ragfleet_rag::store::PrincipalStore + ?Sized>(
    store: &S,
    data_dir: &std::path::Path,
) -> Result<bool, String> {
    let Some(key) = store
        .bootstrap_admin()
        .await
        .map_err(|e| format!("creating the admin key: {e}"))?
    else {
        return Ok(false);
    };
    let path = data_dir.join("admin.key");
    write_secret(&path, &format!("{key}\n"))
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    eprintln!(
        "ragfleet: created the admin API key (shown once; also in {}):\n  {key}",
        path.display()
    );
    audit("key_created", "admin", "", "ok", "bootstrap admin key");
    Ok(true)
}

/// Writes a file only its owner can read (mode 0600 from its creation).
pub fn write_secret(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xff(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", v.parse().unwrap());
        h
    }

    #[test]
    fn client_ip_trusts_forwarded_for_only_from_trusted_proxies() {
        let nets: Vec<ipnet::IpNet> =
            vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        // An untrusted peer is the client, whatever it claims.
        assert_eq!(
            client_ip(&xff("1.2.3.4"), ip("192.0.2.9"), &nets),
            ip("192.0.2.9")
        );
        // A trusted peer: the rightmost untrusted hop.
        assert_eq!(
            client_ip(&xff("1.2.3.4, 5.6.7.8"), ip("10.1.1.1"), &nets),
            ip("5.6.7.8")
        );
        assert_eq!(
            client_ip(&xff("1.2.3.4, 10.2.2.2"), ip("::1"), &nets),
            ip("1.2.3.4")
        );
        // A forged leftmost entry does not win over the hop a proxy added.
        assert_eq!(
            client_ip(&xff("6.6.6.6, 5.6.7.8"), ip("10.1.1.1"), &nets),
            ip("5.6.7.8")
        );
        // Malformed: stop at the hop that sent it.
        assert_eq!(
            client_ip(&xff("1.2.3.4, junk"), ip("10.1.1.1"), &nets),
            ip("10.1.1.1")
        );
        // No header: the peer.
        assert_eq!(
            client_ip(&HeaderMap::new(), ip("10.1.1.1"), &nets),
            ip("10.1.1.1")
        );
        // Nothing trusted: never the header.
        assert_eq!(
            client_ip(&xff("1.2.3.4"), ip("10.1.1.1"), &[]),
            ip("10.1.1.1")
        );
    }
}
