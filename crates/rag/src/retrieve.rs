//! Retrieval helpers: reciprocal rank fusion of candidate lists.
use std::collections::HashMap;

/// Reciprocal rank fusion: each key scores `Σ 1 / (k + rank)` over the lists
/// it appears in (rank 1 = first). Returns the best `limit` keys, best first;
/// ties are broken by the best single rank, then by key, so the order is
/// deterministic.
pub fn rrf(lists: &[&[(u64, f32)]], k: f32, limit: usize) -> Vec<(u64, f32)> {
    let mut acc: HashMap<u64, (f32, usize)> = HashMap::new();
    for list in lists {
        for (i, (key, _)) in list.iter().enumerate() {
            let rank = i + 1;
            let e = acc.entry(*key).or_insert((0.0, usize::MAX));
            e.0 += 1.0 / (k + rank as f32);
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
}
