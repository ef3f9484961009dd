//! ragfleet-models: model runtimes behind the engine's traits
//! ([`ragfleet_rag::embed::Embedder`], [`ragfleet_rag::generate::Generator`]).
//!
//! - [`BertEmbedder`]: local sentence embeddings (all-MiniLM-L6-v2) with candle.
//! - [`LocalLlama`]: local chat generation from a GGUF file (llama, qwen2,
//!   qwen3, gemma3, phi3), with the decoding controls of [`decode`].
//! - [`OpenAiGenerator`], [`OpenAiEmbedder`]: OpenAI-compatible servers.

pub mod bert;
mod bert_encoder;
pub mod decode;
pub mod gguf_tokenizer;
mod kernels;
pub mod llama;
mod native;
pub mod openai;
pub mod text_stream;
pub mod transformer;
mod util;

pub use bert::{BertEmbedder, BertOptions};
pub use llama::{LocalLlama, LocalLlamaOptions, WeightFormat};
pub use openai::{OpenAiConfig, OpenAiEmbedder, OpenAiEmbedderConfig, OpenAiGenerator};
pub mod config;
pub use config::{load_embedder, load_local_generator, EmbedderConfig, GeneratorConfig};
