//! Resumable answer streams over real HTTP: from this node's memory, and
//! through the real Redis on 127.0.0.1:6379 from another node.
mod common;

use common::*;
use serde_json::{json, Value};

const REDIS: &str = "redis://127.0.0.1:6379";

#[derive(Debug)]
struct Ev {
    id: Option<u64>,
    event: String,
    data: Value,
}

fn parse(text: &str) -> Vec<Ev> {
    let mut out = Vec::new();
    for block in text.replace("\r\n", "\n").split("\n\n") {
        let mut ev = Ev {
            id: None,
            event: "message".into(),
            data: Value::Null,
        };
        let mut data = Vec::new();
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("id:") {
                ev.id = v.trim().parse().ok();
            } else if let Some(v) = line.strip_prefix("event:") {
                ev.event = v.trim().into();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
            }
        }
        if !data.is_empty() {
            ev.data = serde_json::from_str(&data.join("\n")).unwrap();
            out.push(ev);
        }
    }
    out
}

async fn stream_chat(node: &TestNode, message: &str) -> (String, Vec<Ev>) {
    let r = node
        .client
        .post(node.url("/api/v1/chat"))
        .json(&json!({"message": message, "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let run_id = r.headers()["x-ragfleet-run-id"]
        .to_str()
        .unwrap()
        .to_string();
    let evs = parse(&r.text().await.unwrap());
    (run_id, evs)
}

async fn resume(node: &TestNode, run_id: &str, last: Option<&str>, query: &str) -> (u16, String) {
    let mut req = node
        .client
        .get(node.url(&format!("/api/v1/chat/runs/{run_id}/events{query}")));
    if let Some(l) = last {
        req = req.header("Last-Event-ID", l);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_resume_from_memory_on_the_same_node() {
    let node = TestNode::start(|_| {}).await;
    seed(&node).await;
    let (run_id, evs) = stream_chat(&node, "What is the capital of France?").await;
    let ids: Vec<Option<u64>> = evs.iter().map(|e| e.id).collect();
    let want: Vec<Option<u64>> = (0..evs.len() as u64).map(Some).collect();
    assert_eq!(ids, want, "event ids are the sequence numbers");
    assert_eq!(evs[0].data["run_id"], run_id.as_str());
    assert_eq!(evs.last().unwrap().event, "done");

    // After event 1: the rest, the same events with the same ids.
    let (s, body) = resume(&node, &run_id, Some("1"), "").await;
    assert_eq!(s, 200, "{body}");
    let rest = parse(&body);
    assert_eq!(rest.len(), evs.len() - 2);
    for (a, b) in rest.iter().zip(&evs[2..]) {
        assert_eq!(a.id, b.id);
        assert_eq!(a.event, b.event);
        assert_eq!(a.data, b.data);
    }
    // ?after= works too; the header wins over it.
    let (_, body) = resume(&node, &run_id, None, "?after=0").await;
    assert_eq!(parse(&body).len(), evs.len() - 1);
    let (_, body) = resume(&node, &run_id, Some("0"), "?after=5").await;
    assert_eq!(parse(&body).len(), evs.len() - 1);
    // From the start, and past the end (nothing left: an empty stream).
    let (_, body) = resume(&node, &run_id, None, "").await;
    assert_eq!(parse(&body).len(), evs.len());
    let (s, body) = resume(&node, &run_id, Some("999"), "").await;
    assert_eq!(s, 200);
    assert!(parse(&body).is_empty(), "{body}");

    // Bad input.
    let (s, body) = resume(&node, &run_id, Some("x"), "").await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_error(s, &v, 400, "bad_request");
    let (s, body) = resume(&node, &run_id, None, "?after=-1").await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_error(s, &v, 400, "invalid_query");
    let (s, body) = resume(&node, "no-such-run", None, "").await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_error(s, &v, 404, "not_found");
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_resume_on_another_node_through_redis() {
    let a = TestNode::start(|c| c.redis.url = REDIS.into()).await;
    let b = TestNode::start(|c| c.redis.url = REDIS.into()).await;
    let alone = TestNode::start(|_| {}).await;
    seed(&a).await;
    let (run_id, evs) = stream_chat(&a, "Who lives in a bee colony?").await;
    assert_eq!(evs.last().unwrap().event, "done");

    let r = b
        .client
        .get(b.url(&format!("/api/v1/chat/runs/{run_id}/events")))
        .header("Last-Event-ID", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_ne!(
        r.headers()["x-ragfleet-node"],
        a.state.node_id(),
        "answered by B"
    );
    let rest = parse(&r.text().await.unwrap());
    assert_eq!(rest.len(), evs.len() - 1);
    for (x, y) in rest.iter().zip(&evs[1..]) {
        assert_eq!((x.id, &x.event, &x.data), (y.id, &y.event, &y.data));
    }
    // A node without Redis knows only its own answers.
    let (s, body) = resume(&alone, &run_id, None, "").await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_error(s, &v, 404, "not_found");
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    alone.stop().await.unwrap();
}
