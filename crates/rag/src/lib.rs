//! ragfleet-rag: the engine every ragfleet node runs, from a file to a cited,
//! streamed answer. It knows nothing of HTTP.
//!
//! Every stage is a trait with real implementations chosen by configuration:
//! [`embed::Embedder`], [`generate::Generator`], the indexes
//! ([`index::VectorIndex`], [`index::lexical::LexicalIndex`]) and the stores
//! ([`store::DocumentStore`], [`store::ConversationStore`], [`store::RunStore`]).
//! [`engine::Engine`] ties them together.

pub mod answer;
pub mod api;
pub mod config;
pub mod embed;
pub mod engine;
pub mod error;
pub mod eval;
pub mod generate;
pub mod index;
pub mod ingest;
pub mod memory;
pub mod prompt;
pub mod retrieve;
pub mod store;
pub mod types;

pub use api::*;
pub use config::{
    ChatConfig, EngineConfig, MemoryConfig, PromptConfig, RetrievalConfig, StoreConfig,
};
pub use engine::{Engine, FollowerHandle, Generators};
pub use error::{RagError, Result};
