//! Loaders (files → documents) and the splitter (documents → chunks).
//!
//! - [`load_path`]: a file (one document, or many for `.jsonl`) or a directory
//!   (recursive); one result per document or per failure, so one bad file
//!   never loses the others.
//! - [`load_bytes`] / [`load_bytes_each`]: uploads, format from the content
//!   type or the name's extension.
//! - [`split`]: token-aware, Markdown-aware chunking with overlap; chunk
//!   offsets are char offsets that slice back to the chunk text.
//! - [`document_id`]: a document's identity (its source within its collection).
//! - [`content_hash`] / [`document_hash`]: SHA-256 hex, for no-op re-ingest.
//!
//! Everything here is synchronous CPU work: async callers run it on a
//! blocking thread.
use serde::{Deserialize, Serialize};

mod docx;
mod formats;
mod html;
mod jsonl;
mod loader;
mod pdf;
mod split;

pub use formats::Format;
pub use loader::{
    content_hash, document_hash, document_id, load_bytes, load_bytes_each, load_path, LoadOptions,
    FORMAT_KEY,
};
pub use split::split;

/// How documents are cut into chunks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChunkConfig {
    /// Upper bound of a chunk in embedding-model tokens (must fit the model window).
    pub max_tokens: usize,
    /// Tokens shared by consecutive chunks.
    pub overlap_tokens: usize,
    /// Split on Markdown structure (headings, lists, code blocks) when the
    /// document is Markdown.
    pub markdown: bool,
}

impl Default for ChunkConfig {
    fn default() -> Self {
        Self {
            max_tokens: 200,
            overlap_tokens: 32,
            markdown: true,
        }
    }
}
