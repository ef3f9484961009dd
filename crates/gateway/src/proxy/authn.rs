//! The credential phase of admission (`[auth] require_credentials`): a
//! request with no credential at all is answered 401 here and never
//! reaches a node. Whether a credential is valid is the nodes' business
//! (their store holds the keys and sessions); the gateway only sees that
//! one is there.
use std::sync::atomic::Ordering::Relaxed;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};

use crate::base::config::AuthConfig;
use crate::http::body::ClientBody;
use crate::http::response::{json_error, ProxyBody};
use crate::proxy::state::Shared;

/// `Err`: the 401 for a request that needs a credential and has none.
// The refusal is the response itself, as large as the request it replaces.
#[allow(clippy::result_large_err)]
pub(crate) fn admit(shared: &Shared, req: &Request<ClientBody>) -> Result<(), Response<ProxyBody>> {
    let cfg = shared.auth.load();
    if !cfg.require_credentials || cfg.is_open(req.uri().path()) || has_credential(&cfg, req) {
        return Ok(());
    }
    shared.edge.unauthenticated.fetch_add(1, Relaxed);
    let mut res = json_error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "credentials required: send Authorization: Bearer <API key or token>, or log in",
    );
    res.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"ragfleet\""),
    );
    Err(res)
}

/// An `Authorization` header with something in it, or a credential cookie
/// with a value.
fn has_credential(cfg: &AuthConfig, req: &Request<ClientBody>) -> bool {
    let h = req.headers();
    if h.get(header::AUTHORIZATION)
        .is_some_and(|v| !v.as_bytes().trim_ascii().is_empty())
    {
        return true;
    }
    h.get_all(header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .filter_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            Some((&pair[..eq], &pair[eq + 1..]))
        })
        .any(|(name, value)| {
            !value.is_empty() && cfg.credential_cookies.iter().any(|c| c.as_bytes() == name)
        })
}
