//! Prometheus metrics: one process-wide recorder, rendered at `/metrics`.
//! Names are listed in docs/node.md.
use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use ragfleet_rag::{Timings, Usage};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The process-wide recorder's handle (installed on first use). If another
/// recorder was installed first, this handle renders only what it records.
pub fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
            }
            describe();
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "ragfleet_node_http_requests_total",
        "HTTP requests by method, route and status"
    );
    describe_histogram!(
        "ragfleet_node_http_request_duration_seconds",
        Unit::Seconds,
        "Time to the response head, by method and route"
    );
    describe_histogram!(
        "ragfleet_node_stage_duration_seconds",
        Unit::Seconds,
        "Chat stage latencies: embed, search, first_token, total"
    );
    describe_counter!(
        "ragfleet_node_tokens_generated_total",
        "Completion tokens generated, by generator"
    );
    describe_counter!(
        "ragfleet_node_chats_total",
        "Chat answers by generator and outcome (done, error, cancelled)"
    );
    describe_counter!(
        "ragfleet_node_documents_ingested_total",
        "Documents ingested, by status (created, replaced, unchanged)"
    );
    describe_counter!(
        "ragfleet_node_ingest_failures_total",
        "Documents (files, lines) that failed to ingest"
    );
    describe_counter!(
        "ragfleet_node_rejected_total",
        "Chats refused by admission control, by reason"
    );
    describe_gauge!("ragfleet_node_generations_running", "Generations running");
    describe_gauge!(
        "ragfleet_node_generations_queued",
        "Chats waiting for a generation slot"
    );
    describe_gauge!("ragfleet_node_streams_active", "Answers being streamed");
    describe_gauge!("ragfleet_node_documents", "Documents stored");
    describe_gauge!("ragfleet_node_chunks", "Chunks stored");
    describe_gauge!("ragfleet_node_vector_index_size", "Vectors in the index");
    describe_gauge!(
        "ragfleet_node_lexical_index_size",
        "Chunks in the BM25 index"
    );
}

/// Middleware: count requests and time them by matched route (never by raw
/// path, which would let clients create unbounded label sets).
pub async fn track(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().as_str().to_owned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!("ragfleet_node_http_requests_total",
        "method" => method.clone(), "route" => route.clone(), "status" => status)
    .increment(1);
    metrics::histogram!("ragfleet_node_http_request_duration_seconds",
        "method" => method, "route" => route)
    .record(started.elapsed().as_secs_f64());
    resp
}

/// Record a finished answer.
pub fn record_done(generator: &str, usage: &Usage, t: &Timings) {
    let g = generator.to_owned();
    metrics::counter!("ragfleet_node_tokens_generated_total", "generator" => g.clone())
        .increment(usage.completion_tokens as u64);
    metrics::counter!("ragfleet_node_chats_total", "generator" => g, "outcome" => "done")
        .increment(1);
    let stage = |name: &'static str, v: f64| {
        metrics::histogram!("ragfleet_node_stage_duration_seconds", "stage" => name)
            .record(v / 1000.0);
    };
    stage("embed", t.embed_ms);
    stage("search", t.search_ms);
    if let Some(ft) = t.first_token_ms {
        stage("first_token", ft);
    }
    stage("total", t.total_ms);
}

pub fn record_chat_outcome(generator: &str, outcome: &'static str) {
    metrics::counter!("ragfleet_node_chats_total", "generator" => generator.to_owned(), "outcome" => outcome)
        .increment(1);
}

pub fn record_ingest(status: ragfleet_rag::IngestStatus) {
    let s = match status {
        ragfleet_rag::IngestStatus::Created => "created",
        ragfleet_rag::IngestStatus::Replaced => "replaced",
        ragfleet_rag::IngestStatus::Unchanged => "unchanged",
    };
    metrics::counter!("ragfleet_node_documents_ingested_total", "status" => s).increment(1);
}

pub fn record_ingest_failure(n: usize) {
    if n > 0 {
        metrics::counter!("ragfleet_node_ingest_failures_total").increment(n as u64);
    }
}

/// Gauges read at scrape time: generations running, and the engine's
/// counters once it is open.
pub fn update_gauges(generations_running: usize, stats: Option<ragfleet_rag::EngineStats>) {
    metrics::gauge!("ragfleet_node_generations_running").set(generations_running as f64);
    if let Some(s) = stats {
        metrics::gauge!("ragfleet_node_documents").set(s.documents as f64);
        metrics::gauge!("ragfleet_node_chunks").set(s.chunks as f64);
        metrics::gauge!("ragfleet_node_vector_index_size").set(s.vector_index_size as f64);
        metrics::gauge!("ragfleet_node_lexical_index_size").set(s.lexical_index_size as f64);
    }
}
