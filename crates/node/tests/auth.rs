//! Identity and access over real HTTP (issue 14): every route × every kind
//! of credential with the exact status, isolation of collections and of
//! users' conversations and runs, revocation across nodes sharing a store,
//! `--no-auth`, and the page's login session with CSRF.
mod common;

use std::time::{Duration, Instant};

use common::*;
use ragfleet_rag::store::principals::{mint_key, ApiKeyRecord, Role};
use reqwest::Method;
use serde_json::{json, Value};

/// A route, its body, and the status expected for (reader, editor, admin,
/// other user); `None`: an open route (200 whatever the credentials).
type Row<'a> = (Method, String, Option<&'a Value>, Option<[u16; 4]>);

/// Creates a user with grants and a key for them through the admin API.
async fn user_with_key(node: &TestNode, name: &str, role: &str, collections: &[&str]) -> String {
    let (s, b) = node
        .post_json(
            "/api/v1/admin/users",
            &json!({"name": name, "role": role, "collections": collections}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let (s, b) = node
        .post_json("/api/v1/admin/keys", &json!({"user": name, "name": "test"}))
        .await;
    assert_eq!(s, 201, "{b}");
    let key = b["key"].as_str().unwrap().to_string();
    assert!(key.starts_with("rf_"), "{b}");
    key
}

async fn call(
    client: &reqwest::Client,
    node: &TestNode,
    method: Method,
    path: &str,
    auth: Option<&str>,
    body: Option<&Value>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut r = client.request(method, node.url(path));
    if let Some(a) = auth {
        r = r.header("authorization", a);
    }
    if let Some(b) = body {
        r = r.json(b);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, headers, v)
}

async fn seed_two_collections(node: &TestNode) {
    for (id, c, text) in [
        (
            "a1",
            "alpha",
            "The aurora borealis over Tromso glows green on clear winter nights.",
        ),
        (
            "a2",
            "alpha",
            "Reindeer herding is a traditional livelihood in northern Norway.",
        ),
        (
            "b1",
            "beta",
            "Project Zebra is a confidential merger costing five million euros.",
        ),
        (
            "b2",
            "beta",
            "The Zebra board meets every Thursday in the Geneva office.",
        ),
    ] {
        let (s, b) = node
            .post_json(
                "/api/v1/documents",
                &json!({"id": id, "title": id, "text": text, "collection": c}),
            )
            .await;
        assert_eq!(s, 201, "{b}");
    }
}

/// A streamed chat as `key`; returns (conversation id, run id).
async fn chat_as(node: &TestNode, key: &str, message: &str) -> (String, String) {
    let resp = reqwest::Client::new()
        .post(node.url("/api/v1/chat"))
        .header("authorization", format!("Bearer {key}"))
        .json(&json!({"message": message, "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let events = parse_sse(&resp.text().await.unwrap());
    let done = &events.last().unwrap().1;
    assert_eq!(done["type"], "done", "{events:?}");
    (
        done["conversation_id"].as_str().unwrap().to_string(),
        done["run_id"].as_str().unwrap().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_by_every_credential() {
    let node = TestNode::start(|_| {}).await;
    seed_two_collections(&node).await;
    let admin = node.key.clone().unwrap();
    let reader = user_with_key(&node, "reader1", "reader", &["alpha"]).await;
    let editor = user_with_key(&node, "editor1", "editor", &["alpha"]).await;
    let other = user_with_key(&node, "other1", "reader", &["alpha"]).await;
    let revoked = user_with_key(&node, "gone1", "reader", &["alpha"]).await;
    let revoked_id = ragfleet_rag::store::principals::key_id(&revoked).unwrap();
    let (s, _) = node
        .delete(&format!("/api/v1/admin/keys/{revoked_id}"))
        .await;
    assert_eq!(s, 204);
    // An expired key (the API only makes future expiries): straight in the store.
    let m = mint_key();
    let store = node.state.engine().unwrap().store().clone();
    store
        .create_api_key(
            &ApiKeyRecord {
                id: m.id.clone(),
                user: "reader1".into(),
                name: "old".into(),
                role: Role::Reader,
                collections: None,
                created_at: "2020-01-01T00:00:00.000Z".into(),
                expires_at: Some("2020-02-01T00:00:00.000Z".into()),
                last_used: None,
                revoked_at: None,
            },
            &m.hash,
        )
        .await
        .unwrap();
    let expired = m.plaintext;
    // A key with a real id and a wrong secret, and one with an unknown id.
    let wrong_secret = format!("{}{}", &reader[..reader.len() - 4], "XXXX");
    let unknown = mint_key().plaintext;
    // reader1's conversation and run (streamed, so its events are resumable).
    let (conv, run) = chat_as(&node, &reader, "When does the aurora glow green?").await;

    let bearer = |k: &str| format!("Bearer {k}");
    let unauth: Vec<(&str, Option<String>)> = vec![
        ("none", None),
        ("malformed", Some("Basic dXNlcjpwYXNz".into())),
        ("garbage", Some("Bearer not-a-key".into())),
        ("wrong secret", Some(bearer(&wrong_secret))),
        ("unknown key", Some(bearer(&unknown))),
        ("expired", Some(bearer(&expired))),
        ("revoked", Some(bearer(&revoked))),
    ];
    let authed: Vec<(&str, String)> = vec![
        ("reader", bearer(&reader)),
        ("editor", bearer(&editor)),
        ("admin", bearer(&admin)),
        ("other user", bearer(&other)),
    ];

    let doc_alpha = json!({"text": "Sami culture spans four countries.", "collection": "alpha"});
    let doc_beta = json!({"text": "Zebra minutes of the board.", "collection": "beta"});
    let chat_body = json!({"message": "aurora colour?"});
    let oa_all = json!({"model": "ragfleet", "messages": [{"role": "user", "content": "aurora?"}]});
    let oa_beta =
        json!({"model": "ragfleet/beta", "messages": [{"role": "user", "content": "Zebra?"}]});
    let search = json!({"query": "aurora"});
    let search_beta = json!({"query": "Zebra", "collection": "beta"});
    let conv_path = format!("/api/v1/conversations/{conv}");
    let run_path = format!("/api/v1/runs/{run}");
    let resume_path = format!("/api/v1/chat/runs/{run}/events");
    let get = |p: &str, want: Option<[u16; 4]>| -> Row<'static> {
        (Method::GET, p.to_string(), None, want)
    };
    // Expected statuses for (reader, editor, admin, other user); `None`: an
    // open route (200 for everyone, credentials or not).
    let mut rows: Vec<Row> = vec![
        get("/health", None),
        get("/ready", None),
        get("/metrics", None),
        get("/api/v1/openapi.json", None),
        get("/api/v1/info", Some([200, 200, 200, 200])),
        get("/api/v1/me", Some([200, 200, 200, 200])),
        get("/api/v1/documents", Some([200, 200, 200, 200])),
        get(
            "/api/v1/documents?collection=beta",
            Some([403, 403, 200, 403]),
        ),
        get("/api/v1/documents/a1", Some([200, 200, 200, 200])),
        get("/api/v1/documents/b1", Some([404, 404, 200, 404])),
        get("/api/v1/search?query=aurora", Some([200, 200, 200, 200])),
        get(
            "/api/v1/search?query=Zebra&collection=beta",
            Some([403, 403, 200, 403]),
        ),
        get("/api/v1/conversations", Some([200, 200, 200, 200])),
        get("/api/v1/conversations?all=true", Some([403, 403, 200, 403])),
        get(&conv_path, Some([200, 404, 200, 404])),
        get(&run_path, Some([200, 404, 200, 404])),
        get(&resume_path, Some([200, 404, 200, 404])),
        get(
            "/api/v1/conversations/no-such-conversation",
            Some([404, 404, 404, 404]),
        ),
        get("/v1/models", Some([200, 200, 200, 200])),
        get("/api/v1/admin/users", Some([403, 403, 200, 403])),
        get("/api/v1/admin/keys", Some([403, 403, 200, 403])),
    ];
    rows.extend([
        (
            Method::POST,
            "/api/v1/documents".into(),
            Some(&doc_alpha),
            Some([403, 201, 201, 403]),
        ),
        (
            Method::POST,
            "/api/v1/documents".into(),
            Some(&doc_beta),
            Some([403, 403, 201, 403]),
        ),
        (
            Method::POST,
            "/api/v1/search".into(),
            Some(&search),
            Some([200, 200, 200, 200]),
        ),
        (
            Method::POST,
            "/api/v1/search".into(),
            Some(&search_beta),
            Some([403, 403, 200, 403]),
        ),
        (
            Method::POST,
            "/api/v1/chat".into(),
            Some(&chat_body),
            Some([200, 200, 200, 200]),
        ),
        (
            Method::POST,
            "/v1/chat/completions".into(),
            Some(&oa_all),
            Some([200, 200, 200, 200]),
        ),
        (
            Method::POST,
            "/v1/chat/completions".into(),
            Some(&oa_beta),
            Some([403, 403, 200, 403]),
        ),
        (
            Method::DELETE,
            "/api/v1/documents/no-such-doc".into(),
            None,
            Some([403, 404, 404, 403]),
        ),
        (
            Method::DELETE,
            "/api/v1/documents/b2".into(),
            None,
            Some([403, 404, 204, 403]),
        ),
        (
            Method::DELETE,
            "/api/v1/conversations/no-such".into(),
            None,
            Some([404, 404, 404, 404]),
        ),
        (
            Method::DELETE,
            "/api/v1/admin/keys/no-such-key".into(),
            None,
            Some([403, 403, 404, 403]),
        ),
    ]);
    let http = reqwest::Client::new();
    let mut failures = Vec::new();
    for (method, path, body, want) in &rows {
        for (name, auth) in &unauth {
            let (s, h, b) = call(&http, &node, method.clone(), path, auth.as_deref(), *body).await;
            let expect = if want.is_none() { 200 } else { 401 };
            if s != expect {
                failures.push(format!("{method} {path} [{name}]: {s}, want {expect}: {b}"));
            } else if s == 401 {
                if h.get("www-authenticate").is_none() || b["error"]["message"].as_str().is_none() {
                    failures.push(format!(
                        "{method} {path} [{name}]: 401 without WWW-Authenticate or JSON body"
                    ));
                }
                if path.starts_with("/v1/") && b["error"]["type"] != "authentication_error" {
                    failures.push(format!(
                        "{method} {path} [{name}]: not OpenAI's error shape: {b}"
                    ));
                }
            }
        }
        for (i, (name, auth)) in authed.iter().enumerate() {
            let (s, _, b) = call(
                &http,
                &node,
                method.clone(),
                path,
                Some(auth.as_str()),
                *body,
            )
            .await;
            let expect = want.map_or(200, |w| w[i]);
            if s != expect {
                failures.push(format!("{method} {path} [{name}]: {s}, want {expect}: {b}"));
            } else if s == 403 {
                let shape_ok = b["error"]["code"].is_string() && b["error"]["message"].is_string();
                let oa_ok = !path.starts_with("/v1/") || b["error"]["type"] == "permission_error";
                if !shape_ok || !oa_ok {
                    failures.push(format!("{method} {path} [{name}]: 403 body {b}"));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} cells wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // The WebSocket: refused without credentials, open with a key.
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!("ws://{}/api/v1/chat/ws", node.addr);
    let err = tokio_tungstenite::connect_async(url.clone())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", bearer(&reader).parse().unwrap());
    assert!(tokio_tungstenite::connect_async(req).await.is_ok());
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_of_one_collection_never_sees_another() {
    let node = TestNode::start(|_| {}).await;
    seed_two_collections(&node).await;
    let x = user_with_key(&node, "xavier", "reader", &["alpha"]).await;
    let y = user_with_key(&node, "yvonne", "reader", &["beta"]).await;
    let as_x = client_with_key(&x);
    let post = |c: &reqwest::Client, path: &str, body: Value| {
        let req = c.post(node.url(path)).json(&body);
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let get = |c: &reqwest::Client, path: &str| {
        let req = c.get(node.url(path));
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let beta = ["b1", "b2"];
    let is_beta = |d: &Value| beta.contains(&d.as_str().unwrap_or(""));

    // Search: every hit is alpha's, even for a query only beta matches,
    // and in every retrieval mode; top_k is filled from alpha alone.
    for mode in ["hybrid", "lexical", "vector"] {
        let (s, b) = post(
            &as_x,
            "/api/v1/search",
            json!({"query": "Project Zebra merger", "mode": mode, "top_k": 4}),
        )
        .await;
        assert_eq!(s, 200, "{b}");
        let hits = b["hits"].as_array().unwrap();
        assert!(hits.iter().all(|h| !is_beta(&h["doc_id"])), "{mode}: {b}");
        assert!(!b.to_string().contains("Zebra"), "{mode}: {b}");
    }
    // The same query as y finds beta (the data is there).
    let (_, b) = post(
        &client_with_key(&y),
        "/api/v1/search",
        json!({"query": "Project Zebra merger"}),
    )
    .await;
    assert!(is_beta(&b["hits"][0]["doc_id"]), "{b}");

    // Chat: citations, the stored run snapshot (prompt, sources, retrieved).
    let (s, b) = post(
        &as_x,
        "/api/v1/chat",
        json!({"message": "What does Project Zebra cost?"}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert!(
        b["citations"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| !is_beta(&c["doc_id"])),
        "{b}"
    );
    assert!(!b.to_string().contains("Zebra is a confidential"), "{b}");
    let run_id = b["run_id"].as_str().unwrap();
    let (s, run) = get(&as_x, &format!("/api/v1/runs/{run_id}")).await;
    assert_eq!(s, 200);
    let run_text = run.to_string();
    assert!(
        !run_text.contains("confidential") && !run_text.contains("Geneva"),
        "{run}"
    );
    assert!(run["retrieved"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| !r["chunk_id"].as_str().unwrap().starts_with('b')));

    // OpenAI endpoint, all collections: nothing of beta.
    let (s, b) = post(
        &as_x,
        "/v1/chat/completions",
        json!({"model": "ragfleet", "messages": [{"role": "user", "content": "Project Zebra cost?"}]}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert!(!b.to_string().contains("confidential"), "{b}");
    assert!(b["ragfleet"]["citations"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| !is_beta(&c["doc_id"])));
    // Models: alpha, not beta.
    let (_, m) = get(&as_x, "/v1/models").await;
    let ids: Vec<&str> = m["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"ragfleet/alpha") && !ids.contains(&"ragfleet/beta"),
        "{m}"
    );

    // Document lists and counts.
    let (_, docs) = get(&as_x, "/api/v1/documents").await;
    assert_eq!(docs["total"], 2, "{docs}");
    assert!(docs["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|d| d["collection"] == "alpha"));
    let (_, info) = get(&as_x, "/api/v1/info").await;
    assert_eq!(info["documents"], 2, "{info}");
    let (_, info_admin) = node.get("/api/v1/info").await;
    assert_eq!(info_admin["documents"], 4, "{info_admin}");
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_cannot_reach_each_others_conversations_or_runs() {
    let node = TestNode::start(|_| {}).await;
    seed_two_collections(&node).await;
    let x = user_with_key(&node, "xavier", "reader", &["alpha"]).await;
    let y = user_with_key(&node, "yvonne", "editor", &["alpha"]).await;
    let (cx, rx) = chat_as(&node, &x, "Tell me about reindeer herding").await;
    let (cy, _) = chat_as(&node, &y, "When is the aurora green?").await;
    let as_y = client_with_key(&y);
    let status = |r: reqwest::Response| r.status().as_u16();

    // Lists show one's own only.
    let list: Value = as_y
        .get(node.url("/api/v1/conversations"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![cy.as_str()], "{list}");
    assert_eq!(list["total"], 1);
    // Read, resume, continue, delete: as absent.
    for path in [
        format!("/api/v1/conversations/{cx}"),
        format!("/api/v1/runs/{rx}"),
        format!("/api/v1/chat/runs/{rx}/events"),
    ] {
        assert_eq!(
            status(as_y.get(node.url(&path)).send().await.unwrap()),
            404,
            "{path}"
        );
    }
    let r = as_y
        .post(node.url("/api/v1/chat"))
        .json(&json!({"message": "and more?", "conversation_id": cx}))
        .send()
        .await
        .unwrap();
    assert_eq!(status(r), 404);
    let r = as_y
        .delete(node.url(&format!("/api/v1/conversations/{cx}")))
        .send()
        .await
        .unwrap();
    assert_eq!(status(r), 404);
    // x still has it, whole; and continues it.
    let as_x = client_with_key(&x);
    let c: Value = as_x
        .get(node.url(&format!("/api/v1/conversations/{cx}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(c["turns"].as_array().unwrap().len(), 2, "{c}");
    let r = as_x
        .post(node.url("/api/v1/chat"))
        .json(&json!({"message": "and more?", "conversation_id": cx}))
        .send()
        .await
        .unwrap();
    assert_eq!(status(r), 200);
    // The admin sees their own by default, everyone's with all=true.
    let (_, mine) = node.get("/api/v1/conversations").await;
    assert_eq!(mine["total"], 0, "{mine}");
    let (_, all) = node.get("/api/v1/conversations?all=true").await;
    assert_eq!(all["total"], 2, "{all}");
    // x deletes their own.
    let r = as_x
        .delete(node.url(&format!("/api/v1/conversations/{cx}")))
        .send()
        .await
        .unwrap();
    assert_eq!(status(r), 204);
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_made_on_one_node_works_on_another_and_revocation_reaches_it() {
    let shared = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", shared.path().join("ragfleet.db").display());
    let a = TestNode::start(|c| c.store.url = Some(url.clone())).await;
    let b = TestNode::start(|c| {
        c.store.url = Some(url.clone());
        c.store.poll_interval_ms = 100;
    })
    .await;
    // Only the first node created (and wrote) an admin key.
    assert!(a.key.is_some());
    assert!(
        b.key.is_none(),
        "the second node found the admin in the store"
    );
    let mut b = b;
    b.client = a.client.clone();
    b.key = a.key.clone();
    seed_two_collections(&a).await;
    let k = user_with_key(&a, "roamer", "reader", &["alpha"]).await;
    let on_b = client_with_key(&k);
    let r = on_b.get(b.url("/api/v1/me")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let me: Value = r.json().await.unwrap();
    assert_eq!(me["name"], "roamer");
    assert_eq!(me["collections"], json!(["alpha"]));
    // Revoke on A; B refuses within 2 s (its cache lives at most 1 s).
    let id = ragfleet_rag::store::principals::key_id(&k).unwrap();
    let (s, _) = a.delete(&format!("/api/v1/admin/keys/{id}")).await;
    assert_eq!(s, 204);
    let revoked_at = Instant::now();
    let refused = loop {
        let s = on_b
            .get(b.url("/api/v1/me"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        if s == 401 {
            break revoked_at.elapsed();
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(2),
            "still accepted after 2 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(refused <= Duration::from_secs(2), "{refused:?}");
    // On A itself at once.
    let s = on_b
        .get(a.url("/api/v1/me"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    assert_eq!(s, 401);
    b.stop().await.unwrap();
    a.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_auth_acts_as_an_anonymous_admin() {
    let node = TestNode::start(|c| c.auth.enabled = false).await;
    assert!(node.key.is_none(), "no admin key without auth");
    assert!(!node.data_dir.join("admin.key").exists());
    seed(&node).await;
    let (s, me) = node.get("/api/v1/me").await;
    assert_eq!(s, 200);
    assert_eq!(me["name"], "anonymous");
    assert_eq!(me["role"], "admin");
    let (s, b) = node
        .post_json("/api/v1/chat", &json!({"message": "What is Rust?"}))
        .await;
    assert_eq!(s, 200, "{b}");
    let owner = node
        .state
        .engine()
        .unwrap()
        .store()
        .conversation_owner(b["conversation_id"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(owner.as_deref(), Some("anonymous"));
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_key_file_is_private_and_keys_stay_secret() {
    let node = TestNode::start(|_| {}).await;
    let path = node.data_dir.join("admin.key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{mode:o}");
    }
    let key = user_with_key(&node, "keeper", "reader", &["*"]).await;
    // Listings never show a key or its hash.
    let (_, list) = node.get("/api/v1/admin/keys").await;
    let text = list.to_string();
    assert!(
        !text.contains(&key) && !text.contains(node.key.as_deref().unwrap()),
        "{text}"
    );
    assert!(!text.contains(&ragfleet_rag::store::principals::sha256_hex(&key)));
    // Bad requests to the admin API get clear errors.
    let (s, b) = node
        .post_json(
            "/api/v1/admin/keys",
            &json!({"user": "keeper", "role": "admin"}),
        )
        .await;
    assert_error(s, &b, 422, "invalid_request");
    let (s, b) = node
        .post_json(
            "/api/v1/admin/users",
            &json!({"name": "keeper", "role": "reader"}),
        )
        .await;
    assert_error(s, &b, 409, "conflict");
    let (s, b) = node
        .post_json(
            "/api/v1/admin/keys",
            &json!({"user": "keeper", "expires_in": "3y"}),
        )
        .await;
    assert_error(s, &b, 422, "invalid_request");
    // An expiring key works now.
    let (s, b) = node
        .post_json(
            "/api/v1/admin/keys",
            &json!({"user": "keeper", "expires_in": "1h"}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let r = client_with_key(b["key"].as_str().unwrap())
        .get(node.url("/api/v1/me"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_session_csrf_logout_and_throttling() {
    let node = TestNode::start(|c| c.auth.max_failed_logins = 3).await;
    seed(&node).await;
    let (s, b) = node
        .post_json(
            "/api/v1/admin/users",
            &json!({"name": "paula", "role": "reader", "password": "long enough pw", "collections": ["*"]}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let http = reqwest::Client::new();
    let login = |user: &str, pw: &str| {
        http.post(node.url("/api/v1/auth/login"))
            .json(&json!({"user": user, "password": pw}))
            .send()
    };
    let r = login("paula", "wrong password").await.unwrap();
    assert_eq!(r.status(), 401);
    let r = login("paula", "long enough pw").await.unwrap();
    assert_eq!(r.status(), 200);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap().to_string();
    let body: Value = r.json().await.unwrap();
    let csrf = body["csrf"].as_str().unwrap().to_string();
    assert_eq!(body["me"]["name"], "paula");

    // Reads with the cookie; a state change needs the CSRF header.
    let r = http
        .get(node.url("/api/v1/me"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let ask = json!({"message": "What is Rust?"});
    let r = http
        .post(node.url("/api/v1/chat"))
        .header("cookie", &session)
        .json(&ask)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        403,
        "a cross-site post (no CSRF token) is refused"
    );
    let r = http
        .post(node.url("/api/v1/chat"))
        .header("cookie", &session)
        .header("x-csrf-token", &csrf)
        .json(&ask)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Logout ends the session on the server: the same cookie is refused.
    let r = http
        .post(node.url("/api/v1/auth/logout"))
        .header("cookie", &session)
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = http
        .get(node.url("/api/v1/me"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Throttled at 3 failures within the window (this address has 3 by
    // now: a login does not clear the address's count), even with the right
    // password.
    for _ in 0..2 {
        assert_eq!(
            login("paula", "nope nope nope").await.unwrap().status(),
            401
        );
    }
    let r = login("paula", "long enough pw").await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    node.stop().await.unwrap();
}

/// Behind a gateway every login comes from the gateway's address: the
/// per-address throttle then reads `X-Forwarded-For`, but only from a peer
/// in `[auth] trusted_proxies`. Trusted: two clients throttled apart.
/// Not trusted (the default): the header is ignored and both count as the
/// one peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_throttle_reads_x_forwarded_for_only_from_trusted_proxies() {
    let http = reqwest::Client::new();
    for trusted in [true, false] {
        let node = TestNode::start(|c| {
            c.auth.max_failed_logins = 2;
            if trusted {
                c.auth.trusted_proxies = vec!["127.0.0.0/8".into()];
            }
        })
        .await;
        let login = |user: &str, xff: &str| {
            http.post(node.url("/api/v1/auth/login"))
                .header("x-forwarded-for", xff)
                .json(&json!({"user": user, "password": "not the password"}))
                .send()
        };
        // Two failures from client A (different users: the per-user
        // throttle stays out of it) use up A's allowance.
        for user in ["u1", "u2"] {
            let r = login(user, "198.51.100.7, 203.0.113.1").await.unwrap();
            assert_eq!(r.status(), 401);
        }
        let r = login("u3", "203.0.113.1").await.unwrap();
        assert_eq!(r.status(), 429, "client A is throttled (trusted={trusted})");
        let r = login("u4", "203.0.113.2").await.unwrap();
        let want = if trusted { 401 } else { 429 };
        assert_eq!(
            r.status(),
            want,
            "client B shares A's throttle only when X-Forwarded-For is not trusted"
        );
        node.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_identity_header_needs_its_hmac() {
    let secret = "a shared gateway secret";
    let node = TestNode::start(|c| c.auth.gateway_secret = secret.into()).await;
    let reader = user_with_key(&node, "rita", "reader", &["alpha"]).await;
    let http = reqwest::Client::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let me = |headers: Vec<(&'static str, String)>| {
        let mut r = http.get(node.url("/api/v1/me"));
        for (k, v) in headers {
            r = r.header(k, v);
        }
        async move {
            let r = r.send().await.unwrap();
            let s = r.status().as_u16();
            (s, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    use ragfleet_node::auth::{sign_principal, PRINCIPAL_HEADER, PRINCIPAL_SIG_HEADER};
    // Forged: no signature, a signature with another secret, a stale one,
    // a signature for another subject. Alone: 401.
    let forged = [
        vec![(PRINCIPAL_HEADER, "admin".to_string())],
        vec![
            (PRINCIPAL_HEADER, "admin".into()),
            (
                PRINCIPAL_SIG_HEADER,
                sign_principal("guessed", "admin", now),
            ),
        ],
        vec![
            (PRINCIPAL_HEADER, "admin".into()),
            (
                PRINCIPAL_SIG_HEADER,
                sign_principal(secret, "admin", now - 3600),
            ),
        ],
        vec![
            (PRINCIPAL_HEADER, "admin".into()),
            (PRINCIPAL_SIG_HEADER, sign_principal(secret, "rita", now)),
        ],
    ];
    for h in &forged {
        let (s, b) = me(h.clone()).await;
        assert_eq!(s, 401, "{h:?}: {b}");
        // With a reader's key beside it: the reader, not the admin.
        let mut with_key = h.clone();
        with_key.push(("authorization", format!("Bearer {reader}")));
        let (s, b) = me(with_key).await;
        assert_eq!(s, 200);
        assert_eq!(b["name"], "rita", "{h:?}: {b}");
    }
    // Correctly signed: the gateway's subject.
    let (s, b) = me(vec![
        (PRINCIPAL_HEADER, "rita".into()),
        (PRINCIPAL_SIG_HEADER, sign_principal(secret, "rita", now)),
    ])
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["name"], "rita");
    assert_eq!(b["via"], "gateway");
    // A signed subject that is no user here.
    let (s, _) = me(vec![
        (PRINCIPAL_HEADER, "nobody".into()),
        (PRINCIPAL_SIG_HEADER, sign_principal(secret, "nobody", now)),
    ])
    .await;
    assert_eq!(s, 401);
    node.stop().await.unwrap();
}
