//! The API fuzzed against its own OpenAPI document with schemathesis (from
//! PyPI; scripts/setup.sh installs the pinned version): every operation gets
//! generated valid and invalid requests, and every response must be no 5xx,
//! a status the document lists, the content type it lists, and a body
//! matching the schema. Bounded (examples per operation) to stay short.
mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_fuzzed_with_schemathesis() {
    let node = TestNode::start(|c| {
        // Fuzzed bodies must hit validation, not wait for generation slots.
        c.limits.max_concurrent_generations = 8;
    })
    .await;
    seed(&node).await;
    let report = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new("python3")
        // It keeps state (.schemathesis/) in its working directory.
        .current_dir(report.path())
        .args(["-m", "schemathesis.cli", "run"])
        .arg(node.url("/api/v1/openapi.json"))
        .args(["--url", &node.base])
        // Auth is on: schemathesis calls as the bootstrap admin.
        .args([
            "-H",
            &format!("Authorization: Bearer {}", node.key.as_deref().unwrap()),
        ])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--max-examples",
            "15",
            "--phases",
            "examples,coverage,fuzzing",
            "--seed",
            "1",
            "--workers",
            "2",
            "--request-timeout",
            "30",
            "--no-color",
            "--generation-database",
            "none",
            "--report-dir",
        ])
        .arg(report.path())
        // The WebSocket upgrade is not a request/response operation.
        .args(["--exclude-path", "/api/v1/chat/ws"])
        // tests/py/st_hooks.py: a serializer for the JSON Lines batch body.
        .env("SCHEMATHESIS_HOOKS", "st_hooks")
        .env("PYTHONPATH", concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py"))
        .env("SCHEMATHESIS_TELEMETRY", "false")
        .kill_on_drop(true)
        .output()
        .await
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // It really ran the operations (a broken document would test nothing).
    assert!(stdout.contains("passed"), "{stdout}");
    // The node kept serving.
    let (s, _) = node.get("/health").await;
    assert_eq!(s, 200);
    node.stop().await.unwrap();
}
