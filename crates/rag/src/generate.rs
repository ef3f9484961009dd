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
///
/// `repetition_penalty` and `no_repeat_ngram` are decoding controls of the
/// local models (the `openai` generator sends neither); both look at the
/// answer's own tokens only, never at the prompt, so an answer may still
/// copy from its sources. Local generation also ends an answer that starts
/// to repeat an earlier span of itself (docs/models.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GenParams {
    pub max_tokens: usize,
    pub temperature: f64,
    pub top_p: Option<f64>,
    pub seed: u64,
    /// Extra stop strings (the model's own end-of-turn tokens always stop).
    #[serde(default)]
    pub stop: Vec<String>,
    /// Logits of tokens the answer already holds are divided by this
    /// (multiplied when negative). 1.0 = off.
    pub repetition_penalty: f32,
    /// No token sequence of this length occurs twice in an answer. 0 = off.
    pub no_repeat_ngram: usize,
}

/// Default of [`GenParams::repetition_penalty`]: stops SmolLM2's loops
/// without bending short factual answers (docs/models.md).
pub const DEFAULT_REPETITION_PENALTY: f32 = 1.1;
/// Default of [`GenParams::no_repeat_ngram`].
pub const DEFAULT_NO_REPEAT_NGRAM: usize = 6;

impl Default for GenParams {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            temperature: 0.0,
            top_p: None,
            seed: 42,
            stop: Vec::new(),
            repetition_penalty: DEFAULT_REPETITION_PENALTY,
            no_repeat_ngram: DEFAULT_NO_REPEAT_NGRAM,
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
