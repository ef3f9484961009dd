//! Shared set-up for tests against the real store backends: a private
//! PostgreSQL schema per test (dropped afterwards, so tests run in parallel
//! on one database), a SQLite file in a temp dir, and a private PostgreSQL
//! server for the restart tests.
#![allow(dead_code)]
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn pg_bindir() -> PathBuf {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        if out.status.success() {
            let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if p.join("initdb").exists() {
                return p;
            }
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path().join("bin")))
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions
        .pop()
        .expect("PostgreSQL server binaries (apt-get install postgresql)")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A PostgreSQL server of the test's own (initdb + pg_ctl in a temp dir on a
/// free port), so a test can stop and restart it. PostgreSQL refuses to run
/// as root: as root, the files belong to `postgres` and the commands run
/// through `runuser -u postgres`.
pub struct PrivatePostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    as_postgres: bool,
}

impl PrivatePostgres {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let as_postgres = is_root();
        if as_postgres {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap()
                .success();
            assert!(ok, "chown the private PostgreSQL directory");
        }
        let pg = Self {
            dir,
            bin: pg_bindir(),
            port: free_port(),
            as_postgres,
        };
        let data = pg.data();
        let out = pg
            .command("initdb")
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
                "-D",
            ])
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pg.pg_ctl_start();
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn pg_ctl_start(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.path().display()
        );
        let out = self
            .command("pg_ctl")
            .args(["start", "-w", "-t", "60", "-D"])
            .arg(self.data())
            .args(["-o", &opts, "-l"])
            .arg(self.dir.path().join("log"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start: {}{}",
            String::from_utf8_lossy(&out.stdout),
            std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
        );
    }

    /// Stops the server the hard way (no shutdown checkpoint: what is
    /// acknowledged must come back from the WAL).
    pub fn stop_immediate(&self) {
        let _ = self
            .command("pg_ctl")
            .args(["stop", "-m", "immediate", "-w", "-D"])
            .arg(self.data())
            .output();
    }

    pub fn start_again(&self) {
        self.pg_ctl_start();
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.stop_immediate();
    }
}

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
