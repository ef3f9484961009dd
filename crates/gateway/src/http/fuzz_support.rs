//! Shared pieces of the property-based and differential tests of the
//! byte-level HTTP/1 parsers (`h1/server.rs`, `h1/client.rs`, `sniff.rs`):
//! the case count, generators of valid and mutated messages, split reads,
//! and RFC 9112's grammar written plainly as the reference.
//!
//! Each property runs [`config`]'s case count: a default sized so that all
//! of them together stay within about a minute of CI, or
//! `RAGFLEET_FUZZ_CASES` cases each when that variable is set
//! (`RAGFLEET_FUZZ_CASES=1000000 cargo test -p ragfleet-gateway fuzz`).
use proptest::prelude::*;
use proptest::test_runner::Config;

/// The configuration of one property: `default` cases, or
/// `RAGFLEET_FUZZ_CASES` when set.
pub(crate) fn config(default: u32) -> Config {
    let cases = std::env::var("RAGFLEET_FUZZ_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default);
    Config {
        cases,
        // A failure is kept as a named regression test next to the property,
        // not as a file beside the source.
        failure_persistence: None,
        ..Config::default()
    }
}

/// `data` cut at `points` (taken modulo its length, in any order).
pub(crate) fn split<'a>(data: &'a [u8], points: &[usize]) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = points
        .iter()
        .map(|p| {
            if data.is_empty() {
                0
            } else {
                p % (data.len() + 1)
            }
        })
        .collect();
    cuts.push(0);
    cuts.push(data.len());
    cuts.sort_unstable();
    cuts.dedup();
    cuts.windows(2).map(|w| &data[w[0]..w[1]]).collect()
}

/// Up to 8 split points.
pub(crate) fn splits() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(any::<usize>(), 0..8)
}

/// One mutation of a byte string.
#[derive(Debug, Clone)]
pub(crate) enum Mutation {
    Insert(usize, u8),
    Replace(usize, u8),
    Delete(usize),
    /// Repeat the bytes `at..at+len` once.
    Duplicate(usize, usize),
    Truncate(usize),
}

/// The bytes parsers trip over: line ends, white space, NUL, separators,
/// digits, quotes, non-ASCII.
pub(crate) fn nasty_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        4 => prop::sample::select(
            &b"\r\n\0 \t:;=\",\x0b\x0c\x7f\x80\xff0159aAfFgxX-+/"[..]
        ),
        1 => any::<u8>(),
    ]
}

pub(crate) fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), nasty_byte()).prop_map(|(a, b)| Mutation::Insert(a, b)),
        (any::<usize>(), nasty_byte()).prop_map(|(a, b)| Mutation::Replace(a, b)),
        any::<usize>().prop_map(Mutation::Delete),
        (any::<usize>(), 1usize..24).prop_map(|(a, l)| Mutation::Duplicate(a, l)),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

pub(crate) fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    prop::collection::vec(mutation(), 1..5)
}

/// `data` with `muts` applied in order.
pub(crate) fn mutate(mut data: Vec<u8>, muts: &[Mutation]) -> Vec<u8> {
    for m in muts {
        let n = data.len();
        match *m {
            Mutation::Insert(at, b) => data.insert(at % (n + 1), b),
            Mutation::Replace(at, b) if n > 0 => data[at % n] = b,
            Mutation::Delete(at) if n > 0 => {
                data.remove(at % n);
            }
            Mutation::Duplicate(at, len) if n > 0 => {
                let at = at % n;
                let end = (at + len).min(n);
                let copy = data[at..end].to_vec();
                data.splice(end..end, copy);
            }
            Mutation::Truncate(at) => data.truncate(at % (n + 1)),
            _ => {}
        }
    }
    data
}

/// A line end: mostly CRLF, sometimes a bare LF (which httparse and hyper
/// accept in heads).
pub(crate) fn eol() -> impl Strategy<Value = &'static str> {
    prop_oneof![4 => Just("\r\n"), 1 => Just("\n")]
}

/// RFC 9110 tchar.
pub(crate) fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

pub(crate) fn token() -> impl Strategy<Value = String> {
    "[!#$%&'*+.^_`|~0-9A-Za-z-]{1,12}"
}

/// A header value: visible ASCII with inner spaces (no leading or trailing
/// white space, which a parser strips).
pub(crate) fn field_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[!-~]([ -~]{0,30}[!-~])?",
        Just(String::new()),
        "[0-9]{1,5}",
    ]
}

/// Header lines that are not about framing.
pub(crate) fn plain_header() -> impl Strategy<Value = (String, String)> {
    (
        prop_oneof![
            Just("Host".to_string()),
            Just("Accept".to_string()),
            Just("X-Request-Id".to_string()),
            Just("Cookie".to_string()),
            "[A-Za-z][A-Za-z0-9-]{0,15}",
        ],
        field_value(),
    )
        .prop_filter("not a framing or hop-by-hop header", |(n, _)| {
            !is_special(n.as_bytes())
        })
}

/// Names that change framing or the connection.
pub(crate) fn is_special(name: &[u8]) -> bool {
    [
        &b"content-length"[..],
        b"transfer-encoding",
        b"connection",
        b"upgrade",
        b"expect",
        b"keep-alive",
        b"te",
        b"trailer",
        b"proxy-connection",
        b"proxy-authorization",
        b"proxy-authenticate",
    ]
    .iter()
    .any(|s| name.eq_ignore_ascii_case(s))
}

/// `v` without OWS (SP / HTAB) on either side.
pub(crate) fn trim_ows(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|&c| c != b' ' && c != b'\t')
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|&c| c != b' ' && c != b'\t')
        .map_or(start, |e| e + 1);
    &v[start..end]
}

/// RFC 9112's `Content-Length = 1*DIGIT`, the value in a u64.
pub(crate) fn grammar_content_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let s = std::str::from_utf8(v).ok()?;
    // u128 first: a value past u64 is out of range, not a parse error.
    u64::try_from(s.parse::<u128>().unwrap_or(u128::MAX)).ok()
}

/// RFC 9112 §7.1 chunk line (without its line end), written plainly:
///
/// ```text
/// chunk-size = 1*HEXDIG
/// chunk-ext  = *( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] )
/// ext-name   = token
/// ext-val    = token / quoted-string
/// ```
///
/// The size, if the line matches and the size fits in a u64.
pub(crate) fn grammar_chunk_line(line: &[u8]) -> Option<u64> {
    let digits = line.iter().take_while(|c| c.is_ascii_hexdigit()).count();
    if digits == 0 {
        return None;
    }
    let size =
        u128::from_str_radix(std::str::from_utf8(&line[..digits]).ok()?, 16).unwrap_or(u128::MAX);
    let size = u64::try_from(size).ok()?;
    let mut rest = &line[digits..];
    let bws = |r: &mut &[u8]| {
        while let [b' ' | b'\t', tail @ ..] = *r {
            *r = tail;
        }
    };
    let token = |r: &mut &[u8]| -> bool {
        let n = r.iter().take_while(|&&c| is_tchar(c)).count();
        *r = &r[n..];
        n > 0
    };
    loop {
        if rest.is_empty() {
            return Some(size);
        }
        // BWS is allowed only before a ";" (not at the end of the line).
        bws(&mut rest);
        let [b';', tail @ ..] = rest else {
            return None;
        };
        rest = tail;
        bws(&mut rest);
        if !token(&mut rest) {
            return None;
        }
        let mut look = rest;
        bws(&mut look);
        if let [b'=', tail @ ..] = look {
            rest = tail;
            bws(&mut rest);
            if let [b'"', tail @ ..] = rest {
                rest = quoted_string_tail(tail)?;
            } else if !token(&mut rest) {
                return None;
            }
        }
    }
}

/// The rest after a quoted-string whose opening quote was taken:
/// `*( qdtext / quoted-pair ) DQUOTE`.
fn quoted_string_tail(mut r: &[u8]) -> Option<&[u8]> {
    loop {
        match *r {
            [b'"', ref tail @ ..] => return Some(tail),
            [b'\\', c, ref tail @ ..] if c == b'\t' || c == b' ' || c >= 0x21 && c != 0x7f => {
                r = tail
            }
            [c, ref tail @ ..]
                if c == b'\t'
                    || c == b' '
                    || c == 0x21
                    || (0x23..=0x5b).contains(&c)
                    || (0x5d..=0x7e).contains(&c)
                    || c >= 0x80 =>
            {
                r = tail
            }
            _ => return None,
        }
    }
}

/// A valid chunk extension (`;name` or `;name=value`, BWS around).
pub(crate) fn chunk_ext() -> impl Strategy<Value = String> {
    (
        prop_oneof![Just(""), Just(" "), Just("\t")],
        token(),
        prop::option::of(prop_oneof![
            token(),
            "[a-z ]{0,8}".prop_map(|s| format!("\"{s}\"")),
            Just("\"a\\\"b\"".to_string()),
        ]),
    )
        .prop_map(|(ws, name, val)| match val {
            Some(v) => format!("{ws};{ws}{name}{ws}={ws}{v}"),
            None => format!("{ws};{name}"),
        })
}

/// A chunked body: the data in chunks (none empty), each size line with
/// optional leading zeros and extensions, then trailers.
#[derive(Debug, Clone)]
pub(crate) struct Chunked {
    pub data: Vec<u8>,
    pub wire: Vec<u8>,
}

pub(crate) fn chunked_body() -> impl Strategy<Value = Chunked> {
    let chunk = (
        prop::collection::vec(any::<u8>(), 1..40),
        0usize..3,
        any::<bool>(),
        prop::collection::vec(chunk_ext(), 0..2),
    );
    (
        prop::collection::vec(chunk, 0..6),
        prop::collection::vec(chunk_ext(), 0..2),
        prop::collection::vec(plain_header(), 0..3),
    )
        .prop_map(|(chunks, last_ext, trailers)| {
            let mut data = Vec::new();
            let mut wire = Vec::new();
            for (bytes, zeros, upper, exts) in chunks {
                let size = format!("{}{:x}", "0".repeat(zeros), bytes.len());
                let size = if upper { size.to_uppercase() } else { size };
                wire.extend_from_slice(size.as_bytes());
                wire.extend_from_slice(exts.concat().as_bytes());
                wire.extend_from_slice(b"\r\n");
                wire.extend_from_slice(&bytes);
                wire.extend_from_slice(b"\r\n");
                data.extend_from_slice(&bytes);
            }
            wire.extend_from_slice(b"0");
            wire.extend_from_slice(last_ext.concat().as_bytes());
            wire.extend_from_slice(b"\r\n");
            for (n, v) in trailers {
                wire.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
            }
            wire.extend_from_slice(b"\r\n");
            Chunked { data, wire }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_grammar_reads_chunk_lines() {
        for (line, want) in [
            (&b"5"[..], Some(5)),
            (b"00a", Some(10)),
            (b"5;a", Some(5)),
            (b"5 ; a = b", Some(5)),
            (b"5;a=\"x;y\\\"\";b", Some(5)),
            (b"ffffffffffffffff", Some(u64::MAX)),
            (b"10000000000000000", None),
            (b"5 ", None),
            (b"5;", None),
            (b"5;a=", None),
            (b"5;a=\"x", None),
            (b"5;a b", None),
            (b"0x5", None),
            (b"+5", None),
            (b" 5", None),
            (b"", None),
        ] {
            assert_eq!(
                grammar_chunk_line(line),
                want,
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
        assert_eq!(grammar_content_length(b"007"), Some(7));
        assert_eq!(grammar_content_length(b"18446744073709551616"), None);
        assert_eq!(grammar_content_length(b" 7"), None);
    }
}
