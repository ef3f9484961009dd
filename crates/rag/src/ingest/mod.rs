//! Loaders (files → documents) and the splitter (documents → chunks).
use serde::{Deserialize, Serialize};

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
