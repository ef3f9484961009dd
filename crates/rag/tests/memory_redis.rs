//! Conversation memory in front of the store, against real Redis and a real
//! store: hits, misses, the consistency rules of the cache (no stale tail
//! installed over a newer write, gaps dropped), and Redis being unreachable.
mod store_support;

use ragfleet_rag::generate::Role;
use ragfleet_rag::memory::{ConversationMemory, RedisMemory};
use ragfleet_rag::{MemoryConfig, Turn};
use store_support::{redis_url, unique, TestStore};

fn turn(role: Role, content: &str) -> Turn {
    Turn {
        role,
        content: content.into(),
        citations: vec![],
        run_id: None,
        at: "2026-01-01T00:00:00.000Z".into(),
    }
}

fn contents(turns: &[Turn]) -> Vec<&str> {
    turns.iter().map(|t| t.content.as_str()).collect()
}

/// A memory config with a key prefix of its own; keys are removed on drop.
struct Prefix {
    cfg: MemoryConfig,
}

impl Prefix {
    fn new(max_turns: usize) -> Self {
        Self {
            cfg: MemoryConfig {
                redis_url: Some(redis_url()),
                max_turns,
                key_prefix: format!("{}:", unique("ragfleet_test")),
                ..Default::default()
            },
        }
    }
}

impl Drop for Prefix {
    fn drop(&mut self) {
        let prefix = self.cfg.key_prefix.clone();
        if let Ok(client) = redis::Client::open(redis_url()) {
            if let Ok(mut c) = client.get_connection() {
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(format!("{prefix}*"))
                    .query(&mut c)
                    .unwrap_or_default();
                if !keys.is_empty() {
                    let _: redis::RedisResult<()> = redis::cmd("DEL").arg(keys).query(&mut c);
                }
            }
        }
    }
}

async fn raw(key: &str) -> Vec<String> {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("LRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .query_async(&mut c)
        .await
        .unwrap()
}

#[tokio::test]
async fn appends_keep_the_cached_tail_and_reads_hit_it() {
    let p = Prefix::new(4);
    let m = RedisMemory::new(&redis_url(), &p.cfg).unwrap();
    // A new conversation (its first turn is 0) is cached at once.
    assert!(m
        .appended(
            "c",
            0,
            &[turn(Role::User, "q0"), turn(Role::Assistant, "a0")]
        )
        .await
        .unwrap());
    assert_eq!(
        contents(&m.cached("c", 2).await.unwrap().unwrap()),
        ["q0", "a0"]
    );
    // Fewer turns than asked, but from turn 0: the whole conversation.
    assert_eq!(
        contents(&m.cached("c", 8).await.unwrap().unwrap()),
        ["q0", "a0"]
    );
    assert!(m
        .appended(
            "c",
            2,
            &[turn(Role::User, "q1"), turn(Role::Assistant, "a1")]
        )
        .await
        .unwrap());
    assert!(m
        .appended(
            "c",
            4,
            &[turn(Role::User, "q2"), turn(Role::Assistant, "a2")]
        )
        .await
        .unwrap());
    // Trimmed to max_turns = 4.
    assert_eq!(raw(&m.turns_key("c")).await.len(), 4);
    assert_eq!(
        contents(&m.cached("c", 3).await.unwrap().unwrap()),
        ["a1", "q2", "a2"]
    );
    // More than the cache holds, not from turn 0: a miss (the store answers).
    assert!(m.cached("c", 6).await.unwrap().is_none());
    // Re-announcing turns the list already has changes nothing.
    assert!(m
        .appended(
            "c",
            4,
            &[turn(Role::User, "q2"), turn(Role::Assistant, "a2")]
        )
        .await
        .unwrap());
    assert_eq!(raw(&m.turns_key("c")).await.len(), 4);
    // A gap (turns 6-7 never announced): the list is dropped, not patched.
    assert!(!m.appended("c", 8, &[turn(Role::User, "q4")]).await.unwrap());
    assert!(raw(&m.turns_key("c")).await.is_empty());
    assert!(m.cached("c", 2).await.unwrap().is_none());
    // Unknown conversation: a miss.
    assert!(m.cached("nope", 2).await.unwrap().is_none());
}

#[tokio::test]
async fn a_slow_reader_never_installs_a_stale_tail() {
    let p = Prefix::new(10);
    let m = RedisMemory::new(&redis_url(), &p.cfg).unwrap();
    // A reader loaded turns 0..=3 from the store; meanwhile a writer stored
    // turns 4-5 and announced them (no list existed, so none was created).
    let loaded: Vec<(u64, Turn)> = (0..4)
        .map(|i| (i, turn(Role::User, &format!("t{i}"))))
        .collect();
    assert!(!m
        .appended(
            "c",
            4,
            &[turn(Role::User, "t4"), turn(Role::Assistant, "t5")]
        )
        .await
        .unwrap());
    assert!(
        !m.populate("c", &loaded).await.unwrap(),
        "stale tail refused"
    );
    assert!(m.cached("c", 2).await.unwrap().is_none());
    // A reader with the current tail installs it.
    let current: Vec<(u64, Turn)> = (0..6)
        .map(|i| (i, turn(Role::User, &format!("t{i}"))))
        .collect();
    assert!(m.populate("c", &current).await.unwrap());
    assert_eq!(
        contents(&m.cached("c", 2).await.unwrap().unwrap()),
        ["t4", "t5"]
    );
    // An existing list is never overwritten by a populate.
    assert!(!m.populate("c", &current[..5]).await.unwrap());
    // Populated before the writer's announcement ran: the append extends it.
    let p2 = Prefix::new(10);
    let m2 = RedisMemory::new(&redis_url(), &p2.cfg).unwrap();
    assert!(m2.populate("d", &loaded).await.unwrap());
    assert!(m2
        .appended(
            "d",
            4,
            &[turn(Role::User, "t4"), turn(Role::Assistant, "t5")]
        )
        .await
        .unwrap());
    assert_eq!(
        contents(&m2.cached("d", 6).await.unwrap().unwrap()),
        ["t0", "t1", "t2", "t3", "t4", "t5"]
    );
}

#[tokio::test]
async fn memory_reads_through_to_the_store_and_fills_the_cache() {
    let t = TestStore::sqlite().await;
    let p = Prefix::new(6);
    let mem = ConversationMemory::new(&p.cfg).unwrap();
    let redis = mem.redis().unwrap();
    // History written straight to the store (e.g. before Redis was configured).
    for i in 0..4 {
        t.s.append_turns(
            "c",
            "t",
            &[
                turn(Role::User, &format!("q{i}")),
                turn(Role::Assistant, &format!("a{i}")),
            ],
        )
        .await
        .unwrap();
    }
    assert!(redis.cached("c", 2).await.unwrap().is_none());
    let got = mem.recent_turns(t.s.as_ref(), "c", 4).await.unwrap();
    assert_eq!(contents(&got), ["q2", "a2", "q3", "a3"]);
    // The miss filled the cache with the last max_turns turns.
    assert_eq!(raw(&redis.turns_key("c")).await.len(), 6);
    // Appends go to the store and the cache.
    let first = mem
        .append_turns(
            t.s.as_ref(),
            "c",
            "t",
            &[turn(Role::User, "q4"), turn(Role::Assistant, "a4")],
        )
        .await
        .unwrap();
    assert_eq!(first, 8);
    assert_eq!(
        contents(&redis.cached("c", 2).await.unwrap().unwrap()),
        ["q4", "a4"]
    );
    assert_eq!(
        contents(&t.s.recent_turns("c", 2).await.unwrap()),
        ["q4", "a4"]
    );
    // A new conversation through the memory is cached from its first turn.
    mem.append_turns(t.s.as_ref(), "new", "t", &[turn(Role::User, "hi")])
        .await
        .unwrap();
    assert_eq!(
        contents(&redis.cached("new", 5).await.unwrap().unwrap()),
        ["hi"]
    );
    mem.forget("new").await;
    assert!(redis.cached("new", 5).await.unwrap().is_none());
}

#[tokio::test]
async fn unreachable_redis_falls_back_to_the_store() {
    let t = TestStore::sqlite().await;
    let port = store_support::free_port();
    let cfg = MemoryConfig {
        redis_url: Some(format!("redis://127.0.0.1:{port}/")),
        timeout_ms: 200,
        ..Default::default()
    };
    let mem = ConversationMemory::new(&cfg).unwrap();
    let first = mem
        .append_turns(
            t.s.as_ref(),
            "c",
            "t",
            &[turn(Role::User, "q"), turn(Role::Assistant, "a")],
        )
        .await
        .expect("the store acknowledges; Redis being away is not an error");
    assert_eq!(first, 0);
    let got = mem.recent_turns(t.s.as_ref(), "c", 4).await.unwrap();
    assert_eq!(contents(&got), ["q", "a"]);
    // A bad URL is a configuration error naming the key (password hidden).
    let err = ConversationMemory::new(&MemoryConfig {
        redis_url: Some("http://:secret@x".into()),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("memory.redis_url") && !err.contains("secret"),
        "{err}"
    );
}
