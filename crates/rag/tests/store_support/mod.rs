//! Shared set-up for tests against the real store backends: a private
//! PostgreSQL schema per test (dropped afterwards, so tests run in parallel
//! on one database), a SQLite file in a temp dir, and a private PostgreSQL
//! server for the restart tests.
#![allow(dead_code)]
use std::sync::Arc;
use std::time::{Duration, Instant};

mod private_pg;
#[allow(unused_imports)] // each test binary uses its own part of this module
pub use private_pg::{free_port, PrivatePostgres};

use ragfleet_rag::store::Store;
use ragfleet_rag::StoreConfig;
use sqlx::{Connection, Executor};

/// The test database (scripts/setup.sh creates it): `RAGFLEET_TEST_PG` or
/// the local server's `test` database.
pub fn pg_url() -> String {
    std::env::var("RAGFLEET_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// The test Redis: `RAGFLEET_TEST_REDIS` or the local server.
pub fn redis_url() -> String {
    std::env::var("RAGFLEET_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into())
}

/// A fresh unique name (letters, digits, `_`).
pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// A schema for one test; dropped with everything in it when this is dropped
/// (also when the test panics).
pub struct PgSchema {
    pub url: String,
    pub name: String,
}

impl PgSchema {
    pub fn new() -> Self {
        Self {
            url: pg_url(),
            name: unique("t"),
        }
    }

    /// A store configuration for this schema (the store creates it).
    pub fn store_config(&self) -> StoreConfig {
        StoreConfig {
            url: Some(self.url.clone()),
            schema: Some(self.name.clone()),
            ..Default::default()
        }
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let url = self.url.clone();
        let name = self.name.clone();
        // Drop may run inside a runtime: do the async work on a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok(mut c) = sqlx::PgConnection::connect(&url).await {
                    let _ = c
                        .execute(sqlx::AssertSqlSafe(format!(
                            "DROP SCHEMA IF EXISTS \"{name}\" CASCADE"
                        )))
                        .await;
                    let _ = c.close().await;
                }
            });
        })
        .join();
    }
}

/// A store under test with what it needs to be reopened.
pub struct TestStore {
    pub s: Arc<dyn Store>,
    pub cfg: StoreConfig,
    pub dir: tempfile::TempDir,
    pub schema: Option<PgSchema>,
}

impl TestStore {
    pub async fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig::default();
        let s = ragfleet_rag::store::open(&cfg, dir.path()).await.unwrap();
        Self {
            s,
            cfg,
            dir,
            schema: None,
        }
    }

    pub async fn postgres() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let schema = PgSchema::new();
        let cfg = schema.store_config();
        let s = ragfleet_rag::store::open(&cfg, dir.path())
            .await
            .expect("PostgreSQL at RAGFLEET_TEST_PG / 127.0.0.1:5432 (scripts/setup.sh)");
        Self {
            s,
            cfg,
            dir,
            schema: Some(schema),
        }
    }

    /// Another store instance (its own connection pool) on the same data,
    /// as a second node or process would open it.
    pub async fn open_another(&self) -> Arc<dyn Store> {
        ragfleet_rag::store::open(&self.cfg, self.dir.path())
            .await
            .unwrap()
    }
}

/// A free TCP port on 127.0.0.1.
/// Polls `f` until it returns `Some` or `deadline` passes.
pub async fn eventually<T, F, Fut>(deadline: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if start.elapsed() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Each test once per backend: `suite!(a, b)` makes `sqlite::a`,
/// `postgres::a`, … calling `a(TestStore)` (the test file imports
/// `TestStore`).
#[allow(unused_macros)]
macro_rules! suite {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                super::$test(super::TestStore::sqlite().await).await
            })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                super::$test(super::TestStore::postgres().await).await
            })*
        }
    };
}
