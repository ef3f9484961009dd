//! What discovery finds, applied: a pool's discovery tasks report to a
//! `PoolReport`, which counts each lookup and merges each set found into
//! the pool's servers (static ∪ DNS ∪ etcd).
use std::sync::{Arc, Weak};

use crate::app::state::App;
use crate::upstream::discovery::{self, Found, Report, Source};

/// The reports of one pool's discovery entry (one generation of it).
pub(crate) struct PoolReport {
    app: Weak<App>,
    pool: String,
    generation: u64,
}

impl PoolReport {
    pub(crate) fn reporter(app: &Arc<App>, pool: &str, generation: u64) -> Arc<dyn Report> {
        Arc::new(PoolReport {
            app: Arc::downgrade(app),
            pool: pool.to_string(),
            generation,
        })
    }
}

impl Report for PoolReport {
    fn lookup(&self, src: Source, ok: bool) -> bool {
        let Some(app) = self.app.upgrade() else {
            return false;
        };
        count(&app, &self.pool, src, ok);
        true
    }

    fn found(&self, src: Source, found: Vec<Found>) {
        if let Some(app) = self.app.upgrade() {
            apply(&app, &self.pool, self.generation, src, found);
        }
    }
}

/// A source reports its current set for `pool`: store it and update the
/// pool's servers. Ignored if the pool's discovery was replaced meanwhile.
fn apply(shared: &App, pool: &str, generation: u64, src: Source, found: Vec<Found>) {
    let mut st = shared.ops.lock_state();
    let Some(entry) = st.discovery.get_mut(pool) else {
        return;
    };
    if entry.generation != generation {
        return;
    }
    shared
        .metrics
        .discovered
        .get([pool, src.as_str()], None)
        .value
        .store(found.len() as i64, std::sync::atomic::Ordering::Relaxed);
    if entry.sets.get(&src) == Some(&found) {
        return;
    }
    entry.sets.insert(src, found);
    let rt = shared.runtime.load();
    let Some(p) = rt.pool(pool) else {
        return;
    };
    let desired = discovery::desired(&p.cfg, Some(&entry.sets));
    let before: Vec<String> = p.servers().iter().map(|s| s.addr().to_string()).collect();
    let servers = discovery::build_servers(&desired, Some(p));
    let after: Vec<String> = servers.iter().map(|s| s.addr().to_string()).collect();
    let added: Vec<&String> = after.iter().filter(|a| !before.contains(a)).collect();
    let removed: Vec<&String> = before.iter().filter(|a| !after.contains(a)).collect();
    p.set_servers(servers);
    if !added.is_empty() || !removed.is_empty() {
        tracing::info!(
            pool,
            source = src.as_str(),
            ?added,
            ?removed,
            servers = after.len(),
            "discovery changed the pool's servers"
        );
    }
}

/// Count one lookup of a source.
fn count(shared: &App, pool: &str, src: Source, ok: bool) {
    let result = if ok { "ok" } else { "error" };
    shared
        .metrics
        .discovery
        .get([pool, src.as_str(), result], None)
        .value
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}
