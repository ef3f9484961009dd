//! Retrieval helpers: fusion of candidate lists (weighted reciprocal rank
//! fusion, score-normalised convex combinations, a per-query adaptive
//! weight) and document-level aggregation of chunk scores.
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::types::Hit;

/// One document of a document-level result: its best chunks, best first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DocumentHit {
    pub doc_id: String,
    pub title: String,
    /// The document's score: its best chunk's.
    pub score: f32,
    pub chunks: Vec<Hit>,
}

/// Groups ranked chunk hits (best first) by document: the first `top_docs`
/// documents in order of their best chunk, each with at most `per_doc`
/// chunks in rank order.
pub fn group_by_document(hits: Vec<Hit>, top_docs: usize, per_doc: usize) -> Vec<DocumentHit> {
    let mut out: Vec<DocumentHit> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for h in hits {
        match index.get(&h.doc_id) {
            Some(&i) => {
                let d = &mut out[i];
                if d.chunks.len() < per_doc {
                    d.chunks.push(h);
                }
            }
            None if out.len() < top_docs => {
                index.insert(h.doc_id.clone(), out.len());
                out.push(DocumentHit {
                    doc_id: h.doc_id.clone(),
                    title: h.title.clone(),
                    score: h.score,
                    chunks: if per_doc > 0 { vec![h] } else { Vec::new() },
                });
            }
            None => {}
        }
    }
    out
}

/// How hybrid retrieval fuses the lexical and vector candidate lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FusionMethod {
    /// Weighted reciprocal rank fusion: Σ w / (rrf_k + rank).
    #[default]
    Rrf,
    /// Per-query min-max normalisation of each list to [0, 1], then Σ w · s.
    MinMax,
    /// Per-query z-scores of each list, then Σ w · z (a missing key takes
    /// its list's lowest z).
    ZScore,
    /// Min-max, each list's weight further scaled per query by how far its
    /// best score stands above the rest of the list (its top z-score).
    Adaptive,
}

impl std::str::FromStr for FusionMethod {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "rrf" => Ok(Self::Rrf),
            "minmax" => Ok(Self::MinMax),
            "zscore" => Ok(Self::ZScore),
            "adaptive" => Ok(Self::Adaptive),
            other => Err(format!(
                "unknown fusion method {other:?} (rrf, minmax, zscore, adaptive)"
            )),
        }
    }
}

/// Fuse weighted candidate lists (each best first) with `method`; the best
/// `limit` keys, best first. Ties are broken by the best single rank, then
/// by key. A list with weight ≤ 0 is ignored.
pub fn fuse(
    method: FusionMethod,
    lists: &[(&[(u64, f32)], f32)],
    rrf_k: f32,
    limit: usize,
) -> Vec<(u64, f32)> {
    match method {
        FusionMethod::Rrf => weighted_rrf(lists, rrf_k, limit),
        FusionMethod::MinMax => convex(lists, limit, |l| minmax(l), |_| 0.0),
        FusionMethod::ZScore => convex(
            lists,
            limit,
            |l| zscores(l),
            |z| z.iter().copied().fold(f32::INFINITY, f32::min).min(0.0),
        ),
        FusionMethod::Adaptive => {
            let scaled: Vec<(&[(u64, f32)], f32)> =
                lists.iter().map(|(l, w)| (*l, w * top_z(l))).collect();
            // With no list standing out, fall back to the configured weights.
            if scaled.iter().all(|(_, w)| *w <= 0.0) {
                convex(lists, limit, |l| minmax(l), |_| 0.0)
            } else {
                convex(&scaled, limit, |l| minmax(l), |_| 0.0)
            }
        }
    }
}

/// Scores mapped to [0, 1] by the list's min and max (all 1 when equal).
fn minmax(list: &[(u64, f32)]) -> Vec<f32> {
    let (lo, hi) = list
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), (_, s)| {
            (lo.min(*s), hi.max(*s))
        });
    list.iter()
        .map(|(_, s)| if hi > lo { (s - lo) / (hi - lo) } else { 1.0 })
        .collect()
}

/// (score − mean) / standard deviation (all 0 when the deviation is 0).
fn zscores(list: &[(u64, f32)]) -> Vec<f32> {
    let n = list.len().max(1) as f32;
    let mean = list.iter().map(|(_, s)| s).sum::<f32>() / n;
    let var = list.iter().map(|(_, s)| (s - mean).powi(2)).sum::<f32>() / n;
    let sd = var.sqrt();
    list.iter()
        .map(|(_, s)| if sd > 0.0 { (s - mean) / sd } else { 0.0 })
        .collect()
}

/// The best score's z-score within its list (0 for fewer than two scores).
fn top_z(list: &[(u64, f32)]) -> f32 {
    if list.len() < 2 {
        return 0.0;
    }
    zscores(list).first().copied().unwrap_or(0.0).max(0.0)
}

/// Σ weight × normalised score over the lists; a key missing from a list
/// gets `missing(normalised list)` from it.
fn convex(
    lists: &[(&[(u64, f32)], f32)],
    limit: usize,
    norm: impl Fn(&[(u64, f32)]) -> Vec<f32>,
    missing: impl Fn(&[f32]) -> f32,
) -> Vec<(u64, f32)> {
    let used: Vec<(&[(u64, f32)], f32, Vec<f32>)> = lists
        .iter()
        .filter(|(l, w)| *w > 0.0 && !l.is_empty())
        .map(|(l, w)| (*l, *w, norm(l)))
        .collect();
    let mut acc: HashMap<u64, (Vec<Option<f32>>, usize)> = HashMap::new();
    for (li, (list, _, normed)) in used.iter().enumerate() {
        for (rank, ((key, _), n)) in list.iter().zip(normed).enumerate() {
            let e = acc
                .entry(*key)
                .or_insert_with(|| (vec![None; used.len()], usize::MAX));
            // A key listed twice in one list keeps its best score.
            if e.0[li].is_none() {
                e.0[li] = Some(*n);
            }
            e.1 = e.1.min(rank + 1);
        }
    }
    let fill: Vec<f32> = used.iter().map(|(_, _, n)| missing(n)).collect();
    let mut fused: Vec<(u64, f32, usize)> = acc
        .into_iter()
        .map(|(key, (per, rank))| {
            let s = per
                .iter()
                .zip(&used)
                .zip(&fill)
                .map(|((v, (_, w, _)), f)| w * v.unwrap_or(*f))
                .sum();
            (key, s, rank)
        })
        .collect();
    fused.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.2.cmp(&b.2)).then(a.0.cmp(&b.0)));
    fused.truncate(limit);
    fused.into_iter().map(|(key, s, _)| (key, s)).collect()
}

/// Reciprocal rank fusion: each key scores `Σ 1 / (k + rank)` over the lists
/// it appears in (rank 1 = first). Returns the best `limit` keys, best first;
/// ties are broken by the best single rank, then by key, so the order is
/// deterministic.
pub fn rrf(lists: &[&[(u64, f32)]], k: f32, limit: usize) -> Vec<(u64, f32)> {
    let weighted: Vec<(&[(u64, f32)], f32)> = lists.iter().map(|l| (*l, 1.0)).collect();
    weighted_rrf(&weighted, k, limit)
}

/// Weighted reciprocal rank fusion: each key scores `Σ w / (k + rank)` over
/// the lists it appears in, `w` being its list's weight. With every weight 1
/// this is plain [`rrf`]. A weight below 1 lets a weaker retriever break ties
/// and rescue what the stronger one missed without outvoting it.
pub fn weighted_rrf(lists: &[(&[(u64, f32)], f32)], k: f32, limit: usize) -> Vec<(u64, f32)> {
    let mut acc: HashMap<u64, (f32, usize)> = HashMap::new();
    for (list, weight) in lists {
        if *weight <= 0.0 {
            continue;
        }
        for (i, (key, _)) in list.iter().enumerate() {
            let rank = i + 1;
            let e = acc.entry(*key).or_insert((0.0, usize::MAX));
            e.0 += weight / (k + rank as f32);
            e.1 = e.1.min(rank);
        }
    }
    let mut fused: Vec<(u64, f32, usize)> =
        acc.into_iter().map(|(key, (s, r))| (key, s, r)).collect();
    fused.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.2.cmp(&b.2)).then(a.0.cmp(&b.0)));
    fused.truncate(limit);
    fused.into_iter().map(|(key, s, _)| (key, s)).collect()
}

/// Document-level evidence from chunk scores: a document scores its best
/// chunk plus `sum_weight` × the sum of its other chunks' scores, and every
/// chunk takes its document's score. Chunks come back ordered by document
/// score, then by their own score (best chunk of a document first), then by
/// key. `doc_of` names a chunk's document; a chunk without one is its own
/// document.
pub fn aggregate_by_document<D: Eq + std::hash::Hash>(
    chunks: &[(u64, f32)],
    doc_of: impl Fn(u64) -> Option<D>,
    sum_weight: f32,
) -> Vec<(u64, f32)> {
    #[derive(PartialEq, Eq, Hash)]
    enum Group<D> {
        Doc(D),
        Lone(u64),
    }
    let groups: Vec<Group<D>> = chunks
        .iter()
        .map(|(k, _)| doc_of(*k).map_or(Group::Lone(*k), Group::Doc))
        .collect();
    // group → (best, sum)
    let mut acc: HashMap<&Group<D>, (f32, f32)> = HashMap::new();
    for (g, (_, s)) in groups.iter().zip(chunks) {
        let e = acc.entry(g).or_insert((f32::NEG_INFINITY, 0.0));
        e.0 = e.0.max(*s);
        e.1 += s;
    }
    let mut out: Vec<(u64, f32, f32)> = groups
        .iter()
        .zip(chunks)
        .map(|(g, (k, s))| {
            let (best, sum) = acc[g];
            (*k, best + sum_weight * (sum - best), *s)
        })
        .collect();
    out.sort_by(|a, b| {
        b.1.total_cmp(&a.1)
            .then(b.2.total_cmp(&a.2))
            .then(a.0.cmp(&b.0))
    });
    out.into_iter().map(|(k, doc, _)| (k, doc)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fuses_by_reciprocal_rank() {
        let a = [(1, 9.0), (2, 8.0), (3, 7.0)];
        let b = [(3, 0.9), (4, 0.8), (1, 0.7)];
        let out = rrf(&[&a, &b], 60.0, 10);
        // 1: 1/61 + 1/63; 3: 1/63 + 1/61 → tie, broken by best rank (both 1) then key.
        assert_eq!(
            out.iter().map(|x| x.0).collect::<Vec<_>>(),
            vec![1, 3, 2, 4]
        );
        let s1 = 1.0 / 61.0 + 1.0 / 63.0;
        assert!((out[0].1 - s1).abs() < 1e-6);
        assert!((out[2].1 - 1.0 / 62.0).abs() < 1e-6);
        assert!((out[3].1 - 1.0 / 62.0).abs() < 1e-6);
    }

    #[test]
    fn weights_scale_each_list() {
        let a = [(1, 9.0), (2, 8.0)];
        let b = [(2, 0.9), (3, 0.8)];
        // Equal weights: 2 is in both lists and wins.
        let eq = weighted_rrf(&[(&a, 1.0), (&b, 1.0)], 60.0, 10);
        assert_eq!(eq[0].0, 2);
        // Vector list at weight 0.5: 2 = 1/62 + 0.5/61, 1 = 1/61, 3 = 0.5/62.
        let w = weighted_rrf(&[(&a, 1.0), (&b, 0.5)], 60.0, 10);
        assert_eq!(w.iter().map(|x| x.0).collect::<Vec<_>>(), vec![2, 1, 3]);
        assert!((w[0].1 - (1.0 / 62.0 + 0.5 / 61.0)).abs() < 1e-6);
        assert!((w[2].1 - 0.5 / 62.0).abs() < 1e-6);
        // Weight 0 removes a list entirely.
        let z = weighted_rrf(&[(&a, 1.0), (&b, 0.0)], 60.0, 10);
        assert_eq!(z.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 2]);
        // Equal weights agree with plain rrf.
        assert_eq!(eq, rrf(&[&a, &b], 60.0, 10));
    }

    #[test]
    fn aggregates_chunk_scores_per_document() {
        // Chunks 1, 2 of doc "a" (3.0, 2.0); chunk 3 of doc "b" (4.0);
        // chunk 4 of doc "c" (1.0); chunk 9 has no document.
        let chunks = [(3, 4.0), (1, 3.0), (2, 2.0), (4, 1.0), (9, 0.5)];
        let doc = |k: u64| match k {
            1 | 2 => Some("a"),
            3 => Some("b"),
            4 => Some("c"),
            _ => None,
        };
        // Best chunk only: b (4) > a (3, both chunks) > c > the lone chunk.
        let max = aggregate_by_document(&chunks, doc, 0.0);
        assert_eq!(max, vec![(3, 4.0), (1, 3.0), (2, 3.0), (4, 1.0), (9, 0.5)]);
        // Half of the other chunks: a = 3 + 0.5 × 2 = 4 ties b; its best
        // chunk (3.0) loses to b's (4.0), so b still leads.
        let half = aggregate_by_document(&chunks, doc, 0.5);
        assert_eq!(half, vec![(3, 4.0), (1, 4.0), (2, 4.0), (4, 1.0), (9, 0.5)]);
        // Full sum: a = 5 overtakes b; a's best chunk comes first.
        let sum = aggregate_by_document(&chunks, doc, 1.0);
        assert_eq!(sum, vec![(1, 5.0), (2, 5.0), (3, 4.0), (4, 1.0), (9, 0.5)]);
        assert!(aggregate_by_document(&[], doc, 0.3).is_empty());
    }

    fn keys(v: &[(u64, f32)]) -> Vec<u64> {
        v.iter().map(|x| x.0).collect()
    }

    #[test]
    fn fuse_rrf_is_weighted_rrf() {
        let a = [(1, 9.0), (2, 8.0)];
        let b = [(2, 0.9), (3, 0.8)];
        let lists = [(&a[..], 1.0), (&b[..], 0.5)];
        assert_eq!(
            fuse(FusionMethod::Rrf, &lists, 60.0, 10),
            weighted_rrf(&lists, 60.0, 10)
        );
    }

    #[test]
    fn minmax_combines_normalised_scores() {
        // Lexical scores 10, 6, 2 → 1, 0.5, 0; vector 0.9, 0.7, 0.5 → 1, 0.5, 0.
        let lex = [(1, 10.0), (2, 6.0), (3, 2.0)];
        let vec = [(3, 0.9), (2, 0.7), (4, 0.5)];
        let out = fuse(FusionMethod::MinMax, &[(&lex, 1.0), (&vec, 1.0)], 60.0, 10);
        // 2: 0.5 + 0.5 = 1; 1: 1 + 0; 3: 0 + 1; 4: 0 + 0.
        // 1, 2, 3 tie at 1.0; broken by best rank (1 and 3 rank 1, 2 rank 2), then key.
        assert_eq!(keys(&out), vec![1, 3, 2, 4]);
        for (k, s) in &out {
            let want = if *k == 4 { 0.0 } else { 1.0 };
            assert!((s - want).abs() < 1e-6, "{k}: {s}");
        }
        // Vector weight 2: 3 = 2, 2 = 0.5 + 1 = 1.5, 1 = 1.
        let w = fuse(FusionMethod::MinMax, &[(&lex, 1.0), (&vec, 2.0)], 60.0, 2);
        assert_eq!(keys(&w), vec![3, 2]);
        assert!((w[1].1 - 1.5).abs() < 1e-6);
        // One list only: its own order; equal scores normalise to 1.
        let flat = [(7, 3.0), (8, 3.0)];
        let one = fuse(FusionMethod::MinMax, &[(&flat, 1.0), (&[], 1.0)], 60.0, 10);
        assert_eq!(one, vec![(7, 1.0), (8, 1.0)]);
    }

    #[test]
    fn zscore_fills_missing_with_the_lowest_z() {
        // Lexical 3, 2, 1 → z = 1.2247, 0, −1.2247; vector 1, 0 → z = 1, −1.
        let lex = [(1, 3.0), (2, 2.0), (3, 1.0)];
        let vec = [(3, 1.0), (4, 0.0)];
        let out = fuse(FusionMethod::ZScore, &[(&lex, 1.0), (&vec, 1.0)], 60.0, 10);
        let z = 1.5f32.sqrt();
        let get = |k: u64| out.iter().find(|x| x.0 == k).map(|x| x.1).unwrap();
        assert!((get(1) - (z - 1.0)).abs() < 1e-5); // missing from vector → −1
        assert!((get(2) - (0.0 - 1.0)).abs() < 1e-5);
        assert!((get(3) - (-z + 1.0)).abs() < 1e-5);
        assert!((get(4) - (-z - 1.0)).abs() < 1e-5); // missing from lexical → −z
        assert_eq!(keys(&out), vec![1, 3, 2, 4]);
    }

    #[test]
    fn adaptive_trusts_the_list_whose_top_stands_out() {
        // Lexical: flat scores, no clear winner. Vector: one clear winner.
        let lex = [(1, 5.0), (2, 4.9), (3, 4.8), (4, 4.7)];
        let vec = [(4, 0.9), (1, 0.2), (2, 0.19), (3, 0.18)];
        // Min-max with equal weights: 1 = 1 + 0.028, 4 = 0 + 1 → 1 wins.
        let mm = fuse(FusionMethod::MinMax, &[(&lex, 1.0), (&vec, 1.0)], 60.0, 10);
        assert_eq!(mm[0].0, 1);
        // Adaptive: vector's top z (≈1.73) beats lexical's (≈1.34) → 4 wins.
        let ad = fuse(
            FusionMethod::Adaptive,
            &[(&lex, 1.0), (&vec, 1.0)],
            60.0,
            10,
        );
        assert_eq!(ad[0].0, 4);
        assert_eq!(ad.len(), 4);
        // Single-item lists carry no distribution: configured weights apply.
        let one = fuse(
            FusionMethod::Adaptive,
            &[(&lex[..1], 1.0), (&vec[..1], 1.0)],
            60.0,
            10,
        );
        assert_eq!(keys(&one), vec![1, 4]);
    }

    #[test]
    fn parses_method_names() {
        assert_eq!("minmax".parse::<FusionMethod>(), Ok(FusionMethod::MinMax));
        assert!("sum".parse::<FusionMethod>().unwrap_err().contains("rrf"));
    }

    fn hit(doc: &str, chunk: &str, score: f32) -> Hit {
        Hit {
            doc_id: doc.into(),
            chunk_id: chunk.into(),
            score,
            title: format!("title of {doc}"),
            text: String::new(),
            start: 0,
            end: 0,
            page: None,
        }
    }

    #[test]
    fn groups_hits_by_document() {
        let hits = vec![
            hit("a", "a1", 0.9),
            hit("b", "b1", 0.8),
            hit("a", "a2", 0.7),
            hit("c", "c1", 0.6),
            hit("a", "a3", 0.5),
            hit("b", "b2", 0.4),
        ];
        let g = group_by_document(hits.clone(), 2, 2);
        assert_eq!(g.len(), 2);
        assert_eq!((g[0].doc_id.as_str(), g[0].score), ("a", 0.9));
        assert_eq!(g[0].title, "title of a");
        let chunks = |d: &DocumentHit| {
            d.chunks
                .iter()
                .map(|c| c.chunk_id.clone())
                .collect::<Vec<_>>()
        };
        // a keeps its two best chunks (a3 is over per_doc); c is over top_docs.
        assert_eq!(chunks(&g[0]), ["a1", "a2"]);
        assert_eq!((g[1].doc_id.as_str(), g[1].score), ("b", 0.8));
        assert_eq!(chunks(&g[1]), ["b1", "b2"]);
        let all = group_by_document(hits, 10, 1);
        assert_eq!(
            all.iter().map(|d| d.doc_id.as_str()).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert!(all.iter().all(|d| d.chunks.len() == 1));
        assert!(group_by_document(Vec::new(), 5, 3).is_empty());
    }
}
