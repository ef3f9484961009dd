//! The tantivy BM25 index: stemming, title + text, filters, delete, reopen.
use std::collections::HashSet;

use ragfleet_rag::index::lexical::{LexicalDoc, LexicalIndex};

fn d<'a>(
    key: u64,
    doc_id: &'a str,
    collection: &'a str,
    title: &'a str,
    text: &'a str,
) -> LexicalDoc<'a> {
    LexicalDoc {
        key,
        doc_id,
        collection,
        title,
        text,
    }
}

#[test]
fn stems_filters_deletes_and_reopens_without_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let before;
    {
        let idx = LexicalIndex::open(dir.path()).unwrap();
        assert_eq!(idx.applied_seq(), 0);
        idx.add(&[
            d(
                1,
                "a",
                "news",
                "Running shoes",
                "A review of lightweight trainers.",
            ),
            d(
                2,
                "a",
                "news",
                "",
                "The marathon runner ran forty kilometres.",
            ),
            d(3, "b", "docs", "Cooking", "Boil the pasta for ten minutes."),
            d(
                4,
                "c",
                "docs",
                "Runs",
                "Database migrations run at startup.",
            ),
        ])
        .unwrap();
        idx.commit(3).unwrap();
        assert_eq!(idx.len(), 4);
        // "runs" and "running" stem to "run": matches text and title.
        let hits = idx.search("runs", 10, None, None).unwrap();
        let keys: HashSet<u64> = hits.iter().map(|h| h.0).collect();
        assert_eq!(keys, HashSet::from([1, 4]), "{hits:?}");
        // Title matches weigh more than text matches of the same term.
        let hits = idx.search("cooking pasta", 10, None, None).unwrap();
        assert_eq!(hits[0].0, 3);
        // Collection filter.
        let hits = idx
            .search("running runs runner", 10, Some("docs"), None)
            .unwrap();
        assert_eq!(hits.iter().map(|h| h.0).collect::<Vec<_>>(), vec![4]);
        // Document filter.
        let only_a = HashSet::from(["a".to_string()]);
        let hits = idx.search("running runs", 10, None, Some(&only_a)).unwrap();
        assert!(hits.iter().all(|h| h.0 == 1 || h.0 == 2), "{hits:?}");
        assert!(idx
            .search("runs", 10, None, Some(&HashSet::new()))
            .unwrap()
            .is_empty());
        // Query syntax errors are lenient, never a failure.
        assert!(idx.search("pasta AND (", 10, None, None).is_ok());
        assert!(idx.search("   ", 10, None, None).unwrap().is_empty());
        // Delete a document's chunks.
        idx.delete_document("a");
        idx.commit(4).unwrap();
        assert_eq!(idx.len(), 2);
        assert!(idx
            .search("trainers marathon", 10, None, None)
            .unwrap()
            .is_empty());
        before = idx.search("migrations pasta", 10, None, None).unwrap();
        assert_eq!(before.len(), 2);
    }
    let idx = LexicalIndex::open(dir.path()).unwrap();
    assert_eq!(
        idx.applied_seq(),
        4,
        "the applied sequence is the commit payload"
    );
    assert_eq!(idx.len(), 2);
    assert_eq!(
        idx.search("migrations pasta", 10, None, None).unwrap(),
        before
    );
}
