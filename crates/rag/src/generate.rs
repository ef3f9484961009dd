//! Answer generation: the [`Generator`] trait streams text deltas.
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::Result;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

/// Sampling parameters. `temperature == 0` means greedy decoding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenParams {
    pub max_tokens: usize,
    pub temperature: f64,
    pub top_p: Option<f64>,
    pub seed: u64,
    /// Extra stop strings (the model's own end-of-turn tokens always stop).
    #[serde(default)]
    pub stop: Vec<String>,
}

impl Default for GenParams {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            temperature: 0.0,
            top_p: None,
            seed: 42,
            stop: Vec::new(),
        }
    }
}

/// A retrieved passage given to the generator, numbered `[n]` in the prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Source {
    /// 1-based number used in the prompt.
    pub n: usize,
    pub chunk_id: String,
    pub title: String,
    pub text: String,
}

/// Everything a generator needs for one answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateRequest {
    /// The full chat, already including the system prompt with the numbered sources.
    pub messages: Vec<ChatMessage>,
    /// The user's question (last user message), for generators that do not read prompts.
    pub question: String,
    /// The numbered sources, for generators that work on them directly (extractive).
    pub sources: Vec<Source>,
    pub params: GenParams,
}

/// Streams text deltas. Dropping the stream cancels generation: implementations
/// must notice (e.g. a failed channel send) and stop spending CPU.
pub trait Generator: Send + Sync {
    /// Stable identity (kind + model name + file hash), recorded in run snapshots.
    fn id(&self) -> String;
    /// Context window in tokens (prompt + answer).
    fn context_tokens(&self) -> usize;
    /// Tokens `text` takes in this model's tokenizer (an estimate is allowed
    /// for remote models).
    fn count_tokens(&self, text: &str) -> usize;
    fn generate(&self, req: GenerateRequest) -> BoxStream<'static, Result<String>>;
}

/// The model-free generator (answer units extracted from the sources).
pub mod extractive;
/// Answer units: sentences, list items, table rows, code lines.
pub mod segment;
