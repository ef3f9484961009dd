//! Active health checks: every `interval`, GET `path` on each server of a
//! pool; `fall` consecutive failures take a server out, `rise` consecutive
//! successes bring it back (then slow start ramps its weight). Passive health
//! (max_fails within fail_timeout) is recorded on [`Server`] by the proxy; a
//! server takes traffic only while both allow it.
use std::sync::Arc;

use http::{header, HeaderValue, Method, Request, Uri};
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::body::ReqBody;
use crate::config::HealthConfig;
use crate::pool::{Pool, Server};

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
                let ok = check(&pool, &server, &cfg).await;
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

/// One check: a 2xx or 3xx answer within the timeout is healthy.
async fn check(pool: &Pool, server: &Server, cfg: &HealthConfig) -> bool {
    let uri = match Uri::builder()
        .scheme("http")
        .authority(server.authority().clone())
        .path_and_query(cfg.path.as_str())
        .build()
    {
        Ok(u) => u,
        Err(_) => return false,
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
            // Read the (small) body so the connection can be reused.
            let _ = tokio::time::timeout(
                cfg.timeout.0,
                http_body_util::BodyExt::collect(res.into_body()),
            )
            .await;
            ok
        }
        _ => false,
    }
}
