//! The web chat page in a real headless browser: Debian's chromium driven by
//! playwright-core (tests/web/chat.mjs; `npm ci` there, run by
//! scripts/setup.sh). Upload a file, ask, see the answer stream in with a
//! citation that opens the passage and links to its source document, reload
//! and find the conversation; no console errors. Screenshots are saved under
//! the target dir (`web-screenshots/`).
mod common;

use common::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_page_in_headless_chromium() {
    let web = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/web");
    assert!(
        web.join("node_modules/playwright-core").is_dir(),
        "run `npm ci` in {} (scripts/setup.sh does)",
        web.display()
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "no chromium at {chromium} (apt-get install chromium; scripts/setup.sh does)"
    );

    // The page's own login is tested in auth_web; this one is about chat.
    let node = TestNode::start(|c| c.auth.enabled = false).await;
    // Something else in the index, so retrieval has to pick the right document.
    seed(&node).await;
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("lighthouses.md");
    std::fs::write(
        &file,
        "# Lighthouses\n\nThe Pharos of Alexandria was a lighthouse built by the Ptolemaic \
         Kingdom on the island of Pharos. It stood more than 100 metres tall and was one of \
         the Seven Wonders of the Ancient World. Its light came from a fire at the top, \
         reflected out to sea by a bronze mirror.\n",
    )
    .unwrap();
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-screenshots");
    let out = tokio::process::Command::new("node")
        .current_dir(&web)
        .env("CHROMIUM", &chromium)
        .arg("chat.mjs")
        .arg(&node.base)
        .arg(&file)
        .arg("How tall was the Pharos of Alexandria lighthouse?")
        .arg("Pharos")
        .arg(&shots)
        .kill_on_drop(true)
        .output()
        .await
        .expect("node (Node.js) runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "browser test failed (screenshots in {}):\n{stdout}\n{}",
        shots.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(stdout.trim()).unwrap();
    // The page's view agrees with the node: the uploaded file is a stored
    // document, the citation points at it, the conversation is stored.
    let (s, docs) = node.get("/api/v1/documents").await;
    assert_eq!(s, 200);
    let uploaded = docs["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["title"] == "Lighthouses")
        .unwrap_or_else(|| panic!("the upload is not stored: {docs}"));
    assert_eq!(report["source_document"]["id"], uploaded["id"], "{report}");
    assert!(report["upload"]
        .as_str()
        .unwrap()
        .starts_with("1 document(s)"));
    assert!(report["streamed_steps"].as_u64().unwrap() >= 2, "{report}");
    let conv = report["conversation_id"].as_str().unwrap();
    let (s, c) = node.get(&format!("/api/v1/conversations/{conv}")).await;
    assert_eq!(s, 200, "{c}");
    assert_eq!(c["turns"].as_array().unwrap().len(), 2, "{c}");
    for shot in [
        "1-uploaded.png",
        "2-answered.png",
        "3-passage.png",
        "4-reloaded.png",
    ] {
        assert!(shots.join(shot).is_file(), "no screenshot {shot}");
    }
    node.stop().await.unwrap();
}

/// The page's login (tests/web/login.mjs): two users log in through the page
/// of a node with authentication on (the default). The first one chats and
/// logs out; the second does not see the first one's conversation; a form
/// posted from another site with the first user's browser is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_page_in_headless_chromium() {
    let web = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/web");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(web.join("node_modules/playwright-core").is_dir());

    let node = TestNode::start(|_| {}).await;
    assert!(node.key.is_some(), "auth is on by default");
    let (s, b) = node
        .post_json(
            "/api/v1/documents",
            &serde_json::json!({"title": "Lighthouses", "collection": "harbour",
                "text": "The Pharos of Alexandria was a lighthouse built by the Ptolemaic \
                         Kingdom on the island of Pharos. The Pharos lighthouse was more than \
                         100 metres tall."}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    for (name, password) in [("alice", "alice-password-1"), ("bob", "bob-password-2")] {
        let (s, b) = node
            .post_json(
                "/api/v1/admin/users",
                &serde_json::json!({"name": name, "role": "reader", "password": password,
                    "collections": ["harbour"]}),
            )
            .await;
        assert_eq!(s, 201, "{b}");
    }
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-screenshots");
    let out = tokio::process::Command::new("node")
        .current_dir(&web)
        .env("CHROMIUM", &chromium)
        .args([
            "login.mjs",
            &node.base,
            "alice",
            "alice-password-1",
            "bob",
            "bob-password-2",
        ])
        .arg("How tall was the Pharos of Alexandria lighthouse?")
        .arg("100 metres")
        .arg(&shots)
        .kill_on_drop(true)
        .output()
        .await
        .expect("node (Node.js) runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "browser test failed (screenshots in {}):\n{stdout}\n{}",
        shots.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(stdout.trim()).unwrap();
    // The node agrees: the conversation is alice's, stored, and listed for
    // the admin only with ?all=true.
    let conv = report["conversation_id"].as_str().unwrap();
    let (s, own) = node.get("/api/v1/conversations").await;
    assert_eq!(s, 200);
    assert!(
        !own["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == conv),
        "the admin's own list holds alice's conversation: {own}"
    );
    let (s, all) = node.get("/api/v1/conversations?all=true").await;
    assert_eq!(s, 200);
    assert!(
        all["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == conv),
        "?all=true lacks alice's conversation: {all}"
    );
    assert_eq!(report["cross_site_post"].as_u64(), Some(401), "{report}");
    node.stop().await.unwrap();
}
