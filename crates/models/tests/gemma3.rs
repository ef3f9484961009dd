//! A second real architecture: Gemma 3 270M (the *base* model, Q4_K_M GGUF
//! from scripts/fetch-models.sh) through crate::transformer and the
//! SentencePiece tokenizer. The references were computed once by another
//! implementation — `transformers` (tokenizer converted from the GGUF's
//! vocabulary; Gemma 3 forward in torch float32 over the dequantised
//! weights) — with scripts/make-gemma-fixtures.py.
mod common;

use std::sync::OnceLock;

use futures::StreamExt;
use ragfleet_models::{LocalLlama, LocalLlamaOptions, WeightFormat};
use ragfleet_rag::generate::{ChatMessage, GenParams, GenerateRequest, Generator, Role};

fn gemma() -> &'static LocalLlama {
    static G: OnceLock<LocalLlama> = OnceLock::new();
    G.get_or_init(|| {
        LocalLlama::load(common::gemma3_path(), LocalLlamaOptions::default()).expect("load gemma3")
    })
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("ids")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

fn greedy(l: &LocalLlama, prompt: &[u32], steps: usize) -> Vec<u32> {
    l.logits_trace(prompt, steps, None)
        .expect("trace")
        .iter()
        .map(|v| {
            let mut best = 0;
            for (i, x) in v.iter().enumerate() {
                if *x > v[best] {
                    best = i;
                }
            }
            best as u32
        })
        .collect()
}

#[test]
fn token_ids_match_the_reference_tokenizer() {
    let fx = common::fixture("gemma3_reference.json");
    let g = gemma();
    assert_eq!(g.architecture(), "gemma3");
    let texts = fx["texts"].as_array().expect("texts");
    assert!(texts.len() >= 5);
    for t in texts {
        let text = t["text"].as_str().expect("text");
        let want = ids(&t["ids"]);
        assert_eq!(g.encode(text).expect("encode"), want, "ids of {text:?}");
        // And back: the ids spell the text (control tokens print nothing).
        if !text.contains("<start_of_turn>") {
            assert_eq!(g.decode(&want), text);
        }
    }
}

#[test]
fn first_16_greedy_tokens_match_the_reference_forward() {
    let fx = common::fixture("gemma3_reference.json");
    let r = &fx["greedy"];
    let prompt = ids(&r["prompt_ids"]);
    let want = ids(&r["ids"]);
    assert_eq!(want.len(), 16);
    // The prompt ids come from the tokenizer too (BOS first).
    let g = gemma();
    let mut enc = vec![2];
    enc.extend(
        g.encode(r["prompt"].as_str().expect("prompt"))
            .expect("encode"),
    );
    assert_eq!(enc, prompt);
    let got = greedy(g, &prompt, 16);
    assert_eq!(
        got,
        want,
        "greedy ids differ from the reference: {:?} vs {:?}",
        g.decode(&got),
        r["text"]
    );
}

#[test]
fn dense_f32_weights_give_the_same_greedy_tokens() {
    let fx = common::fixture("gemma3_reference.json");
    let r = &fx["greedy"];
    let g = LocalLlama::load(
        common::gemma3_path(),
        LocalLlamaOptions {
            weights: WeightFormat::F32,
            ..LocalLlamaOptions::default()
        },
    )
    .expect("load f32");
    assert_eq!(greedy(&g, &ids(&r["prompt_ids"]), 16), ids(&r["ids"]));
}

#[tokio::test]
async fn greedy_generation_is_the_same_twice() {
    let g = gemma();
    let msgs = vec![ChatMessage {
        role: Role::User,
        content: "Name three colours of the rainbow.".into(),
    }];
    // No chat template in a base model's file: Gemma's turn format, BOS first.
    let rendered = g.render_chat(&msgs).expect("render");
    assert_eq!(
        rendered,
        "<bos><start_of_turn>user\nName three colours of the rainbow.<end_of_turn>\n<start_of_turn>model\n"
    );
    assert_eq!(g.prompt_ids(&msgs).expect("ids").first(), Some(&2));
    // <end_of_turn> and <eos> end the answer.
    let eot = g.encode("<end_of_turn>").expect("eot")[0];
    assert!(g.stop_token_ids().contains(&eot) && g.stop_token_ids().contains(&1));
    let params = GenParams {
        max_tokens: 24,
        ..GenParams::default()
    };
    let run = || async {
        let mut s = g.generate(GenerateRequest {
            messages: msgs.clone(),
            question: msgs[0].content.clone(),
            sources: Vec::new(),
            params: params.clone(),
        });
        let mut out = String::new();
        while let Some(d) = s.next().await {
            out.push_str(&d.expect("delta"));
        }
        out
    };
    let a = run().await;
    let b = run().await;
    assert!(!a.trim().is_empty());
    assert_eq!(a, b);
    let ids_a = g.generate_ids(&msgs, &params).expect("ids");
    assert_eq!(ids_a, g.generate_ids(&msgs, &params).expect("ids"));
    assert_eq!(g.decode(&ids_a), a);
}
