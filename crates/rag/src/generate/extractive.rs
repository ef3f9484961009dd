//! The extractive generator: no model. The answer is the best-matching
//! sentences of the numbered sources, each followed by its `[n]` marker.
//! Deterministic and instant: for load tests and machines without models.
use std::collections::{HashMap, HashSet};

use futures::stream::{self, BoxStream, StreamExt};

use super::{GenerateRequest, Generator, Source};
use crate::Result;

/// Sentences kept at most.
const MAX_SENTENCES: usize = 3;

/// Answers with sentences from the sources (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct ExtractiveGenerator;

impl ExtractiveGenerator {
    pub fn new() -> Self {
        Self
    }

    /// The whole answer at once (what [`Generator::generate`] streams).
    pub fn answer(&self, question: &str, sources: &[Source], max_tokens: usize) -> String {
        let answer = answer(question, sources);
        // Respect max_tokens (in this generator's token estimate).
        let mut out = String::new();
        for word in answer.split_inclusive(' ') {
            if count(&out) + count(word) > max_tokens.max(1) {
                break;
            }
            out.push_str(word);
        }
        out.trim_end().to_string()
    }
}

/// ~4 chars per token, the usual estimate for English.
fn count(text: &str) -> usize {
    text.chars().count().div_ceil(4)
}

const STOPWORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "by", "did", "do", "does", "for", "from", "had",
    "has", "have", "how", "in", "is", "it", "its", "many", "much", "of", "on", "or", "that", "the",
    "their", "there", "this", "to", "was", "were", "what", "when", "where", "which", "who", "whom",
    "whose", "why", "will", "with", "you", "your", "can", "could", "would", "should", "into",
    "about", "than", "then", "they", "them", "he", "she", "his", "her", "we", "our", "i", "me",
    "my", "not", "no", "name", "called",
];

/// Lowercase word stems, stopwords removed.
fn terms(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase())
        .filter(|w| !STOPWORDS.contains(&w.as_str()))
        .map(|w| stem(&w))
        .collect()
}

/// A light suffix stripper (enough to match "founded"/"founding"/"founds").
fn stem(w: &str) -> String {
    for suf in ["ingly", "ing", "edly", "ed", "ies", "es", "s", "ly"] {
        if let Some(base) = w.strip_suffix(suf) {
            if base.chars().count() >= 3 {
                return base.to_string();
            }
        }
    }
    w.to_string()
}

/// Splits text into sentences (at `.`, `!`, `?` followed by whitespace, and at newlines).
fn sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let bytes = text.as_bytes();
    for (i, c) in text.char_indices() {
        let end_here = match c {
            '\n' => true,
            '.' | '!' | '?' => bytes.get(i + 1).is_none_or(|b| b.is_ascii_whitespace()),
            _ => false,
        };
        if end_here {
            let s = text[start..=i].trim();
            if !s.is_empty() {
                out.push(s);
            }
            start = i + c.len_utf8();
        }
    }
    let s = text[start..].trim();
    if !s.is_empty() {
        out.push(s);
    }
    out
}

fn answer(question: &str, sources: &[Source]) -> String {
    if sources.is_empty() {
        return "I found no sources that answer this question.".to_string();
    }
    let q: HashSet<String> = terms(question).into_iter().collect();
    // (source n, sentence, its terms)
    let mut cands: Vec<(usize, &str, HashSet<String>)> = Vec::new();
    for s in sources {
        for sent in sentences(&s.text) {
            cands.push((s.n, sent, terms(sent).into_iter().collect()));
        }
    }
    let mut df: HashMap<&str, usize> = HashMap::new();
    for (_, _, ts) in &cands {
        for t in ts {
            df.entry(t.as_str()).or_default();
        }
    }
    for (_, _, ts) in &cands {
        for t in ts {
            if let Some(d) = df.get_mut(t.as_str()) {
                *d += 1;
            }
        }
    }
    let n = cands.len() as f64;
    let mut scored: Vec<(f64, usize)> = cands
        .iter()
        .enumerate()
        .map(|(i, (_, _, ts))| {
            let s: f64 = q
                .iter()
                .filter(|t| ts.contains(*t))
                .map(|t| {
                    let d = df.get(t.as_str()).copied().unwrap_or(1) as f64;
                    (1.0 + n / d).ln()
                })
                .sum();
            (s, i)
        })
        .filter(|(s, _)| *s > 0.0)
        .collect();
    // Best first; earlier sources and sentences win ties (deterministic).
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let Some(&(best, _)) = scored.first() else {
        return "The sources do not answer this question.".to_string();
    };
    let picked: Vec<usize> = scored
        .iter()
        .filter(|(s, _)| *s >= best * 0.5)
        .take(MAX_SENTENCES)
        .map(|&(_, i)| i)
        .collect();
    picked
        .iter()
        .map(|&i| {
            let (n, sent, _) = &cands[i];
            format!("{sent} [{n}]")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl Generator for ExtractiveGenerator {
    fn id(&self) -> String {
        "extractive/v1".to_string()
    }

    fn context_tokens(&self) -> usize {
        8192
    }

    fn count_tokens(&self, text: &str) -> usize {
        count(text)
    }

    fn generate(&self, req: GenerateRequest) -> BoxStream<'static, Result<String>> {
        let text = self.answer(&req.question, &req.sources, req.params.max_tokens);
        let deltas: Vec<Result<String>> = text
            .split_inclusive(' ')
            .map(|w| Ok(w.to_string()))
            .collect();
        stream::iter(deltas).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(n: usize, text: &str) -> Source {
        Source {
            n,
            chunk_id: format!("d#{n}"),
            title: String::new(),
            text: text.to_string(),
        }
    }

    #[test]
    fn picks_the_matching_sentence_with_its_marker() {
        let sources = vec![
            src(1, "Paris is the capital of France. It has many museums."),
            src(
                2,
                "The Eiffel Tower was completed in 1889. It is made of iron.",
            ),
        ];
        let a = ExtractiveGenerator.answer("When was the Eiffel Tower completed?", &sources, 256);
        assert!(
            a.starts_with("The Eiffel Tower was completed in 1889. [2]"),
            "{a}"
        );
        assert!(!a.contains("[1]"), "{a}");
    }

    #[test]
    fn splits_sentences() {
        assert_eq!(
            sentences("A b. C d!\nE f 1.5 g"),
            vec!["A b.", "C d!", "E f 1.5 g"]
        );
    }
}
