//! Cluster membership in etcd, through etcd's v3 JSON gateway over HTTP
//! (no gRPC, no etcd client crate): once the node is ready it grants a lease
//! of `cluster.etcd.lease_ttl_s`, puts `<prefix><node_id>` =
//! `{"addr":"host:port","weight":N}` under that lease, and keeps the lease
//! alive every third of its TTL. A lost lease (etcd restarted, the node
//! paused longer than the TTL) is noticed at the next keep-alive and the
//! node registers again. On shutdown it deletes the key and revokes the
//! lease, so the gateway's discovery drops it at once; if the node dies
//! instead, the key disappears when the lease expires.
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::config::EtcdConfig;
use crate::state::SharedState;

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd {endpoint}{path}: {message}")]
    Request {
        endpoint: String,
        path: String,
        message: String,
    },
    #[error("etcd answered without {0}")]
    Reply(&'static str),
    #[error("no etcd endpoint configured")]
    NoEndpoint,
}

/// One node's registration.
pub struct Registrar {
    http: reqwest::Client,
    endpoints: Vec<String>,
    current: usize,
    pub key: String,
    pub value: String,
    ttl_s: u64,
    lease: Option<i64>,
}

fn lease_id(v: &Value) -> Option<i64> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

impl Registrar {
    pub fn new(cfg: &EtcdConfig, node_id: &str, addr: &str, weight: u32) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(cfg.request_timeout_ms.max(100)))
            .connect_timeout(Duration::from_millis(cfg.request_timeout_ms.max(100)))
            .build()
            .unwrap_or_default();
        Self {
            http,
            endpoints: cfg
                .endpoints
                .iter()
                .map(|e| e.trim_end_matches('/').to_string())
                .collect(),
            current: 0,
            key: format!("{}{}", cfg.prefix, node_id),
            value: json!({"addr": addr, "weight": weight}).to_string(),
            ttl_s: cfg.lease_ttl_s,
            lease: None,
        }
    }

    pub fn lease(&self) -> Option<i64> {
        self.lease
    }

    /// POST a JSON body to the first endpoint that answers, starting with
    /// the one that answered last.
    async fn call(&mut self, path: &str, body: Value) -> Result<Value, EtcdError> {
        if self.endpoints.is_empty() {
            return Err(EtcdError::NoEndpoint);
        }
        let mut last = None;
        for i in 0..self.endpoints.len() {
            let idx = (self.current + i) % self.endpoints.len();
            let endpoint = self.endpoints[idx].clone();
            let res = self
                .http
                .post(format!("{endpoint}{path}"))
                .json(&body)
                .send()
                .await;
            let err = match res {
                Ok(r) => {
                    let status = r.status();
                    let text = r.text().await.unwrap_or_default();
                    if status.is_success() {
                        self.current = idx;
                        // keepalive answers a stream of JSON objects; take the first.
                        let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("{}");
                        return serde_json::from_str(first).map_err(|e| EtcdError::Request {
                            endpoint,
                            path: path.into(),
                            message: format!("bad JSON ({e}): {first}"),
                        });
                    }
                    EtcdError::Request {
                        endpoint,
                        path: path.into(),
                        message: format!("HTTP {status}: {}", text.trim()),
                    }
                }
                Err(e) => EtcdError::Request {
                    endpoint,
                    path: path.into(),
                    message: e.to_string(),
                },
            };
            last = Some(err);
        }
        Err(last.unwrap_or(EtcdError::NoEndpoint))
    }

    /// Grant a lease and put the key under it.
    pub async fn register(&mut self) -> Result<i64, EtcdError> {
        let granted = self
            .call("/v3/lease/grant", json!({"TTL": self.ttl_s}))
            .await?;
        let id = granted
            .get("ID")
            .and_then(lease_id)
            .ok_or(EtcdError::Reply("a lease ID"))?;
        self.lease = Some(id);
        let put = json!({
            "key": B64.encode(&self.key),
            "value": B64.encode(&self.value),
            "lease": id.to_string(),
        });
        self.call("/v3/kv/put", put).await?;
        Ok(id)
    }

    /// Refresh the lease. `Ok(false)`: the lease is gone (register again).
    pub async fn keepalive(&mut self) -> Result<bool, EtcdError> {
        let Some(id) = self.lease else {
            return Ok(false);
        };
        let v = self
            .call("/v3/lease/keepalive", json!({"ID": id.to_string()}))
            .await?;
        let ttl = v
            .get("result")
            .and_then(|r| r.get("TTL"))
            .and_then(lease_id)
            .unwrap_or(0);
        Ok(ttl > 0)
    }

    /// Delete the key and revoke the lease.
    pub async fn deregister(&mut self) -> Result<(), EtcdError> {
        let del = self
            .call("/v3/kv/deleterange", json!({"key": B64.encode(&self.key)}))
            .await;
        if let Some(id) = self.lease.take() {
            self.call("/v3/lease/revoke", json!({"ID": id.to_string()}))
                .await?;
        }
        del.map(|_| ())
    }
}

/// Registers the node once it is ready, keeps the registration alive
/// (re-registering after a lost lease) until `stop`, then deregisters.
pub async fn run(state: SharedState, stop: CancellationToken) {
    let cfg = state.config.cluster.etcd.clone();
    if cfg.endpoints.is_empty() {
        return;
    }
    let mut reg = Registrar::new(
        &cfg,
        state.node_id(),
        state.advertise.get().map(String::as_str).unwrap_or(""),
        state.config.cluster.weight,
    );
    // Join only once ready (engine open, caught up with the store).
    loop {
        if state.is_draining() {
            return;
        }
        if let Some(engine) = state.engine_opt() {
            if engine.ready().await.is_ok() {
                break;
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
    let period = Duration::from_millis((cfg.lease_ttl_s * 1000 / 3).max(500));
    let mut backoff = Duration::from_millis(250);
    'register: loop {
        match reg.register().await {
            Ok(lease) => {
                backoff = Duration::from_millis(250);
                state
                    .registered
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                metrics::counter!("ragfleet_node_etcd_registrations_total").increment(1);
                tracing::info!(key = %reg.key, value = %reg.value, lease, "registered in etcd");
            }
            Err(e) => {
                tracing::warn!(error = %e, "etcd registration failed; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue 'register;
            }
        }
        let mut last_ok = Instant::now();
        loop {
            tokio::select! {
                _ = stop.cancelled() => {
                    state.registered.store(false, std::sync::atomic::Ordering::SeqCst);
                    match reg.deregister().await {
                        Ok(()) => tracing::info!(key = %reg.key, "deregistered from etcd"),
                        Err(e) => tracing::warn!(error = %e, "etcd deregistration failed (the lease expires on its own)"),
                    }
                    return;
                }
                _ = tokio::time::sleep(period) => {}
            }
            match reg.keepalive().await {
                Ok(true) => last_ok = Instant::now(),
                Ok(false) => {
                    tracing::warn!(key = %reg.key, "etcd lease lost; registering again");
                    state
                        .registered
                        .store(false, std::sync::atomic::Ordering::SeqCst);
                    continue 'register;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "etcd keep-alive failed");
                    if last_ok.elapsed() >= Duration::from_secs(cfg.lease_ttl_s) {
                        state
                            .registered
                            .store(false, std::sync::atomic::Ordering::SeqCst);
                        continue 'register;
                    }
                }
            }
        }
    }
}
