//! Hot reload and the per-pool background tasks (active health checks,
//! discovery).
//!
//! A reload validates the new configuration, builds a new [`Runtime`] and
//! swaps it in atomically. Pools keep their servers' live state by address
//! (in-flight counts, EWMA, health, drain, admin weights); a server no longer
//! listed gets no new requests, while whatever is in flight on it (requests,
//! SSE streams, WebSocket tunnels) runs to completion on the connections it
//! already has. An invalid configuration is rejected — logged with the file
//! and (for TOML errors) the line, counted in
//! `ragfleet_gateway_config_reloads_total{result="failure"}` — and the
//! running configuration stays in force.
//!
//! Triggers: [`GatewayHandle::reload`] / [`GatewayHandle::reload_from_path`]
//! (tests, the admin API's `POST /admin/reload`), SIGHUP ([`spawn_sighup`])
//! and changes to the file ([`watch_config_file`], debounced).
//!
//! Not reloadable (a change is logged and ignored until restart): `[listen]`
//! and `admin.addr`.
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::app::discovered::PoolReport;
use crate::app::ops::OpsState;
use crate::app::state::App;
use crate::app::state::GatewayHandle;
pub use crate::base::config::ReloadConfig;
use crate::base::config::{Config, ConfigError};
use crate::proxy::runtime::Runtime;
use crate::upstream::discovery::{self, Entry, Source};
use crate::upstream::pool::Pool;

/// Why a reload was rejected. The running configuration stays in force.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("no configuration file to reload (the gateway was started from flags)")]
    NoConfigFile,
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The edge (TLS certificates) could not apply the new configuration.
    #[error("{file}: {message}")]
    Edge { file: String, message: String },
}

/// What a successful reload changed.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ReloadSummary {
    pub pools_added: Vec<String>,
    pub pools_removed: Vec<String>,
    /// `pool/addr` of servers added and removed.
    pub servers_added: Vec<String>,
    pub servers_removed: Vec<String>,
}

fn text_hash(text: &str) -> u64 {
    crate::base::hash::hash64(&[text.as_bytes()])
}

/// Start health checks and discovery for every pool (from `run_until`).
pub(crate) fn start_background(shared: &Arc<App>) {
    let rt = shared.runtime.load_full();
    let mut st = shared.ops.lock_state();
    st.started = true;
    for (name, pool) in rt.pools() {
        start_health(shared, &mut st, name, pool);
        if pool.cfg.discovery.is_enabled() {
            st.generation += 1;
            let entry = Entry {
                cfg: pool.cfg.discovery.clone(),
                generation: st.generation,
                stop: shared.ops.stop.child_token(),
                sets: BTreeMap::new(),
                started: true,
            };
            discovery::spawn(
                PoolReport::reporter(shared, name, entry.generation),
                name,
                &entry,
            );
            st.discovery.insert(name.clone(), entry);
        }
    }
}

fn start_health(shared: &Arc<App>, st: &mut OpsState, name: &str, pool: &Arc<Pool>) {
    if let Some(old) = st.health.remove(name) {
        old.cancel();
    }
    if let Some(h) = pool.cfg.health.clone().filter(|h| h.enabled) {
        let token = shared.ops.stop.child_token();
        tokio::spawn(crate::upstream::health::run(pool.clone(), h, token.clone()));
        st.health.insert(name.to_string(), token);
    }
}

/// One-line form of a configuration error (TOML errors span several lines:
/// keep "line N, column M" and the message).
pub(crate) fn one_line(msg: &str) -> String {
    let lines: Vec<&str> = msg
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    match lines.as_slice() {
        [] => String::new(),
        [one] => (*one).to_string(),
        [first, .., last] => format!("{first}: {last}"),
    }
}

/// Called with a validated configuration before it is swapped in; an error
/// rejects the reload and the old configuration stays in force.
///
/// The edge's share of a reload: TLS certificates are re-read from the new
/// `[tls]` table (new handshakes get them; open connections keep the ones
/// they negotiated) and the rate-limit rules are replaced (counters carry
/// over). Turning TLS on or off needs a restart.
async fn reload_edge(shared: &App, cfg: &Config, file: &str) -> Result<(), ReloadError> {
    match (&shared.edge.serve.tls, &cfg.tls) {
        (Some(tls), Some(new)) => tls.reload_with(new).map_err(|e| ReloadError::Edge {
            file: file.to_string(),
            message: e.to_string(),
        })?,
        (None, None) => {}
        _ => tracing::warn!(file, "turning [tls] on or off takes effect on restart only"),
    }
    let old = shared.edge.rate_limiter.load_full();
    let new = crate::proxy::limits::RateLimiter::replacing(&cfg.rate_limit, &old).await;
    shared.edge.rate_limiter.store(new);
    Ok(())
}

fn reject(shared: &App, file: &str, e: ReloadError) -> ReloadError {
    shared.metrics.reload_result(false);
    tracing::error!(
        file,
        "configuration reload rejected, the running configuration stays in force: {}",
        one_line(&e.to_string())
    );
    e
}

impl GatewayHandle {
    /// The file `reload_from_path` reads (set by the CLI with `--config`).
    pub fn set_config_path(&self, path: impl Into<PathBuf>) {
        let path = path.into();
        if let Ok(text) = std::fs::read_to_string(&path) {
            self.shared.ops.file_hash.store(text_hash(&text), Relaxed);
        }
        *self
            .shared
            .ops
            .config_path
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(path);
    }

    pub fn config_path(&self) -> Option<PathBuf> {
        self.shared
            .ops
            .config_path
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        self.shared.ops.config.load_full()
    }

    /// Re-read the configuration file and apply it (SIGHUP, file watcher,
    /// `POST /admin/reload`).
    pub async fn reload_from_path(&self) -> Result<ReloadSummary, ReloadError> {
        let Some(path) = self.config_path() else {
            return Err(reject(&self.shared, "-", ReloadError::NoConfigFile));
        };
        let file = path.display().to_string();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(source) => {
                let e = ConfigError::Read {
                    file: file.clone(),
                    source,
                };
                return Err(reject(&self.shared, &file, e.into()));
            }
        };
        let cfg = match Config::parse(&text, &file) {
            Ok(c) => c,
            Err(e) => return Err(reject(&self.shared, &file, e.into())),
        };
        let r = self.apply(cfg, &file).await;
        if r.is_ok() {
            self.shared.ops.file_hash.store(text_hash(&text), Relaxed);
        }
        r
    }

    /// Validate and apply a new configuration atomically.
    pub async fn reload(&self, cfg: Config) -> Result<ReloadSummary, ReloadError> {
        self.apply(cfg, "config").await
    }

    async fn apply(&self, cfg: Config, file: &str) -> Result<ReloadSummary, ReloadError> {
        let shared = &self.shared;
        let _one_at_a_time = shared.ops.reloading.lock().await;
        if let Err(e) = cfg.validate(file) {
            return Err(reject(shared, file, e.into()));
        }
        if let Err(e) = reload_edge(shared, &cfg, file).await {
            return Err(reject(shared, file, e));
        }
        let old_cfg = shared.ops.config.load_full();
        let mut cfg = cfg;
        if cfg.listen.addr != old_cfg.listen.addr || cfg.listen.workers != old_cfg.listen.workers {
            tracing::warn!(
                file,
                "listen.addr and listen.workers take effect on restart only"
            );
        }
        // The listener is bound; keep describing it as it is.
        cfg.listen.addr = old_cfg.listen.addr;
        let old_admin = old_cfg.admin.as_ref().filter(|a| a.enabled).map(|a| a.addr);
        let new_admin = cfg.admin.as_ref().filter(|a| a.enabled).map(|a| a.addr);
        if old_admin != new_admin {
            tracing::warn!(
                file,
                "admin.addr and admin.enabled take effect on restart only"
            );
        }
        let summary = swap(shared, &cfg);
        shared.access_log.store(Arc::new(cfg.access_log.clone()));
        shared.auth.store(Arc::new(cfg.auth.clone()));
        shared.ops.config.store(Arc::new(cfg));
        shared.metrics.reload_result(true);
        tracing::info!(
            file,
            pools_added = ?summary.pools_added,
            pools_removed = ?summary.pools_removed,
            servers_added = ?summary.servers_added,
            servers_removed = ?summary.servers_removed,
            "configuration reloaded"
        );
        Ok(summary)
    }
}

/// Build the new runtime (keeping server state and discovery sets), swap it
/// in, and restart what changed among the background tasks.
fn swap(shared: &Arc<App>, cfg: &Config) -> ReloadSummary {
    let mut st = shared.ops.lock_state();
    let old = shared.runtime.load_full();
    let mut summary = ReloadSummary::default();

    // Discovery entries: kept while a pool's [discovery] is unchanged.
    let mut entries: HashMap<String, Entry> = HashMap::new();
    for (name, p) in &cfg.pools {
        if !p.discovery.is_enabled() {
            continue;
        }
        match st.discovery.remove(name) {
            Some(e) if e.cfg == p.discovery => {
                entries.insert(name.clone(), e);
            }
            other => {
                if let Some(e) = other {
                    e.stop.cancel();
                }
                st.generation += 1;
                entries.insert(
                    name.clone(),
                    Entry {
                        cfg: p.discovery.clone(),
                        generation: st.generation,
                        stop: shared.ops.stop.child_token(),
                        sets: BTreeMap::new(),
                        started: false,
                    },
                );
            }
        }
    }
    for (_, e) in st.discovery.drain() {
        e.stop.cancel();
    }

    let mut pools: BTreeMap<String, Arc<Pool>> = BTreeMap::new();
    for (name, pcfg) in &cfg.pools {
        let prev = old.pools().get(name);
        let desired = discovery::desired(pcfg, entries.get(name).map(|e| &e.sets));
        let servers = discovery::build_servers(&desired, prev.map(|p| &**p));
        let before: Vec<String> = prev
            .map(|p| p.servers().iter().map(|s| s.addr().to_string()).collect())
            .unwrap_or_default();
        for s in &servers {
            if !before.iter().any(|b| b == s.addr()) {
                summary.servers_added.push(format!("{name}/{}", s.addr()));
            }
        }
        for b in &before {
            if !servers.iter().any(|s| s.addr() == b) {
                summary.servers_removed.push(format!("{name}/{b}"));
            }
        }
        if prev.is_none() {
            summary.pools_added.push(name.clone());
        }
        // The keep-alive client carries over when its settings are the same.
        let client = prev
            .filter(|p| {
                p.cfg.timeouts.connect == pcfg.timeouts.connect
                    && p.cfg.keepalive == pcfg.keepalive
                    && p.cfg.keepalive_timeout == pcfg.keepalive_timeout
            })
            .map(|p| p.client.clone());
        pools.insert(
            name.clone(),
            Arc::new(Pool::with_state(name, pcfg.clone(), servers, client)),
        );
    }
    for (name, p) in old.pools() {
        if !pools.contains_key(name) {
            summary.pools_removed.push(name.clone());
            for s in p.servers() {
                summary.servers_removed.push(format!("{name}/{}", s.addr()));
            }
        }
    }
    let rt = Arc::new(Runtime::with_pools(&cfg.routes, pools));
    shared.runtime.store(rt.clone());

    // Background tasks follow the new pools.
    if st.started {
        for (name, token) in std::mem::take(&mut st.health) {
            token.cancel();
            let _ = name;
        }
        for (name, pool) in rt.pools() {
            start_health(shared, &mut st, name, pool);
        }
        for (name, e) in entries.iter_mut() {
            if !e.started {
                discovery::spawn(PoolReport::reporter(shared, name, e.generation), name, e);
                e.started = true;
            }
        }
    }
    st.discovery = entries;
    summary
}

/// Reload from the configuration file on every SIGHUP until the gateway
/// stops. Unix only (a no-op elsewhere).
pub fn spawn_sighup(handle: &GatewayHandle) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cannot listen for SIGHUP: {e}");
                return;
            }
        };
        let handle = handle.clone();
        let stop = handle.shared.ops.stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    s = hup.recv() => if s.is_none() { return },
                }
                tracing::info!("SIGHUP: reloading the configuration");
                let _ = handle.reload_from_path().await;
            }
        });
    }
    #[cfg(not(unix))]
    let _ = handle;
}

/// Watches the configuration file; dropping it stops watching.
pub struct ConfigWatcher {
    _watcher: notify::RecommendedWatcher,
    stop: CancellationToken,
}

impl Drop for ConfigWatcher {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Reload whenever the file at `handle.config_path()` changes (debounced by
/// `reload.debounce`; a change that leaves the text as it was is ignored).
/// The directory is watched, so editors that replace the file and
/// Kubernetes ConfigMap symlink swaps are seen too.
pub fn watch_config_file(handle: &GatewayHandle) -> Result<ConfigWatcher, String> {
    use notify::Watcher as _;
    let path = handle
        .config_path()
        .ok_or("no configuration file to watch")?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev {
            if !matches!(ev.kind, notify::EventKind::Access(_)) {
                let _ = tx.send(());
            }
        }
    })
    .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    watcher
        .watch(&dir, notify::RecursiveMode::NonRecursive)
        .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    let stop = handle.shared.ops.stop.child_token();
    let handle = handle.clone();
    let stop2 = stop.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop2.cancelled() => return,
                ev = rx.recv() => if ev.is_none() { return },
            }
            // Debounce: wait until the directory has been quiet for a while.
            loop {
                let quiet = handle
                    .config()
                    .reload
                    .debounce
                    .0
                    .max(Duration::from_millis(10));
                tokio::select! {
                    _ = stop2.cancelled() => return,
                    ev = rx.recv() => if ev.is_none() { return } else { continue },
                    _ = tokio::time::sleep(quiet) => break,
                }
            }
            if !file_changed(&handle, &path) {
                continue;
            }
            tracing::info!(file = %path.display(), "configuration file changed: reloading");
            let _ = handle.reload_from_path().await;
        }
    });
    Ok(ConfigWatcher {
        _watcher: watcher,
        stop,
    })
}

fn file_changed(handle: &GatewayHandle, path: &Path) -> bool {
    match std::fs::read_to_string(path) {
        Ok(text) => text_hash(&text) != handle.shared.ops.file_hash.load(Relaxed),
        // Gone or unreadable: reload to report it (the old config stays).
        Err(_) => true,
    }
}

impl Source {
    /// Source of each server of a pool (static, dns, etcd), for the admin API.
    pub(crate) fn of_pool(shared: &App, pool: &Pool) -> HashMap<String, Source> {
        let st = shared.ops.lock_state();
        discovery::desired(&pool.cfg, st.discovery.get(pool.name()).map(|e| &e.sets))
            .into_iter()
            .map(|(s, src)| (s.addr, src))
            .collect()
    }
}
