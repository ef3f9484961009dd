//! Turning a stream of token bytes into clean text deltas: whole UTF-8
//! characters only, and never a piece of a stop string.

/// Collects raw token bytes and releases only complete UTF-8 text (a
/// character split across tokens waits for its last byte).
#[derive(Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// Add bytes; returns the text that is now complete.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // Safe: from_utf8 just said these bytes are valid.
                    out.push_str(&String::from_utf8_lossy(&self.pending[..valid]));
                    match e.error_len() {
                        // Incomplete character at the end: wait for more.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                        // Bytes that can never be valid: replace, go on.
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }

    /// End of stream: whatever is left is an unfinished character.
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}

/// Holds back text that could be the start of a stop string, and cuts the
/// output where a stop string appears (the stop string itself is not emitted).
pub struct StopMatcher {
    stops: Vec<String>,
    text: String,
    emitted: usize,
    stopped: bool,
}

impl StopMatcher {
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            text: String::new(),
            emitted: 0,
            stopped: false,
        }
    }

    /// Whether a stop string was found (no more text will be released).
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Add generated text; returns the delta that is safe to emit now.
    pub fn push(&mut self, delta: &str) -> String {
        if self.stopped {
            return String::new();
        }
        self.text.push_str(delta);
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        // A stop string can only start within `longest` bytes before the new text.
        let mut from = self.emitted.saturating_sub(longest);
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        let hit = self
            .stops
            .iter()
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|i| from + i))
            .min();
        if let Some(cut) = hit {
            self.stopped = true;
            let cut = cut.max(self.emitted);
            let out = self.text[self.emitted..cut].to_string();
            self.emitted = cut;
            return out;
        }
        // Keep back the longest tail that is a proper prefix of a stop string.
        let mut safe = self.text.len();
        for (i, _) in self.text[self.emitted..].char_indices() {
            let start = self.emitted + i;
            let tail = &self.text[start..];
            if self
                .stops
                .iter()
                .any(|s| s.len() > tail.len() && s.starts_with(tail))
            {
                safe = start;
                break;
            }
        }
        let out = self.text[self.emitted..safe].to_string();
        self.emitted = safe;
        out
    }

    /// End of generation: release what was held back (it did not turn into a
    /// stop string).
    pub fn finish(&mut self) -> String {
        if self.stopped {
            return String::new();
        }
        let out = self.text[self.emitted..].to_string();
        self.emitted = self.text.len();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multibyte_characters_split_across_tokens_come_out_whole() {
        let mut u = Utf8Stream::default();
        let bytes = "é🚀東".as_bytes();
        let mut out = Vec::new();
        for b in bytes {
            out.push(u.push(&[*b]));
        }
        // é = 2 bytes, 🚀 = 4, 東 = 3: text appears only on the last byte of each.
        let non_empty: Vec<&String> = out.iter().filter(|s| !s.is_empty()).collect();
        assert_eq!(non_empty, ["é", "🚀", "東"]);
        assert_eq!(u.finish(), "");
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut u = Utf8Stream::default();
        assert_eq!(u.push(b"a\xffb"), "a\u{fffd}b");
        assert_eq!(u.push(b"\xe6\x9d"), "");
        assert_eq!(u.finish(), "\u{fffd}");
    }

    #[test]
    fn stop_strings_are_cut_and_prefixes_held_back() {
        let mut m = StopMatcher::new(&["\nUser:".to_string(), "END".to_string()]);
        assert_eq!(m.push("Hello"), "Hello");
        assert_eq!(m.push(" wor"), " wor");
        assert_eq!(m.push("ld\nUs"), "ld"); // "\nUs" may start "\nUser:"
        assert_eq!(m.push("er: hi"), "");
        assert!(m.stopped());
        assert_eq!(m.push("more"), "");
        assert_eq!(m.finish(), "");
    }

    #[test]
    fn held_back_prefix_is_released_when_it_is_not_a_stop() {
        let mut m = StopMatcher::new(&["END".to_string()]);
        assert_eq!(m.push("the EN"), "the ");
        assert_eq!(m.push("D"), "");
        assert!(m.stopped());

        let mut m = StopMatcher::new(&["END".to_string()]);
        assert_eq!(m.push("the EN"), "the ");
        assert_eq!(m.push("ds"), "ENds");
        assert_eq!(m.push(" E"), " ");
        assert_eq!(m.finish(), "E");
    }

    #[test]
    fn stop_string_spanning_many_deltas_and_non_ascii() {
        let mut m = StopMatcher::new(&["ñé!".to_string()]);
        let mut out = String::new();
        for d in ["aé", "ñ", "é", "!", "zz"] {
            out.push_str(&m.push(d));
        }
        out.push_str(&m.finish());
        assert_eq!(out, "aé");
    }
}
