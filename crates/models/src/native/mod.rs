//! ragfleet's own llama forward pass for CPU inference (`weights = "native"`).
//!
//! - Weights stay in the GGUF file's blocks (SmolLM2: Q4_1 layers, Q8_0
//!   embedding/lm_head) — 6× less memory traffic per token than f32 — while
//!   the activations stay f32: the kernels ([`kernels`]) expand each weight
//!   block in registers and FMA it against f32 inputs. No activation
//!   quantization, so results equal the f32 reference (candle's `ModelWeights`
//!   on dequantised weights) up to float summation order.
//! - Other tensor types of a GGUF file are dequantised to f32 at load.
//! - Decoding: matrix × vector kernels, output rows split over a rayon pool
//!   with one thread per core; Q/K/V and gate/up are each one fused matrix,
//!   so a layer is four parallel matrix products plus attention.
//! - Prompt processing: chunks of [`CHUNK`] tokens; each group of four weight
//!   rows is expanded to f32 once and multiplied with every token of the chunk
//!   (a register-tiled matrix × matrix kernel).
//! - KV cache: preallocated per generation (prompt + answer), f32 like the
//!   reference; K in tiles of 8 positions × head_dim so that scores stream
//!   through memory in order with the outputs in registers.
pub(crate) mod kernels;

pub(crate) use kernels::simd;

use std::io::Cursor;
use std::sync::Arc;

use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::GgmlDType;
use candle_core::Device;
use ragfleet_rag::{RagError, Result};
use rayon::prelude::*;

use kernels::{block_sums, rms_norm, silu_mul, softmax, Data, Matrix, QK};

/// Tokens of a prompt processed per pass.
pub(crate) const CHUNK: usize = 128;

/// Hyper-parameters read from the GGUF metadata.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub vocab: usize,
    pub eps: f32,
    pub rope_base: f32,
}

struct Layer {
    attn_norm: Vec<f32>,
    ffn_norm: Vec<f32>,
    /// Q, K and V rows stacked (`dim + 2 · kv_dim` rows).
    wqkv: Matrix,
    wo: Matrix,
    /// Gate and up rows stacked (`2 · ffn` rows).
    w_gate_up: Matrix,
    w_down: Matrix,
}

/// The loaded weights; shared read-only by every generation.
pub(crate) struct NativeModel {
    pub cfg: Config,
    /// Token embeddings (`vocab` × `dim`), also the lm_head when the file
    /// has no `output.weight` (tied, as in SmolLM2).
    embed: Matrix,
    output: Option<Matrix>,
    out_norm: Vec<f32>,
    layers: Vec<Layer>,
    /// cos/sin of `pos · θ_i`, `max_pos` × `head_dim / 2`.
    rope_cos: Vec<f32>,
    rope_sin: Vec<f32>,
    max_pos: usize,
    pool: rayon::ThreadPool,
}

fn err(e: impl std::fmt::Display) -> RagError {
    RagError::Model(e.to_string())
}

/// Read tensor `name` from the GGUF image `bytes` as a matrix: Q4_1 and
/// Q8_0 blocks are copied as they are, anything else is dequantised to f32.
fn load_matrix(ct: &Content, bytes: &[u8], name: &str) -> Result<Matrix> {
    let info = ct
        .tensor_infos
        .get(name)
        .ok_or_else(|| err(format!("tensor {name} is missing")))?;
    let dims = info.shape.dims();
    let (rows, cols) = match dims {
        [r, c] => (*r, *c),
        _ => {
            return Err(err(format!(
                "tensor {name}: expected 2 dimensions, got {dims:?}"
            )))
        }
    };
    let dtype = info.ggml_dtype;
    let blocks = cols.is_multiple_of(QK);
    let data = match dtype {
        GgmlDType::Q4_1 | GgmlDType::Q8_0 if blocks => {
            // Offsets and sizes come from the file: checked, so a corrupt
            // header is an error, not an overflow.
            let past_end = || err(format!("tensor {name}: data past the end of the file"));
            let start = ct
                .tensor_data_offset
                .checked_add(info.offset)
                .and_then(|o| usize::try_from(o).ok())
                .ok_or_else(past_end)?;
            let len = rows
                .checked_mul(cols)
                .map(|n| n / dtype.block_size())
                .and_then(|b| b.checked_mul(dtype.type_size()))
                .ok_or_else(past_end)?;
            let raw = start
                .checked_add(len)
                .and_then(|end| bytes.get(start..end))
                .ok_or_else(past_end)?;
            if dtype == GgmlDType::Q4_1 {
                Data::Q4_1(raw.to_vec())
            } else {
                Data::Q8_0(raw.to_vec())
            }
        }
        _ => Data::F32(load_f32(ct, bytes, name)?),
    };
    Ok(Matrix { rows, cols, data })
}

/// Any tensor dequantised to f32 (candle's dequantisation), flattened.
fn load_f32(ct: &Content, bytes: &[u8], name: &str) -> Result<Vec<f32>> {
    let dev = Device::Cpu;
    ct.tensor(&mut Cursor::new(bytes), name, &dev)
        .and_then(|q| q.dequantize(&dev))
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(|e| err(format!("tensor {name}: {e}")))
}

/// Stack matrices with the same columns row-wise into one (one parallel
/// product instead of several). Mixed storage types fall back to f32.
fn stack(parts: Vec<Matrix>) -> Result<Matrix> {
    let cols = parts.first().map(|m| m.cols).unwrap_or(0);
    if parts.iter().any(|m| m.cols != cols) {
        return Err(err("stacked matrices differ in width"));
    }
    let rows = parts.iter().map(|m| m.rows).sum();
    let same = |f: fn(&Data) -> bool| parts.iter().all(|m| f(&m.data));
    let data = if same(|d| matches!(d, Data::Q4_1(_))) || same(|d| matches!(d, Data::Q8_0(_))) {
        let q41 = matches!(parts[0].data, Data::Q4_1(_));
        let mut all = Vec::new();
        for m in &parts {
            if let Data::Q4_1(b) | Data::Q8_0(b) = &m.data {
                all.extend_from_slice(b);
            }
        }
        if q41 {
            Data::Q4_1(all)
        } else {
            Data::Q8_0(all)
        }
    } else {
        let mut all = vec![0f32; rows * cols];
        let mut r0 = 0;
        for m in &parts {
            for r in 0..m.rows {
                m.dequant_row(r, &mut all[(r0 + r) * cols..(r0 + r + 1) * cols]);
            }
            r0 += m.rows;
        }
        Data::F32(all)
    };
    Ok(Matrix { rows, cols, data })
}

fn md_u32(ct: &Content, key: &str) -> Result<usize> {
    ct.metadata
        .get(key)
        .and_then(|v| v.to_u32().ok())
        .map(|v| v as usize)
        .ok_or_else(|| err(format!("metadata {key} is missing")))
}

fn md_f32(ct: &Content, key: &str) -> Option<f32> {
    ct.metadata.get(key).and_then(|v| v.to_f32().ok())
}

impl NativeModel {
    /// Load from a parsed GGUF header `ct` and the whole file `bytes`.
    /// `max_pos`: positions the rotary table covers (the context window).
    pub fn load(ct: &Content, bytes: &[u8], max_pos: usize) -> Result<Self> {
        let dim = md_u32(ct, "llama.embedding_length")?;
        let n_heads = md_u32(ct, "llama.attention.head_count")?;
        let n_kv_heads = md_u32(ct, "llama.attention.head_count_kv").unwrap_or(n_heads);
        if n_heads == 0
            || n_kv_heads == 0
            || dim == 0
            || !dim.is_multiple_of(n_heads)
            || !n_heads.is_multiple_of(n_kv_heads)
        {
            return Err(err(format!(
                "unsupported head layout: dim {dim}, {n_heads} heads, {n_kv_heads} kv heads"
            )));
        }
        let head_dim = dim / n_heads;
        let rope_dim = md_u32(ct, "llama.rope.dimension_count").unwrap_or(head_dim);
        if rope_dim != head_dim || !head_dim.is_multiple_of(2) {
            return Err(err(format!(
                "partial rotary embedding ({rope_dim} of {head_dim}) is not supported by the native forward (use weights = \"f32\")"
            )));
        }
        if md_u32(ct, "llama.expert_count").unwrap_or(0) > 1 {
            return Err(err(
                "mixture-of-experts models are not supported by the native forward (use weights = \"f32\")",
            ));
        }
        let embed = load_matrix(ct, bytes, "token_embd.weight")?;
        let cfg = Config {
            dim,
            n_layers: md_u32(ct, "llama.block_count")?,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn: md_u32(ct, "llama.feed_forward_length")?,
            vocab: embed.rows,
            eps: md_f32(ct, "llama.attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
            rope_base: md_f32(ct, "llama.rope.freq_base").unwrap_or(10000.0),
        };
        if embed.cols != dim {
            return Err(err(
                "token_embd.weight does not match llama.embedding_length",
            ));
        }
        if cfg.ffn == 0 || cfg.n_layers == 0 || cfg.vocab == 0 {
            return Err(err(
                "llama.feed_forward_length, llama.block_count and the vocabulary must not be 0",
            ));
        }
        let output = if ct.tensor_infos.contains_key("output.weight") {
            Some(load_matrix(ct, bytes, "output.weight")?)
        } else {
            None
        };
        let kv_dim = n_kv_heads * head_dim;
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for l in 0..cfg.n_layers {
            let m = |n: &str| load_matrix(ct, bytes, &format!("blk.{l}.{n}.weight"));
            let v = |n: &str| load_f32(ct, bytes, &format!("blk.{l}.{n}.weight"));
            let layer = Layer {
                attn_norm: v("attn_norm")?,
                ffn_norm: v("ffn_norm")?,
                wqkv: stack(vec![m("attn_q")?, m("attn_k")?, m("attn_v")?])?,
                wo: m("attn_output")?,
                w_gate_up: stack(vec![m("ffn_gate")?, m("ffn_up")?])?,
                w_down: m("ffn_down")?,
            };
            let shapes_ok = layer.attn_norm.len() == dim
                && layer.ffn_norm.len() == dim
                && layer.wqkv.rows == dim + 2 * kv_dim
                && layer.wqkv.cols == dim
                && (layer.wo.rows, layer.wo.cols) == (dim, dim)
                && (layer.w_gate_up.rows, layer.w_gate_up.cols) == (2 * cfg.ffn, dim)
                && (layer.w_down.rows, layer.w_down.cols) == (dim, cfg.ffn);
            if !shapes_ok {
                return Err(err(format!(
                    "blk.{l}: tensor shapes do not match the metadata"
                )));
            }
            layers.push(layer);
        }
        let out_norm = load_f32(ct, bytes, "output_norm.weight")?;
        if out_norm.len() != dim
            || output
                .as_ref()
                .is_some_and(|o| o.cols != dim || o.rows != cfg.vocab)
        {
            return Err(err(
                "output tensors do not match llama.embedding_length or the vocabulary",
            ));
        }
        // Rotary table as candle computes it: θ_i = base^(-2i/d) in f32,
        // angle = pos · θ_i.
        let half = head_dim / 2;
        let theta: Vec<f32> = (0..half)
            .map(|i| 1f32 / cfg.rope_base.powf((2 * i) as f32 / head_dim as f32))
            .collect();
        let mut rope_cos = Vec::with_capacity(max_pos * half);
        let mut rope_sin = Vec::with_capacity(max_pos * half);
        for p in 0..max_pos {
            for t in &theta {
                let a = p as f32 * t;
                rope_cos.push(a.cos());
                rope_sin.push(a.sin());
            }
        }
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("llama-native-{i}"))
            .build()
            .map_err(err)?;
        Ok(Self {
            cfg,
            embed,
            output,
            out_norm,
            layers,
            rope_cos,
            rope_sin,
            max_pos,
            pool,
        })
    }

    /// Weight bytes read per decoded token.
    pub fn weight_bytes(&self) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .map(|l| l.wqkv.bytes() + l.wo.bytes() + l.w_gate_up.bytes() + l.w_down.bytes())
            .sum();
        layers + self.lm_head().bytes()
    }

    fn lm_head(&self) -> &Matrix {
        self.output.as_ref().unwrap_or(&self.embed)
    }
}

/// `W · x` for each of the `n_tok` rows of `xs` (`n_tok` × `W.cols`), rows of
/// `W` split over the pool; result `n_tok` × `W.rows`.
fn linear(w: &Matrix, xs: &[f32], n_tok: usize) -> Vec<f32> {
    let threads = rayon::current_num_threads().max(1);
    // A few chunks per thread so a busy core does not hold everyone back.
    let chunk = w.rows.div_ceil(threads * 4).next_multiple_of(4).max(4);
    if n_tok == 1 {
        let mut xs4 = Vec::new();
        if matches!(w.data, Data::Q4_1(_)) {
            block_sums(xs, &mut xs4);
        }
        let mut out = vec![0f32; w.rows];
        out.par_chunks_mut(chunk).enumerate().for_each(|(i, o)| {
            let r0 = i * chunk;
            w.matvec(xs, &xs4, r0..r0 + o.len(), o);
        });
        return out;
    }
    // Groups of tokens over the pool, each against every row (each task
    // expands the weights itself; cheap next to the multiplications), so
    // that every task writes whole output rows.
    let per = n_tok.div_ceil(threads * 2).max(8);
    let mut out = vec![0f32; n_tok * w.rows];
    let k = w.cols;
    out.par_chunks_mut(per * w.rows)
        .enumerate()
        .for_each(|(i, o)| {
            let nt = o.len() / w.rows;
            let mut panel = vec![0f32; 4 * k];
            w.matmul(&xs[i * per * k..(i * per + nt) * k], nt, &mut panel, o);
        });
    out
}

/// One generation's state: the KV cache over a shared [`NativeModel`].
pub(crate) struct Session {
    m: Arc<NativeModel>,
    /// Positions allocated (multiple of 8: score vectors are padded).
    cap: usize,
    /// Positions usable (≤ `cap`, ≤ the rotary table).
    limit: usize,
    /// Tokens in the cache.
    pos: usize,
    /// Keys in tiles of 8 positions: `[layer][kv_head][cap / 8][head_dim][8]`.
    kt: Vec<f32>,
    /// Values: `[layer][kv_head][cap][head_dim]`.
    v: Vec<f32>,
}

impl Session {
    /// A session for at most `tokens` positions (prompt + answer).
    pub fn new(m: Arc<NativeModel>, tokens: usize) -> Result<Self> {
        if tokens > m.max_pos {
            return Err(err(format!(
                "{tokens} positions requested, the model allows {}",
                m.max_pos
            )));
        }
        let cap = tokens.next_multiple_of(8).max(8);
        let c = &m.cfg;
        let size = c.n_layers * c.n_kv_heads * c.head_dim * cap;
        Ok(Self {
            cap,
            limit: tokens,
            pos: 0,
            kt: vec![0f32; size],
            v: vec![0f32; size],
            m,
        })
    }

    /// Feed `tokens` after those already seen; returns the logits after the
    /// last one.
    pub fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        if tokens.is_empty() {
            return Err(err("no tokens to process"));
        }
        if self.pos + tokens.len() > self.limit {
            return Err(err(format!(
                "KV cache full: {} + {} tokens > {}",
                self.pos,
                tokens.len(),
                self.limit
            )));
        }
        if let Some(t) = tokens.iter().find(|&&t| t as usize >= self.m.cfg.vocab) {
            return Err(err(format!("token id {t} is outside the vocabulary")));
        }
        let m = Arc::clone(&self.m);
        m.pool.install(|| {
            let mut last = Vec::new();
            for chunk in tokens.chunks(CHUNK) {
                last = self.forward_chunk(chunk);
            }
            let c = &m.cfg;
            let mut xn = vec![0f32; c.dim];
            rms_norm(&last, &m.out_norm, c.eps, &mut xn);
            Ok(linear(m.lm_head(), &xn, 1))
        })
    }

    /// The residual stream after all layers for the last token of `tokens`.
    fn forward_chunk(&mut self, tokens: &[u32]) -> Vec<f32> {
        let m = Arc::clone(&self.m);
        let c = &m.cfg;
        let (n, d, hd) = (tokens.len(), c.dim, c.head_dim);
        let kv_dim = c.n_kv_heads * hd;
        let qkv_dim = d + 2 * kv_dim;
        let mut x = vec![0f32; n * d];
        for (t, &tok) in tokens.iter().enumerate() {
            m.embed
                .dequant_row(tok as usize, &mut x[t * d..(t + 1) * d]);
        }
        let mut xn = vec![0f32; n * d];
        let mut tmp = Vec::new();
        for (l, layer) in m.layers.iter().enumerate() {
            for (xr, o) in x.chunks_exact(d).zip(xn.chunks_exact_mut(d)) {
                rms_norm(xr, &layer.attn_norm, c.eps, o);
            }
            let mut qkv = linear(&layer.wqkv, &xn, n);
            for (t, row) in qkv.chunks_exact_mut(qkv_dim).enumerate() {
                let p = self.pos + t;
                // Rotate the query and key heads, then store k and v.
                for h in row[..d + kv_dim].chunks_exact_mut(hd) {
                    m.rope(h, p);
                }
                self.store_kv(l, p, &row[d..d + kv_dim], &row[d + kv_dim..]);
            }
            let att = self.attention(l, &qkv, n);
            let o = linear(&layer.wo, &att, n);
            add(&mut x, &o);

            for (xr, o) in x.chunks_exact(d).zip(xn.chunks_exact_mut(d)) {
                rms_norm(xr, &layer.ffn_norm, c.eps, o);
            }
            let gu = linear(&layer.w_gate_up, &xn, n);
            let f = c.ffn;
            let mut h = vec![0f32; n * f];
            for (gu, h) in gu.chunks_exact(2 * f).zip(h.chunks_exact_mut(f)) {
                h.copy_from_slice(&gu[..f]);
                silu_mul(h, &gu[f..], &mut tmp);
            }
            let down = linear(&layer.w_down, &h, n);
            add(&mut x, &down);
        }
        self.pos += n;
        x.split_off((n - 1) * d)
    }

    fn store_kv(&mut self, l: usize, p: usize, k: &[f32], v: &[f32]) {
        let c = &self.m.cfg;
        let (hd, cap) = (c.head_dim, self.cap);
        for g in 0..c.n_kv_heads {
            let base = (l * c.n_kv_heads + g) * hd * cap;
            let tile = base + (p / 8) * hd * 8 + p % 8;
            for i in 0..hd {
                self.kt[tile + i * 8] = k[g * hd + i];
            }
            self.v[base + p * hd..base + (p + 1) * hd].copy_from_slice(&v[g * hd..(g + 1) * hd]);
        }
    }

    /// Causal attention of the `n` new tokens (their q in `qkv`, keys and
    /// values already in the cache) → `n` × `dim`.
    fn attention(&self, l: usize, qkv: &[f32], n: usize) -> Vec<f32> {
        let c = &self.m.cfg;
        let (d, hd) = (c.dim, c.head_dim);
        let qkv_dim = d + 2 * c.n_kv_heads * hd;
        let mut out = vec![0f32; n * d];
        let start = self.pos;
        if n == 1 {
            out.par_chunks_mut(hd).enumerate().for_each(|(h, o)| {
                let mut s = Vec::new();
                self.head(l, h, start, &qkv[h * hd..(h + 1) * hd], &mut s, o);
            });
        } else {
            out.par_chunks_mut(d).enumerate().for_each(|(t, o)| {
                let mut s = Vec::new();
                let q = &qkv[t * qkv_dim..t * qkv_dim + d];
                for (h, o) in o.chunks_exact_mut(hd).enumerate() {
                    self.head(l, h, start + t, &q[h * hd..(h + 1) * hd], &mut s, o);
                }
            });
        }
        out
    }

    /// One query head at position `p` over keys `0..=p`.
    fn head(&self, l: usize, h: usize, p: usize, q: &[f32], s: &mut Vec<f32>, out: &mut [f32]) {
        let c = &self.m.cfg;
        let (hd, cap) = (c.head_dim, self.cap);
        let g = h / (c.n_heads / c.n_kv_heads);
        let base = (l * c.n_kv_heads + g) * hd * cap;
        let len = p + 1;
        let padded = len.next_multiple_of(8);
        s.clear();
        s.resize(padded, 0.0);
        kernels::scores_tiled(q, &self.kt[base..base + hd * padded], s);
        s.truncate(len);
        let scale = 1.0 / (hd as f32).sqrt();
        for v in s.iter_mut() {
            *v *= scale;
        }
        softmax(s);
        kernels::weighted_rows(s, &self.v[base..base + len * hd], out);
    }
}

impl NativeModel {
    /// Rotate one head vector in place (interleaved pairs, candle's `rope_i`).
    fn rope(&self, x: &mut [f32], p: usize) {
        let half = x.len() / 2;
        let (cos, sin) = (
            &self.rope_cos[p * half..(p + 1) * half],
            &self.rope_sin[p * half..(p + 1) * half],
        );
        for ((pair, c), s) in x.chunks_exact_mut(2).zip(cos).zip(sin) {
            let (a, b) = (pair[0], pair[1]);
            pair[0] = a * c - b * s;
            pair[1] = a * s + b * c;
        }
    }
}

fn add(x: &mut [f32], y: &[f32]) {
    for (x, y) in x.iter_mut().zip(y) {
        *x += y;
    }
}

#[cfg(test)]
mod tests {
    //! Load-time checks and session errors on the real SmolLM2 file
    //! ($RAGFLEET_MODELS, else <workspace>/models; scripts/fetch-models.sh).
    use super::*;
    use candle_core::quantized::gguf_file::Value;

    fn smollm2() -> (Content, Vec<u8>) {
        let dir = std::env::var_os("RAGFLEET_MODELS")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models")
            });
        let path = dir.join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
        let bytes = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run scripts/fetch-models.sh or set RAGFLEET_MODELS)",
                path.display()
            )
        });
        let ct = Content::read(&mut Cursor::new(&bytes)).unwrap();
        (ct, bytes)
    }

    fn load_err(ct: &Content, bytes: &[u8]) -> String {
        match NativeModel::load(ct, bytes, 64) {
            Ok(_) => panic!("a bad header loaded"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn corrupt_headers_are_errors_not_panics() {
        let (ct, bytes) = smollm2();
        // An offset near u64::MAX: the sum must not wrap.
        let mut bad = Content::read(&mut Cursor::new(&bytes)).unwrap();
        let info = bad.tensor_infos.get_mut("blk.0.attn_q.weight").unwrap();
        info.offset = u64::MAX - 4;
        assert!(load_err(&bad, &bytes).contains("past the end of the file"));
        // A file cut short: the first tensor past the cut is named.
        let cut = &bytes[..bytes.len() / 2];
        let e = load_err(&ct, cut);
        assert!(
            e.contains("tensor blk.") && (e.contains("past the end") || e.contains("fill")),
            "{e}"
        );
        // Zero dimensions.
        for key in ["llama.embedding_length", "llama.feed_forward_length"] {
            let mut bad = Content::read(&mut Cursor::new(&bytes)).unwrap();
            bad.metadata.insert(key.to_string(), Value::U32(0));
            let e = load_err(&bad, &bytes);
            assert!(
                e.contains("head layout") || e.contains("must not be 0"),
                "{key}: {e}"
            );
        }
    }

    #[test]
    fn sessions_refuse_what_they_cannot_hold() {
        let (ct, bytes) = smollm2();
        let m = Arc::new(NativeModel::load(&ct, &bytes, 64).unwrap());
        assert!(Session::new(Arc::clone(&m), 65)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
            .contains("the model allows 64"));
        let mut s = Session::new(Arc::clone(&m), 4).unwrap();
        assert!(s
            .forward(&[])
            .unwrap_err()
            .to_string()
            .contains("no tokens"));
        let vocab = m.cfg.vocab as u32;
        assert!(s
            .forward(&[1, vocab])
            .unwrap_err()
            .to_string()
            .contains("outside the vocabulary"));
        // Nothing was taken by the refused calls: 4 positions remain.
        let logits = s.forward(&[1, 2, 3]).unwrap();
        assert_eq!(logits.len(), m.cfg.vocab);
        assert!(logits.iter().all(|x| x.is_finite()));
        assert!(s
            .forward(&[4, 5])
            .unwrap_err()
            .to_string()
            .contains("KV cache full"));
        s.forward(&[4]).unwrap();
    }
}
