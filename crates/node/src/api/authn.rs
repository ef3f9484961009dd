//! The authentication middleware of every data route: resolves a request's
//! credentials to a [`Principal`] (the rules, the caches and the principal
//! itself are in [`crate::auth`]; this half needs the node's state).
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ragfleet_rag::store::principals::{ct_eq, is_past, key_id, sha256_hex, Role, Scope};

use crate::auth::{
    bearer, cookie, request_id, verified_subject, Cached, Principal, Via, CSRF_HEADER,
    PRINCIPAL_HEADER, PRINCIPAL_SIG_HEADER, SESSION_COOKIE,
};
use crate::error::ApiError;
use crate::state::SharedState;

/// Resolves the request's credentials to a [`Principal`] (see the module
/// docs); answers 401 itself when there is none.
pub async fn authenticate(
    State(state): State<SharedState>,
    mut req: Request,
    next: Next,
) -> Response {
    // Inside `nest("/v1", …)` the path has lost its prefix: the original
    // URI tells which API (and so which error shape) this is.
    let openai = req
        .extensions()
        .get::<axum::extract::OriginalUri>()
        .map_or(req.uri().path(), |u| u.0.path())
        .starts_with("/v1/");
    let resolved = resolve(&state, req.method(), req.headers()).await;
    // Whatever it said, the identity header goes no further.
    req.headers_mut().remove(PRINCIPAL_HEADER);
    req.headers_mut().remove(PRINCIPAL_SIG_HEADER);
    match resolved {
        Ok(p) => {
            req.extensions_mut().insert(p);
            next.run(req).await
        }
        Err(e) => {
            let e = if openai { e.openai() } else { e };
            e.into_response()
        }
    }
}

async fn resolve(
    state: &SharedState,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Principal, ApiError> {
    if !state.config.auth.enabled {
        let mut p = Principal::anonymous();
        p.request_id = request_id(headers);
        return Ok(p);
    }
    let rid = request_id(headers);
    // The gateway verified this subject (a JWT at the edge) and signed it;
    // an unsigned or badly signed header is ignored.
    if let Some(subject) = verified_subject(&state.config.auth.gateway_secret, headers) {
        return resolve_gateway_subject(state, subject, rid).await;
    }
    let token = bearer(headers).map_err(|()| {
        ApiError::unauthorized("the Authorization header is not `Bearer <API key>`", true)
    })?;
    if let Some(token) = token {
        if let (Some(jwt), true) = (&state.jwt, crate::jwt::looks_like_jwt(token)) {
            return resolve_jwt(jwt, token, rid).await;
        }
        return resolve_key(state, token, rid).await;
    }
    if let Some(session) = cookie(headers, SESSION_COOKIE) {
        return resolve_session(state, method, headers, session, rid).await;
    }
    Err(ApiError::unauthorized(
        "credentials needed: `Authorization: Bearer <API key>` or a login session",
        false,
    ))
}

/// A single-sign-on JWT (`[auth.jwt]`; the rules are in [`crate::jwt`]).
async fn resolve_jwt(
    jwt: &crate::jwt::JwtVerifier,
    token: &str,
    rid: String,
) -> Result<Principal, ApiError> {
    let id = jwt.verify(token).await.map_err(|e| {
        tracing::info!(reason = %e, "a JWT was refused");
        ApiError::unauthorized(e.to_string(), true)
    })?;
    let scope = if id.role == Role::Admin {
        Scope::All
    } else {
        Scope::from_grants(&id.collections)
    };
    Ok(Principal {
        name: id.name,
        role: id.role,
        scope,
        via: Via::Jwt,
        request_id: rid,
    })
}

async fn resolve_key(state: &SharedState, token: &str, rid: String) -> Result<Principal, ApiError> {
    let invalid = || ApiError::unauthorized("invalid API key", true);
    let id = key_id(token).ok_or_else(invalid)?;
    let cache_key = format!("k:{id}");
    let cached = match state.auth.cached(&cache_key) {
        Some(c) => c,
        None => {
            let found = state.engine()?.store().key_auth(id).await?;
            state.auth.remember(cache_key, Cached::Key(found))
        }
    };
    let Cached::Key(Some(k)) = &*cached else {
        return Err(invalid());
    };
    if !ct_eq(&sha256_hex(token), &k.hash) {
        return Err(invalid());
    }
    if k.key.revoked_at.is_some() {
        return Err(ApiError::unauthorized("this API key was revoked", true));
    }
    if k.key.expires_at.as_deref().is_some_and(is_past) {
        return Err(ApiError::unauthorized("this API key has expired", true));
    }
    if state.auth.should_touch(id) {
        if let Ok(engine) = state.engine() {
            let store = engine.store().clone();
            let id = id.to_string();
            tokio::spawn(async move {
                let now = ragfleet_rag::store::now_rfc3339();
                if let Err(e) = store.touch_api_key(&id, &now).await {
                    tracing::debug!(error = %e, "recording a key's last use failed");
                }
            });
        }
    }
    Ok(Principal::from_key(k, rid))
}

async fn resolve_gateway_subject(
    state: &SharedState,
    subject: &str,
    rid: String,
) -> Result<Principal, ApiError> {
    let cache_key = format!("u:{subject}");
    let cached = match state.auth.cached(&cache_key) {
        Some(c) => c,
        None => {
            let user = state.engine()?.store().get_user(subject).await?;
            state.auth.remember(cache_key, Cached::User(user))
        }
    };
    match &*cached {
        Cached::User(Some(u)) => {
            let mut p = Principal::from_session(u, rid);
            p.via = Via::Gateway;
            Ok(p)
        }
        _ => Err(ApiError::unauthorized(
            "the gateway's principal is not a user of this cluster",
            true,
        )),
    }
}

async fn resolve_session(
    state: &SharedState,
    method: &Method,
    headers: &HeaderMap,
    token: &str,
    rid: String,
) -> Result<Principal, ApiError> {
    let hash = sha256_hex(token);
    let cache_key = format!("s:{hash}");
    let cached = match state.auth.cached(&cache_key) {
        Some(c) => c,
        None => {
            let found = state.engine()?.store().session_auth(&hash).await?;
            state.auth.remember(cache_key, Cached::Session(found))
        }
    };
    let Cached::Session(Some(s)) = &*cached else {
        return Err(ApiError::unauthorized(
            "the session has ended; log in again",
            true,
        ));
    };
    if is_past(&s.expires_at) {
        return Err(ApiError::unauthorized(
            "the session has expired; log in again",
            true,
        ));
    }
    // A browser names the page that made a request: a session is usable
    // only from this site's own page (also guards the WebSocket upgrade, a
    // GET that carries no CSRF header).
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        // Behind the gateway the client's Host is in X-Forwarded-Host.
        let host = headers
            .get("x-forwarded-host")
            .or_else(|| headers.get(header::HOST))
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let origin_host = origin.split_once("://").map_or(origin, |(_, h)| h);
        if origin_host != host {
            return Err(ApiError::forbidden(
                "a session may be used only from this site's own page",
            ));
        }
    }
    let safe = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    if !safe {
        let sent = headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !ct_eq(sent, &s.csrf) {
            return Err(ApiError::forbidden(
                "a state-changing request with a session needs its X-CSRF-Token header",
            ));
        }
    }
    Ok(Principal::from_session(&s.user, rid))
}
