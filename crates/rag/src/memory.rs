//! Conversation memory: the recent turns of each conversation, optionally
//! cached in Redis (`[engine.memory] redis_url`) in front of the
//! [`ConversationStore`], which stays the source of truth.
//!
//! Redis is an accelerator, never a dependency: when it is unreachable (or
//! slower than `timeout_ms`) history is read from the store, a warning is
//! logged once per outage, and the chat goes on.
//!
//! ## Cache layout and consistency
//!
//! Per conversation, two keys (both expire `ttl_secs` after the last write):
//! - `{prefix}conv:{id}:turns` — a list of the last `max_turns` turns, each
//!   entry `"{index}\t{turn JSON}"` (turn indexes are the store's, from 0);
//! - `{prefix}conv:{id}:n` — the highest turn count any writer has announced.
//!
//! Writers append to the store first, then run one Lua script (atomic in
//! Redis) that appends to the list only if the list ends right before the
//! new turns (or the conversation is new); if the list already holds them it
//! is left alone, and if it has a gap it is deleted. A reader that misses
//! loads the tail from the store and fills the list only if no list exists
//! and no writer has announced more turns than it loaded — so a slow reader
//! never installs a stale tail over a newer write. A read is a hit only when
//! the entries are contiguous and either as many as asked or starting at
//! turn 0; anything else falls through to the store.
//!
//! A node that cannot reach Redis while writing remembers the conversation
//! and deletes its cached list before it uses the cache again. Another node
//! that can reach Redis meanwhile may read the older list until the
//! conversation's next successful append (which finds the gap and deletes
//! the list) or the TTL — the one window where the cache can lag the store.
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;

use crate::api::Turn;
use crate::config::MemoryConfig;
use crate::store::{redact_url, ConversationStore};
use crate::{RagError, Result};

/// How long after a failed connection attempt the next one is made (chats
/// in between go straight to the store).
const RECONNECT_EVERY: Duration = Duration::from_secs(2);

const APPEND_LUA: &str = r#"
local first = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local maxn = tonumber(ARGV[3])
local count = #ARGV - 3
local total = first + count
local n = tonumber(redis.call('GET', KEYS[2]) or '0')
if total > n then n = total end
redis.call('SET', KEYS[2], n, 'EX', ttl)
local tail = redis.call('LINDEX', KEYS[1], -1)
local ok = false
if tail then
  local ti = tonumber(string.match(tail, '^(%d+)'))
  if ti == first - 1 then
    for j = 4, #ARGV do redis.call('RPUSH', KEYS[1], ARGV[j]) end
    ok = true
  elseif ti ~= nil and ti >= total - 1 then
    ok = true
  else
    redis.call('DEL', KEYS[1])
  end
elseif first == 0 then
  for j = 4, #ARGV do redis.call('RPUSH', KEYS[1], ARGV[j]) end
  ok = true
end
if ok then
  redis.call('LTRIM', KEYS[1], -maxn, -1)
  redis.call('EXPIRE', KEYS[1], ttl)
  return 1
end
return 0
"#;

const POPULATE_LUA: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local ttl = tonumber(ARGV[1])
local total = tonumber(ARGV[2])
local n = tonumber(redis.call('GET', KEYS[2]) or '0')
if total < n then return 0 end
for j = 3, #ARGV do redis.call('RPUSH', KEYS[1], ARGV[j]) end
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('SET', KEYS[2], total, 'EX', ttl)
return 1
"#;

fn redis_err(e: redis::RedisError) -> RagError {
    RagError::Upstream(format!("redis: {e}"))
}

struct ConnState {
    conn: Option<ConnectionManager>,
    last_attempt: Option<Instant>,
}

/// The Redis side of the memory (public for tests and tools; the engine
/// uses it through [`ConversationMemory`]).
pub struct RedisMemory {
    client: redis::Client,
    state: tokio::sync::Mutex<ConnState>,
    ttl_secs: u64,
    max_turns: usize,
    prefix: String,
    timeout: Duration,
    append: Script,
    populate: Script,
}

impl std::fmt::Debug for RedisMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisMemory")
            .field("prefix", &self.prefix)
            .field("ttl_secs", &self.ttl_secs)
            .field("max_turns", &self.max_turns)
            .finish()
    }
}

fn encode_entry(idx: u64, turn: &Turn) -> Result<String> {
    let json = serde_json::to_string(turn)
        .map_err(|e| RagError::Storage(format!("encoding a turn: {e}")))?;
    Ok(format!("{idx}\t{json}"))
}

fn decode_entry(s: &str) -> Option<(u64, Turn)> {
    let (idx, json) = s.split_once('\t')?;
    Some((idx.parse().ok()?, serde_json::from_str(json).ok()?))
}

impl RedisMemory {
    /// Checks the configuration; connects lazily (no I/O here).
    pub fn new(url: &str, cfg: &MemoryConfig) -> Result<Self> {
        if cfg.max_turns == 0 || cfg.ttl_secs == 0 {
            return Err(RagError::InvalidInput(
                "memory.max_turns and memory.ttl_secs must be at least 1".into(),
            ));
        }
        let client = redis::Client::open(url).map_err(|e| {
            RagError::InvalidInput(format!("memory.redis_url {}: {e}", redact_url(url)))
        })?;
        Ok(Self {
            client,
            state: tokio::sync::Mutex::new(ConnState {
                conn: None,
                last_attempt: None,
            }),
            ttl_secs: cfg.ttl_secs,
            max_turns: cfg.max_turns,
            prefix: cfg.key_prefix.clone(),
            timeout: Duration::from_millis(cfg.timeout_ms.max(1)),
            append: Script::new(APPEND_LUA),
            populate: Script::new(POPULATE_LUA),
        })
    }

    pub fn max_turns(&self) -> usize {
        self.max_turns
    }

    /// The list key of a conversation.
    pub fn turns_key(&self, conversation_id: &str) -> String {
        format!("{}conv:{conversation_id}:turns", self.prefix)
    }

    /// The announced-turn-count key of a conversation.
    pub fn count_key(&self, conversation_id: &str) -> String {
        format!("{}conv:{conversation_id}:n", self.prefix)
    }

    async fn conn(&self) -> Result<ConnectionManager> {
        let mut st = self.state.lock().await;
        if let Some(c) = &st.conn {
            return Ok(c.clone());
        }
        if st
            .last_attempt
            .is_some_and(|t| t.elapsed() < RECONNECT_EVERY)
        {
            return Err(RagError::Upstream("redis: unreachable".into()));
        }
        st.last_attempt = Some(Instant::now());
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = tokio::time::timeout(
            self.timeout * 4,
            ConnectionManager::new_with_config(self.client.clone(), cfg),
        )
        .await
        .map_err(|_| RagError::Upstream("redis: connection timed out".into()))?
        .map_err(redis_err)?;
        st.conn = Some(conn.clone());
        Ok(conn)
    }

    async fn run<T>(
        &self,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T> {
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| RagError::Upstream("redis: timed out".into()))?
            .map_err(redis_err)
    }

    /// The last `n` turns if the cache holds them (see the module docs),
    /// `None` on a miss.
    pub async fn cached(&self, conversation_id: &str, n: usize) -> Result<Option<Vec<Turn>>> {
        if n == 0 {
            return Ok(Some(Vec::new()));
        }
        let mut c = self.conn().await?;
        let key = self.turns_key(conversation_id);
        let raw: Vec<String> = self
            .run(
                redis::cmd("LRANGE")
                    .arg(&key)
                    .arg(-(n.min(i64::MAX as usize) as i64))
                    .arg(-1)
                    .query_async(&mut c),
            )
            .await?;
        if raw.is_empty() {
            return Ok(None);
        }
        let entries: Option<Vec<(u64, Turn)>> = raw.iter().map(|s| decode_entry(s)).collect();
        let contiguous = entries
            .as_ref()
            .is_some_and(|e| e.windows(2).all(|w| w[1].0 == w[0].0 + 1));
        let Some(entries) = entries.filter(|_| contiguous) else {
            tracing::warn!(conversation_id, "dropping a corrupt cached conversation");
            let _: () = self
                .run(redis::cmd("DEL").arg(&key).query_async(&mut c))
                .await?;
            return Ok(None);
        };
        if entries.len() < n && entries.first().is_some_and(|e| e.0 != 0) {
            return Ok(None);
        }
        Ok(Some(entries.into_iter().map(|(_, t)| t).collect()))
    }

    /// Records turns the store just appended (the first at `first_idx`).
    /// `true` if the cached list now holds them.
    pub async fn appended(
        &self,
        conversation_id: &str,
        first_idx: u64,
        turns: &[Turn],
    ) -> Result<bool> {
        if turns.is_empty() {
            return Ok(false);
        }
        let mut c = self.conn().await?;
        let mut inv = self.append.prepare_invoke();
        inv.key(self.turns_key(conversation_id))
            .key(self.count_key(conversation_id))
            .arg(first_idx)
            .arg(self.ttl_secs)
            .arg(self.max_turns);
        for (i, t) in turns.iter().enumerate() {
            inv.arg(encode_entry(first_idx + i as u64, t)?);
        }
        let done: i64 = self.run(inv.invoke_async(&mut c)).await?;
        Ok(done == 1)
    }

    /// Fills the cache from a tail read from the store (indexes ascending);
    /// `false` if it was not installed (a list exists, or a writer announced
    /// newer turns since).
    pub async fn populate(&self, conversation_id: &str, tail: &[(u64, Turn)]) -> Result<bool> {
        let Some(last) = tail.last() else {
            return Ok(false);
        };
        let skip = tail.len().saturating_sub(self.max_turns);
        let mut c = self.conn().await?;
        let mut inv = self.populate.prepare_invoke();
        inv.key(self.turns_key(conversation_id))
            .key(self.count_key(conversation_id))
            .arg(self.ttl_secs)
            .arg(last.0 + 1);
        for (idx, t) in &tail[skip..] {
            inv.arg(encode_entry(*idx, t)?);
        }
        let done: i64 = self.run(inv.invoke_async(&mut c)).await?;
        Ok(done == 1)
    }

    /// Drops a conversation's cache entries.
    pub async fn forget(&self, conversation_id: &str) -> Result<()> {
        let mut c = self.conn().await?;
        let _: () = self
            .run(
                redis::cmd("DEL")
                    .arg(self.turns_key(conversation_id))
                    .arg(self.count_key(conversation_id))
                    .query_async(&mut c),
            )
            .await?;
        Ok(())
    }
}

/// Most conversations whose cache entries must be dropped once Redis answers again.
const MAX_PENDING_FORGET: usize = 100_000;

/// Recent turns through the optional Redis cache, falling back to the store.
#[derive(Debug)]
pub struct ConversationMemory {
    redis: Option<RedisMemory>,
    /// Redis failed last time (warn once per outage).
    down: AtomicBool,
    /// Conversations written (or deleted) while Redis could not be told:
    /// their cached lists may lack turns, so they are deleted before the
    /// cache is used again.
    pending_forget: parking_lot::Mutex<HashSet<String>>,
}

impl ConversationMemory {
    pub fn new(cfg: &MemoryConfig) -> Result<Self> {
        let redis = match cfg.redis_url.as_deref().map(str::trim) {
            Some(url) if !url.is_empty() => Some(RedisMemory::new(url, cfg)?),
            _ => None,
        };
        Ok(Self {
            redis,
            down: AtomicBool::new(false),
            pending_forget: parking_lot::Mutex::new(HashSet::new()),
        })
    }

    fn remember_stale(&self, conversation_id: &str) {
        let mut p = self.pending_forget.lock();
        if p.len() < MAX_PENDING_FORGET {
            p.insert(conversation_id.to_string());
        } else {
            tracing::warn!(conversation_id, "conversation memory: too many stale conversations to track; this one may read an old history until its TTL");
        }
    }

    /// Deletes the cache entries written around while Redis was away.
    async fn flush_stale(&self, redis: &RedisMemory) -> Result<()> {
        let pending: Vec<String> = {
            let p = self.pending_forget.lock();
            if p.is_empty() {
                return Ok(());
            }
            p.iter().cloned().collect()
        };
        for id in pending {
            redis.forget(&id).await?;
            self.pending_forget.lock().remove(&id);
        }
        Ok(())
    }

    /// The Redis cache, if configured.
    pub fn redis(&self) -> Option<&RedisMemory> {
        self.redis.as_ref()
    }

    fn failed(&self, what: &str, e: &RagError) {
        if !self.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %e, "conversation memory: {what} failed; using the store until Redis answers again");
        }
    }

    fn answered(&self) {
        if self.down.swap(false, Ordering::Relaxed) {
            tracing::info!("conversation memory: Redis answers again");
        }
    }

    /// The last `n` turns, oldest first.
    pub async fn recent_turns(
        &self,
        store: &dyn ConversationStore,
        conversation_id: &str,
        n: usize,
    ) -> Result<Vec<Turn>> {
        let Some(redis) = &self.redis else {
            return store.recent_turns(conversation_id, n).await;
        };
        let cached = match self.flush_stale(redis).await {
            Ok(()) => redis.cached(conversation_id, n).await,
            Err(e) => Err(e),
        };
        let reachable = match cached {
            Ok(Some(turns)) => {
                self.answered();
                return Ok(turns);
            }
            Ok(None) => {
                self.answered();
                true
            }
            Err(e) => {
                self.failed("reading", &e);
                false
            }
        };
        let tail = store
            .recent_turns_indexed(conversation_id, n.max(redis.max_turns()))
            .await?;
        if reachable {
            if let Err(e) = redis.populate(conversation_id, &tail).await {
                self.failed("filling the cache", &e);
            }
        }
        let skip = tail.len().saturating_sub(n);
        Ok(tail.into_iter().skip(skip).map(|(_, t)| t).collect())
    }

    /// Appends to the store (the acknowledgement), then to the cache.
    pub async fn append_turns(
        &self,
        store: &dyn ConversationStore,
        conversation_id: &str,
        title: &str,
        turns: &[Turn],
    ) -> Result<u64> {
        let first = store.append_turns(conversation_id, title, turns).await?;
        if let Some(redis) = &self.redis {
            let done = match self.flush_stale(redis).await {
                Ok(()) => redis.appended(conversation_id, first, turns).await,
                Err(e) => Err(e),
            };
            match done {
                Ok(_) => self.answered(),
                Err(e) => {
                    self.remember_stale(conversation_id);
                    self.failed("writing", &e);
                }
            }
        }
        Ok(first)
    }

    /// Forgets a deleted conversation's cached turns.
    pub async fn forget(&self, conversation_id: &str) {
        if let Some(redis) = &self.redis {
            match redis.forget(conversation_id).await {
                Ok(()) => self.answered(),
                Err(e) => {
                    self.remember_stale(conversation_id);
                    self.failed("deleting", &e);
                }
            }
        }
    }
}
