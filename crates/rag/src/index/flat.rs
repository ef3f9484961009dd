//! Exact (brute-force) vector search: the reference the HNSW index is
//! measured against, and a fine choice for small corpora.
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::{dot, index_err, KeyFilter, VectorIndex};
use crate::{RagError, Result};

const MAGIC: &[u8; 8] = b"RFFLAT01";

/// All vectors in one contiguous buffer; search scans them all.
pub struct FlatIndex {
    dim: usize,
    keys: Vec<u64>,
    data: Vec<f32>,
    pos: HashMap<u64, usize>,
    seq: u64,
    path: Option<PathBuf>,
}

impl FlatIndex {
    /// An in-memory index (never saved).
    pub fn new(dim: usize) -> Self {
        Self {
            dim,
            keys: Vec::new(),
            data: Vec::new(),
            pos: HashMap::new(),
            seq: 0,
            path: None,
        }
    }

    /// Opens the index file at `path`, or an empty index saved there later.
    pub fn open(path: &Path, dim: usize) -> Result<Self> {
        let mut idx = Self::new(dim);
        idx.path = Some(path.to_path_buf());
        if !path.exists() {
            return Ok(idx);
        }
        let mut r = BufReader::new(File::open(path)?);
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic)?;
        if &magic != MAGIC {
            return Err(RagError::Index(format!(
                "{}: not a flat index file",
                path.display()
            )));
        }
        let file_dim = read_u64(&mut r)? as usize;
        if file_dim != dim {
            return Err(RagError::Index(format!(
                "{}: index has dimension {file_dim}, the embedder {dim}",
                path.display()
            )));
        }
        idx.seq = read_u64(&mut r)?;
        let n = read_u64(&mut r)? as usize;
        idx.keys.reserve(n);
        idx.data.reserve(n * dim);
        let mut buf = vec![0u8; dim * 4];
        for i in 0..n {
            let key = read_u64(&mut r)?;
            r.read_exact(&mut buf)?;
            idx.keys.push(key);
            idx.data.extend(
                buf.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            );
            idx.pos.insert(key, i);
        }
        Ok(idx)
    }

    fn vector(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }
}

fn read_u64(r: &mut impl Read) -> Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

/// Writes `path` through a temporary file and a rename, so a crash never
/// leaves a half-written index.
pub(crate) fn write_atomically(
    path: &Path,
    f: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut w = BufWriter::new(File::create(&tmp)?);
        f(&mut w)?;
        w.flush()?;
        w.get_ref().sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(())
}

impl VectorIndex for FlatIndex {
    fn dim(&self) -> usize {
        self.dim
    }

    fn len(&self) -> usize {
        self.keys.len()
    }

    fn add(&mut self, items: &[(u64, Vec<f32>)]) -> Result<()> {
        for (key, v) in items {
            if v.len() != self.dim {
                return Err(index_err(format!(
                    "vector of dimension {} added to an index of dimension {}",
                    v.len(),
                    self.dim
                )));
            }
            if let Some(&i) = self.pos.get(key) {
                self.data[i * self.dim..(i + 1) * self.dim].copy_from_slice(v);
            } else {
                self.pos.insert(*key, self.keys.len());
                self.keys.push(*key);
                self.data.extend_from_slice(v);
            }
        }
        Ok(())
    }

    fn remove(&mut self, keys: &[u64]) -> usize {
        let mut removed = 0;
        for key in keys {
            let Some(i) = self.pos.remove(key) else {
                continue;
            };
            removed += 1;
            let last = self.keys.len() - 1;
            if i != last {
                let last_key = self.keys[last];
                self.keys[i] = last_key;
                let (head, tail) = self.data.split_at_mut(last * self.dim);
                head[i * self.dim..(i + 1) * self.dim].copy_from_slice(&tail[..self.dim]);
                self.pos.insert(last_key, i);
            }
            self.keys.pop();
            self.data.truncate(last * self.dim);
        }
        removed
    }

    fn search(&self, query: &[f32], k: usize, filter: Option<KeyFilter<'_>>) -> Vec<(u64, f32)> {
        if k == 0 || query.len() != self.dim {
            return Vec::new();
        }
        let mut scored: Vec<(u64, f32)> = (0..self.keys.len())
            .filter(|&i| filter.is_none_or(|f| f(self.keys[i])))
            .map(|i| (self.keys[i], dot(query, self.vector(i))))
            .collect();
        let k = k.min(scored.len());
        if k == 0 {
            return Vec::new();
        }
        scored.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        scored.truncate(k);
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        scored
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
            w.write_all(&(self.keys.len() as u64).to_le_bytes())?;
            for (i, key) in self.keys.iter().enumerate() {
                w.write_all(&key.to_le_bytes())?;
                for x in self.vector(i) {
                    w.write_all(&x.to_le_bytes())?;
                }
            }
            Ok(())
        })
    }
}
