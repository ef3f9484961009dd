//! Metric functions.
//!
//! Retrieval metrics follow BEIR (which scores with pytrec_eval / trec_eval):
//! a document is relevant when its qrels grade is > 0; nDCG uses the grade as
//! the gain and `log2(rank + 1)` as the discount, normalised by the ideal
//! ordering of the query's judged documents; Recall@k is the share of the
//! query's relevant documents found in the top k; MRR@k is the reciprocal rank
//! of the first relevant document in the top k (0 if none).
//!
//! Answer metrics follow the official SQuAD v1.1 script: answers are
//! normalised (lower-case, ASCII punctuation removed, articles a/an/the
//! removed, whitespace collapsed); exact match compares the normalised
//! strings; F1 is over the multiset of normalised tokens; both take the
//! maximum over the gold answers.
use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

/// Relevance grades of one query: doc id → grade.
pub type Judgements = HashMap<String, i32>;

/// nDCG@k of a ranked list of doc ids (best first; duplicates are the
/// caller's business: pass each doc once).
pub fn ndcg_at_k(ranked: &[&str], judged: &Judgements, k: usize) -> f64 {
    let dcg: f64 = ranked
        .iter()
        .take(k)
        .enumerate()
        .map(|(i, d)| {
            let g = judged.get(*d).copied().unwrap_or(0).max(0) as f64;
            g / ((i + 2) as f64).log2()
        })
        .sum();
    let mut ideal: Vec<i32> = judged.values().copied().filter(|&g| g > 0).collect();
    ideal.sort_unstable_by(|a, b| b.cmp(a));
    let idcg: f64 = ideal
        .iter()
        .take(k)
        .enumerate()
        .map(|(i, &g)| g as f64 / ((i + 2) as f64).log2())
        .sum();
    if idcg == 0.0 {
        0.0
    } else {
        dcg / idcg
    }
}

/// Recall@k: relevant docs in the top k / relevant docs judged.
pub fn recall_at_k(ranked: &[&str], judged: &Judgements, k: usize) -> f64 {
    let relevant = judged.values().filter(|&&g| g > 0).count();
    if relevant == 0 {
        return 0.0;
    }
    let found = ranked
        .iter()
        .take(k)
        .filter(|d| judged.get(**d).is_some_and(|&g| g > 0))
        .count();
    found as f64 / relevant as f64
}

/// MRR@k: 1 / rank of the first relevant doc within the top k, else 0.
pub fn mrr_at_k(ranked: &[&str], judged: &Judgements, k: usize) -> f64 {
    ranked
        .iter()
        .take(k)
        .position(|d| judged.get(*d).is_some_and(|&g| g > 0))
        .map_or(0.0, |i| 1.0 / (i + 1) as f64)
}

/// Mean retrieval metrics over the queries of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RetrievalScores {
    pub ndcg_at_10: f64,
    pub recall_at_10: f64,
    pub recall_at_100: f64,
    pub mrr_at_10: f64,
    /// Queries averaged over (those with at least one relevant judgement).
    pub queries: usize,
}

/// Average the metrics over every query that has at least one relevant
/// judgement. `run` maps a query id to its ranked doc ids (best first, each
/// doc once); a judged query missing from `run` counts as an empty ranking.
pub fn evaluate_run(
    run: &HashMap<String, Vec<String>>,
    qrels: &HashMap<String, Judgements>,
) -> RetrievalScores {
    let mut s = RetrievalScores::default();
    for (q, judged) in qrels {
        if !judged.values().any(|&g| g > 0) {
            continue;
        }
        let ranked: Vec<&str> = run
            .get(q)
            .map(|v| v.iter().map(String::as_str).collect())
            .unwrap_or_default();
        s.ndcg_at_10 += ndcg_at_k(&ranked, judged, 10);
        s.recall_at_10 += recall_at_k(&ranked, judged, 10);
        s.recall_at_100 += recall_at_k(&ranked, judged, 100);
        s.mrr_at_10 += mrr_at_k(&ranked, judged, 10);
        s.queries += 1;
    }
    if s.queries > 0 {
        let n = s.queries as f64;
        s.ndcg_at_10 /= n;
        s.recall_at_10 /= n;
        s.recall_at_100 /= n;
        s.mrr_at_10 /= n;
    }
    s
}

static ARTICLES: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\b(a|an|the)\b").expect("constant regex"));

/// SQuAD v1.1 `normalize_answer`: lower-case, remove ASCII punctuation,
/// remove the articles a/an/the, collapse whitespace.
pub fn normalize_answer(s: &str) -> String {
    let lower = s.to_lowercase();
    let no_punc: String = lower
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect();
    let no_articles = ARTICLES.replace_all(&no_punc, " ");
    no_articles.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// SQuAD v1.1 exact match of one prediction against one gold answer (0 or 1).
pub fn exact_match(prediction: &str, gold: &str) -> f64 {
    f64::from(u8::from(
        normalize_answer(prediction) == normalize_answer(gold),
    ))
}

/// SQuAD v1.1 token F1 of one prediction against one gold answer.
pub fn f1_score(prediction: &str, gold: &str) -> f64 {
    let p = normalize_answer(prediction);
    let g = normalize_answer(gold);
    let p: Vec<&str> = p.split_whitespace().collect();
    let g: Vec<&str> = g.split_whitespace().collect();
    let mut counts: HashMap<&str, i64> = HashMap::new();
    for t in &g {
        *counts.entry(t).or_default() += 1;
    }
    let mut same = 0usize;
    for t in &p {
        if let Some(c) = counts.get_mut(t) {
            if *c > 0 {
                *c -= 1;
                same += 1;
            }
        }
    }
    if same == 0 {
        return 0.0;
    }
    let precision = same as f64 / p.len() as f64;
    let recall = same as f64 / g.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// The best score of `prediction` over the gold answers (0 with none).
pub fn max_over_gold(metric: fn(&str, &str) -> f64, prediction: &str, golds: &[String]) -> f64 {
    golds
        .iter()
        .map(|g| metric(prediction, g))
        .fold(0.0, f64::max)
}

/// Mean answer metrics over a sample of questions, in percent like the
/// official script.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct AnswerScores {
    pub exact_match: f64,
    pub f1: f64,
    pub questions: usize,
}

impl AnswerScores {
    /// Score `(prediction, gold answers)` pairs.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a [String])>) -> Self {
        let mut s = AnswerScores::default();
        for (pred, golds) in pairs {
            s.exact_match += max_over_gold(exact_match, pred, golds);
            s.f1 += max_over_gold(f1_score, pred, golds);
            s.questions += 1;
        }
        if s.questions > 0 {
            s.exact_match *= 100.0 / s.questions as f64;
            s.f1 *= 100.0 / s.questions as f64;
        }
        s
    }
}

/// Distinct doc ids in rank order (first occurrence wins): turns chunk-level
/// hits into the doc-level ranking BEIR scores.
pub fn dedup_ranked<I, S>(ids: I) -> Vec<String>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for id in ids {
        let id: String = id.into();
        if seen.insert(id.clone()) {
            out.push(id);
        }
    }
    out
}
