//! `GET /api/v1/openapi.json`: the OpenAPI 3 document, generated from the
//! handlers' annotations (utoipa).
use axum::response::IntoResponse;
use utoipa::OpenApi;

use super::types::*;
use super::{admin, chat, conversations, documents, openai, ops, resume, search, ws};
use crate::error::{ErrorBody, ErrorDetail};

#[derive(OpenApi)]
#[openapi(
    info(title = "ragfleet node API", description = "RAG over your documents: ingest, search, cited chat (JSON, SSE, WebSocket), conversations, runs; OpenAI-compatible chat completions."),
    paths(
        documents::create, documents::batch, documents::list, documents::get, documents::delete,
        search::search, search::search_get,
        chat::chat, ws::chat_ws, resume::resume,
        conversations::list, conversations::get, conversations::delete, conversations::run,
        openai::completions, openai::models,
        ops::health, ops::ready, ops::metrics, ops::info,
        admin::me, admin::login, admin::logout, admin::list_users, admin::create_user,
        admin::update_user, admin::delete_user, admin::grant, admin::revoke_grant,
        admin::list_keys, admin::create_key, admin::revoke_key,
    ),
    modifiers(&Security),
    components(schemas(
        ErrorBody, ErrorDetail, DocumentBody, IngestResponse, IngestedDocument, BatchResponse,
        BatchDocument, LineFailure, SearchBody, SearchResponse, HitSchema, ChatBody, ChatResponse,
        CitationSchema, DocumentInfoSchema, DocumentPageSchema, ConversationInfoSchema,
        ConversationPageSchema, ConversationSchema, TurnSchema,
        admin::Me, admin::NewUserBody, admin::UserPatch, admin::UserList, admin::NewKeyBody,
        admin::CreatedKey, admin::KeyList, admin::LoginBody, admin::LoginResponse,
    )),
    tags(
        (name = "documents"), (name = "search"), (name = "chat"), (name = "conversations"),
        (name = "runs"), (name = "openai", description = "OpenAI-compatible"), (name = "operations"),
        (name = "auth", description = "Who you are; users, API keys and grants (admins)"),
    )
)]
pub struct ApiDoc;

/// Paths anyone may call (no credentials).
const OPEN_PATHS: &[&str] = &["/health", "/ready", "/metrics", "/api/v1/auth/login"];

/// The security schemes: an API key as a bearer token, or the page's
/// session cookie; required everywhere but [`OPEN_PATHS`].
struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("rf_<id>_<secret>")
                    .description(Some("An API key: `Authorization: Bearer rf_…`"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(
                crate::auth::SESSION_COOKIE,
            ))),
        );
        openapi.security = Some(vec![
            SecurityRequirement::new("api_key", Vec::<String>::new()),
            SecurityRequirement::new("session", Vec::<String>::new()),
        ]);
        // Every protected operation may answer 401 (no or bad credentials)
        // and 403 (outside the role or grants), with the error body.
        let error = |what: &str| {
            utoipa::openapi::ResponseBuilder::new()
                .description(what)
                .content(
                    "application/json",
                    utoipa::openapi::ContentBuilder::new()
                        .schema(Some(utoipa::openapi::Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            let open =
                OPEN_PATHS.contains(&path.as_str()) || path.as_str() == "/api/v1/openapi.json";
            let ops = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
            ];
            let admin = path.starts_with("/api/v1/admin") || path.starts_with("/api/v1/auth");
            for op in ops.into_iter().flatten() {
                if admin {
                    // The admin API's request errors, all with the error body.
                    for (code, what) in [
                        ("400", "malformed request"),
                        ("404", "no such user or key"),
                        ("409", "the name is taken"),
                        ("413", "body too large"),
                        ("415", "not a JSON body"),
                        ("422", "invalid request"),
                        ("429", "too many failed logins"),
                        ("503", "the store is unavailable"),
                    ] {
                        op.responses
                            .responses
                            .entry(code.to_string())
                            .or_insert_with(|| error(what).into());
                    }
                }
                if open {
                    op.security = Some(vec![SecurityRequirement::default()]);
                    continue;
                }
                for (code, what) in [
                    (
                        "401",
                        "no credentials, or invalid ones (`WWW-Authenticate`)",
                    ),
                    ("403", "outside the caller's role or collection grants"),
                ] {
                    op.responses
                        .responses
                        .entry(code.to_string())
                        .or_insert_with(|| error(what).into());
                }
            }
        }
    }
}

/// The OpenAPI document.
pub async fn spec() -> impl IntoResponse {
    axum::Json(ApiDoc::openapi())
}
