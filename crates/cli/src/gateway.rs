//! `ragfleet gateway`: run the L7 load balancer from a TOML file
//! (`--config`) or from flags (`--listen`, `--upstream`, `--policy`).
use std::net::SocketAddr;
use std::path::PathBuf;

use ragfleet_gateway::config::Config;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// TOML configuration file (see docs/gateway.md).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Address to listen on (overrides `listen.addr` of the file).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Upstream server without a file: `ADDR[,weight=N][,backup]`; repeat for each.
    #[arg(long = "upstream", value_name = "ADDR[,weight=N][,backup]")]
    upstreams: Vec<String>,
    /// Balancing policy for --upstream servers.
    #[arg(long, value_parser = ["round_robin", "least_conn", "ip_hash", "hash", "p2c"])]
    policy: Option<String>,
    /// Hash key for --policy hash: header:NAME, cookie:NAME or query:NAME.
    #[arg(long)]
    hash_key: Option<String>,
    /// Validate the configuration and exit.
    #[arg(long)]
    check: bool,
}

fn load(args: &Args) -> Result<Config, String> {
    match &args.config {
        Some(path) => {
            if !args.upstreams.is_empty() || args.policy.is_some() || args.hash_key.is_some() {
                return Err(
                    "--upstream/--policy/--hash-key cannot be combined with --config".into(),
                );
            }
            let mut cfg = Config::load(path).map_err(|e| e.to_string())?;
            if let Some(l) = args.listen {
                cfg.listen.addr = l;
            }
            Ok(cfg)
        }
        None => {
            if args.upstreams.is_empty() {
                return Err("give --config FILE, or at least one --upstream ADDR".into());
            }
            Config::from_flags(
                args.listen,
                &args.upstreams,
                args.policy.as_deref(),
                args.hash_key.as_deref(),
            )
            .map_err(|e| e.to_string())
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    // A bad configuration exits 2 before anything is bound.
    let cfg = match load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ragfleet gateway: {e}");
            std::process::exit(2);
        }
    };
    if args.check {
        println!("configuration OK");
        return Ok(());
    }
    // One worker: a current-thread runtime (no cross-thread wake-ups; in the
    // benchmark it had the lower SSE tail latency). More: a multi-thread one.
    let mut rt = if cfg.listen.workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    rt.enable_all();
    if cfg.listen.workers > 1 {
        rt.worker_threads(cfg.listen.workers);
    }
    let rt = rt.build()?;
    let watch = cfg.reload.watch;
    rt.block_on(async move {
        let gw = ragfleet_gateway::Gateway::bind(cfg).await?;
        tracing::info!(addr = %gw.local_addr(), "gateway listening");
        let handle = gw.handle();
        if let Some(admin) = handle.admin_addr() {
            tracing::info!(%admin, "admin listener (metrics at /metrics, API at /admin/)");
        }
        // Hot reload from the file: on SIGHUP, and when it changes.
        let mut _watcher = None;
        if let Some(path) = &args.config {
            handle.set_config_path(path);
            ragfleet_gateway::reload::spawn_sighup(&handle);
            if watch {
                match ragfleet_gateway::reload::watch_config_file(&handle) {
                    Ok(w) => _watcher = Some(w),
                    Err(e) => tracing::warn!("not watching the configuration file: {e}"),
                }
            }
        }
        gw.run_until(ragfleet_gateway::shutdown_signal()).await?;
        tracing::info!("gateway stopped");
        anyhow::Ok(())
    })
}
