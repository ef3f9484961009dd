//! Active health checks: every `interval`, GET `path` on each server of a
//! pool; `fall` consecutive failures take a server out, `rise` consecutive
//! successes bring it back (then slow start ramps its weight). Passive health
//! (max_fails within fail_timeout) is recorded on [`Server`] by the proxy; a
//! server takes traffic only while both allow it.
//!
//! Load feedback: when a healthy answer is JSON with a `load` object (a
//! ragfleet node's `/health`), [`load_score`] turns it into one number stored
//! on the server, which `p2c` weighs (see `balance::p2c_cost`).
use std::sync::Arc;

use http::{header, HeaderValue, Method, Request, Uri};
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::base::config::HealthConfig;
use crate::http::body::ReqBody;
use crate::upstream::pool::{Pool, Server};

/// Run the checks of one pool until `stop` is cancelled.
pub async fn run(pool: Arc<Pool>, cfg: HealthConfig, stop: CancellationToken) {
    let mut tick = tokio::time::interval(cfg.interval.0);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let mut checks = JoinSet::new();
        for server in pool.servers() {
            let pool = pool.clone();
            let cfg = cfg.clone();
            checks.spawn(async move {
                let (ok, load) = check(&pool, &server, &cfg).await;
                server.set_load(load.unwrap_or(0.0));
                if let Some(up) = server.record_active(ok, cfg.rise, cfg.fall) {
                    if up {
                        tracing::info!(
                            pool = pool.name(),
                            server = server.addr(),
                            "active health check: server is up"
                        );
                    } else {
                        tracing::warn!(
                            pool = pool.name(),
                            server = server.addr(),
                            "active health check: server is down"
                        );
                    }
                }
            });
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = async { while checks.join_next().await.is_some() {} } => {}
        }
    }
}

/// Largest health response body read for the load field.
const MAX_HEALTH_BODY: usize = 64 * 1024;

/// The load a health response reports, if any: `load.score` when given
/// (any backend can report its own number), else for a ragfleet node
/// (`{"load":{"running":R,"queued":Q,"capacity":C,...}}`) the generations
/// running and waiting per generation slot, (R + Q) / max(C, 1): 0 idle,
/// 1 every slot busy, above 1 queueing. Unknown fields are ignored.
pub fn load_score(body: &[u8]) -> Option<f64> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let load = v.get("load")?;
    if let Some(score) = load.get("score").and_then(|s| s.as_f64()) {
        return (score.is_finite() && score >= 0.0).then_some(score);
    }
    let num = |k: &str| {
        load.get(k)
            .and_then(|x| x.as_f64())
            .filter(|x| x.is_finite() && *x >= 0.0)
    };
    let running = num("running");
    let queued = num("queued");
    if running.is_none() && queued.is_none() {
        return None;
    }
    let capacity = num("capacity").unwrap_or(1.0).max(1.0);
    Some((running.unwrap_or(0.0) + queued.unwrap_or(0.0)) / capacity)
}

/// One check: a 2xx or 3xx answer within the timeout is healthy. Also
/// returns the load the answer reports, if any.
async fn check(pool: &Pool, server: &Server, cfg: &HealthConfig) -> (bool, Option<f64>) {
    let uri = match Uri::builder()
        .scheme("http")
        .authority(server.authority().clone())
        .path_and_query(cfg.path.as_str())
        .build()
    {
        Ok(u) => u,
        Err(_) => return (false, None),
    };
    let mut req = Request::new(ReqBody::Empty);
    *req.method_mut() = Method::GET;
    *req.uri_mut() = uri;
    if let Ok(v) = HeaderValue::from_str(server.addr()) {
        req.headers_mut().insert(header::HOST, v);
    }
    req.headers_mut().insert(
        header::USER_AGENT,
        HeaderValue::from_static("ragfleet-gateway-health"),
    );
    match tokio::time::timeout(cfg.timeout.0, pool.client.request(req)).await {
        Ok(Ok(res)) => {
            let ok = res.status().is_success() || res.status().is_redirection();
            let json = res
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("json"));
            // Read the (small) body so the connection can be reused.
            let limited = http_body_util::Limited::new(res.into_body(), MAX_HEALTH_BODY);
            let body =
                tokio::time::timeout(cfg.timeout.0, http_body_util::BodyExt::collect(limited))
                    .await;
            let load = match body {
                Ok(Ok(b)) if ok && json => load_score(&b.to_bytes()),
                _ => None,
            };
            (ok, load)
        }
        _ => (false, None),
    }
}

#[cfg(test)]
mod tests {
    use super::load_score;

    #[test]
    fn load_scores() {
        let node = br#"{"status":"ok","load":{"running":2,"queued":2,"capacity":2,"max_queued":64,"streams":2}}"#;
        assert_eq!(load_score(node), Some(2.0));
        assert_eq!(
            load_score(br#"{"load":{"running":0,"queued":0,"capacity":4}}"#),
            Some(0.0)
        );
        assert_eq!(
            load_score(br#"{"load":{"score":0.5,"running":9}}"#),
            Some(0.5)
        );
        assert_eq!(load_score(br#"{"load":{"running":3}}"#), Some(3.0));
        assert_eq!(load_score(br#"{"status":"ok"}"#), None);
        assert_eq!(load_score(br#"{"load":{"score":-1}}"#), None);
        assert_eq!(load_score(b"health"), None);
    }
}
