//! Configuration of the model runtimes (TOML, parsed strictly) and the
//! constructors that turn it into trait objects. See docs/models.md.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ragfleet_rag::embed::Embedder;
use ragfleet_rag::generate::Generator;
use ragfleet_rag::Result;
use serde::{Deserialize, Serialize};

use crate::bert::{BertEmbedder, BertOptions};
use crate::llama::{LocalLlama, LocalLlamaOptions, WeightFormat};
use crate::openai::{OpenAiConfig, OpenAiEmbedder, OpenAiEmbedderConfig, OpenAiGenerator};

/// `[embedder]`: which embedding model to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum EmbedderConfig {
    /// A local BERT sentence-embedding model (Hugging Face layout directory).
    Local {
        /// Directory with config.json, tokenizer.json, model.safetensors;
        /// relative paths are resolved against the models directory.
        #[serde(default = "default_embed_dir")]
        dir: PathBuf,
        #[serde(default = "default_batch")]
        batch_size: usize,
        /// Worker threads; 0 = one per core.
        #[serde(default)]
        threads: usize,
    },
    /// An OpenAI-compatible `/embeddings` endpoint.
    Openai(OpenAiEmbedderConfig),
}

fn default_embed_dir() -> PathBuf {
    PathBuf::from("all-minilm-l6-v2")
}
fn default_batch() -> usize {
    BertOptions::default().batch_size
}

impl Default for EmbedderConfig {
    fn default() -> Self {
        Self::Local {
            dir: default_embed_dir(),
            batch_size: default_batch(),
            threads: 0,
        }
    }
}

/// `[generator]` for model-backed generation (the model-free `extractive`
/// generator lives in ragfleet-rag).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum GeneratorConfig {
    /// A GGUF file (llama, qwen2, qwen3, gemma3, phi3) run locally.
    Local {
        /// GGUF file; relative paths are resolved against the models directory.
        #[serde(default = "default_gguf", alias = "model")]
        gguf: PathBuf,
        /// `native` (default), `f32`, `q8_0`, `q4_0`, `as_file`.
        #[serde(default)]
        weights: WeightFormat,
        #[serde(default = "default_concurrent")]
        max_concurrent: usize,
        #[serde(default)]
        context_tokens: Option<usize>,
    },
    /// An OpenAI-compatible chat-completions server.
    Openai(OpenAiConfig),
}

fn default_gguf() -> PathBuf {
    PathBuf::from("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
}
fn default_concurrent() -> usize {
    1
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        Self::Local {
            gguf: default_gguf(),
            weights: WeightFormat::default(),
            max_concurrent: default_concurrent(),
            context_tokens: None,
        }
    }
}

fn resolve(models_dir: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        models_dir.join(p)
    }
}

impl EmbedderConfig {
    /// Load the configured embedder. Blocking (loads weights or probes the server).
    pub fn build(&self, models_dir: &Path) -> Result<Arc<dyn Embedder>> {
        Ok(match self {
            Self::Local {
                dir,
                batch_size,
                threads,
            } => Arc::new(BertEmbedder::load_with(
                resolve(models_dir, dir),
                BertOptions {
                    batch_size: *batch_size,
                    threads: *threads,
                    max_tokens: None,
                },
            )?),
            Self::Openai(cfg) => Arc::new(OpenAiEmbedder::new(cfg.clone())?),
        })
    }
}

impl GeneratorConfig {
    /// Load the configured generator. Blocking (loads weights).
    pub fn build(&self, models_dir: &Path) -> Result<Arc<dyn Generator>> {
        Ok(match self {
            Self::Local {
                gguf,
                weights,
                max_concurrent,
                context_tokens,
            } => Arc::new(LocalLlama::load(
                resolve(models_dir, gguf),
                LocalLlamaOptions {
                    weights: *weights,
                    max_concurrent: *max_concurrent,
                    context_tokens: *context_tokens,
                },
            )?),
            Self::Openai(cfg) => Arc::new(OpenAiGenerator::new(cfg.clone())?),
        })
    }
}

/// Load the local BERT embedder from a Hugging Face layout directory with
/// default options.
pub fn load_embedder(dir: impl AsRef<Path>) -> Result<Arc<dyn Embedder>> {
    Ok(Arc::new(BertEmbedder::load(dir)?))
}

/// Load a local GGUF chat model.
pub fn load_local_generator(
    gguf: impl AsRef<Path>,
    opts: LocalLlamaOptions,
) -> Result<Arc<dyn Generator>> {
    Ok(Arc::new(LocalLlama::load(gguf, opts)?))
}

/// The models directory: `$RAGFLEET_MODELS`, else `models` under the
/// current directory.
pub fn default_models_dir() -> PathBuf {
    std::env::var_os("RAGFLEET_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("models"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_is_strict_and_defaults_work() {
        let e: EmbedderConfig = toml::from_str("kind = \"local\"").expect("defaults");
        assert_eq!(e, EmbedderConfig::default());
        let g: GeneratorConfig =
            toml::from_str("kind = \"local\"\nweights = \"q4_0\"").expect("local");
        assert!(matches!(
            g,
            GeneratorConfig::Local {
                weights: WeightFormat::Q4_0,
                ..
            }
        ));
        let g: GeneratorConfig = toml::from_str(
            "kind = \"openai\"\nbase_url = \"http://127.0.0.1:8000/v1\"\nmodel = \"qwen\"",
        )
        .expect("openai");
        assert!(matches!(g, GeneratorConfig::Openai(ref c) if c.model == "qwen"));
        let err = toml::from_str::<GeneratorConfig>("kind = \"local\"\nwieghts = \"q8_0\"")
            .expect_err("unknown key");
        assert!(err.to_string().contains("wieghts"), "{err}");
        // The default layout is the native forward; unknown values are named.
        let g: GeneratorConfig = toml::from_str("kind = \"local\"").expect("local defaults");
        assert_eq!(g, GeneratorConfig::default());
        assert!(matches!(
            g,
            GeneratorConfig::Local {
                weights: WeightFormat::Native,
                ..
            }
        ));
        let g: GeneratorConfig =
            toml::from_str("kind = \"local\"\nweights = \"native\"").expect("native");
        assert!(matches!(
            g,
            GeneratorConfig::Local {
                weights: WeightFormat::Native,
                ..
            }
        ));
        let err = toml::from_str::<GeneratorConfig>("kind = \"local\"\nweights = \"q4_1\"")
            .expect_err("unknown value");
        assert!(
            err.to_string().contains("q4_1") && err.to_string().contains("native"),
            "{err}"
        );
        let err = toml::from_str::<EmbedderConfig>(
            "kind = \"openai\"\nbase_url = \"http://x/v1\"\nmodel = \"m\"\nbatch = 3",
        )
        .expect_err("unknown key");
        assert!(err.to_string().contains("batch"), "{err}");
    }
}
