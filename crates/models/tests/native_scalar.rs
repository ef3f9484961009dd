//! The native forward's portable kernels (what aarch64 and pre-AVX2 CPUs
//! run) on the real SmolLM2 file, against candle's f32 reference. Its own
//! test binary: `RAGFLEET_NO_SIMD` is read once per process, before the first
//! kernel runs.
mod common;

use futures::StreamExt;
use ragfleet_models::{LocalLlama, LocalLlamaOptions, WeightFormat};
use ragfleet_rag::generate::{ChatMessage, GenParams, GenerateRequest, Generator, Role};

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// Same check as `native_logits_match_the_f32_reference` in local_llama.rs
/// (same tolerance and reasoning), shorter: the scalar kernels are slow.
#[tokio::test]
async fn scalar_kernels_match_the_f32_reference() {
    std::env::set_var("RAGFLEET_NO_SIMD", "1");
    let native = LocalLlama::load(common::smollm2_path(), LocalLlamaOptions::default())
        .expect("load native");
    let reference = LocalLlama::load(
        common::smollm2_path(),
        LocalLlamaOptions {
            weights: WeightFormat::F32,
            ..Default::default()
        },
    )
    .expect("load f32");
    let msgs = [ChatMessage {
        role: Role::User,
        content: "What is the capital of France?".into(),
    }];
    let prompt = native
        .encode(&native.render_chat(&msgs).expect("render"))
        .expect("encode");
    let steps = 10;
    let ours = native.logits_trace(&prompt, steps, None).expect("native");
    let greedy: Vec<u32> = ours.iter().map(|l| argmax(l)).collect();
    let theirs = reference
        .logits_trace(&prompt, steps, Some(&greedy))
        .expect("reference");
    let mut max_diff = 0f32;
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        assert_eq!(argmax(b), greedy[i], "step {i}");
        for (x, y) in a.iter().zip(b) {
            max_diff = max_diff.max((x - y).abs());
        }
    }
    eprintln!("scalar kernels, {steps} steps: max |logit diff| {max_diff:.2e}");
    assert!(max_diff <= 1e-3, "max logit difference {max_diff}");
    // The answer itself: "The capital of France is Paris."
    let mut s = native.generate(GenerateRequest {
        messages: msgs.to_vec(),
        question: String::new(),
        sources: Vec::new(),
        params: GenParams {
            max_tokens: steps,
            ..GenParams::default()
        },
    });
    let mut text = String::new();
    while let Some(d) = s.next().await {
        text += &d.expect("delta");
    }
    assert!(text.contains("Paris"), "{text:?}");
}
