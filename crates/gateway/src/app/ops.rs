//! The application's operational state: the configuration in force, the
//! file it came from, and the bookkeeping of background tasks (health
//! checks, discovery entries) under one lock.
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, MutexGuard};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::base::config::Config;
use crate::upstream::discovery::Entry;

/// Background-task bookkeeping, guarded by one lock so reloads, discovery
/// updates and admin weight changes never interleave.
#[derive(Default)]
pub(crate) struct OpsState {
    pub(crate) discovery: HashMap<String, Entry>,
    pub(crate) health: HashMap<String, CancellationToken>,
    pub(crate) started: bool,
    pub(crate) generation: u64,
}

/// Operational state shared by the gateway's tasks.
pub(crate) struct Ops {
    pub(crate) state: Mutex<OpsState>,
    /// The configuration in force (access log and admin settings are read
    /// from it per request).
    pub(crate) config: ArcSwap<Config>,
    pub(crate) config_path: Mutex<Option<PathBuf>>,
    /// Hash of the file text last loaded (the watcher skips no-op changes).
    pub(crate) file_hash: AtomicU64,
    /// Cancelled when the gateway stops: ends every background task.
    pub(crate) stop: CancellationToken,
    /// Serialises whole reloads (async, so the TLS hook may await).
    pub(crate) reloading: tokio::sync::Mutex<()>,
}

impl Ops {
    pub(crate) fn new(cfg: &Config) -> Ops {
        Ops {
            state: Mutex::new(OpsState::default()),
            config: ArcSwap::from_pointee(cfg.clone()),
            config_path: Mutex::new(None),
            file_hash: AtomicU64::new(0),
            stop: CancellationToken::new(),
            reloading: tokio::sync::Mutex::new(()),
        }
    }

    pub(crate) fn lock_state(&self) -> MutexGuard<'_, OpsState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}
