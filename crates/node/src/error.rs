//! The API's one error shape: `{"error": {"code": "...", "message": "..."}}`
//! with the right HTTP status, for our own errors and for axum's rejections
//! (malformed JSON, unknown fields, wrong content type, oversized bodies).
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An error answered to an API client.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds, sent as `Retry-After` (429/503).
    pub retry_after: Option<u64>,
    /// Sent as `WWW-Authenticate` (401).
    pub www_authenticate: Option<&'static str>,
    /// OpenAI's error shape (`/v1/*`): `{"error":{"message","type","param","code"}}`.
    pub openai: bool,
}

/// The JSON body of every error response.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `invalid_json`, `not_found`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
            www_authenticate: None,
            openai: false,
        }
    }
    /// 401: no credentials, or credentials that are not valid.
    pub fn unauthorized(message: impl Into<String>, invalid_token: bool) -> Self {
        let mut e = Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message);
        e.www_authenticate = Some(if invalid_token {
            "Bearer realm=\"ragfleet\", error=\"invalid_token\""
        } else {
            "Bearer realm=\"ragfleet\""
        });
        e
    }
    /// 403: authenticated, but outside the principal's role or grants.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }
    /// The same error in OpenAI's shape (for `/v1/*`).
    pub fn openai(mut self) -> Self {
        self.openai = true;
        self
    }
    /// OpenAI's `type` for this status.
    fn openai_type(&self) -> &'static str {
        match self.status {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::FORBIDDEN => "permission_error",
            StatusCode::NOT_FOUND => "not_found_error",
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            s if s.is_server_error() => "server_error",
            _ => "invalid_request_error",
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn unsupported_media(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            message,
        )
    }
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
    }
    pub fn not_ready(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", message).retry_after(1)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message.clone(),
            },
        }
    }

    /// Map a status axum chose (for a rejection) to our code.
    fn from_status(status: StatusCode, message: String) -> Self {
        let code = match status {
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            StatusCode::UNPROCESSABLE_ENTITY => "invalid_request",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            s if s.is_server_error() => "internal",
            _ => "bad_request",
        };
        // Only the body limit makes axum answer 413: name its key.
        let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
            format!("request body over the node's limit (limits.max_body_bytes): {message}")
        } else {
            message
        };
        Self::new(status, code, message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // A 503 of `/ready` while starting or draining is expected (load
        // balancers poll it): not a warning.
        let expected = self.status == StatusCode::SERVICE_UNAVAILABLE
            && matches!(self.code, "not_ready" | "draining");
        if expected {
            tracing::debug!(status = self.status.as_u16(), code = self.code, message = %self.message, "not ready");
        } else if self.status.is_server_error() {
            tracing::warn!(status = self.status.as_u16(), code = self.code, message = %self.message, "request failed");
        }
        let mut resp = if self.openai {
            let body = serde_json::json!({"error": {
                "message": self.message, "type": self.openai_type(), "param": null, "code": self.code,
            }});
            (self.status, axum::Json(body)).into_response()
        } else {
            (self.status, axum::Json(self.body())).into_response()
        };
        if let Some(v) = self.www_authenticate {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(v));
        }
        if let Some(secs) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rej: JsonRejection) -> Self {
        match &rej {
            JsonRejection::JsonSyntaxError(_) => Self::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("malformed JSON: {}", rej.body_text()),
            ),
            JsonRejection::JsonDataError(_) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
                rej.body_text(),
            ),
            JsonRejection::MissingJsonContentType(_) => Self::unsupported_media(
                "expected a JSON body with `Content-Type: application/json`",
            ),
            _ => Self::from_status(rej.status(), rej.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rej: QueryRejection) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_query", rej.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rej: PathRejection) -> Self {
        Self::from_status(rej.status(), rej.body_text())
    }
}

impl From<axum::extract::multipart::MultipartRejection> for ApiError {
    fn from(rej: axum::extract::multipart::MultipartRejection) -> Self {
        let status = rej.status();
        if status == StatusCode::BAD_REQUEST {
            // Most often: not a multipart body at all.
            return Self::unsupported_media(rej.body_text());
        }
        Self::from_status(status, rej.body_text())
    }
}

impl From<axum::extract::multipart::MultipartError> for ApiError {
    fn from(err: axum::extract::multipart::MultipartError) -> Self {
        Self::from_status(err.status(), format!("multipart body: {}", err.body_text()))
    }
}

impl From<ragfleet_rag::RagError> for ApiError {
    fn from(err: ragfleet_rag::RagError) -> Self {
        use ragfleet_rag::RagError as E;
        match err {
            E::InvalidInput(m) => Self::invalid(m),
            // The loaders report an unknown format as a load error naming the file.
            E::Load { ref reason, .. } if reason.starts_with("unsupported format") => {
                Self::unsupported_media(err.to_string())
            }
            E::Load { .. } => Self::invalid(err.to_string()),
            E::Unsupported(m) => Self::unsupported_media(format!("unsupported format: {m}")),
            E::NotFound(m) => Self::not_found(format!("not found: {m}")),
            E::Conflict(m) => Self::conflict(m),
            E::Upstream(m) => Self::new(StatusCode::BAD_GATEWAY, "upstream", m),
            E::Cancelled => Self::new(StatusCode::SERVICE_UNAVAILABLE, "cancelled", "cancelled"),
            // The store is down or restarting: the client (or the gateway) may
            // try again shortly.
            E::StorageUnavailable(m) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage_unavailable",
                format!("the store cannot be reached: {m}"),
            )
            .retry_after(1),
            other => Self::internal(other.to_string()),
        }
    }
}

/// `Json<T>` whose rejections are [`ApiError`]s. Request types use
/// `#[serde(deny_unknown_fields)]`, so a misspelt field is a 422 naming it.
#[derive(Debug, Clone, Copy, Default, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

impl<T: Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// `Query<T>` with [`ApiError`] rejections.
#[derive(Debug, Clone, Copy, Default, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// `Path<T>` with [`ApiError`] rejections.
#[derive(Debug, Clone, Copy, Default, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

pub type ApiResult<T> = Result<T, ApiError>;
