//! ragfleet-gateway: an L7 load balancer made for chat traffic.
//!
//! The crate is five layers; a module imports only from its own layer or
//! the layers below it (`crates/cli/tests/architecture.rs` checks it):
//!
//! ```text
//! base  ←  http  ←  upstream  ←  proxy  ←  app
//! ```
//!
//! - [`base`]: configuration types, the clock, the stable hash, header facts;
//! - [`http`]: HTTP/1.1 and HTTP/2 on the wire — servers that hand each
//!   request to a [`Handler`](http::conn::Handler) they are given, the
//!   upstream HTTP/1.1 client, bodies, TLS, tunnels, the framing guard;
//! - [`upstream`]: pools and servers, balancing, health checks, discovery
//!   (which reports what it finds and applies nothing);
//! - [`proxy`]: the request path in phases, hygiene, limits, access log,
//!   metrics — the `Handler`;
//! - [`app`]: wiring ([`Gateway`]), hot reload, the admin API.
//!
//! ARCHITECTURE.md draws the map. The modules of the first round keep their
//! paths as re-exports (`ragfleet_gateway::pool`, `::config`, …).
//!
//! ```no_run
//! # async fn f(cfg: ragfleet_gateway::config::Config) -> Result<(), ragfleet_gateway::Error> {
//! let gw = ragfleet_gateway::Gateway::bind(cfg).await?;
//! println!("listening on {}", gw.local_addr());
//! gw.run_until(ragfleet_gateway::shutdown_signal()).await
//! # }
//! ```
pub mod app;
pub mod base;
pub mod http;
pub mod proxy;
pub mod upstream;

pub use app::{admin, reload, shutdown_signal, Error, Gateway, GatewayHandle};
pub use base::config::{self, Config};
pub use http::tls;
pub use proxy::{access_log, hygiene, limits, metrics, Runtime};
pub use upstream::pool::{Pool, Server, ServerSnapshot};
pub use upstream::{balance, discovery, health, pool};
