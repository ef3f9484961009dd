//! Users, API keys and grants (admins only), `GET /api/v1/me` (anyone
//! authenticated), and the web page's login and logout.
use std::time::Duration;

use axum::extract::{Extension, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use ragfleet_rag::store::principals::{
    hash_password, mint_key, parse_duration, random_token, sha256_hex, time_after, verify_password,
    ApiKeyRecord, Role, Scope, UserRecord,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::{audit, cookie, Principal, SESSION_COOKIE};
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult};
use crate::state::SharedState;

/// Who the caller is.
#[derive(Debug, Serialize, ToSchema)]
pub struct Me {
    pub name: String,
    /// `admin`, `editor` or `reader`.
    pub role: String,
    /// The collections visible to the caller; absent: all.
    pub collections: Option<Vec<String>>,
    /// `key`, `session`, `jwt`, `gateway` or `anonymous`.
    pub via: String,
}

fn me_of(p: &Principal) -> Me {
    Me {
        name: p.name.clone(),
        role: p.role.to_string(),
        collections: p.scope_list(),
        via: match p.via {
            crate::auth::Via::Key(_) => "key",
            crate::auth::Via::Session => "session",
            crate::auth::Via::Anonymous => "anonymous",
            crate::auth::Via::Gateway => "gateway",
            crate::auth::Via::Jwt => "jwt",
        }
        .into(),
    }
}

/// The caller's identity, role and collections.
#[utoipa::path(get, path = "/api/v1/me", tag = "auth",
    responses((status = 200, body = Me), (status = 401, body = crate::error::ErrorBody)))]
pub async fn me(Extension(p): Extension<Principal>) -> ApiJson<Me> {
    ApiJson(me_of(&p))
}

/// `POST /api/v1/admin/users`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUserBody {
    pub name: String,
    /// `admin`, `editor` or `reader`.
    #[schema(value_type = String)]
    pub role: Role,
    /// For the web page's login (argon2id-hashed; never stored or shown).
    #[serde(default)]
    pub password: Option<String>,
    /// Collections granted (`*`: all).
    #[serde(default)]
    pub collections: Vec<String>,
}

/// `PATCH /api/v1/admin/users/{name}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserPatch {
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub role: Option<Role>,
    #[serde(default)]
    pub password: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserList {
    #[schema(value_type = Vec<Object>)]
    pub users: Vec<UserRecord>,
}

fn check_password(p: &str) -> ApiResult<()> {
    if p.chars().count() < 8 || p.len() > 1024 {
        return Err(ApiError::invalid("a password needs 8 to 1024 characters"));
    }
    Ok(())
}

async fn hash_blocking(password: String) -> ApiResult<String> {
    tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|e| ApiError::internal(format!("hashing task failed: {e}")))?
        .map_err(ApiError::from)
}

/// Every user with role and grants (admins only).
#[utoipa::path(get, path = "/api/v1/admin/users", tag = "auth",
    responses((status = 200, body = UserList), (status = 401, body = crate::error::ErrorBody),
        (status = 403, body = crate::error::ErrorBody)))]
pub async fn list_users(
    State(state): State<SharedState>,
    Extension(p): Extension<Principal>,
) -> ApiResult<ApiJson<UserList>> {
    p.check_role(Role::Admin)?;
    let users = state.engine()?.store().list_users().await?;
    Ok(ApiJson(UserList { users }))
}

/// Create a user (admins only).
#[utoipa::path(post, path = "/api/v1/admin/users", tag = "auth", request_body = NewUserBody,
    responses((status = 201, body = Object), (status = 401, body = crate::error::ErrorBody),
        (status = 403, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody),
        (status = 422, body = crate::error::ErrorBody)))]
pub async fn create_user(
    State(state): State<SharedState>,
    Extension(p): Extension<Principal>,
    ApiJson(body): ApiJson<NewUserBody>,
) -> ApiResult<Response> {
    p.check_role(Role::Admin)?;
    let hash = match body.password {
        Some(pw) => {
            check_password(&pw)?;
            Some(hash_blocking(pw).await?)
        }
        None => None,
    };
    let r = state
        .engine()?
        .store()
        .create_user(&body.name, body.role, hash.as_deref(), &body.collections)
        .await;
    let outcome = if r.is_ok() { "ok" } else { "refused" };
    audit("user_created", &p.name, &p.request_id, outcome, &body.name);
    if !body.collections.is_empty() {
        audit("grant_changed", &p.name, &p.request_id, outcome, &body.name);
    }
    Ok((StatusCode::CREATED, ApiJson(r?)).into_response())
}

/// Change a user's role or password (admins only).
#[utoipa::path(patch, path = "/api/v1/admin/users/{name}", tag = "auth", request_body = UserPatch,
    params(("name" = String, Path, description = "user name")),
    responses((status = 200, body = Object), (status = 403, body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody)))]
pub async fn update_user(
    State(state): State<SharedState>,
    Extension(p): Extension<Principal>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<UserPatch>,
) -> ApiResult<ApiJson<UserRecord>> {
    p.check_role(Role::Admin)?;
    if name == p.name && body.role.is_some_and(|r| r != p.role) {
        return Err(ApiError::invalid("you cannot change your own role"));
    }
    let hash = match body.password {
        Some(pw) => {
            check_password(&pw)?;
            Some(hash_blocking(pw).await?)
        }
        None => None,
    };
    let store = state.engine()?.store().clone();
    let found = store.update_user(&name, body.role, hash.as_deref()).await?;
    audit(
        "user_changed",
        &p.name,
        &p.request_id,
        if found { "ok" } else { "not_found" },
        &name,
    );
    match store.get_user(&name).await? {
        Some(u) if found => Ok(ApiJson(u)),
        _ => Err(ApiError::not_found(format!("no user {name:?}"))),
    }
}

/// Delete a user with their keys and sessions (admins only).
#[utoipa::path(delete, path = "/api/v1/admin/users/{name}", tag = "auth",
    params(("name" = String, Path, description = "user name")),
    responses((status = 204), (status = 403, body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody)))]
pub async fn delete_user(
    State(state): State<SharedState>,
    Extension(p): Extension<Principal>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<StatusCode> {
    p.check_role(Role::Admin)?;
    if name == p.name {
        return Err(ApiError::invalid("you cannot delete yourself"));
    }
    let found = state.engine()?.store().delete_user(&name).await?;
    audit(
        "user_deleted",
        &p.name,
        &p.request_id,
        if found { "ok" } else { "not_found" },
        &name,
    );
    if found {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no user {name:?}")))
    }
}

async fn set_grant(
    state: &SharedState,
    p: &Principal,
    name: &str,
    collection: &str,
    granted: bool,
) -> ApiResult<ApiJson<UserRecord>> {
    p.check_role(Role::Admin)?;
    let store = state.engine()?.store().clone();
    let found = store.set_grant(name, collection, granted).await?;
    let what = format!("{name} {} {collection}", if granted { "+" } else { "-" });
    audit(
        "grant_changed",
        &p.name,
        &p.request_id,
        if found { "ok" } else { "not_found" },
        &what,
    );
    match store.get_user(name).await? {
        Some(u) if found => Ok(ApiJson(u)),
        _ => Err(ApiError::not_found(format!("no user {name:?}"))),
    }
}

/// Grant a collection (`*`: all) to a user (admins only).
#[utoipa::path(put, path = "/api/v1/admin/users/{name}/grants/{collection}", tag = "auth",
    params(("name" = String, Path, description = "user name"), ("collection" = String, Path, description = "collection")),
    responses((status = 200, body = Object), (status = 403, body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody)))]
pub async fn grant(
    State(state): State<SharedState>,
    Extension(p): Extension<Principal>,
    ApiPath((name, collection)): ApiPath<(String, String)>,
) -> ApiResult<ApiJson<UserRecord>> {
    set_grant(&state, &p, &name, &collection, true).await
}

/// Withdraw a grant (admins only).
#[utoipa::path(delete, path = "/api/v1/admin/users/{name}/grants/{collection}", tag = "auth",
    params(("name" = String, Path, description = "user name"), ("collection" = String, Path, description = "collection")),
    responses((status = 200, body = Object), (status = 403, body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody)))]
pub async fn revoke_grant(
    State(state): State<SharedState>,
    Extension(p): Extension<Principal>,
    ApiPath((name, collection)): ApiPath<(String, String)>,
) -> ApiResult<ApiJson<UserRecord>> {
    set_grant(&state, &p, &name, &collection, false).await
}

/// `POST /api/v1/admin/keys`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKeyBody {
    /// The key's owner (default: the caller).
    #[serde(default)]
    pub user: Option<String>,
    /// A label (default `key`).
    #[serde(default)]
    pub name: Option<String>,
    /// At most the owner's role (default: the owner's).
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub role: Option<Role>,
    /// Narrower than the owner's grants; absent: the owner's.
    #[serde(default)]
    pub collections: Option<Vec<String>>,
    /// Lifetime like `30d`, `12h`; absent: no expiry.
    #[serde(default)]
    pub expires_in: Option<String>,
}

/// A new key: `key` is shown this once and never again.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedKey {
    pub key: String,
    #[schema(value_type = Object)]
    pub record: ApiKeyRecord,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct KeyListQuery {
    /// Only this user's keys.
    pub user: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    #[schema(value_type = Vec<Object>)]
    pub keys: Vec<ApiKeyRecord>,
}

/// Keys (never the keys themselves: id, owner, role, collections, expiry,
/// last use, revocation). Admins only.
#[utoipa::path(get, path = "/api/v1/admin/keys", tag = "auth", params(KeyListQuery),
    responses((status = 200, body = KeyList), (status = 403, body = crate::error::ErrorBody)))]
pub async fn list_keys(
    State(state): State<SharedState>,
    Extension(p): Extension<Principal>,
    ApiQuery(q): ApiQuery<KeyListQuery>,
) -> ApiResult<ApiJson<KeyList>> {
    p.check_role(Role::Admin)?;
    let keys = state
        .engine()?
        .store()
        .list_api_keys(q.user.as_deref())
        .await?;
    Ok(ApiJson(KeyList { keys }))
}

/// Checks a new key is no wider than its owner.
fn check_key_bounds(
    owner: &UserRecord,
    role: Role,
    collections: Option<&[String]>,
) -> ApiResult<()> {
    if role > owner.role {
        return Err(ApiError::invalid(format!(
            "a key cannot have more than its owner's role ({} has {})",
            owner.name, owner.role
        )));
    }
    if let Some(cols) = collections {
        let user_scope = if owner.role == Role::Admin {
            Scope::All
        } else {
            Scope::from_grants(&owner.grants)
        };
        if let Some(c) = cols.iter().find(|c| !user_scope.allows(c)) {
            return Err(ApiError::invalid(format!(
                "{} has no grant for collection {c:?}; a key's collections must be among its owner's",
                owner.name
            )));
        }
    }
    Ok(())
}

/// Create an API key (admins only). The response holds the key, once.
#[utoipa::path(post, path = "/api/v1/admin/keys", tag = "auth", request_body = NewKeyBody,
    responses((status = 201, body = CreatedKey), (status = 403, body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
pub async fn create_key(
    State(state): State<SharedState>,
    Extension(p): Extension<Principal>,
    ApiJson(body): ApiJson<NewKeyBody>,
) -> ApiResult<Response> {
    p.check_role(Role::Admin)?;
    let store = state.engine()?.store().clone();
    let owner_name = body.user.clone().unwrap_or_else(|| p.name.clone());
    let owner = store
        .get_user(&owner_name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no user {owner_name:?}")))?;
    let role = body.role.unwrap_or(owner.role);
    check_key_bounds(&owner, role, body.collections.as_deref())?;
    let expires_at = match &body.expires_in {
        Some(d) => Some(time_after(parse_duration(d)?)),
        None => None,
    };
    let minted = mint_key();
    let record = ApiKeyRecord {
        id: minted.id.clone(),
        user: owner.name.clone(),
        name: body.name.clone().unwrap_or_else(|| "key".into()),
        role,
        collections: body.collections.clone(),
        created_at: ragfleet_rag::store::now_rfc3339(),
        expires_at,
        last_used: None,
        revoked_at: None,
    };
    let r = store.create_api_key(&record, &minted.hash).await;
    let detail = format!("key {} for {}", record.id, record.user);
    audit(
        "key_created",
        &p.name,
        &p.request_id,
        if r.is_ok() { "ok" } else { "error" },
        &detail,
    );
    r?;
    let created = CreatedKey {
        key: minted.plaintext,
        record,
    };
    Ok((StatusCode::CREATED, ApiJson(created)).into_response())
}

/// Revoke a key (admins only): every node refuses it within a second.
#[utoipa::path(delete, path = "/api/v1/admin/keys/{id}", tag = "auth",
    params(("id" = String, Path, description = "key id (the part after rf_)")),
    responses((status = 204), (status = 403, body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody)))]
pub async fn revoke_key(
    State(state): State<SharedState>,
    Extension(p): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    p.check_role(Role::Admin)?;
    let found = state.engine()?.store().revoke_api_key(&id).await?;
    state.auth.forget(&format!("k:{id}"));
    audit(
        "key_revoked",
        &p.name,
        &p.request_id,
        if found { "ok" } else { "not_found" },
        &id,
    );
    if found {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no active key {id:?}")))
    }
}

/// `POST /api/v1/auth/login`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    pub user: String,
    pub password: String,
}

/// A session: the cookie is set; `csrf` goes in `X-CSRF-Token` on
/// state-changing requests.
#[derive(Debug, Serialize, ToSchema)]
pub struct LoginResponse {
    pub me: Me,
    pub csrf: String,
}

/// The client's address: the peer, or from a peer in
/// `[auth] trusted_proxies`, what its `X-Forwarded-For` says.
fn client_addr(state: &SharedState, headers: &HeaderMap, peer: std::net::SocketAddr) -> String {
    let trusted = state.config.auth.trusted_nets().unwrap_or_default();
    crate::auth::client_ip(headers, peer.ip(), &trusted).to_string()
}

/// Log in with user and password: sets the session cookie (HttpOnly,
/// SameSite=Strict, Secure behind TLS). Failed logins are throttled per
/// user and per address (429).
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = LoginBody,
    responses((status = 200, body = LoginResponse), (status = 401, body = crate::error::ErrorBody),
        (status = 429, body = crate::error::ErrorBody)))]
pub async fn login(
    State(state): State<SharedState>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<LoginBody>,
) -> ApiResult<Response> {
    let cfg = &state.config.auth;
    let addr = client_addr(&state, &headers, peer);
    let window = Duration::from_secs(cfg.login_window_s);
    let (user_key, addr_key) = (format!("u:{}", body.user), format!("a:{addr}"));
    let rid = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let max = cfg.max_failed_logins as usize;
    if state.auth.login_failures(&user_key, window, false) >= max
        || state.auth.login_failures(&addr_key, window, false) >= max
    {
        audit("login_failed", &body.user, &rid, "throttled", &addr);
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_attempts",
            "too many failed logins; wait and try again",
        )
        .retry_after(cfg.login_window_s));
    }
    let store = state.engine()?.store().clone();
    let hash = store.password_hash(&body.user).await?;
    let password = body.password.clone();
    let ok =
        tokio::task::spawn_blocking(move || hash.is_some_and(|h| verify_password(&password, &h)))
            .await
            .unwrap_or(false);
    let user = if ok {
        store.get_user(&body.user).await?
    } else {
        None
    };
    let Some(user) = user else {
        state.auth.login_failures(&user_key, window, true);
        state.auth.login_failures(&addr_key, window, true);
        audit("login_failed", &body.user, &rid, "refused", &addr);
        return Err(ApiError::unauthorized("wrong user or password", true));
    };
    state.auth.login_succeeded(&user_key);
    let token = random_token();
    let csrf = random_token();
    let expires = time_after(Duration::from_secs(cfg.session_ttl_s));
    store
        .create_session(&sha256_hex(&token), &user.name, &csrf, &expires)
        .await?;
    audit("login", &user.name, &rid, "ok", &addr);
    let secure = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"));
    let cookie = format!(
        "{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        cfg.session_ttl_s,
        if secure { "; Secure" } else { "" }
    );
    let principal = Principal {
        name: user.name.clone(),
        role: user.role,
        scope: if user.role == Role::Admin {
            Scope::All
        } else {
            Scope::from_grants(&user.grants)
        },
        via: crate::auth::Via::Session,
        request_id: rid,
    };
    let mut resp = ApiJson(LoginResponse {
        me: me_of(&principal),
        csrf,
    })
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(resp)
}

/// End the session (server-side) and clear the cookie.
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth",
    responses((status = 204), (status = 401, body = crate::error::ErrorBody)))]
pub async fn logout(
    State(state): State<SharedState>,
    Extension(p): Extension<Principal>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    if let Some(token) = cookie(&headers, SESSION_COOKIE) {
        let hash = sha256_hex(token);
        state.engine()?.store().delete_session(&hash).await?;
        state.auth.forget(&format!("s:{hash}"));
    }
    audit("logout", &p.name, &p.request_id, "ok", "");
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("ragfleet_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    Ok(resp)
}
