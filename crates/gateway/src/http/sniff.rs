//! The framing guard: follows a connection's raw HTTP/1 bytes beside the
//! parser to see what hyper hides (a head with both Content-Length and
//! Transfer-Encoding) and to bound chunk-size lines.
/// Follows the raw HTTP/1 byte stream of a connection alongside hyper to
/// spot what hyper hides: a request head with both Content-Length and
/// Transfer-Encoding. It knows each message's framing, so it finds every
/// head even on keep-alive and pipelined connections; on anything it does
/// not understand it turns itself off (hyper's own parser stays the judge).
#[derive(Debug)]
pub(crate) struct HeadSniffer {
    state: Sniff,
    head: Vec<u8>,
    max_head: usize,
    /// The largest chunk accepted (`listen.max_body_size`; 0: no limit).
    max_chunk: u64,
}

#[derive(Debug, PartialEq, Eq)]
enum Sniff {
    /// Waiting for / reading a request head.
    Head,
    /// Skipping `n` body bytes.
    Body(u64),
    /// Chunked body: reading a chunk-size line (bytes kept in `head`).
    ChunkSize,
    /// Inside a chunk: `n` data bytes, then CRLF.
    ChunkData(u64),
    ChunkCrlf(u8),
    /// Trailer section: lines until an empty one (bytes kept in `head`).
    Trailers,
    Off,
}

/// What the sniffer saw in one request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HeadFlags {
    pub cl_te_conflict: bool,
}

/// Events for the connection: a head started, a head ended; a chunked body
/// broke its framing (the request must fail as the client's fault); the
/// guard lost track of the framing (the connection must take no more
/// requests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SniffEvent {
    HeadStarted,
    HeadDone(HeadFlags),
    BadChunk { too_large: bool },
    Lost,
}

impl HeadSniffer {
    pub(crate) fn new(max_head: usize, max_chunk: u64) -> HeadSniffer {
        HeadSniffer {
            state: Sniff::Head,
            head: Vec::new(),
            max_head,
            max_chunk,
        }
    }

    /// Stop following the bytes: the connection must take no more requests.
    fn lose(&mut self, ev: &mut impl FnMut(SniffEvent)) {
        self.state = Sniff::Off;
        ev(SniffEvent::Lost);
    }

    pub(crate) fn is_off(&self) -> bool {
        self.state == Sniff::Off
    }

    /// Feed bytes read from the client; `ev` gets the events in order.
    pub(crate) fn feed(&mut self, mut data: &[u8], ev: &mut impl FnMut(SniffEvent)) {
        while !data.is_empty() {
            match &mut self.state {
                Sniff::Off => return,
                Sniff::Head => {
                    if self.head.is_empty() {
                        // Empty lines before a request line are ignored (RFC 9112 §2.2).
                        let skip = data
                            .iter()
                            .take_while(|&&c| c == b'\r' || c == b'\n')
                            .count();
                        data = &data[skip..];
                        if data.is_empty() {
                            return;
                        }
                        ev(SniffEvent::HeadStarted);
                    }
                    let start = self.head.len().saturating_sub(2);
                    let take = data
                        .len()
                        .min(self.max_head + 1 - self.head.len().min(self.max_head));
                    self.head.extend_from_slice(&data[..take]);
                    match head_end(&self.head, start) {
                        Some(end) => {
                            let used = end - (self.head.len() - take);
                            data = &data[used..];
                            self.head.truncate(end);
                            self.end_head(ev);
                        }
                        None => {
                            data = &data[take..];
                            if self.head.len() > self.max_head {
                                // hyper answers 431 and closes.
                                self.lose(ev);
                            }
                        }
                    }
                }
                Sniff::Body(n) => {
                    let k = (*n).min(data.len() as u64);
                    *n -= k;
                    data = &data[k as usize..];
                    if *n == 0 {
                        self.state = Sniff::Head;
                    }
                }
                Sniff::ChunkSize | Sniff::Trailers => {
                    let Some(nl) = data.iter().position(|&c| c == b'\n') else {
                        self.head.extend_from_slice(data);
                        if self.head.len() > self.max_head {
                            // A chunk-size or trailer line without end.
                            if self.state == Sniff::ChunkSize {
                                ev(SniffEvent::BadChunk { too_large: false });
                            }
                            self.lose(ev);
                        }
                        return;
                    };
                    self.head.extend_from_slice(&data[..=nl]);
                    data = &data[nl + 1..];
                    if self.head.len() - 1 > self.max_head {
                        // The same bound when the line's end came in the
                        // same read as the rest of it.
                        if self.state == Sniff::ChunkSize {
                            ev(SniffEvent::BadChunk { too_large: false });
                        }
                        self.lose(ev);
                        return;
                    }
                    let line = std::mem::take(&mut self.head);
                    let line = line.strip_suffix(b"\n").unwrap_or(&line);
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    if self.state == Sniff::Trailers {
                        if line.is_empty() {
                            self.state = Sniff::Head;
                        }
                        continue;
                    }
                    self.state = match chunk_size(line) {
                        Some(0) => Sniff::Trailers,
                        Some(n) if self.max_chunk == 0 || n <= self.max_chunk => {
                            Sniff::ChunkData(n)
                        }
                        too_large => {
                            ev(SniffEvent::BadChunk {
                                too_large: too_large.is_some(),
                            });
                            self.lose(ev);
                            return;
                        }
                    };
                }
                Sniff::ChunkData(n) => {
                    let k = (*n).min(data.len() as u64);
                    *n -= k;
                    data = &data[k as usize..];
                    if *n == 0 {
                        self.state = Sniff::ChunkCrlf(0);
                    }
                }
                Sniff::ChunkCrlf(seen) => {
                    let want = if *seen == 0 { b'\r' } else { b'\n' };
                    if data[0] != want {
                        ev(SniffEvent::BadChunk { too_large: false });
                        self.lose(ev);
                        return;
                    }
                    data = &data[1..];
                    if *seen == 0 {
                        *seen = 1;
                    } else {
                        self.state = Sniff::ChunkSize;
                    }
                }
            }
        }
    }

    fn end_head(&mut self, ev: &mut impl FnMut(SniffEvent)) {
        let head = std::mem::take(&mut self.head);
        let mut headers = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; 128];
        let mut req = httparse::Request::new(&mut []);
        let parsed = matches!(
            httparse::ParserConfig::default().parse_request_with_uninit_headers(
                &mut req,
                &head,
                &mut headers
            ),
            Ok(httparse::Status::Complete(_))
        );
        if !parsed {
            // hyper refuses it too (400/431) and closes the connection.
            self.lose(ev);
            return;
        }
        let mut cl: Option<u64> = None;
        let mut has_cl = false;
        let mut te = false;
        let mut upgrade = req.method == Some("CONNECT");
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                has_cl = true;
                cl = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse().ok());
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                te = true;
            } else if h.name.eq_ignore_ascii_case("upgrade") {
                upgrade = true;
            }
        }
        ev(SniffEvent::HeadDone(HeadFlags {
            cl_te_conflict: has_cl && te,
        }));
        self.state = if upgrade {
            // After 101 the bytes are not HTTP any more.
            Sniff::Off
        } else if te {
            Sniff::ChunkSize
        } else {
            match (has_cl, cl) {
                (false, _) | (true, Some(0)) => Sniff::Head,
                (true, Some(n)) => Sniff::Body(n),
                (true, None) => {
                    ev(SniffEvent::Lost);
                    Sniff::Off
                }
            }
        };
    }
}

/// The end (one past the blank line) of the head in `buf`, searching from
/// `from`: the first empty line, whether lines end in CRLF or a bare LF
/// (hyper's parser accepts both, so the guard must too).
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(off) = memchr::memchr(b'\n', &buf[i..]) {
        let nl = i + off;
        // The line that this LF ends is empty: the previous byte is an LF,
        // or a CR right after an LF.
        let empty = nl >= 1
            && (buf[nl - 1] == b'\n' || (nl >= 2 && buf[nl - 1] == b'\r' && buf[nl - 2] == b'\n'));
        if empty {
            return Some(nl + 1);
        }
        i = nl + 1;
    }
    None
}

/// A chunk-size line's size (RFC 9112 §7.1: `1*HEXDIG [BWS ";" chunk-ext]`):
/// no sign, no `0x`, no leading white space, no overflow. None when invalid.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.iter().take_while(|c| c.is_ascii_hexdigit()).count();
    if digits == 0 {
        return None;
    }
    let rest = &line[digits..];
    // Only white space after the size (tolerated like hyper), or BWS and
    // an extension.
    let rest_ok = rest
        .iter()
        .position(|&c| c != b' ' && c != b'\t')
        .is_none_or(|p| rest[p] == b';');
    if !rest_ok {
        return None;
    }
    let mut n: u64 = 0;
    for &c in &line[..digits] {
        let d = (c as char).to_digit(16)? as u64;
        n = n.checked_mul(16)?.checked_add(d)?;
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sniff_all(chunks: &[&[u8]]) -> (Vec<SniffEvent>, bool) {
        let mut s = HeadSniffer::new(8192, 0);
        let mut evs = Vec::new();
        for c in chunks {
            s.feed(c, &mut |e| evs.push(e));
        }
        (evs, s.is_off())
    }

    fn done(conflict: bool) -> SniffEvent {
        SniffEvent::HeadDone(HeadFlags {
            cl_te_conflict: conflict,
        })
    }

    #[test]
    fn sniffer_follows_keep_alive_framing() {
        let stream: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n\
POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
POST /y HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n0\r\nX-T: 1\r\n\r\n\
POST /z HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
GET /w HTTP/1.1\r\nHost: a\r\n\r\n";
        let want = vec![
            SniffEvent::HeadStarted,
            done(false),
            SniffEvent::HeadStarted,
            done(false),
            SniffEvent::HeadStarted,
            done(false),
            SniffEvent::HeadStarted,
            done(true),
            SniffEvent::HeadStarted,
            done(false),
        ];
        // Whole, and one byte at a time.
        assert_eq!(sniff_all(&[stream]), (want.clone(), false));
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(sniff_all(&bytes), (want, false));
        // Body bytes that look like a head are not taken for one.
        let inner = "GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: x\r\n\r\n";
        let tricky = format!(
            "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n{inner}",
            inner.len()
        );
        let (evs, off) = sniff_all(&[tricky.as_bytes()]);
        assert_eq!(evs, vec![SniffEvent::HeadStarted, done(false)]);
        assert!(!off);
    }

    #[test]
    fn sniffer_turns_off_on_upgrade_and_garbage() {
        let (_, off) = sniff_all(&[
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\x81\x85",
        ]);
        assert!(off);
        let (_, off) = sniff_all(&[b"GET / HTTP/1.1\r\n bad fold\r\n\r\n"]);
        assert!(off);
    }

    #[test]
    fn sniffer_finds_heads_with_bare_lf_line_endings() {
        let stream: &[u8] = b"GET /a HTTP/1.1\nHost: a\n\n\
GET /b HTTP/1.1\r\nHost: a\n\r\n\
POST /c HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let want = vec![
            SniffEvent::HeadStarted,
            done(false),
            SniffEvent::HeadStarted,
            done(false),
            SniffEvent::HeadStarted,
            done(true),
        ];
        assert_eq!(sniff_all(&[stream]), (want.clone(), false));
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(sniff_all(&bytes), (want, false));
    }

    #[test]
    fn chunk_size_lines_follow_the_grammar() {
        assert_eq!(chunk_size(b"5"), Some(5));
        assert_eq!(chunk_size(b"1aF"), Some(0x1af));
        assert_eq!(chunk_size(b"5;ext=1"), Some(5));
        assert_eq!(chunk_size(b"5 ;ext"), Some(5));
        assert_eq!(chunk_size(b"0000000000000000005"), Some(5));
        assert_eq!(chunk_size(b"ffffffffffffffff"), Some(u64::MAX));
        for bad in [
            &b""[..],
            b"0x5",
            b"+5",
            b"-5",
            b" 5",
            b"5x",
            b"5 x",
            b"10000000000000000",
            b";ext",
        ] {
            assert_eq!(chunk_size(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn sniffer_flags_bad_and_oversized_chunks() {
        let mut s = HeadSniffer::new(8192, 1000);
        let mut evs = Vec::new();
        s.feed(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n8000000000000005\r\n",
            &mut |e| evs.push(e),
        );
        assert!(
            evs.contains(&SniffEvent::BadChunk { too_large: true }),
            "{evs:?}"
        );
        assert!(s.is_off());
        let mut s = HeadSniffer::new(8192, 0);
        let mut evs = Vec::new();
        s.feed(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\n",
            &mut |e| evs.push(e),
        );
        assert!(
            evs.contains(&SniffEvent::BadChunk { too_large: false }),
            "{evs:?}"
        );
        assert_eq!(evs.last(), Some(&SniffEvent::Lost));
    }
}

/// Property-based and differential tests: generated keep-alive streams
/// against a model of their framing, any split of a stream against the
/// whole, head boundaries and the CL+TE verdict against httparse, chunk-size
/// lines against RFC 9112's grammar (`http::fuzz_support`).
#[cfg(test)]
mod fuzz {
    use super::*;
    use crate::http::fuzz_support::*;
    use proptest::prelude::*;

    fn events(max_chunk: u64, pieces: &[&[u8]]) -> (Vec<SniffEvent>, bool) {
        let mut s = HeadSniffer::new(8192, max_chunk);
        let mut evs = Vec::new();
        for p in pieces {
            s.feed(p, &mut |e| evs.push(e));
        }
        (evs, s.is_off())
    }

    /// How a generated request frames its body.
    #[derive(Debug, Clone)]
    enum Framing {
        None,
        Length(Vec<u8>),
        Chunked(Chunked),
        /// Both headers: Transfer-Encoding wins; the CL value is any digits.
        Both(Chunked, String, bool),
        /// A Content-Length past u64: the guard cannot follow the body.
        Huge(String),
    }

    fn casing() -> impl Strategy<Value = fn(&str) -> String> {
        prop_oneof![
            Just((|s: &str| s.to_string()) as fn(&str) -> String),
            Just((|s: &str| s.to_ascii_lowercase()) as fn(&str) -> String),
            Just((|s: &str| s.to_ascii_uppercase()) as fn(&str) -> String),
        ]
    }

    fn framing() -> impl Strategy<Value = Framing> {
        prop_oneof![
            2 => Just(Framing::None),
            2 => prop::collection::vec(any::<u8>(), 0..40).prop_map(Framing::Length),
            2 => chunked_body().prop_map(Framing::Chunked),
            1 => (chunked_body(), "[0-9]{1,4}", any::<bool>())
                .prop_map(|(c, cl, first)| Framing::Both(c, cl, first)),
            1 => "[1-9][0-9]{20,24}".prop_map(Framing::Huge),
        ]
    }

    /// One request on the wire and the events the guard must report for it
    /// (after which it stops if the last is `Lost`).
    #[derive(Debug, Clone)]
    struct Req {
        wire: Vec<u8>,
        want: Vec<SniffEvent>,
    }

    fn request(max_chunk: u64) -> impl Strategy<Value = Req> {
        (
            prop::collection::vec(eol(), 0..2),
            prop::sample::select(&["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"][..]),
            "/[a-z0-9/?=&.-]{0,20}",
            prop::collection::vec(plain_header(), 0..5),
            framing(),
            any::<prop::sample::Index>(),
            prop::collection::vec(eol(), 12),
            casing(),
            prop::sample::select(&["", " ", "\t", "  "][..]),
        )
            .prop_map(
                move |(blank, method, path, mut headers, framing, at, eols, case, ows)| {
                    let cl = case("Content-Length");
                    let te = case("Transfer-Encoding");
                    let mut want = vec![SniffEvent::HeadStarted];
                    let (framing_headers, body, after): (Vec<(String, String)>, Vec<u8>, _) =
                        match &framing {
                            Framing::None => (vec![], vec![], vec![]),
                            Framing::Length(b) => {
                                (vec![(cl, b.len().to_string())], b.clone(), vec![])
                            }
                            Framing::Chunked(c) => (
                                vec![(te, "chunked".into())],
                                c.wire.clone(),
                                too_large(c, max_chunk),
                            ),
                            Framing::Both(c, v, first) => {
                                let mut h = vec![(cl, v.clone()), (te, "chunked".into())];
                                if !first {
                                    h.reverse();
                                }
                                (h, c.wire.clone(), too_large(c, max_chunk))
                            }
                            Framing::Huge(v) => {
                                (vec![(cl, v.clone())], vec![], vec![SniffEvent::Lost])
                            }
                        };
                    want.push(SniffEvent::HeadDone(HeadFlags {
                        cl_te_conflict: framing_headers.len() == 2,
                    }));
                    want.extend(after);
                    let at = at.index(headers.len() + 1);
                    for (i, h) in framing_headers.into_iter().enumerate() {
                        headers.insert(at + i, h);
                    }
                    let mut wire: Vec<u8> = blank.concat().into_bytes();
                    let mut eols = eols.into_iter().cycle();
                    let mut eol = || eols.next().unwrap_or("\r\n");
                    wire.extend_from_slice(format!("{method} {path} HTTP/1.1{}", eol()).as_bytes());
                    for (n, v) in headers {
                        wire.extend_from_slice(format!("{n}:{ows}{v}{}", eol()).as_bytes());
                    }
                    wire.extend_from_slice(eol().as_bytes());
                    wire.extend_from_slice(&body);
                    Req { wire, want }
                },
            )
    }

    /// A chunk over `max_chunk`: the guard reports it and stops.
    fn too_large(c: &Chunked, max_chunk: u64) -> Vec<SniffEvent> {
        let over = max_chunk > 0 && {
            // Chunk sizes, read back from the wire's size lines.
            let mut sizes = Vec::new();
            let mut rest = &c.wire[..];
            while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
                let line = &rest[..nl - 1];
                let hex = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
                let n =
                    u64::from_str_radix(std::str::from_utf8(&line[..hex]).unwrap(), 16).unwrap();
                if n == 0 {
                    break;
                }
                sizes.push(n);
                rest = &rest[nl + 1 + n as usize + 2..];
            }
            sizes.iter().any(|&n| n > max_chunk)
        };
        if over {
            vec![SniffEvent::BadChunk { too_large: true }, SniffEvent::Lost]
        } else {
            vec![]
        }
    }

    fn stream() -> impl Strategy<Value = (u64, Vec<u8>, Vec<SniffEvent>, bool)> {
        prop_oneof![Just(0u64), 1u64..48]
            .prop_flat_map(|max_chunk| {
                (
                    Just(max_chunk),
                    prop::collection::vec(request(max_chunk), 1..5),
                )
            })
            .prop_map(|(max_chunk, reqs)| {
                let mut wire = Vec::new();
                let mut want = Vec::new();
                let mut off = false;
                for r in reqs {
                    wire.extend_from_slice(&r.wire);
                    if !off {
                        off = r.want.last() == Some(&SniffEvent::Lost);
                        want.extend(r.want);
                    }
                }
                (max_chunk, wire, want, off)
            })
    }

    proptest! {
        #![proptest_config(config(3000))]

        /// A stream of generated requests (CRLF or bare-LF heads, bodies by
        /// length or chunks with extensions and trailers, CL+TE heads, huge
        /// lengths, chunks over the bound): the guard sees every head with
        /// its verdict, in any split of the stream: at every single offset,
        /// at random points, and one byte at a time.
        #[test]
        fn every_head_is_seen_in_every_split(
            (max_chunk, wire, want, off) in stream(),
            points in splits(),
        ) {
            prop_assert_eq!(events(max_chunk, &[&wire]), (want.clone(), off));
            prop_assert_eq!(events(max_chunk, &split(&wire, &points)), (want.clone(), off));
            let bytes: Vec<&[u8]> = wire.chunks(1).collect();
            prop_assert_eq!(events(max_chunk, &bytes), (want.clone(), off));
            for i in 0..=wire.len() {
                let (a, b) = wire.split_at(i);
                prop_assert_eq!(events(max_chunk, &[a, b]), (want.clone(), off), "split at {}", i);
            }
        }

        /// Mutated streams (bare CR/LF, NUL, stray digits and separators):
        /// whatever the guard reports, it reports the same for any split,
        /// and it never panics.
        #[test]
        fn mutated_streams_give_the_same_events_in_any_split(
            (max_chunk, wire, _, _) in stream(),
            muts in mutations(),
            points in splits(),
        ) {
            let wire = mutate(wire, &muts);
            let whole = events(max_chunk, &[&wire]);
            prop_assert_eq!(events(max_chunk, &split(&wire, &points)), whole.clone());
            for i in 0..=wire.len() {
                let (a, b) = wire.split_at(i);
                prop_assert_eq!(events(max_chunk, &[a, b]), whole.clone(), "split at {}", i);
            }
        }
    }

    proptest! {
        #![proptest_config(config(2000))]

        /// Chunk-size and trailer lines near the line bound (`max_head`):
        /// a line over it is refused however the reads cut it, one under it
        /// taken, in every split.
        #[test]
        fn line_bound_holds_in_every_split(
            max_head in 48usize..160,
            ext in 0usize..200,
            trailer in 0usize..200,
            c in chunked_body(),
        ) {
            let head = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
            let mut wire = head.to_vec();
            wire.extend_from_slice(format!("3;x={}\r\nabc\r\n", "e".repeat(ext)).as_bytes());
            wire.extend_from_slice(&c.wire[..c.wire.len() - 2]);
            wire.extend_from_slice(format!("x-t: {}\r\n\r\n", "t".repeat(trailer)).as_bytes());
            let run = |pieces: &[&[u8]]| {
                let mut s = HeadSniffer::new(max_head, 0);
                let mut evs = Vec::new();
                for p in pieces {
                    s.feed(p, &mut |e| evs.push(e));
                }
                (evs, s.is_off())
            };
            let whole = run(&[&wire]);
            let size_line = format!("3;x={}", "e".repeat(ext)).len();
            let trailer_line = format!("x-t: {}", "t".repeat(trailer)).len();
            let mut want = vec![
                SniffEvent::HeadStarted,
                SniffEvent::HeadDone(HeadFlags { cl_te_conflict: false }),
            ];
            // The line with its CR (the bare LF ends it).
            if size_line + 1 > max_head {
                want.extend([SniffEvent::BadChunk { too_large: false }, SniffEvent::Lost]);
            } else if trailer_line + 1 > max_head {
                want.push(SniffEvent::Lost);
            }
            let off = want.last() == Some(&SniffEvent::Lost);
            prop_assert_eq!(&whole, &(want, off));
            for i in 0..=wire.len() {
                let (a, b) = wire.split_at(i);
                prop_assert_eq!(&run(&[a, b]), &whole, "split at {}", i);
            }
        }
    }

    /// Found by `line_bound_holds_in_every_split`: a trailer (or
    /// chunk-size) line over `max_head` was refused when the reads cut it
    /// before its end, and taken when it came whole.
    #[test]
    fn regression_line_bound_holds_in_one_read() {
        let wire = format!(
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nx-t: {}\r\n\r\n",
            "t".repeat(60)
        );
        let mut s = HeadSniffer::new(48, 0);
        let mut evs = Vec::new();
        s.feed(wire.as_bytes(), &mut |e| evs.push(e));
        assert_eq!(evs.last(), Some(&SniffEvent::Lost));
        let wire = format!(
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;x={}\r\nabc\r\n0\r\n\r\n",
            "e".repeat(60)
        );
        let mut s = HeadSniffer::new(48, 0);
        let mut evs = Vec::new();
        s.feed(wire.as_bytes(), &mut |e| evs.push(e));
        assert!(
            evs.contains(&SniffEvent::BadChunk { too_large: false }),
            "{evs:?}"
        );
    }

    /// How many requests hyper's HTTP/1.1 server serves from `wire` sent
    /// on one connection (then the client's write side closes).
    fn hyper_serves(wire: &[u8]) -> usize {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let wire = wire.to_vec();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let served = Arc::new(AtomicUsize::new(0));
            let (mut client, server) = tokio::io::duplex(1 << 20);
            let count = served.clone();
            let svc =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let count = count.clone();
                    async move {
                        use http_body_util::BodyExt;
                        // Its head was parsed: the request is in.
                        count.fetch_add(1, Ordering::SeqCst);
                        let _ = req.into_body().collect().await;
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Empty::<bytes::Bytes>::new(),
                        ))
                    }
                });
            let conn = hyper::server::conn::http1::Builder::new()
                // Serve what was sent before the client's write side closed.
                .half_close(true)
                .serve_connection(hyper_util::rt::TokioIo::new(server), svc);
            let server = tokio::spawn(conn);
            let _ = client.write_all(&wire).await;
            let _ = client.shutdown().await;
            let mut sink = Vec::new();
            let _ = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                client.read_to_end(&mut sink),
            )
            .await;
            server.abort();
            served.load(Ordering::SeqCst)
        })
    }

    proptest! {
        #![proptest_config(config(1000))]

        /// Differential against hyper's server, whose parser decides what
        /// is served: on generated and mutated keep-alive streams the guard
        /// sees a head for every request hyper serves, unless it has said
        /// it lost track (then the connection takes no more requests). A
        /// guard that fell behind hyper would let a later CL+TE head through.
        #[test]
        fn the_guard_never_falls_behind_hyper(
            (max_chunk, wire, _, _) in stream(),
            muts in prop::collection::vec(mutation(), 0..3),
        ) {
            let _ = max_chunk;
            let wire = mutate(wire, &muts);
            let (evs, _) = events(0, &[&wire]);
            let lost = evs.contains(&SniffEvent::Lost);
            let seen = evs.iter().take_while(|e| **e != SniffEvent::Lost)
                .filter(|e| matches!(e, SniffEvent::HeadDone(_))).count();
            let served = hyper_serves(&wire);
            prop_assert!(lost || seen >= served,
                "hyper served {} requests, the guard saw {} heads: {:?}; {:?}",
                served, seen, evs, String::from_utf8_lossy(&wire));
            if muts.is_empty() {
                prop_assert!(served > 0 || lost, "{:?}", String::from_utf8_lossy(&wire));
            }
        }
    }

    #[test]
    fn hyper_serves_generated_requests_for_the_differential() {
        let wire = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhiGET /x HTTP/1.1\nHost: a\n\n";
        assert_eq!(hyper_serves(wire), 3);
    }

    /// A head whose framing headers may be malformed (space before the
    /// colon, obs-fold, NUL, duplicates), then mutated.
    fn head() -> impl Strategy<Value = Vec<u8>> {
        let line = prop_oneof![
            3 => plain_header().prop_map(|(n, v)| format!("{n}: {v}")),
            2 => (casing(), "[0-9]{1,3}").prop_map(|(c, v)| format!("{}: {v}", c("Content-Length"))),
            2 => (casing(), prop::sample::select(&["chunked", "gzip, chunked", "identity"][..]))
                .prop_map(|(c, v)| format!("{}: {v}", c("Transfer-Encoding"))),
            1 => Just("Content-Length : 5".to_string()),
            1 => Just("Transfer-Encoding:\r\n chunked".to_string()),
            1 => Just("X-Fold: a\r\n\tb".to_string()),
            1 => Just("Transfer-Encoding\0: chunked".to_string()),
            1 => Just(" Transfer-Encoding: chunked".to_string()),
        ];
        (
            prop::collection::vec((line, eol()), 0..6),
            eol(),
            eol(),
            prop::collection::vec(mutation(), 0..3),
        )
            .prop_map(|(lines, e1, e2, muts)| {
                let mut h = format!("POST / HTTP/1.1{e1}");
                for (l, e) in lines {
                    h.push_str(&l);
                    h.push_str(e);
                }
                h.push_str(e2);
                mutate(h.into_bytes(), &muts)
            })
    }

    /// httparse's verdict on `b`: the head's length and whether it has both
    /// framing headers, or why not.
    fn reference(b: &[u8]) -> Result<Option<(usize, bool)>, httparse::Error> {
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut headers);
        Ok(match req.parse(b)? {
            httparse::Status::Partial => None,
            httparse::Status::Complete(n) => {
                let has = |name: &str| {
                    req.headers
                        .iter()
                        .any(|h| h.name.eq_ignore_ascii_case(name))
                };
                Some((n, has("content-length") && has("transfer-encoding")))
            }
        })
    }

    proptest! {
        #![proptest_config(config(10000))]

        /// The guard ends a head where httparse does and flags CL+TE exactly
        /// when httparse parses the head and finds both headers; a head
        /// httparse refuses is never taken for a complete one.
        #[test]
        fn head_end_and_cl_te_verdict_agree_with_httparse(b in head()) {
            // The guard skips every CR and LF before a request line; hyper
            // (httparse) skips empty lines and refuses a lone CR there,
            // closing the connection. Compare from the request line on.
            let skip = b.iter().take_while(|&&c| c == b'\r' || c == b'\n').count();
            let b = &b[skip..];
            let (evs, _) = events(0, &[b]);
            match reference(b) {
                Ok(Some((n, conflict))) => {
                    let (evs_at, _) = events(0, &[&b[..n]]);
                    let want = [
                        SniffEvent::HeadStarted,
                        SniffEvent::HeadDone(HeadFlags {
                            cl_te_conflict: conflict,
                        }),
                    ];
                    prop_assert_eq!(evs_at.get(..2), Some(&want[..]));
                    prop_assert_eq!(evs.get(..2), Some(&want[..]));
                    let (evs_before, off) = events(0, &[&b[..n - 1]]);
                    prop_assert!(
                        !evs_before.iter().any(|e| matches!(e, SniffEvent::HeadDone(_))) && !off,
                        "a head found before httparse's end: {:?}", evs_before
                    );
                }
                Ok(None) => {
                    prop_assert!(!evs.iter().any(|e| matches!(e, SniffEvent::HeadDone(_) | SniffEvent::Lost)), "{:?}", evs);
                }
                Err(_) => {
                    prop_assert!(!evs.iter().any(|e| matches!(e, SniffEvent::HeadDone(_))), "{:?}", evs);
                }
            }
        }

        /// Chunk-size lines: every line of RFC 9112's grammar is read with
        /// its size; what the guard takes beyond the grammar is only white
        /// space after the size or an extension it does not read, and the
        /// size is always the leading hex digits' value.
        #[test]
        fn chunk_size_lines_agree_with_the_grammar(
            zeros in 0usize..20,
            size in prop_oneof![0u64..0x1000, any::<u64>()],
            exts in prop::collection::vec(chunk_ext(), 0..3),
            muts in prop::collection::vec(mutation(), 0..3),
        ) {
            let line = format!("{}{size:x}{}", "0".repeat(zeros), exts.concat());
            prop_assert_eq!(grammar_chunk_line(line.as_bytes()), Some(size));
            prop_assert_eq!(chunk_size(line.as_bytes()), Some(size));
            let line = mutate(line.into_bytes(), &muts);
            let got = chunk_size(&line);
            if let Some(n) = grammar_chunk_line(&line) {
                prop_assert_eq!(got, Some(n));
            }
            if let Some(n) = got {
                let digits = line.iter().take_while(|c| c.is_ascii_hexdigit()).count();
                let rest = line[digits..].trim_ascii_start();
                prop_assert!(rest.is_empty() || rest[0] == b';', "{:?}", String::from_utf8_lossy(&line));
                prop_assert_eq!(grammar_chunk_line(&line[..digits]), Some(n));
            }
        }
    }
}
