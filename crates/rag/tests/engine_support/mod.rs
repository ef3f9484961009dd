//! Shared set-up for the engine tests: the real embedder (all-MiniLM-L6-v2
//! through ragfleet-models) and a small real corpus (SQuAD paragraphs in
//! BEIR layout).
#![allow(dead_code)]
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use ragfleet_models::BertEmbedder;
use ragfleet_rag::embed::Embedder;
use ragfleet_rag::generate::extractive::ExtractiveGenerator;
use ragfleet_rag::types::NewDocument;
use ragfleet_rag::{Engine, EngineConfig, Generators};

pub fn models_dir() -> PathBuf {
    std::env::var_os("RAGFLEET_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models"))
}

/// The real embedder, loaded once per test binary.
pub fn embedder() -> Arc<dyn Embedder> {
    static E: OnceLock<Arc<BertEmbedder>> = OnceLock::new();
    E.get_or_init(|| {
        Arc::new(
            BertEmbedder::load(models_dir().join("all-minilm-l6-v2"))
                .expect("all-MiniLM-L6-v2 under RAGFLEET_MODELS (scripts/fetch-models.sh)"),
        )
    })
    .clone()
}

pub fn config(dir: &Path) -> EngineConfig {
    EngineConfig {
        data_dir: dir.to_path_buf(),
        ..Default::default()
    }
}

pub async fn open(cfg: EngineConfig) -> Engine {
    Engine::open(
        cfg,
        embedder(),
        Generators::single("extractive", Arc::new(ExtractiveGenerator::new())),
    )
    .await
    .expect("engine opens")
}

/// The shared evaluation data (`../shared/data` beside the repository, or
/// `RAGFLEET_EVAL_DATA`; not `RAGFLEET_DATA`, which is the node's data directory).
pub fn data_dir() -> PathBuf {
    std::env::var_os("RAGFLEET_EVAL_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"))
}

pub struct Corpus {
    pub docs: Vec<NewDocument>,
    /// (query text, relevant doc id)
    pub queries: Vec<(String, String)>,
}

/// `n` paragraphs spread over the SQuAD articles, and for each one question
/// whose answer is in it.
pub fn squad_corpus(n: usize) -> Corpus {
    let dir = data_dir().join("squad-beir");
    let corpus = std::fs::read_to_string(dir.join("corpus.jsonl")).expect("squad-beir corpus");
    let lines: Vec<&str> = corpus.lines().collect();
    let step = lines.len() / n;
    let mut docs = Vec::new();
    for line in lines.iter().step_by(step).take(n) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        docs.push(NewDocument {
            id: Some(v["_id"].as_str().unwrap().to_string()),
            title: Some(v["title"].as_str().unwrap().to_string()),
            text: v["text"].as_str().unwrap().to_string(),
            collection: Some("squad".into()),
            ..Default::default()
        });
    }
    let wanted: HashMap<&str, ()> = docs
        .iter()
        .map(|d| (d.id.as_deref().unwrap(), ()))
        .collect();
    let qrels = std::fs::read_to_string(dir.join("qrels/test.tsv")).expect("qrels");
    let mut first_query: HashMap<String, String> = HashMap::new();
    for l in qrels.lines().skip(1) {
        let mut p = l.split('\t');
        let (q, d) = (p.next().unwrap(), p.next().unwrap());
        if wanted.contains_key(d) && !first_query.values().any(|x| x == d) {
            first_query.insert(q.to_string(), d.to_string());
        }
    }
    let qtext = std::fs::read_to_string(dir.join("queries.jsonl")).unwrap();
    let mut queries = Vec::new();
    for l in qtext.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        if let Some(d) = first_query.get(v["_id"].as_str().unwrap()) {
            queries.push((v["text"].as_str().unwrap().to_string(), d.clone()));
        }
    }
    queries.sort_by(|a, b| a.1.cmp(&b.1));
    Corpus { docs, queries }
}
