//! The answer stage around generation: the relevance test that decides
//! abstention before any generator runs, and the attribution of each answer
//! sentence to the source passage that supports it afterwards. Both are
//! model-free and deterministic; `ragfleet eval answers` scores grounding
//! with [`attribute`] too, so the product and the metric agree.
use std::collections::{HashMap, HashSet};

use crate::generate::extractive::terms;
use crate::generate::segment::{segment, UnitKind};
use crate::generate::Source;
use crate::prompt::cited_numbers;

/// What every generator answers when retrieval found nothing relevant.
pub use crate::generate::extractive::NO_ANSWER;

/// The relevance test's evidence and a sentence's attribution are plain
/// data of the run snapshot, defined with it in [`crate::api`].
pub use crate::api::{Relevance, SentenceAttribution};

/// An answer after attribution.
#[derive(Debug, Clone, PartialEq)]
pub struct Attributed {
    /// The answer with each sentence followed by its supporting `[n]`
    /// markers; an unsupported sentence is followed by `[?]` (or removed
    /// when `strict`).
    pub answer: String,
    pub sentences: Vec<SentenceAttribution>,
    /// Sources the answer uses, in order of first use.
    pub used: Vec<usize>,
}

impl Attributed {
    /// Share of the answer's sentences a cited source supports (1 for an
    /// answer with no sentence).
    pub fn grounding(&self) -> f64 {
        if self.sentences.is_empty() {
            return 1.0;
        }
        let ok = self.sentences.iter().filter(|s| s.supported).count();
        ok as f64 / self.sentences.len() as f64
    }
}

/// Removes `[n]`, `[n, m]` and `[?]` markers.
pub fn strip_markers(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('[') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        match after.find(']') {
            Some(j)
                if j > 0
                    && after[..j]
                        .chars()
                        .all(|c| c.is_ascii_digit() || c == ',' || c == ' ' || c == '?') =>
            {
                rest = &after[j + 1..];
                // "long [2]." → "long.", not "long .".
                if rest.starts_with(['.', ',', ';', ':', '!', '?', ')']) {
                    out.truncate(out.trim_end().len());
                }
            }
            _ => {
                out.push('[');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Attributes every sentence of `answer` to the sources supporting it.
///
/// Support of a sentence by a source = the IDF-weighted share of the
/// sentence's content terms that occur in the source (IDF over the units of
/// the given sources; a term no source has weighs the most). A sentence
/// keeps the markers it wrote when those sources support it; otherwise it
/// gets the best-supporting source; if no source reaches `min_support` it
/// is marked `[?]`, or dropped when `strict`.
pub fn attribute(answer: &str, sources: &[Source], min_support: f32, strict: bool) -> Attributed {
    let src_terms: Vec<(usize, HashSet<String>)> = sources
        .iter()
        .map(|s| (s.n, terms(&s.text).into_iter().collect()))
        .collect();
    let idf = idf_over_units(sources);
    let max_idf = (2.0 + idf.len() as f64).ln();
    let weight = |t: &str| idf.get(t).copied().unwrap_or(max_idf);
    let mut out = String::new();
    let mut sentences = Vec::new();
    let mut used: Vec<usize> = Vec::new();
    for u in segment(answer) {
        let own = cited_numbers(&u.text, usize::MAX);
        let text = strip_markers(&u.text);
        if text.is_empty() {
            continue;
        }
        let ts: Vec<String> = dedup(terms(&text));
        let total: f64 = ts.iter().map(|t| weight(t)).sum();
        let mut support: Vec<(usize, f64)> = src_terms
            .iter()
            .map(|(n, st)| {
                let c: f64 = ts
                    .iter()
                    .filter(|t| st.contains(*t))
                    .map(|t| weight(t))
                    .sum();
                (*n, if total > 0.0 { c / total } else { 0.0 })
            })
            .collect();
        support.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let min = f64::from(min_support);
        let neutral = ts.is_empty();
        let mut chosen: Vec<usize> = own
            .iter()
            .copied()
            .filter(|n| support.iter().any(|(m, s)| m == n && *s >= min))
            .collect();
        if chosen.is_empty() {
            if let Some(&(n, s)) = support.first() {
                if s >= min {
                    chosen.push(n);
                }
            }
        }
        let best = support.first().map_or(0.0, |x| x.1);
        let supported = neutral || !chosen.is_empty();
        if !supported && strict {
            continue;
        }
        for &n in &chosen {
            if !used.contains(&n) {
                used.push(n);
            }
        }
        if !out.is_empty() {
            out.push(if u.kind == UnitKind::Sentence {
                ' '
            } else {
                '\n'
            });
        }
        out.push_str(&text);
        if !chosen.is_empty() {
            let marks: Vec<String> = chosen.iter().map(|n| format!("[{n}]")).collect();
            out.push(' ');
            out.push_str(&marks.join(""));
        } else if !supported {
            out.push_str(" [?]");
        }
        if !neutral {
            sentences.push(SentenceAttribution {
                sentence: text,
                sources: chosen,
                support: best as f32,
                supported,
            });
        }
    }
    Attributed {
        answer: out,
        sentences,
        used,
    }
}

/// The delivered answer for a generator's raw `output`: the abstention
/// as is (no citations), otherwise [`attribute`]d; an answer whose every
/// sentence strict grounding removed becomes [`NO_ANSWER`].
pub fn finish_answer(
    output: &str,
    abstained: bool,
    sources: &[Source],
    cfg: &crate::config::ChatConfig,
) -> Attributed {
    let none = || Attributed {
        answer: NO_ANSWER.to_string(),
        sentences: Vec::new(),
        used: Vec::new(),
    };
    // The generator's own "no answer" is not a claim to attribute.
    if abstained || output.trim() == NO_ANSWER {
        return none();
    }
    let a = attribute(output, sources, cfg.min_support, cfg.strict_grounding);
    if a.answer.trim().is_empty() {
        return Attributed {
            sentences: a.sentences,
            ..none()
        };
    }
    a
}

fn dedup(v: Vec<String>) -> Vec<String> {
    let mut seen = HashSet::new();
    v.into_iter().filter(|t| seen.insert(t.clone())).collect()
}

fn idf_over_units(sources: &[Source]) -> HashMap<String, f64> {
    let mut df: HashMap<String, usize> = HashMap::new();
    let mut n = 0usize;
    for s in sources {
        for u in segment(&s.text) {
            n += 1;
            let ts: HashSet<String> = terms(&u.text).into_iter().collect();
            for t in ts {
                *df.entry(t).or_default() += 1;
            }
        }
    }
    let n = n.max(1) as f64;
    df.into_iter()
        .map(|(t, d)| (t, (1.0 + n / d as f64).ln()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relevance_mean_and_threshold() {
        let r = Relevance::new(Some(0.6), 0.2, 0.45);
        assert!((r.score - 0.4).abs() < 1e-6);
        assert!(r.abstained);
        assert!(!Relevance::new(None, 0.5, 0.45).abstained);
    }

    #[test]
    fn strips_markers() {
        assert_eq!(strip_markers("a [1] b [2, 3][?] c [x]"), "a b c [x]");
        assert_eq!(
            strip_markers("long [2]. Next [1], then"),
            "long. Next, then"
        );
    }
}
