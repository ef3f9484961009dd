//! The process clock the request path reads: nanoseconds since a
//! process-wide epoch, as one `u64` atomics can hold.
use std::sync::OnceLock;
use std::time::Instant;

/// Nanoseconds since a process-wide epoch (never 0).
pub fn now_nanos() -> u64 {
    nanos_at(Instant::now())
}

/// `t` on the clock of [`now_nanos`].
pub fn nanos_at(t: Instant) -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    t.saturating_duration_since(epoch).as_nanos() as u64 + 1
}
