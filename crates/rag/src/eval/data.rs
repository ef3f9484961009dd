//! Dataset readers.
//!
//! BEIR layout (any BEIR dataset): `corpus.jsonl` (`_id`, `title`, `text`),
//! `queries.jsonl` (`_id`, `text`, optional extra fields such as `answers`),
//! `qrels/<split>.tsv` (`query-id<TAB>corpus-id<TAB>score`, header line
//! optional). SQuAD v1.1: the official JSON layout.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::metrics::Judgements;
use crate::ingest::{load_path, LoadOptions};
use crate::types::NewDocument;
use crate::{RagError, Result};

/// query id → doc id → grade.
pub type Qrels = HashMap<String, Judgements>;

#[derive(Debug, Clone, PartialEq)]
pub struct BeirQuery {
    pub id: String,
    pub text: String,
    /// Gold answers when the dataset has them (squad-beir does).
    pub answers: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct BeirDataset {
    /// Documents with their BEIR `_id` kept verbatim.
    pub corpus: Vec<NewDocument>,
    /// Queries in file order.
    pub queries: Vec<BeirQuery>,
    pub qrels: Qrels,
}

fn load_err(path: &Path, reason: impl Into<String>) -> RagError {
    RagError::Load {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| load_err(path, e.to_string()))
}

/// Read a BEIR dataset directory with the qrels of `split` (e.g. `"test"`).
/// Any bad line is an error naming the file and line: evaluation numbers
/// over a partly read dataset would mislead.
pub fn read_beir(dir: &Path, split: &str) -> Result<BeirDataset> {
    let corpus_path = dir.join("corpus.jsonl");
    if !corpus_path.is_file() {
        return Err(load_err(
            &corpus_path,
            "missing (not a BEIR dataset directory?)",
        ));
    }
    let mut corpus = Vec::new();
    for doc in load_path(&corpus_path, &LoadOptions::default()) {
        let doc = doc?;
        if doc.id.is_none() {
            return Err(load_err(
                &corpus_path,
                format!("a document without `_id`: {:.60}", doc.text),
            ));
        }
        corpus.push(doc);
    }
    let queries = read_queries(&dir.join("queries.jsonl"))?;
    let qrels = read_qrels(&dir.join("qrels").join(format!("{split}.tsv")))?;
    Ok(BeirDataset {
        corpus,
        queries,
        qrels,
    })
}

#[derive(Deserialize)]
struct QueryLine {
    #[serde(rename = "_id")]
    id: serde_json::Value,
    text: String,
    #[serde(default)]
    answers: Vec<String>,
}

pub fn read_queries(path: &Path) -> Result<Vec<BeirQuery>> {
    let text = read_text(path)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let q: QueryLine = serde_json::from_str(line)
            .map_err(|e| load_err(path, format!("line {}: {e}", i + 1)))?;
        let id = match q.id {
            serde_json::Value::String(s) => s,
            serde_json::Value::Number(n) => n.to_string(),
            _ => {
                return Err(load_err(
                    path,
                    format!("line {}: `_id` must be a string or number", i + 1),
                ))
            }
        };
        out.push(BeirQuery {
            id,
            text: q.text,
            answers: q.answers,
        });
    }
    Ok(out)
}

pub fn read_qrels(path: &Path) -> Result<Qrels> {
    let text = read_text(path)?;
    let mut qrels: Qrels = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').map(str::trim).collect();
        if cols.len() < 3 {
            return Err(load_err(
                path,
                format!("line {}: expected query-id<TAB>corpus-id<TAB>score", i + 1),
            ));
        }
        let score: i32 = match cols[2].parse() {
            Ok(s) => s,
            // The header line.
            Err(_) if i == 0 => continue,
            Err(_) => {
                return Err(load_err(
                    path,
                    format!("line {}: score {:?} is not an integer", i + 1, cols[2]),
                ))
            }
        };
        qrels
            .entry(cols[0].to_string())
            .or_default()
            .insert(cols[1].to_string(), score);
    }
    if qrels.is_empty() {
        return Err(load_err(path, "no judgements"));
    }
    Ok(qrels)
}

/// One SQuAD question with its paragraph and gold answers.
#[derive(Debug, Clone, PartialEq)]
pub struct SquadQuestion {
    pub id: String,
    pub question: String,
    pub title: String,
    pub context: String,
    /// Index of the paragraph within its article (squad-beir doc id is
    /// `"{title with _}#{index}"`).
    pub paragraph: usize,
    pub answers: Vec<String>,
}

#[derive(Deserialize)]
struct SquadFile {
    data: Vec<SquadArticle>,
}
#[derive(Deserialize)]
struct SquadArticle {
    title: String,
    paragraphs: Vec<SquadParagraph>,
}
#[derive(Deserialize)]
struct SquadParagraph {
    context: String,
    qas: Vec<SquadQa>,
}
#[derive(Deserialize)]
struct SquadQa {
    id: String,
    question: String,
    answers: Vec<SquadAnswer>,
}
#[derive(Deserialize)]
struct SquadAnswer {
    text: String,
}

/// Read a SQuAD v1.1 JSON file; questions in file order.
pub fn read_squad(path: &Path) -> Result<Vec<SquadQuestion>> {
    let text = read_text(path)?;
    let file: SquadFile = serde_json::from_str(&text).map_err(|e| {
        load_err(
            path,
            format!(
                "not a SQuAD v1.1 file (line {}, column {}: {e})",
                e.line(),
                e.column()
            ),
        )
    })?;
    let mut out = Vec::new();
    for art in file.data {
        for (pi, p) in art.paragraphs.into_iter().enumerate() {
            for qa in p.qas {
                out.push(SquadQuestion {
                    id: qa.id,
                    question: qa.question,
                    title: art.title.clone(),
                    context: p.context.clone(),
                    paragraph: pi,
                    answers: qa.answers.into_iter().map(|a| a.text).collect(),
                });
            }
        }
    }
    if out.is_empty() {
        return Err(load_err(path, "no questions"));
    }
    Ok(out)
}

/// `path` relative to `dir` unless absolute.
pub fn resolve(dir: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        dir.join(path)
    }
}
