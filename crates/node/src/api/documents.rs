//! Documents: upload (multipart, any loader format), JSON, JSON Lines batch
//! (streamed), list, get, delete.
use axum::body::Body;
use axum::extract::{Extension, FromRequest, Multipart, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use futures::StreamExt;
use ragfleet_rag::ingest::LoadOptions;
use ragfleet_rag::types::{Metadata, NewDocument};

use super::types::*;
use crate::auth::{audit, Principal};
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult, ErrorDetail};
use crate::state::SharedState;

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// Upload a document.
///
/// `multipart/form-data` with a `file` part (any format the loaders read:
/// txt, md, html, pdf, docx, json, jsonl, csv…) and optional `collection`,
/// `id`, `title`, `metadata` (a JSON object) and `source` fields; or a JSON
/// body `{id?, title?, text, metadata?, collection?, source?}`.
#[utoipa::path(post, path = "/api/v1/documents", tag = "documents",
    request_body(content((DocumentBody = "application/json"), (Object = "multipart/form-data"))),
    responses(
        (status = 201, body = IngestResponse),
        (status = 400, body = crate::error::ErrorBody), (status = 413, body = crate::error::ErrorBody),
        (status = 415, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody),
        (status = 503, body = crate::error::ErrorBody)))]
pub async fn create(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    req: Request,
) -> ApiResult<impl IntoResponse> {
    principal.check_role(ragfleet_rag::store::principals::Role::Editor)?;
    let engine = state.engine()?.clone();
    let ct = content_type(req.headers());
    let docs: Vec<NewDocument> = if ct.starts_with("multipart/form-data") {
        let multipart = Multipart::from_request(req, &state).await?;
        load_multipart(multipart).await?
    } else if ct.starts_with("application/json") || ct.contains("+json") {
        let ApiJson(body) = ApiJson::<DocumentBody>::from_request(req, &state).await?;
        vec![body.into_new_document()]
    } else {
        return Err(ApiError::unsupported_media(format!(
            "send multipart/form-data (a file) or application/json, not {:?}",
            if ct.is_empty() {
                "no content type"
            } else {
                &ct
            }
        )));
    };
    if docs.is_empty() {
        return Err(ApiError::invalid("the upload holds no document"));
    }
    for d in &docs {
        principal.check_write(collection_of(d))?;
    }
    for d in &docs {
        if d.text.trim().is_empty() {
            crate::metrics::record_ingest_failure(1);
            return Err(ApiError::invalid(format!(
                "document {} has no text",
                d.title
                    .as_deref()
                    .or(d.source.as_deref())
                    .unwrap_or("(untitled)")
            )));
        }
    }
    let mut out = Vec::with_capacity(docs.len());
    for d in docs {
        match engine.ingest(d).await {
            Ok(o) => out.push(IngestedDocument::from(o)),
            Err(e) => {
                crate::metrics::record_ingest_failure(1);
                return Err(e.into());
            }
        }
    }
    let resp = IngestResponse {
        doc_id: out.first().map(|d| d.doc_id.clone()).unwrap_or_default(),
        chunks: out.iter().map(|d| d.chunks).sum(),
        documents: out,
    };
    Ok((StatusCode::CREATED, ApiJson(resp)))
}

/// The collection a new document goes to.
fn collection_of(d: &NewDocument) -> &str {
    d.collection
        .as_deref()
        .filter(|c| !c.trim().is_empty())
        .unwrap_or(ragfleet_rag::types::DEFAULT_COLLECTION)
}

async fn load_multipart(mut mp: Multipart) -> ApiResult<Vec<NewDocument>> {
    let mut files: Vec<(String, Option<String>, bytes::Bytes)> = Vec::new();
    let mut opts = LoadOptions::default();
    let mut source: Option<String> = None;
    while let Some(field) = mp.next_field().await? {
        let name = field.name().unwrap_or("").to_string();
        match name.as_str() {
            "file" | "files" => {
                let fname = field.file_name().unwrap_or("upload").to_string();
                let ctype = field.content_type().map(|s| s.to_string());
                let data = field.bytes().await?;
                files.push((fname, ctype, data));
            }
            "collection" => opts.collection = Some(field.text().await?).filter(|s| !s.is_empty()),
            "id" => opts.id = Some(field.text().await?).filter(|s| !s.is_empty()),
            "title" => opts.title = Some(field.text().await?).filter(|s| !s.is_empty()),
            "source" => source = Some(field.text().await?).filter(|s| !s.is_empty()),
            "metadata" => {
                let text = field.text().await?;
                let m: Metadata = serde_json::from_str(&text)
                    .map_err(|e| ApiError::invalid(format!("metadata must be a JSON object: {e}")))?;
                opts.metadata = m;
            }
            other => {
                return Err(ApiError::invalid(format!(
                    "unknown form field {other:?} (expected file, collection, id, title, metadata, source)"
                )))
            }
        }
    }
    if files.is_empty() {
        return Err(ApiError::invalid("no `file` part in the form"));
    }
    if files.len() > 1 && opts.id.is_some() {
        return Err(ApiError::invalid("an id can be given for one file only"));
    }
    if files.len() > 1 && source.is_some() {
        return Err(ApiError::invalid(
            "a source can be given for one file only (each file's name is its source)",
        ));
    }
    // The source (identity within the collection): the `source` field, else
    // the file name as the client gave it (a relative path when it sends one).
    opts.source = source;
    let mut docs = Vec::new();
    for (fname, ctype, data) in files {
        let opts = opts.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            ragfleet_rag::ingest::load_bytes(&fname, ctype.as_deref(), &data, &opts)
        })
        .await
        .map_err(|e| ApiError::internal(format!("loader task failed: {e}")))?;
        match loaded {
            Ok(ds) => docs.extend(ds),
            Err(e) => {
                crate::metrics::record_ingest_failure(1);
                return Err(e.into());
            }
        }
    }
    Ok(docs)
}

/// Documents ingested per engine call in a batch.
const BATCH_GROUP: usize = 64;

/// Bulk ingest: a JSON Lines body, one `{id?, title?, text, metadata?,
/// collection?, source?}` per line. The body is read as a stream (never held
/// whole); lines are ingested in groups as they arrive. A bad line is
/// reported in `failures` with its number and never drops the good ones.
#[utoipa::path(post, path = "/api/v1/documents/batch", tag = "documents",
    params(BatchQuery),
    request_body(content = String, content_type = "application/x-ndjson"),
    responses((status = 200, body = BatchResponse), (status = 400, body = crate::error::ErrorBody),
        (status = 415, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody),
        (status = 503, body = crate::error::ErrorBody)))]
pub async fn batch(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    ApiQuery(q): ApiQuery<BatchQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<ApiJson<BatchResponse>> {
    principal.check_role(ragfleet_rag::store::principals::Role::Editor)?;
    if let Some(c) = q.collection.as_deref().filter(|c| !c.trim().is_empty()) {
        principal.check_write(c)?;
    }
    let engine = state.engine()?.clone();
    let ct = content_type(&headers);
    let ok_ct = ct.is_empty()
        || [
            "application/x-ndjson",
            "application/jsonl",
            "application/json-lines",
            "application/jsonlines",
            "application/json",
            "text/plain",
            "application/octet-stream",
        ]
        .iter()
        .any(|t| ct.starts_with(t));
    if !ok_ct {
        return Err(ApiError::unsupported_media(format!(
            "send JSON Lines (application/x-ndjson), not {ct:?}"
        )));
    }
    let max_line = state.config.limits.max_body_bytes;
    let mut resp = BatchResponse {
        lines: 0,
        ingested: 0,
        failed: 0,
        chunks: 0,
        documents: Vec::new(),
        failures: Vec::new(),
    };
    let mut pending: Vec<(usize, NewDocument)> = Vec::new();
    let mut lines = LineSplitter::new(max_line);
    let mut stream = body.into_data_stream();
    let mut line_no = 0usize;
    loop {
        let chunk = stream.next().await;
        let items = match &chunk {
            Some(Ok(bytes)) => lines.push(bytes),
            Some(Err(e)) => {
                // The client went away or the body broke: keep what was ingested.
                tracing::warn!(error = %e, "batch body ended with an error");
                return Err(ApiError::bad_request(format!(
                    "reading the body failed after {line_no} lines: {e}"
                )));
            }
            None => lines.finish(),
        };
        for item in items {
            line_no += 1;
            let parsed = match item {
                Line::TooLong => Err(ApiError::too_large(format!(
                    "line longer than {max_line} bytes"
                ))),
                Line::Text(text) => {
                    if text.trim().is_empty() {
                        continue;
                    }
                    parse_line(&text, line_no, &q).and_then(|d| {
                        principal.check_write(collection_of(&d))?;
                        Ok(d)
                    })
                }
            };
            resp.lines += 1;
            match parsed {
                Ok(doc) => pending.push((line_no, doc)),
                Err(e) => push_failure(&mut resp, line_no, e),
            }
        }
        if pending.len() >= BATCH_GROUP || (chunk.is_none() && !pending.is_empty()) {
            flush(&engine, &mut pending, &mut resp).await;
        }
        if chunk.is_none() {
            break;
        }
    }
    if resp.lines == 0 {
        return Err(ApiError::invalid("the body holds no JSON line"));
    }
    crate::metrics::record_ingest_failure(resp.failed);
    Ok(ApiJson(resp))
}

fn push_failure(resp: &mut BatchResponse, line: usize, e: ApiError) {
    resp.failed += 1;
    resp.failures.push(LineFailure {
        line,
        error: ErrorDetail {
            code: e.code.to_string(),
            message: e.message,
        },
    });
}

fn parse_line(text: &str, line: usize, q: &BatchQuery) -> Result<NewDocument, ApiError> {
    let body: DocumentBody = serde_json::from_str(text).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("malformed JSON: {e}"),
            )
        } else {
            ApiError::invalid(e.to_string())
        }
    })?;
    if body.text.trim().is_empty() {
        return Err(ApiError::invalid("text is empty"));
    }
    let mut doc = body.into_new_document();
    if doc.collection.is_none() {
        doc.collection.clone_from(&q.collection);
    }
    if let Some(source) = q.source.as_deref().filter(|s| !s.is_empty()) {
        if doc.source.is_none() {
            // Like a JSON Lines file loaded from disk: a line without an id is
            // identified by its place in the file.
            doc.source = Some(if doc.id.is_none() {
                format!("{source}#{line}")
            } else {
                source.to_string()
            });
        }
    }
    Ok(doc)
}

async fn flush(
    engine: &ragfleet_rag::Engine,
    pending: &mut Vec<(usize, NewDocument)>,
    resp: &mut BatchResponse,
) {
    let (nums, docs): (Vec<usize>, Vec<NewDocument>) = std::mem::take(pending).into_iter().unzip();
    let results = engine.ingest_batch(docs).await;
    for (line, r) in nums.into_iter().zip(results) {
        match r {
            Ok(o) => {
                let d = IngestedDocument::from(o);
                resp.ingested += 1;
                resp.chunks += d.chunks;
                resp.documents.push(BatchDocument {
                    line,
                    doc_id: d.doc_id,
                    chunks: d.chunks,
                    status: d.status,
                });
            }
            Err(e) => push_failure(resp, line, e.into()),
        }
    }
}

enum Line {
    Text(String),
    TooLong,
}

/// Splits a byte stream into lines with a bound on a line's length: an
/// overlong line is reported once and skipped to its end, never buffered.
struct LineSplitter {
    buf: Vec<u8>,
    max: usize,
    skipping: bool,
}

impl LineSplitter {
    fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            max,
            skipping: false,
        }
    }

    fn push(&mut self, mut bytes: &[u8]) -> Vec<Line> {
        let mut out = Vec::new();
        while let Some(i) = bytes.iter().position(|&b| b == b'\n') {
            let (head, rest) = bytes.split_at(i);
            bytes = &rest[1..];
            if self.skipping {
                self.skipping = false;
                self.buf.clear();
                continue;
            }
            if self.buf.len() + head.len() > self.max {
                self.buf.clear();
                out.push(Line::TooLong);
                continue;
            }
            self.buf.extend_from_slice(head);
            out.push(self.take());
        }
        if !self.skipping {
            if self.buf.len() + bytes.len() > self.max {
                self.buf.clear();
                self.skipping = true;
                out.push(Line::TooLong);
            } else {
                self.buf.extend_from_slice(bytes);
            }
        }
        out
    }

    fn finish(&mut self) -> Vec<Line> {
        if self.skipping || self.buf.is_empty() {
            self.buf.clear();
            return Vec::new();
        }
        vec![self.take()]
    }

    fn take(&mut self) -> Line {
        let bytes = std::mem::take(&mut self.buf);
        let mut s = String::from_utf8_lossy(&bytes).into_owned();
        if s.ends_with('\r') {
            s.pop();
        }
        Line::Text(s)
    }
}

/// List documents, newest first, optionally in one collection.
#[utoipa::path(get, path = "/api/v1/documents", tag = "documents",
    params(DocumentListQuery),
    responses((status = 200, body = DocumentPageSchema), (status = 400, body = crate::error::ErrorBody),
        (status = 422, body = crate::error::ErrorBody)))]
pub async fn list(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    ApiQuery(q): ApiQuery<DocumentListQuery>,
) -> ApiResult<impl IntoResponse> {
    let (offset, limit) = page_bounds(&state.config.limits, q.offset, q.limit)?;
    let engine = state.engine()?;
    let page = match (q.collection.as_deref(), principal.scope_list()) {
        (Some(c), _) => {
            principal.check_read(c)?;
            engine.list_documents(Some(c), offset, limit).await?
        }
        (None, None) => engine.list_documents(None, offset, limit).await?,
        (None, Some(scope)) => engine.list_documents_in(&scope, offset, limit).await?,
    };
    Ok(ApiJson(page))
}

/// One document's information.
#[utoipa::path(get, path = "/api/v1/documents/{id}", tag = "documents",
    params(("id" = String, Path, description = "document id")),
    responses((status = 200, body = DocumentInfoSchema), (status = 404, body = crate::error::ErrorBody)))]
pub async fn get(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<impl IntoResponse> {
    // A document outside the grants is as absent as a missing one.
    match state.engine()?.get_document(&id).await? {
        Some(d) if principal.can_read(&d.collection) => Ok(ApiJson(d)),
        _ => Err(ApiError::not_found(format!("no document {id:?}"))),
    }
}

/// Delete a document from the store and every index.
#[utoipa::path(delete, path = "/api/v1/documents/{id}", tag = "documents",
    params(("id" = String, Path, description = "document id")),
    responses((status = 204), (status = 404, body = crate::error::ErrorBody)))]
pub async fn delete(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    principal.check_role(ragfleet_rag::store::principals::Role::Editor)?;
    let engine = state.engine()?;
    let visible = engine
        .get_document(&id)
        .await?
        .filter(|d| principal.can_read(&d.collection));
    let deleted = match visible {
        Some(_) => engine.delete_document(&id).await?,
        None => false,
    };
    let outcome = if deleted { "ok" } else { "not_found" };
    audit(
        "document_deleted",
        &principal.name,
        &principal.request_id,
        outcome,
        &id,
    );
    if deleted {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no document {id:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(v: Vec<Line>) -> Vec<Option<String>> {
        v.into_iter()
            .map(|l| match l {
                Line::Text(s) => Some(s),
                Line::TooLong => None,
            })
            .collect()
    }

    #[test]
    fn splitter_bounds_lines_across_chunks() {
        let mut s = LineSplitter::new(5);
        let mut got = texts(s.push(b"ab\r\ncd"));
        got.extend(texts(s.push(b"e\n0123456789")));
        got.extend(texts(s.push(b"xx\nok")));
        got.extend(texts(s.finish()));
        assert_eq!(
            got,
            vec![
                Some("ab".into()),
                Some("cde".into()),
                None,
                Some("ok".into())
            ]
        );
    }
}
