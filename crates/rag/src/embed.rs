//! Text embeddings.
use crate::Result;

/// Turns texts into unit-length vectors. Implementations are CPU- or
/// network-bound and synchronous; async callers run them on a blocking thread.
pub trait Embedder: Send + Sync {
    /// A stable identity of the model (name + file hash), recorded in run snapshots.
    fn id(&self) -> String;
    /// Vector dimension.
    fn dim(&self) -> usize;
    /// The most tokens one input may have (longer inputs are truncated).
    fn max_tokens(&self) -> usize;
    /// Number of model tokens in `text` (special tokens excluded); used by
    /// the chunker so chunks fit the model's window.
    fn count_tokens(&self, text: &str) -> usize;
    /// Embed a batch. The output has one L2-normalised vector per input, in order.
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>>;
}
