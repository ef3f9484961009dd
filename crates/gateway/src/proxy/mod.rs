//! Layer 3 of the gateway: the request path and what watches it. The
//! proxy is the [`Handler`] the HTTP layer is given.
//!
//! - [`request`]: the request path in phases (admit, route, pick,
//!   rewrite, send, respond, log);
//! - [`hygiene`]: what a request must look like; [`authn`]: 401 for a
//!   request without any credential (`[auth] require_credentials`); [`limits`]: rate and
//!   connection limits; [`edge`]: the connection limit at accept and the
//!   edge's settings and counters;
//! - [`access_log`]: one line per request; [`metrics`]: per-instance
//!   Prometheus metrics;
//! - [`state`]: the routes and pools in force and the shared state.
//!
//! [`Handler`]: crate::http::conn::Handler
pub mod accept;
pub mod access_log;
pub mod authn;
pub mod edge;
pub mod hygiene;
pub mod limits;
pub mod metrics;
pub mod request;
pub mod runtime;
pub mod state;

pub use runtime::Runtime;
