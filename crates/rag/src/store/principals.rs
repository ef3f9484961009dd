//! Principals in the store (issue 14): users with argon2id password hashes,
//! per-collection grants, API keys (only a hash is stored), browser
//! sessions, and who owns each conversation and run.
//!
//! **Written once for both backends.** The SQL below uses `?` placeholders;
//! [`sql`] numbers them (`$1`, `$2`, …) for PostgreSQL. Both schemas keep
//! the same column types for these tables (TEXT, and 64-bit integers for
//! counts; no booleans: a revoked key has a `revoked_at` time), so one body
//! of code, instantiated per backend by [`impl_principal_store!`], maps the
//! rows of both.
//!
//! **API keys.** `rf_<id>_<secret>`: `id` is 12 random alphanumerics, the
//! public lookup part (shown in listings); `secret` 40 more (≈ 238 bits).
//! Only the hex SHA-256 of the whole key is stored. A slow password hash
//! (argon2) protects *low-entropy* secrets against guessing; a key of 238
//! random bits cannot be guessed however fast the hash, so a plain SHA-256
//! is as safe here and keeps verification (every request) cheap. Comparison
//! is constant-time. Passwords, which people choose, get argon2id.
use std::collections::BTreeSet;

use async_trait::async_trait;
use rand::distributions::{Alphanumeric, DistString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Dialect, DocumentRecord};
use crate::api::{ConversationInfo, Page, RunSnapshot};
use crate::{RagError, Result};

/// The bootstrap administrator: owner of everything from before principals.
pub const BOOTSTRAP_ADMIN: &str = "admin";
/// Grant of every collection.
pub const ALL_COLLECTIONS: &str = "*";
/// Prefix of every API key.
pub const KEY_PREFIX: &str = "rf_";
const KEY_ID_LEN: usize = 12;
const KEY_SECRET_LEN: usize = 40;

/// What a principal may do. Ordered: `Reader < Editor < Admin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Search and chat in granted collections.
    Reader,
    /// Also ingest and delete in granted collections.
    Editor,
    /// Everything, including users, keys and grants.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Editor => "editor",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = RagError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "reader" => Ok(Role::Reader),
            "editor" => Ok(Role::Editor),
            "admin" => Ok(Role::Admin),
            other => Err(RagError::InvalidInput(format!(
                "unknown role {other:?} (expected admin, editor or reader)"
            ))),
        }
    }
}

/// A user as stored (never with the password hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub name: String,
    pub role: Role,
    /// Collections granted (`*`: all). Admins see everything regardless.
    pub grants: Vec<String>,
    pub has_password: bool,
    pub created_at: String,
}

/// An API key as stored (the key itself is never stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    /// The public lookup part (`rf_<id>_…`).
    pub id: String,
    pub user: String,
    pub name: String,
    pub role: Role,
    /// Narrower than the owner's grants; `None`: the owner's.
    pub collections: Option<Vec<String>>,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub last_used: Option<String>,
    pub revoked_at: Option<String>,
}

/// A key with its owner, as authentication needs it.
#[derive(Debug, Clone)]
pub struct KeyAuth {
    pub key: ApiKeyRecord,
    pub hash: String,
    pub user: UserRecord,
}

/// A session with its user.
#[derive(Debug, Clone)]
pub struct SessionAuth {
    pub csrf: String,
    pub expires_at: String,
    pub user: UserRecord,
}

/// A freshly made key: the plaintext (shown once) and what to store.
#[derive(Debug, Clone)]
pub struct MintedKey {
    pub plaintext: String,
    pub id: String,
    pub hash: String,
}

/// Makes a new random key.
pub fn mint_key() -> MintedKey {
    let mut rng = rand::rngs::OsRng;
    let id = Alphanumeric.sample_string(&mut rng, KEY_ID_LEN);
    let secret = Alphanumeric.sample_string(&mut rng, KEY_SECRET_LEN);
    let plaintext = format!("{KEY_PREFIX}{id}_{secret}");
    let hash = sha256_hex(&plaintext);
    MintedKey {
        plaintext,
        id,
        hash,
    }
}

/// The lookup id of a presented key, if it has the shape of one.
pub fn key_id(presented: &str) -> Option<&str> {
    let rest = presented.strip_prefix(KEY_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let ok = id.len() == KEY_ID_LEN
        && secret.len() == KEY_SECRET_LEN
        && id
            .bytes()
            .chain(secret.bytes())
            .all(|b| b.is_ascii_alphanumeric());
    ok.then_some(id)
}

/// A random token for sessions and CSRF (≈ 238 bits).
pub fn random_token() -> String {
    Alphanumeric.sample_string(&mut rand::rngs::OsRng, KEY_SECRET_LEN)
}

pub fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// Constant-time equality of two strings of public length.
pub fn ct_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Hashes a password with argon2id (the crate's defaults: 19 MiB, 2 passes).
pub fn hash_password(password: &str) -> Result<String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| RagError::InvalidInput(format!("cannot hash the password: {e}")))
}

/// Checks a password against a stored argon2 hash.
pub fn verify_password(password: &str, hash: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(hash).is_ok_and(|h| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// A user or key name: 1–64 of letters, digits, `.`, `_`, `-`, `@`.
pub fn check_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if ok {
        Ok(())
    } else {
        Err(RagError::InvalidInput(format!(
            "{what} {name:?}: use 1-64 letters, digits, '.', '_', '-' or '@'"
        )))
    }
}

/// A collection name in a grant (`*` for all).
pub fn check_collection(c: &str) -> Result<()> {
    if c == ALL_COLLECTIONS
        || (!c.trim().is_empty() && c.len() <= 256 && !c.chars().any(char::is_control))
    {
        Ok(())
    } else {
        Err(RagError::InvalidInput(format!(
            "collection {c:?}: give a name (at most 256 characters) or \"*\""
        )))
    }
}

/// The collections a principal may see: every one, or a set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    All,
    Only(BTreeSet<String>),
}

impl Scope {
    pub fn from_grants<S: AsRef<str>>(grants: &[S]) -> Scope {
        if grants.iter().any(|g| g.as_ref() == ALL_COLLECTIONS) {
            Scope::All
        } else {
            Scope::Only(grants.iter().map(|g| g.as_ref().to_string()).collect())
        }
    }

    pub fn allows(&self, collection: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Only(s) => s.contains(collection),
        }
    }

    /// The collections both allow.
    pub fn intersect(&self, other: &Scope) -> Scope {
        match (self, other) {
            (Scope::All, o) | (o, Scope::All) => o.clone(),
            (Scope::Only(a), Scope::Only(b)) => Scope::Only(a.intersection(b).cloned().collect()),
        }
    }

    /// `None` for all, else the list.
    pub fn as_list(&self) -> Option<Vec<String>> {
        match self {
            Scope::All => None,
            Scope::Only(s) => Some(s.iter().cloned().collect()),
        }
    }
}

/// Numbers `?` placeholders for PostgreSQL (the SQL here has no `?` elsewhere).
pub(crate) fn sql(d: Dialect, s: &str) -> String {
    match d {
        Dialect::Sqlite => s.to_string(),
        Dialect::Postgres => {
            let mut out = String::with_capacity(s.len() + 8);
            let mut n = 0;
            for ch in s.chars() {
                if ch == '?' {
                    n += 1;
                    out.push('$');
                    out.push_str(&n.to_string());
                } else {
                    out.push(ch);
                }
            }
            out
        }
    }
}

/// The `documents` columns as text in both dialects (PostgreSQL keeps
/// metadata as JSONB).
pub(crate) fn doc_cols(d: Dialect) -> &'static str {
    match d {
        Dialect::Sqlite => "*",
        Dialect::Postgres => {
            "id, title, collection, metadata::text AS metadata, source, text, pages, \
             content_hash, chunks, chars, created_at, updated_at, seq"
        }
    }
}

/// Byte-order collation for ids, as SQLite sorts.
pub(crate) fn id_order(d: Dialect) -> &'static str {
    match d {
        Dialect::Sqlite => "id",
        Dialect::Postgres => "id COLLATE \"C\"",
    }
}

pub(crate) fn json_list(v: Option<&[String]>) -> Result<Option<String>> {
    v.map(|l| serde_json::to_string(l).map_err(|e| RagError::Storage(e.to_string())))
        .transpose()
}

/// Users, grants, keys, sessions and ownership: both backends.
#[async_trait]
pub trait PrincipalStore: Send + Sync {
    /// Creates a user; [`RagError::Conflict`] if the name is taken.
    async fn create_user(
        &self,
        name: &str,
        role: Role,
        password_hash: Option<&str>,
        grants: &[String],
    ) -> Result<UserRecord>;
    async fn get_user(&self, name: &str) -> Result<Option<UserRecord>>;
    /// The stored argon2 hash (login only).
    async fn password_hash(&self, name: &str) -> Result<Option<String>>;
    async fn list_users(&self) -> Result<Vec<UserRecord>>;
    /// Changes role and/or password; `false`: no such user.
    async fn update_user(
        &self,
        name: &str,
        role: Option<Role>,
        password_hash: Option<&str>,
    ) -> Result<bool>;
    /// Deletes a user with their keys and sessions.
    async fn delete_user(&self, name: &str) -> Result<bool>;
    /// Adds (`true`) or removes a grant; `false`: no such user.
    async fn set_grant(&self, user: &str, collection: &str, granted: bool) -> Result<bool>;

    async fn create_api_key(&self, key: &ApiKeyRecord, hash: &str) -> Result<()>;
    /// A key with its owner, by id (revoked and expired ones too).
    async fn key_auth(&self, id: &str) -> Result<Option<KeyAuth>>;
    async fn list_api_keys(&self, user: Option<&str>) -> Result<Vec<ApiKeyRecord>>;
    /// `false`: no such key (or already revoked).
    async fn revoke_api_key(&self, id: &str) -> Result<bool>;
    async fn touch_api_key(&self, id: &str, at: &str) -> Result<()>;

    async fn create_session(
        &self,
        id_hash: &str,
        user: &str,
        csrf: &str,
        expires_at: &str,
    ) -> Result<()>;
    async fn session_auth(&self, id_hash: &str) -> Result<Option<SessionAuth>>;
    async fn delete_session(&self, id_hash: &str) -> Result<bool>;

    /// Creates the bootstrap admin and a key for it, unless it exists:
    /// `Some(key)` only to the one caller that created it.
    async fn bootstrap_admin(&self) -> Result<Option<String>>;

    /// Creates a conversation owned by `owner` unless it exists.
    async fn claim_conversation(&self, id: &str, title: &str, owner: &str) -> Result<()>;
    async fn conversation_owner(&self, id: &str) -> Result<Option<String>>;
    /// Conversations of `owner` (everyone's with `None`), newest first.
    async fn list_conversations_of(
        &self,
        owner: Option<&str>,
        offset: usize,
        limit: usize,
    ) -> Result<Page<ConversationInfo>>;
    async fn put_run_owned(&self, run: &RunSnapshot, owner: &str) -> Result<()>;
    async fn run_owner(&self, id: &str) -> Result<Option<String>>;
    /// Documents in any of `collections`, ordered by id, with the total.
    async fn list_documents_in(
        &self,
        collections: &[String],
        offset: usize,
        limit: usize,
    ) -> Result<Page<DocumentRecord>>;
}

pub(crate) fn role_parse(s: &str) -> Result<Role> {
    s.parse()
        .map_err(|_| RagError::Storage(format!("unknown role {s:?} in store")))
}

/// Implements [`PrincipalStore`] for a backend, once for both: `$store`
/// has `pool()` and `begin_tx()`; `$row` is its row type; `$row_doc` maps a
/// `documents` row; `$row_conv` a `conversations` row.
macro_rules! impl_principal_store {
    ($store:ty, $row:ty, $dialect:expr, $row_doc:path, $row_conv:path) => {
        const _: () = {
            use sqlx::{AssertSqlSafe, Row};
            use $crate::api::{ConversationInfo, Page, RunSnapshot};
            use $crate::store::principals::*;
            use $crate::store::{now_rfc3339, DocumentRecord};
            use $crate::{RagError, Result};

            const D: $crate::store::Dialect = $dialect;

            fn err(e: sqlx::Error) -> RagError {
                $crate::store::classify_db_error(e, D)
            }
            fn q(s: &str) -> AssertSqlSafe<String> {
                AssertSqlSafe(sql(D, s))
            }
            fn json_err(e: serde_json::Error) -> RagError {
                RagError::Storage(format!("corrupt JSON in store: {e}"))
            }
            fn user_from(r: &$row, grants: Vec<String>) -> Result<UserRecord> {
                let role: String = r.try_get("role").map_err(err)?;
                let pw: Option<String> = r.try_get("password_hash").map_err(err)?;
                Ok(UserRecord {
                    name: r.try_get("name").map_err(err)?,
                    role: role_parse(&role)?,
                    grants,
                    has_password: pw.is_some(),
                    created_at: r.try_get("created_at").map_err(err)?,
                })
            }
            fn key_from(r: &$row) -> Result<ApiKeyRecord> {
                let role: String = r.try_get("role").map_err(err)?;
                let cols: Option<String> = r.try_get("collections").map_err(err)?;
                Ok(ApiKeyRecord {
                    id: r.try_get("id").map_err(err)?,
                    user: r.try_get("user_name").map_err(err)?,
                    name: r.try_get("name").map_err(err)?,
                    role: role_parse(&role)?,
                    collections: cols
                        .map(|c| serde_json::from_str(&c).map_err(json_err))
                        .transpose()?,
                    created_at: r.try_get("created_at").map_err(err)?,
                    expires_at: r.try_get("expires_at").map_err(err)?,
                    last_used: r.try_get("last_used").map_err(err)?,
                    revoked_at: r.try_get("revoked_at").map_err(err)?,
                })
            }
            const USER_COLS: &str = "name, role, password_hash, created_at";
            const KEY_COLS: &str = "id, user_name, name, role, collections, created_at, \
                                    expires_at, last_used, revoked_at";

            impl $store {
                async fn grants_of(&self, user: &str) -> Result<Vec<String>> {
                    sqlx::query_scalar(q(
                        "SELECT collection FROM grants WHERE user_name = ? ORDER BY collection",
                    ))
                    .bind(user)
                    .fetch_all(self.pool())
                    .await
                    .map_err(err)
                }
            }

            #[async_trait::async_trait]
            impl PrincipalStore for $store {
                async fn create_user(
                    &self,
                    name: &str,
                    role: Role,
                    password_hash: Option<&str>,
                    grants: &[String],
                ) -> Result<UserRecord> {
                    check_name("user", name)?;
                    for g in grants {
                        check_collection(g)?;
                    }
                    let mut tx = self.begin_tx().await?;
                    let now = now_rfc3339();
                    let n = sqlx::query(q(
                        "INSERT INTO users (name, role, password_hash, created_at) \
                         VALUES (?, ?, ?, ?) ON CONFLICT (name) DO NOTHING",
                    ))
                    .bind(name)
                    .bind(role.as_str())
                    .bind(password_hash)
                    .bind(&now)
                    .execute(&mut *tx)
                    .await
                    .map_err(err)?
                    .rows_affected();
                    if n == 0 {
                        return Err(RagError::Conflict(format!("user {name:?} exists")));
                    }
                    for g in grants {
                        sqlx::query(q(
                            "INSERT INTO grants (user_name, collection) VALUES (?, ?) \
                             ON CONFLICT DO NOTHING",
                        ))
                        .bind(name)
                        .bind(g)
                        .execute(&mut *tx)
                        .await
                        .map_err(err)?;
                    }
                    tx.commit().await.map_err(err)?;
                    let mut grants: Vec<String> = grants.to_vec();
                    grants.sort();
                    grants.dedup();
                    Ok(UserRecord {
                        name: name.to_string(),
                        role,
                        grants,
                        has_password: password_hash.is_some(),
                        created_at: now,
                    })
                }

                async fn get_user(&self, name: &str) -> Result<Option<UserRecord>> {
                    let row = sqlx::query(q(&format!(
                        "SELECT {USER_COLS} FROM users WHERE name = ?"
                    )))
                    .bind(name)
                    .fetch_optional(self.pool())
                    .await
                    .map_err(err)?;
                    match row {
                        Some(r) => Ok(Some(user_from(&r, self.grants_of(name).await?)?)),
                        None => Ok(None),
                    }
                }

                async fn password_hash(&self, name: &str) -> Result<Option<String>> {
                    let h: Option<Option<String>> =
                        sqlx::query_scalar(q("SELECT password_hash FROM users WHERE name = ?"))
                            .bind(name)
                            .fetch_optional(self.pool())
                            .await
                            .map_err(err)?;
                    Ok(h.flatten())
                }

                async fn list_users(&self) -> Result<Vec<UserRecord>> {
                    let rows = sqlx::query(q(&format!(
                        "SELECT {USER_COLS} FROM users ORDER BY name"
                    )))
                    .fetch_all(self.pool())
                    .await
                    .map_err(err)?;
                    let grants = sqlx::query(q(
                        "SELECT user_name, collection FROM grants ORDER BY user_name, collection",
                    ))
                    .fetch_all(self.pool())
                    .await
                    .map_err(err)?;
                    let mut by_user: std::collections::HashMap<String, Vec<String>> =
                        Default::default();
                    for g in &grants {
                        by_user
                            .entry(g.try_get("user_name").map_err(err)?)
                            .or_default()
                            .push(g.try_get("collection").map_err(err)?);
                    }
                    rows.iter()
                        .map(|r| {
                            let name: String = r.try_get("name").map_err(err)?;
                            user_from(r, by_user.remove(&name).unwrap_or_default())
                        })
                        .collect()
                }

                async fn update_user(
                    &self,
                    name: &str,
                    role: Option<Role>,
                    password_hash: Option<&str>,
                ) -> Result<bool> {
                    let n = sqlx::query(q(
                        "UPDATE users SET role = COALESCE(?, role), \
                         password_hash = COALESCE(?, password_hash) WHERE name = ?",
                    ))
                    .bind(role.map(Role::as_str))
                    .bind(password_hash)
                    .bind(name)
                    .execute(self.pool())
                    .await
                    .map_err(err)?
                    .rows_affected();
                    Ok(n > 0)
                }

                async fn delete_user(&self, name: &str) -> Result<bool> {
                    let mut tx = self.begin_tx().await?;
                    for table in ["grants", "api_keys", "sessions"] {
                        sqlx::query(q(&format!("DELETE FROM {table} WHERE user_name = ?")))
                            .bind(name)
                            .execute(&mut *tx)
                            .await
                            .map_err(err)?;
                    }
                    let n = sqlx::query(q("DELETE FROM users WHERE name = ?"))
                        .bind(name)
                        .execute(&mut *tx)
                        .await
                        .map_err(err)?
                        .rows_affected();
                    tx.commit().await.map_err(err)?;
                    Ok(n > 0)
                }

                async fn set_grant(
                    &self,
                    user: &str,
                    collection: &str,
                    granted: bool,
                ) -> Result<bool> {
                    check_collection(collection)?;
                    if self.get_user(user).await?.is_none() {
                        return Ok(false);
                    }
                    let stmt = if granted {
                        "INSERT INTO grants (user_name, collection) VALUES (?, ?) \
                         ON CONFLICT DO NOTHING"
                    } else {
                        "DELETE FROM grants WHERE user_name = ? AND collection = ?"
                    };
                    sqlx::query(q(stmt))
                        .bind(user)
                        .bind(collection)
                        .execute(self.pool())
                        .await
                        .map_err(err)?;
                    Ok(true)
                }

                async fn create_api_key(&self, key: &ApiKeyRecord, hash: &str) -> Result<()> {
                    check_name("key name", &key.name)?;
                    for c in key.collections.iter().flatten() {
                        check_collection(c)?;
                    }
                    sqlx::query(q(
                        "INSERT INTO api_keys (id, hash, user_name, name, role, collections, \
                         created_at, expires_at, last_used, revoked_at) \
                         VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL)",
                    ))
                    .bind(&key.id)
                    .bind(hash)
                    .bind(&key.user)
                    .bind(&key.name)
                    .bind(key.role.as_str())
                    .bind(json_list(key.collections.as_deref())?)
                    .bind(&key.created_at)
                    .bind(&key.expires_at)
                    .execute(self.pool())
                    .await
                    .map_err(err)?;
                    Ok(())
                }

                async fn key_auth(&self, id: &str) -> Result<Option<KeyAuth>> {
                    let row = sqlx::query(q(&format!(
                        "SELECT {KEY_COLS}, hash FROM api_keys WHERE id = ?"
                    )))
                    .bind(id)
                    .fetch_optional(self.pool())
                    .await
                    .map_err(err)?;
                    let Some(row) = row else { return Ok(None) };
                    let key = key_from(&row)?;
                    let hash: String = row.try_get("hash").map_err(err)?;
                    let Some(user) = self.get_user(&key.user).await? else {
                        return Ok(None);
                    };
                    Ok(Some(KeyAuth { key, hash, user }))
                }

                async fn list_api_keys(&self, user: Option<&str>) -> Result<Vec<ApiKeyRecord>> {
                    let rows = sqlx::query(q(&format!(
                        "SELECT {KEY_COLS} FROM api_keys \
                         WHERE (CAST(? AS TEXT) IS NULL OR user_name = ?) ORDER BY created_at, id"
                    )))
                    .bind(user)
                    .bind(user)
                    .fetch_all(self.pool())
                    .await
                    .map_err(err)?;
                    rows.iter().map(key_from).collect()
                }

                async fn revoke_api_key(&self, id: &str) -> Result<bool> {
                    let n = sqlx::query(q(
                        "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                    ))
                    .bind(now_rfc3339())
                    .bind(id)
                    .execute(self.pool())
                    .await
                    .map_err(err)?
                    .rows_affected();
                    Ok(n > 0)
                }

                async fn touch_api_key(&self, id: &str, at: &str) -> Result<()> {
                    sqlx::query(q("UPDATE api_keys SET last_used = ? WHERE id = ?"))
                        .bind(at)
                        .bind(id)
                        .execute(self.pool())
                        .await
                        .map_err(err)?;
                    Ok(())
                }

                async fn create_session(
                    &self,
                    id_hash: &str,
                    user: &str,
                    csrf: &str,
                    expires_at: &str,
                ) -> Result<()> {
                    sqlx::query(q(
                        "INSERT INTO sessions (id, user_name, csrf, created_at, expires_at) \
                         VALUES (?, ?, ?, ?, ?)",
                    ))
                    .bind(id_hash)
                    .bind(user)
                    .bind(csrf)
                    .bind(now_rfc3339())
                    .bind(expires_at)
                    .execute(self.pool())
                    .await
                    .map_err(err)?;
                    Ok(())
                }

                async fn session_auth(&self, id_hash: &str) -> Result<Option<SessionAuth>> {
                    let row = sqlx::query(q(
                        "SELECT user_name, csrf, expires_at FROM sessions WHERE id = ?",
                    ))
                    .bind(id_hash)
                    .fetch_optional(self.pool())
                    .await
                    .map_err(err)?;
                    let Some(row) = row else { return Ok(None) };
                    let user_name: String = row.try_get("user_name").map_err(err)?;
                    let Some(user) = self.get_user(&user_name).await? else {
                        return Ok(None);
                    };
                    Ok(Some(SessionAuth {
                        csrf: row.try_get("csrf").map_err(err)?,
                        expires_at: row.try_get("expires_at").map_err(err)?,
                        user,
                    }))
                }

                async fn delete_session(&self, id_hash: &str) -> Result<bool> {
                    let n = sqlx::query(q("DELETE FROM sessions WHERE id = ?"))
                        .bind(id_hash)
                        .execute(self.pool())
                        .await
                        .map_err(err)?
                        .rows_affected();
                    Ok(n > 0)
                }

                async fn bootstrap_admin(&self) -> Result<Option<String>> {
                    let mut tx = self.begin_tx().await?;
                    let now = now_rfc3339();
                    let created = sqlx::query(q(
                        "INSERT INTO users (name, role, password_hash, created_at) \
                         VALUES (?, 'admin', NULL, ?) ON CONFLICT (name) DO NOTHING",
                    ))
                    .bind(BOOTSTRAP_ADMIN)
                    .bind(&now)
                    .execute(&mut *tx)
                    .await
                    .map_err(err)?
                    .rows_affected();
                    if created == 0 {
                        return Ok(None);
                    }
                    let minted = mint_key();
                    sqlx::query(q(
                        "INSERT INTO api_keys (id, hash, user_name, name, role, collections, \
                         created_at, expires_at, last_used, revoked_at) \
                         VALUES (?, ?, ?, 'bootstrap', 'admin', NULL, ?, NULL, NULL, NULL)",
                    ))
                    .bind(&minted.id)
                    .bind(&minted.hash)
                    .bind(BOOTSTRAP_ADMIN)
                    .bind(&now)
                    .execute(&mut *tx)
                    .await
                    .map_err(err)?;
                    tx.commit().await.map_err(err)?;
                    Ok(Some(minted.plaintext))
                }

                async fn claim_conversation(
                    &self,
                    id: &str,
                    title: &str,
                    owner: &str,
                ) -> Result<()> {
                    let now = now_rfc3339();
                    // PostgreSQL text cannot hold NUL; the same in both stores.
                    let title = title.replace('\0', "\u{FFFD}");
                    sqlx::query(q(
                        "INSERT INTO conversations (id, title, turns, created_at, updated_at, owner) \
                         VALUES (?, ?, 0, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                    ))
                    .bind(id)
                    .bind(&title)
                    .bind(&now)
                    .bind(&now)
                    .bind(owner)
                    .execute(self.pool())
                    .await
                    .map_err(err)?;
                    Ok(())
                }

                async fn conversation_owner(&self, id: &str) -> Result<Option<String>> {
                    sqlx::query_scalar(q("SELECT owner FROM conversations WHERE id = ?"))
                        .bind(id)
                        .fetch_optional(self.pool())
                        .await
                        .map_err(err)
                }

                async fn list_conversations_of(
                    &self,
                    owner: Option<&str>,
                    offset: usize,
                    limit: usize,
                ) -> Result<Page<ConversationInfo>> {
                    let rows = sqlx::query(q(&format!(
                        "SELECT * FROM conversations WHERE (CAST(? AS TEXT) IS NULL OR owner = ?) \
                         ORDER BY updated_at DESC, {} LIMIT ? OFFSET ?",
                        id_order(D)
                    )))
                    .bind(owner)
                    .bind(owner)
                    .bind(limit as i64)
                    .bind(offset as i64)
                    .fetch_all(self.pool())
                    .await
                    .map_err(err)?;
                    let total: i64 = sqlx::query_scalar(q(
                        "SELECT COUNT(*) FROM conversations WHERE (CAST(? AS TEXT) IS NULL OR owner = ?)",
                    ))
                    .bind(owner)
                    .bind(owner)
                    .fetch_one(self.pool())
                    .await
                    .map_err(err)?;
                    Ok(Page {
                        items: rows.iter().map($row_conv).collect::<Result<_>>()?,
                        total: total as usize,
                        offset,
                        limit,
                    })
                }

                async fn put_run_owned(&self, run: &RunSnapshot, owner: &str) -> Result<()> {
                    sqlx::query(q(
                        "INSERT INTO runs (id, time, conversation_id, snapshot, owner) \
                         VALUES (?, ?, ?, ?, ?) \
                         ON CONFLICT (id) DO UPDATE SET snapshot = excluded.snapshot",
                    ))
                    .bind(&run.run_id)
                    .bind(&run.time)
                    .bind(&run.conversation_id)
                    .bind(serde_json::to_string(run).map_err(json_err)?)
                    .bind(owner)
                    .execute(self.pool())
                    .await
                    .map_err(err)?;
                    Ok(())
                }

                async fn run_owner(&self, id: &str) -> Result<Option<String>> {
                    sqlx::query_scalar(q("SELECT owner FROM runs WHERE id = ?"))
                        .bind(id)
                        .fetch_optional(self.pool())
                        .await
                        .map_err(err)
                }

                async fn list_documents_in(
                    &self,
                    collections: &[String],
                    offset: usize,
                    limit: usize,
                ) -> Result<Page<DocumentRecord>> {
                    if collections.is_empty() {
                        return Ok(Page { items: Vec::new(), total: 0, offset, limit });
                    }
                    let marks = vec!["?"; collections.len()].join(", ");
                    let mut rows_q = sqlx::query(q(&format!(
                        "SELECT {} FROM documents WHERE collection IN ({marks}) \
                         ORDER BY {} LIMIT ? OFFSET ?",
                        doc_cols(D),
                        id_order(D)
                    )));
                    let mut count_q = sqlx::query_scalar(q(&format!(
                        "SELECT COUNT(*) FROM documents WHERE collection IN ({marks})"
                    )));
                    for c in collections {
                        rows_q = rows_q.bind(c);
                        count_q = count_q.bind(c);
                    }
                    let rows = rows_q
                        .bind(limit as i64)
                        .bind(offset as i64)
                        .fetch_all(self.pool())
                        .await
                        .map_err(err)?;
                    let total: i64 = count_q.fetch_one(self.pool()).await.map_err(err)?;
                    Ok(Page {
                        items: rows.iter().map($row_doc).collect::<Result<Vec<DocumentRecord>>>()?,
                        total: total as usize,
                        offset,
                        limit,
                    })
                }
            }
        };
    };
}
pub(crate) use impl_principal_store;

/// RFC 3339 time `d` from now (the store's format).
pub fn time_after(d: std::time::Duration) -> String {
    let d = chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
    let t = chrono::Utc::now()
        .checked_add_signed(d)
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC);
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The time has passed (an unreadable time counts as passed: fail closed).
pub fn is_past(rfc3339: &str) -> bool {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .map(|t| t <= chrono::Utc::now())
        .unwrap_or(true)
}

/// A duration like `30d`, `12h`, `15m`, `90s` or `2w`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        RagError::InvalidInput(format!(
            "duration {s:?}: expected a number and a unit, like 30d, 12h, 15m"
        ))
    })?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" | "" => 86_400,
        "w" => 7 * 86_400,
        other => {
            return Err(RagError::InvalidInput(format!(
                "duration {s:?}: unknown unit {other:?} (s, m, h, d, w)"
            )))
        }
    };
    if n == 0 {
        return Err(RagError::InvalidInput(format!(
            "duration {s:?} must be positive"
        )));
    }
    Ok(std::time::Duration::from_secs(n.saturating_mul(secs)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_documented_shape_and_verify_by_hash() {
        let k = mint_key();
        assert!(k.plaintext.starts_with("rf_"));
        assert_eq!(key_id(&k.plaintext), Some(k.id.as_str()));
        assert_eq!(sha256_hex(&k.plaintext), k.hash);
        assert!(!k.hash.contains(&k.plaintext[3..]));
        let other = mint_key();
        assert_ne!(k.plaintext, other.plaintext);
        assert_eq!(key_id("rf_short_x"), None);
        assert_eq!(key_id("Bearer rf_x"), None);
        let mut bad = k.plaintext.clone();
        bad.push('!');
        assert_eq!(key_id(&bad), None);
        assert!(ct_eq(&k.hash, &sha256_hex(&k.plaintext)));
        assert!(!ct_eq(&k.hash, &other.hash));
    }

    #[test]
    fn passwords_use_argon2id() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("correct horsf", &h));
        assert!(!verify_password("correct horse", "not a hash"));
    }

    #[test]
    fn scopes_intersect_and_roles_order() {
        let a = Scope::from_grants(&["a", "b"]);
        let b = Scope::from_grants(&["b", "c"]);
        assert_eq!(a.intersect(&b), Scope::from_grants(&["b"]));
        assert_eq!(Scope::from_grants(&["*"]).intersect(&a), a);
        assert!(!a.allows("c"));
        assert!(Role::Reader < Role::Editor && Role::Editor < Role::Admin);
        assert!("owner".parse::<Role>().is_err());
    }

    #[test]
    fn durations_and_expiry() {
        assert_eq!(parse_duration("30d").unwrap().as_secs(), 30 * 86_400);
        assert_eq!(parse_duration("15m").unwrap().as_secs(), 900);
        assert!(parse_duration("0d").is_err());
        assert!(parse_duration("3y").is_err());
        assert!(parse_duration("").is_err());
        assert!(!is_past(&time_after(std::time::Duration::from_secs(60))));
        assert!(is_past("2001-01-01T00:00:00.000Z"));
        assert!(is_past("garbage"));
    }

    #[test]
    fn placeholders_are_numbered_for_postgres() {
        assert_eq!(
            sql(Dialect::Postgres, "a = ? AND b = ?"),
            "a = $1 AND b = $2"
        );
        assert_eq!(sql(Dialect::Sqlite, "a = ?"), "a = ?");
    }
}
