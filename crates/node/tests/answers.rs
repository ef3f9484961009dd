//! Answers a user can trust, over HTTP with the real models: abstention on
//! off-topic questions from every generator, `[n]` markers backed by the
//! cited passages, and no looping answers.
mod common;

use common::*;
use ragfleet_rag::answer::{attribute, NO_ANSWER};
use ragfleet_rag::generate::Source;
use serde_json::{json, Value};

async fn local_node() -> TestNode {
    let gguf = models_dir().join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(gguf.is_file(), "missing {}", gguf.display());
    let node = TestNode::start(|c| {
        c.local.enabled = true;
    })
    .await;
    seed(&node).await;
    node
}

async fn ask(node: &TestNode, message: &str, generator: &str) -> Value {
    let (s, ans) = node
        .post_json(
            "/api/v1/chat",
            &json!({"message": message, "generator": generator, "max_tokens": 96}),
        )
        .await;
    assert_eq!(s, 200, "{ans}");
    ans
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_topic_questions_get_the_abstention_from_every_generator() {
    let node = local_node().await;
    let (_, health) = node.get("/health").await;
    let generators: Vec<String> = health["generators"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|g| g.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_else(|| vec!["extractive".into(), "local".into()]);
    assert!(generators.contains(&"local".to_string()), "{health}");
    for g in &generators {
        for q in [
            "What is the capital of Australia?",
            "Who painted the Mona Lisa?",
        ] {
            let ans = ask(&node, q, g).await;
            assert_eq!(ans["answer"], NO_ANSWER, "{g}: {q}: {ans}");
            assert_eq!(ans["citations"], json!([]), "{g}: {q}: {ans}");
            let (_, run) = node
                .get(&format!("/api/v1/runs/{}", ans["run_id"].as_str().unwrap()))
                .await;
            assert_eq!(run["relevance"]["abstained"], true, "{run}");
            // No model was called: the raw output is the abstention itself.
            assert_eq!(run["output"], NO_ANSWER);
        }
    }
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_answers_carry_markers_backed_by_the_cited_passages() {
    let node = local_node().await;
    for q in [
        "How tall is the Eiffel Tower?",
        "What is the Rust compiler called?",
    ] {
        let ans = ask(&node, q, "local").await;
        let answer = ans["answer"].as_str().unwrap();
        let cites = ans["citations"].as_array().unwrap();
        assert!(answer.contains('['), "{q}: {answer}");
        assert!(!cites.is_empty(), "{q}: {ans}");
        // Every sentence that cites [n] is supported by passage n, checked
        // against the passage text returned to the client.
        let sources: Vec<Source> = cites
            .iter()
            .map(|c| Source {
                n: c["n"].as_u64().unwrap() as usize,
                chunk_id: c["chunk_id"].as_str().unwrap().into(),
                title: c["title"].as_str().unwrap_or("").into(),
                text: c["snippet"].as_str().unwrap().into(),
            })
            .collect();
        let check = attribute(answer, &sources, 0.5, false);
        for s in &check.sentences {
            if !s.sources.is_empty() {
                assert!(s.support >= 0.5, "{q}: {s:?}");
            }
        }
        let (_, run) = node
            .get(&format!("/api/v1/runs/{}", ans["run_id"].as_str().unwrap()))
            .await;
        let attributed = run["attribution"].as_array().unwrap();
        assert!(!attributed.is_empty(), "{run}");
        for a in attributed {
            let n: Vec<u64> = a["sources"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Value::as_u64)
                .collect();
            for k in n {
                assert!(
                    answer.contains(&format!("[{k}]")) && cites.iter().any(|c| c["n"] == k),
                    "{q}: source {k} attributed but not cited: {ans}"
                );
            }
        }
    }
    node.stop().await.unwrap();
}

/// The largest number of times one 12-token span occurs in `text`.
fn max_repeat(text: &str, n: usize) -> usize {
    let toks: Vec<&str> = text.split_whitespace().collect();
    let mut counts: std::collections::HashMap<&[&str], usize> = Default::default();
    for w in toks.windows(n) {
        *counts.entry(w).or_default() += 1;
    }
    counts.values().copied().max().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs decoding controls from the models branch"]
async fn no_answer_repeats_a_12_token_span_more_than_twice() {
    let node = local_node().await;
    for q in [
        "What do worker bees collect?",
        "What is Cargo?",
        "How do bees communicate?",
    ] {
        for g in ["extractive", "local"] {
            let (s, ans) = node
                .post_json(
                    "/api/v1/chat",
                    &json!({"message": q, "generator": g, "max_tokens": 256}),
                )
                .await;
            assert_eq!(s, 200, "{ans}");
            let answer = ans["answer"].as_str().unwrap();
            assert!(max_repeat(answer, 12) <= 2, "{g}: {q}: {answer}");
        }
    }
    node.stop().await.unwrap();
}

#[test]
fn max_repeat_counts_spans() {
    let looped = "a b c d e f g h i j k l ".repeat(3);
    assert_eq!(max_repeat(&looped, 12), 3);
    assert_eq!(max_repeat("one two three", 12), 0);
}
