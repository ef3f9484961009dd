//! Shared test helpers: locating the real model files.
#![allow(dead_code)]
use std::path::PathBuf;

/// The models directory: $RAGFLEET_MODELS, else <workspace>/models. Panics
/// with instructions when the files are missing (tests never skip silently).
pub fn models_dir() -> PathBuf {
    let dir = std::env::var_os("RAGFLEET_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models"));
    for f in [
        "all-minilm-l6-v2/model.safetensors",
        "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    ] {
        assert!(
            dir.join(f).is_file(),
            "model file {} is missing: run scripts/fetch-models.sh (or set RAGFLEET_MODELS)",
            dir.join(f).display()
        );
    }
    dir
}

pub fn minilm_dir() -> PathBuf {
    models_dir().join("all-minilm-l6-v2")
}

pub fn smollm2_path() -> PathBuf {
    models_dir().join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
}

pub fn fixture(name: &str) -> serde_json::Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let s = std::fs::read_to_string(&p).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (made by scripts/make-model-fixtures.py)",
            p.display()
        )
    });
    serde_json::from_str(&s).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Gemma 3 270M (base model, Q4_K_M) from scripts/fetch-models.sh.
pub fn gemma3_path() -> PathBuf {
    let p = models_dir().join("gemma3/gemma-3-270m-q4_k_m.gguf");
    assert!(
        p.is_file(),
        "model file {} is missing: run scripts/fetch-models.sh (or set RAGFLEET_MODELS)",
        p.display()
    );
    p
}
