//! The routes and pools in force: built in one place, swapped whole on
//! reload.
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::base::config::{Config, Route};
use crate::upstream::pool::Pool;

/// Routes and pools in force. Swapped whole on reload; pools keep their
/// servers' state by address.
#[derive(Debug)]
pub struct Runtime {
    /// (prefix, pool), longest prefix first.
    routes: Vec<(Arc<str>, Arc<Pool>)>,
    pools: BTreeMap<String, Arc<Pool>>,
}

impl Runtime {
    /// Fresh pools for a configuration (at start).
    pub(crate) fn new(cfg: &Config) -> Runtime {
        let pools = cfg
            .pools
            .iter()
            .map(|(name, p)| (name.clone(), Arc::new(Pool::new(name, p.clone()))))
            .collect();
        Runtime::with_pools(&cfg.routes, pools)
    }

    /// The routing table over these pools: the one place it is built (at
    /// start and on every reload). Routes to unknown pools are left out
    /// (validation refuses them before this).
    pub(crate) fn with_pools(routes: &[Route], pools: BTreeMap<String, Arc<Pool>>) -> Runtime {
        let mut routes: Vec<(Arc<str>, Arc<Pool>)> = routes
            .iter()
            .filter_map(|r| {
                pools
                    .get(&r.pool)
                    .map(|p| (Arc::from(r.prefix.as_str()), p.clone()))
            })
            .collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.0.len()));
        Runtime { routes, pools }
    }

    /// The pool of the longest route prefix matching `path`.
    pub fn route(&self, path: &str) -> Option<&Arc<Pool>> {
        self.route_with_prefix(path).map(|(_, p)| p)
    }

    /// The longest matching route: its prefix and pool.
    pub fn route_with_prefix(&self, path: &str) -> Option<(&Arc<str>, &Arc<Pool>)> {
        self.routes
            .iter()
            .find(|(prefix, _)| path.starts_with(&**prefix))
            .map(|(prefix, p)| (prefix, p))
    }

    pub fn pool(&self, name: &str) -> Option<&Arc<Pool>> {
        self.pools.get(name)
    }

    /// Every pool by name.
    pub fn pools(&self) -> &BTreeMap<String, Arc<Pool>> {
        &self.pools
    }

    /// (prefix, pool) of every route, longest prefix first.
    pub fn routes(&self) -> &[(Arc<str>, Arc<Pool>)] {
        &self.routes
    }
}
