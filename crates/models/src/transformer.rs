//! The decoder-only transformers of the GGUF architectures besides the
//! native llama path — `qwen2`, `qwen3`, `gemma3`, `phi3` — and `llama`
//! itself (tests compare it with candle's `quantized_llama`), on candle's
//! CPU ops and quantized matmuls.
//!
//! Why not candle-transformers' own `quantized_*` models: its Gemma 3 uses
//! SiLU where Gemma uses GELU and drops the sliding window once decoding
//! starts (a wrong answer past 512 positions), and its Qwen 2 model cannot
//! be cloned, so it cannot share one copy of the weights between
//! generations. Here the weights ([`Model`]) are loaded once and shared; each
//! generation owns a [`Session`] with its KV cache. The forward follows
//! llama.cpp's graphs for these architectures:
//!
//! | arch   | rope        | extras                                                     |
//! |--------|-------------|------------------------------------------------------------|
//! | llama  | interleaved | —                                                          |
//! | qwen2  | neox        | q/k/v biases                                               |
//! | qwen3  | neox        | per-head RMS norm of q and k                               |
//! | gemma3 | neox        | embeddings × √d, q/k norms, post-norms, GELU, sliding window on 5 of 6 layers |
//! | phi3   | neox        | fused qkv and gate/up, partial rotary, `rope_factors_short` |
use std::sync::Arc;

use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::{ggml_file, GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, IndexOp, Module, Result, Tensor, D};

/// Architectures a GGUF file may declare (`general.architecture`) that
/// ragfleet runs.
pub const SUPPORTED: &[&str] = &["llama", "qwen2", "qwen3", "gemma3", "phi3"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Qwen2,
    Qwen3,
    Gemma3,
    Phi3,
}

impl Arch {
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "llama" => Self::Llama,
            "qwen2" => Self::Qwen2,
            "qwen3" => Self::Qwen3,
            "gemma3" => Self::Gemma3,
            "phi3" => Self::Phi3,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
            Self::Qwen3 => "qwen3",
            Self::Gemma3 => "gemma3",
            Self::Phi3 => "phi3",
        }
    }
}

/// The token embedding table kept in the file's block format; rows are
/// dequantised when looked up (Gemma's 262k × 640 table would be 670 MB
/// as f32).
struct Embedding {
    dtype: GgmlDType,
    raw: Vec<u8>,
    row_bytes: usize,
    dim: usize,
    rows: usize,
}

impl Embedding {
    fn new(qt: &QTensor) -> Result<Self> {
        let (rows, dim) = qt.shape().dims2()?;
        let dtype = qt.dtype();
        if dim % dtype.block_size() != 0 {
            candle_core::bail!("token_embd row of {dim} is not whole {dtype:?} blocks");
        }
        let row_bytes = dim / dtype.block_size() * dtype.type_size();
        let raw = qt.data()?.into_owned();
        if raw.len() != row_bytes * rows {
            candle_core::bail!(
                "token_embd holds {} bytes, expected {}",
                raw.len(),
                row_bytes * rows
            );
        }
        Ok(Self {
            dtype,
            raw,
            row_bytes,
            dim,
            rows,
        })
    }

    /// `[tokens.len(), dim]` f32.
    fn forward(&self, tokens: &[u32], dev: &Device) -> Result<Tensor> {
        let mut rows = Vec::with_capacity(tokens.len());
        for &t in tokens {
            let t = t as usize;
            if t >= self.rows {
                candle_core::bail!("token id {t} is outside the vocabulary of {}", self.rows);
            }
            let bytes = &self.raw[t * self.row_bytes..(t + 1) * self.row_bytes];
            let row = ggml_file::qtensor_from_ggml(self.dtype, bytes, vec![self.dim], dev)?;
            rows.push(row.dequantize(dev)?);
        }
        Tensor::stack(&rows, 0)
    }
}

enum Qkv {
    Split { q: QMatMul, k: QMatMul, v: QMatMul },
    Fused(QMatMul),
}

enum Ffn {
    Split {
        gate: QMatMul,
        up: QMatMul,
    },
    /// phi3: `ffn_up` yields gate and up side by side.
    Fused(QMatMul),
}

struct Layer {
    attn_norm: Tensor,
    qkv: Qkv,
    biases: Option<[Tensor; 3]>,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    wo: QMatMul,
    post_attn_norm: Option<Tensor>,
    ffn_norm: Tensor,
    ffn: Ffn,
    down: QMatMul,
    post_ffn_norm: Option<Tensor>,
    /// Sliding-window attention: a position sees this many, itself included.
    window: Option<usize>,
    /// Index into [`Model::ropes`].
    rope: usize,
}

struct Rope {
    cos: Tensor,
    sin: Tensor,
}

/// Loaded weights, shared read-only by every [`Session`].
pub struct Model {
    arch: Arch,
    embed: Embedding,
    embed_scale: Option<f64>,
    layers: Vec<Layer>,
    norm: Tensor,
    output: QMatMul,
    ropes: Vec<Rope>,
    n_head: usize,
    n_kv: usize,
    head_dim: usize,
    rope_dim: usize,
    ff: usize,
    eps: f32,
    scale: f64,
    context: usize,
    device: Device,
}

/// Reads tensors, turning every weight into `convert(name, tensor)`.
struct Loader<'a, R> {
    ct: &'a Content,
    reader: &'a mut R,
    device: &'a Device,
    convert: &'a dyn Fn(&str, QTensor) -> Result<QTensor>,
}

impl<R: std::io::Read + std::io::Seek> Loader<'_, R> {
    fn has(&self, name: &str) -> bool {
        self.ct.tensor_infos.contains_key(name)
    }
    fn raw(&mut self, name: &str) -> Result<QTensor> {
        self.ct.tensor(self.reader, name, self.device)
    }
    fn mm(&mut self, name: &str) -> Result<QMatMul> {
        let qt = self.raw(name)?;
        QMatMul::from_qtensor((self.convert)(name, qt)?)
    }
    fn f32(&mut self, name: &str) -> Result<Tensor> {
        self.raw(name)?.dequantize(self.device)
    }
    fn opt_f32(&mut self, name: &str) -> Result<Option<Tensor>> {
        if self.has(name) {
            self.f32(name).map(Some)
        } else {
            Ok(None)
        }
    }
}

fn md_u32(ct: &Content, key: &str) -> Result<usize> {
    match ct.metadata.get(key) {
        Some(v) => Ok(v.to_u32()? as usize),
        None => candle_core::bail!("GGUF metadata has no {key}"),
    }
}

fn md_f32(ct: &Content, key: &str) -> Option<f32> {
    ct.metadata.get(key).and_then(|v| v.to_f32().ok())
}

/// cos/sin tables `[positions, dim / 2]` for inverse frequencies `inv`.
fn rope_table(inv: &[f32], positions: usize, mscale: f32, dev: &Device) -> Result<Rope> {
    let half = inv.len();
    let mut cos = Vec::with_capacity(positions * half);
    let mut sin = Vec::with_capacity(positions * half);
    for p in 0..positions {
        for f in inv {
            let a = p as f32 * f;
            cos.push(a.cos() * mscale);
            sin.push(a.sin() * mscale);
        }
    }
    Ok(Rope {
        cos: Tensor::from_vec(cos, (positions, half), dev)?,
        sin: Tensor::from_vec(sin, (positions, half), dev)?,
    })
}

fn inv_freq(dim: usize, base: f32, scale: f32) -> Vec<f32> {
    (0..dim)
        .step_by(2)
        .map(|i| scale / base.powf(i as f32 / dim as f32))
        .collect()
}

impl Model {
    /// Load `arch` from a GGUF file. `context` caps the positions (rope
    /// tables are built for that many). `convert` may re-quantise each
    /// 2-D weight (identity keeps the file's blocks).
    pub fn load<R: std::io::Read + std::io::Seek>(
        arch: Arch,
        ct: &Content,
        reader: &mut R,
        context: usize,
        convert: &dyn Fn(&str, QTensor) -> Result<QTensor>,
    ) -> Result<Self> {
        let device = Device::Cpu;
        let a = arch.name();
        let key = |k: &str| format!("{a}.{k}");
        let n_layer = md_u32(ct, &key("block_count"))?;
        let d = md_u32(ct, &key("embedding_length"))?;
        let n_head = md_u32(ct, &key("attention.head_count"))?;
        let n_kv = md_u32(ct, &key("attention.head_count_kv")).unwrap_or(n_head);
        let ff = md_u32(ct, &key("feed_forward_length"))?;
        let head_dim = md_u32(ct, &key("attention.key_length")).unwrap_or(d / n_head);
        let rope_dim = md_u32(ct, &key("rope.dimension_count")).unwrap_or(head_dim);
        let eps = md_f32(ct, &key("attention.layer_norm_rms_epsilon")).unwrap_or(1e-6);
        let base = md_f32(ct, &key("rope.freq_base")).unwrap_or(match arch {
            Arch::Gemma3 | Arch::Qwen2 | Arch::Qwen3 => 1_000_000.0,
            _ => 10_000.0,
        });
        if n_head == 0
            || n_kv == 0
            || n_head % n_kv != 0
            || rope_dim > head_dim
            || !rope_dim.is_multiple_of(2)
        {
            candle_core::bail!(
                "inconsistent attention shape: {n_head} heads, {n_kv} kv heads, head {head_dim}, rope {rope_dim}"
            );
        }
        let mut l = Loader {
            ct,
            reader,
            device: &device,
            convert,
        };

        // Rope tables: one, or gemma3's global + local pair.
        let mut ropes = Vec::new();
        match arch {
            Arch::Gemma3 => {
                let linear = md_f32(ct, &key("rope.scaling.factor")).unwrap_or(1.0);
                let local = md_f32(ct, &key("rope.local_freq_base")).unwrap_or(10_000.0);
                ropes.push(rope_table(
                    &inv_freq(rope_dim, base, 1.0 / linear.max(1.0)),
                    context,
                    1.0,
                    &device,
                )?);
                ropes.push(rope_table(
                    &inv_freq(rope_dim, local, 1.0),
                    context,
                    1.0,
                    &device,
                )?);
            }
            Arch::Phi3 if l.has("rope_factors_short.weight") => {
                let factors = l.f32("rope_factors_short.weight")?.to_vec1::<f32>()?;
                let mut inv = inv_freq(rope_dim, base, 1.0);
                if factors.len() != inv.len() {
                    candle_core::bail!(
                        "rope_factors_short has {} values, expected {}",
                        factors.len(),
                        inv.len()
                    );
                }
                for (f, s) in inv.iter_mut().zip(&factors) {
                    *f /= s;
                }
                let model_ctx = md_u32(ct, &key("context_length")).unwrap_or(4096) as f32;
                let orig = md_u32(ct, &key("rope.scaling.original_context_length"))
                    .map(|v| v as f32)
                    .unwrap_or(model_ctx);
                let ratio = model_ctx / orig;
                let mscale = if ratio > 1.0 {
                    (1.0 + ratio.ln() / orig.ln()).sqrt()
                } else {
                    1.0
                };
                ropes.push(rope_table(&inv, context, mscale, &device)?);
            }
            _ => ropes.push(rope_table(
                &inv_freq(rope_dim, base, 1.0),
                context,
                1.0,
                &device,
            )?),
        }

        let embed_q = l.raw("token_embd.weight")?;
        let embed = Embedding::new(&embed_q)?;
        let output = if l.has("output.weight") {
            l.mm("output.weight")?
        } else {
            QMatMul::from_qtensor(convert("output.weight", embed_q)?)?
        };
        let norm = l.f32("output_norm.weight")?;
        // gemma3: every 6th layer attends globally, the others see a window.
        let window = md_u32(ct, &key("attention.sliding_window")).ok();
        let mut layers = Vec::with_capacity(n_layer);
        for i in 0..n_layer {
            let p = format!("blk.{i}");
            let qkv = if l.has(&format!("{p}.attn_qkv.weight")) {
                Qkv::Fused(l.mm(&format!("{p}.attn_qkv.weight"))?)
            } else {
                Qkv::Split {
                    q: l.mm(&format!("{p}.attn_q.weight"))?,
                    k: l.mm(&format!("{p}.attn_k.weight"))?,
                    v: l.mm(&format!("{p}.attn_v.weight"))?,
                }
            };
            let biases = if l.has(&format!("{p}.attn_q.bias")) {
                Some([
                    l.f32(&format!("{p}.attn_q.bias"))?,
                    l.f32(&format!("{p}.attn_k.bias"))?,
                    l.f32(&format!("{p}.attn_v.bias"))?,
                ])
            } else {
                None
            };
            let ffn = if l.has(&format!("{p}.ffn_gate.weight")) {
                Ffn::Split {
                    gate: l.mm(&format!("{p}.ffn_gate.weight"))?,
                    up: l.mm(&format!("{p}.ffn_up.weight"))?,
                }
            } else {
                Ffn::Fused(l.mm(&format!("{p}.ffn_up.weight"))?)
            };
            let sliding = arch == Arch::Gemma3 && (i + 1) % 6 != 0;
            layers.push(Layer {
                attn_norm: l.f32(&format!("{p}.attn_norm.weight"))?,
                qkv,
                biases,
                q_norm: l.opt_f32(&format!("{p}.attn_q_norm.weight"))?,
                k_norm: l.opt_f32(&format!("{p}.attn_k_norm.weight"))?,
                wo: l.mm(&format!("{p}.attn_output.weight"))?,
                post_attn_norm: l.opt_f32(&format!("{p}.post_attention_norm.weight"))?,
                ffn_norm: l.f32(&format!("{p}.ffn_norm.weight"))?,
                ffn,
                down: l.mm(&format!("{p}.ffn_down.weight"))?,
                post_ffn_norm: l.opt_f32(&format!("{p}.post_ffw_norm.weight"))?,
                window: if sliding { window } else { None },
                rope: usize::from(sliding),
            });
        }
        Ok(Self {
            arch,
            embed,
            embed_scale: (arch == Arch::Gemma3).then(|| (d as f64).sqrt()),
            layers,
            norm,
            output,
            ropes,
            n_head,
            n_kv,
            head_dim,
            rope_dim,
            ff,
            eps,
            scale: 1.0 / (head_dim as f64).sqrt(),
            context,
            device,
        })
    }

    pub fn arch(&self) -> Arch {
        self.arch
    }

    pub fn vocab(&self) -> usize {
        self.embed.rows
    }
}

/// One generation: the KV cache of every layer.
pub struct Session {
    model: Arc<Model>,
    cache: Vec<Option<(Tensor, Tensor)>>,
    pos: usize,
}

impl Session {
    pub fn new(model: Arc<Model>) -> Self {
        let n = model.layers.len();
        Self {
            model,
            cache: vec![None; n],
            pos: 0,
        }
    }

    /// Feed `tokens` at the next positions; the logits after the last one.
    pub fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let m = Arc::clone(&self.model);
        let t = tokens.len();
        if t == 0 || self.pos + t > m.context {
            candle_core::bail!(
                "{} tokens at position {} do not fit the context of {}",
                t,
                self.pos,
                m.context
            );
        }
        let mut x = m.embed.forward(tokens, &m.device)?;
        if let Some(s) = m.embed_scale {
            x = (x * s)?;
        }
        let mut x = x.unsqueeze(0)?;
        for (i, layer) in m.layers.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, m.eps)?;
            let a = self.attention(&m, i, layer, &h)?;
            let a = match &layer.post_attn_norm {
                Some(w) => candle_nn::ops::rms_norm(&a, w, m.eps)?,
                None => a,
            };
            x = (x + a)?;
            let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, m.eps)?;
            let f = feed_forward(&m, layer, &h)?;
            let f = match &layer.post_ffn_norm {
                Some(w) => candle_nn::ops::rms_norm(&f, w, m.eps)?,
                None => f,
            };
            x = (x + f)?;
        }
        self.pos += t;
        let last = x.i((0, t - 1))?.unsqueeze(0)?.contiguous()?;
        let last = candle_nn::ops::rms_norm(&last, &m.norm, m.eps)?;
        m.output.forward(&last)?.squeeze(0)?.to_vec1::<f32>()
    }

    fn attention(&mut self, m: &Model, i: usize, layer: &Layer, h: &Tensor) -> Result<Tensor> {
        let (b, t, _) = h.dims3()?;
        let (hd, nh, nkv) = (m.head_dim, m.n_head, m.n_kv);
        let (q, k, v) = match &layer.qkv {
            Qkv::Split { q, k, v } => (q.forward(h)?, k.forward(h)?, v.forward(h)?),
            Qkv::Fused(w) => {
                let all = w.forward(h)?;
                (
                    all.narrow(D::Minus1, 0, nh * hd)?,
                    all.narrow(D::Minus1, nh * hd, nkv * hd)?,
                    all.narrow(D::Minus1, (nh + nkv) * hd, nkv * hd)?,
                )
            }
        };
        let (q, k, v) = match &layer.biases {
            Some([bq, bk, bv]) => (
                q.broadcast_add(bq)?,
                k.broadcast_add(bk)?,
                v.broadcast_add(bv)?,
            ),
            None => (q, k, v),
        };
        let q = q.reshape((b, t, nh, hd))?.transpose(1, 2)?.contiguous()?;
        let k = k.reshape((b, t, nkv, hd))?.transpose(1, 2)?.contiguous()?;
        let v = v.reshape((b, t, nkv, hd))?.transpose(1, 2)?.contiguous()?;
        let q = match &layer.q_norm {
            Some(w) => candle_nn::ops::rms_norm(&q, w, m.eps)?,
            None => q,
        };
        let k = match &layer.k_norm {
            Some(w) => candle_nn::ops::rms_norm(&k, w, m.eps)?,
            None => k,
        };
        let rope = &m.ropes[layer.rope];
        let q = apply_rope(m, rope, &q, self.pos)?;
        let k = apply_rope(m, rope, &k, self.pos)?;
        let (k, v) = match &self.cache[i] {
            Some((kc, vc)) => (Tensor::cat(&[kc, &k], 2)?, Tensor::cat(&[vc, &v], 2)?),
            None => (k, v),
        };
        self.cache[i] = Some((k.clone(), v.clone()));
        let total = k.dim(2)?;
        // A single decoding step sees the last `window` positions only.
        let (k, v, first) = match layer.window {
            Some(w) if t == 1 && total > w => (
                k.narrow(2, total - w, w)?,
                v.narrow(2, total - w, w)?,
                total - w,
            ),
            _ => (k, v, 0),
        };
        let k = candle_transformers::utils::repeat_kv(k, nh / nkv)?.contiguous()?;
        let v = candle_transformers::utils::repeat_kv(v, nh / nkv)?.contiguous()?;
        let mut att = (q.matmul(&k.t()?)? * m.scale)?;
        if t > 1 {
            let mask = mask(t, self.pos, first, k.dim(2)?, layer.window, &m.device)?;
            att = att.broadcast_add(&mask)?;
        }
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let out = att.matmul(&v)?.transpose(1, 2)?.reshape((b, t, nh * hd))?;
        layer.wo.forward(&out)
    }
}

/// Additive mask `[t, keys]` for queries at `pos..pos + t` over keys at
/// `first..first + keys`: causal, and within the window when there is one.
fn mask(
    t: usize,
    pos: usize,
    first: usize,
    keys: usize,
    window: Option<usize>,
    dev: &Device,
) -> Result<Tensor> {
    let mut m = Vec::with_capacity(t * keys);
    for qi in 0..t {
        let qp = pos + qi;
        for kj in 0..keys {
            let kp = first + kj;
            let visible = kp <= qp && window.is_none_or(|w| qp - kp < w);
            m.push(if visible { 0f32 } else { f32::NEG_INFINITY });
        }
    }
    Tensor::from_vec(m, (t, keys), dev)
}

fn apply_rope(m: &Model, rope: &Rope, x: &Tensor, pos: usize) -> Result<Tensor> {
    let t = x.dim(2)?;
    let cos = rope.cos.narrow(0, pos, t)?;
    let sin = rope.sin.narrow(0, pos, t)?;
    let rot = |x: &Tensor| match m.arch {
        Arch::Llama => candle_nn::rotary_emb::rope_i(x, &cos, &sin),
        _ => candle_nn::rotary_emb::rope(x, &cos, &sin),
    };
    if m.rope_dim == m.head_dim {
        return rot(x);
    }
    let head = x.narrow(D::Minus1, 0, m.rope_dim)?.contiguous()?;
    let tail = x.narrow(D::Minus1, m.rope_dim, m.head_dim - m.rope_dim)?;
    Tensor::cat(&[&rot(&head)?, &tail], D::Minus1)
}

fn feed_forward(m: &Model, layer: &Layer, h: &Tensor) -> Result<Tensor> {
    let (gate, up) = match &layer.ffn {
        Ffn::Split { gate, up } => (gate.forward(h)?, up.forward(h)?),
        Ffn::Fused(w) => {
            let both = w.forward(h)?;
            (
                both.narrow(D::Minus1, 0, m.ff)?,
                both.narrow(D::Minus1, m.ff, m.ff)?,
            )
        }
    };
    let act = match m.arch {
        Arch::Gemma3 => gate.gelu()?,
        _ => candle_nn::ops::silu(&gate)?,
    };
    layer.down.forward(&(act * up)?)
}

/// Keep a weight as the file stores it.
pub fn as_file(_: &str, qt: QTensor) -> Result<QTensor> {
    Ok(qt)
}

/// Dequantise a weight to f32 (dense matmuls).
pub fn to_f32(_: &str, qt: QTensor) -> Result<QTensor> {
    if qt.dtype() == GgmlDType::F32 {
        return Ok(qt);
    }
    QTensor::quantize(
        &qt.dequantize(&Device::Cpu)?.to_dtype(DType::F32)?,
        GgmlDType::F32,
    )
}
