//! The gateway's own HTTP/1.1 code for the common, simple exchanges, beside
//! hyper's for everything else:
//!
//! - [`client`] — requests upstream whose body is empty or already in memory;
//! - [`server`] — client connections over plain TCP or TLS (HTTP/1.1), for
//!   requests whose head and body are complete in one read buffer; any other
//!   request hands its connection to hyper's server for the rest of its life.
pub(crate) mod client;
pub(crate) mod server;
