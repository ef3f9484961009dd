//! Evaluation: retrieval quality on any BEIR-layout dataset (nDCG@10,
//! Recall@10/100, MRR@10) and answer quality on SQuAD v1.1 (exact match and
//! token F1 with the official normalisation).
//!
//! - [`metrics`]: the metric functions, per query and averaged over a run.
//! - [`bm25`]: a plain whole-document BM25 (the evaluator's baseline row),
//!   independent of the engine's tantivy index.
//! - [`data`]: readers for BEIR directories and SQuAD v1.1 JSON files; every
//!   error names the file and line.
//!
//! `ragfleet eval` (crates/cli) drives these against a fresh [`crate::Engine`].
pub mod bm25;
pub mod data;
pub mod metrics;

pub use bm25::{simple_tokens, Bm25Baseline};
pub use data::{read_beir, read_squad, BeirDataset, BeirQuery, Qrels, SquadQuestion};
pub use metrics::{
    dedup_ranked, evaluate_run, exact_match, f1_score, max_over_gold, mrr_at_k, ndcg_at_k,
    normalize_answer, recall_at_k, AnswerScores, RetrievalScores,
};
