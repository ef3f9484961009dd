//! etcd discovery through etcd's v3 JSON gateway (plain HTTP, no gRPC).
//!
//! `POST /v3/kv/range` lists the keys under the prefix (keys and values are
//! base64 in the JSON), then `POST /v3/watch` from the listing's revision + 1
//! streams PUT and DELETE events as a sequence of JSON objects. Each key under
//! the prefix is one server; its value is either `host:port` or JSON
//! `{"addr":"host:port","weight":N}` (other fields are ignored). When etcd is
//! unreachable or the watch ends, the last known set stays in force and the
//! task reconnects with exponential backoff (then lists again, so nothing
//! missed meanwhile is lost).
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use http::{header, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{EtcdDiscovery, Found, Report, Source};

type EtcdClient = Client<HttpConnector, Full<Bytes>>;

/// First wait before reconnecting (doubles up to `backoff_max`).
const BACKOFF_START: Duration = Duration::from_millis(200);
/// A watch that lasted this long resets the backoff.
const HEALTHY_WATCH: Duration = Duration::from_secs(10);

pub use crate::base::config::discovery::parse_endpoint;

/// The end of the key range of `prefix` (etcd's "prefix end": the prefix
/// with its last byte incremented).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A server from a key's value: `host:port` or `{"addr":..,"weight":..}`.
pub fn parse_value(value: &[u8], default_weight: u32) -> Result<Found, String> {
    let text = std::str::from_utf8(value)
        .map_err(|_| "value is not UTF-8".to_string())?
        .trim();
    let (addr, weight) = if text.starts_with('{') {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("bad JSON: {e}"))?;
        let addr = v
            .get("addr")
            .and_then(Value::as_str)
            .ok_or("JSON value has no \"addr\" string")?
            .to_string();
        let weight = match v.get("weight") {
            None | Some(Value::Null) => default_weight,
            Some(w) => {
                w.as_u64()
                    .filter(|w| (1..=1000).contains(w))
                    .ok_or_else(|| format!("weight {w} is not in 1..=1000"))? as u32
            }
        };
        (addr, weight)
    } else {
        (text.to_string(), default_weight)
    };
    match addr.parse::<http::uri::Authority>() {
        Ok(a) if a.port_u16().is_some() && !a.host().is_empty() => Ok(Found { addr, weight }),
        _ => Err(format!("{addr:?} is not host:port")),
    }
}

fn int(v: Option<&Value>) -> i64 {
    match v {
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn b64(v: Option<&Value>) -> Vec<u8> {
    v.and_then(Value::as_str)
        .and_then(|s| B64.decode(s).ok())
        .unwrap_or_default()
}

/// The set as the pool sees it: key order, unparseable values left out.
fn to_found(kvs: &BTreeMap<Vec<u8>, Found>) -> Vec<Found> {
    kvs.values().cloned().collect()
}

struct Etcd {
    client: EtcdClient,
    cfg: EtcdDiscovery,
    key: String,
    range_end: String,
}

impl Etcd {
    fn new(cfg: EtcdDiscovery) -> Etcd {
        let mut conn = HttpConnector::new();
        conn.set_connect_timeout(Some(cfg.timeout.0));
        // A silently vanished etcd (no FIN, no RST) ends the watch within
        // about 30 s + 3 × 5 s instead of the OS default of hours.
        conn.set_keepalive(Some(Duration::from_secs(30)));
        conn.set_keepalive_interval(Some(Duration::from_secs(5)));
        conn.set_keepalive_retries(Some(3));
        conn.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(conn);
        Etcd {
            client,
            key: B64.encode(cfg.prefix.as_bytes()),
            range_end: B64.encode(prefix_end(cfg.prefix.as_bytes())),
            cfg,
        }
    }

    async fn post(
        &self,
        endpoint: &str,
        path: &str,
        body: Value,
    ) -> Result<http::Response<hyper::body::Incoming>, String> {
        let base = endpoint.trim_end_matches('/');
        let uri: Uri = format!("{base}{path}")
            .parse()
            .map_err(|e| format!("{base}{path}: {e}"))?;
        let req = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| e.to_string())?;
        let res = tokio::time::timeout(self.cfg.timeout.0, self.client.request(req))
            .await
            .map_err(|_| format!("{base}{path}: no answer within {:?}", self.cfg.timeout.0))?
            .map_err(|e| format!("{base}{path}: {}", chain(&e)))?;
        if !res.status().is_success() {
            let status = res.status();
            let body = tokio::time::timeout(self.cfg.timeout.0, res.into_body().collect())
                .await
                .ok()
                .and_then(|r| r.ok())
                .map(|c| String::from_utf8_lossy(&c.to_bytes()).into_owned())
                .unwrap_or_default();
            return Err(format!("{base}{path}: HTTP {status}: {}", body.trim()));
        }
        Ok(res)
    }

    /// List the prefix: (revision, key → server).
    async fn list(&self, endpoint: &str) -> Result<(i64, BTreeMap<Vec<u8>, Found>), String> {
        let body = serde_json::json!({"key": self.key, "range_end": self.range_end});
        let res = self.post(endpoint, "/v3/kv/range", body).await?;
        let bytes = tokio::time::timeout(self.cfg.timeout.0, res.into_body().collect())
            .await
            .map_err(|_| "listing body timed out".to_string())?
            .map_err(|e| e.to_string())?
            .to_bytes();
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| format!("bad listing: {e}"))?;
        let revision = int(v.pointer("/header/revision"));
        let mut kvs = BTreeMap::new();
        for kv in v.get("kvs").and_then(Value::as_array).into_iter().flatten() {
            let key = b64(kv.get("key"));
            let value = b64(kv.get("value"));
            self.insert(&mut kvs, key, &value);
        }
        Ok((revision, kvs))
    }

    fn insert(&self, kvs: &mut BTreeMap<Vec<u8>, Found>, key: Vec<u8>, value: &[u8]) {
        match parse_value(value, self.cfg.weight) {
            Ok(f) => {
                kvs.insert(key, f);
            }
            Err(e) => {
                tracing::warn!(
                    key = %String::from_utf8_lossy(&key),
                    "etcd discovery: ignoring key: {e}"
                );
                kvs.remove(&key);
            }
        }
    }

    /// Watch from `revision`, updating `kvs` and calling `changed` after each
    /// batch of events. Returns why the watch ended.
    async fn watch(
        &self,
        endpoint: &str,
        revision: i64,
        kvs: &mut BTreeMap<Vec<u8>, Found>,
        mut changed: impl FnMut(&BTreeMap<Vec<u8>, Found>),
    ) -> String {
        let body = serde_json::json!({"create_request": {
            "key": self.key, "range_end": self.range_end, "start_revision": revision.to_string(),
        }});
        let res = match self.post(endpoint, "/v3/watch", body).await {
            Ok(r) => r,
            Err(e) => return e,
        };
        let mut body = res.into_body();
        let mut buf: Vec<u8> = Vec::new();
        loop {
            let frame = match body.frame().await {
                None => return "the watch stream ended".into(),
                Some(Err(e)) => return format!("the watch stream broke: {}", chain(&e)),
                Some(Ok(f)) => f,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buf.extend_from_slice(&data);
            let mut de = serde_json::Deserializer::from_slice(&buf).into_iter::<Value>();
            let mut msgs = Vec::new();
            let mut bad = None;
            for item in de.by_ref() {
                match item {
                    Ok(v) => msgs.push(v),
                    Err(e) if e.is_eof() => break,
                    Err(e) => {
                        bad = Some(format!("bad watch message: {e}"));
                        break;
                    }
                }
            }
            let used = de.byte_offset();
            buf.drain(..used);
            for m in msgs {
                if let Some(err) = m.get("error") {
                    return format!("watch error: {err}");
                }
                let Some(r) = m.get("result") else { continue };
                if r.get("canceled").and_then(Value::as_bool) == Some(true) {
                    let compact = int(r.get("compact_revision"));
                    let reason = r.get("cancel_reason").and_then(Value::as_str).unwrap_or("");
                    return format!("the watch was canceled (compact_revision {compact}) {reason}");
                }
                let mut any = false;
                for ev in r
                    .get("events")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let kv = ev.get("kv");
                    let key = b64(kv.and_then(|k| k.get("key")));
                    if ev.get("type").and_then(Value::as_str) == Some("DELETE") {
                        kvs.remove(&key);
                    } else {
                        let value = b64(kv.and_then(|k| k.get("value")));
                        self.insert(kvs, key, &value);
                    }
                    any = true;
                }
                if any {
                    changed(kvs);
                }
            }
            if let Some(b) = bad {
                return b;
            }
        }
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

pub(crate) async fn run(
    report: Arc<dyn Report>,
    pool: String,
    cfg: EtcdDiscovery,
    stop: CancellationToken,
) {
    let etcd = Etcd::new(cfg.clone());
    let report = |ok: bool, found: Option<Vec<Found>>| -> bool {
        if !report.lookup(Source::Etcd, ok) {
            return false;
        }
        if let Some(f) = found {
            report.found(Source::Etcd, f);
        }
        true
    };
    let mut backoff = BACKOFF_START;
    let mut ep_index = 0usize;
    let mut failing = false;
    loop {
        let endpoint = &cfg.endpoints[ep_index % cfg.endpoints.len()];
        let listed = tokio::select! {
            _ = stop.cancelled() => return,
            r = etcd.list(endpoint) => r,
        };
        match listed {
            Ok((revision, mut kvs)) => {
                if failing {
                    tracing::info!(pool, endpoint, "etcd discovery reconnected");
                    failing = false;
                }
                if !report(true, Some(to_found(&kvs))) {
                    return;
                }
                let since = Instant::now();
                let why = tokio::select! {
                    _ = stop.cancelled() => return,
                    w = etcd.watch(endpoint, revision + 1, &mut kvs, |kvs| {
                        report(true, Some(to_found(kvs)));
                    }) => w,
                };
                if stop.is_cancelled() {
                    return;
                }
                tracing::warn!(
                    pool,
                    endpoint,
                    "etcd discovery: {why}; keeping the last known servers and reconnecting"
                );
                if !report(false, None) {
                    return;
                }
                if since.elapsed() >= HEALTHY_WATCH {
                    backoff = BACKOFF_START;
                }
            }
            Err(e) => {
                if !report(false, None) {
                    return;
                }
                if !failing {
                    tracing::warn!(
                        pool,
                        endpoint,
                        "etcd discovery: cannot list {:?}: {e}; keeping the last known servers",
                        cfg.prefix
                    );
                    failing = true;
                } else {
                    tracing::debug!(pool, endpoint, "etcd discovery: still failing: {e}");
                }
                ep_index += 1;
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(cfg.backoff_max.0.max(BACKOFF_START));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(
            prefix_end(b"/ragfleet/nodes/"),
            b"/ragfleet/nodes0".to_vec()
        );
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }

    #[test]
    fn values() {
        assert_eq!(
            parse_value(b"127.0.0.1:8081", 3).unwrap(),
            Found {
                addr: "127.0.0.1:8081".into(),
                weight: 3
            }
        );
        assert_eq!(
            parse_value(br#" {"addr":"node-1:8081","weight":5,"id":"n1"} "#, 1).unwrap(),
            Found {
                addr: "node-1:8081".into(),
                weight: 5
            }
        );
        assert_eq!(parse_value(br#"{"addr":"[::1]:80"}"#, 2).unwrap().weight, 2);
        assert!(parse_value(b"no-port", 1).is_err());
        assert!(parse_value(br#"{"weight":2}"#, 1).is_err());
        assert!(parse_value(br#"{"addr":"a:1","weight":0}"#, 1).is_err());
        assert!(parse_value(b"{broken", 1).is_err());
        assert!(parse_value(b"\xff\xfe", 1).is_err());
    }

    #[test]
    fn endpoints() {
        assert!(parse_endpoint("http://127.0.0.1:2379").is_ok());
        assert!(parse_endpoint("http://etcd:2379/").is_ok());
        assert!(parse_endpoint("https://etcd:2379").is_err());
        assert!(parse_endpoint("etcd:2379").is_err());
        assert!(parse_endpoint("http://etcd:2379/v3").is_err());
    }
}
