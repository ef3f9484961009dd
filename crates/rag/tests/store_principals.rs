//! Principals in the store (issue 14), on both backends: users with grants,
//! API keys (only hashes stored), sessions, the bootstrap admin, and the
//! owner of conversations and runs (older rows belong to the admin).
#[macro_use]
mod store_support;

use ragfleet_rag::generate::{GenParams, Role as TurnRole};
use ragfleet_rag::store::principals::{
    hash_password, mint_key, sha256_hex, verify_password, ApiKeyRecord, Role, BOOTSTRAP_ADMIN,
};
use ragfleet_rag::store::{DocumentRecord, NewChunk};
use ragfleet_rag::types::RetrievalMode;
use ragfleet_rag::{RagError, RunRetrieval, RunSnapshot, Timings, Turn, Usage};
use store_support::TestStore;

suite!(
    users_grants_and_passwords,
    keys_are_stored_as_hashes_and_revoke,
    bootstrap_admin_is_created_once_across_processes,
    sessions_round_trip,
    conversations_and_runs_have_owners,
    documents_listed_by_collections,
);

async fn users_grants_and_passwords(t: TestStore) {
    let s = t.s.clone();
    let hash = hash_password("a good password").unwrap();
    let u = s
        .create_user(
            "alice",
            Role::Reader,
            Some(&hash),
            &["docs".into(), "faq".into()],
        )
        .await
        .unwrap();
    assert_eq!(u.grants, vec!["docs", "faq"]);
    assert!(u.has_password);
    let err = s
        .create_user("alice", Role::Admin, None, &[])
        .await
        .unwrap_err();
    assert!(matches!(err, RagError::Conflict(_)), "{err}");
    assert!(matches!(
        s.create_user("bad name", Role::Reader, None, &[]).await,
        Err(RagError::InvalidInput(_))
    ));
    let stored = s.password_hash("alice").await.unwrap().unwrap();
    assert!(verify_password("a good password", &stored));
    assert!(s.password_hash("nobody").await.unwrap().is_none());

    assert!(s.set_grant("alice", "hr", true).await.unwrap());
    assert!(s.set_grant("alice", "faq", false).await.unwrap());
    assert!(!s.set_grant("nobody", "hr", true).await.unwrap());
    assert_eq!(
        s.get_user("alice").await.unwrap().unwrap().grants,
        vec!["docs", "hr"]
    );
    assert!(s
        .update_user("alice", Some(Role::Editor), None)
        .await
        .unwrap());
    assert!(!s
        .update_user("nobody", Some(Role::Editor), None)
        .await
        .unwrap());
    let a = s.get_user("alice").await.unwrap().unwrap();
    assert_eq!(a.role, Role::Editor);
    assert!(a.has_password, "a role change keeps the password");

    s.create_user("bob", Role::Admin, None, &[]).await.unwrap();
    let names: Vec<String> = s
        .list_users()
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.name)
        .collect();
    assert_eq!(names, vec!["alice", "bob"]);
    assert!(s.delete_user("alice").await.unwrap());
    assert!(!s.delete_user("alice").await.unwrap());
    assert!(s.get_user("alice").await.unwrap().is_none());
}

fn key_record(id: &str, user: &str, role: Role, cols: Option<Vec<String>>) -> ApiKeyRecord {
    ApiKeyRecord {
        id: id.into(),
        user: user.into(),
        name: "k".into(),
        role,
        collections: cols,
        created_at: ragfleet_rag::store::now_rfc3339(),
        expires_at: Some("2999-01-01T00:00:00.000Z".into()),
        last_used: None,
        revoked_at: None,
    }
}

async fn keys_are_stored_as_hashes_and_revoke(t: TestStore) {
    let s = t.s.clone();
    s.create_user("carol", Role::Editor, None, &["docs".into()])
        .await
        .unwrap();
    let m = mint_key();
    let rec = key_record(&m.id, "carol", Role::Reader, Some(vec!["docs".into()]));
    s.create_api_key(&rec, &m.hash).await.unwrap();
    let auth = s.key_auth(&m.id).await.unwrap().unwrap();
    assert_eq!(auth.key, rec);
    assert_eq!(auth.hash, sha256_hex(&m.plaintext));
    assert_eq!(auth.user.name, "carol");
    assert_eq!(auth.user.grants, vec!["docs"]);
    assert!(s.key_auth("nokey").await.unwrap().is_none());
    // The plaintext is nowhere in the store's answers.
    let listed = serde_json::to_string(&s.list_api_keys(None).await.unwrap()).unwrap();
    assert!(
        !listed.contains(&m.plaintext) && !listed.contains(&m.hash),
        "{listed}"
    );

    s.touch_api_key(&m.id, "2030-01-01T00:00:00.000Z")
        .await
        .unwrap();
    assert_eq!(
        s.key_auth(&m.id)
            .await
            .unwrap()
            .unwrap()
            .key
            .last_used
            .as_deref(),
        Some("2030-01-01T00:00:00.000Z")
    );
    assert!(s.revoke_api_key(&m.id).await.unwrap());
    assert!(!s.revoke_api_key(&m.id).await.unwrap(), "already revoked");
    assert!(s
        .key_auth(&m.id)
        .await
        .unwrap()
        .unwrap()
        .key
        .revoked_at
        .is_some());

    let m2 = mint_key();
    s.create_api_key(&key_record(&m2.id, "carol", Role::Editor, None), &m2.hash)
        .await
        .unwrap();
    assert_eq!(s.list_api_keys(Some("carol")).await.unwrap().len(), 2);
    assert_eq!(s.list_api_keys(Some("dave")).await.unwrap().len(), 0);
    // Deleting the user takes their keys.
    s.delete_user("carol").await.unwrap();
    assert!(s.key_auth(&m2.id).await.unwrap().is_none());
    assert!(s.list_api_keys(None).await.unwrap().is_empty());
}

async fn bootstrap_admin_is_created_once_across_processes(t: TestStore) {
    let other = t.open_another().await;
    let (a, b) = tokio::join!(t.s.bootstrap_admin(), other.bootstrap_admin());
    let keys: Vec<String> = [a.unwrap(), b.unwrap()].into_iter().flatten().collect();
    assert_eq!(keys.len(), 1, "exactly one opener creates the admin key");
    assert!(t.s.bootstrap_admin().await.unwrap().is_none());
    let id = ragfleet_rag::store::principals::key_id(&keys[0]).unwrap();
    let auth = t.s.key_auth(id).await.unwrap().unwrap();
    assert_eq!(auth.user.name, BOOTSTRAP_ADMIN);
    assert_eq!(auth.user.role, Role::Admin);
    assert_eq!(auth.hash, sha256_hex(&keys[0]));
}

async fn sessions_round_trip(t: TestStore) {
    let s = t.s.clone();
    s.create_user("erin", Role::Reader, None, &["a".into()])
        .await
        .unwrap();
    let h = sha256_hex("cookie-value");
    s.create_session(&h, "erin", "csrf-token", "2999-01-01T00:00:00.000Z")
        .await
        .unwrap();
    let sess = s.session_auth(&h).await.unwrap().unwrap();
    assert_eq!(sess.user.name, "erin");
    assert_eq!(sess.csrf, "csrf-token");
    assert!(s.delete_session(&h).await.unwrap());
    assert!(s.session_auth(&h).await.unwrap().is_none());
}

fn turn(role: TurnRole, content: &str) -> Turn {
    Turn {
        role,
        content: content.into(),
        citations: Vec::new(),
        run_id: None,
        at: ragfleet_rag::store::now_rfc3339(),
    }
}

fn run(id: &str, conversation: &str) -> RunSnapshot {
    RunSnapshot {
        run_id: id.into(),
        time: ragfleet_rag::store::now_rfc3339(),
        config_hash: "h".into(),
        embedder_id: "e".into(),
        generator: "extractive".into(),
        generator_id: "g".into(),
        retrieval: RunRetrieval {
            mode: RetrievalMode::Hybrid,
            top_k: 3,
            rrf_k: 60.0,
            candidates: 10,
            weights: (1.0, 1.0),
            collection: None,
            filter: Default::default(),
        },
        retrieved: Vec::new(),
        prompt: Vec::new(),
        question: "q".into(),
        sources: Vec::new(),
        params: GenParams::default(),
        output: "o".into(),
        citations: Vec::new(),
        usage: Usage::default(),
        timings: Timings::default(),
        conversation_id: conversation.into(),
        relevance: None,
        attribution: Vec::new(),
        answer: "o".into(),
    }
}

async fn conversations_and_runs_have_owners(t: TestStore) {
    let s = t.s.clone();
    // Written the old way (before owners): the bootstrap admin's.
    s.append_turns("legacy", "old", &[turn(TurnRole::User, "hi")])
        .await
        .unwrap();
    s.put_run(&run("r0", "legacy")).await.unwrap();
    assert_eq!(
        s.conversation_owner("legacy").await.unwrap().as_deref(),
        Some(BOOTSTRAP_ADMIN)
    );
    assert_eq!(
        s.run_owner("r0").await.unwrap().as_deref(),
        Some(BOOTSTRAP_ADMIN)
    );

    s.claim_conversation("cx", "x's", "xavier").await.unwrap();
    s.append_turns("cx", "x's", &[turn(TurnRole::User, "q1")])
        .await
        .unwrap();
    // A second claim by someone else changes nothing.
    s.claim_conversation("cx", "y's", "yvonne").await.unwrap();
    s.claim_conversation("cy", "y's\0", "yvonne").await.unwrap();
    s.put_run_owned(&run("rx", "cx"), "xavier").await.unwrap();
    assert_eq!(
        s.conversation_owner("cx").await.unwrap().as_deref(),
        Some("xavier")
    );
    assert_eq!(s.run_owner("rx").await.unwrap().as_deref(), Some("xavier"));
    assert_eq!(s.run_owner("nope").await.unwrap(), None);
    assert_eq!(
        s.get_conversation("cx").await.unwrap().unwrap().turns.len(),
        1
    );

    let xs = s
        .list_conversations_of(Some("xavier"), 0, 10)
        .await
        .unwrap();
    assert_eq!(xs.total, 1);
    assert_eq!(xs.items[0].id, "cx");
    let ys = s
        .list_conversations_of(Some("yvonne"), 0, 10)
        .await
        .unwrap();
    assert_eq!(ys.total, 1);
    assert_eq!(ys.items[0].id, "cy");
    let all = s.list_conversations_of(None, 0, 10).await.unwrap();
    assert_eq!(all.total, 3);
    assert_eq!(
        s.list_conversations_of(None, 0, 1)
            .await
            .unwrap()
            .items
            .len(),
        1
    );
}

async fn documents_listed_by_collections(t: TestStore) {
    let s = t.s.clone();
    for (id, c) in [("a1", "a"), ("a2", "a"), ("b1", "b"), ("c1", "c")] {
        let d = DocumentRecord {
            id: id.into(),
            title: id.into(),
            collection: c.into(),
            metadata: Default::default(),
            source: None,
            text: format!("text of {id}"),
            pages: Vec::new(),
            content_hash: id.into(),
            chunks: 1,
            chars: 9,
            created_at: String::new(),
            updated_at: String::new(),
            seq: 0,
        };
        let ch = NewChunk {
            id: format!("{id}#0"),
            ordinal: 0,
            text: d.text.clone(),
            start: 0,
            end: 9,
            page: None,
            embedding: vec![0.0, 1.0],
        };
        s.upsert_document(&d, &[ch]).await.unwrap();
    }
    let p = s
        .list_documents_in(&["a".into(), "c".into()], 0, 10)
        .await
        .unwrap();
    let ids: Vec<&str> = p.items.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, vec!["a1", "a2", "c1"]);
    assert_eq!(p.total, 3);
    let p = s.list_documents_in(&["a".into()], 1, 10).await.unwrap();
    assert_eq!((p.items.len(), p.total), (1, 2));
    assert_eq!(s.list_documents_in(&[], 0, 10).await.unwrap().total, 0);
}
