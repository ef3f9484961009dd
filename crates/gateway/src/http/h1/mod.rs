//! The gateway's own HTTP/1.1 code for the common, simple exchanges, beside
//! hyper's for everything else:
//!
//! - [`client`] — requests upstream whose body is empty or already in memory;
//! - [`server`] — client connections over plain TCP or TLS (HTTP/1.1), for
//!   requests whose head and body are complete in one read buffer; any other
//!   request hands its connection to hyper's server for the rest of its life.
pub(crate) mod client;
pub(crate) mod server;

use http::header::{HeaderName, InvalidHeaderName};

/// A Content-Length value: ASCII digits only (`parse::<u64>` would also
/// take a `+` sign), within u64.
pub(crate) fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    s.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// `n` in decimal, appended to `out` (one formatter for both sides).
pub(crate) fn push_dec(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// The header names of the last message read on a connection, by position:
/// the next message from the same peer usually repeats them, and comparing
/// raw bytes is much cheaper than parsing a name again (case-folding and
/// matching it against the standard names).
#[derive(Debug, Default)]
pub(crate) struct NameCache(Vec<(Box<[u8]>, HeaderName)>);

/// Header lines remembered per connection.
const NAME_CACHE_LINES: usize = 32;

impl NameCache {
    /// The name of the `i`-th header line, spelled `raw` on the wire.
    pub(crate) fn name(&mut self, i: usize, raw: &[u8]) -> Result<HeaderName, InvalidHeaderName> {
        if let Some((seen, name)) = self.0.get(i) {
            if **seen == *raw {
                return Ok(name.clone());
            }
        }
        let name = HeaderName::from_bytes(raw)?;
        if i < self.0.len() {
            self.0[i] = (raw.into(), name.clone());
        } else if i == self.0.len() && i < NAME_CACHE_LINES {
            self.0.push((raw.into(), name.clone()));
        }
        Ok(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_names_equal_parsed_ones() {
        let mut c = NameCache::default();
        let lines: [&[u8]; 4] = [b"Content-Type", b"X-Custom", b"content-length", b"Server"];
        for round in 0..3 {
            for (i, raw) in lines.iter().enumerate() {
                let name = c.name(i, raw).unwrap();
                assert_eq!(name, HeaderName::from_bytes(raw).unwrap(), "round {round}");
            }
        }
        // A different name at a known position replaces it.
        assert_eq!(c.name(1, b"X-Other").unwrap(), "x-other");
        assert_eq!(c.name(1, b"X-Other").unwrap(), "x-other");
        assert_eq!(c.name(0, b"Content-Type").unwrap(), "content-type");
        assert!(c.name(2, b"bad name").is_err());
        assert_eq!(c.name(2, b"content-length").unwrap(), "content-length");
    }
}
