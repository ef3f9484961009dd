//! Decoding controls shared by every local model: a repetition penalty and a
//! no-repeat n-gram ban applied to the next-token logits, and a loop detector
//! that ends an answer which has started to repeat itself.
//!
//! All three look at the *answer* only, never at the prompt: a RAG answer
//! must be free to copy names, flags and numbers from its sources.
use std::collections::{HashMap, HashSet};

/// Words in the span whose repetition ends an answer (see [`LoopGuard`]).
pub const LOOP_SPAN_WORDS: usize = 8;

/// Applies `repetition_penalty` and `no_repeat_ngram` to logits, given the
/// answer's tokens so far.
#[derive(Debug)]
pub struct Penalties {
    penalty: f32,
    ngram: usize,
    /// Tokens of the answer so far.
    answer: Vec<u32>,
    seen: HashSet<u32>,
    /// (n-1)-gram of the answer → tokens that followed it.
    follows: HashMap<Vec<u32>, Vec<u32>>,
}

impl Penalties {
    /// `penalty` ≤ 1 and `ngram` < 2 switch the respective control off.
    pub fn new(penalty: f32, ngram: usize) -> Self {
        Self {
            penalty: if penalty.is_finite() && penalty > 1.0 {
                penalty
            } else {
                1.0
            },
            ngram: if ngram >= 2 { ngram } else { 0 },
            answer: Vec::new(),
            seen: HashSet::new(),
            follows: HashMap::new(),
        }
    }

    /// Record a token of the answer.
    pub fn push(&mut self, token: u32) {
        self.answer.push(token);
        self.seen.insert(token);
        let n = self.ngram;
        if n >= 2 && self.answer.len() >= n {
            let g = &self.answer[self.answer.len() - n..];
            self.follows
                .entry(g[..n - 1].to_vec())
                .or_default()
                .push(g[n - 1]);
        }
    }

    /// Tokens the next position may not take: each would complete an n-gram
    /// the answer already holds.
    pub fn banned(&self) -> &[u32] {
        let n = self.ngram;
        if n < 2 || self.answer.len() < n - 1 {
            return &[];
        }
        let prefix = &self.answer[self.answer.len() - (n - 1)..];
        self.follows.get(prefix).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Penalise `logits` in place (CTRL-style: a seen token's positive logit
    /// is divided by the penalty, a negative one multiplied) and ban the
    /// n-gram completions. `keep` (end-of-turn ids) is never touched, so a
    /// penalty cannot stop the model from ending its answer.
    pub fn apply(&self, logits: &mut [f32], keep: &[u32]) {
        if self.penalty > 1.0 {
            for &t in &self.seen {
                if keep.contains(&t) {
                    continue;
                }
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 {
                        *l / self.penalty
                    } else {
                        *l * self.penalty
                    };
                }
            }
        }
        for &t in self.banned() {
            if keep.contains(&t) {
                continue;
            }
            if let Some(l) = logits.get_mut(t as usize) {
                *l = f32::NEG_INFINITY;
            }
        }
        // If every token was banned (a vocabulary smaller than the n-gram
        // space never gets here in practice), sampling would fail: undo.
        if logits.iter().all(|l| *l == f32::NEG_INFINITY) {
            for &t in self.banned() {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = 0.0;
                }
            }
        }
    }
}

/// Ends an answer that repeats itself: the answer text is split into
/// lower-cased words (letters and digits); as soon as the latest
/// [`LOOP_SPAN_WORDS`] words already occurred, in that order, earlier in the
/// answer, the answer is looping. A token-level n-gram ban alone does not
/// catch this: a small model loops through re-spellings (` Atomic` /
/// ` atomic`, with or without a comma) that are different tokens.
#[derive(Debug, Default)]
pub struct LoopGuard {
    partial: String,
    words: Vec<String>,
    spans: HashSet<Vec<String>>,
    looping: bool,
}

impl LoopGuard {
    /// Feed answer text; returns true once the answer loops.
    pub fn push(&mut self, text: &str) -> bool {
        for c in text.chars() {
            if c.is_alphanumeric() {
                self.partial.extend(c.to_lowercase());
            } else if !self.partial.is_empty() {
                let w = std::mem::take(&mut self.partial);
                self.word(w);
            }
        }
        self.looping
    }

    fn word(&mut self, w: String) {
        self.words.push(w);
        let n = LOOP_SPAN_WORDS;
        if self.words.len() >= n {
            let span = self.words[self.words.len() - n..].to_vec();
            if !self.spans.insert(span) {
                self.looping = true;
            }
        }
    }

    pub fn looping(&self) -> bool {
        self.looping
    }
}

/// The largest number of times any `span`-token window occurs in `ids`
/// (a loop measure for tests and evaluation).
pub fn max_span_repeats(ids: &[u32], span: usize) -> usize {
    if span == 0 || ids.len() < span {
        return 0;
    }
    let mut counts: HashMap<&[u32], usize> = HashMap::new();
    for w in ids.windows(span) {
        *counts.entry(w).or_default() += 1;
    }
    counts.values().copied().max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ngram_ban_forbids_completing_a_seen_ngram() {
        let mut p = Penalties::new(1.0, 3);
        for t in [5, 6, 7, 5] {
            p.push(t);
        }
        assert!(p.banned().is_empty(), "(7,5) was never followed");
        p.push(6);
        assert_eq!(p.banned(), &[7]);
        let mut logits = vec![1.0f32; 10];
        p.apply(&mut logits, &[]);
        assert_eq!(logits[7], f32::NEG_INFINITY);
        assert_eq!(logits[6], 1.0);
        // End-of-turn ids are never banned.
        let mut logits = vec![1.0f32; 10];
        p.apply(&mut logits, &[7]);
        assert_eq!(logits[7], 1.0);
    }

    #[test]
    fn penalty_pushes_seen_tokens_down_both_signs() {
        let mut p = Penalties::new(2.0, 0);
        p.push(1);
        p.push(2);
        let mut logits = vec![4.0, 4.0, -4.0, 4.0];
        p.apply(&mut logits, &[]);
        assert_eq!(logits, vec![4.0, 2.0, -8.0, 4.0]);
        // Off: nothing changes.
        let mut off = Penalties::new(1.0, 1);
        off.push(1);
        let mut logits = vec![4.0, 4.0];
        off.apply(&mut logits, &[]);
        assert_eq!(logits, vec![4.0, 4.0]);
        assert!(off.banned().is_empty());
    }

    #[test]
    fn loop_guard_fires_on_a_respelled_repeat_only() {
        let mut g = LoopGuard::default();
        let s = "An atomic is a type that is immutable, but it can be changed at any time. ";
        assert!(!g.push(s));
        assert!(!g.push("Another sentence with other words follows here. "));
        // The same words again with different case and punctuation.
        assert!(g.push("AN ATOMIC is a type that is: immutable; but"));
        let mut g = LoopGuard::default();
        assert!(!g.push("one two three four five six seven eight nine ten one two three"));
    }

    #[test]
    fn span_repeats_are_counted() {
        let ids: Vec<u32> = [1, 2, 3, 1, 2, 3, 1, 2, 3, 9].to_vec();
        assert_eq!(max_span_repeats(&ids, 3), 3);
        assert_eq!(max_span_repeats(&ids, 7), 1);
        assert_eq!(max_span_repeats(&ids, 11), 0);
    }
}
