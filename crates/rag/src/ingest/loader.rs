//! Files and uploads → [`NewDocument`]s.
use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::formats::{Format, Parsed};
use super::{docx, html, jsonl, pdf};
use crate::types::{Metadata, NewDocument};
use crate::{RagError, Result};

/// Metadata key under which loaders record the source format
/// (`"markdown"`, `"pdf"`, ...). The splitter reads it to split Markdown on
/// its structure.
pub const FORMAT_KEY: &str = "format";

/// What the caller knows about the documents being loaded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoadOptions {
    /// Collection every loaded document goes into (`None`: the engine's default).
    pub collection: Option<String>,
    /// Document id, kept verbatim. Only for a single-document load (one file
    /// that is not JSON Lines); an error otherwise.
    pub id: Option<String>,
    /// Title, overriding the one found in the file. For multi-document loads
    /// it is used only for documents that have none.
    pub title: Option<String>,
    /// Metadata merged into every document (wins over what the loader found).
    pub metadata: Metadata,
    /// The source recorded for the loaded documents — part of their
    /// identity (see [`document_id`]). `None`: the path or upload name as
    /// given. JSON Lines documents without an id get `SOURCE#LINE`.
    pub source: Option<String>,
}

/// Load a file (one document, or one per line for JSON Lines) or a directory
/// (recursively, in name order; hidden entries skipped). One result per
/// document or per failure: a bad file or line never loses the others, and
/// every error names the file and the reason.
pub fn load_path(path: &Path, opts: &LoadOptions) -> Vec<Result<NewDocument>> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => return vec![Err(load_err(path, io_reason(&e)))],
    };
    if meta.is_dir() {
        if opts.id.is_some() {
            return vec![Err(load_err(
                path,
                "a document id cannot be given for a directory (it would be shared by every file)",
            ))];
        }
        if opts.source.is_some() {
            return vec![Err(load_err(
                path,
                "a source cannot be given for a directory (it would be shared by every file)",
            ))];
        }
        let mut files = Vec::new();
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        walk(path, &mut files, &mut out, &mut seen);
        for f in files {
            out.extend(load_file(&f, opts));
        }
        out
    } else {
        load_file(path, opts)
    }
}

/// Load an upload. The format comes from `content_type` when it names one we
/// read, else from `name`'s extension. All or nothing: any bad part (e.g. one
/// bad JSON line) fails the whole upload with an error naming it, so nothing
/// is half-ingested. Use [`load_bytes_each`] to keep the good parts.
pub fn load_bytes(
    name: &str,
    content_type: Option<&str>,
    bytes: &[u8],
    opts: &LoadOptions,
) -> Result<Vec<NewDocument>> {
    load_bytes_each(name, content_type, bytes, opts)
        .into_iter()
        .collect()
}

/// Like [`load_bytes`], but one result per document or failure.
pub fn load_bytes_each(
    name: &str,
    content_type: Option<&str>,
    bytes: &[u8],
    opts: &LoadOptions,
) -> Vec<Result<NewDocument>> {
    let path = Path::new(name);
    let Some(format) = Format::detect(name, content_type) else {
        return vec![Err(unsupported(path, content_type))];
    };
    finish(path, name, format, parse(path, format, bytes), opts)
}

/// A document's id when the caller gives none: its source within its
/// collection, `hex(sha256(collection + "\0" + source))`, so the same source
/// in the same collection replaces itself and the same text in two
/// collections, or at two sources, is two documents. A document without a
/// source is identified by its text within its collection:
/// `doc-` + the first 32 hex digits of `sha256(collection + "\0\0" + text)`.
pub fn document_id(collection: &str, source: Option<&str>, text: &str) -> String {
    let mut h = Sha256::new();
    h.update(collection.as_bytes());
    match source.filter(|s| !s.is_empty()) {
        Some(source) => {
            h.update(b"\0");
            h.update(source.as_bytes());
            hex::encode(h.finalize())
        }
        None => {
            h.update(b"\0\0");
            h.update(text.as_bytes());
            format!("doc-{}", &hex::encode(h.finalize())[..32])
        }
    }
}

/// SHA-256 (lower-case hex) of a text.
pub fn content_hash(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// SHA-256 (lower-case hex) of everything that makes a document's indexed
/// content: title, text, collection, metadata (keys sorted) and pages. The id
/// and source are not part of it. Equal hashes mean re-ingesting is a no-op.
pub fn document_hash(doc: &NewDocument) -> String {
    let mut h = Sha256::new();
    let mut field = |tag: &str, s: &str| {
        h.update(tag.as_bytes());
        h.update((s.len() as u64).to_le_bytes());
        h.update(s.as_bytes());
    };
    field("title", doc.title.as_deref().unwrap_or(""));
    field("text", &doc.text);
    field("collection", doc.collection.as_deref().unwrap_or(""));
    field(
        "metadata",
        &canonical_json(&serde_json::Value::Object(doc.metadata.clone())),
    );
    let pages: Vec<String> = doc.pages.iter().map(|(o, p)| format!("{o}:{p}")).collect();
    field("pages", &pages.join(","));
    hex::encode(h.finalize())
}

/// JSON with object keys sorted at every level (independent of whether
/// serde_json preserves insertion order in this build).
fn canonical_json(v: &serde_json::Value) -> String {
    use serde_json::Value;
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let parts: Vec<String> = keys
                .into_iter()
                .map(|k| {
                    format!(
                        "{}:{}",
                        Value::String(k.clone()),
                        canonical_json(&m[k.as_str()])
                    )
                })
                .collect();
            format!("{{{}}}", parts.join(","))
        }
        Value::Array(a) => {
            let parts: Vec<String> = a.iter().map(canonical_json).collect();
            format!("[{}]", parts.join(","))
        }
        other => other.to_string(),
    }
}

fn walk(
    dir: &Path,
    files: &mut Vec<PathBuf>,
    errors: &mut Vec<Result<NewDocument>>,
    seen: &mut HashSet<PathBuf>,
) {
    // Symlink loops: visit each real directory once.
    if let Ok(real) = std::fs::canonicalize(dir) {
        if !seen.insert(real) {
            return;
        }
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            errors.push(Err(load_err(dir, io_reason(&e))));
            return;
        }
    };
    let mut paths: Vec<PathBuf> = Vec::new();
    for entry in entries {
        match entry {
            Ok(e) => {
                if e.file_name().to_string_lossy().starts_with('.') {
                    continue;
                }
                paths.push(e.path());
            }
            Err(e) => errors.push(Err(load_err(dir, io_reason(&e)))),
        }
    }
    paths.sort();
    for p in paths {
        match std::fs::metadata(&p) {
            Ok(m) if m.is_dir() => walk(&p, files, errors, seen),
            Ok(_) => files.push(p),
            Err(e) => errors.push(Err(load_err(&p, io_reason(&e)))),
        }
    }
}

fn load_file(path: &Path, opts: &LoadOptions) -> Vec<Result<NewDocument>> {
    let name = path.to_string_lossy();
    let Some(format) = Format::from_name(&name) else {
        return vec![Err(unsupported(path, None))];
    };
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => return vec![Err(load_err(path, io_reason(&e)))],
    };
    finish(path, &name, format, parse(path, format, &bytes), opts)
}

fn parse(path: &Path, format: Format, bytes: &[u8]) -> Parsed {
    if bytes.is_empty() {
        return Err("empty file".into());
    }
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty());
    let one = |text: String, title: Option<String>| -> Parsed {
        if text.trim().is_empty() {
            return Err("no text to index (the file holds only whitespace or markup)".into());
        }
        Ok(vec![Ok(NewDocument {
            title: title.or_else(|| stem.clone()),
            text,
            ..Default::default()
        })])
    };
    match format {
        Format::Text => one(decode_text(bytes)?, None),
        Format::Markdown => {
            let text = decode_text(bytes)?;
            let title = markdown_title(&text);
            one(text, title)
        }
        Format::Html => {
            let page = html::extract(&decode_text(bytes)?);
            one(page.text, page.title)
        }
        Format::Csv => one(render_csv(bytes, b',')?, None),
        Format::Tsv => one(render_csv(bytes, b'\t')?, None),
        Format::Docx => {
            let d = docx::extract(bytes)?;
            one(d.text, d.title)
        }
        Format::Pdf => {
            let p = pdf::extract(bytes)?;
            let mut docs = one(p.text, p.title)?;
            if let Some(Ok(doc)) = docs.first_mut() {
                doc.pages = p.pages;
                doc.metadata
                    .insert("page_count".into(), p.page_count.into());
            }
            Ok(docs)
        }
        Format::Jsonl => jsonl::parse(&decode_text(bytes)?),
    }
}

/// Apply the caller's options, tag the format and source, name the file in errors.
fn finish(
    path: &Path,
    source: &str,
    format: Format,
    parsed: Parsed,
    opts: &LoadOptions,
) -> Vec<Result<NewDocument>> {
    let items = match parsed {
        Ok(items) => items,
        Err(reason) => return vec![Err(load_err(path, reason))],
    };
    let single = format != Format::Jsonl;
    if opts.id.is_some() && !single {
        return vec![Err(load_err(
            path,
            "a document id cannot be given for a JSON Lines file (each line carries its own `_id`)",
        ))];
    }
    items
        .into_iter()
        .map(|item| {
            let mut doc = item.map_err(|reason| load_err(path, reason))?;
            if single {
                if let Some(id) = &opts.id {
                    doc.id = Some(id.clone());
                }
                if let Some(t) = &opts.title {
                    doc.title = Some(t.clone());
                }
            } else if doc.title.as_deref().is_none_or(str::is_empty) {
                if let Some(t) = &opts.title {
                    doc.title = Some(t.clone());
                }
            }
            if opts.collection.is_some() {
                doc.collection.clone_from(&opts.collection);
            }
            doc.metadata
                .entry(FORMAT_KEY)
                .or_insert_with(|| format.as_str().into());
            for (k, v) in &opts.metadata {
                doc.metadata.insert(k.clone(), v.clone());
            }
            let base = opts.source.as_deref().unwrap_or(source);
            // JSON Lines readers mark a line without an id with `#LINE`.
            doc.source = Some(match doc.source.take() {
                Some(line) if line.starts_with('#') => format!("{base}{line}"),
                _ => base.to_string(),
            });
            Ok(doc)
        })
        .collect()
}

fn load_err(path: &Path, reason: impl Into<String>) -> RagError {
    RagError::Load {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn unsupported(path: &Path, content_type: Option<&str>) -> RagError {
    let what = match (path.extension(), content_type) {
        (_, Some(ct))
            if Format::from_content_type(ct).is_none()
                && Format::from_name(&path.to_string_lossy()).is_none() =>
        {
            format!("content type {ct:?}")
        }
        (Some(ext), _) => format!("extension .{}", ext.to_string_lossy()),
        (None, _) => "a file without an extension".to_string(),
    };
    load_err(
        path,
        format!(
            "unsupported format ({what}); supported: .txt .md .html .pdf .docx .csv .tsv .jsonl"
        ),
    )
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file or directory".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

/// UTF-8 (BOM stripped) or UTF-16 with a BOM; anything else is an error.
pub(super) fn decode_text(bytes: &[u8]) -> std::result::Result<String, String> {
    if let Some(rest) = bytes.strip_prefix(&[0xEF, 0xBB, 0xBF]) {
        return decode_text(rest);
    }
    let utf16 = |rest: &[u8], le: bool| -> std::result::Result<String, String> {
        let units: Vec<u16> = rest
            .chunks_exact(2)
            .map(|c| {
                if le {
                    u16::from_le_bytes([c[0], c[1]])
                } else {
                    u16::from_be_bytes([c[0], c[1]])
                }
            })
            .collect();
        String::from_utf16(&units).map_err(|_| "invalid UTF-16 text".to_string())
    };
    if let Some(rest) = bytes.strip_prefix(&[0xFF, 0xFE]) {
        return utf16(rest, true);
    }
    if let Some(rest) = bytes.strip_prefix(&[0xFE, 0xFF]) {
        return utf16(rest, false);
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        format!(
            "not UTF-8 text (invalid byte at offset {}); binary file or another encoding",
            e.valid_up_to()
        )
    })?;
    if let Some(i) = text.find('\0') {
        return Err(format!("binary data, not text (NUL byte at offset {i})"));
    }
    Ok(text.to_string())
}

/// The first level-1 ATX heading (`# Title`), else the first heading of any
/// level, outside fenced code blocks.
fn markdown_title(text: &str) -> Option<String> {
    let mut in_fence = false;
    let mut first_any = None;
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("```") || t.starts_with("~~~") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence || !t.starts_with('#') {
            continue;
        }
        let level = t.chars().take_while(|&c| c == '#').count();
        let rest = &t[level..];
        if level > 6 || !(rest.is_empty() || rest.starts_with(' ')) {
            continue;
        }
        let title = rest.trim().trim_end_matches('#').trim().to_string();
        if title.is_empty() {
            continue;
        }
        if level == 1 {
            return Some(title);
        }
        first_any.get_or_insert(title);
    }
    first_any
}

/// A header-aware rendering: one line per row, `column: value` pairs joined
/// by `; ` (empty cells left out).
fn render_csv(bytes: &[u8], delimiter: u8) -> std::result::Result<String, String> {
    let text = decode_text(bytes)?;
    let mut rdr = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(true)
        .flexible(true)
        .from_reader(text.as_bytes());
    let headers: Vec<String> = rdr
        .headers()
        .map_err(|e| csv_reason(&e))?
        .iter()
        .map(|h| h.trim().to_string())
        .collect();
    let mut out = String::new();
    for rec in rdr.records() {
        let rec = rec.map_err(|e| csv_reason(&e))?;
        let mut parts = Vec::new();
        for (i, v) in rec.iter().enumerate() {
            let v = v.trim();
            if v.is_empty() {
                continue;
            }
            match headers.get(i).filter(|h| !h.is_empty()) {
                Some(h) => parts.push(format!("{h}: {v}")),
                None => parts.push(format!("column {}: {v}", i + 1)),
            }
        }
        if !parts.is_empty() {
            out.push_str(&parts.join("; "));
            out.push('\n');
        }
    }
    if out.is_empty() {
        return Err("no data rows (only a header, or empty cells)".into());
    }
    Ok(out)
}

fn csv_reason(e: &csv::Error) -> String {
    match e.position() {
        Some(p) => format!("line {}: {e}", p.line()),
        None => e.to_string(),
    }
}
