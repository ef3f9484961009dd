//! End to end with the real binary: `ragfleet ingest --data DIR` writes a
//! data directory without a node, `ragfleet node` serves it, `ragfleet ask`
//! gets a cited answer from it; bad input gives a message naming the file and
//! a non-zero exit.
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

/// The binary with a clean environment for the variables it reads.
fn ragfleet() -> Command {
    let mut c = Command::new(BIN);
    for v in [
        "RAGFLEET_URL",
        "RAGFLEET_CONFIG",
        "RAGFLEET_LISTEN",
        "RAGFLEET_DATA",
        "RAGFLEET_GENERATOR",
        "RAGFLEET_API_KEY",
    ] {
        c.env_remove(v);
    }
    c.env("RAGFLEET_MODELS", models_dir());
    c
}

fn write_fixtures(dir: &Path) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir.join("more")).unwrap();
    let bees = dir.join("bees.md");
    std::fs::write(
        &bees,
        "# Honey bees\n\nHoney bees communicate the direction and distance of flowers \
         with the waggle dance. A forager returning to the hive dances on the comb; \
         the angle of the waggle run against vertical gives the direction of the food \
         relative to the sun.\n",
    )
    .unwrap();
    let paris = dir.join("more/paris.txt");
    std::fs::write(
        &paris,
        "The Louvre in Paris is the most visited art museum in the world. It holds the \
         Mona Lisa, painted by Leonardo da Vinci, behind glass in the Salle des États.\n",
    )
    .unwrap();
    let lines = dir.join("more/notes.jsonl");
    std::fs::write(
        &lines,
        concat!(
            r#"{"id":"volcano","title":"Volcanoes","text":"Mount Etna on Sicily is the most active volcano in Europe."}"#,
            "\n",
            r#"{"id":"glacier","title":"Glaciers","text":"The Aletsch Glacier is the largest glacier in the Alps."}"#,
            "\n"
        ),
    )
    .unwrap();
    vec![bees, dir.join("more")]
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

#[test]
fn ingest_direct_then_node_serves_and_ask_cites() {
    let tmp = tempfile::tempdir().unwrap();
    let docs = tmp.path().join("docs");
    let data = tmp.path().join("data");
    let paths = write_fixtures(&docs);
    // Only the embedder: no generator model is loaded by the node either.
    let config = tmp.path().join("node.toml");
    std::fs::write(&config, "[local]\nenabled = false\n").unwrap();

    let out = ragfleet()
        .args(["ingest", "--quiet", "--data"])
        .arg(&data)
        .arg("--config")
        .arg(&config)
        .args(&paths)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ingest failed:\n{stdout}\n{stderr}");
    // 3 files, 4 documents (the JSON Lines file holds two), all new.
    assert!(
        stdout.contains("3 files: 4 documents (4 new, 0 replaced, 0 unchanged)"),
        "{stdout}"
    );

    // Ingesting the same files again changes nothing.
    let again = ragfleet()
        .args(["ingest", "--quiet", "--data"])
        .arg(&data)
        .arg("--config")
        .arg(&config)
        .args(&paths)
        .output()
        .unwrap();
    let again_out = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success(), "{again_out}");
    assert!(
        again_out.contains("4 documents (0 new, 0 replaced, 4 unchanged)"),
        "{again_out}"
    );

    let node = start_node(&data, &config);
    let out = ragfleet()
        // The node wrote its admin key there; ask reads it from $RAGFLEET_DATA.
        .env("RAGFLEET_DATA", &data)
        .args([
            "ask",
            "--url",
            &node.base,
            "How do honey bees tell each other where flowers are?",
        ])
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ask failed: {answer}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(answer.to_lowercase().contains("waggle"), "{answer}");
    let sources = answer
        .split("\nSources:\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no citations in:\n{answer}"));
    assert!(sources.contains("[1] Honey bees"), "{answer}");

    // The JSON Lines documents kept their ids and are searchable too.
    let out = ragfleet()
        // The node wrote its admin key there; ask reads it from $RAGFLEET_DATA.
        .env("RAGFLEET_DATA", &data)
        .args([
            "ask",
            "--json",
            "--url",
            &node.base,
            "Which volcano is the most active in Europe?",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let events = String::from_utf8_lossy(&out.stdout);
    let done: serde_json::Value = events
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "done")
        .unwrap_or_else(|| panic!("no done event in {events}"));
    let cited: Vec<&str> = done["data"]["citations"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["doc_id"].as_str())
        .collect();
    assert!(cited.contains(&"volcano"), "{done}");
}

#[test]
fn ingest_direct_bad_input_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let config = tmp.path().join("node.toml");
    std::fs::write(&config, "[local]\nenabled = false\n").unwrap();

    // A path that does not exist: refused before anything is opened.
    let missing = tmp.path().join("no-such-file.md");
    let out = ragfleet()
        .args(["ingest", "--quiet", "--data"])
        .arg(&data)
        .arg("--config")
        .arg(&config)
        .arg(&missing)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no-such-file.md"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    // An unsupported type next to a good file: the good one is ingested, the
    // bad one listed with its name and the reason, and the exit is non-zero.
    let good = tmp.path().join("good.txt");
    std::fs::write(&good, "Saturn has the most moons of any planet.\n").unwrap();
    let bad = tmp.path().join("picture.xyz");
    std::fs::write(&bad, [0u8, 1, 2, 3]).unwrap();
    let out = ragfleet()
        .args(["ingest", "--quiet", "--data"])
        .arg(&data)
        .arg("--config")
        .arg(&config)
        .arg(&good)
        .arg(&bad)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("2 files: 1 documents (1 new"), "{stdout}");
    let failure = stdout
        .lines()
        .find(|l| l.contains("picture.xyz"))
        .unwrap_or_else(|| panic!("the bad file is not named:\n{stdout}"));
    assert!(failure.contains(".xyz"), "{failure}");
    assert!(stderr.contains("1 failures"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    // --url and --data together are refused with a clear message.
    let out = ragfleet()
        .args(["ingest", "--url", "http://127.0.0.1:1", "--data"])
        .arg(&data)
        .arg(&good)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--url"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `ragfleet admin` directly on a data directory (no node), then against
/// the node serving it with the admin key read from `$RAGFLEET_DATA`;
/// `ask` with a user's key until it is revoked.
#[test]
fn admin_cli_on_a_data_dir_and_on_a_running_node() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let config = tmp.path().join("node.toml");
    std::fs::write(&config, "[local]\nenabled = false\n").unwrap();
    let json = |out: &std::process::Output| -> serde_json::Value {
        assert!(
            out.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let out = ragfleet()
        .current_dir(tmp.path())
        .args(["admin", "--data"])
        .arg(&data)
        .args([
            "user",
            "add",
            "alice",
            "--role",
            "reader",
            "--collection",
            "docs",
        ])
        .output()
        .unwrap();
    let user = json(&out);
    assert_eq!(user["name"], "alice");
    assert_eq!(user["grants"], serde_json::json!(["docs"]));
    // The new store got its admin key, private.
    let key_file = data.join("admin.key");
    let admin_key = std::fs::read_to_string(&key_file).unwrap();
    assert!(admin_key.starts_with("rf_"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let out = ragfleet()
        .args(["admin", "--data"])
        .arg(&data)
        .args(["key", "create", "--user", "alice", "--role", "reader"])
        .args(["--collection", "docs", "--expires", "30d"])
        .output()
        .unwrap();
    let created = json(&out);
    let alice_key = created["key"].as_str().unwrap().to_string();
    let key_id = created["record"]["id"].as_str().unwrap().to_string();
    assert!(created["record"]["expires_at"].is_string(), "{created}");
    // A key wider than its owner is refused with a message.
    let out = ragfleet()
        .args(["admin", "--data"])
        .arg(&data)
        .args(["key", "create", "--user", "alice", "--role", "admin"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("owner's role"));

    let node = start_node(&data, &config);
    // Against the node, with the admin key from $RAGFLEET_DATA/admin.key.
    let out = ragfleet()
        .env("RAGFLEET_DATA", &data)
        .args([
            "admin", "--url", &node.base, "key", "list", "--user", "alice",
        ])
        .output()
        .unwrap();
    let listed = json(&out);
    assert_eq!(listed["keys"][0]["id"], key_id.as_str());
    assert!(!listed.to_string().contains(&alice_key));
    let out = ragfleet()
        .env("RAGFLEET_DATA", &data)
        .args(["admin", "--url", &node.base, "grant", "alice", "faq"])
        .output()
        .unwrap();
    assert_eq!(json(&out)["grants"], serde_json::json!(["docs", "faq"]));
    // ask with alice's key works; without a key it is refused (cwd has no data/).
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let ask = |key: Option<&str>| {
        let mut c = ragfleet();
        c.current_dir(&elsewhere)
            .args(["ask", "--url", &node.base, "hello?"]);
        if let Some(k) = key {
            c.env("RAGFLEET_API_KEY", k);
        }
        c.output().unwrap()
    };
    let out = ask(Some(&alice_key));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = ask(None);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Revoked over HTTP: refused from then on.
    let out = ragfleet()
        .env("RAGFLEET_DATA", &data)
        .args(["admin", "--url", &node.base, "key", "revoke", &key_id])
        .output()
        .unwrap();
    json(&out);
    let out = ask(Some(&alice_key));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("revoked"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The bootstrap admin gets a password for the page's login.
    let passwd = |password: &str| {
        use std::io::Write;
        let mut child = ragfleet()
            .env("RAGFLEET_DATA", &data)
            .args(["admin", "--url", &node.base, "user", "passwd", "admin"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
        child.wait_with_output().unwrap()
    };
    let out = passwd("short");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 8 characters"));
    json(&passwd("a long admin password"));
    let login = |password: &str| {
        reqwest::blocking::Client::new()
            .post(format!("{}/api/v1/auth/login", node.base))
            .json(&serde_json::json!({"user": "admin", "password": password}))
            .send()
            .unwrap()
    };
    let ok = login("a long admin password");
    assert_eq!(ok.status(), 200);
    assert!(ok.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .starts_with("ragfleet_session="));
    assert_eq!(login("not the password").status(), 401);
}
