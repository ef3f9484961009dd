//! tracing setup shared by every subcommand. `RUST_LOG` filters (default
//! `info,rustls=error`: rustls warns about what a peer sent — an IP address
//! in SNI, say — once per handshake, which any client can trigger at will;
//! the gateway counts handshakes and failures in its metrics instead).
use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// The filter without `RUST_LOG`.
pub const DEFAULT_FILTER: &str = "info,rustls=error";

pub fn init(json: bool) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    // Colours only on a terminal (and not with NO_COLOR): a log file or a
    // pipe gets plain text, without escape sequences.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    // A second init (tests) is harmless: ignore the error.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
