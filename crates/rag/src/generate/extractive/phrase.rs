//! The phrase of a sentence that answers an open "what/which" question.
//!
//! SQuAD-style answers lie next to the question's words but are not made of
//! them ("What fort did the British capture?" — "… the British captured
//! **Fort Beauséjour** on the border …"). The sentence is cut into phrases
//! at the question's words, at punctuation and at clause words (`that`,
//! `which`, `is`, `was`, …); each phrase (stop words trimmed from its ends)
//! is scored by fixed, hand-readable features, and the best one is the
//! answer:
//!
//! - closeness to the question's words, mostly to those *before* it (an
//!   answer tends to follow the verb or noun the question restates);
//! - capitalised words (names) inside it;
//! - the question's answer-type noun inside it ("What *fort* …" →
//!   "Fort Beauséjour"): that noun does not cut phrases;
//! - a mild preference for longer phrases (token F1 gives partial credit;
//!   a user reads a phrase more easily than a lone word).
//!
//! The weights were fitted by coordinate ascent on the gold sentences of
//! the even-position SQuAD dev articles (a tuning sample, seed 7) and
//! rounded; the odd-position articles were held out (F1 0.25 → 0.42 over
//! whole sentences there). Deterministic and model-free.
use super::{is_stop, stem, tokenize, Tok};

/// Words that open a clause or carry the verb: a phrase does not run across
/// them.
const CLAUSE_WORDS: &[&str] = &[
    "that", "which", "who", "whom", "whose", "where", "when", "while", "because", "although",
    "though", "since", "if", "than", "but", "nor", "so", "yet", "is", "was", "are", "were", "be",
    "been", "being", "has", "have", "had", "do", "does", "did", "will", "would", "can", "could",
    "should", "may", "might", "must", "also", "often", "not",
];

const COPULAS: &[&str] = &[
    "is", "was", "are", "were", "be", "been", "being", "became", "become", "becomes",
];

/// Words between "what/which" and the answer-type noun ("what type of …").
const TYPE_FILLERS: &[&str] = &[
    "type", "types", "kind", "kinds", "sort", "form", "of", "a", "an", "the",
];

/// Feature weights (see the module docs).
const W_PROX: f64 = 1.0;
const W_AFTER: f64 = 2.0;
const W_BEFORE: f64 = -1.5;
const W_CAP_SHARE: f64 = 2.0;
const W_ANY_CAP: f64 = 1.5;
const W_LEN: f64 = 1.0;
const W_HEAD: f64 = 4.0;
const W_COPULA: f64 = -0.5;
const W_LEFT_SHARE: f64 = 1.5;

/// Whether a word stem matches a question term: equal, or one a prefix of
/// the other when both have at least 4 letters ("captur"/"capture").
pub(super) fn term_match(stem: &str, q: &str) -> bool {
    stem == q || (stem.len().min(q.len()) >= 4 && (stem.starts_with(q) || q.starts_with(stem)))
}

/// The stem of the noun a "what/which" question asks for: "What fort did
/// …" → "fort", "Which type of engine …" → "engine".
pub(super) fn wh_head(question: &str) -> Option<String> {
    let ws: Vec<String> = question
        .split(|c: char| !(c.is_alphanumeric() || c == '\'' || c == '-'))
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    ws.iter()
        .enumerate()
        .filter(|(_, w)| *w == "what" || *w == "which")
        .find_map(|(i, _)| {
            let w = ws[i + 1..]
                .iter()
                .find(|w| !TYPE_FILLERS.contains(&w.as_str()))?;
            if is_stop(w) || CLAUSE_WORDS.contains(&w.as_str()) {
                return None;
            }
            let alnum: String = w.chars().filter(|c| c.is_alphanumeric()).collect();
            Some(stem(&alnum))
        })
}

/// The phrase of `sentence` that answers `question` (whose term stems are
/// `q_terms`), or `None` when no phrase stands out (the sentence then
/// answers whole).
pub(super) fn answer_phrase(question: &str, q_terms: &[String], sentence: &str) -> Option<String> {
    let toks = tokenize(sentence);
    let head = wh_head(question);
    let is_q: Vec<bool> = toks
        .iter()
        .map(|t| {
            !t.stop
                && q_terms.iter().any(|q| term_match(&t.stem, q))
                && head.as_deref() != Some(t.stem.as_str())
        })
        .collect();
    let matches: Vec<usize> = (0..toks.len()).filter(|&i| is_q[i]).collect();
    if matches.is_empty() {
        return None;
    }
    let mut best: Option<(f64, usize, usize)> = None;
    for (i, j) in phrases(&toks, &is_q) {
        let s = phrase_score(&toks, &matches, head.as_deref(), i, j);
        if best.is_none_or(|b| s > b.0) {
            best = Some((s, i, j));
        }
    }
    let (_, i, j) = best?;
    let words: Vec<&str> = toks[i..=j].iter().map(|t| t.core.as_str()).collect();
    Some(words.join(" "))
}

/// The candidate phrases as inclusive token ranges: runs cut at question
/// words, clause words and punctuation, stop words trimmed from the ends.
fn phrases(toks: &[Tok], is_q: &[bool]) -> Vec<(usize, usize)> {
    let mut runs: Vec<Vec<usize>> = Vec::new();
    let mut cur: Vec<usize> = Vec::new();
    for (k, t) in toks.iter().enumerate() {
        if is_q[k] || CLAUSE_WORDS.contains(&t.word.as_str()) {
            runs.push(std::mem::take(&mut cur));
            continue;
        }
        cur.push(k);
        if t.brk_after {
            runs.push(std::mem::take(&mut cur));
        }
    }
    runs.push(cur);
    runs.into_iter()
        .filter_map(|r| {
            let first = r.iter().position(|&k| !toks[k].stop)?;
            let last = r.iter().rposition(|&k| !toks[k].stop)?;
            Some((r[first], r[last]))
        })
        .collect()
}

fn phrase_score(toks: &[Tok], matches: &[usize], head: Option<&str>, i: usize, j: usize) -> f64 {
    let left: Vec<usize> = matches.iter().filter(|&&p| p < i).map(|&p| i - p).collect();
    let right: Vec<usize> = matches.iter().filter(|&&p| p > j).map(|&p| p - j).collect();
    let gap = |v: &[usize]| v.iter().copied().min().map_or(0.0, |d| 1.0 / d as f64);
    let prox: f64 = left
        .iter()
        .chain(right.iter())
        .map(|&d| 1.0 / d.max(1) as f64)
        .sum::<f64>()
        / matches.len() as f64;
    let n = (j - i + 1) as f64;
    let caps = (i..=j).filter(|&k| k > 0 && toks[k].cap).count() as f64;
    let has_head = head.is_some_and(|h| toks[i..=j].iter().any(|t| t.stem == h));
    let after_copula = i > 0 && COPULAS.contains(&toks[i - 1].word.as_str());
    W_PROX * prox
        + W_AFTER * gap(&left)
        + W_BEFORE * gap(&right)
        + W_CAP_SHARE * caps / n
        + if caps > 0.0 { W_ANY_CAP } else { 0.0 }
        + W_LEN * n / 10.0
        + if has_head { W_HEAD } else { 0.0 }
        + if after_copula { W_COPULA } else { 0.0 }
        + W_LEFT_SHARE * left.len() as f64 / matches.len() as f64
}
