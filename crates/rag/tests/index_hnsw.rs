//! HNSW against exact search: recall, deletes, persistence.
use std::collections::HashSet;

use ragfleet_rag::index::flat::FlatIndex;
use ragfleet_rag::index::hnsw::{HnswIndex, HnswParams};
use ragfleet_rag::index::VectorIndex;

/// Deterministic pseudo-random numbers (xorshift64*), no test dependency.
struct Rng(u64);
impl Rng {
    fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn gauss(&mut self) -> f32 {
        (0..6).map(|_| self.next_f32()).sum::<f32>() / 2.0
    }
}

fn normalize(mut v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= n);
    v
}

fn random_vectors(n: usize, dim: usize, seed: u64) -> Vec<(u64, Vec<f32>)> {
    let mut r = Rng(seed);
    (0..n)
        .map(|i| {
            (
                i as u64 + 1,
                normalize((0..dim).map(|_| r.gauss()).collect()),
            )
        })
        .collect()
}

/// `clusters` centres, points spread tightly around them (the hard case for
/// graph indexes: many near-ties inside a cluster).
fn clustered_vectors(n: usize, dim: usize, clusters: usize, seed: u64) -> Vec<(u64, Vec<f32>)> {
    let mut r = Rng(seed);
    let centres: Vec<Vec<f32>> = (0..clusters)
        .map(|_| normalize((0..dim).map(|_| r.gauss()).collect()))
        .collect();
    (0..n)
        .map(|i| {
            let c = &centres[i % clusters];
            let v = c.iter().map(|x| x + 0.15 * r.gauss()).collect();
            (i as u64 + 1, normalize(v))
        })
        .collect()
}

fn recall_at_10(
    hnsw: &HnswIndex,
    exact: &FlatIndex,
    queries: &[Vec<f32>],
    filter: Option<&(dyn Fn(u64) -> bool + Sync)>,
) -> f64 {
    let mut found = 0usize;
    let mut total = 0usize;
    for q in queries {
        let truth: HashSet<u64> = exact
            .search(q, 10, filter)
            .into_iter()
            .map(|x| x.0)
            .collect();
        let got: HashSet<u64> = hnsw
            .search(q, 10, filter)
            .into_iter()
            .map(|x| x.0)
            .collect();
        total += truth.len();
        found += truth.intersection(&got).count();
    }
    found as f64 / total as f64
}

fn build(items: &[(u64, Vec<f32>)], dim: usize) -> (HnswIndex, FlatIndex) {
    let mut h = HnswIndex::new(dim, HnswParams::default());
    let mut f = FlatIndex::new(dim);
    // Incremental adds in batches, like ingestion.
    for part in items.chunks(500) {
        h.add(part).unwrap();
        f.add(part).unwrap();
    }
    (h, f)
}

#[test]
fn recall_on_random_vectors() {
    let dim = 64;
    let items = random_vectors(4000, dim, 7);
    let (h, f) = build(&items, dim);
    let queries: Vec<Vec<f32>> = random_vectors(200, dim, 99)
        .into_iter()
        .map(|x| x.1)
        .collect();
    let r = recall_at_10(&h, &f, &queries, None);
    assert!(r >= 0.98, "recall@10 = {r}");
    // Scores are the true dot products, best first.
    let q = &queries[0];
    let res = h.search(q, 10, None);
    assert_eq!(res.len(), 10);
    for w in res.windows(2) {
        assert!(w[0].1 >= w[1].1);
    }
    let v = &items[(res[0].0 - 1) as usize].1;
    let d: f32 = q.iter().zip(v).map(|(a, b)| a * b).sum();
    assert!((d - res[0].1).abs() < 1e-5);
}

#[test]
fn recall_on_clustered_vectors_and_with_a_filter() {
    let dim = 48;
    let items = clustered_vectors(5000, dim, 25, 3);
    let (h, f) = build(&items, dim);
    // Queries near the data: perturbed data points.
    let mut r = Rng(5);
    let queries: Vec<Vec<f32>> = items
        .iter()
        .step_by(37)
        .take(150)
        .map(|(_, v)| normalize(v.iter().map(|x| x + 0.1 * r.gauss()).collect()))
        .collect();
    let rec = recall_at_10(&h, &f, &queries, None);
    assert!(rec >= 0.98, "recall@10 = {rec}");
    // A filter keeping one key in three.
    let keep: &(dyn Fn(u64) -> bool + Sync) = &|k: u64| k.is_multiple_of(3);
    let rec = recall_at_10(&h, &f, &queries, Some(keep));
    assert!(rec >= 0.98, "filtered recall@10 = {rec}");
    for q in &queries[..10] {
        assert!(h.search(q, 10, Some(keep)).iter().all(|(k, _)| k % 3 == 0));
    }
}

#[test]
fn deleted_vectors_are_never_returned_and_recall_holds() {
    let dim = 32;
    let items = random_vectors(3000, dim, 11);
    let (mut h, mut f) = build(&items, dim);
    // Delete 20% (tombstones), then 40% more (forces a rebuild).
    let first: Vec<u64> = (1..=3000).filter(|k| k % 5 == 0).collect();
    assert_eq!(h.remove(&first), first.len());
    assert_eq!(h.remove(&first), 0, "removing twice is a no-op");
    f.remove(&first);
    assert_eq!(h.len(), 2400);
    let queries: Vec<Vec<f32>> = random_vectors(100, dim, 12)
        .into_iter()
        .map(|x| x.1)
        .collect();
    let gone: HashSet<u64> = first.iter().copied().collect();
    for q in &queries {
        assert!(h.search(q, 10, None).iter().all(|(k, _)| !gone.contains(k)));
    }
    assert!(recall_at_10(&h, &f, &queries, None) >= 0.98);
    let second: Vec<u64> = (1..=3000).filter(|k| k % 5 == 1 || k % 5 == 2).collect();
    h.remove(&second);
    f.remove(&second);
    assert_eq!(h.len(), 1200);
    assert!(recall_at_10(&h, &f, &queries, None) >= 0.98);
    // Re-adding a deleted key brings it back; adding an existing key replaces it.
    let back = items[4].clone(); // key 5
    h.add(std::slice::from_ref(&back)).unwrap();
    assert_eq!(h.search(&back.1, 1, None)[0].0, 5);
    let moved = (3u64, items[9].1.clone());
    h.add(std::slice::from_ref(&moved)).unwrap();
    assert_eq!(h.len(), 1201);
    let top = h.search(&items[9].1, 2, None);
    assert!(
        top.iter().any(|(k, s)| *k == 3 && (*s - 1.0).abs() < 1e-5),
        "{top:?}"
    );
}

#[test]
fn reopens_from_disk_with_identical_results() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.hnsw");
    let dim = 32;
    let items = random_vectors(2000, dim, 21);
    let queries: Vec<Vec<f32>> = random_vectors(50, dim, 22)
        .into_iter()
        .map(|x| x.1)
        .collect();
    let before: Vec<Vec<(u64, f32)>> = {
        let mut h = HnswIndex::open(&path, dim, HnswParams::default()).unwrap();
        h.add(&items).unwrap();
        h.remove(&[1, 2, 3]);
        h.set_applied_seq(77);
        h.save().unwrap();
        queries.iter().map(|q| h.search(q, 10, None)).collect()
    };
    let h = HnswIndex::open(&path, dim, HnswParams::default()).unwrap();
    assert_eq!(h.applied_seq(), 77);
    assert_eq!(h.len(), 1997);
    let after: Vec<Vec<(u64, f32)>> = queries.iter().map(|q| h.search(q, 10, None)).collect();
    assert_eq!(before, after);
    // A wrong dimension is an error, not a panic.
    assert!(HnswIndex::open(&path, 16, HnswParams::default()).is_err());
    // A truncated file is an error too.
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    assert!(HnswIndex::open(&path, dim, HnswParams::default()).is_err());
}

#[test]
fn flat_index_persists_and_removes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.flat");
    let items = random_vectors(100, 8, 1);
    {
        let mut f = FlatIndex::open(&path, 8).unwrap();
        f.add(&items).unwrap();
        assert_eq!(f.remove(&[10, 20, 999]), 2);
        f.set_applied_seq(5);
        f.save().unwrap();
    }
    let f = FlatIndex::open(&path, 8).unwrap();
    assert_eq!(f.len(), 98);
    assert_eq!(f.applied_seq(), 5);
    let top = f.search(&items[29].1, 1, None);
    assert_eq!(top[0].0, 30);
    assert!(f
        .search(&items[9].1, 100, None)
        .iter()
        .all(|(k, _)| *k != 10));
}
