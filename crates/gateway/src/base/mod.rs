//! Layer 0 of the gateway: what every other layer may use and that uses
//! none of them — the configuration types ([`config`]), the process clock
//! ([`clock`]) and the stable hash ([`hash`]).
pub mod clock;
pub mod config;
pub mod hash;
pub mod headers;
