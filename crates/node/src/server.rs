//! Building a node from its configuration, binding, serving and draining.
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use ragfleet_rag::generate::extractive::ExtractiveGenerator;
use ragfleet_rag::generate::Generator;
use ragfleet_rag::{Engine, Generators};
use tower_http::trace::TraceLayer;

use crate::config::{GeneratorKind, NodeConfig};
use crate::error::ApiError;
use crate::state::{AppState, SharedState};
use crate::{api, metrics, web};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("loading models: {0}")]
    Models(String),
    #[error("opening the engine: {0}")]
    Engine(#[from] ragfleet_rag::RagError),
    #[error("server: {0}")]
    Serve(std::io::Error),
    #[error("authentication: {0}")]
    Auth(String),
}

/// Build the embedder and generators the configuration asks for, and open
/// the engine on the data directory. Blocking model loads run on the
/// blocking pool.
pub async fn open_engine(config: &NodeConfig) -> Result<Engine, NodeError> {
    config.validate()?;
    let cfg = config.clone();
    let (embedder, generators) = tokio::task::spawn_blocking(move || build_models(&cfg))
        .await
        .map_err(|e| NodeError::Models(format!("model loading task failed: {e}")))??;
    let engine = Engine::open(config.engine_config(), embedder, generators).await?;
    Ok(engine)
}

type Models = (Arc<dyn ragfleet_rag::embed::Embedder>, Generators);

fn build_models(cfg: &NodeConfig) -> Result<Models, NodeError> {
    let embedder = cfg
        .embedder
        .build(&cfg.models_dir)
        .map_err(|e| NodeError::Models(format!("embedder: {e}")))?;
    let mut by_name: std::collections::BTreeMap<String, Arc<dyn Generator>> = Default::default();
    by_name.insert("extractive".into(), Arc::new(ExtractiveGenerator::new()));

    let gguf = cfg.local_gguf();
    let want_local = cfg.generator == GeneratorKind::Local;
    if want_local || (cfg.local.enabled && gguf.is_file()) {
        let opts = ragfleet_models::LocalLlamaOptions {
            weights: cfg.local.weights,
            max_concurrent: cfg.local.max_concurrent.max(1),
            context_tokens: cfg.local.context_tokens,
        };
        match ragfleet_models::load_local_generator(&gguf, opts) {
            Ok(g) => {
                by_name.insert("local".into(), g);
            }
            Err(e) if want_local => {
                return Err(NodeError::Models(format!(
                    "local generator {}: {e}",
                    gguf.display()
                )))
            }
            Err(e) => {
                tracing::warn!(error = %e, path = %gguf.display(), "local generator not loaded")
            }
        }
    }
    if cfg.openai.is_configured() {
        let client_cfg = cfg.openai_client_config()?;
        let g = ragfleet_models::OpenAiGenerator::new(client_cfg)
            .map_err(|e| NodeError::Models(format!("openai generator: {e}")))?;
        by_name.insert("openai".into(), Arc::new(g));
    }
    let generators = Generators {
        default: cfg.generator.name().to_string(),
        by_name,
    };
    tracing::info!(
        generators = ?generators.by_name.keys().collect::<Vec<_>>(),
        default = %generators.default,
        "models loaded"
    );
    Ok((embedder, generators))
}

/// The HTTP routes over a state.
pub fn router(state: SharedState) -> Router {
    let limits = &state.config.limits;
    // Every response names the node that answered (tests, debugging).
    let node_header = axum::http::HeaderValue::from_str(state.node_id()).ok();
    // Every data route needs a principal (crate::auth).
    let data = Router::new()
        .route(
            "/documents",
            post(api::documents::create).get(api::documents::list),
        )
        .route("/documents/batch", post(api::documents::batch))
        .route(
            "/documents/{id}",
            get(api::documents::get).delete(api::documents::delete),
        )
        .route(
            "/search",
            post(api::search::search).get(api::search::search_get),
        )
        .route("/chat", post(api::chat::chat))
        .route("/chat/ws", get(api::ws::chat_ws))
        .route("/chat/runs/{run_id}/events", get(api::resume::resume))
        .route("/conversations", get(api::conversations::list))
        .route(
            "/conversations/{id}",
            get(api::conversations::get).delete(api::conversations::delete),
        )
        .route("/runs/{id}", get(api::conversations::run))
        .route("/info", get(api::ops::info))
        .route("/me", get(api::admin::me))
        .route("/auth/logout", post(api::admin::logout))
        .route(
            "/admin/users",
            get(api::admin::list_users).post(api::admin::create_user),
        )
        .route(
            "/admin/users/{name}",
            axum::routing::patch(api::admin::update_user).delete(api::admin::delete_user),
        )
        .route(
            "/admin/users/{name}/grants/{collection}",
            axum::routing::put(api::admin::grant).delete(api::admin::revoke_grant),
        )
        .route(
            "/admin/keys",
            get(api::admin::list_keys).post(api::admin::create_key),
        )
        .route(
            "/admin/keys/{id}",
            axum::routing::delete(api::admin::revoke_key),
        );
    let openai = Router::new()
        .route("/chat/completions", post(api::openai::completions))
        .route("/models", get(api::openai::models));
    let auth = axum::middleware::from_fn_with_state(state.clone(), api::authn::authenticate);
    let api = Router::new()
        .merge(data.route_layer(auth.clone()))
        .route("/auth/login", post(api::admin::login))
        .route("/openapi.json", get(api::openapi::spec))
        .route("/docs", get(web::docs));
    Router::new()
        .route("/", get(web::index))
        .route("/assets/{file}", get(web::asset))
        .route("/health", get(api::ops::health))
        .route("/ready", get(api::ops::ready))
        .route("/metrics", get(api::ops::metrics))
        .nest("/v1", openai.route_layer(auth))
        .nest("/api/v1", api)
        .route_layer(axum::middleware::from_fn(metrics::track))
        .layer(axum::middleware::map_response(
            move |mut r: axum::response::Response| {
                let id = node_header.clone();
                async move {
                    if let Some(id) = id {
                        r.headers_mut().insert("x-ragfleet-node", id);
                    }
                    r
                }
            },
        ))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(TraceLayer::new_for_http().on_failure(on_failure))
        .with_state(state)
}

/// tower-http logs every 5xx as an ERROR. A 503 is the node saying "not
/// now" (`/ready` while the engine opens or the node drains, a full queue):
/// polled for by `ragfleet up` and load balancers, and already logged, as a
/// warning where unexpected, by [`ApiError`]. Other failures stay ERRORs.
fn on_failure(
    class: tower_http::classify::ServerErrorsFailureClass,
    latency: std::time::Duration,
    _span: &tracing::Span,
) {
    use tower_http::classify::ServerErrorsFailureClass as C;
    let ms = latency.as_millis();
    match class {
        C::StatusCode(s) if s == axum::http::StatusCode::SERVICE_UNAVAILABLE => {
            tracing::debug!(classification = %class, latency_ms = ms, "response failed")
        }
        _ => tracing::error!(classification = %class, latency_ms = ms, "response failed"),
    }
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no route for {}", uri.path()))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// A node bound to its address, not yet serving.
pub struct Node {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    state: SharedState,
    engine: Option<Engine>,
}

impl Node {
    /// Bind the listen address. The engine opens when [`Node::run`] starts;
    /// until it has, `/health` answers and `/ready` is 503.
    pub async fn bind(config: NodeConfig) -> Result<Node, NodeError> {
        config.validate()?;
        let addr = config.listen;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| NodeError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| NodeError::Bind { addr, source })?;
        let node_id = config.node_id(addr);
        let advertise = config.advertise_addr(addr);
        let state = AppState::new(config)?;
        state.runs.set_node_id(node_id.clone());
        let _ = state.node_id.set(node_id);
        let _ = state.advertise.set(advertise);
        Ok(Node {
            listener,
            addr,
            state: Arc::new(state),
            engine: None,
        })
    }

    /// Serve an engine opened elsewhere (tests sharing one engine, embedders).
    pub fn with_engine(mut self, engine: Engine) -> Self {
        self.engine = Some(engine);
        self
    }

    /// The bound address (the real port when the config said `:0`).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn state(&self) -> SharedState {
        self.state.clone()
    }

    /// Serve until `shutdown` resolves, then drain: `/ready` turns 503, after
    /// `shutdown.drain_delay_ms` new connections are refused, in-flight
    /// requests and streams get up to `shutdown.grace_ms` to finish.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), NodeError> {
        let Node {
            listener,
            addr,
            state,
            engine,
        } = self;
        let app = router(state.clone());
        let stop_accepting = state.shutdown.clone();
        let server = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { stop_accepting.cancelled().await });
        let mut server_task = tokio::spawn(async move { server.await });
        tracing::info!(%addr, node_id = state.node_id(), "node listening");

        let open_state = state.clone();
        let mut open_task = tokio::spawn(async move {
            let engine = match engine {
                Some(e) => e,
                None => open_engine(&open_state.config).await?,
            };
            if open_state.config.auth.enabled {
                // The first node on a new store creates the admin key.
                crate::auth::bootstrap(engine.store().as_ref(), &open_state.config.data_dir)
                    .await
                    .map_err(NodeError::Auth)?;
            } else {
                tracing::warn!(
                    "AUTHENTICATION IS OFF (--no-auth): anyone who can reach this node is an admin"
                );
            }
            // Keep the indexes in step with the changes other nodes write
            // to a shared store (LISTEN/NOTIFY on PostgreSQL, polling).
            let follower = engine.spawn_follower(open_state.config.store.poll_interval());
            open_state.set_engine(engine);
            tracing::info!("engine ready");
            Ok::<_, NodeError>(follower)
        });
        let upkeep_handle = state.metrics.clone();
        let upkeep = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                upkeep_handle.run_upkeep();
            }
        });

        // etcd membership (nothing without endpoints).
        let leave = tokio_util::sync::CancellationToken::new();
        let membership = tokio::spawn(crate::membership::run(state.clone(), leave.clone()));

        tokio::pin!(shutdown);
        let mut opened = false;
        let mut follower = None;
        let result = loop {
            tokio::select! {
                _ = &mut shutdown => break Ok(()),
                res = &mut open_task, if !opened => {
                    opened = true;
                    match res {
                        Ok(Ok(f)) => follower = Some(f),
                        Ok(Err(e)) => {
                            let _ = state.engine_error.set(e.to_string());
                            break Err(e);
                        }
                        Err(join) => {
                            let e = NodeError::Models(format!("engine task failed: {join}"));
                            let _ = state.engine_error.set(e.to_string());
                            break Err(e);
                        }
                    }
                }
                res = &mut server_task => {
                    upkeep.abort();
                    leave.cancel();
                    return match res {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => Err(NodeError::Serve(e)),
                        Err(join) => Err(NodeError::Serve(std::io::Error::other(join.to_string()))),
                    };
                }
            }
        };

        // Drain: /ready 503, leave etcd, finish in-flight answers.
        let cfg = &state.config.shutdown;
        state.start_draining();
        tracing::info!(
            live_streams = state.live_streams(),
            "draining: /ready is 503"
        );
        leave.cancel();
        if tokio::time::timeout(Duration::from_secs(5), membership)
            .await
            .is_err()
        {
            tracing::warn!("leaving etcd took too long; the lease will expire on its own");
        }
        if result.is_ok() && cfg.drain_delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(cfg.drain_delay_ms)).await;
        }
        state.shutdown.cancel();
        let grace = Duration::from_millis(cfg.grace_ms);
        let finished = tokio::time::timeout(grace, async {
            let _ = (&mut server_task).await;
            state.streams_finished().await;
        })
        .await;
        if finished.is_err() {
            tracing::warn!(
                live_streams = state.live_streams(),
                "shutdown grace period over; dropping what is left"
            );
            server_task.abort();
        }
        open_task.abort();
        upkeep.abort();
        if let Some(f) = follower {
            f.shutdown().await;
        }
        if let Some(engine) = state.engine_opt() {
            if let Err(e) = engine.flush().await {
                tracing::warn!(error = %e, "flushing the indexes failed");
            }
        }
        tracing::info!("node stopped");
        result
    }
}

/// Bind and serve until `shutdown` resolves (see [`Node::run`]).
pub async fn serve(
    config: NodeConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), NodeError> {
    Node::bind(config).await?.run(shutdown).await
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received"),
        _ = term => tracing::info!("SIGTERM received"),
    }
}
