//! A plain whole-document BM25, independent of the engine's tantivy path: the
//! baseline row of `ragfleet eval retrieval`.
//!
//! Lower-case, split on non-alphanumerics (`char::is_alphanumeric`), no
//! stemming, no stop words; a document is `title + " " + text`; Lucene's
//! idf `ln(1 + (N − df + 0.5) / (df + 0.5))`; every query token counts (a
//! repeated word counts twice); ties are broken by document id. The same
//! definition in a few lines of Python is `bench/retrieval/bm25.py`.
use std::collections::HashMap;

/// Term saturation of the baseline (BEIR's Elasticsearch/Anserini setting).
pub const BASELINE_K1: f64 = 0.9;
/// Length normalisation of the baseline.
pub const BASELINE_B: f64 = 0.4;

/// Lower-cased maximal runs of alphanumeric characters.
pub fn simple_tokens(s: &str) -> Vec<String> {
    s.split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// An in-memory inverted index over whole documents.
pub struct Bm25Baseline {
    ids: Vec<String>,
    /// `k1 · (1 − b + b · len / avgdl)` per document.
    norm: Vec<f64>,
    postings: HashMap<String, Vec<(u32, u32)>>,
    k1: f64,
}

impl Bm25Baseline {
    /// Index `(id, title, text)` triples with the given parameters.
    pub fn new<'a>(
        docs: impl IntoIterator<Item = (&'a str, &'a str, &'a str)>,
        k1: f64,
        b: f64,
    ) -> Self {
        let mut ids = Vec::new();
        let mut lens = Vec::new();
        let mut postings: HashMap<String, Vec<(u32, u32)>> = HashMap::new();
        for (id, title, text) in docs {
            let doc = ids.len() as u32;
            let toks = simple_tokens(&format!("{title} {text}"));
            lens.push(toks.len());
            let mut tf: HashMap<String, u32> = HashMap::new();
            for t in toks {
                *tf.entry(t).or_default() += 1;
            }
            for (t, n) in tf {
                postings.entry(t).or_default().push((doc, n));
            }
            ids.push(id.to_string());
        }
        let avgdl = if lens.is_empty() {
            1.0
        } else {
            (lens.iter().sum::<usize>() as f64 / lens.len() as f64).max(f64::MIN_POSITIVE)
        };
        let norm = lens
            .iter()
            .map(|&l| k1 * (1.0 - b + b * l as f64 / avgdl))
            .collect();
        Self {
            ids,
            norm,
            postings,
            k1,
        }
    }

    /// The baseline's fixed parameters (k1 0.9, b 0.4).
    pub fn baseline<'a>(docs: impl IntoIterator<Item = (&'a str, &'a str, &'a str)>) -> Self {
        Self::new(docs, BASELINE_K1, BASELINE_B)
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The best `k` documents for `query` (id, score), best first, leaving
    /// out the id `skip` (ArguAna's query is itself a document).
    pub fn search(&self, query: &str, k: usize, skip: Option<&str>) -> Vec<(&str, f64)> {
        let n = self.ids.len() as f64;
        let mut acc: HashMap<u32, f64> = HashMap::new();
        for t in simple_tokens(query) {
            let Some(list) = self.postings.get(&t) else {
                continue;
            };
            let df = list.len() as f64;
            let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
            for &(doc, tf) in list {
                let tf = f64::from(tf);
                *acc.entry(doc).or_default() +=
                    idf * tf * (self.k1 + 1.0) / (tf + self.norm[doc as usize]);
            }
        }
        let mut ranked: Vec<(&str, f64)> = acc
            .into_iter()
            .map(|(d, s)| (self.ids[d as usize].as_str(), s))
            .filter(|(id, _)| skip != Some(*id))
            .collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        ranked.truncate(k);
        ranked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenises_on_non_alphanumerics() {
        assert_eq!(
            simple_tokens("Don't stop—the U.S. Route-66, Café!"),
            vec!["don", "t", "stop", "the", "u", "s", "route", "66", "café"]
        );
    }

    #[test]
    fn scores_match_the_formula() {
        let docs = [
            ("a", "", "apple apple banana"),
            ("b", "", "banana cherry"),
            ("c", "Fruit", "cherry cherry cherry date"),
        ];
        let bm = Bm25Baseline::new(docs.iter().map(|d| (d.0, d.1, d.2)), 0.9, 0.4);
        // lengths 3, 2, 5 (title counts) → avgdl 10/3.
        let avgdl = 10.0 / 3.0;
        let idf = |df: f64| (1.0f64 + (3.0 - df + 0.5) / (df + 0.5)).ln();
        let tfp = |tf: f64, len: f64| tf * 1.9 / (tf + 0.9 * (0.6 + 0.4 * len / avgdl));
        let out = bm.search("cherry apple", 10, None);
        let a = idf(1.0) * tfp(2.0, 3.0);
        let b = idf(2.0) * tfp(1.0, 2.0);
        let c = idf(2.0) * tfp(3.0, 5.0);
        let mut want = vec![("a", a), ("b", b), ("c", c)];
        want.sort_by(|x, y| y.1.total_cmp(&x.1));
        assert_eq!(out.len(), 3);
        for (got, want) in out.iter().zip(&want) {
            assert_eq!(got.0, want.0);
            assert!((got.1 - want.1).abs() < 1e-12, "{got:?} vs {want:?}");
        }
        // Title words are matched; the skipped id is left out; k truncates.
        assert_eq!(bm.search("FRUIT", 10, None)[0].0, "c");
        assert!(bm.search("fruit", 10, Some("c")).is_empty());
        assert_eq!(bm.search("cherry", 1, None).len(), 1);
        assert!(bm.search("unknown words", 10, None).is_empty());
    }

    #[test]
    fn ties_break_by_id() {
        let docs = [("z", "", "same words"), ("m", "", "same words")];
        let bm = Bm25Baseline::baseline(docs.iter().map(|d| (d.0, d.1, d.2)));
        let out: Vec<&str> = bm.search("same", 10, None).iter().map(|x| x.0).collect();
        assert_eq!(out, vec!["m", "z"]);
    }
}
