//! The splitter with the real tokenizer (all-MiniLM-L6-v2 through
//! ragfleet_models::BertEmbedder): offsets slice back to the chunk text on
//! real fixtures and non-ASCII text, the token bound holds, overlap, pages.
use std::path::{Path, PathBuf};

use ragfleet_models::BertEmbedder;
use ragfleet_rag::embed::Embedder;
use ragfleet_rag::ingest::{load_path, split, ChunkConfig, LoadOptions};
use ragfleet_rag::types::{Chunk, Document, NewDocument};

fn models_dir() -> PathBuf {
    std::env::var_os("RAGFLEET_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models"))
}

fn embedder() -> BertEmbedder {
    BertEmbedder::load(models_dir().join("all-minilm-l6-v2"))
        .expect("model files (scripts/fetch-models.sh)")
}

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/ingest")
        .join(rel)
}

fn doc(n: NewDocument, id: &str) -> Document {
    Document {
        id: id.to_string(),
        title: n.title.unwrap_or_default(),
        text: n.text,
        collection: "default".into(),
        metadata: n.metadata,
        source: n.source,
        pages: n.pages,
    }
}

fn load(rel: &str) -> Document {
    let n = load_path(&fixture(rel), &LoadOptions::default())
        .remove(0)
        .unwrap();
    doc(n, rel)
}

/// Every chunk slices back out of the document by char offsets, ids and
/// ordinals are consecutive, the token bound holds with the real tokenizer,
/// and the chunks cover the document's non-blank text.
fn check(d: &Document, chunks: &[Chunk], e: &dyn Embedder, max: usize) {
    assert!(!chunks.is_empty());
    let chars: Vec<char> = d.text.chars().collect();
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(c.ordinal as usize, i);
        assert_eq!(c.id, format!("{}#{i}", d.id));
        assert_eq!(c.doc_id, d.id);
        assert!(c.start < c.end && c.end <= chars.len());
        let slice: String = chars[c.start..c.end].iter().collect();
        assert_eq!(slice, c.text, "chunk {i} offsets");
        let n = e.count_tokens(&c.text);
        assert!(n <= max, "chunk {i} has {n} tokens > {max}: {:?}", c.text);
    }
    // Coverage: every non-whitespace char lies in some chunk.
    let mut covered = vec![false; chars.len()];
    for c in chunks {
        covered[c.start..c.end].iter_mut().for_each(|x| *x = true);
    }
    for (i, ch) in chars.iter().enumerate() {
        assert!(
            covered[i] || ch.is_whitespace(),
            "char {i} {ch:?} not in any chunk"
        );
    }
}

#[test]
fn real_fixtures_slice_back_and_fit_the_bound() {
    let e = embedder();
    let cfg = ChunkConfig {
        max_tokens: 24,
        overlap_tokens: 4,
        markdown: true,
    };
    for rel in [
        "good/river.txt",
        "good/guide.md",
        "good/museum.html",
        "good/lighthouse.pdf",
        "good/bees.docx",
        "good/planets.csv",
    ] {
        let d = load(rel);
        let chunks = split(&d, &e, &cfg);
        assert!(chunks.len() >= 2, "{rel}: {} chunks", chunks.len());
        check(&d, &chunks, &e, 24);
    }
}

#[test]
fn non_ascii_offsets_are_chars_not_bytes() {
    let e = embedder();
    let text = "Zoë's café in Győr serves naïve crème brûlée. 東京は日本の首都です。\
                Ελληνικά κείμενα εδώ. Emoji 🚀🚀 and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 letters. "
        .repeat(6);
    let d = doc(
        NewDocument {
            text,
            ..Default::default()
        },
        "utf",
    );
    let chunks = split(
        &d,
        &e,
        &ChunkConfig {
            max_tokens: 20,
            overlap_tokens: 5,
            markdown: false,
        },
    );
    assert!(chunks.len() > 4);
    check(&d, &chunks, &e, 20);
    // Byte offsets would differ from char offsets after the first chunk.
    assert!(chunks
        .iter()
        .any(|c| c.start != d.text.char_indices().nth(c.start).map_or(0, |(b, _)| b)));
}

#[test]
fn bound_is_capped_by_the_model_window_and_overlap_shares_text() {
    let e = embedder();
    let text = std::fs::read_to_string(fixture("good/river.txt"))
        .unwrap()
        .repeat(40);
    let d = doc(
        NewDocument {
            text,
            ..Default::default()
        },
        "long",
    );
    // Asking for more than the model takes is capped at its window.
    let chunks = split(
        &d,
        &e,
        &ChunkConfig {
            max_tokens: 100_000,
            overlap_tokens: 0,
            markdown: false,
        },
    );
    check(&d, &chunks, &e, e.max_tokens());
    assert!(chunks
        .iter()
        .any(|c| e.count_tokens(&c.text) > e.max_tokens() / 2));
    // With overlap, consecutive chunks share text. text-splitter overlaps
    // with whole units of the level it cut at (here sentences of ~20
    // tokens), so the overlap must be able to hold a sentence.
    let one_para = "The river runs east past the old mill at Ulm. ".repeat(60);
    let d = doc(
        NewDocument {
            text: one_para,
            ..Default::default()
        },
        "para",
    );
    let chunks = split(
        &d,
        &e,
        &ChunkConfig {
            max_tokens: 40,
            overlap_tokens: 15,
            markdown: false,
        },
    );
    check(&d, &chunks, &e, 40);
    let overlapping = chunks.windows(2).filter(|w| w[1].start < w[0].end).count();
    assert!(
        overlapping > chunks.len() / 2,
        "{overlapping} of {}",
        chunks.len()
    );
    // Without overlap they do not.
    let chunks = split(
        &d,
        &e,
        &ChunkConfig {
            max_tokens: 40,
            overlap_tokens: 0,
            markdown: false,
        },
    );
    assert!(chunks.windows(2).all(|w| w[1].start >= w[0].end));
}

#[test]
fn markdown_splits_on_its_structure() {
    let e = embedder();
    let d = load("good/guide.md");
    let chunks = split(
        &d,
        &e,
        &ChunkConfig {
            max_tokens: 60,
            overlap_tokens: 0,
            markdown: true,
        },
    );
    check(&d, &chunks, &e, 60);
    // The code block stays whole, and sections start chunks at headings.
    assert!(chunks
        .iter()
        .any(|c| c.text.contains("flour      500 g") && c.text.contains("salt        10 g")));
    assert!(
        chunks
            .iter()
            .any(|c| c.text.starts_with("## Baking") || c.text.starts_with("### Folding")),
        "{chunks:#?}"
    );
}

#[test]
fn pdf_chunks_carry_the_page_of_their_start() {
    let e = embedder();
    let d = load("good/lighthouse.pdf");
    let chunks = split(
        &d,
        &e,
        &ChunkConfig {
            max_tokens: 30,
            overlap_tokens: 0,
            markdown: true,
        },
    );
    check(&d, &chunks, &e, 30);
    for c in &chunks {
        let page = c.page.expect("PDF chunks have a page");
        let expected = d
            .pages
            .iter()
            .rev()
            .find(|(o, _)| *o <= c.start)
            .map(|p| p.1)
            .unwrap();
        assert_eq!(page, expected);
    }
    let pages: std::collections::BTreeSet<u32> = chunks.iter().filter_map(|c| c.page).collect();
    assert_eq!(pages.into_iter().collect::<Vec<_>>(), vec![1, 2, 3]);
    assert!(chunks
        .iter()
        .any(|c| c.page == Some(2) && c.text.contains("Smeaton")));
    // Other formats have no page.
    let t = load("good/river.txt");
    assert!(split(&t, &e, &ChunkConfig::default())
        .iter()
        .all(|c| c.page.is_none()));
}

#[test]
fn blank_documents_give_no_chunks() {
    let e = embedder();
    let d = doc(
        NewDocument {
            text: " \n\t ".into(),
            ..Default::default()
        },
        "blank",
    );
    assert!(split(&d, &e, &ChunkConfig::default()).is_empty());
}
