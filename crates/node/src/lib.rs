//! ragfleet-node: the HTTP service over ragfleet-rag.
//!
//! REST + SSE + WebSocket API under `/api/v1`, an OpenAI-compatible API under
//! `/v1`, `/health`, `/ready`, `/metrics`, and the web chat page at `/`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), ragfleet_node::NodeError> {
//! let mut cfg = ragfleet_node::NodeConfig::default();
//! cfg.listen = "127.0.0.1:0".parse().unwrap();
//! let node = ragfleet_node::Node::bind(cfg).await?;
//! println!("listening on {}", node.local_addr());
//! node.run(ragfleet_node::shutdown_signal()).await
//! # }
//! ```

pub mod api;
pub mod auth;
pub mod config;
pub mod error;
pub mod gate;
pub mod jwt;
pub mod membership;
pub mod metrics;
pub mod runs;
pub mod server;
pub mod state;
pub mod web;

pub use config::{GeneratorKind, NodeConfig};
pub use error::ApiError;
pub use server::{open_engine, router, serve, shutdown_signal, Node, NodeError};
