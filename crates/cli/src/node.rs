//! `ragfleet node`: run a RAG node. Configuration: the TOML file
//! (`--config`), then environment variables, then flags (flags win).
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use ragfleet_node::{GeneratorKind, NodeConfig};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Node config file (TOML; see configs/node.toml and docs/node.md).
    #[arg(long, env = "RAGFLEET_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "RAGFLEET_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Data directory (SQLite store and index files).
    #[arg(long, env = "RAGFLEET_DATA")]
    pub data: Option<PathBuf>,
    /// Models directory (all-minilm-l6-v2/, smollm2/).
    #[arg(long, env = "RAGFLEET_MODELS")]
    pub models: Option<PathBuf>,
    /// Default generator: local, openai or extractive.
    #[arg(long, env = "RAGFLEET_GENERATOR")]
    pub generator: Option<GeneratorKind>,
    /// GGUF model file of the `local` generator (llama, qwen2, qwen3, gemma3,
    /// phi3); a path that does not exist from here is taken relative to the
    /// models directory. Sets `[generation.local] model`.
    #[arg(long, env = "RAGFLEET_LLM_MODEL", value_name = "FILE.gguf")]
    pub llm_model: Option<PathBuf>,
    /// Base URL of an OpenAI-compatible server (enables the `openai` generator).
    #[arg(long, env = "RAGFLEET_OPENAI_BASE_URL")]
    pub openai_base_url: Option<String>,
    /// Model name for the OpenAI-compatible server.
    #[arg(long, env = "RAGFLEET_OPENAI_MODEL")]
    pub openai_model: Option<String>,
    /// Generations run at once on this node.
    #[arg(long, env = "RAGFLEET_MAX_CONCURRENT_GENERATIONS")]
    pub max_concurrent_generations: Option<usize>,
    /// Largest request body (`limits.max_body_bytes`; 413 above it): bytes,
    /// or e.g. "64MiB". Keep it equal to the gateway's `listen.max_body_size`.
    #[arg(long, env = "RAGFLEET_MAX_BODY_BYTES", value_parser = parse_body_size)]
    pub max_body_bytes: Option<usize>,
    /// Store URL: `sqlite:///path/ragfleet.db` (one file shared by the nodes
    /// of a machine) or `postgres://user@host/db`; default: SQLite in --data.
    #[arg(long, env = "RAGFLEET_STORE_URL")]
    pub store_url: Option<String>,
    /// Redis URL (`redis://127.0.0.1:6379`): conversation memory, and
    /// streamed answers resumable on any node.
    #[arg(long, env = "RAGFLEET_REDIS_URL")]
    pub redis_url: Option<String>,
    /// etcd client URL to register this node in (repeat, or comma-separate).
    #[arg(long = "etcd", env = "RAGFLEET_ETCD", value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// etcd key prefix (the node registers `<prefix><node-id>`).
    #[arg(long, env = "RAGFLEET_ETCD_PREFIX")]
    pub etcd_prefix: Option<String>,
    /// etcd lease TTL in seconds.
    #[arg(long, env = "RAGFLEET_ETCD_LEASE_TTL")]
    pub etcd_lease_ttl: Option<u64>,
    /// This node's id in the cluster (default `<hostname>-<port>`).
    #[arg(long, env = "RAGFLEET_NODE_ID")]
    pub node_id: Option<String>,
    /// `host:port` the gateway reaches this node at (default: the listen address).
    #[arg(long, env = "RAGFLEET_ADVERTISE")]
    pub advertise: Option<String>,
    /// After SIGTERM, how long in-flight answers may take to finish (ms).
    #[arg(long, env = "RAGFLEET_DRAIN_TIMEOUT_MS")]
    pub drain_timeout_ms: Option<u64>,
    /// Turn authentication off: every request acts as the `anonymous`
    /// admin. For experiments only; the node says so loudly.
    #[arg(long, env = "RAGFLEET_NO_AUTH")]
    pub no_auth: bool,
    /// Proxies whose X-Forwarded-For names the client (addresses or CIDR
    /// ranges, comma-separated): `[auth] trusted_proxies`.
    #[arg(long, env = "RAGFLEET_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<String>,
    /// Print the effective configuration (TOML) and exit.
    #[arg(long)]
    pub print_config: bool,
}

impl Args {
    /// File, then environment + flags (clap already put the environment
    /// variables into the same fields, with flags winning).
    pub fn config(&self) -> anyhow::Result<NodeConfig> {
        let mut cfg = match &self.config {
            Some(p) => NodeConfig::from_file(p)?,
            None => NodeConfig::default(),
        };
        if let Some(v) = self.listen {
            cfg.listen = v;
        }
        if let Some(v) = &self.data {
            cfg.data_dir = v.clone();
        }
        if let Some(v) = &self.models {
            cfg.models_dir = v.clone();
        }
        if let Some(v) = self.generator {
            cfg.generator = v;
        }
        if let Some(v) = &self.llm_model {
            cfg.generation.local.model = Some(llm_model_path(v));
        }
        if let Some(v) = &self.openai_base_url {
            cfg.openai.base_url = v.clone();
        }
        if let Some(v) = &self.openai_model {
            cfg.openai.model = v.clone();
        }
        if let Some(v) = self.max_concurrent_generations {
            cfg.limits.max_concurrent_generations = v;
        }
        if let Some(v) = self.max_body_bytes {
            cfg.limits.max_body_bytes = v;
        }
        if let Some(v) = &self.store_url {
            cfg.store.url = Some(v.clone()).filter(|u| !u.is_empty());
        }
        if let Some(v) = &self.redis_url {
            cfg.redis.url = v.clone();
            cfg.memory.redis_url = Some(v.clone()).filter(|u| !u.is_empty());
        }
        if !self.etcd.is_empty() {
            cfg.cluster.etcd.endpoints = self
                .etcd
                .iter()
                .map(|e| e.trim().to_string())
                .filter(|e| !e.is_empty())
                .collect();
        }
        if let Some(v) = &self.etcd_prefix {
            cfg.cluster.etcd.prefix = v.clone();
        }
        if let Some(v) = self.etcd_lease_ttl {
            cfg.cluster.etcd.lease_ttl_s = v;
        }
        if let Some(v) = &self.node_id {
            cfg.cluster.node_id = v.clone();
        }
        if let Some(v) = &self.advertise {
            cfg.cluster.advertise = v.clone();
        }
        if let Some(v) = self.drain_timeout_ms {
            cfg.shutdown.grace_ms = v;
        }
        if self.no_auth {
            cfg.auth.enabled = false;
        }
        if !self.trusted_proxies.is_empty() {
            cfg.auth.trusted_proxies = self
                .trusted_proxies
                .iter()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
                .collect();
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

/// `--llm-model FILE`: a file that exists from the current directory is
/// made absolute (so it means the same to a node started elsewhere); any
/// other path is kept, to be resolved against the models directory.
pub fn llm_model_path(p: &std::path::Path) -> PathBuf {
    if p.is_file() {
        std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
    } else {
        p.to_path_buf()
    }
}

/// "4096", "512KiB", "64MiB", "1GiB" (the gateway's size syntax).
pub fn parse_body_size(s: &str) -> Result<usize, String> {
    let n = ragfleet_gateway::config::parse_size(s)?;
    usize::try_from(n).map_err(|_| format!("size {s:?} is too large"))
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let cfg = args.config()?;
    if args.print_config {
        print!(
            "{}",
            toml::to_string_pretty(&cfg).context("rendering the configuration")?
        );
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let auth = cfg.auth.enabled;
    rt.block_on(async move {
        let node = ragfleet_node::Node::bind(cfg).await?;
        let addr = node.local_addr();
        eprintln!("ragfleet node on http://{addr}/  (API http://{addr}/api/v1, docs http://{addr}/api/v1/docs, metrics http://{addr}/metrics)");
        if !auth {
            eprintln!("ragfleet node: WARNING: --no-auth: the node is OPEN; anyone who reaches it is an admin");
        }
        node.run(ragfleet_node::shutdown_signal()).await?;
        Ok(())
    })
}
