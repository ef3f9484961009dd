//! `ragfleet`: the one binary. Each subcommand lives in its own module.
use clap::{Parser, Subcommand};

mod logging;

#[derive(Parser)]
#[command(name = "ragfleet", version, about = "A RAG chat cluster: gateway, nodes, and the tools around them")]
struct Cli {
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true, env = "RAGFLEET_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    logging::init(cli.log_json);
    match cli.command {}
}
