//! Indexes over chunks, keyed by the store's integer chunk key.
//!
//! - [`VectorIndex`]: nearest neighbours by cosine similarity of unit vectors
//!   ([`hnsw::HnswIndex`], and [`flat::FlatIndex`] = exact search).
//! - [`lexical::LexicalIndex`]: BM25 over title + text with English stemming (tantivy).
//!
//! Both persist under the data directory together with the last document
//! change sequence they applied ([`VectorIndex::applied_seq`]), so reopening
//! catches up from the store's change log instead of rebuilding.
use crate::Result;

pub mod flat;
pub mod hnsw;
pub mod lexical;

/// A key filter: `true` keeps the key.
pub type KeyFilter<'a> = &'a (dyn Fn(u64) -> bool + Sync);

/// Approximate or exact nearest-neighbour search over unit vectors.
pub trait VectorIndex: Send + Sync {
    fn dim(&self) -> usize;
    /// Live vectors.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Adds vectors; an existing key is replaced.
    fn add(&mut self, items: &[(u64, Vec<f32>)]) -> Result<()>;
    /// Removes keys (absent keys are ignored); returns how many were present.
    fn remove(&mut self, keys: &[u64]) -> usize;
    /// The `k` nearest live vectors passing `filter`, best first, scored by
    /// dot product (cosine similarity for unit vectors).
    fn search(&self, query: &[f32], k: usize, filter: Option<KeyFilter<'_>>) -> Vec<(u64, f32)>;
    /// Last document change sequence applied.
    fn applied_seq(&self) -> u64;
    fn set_applied_seq(&mut self, seq: u64);
    /// Writes the index to its files (atomically).
    fn save(&self) -> Result<()>;
}

/// Dot product.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Four accumulators let the compiler vectorise without fast-math.
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 8];
    let chunks = n / 8;
    for i in 0..chunks {
        let o = i * 8;
        for j in 0..8 {
            acc[j] += a[o + j] * b[o + j];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in chunks * 8..n {
        s += a[i] * b[i];
    }
    s
}

pub(crate) fn index_err(e: impl std::fmt::Display) -> crate::RagError {
    crate::RagError::Index(e.to_string())
}
