//! crate::transformer against candle-transformers' own quantized models for
//! the architectures without a real file here (qwen2, qwen3, phi3; llama
//! too), on tiny random GGUF files written at test time: the same weights
//! must give the same logits, prompt pass and decoding steps. (Gemma 3 is
//! checked on the real file against transformers, tests/gemma3.rs: candle's
//! Gemma 3 uses SiLU where Gemma uses GELU.)
use std::io::Cursor;
use std::sync::Arc;

use candle_core::quantized::gguf_file::{self, Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use candle_transformers::models::{
    quantized_llama, quantized_phi3, quantized_qwen2, quantized_qwen3,
};
use ragfleet_models::transformer::{self, Arch, Model, Session};

const VOCAB: usize = 96;
const D: usize = 64;
const HEADS: usize = 4;
const KV: usize = 2;
const HD: usize = 16;
const FF: usize = 96;
const LAYERS: usize = 2;
const CTX: usize = 64;

/// Deterministic pseudo-random values in [-a, a].
struct Rng(u64);
impl Rng {
    fn vals(&mut self, n: usize, a: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.0 = self
                    .0
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * a
            })
            .collect()
    }
}

/// candle's reference forward pass: (input ids, position) -> logits.
type Forward = Box<dyn FnMut(&Tensor, usize) -> candle_core::Result<Tensor>>;

fn tensor(rng: &mut Rng, dims: &[usize], a: f32, offset: f32) -> QTensor {
    let n = dims.iter().product();
    let v: Vec<f32> = rng.vals(n, a).into_iter().map(|x| x + offset).collect();
    let t = Tensor::from_vec(v, dims, &Device::Cpu).expect("tensor");
    QTensor::quantize(&t, GgmlDType::F32).expect("qtensor")
}

fn gguf(arch: &str) -> Vec<u8> {
    let mut rng = Rng(arch.len() as u64 * 7919);
    let mut tensors: Vec<(String, QTensor)> = vec![
        (
            "token_embd.weight".into(),
            tensor(&mut rng, &[VOCAB, D], 0.5, 0.0),
        ),
        (
            "output_norm.weight".into(),
            tensor(&mut rng, &[D], 0.1, 1.0),
        ),
        (
            "output.weight".into(),
            tensor(&mut rng, &[VOCAB, D], 0.2, 0.0),
        ),
    ];
    for i in 0..LAYERS {
        let p = format!("blk.{i}");
        let mut add = |name: &str, dims: &[usize], a: f32, off: f32| {
            tensors.push((format!("{p}.{name}"), tensor(&mut rng, dims, a, off)));
        };
        add("attn_norm.weight", &[D], 0.1, 1.0);
        add("ffn_norm.weight", &[D], 0.1, 1.0);
        add("attn_output.weight", &[D, HEADS * HD], 0.15, 0.0);
        add("ffn_down.weight", &[D, FF], 0.15, 0.0);
        if arch == "phi3" {
            add("attn_qkv.weight", &[(HEADS + 2 * KV) * HD, D], 0.15, 0.0);
            add("ffn_up.weight", &[2 * FF, D], 0.15, 0.0);
        } else {
            add("attn_q.weight", &[HEADS * HD, D], 0.15, 0.0);
            add("attn_k.weight", &[KV * HD, D], 0.15, 0.0);
            add("attn_v.weight", &[KV * HD, D], 0.15, 0.0);
            add("ffn_gate.weight", &[FF, D], 0.15, 0.0);
            add("ffn_up.weight", &[FF, D], 0.15, 0.0);
        }
        if arch == "qwen2" {
            add("attn_q.bias", &[HEADS * HD], 0.1, 0.0);
            add("attn_k.bias", &[KV * HD], 0.1, 0.0);
            add("attn_v.bias", &[KV * HD], 0.1, 0.0);
        }
        if arch == "qwen3" {
            add("attn_q_norm.weight", &[HD], 0.1, 1.0);
            add("attn_k_norm.weight", &[HD], 0.1, 1.0);
        }
    }
    let u = |v: usize| Value::U32(v as u32);
    let md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        // candle's qwen3 computes in f16 unless told f32 (0).
        ("general.dtype".into(), Value::U32(0)),
        (format!("{arch}.block_count"), u(LAYERS)),
        (format!("{arch}.embedding_length"), u(D)),
        (format!("{arch}.feed_forward_length"), u(FF)),
        (format!("{arch}.context_length"), u(CTX)),
        (format!("{arch}.attention.head_count"), u(HEADS)),
        (format!("{arch}.attention.head_count_kv"), u(KV)),
        (format!("{arch}.attention.key_length"), u(HD)),
        (format!("{arch}.attention.value_length"), u(HD)),
        (format!("{arch}.rope.dimension_count"), u(HD)),
        (format!("{arch}.rope.freq_base"), Value::F32(10_000.0)),
        (
            format!("{arch}.attention.layer_norm_rms_epsilon"),
            Value::F32(1e-5),
        ),
    ];
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut out = Cursor::new(Vec::new());
    gguf_file::write(&mut out, &md_refs, &t_refs).expect("write gguf");
    out.into_inner()
}

/// Logits (prompt pass, then each decoding step) from candle's model.
fn candle_logits(arch: &str, bytes: &[u8], prompt: &[u32], steps: &[u32]) -> Vec<Vec<f32>> {
    let dev = Device::Cpu;
    let mut c = Cursor::new(bytes);
    let ct = Content::read(&mut c).expect("content");
    let mut fwd: Forward = match arch {
        "llama" => {
            let mut m = quantized_llama::ModelWeights::from_gguf(ct, &mut c, &dev).expect("llama");
            Box::new(move |x: &Tensor, p: usize| m.forward(x, p))
        }
        "qwen2" => {
            let mut m = quantized_qwen2::ModelWeights::from_gguf(ct, &mut c, &dev).expect("qwen2");
            Box::new(move |x: &Tensor, p: usize| m.forward(x, p))
        }
        "qwen3" => {
            let mut m = quantized_qwen3::ModelWeights::from_gguf(ct, &mut c, &dev).expect("qwen3");
            Box::new(move |x: &Tensor, p: usize| m.forward(x, p))
        }
        "phi3" => {
            let mut m =
                quantized_phi3::ModelWeights::from_gguf(false, ct, &mut c, &dev).expect("phi3");
            Box::new(move |x: &Tensor, p: usize| m.forward(x, p))
        }
        other => panic!("{other}"),
    };
    let last = |t: Tensor| -> Vec<f32> {
        let v = t
            .flatten_all()
            .expect("flat")
            .to_vec1::<f32>()
            .expect("vec");
        v[v.len() - VOCAB..].to_vec()
    };
    let mut out = Vec::new();
    let x = Tensor::new(prompt, &dev)
        .and_then(|t| t.unsqueeze(0))
        .expect("input");
    out.push(last(fwd(&x, 0).expect("prompt pass")));
    for (i, &t) in steps.iter().enumerate() {
        let x = Tensor::new(&[t], &dev)
            .and_then(|t| t.unsqueeze(0))
            .expect("input");
        out.push(last(fwd(&x, prompt.len() + i).expect("step")));
    }
    out
}

fn our_logits(arch: Arch, bytes: &[u8], prompt: &[u32], steps: &[u32]) -> Vec<Vec<f32>> {
    let mut c = Cursor::new(bytes);
    let ct = Content::read(&mut c).expect("content");
    let m = Model::load(arch, &ct, &mut c, CTX, &transformer::as_file).expect("load");
    assert_eq!(m.arch(), arch);
    assert_eq!(m.vocab(), VOCAB);
    let mut s = Session::new(Arc::new(m));
    let mut out = vec![s.forward(prompt).expect("prompt pass")];
    for &t in steps {
        out.push(s.forward(&[t]).expect("step"));
    }
    out
}

fn check(arch: &str) {
    let bytes = gguf(arch);
    let prompt = [3u32, 17, 42, 5, 88, 1, 60];
    let steps = [9u32, 31, 77];
    let a = candle_logits(arch, &bytes, &prompt, &steps);
    let b = our_logits(
        Arch::from_name(arch).expect("arch"),
        &bytes,
        &prompt,
        &steps,
    );
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        let diff = x
            .iter()
            .zip(y)
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max);
        let scale = x.iter().map(|p| p.abs()).fold(0f32, f32::max);
        assert!(scale > 0.1, "{arch}: degenerate logits");
        assert!(
            diff <= 1e-4 * scale.max(1.0),
            "{arch} step {i}: max |Δ| {diff} (scale {scale})"
        );
    }
}

#[test]
fn qwen2_matches_candle() {
    check("qwen2");
}

#[test]
fn qwen3_matches_candle() {
    check("qwen3");
}

#[test]
fn phi3_matches_candle() {
    check("phi3");
}

#[test]
fn llama_matches_candle() {
    check("llama");
}
