//! BertEmbedder on the real all-MiniLM-L6-v2 files against reference values
//! computed once with sentence-transformers (scripts/make-model-fixtures.py).
mod common;

use ragfleet_models::{BertEmbedder, BertOptions};
use ragfleet_rag::embed::Embedder;

struct Case {
    text: String,
    n_tokens: usize,
    embedding: Vec<f32>,
}

fn cases() -> Vec<Case> {
    let fx = common::fixture("minilm_embeddings.json");
    assert_eq!(fx["max_seq_length"], 256);
    fx["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|it| Case {
            text: it["text"].as_str().expect("text").to_string(),
            n_tokens: it["n_tokens"].as_u64().expect("n_tokens") as usize,
            embedding: it["embedding"]
                .as_array()
                .expect("embedding")
                .iter()
                .map(|x| x.as_f64().expect("float") as f32)
                .collect(),
        })
        .collect()
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: dimension");
    let worst = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst <= 1e-4, "{what}: max abs diff {worst} > 1e-4");
}

#[test]
fn matches_sentence_transformers_in_one_batch_and_one_by_one() {
    let cases = cases();
    assert!(cases.len() >= 8);
    let texts: Vec<&str> = cases.iter().map(|c| c.text.as_str()).collect();
    // Small batches + several workers: exercises sorting, padding, reordering.
    let e = BertEmbedder::load_with(
        common::minilm_dir(),
        BertOptions {
            batch_size: 3,
            threads: 2,
            ..Default::default()
        },
    )
    .expect("load");
    assert_eq!(e.dim(), 384);
    let got = e.embed(&texts).expect("embed");
    assert_eq!(got.len(), cases.len());
    for (g, c) in got.iter().zip(&cases) {
        assert_close(g, &c.embedding, &format!("batched {:?}", c.text));
        let norm: f32 = g.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
    }
    // Default options, one at a time: no dependence on batch neighbours.
    let single = BertEmbedder::load(common::minilm_dir()).expect("load");
    for c in &cases {
        let v = single.embed(&[c.text.as_str()]).expect("embed one");
        assert_close(&v[0], &c.embedding, &format!("single {:?}", c.text));
    }
}

#[test]
fn tokens_truncation_and_identity() {
    let e = BertEmbedder::load(common::minilm_dir()).expect("load");
    assert_eq!(
        e.truncation(),
        256,
        "sentence_bert_config.json max_seq_length"
    );
    assert_eq!(e.max_tokens(), 254);
    for c in cases() {
        assert_eq!(
            e.count_tokens(&c.text),
            c.n_tokens,
            "count_tokens {:?}",
            c.text
        );
    }
    // The long fixture sentence really is past the window (so truncation is tested).
    assert!(cases().iter().any(|c| c.n_tokens > 256));
    let id = e.id();
    let (name, hash) = id.split_once('@').expect("name@hash");
    assert_eq!(name, "all-minilm-l6-v2");
    assert_eq!(hash.len(), 12);
    assert!(hash.chars().all(|c| c.is_ascii_hexdigit()));
    assert!(e.embed(&[]).expect("empty batch").is_empty());
}

#[test]
fn missing_or_broken_model_dir_is_a_clear_error() {
    let tmp = tempfile::tempdir().expect("tmp");
    let err = BertEmbedder::load(tmp.path())
        .err()
        .expect("must fail")
        .to_string();
    assert!(err.contains("config.json"), "{err}");
    assert!(err.contains("fetch-models.sh"), "{err}");

    std::fs::copy(
        common::minilm_dir().join("config.json"),
        tmp.path().join("config.json"),
    )
    .expect("copy");
    std::fs::copy(
        common::minilm_dir().join("tokenizer.json"),
        tmp.path().join("tokenizer.json"),
    )
    .expect("copy");
    std::fs::write(tmp.path().join("model.safetensors"), b"not safetensors").expect("write");
    let err = BertEmbedder::load(tmp.path())
        .err()
        .expect("must fail")
        .to_string();
    assert!(err.contains("model.safetensors"), "{err}");
}
