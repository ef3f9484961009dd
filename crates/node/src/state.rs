//! What every handler shares: the engine (once it has opened), the limits,
//! the generation gate, the draining flag and the count of live streams.
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use ragfleet_rag::Engine;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, NodeConfig};
use crate::error::ApiError;
use crate::gate::GenerationGate;
use crate::runs::RunHub;

pub type SharedState = Arc<AppState>;

pub struct AppState {
    pub config: NodeConfig,
    engine: OnceLock<Engine>,
    /// Why the engine failed to open, if it did.
    pub engine_error: OnceLock<String>,
    pub gate: GenerationGate,
    draining: AtomicBool,
    /// Cancelled when the node stops accepting work: idle WebSocket sessions close.
    pub shutdown: CancellationToken,
    pub started: Instant,
    streams: AtomicUsize,
    streams_done: Notify,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// Buffers of streamed answers (resumable streams).
    pub runs: Arc<RunHub>,
    /// This node's id in the cluster (set when the listener is bound).
    pub node_id: OnceLock<String>,
    /// The address announced to the cluster.
    pub advertise: OnceLock<String>,
    /// Registered in etcd now (false without etcd).
    pub registered: AtomicBool,
    /// Verified credentials (≤ 1 s) and the login throttle.
    pub auth: crate::auth::AuthState,
    /// Verifies single-sign-on JWTs (`[auth.jwt]`).
    pub jwt: Option<crate::jwt::JwtVerifier>,
}

impl AppState {
    pub fn new(config: NodeConfig) -> Result<Self, ConfigError> {
        let l = &config.limits;
        let gate = GenerationGate::new(
            l.max_concurrent_generations,
            l.max_queued_generations,
            Duration::from_millis(l.queue_timeout_ms),
        );
        let runs = RunHub::new(&config.streams, &config.redis).map_err(ConfigError::Invalid)?;
        Ok(Self {
            auth: crate::auth::AuthState::new(&config.auth),
            jwt: config.auth.jwt.clone().map(crate::jwt::JwtVerifier::new),
            runs: Arc::new(runs),
            node_id: OnceLock::new(),
            advertise: OnceLock::new(),
            registered: AtomicBool::new(false),
            config,
            engine: OnceLock::new(),
            engine_error: OnceLock::new(),
            gate,
            draining: AtomicBool::new(false),
            shutdown: CancellationToken::new(),
            started: Instant::now(),
            streams: AtomicUsize::new(0),
            streams_done: Notify::new(),
            metrics: crate::metrics::handle(),
        })
    }

    /// This node's id (`node` before the listener is bound).
    pub fn node_id(&self) -> &str {
        self.node_id.get().map(String::as_str).unwrap_or("node")
    }

    /// The engine, or 503 while it is still opening.
    pub fn engine(&self) -> Result<&Engine, ApiError> {
        match self.engine.get() {
            Some(e) => Ok(e),
            None => match self.engine_error.get() {
                Some(err) => Err(ApiError::new(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    "engine_failed",
                    format!("the engine failed to open: {err}"),
                )),
                None => Err(ApiError::not_ready("the engine is still opening")),
            },
        }
    }

    pub fn engine_opt(&self) -> Option<&Engine> {
        self.engine.get()
    }

    pub fn set_engine(&self, engine: Engine) {
        let _ = self.engine.set(engine);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Answers being streamed now (SSE, WebSocket, OpenAI streams).
    pub fn live_streams(&self) -> usize {
        self.streams.load(Ordering::SeqCst)
    }

    /// Counts a stream as live until the guard drops.
    pub fn stream_guard(self: &Arc<Self>) -> StreamGuard {
        self.streams.fetch_add(1, Ordering::SeqCst);
        metrics::gauge!("ragfleet_node_streams_active").increment(1.0);
        StreamGuard(self.clone())
    }

    /// Waits until no stream is live.
    pub async fn streams_finished(&self) {
        loop {
            let notified = self.streams_done.notified();
            if self.live_streams() == 0 {
                return;
            }
            notified.await;
        }
    }
}

pub struct StreamGuard(Arc<AppState>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        metrics::gauge!("ragfleet_node_streams_active").decrement(1.0);
        if self.0.streams.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.streams_done.notify_waiters();
        }
    }
}
