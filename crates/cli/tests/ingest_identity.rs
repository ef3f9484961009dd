//! Document identity through the real binary: `ragfleet ingest --url` of
//! one file into team-a, then team-b, keeps it in both (the node over
//! HTTP); `--data` with identical files at two paths stores two documents
//! and counts what it stored; ingesting the unchanged directory again
//! reports all unchanged; two files that would share a source are refused.
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ragfleet");

fn models_dir() -> PathBuf {
    std::env::var_os("RAGFLEET_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models"))
}

fn ragfleet() -> Command {
    let mut c = Command::new(BIN);
    for v in [
        "RAGFLEET_URL",
        "RAGFLEET_CONFIG",
        "RAGFLEET_LISTEN",
        "RAGFLEET_DATA",
        "RAGFLEET_GENERATOR",
    ] {
        c.env_remove(v);
    }
    c.env("RAGFLEET_MODELS", models_dir());
    c
}

fn run(args: &[&str], paths: &[&Path]) -> (bool, String) {
    run_with_key(args, paths, None)
}

/// [`run`], sending `key` (as `RAGFLEET_API_KEY`) when given.
fn run_with_key(args: &[&str], paths: &[&Path], key: Option<&str>) -> (bool, String) {
    let mut cmd = ragfleet();
    if let Some(k) = key {
        cmd.env("RAGFLEET_API_KEY", k);
    }
    let out = cmd.args(args).args(paths).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A `ragfleet node` child, killed on drop.
struct NodeProc {
    child: Child,
    base: String,
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_node(data: &Path, config: &Path) -> NodeProc {
    let mut child = ragfleet()
        .args([
            "node",
            "--listen",
            "127.0.0.1:0",
            "--generator",
            "extractive",
        ])
        .arg("--data")
        .arg(data)
        .arg("--config")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ragfleet node");
    // The node prints "ragfleet node on http://ADDR/ ..." on stderr once bound.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent {
                if let Some(rest) = line.split("ragfleet node on http://").nth(1) {
                    let addr = rest.split('/').next().unwrap_or_default().to_string();
                    let _ = tx.send(addr);
                    sent = true;
                }
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the node never printed its address");
    let node = NodeProc {
        child,
        base: format!("http://{addr}"),
    };
    // Wait until it is ready (engine open, indexes loaded).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if ready(&node.base) {
            return node;
        }
        assert!(Instant::now() < deadline, "node never became ready");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `GET /ready` → 200, over a plain socket (no HTTP client dependency).
fn ready(base: &str) -> bool {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(
        format!("GET /ready HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .is_err()
    {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.1 200")
}

/// `GET path` → the JSON body, over a plain socket.
fn get_json(base: &str, path: &str, key: &str) -> serde_json::Value {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\n\
             Connection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let body = buf.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {buf}"))
}

#[test]
fn ingest_url_into_two_collections_keeps_both() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let config = tmp.path().join("node.toml");
    std::fs::write(&config, "[local]\nenabled = false\n").unwrap();
    let docx =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../rag/tests/fixtures/ingest/good/bees.docx");
    let node = start_node(&data, &config);
    // Auth is on: the CLI and the checks below use the node's admin key.
    let key = std::fs::read_to_string(data.join("admin.key"))
        .unwrap()
        .trim()
        .to_string();
    for (collection, want) in [
        ("team-a", "1 documents (1 new, 0 replaced, 0 unchanged)"),
        ("team-b", "1 documents (1 new, 0 replaced, 0 unchanged)"),
        ("team-a", "1 documents (0 new, 0 replaced, 1 unchanged)"),
    ] {
        let (ok, out) = run_with_key(
            &[
                "ingest",
                "--quiet",
                "--url",
                &node.base,
                "--collection",
                collection,
            ],
            &[&docx],
            Some(&key),
        );
        assert!(ok, "{out}");
        assert!(out.contains(want), "{collection}: {out}");
    }
    for c in ["team-a", "team-b"] {
        let page = get_json(
            &node.base,
            &format!("/api/v1/documents?collection={c}"),
            &key,
        );
        assert_eq!(page["total"], 1, "{c} keeps its document: {page}");
        assert_eq!(page["items"][0]["source"], "bees.docx", "{page}");
    }
}

#[test]
fn ingest_data_counts_identical_files_and_reports_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let book = tmp.path().join("book");
    std::fs::create_dir_all(book.join("src")).unwrap();
    let same = "<html><head><title>The Book</title></head><body><main><p>Cargo is the Rust \
                package manager; it builds packages and fetches dependencies.</p></main></body></html>";
    std::fs::write(book.join("README.html"), same).unwrap();
    std::fs::write(book.join("SUMMARY.html"), same).unwrap();
    std::fs::write(
        book.join("src/ch01.md"),
        "# Getting started\n\nInstall Rust with rustup, then run cargo new.\n",
    )
    .unwrap();
    std::fs::write(
        book.join("src/notes.jsonl"),
        "{\"text\": \"A note without an id.\"}\n{\"text\": \"A note without an id.\"}\n",
    )
    .unwrap();
    let data = tmp.path().join("data");
    let data_s = data.to_str().unwrap();
    let ingest = |extra: &[&str]| {
        let mut args = vec!["ingest", "--quiet", "--data", data_s];
        args.extend_from_slice(extra);
        run(&args, &[&book])
    };
    let (ok, out) = ingest(&[]);
    assert!(ok, "{out}");
    // Identical README and SUMMARY are two documents, the two JSON lines two more.
    assert!(
        out.contains("4 files: 5 documents (5 new, 0 replaced, 0 unchanged)"),
        "{out}"
    );
    let (ok, out) = ingest(&[]);
    assert!(ok, "{out}");
    assert!(
        out.contains("4 files: 5 documents (0 new, 0 replaced, 5 unchanged)"),
        "{out}"
    );
    // Another collection: the same files are new documents there.
    let (ok, out) = ingest(&["--collection", "other"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("5 documents (5 new, 0 replaced, 0 unchanged)"),
        "{out}"
    );
    // An edited file replaces itself only.
    std::fs::write(
        book.join("src/ch01.md"),
        "# Getting started\n\nInstall Rust with rustup, then run cargo new hello.\n",
    )
    .unwrap();
    let (ok, out) = ingest(&[]);
    assert!(ok, "{out}");
    assert!(
        out.contains("5 documents (0 new, 1 replaced, 4 unchanged)"),
        "{out}"
    );

    // Two files that would be one source: refused before anything is written.
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    for d in [&a, &b] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join("index.md"), format!("# {}\n\ntext", d.display())).unwrap();
    }
    let (ok, out) = run(&["ingest", "--quiet", "--data", data_s], &[&a, &b]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("index.md") && out.contains("would both be the document \"index.md\""),
        "{out}"
    );
}
