//! HNSW (Malkov & Yashunin) over unit vectors, scored by dot product.
//!
//! - Incremental add; delete marks a tombstone (the node keeps routing
//!   searches but is never returned) and the graph is rebuilt from the live
//!   vectors once tombstones pass a third of the nodes.
//! - Filtered search: the walk goes through every node, only nodes passing
//!   the filter enter the result list.
//! - Persisted to one file (written through a rename) together with the last
//!   applied change sequence; opening reads the graph back, no rebuild.
use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use super::flat::write_atomically;
use super::{dot, index_err, KeyFilter, VectorIndex};
use crate::{RagError, Result};

const MAGIC: &[u8; 8] = b"RFHNSW01";
const MAX_LEVEL: usize = 16;

/// HNSW parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HnswParams {
    /// Links per node on upper layers (layer 0 has `2 * m`).
    pub m: usize,
    pub ef_construction: usize,
    pub ef_search: usize,
}

impl Default for HnswParams {
    fn default() -> Self {
        Self {
            m: 16,
            ef_construction: 200,
            ef_search: 128,
        }
    }
}

/// Distance-ordered candidate (smaller distance = closer).
#[derive(Clone, Copy, PartialEq)]
struct Cand {
    dist: f32,
    id: u32,
}
impl Eq for Cand {}
impl Ord for Cand {
    fn cmp(&self, other: &Self) -> Ordering {
        self.dist
            .total_cmp(&other.dist)
            .then(self.id.cmp(&other.id))
    }
}
impl PartialOrd for Cand {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

struct Visited {
    bits: Vec<u64>,
}
impl Visited {
    fn new(n: usize) -> Self {
        Self {
            bits: vec![0; n.div_ceil(64)],
        }
    }
    /// Marks `i`; returns whether it was unmarked.
    #[inline]
    fn insert(&mut self, i: u32) -> bool {
        let (w, b) = ((i / 64) as usize, i % 64);
        let was = self.bits[w] & (1 << b) != 0;
        self.bits[w] |= 1 << b;
        !was
    }
}

pub struct HnswIndex {
    dim: usize,
    params: HnswParams,
    keys: Vec<u64>,
    data: Vec<f32>,
    /// `links[node][level]`.
    links: Vec<Vec<Vec<u32>>>,
    deleted: Vec<bool>,
    n_deleted: usize,
    pos: HashMap<u64, u32>,
    entry: Option<u32>,
    rng: u64,
    seq: u64,
    path: Option<PathBuf>,
}

impl HnswIndex {
    /// An empty in-memory index (never saved).
    pub fn new(dim: usize, params: HnswParams) -> Self {
        Self {
            dim,
            params: HnswParams {
                m: params.m.max(2),
                ef_construction: params.ef_construction.max(params.m.max(2)),
                ef_search: params.ef_search.max(1),
            },
            keys: Vec::new(),
            data: Vec::new(),
            links: Vec::new(),
            deleted: Vec::new(),
            n_deleted: 0,
            pos: HashMap::new(),
            entry: None,
            rng: 0x9E37_79B9_7F4A_7C15,
            seq: 0,
            path: None,
        }
    }

    /// Opens the index file at `path` (an empty index, saved there later, if absent).
    pub fn open(path: &Path, dim: usize, params: HnswParams) -> Result<Self> {
        let mut idx = Self::new(dim, params);
        idx.path = Some(path.to_path_buf());
        if !path.exists() {
            return Ok(idx);
        }
        let corrupt = |what: &str| {
            RagError::Index(format!("{}: corrupt HNSW index ({what})", path.display()))
        };
        let mut r = BufReader::with_capacity(1 << 20, File::open(path)?);
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic)?;
        if &magic != MAGIC {
            return Err(corrupt("bad magic"));
        }
        let file_dim = read_u64(&mut r)? as usize;
        if file_dim != dim {
            return Err(RagError::Index(format!(
                "{}: index has dimension {file_dim}, the embedder {dim}",
                path.display()
            )));
        }
        idx.seq = read_u64(&mut r)?;
        idx.rng = read_u64(&mut r)?;
        let entry = read_u64(&mut r)?;
        let n = read_u64(&mut r)? as usize;
        idx.entry = (entry != u64::MAX).then_some(entry as u32);
        idx.keys.reserve(n);
        idx.data.reserve(n * dim);
        idx.links.reserve(n);
        let mut vbuf = vec![0u8; dim * 4];
        for i in 0..n {
            let key = read_u64(&mut r)?;
            let mut b = [0u8; 2];
            r.read_exact(&mut b)?;
            let (deleted, levels) = (b[0] != 0, b[1] as usize);
            if levels == 0 || levels > MAX_LEVEL + 1 {
                return Err(corrupt("bad level count"));
            }
            r.read_exact(&mut vbuf)?;
            idx.data.extend(
                vbuf.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            );
            let mut node_links = Vec::with_capacity(levels);
            for _ in 0..levels {
                let cnt = read_u32(&mut r)? as usize;
                let mut l = Vec::with_capacity(cnt);
                for _ in 0..cnt {
                    let nb = read_u32(&mut r)?;
                    if nb as usize >= n {
                        return Err(corrupt("link out of range"));
                    }
                    l.push(nb);
                }
                node_links.push(l);
            }
            idx.keys.push(key);
            idx.links.push(node_links);
            idx.deleted.push(deleted);
            if deleted {
                idx.n_deleted += 1;
            } else {
                idx.pos.insert(key, i as u32);
            }
        }
        if idx.entry.is_some_and(|e| e as usize >= n) {
            return Err(corrupt("entry point out of range"));
        }
        Ok(idx)
    }

    pub fn params(&self) -> HnswParams {
        self.params
    }

    /// Search-time candidate list size.
    pub fn set_ef_search(&mut self, ef: usize) {
        self.params.ef_search = ef.max(1);
    }

    #[inline]
    fn vec(&self, i: u32) -> &[f32] {
        let i = i as usize;
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    #[inline]
    fn dist(&self, q: &[f32], i: u32) -> f32 {
        1.0 - dot(q, self.vec(i))
    }

    fn level_of(&self, i: u32) -> usize {
        self.links[i as usize].len() - 1
    }

    fn random_level(&mut self) -> usize {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let x = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
        let u = ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let ml = 1.0 / (self.params.m as f64).ln();
        ((-u.ln() * ml) as usize).min(MAX_LEVEL)
    }

    /// Greedy walk on one layer from `entry` towards `q`.
    fn greedy(&self, q: &[f32], mut cur: Cand, level: usize) -> Cand {
        loop {
            let mut changed = false;
            for &nb in &self.links[cur.id as usize][level] {
                let d = self.dist(q, nb);
                if d < cur.dist {
                    cur = Cand { dist: d, id: nb };
                    changed = true;
                }
            }
            if !changed {
                return cur;
            }
        }
    }

    /// Best-first search of one layer; returns up to `ef` nodes accepted by
    /// `accept`, closest first.
    fn search_layer(
        &self,
        q: &[f32],
        entries: &[Cand],
        ef: usize,
        level: usize,
        accept: &dyn Fn(u32) -> bool,
    ) -> Vec<Cand> {
        let mut visited = Visited::new(self.keys.len());
        let mut frontier: BinaryHeap<std::cmp::Reverse<Cand>> = BinaryHeap::new();
        let mut results: BinaryHeap<Cand> = BinaryHeap::new();
        for &e in entries {
            if visited.insert(e.id) {
                frontier.push(std::cmp::Reverse(e));
                if accept(e.id) {
                    results.push(e);
                }
            }
        }
        while results.len() > ef {
            results.pop();
        }
        while let Some(std::cmp::Reverse(c)) = frontier.pop() {
            if results.len() >= ef && results.peek().is_some_and(|w| c.dist > w.dist) {
                break;
            }
            for &nb in &self.links[c.id as usize][level] {
                if !visited.insert(nb) {
                    continue;
                }
                let d = self.dist(q, nb);
                let worst = results.peek().map_or(f32::INFINITY, |w| w.dist);
                if results.len() < ef || d < worst {
                    let cand = Cand { dist: d, id: nb };
                    frontier.push(std::cmp::Reverse(cand));
                    if accept(nb) {
                        results.push(cand);
                        if results.len() > ef {
                            results.pop();
                        }
                    }
                }
            }
        }
        results.into_sorted_vec()
    }

    /// The neighbour-selection heuristic: keep a candidate only if it is
    /// closer to the base than to every neighbour kept so far; fill up with
    /// the pruned ones (closest first) if fewer than `m` remain.
    fn select(&self, cands: &[Cand], m: usize) -> Vec<u32> {
        let mut kept: Vec<Cand> = Vec::with_capacity(m);
        let mut pruned = Vec::new();
        for &c in cands {
            if kept.len() >= m {
                break;
            }
            let ok = kept
                .iter()
                .all(|k| 1.0 - dot(self.vec(c.id), self.vec(k.id)) > c.dist);
            if ok {
                kept.push(c);
            } else {
                pruned.push(c);
            }
        }
        for c in pruned {
            if kept.len() >= m {
                break;
            }
            kept.push(c);
        }
        kept.into_iter().map(|c| c.id).collect()
    }

    fn max_links(&self, level: usize) -> usize {
        if level == 0 {
            self.params.m * 2
        } else {
            self.params.m
        }
    }

    fn insert(&mut self, key: u64, v: &[f32]) {
        let id = self.keys.len() as u32;
        let level = self.random_level();
        self.keys.push(key);
        self.data.extend_from_slice(v);
        self.links.push(vec![Vec::new(); level + 1]);
        self.deleted.push(false);
        self.pos.insert(key, id);
        let Some(entry) = self.entry else {
            self.entry = Some(id);
            return;
        };
        let top = self.level_of(entry);
        let mut cur = Cand {
            dist: self.dist(v, entry),
            id: entry,
        };
        for l in (level + 1..=top).rev() {
            cur = self.greedy(v, cur, l);
        }
        let mut entries = vec![cur];
        for l in (0..=level.min(top)).rev() {
            let found =
                self.search_layer(v, &entries, self.params.ef_construction, l, &|i| i != id);
            let neighbours = self.select(&found, self.params.m);
            self.links[id as usize][l] = neighbours.clone();
            let cap = self.max_links(l);
            for nb in neighbours {
                let nbl = &mut self.links[nb as usize][l];
                nbl.push(id);
                if nbl.len() > cap {
                    // Re-select the neighbour's links.
                    let base = self.vec(nb).to_vec();
                    let mut cs: Vec<Cand> = self.links[nb as usize][l]
                        .iter()
                        .map(|&x| Cand {
                            dist: 1.0 - dot(&base, self.vec(x)),
                            id: x,
                        })
                        .collect();
                    cs.sort();
                    let sel = self.select(&cs, cap);
                    self.links[nb as usize][l] = sel;
                }
            }
            entries = found;
            if entries.is_empty() {
                entries = vec![cur];
            }
        }
        if level > top {
            self.entry = Some(id);
        }
    }

    /// Rebuilds the graph from the live vectors (drops tombstones).
    fn compact(&mut self) {
        let live: Vec<(u64, Vec<f32>)> = (0..self.keys.len() as u32)
            .filter(|&i| !self.deleted[i as usize])
            .map(|i| (self.keys[i as usize], self.vec(i).to_vec()))
            .collect();
        let mut fresh = HnswIndex::new(self.dim, self.params);
        fresh.rng = self.rng;
        for (k, v) in &live {
            fresh.insert(*k, v);
        }
        fresh.seq = self.seq;
        fresh.path = self.path.take();
        *self = fresh;
    }
}

fn read_u64(r: &mut impl Read) -> Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn read_u32(r: &mut impl Read) -> Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

impl VectorIndex for HnswIndex {
    fn dim(&self) -> usize {
        self.dim
    }

    fn len(&self) -> usize {
        self.pos.len()
    }

    fn add(&mut self, items: &[(u64, Vec<f32>)]) -> Result<()> {
        if let Some((_, v)) = items.iter().find(|(_, v)| v.len() != self.dim) {
            return Err(index_err(format!(
                "vector of dimension {} added to an index of dimension {}",
                v.len(),
                self.dim
            )));
        }
        if self.keys.len() + items.len() >= u32::MAX as usize {
            return Err(index_err("HNSW index is full"));
        }
        let replaced: Vec<u64> = items
            .iter()
            .filter(|(k, _)| self.pos.contains_key(k))
            .map(|(k, _)| *k)
            .collect();
        self.remove(&replaced);
        for (k, v) in items {
            self.insert(*k, v);
        }
        Ok(())
    }

    fn remove(&mut self, keys: &[u64]) -> usize {
        let mut removed = 0;
        for k in keys {
            if let Some(i) = self.pos.remove(k) {
                self.deleted[i as usize] = true;
                self.n_deleted += 1;
                removed += 1;
            }
        }
        if self.n_deleted > 64 && self.n_deleted * 3 > self.keys.len() {
            self.compact();
        }
        removed
    }

    fn search(&self, query: &[f32], k: usize, filter: Option<KeyFilter<'_>>) -> Vec<(u64, f32)> {
        let Some(entry) = self.entry else {
            return Vec::new();
        };
        if k == 0 || query.len() != self.dim || self.pos.is_empty() {
            return Vec::new();
        }
        let mut cur = Cand {
            dist: self.dist(query, entry),
            id: entry,
        };
        for l in (1..=self.level_of(entry)).rev() {
            cur = self.greedy(query, cur, l);
        }
        let accept =
            |i: u32| !self.deleted[i as usize] && filter.is_none_or(|f| f(self.keys[i as usize]));
        let ef = self.params.ef_search.max(k);
        self.search_layer(query, &[cur], ef, 0, &accept)
            .into_iter()
            .take(k)
            .map(|c| (self.keys[c.id as usize], 1.0 - c.dist))
            .collect()
    }

    fn applied_seq(&self) -> u64 {
        self.seq
    }

    fn set_applied_seq(&mut self, seq: u64) {
        self.seq = seq;
    }

    fn save(&self) -> Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        write_atomically(path, |w| {
            w.write_all(MAGIC)?;
            w.write_all(&(self.dim as u64).to_le_bytes())?;
            w.write_all(&self.seq.to_le_bytes())?;
            w.write_all(&self.rng.to_le_bytes())?;
            w.write_all(&self.entry.map_or(u64::MAX, |e| e as u64).to_le_bytes())?;
            w.write_all(&(self.keys.len() as u64).to_le_bytes())?;
            for i in 0..self.keys.len() {
                w.write_all(&self.keys[i].to_le_bytes())?;
                w.write_all(&[self.deleted[i] as u8, self.links[i].len() as u8])?;
                for x in self.vec(i as u32) {
                    w.write_all(&x.to_le_bytes())?;
                }
                for l in &self.links[i] {
                    w.write_all(&(l.len() as u32).to_le_bytes())?;
                    for nb in l {
                        w.write_all(&nb.to_le_bytes())?;
                    }
                }
            }
            Ok(())
        })
    }
}
