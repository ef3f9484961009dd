//! The BERT encoder forward pass for sentence embeddings, on plain f32
//! buffers and gemm (through [`crate::kernels`]), numerically the same model
//! as candle-transformers' `BertModel` (which the tests compare it with).
//!
//! What it does differently from a padded-batch implementation:
//! - **No padding.** A batch is the concatenation of its sequences' tokens
//!   (T rows); every projection is one T-row matmul, and attention runs per
//!   sequence on its own length, so no work (and no mask) is spent on pad
//!   positions.
//! - **Fused Q/K/V**: one matmul against the three weight matrices
//!   concatenated at load; the heads are read from it through strided views
//!   (no transposes, no copies), and the scores' 1/√d scale is applied by
//!   the matmul.
//! - **In-place residuals**: the attention-output and feed-forward-output
//!   matmuls accumulate straight into the hidden state; the bias is added by
//!   the layer-norm pass, the intermediate bias by the GELU pass.
//! - The feed-forward block runs in row blocks so that its 4×-wide
//!   intermediate activations stay in the core's L2 cache.
//! - All buffers live in a [`Scratch`] reused from batch to batch.
use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{Config, HiddenAct};

use crate::kernels::{self, Activation};

/// Rows (tokens) per feed-forward block: 128 × 1536 floats of intermediate
/// activations (MiniLM) is 768 KiB.
const FFN_ROWS: usize = 128;

struct Layer {
    /// Q, K and V projections as one (hidden × 3·hidden) matrix, row-major
    /// (input dimension first): columns [0, h) are Q, [h, 2h) K, [2h, 3h) V.
    qkv_w: Vec<f32>,
    qkv_b: Vec<f32>,
    /// (hidden × hidden), input dimension first.
    out_w: Vec<f32>,
    out_b: Vec<f32>,
    ln1_g: Vec<f32>,
    ln1_b: Vec<f32>,
    /// (hidden × intermediate).
    up_w: Vec<f32>,
    up_b: Vec<f32>,
    /// (intermediate × hidden).
    down_w: Vec<f32>,
    down_b: Vec<f32>,
    ln2_g: Vec<f32>,
    ln2_b: Vec<f32>,
}

pub(crate) struct BertEncoder {
    hidden: usize,
    heads: usize,
    intermediate: usize,
    eps: f32,
    act: Activation,
    max_positions: usize,
    vocab: usize,
    word_emb: Vec<f32>,
    pos_emb: Vec<f32>,
    /// Token type 0's embedding (every input is a single segment).
    type_emb: Vec<f32>,
    emb_ln_g: Vec<f32>,
    emb_ln_b: Vec<f32>,
    layers: Vec<Layer>,
}

/// Working memory of one forward pass; keep one per thread and reuse it.
#[derive(Default)]
pub(crate) struct Scratch {
    x: Vec<f32>,
    qkv: Vec<f32>,
    ctx: Vec<f32>,
    scores: Vec<f32>,
    inter: Vec<f32>,
}

fn vec1(vb: &VarBuilder, n: usize, name: &str) -> candle_core::Result<Vec<f32>> {
    vb.get(n, name)?.to_dtype(DType::F32)?.to_vec1()
}

/// A Linear layer's weight, stored (out × in) in the file, transposed to
/// (in × out) row-major.
fn weight_t(vb: &VarBuilder, out: usize, inp: usize, name: &str) -> candle_core::Result<Tensor> {
    vb.get((out, inp), name)?.to_dtype(DType::F32)?.t()
}

fn flat(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.contiguous()?.flatten_all()?.to_vec1()
}

impl BertEncoder {
    /// Load the weights of a BERT model in Hugging Face layout (names as
    /// `BertModel` reads them, with or without the `bert.` prefix).
    pub(crate) fn load(vb: VarBuilder, config: &Config) -> candle_core::Result<Self> {
        let vb = match &config.model_type {
            Some(prefix) if !vb.contains_tensor("embeddings.word_embeddings.weight") => {
                vb.pp(prefix)
            }
            _ => vb,
        };
        let h = config.hidden_size;
        let heads = config.num_attention_heads;
        if heads == 0 || h / heads * heads != h {
            candle_core::bail!("hidden_size {h} is not a multiple of num_attention_heads {heads}");
        }
        let inter = config.intermediate_size;
        let emb = vb.pp("embeddings");
        let word_emb = flat(&emb.get((config.vocab_size, h), "word_embeddings.weight")?)?;
        let pos_emb = flat(&emb.get(
            (config.max_position_embeddings, h),
            "position_embeddings.weight",
        )?)?;
        let type_emb = flat(
            &emb.get((config.type_vocab_size, h), "token_type_embeddings.weight")?
                .get(0)?,
        )?;
        let emb_ln_g = vec1(&emb, h, "LayerNorm.weight")?;
        let emb_ln_b = vec1(&emb, h, "LayerNorm.bias")?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let l = vb.pp(format!("encoder.layer.{i}"));
            let sa = l.pp("attention.self");
            let qkv_w = Tensor::cat(
                &[
                    weight_t(&sa, h, h, "query.weight")?,
                    weight_t(&sa, h, h, "key.weight")?,
                    weight_t(&sa, h, h, "value.weight")?,
                ],
                1,
            )?;
            let mut qkv_b = vec1(&sa, h, "query.bias")?;
            qkv_b.extend(vec1(&sa, h, "key.bias")?);
            qkv_b.extend(vec1(&sa, h, "value.bias")?);
            let ao = l.pp("attention.output");
            layers.push(Layer {
                qkv_w: flat(&qkv_w)?,
                qkv_b,
                out_w: flat(&weight_t(&ao, h, h, "dense.weight")?)?,
                out_b: vec1(&ao, h, "dense.bias")?,
                ln1_g: vec1(&ao, h, "LayerNorm.weight")?,
                ln1_b: vec1(&ao, h, "LayerNorm.bias")?,
                up_w: flat(&weight_t(&l, inter, h, "intermediate.dense.weight")?)?,
                up_b: vec1(&l, inter, "intermediate.dense.bias")?,
                down_w: flat(&weight_t(&l, h, inter, "output.dense.weight")?)?,
                down_b: vec1(&l, h, "output.dense.bias")?,
                ln2_g: vec1(&l, h, "output.LayerNorm.weight")?,
                ln2_b: vec1(&l, h, "output.LayerNorm.bias")?,
            });
        }
        Ok(Self {
            hidden: h,
            heads,
            intermediate: inter,
            eps: config.layer_norm_eps as f32,
            act: match config.hidden_act {
                HiddenAct::Gelu => Activation::GeluErf,
                HiddenAct::GeluApproximate => Activation::GeluTanh,
                HiddenAct::Relu => Activation::Relu,
            },
            max_positions: config.max_position_embeddings,
            vocab: config.vocab_size,
            word_emb,
            pos_emb,
            type_emb,
            emb_ln_g,
            emb_ln_b,
            layers,
        })
    }

    /// Sentence embeddings of a batch of token-id sequences (special tokens
    /// included): the last hidden state mean-pooled over each sequence's
    /// tokens, L2-normalised. Empty sequences give zero vectors.
    pub(crate) fn embed(
        &self,
        seqs: &[&[u32]],
        scratch: &mut Scratch,
    ) -> candle_core::Result<Vec<Vec<f32>>> {
        let h = self.hidden;
        self.forward(seqs, scratch)?;
        let mut out = Vec::with_capacity(seqs.len());
        let mut start = 0;
        for s in seqs {
            let rows = &scratch.x[start * h..(start + s.len()) * h];
            start += s.len();
            let mut v = vec![0f32; h];
            for row in rows.chunks_exact(h) {
                for (a, x) in v.iter_mut().zip(row) {
                    *a += x;
                }
            }
            let n = (s.len() as f32).max(1.0);
            v.iter_mut().for_each(|a| *a /= n);
            let norm = v.iter().map(|a| a * a).sum::<f32>().sqrt().max(1e-12);
            v.iter_mut().for_each(|a| *a /= norm);
            out.push(v);
        }
        Ok(out)
    }

    /// The last hidden state of every token of every sequence, rows in
    /// sequence order ((Σ lengths) × hidden, row-major), left in `scratch.x`.
    pub(crate) fn forward(
        &self,
        seqs: &[&[u32]],
        scratch: &mut Scratch,
    ) -> candle_core::Result<()> {
        let h = self.hidden;
        let total: usize = seqs.iter().map(|s| s.len()).sum();
        for s in seqs {
            if s.len() > self.max_positions {
                candle_core::bail!(
                    "sequence of {} tokens, the model has {} positions",
                    s.len(),
                    self.max_positions
                );
            }
            if let Some(&id) = s.iter().find(|&&id| id as usize >= self.vocab) {
                candle_core::bail!("token id {id} out of the vocabulary ({})", self.vocab);
            }
        }
        let longest = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
        let Scratch {
            x,
            qkv,
            ctx,
            scores,
            inter,
        } = scratch;
        resize(x, total * h);
        resize(qkv, total * 3 * h);
        resize(ctx, total * h);
        resize(scores, longest * longest);
        resize(inter, FFN_ROWS.min(total) * self.intermediate);
        let x = &mut x[..total * h];
        let qkv = &mut qkv[..total * 3 * h];
        let ctx = &mut ctx[..total * h];

        // Embeddings: word + position + token type 0, then layer norm.
        let mut rows = x.chunks_exact_mut(h);
        for s in seqs {
            for (pos, (&id, row)) in s.iter().zip(rows.by_ref()).enumerate() {
                let w = &self.word_emb[id as usize * h..][..h];
                let p = &self.pos_emb[pos * h..][..h];
                for (((o, w), p), t) in row.iter_mut().zip(w).zip(p).zip(&self.type_emb) {
                    *o = w + p + t;
                }
            }
        }
        kernels::bias_layer_norm_rows(x, None, &self.emb_ln_g, &self.emb_ln_b, self.eps);

        for layer in &self.layers {
            self.layer(layer, seqs, total, x, qkv, ctx, scores, inter);
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn layer(
        &self,
        l: &Layer,
        seqs: &[&[u32]],
        total: usize,
        x: &mut [f32],
        qkv: &mut [f32],
        ctx: &mut [f32],
        scores: &mut [f32],
        inter: &mut [f32],
    ) {
        let h = self.hidden;
        let h3 = 3 * h;
        let d = h / self.heads;
        let scale = 1.0 / (d as f32).sqrt();

        // Q | K | V for all tokens at once.
        kernels::matmul(
            (total, h3, h),
            qkv,
            h3,
            false,
            (x, h, 1),
            (&l.qkv_w, h3, 1),
            1.0,
        );
        kernels::bias_rows(qkv, &l.qkv_b);

        // Attention, per sequence and head, on the sequence's own length.
        let mut start = 0;
        for s in seqs {
            let n = s.len();
            if n == 0 {
                continue;
            }
            let base = start * h3;
            for head in 0..self.heads {
                let q = &qkv[base + head * d..];
                let k = &qkv[base + h + head * d..];
                let v = &qkv[base + 2 * h + head * d..];
                // scores (n×n) = scale · Q (n×d) · Kᵀ (d×n); Kᵀ is K read
                // with its strides swapped.
                kernels::matmul((n, n, d), scores, n, false, (q, h3, 1), (k, 1, h3), scale);
                for row in scores[..n * n].chunks_exact_mut(n) {
                    kernels::softmax(row);
                }
                // this head's columns of ctx (n×d) = P (n×n) · V (n×d)
                kernels::matmul(
                    (n, d, n),
                    &mut ctx[start * h + head * d..],
                    h,
                    false,
                    (scores, n, 1),
                    (v, h3, 1),
                    1.0,
                );
            }
            start += n;
        }

        // x = LayerNorm(x + ctx·Wo + bo)
        kernels::matmul(
            (total, h, h),
            x,
            h,
            true,
            (ctx, h, 1),
            (&l.out_w, h, 1),
            1.0,
        );
        kernels::bias_layer_norm_rows(x, Some(&l.out_b), &l.ln1_g, &l.ln1_b, self.eps);

        // x = LayerNorm(x + act(x·W1 + b1)·W2 + b2), FFN_ROWS rows at a time.
        let i = self.intermediate;
        for xb in x.chunks_mut(FFN_ROWS * h) {
            let rows = xb.len() / h;
            let ib = &mut inter[..rows * i];
            kernels::matmul((rows, i, h), ib, i, false, (xb, h, 1), (&l.up_w, i, 1), 1.0);
            kernels::bias_act_rows(ib, &l.up_b, self.act);
            kernels::matmul(
                (rows, h, i),
                xb,
                h,
                true,
                (ib, i, 1),
                (&l.down_w, h, 1),
                1.0,
            );
            kernels::bias_layer_norm_rows(xb, Some(&l.down_b), &l.ln2_g, &l.ln2_b, self.eps);
        }
    }
}

/// Grow (never shrink) a buffer to `n` elements; contents are overwritten by
/// the caller.
fn resize(buf: &mut Vec<f32>, n: usize) {
    if buf.len() < n {
        buf.resize(n, 0.0);
    }
}

#[cfg(test)]
mod tests {
    //! The encoder against candle-transformers' `BertModel` on the real
    //! all-MiniLM-L6-v2 weights: one padded batch of mixed lengths through
    //! `BertModel` (attention mask), the same sequences unpadded through
    //! [`BertEncoder`].
    use std::path::PathBuf;

    use candle_core::{DType, Device, Tensor};
    use candle_nn::VarBuilder;
    use candle_transformers::models::bert::{BertModel, Config};
    use tokenizers::{Tokenizer, TruncationParams};

    use super::{BertEncoder, Scratch};

    fn minilm_dir() -> PathBuf {
        let dir = std::env::var_os("RAGFLEET_MODELS")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models"))
            .join("all-minilm-l6-v2");
        assert!(
            dir.join("model.safetensors").is_file(),
            "{} is missing: run scripts/fetch-models.sh (or set RAGFLEET_MODELS)",
            dir.display()
        );
        dir
    }

    #[test]
    fn equals_candle_bert_model_on_a_padded_batch() {
        let dir = minilm_dir();
        let config: Config =
            serde_json::from_slice(&std::fs::read(dir.join("config.json")).expect("config.json"))
                .expect("config");
        let mut tok = Tokenizer::from_file(dir.join("tokenizer.json")).expect("tokenizer");
        tok.with_padding(None);
        tok.with_truncation(Some(TruncationParams {
            max_length: 256,
            ..Default::default()
        }))
        .expect("truncation");
        let long = "Load balancers spread requests over nodes. ".repeat(40);
        let texts = [
            "Short query?",
            long.as_str(),
            "",
            "Retrieval-augmented generation grounds answers in documents.",
            "Ünïcödé: café, naïve, Straße, 東京は日本の首都です。",
        ];
        let seqs: Vec<Vec<u32>> = texts
            .iter()
            .map(|t| {
                tok.encode_fast(*t, true)
                    .expect("encode")
                    .get_ids()
                    .to_vec()
            })
            .collect();
        assert_eq!(seqs[1].len(), 256, "one input at the truncation length");
        assert_eq!(seqs[2].len(), 2, "one input of only [CLS] [SEP]");

        let weights = std::fs::read(dir.join("model.safetensors")).expect("weights");
        let dev = Device::Cpu;
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &dev).expect("vb");
        let reference = BertModel::load(vb.clone(), &config).expect("BertModel");
        let encoder = BertEncoder::load(vb, &config).expect("BertEncoder");

        // Reference: padded (n, len) batch with an attention mask.
        let n = seqs.len();
        let len = seqs.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = vec![0u32; n * len];
        let mut mask = vec![0u32; n * len];
        for (r, s) in seqs.iter().enumerate() {
            ids[r * len..r * len + s.len()].copy_from_slice(s);
            mask[r * len..r * len + s.len()].fill(1);
        }
        let ids = Tensor::from_vec(ids, (n, len), &dev).expect("ids");
        let mask = Tensor::from_vec(mask, (n, len), &dev).expect("mask");
        let want = reference
            .forward(&ids, &ids.zeros_like().expect("types"), Some(&mask))
            .expect("forward")
            .to_vec3::<f32>()
            .expect("hidden");

        let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        let mut scratch = Scratch::default();
        // Twice through one scratch (a larger batch first): stale buffer
        // contents must not leak into the result.
        encoder
            .forward(&[refs[1], refs[1]], &mut scratch)
            .expect("warm-up");
        encoder.forward(&refs, &mut scratch).expect("forward");
        let h = config.hidden_size;
        let mut worst = 0f32;
        let mut rows = scratch.x.chunks_exact(h);
        for (b, s) in seqs.iter().enumerate() {
            // Only the sequence's own positions: the rest of want[b] is padding.
            for (got, w) in rows.by_ref().take(s.len()).zip(&want[b]) {
                for (g, w) in got.iter().zip(w) {
                    worst = worst.max((g - w).abs());
                }
            }
        }
        assert!(worst <= 1e-4, "max abs diff of hidden states {worst}");

        // Pooled and normalised: the mean of the reference rows.
        let pooled = encoder
            .embed(&refs, &mut Scratch::default())
            .expect("embed");
        for (b, s) in seqs.iter().enumerate() {
            let mut mean = vec![0f32; h];
            for w in want[b].iter().take(s.len()) {
                for (m, w) in mean.iter_mut().zip(w) {
                    *m += w / s.len() as f32;
                }
            }
            let norm = mean.iter().map(|m| m * m).sum::<f32>().sqrt();
            for (g, m) in pooled[b].iter().zip(&mean) {
                assert!(
                    (g - m / norm).abs() <= 1e-5,
                    "pooled input {b}: {g} vs {}",
                    m / norm
                );
            }
        }
    }

    #[test]
    fn rejects_out_of_range_inputs() {
        let dir = minilm_dir();
        let config: Config =
            serde_json::from_slice(&std::fs::read(dir.join("config.json")).expect("config.json"))
                .expect("config");
        let weights = std::fs::read(dir.join("model.safetensors")).expect("weights");
        let vb =
            VarBuilder::from_buffered_safetensors(weights, DType::F32, &Device::Cpu).expect("vb");
        let encoder = BertEncoder::load(vb, &config).expect("BertEncoder");
        let mut scratch = Scratch::default();
        let too_long = vec![101u32; config.max_position_embeddings + 1];
        assert!(encoder.forward(&[&too_long], &mut scratch).is_err());
        assert!(encoder
            .forward(&[&[101, 99_999, 102]], &mut scratch)
            .is_err());
        assert!(encoder.embed(&[], &mut scratch).expect("empty").is_empty());
    }
}
