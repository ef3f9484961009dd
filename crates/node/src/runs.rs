//! Resumable answer streams.
//!
//! A streamed answer is produced by a task of its own, which appends every
//! event (numbered from 0: the SSE `id`) to a buffer: always in this node's
//! memory, and — with `[redis] url` — to a Redis Stream per run
//! (`<prefix>run:<id>:events`, entry id `0-<seq+1>`, `MAXLEN ~ buffer_events`,
//! expiring `ttl_s` after the last event). While the answer is produced the
//! node refreshes `<prefix>run:<id>:owner` (TTL `owner_ttl_ms`).
//!
//! The client that asked reads from the memory buffer. A client whose
//! connection broke resumes with `GET /api/v1/chat/runs/{id}/events` and
//! `Last-Event-ID` (or `?after=`) at any node: the node that produces the
//! answer serves it from memory; another one from Redis, waiting for new
//! events while the owner key lives. If the owner key expires before the
//! answer ended (the producing node died) the resumed stream ends with an
//! `error` event (`code: "run_lost"`) instead of waiting forever.
//!
//! An answer nobody reads (no local reader, and no remote reader refreshing
//! `<prefix>run:<id>:readers`) for `detach_grace_ms` is cancelled: its
//! generation stops and its slot frees, as when a client disconnects.
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::response::sse::Event;
use futures::stream::BoxStream;
use futures::StreamExt;
use ragfleet_rag::ChatEvent;
use tokio::sync::{mpsc, watch, OnceCell};
use tokio_util::sync::CancellationToken;

use crate::config::{RedisConfig, StreamsConfig};
use crate::error::{ApiError, ApiResult};

/// The SSE `event:` name of an event (= its `type`).
pub fn event_name(ev: &ChatEvent) -> &'static str {
    match ev {
        ChatEvent::Retrieval { .. } => "retrieval",
        ChatEvent::Token { .. } => "token",
        ChatEvent::Done { .. } => "done",
        ChatEvent::Error { .. } => "error",
    }
}

/// One event of an answer as it is buffered and sent: `id:` `seq`,
/// `event:` `event`, `data:` `data` (JSON).
#[derive(Debug, Clone, PartialEq)]
pub struct BufferedEvent {
    /// `None` for the synthetic events a resume adds (they are not part of
    /// the answer and carry no id).
    pub seq: Option<u64>,
    pub event: String,
    pub data: String,
}

impl BufferedEvent {
    pub fn from_chat(seq: u64, ev: &ChatEvent) -> Self {
        let data = serde_json::to_string(ev).unwrap_or_else(|e| {
            format!("{{\"type\":\"error\",\"message\":\"cannot encode event: {e}\"}}")
        });
        Self {
            seq: Some(seq),
            event: event_name(ev).to_string(),
            data,
        }
    }

    /// An `error` event with a machine-readable code.
    pub fn error(seq: Option<u64>, code: &str, message: &str) -> Self {
        Self {
            seq,
            event: "error".into(),
            data: serde_json::json!({"type": "error", "code": code, "message": message})
                .to_string(),
        }
    }

    pub fn is_terminal(&self) -> bool {
        self.event == "done" || self.event == "error"
    }

    pub fn to_sse(&self) -> Event {
        let e = Event::default().event(&self.event).data(&self.data);
        match self.seq {
            Some(s) => e.id(s.to_string()),
            None => e,
        }
    }
}

/// An answer in this node's memory.
pub struct LocalRun {
    pub run_id: String,
    /// The principal whose answer this is (only they, or an admin, resume it).
    pub principal: String,
    events: Mutex<Vec<BufferedEvent>>,
    /// (events buffered, finished)
    progress: watch::Sender<(usize, bool)>,
    readers: AtomicUsize,
}

impl LocalRun {
    fn new(run_id: String, principal: String) -> Self {
        Self {
            run_id,
            principal,
            events: Mutex::new(Vec::new()),
            progress: watch::channel((0, false)).0,
            readers: AtomicUsize::new(0),
        }
    }

    fn push(&self, ev: BufferedEvent) {
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        events.push(ev);
        let n = events.len();
        drop(events);
        self.progress.send_modify(|p| p.0 = n);
    }

    fn finish(&self) {
        self.progress.send_modify(|p| p.1 = true);
    }

    pub fn readers(&self) -> usize {
        self.readers.load(Ordering::SeqCst)
    }

    pub fn is_finished(&self) -> bool {
        self.progress.borrow().1
    }

    /// The events with `seq >= from`, as a stream that waits for new ones
    /// until the answer ends. Counts as a reader while alive.
    pub fn subscribe(self: &Arc<Self>, from: u64) -> BoxStream<'static, BufferedEvent> {
        let run = self.clone();
        run.readers.fetch_add(1, Ordering::SeqCst);
        let guard = ReaderGuard(run.clone());
        let mut rx = run.progress.subscribe();
        async_stream::stream! {
            let _guard = guard;
            let mut next = from as usize;
            loop {
                let (len, finished) = *rx.borrow_and_update();
                let batch: Vec<BufferedEvent> = if next < len {
                    let events = run.events.lock().unwrap_or_else(|p| p.into_inner());
                    events[next..len].to_vec()
                } else {
                    Vec::new()
                };
                for ev in batch {
                    next += 1;
                    yield ev;
                }
                if finished && next >= len {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        }
        .boxed()
    }
}

struct ReaderGuard(Arc<LocalRun>);

impl Drop for ReaderGuard {
    fn drop(&mut self) {
        self.0.readers.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Redis keys and the shared connection.
struct RedisRuns {
    client: redis::Client,
    conn: OnceCell<redis::aio::ConnectionManager>,
    prefix: String,
}

impl RedisRuns {
    async fn conn(&self) -> Result<redis::aio::ConnectionManager, redis::RedisError> {
        let c = self
            .conn
            .get_or_try_init(|| async {
                let cfg = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(Duration::from_secs(5)))
                    .set_number_of_retries(2);
                redis::aio::ConnectionManager::new_with_config(self.client.clone(), cfg).await
            })
            .await?;
        Ok(c.clone())
    }

    fn events_key(&self, run_id: &str) -> String {
        format!("{}run:{run_id}:events", self.prefix)
    }
    fn owner_key(&self, run_id: &str) -> String {
        format!("{}run:{run_id}:owner", self.prefix)
    }
    fn readers_key(&self, run_id: &str) -> String {
        format!("{}run:{run_id}:readers", self.prefix)
    }
    fn principal_key(&self, run_id: &str) -> String {
        format!("{}run:{run_id}:principal", self.prefix)
    }

    async fn exists(&self, key: &str) -> Result<bool, redis::RedisError> {
        let mut c = self.conn().await?;
        let n: i64 = redis::cmd("EXISTS").arg(key).query_async(&mut c).await?;
        Ok(n > 0)
    }
}

/// The buffers of this node's answers, and the way to other nodes' ones.
pub struct RunHub {
    cfg: StreamsConfig,
    node_id: std::sync::OnceLock<String>,
    runs: Mutex<HashMap<String, Arc<LocalRun>>>,
    finished: Mutex<VecDeque<(String, Instant)>>,
    redis: Option<Arc<RedisRuns>>,
}

impl RunHub {
    pub fn new(cfg: &StreamsConfig, redis: &RedisConfig) -> Result<Self, String> {
        let redis = if redis.is_configured() {
            let client = redis::Client::open(redis.url.as_str())
                .map_err(|e| format!("redis.url {:?}: {e}", redis.url))?;
            Some(Arc::new(RedisRuns {
                client,
                conn: OnceCell::new(),
                prefix: redis.prefix().to_string(),
            }))
        } else {
            None
        };
        Ok(Self {
            cfg: cfg.clone(),
            node_id: std::sync::OnceLock::new(),
            runs: Mutex::new(HashMap::new()),
            finished: Mutex::new(VecDeque::new()),
            redis,
        })
    }

    /// Set once the node knows its id (after binding).
    pub fn set_node_id(&self, id: String) {
        let _ = self.node_id.set(id);
    }

    fn node_id(&self) -> &str {
        self.node_id.get().map(String::as_str).unwrap_or("node")
    }

    pub fn has_redis(&self) -> bool {
        self.redis.is_some()
    }

    /// Answers being produced on this node now.
    pub fn producing(&self) -> usize {
        self.lock_runs()
            .values()
            .filter(|r| !r.is_finished())
            .count()
    }

    fn lock_runs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<LocalRun>>> {
        self.runs.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn local(&self, run_id: &str) -> Option<Arc<LocalRun>> {
        self.evict();
        self.lock_runs().get(run_id).cloned()
    }

    fn evict(&self) {
        let ttl = Duration::from_secs(self.cfg.ttl_s);
        let mut finished = self.finished.lock().unwrap_or_else(|p| p.into_inner());
        let mut gone = Vec::new();
        while let Some((id, at)) = finished.front() {
            if finished.len() > self.cfg.local_runs || at.elapsed() > ttl {
                gone.push(id.clone());
                finished.pop_front();
            } else {
                break;
            }
        }
        drop(finished);
        if !gone.is_empty() {
            let mut runs = self.lock_runs();
            for id in gone {
                runs.remove(&id);
            }
        }
    }

    /// Buffer an answer whose first event (`Retrieval`, carrying the run id)
    /// has been taken from `rest`'s stream: spawns the producer and returns
    /// the run, with the caller subscribed from event 0.
    pub fn spawn(
        self: &Arc<Self>,
        run_id: String,
        principal: String,
        first: ChatEvent,
        rest: BoxStream<'static, ChatEvent>,
    ) -> (Arc<LocalRun>, BoxStream<'static, BufferedEvent>) {
        let run = Arc::new(LocalRun::new(run_id.clone(), principal.clone()));
        let reader = run.subscribe(0);
        self.lock_runs().insert(run_id.clone(), run.clone());
        let writer = self.redis.as_ref().map(|r| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(redis_writer(
                r.clone(),
                self.cfg.clone(),
                self.node_id().to_string(),
                (run_id.clone(), principal.clone()),
                rx,
            ));
            tx
        });
        let ev = BufferedEvent::from_chat(0, &first);
        if let Some(w) = &writer {
            let _ = w.send(ev.clone());
        }
        run.push(ev);
        tokio::spawn(produce(self.clone(), run.clone(), rest, writer));
        (run, reader)
    }

    /// The events of `run_id` after `after` (all with `None`): from memory
    /// when this node has the run, else from Redis. `None`: unknown run.
    pub async fn resume(
        self: &Arc<Self>,
        run_id: &str,
        after: Option<u64>,
        principal: &crate::auth::Principal,
        shutdown: CancellationToken,
    ) -> ApiResult<Option<(&'static str, BoxStream<'static, BufferedEvent>)>> {
        let from = after.map(|a| a.saturating_add(1)).unwrap_or(0);
        if let Some(run) = self.local(run_id) {
            // Another user's answer is as unknown as a missing one.
            if !principal.owns(&run.principal) {
                return Ok(None);
            }
            return Ok(Some(("local", run.subscribe(from))));
        }
        let Some(redis) = &self.redis else {
            return Ok(None);
        };
        let key = redis.events_key(run_id);
        let exists = redis.exists(&key).await.map_err(|e| {
            ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "redis_unavailable",
                format!("the stream buffer (Redis) is unreachable: {e}"),
            )
            .retry_after(1)
        })?;
        if !exists {
            return Ok(None);
        }
        let owner: Option<String> = match redis.conn().await {
            Ok(mut c) => redis::cmd("GET")
                .arg(redis.principal_key(run_id))
                .query_async(&mut c)
                .await
                .unwrap_or(None),
            Err(_) => None,
        };
        if !owner.is_some_and(|o| principal.owns(&o)) {
            return Ok(None);
        }
        let s = redis_reader(
            redis.clone(),
            self.cfg.clone(),
            run_id.to_string(),
            from,
            shutdown,
        );
        Ok(Some(("redis", s)))
    }

    fn mark_finished(&self, run_id: &str) {
        self.finished
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back((run_id.to_string(), Instant::now()));
        self.evict();
    }
}

/// Drives one answer to its end (or cancels it when nobody reads it).
async fn produce(
    hub: Arc<RunHub>,
    run: Arc<LocalRun>,
    mut rest: BoxStream<'static, ChatEvent>,
    writer: Option<mpsc::UnboundedSender<BufferedEvent>>,
) {
    let grace = Duration::from_millis(hub.cfg.detach_grace_ms);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 1u64;
    let mut unread_since: Option<Instant> = None;
    let push = |ev: BufferedEvent| {
        if let Some(w) = &writer {
            let _ = w.send(ev.clone());
        }
        run.push(ev);
    };
    let mut cancelled = false;
    loop {
        tokio::select! {
            ev = rest.next() => match ev {
                Some(ev) => {
                    let b = BufferedEvent::from_chat(seq, &ev);
                    seq += 1;
                    let end = b.is_terminal();
                    push(b);
                    if end {
                        break;
                    }
                }
                None => {
                    push(BufferedEvent::error(Some(seq), "incomplete", "the answer stream ended unexpectedly"));
                    break;
                }
            },
            _ = tick.tick() => {
                if run.readers() > 0 {
                    unread_since = None;
                    continue;
                }
                if let Some(r) = &hub.redis {
                    if r.exists(&r.readers_key(&run.run_id)).await.unwrap_or(false) {
                        unread_since = None;
                        continue;
                    }
                }
                let since = *unread_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= grace {
                    cancelled = true;
                    break;
                }
            }
        }
    }
    if cancelled {
        // Dropping the engine's stream stops the generation and frees the slot.
        drop(rest);
        tracing::info!(run_id = %run.run_id, "nobody is reading the answer: generation cancelled");
        push(BufferedEvent::error(
            Some(seq),
            "cancelled",
            "the answer was cancelled: no client was reading it",
        ));
    } else {
        drop(rest);
    }
    run.finish();
    drop(writer);
    hub.mark_finished(&run.run_id);
}

/// Appends a run's events to its Redis Stream and keeps its owner key alive
/// until the channel closes (the answer ended).
async fn redis_writer(
    r: Arc<RedisRuns>,
    cfg: StreamsConfig,
    node_id: String,
    (run_id, principal): (String, String),
    mut rx: mpsc::UnboundedReceiver<BufferedEvent>,
) {
    let events_key = r.events_key(&run_id);
    let owner_key = r.owner_key(&run_id);
    let principal_key = r.principal_key(&run_id);
    let owner_ttl = cfg.owner_ttl_ms;
    let mut refresh = tokio::time::interval(Duration::from_millis((owner_ttl / 3).max(100)));
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned = false;
    loop {
        let mut pipe = redis::pipe();
        tokio::select! {
            msg = rx.recv() => {
                let Some(first) = msg else { break };
                pipe.cmd("SET").arg(&owner_key).arg(&node_id).arg("PX").arg(owner_ttl).ignore();
                // Before the events: a resume that finds them finds their owner.
                pipe.cmd("SET").arg(&principal_key).arg(&principal).arg("EX").arg(cfg.ttl_s).ignore();
                let mut batch = vec![first];
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                    if batch.len() >= 256 {
                        break;
                    }
                }
                for ev in &batch {
                    let seq = ev.seq.unwrap_or(0);
                    pipe.cmd("XADD")
                        .arg(&events_key)
                        .arg("MAXLEN")
                        .arg("~")
                        .arg(cfg.buffer_events)
                        .arg(format!("0-{}", seq + 1))
                        .arg("e")
                        .arg(&ev.event)
                        .arg("d")
                        .arg(&ev.data)
                        .ignore();
                }
                pipe.cmd("EXPIRE").arg(&events_key).arg(cfg.ttl_s).ignore();
            }
            _ = refresh.tick() => {
                pipe.cmd("SET").arg(&owner_key).arg(&node_id).arg("PX").arg(owner_ttl).ignore();
            }
        }
        let res = match r.conn().await {
            Ok(mut c) => pipe.query_async::<()>(&mut c).await,
            Err(e) => Err(e),
        };
        match res {
            Ok(()) => warned = false,
            Err(e) if !warned => {
                warned = true;
                tracing::warn!(run_id, error = %e, "buffering the answer in Redis failed; it resumes on this node only");
            }
            Err(_) => {}
        }
    }
    // The answer ended: its events stay for `ttl_s`, the owner key goes.
    if let Ok(mut c) = r.conn().await {
        let _ = redis::pipe()
            .cmd("EXPIRE")
            .arg(&events_key)
            .arg(cfg.ttl_s)
            .ignore()
            .cmd("DEL")
            .arg(&owner_key)
            .ignore()
            .query_async::<()>(&mut c)
            .await;
    }
}

/// A run's events from Redis, from `seq >= from`, waiting for more while
/// the owner key lives.
fn redis_reader(
    r: Arc<RedisRuns>,
    cfg: StreamsConfig,
    run_id: String,
    from: u64,
    shutdown: CancellationToken,
) -> BoxStream<'static, BufferedEvent> {
    async_stream::stream! {
        let events_key = r.events_key(&run_id);
        let owner_key = r.owner_key(&run_id);
        let readers_key = r.readers_key(&run_id);
        let mut next = from;
        let mut poll = Duration::from_millis(20);
        let mut last_mark: Option<Instant> = None;
        let mut failing_since: Option<Instant> = None;
        let mut owner_gone_checks = 0u32;
        loop {
            let mut conn = match r.conn().await {
                Ok(c) => c,
                Err(e) => {
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > Duration::from_millis(cfg.owner_ttl_ms) {
                        yield BufferedEvent::error(None, "redis_unavailable", &format!("the stream buffer (Redis) is unreachable: {e}"));
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            // Tell the producer somebody reads (it would cancel otherwise).
            if last_mark.is_none_or(|t| t.elapsed() > Duration::from_millis(500)) {
                let _ = redis::cmd("SET").arg(&readers_key).arg(1).arg("PX").arg(2000)
                    .query_async::<()>(&mut conn).await;
                last_mark = Some(Instant::now());
            }
            let start = format!("0-{}", next + 1);
            let got: Result<redis::streams::StreamRangeReply, _> = redis::cmd("XRANGE")
                .arg(&events_key).arg(&start).arg("+").arg("COUNT").arg(512)
                .query_async(&mut conn).await;
            let got = match got {
                Ok(g) => { failing_since = None; g }
                Err(e) => {
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > Duration::from_millis(cfg.owner_ttl_ms) {
                        yield BufferedEvent::error(None, "redis_unavailable", &format!("reading the stream buffer failed: {e}"));
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            if !got.ids.is_empty() {
                poll = Duration::from_millis(20);
                for entry in got.ids {
                    let seq = entry
                        .id
                        .split_once('-')
                        .and_then(|(_, n)| n.parse::<u64>().ok())
                        .and_then(|n| n.checked_sub(1));
                    let Some(seq) = seq else { continue };
                    if seq > next {
                        yield BufferedEvent::error(None, "events_expired", &format!(
                            "events {next}..{} of this answer are no longer buffered", seq - 1));
                        return;
                    }
                    let event: String = entry.get("e").unwrap_or_default();
                    let data: String = entry.get("d").unwrap_or_default();
                    let ev = BufferedEvent { seq: Some(seq), event, data };
                    let end = ev.is_terminal();
                    next = seq + 1;
                    yield ev;
                    if end {
                        return;
                    }
                }
                continue;
            }
            // Nothing new: is anybody still producing it?
            let owner: Result<i64, _> = redis::cmd("EXISTS").arg(&owner_key).query_async(&mut conn).await;
            if matches!(owner, Ok(0)) {
                // Read once more: the last events may have landed with the owner's departure.
                owner_gone_checks += 1;
                if owner_gone_checks >= 2 {
                    let alive: i64 = redis::cmd("EXISTS").arg(&events_key).query_async(&mut conn).await.unwrap_or(0);
                    let msg = if alive == 0 {
                        "the answer's events are no longer buffered"
                    } else {
                        "the node producing this answer stopped before it ended; the answer is incomplete"
                    };
                    yield BufferedEvent::error(None, "run_lost", msg);
                    return;
                }
                continue;
            }
            owner_gone_checks = 0;
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = shutdown.cancelled() => {
                    yield BufferedEvent::error(None, "node_draining", "this node is shutting down; resume the stream again (any node)");
                    return;
                }
            }
            poll = (poll * 2).min(Duration::from_millis(200));
        }
    }
    .boxed()
}
