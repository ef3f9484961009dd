//! `ragfleet up`: the whole cluster on one machine — N `ragfleet node`
//! processes and one `ragfleet gateway` in front of them, all children of
//! this process (the same executable).
//!
//! Layout under `--data DIR`: `node-1/` … (each node's own indexes),
//! `store/ragfleet.db` (the shared embedded SQLite store, unless
//! `--postgres-url`), `gateway.toml` (generated), `logs/` (one file per
//! process). The first node starts alone (it creates the store), then the
//! others, then the gateway; `up` waits until every node's `/ready` and the
//! gateway answer, then prints the URLs.
//!
//! A child that exits on its own is reported (with the end of its log) and
//! restarted after a back-off (1 s, doubling to 30 s); five quick failures
//! in a row (each within 10 s of its start) stop the cluster with an error.
//! `--no-restart` stops the cluster at the first unexpected exit instead.
//! SIGINT/SIGTERM: every child gets SIGTERM (nodes drain, the gateway lets
//! streams finish), and SIGKILL after `--stop-timeout`.
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ragfleet_node::GeneratorKind;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Address the gateway listens on (the page and the API); default
    /// 127.0.0.1:8080, or `listen.addr` of --gateway-config.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Largest request body, for the gateway (`listen.max_body_size`) and
    /// the nodes (`limits.max_body_bytes`) together: bytes, or e.g. "64MiB",
    /// "1GiB". Default: `listen.max_body_size` of --gateway-config, else 64MiB.
    #[arg(long, value_parser = crate::node::parse_body_size)]
    pub max_body: Option<usize>,
    /// Your gateway settings (TOML, docs/gateway.md), merged with the
    /// generated pool of nodes: your keys win, except the nodes' server list
    /// (or etcd discovery) and the `/` route to them.
    #[arg(long)]
    pub gateway_config: Option<PathBuf>,
    /// Data directory (node-N/ indexes, store/, logs/, gateway.toml).
    #[arg(long, default_value = "data")]
    pub data: PathBuf,
    /// Models directory (all-minilm-l6-v2/, smollm2/).
    #[arg(long, env = "RAGFLEET_MODELS")]
    pub models: Option<PathBuf>,
    /// Default generator of the nodes: local, openai or extractive.
    #[arg(long)]
    pub generator: Option<GeneratorKind>,
    /// GGUF model file of the nodes' `local` generator (llama, qwen2, qwen3,
    /// gemma3, phi3); see `ragfleet node --llm-model`.
    #[arg(long, value_name = "FILE.gguf")]
    pub llm_model: Option<PathBuf>,
    /// Node config file (TOML) given to every node; flags of `up` win.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Base URL of an OpenAI-compatible server (the `openai` generator).
    #[arg(long)]
    pub openai_base_url: Option<String>,
    /// Model name for the OpenAI-compatible server.
    #[arg(long)]
    pub openai_model: Option<String>,
    /// Generations each node runs at once.
    #[arg(long)]
    pub max_concurrent_generations: Option<usize>,
    /// PostgreSQL URL: the shared store (default: one embedded SQLite file).
    #[arg(long)]
    pub postgres_url: Option<String>,
    /// Redis URL: conversation memory and resumable streams across nodes.
    #[arg(long)]
    pub redis_url: Option<String>,
    /// etcd client URL(s): the nodes register there (repeat or comma-separate)
    /// and the gateway finds them there instead of a static list.
    #[arg(long, value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// First node port (the nodes take consecutive ports); default: free ports.
    #[arg(long)]
    pub node_port: Option<u16>,
    /// Do not restart a child that exits unexpectedly: stop the cluster.
    #[arg(long)]
    pub no_restart: bool,
    /// Seconds the children get to stop after SIGTERM before SIGKILL.
    #[arg(long, default_value_t = 30)]
    pub stop_timeout: u64,
    /// Seconds to wait for the cluster to become ready.
    #[arg(long, default_value_t = 300)]
    pub ready_timeout: u64,
    /// Run the nodes without authentication (every request is the
    /// `anonymous` admin). For experiments only.
    #[arg(long)]
    pub no_auth: bool,
}

/// One child process and how to start it again.
struct Child {
    name: String,
    args: Vec<OsString>,
    log: PathBuf,
    /// `http://host:port` of the process itself.
    base: String,
    /// Path that answers 2xx when it is ready.
    ready_path: &'static str,
    proc: Option<tokio::process::Child>,
    started: Instant,
    quick_failures: u32,
    restart_at: Option<Instant>,
}

impl Child {
    fn spawn(&mut self, exe: &Path) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let err = log.try_clone()?;
        let mut cmd = tokio::process::Command::new(exe);
        cmd.args(&self.args)
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(err)
            .kill_on_drop(false);
        #[cfg(unix)]
        {
            // Own process group: a Ctrl-C in the terminal reaches `up` only,
            // which stops the children in order. If `up` dies, the kernel
            // sends them SIGTERM (Linux).
            cmd.process_group(0);
            #[cfg(target_os = "linux")]
            // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                    Ok(())
                });
            }
        }
        let proc = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.name))?;
        self.proc = Some(proc);
        self.started = Instant::now();
        self.restart_at = None;
        Ok(())
    }

    fn pid(&self) -> Option<u32> {
        self.proc.as_ref().and_then(|p| p.id())
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        let p = self.proc.as_mut()?;
        match p.try_wait() {
            Ok(Some(s)) => {
                self.proc = None;
                Some(s)
            }
            _ => None,
        }
    }
}

fn signal(pid: u32, sig: i32) {
    #[cfg(unix)]
    // SAFETY: kill(2) with a pid we started and have not reaped yet.
    unsafe {
        libc::kill(pid as i32, sig);
    }
    #[cfg(not(unix))]
    let _ = (pid, sig);
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The default body limit of `up`, for the gateway and the nodes alike.
pub const DEFAULT_MAX_BODY: usize = 64 << 20;

/// Refuse a port another process holds, before anything starts: the
/// child would fail to bind, and a readiness probe could reach the other
/// process instead.
fn check_port_free(addr: SocketAddr, what: &str, flag: &str) -> anyhow::Result<()> {
    match std::net::TcpListener::bind(addr) {
        Ok(l) => {
            drop(l);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => bail!(
            "port {} ({what}, {addr}) is already in use by another process \
             (another `ragfleet up` or gateway?): stop it, or choose another port with {flag}",
            addr.port()
        ),
        Err(e) => bail!("cannot listen on {addr} ({what}): {e}"),
    }
}

/// `listen.max_body_size` of a gateway file, if set (an integer or a size
/// string such as "64MiB").
fn toml_size(v: &toml::Value) -> anyhow::Result<u64> {
    match v {
        toml::Value::Integer(n) => {
            u64::try_from(*n).map_err(|_| anyhow::anyhow!("negative size {n}"))
        }
        toml::Value::String(s) => {
            ragfleet_gateway::config::parse_size(s).map_err(|e| anyhow::anyhow!(e))
        }
        other => bail!("a size must be an integer or a string such as \"64MiB\", not {other}"),
    }
}

/// The user's gateway file (`--gateway-config`) over the generated
/// configuration: the user's keys win, table by table, except the nodes'
/// server list or discovery (`pool.nodes.servers`, `pool.nodes.discovery`)
/// and the `/` route to them, which are `up`'s. Other routes and pools of
/// the user are kept.
pub fn merge_gateway_config(generated: &str, user: &toml::Table) -> anyhow::Result<String> {
    let mut out: toml::Table = generated
        .parse()
        .context("parsing the generated gateway configuration")?;
    let gen_pool = out
        .get("pool")
        .and_then(|p| p.get("nodes"))
        .and_then(|n| n.as_table())
        .cloned()
        .unwrap_or_default();
    let gen_routes = out.remove("route");
    merge_tables(&mut out, user.clone());
    if let Some(pool) = out
        .get_mut("pool")
        .and_then(|p| p.as_table_mut())
        .and_then(|p| p.get_mut("nodes"))
        .and_then(|n| n.as_table_mut())
    {
        for key in ["servers", "discovery"] {
            match gen_pool.get(key) {
                Some(v) => pool.insert(key.into(), v.clone()),
                None => pool.remove(key),
            };
        }
    }
    let mut routes = match out.remove("route") {
        Some(toml::Value::Array(a)) => a,
        Some(_) => bail!("`route` must be an array of tables ([[route]])"),
        None => Vec::new(),
    };
    routes.retain(|r| r.get("prefix").and_then(|p| p.as_str()) != Some("/"));
    if let Some(toml::Value::Array(g)) = gen_routes {
        routes.extend(g);
    }
    out.insert("route".into(), toml::Value::Array(routes));
    toml::to_string(&out).context("writing the merged gateway configuration")
}

fn merge_tables(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge_tables(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// The gateway's configuration file for `up`, written to `path`: the
/// generated one, merged with `--gateway-config` when given. Returns the
/// address the gateway listens on and the body limit (gateway and nodes).
fn write_gateway_config(
    args: &Args,
    nodes: &[SocketAddr],
    path: &Path,
) -> anyhow::Result<(SocketAddr, usize)> {
    let mut user = match &args.gateway_config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading --gateway-config {}", p.display()))?;
            let t: toml::Table = text
                .parse()
                .with_context(|| format!("--gateway-config {}", p.display()))?;
            Some(t)
        }
        None => None,
    };
    let user_listen = user
        .as_mut()
        .and_then(|u| u.get_mut("listen"))
        .and_then(|l| l.as_table_mut());
    let mut file_addr = None;
    let mut file_max = None;
    if let Some(l) = user_listen {
        if args.listen.is_some() {
            // --listen wins over the file, as with `ragfleet gateway`.
            l.remove("addr");
        } else if let Some(a) = l.get("addr") {
            let a = a.as_str().and_then(|a| a.parse::<SocketAddr>().ok());
            file_addr =
                Some(a.context("--gateway-config: listen.addr must be a string \"host:port\"")?);
        }
        if let Some(v) = l.get("max_body_size") {
            let n = toml_size(v).context("--gateway-config: listen.max_body_size")?;
            file_max = Some(usize::try_from(n).unwrap_or(usize::MAX));
        }
    }
    let max_body = match (args.max_body, file_max) {
        (Some(a), Some(f)) if a != f => bail!(
            "--max-body {a} and listen.max_body_size = {f} of --gateway-config disagree: \
             give the limit in one place"
        ),
        (Some(a), _) => a,
        (None, Some(f)) => f,
        (None, None) => DEFAULT_MAX_BODY,
    };
    if max_body < 1024 {
        bail!("the body limit must be at least 1024 bytes (the nodes' minimum), not {max_body}");
    }
    let listen = args
        .listen
        .or(file_addr)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
    let generated = gateway_toml(listen, nodes, args.stop_timeout, &args.etcd, max_body);
    let text = match (&user, &args.gateway_config) {
        (Some(u), Some(p)) => format!(
            "# Written by `ragfleet up` at every start: {} merged with the generated pool\n\
             # of nodes. Edit that file, not this one.\n{}",
            p.display(),
            merge_gateway_config(&generated, u)?
        ),
        _ => generated,
    };
    std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
    let cfg =
        ragfleet_gateway::config::Config::load(path).map_err(|e| match &args.gateway_config {
            Some(p) => anyhow::anyhow!(
                "the gateway configuration merged from {} is invalid: {e}",
                p.display()
            ),
            None => anyhow::anyhow!("the generated gateway configuration is invalid: {e}"),
        })?;
    if cfg.tls.is_some() {
        bail!("--gateway-config with [tls] is not supported by `up` (its readiness probe speaks plain HTTP)");
    }
    Ok((cfg.listen.addr, max_body))
}

/// The gateway's configuration: every node in one p2c pool behind `/`,
/// checked actively on `/ready` (a draining or catching-up node leaves the
/// rotation within a second) and passively. With etcd the pool has no
/// static list: it follows the nodes' registrations under the default
/// prefix (`/ragfleet/nodes/`), so a node that drains leaves it at once.
pub fn gateway_toml(
    listen: SocketAddr,
    nodes: &[SocketAddr],
    stop_timeout: u64,
    etcd: &[String],
    max_body: usize,
) -> String {
    let servers: Vec<String> = if etcd.is_empty() {
        nodes
            .iter()
            .map(|a| format!("  {{ addr = \"{a}\" }},"))
            .collect()
    } else {
        Vec::new()
    };
    let discovery = if etcd.is_empty() {
        String::new()
    } else {
        let endpoints: Vec<String> = etcd.iter().map(|u| format!("{u:?}")).collect();
        format!(
            "\n# The nodes register in etcd (lease + keep-alive) once ready.\n\
             [pool.nodes.discovery.etcd]\nendpoints = [{}]\nprefix = \"/ragfleet/nodes/\"\n",
            endpoints.join(", ")
        )
    };
    format!(
        r#"# Written by `ragfleet up`; regenerated at every start (keep your own
# settings in a file given with --gateway-config).
[listen]
addr = "{listen}"
shutdown_timeout = "{stop}s"
max_body_size = {max_body}

[[route]]
prefix = "/"
pool = "nodes"

[pool.nodes]
policy = "p2c"
max_fails = 1
fail_timeout = "3s"
servers = [
{servers}
]
{discovery}
[pool.nodes.health]
path = "/ready"
interval = "1s"
timeout = "1s"
rise = 1
fall = 1

# A chat in flight on a node that dies is asked again on another node
# (before any byte of the answer went out): nodes are interchangeable.
[pool.nodes.retries]
non_idempotent = true

[pool.nodes.timeouts]
connect = "1s"
response_headers = "120s"
body_idle = "120s"
"#,
        stop = stop_timeout.saturating_sub(2).max(1),
        servers = servers.join("\n"),
    )
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.nodes == 0 || args.nodes > 64 {
        bail!("--nodes must be between 1 and 64, not {}", args.nodes);
    }
    if let Some(u) = &args.postgres_url {
        if !(u.starts_with("postgres://") || u.starts_with("postgresql://")) {
            bail!("--postgres-url must start with postgres:// or postgresql://, not {u:?}");
        }
    }
    // Single-threaded: the children are forked from this thread, which lives
    // as long as they should (PR_SET_PDEATHSIG follows the forking thread).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(up(args))
}

async fn up(args: Args) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating the ragfleet executable")?;
    let data = &args.data;
    for d in ["logs", "store"] {
        std::fs::create_dir_all(data.join(d))
            .with_context(|| format!("creating {}", data.join(d).display()))?;
    }
    let store_url = match &args.postgres_url {
        Some(u) => u.clone(),
        None => {
            let db = std::path::absolute(data.join("store").join("ragfleet.db"))
                .context("resolving the data directory")?;
            format!("sqlite://{}", db.display())
        }
    };

    if args.no_auth {
        eprintln!("ragfleet up: WARNING: --no-auth: the cluster is OPEN; anyone who reaches it is an admin");
    } else {
        // The admin key, once, before any node starts; the nodes find the
        // admin in the shared store and create none.
        let cfg = ragfleet_rag::StoreConfig {
            url: Some(store_url.clone()),
            ..Default::default()
        };
        let store = ragfleet_rag::store::open(&cfg, data)
            .await
            .with_context(|| {
                format!(
                    "opening the store {}",
                    ragfleet_rag::store::redact_url(&store_url)
                )
            })?;
        ragfleet_node::auth::bootstrap(store.as_ref(), data)
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
    }

    let mut node_addrs = Vec::new();
    for i in 0..args.nodes {
        let port = match args.node_port {
            Some(p) => p
                .checked_add(i as u16)
                .context("--node-port + --nodes overflows")?,
            None => free_port()?,
        };
        node_addrs.push(SocketAddr::from(([127, 0, 0, 1], port)));
    }

    let gw_path = data.join("gateway.toml");
    let (gw_addr, max_body) = write_gateway_config(&args, &node_addrs, &gw_path)?;
    // Every port free before anything starts: a bind error stops `up` here,
    // naming the port, instead of a child crash-looping on it.
    check_port_free(gw_addr, "the gateway", "--listen")?;
    for (i, addr) in node_addrs.iter().enumerate() {
        check_port_free(addr.to_owned(), &format!("node-{}", i + 1), "--node-port")?;
    }

    let mut children: Vec<Child> = Vec::new();
    for (i, addr) in node_addrs.iter().enumerate() {
        let name = format!("node-{}", i + 1);
        let mut a: Vec<OsString> = vec!["node".into()];
        let mut push = |k: &str, v: OsString| {
            a.push(k.into());
            a.push(v);
        };
        push("--listen", addr.to_string().into());
        push("--data", data.join(&name).into_os_string());
        push("--node-id", name.clone().into());
        push("--store-url", store_url.clone().into());
        push(
            "--drain-timeout-ms",
            (args.stop_timeout.saturating_sub(2).max(1) * 1000)
                .to_string()
                .into(),
        );
        push("--max-body-bytes", max_body.to_string().into());
        if let Some(v) = &args.config {
            push("--config", v.clone().into_os_string());
        }
        if let Some(v) = &args.models {
            push("--models", v.clone().into_os_string());
        }
        if let Some(v) = args.generator {
            push("--generator", v.name().into());
        }
        if let Some(v) = &args.llm_model {
            push(
                "--llm-model",
                crate::node::llm_model_path(v).into_os_string(),
            );
        }
        if let Some(v) = &args.openai_base_url {
            push("--openai-base-url", v.into());
        }
        if let Some(v) = &args.openai_model {
            push("--openai-model", v.into());
        }
        if let Some(v) = args.max_concurrent_generations {
            push("--max-concurrent-generations", v.to_string().into());
        }
        if let Some(v) = &args.redis_url {
            push("--redis-url", v.into());
        }
        if !args.etcd.is_empty() {
            push("--etcd", args.etcd.join(",").into());
        }
        // The gateway reaches the nodes over loopback: its X-Forwarded-For
        // names the client (login throttling, audit records).
        push("--trusted-proxies", "127.0.0.1,::1".into());
        if args.no_auth {
            a.push("--no-auth".into());
        }
        children.push(Child {
            log: data.join("logs").join(format!("{name}.log")),
            name,
            args: a,
            base: format!("http://{addr}"),
            ready_path: "/ready",
            proc: None,
            started: Instant::now(),
            quick_failures: 0,
            restart_at: None,
        });
    }
    children.push(Child {
        name: "gateway".into(),
        args: vec![
            "gateway".into(),
            "--config".into(),
            gw_path.clone().into_os_string(),
        ],
        log: data.join("logs").join("gateway.log"),
        base: format!("http://{gw_addr}"),
        ready_path: "/ready",
        proc: None,
        started: Instant::now(),
        quick_failures: 0,
        restart_at: None,
    });

    let shutdown = ragfleet_node::shutdown_signal();
    tokio::pin!(shutdown);
    let result = tokio::select! {
        r = start_all(&exe, &mut children, &args, gw_addr) => r,
        _ = &mut shutdown => Err(anyhow::anyhow!("interrupted while starting")),
    };
    let result = match result {
        Ok(()) => {
            print_urls(gw_addr, &node_addrs, data, args.no_auth);
            supervise(&exe, &mut children, &args, &mut shutdown).await
        }
        Err(e) => Err(e),
    };
    eprintln!("ragfleet up: stopping {} processes", children.len());
    stop_all(&mut children, Duration::from_secs(args.stop_timeout)).await;
    eprintln!("ragfleet up: stopped");
    result
}

async fn start_all(
    exe: &Path,
    children: &mut [Child],
    args: &Args,
    gw_addr: SocketAddr,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(args.ready_timeout);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let n = children.len();
    // The first node alone (it creates the shared store), then the others,
    // then the gateway. Each must answer from its own process: a node's
    // `/health` with its pid, the gateway's with the pid of one of our nodes.
    eprintln!(
        "ragfleet up: starting {} (logs in {})",
        children[0].name,
        args.data.join("logs").display()
    );
    children[0].spawn(exe)?;
    wait_ready(&http, &mut children[0], None, deadline).await?;
    for c in children[1..n - 1].iter_mut() {
        eprintln!("ragfleet up: starting {}", c.name);
        c.spawn(exe)?;
    }
    for c in children[1..n - 1].iter_mut() {
        wait_ready(&http, c, None, deadline).await?;
    }
    let node_pids: Vec<u32> = children[..n - 1].iter().filter_map(Child::pid).collect();
    eprintln!("ragfleet up: starting the gateway on {gw_addr}");
    children[n - 1].spawn(exe)?;
    wait_ready(&http, &mut children[n - 1], Some(&node_pids), deadline).await?;
    Ok(())
}

/// Whose `/health` answered: the `pid` of the node behind `base` (the node
/// itself, or one the gateway chose).
async fn health_pid(http: &reqwest::Client, base: &str) -> Option<u32> {
    let r = http.get(format!("{base}/health")).send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    let v: serde_json::Value = r.json().await.ok()?;
    v["pid"].as_u64().and_then(|p| u32::try_from(p).ok())
}

/// Wait until `c` is ready: its `/health` answers from the expected
/// process (`c` itself, or for the gateway one of `via`, the nodes' pids),
/// then its ready path answers 2xx. A child that exits, or an answer from
/// another process, ends the wait at once with an error.
async fn wait_ready(
    http: &reqwest::Client,
    c: &mut Child,
    via: Option<&[u32]>,
    deadline: Instant,
) -> anyhow::Result<()> {
    let url = format!("{}{}", c.base, c.ready_path);
    let mut ours = false;
    loop {
        if let Some(status) = c.exited() {
            bail!(
                "{} exited while starting ({status}); the end of {}:\n{}",
                c.name,
                c.log.display(),
                tail(&c.log, 20)
            );
        }
        if !ours {
            if let Some(pid) = health_pid(http, &c.base).await {
                let expected = match via {
                    Some(pids) => pids.contains(&pid),
                    None => c.pid() == Some(pid),
                };
                // Our child may have died in the meantime: look again first.
                if !expected && c.exited().is_none() {
                    bail!(
                        "{} is not what answers on {}: process {pid} does (another cluster?); \
                         stop it or choose other ports",
                        c.name,
                        c.base
                    );
                }
                ours = expected;
            }
        }
        if ours {
            if let Ok(r) = http.get(&url).send().await {
                if r.status().is_success() {
                    eprintln!("ragfleet up: {} ready", c.name);
                    return Ok(());
                }
            }
        }
        if Instant::now() > deadline {
            bail!(
                "{} was not ready in time ({url}); the end of {}:\n{}",
                c.name,
                c.log.display(),
                tail(&c.log, 20)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn print_urls(gw_addr: SocketAddr, nodes: &[SocketAddr], data: &Path, no_auth: bool) {
    use std::io::Write;
    let gw = format!("http://{gw_addr}");
    let metrics: Vec<String> = nodes
        .iter()
        .map(|a| format!("http://{a}/metrics"))
        .collect();
    let admin = if no_auth {
        String::new()
    } else {
        format!(
            "  admin key {} (ragfleet ask/ingest/admin read it from there)\n",
            data.join("admin.key").display()
        )
    };
    let text = format!(
        "ragfleet up: ready — {} nodes behind the gateway\n  page     {gw}/\n  \
         API      {gw}/api/v1   (docs {gw}/api/v1/docs, OpenAI-compatible {gw}/v1)\n  \
         metrics  {}\n  logs     {}\n{admin}Ctrl-C stops everything.\n",
        nodes.len(),
        metrics.join(" "),
        data.join("logs").display()
    );
    // A closed standard output (`up | head`) must not stop the cluster.
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

async fn supervise(
    exe: &Path,
    children: &mut [Child],
    args: &Args,
    shutdown: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = shutdown.as_mut() => return Ok(()),
            _ = tick.tick() => {}
        }
        for c in children.iter_mut() {
            if let Some(status) = c.exited() {
                let ran = c.started.elapsed();
                eprintln!(
                    "ragfleet up: {} exited unexpectedly ({status}) after {:.1} s; the end of {}:\n{}",
                    c.name,
                    ran.as_secs_f64(),
                    c.log.display(),
                    tail(&c.log, 10)
                );
                if args.no_restart {
                    bail!("{} exited ({status}) and --no-restart is set", c.name);
                }
                if ran < Duration::from_secs(10) {
                    c.quick_failures += 1;
                } else {
                    c.quick_failures = 0;
                }
                if c.quick_failures >= 5 {
                    bail!("{} failed 5 times in a row; giving up", c.name);
                }
                let backoff =
                    Duration::from_secs(1 << c.quick_failures.min(5)).min(Duration::from_secs(30));
                eprintln!(
                    "ragfleet up: restarting {} in {} s",
                    c.name,
                    backoff.as_secs()
                );
                c.restart_at = Some(Instant::now() + backoff);
            }
            if c.proc.is_none() && c.restart_at.is_some_and(|t| Instant::now() >= t) {
                c.spawn(exe)?;
                eprintln!("ragfleet up: {} restarted", c.name);
            }
        }
    }
}

/// SIGTERM to every child, then SIGKILL to those still running after `timeout`.
async fn stop_all(children: &mut [Child], timeout: Duration) {
    #[cfg(unix)]
    let (term, kill) = (libc::SIGTERM, libc::SIGKILL);
    #[cfg(not(unix))]
    let (term, kill) = (15, 9);
    for c in children.iter() {
        if let Some(pid) = c.pid() {
            signal(pid, term);
        }
    }
    let deadline = Instant::now() + timeout;
    for c in children.iter_mut() {
        let Some(p) = c.proc.as_mut() else { continue };
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, p.wait()).await {
            Ok(Ok(status)) if status.success() => {}
            Ok(Ok(status)) => eprintln!("ragfleet up: {} stopped with {status}", c.name),
            Ok(Err(e)) => eprintln!("ragfleet up: waiting for {}: {e}", c.name),
            Err(_) => {
                eprintln!(
                    "ragfleet up: {} did not stop in {} s: SIGKILL",
                    c.name,
                    timeout.as_secs()
                );
                if let Some(pid) = p.id() {
                    signal(pid, kill);
                }
                let _ = p.wait().await;
            }
        }
        c.proc = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_gateway_config_is_valid() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("gw.toml");
        let nodes: Vec<SocketAddr> = vec![
            "127.0.0.1:9001".parse().unwrap(),
            "127.0.0.1:9002".parse().unwrap(),
        ];
        std::fs::write(
            &p,
            gateway_toml("127.0.0.1:8080".parse().unwrap(), &nodes, 30, &[], 1 << 20),
        )
        .unwrap();
        let cfg = ragfleet_gateway::config::Config::load(&p).unwrap();
        let pool = &cfg.pools["nodes"];
        assert_eq!(pool.servers.len(), 2);
        assert_eq!(pool.servers[1].addr, "127.0.0.1:9002");
        assert_eq!(pool.health.as_ref().unwrap().path, "/ready");
        assert!(pool.discovery.etcd.is_none());
        assert_eq!(cfg.listen.max_body_size.0, 1 << 20);

        // With etcd: no static list, the nodes' prefix watched instead.
        let etcd = vec![
            "http://127.0.0.1:2379".to_string(),
            "http://10.0.0.2:2379".into(),
        ];
        std::fs::write(
            &p,
            gateway_toml(
                "127.0.0.1:8080".parse().unwrap(),
                &nodes,
                30,
                &etcd,
                1 << 20,
            ),
        )
        .unwrap();
        let cfg = ragfleet_gateway::config::Config::load(&p).unwrap();
        let pool = &cfg.pools["nodes"];
        assert!(pool.servers.is_empty());
        let e = pool.discovery.etcd.as_ref().unwrap();
        assert_eq!(e.endpoints, etcd);
        assert_eq!(e.prefix, "/ragfleet/nodes/");
    }

    /// The user's keys win (listen, timeouts, an extra pool and route),
    /// the generated server list and `/` route stay `up`'s.
    #[test]
    fn gateway_config_merge_keeps_user_keys_and_the_generated_pool() {
        let nodes: Vec<SocketAddr> = vec!["127.0.0.1:9001".parse().unwrap()];
        let generated = gateway_toml("127.0.0.1:8080".parse().unwrap(), &nodes, 30, &[], 1 << 20);
        let user: toml::Table = r#"
[listen]
keepalive_timeout = "5s"
max_connections_per_ip = 7

[[route]]
prefix = "/"
pool = "elsewhere"

[[route]]
prefix = "/static/"
pool = "files"

[pool.files]
servers = [{ addr = "127.0.0.1:9100" }]

[pool.nodes]
policy = "least_conn"
servers = [{ addr = "127.0.0.1:1" }]

[pool.nodes.timeouts]
response_headers = "600s"
"#
        .parse()
        .unwrap();
        let merged = merge_gateway_config(&generated, &user).unwrap();
        let cfg = ragfleet_gateway::config::Config::parse(&merged, "merged").unwrap();
        assert_eq!(cfg.listen.max_connections_per_ip, 7);
        assert_eq!(cfg.listen.max_body_size.0, 1 << 20);
        assert_eq!(cfg.listen.addr.port(), 8080);
        let pool = &cfg.pools["nodes"];
        assert_eq!(pool.servers.len(), 1);
        assert_eq!(pool.servers[0].addr, "127.0.0.1:9001");
        assert_eq!(pool.health.as_ref().unwrap().path, "/ready");
        assert!(merged.contains("least_conn"), "{merged}");
        assert!(merged.contains("600s"), "{merged}");
        assert!(cfg.pools.contains_key("files"));
        let mut routes: Vec<(String, String)> = cfg
            .routes
            .iter()
            .map(|r| (r.prefix.clone(), r.pool.clone()))
            .collect();
        routes.sort();
        assert_eq!(
            routes,
            [
                ("/".to_string(), "nodes".to_string()),
                ("/static/".into(), "files".into())
            ]
        );
    }
}
