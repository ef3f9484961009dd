//! The gateway's log under what any client can send at will: a warning a
//! client can trigger per connection must not reach the default log.
use std::io::Read;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ragfleet");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A TLS client that names the server by IP address in SNI (as wrk and
/// some load balancers' probes do) makes rustls warn "Illegal SNI
/// extension" once per handshake; at the default log level the gateway
/// shows none of it, counts every handshake, and still serves the client.
#[test]
fn sni_by_ip_address_is_not_a_warning_per_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .expect("openssl (scripts/setup.sh installs it)");
    assert!(made.success());
    let port = free_port();
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        format!(
            "[listen]\naddr = \"127.0.0.1:{port}\"\n\n[[tls.certificate]]\ncert = {:?}\nkey = {:?}\n\n\
             [pool.nodes]\nservers = [{{ addr = \"127.0.0.1:9\" }}]\n\n[[route]]\nprefix = \"/\"\npool = \"nodes\"\n",
            cert.display().to_string(),
            key.display().to_string()
        ),
    )
    .unwrap();
    let mut gw = Command::new(BIN)
        .args(["gateway", "--config"])
        .arg(&cfg)
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "gateway never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    let handshakes = 5;
    for _ in 0..handshakes {
        let out = Command::new("openssl")
            .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
            .args(["-servername", "127.0.0.1"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("CN=localhost") || text.contains("CN = localhost"),
            "{text}"
        );
    }
    let _ = Command::new("kill").arg(gw.id().to_string()).status();
    let _ = gw.wait();
    let mut log = String::new();
    gw.stderr.take().unwrap().read_to_string(&mut log).unwrap();
    assert!(
        !log.contains("Illegal SNI"),
        "a client-triggered rustls warning reached the default log:\n{log}"
    );
}
