//! Every loader on small real files (tests/fixtures/ingest/good, made by
//! hand or by scripts/make-ingest-fixtures.py with fpdf2 / python-docx), and
//! every failure on real broken files (tests/fixtures/ingest/broken).
use std::path::{Path, PathBuf};

use ragfleet_rag::ingest::{
    content_hash, document_hash, load_bytes, load_bytes_each, load_path, LoadOptions, FORMAT_KEY,
};
use ragfleet_rag::types::NewDocument;
use ragfleet_rag::RagError;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/ingest")
        .join(rel)
}

fn one(rel: &str) -> NewDocument {
    let mut docs = load_path(&fixture(rel), &LoadOptions::default());
    assert_eq!(docs.len(), 1, "{rel}: {docs:?}");
    match docs.remove(0) {
        Ok(d) => d,
        Err(e) => panic!("{rel}: {e}"),
    }
}

fn load_error(rel: &str) -> String {
    let path = fixture(rel);
    let docs = load_path(&path, &LoadOptions::default());
    assert_eq!(docs.len(), 1, "{rel}: {docs:?}");
    match &docs[0] {
        Err(e @ RagError::Load { path: p, .. }) => {
            assert_eq!(p, &path, "the error names the file");
            let msg = e.to_string();
            assert!(msg.contains(rel.rsplit('/').next().unwrap()), "{msg}");
            msg
        }
        other => panic!("{rel}: expected a load error, got {other:?}"),
    }
}

#[test]
fn plain_text_is_kept_verbatim() {
    let d = one("good/river.txt");
    let raw = std::fs::read_to_string(fixture("good/river.txt")).unwrap();
    assert_eq!(d.text, raw);
    assert_eq!(d.title.as_deref(), Some("river"));
    assert_eq!(d.metadata[FORMAT_KEY], "text");
    assert!(d.text.contains("Győr") && d.text.contains("Đerdap"));
    assert_eq!(d.id, None);
    assert!(d.source.unwrap().ends_with("river.txt"));
}

#[test]
fn markdown_keeps_its_markup_and_takes_the_h1_title() {
    let d = one("good/guide.md");
    assert_eq!(d.title.as_deref(), Some("Sourdough Baking Guide"));
    assert_eq!(d.metadata[FORMAT_KEY], "markdown");
    assert!(d.text.contains("## Keeping a starter"));
    assert!(d.text.contains("```\nflour      500 g"));
}

#[test]
fn html_drops_scripts_styles_and_takes_the_title() {
    let d = one("good/museum.html");
    assert_eq!(
        d.title.as_deref(),
        Some("The Natural History Museum & Its Whale")
    );
    assert_eq!(d.metadata[FORMAT_KEY], "html");
    for gone in [
        "trackingMarker",
        "font-family",
        "hidden-style-marker",
        "json-ld-marker",
        "enable JavaScript",
        "<p>",
    ] {
        assert!(!d.text.contains(gone), "{gone:?} leaked into {:?}", d.text);
    }
    assert!(d.text.contains("Hope the Blue Whale"));
    assert!(d
        .text
        .contains("She is 25.2 metres long and was nicknamed Hope."));
    assert!(d.text.contains("museum's Hintze Hall"));
    // Paragraphs and list items stay apart.
    assert!(d
        .text
        .contains("Weight of the skeleton: 4.5 tonnes\nBones: 221"));
    assert!(d.text.contains("Hope.\n\nShe replaced"));
}

#[test]
fn pdf_text_per_page_with_page_numbers() {
    let d = one("good/lighthouse.pdf");
    assert_eq!(d.title.as_deref(), Some("Eddystone Lighthouse"));
    assert_eq!(d.metadata[FORMAT_KEY], "pdf");
    assert_eq!(d.metadata["page_count"], 3);
    assert_eq!(d.pages.len(), 3, "{:?}", d.pages);
    assert_eq!(d.pages[0], (0, 1));
    let chars: Vec<char> = d.text.chars().collect();
    let page_text = |i: usize| -> String {
        let start = d.pages[i].0;
        let end = d.pages.get(i + 1).map_or(chars.len(), |p| p.0);
        chars[start..end].iter().collect()
    };
    assert!(page_text(0).contains("Winstanley"), "{}", page_text(0));
    assert!(page_text(1).contains("Smeaton"), "{}", page_text(1));
    assert!(
        page_text(2).contains("automated in 1982"),
        "{}",
        page_text(2)
    );
    assert!(!page_text(0).contains("Smeaton"));
    assert_eq!(d.pages[1].1, 2);
    assert_eq!(d.pages[2].1, 3);
}

#[test]
fn docx_paragraphs_tables_and_title() {
    let d = one("good/bees.docx");
    assert_eq!(d.title.as_deref(), Some("Field Notes on Bees"));
    assert_eq!(d.metadata[FORMAT_KEY], "docx");
    assert!(d.text.contains("waggle dance"));
    // Runs of one paragraph join without a break (bold run in the middle).
    assert!(d
        .text
        .contains("A colony in summer holds forty thousand workers and a single queen."));
    assert!(d.text.contains("Swarming\n\nIn late spring"));
    assert!(d
        .text
        .contains("Caste | Lifespan\nWorker | Six weeks in summer"));
}

#[test]
fn csv_rows_are_rendered_with_their_headers() {
    let d = one("good/planets.csv");
    assert_eq!(d.title.as_deref(), Some("planets"));
    let lines: Vec<&str> = d.text.lines().collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(
        lines[0],
        "name: Mercury; type: terrestrial; moons: 0; notes: Closest to the Sun"
    );
    assert_eq!(
        lines[3],
        "name: Jupiter; type: gas giant; moons: 95; notes: Great Red Spot, a storm larger than Earth"
    );
}

#[test]
fn beir_jsonl_gives_one_document_per_line_with_ids_verbatim() {
    let docs: Vec<NewDocument> = load_path(&fixture("good/corpus.jsonl"), &LoadOptions::default())
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(docs.len(), 3);
    assert_eq!(docs[0].id.as_deref(), Some("doc-ada"));
    assert_eq!(docs[0].title.as_deref(), Some("Ada Lovelace"));
    assert_eq!(docs[1].id.as_deref(), Some("Super_Bowl_50#0"));
    assert!(docs[1].text.starts_with("Super Bowl 50 was played"));
    assert_eq!(docs[2].id.as_deref(), Some("42"));
    assert_eq!(docs[2].title, None, "an empty BEIR title is no title");
    assert!(docs.iter().all(|d| d.metadata[FORMAT_KEY] == "jsonl"));
}

#[test]
fn jsonl_bad_lines_are_named_and_the_others_still_load() {
    let path = fixture("broken/bad-line.jsonl");
    let results = load_path(&path, &LoadOptions::default());
    assert_eq!(results.len(), 5, "{results:?}");
    let ok: Vec<&NewDocument> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(ok.len(), 3);
    assert_eq!(ok[0].id.as_deref(), Some("ok-1"));
    assert_eq!(ok[1].id.as_deref(), Some("ok-3"));
    assert_eq!(ok[2].id, None, "a line without _id still loads");
    let errs: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .map(|e| e.to_string())
        .collect();
    assert_eq!(errs.len(), 2);
    assert!(
        errs[0].contains("bad-line.jsonl")
            && errs[0].contains("line 2:")
            && errs[0].contains("invalid JSON"),
        "{}",
        errs[0]
    );
    assert!(
        errs[1].contains("line 5:") && errs[1].contains("missing `text`"),
        "{}",
        errs[1]
    );
}

#[test]
fn broken_files_give_errors_naming_file_and_reason() {
    assert!(load_error("broken/empty.txt").contains("empty file"));
    let e = load_error("broken/truncated.pdf");
    assert!(e.contains("PDF"), "{e}");
    let e = load_error("broken/encrypted.pdf");
    assert!(e.contains("encrypted"), "{e}");
    let e = load_error("broken/not-a-zip.docx");
    assert!(e.contains("not a DOCX file") && e.contains("zip"), "{e}");
    let e = load_error("broken/picture.xyz");
    assert!(
        e.contains("unsupported format") && e.contains(".xyz"),
        "{e}"
    );
}

#[test]
fn a_missing_path_is_an_error_not_a_panic() {
    let e = load_error("good/no-such-file.txt");
    assert!(e.contains("no such file"), "{e}");
}

#[test]
fn a_directory_loads_every_file_and_reports_every_failure() {
    let results = load_path(&fixture(""), &LoadOptions::default());
    let ok: Vec<&NewDocument> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    let errs: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .map(|e| e.to_string())
        .collect();
    // good/: 6 single-document files + 3 JSONL docs; broken/: 3 good JSONL lines.
    assert_eq!(ok.len(), 12, "{ok:#?}");
    // broken/: 2 bad JSONL lines + 5 broken files.
    assert_eq!(errs.len(), 7, "{errs:#?}");
    for name in [
        "empty.txt",
        "truncated.pdf",
        "encrypted.pdf",
        "not-a-zip.docx",
        "picture.xyz",
    ] {
        assert!(
            errs.iter().any(|e| e.contains(name)),
            "{name} missing in {errs:#?}"
        );
    }
    for title in [
        "river",
        "Sourdough Baking Guide",
        "Eddystone Lighthouse",
        "Field Notes on Bees",
        "planets",
    ] {
        assert!(
            ok.iter().any(|d| d.title.as_deref() == Some(title)),
            "{title}"
        );
    }
}

#[test]
fn caller_options_are_applied() {
    let mut metadata = ragfleet_rag::types::Metadata::new();
    metadata.insert("team".into(), "docs".into());
    let opts = LoadOptions {
        collection: Some("handbook".into()),
        id: Some("my-id/42".into()),
        title: Some("Custom".into()),
        metadata,
        source: Some("manuals/guide.md".into()),
    };
    let d = load_path(&fixture("good/guide.md"), &opts)
        .remove(0)
        .unwrap();
    assert_eq!(d.id.as_deref(), Some("my-id/42"));
    assert_eq!(d.title.as_deref(), Some("Custom"));
    assert_eq!(d.collection.as_deref(), Some("handbook"));
    assert_eq!(d.source.as_deref(), Some("manuals/guide.md"));
    assert_eq!(d.metadata["team"], "docs");
    assert_eq!(d.metadata[FORMAT_KEY], "markdown");
    // An id for a multi-document load is refused (it would be shared).
    let r = load_path(&fixture("good/corpus.jsonl"), &opts);
    assert_eq!(r.len(), 1);
    assert!(r[0]
        .as_ref()
        .unwrap_err()
        .to_string()
        .contains("id cannot be given"));
    let r = load_path(&fixture("good"), &opts);
    assert_eq!(r.len(), 1);
    assert!(r[0].is_err());
}

#[test]
fn uploads_pick_the_format_from_content_type_or_name() {
    let html = std::fs::read(fixture("good/museum.html")).unwrap();
    // Content type wins over a misleading name.
    let docs = load_bytes(
        "upload.bin",
        Some("text/html; charset=utf-8"),
        &html,
        &LoadOptions::default(),
    )
    .unwrap();
    assert_eq!(docs.len(), 1);
    assert!(!docs[0].text.contains("trackingMarker"));
    assert_eq!(docs[0].source.as_deref(), Some("upload.bin"));
    // Generic content type: the extension decides.
    let pdf = std::fs::read(fixture("good/lighthouse.pdf")).unwrap();
    let docs = load_bytes(
        "l.pdf",
        Some("application/octet-stream"),
        &pdf,
        &LoadOptions::default(),
    )
    .unwrap();
    assert_eq!(docs[0].pages.len(), 3);
    // Unknown: an error naming the upload.
    let e = load_bytes("x.bin", None, b"hello", &LoadOptions::default()).unwrap_err();
    assert!(
        e.to_string().contains("x.bin") && e.to_string().contains("unsupported"),
        "{e}"
    );
    // JSON Lines upload with a bad line: all-or-nothing for load_bytes,
    // per line for load_bytes_each.
    let jsonl = std::fs::read(fixture("broken/bad-line.jsonl")).unwrap();
    let e = load_bytes("c.jsonl", None, &jsonl, &LoadOptions::default()).unwrap_err();
    assert!(e.to_string().contains("c.jsonl: line 2"), "{e}");
    let each = load_bytes_each("c.jsonl", None, &jsonl, &LoadOptions::default());
    assert_eq!(each.iter().filter(|r| r.is_ok()).count(), 3);
    // Invalid UTF-8 text.
    let e = load_bytes(
        "a.txt",
        None,
        &[0x66, 0x6f, 0xff, 0xfe, 0x20],
        &LoadOptions::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("not UTF-8"), "{e}");
    // Whitespace only.
    let e = load_bytes("a.md", None, b" \n\n\t", &LoadOptions::default()).unwrap_err();
    assert!(e.to_string().contains("no text"), "{e}");
}

#[test]
fn hashes_see_content_changes_only() {
    let a = one("good/river.txt");
    let mut b = a.clone();
    b.source = Some("elsewhere.txt".into());
    b.id = Some("other".into());
    assert_eq!(document_hash(&a), document_hash(&b));
    b.text.push('!');
    assert_ne!(document_hash(&a), document_hash(&b));
    let mut c = a.clone();
    c.metadata.insert("k".into(), 1.into());
    assert_ne!(document_hash(&a), document_hash(&c));
    assert_eq!(
        content_hash("abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}
