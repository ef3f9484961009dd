//! Retrieval modes on a small real corpus with the real embedder: hybrid is
//! reciprocal rank fusion of the lexical and vector lists; filters.
mod engine_support;

use std::collections::HashMap;

use engine_support::*;
use ragfleet_rag::types::{Hit, NewDocument, RetrievalMode};
use ragfleet_rag::SearchQuery;
use serde_json::json;

fn q(text: &str, mode: RetrievalMode, top_k: usize) -> SearchQuery {
    SearchQuery {
        top_k,
        mode,
        ..SearchQuery::new(text)
    }
}

/// Mean reciprocal rank of the relevant document within the top 5.
fn mrr(results: &[(Vec<Hit>, String)]) -> f64 {
    results
        .iter()
        .map(|(hits, rel)| {
            hits.iter()
                .position(|h| &h.doc_id == rel)
                .map_or(0.0, |p| 1.0 / (p + 1) as f64)
        })
        .sum::<f64>()
        / results.len() as f64
}

#[tokio::test]
async fn hybrid_fuses_lexical_and_vector_ranks_on_squad_paragraphs() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(config(dir.path())).await;
    let corpus = squad_corpus(30);
    assert_eq!(corpus.docs.len(), 30);
    assert!(corpus.queries.len() >= 25);
    for r in engine.ingest_batch(corpus.docs.clone()).await {
        r.unwrap();
    }
    let candidates = engine.config().retrieval.candidates;
    let rrf_k = engine.config().retrieval.rrf_k;
    let (wl, wv) = (
        engine.config().retrieval.lexical_weight,
        engine.config().retrieval.vector_weight,
    );
    let mut per_mode: HashMap<RetrievalMode, Vec<(Vec<Hit>, String)>> = HashMap::new();
    for (text, rel) in &corpus.queries {
        let lex = engine
            .search(q(text, RetrievalMode::Lexical, candidates))
            .await
            .unwrap();
        let vec = engine
            .search(q(text, RetrievalMode::Vector, candidates))
            .await
            .unwrap();
        let hyb = engine
            .search(q(text, RetrievalMode::Hybrid, 5))
            .await
            .unwrap();
        // Every hybrid score is Σ w/(k + rank) over the two candidate lists,
        // and the hybrid list is ordered by it.
        for h in &hyb {
            let rank = |l: &[Hit]| {
                l.iter()
                    .position(|x| x.chunk_id == h.chunk_id)
                    .map(|p| 1.0 / (rrf_k + (p + 1) as f32))
            };
            let expected = wl * rank(&lex).unwrap_or(0.0) + wv * rank(&vec).unwrap_or(0.0);
            assert!(
                (h.score - expected).abs() < 1e-6,
                "{} vs {expected}",
                h.score
            );
        }
        assert!(hyb.windows(2).all(|w| w[0].score >= w[1].score));
        // Nothing scores better than the hybrid top 1.
        let mut all: Vec<&str> = lex
            .iter()
            .chain(&vec)
            .map(|h| h.chunk_id.as_str())
            .collect();
        all.sort();
        all.dedup();
        for c in all {
            let rank = |l: &[Hit]| {
                l.iter()
                    .position(|x| x.chunk_id == c)
                    .map(|p| 1.0 / (rrf_k + (p + 1) as f32))
            };
            let s = wl * rank(&lex).unwrap_or(0.0) + wv * rank(&vec).unwrap_or(0.0);
            assert!(s <= hyb[0].score + 1e-6);
        }
        // Lexical scores are BM25 (descending), vector scores cosine in [-1, 1].
        assert!(lex.windows(2).all(|w| w[0].score >= w[1].score));
        assert!(vec
            .iter()
            .all(|h| h.score <= 1.0 + 1e-5 && h.score >= -1.0 - 1e-5));
        per_mode
            .entry(RetrievalMode::Lexical)
            .or_default()
            .push((lex.into_iter().take(5).collect(), rel.clone()));
        per_mode
            .entry(RetrievalMode::Vector)
            .or_default()
            .push((vec.into_iter().take(5).collect(), rel.clone()));
        per_mode
            .entry(RetrievalMode::Hybrid)
            .or_default()
            .push((hyb, rel.clone()));
    }
    let m: HashMap<_, f64> = per_mode.iter().map(|(k, v)| (*k, mrr(v))).collect();
    eprintln!("MRR@5 on {} queries: {m:?}", corpus.queries.len());
    // Each question is answered by one of 30 paragraphs from different articles:
    // every mode finds most of them; fusion does not lose to the weaker mode.
    assert!(m[&RetrievalMode::Hybrid] >= 0.8, "{m:?}");
    assert!(
        m[&RetrievalMode::Hybrid] >= m[&RetrievalMode::Lexical].min(m[&RetrievalMode::Vector]),
        "{m:?}"
    );
    let first = &per_mode[&RetrievalMode::Hybrid][0].0[0];
    assert!(!first.title.is_empty() && !first.text.is_empty() && first.end > first.start);
}

#[tokio::test]
async fn collection_and_metadata_filters_apply_to_every_mode() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(config(dir.path())).await;
    let mk = |id: &str, coll: &str, lang: &str, text: &str| NewDocument {
        id: Some(id.into()),
        title: None,
        text: text.into(),
        collection: Some(coll.into()),
        metadata: json!({"lang": lang, "year": 2020})
            .as_object()
            .cloned()
            .unwrap(),
        ..Default::default()
    };
    for r in engine
        .ingest_batch(vec![
            mk(
                "en-1",
                "a",
                "en",
                "The rocket launched from Florida carrying satellites into orbit.",
            ),
            mk(
                "en-2",
                "b",
                "en",
                "The rocket engine test at the launch site was a success.",
            ),
            mk(
                "de-1",
                "a",
                "de",
                "Die Rakete startete mit Satelliten in die Umlaufbahn, rocket launch.",
            ),
        ])
        .await
    {
        r.unwrap();
    }
    for mode in [
        RetrievalMode::Lexical,
        RetrievalMode::Vector,
        RetrievalMode::Hybrid,
    ] {
        let mut sq = q("rocket launch", mode, 10);
        sq.collection = Some("a".into());
        let hits = engine.search(sq.clone()).await.unwrap();
        let mut ids: Vec<_> = hits.iter().map(|h| h.doc_id.as_str()).collect();
        ids.sort();
        assert_eq!(ids, ["de-1", "en-1"], "{mode:?}");
        sq.filter = json!({"lang": "en"}).as_object().cloned().unwrap();
        let hits = engine.search(sq.clone()).await.unwrap();
        assert_eq!(
            hits.iter().map(|h| h.doc_id.as_str()).collect::<Vec<_>>(),
            ["en-1"],
            "{mode:?}"
        );
        sq.collection = None;
        let hits = engine.search(sq.clone()).await.unwrap();
        let mut ids: Vec<_> = hits.iter().map(|h| h.doc_id.as_str()).collect();
        ids.sort();
        assert_eq!(ids, ["en-1", "en-2"], "{mode:?}");
        sq.filter = json!({"year": 1999}).as_object().cloned().unwrap();
        assert!(engine.search(sq).await.unwrap().is_empty(), "{mode:?}");
    }
    // Bad input is a clear error.
    assert!(engine
        .search(q("  ", RetrievalMode::Hybrid, 5))
        .await
        .is_err());
    assert!(engine
        .search(q("rocket", RetrievalMode::Hybrid, 0))
        .await
        .is_err());
}
