//! HTML main-content extraction on real pages: an mdbook chapter (the Rust
//! Book, as the toolchain ships it), a rustdoc page (the standard library's
//! `loop` keyword) and a page without any semantic tag (density heuristic).
//! The chunks the splitter makes hold the article's text and none of the
//! page's interface text.
use std::path::{Path, PathBuf};

use ragfleet_models::BertEmbedder;
use ragfleet_rag::ingest::{load_path, split, ChunkConfig, LoadOptions};
use ragfleet_rag::types::Document;

fn models_dir() -> PathBuf {
    std::env::var_os("RAGFLEET_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models"))
}

/// The page's chunks as the engine would index them, joined by newlines.
fn chunks_of(fixture: &str) -> (Option<String>, Vec<String>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/html")
        .join(fixture);
    let mut docs = load_path(&path, &LoadOptions::default());
    assert_eq!(docs.len(), 1);
    let n = docs.remove(0).expect("the page loads");
    let doc = Document {
        id: "page".into(),
        title: n.title.clone().unwrap_or_default(),
        text: n.text,
        collection: "default".into(),
        metadata: n.metadata,
        source: n.source,
        pages: n.pages,
    };
    let embedder = BertEmbedder::load(models_dir().join("all-minilm-l6-v2"))
        .expect("model files (scripts/fetch-models.sh)");
    let chunks = split(&doc, &embedder, &ChunkConfig::default());
    assert!(!chunks.is_empty());
    (n.title, chunks.into_iter().map(|c| c.text).collect())
}

fn check(chunks: &[String], present: &[&str], absent: &[&str]) {
    let all = chunks.join("\n");
    for p in present {
        assert!(all.contains(p), "{p:?} missing from the chunks:\n{all}");
    }
    for a in absent {
        for (i, c) in chunks.iter().enumerate() {
            assert!(!c.contains(a), "interface text {a:?} in chunk {i}: {c:?}");
        }
    }
}

#[test]
fn mdbook_chapter_keeps_the_chapter_and_drops_the_book_interface() {
    let (title, chunks) = chunks_of("mdbook-chapter.html");
    assert_eq!(
        title.as_deref(),
        Some("Common Programming Concepts - The Rust Programming Language")
    );
    check(
        &chunks,
        &[
            "Common Programming Concepts",
            "This chapter covers concepts that appear in almost every programming language",
            "You can find the list of the keywords in Appendix A.",
        ],
        &[
            "Keyboard shortcuts",
            "Press ← or →",
            "to navigate between chapters",
            "to search in the book",
            "Auto\nLight",
            "Coal",
            "Navy",
            "Ayu",
        ],
    );
    // The chapter starts the text: no menu bar (the book's name) before it.
    assert!(
        chunks[0].starts_with("Common Programming Concepts"),
        "{:?}",
        chunks[0]
    );
}

#[test]
fn rustdoc_page_keeps_the_documentation_and_drops_the_interface() {
    let (title, chunks) = chunks_of("rustdoc-keyword.html");
    assert_eq!(title.as_deref(), Some("loop - Rust"));
    check(
        &chunks,
        &[
            "Keyword loop",
            "Loop indefinitely.",
            "is used to define the simplest kind of loop supported in Rust",
            "println!(\"hello world forever!\");",
            "Every break in a loop has to have the same type.",
        ],
        &[
            "Skip to main content",
            "Copy item path",
            "Expand description",
            "This old browser is unsupported",
            "1.95.0",
        ],
    );
}

#[test]
fn page_without_semantic_tags_keeps_the_densest_text() {
    let (_, chunks) = chunks_of("no-semantic-tags.html");
    check(
        &chunks,
        &[
            "Lighthouses of Brittany",
            "is the tallest traditional lighthouse in Europe, at 82.5 metres",
            "It took fourteen years to build, from 1867 to 1881",
            "\"hell among hells\"",
        ],
        &[
            "Contact us",
            "Donate today",
            "Tide tables",
            "Sign in to your account",
            "All rights reserved",
            "Privacy policy",
            "Subscribe to our newsletter",
        ],
    );
}
