//! `ragfleet`: the one binary. Each subcommand lives in its own module and
//! owns its flags (`Args`) and its entry point (`run`).
use clap::{Parser, Subcommand};

mod admin;
mod api_key;
mod ask;
mod cpu;
mod eval;
mod gateway;
mod ingest;
mod logging;
mod node;
mod up;

// mimalloc: small, frequent allocations on the gateway's request path (and
// the node's) cost far less than with the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "ragfleet",
    version,
    about = "A RAG chat cluster: gateway, nodes, and the tools around them"
)]
struct Cli {
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true, env = "RAGFLEET_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a gateway and N nodes on this machine (the whole cluster, one command).
    Up(up::Args),
    /// Run the L7 load balancer.
    Gateway(gateway::Args),
    /// Run a RAG node (HTTP API, SSE/WebSocket streaming, web chat page).
    Node(node::Args),
    /// Ingest files or directories, into a running node or a data directory.
    Ingest(ingest::Args),
    /// Ask a question and stream the cited answer to the terminal.
    Ask(ask::Args),
    /// Evaluate retrieval (BEIR layout) and answer quality (SQuAD v1.1).
    Eval(eval::Args),
    /// Manage users, API keys and grants (on a running node or a store).
    Admin(admin::Args),
}

fn main() -> anyhow::Result<()> {
    // Before anything else: a CPU older than the build's target gets a
    // message, not SIGILL.
    cpu::check();
    let cli = Cli::parse();
    logging::init(cli.log_json);
    let result = match cli.command {
        Command::Up(a) => up::run(a),
        Command::Gateway(a) => gateway::run(a),
        Command::Node(a) => node::run(a),
        Command::Ingest(a) => ingest::run(a),
        Command::Ask(a) => ask::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Admin(a) => admin::run(a),
    };
    match result {
        // The reader of our output went away (`… | head -1`): it has what
        // it wanted, so this is a normal, quiet end.
        Err(e) if e.downcast_ref::<ask::StdoutClosed>().is_some() => Ok(()),
        r => r,
    }
}
