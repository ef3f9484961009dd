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
