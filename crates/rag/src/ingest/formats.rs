//! Which loader reads a file: by content type (uploads) or extension.
use serde::{Deserialize, Serialize};

/// A file format the loaders read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Plain UTF-8 text (`.txt`, `.text`, `.log`, `.rst`).
    Text,
    /// Markdown (`.md`, `.markdown`): kept verbatim, split on its structure.
    Markdown,
    /// HTML (`.html`, `.htm`, `.xhtml`): visible text, no scripts or styles.
    Html,
    /// PDF: text per page, page numbers kept.
    Pdf,
    /// Word (`.docx`): paragraphs and tables.
    Docx,
    /// Comma-separated values, header-aware (`.csv`).
    Csv,
    /// Tab-separated values, header-aware (`.tsv`).
    Tsv,
    /// JSON Lines in BEIR layout (`_id`, `title`, `text`): one document a line.
    Jsonl,
}

impl Format {
    /// The name recorded in document metadata under [`super::FORMAT_KEY`].
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Text => "text",
            Format::Markdown => "markdown",
            Format::Html => "html",
            Format::Pdf => "pdf",
            Format::Docx => "docx",
            Format::Csv => "csv",
            Format::Tsv => "tsv",
            Format::Jsonl => "jsonl",
        }
    }

    /// Format from a file name's extension (case-insensitive).
    pub fn from_name(name: &str) -> Option<Format> {
        let ext = std::path::Path::new(name)
            .extension()?
            .to_str()?
            .to_ascii_lowercase();
        Some(match ext.as_str() {
            "txt" | "text" | "log" | "rst" => Format::Text,
            "md" | "markdown" | "mdown" | "mkd" => Format::Markdown,
            "html" | "htm" | "xhtml" => Format::Html,
            "pdf" => Format::Pdf,
            "docx" => Format::Docx,
            "csv" => Format::Csv,
            "tsv" | "tab" => Format::Tsv,
            "jsonl" | "ndjson" => Format::Jsonl,
            _ => return None,
        })
    }

    /// Format from a MIME content type (parameters such as `; charset=utf-8`
    /// are ignored). Generic types (`application/octet-stream`) give `None`.
    pub fn from_content_type(ct: &str) -> Option<Format> {
        let base = ct.split(';').next()?.trim().to_ascii_lowercase();
        Some(match base.as_str() {
            "text/plain" => Format::Text,
            "text/markdown" | "text/x-markdown" => Format::Markdown,
            "text/html" | "application/xhtml+xml" => Format::Html,
            "application/pdf" => Format::Pdf,
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document" => {
                Format::Docx
            }
            "text/csv" => Format::Csv,
            "text/tab-separated-values" => Format::Tsv,
            "application/jsonl"
            | "application/x-ndjson"
            | "application/x-jsonlines"
            | "application/jsonlines" => Format::Jsonl,
            _ => return None,
        })
    }

    /// The format of an upload: a specific content type wins, else the name's
    /// extension.
    pub fn detect(name: &str, content_type: Option<&str>) -> Option<Format> {
        content_type
            .and_then(Format::from_content_type)
            .or_else(|| Format::from_name(name))
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a format reader produced: whole-file failure (outer `Err`), or one
/// result per document (JSON Lines has one per line). Reasons are plain
/// strings; the loader turns them into `RagError::Load` naming the file.
pub(super) type Parsed =
    std::result::Result<Vec<std::result::Result<crate::types::NewDocument, String>>, String>;
