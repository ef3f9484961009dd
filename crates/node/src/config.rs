//! Node configuration: a strict TOML file (`configs/node.toml`), overridden by
//! environment variables and then by command-line flags (the CLI applies
//! those; see `docs/node.md`). Every section has defaults that work.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Everything `ragfleet node` needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Address the HTTP server binds (`127.0.0.1:0` picks a free port).
    pub listen: SocketAddr,
    /// Where the engine keeps its SQLite store and index files.
    pub data_dir: PathBuf,
    /// Where the model files are (`all-minilm-l6-v2/`, `smollm2/`).
    pub models_dir: PathBuf,
    /// The generator used when a request names none.
    pub generator: GeneratorKind,
    /// The embedding model (`kind = "local"` BERT directory, or `"openai"`).
    pub embedder: ragfleet_models::EmbedderConfig,
    /// The local GGUF model (`local` generator).
    pub local: LocalConfig,
    /// An OpenAI-compatible server (`openai` generator).
    pub openai: OpenAiConfig,
    /// Chunking of ingested documents.
    pub chunk: ragfleet_rag::ingest::ChunkConfig,
    /// Retrieval defaults for search and chat.
    pub retrieval: ragfleet_rag::RetrievalConfig,
    /// Prompt assembly (context budget, history turns, system prompt).
    pub prompt: ragfleet_rag::PromptConfig,
    /// Default sampling parameters of chat answers.
    pub generation: ragfleet_rag::generate::GenParams,
    /// Vector index settings.
    pub index: ragfleet_rag::config::IndexConfig,
    /// Request limits and admission control.
    pub limits: Limits,
    /// Graceful shutdown.
    pub shutdown: ShutdownConfig,
}

impl Default for NodeConfig {
    fn default() -> Self {
        let engine = ragfleet_rag::EngineConfig::default();
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("data"),
            models_dir: PathBuf::from("models"),
            generator: GeneratorKind::Extractive,
            embedder: ragfleet_models::EmbedderConfig::default(),
            local: LocalConfig::default(),
            openai: OpenAiConfig::default(),
            chunk: engine.chunk,
            retrieval: engine.retrieval,
            prompt: engine.prompt,
            generation: engine.generation,
            index: engine.index,
            limits: Limits::default(),
            shutdown: ShutdownConfig::default(),
        }
    }
}

/// Which generator answers by default. `extractive` is always available;
/// `local` needs the GGUF model file; `openai` needs `[openai]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum GeneratorKind {
    Local,
    Openai,
    #[default]
    Extractive,
}

impl GeneratorKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Openai => "openai",
            Self::Extractive => "extractive",
        }
    }
}

impl std::fmt::Display for GeneratorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for GeneratorKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "local" => Ok(Self::Local),
            "openai" => Ok(Self::Openai),
            "extractive" => Ok(Self::Extractive),
            other => Err(format!(
                "unknown generator {other:?} (expected local, openai or extractive)"
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalConfig {
    /// Offer the `local` generator when the GGUF file exists (it is always
    /// loaded when it is the default generator). `false` skips loading it.
    pub enabled: bool,
    /// GGUF file, relative to `models_dir` unless absolute.
    pub gguf: PathBuf,
    /// How the weights are held in memory: `q8_0` (default), `q4_0`, `as_file`, `f32`.
    pub weights: ragfleet_models::WeightFormat,
    /// Generations the model runs at once (more wait inside the model).
    pub max_concurrent: usize,
    /// Cap on the context window (prompt + answer); default: the model's.
    pub context_tokens: Option<usize>,
}

impl Default for LocalConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            gguf: PathBuf::from("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
            weights: ragfleet_models::WeightFormat::default(),
            max_concurrent: 1,
            context_tokens: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpenAiConfig {
    /// Base URL of an OpenAI-compatible API, e.g. `http://127.0.0.1:8000/v1`.
    /// Empty: the `openai` generator is not configured.
    pub base_url: String,
    /// Model name sent to that server.
    pub model: String,
    /// Name of the environment variable holding the API key (never the key itself).
    pub api_key_env: String,
    /// Context window of the remote model in tokens.
    pub context_tokens: usize,
    /// Time allowed until the response headers arrive.
    pub request_timeout_ms: u64,
}

impl Default for OpenAiConfig {
    fn default() -> Self {
        Self {
            base_url: String::new(),
            model: "gpt-4o-mini".into(),
            api_key_env: "OPENAI_API_KEY".into(),
            context_tokens: 8192,
            request_timeout_ms: 60_000,
        }
    }
}

impl OpenAiConfig {
    pub fn is_configured(&self) -> bool {
        !self.base_url.trim().is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request body (JSON, uploads) in bytes → 413 above it.
    /// `POST /api/v1/documents/batch` is streamed; there it bounds one line.
    pub max_body_bytes: usize,
    /// Largest `top_k` a search or chat may ask for → 422 above it.
    pub max_top_k: usize,
    /// Longest chat message (or search query) in chars → 422 above it.
    pub max_message_chars: usize,
    /// Answers generated at once on this node.
    pub max_concurrent_generations: usize,
    /// Chats waiting for a generation slot; a chat arriving when the queue
    /// is full gets 429 with `Retry-After`.
    pub max_queued_generations: usize,
    /// How long a queued chat waits for a slot before 503 with `Retry-After`.
    pub queue_timeout_ms: u64,
    /// Largest page of a listing.
    pub max_page_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 16 * 1024 * 1024,
            max_top_k: 50,
            max_message_chars: 8000,
            max_concurrent_generations: 2,
            max_queued_generations: 32,
            queue_timeout_ms: 30_000,
            max_page_size: 1000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// After SIGTERM/SIGINT, keep accepting requests this long while `/ready`
    /// answers 503 (lets a load balancer notice), then stop accepting.
    pub drain_delay_ms: u64,
    /// Then wait at most this long for in-flight requests and streams.
    pub grace_ms: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            drain_delay_ms: 0,
            grace_ms: 30_000,
        }
    }
}

/// A configuration problem, naming the file and the key when there is one.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl NodeConfig {
    /// Parse a TOML file strictly (unknown keys are errors naming the key).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let cfg: NodeConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<toml>"),
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks that hold whatever the source of the values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        if l.max_body_bytes < 1024 {
            return Err(ConfigError::Invalid(
                "limits.max_body_bytes must be at least 1024".into(),
            ));
        }
        if l.max_top_k == 0 {
            return Err(ConfigError::Invalid("limits.max_top_k must be >= 1".into()));
        }
        if l.max_message_chars == 0 {
            return Err(ConfigError::Invalid(
                "limits.max_message_chars must be >= 1".into(),
            ));
        }
        if l.max_concurrent_generations == 0 {
            return Err(ConfigError::Invalid(
                "limits.max_concurrent_generations must be >= 1".into(),
            ));
        }
        if l.max_page_size == 0 {
            return Err(ConfigError::Invalid(
                "limits.max_page_size must be >= 1".into(),
            ));
        }
        if self.generator == GeneratorKind::Openai && !self.openai.is_configured() {
            return Err(ConfigError::Invalid(
                "generator = \"openai\" needs openai.base_url".into(),
            ));
        }
        Ok(())
    }

    /// The GGUF path of the local generator, resolved against `models_dir`.
    pub fn local_gguf(&self) -> PathBuf {
        if self.local.gguf.is_absolute() {
            self.local.gguf.clone()
        } else {
            self.models_dir.join(&self.local.gguf)
        }
    }

    /// The engine's part of the configuration.
    #[allow(clippy::needless_update)] // the engine may add sections with defaults
    pub fn engine_config(&self) -> ragfleet_rag::EngineConfig {
        ragfleet_rag::EngineConfig {
            data_dir: self.data_dir.clone(),
            chunk: self.chunk.clone(),
            retrieval: self.retrieval.clone(),
            prompt: self.prompt.clone(),
            generation: self.generation.clone(),
            index: self.index.clone(),
            ..Default::default()
        }
    }

    /// The `openai` generator's client settings, the key read from the
    /// environment variable named by `openai.api_key_env`.
    pub fn openai_client_config(&self) -> Result<ragfleet_models::OpenAiConfig, ConfigError> {
        let key = std::env::var(&self.openai.api_key_env)
            .ok()
            .filter(|k| !k.is_empty());
        let v = serde_json::json!({
            "base_url": self.openai.base_url,
            "model": self.openai.model,
            "api_key": key,
            "context_tokens": self.openai.context_tokens,
            "request_timeout_ms": self.openai.request_timeout_ms,
        });
        serde_json::from_value(v).map_err(|e| ConfigError::Invalid(format!("openai: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_from_empty_file() {
        let cfg = NodeConfig::from_toml("").unwrap();
        assert_eq!(cfg, NodeConfig::default());
    }

    #[test]
    fn unknown_key_is_named() {
        let err = NodeConfig::from_toml("[limits]\nmax_bodybytes = 10\n").unwrap_err();
        assert!(err.to_string().contains("max_bodybytes"), "{err}");
        let err = NodeConfig::from_toml("listne = \"127.0.0.1:1\"\n").unwrap_err();
        assert!(err.to_string().contains("listne"), "{err}");
    }

    #[test]
    fn shipped_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/node.toml");
        let cfg = NodeConfig::from_file(&path).unwrap();
        assert_eq!(cfg.generator, GeneratorKind::Extractive);
    }

    #[test]
    fn openai_generator_needs_base_url() {
        let err = NodeConfig::from_toml("generator = \"openai\"\n").unwrap_err();
        assert!(err.to_string().contains("openai.base_url"), "{err}");
        let cfg = NodeConfig::from_toml(
            "generator = \"openai\"\n[openai]\nbase_url = \"http://127.0.0.1:9/v1\"\n",
        )
        .unwrap();
        assert!(cfg.openai.is_configured());
    }
}
