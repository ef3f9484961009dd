//! ragfleet-rag: the engine every ragfleet node runs, from a file to a cited,
//! streamed answer. It knows nothing of HTTP.
//!
//! Every stage is a trait with real implementations chosen by configuration:
//! [`embed::Embedder`], [`generate::Generator`] (and, as they land, the
//! vector/lexical indexes and the document/conversation stores).

pub mod embed;
pub mod error;
pub mod eval;
pub mod generate;
pub mod ingest;
pub mod types;

pub use error::{RagError, Result};
