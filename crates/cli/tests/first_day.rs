//! A first day without surprises (issue 15), the `ragfleet up` and CLI
//! parts, with the real binary and real processes: a taken port stops `up`
//! at once; `ingest --data` with `up`'s data directory reaches the cluster;
//! one body limit for the gateway and the nodes, with a readable 413 that
//! names it; `--gateway-config` merged with the generated pool; plain logs
//! without colour codes or ERROR lines for readiness polls; `ask` with a
//! closed standard output ends quietly with 0.
//!
//! The tests run one at a time (they share two cores) and use the
//! `extractive` generator (no generation model to load).
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_ragfleet");

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn models() -> PathBuf {
    let m = std::env::var_os("RAGFLEET_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models"));
    assert!(
        m.join("all-minilm-l6-v2").is_dir(),
        "models missing in {} (scripts/fetch-models.sh)",
        m.display()
    );
    m
}

/// The binary with a clean environment for the variables it reads.
fn ragfleet() -> Command {
    let mut c = Command::new(BIN);
    for v in [
        "RAGFLEET_URL",
        "RAGFLEET_CONFIG",
        "RAGFLEET_LISTEN",
        "RAGFLEET_DATA",
        "RAGFLEET_GENERATOR",
        "RAGFLEET_MAX_BODY_BYTES",
        "RUST_LOG",
        "NO_COLOR",
    ] {
        c.env_remove(v);
    }
    c.env("RAGFLEET_MODELS", models());
    c
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `ragfleet up`, stopped with SIGINT (then killed) when dropped.
struct Up {
    child: Child,
    gw: String,
    data: PathBuf,
    stderr: Arc<Mutex<String>>,
}

impl Up {
    /// Starts `up` with one node (extractive) and waits for "Ctrl-C stops
    /// everything" on its standard output.
    fn start(dir: &Path, extra: &[&str]) -> Up {
        let port = free_port();
        let data = dir.join("data");
        let mut child = ragfleet()
            .args([
                "up",
                "--nodes",
                "1",
                "--generator",
                "extractive",
                "--listen",
            ])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data")
            .arg(&data)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let el = stderr.clone();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                el.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let mut up = Up {
            child,
            gw: format!("http://127.0.0.1:{port}"),
            data,
            stderr,
        };
        let deadline = Instant::now() + Duration::from_secs(240);
        loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(l) if l.contains("Ctrl-C stops everything") => break,
                Ok(_) => {}
                Err(_) => {
                    if let Ok(Some(s)) = up.child.try_wait() {
                        panic!("up exited {s}: {}", up.err());
                    }
                    assert!(
                        Instant::now() < deadline,
                        "up never became ready: {}",
                        up.err()
                    );
                }
            }
        }
        up
    }

    fn err(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// SIGINT, then the exit status.
    fn stop(&mut self) -> ExitStatus {
        // SAFETY: kill(2) on our own, not yet reaped, child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGINT);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "up did not stop: {}", self.err());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill(2) on our own, not yet reaped, child.
            unsafe {
                libc::kill(self.child.id() as i32, libc::SIGINT);
            }
            let deadline = Instant::now() + Duration::from_secs(40);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The URL of `up`'s node (from the generated gateway.toml).
fn node_url(data: &Path) -> String {
    let t: toml::Table = std::fs::read_to_string(data.join("gateway.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let addr = t["pool"]["nodes"]["servers"][0]["addr"].as_str().unwrap();
    format!("http://{addr}")
}

/// Runs a command to its end, at most `limit`; (status, stdout, stderr, time).
fn run(mut cmd: Command, limit: Duration) -> (ExitStatus, String, String, Duration) {
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let o = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let e = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running after {limit:?}; stderr so far unavailable (killed)");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = started.elapsed();
    (status, o.join().unwrap(), e.join().unwrap(), took)
}

/// A stand-in for another cluster on a port: answers every request with
/// 200 and a `/health`-like JSON body (as `up`'s probe saw in the issue).
fn other_server() -> (TcpListener, u16) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let l2 = l.try_clone().unwrap();
    std::thread::spawn(move || {
        for s in l2.incoming() {
            let Ok(mut s) = s else { return };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let body = r#"{"status":"ok","ready":true,"pid":1}"#;
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (l, port)
}

/// With the gateway's port (or a node's) held by another process that
/// answers HTTP, `up` stops at once with an error naming the port — no
/// "gateway ready", no crash loop.
#[test]
fn up_on_a_taken_port_stops_at_once_naming_it() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let (_other, port) = other_server();

    let mut cmd = ragfleet();
    cmd.args([
        "up",
        "--nodes",
        "1",
        "--generator",
        "extractive",
        "--listen",
    ])
    .arg(format!("127.0.0.1:{port}"))
    .arg("--data")
    .arg(dir.path().join("a"));
    let (status, out, err, took) = run(cmd, Duration::from_secs(60));
    assert!(
        !status.success(),
        "up succeeded on a taken port: {out}\n{err}"
    );
    assert!(
        took < Duration::from_secs(20),
        "up took {took:?} to give up: {err}"
    );
    assert!(
        err.contains(&format!("port {port} ")) && err.contains("already in use"),
        "{err}"
    );
    assert!(err.contains("--listen"), "{err}");
    assert!(!out.contains("ready"), "{out}");
    assert!(!err.contains("gateway ready"), "{err}");

    // A node port held the same way.
    let mut cmd = ragfleet();
    cmd.args([
        "up",
        "--nodes",
        "2",
        "--generator",
        "extractive",
        "--listen",
    ])
    .arg(format!("127.0.0.1:{}", free_port()))
    .arg("--node-port")
    .arg((port - 1).to_string())
    .arg("--data")
    .arg(dir.path().join("b"));
    // node-1 on port-1 (free, or not: either way node-2 is on `port`).
    let (status, out, err, took) = run(cmd, Duration::from_secs(60));
    assert!(!status.success(), "{out}\n{err}");
    assert!(took < Duration::from_secs(20), "{took:?}: {err}");
    assert!(
        err.contains("already in use") && err.contains("--node-port"),
        "{err}"
    );
    assert!(err.contains("node-"), "{err}");
}

/// `ragfleet ingest --data DIR` aimed at `up`'s data directory writes into
/// the store the cluster reads: the document is found through the gateway,
/// and no second store appears in DIR. Also: the default body limit is
/// 64 MiB on both sides, the node's log has no colour codes and no ERROR
/// lines from readiness polls, and `ask` into a closed pipe exits 0 quietly.
#[test]
fn ingest_into_ups_data_dir_reaches_the_cluster() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut up = Up::start(dir.path(), &[]);
    let http = admin_client(&up.data);

    let docs = dir.path().join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    std::fs::write(
        docs.join("zorblax.txt"),
        "The zorblax reactor on Kepler station runs on liquid helium. \
         It was built in 2091 by the engineer Mira Okafor.",
    )
    .unwrap();
    let mut cmd = ragfleet();
    cmd.args(["ingest", "--quiet", "--data"])
        .arg(&up.data)
        .arg(&docs);
    let (status, out, err, _) = run(cmd, Duration::from_secs(180));
    assert!(status.success(), "{out}\n{err}");
    assert!(out.contains("1 new"), "{out}");
    assert!(err.contains("store"), "{err}");
    assert!(
        !up.data.join("ragfleet.db").exists(),
        "a second store was written in the data directory"
    );

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v: Value = http
            .get(format!("{}/api/v1/search?query=zorblax%20helium", up.gw))
            .send()
            .unwrap()
            .json()
            .unwrap();
        if v["hits"][0]["text"]
            .as_str()
            .is_some_and(|t| t.contains("zorblax"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cluster never saw the ingested document: {v}\n{}",
            up.err()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Default body limit: 64 MiB for the gateway and the node.
    let gw_toml = std::fs::read_to_string(up.data.join("gateway.toml")).unwrap();
    assert!(
        gw_toml.contains(&format!("max_body_size = {}", 64 << 20)),
        "{gw_toml}"
    );
    let info: Value = http
        .get(format!("{}/api/v1/info", node_url(&up.data)))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(info["limits"]["max_body_bytes"], json!(64 << 20), "{info}");

    // `ask` whose standard output is already closed: exit 0, nothing said.
    let (r, w) = std::io::pipe().unwrap();
    drop(r);
    // `ask` finds the cluster's admin key in $RAGFLEET_DATA/admin.key.
    let out = ragfleet()
        .env("RAGFLEET_DATA", &up.data)
        .args(["ask", "--url", &up.gw, "Who built the zorblax reactor?"])
        .stdin(Stdio::null())
        .stdout(w)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {err}", out.status);
    assert!(
        !err.contains("Broken pipe") && !err.contains("Error"),
        "{err}"
    );
    // The same as a user types it (pipefail: the status is ragfleet's).
    let script = format!(
        "set -o pipefail; '{BIN}' ask --url {} 'Who built the zorblax reactor?' | head -1",
        up.gw
    );
    let out = Command::new("bash")
        .env("RAGFLEET_DATA", &up.data)
        .args(["-c", &script])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {err}", out.status);
    assert!(!err.contains("Broken pipe"), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);

    let status = up.stop();
    assert!(status.success(), "up exited {status}: {}", up.err());

    // Logs: plain text (stdout and stderr were pipes and files), and the
    // readiness polls while the node started left no ERROR line.
    let log = std::fs::read(up.data.join("logs/node-1.log")).unwrap();
    let text = String::from_utf8_lossy(&log);
    assert!(text.contains("INFO"), "{text}");
    assert!(
        !log.contains(&0x1b),
        "colour codes in the node's log:\n{text}"
    );
    assert!(!text.contains("ERROR"), "{text}");
    assert!(!up.err().contains('\u{1b}'), "{}", up.err());
}

/// `ingest --data` on the data directory of an `up` whose store is not in
/// it (`--postgres-url`) refuses, naming the command to run instead.
#[test]
fn ingest_into_an_up_dir_without_its_store_refuses_with_the_url() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // The layout `up --postgres-url` leaves: store/ empty, gateway.toml.
    std::fs::create_dir_all(data.join("store")).unwrap();
    std::fs::create_dir_all(data.join("logs")).unwrap();
    std::fs::write(
        data.join("gateway.toml"),
        "[listen]\naddr = \"127.0.0.1:18080\"\n",
    )
    .unwrap();
    let doc = dir.path().join("a.txt");
    std::fs::write(&doc, "A short document about tea.").unwrap();
    let mut cmd = ragfleet();
    cmd.args(["ingest", "--quiet", "--data"])
        .arg(&data)
        .arg(&doc);
    let (status, out, err, _) = run(cmd, Duration::from_secs(60));
    assert!(!status.success(), "{out}\n{err}");
    assert!(
        err.contains("ragfleet ingest --url http://127.0.0.1:18080"),
        "{err}"
    );
    assert!(!data.join("ragfleet.db").exists());
}

/// POST a JSON document of `size` bytes over a raw connection, sending the
/// whole body whatever the server does, then read the answer: the status
/// and body, or the error that cut it.
/// The admin key `up` wrote into its data directory (auth is on by default).
fn admin_key(data: &Path) -> String {
    std::fs::read_to_string(data.join("admin.key"))
        .expect("up wrote admin.key")
        .trim()
        .to_string()
}

/// A client that sends the cluster's admin key.
fn admin_client(data: &Path) -> reqwest::blocking::Client {
    let mut h = reqwest::header::HeaderMap::new();
    h.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {}", admin_key(data)).parse().unwrap(),
    );
    reqwest::blocking::Client::builder()
        .default_headers(h)
        .build()
        .unwrap()
}

fn post_raw(base: &str, size: usize, key: &str) -> Result<(u16, String), String> {
    let addr: SocketAddr = base.trim_start_matches("http://").parse().unwrap();
    let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    // A small document padded with JSON whitespace to `size` bytes: as
    // large as asked on the wire, cheap to store.
    let doc = r#"{"title":"big","text":"A small document in a big body."}"#;
    let mut body = Vec::with_capacity(size);
    body.extend_from_slice(doc.as_bytes());
    body.resize(size, b' ');
    write!(
        s,
        "POST /api/v1/documents HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\ncontent-length: {size}\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    // A write error is what a client that reads no early answer sees; go
    // on to read what the server said anyway.
    let _ = s.write_all(&body);
    let mut resp = Vec::new();
    if let Err(e) = s.read_to_end(&mut resp) {
        if resp.is_empty() {
            return Err(format!("reading the answer: {e}"));
        }
    }
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status line in {text:?}"))?;
    Ok((status, text))
}

/// `up --max-body SIZE`: the gateway and the node have that limit; a body
/// just over it gets a readable 413 naming `listen.max_body_size` (every
/// time, not a broken pipe), the node's own 413 names
/// `limits.max_body_bytes`, a body under it is stored.
#[test]
fn up_max_body_sets_one_limit_with_a_413_that_names_it() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let limit: usize = 3 << 20;
    let up = Up::start(dir.path(), &["--max-body", "3MiB"]);
    let node = node_url(&up.data);
    let http = admin_client(&up.data);
    let key = admin_key(&up.data);
    let info: Value = http
        .get(format!("{node}/api/v1/info"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(info["limits"]["max_body_bytes"], json!(limit), "{info}");

    for i in 0..5 {
        match post_raw(&up.gw, limit + 1, &key) {
            Ok((413, text)) => {
                assert!(
                    text.contains("listen.max_body_size") && text.contains(&limit.to_string()),
                    "{text}"
                );
            }
            other => panic!("attempt {i}: {other:?}\n{}", up.err()),
        }
    }
    // The same with reqwest (hyper's client), as the CLI sends it.
    let r = http
        .post(format!("{}/api/v1/documents", up.gw))
        .header("content-type", "application/json")
        .body(vec![b' '; limit + 1])
        .send()
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(r.status(), 413);
    assert!(r.text().unwrap().contains("listen.max_body_size"));

    // The node alone, over its limit: its 413 names its key.
    let (s, text) = post_raw(&node, limit + 1, &key).unwrap();
    assert_eq!(s, 413, "{text}");
    assert!(text.contains("limits.max_body_bytes"), "{text}");

    // Just under the limit: stored through the gateway.
    let (s, text) = post_raw(&up.gw, limit - 1024, &key).unwrap();
    assert_eq!(s, 201, "{text}");
}

/// `up --gateway-config FILE`: the user's settings are in the gateway the
/// cluster runs (and its body limit is the nodes' too), the generated pool
/// of nodes stays; a second start keeps them; a `--max-body` that disagrees
/// with the file is refused.
#[test]
fn up_gateway_config_is_merged_with_the_generated_pool() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let user = dir.path().join("my-gateway.toml");
    let user_text = r#"
[listen]
max_body_size = "2MiB"
keepalive_timeout = "7s"

[pool.nodes.timeouts]
response_headers = "600s"

[[route]]
prefix = "/elsewhere/"
pool = "other"

[pool.other]
servers = [{ addr = "127.0.0.1:9" }]
"#;
    std::fs::write(&user, user_text).unwrap();
    let user_arg = user.display().to_string();
    for round in 0..2 {
        let mut up = Up::start(dir.path(), &["--gateway-config", &user_arg]);
        let gw_toml = std::fs::read_to_string(up.data.join("gateway.toml")).unwrap();
        assert!(
            gw_toml.contains("600s") && gw_toml.contains("7s"),
            "{gw_toml}"
        );
        let node = node_url(&up.data);
        assert!(node.starts_with("http://127.0.0.1:"), "{gw_toml}");
        let http = admin_client(&up.data);
        // Through the gateway: the page's API answers from our node.
        let r = http.get(format!("{}/api/v1/info", up.gw)).send().unwrap();
        assert_eq!(r.status(), 200, "round {round}");
        let info: Value = r.json().unwrap();
        assert_eq!(info["limits"]["max_body_bytes"], json!(2 << 20), "{info}");
        // The user's route is there (its server does not answer: 502/503).
        let r = http.get(format!("{}/elsewhere/x", up.gw)).send().unwrap();
        assert!(r.status().is_server_error(), "{}", r.status());
        let (s, text) = post_raw(&up.gw, (2 << 20) + 1, &admin_key(&up.data)).unwrap();
        assert_eq!(s, 413, "{text}");
        assert!(text.contains(&(2u64 << 20).to_string()), "{text}");
        let status = up.stop();
        assert!(status.success(), "{status}: {}", up.err());
        assert_eq!(std::fs::read_to_string(&user).unwrap(), user_text);
    }

    let mut cmd = ragfleet();
    cmd.args([
        "up",
        "--nodes",
        "1",
        "--max-body",
        "1MiB",
        "--gateway-config",
    ])
    .arg(&user)
    .arg("--listen")
    .arg(format!("127.0.0.1:{}", free_port()))
    .arg("--data")
    .arg(dir.path().join("c"));
    let (status, out, err, took) = run(cmd, Duration::from_secs(60));
    assert!(!status.success(), "{out}\n{err}");
    assert!(took < Duration::from_secs(20), "{took:?}");
    assert!(
        err.contains("--max-body") && err.contains("listen.max_body_size"),
        "{err}"
    );
}
