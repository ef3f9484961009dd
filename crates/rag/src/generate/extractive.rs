//! The extractive generator: no model. It answers with the part of the
//! numbered sources that holds the answer, each piece followed by its `[n]`.
//! Deterministic and instant: for load tests and machines without models.
//!
//! 1. The sources are cut into answer units ([`super::segment`]): sentences,
//!    list items, table rows, code lines, `key = value` lines, headings.
//! 2. Each unit is scored by IDF-weighted overlap with the question's terms
//!    (the share of the question's weight it covers, plus matched word pairs).
//!    IDF is computed over the units of the retrieved sources, not the whole
//!    index: that keeps the answer a pure function of (question, sources),
//!    so a stored run replays to the same answer whatever the index holds
//!    later, and it weighs terms by how well they tell the candidate units
//!    apart, which is the choice being made. Earlier (better retrieved)
//!    sources win small ties.
//! 3. The question's type ([`QuestionType`]) adds cues: a number/date/name/
//!    place/identifier question wants a unit holding one, and when such a
//!    span stands near the question's words in the best unit, the answer is
//!    that span alone ("1889 [2]"); "how do I run" wants a command or code
//!    line; "what does X stand for" the expansion of X.
//! 4. Otherwise the answer is the best 1–3 units (a unit ending in `:` brings
//!    the list items, rows or code lines after it), de-duplicated across
//!    overlapping chunks.
use std::collections::{HashMap, HashSet};

use futures::stream::{self, BoxStream, StreamExt};

use super::segment::{segment, UnitKind};
use super::{GenerateRequest, Generator, Source};
use crate::Result;

/// Units kept at most.
const MAX_UNITS: usize = 3;

/// The answer when the sources do not answer (also the engine's abstention).
pub const NO_ANSWER: &str = "The sources do not answer this question.";

/// Answers with units of the sources (see the module docs).
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

pub(crate) const STOPWORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "by", "did", "do", "does", "for", "from", "had",
    "has", "have", "how", "in", "is", "it", "its", "many", "much", "of", "on", "or", "that", "the",
    "their", "there", "this", "to", "was", "were", "what", "when", "where", "which", "who", "whom",
    "whose", "why", "will", "with", "you", "your", "can", "could", "would", "should", "into",
    "about", "than", "then", "they", "them", "he", "she", "his", "her", "we", "our", "i", "me",
    "my", "not", "no", "name", "called", "been", "being", "these", "those", "also", "after",
    "before", "during", "over", "under", "between", "some", "other", "such", "one", "two", "if",
    "so", "but", "all", "any", "each", "more", "most", "may", "might", "must", "own", "same",
    "him", "up", "out", "use", "used", "type", "kind",
];

pub(crate) fn is_stop(w: &str) -> bool {
    STOPWORDS.contains(&w)
}

/// Lowercase word stems, stopwords removed.
pub(crate) fn terms(text: &str) -> Vec<String> {
    words(text)
        .map(|w| w.to_lowercase())
        .filter(|w| !is_stop(w))
        .map(|w| stem(&w))
        .collect()
}

fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
}

/// A light suffix stripper (enough to match "founded"/"founding"/"founds").
pub(crate) fn stem(w: &str) -> String {
    for suf in [
        "ingly", "ations", "ation", "ing", "edly", "ed", "ies", "es", "s", "ly",
    ] {
        if let Some(base) = w.strip_suffix(suf) {
            if base.chars().count() >= 3 {
                return base.to_string();
            }
        }
    }
    w.to_string()
}

/// What kind of answer a question asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuestionType {
    /// how many/much, default, maximum, percentage, size.
    Number,
    /// when, what year/date/century.
    Date,
    /// who, whose, which person.
    Person,
    /// where, in which city/country.
    Place,
    /// how do I run, which command.
    Command,
    /// which variable/flag/option/macro/function.
    Identifier,
    /// what does X stand for / mean.
    Definition,
    /// what/which + noun: a name or a noun phrase.
    Entity,
    /// why, how (manner), anything else.
    Other,
}

/// The question's type from its wording.
pub fn question_type(question: &str) -> QuestionType {
    let q = format!(
        " {} ",
        question.to_lowercase().replace(['?', ',', '"'], " ")
    );
    let has = |s: &str| q.contains(s);
    if has(" stand for ") || has(" stands for ") || has(" abbreviation ") || has(" acronym ") {
        return QuestionType::Definition;
    }
    if has(" command ") || has(" how do i run ") || has(" how do you run ") || has(" how to run ") {
        return QuestionType::Command;
    }
    if [
        " variable",
        " flag",
        " option ",
        " macro ",
        " function ",
        " method ",
        " attribute ",
        " keyword ",
        " trait ",
        " environment ",
    ]
    .iter()
    .any(|k| has(k))
        && (has(" which ") || has(" what "))
    {
        return QuestionType::Identifier;
    }
    if [
        " how many ",
        " how much ",
        " default ",
        " maximum ",
        " minimum ",
        " max ",
        " percentage ",
        " percent ",
        " how long ",
        " how far ",
        " how old ",
        " how large ",
        " how big ",
        " how high ",
        " how tall ",
        " what number ",
        " what size ",
        " how often ",
        " limit ",
        " population ",
        " what age ",
        " how fast ",
        " how heavy ",
        " how deep ",
        " what amount ",
        " how wide ",
    ]
    .iter()
    .any(|k| has(k))
    {
        return QuestionType::Number;
    }
    if has(" when ")
        || [
            " what year",
            " which year",
            " what date",
            " what century",
            " which century",
            " what day",
            " what month",
            " what decade",
            " what time",
            " what period",
        ]
        .iter()
        .any(|k| has(k))
    {
        return QuestionType::Date;
    }
    if has(" who ") || has(" whom ") || has(" whose ") || has(" which person ") {
        return QuestionType::Person;
    }
    if has(" where ")
        || [
            " what city",
            " which city",
            " what country",
            " which country",
            " what state",
            " which state",
            " what region",
            " which region",
            " what continent",
            " what location",
            " what place",
        ]
        .iter()
        .any(|k| has(k))
    {
        return QuestionType::Place;
    }
    if has(" what ") || has(" which ") || has(" name ") {
        return QuestionType::Entity;
    }
    QuestionType::Other
}

/// One candidate unit with its source and score.
struct Cand {
    n: usize,
    /// Source rank (0 = best retrieved), then order within it.
    order: (usize, usize),
    kind: UnitKind,
    text: String,
    terms: HashSet<String>,
    score: f64,
}

fn answer(question: &str, sources: &[Source]) -> String {
    if sources.is_empty() {
        return NO_ANSWER.to_string();
    }
    let qtype = question_type(question);
    let mut cands: Vec<Cand> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    for (rank, s) in sources.iter().enumerate() {
        for (i, u) in segment(&s.text).into_iter().enumerate() {
            // The same unit from overlapping chunks counts once (the best
            // retrieved copy).
            let key: String = normal_key(&u.text);
            if key.is_empty() || !seen.insert(key) {
                continue;
            }
            cands.push(Cand {
                n: s.n,
                order: (rank, i),
                kind: u.kind,
                terms: terms(&u.text).into_iter().collect(),
                text: u.text,
                score: 0.0,
            });
        }
    }
    let idf = idf_over(&cands);
    let q_terms: Vec<String> = dedup(terms(question));
    let q_weight: f64 = q_terms.iter().map(|t| idf_of(&idf, t)).sum();
    if q_weight == 0.0 {
        return NO_ANSWER.to_string();
    }
    let q_pairs = pairs(&terms(question));
    for c in &mut cands {
        c.score = unit_score(c, &q_terms, &q_pairs, &idf, q_weight, qtype, question);
    }
    let mut ranked: Vec<usize> = (0..cands.len()).filter(|&i| cands[i].score > 0.0).collect();
    ranked.sort_by(|&a, &b| {
        cands[b]
            .score
            .total_cmp(&cands[a].score)
            .then(cands[a].order.cmp(&cands[b].order))
    });
    let Some(&best) = ranked.first() else {
        return NO_ANSWER.to_string();
    };
    // A typed question whose answer is a span of the best units.
    if let Some((span, n)) = best_span(&cands, &ranked, question, &q_terms, &idf, qtype) {
        return format!("{span} [{n}]");
    }
    let picked = pick_units(&cands, &ranked, best);
    let mut out = String::new();
    for (k, &i) in picked.iter().enumerate() {
        if k > 0 {
            // Structured units (code, rows, items) each on a line.
            let prose = cands[i].kind == UnitKind::Sentence
                && cands[picked[k - 1]].kind == UnitKind::Sentence;
            out.push(if prose { ' ' } else { '\n' });
        }
        out.push_str(&format!("{} [{}]", cands[i].text, cands[i].n));
    }
    out
}

fn dedup(v: Vec<String>) -> Vec<String> {
    let mut seen = HashSet::new();
    v.into_iter().filter(|t| seen.insert(t.clone())).collect()
}

fn normal_key(text: &str) -> String {
    words(text)
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(" ")
}

fn pairs(ts: &[String]) -> HashSet<(String, String)> {
    ts.windows(2)
        .map(|w| (w[0].clone(), w[1].clone()))
        .collect()
}

fn idf_over(cands: &[Cand]) -> HashMap<String, f64> {
    let mut df: HashMap<String, usize> = HashMap::new();
    for c in cands {
        for t in &c.terms {
            *df.entry(t.clone()).or_default() += 1;
        }
    }
    let n = cands.len().max(1) as f64;
    df.into_iter()
        .map(|(t, d)| (t, (1.0 + n / d as f64).ln()))
        .collect()
}

fn idf_of(idf: &HashMap<String, f64>, t: &str) -> f64 {
    // A question term absent from every unit still counts (it is what the
    // sources lack), as if it occurred once.
    idf.get(t).copied().unwrap_or_else(|| {
        let n = idf.len().max(1) as f64;
        (1.0 + n).ln()
    })
}

fn unit_score(
    c: &Cand,
    q_terms: &[String],
    q_pairs: &HashSet<(String, String)>,
    idf: &HashMap<String, f64>,
    q_weight: f64,
    qtype: QuestionType,
    question: &str,
) -> f64 {
    let covered: f64 = q_terms
        .iter()
        .filter(|t| c.terms.contains(*t))
        .map(|t| idf_of(idf, t))
        .sum();
    if covered == 0.0 {
        return 0.0;
    }
    let mut s = covered / q_weight;
    // Question word pairs in the same order in the unit.
    let unit_terms = terms(&c.text);
    let matched_pairs = unit_terms
        .windows(2)
        .filter(|w| q_pairs.contains(&(w[0].clone(), w[1].clone())))
        .count();
    s += 0.1 * matched_pairs.min(3) as f64;
    // Long units match by chance: a mild length normalisation.
    s /= 1.0 + (c.terms.len() as f64 / 40.0);
    // Type cues.
    let toks = tokenize(&c.text);
    let typed = match qtype {
        QuestionType::Number => toks.iter().any(|t| t.num),
        QuestionType::Date => toks.iter().any(|t| t.date),
        QuestionType::Person | QuestionType::Place => toks.iter().skip(1).any(|t| t.cap),
        QuestionType::Identifier => toks.iter().any(|t| t.ident),
        QuestionType::Command => matches!(c.kind, UnitKind::CodeLine) || c.text.contains('`'),
        QuestionType::Definition => definition_of(question, &c.text).is_some(),
        QuestionType::Entity | QuestionType::Other => true,
    };
    if typed {
        s *= 1.25;
    }
    if c.kind == UnitKind::Heading {
        s *= 0.5;
    }
    // Earlier sources win small ties.
    s * (1.0 - 0.03 * c.order.0.min(5) as f64)
}

/// The best 1–3 units: those scoring at least 60 % of the best; a unit
/// ending in `:` brings up to 6 structured units right after it (the list,
/// rows or code it introduces).
fn pick_units(cands: &[Cand], ranked: &[usize], best: usize) -> Vec<usize> {
    let top = cands[best].score;
    let mut picked: Vec<usize> = Vec::new();
    let mut chosen = 0;
    for &i in ranked {
        if cands[i].score < top * 0.6 || chosen >= MAX_UNITS {
            break;
        }
        if picked.contains(&i) {
            continue;
        }
        // Skip a unit contained in one already picked (a chunk cut mid-unit).
        let key = normal_key(&cands[i].text);
        if picked
            .iter()
            .any(|&p| normal_key(&cands[p].text).contains(&key))
        {
            continue;
        }
        picked.push(i);
        chosen += 1;
        if cands[i].text.trim_end().ends_with(':') {
            let mut j = i + 1;
            while j < cands.len()
                && j <= i + 6
                && cands[j].n == cands[i].n
                && !matches!(cands[j].kind, UnitKind::Sentence | UnitKind::Heading)
            {
                if !picked.contains(&j) {
                    picked.push(j);
                }
                j += 1;
            }
        }
    }
    picked
}

// ------------------------------------------------------------------ spans

/// A word of a unit with the features span extraction needs.
#[derive(Debug, Clone)]
struct Tok {
    core: String,
    stem: String,
    stop: bool,
    /// Punctuation (`,;:()`) after the word: spans do not cross it.
    brk_after: bool,
    cap: bool,
    num: bool,
    date: bool,
    ident: bool,
}

const NAME_PARTICLES: &[&str] = &[
    "van", "von", "der", "de", "da", "del", "di", "du", "la", "le", "bin", "al", "of", "the",
];

const MONTHS: &[&str] = &[
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
];

const NUMBER_WORDS: &[&str] = &[
    "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
    "twelve", "thirteen", "fourteen", "fifteen", "twenty", "thirty", "forty", "fifty", "sixty",
    "seventy", "eighty", "ninety", "hundred", "thousand", "million", "billion", "trillion",
    "dozen", "half", "several",
];

fn tokenize(text: &str) -> Vec<Tok> {
    let mut out: Vec<Tok> = Vec::new();
    let mut in_code = false;
    for piece in text.split_whitespace() {
        let starts_code = piece.starts_with('`');
        if starts_code {
            in_code = true;
        }
        let code = in_code;
        if piece
            .trim_end_matches([',', '.', ';', ':', ')'])
            .ends_with('`')
        {
            in_code = false;
        }
        let lead: &[char] = &['(', '"', '\'', '“', '‘', '[', '`', '*'];
        let trail: &[char] = &[
            ',', ';', ':', ')', '"', '\'', '”', '’', ']', '.', '!', '?', '`', '*',
        ];
        if piece.starts_with(['(', '[']) {
            if let Some(prev) = out.last_mut() {
                prev.brk_after = true;
            }
        }
        let mut core = piece.trim_start_matches(lead);
        let before_trim = core;
        core = core.trim_end_matches(trail);
        // Keep the dot of "U.S." and "Inc.".
        if before_trim.len() > core.len()
            && before_trim[core.len()..].starts_with('.')
            && core.contains('.')
        {
            core = &before_trim[..core.len() + 1];
        }
        let tail = &before_trim[core.len()..];
        let brk = tail.contains([',', ';', ':', ')', ']', '.', '!', '?']);
        if core.is_empty() {
            if let Some(prev) = out.last_mut() {
                prev.brk_after = true;
            }
            continue;
        }
        let lower = core.to_lowercase();
        let alnum: String = lower.chars().filter(|c| c.is_alphanumeric()).collect();
        let digits = core.chars().filter(char::is_ascii_digit).count();
        let num = digits > 0
            && core
                .chars()
                .all(|c| c.is_ascii_digit() || ",.$%£€-–/".contains(c))
            || NUMBER_WORDS.contains(&alnum.as_str())
            || (digits > 0
                && (lower.ends_with("th")
                    || lower.ends_with("st")
                    || lower.ends_with("nd")
                    || lower.ends_with("rd")
                    || lower.ends_with('s'))
                && digits + 2 >= core.len());
        let year = digits == 4
            && core.len() <= 6
            && alnum
                .get(..4)
                .and_then(|y| y.parse::<u32>().ok())
                .is_some_and(|y| (1000..=2100).contains(&y));
        let date = year
            || MONTHS.contains(&alnum.as_str())
            || alnum == "century"
            || alnum.ends_with("century")
            || (digits > 0 && lower.ends_with('s') && digits + 1 == core.len());
        let ident = code
            || core.contains('_')
            || core.starts_with("--")
            || core.contains("::")
            || (core.chars().filter(|c| c.is_ascii_uppercase()).count() >= 2
                && core
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'));
        let cap = core.chars().next().is_some_and(char::is_uppercase);
        out.push(Tok {
            stem: stem(&alnum),
            stop: is_stop(&alnum) || alnum.is_empty(),
            core: core.to_string(),
            brk_after: brk,
            cap,
            num,
            date,
            ident,
        });
    }
    out
}

fn type_ok(qtype: QuestionType, span: &[Tok]) -> bool {
    let content: Vec<&Tok> = span.iter().filter(|t| !t.stop).collect();
    match qtype {
        // A quantity starts with its number ("0", "$5 million", "330
        // metres"), never with the words before it ("therefore 0").
        QuestionType::Number => span[0].num,
        QuestionType::Date => span.iter().any(|t| t.date) && (span[0].date || span[0].num),
        QuestionType::Person | QuestionType::Place => {
            // "Guido van Rossum", "Leonardo da Vinci".
            let particle = |t: &Tok| NAME_PARTICLES.contains(&t.core.as_str());
            // "XLIX" (Super Bowl numbering) is no name.
            let roman = |t: &Tok| t.core.chars().all(|c| "IVXLCDM".contains(c));
            !content.is_empty()
                && !content.iter().all(|t| roman(t))
                && span[0].cap
                && span[span.len() - 1].cap
                && content.iter().all(|t| t.cap || particle(t))
                && !span.iter().any(|t| t.date)
        }
        QuestionType::Identifier => span.len() == 1 && span[0].ident,
        QuestionType::Entity => !content.is_empty(),
        _ => false,
    }
}

/// The best typed span in the best units, with its source number.
fn best_span(
    cands: &[Cand],
    ranked: &[usize],
    question: &str,
    q_terms: &[String],
    idf: &HashMap<String, f64>,
    qtype: QuestionType,
) -> Option<(String, usize)> {
    if qtype == QuestionType::Definition {
        let c = &cands[ranked[0]];
        return definition_of(question, &c.text).map(|d| (d, c.n));
    }
    // An open "what/which" question gets the unit that holds the answer:
    // a lone noun picked from it is wrong more often than right.
    if matches!(
        qtype,
        QuestionType::Command | QuestionType::Other | QuestionType::Entity
    ) {
        return None;
    }
    let lower = question.to_lowercase();
    let wants = SpanWants {
        qtype,
        q: q_terms.iter().map(String::as_str).collect(),
        q_weight: q_terms.iter().map(|t| idf_of(idf, t)).sum(),
        counted: counted_noun(question),
        years_wanted: lower.contains("year"),
        env_var: qtype == QuestionType::Identifier && lower.contains("environment variable"),
    };
    let top = cands[ranked[0]].score;
    let max_len = match qtype {
        QuestionType::Number | QuestionType::Date => 4,
        _ => 5,
    };
    let mut best: Option<(f64, String, usize)> = None;
    // The best units; an identifier question looks further down (the
    // sentence naming `IGNORE_CASE` rarely repeats the question's words).
    let (depth, floor) = match qtype {
        QuestionType::Identifier => (10, 0.3),
        _ => (5, 0.5),
    };
    for &ci in ranked.iter().take(depth) {
        let c = &cands[ci];
        if c.score < top * floor {
            break;
        }
        let toks = tokenize(&c.text);
        let matches: Vec<(usize, f64)> = toks
            .iter()
            .enumerate()
            .filter(|(_, t)| wants.q.contains(t.stem.as_str()))
            .map(|(i, t)| (i, idf_of(idf, &t.stem)))
            .collect();
        for i in 0..toks.len() {
            if toks[i].stop || wants.q.contains(toks[i].stem.as_str()) {
                continue;
            }
            for j in i..toks.len().min(i + max_len) {
                match wants.extent(&toks, i, j) {
                    Extent::Stop => break,
                    Extent::Grow => continue,
                    Extent::Whole => {}
                }
                let score = c.score / top + wants.score(&toks, &matches, i, j);
                if best.as_ref().is_none_or(|b| score > b.0) {
                    let text = toks[i..=j]
                        .iter()
                        .map(|t| t.core.as_str())
                        .collect::<Vec<_>>()
                        .join(" ");
                    best = Some((score, text, c.n));
                }
            }
        }
    }
    best.filter(|b| b.0 > 0.0).map(|(_, s, n)| (s, n))
}

/// What a typed question wants of a span, fixed for one search.
struct SpanWants<'a> {
    qtype: QuestionType,
    /// The question's term stems.
    q: HashSet<&'a str>,
    /// Their summed IDF.
    q_weight: f64,
    /// "How many fumbles …": the count stands right before the counted noun.
    counted: Option<String>,
    /// A year answers "how many/much" only when the question is about years.
    years_wanted: bool,
    /// Environment variables are written in capitals by convention.
    env_var: bool,
}

/// Whether `toks[i..=j]` is a span to score.
enum Extent {
    /// No span starting at `i` and ending at `j` or later is.
    Stop,
    /// Not this one; a longer one may be (a name, date or quantity goes on).
    Grow,
    /// A whole span of the wanted type.
    Whole,
}

impl SpanWants<'_> {
    fn extent(&self, toks: &[Tok], i: usize, j: usize) -> Extent {
        let qtype = self.qtype;
        // "May 21, 2013": a day's comma does not end a date.
        let day = |t: &Tok| t.core.len() <= 2 && t.core.chars().all(|c| c.is_ascii_digit());
        let day_comma = qtype == QuestionType::Date && j > i && toks[j].date && day(&toks[j - 1]);
        if j > i && toks[j - 1].brk_after && !day_comma {
            return Extent::Stop;
        }
        if self.q.contains(toks[j].stem.as_str()) {
            return Extent::Stop;
        }
        let span = &toks[i..=j];
        if toks[j].stop || !type_ok(qtype, span) {
            return Extent::Grow;
        }
        if self.env_var && span[0].core.chars().any(char::is_lowercase) {
            return Extent::Grow;
        }
        let next = toks.get(j + 1);
        match qtype {
            // A date is taken whole: "May 21, 2013", not "2013".
            QuestionType::Date => {
                let part = |t: &Tok| t.date || t.num;
                if i > 0 && part(&toks[i - 1]) && !toks[i - 1].brk_after {
                    return Extent::Stop;
                }
                let next_day_comma = j + 2 < toks.len() && day(&toks[j]) && toks[j + 1].date;
                if next.is_some_and(|n| part(n) && (!toks[j].brk_after || next_day_comma)) {
                    return Extent::Grow;
                }
            }
            // A quantity is taken whole: "$5 million", not "million".
            QuestionType::Number => {
                if i > 0 && toks[i - 1].num && !toks[i - 1].brk_after {
                    return Extent::Stop;
                }
                if next.is_some_and(|n| n.num && !toks[j].brk_after) {
                    return Extent::Grow;
                }
            }
            // A name is taken whole: "Roger Goodell", not "Roger".
            QuestionType::Person | QuestionType::Place => {
                let joins = |a: &Tok, b: &Tok| {
                    !a.brk_after && b.cap && !b.stop && !self.q.contains(b.stem.as_str())
                };
                if i > 1 && toks[i - 1].cap && joins(&toks[i - 1], &toks[i]) {
                    return Extent::Stop;
                }
                // "Rossum" of "Guido van Rossum".
                let particle = |t: &Tok| NAME_PARTICLES.contains(&t.core.as_str());
                if i >= 2
                    && particle(&toks[i - 1])
                    && toks[i - 2].cap
                    && !toks[i - 2].brk_after
                    && !toks[i - 1].brk_after
                {
                    return Extent::Stop;
                }
                if next.is_some_and(|n| joins(&toks[j], n)) {
                    return Extent::Grow;
                }
            }
            _ => {}
        }
        Extent::Whole
    }

    /// The span's score beside its unit's: closeness to the question's
    /// words (IDF-weighted), a small length penalty, and the quantity cues.
    fn score(&self, toks: &[Tok], matches: &[(usize, f64)], i: usize, j: usize) -> f64 {
        let prox: f64 = matches
            .iter()
            .map(|&(p, w)| {
                // Matches are outside the span (it stops at question words).
                let d = if p < i { i - p } else { p - j };
                w / d.max(1) as f64
            })
            .sum::<f64>()
            / self.q_weight;
        let mut score = prox - 0.04 * (j - i) as f64;
        if self.qtype == QuestionType::Number {
            let before_counted = self.counted.as_deref().is_some_and(|n| {
                toks[j + 1..]
                    .iter()
                    .take(2)
                    .any(|t| t.stem == n || t.stem.starts_with(n))
            });
            if before_counted {
                score += 1.0;
            }
            if !self.years_wanted && toks[i..=j].iter().all(|t| t.date || t.stop) {
                score -= 0.5;
            }
        }
        score
    }
}

/// The noun a "how many" question counts: the stem of the word after
/// "how many" ("how many fumbles did …" → "fumbl").
fn counted_noun(question: &str) -> Option<String> {
    let lower = question.to_lowercase();
    let rest = lower.split("how many ").nth(1)?;
    let w = rest
        .split(|c: char| !c.is_alphanumeric())
        .find(|w| !w.is_empty())?;
    Some(stem(w))
}

/// "What does X stand for": the capitalised words whose initials spell X,
/// or the parenthesised/`X (…)` expansion next to X.
fn definition_of(question: &str, text: &str) -> Option<String> {
    let acronym = question.split(|c: char| !c.is_alphanumeric()).find(|w| {
        w.len() >= 2
            && w.chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
    })?;
    let letters: Vec<char> = acronym.to_lowercase().chars().collect();
    let ws: Vec<&str> = text
        .split(|c: char| c.is_whitespace() || "(),;:\"".contains(c))
        .filter(|w| !w.is_empty())
        .collect();
    for i in 0..ws.len() {
        // The expansion starts with the acronym's first letter ("the" is
        // not part of "Distinguished Encoding Rules").
        if !ws[i].to_lowercase().starts_with(letters[0]) {
            continue;
        }
        let mut k = 0;
        let mut j = i;
        while j < ws.len() && k < letters.len() {
            let w = ws[j].to_lowercase();
            if w.starts_with(letters[k]) {
                k += 1;
            } else if !matches!(w.as_str(), "of" | "and" | "the" | "for" | "in" | "to") {
                break;
            }
            j += 1;
        }
        if k == letters.len() && j - i >= letters.len() && !ws[i].eq_ignore_ascii_case(acronym) {
            return Some(ws[i..j].join(" "));
        }
    }
    None
}

impl Generator for ExtractiveGenerator {
    fn id(&self) -> String {
        "extractive/v2".to_string()
    }

    /// No model, no real window: large enough that the prompt keeps every
    /// retrieved source in full (and the compact small-model prompt is not used).
    fn context_tokens(&self) -> usize {
        32768
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
    fn a_date_question_gets_the_date_with_its_marker() {
        let sources = vec![
            src(1, "Paris is the capital of France. It has many museums."),
            src(
                2,
                "The Eiffel Tower was completed in 1889. It is made of iron.",
            ),
        ];
        let a = ExtractiveGenerator.answer("When was the Eiffel Tower completed?", &sources, 256);
        assert_eq!(a, "1889 [2]");
    }

    #[test]
    fn question_types() {
        use QuestionType::*;
        for (q, t) in [
            ("How many moons does Mars have?", Number),
            ("What is the default value of opt-level?", Number),
            ("When did the war end?", Date),
            ("Who wrote Hamlet?", Person),
            ("Where is the Louvre?", Place),
            ("How do I run the tests on one thread?", Command),
            (
                "Which environment variable makes the search case-insensitive?",
                Identifier,
            ),
            ("What does DER stand for?", Definition),
            ("What company built the bridge?", Entity),
            ("Why is the sky blue?", Other),
        ] {
            assert_eq!(question_type(q), t, "{q}");
        }
    }

    #[test]
    fn a_quantity_starts_with_its_number() {
        let sources = vec![src(
            1,
            "Compiling in development should be fast, so the default opt-level \
             for the dev profile is therefore 0.",
        )];
        let a = ExtractiveGenerator::new().answer(
            "What is the default opt-level for the dev profile?",
            &sources,
            64,
        );
        assert_eq!(a, "0 [1]");
    }

    #[test]
    fn acronym_expansion() {
        assert_eq!(
            definition_of(
                "What does DER stand for?",
                "Values are encoded with the Distinguished Encoding Rules (DER)."
            )
            .as_deref(),
            Some("Distinguished Encoding Rules")
        );
    }
}
