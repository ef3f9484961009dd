//! Documents → chunks, with text-splitter: it cuts at the highest semantic
//! level that fits (sections, paragraphs, sentences, words, graphemes; for
//! Markdown also headings, lists and code blocks), measuring candidates with
//! the embedding model's own tokenizer, so every chunk fits the model window.
use text_splitter::{ChunkCharIndex, ChunkSizer, MarkdownSplitter, TextSplitter};

use super::loader::FORMAT_KEY;
use super::ChunkConfig;
use crate::embed::Embedder;
use crate::types::{Chunk, Document};

/// Measures text in the embedder's tokens (special tokens excluded).
struct TokenSizer<'a>(&'a dyn Embedder);

impl ChunkSizer for TokenSizer<'_> {
    fn size(&self, chunk: &str) -> usize {
        self.0.count_tokens(chunk)
    }
}

/// Cut `doc` into chunks of at most `min(cfg.max_tokens, sizer.max_tokens())`
/// tokens (as counted by `sizer.count_tokens`), consecutive chunks sharing up
/// to `cfg.overlap_tokens` tokens (capped at half a chunk). Markdown documents
/// (metadata `format = "markdown"` or a `.md` source) are split on their
/// structure when `cfg.markdown` is set.
///
/// Every chunk has id `"{doc_id}#{ordinal}"`, and char offsets with
/// `doc.text.chars().skip(start).take(end - start) == chunk.text`; `page` is
/// the page holding the chunk's first char (paged documents only).
pub fn split(doc: &Document, sizer: &dyn Embedder, cfg: &ChunkConfig) -> Vec<Chunk> {
    if doc.text.trim().is_empty() {
        return Vec::new();
    }
    let max = cfg.max_tokens.min(sizer.max_tokens()).max(1);
    let overlap = cfg.overlap_tokens.min(max / 2);
    let base = || {
        text_splitter::ChunkConfig::new(max)
            .with_sizer(TokenSizer(sizer))
            .with_trim(true)
    };
    // `with_overlap` only fails when overlap >= capacity, excluded above.
    let config = base().with_overlap(overlap).unwrap_or_else(|_| base());
    let pieces: Vec<ChunkCharIndex<'_>> = if cfg.markdown && is_markdown(doc) {
        MarkdownSplitter::new(config)
            .chunk_char_indices(&doc.text)
            .collect()
    } else {
        TextSplitter::new(config)
            .chunk_char_indices(&doc.text)
            .collect()
    };
    pieces
        .into_iter()
        .filter(|p| !p.chunk.trim().is_empty())
        .enumerate()
        .map(|(i, p)| {
            let start = p.char_offset;
            let end = start + p.chunk.chars().count();
            Chunk {
                id: format!("{}#{}", doc.id, i),
                doc_id: doc.id.clone(),
                ordinal: i as u32,
                collection: doc.collection.clone(),
                title: doc.title.clone(),
                text: p.chunk.to_string(),
                start,
                end,
                page: page_at(&doc.pages, start),
            }
        })
        .collect()
}

fn is_markdown(doc: &Document) -> bool {
    if let Some(f) = doc.metadata.get(FORMAT_KEY).and_then(|v| v.as_str()) {
        return f == "markdown";
    }
    doc.source.as_deref().is_some_and(|s| {
        let s = s.to_ascii_lowercase();
        s.ends_with(".md") || s.ends_with(".markdown")
    })
}

/// The page holding char offset `at`: the last page starting at or before it
/// (the first page for text before it).
fn page_at(pages: &[(usize, u32)], at: usize) -> Option<u32> {
    let idx = pages.partition_point(|(o, _)| *o <= at);
    match idx {
        0 => pages.first().map(|p| p.1),
        i => pages.get(i - 1).map(|p| p.1),
    }
}
