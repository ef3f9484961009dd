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
    /// Default sampling and decoding parameters of chat answers, and the
    /// local model file (`[generation.local] model`).
    pub generation: GenerationConfig,
    /// Vector index settings.
    pub index: ragfleet_rag::config::IndexConfig,
    /// The store: SQLite in `data_dir` (default), a shared SQLite file, or
    /// PostgreSQL (`url`), and how the follower polls its change log.
    pub store: ragfleet_rag::StoreConfig,
    /// Shared conversation memory in Redis (`redis_url`).
    pub memory: ragfleet_rag::MemoryConfig,
    /// Abstention and attribution of answers (`strict_grounding`,
    /// `min_relevance`, `min_support`).
    pub chat: ragfleet_rag::ChatConfig,
    /// Request limits and admission control.
    pub limits: Limits,
    /// Graceful shutdown.
    pub shutdown: ShutdownConfig,
    /// Redis: the buffer of resumable answer streams (shared by every node).
    pub redis: RedisConfig,
    /// Resumable answer streams.
    pub streams: StreamsConfig,
    /// Cluster membership: node id, advertised address, etcd registration.
    pub cluster: ClusterConfig,
    /// Authentication and authorization of every data route.
    pub auth: AuthConfig,
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
            generation: GenerationConfig::from(engine.generation),
            index: engine.index,
            store: engine.store,
            memory: engine.memory,
            chat: engine.chat,
            limits: Limits::default(),
            shutdown: ShutdownConfig::default(),
            redis: RedisConfig::default(),
            streams: StreamsConfig::default(),
            cluster: ClusterConfig::default(),
            auth: AuthConfig::default(),
        }
    }
}

/// `[auth]`: who may call the data routes (`/api/v1/*`, `/v1/*`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Require credentials (an API key or a session). `false` (`--no-auth`):
    /// every request acts as the built-in `anonymous` admin.
    pub enabled: bool,
    /// How long a verified key or session is trusted without asking the
    /// store again (at most 1000: a revoked key is refused within this).
    pub cache_ttl_ms: u64,
    /// Lifetime of a web-page login session.
    pub session_ttl_s: u64,
    /// Failed logins allowed per user and per client address in
    /// `login_window_s` before further attempts get 429.
    pub max_failed_logins: u32,
    pub login_window_s: u64,
    /// Secret shared with the gateway: a request's `X-Ragfleet-Principal`
    /// is trusted only with a valid HMAC made with it; otherwise the header
    /// is stripped. Empty: never trusted. Never printed.
    #[serde(skip_serializing)]
    pub gateway_secret: String,
    /// Single sign-on: accept bearer JWTs of this identity provider.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtConfig>,
    /// Proxies (addresses or CIDR ranges, e.g. the gateway's) whose
    /// `X-Forwarded-For` names the client for login throttling and audit
    /// records. From any other peer the header is ignored. Empty: the peer
    /// is always the client (behind a gateway, every client would then
    /// share the gateway's address and its login throttle).
    pub trusted_proxies: Vec<String>,
}

impl AuthConfig {
    /// `trusted_proxies` parsed (single addresses as /32 or /128).
    pub fn trusted_nets(&self) -> Result<Vec<ipnet::IpNet>, String> {
        self.trusted_proxies
            .iter()
            .map(|t| {
                let t = t.trim();
                t.parse::<ipnet::IpNet>()
                    .or_else(|_| t.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        format!("auth.trusted_proxies: {t:?} is not an IP address or CIDR range")
                    })
            })
            .collect()
    }
}

/// `[auth.jwt]`: bearer JWTs from an external identity provider
/// (docs/security.md). `issuer`, `audience` and `jwks_url` are required.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// The `iss` a token must carry.
    pub issuer: String,
    /// A value `aud` must hold.
    pub audience: String,
    /// The provider's JSON Web Key Set (http or https).
    pub jwks_url: String,
    /// Signature algorithms accepted (RS256, RS384, RS512, PS256, PS384,
    /// PS512, ES256, ES384, EdDSA); never `none` nor HMAC.
    pub algorithms: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway_s: u64,
    /// The claim naming the user.
    pub user_claim: String,
    /// The claim holding roles (`admin`, `editor`, `reader`; the highest
    /// wins; none: `reader`).
    pub roles_claim: String,
    /// The claim holding the collections granted (`*`: all).
    pub collections_claim: String,
    /// Put before the user claim to make the principal's name, so that an
    /// identity-provider user is never taken for a local user.
    pub name_prefix: String,
    /// An unknown `kid` refetches the key set at most this often.
    pub jwks_refetch_s: u64,
    /// Keys older than this are refetched before use.
    pub jwks_max_age_s: u64,
    pub jwks_timeout_ms: u64,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            issuer: String::new(),
            audience: String::new(),
            jwks_url: String::new(),
            algorithms: vec!["RS256".into(), "ES256".into()],
            leeway_s: 60,
            user_claim: "sub".into(),
            roles_claim: "roles".into(),
            collections_claim: "collections".into(),
            name_prefix: "sso:".into(),
            jwks_refetch_s: 30,
            jwks_max_age_s: 3600,
            jwks_timeout_ms: 5000,
        }
    }
}

impl JwtConfig {
    fn validate(&self) -> Result<(), String> {
        for (k, v) in [
            ("issuer", &self.issuer),
            ("audience", &self.audience),
            ("jwks_url", &self.jwks_url),
        ] {
            if v.trim().is_empty() {
                return Err(format!("auth.jwt.{k} is required"));
            }
        }
        if !(self.jwks_url.starts_with("https://") || self.jwks_url.starts_with("http://")) {
            return Err(format!(
                "auth.jwt.jwks_url must be an http(s) URL, not {:?}",
                self.jwks_url
            ));
        }
        if self.algorithms.is_empty() {
            return Err("auth.jwt.algorithms must name at least one algorithm".into());
        }
        for a in &self.algorithms {
            let ok = [
                "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
            ]
            .contains(&a.as_str());
            if !ok {
                return Err(format!(
                    "auth.jwt.algorithms: {a:?} is not accepted (RS256, RS384, RS512, PS256, \
                     PS384, PS512, ES256, ES384 or EdDSA; never none or HMAC)"
                ));
            }
        }
        if self.user_claim.is_empty() {
            return Err("auth.jwt.user_claim must name a claim".into());
        }
        Ok(())
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            cache_ttl_ms: 1000,
            session_ttl_s: 12 * 3600,
            max_failed_logins: 5,
            login_window_s: 300,
            gateway_secret: String::new(),
            jwt: None,
            trusted_proxies: Vec::new(),
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

/// `[generation]`: the defaults of [`ragfleet_rag::generate::GenParams`]
/// for chat requests that give none, plus `[generation.local]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GenerationConfig {
    /// Most answer tokens.
    pub max_tokens: usize,
    /// 0 = greedy decoding.
    pub temperature: f64,
    /// Nucleus sampling (with temperature > 0).
    pub top_p: Option<f64>,
    /// Sampling seed.
    pub seed: u64,
    /// Extra stop strings.
    pub stop: Vec<String>,
    /// Local models: logits of tokens already in the answer are divided by
    /// this (1.0 = off).
    pub repetition_penalty: f32,
    /// Local models: no token n-gram of this length repeats within an
    /// answer (0 = off).
    pub no_repeat_ngram: usize,
    /// The `local` generator's model file.
    pub local: GenerationLocal,
}

/// `[generation.local]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct GenerationLocal {
    /// GGUF file of the `local` generator (llama, qwen2, qwen3, gemma3,
    /// phi3), relative to `models_dir` unless absolute; overrides
    /// `[local] gguf`. `--llm-model` sets it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<PathBuf>,
}

impl GenerationConfig {
    /// The request defaults the engine uses.
    pub fn params(&self) -> ragfleet_rag::generate::GenParams {
        ragfleet_rag::generate::GenParams {
            max_tokens: self.max_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            seed: self.seed,
            stop: self.stop.clone(),
            repetition_penalty: self.repetition_penalty,
            no_repeat_ngram: self.no_repeat_ngram,
        }
    }
}

impl From<ragfleet_rag::generate::GenParams> for GenerationConfig {
    fn from(p: ragfleet_rag::generate::GenParams) -> Self {
        Self {
            max_tokens: p.max_tokens,
            temperature: p.temperature,
            top_p: p.top_p,
            seed: p.seed,
            stop: p.stop,
            repetition_penalty: p.repetition_penalty,
            no_repeat_ngram: p.no_repeat_ngram,
            local: GenerationLocal::default(),
        }
    }
}

impl Default for GenerationConfig {
    fn default() -> Self {
        ragfleet_rag::generate::GenParams::default().into()
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
            max_body_bytes: 64 * 1024 * 1024,
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://host:port[/db]`; empty: no Redis (streams resume on the
    /// same node only).
    pub url: String,
    /// Prefix of every key this node writes.
    pub key_prefix: String,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            key_prefix: "ragfleet:".into(),
        }
    }
}

impl RedisConfig {
    pub fn is_configured(&self) -> bool {
        !self.url.trim().is_empty()
    }

    pub fn prefix(&self) -> &str {
        if self.key_prefix.is_empty() {
            "ragfleet:"
        } else {
            &self.key_prefix
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamsConfig {
    /// Events kept per answer (Redis `MAXLEN`); a resume asking for older
    /// ones gets an `error` event saying they are gone.
    pub buffer_events: usize,
    /// How long an answer's events stay resumable after its last event.
    pub ttl_s: u64,
    /// The producing node refreshes an ownership key with this TTL; a
    /// resumed stream whose owner key expired (the node died) ends with an
    /// `error` event.
    pub owner_ttl_ms: u64,
    /// An answer nobody is reading (the client went away and did not
    /// resume) is cancelled after this long, freeing its generation slot.
    pub detach_grace_ms: u64,
    /// Finished answers kept in this node's memory for resumes.
    pub local_runs: usize,
}

impl Default for StreamsConfig {
    fn default() -> Self {
        Self {
            buffer_events: 4096,
            ttl_s: 600,
            owner_ttl_ms: 3000,
            detach_grace_ms: 2000,
            local_runs: 256,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// This node's name in the cluster (etcd key, logs, run ownership).
    /// Empty: `<hostname>-<port>`.
    pub node_id: String,
    /// `host:port` other machines (the gateway) reach this node at. Empty:
    /// the listen address (the host name when listening on 0.0.0.0).
    pub advertise: String,
    /// Weight announced to the gateway (1..=1000).
    pub weight: u32,
    pub etcd: EtcdConfig,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            node_id: String::new(),
            advertise: String::new(),
            weight: 1,
            etcd: EtcdConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EtcdConfig {
    /// etcd client URLs (`http://127.0.0.1:2379`), spoken to through the v3
    /// JSON gateway. Empty: no registration.
    pub endpoints: Vec<String>,
    /// The node registers `<prefix><node_id>` = `{"addr","weight"}`.
    pub prefix: String,
    /// Lease TTL; the lease is kept alive every third of it, and the key
    /// disappears this long after the node dies.
    pub lease_ttl_s: u64,
    /// Timeout of one etcd request.
    pub request_timeout_ms: u64,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        Self {
            endpoints: Vec::new(),
            prefix: "/ragfleet/nodes/".into(),
            lease_ttl_s: 10,
            request_timeout_ms: 2000,
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
        let st = &self.streams;
        if st.buffer_events < 16 {
            return Err(ConfigError::Invalid(
                "streams.buffer_events must be at least 16".into(),
            ));
        }
        if st.ttl_s == 0 || st.owner_ttl_ms < 500 {
            return Err(ConfigError::Invalid(
                "streams.ttl_s must be >= 1 and streams.owner_ttl_ms >= 500".into(),
            ));
        }
        let r = &self.redis.url;
        if self.redis.is_configured()
            && !(r.starts_with("redis://")
                || r.starts_with("rediss://")
                || r.starts_with("unix://"))
        {
            return Err(ConfigError::Invalid(format!(
                "redis.url must start with redis://, rediss:// or unix://, not {r:?}"
            )));
        }
        let c = &self.cluster;
        if c.weight == 0 || c.weight > 1000 {
            return Err(ConfigError::Invalid(
                "cluster.weight must be between 1 and 1000".into(),
            ));
        }
        if !c.advertise.is_empty() && !valid_host_port(&c.advertise) {
            return Err(ConfigError::Invalid(format!(
                "cluster.advertise must be host:port, not {:?}",
                c.advertise
            )));
        }
        if c.node_id.contains('/') || c.node_id.chars().any(char::is_whitespace) {
            return Err(ConfigError::Invalid(format!(
                "cluster.node_id must not contain '/' or spaces: {:?}",
                c.node_id
            )));
        }
        let e = &c.etcd;
        for ep in &e.endpoints {
            if !(ep.starts_with("http://") || ep.starts_with("https://")) {
                return Err(ConfigError::Invalid(format!(
                    "cluster.etcd.endpoints: {ep:?} must start with http:// or https://"
                )));
            }
        }
        if !e.endpoints.is_empty() {
            if !e.prefix.starts_with('/') || !e.prefix.ends_with('/') {
                return Err(ConfigError::Invalid(format!(
                    "cluster.etcd.prefix must start and end with '/', not {:?}",
                    e.prefix
                )));
            }
            if e.lease_ttl_s < 2 {
                return Err(ConfigError::Invalid(
                    "cluster.etcd.lease_ttl_s must be at least 2".into(),
                ));
            }
        }
        let g = &self.generation;
        if !(1.0..=10.0).contains(&g.repetition_penalty) {
            return Err(ConfigError::Invalid(format!(
                "generation.repetition_penalty must be between 1.0 (off) and 10.0, not {}",
                g.repetition_penalty
            )));
        }
        if g.no_repeat_ngram == 1 || g.no_repeat_ngram > 64 {
            return Err(ConfigError::Invalid(format!(
                "generation.no_repeat_ngram must be 0 (off) or between 2 and 64, not {}",
                g.no_repeat_ngram
            )));
        }
        if self.auth.cache_ttl_ms > 1000 {
            return Err(ConfigError::Invalid(
                "auth.cache_ttl_ms must be at most 1000 (revoked keys must stop working within it)"
                    .into(),
            ));
        }
        if let Some(j) = &self.auth.jwt {
            j.validate().map_err(ConfigError::Invalid)?;
        }
        self.auth.trusted_nets().map_err(ConfigError::Invalid)?;
        if self.auth.session_ttl_s == 0 || self.auth.login_window_s == 0 {
            return Err(ConfigError::Invalid(
                "auth.session_ttl_s and auth.login_window_s must be >= 1".into(),
            ));
        }
        if self.generator == GeneratorKind::Openai && !self.openai.is_configured() {
            return Err(ConfigError::Invalid(
                "generator = \"openai\" needs openai.base_url".into(),
            ));
        }
        Ok(())
    }

    /// This node's id: `cluster.node_id`, or `<hostname>-<port>`.
    pub fn node_id(&self, bound: SocketAddr) -> String {
        if !self.cluster.node_id.is_empty() {
            return self.cluster.node_id.clone();
        }
        format!("{}-{}", hostname(), bound.port())
    }

    /// The `host:port` announced to the cluster.
    pub fn advertise_addr(&self, bound: SocketAddr) -> String {
        if !self.cluster.advertise.is_empty() {
            return self.cluster.advertise.clone();
        }
        if bound.ip().is_unspecified() {
            format!("{}:{}", hostname(), bound.port())
        } else {
            bound.to_string()
        }
    }

    /// The GGUF path of the local generator, resolved against `models_dir`:
    /// `[generation.local] model` (`--llm-model`) when set, else `[local] gguf`.
    pub fn local_gguf(&self) -> PathBuf {
        let file = self
            .generation
            .local
            .model
            .as_ref()
            .unwrap_or(&self.local.gguf);
        if file.is_absolute() {
            file.clone()
        } else {
            self.models_dir.join(file)
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
            generation: self.generation.params(),
            index: self.index.clone(),
            store: self.store.clone(),
            memory: self.memory.clone(),
            chat: self.chat.clone(),
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

fn valid_host_port(s: &str) -> bool {
    if s.parse::<SocketAddr>().is_ok() {
        return true;
    }
    match s.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && !host.contains(['/', ' '])
                && port.parse::<u16>().is_ok_and(|p| p > 0)
        }
        None => false,
    }
}

/// The machine's host name (`node` when it cannot be read).
pub fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".into())
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
    fn generation_section_takes_decoding_keys_and_the_local_model() {
        let cfg = NodeConfig::from_toml(
            "[generation]\nrepetition_penalty = 1.3\nno_repeat_ngram = 4\n[generation.local]\nmodel = \"/m/qwen.gguf\"\n",
        )
        .unwrap();
        let p = cfg.engine_config().generation;
        assert_eq!((p.repetition_penalty, p.no_repeat_ngram), (1.3, 4));
        assert_eq!(p.max_tokens, NodeConfig::default().generation.max_tokens);
        assert_eq!(cfg.local_gguf(), PathBuf::from("/m/qwen.gguf"));
        // Without [generation.local] the [local] gguf is used, under models_dir.
        let cfg = NodeConfig::from_toml("models_dir = \"/ms\"\n").unwrap();
        assert_eq!(
            cfg.local_gguf(),
            PathBuf::from("/ms/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        );
        let d = NodeConfig::default().generation;
        assert!(
            d.repetition_penalty > 1.0 && d.no_repeat_ngram >= 2,
            "{d:?}"
        );
        for bad in [
            "[generation]\nrepetition_penalty = 0.5\n",
            "[generation]\nno_repeat_ngram = 1\n",
        ] {
            let err = NodeConfig::from_toml(bad).unwrap_err().to_string();
            assert!(err.contains("generation."), "{err}");
        }
        let err = NodeConfig::from_toml("[generation.local]\ngguf = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("gguf"), "{err}");
        let err = NodeConfig::from_toml("[generation]\nrepetition = 1.2\n").unwrap_err();
        assert!(err.to_string().contains("repetition"), "{err}");
    }

    #[test]
    fn shipped_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/node.toml");
        let cfg = NodeConfig::from_file(&path).unwrap();
        assert_eq!(cfg.generator, GeneratorKind::Extractive);
    }

    #[test]
    fn cluster_sections_parse_and_validate() {
        let cfg = NodeConfig::from_toml(
            "[redis]\nurl = \"redis://127.0.0.1:6379\"\n[cluster]\nnode_id = \"n1\"\nadvertise = \"10.0.0.5:8080\"\n[cluster.etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\nlease_ttl_s = 5\n",
        )
        .unwrap();
        assert_eq!(cfg.cluster.etcd.prefix, "/ragfleet/nodes/");
        assert_eq!(cfg.node_id("127.0.0.1:1".parse().unwrap()), "n1");
        assert_eq!(
            cfg.advertise_addr("0.0.0.0:1".parse().unwrap()),
            "10.0.0.5:8080"
        );
        let err = NodeConfig::from_toml("[redis]\nurl = \"127.0.0.1:6379\"\n").unwrap_err();
        assert!(err.to_string().contains("redis.url"), "{err}");
        let err = NodeConfig::from_toml("[cluster.etcd]\nendpoints = [\"127.0.0.1:2379\"]\n")
            .unwrap_err();
        assert!(err.to_string().contains("cluster.etcd.endpoints"), "{err}");
        let err = NodeConfig::from_toml("[cluster]\nadvertise = \"nope\"\n").unwrap_err();
        assert!(err.to_string().contains("cluster.advertise"), "{err}");
        let err = NodeConfig::from_toml("[cluster.etcd]\nendpoint = []\n").unwrap_err();
        assert!(err.to_string().contains("endpoint"), "{err}");
        let cfg = NodeConfig::default();
        assert_eq!(
            cfg.advertise_addr("127.0.0.1:9000".parse().unwrap()),
            "127.0.0.1:9000"
        );
        assert!(cfg
            .node_id("127.0.0.1:9000".parse().unwrap())
            .ends_with("-9000"));
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
