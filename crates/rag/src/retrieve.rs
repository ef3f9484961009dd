//! Retrieval helpers: reciprocal rank fusion of candidate lists.
use std::collections::HashMap;

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
}
