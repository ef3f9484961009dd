//! The proxy's shared state: the routes and pools in force ([`Runtime`],
//! swapped whole on reload) and what every request reads ([`Shared`]).
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::HeaderValue;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::base::config::{AccessLogConfig, AuthConfig};
use crate::proxy::edge::Edge;
use crate::proxy::metrics::Metrics;
pub use crate::proxy::runtime::Runtime;

/// State shared by every connection task and request.
pub(crate) struct Shared {
    pub(crate) runtime: ArcSwap<Runtime>,
    pub(crate) forwarded_proto: HeaderValue,
    /// Every connection and tunnel task, so shutdown can wait for them.
    pub(crate) tracker: TaskTracker,
    /// Cancelled when the shutdown deadline passes: cut what is left.
    pub(crate) hard_stop: CancellationToken,
    /// TLS, limits, hygiene settings and their counters.
    pub(crate) edge: Edge,
    /// This instance's metrics (rendered on the admin listener).
    pub(crate) metrics: Arc<Metrics>,
    /// `[access_log]` in force (swapped on reload).
    pub(crate) access_log: ArcSwap<AccessLogConfig>,
    /// `[auth]` in force (swapped on reload).
    pub(crate) auth: ArcSwap<AuthConfig>,
}
