//! Engine configuration: the `[engine]` section of a node's TOML file.
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::generate::GenParams;
use crate::ingest::ChunkConfig;
use crate::types::RetrievalMode;

/// Everything the engine is configured by. Parsed strictly: unknown keys are errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// The SQLite database and the index files live here.
    pub data_dir: PathBuf,
    pub chunk: ChunkConfig,
    pub retrieval: RetrievalConfig,
    pub prompt: PromptConfig,
    /// Defaults for chat requests that give no parameters.
    pub generation: GenParams,
    pub index: IndexConfig,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            chunk: ChunkConfig::default(),
            retrieval: RetrievalConfig::default(),
            prompt: PromptConfig::default(),
            generation: GenParams::default(),
            index: IndexConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrievalConfig {
    /// Default mode for requests that give none.
    pub mode: RetrievalMode,
    /// Results returned (and sources given to the generator) by default.
    pub top_k: usize,
    /// Reciprocal rank fusion constant: score = Σ 1 / (rrf_k + rank).
    pub rrf_k: f32,
    /// Candidates taken from each index before fusion.
    pub candidates: usize,
    /// Weight of the BM25 list in hybrid fusion: score = Σ weight / (rrf_k + rank).
    pub lexical_weight: f32,
    /// Weight of the vector list in hybrid fusion.
    pub vector_weight: f32,
}

impl Default for RetrievalConfig {
    fn default() -> Self {
        Self {
            mode: RetrievalMode::Hybrid,
            top_k: 5,
            rrf_k: 60.0,
            candidates: 50,
            lexical_weight: 1.0,
            vector_weight: 1.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PromptConfig {
    /// Token budget for the numbered sources; `None` = whatever the
    /// generator's context leaves after the rest of the prompt and the answer.
    pub context_budget_tokens: Option<usize>,
    /// Previous question/answer exchanges included in the prompt.
    pub history_turns: usize,
    pub system_prompt: String,
}

pub const DEFAULT_SYSTEM_PROMPT: &str =
    "You are a helpful assistant. Answer the question using only the numbered sources below. \
Cite the sources you use with their numbers in square brackets, like [1]. \
If the sources do not contain the answer, say that you do not know.";

impl Default for PromptConfig {
    fn default() -> Self {
        Self {
            context_budget_tokens: None,
            history_turns: 4,
            system_prompt: DEFAULT_SYSTEM_PROMPT.to_string(),
        }
    }
}

/// Vector index settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IndexConfig {
    /// `hnsw` (approximate, default) or `flat` (exact).
    pub vector: VectorIndexKind,
    /// HNSW links per node (layer 0 has twice as many).
    pub hnsw_m: usize,
    /// HNSW candidate list size while building.
    pub hnsw_ef_construction: usize,
    /// HNSW candidate list size while searching (at least `k`).
    pub hnsw_ef_search: usize,
    /// Save the vector index after this many changed vectors (it is always
    /// consistent with the store: unsaved changes are replayed from the
    /// change log at open).
    pub save_every: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VectorIndexKind {
    Hnsw,
    Flat,
}

impl Default for IndexConfig {
    fn default() -> Self {
        Self {
            vector: VectorIndexKind::Hnsw,
            hnsw_m: 16,
            hnsw_ef_construction: 200,
            hnsw_ef_search: 128,
            save_every: 2000,
        }
    }
}
