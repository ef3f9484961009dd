//! The web chat page and the API docs page, embedded in the binary (no CDN:
//! they work offline).
use axum::extract::Path;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};

use crate::error::ApiError;

const INDEX: &str = include_str!("../web/index.html");
const APP_JS: &str = include_str!("../web/app.js");
const STYLE: &str = include_str!("../web/style.css");
const DOCS: &str = include_str!("../web/docs.html");

pub async fn index() -> Html<&'static str> {
    Html(INDEX)
}

pub async fn docs() -> Html<&'static str> {
    Html(DOCS)
}

pub async fn asset(Path(file): Path<String>) -> Result<Response, ApiError> {
    let (ctype, body) = match file.as_str() {
        "app.js" => ("text/javascript; charset=utf-8", APP_JS),
        "style.css" => ("text/css; charset=utf-8", STYLE),
        _ => return Err(ApiError::not_found(format!("no asset {file:?}"))),
    };
    Ok((
        [
            (header::CONTENT_TYPE, ctype),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response())
}
