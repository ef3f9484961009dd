//! Decoding controls and the architecture choice on real files:
//! - the repetition penalty, no-repeat n-gram ban and loop guard stop
//!   SmolLM2's loop on a question about Rust atomics with a short source
//!   (the loop issue 13 reported), where plain greedy decoding repeats;
//! - crate::transformer's llama forward agrees with candle's
//!   quantized_llama on SmolLM2 (both dense f32);
//! - a file of an unsupported architecture is refused by name.
mod common;

use std::sync::OnceLock;

use ragfleet_models::decode::max_span_repeats;
use ragfleet_models::{LocalLlama, LocalLlamaOptions, WeightFormat};
use ragfleet_rag::generate::{ChatMessage, GenParams, Role};

fn smollm2() -> &'static LocalLlama {
    static L: OnceLock<LocalLlama> = OnceLock::new();
    L.get_or_init(|| {
        LocalLlama::load(common::smollm2_path(), LocalLlamaOptions::default()).expect("load")
    })
}

/// The RAG prompt of the reported loop: the default system prompt, one
/// short source, a question about atomics.
fn atomics_prompt() -> Vec<ChatMessage> {
    let system = format!(
        "{}\n\nSources:\n\n[1] Shared-State Concurrency\n{}\n\n",
        ragfleet_rag::config::DEFAULT_SYSTEM_PROMPT,
        "Atomics work like primitive types but are safe to share across threads. \
         Arc<T> is a type like Rc<T> that is safe to use in concurrent situations."
    );
    vec![
        ChatMessage {
            role: Role::System,
            content: system,
        },
        ChatMessage {
            role: Role::User,
            content: "What is an atomic in Rust?".into(),
        },
    ]
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

const SPAN: usize = 12;
const TOKENS: usize = 256;

#[test]
fn plain_greedy_decoding_loops_on_the_atomics_prompt() {
    // Without any control (raw greedy over the logits) the answer repeats
    // a 12-token span again and again until the cap: the failure to fix.
    let l = smollm2();
    let prompt = l.prompt_ids(&atomics_prompt()).expect("prompt");
    let trace = l.logits_trace(&prompt, TOKENS, None).expect("trace");
    let mut ids: Vec<u32> = trace.iter().map(|v| argmax(v)).collect();
    if let Some(end) = ids.iter().position(|t| l.stop_token_ids().contains(t)) {
        ids.truncate(end);
    }
    let reps = max_span_repeats(&ids, SPAN);
    assert!(
        reps > 2,
        "no loop without controls ({reps}): {:?}",
        l.decode(&ids)
    );
}

#[test]
fn default_decoding_controls_stop_the_loop() {
    let l = smollm2();
    let params = GenParams {
        max_tokens: TOKENS,
        ..GenParams::default()
    };
    let ids = l
        .generate_ids(&atomics_prompt(), &params)
        .expect("generate");
    let text = l.decode(&ids);
    assert!(!text.trim().is_empty());
    let reps = max_span_repeats(&ids, SPAN);
    assert!(
        reps <= 2,
        "a {SPAN}-token span occurs {reps} times: {text:?}"
    );
    // With the token-level controls off, the loop guard alone still ends
    // the answer early rather than at the cap.
    let off = GenParams {
        repetition_penalty: 1.0,
        no_repeat_ngram: 0,
        ..params
    };
    let ids = l.generate_ids(&atomics_prompt(), &off).expect("generate");
    let reps = max_span_repeats(&ids, SPAN);
    assert!(reps <= 2, "guard only: {reps}: {:?}", l.decode(&ids));
    assert!(ids.len() < TOKENS, "guard only ran to the cap");
}

#[test]
fn short_factual_answers_survive_the_controls() {
    let l = smollm2();
    let msgs = vec![ChatMessage {
        role: Role::User,
        content: "What is the capital of France?".into(),
    }];
    let ids = l
        .generate_ids(
            &msgs,
            &GenParams {
                max_tokens: 24,
                ..GenParams::default()
            },
        )
        .expect("generate");
    let text = l.decode(&ids);
    assert!(text.contains("Paris"), "{text:?}");
}

#[test]
fn transformer_llama_forward_matches_candle_quantized_llama() {
    let opts = || LocalLlamaOptions {
        weights: WeightFormat::F32,
        ..LocalLlamaOptions::default()
    };
    let candle = LocalLlama::load(common::smollm2_path(), opts()).expect("candle f32");
    let ours = LocalLlama::load_via_transformer(common::smollm2_path(), opts()).expect("ours");
    let prompt = candle.prompt_ids(&atomics_prompt()).expect("prompt");
    let a = candle.logits_trace(&prompt, 8, None).expect("candle");
    let forced: Vec<u32> = a.iter().map(|v| argmax(v)).collect();
    let b = ours.logits_trace(&prompt, 8, Some(&forced)).expect("ours");
    for (step, (x, y)) in a.iter().zip(&b).enumerate() {
        assert_eq!(argmax(x), argmax(y), "step {step}");
        let diff = x
            .iter()
            .zip(y)
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max);
        let scale = x.iter().map(|p| p.abs()).fold(0f32, f32::max);
        assert!(
            diff <= 1e-3 * scale,
            "step {step}: max |Δlogit| {diff} of {scale}"
        );
    }
}

/// A GGUF file with just an architecture name, one tensor and the keys a
/// loader reads before the weights.
fn tiny_gguf(arch: &str) -> tempfile::NamedTempFile {
    use candle_core::quantized::gguf_file::{self, Value};
    use candle_core::quantized::{GgmlDType, QTensor};
    let t = candle_core::Tensor::zeros((4, 32), candle_core::DType::F32, &candle_core::Device::Cpu)
        .expect("tensor");
    let qt = QTensor::quantize(&t, GgmlDType::F32).expect("qtensor");
    let arch_v = Value::String(arch.to_string());
    let model_v = Value::String("gpt2".into());
    let meta: Vec<(&str, &Value)> = vec![
        ("general.architecture", &arch_v),
        ("tokenizer.ggml.model", &model_v),
    ];
    let mut f = tempfile::Builder::new()
        .suffix(".gguf")
        .tempfile()
        .expect("tmp");
    gguf_file::write(f.as_file_mut(), &meta, &[("token_embd.weight", &qt)]).expect("write");
    f
}

#[test]
fn an_unsupported_architecture_is_named_with_the_supported_ones() {
    let f = tiny_gguf("mamba");
    let err = match LocalLlama::load(f.path(), LocalLlamaOptions::default()) {
        Ok(_) => panic!("a mamba file loaded"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("\"mamba\""), "{err}");
    for a in ["llama", "qwen2", "qwen3", "gemma3", "phi3"] {
        assert!(err.contains(a), "{a} missing from {err}");
    }
    assert!(err.contains(&f.path().display().to_string()), "{err}");
}
