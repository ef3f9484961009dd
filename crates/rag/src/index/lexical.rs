//! BM25 over chunk title + text (tantivy, `en_stem` tokenizer), persisted in
//! a directory. The last applied change sequence is the commit payload.
use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::path::Path;

use parking_lot::Mutex;
use tantivy::collector::TopDocs;
use tantivy::columnar::Column;
use tantivy::query::{
    BooleanQuery, ConstScoreQuery, Occur, Query, QueryParser, TermQuery, TermSetQuery,
};
use tantivy::schema::{
    Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions, FAST, INDEXED, STORED, STRING,
};
use tantivy::{doc, Index, IndexReader, IndexWriter, ReloadPolicy, Term};

use super::index_err;
use crate::Result;

/// One chunk as the lexical index sees it.
#[derive(Debug, Clone)]
pub struct LexicalDoc<'a> {
    pub key: u64,
    pub doc_id: &'a str,
    pub collection: &'a str,
    pub title: &'a str,
    pub text: &'a str,
}

#[derive(Clone, Copy)]
struct Fields {
    key: Field,
    doc_id: Field,
    collection: Field,
    title: Field,
    text: Field,
}

pub struct LexicalIndex {
    index: Index,
    reader: IndexReader,
    writer: Mutex<IndexWriter>,
    fields: Fields,
    parser: QueryParser,
    seq: Mutex<u64>,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let stemmed = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer("en_stem")
            .set_index_option(IndexRecordOption::WithFreqsAndPositions),
    );
    let key = b.add_u64_field("key", INDEXED | STORED | FAST);
    let doc_id = b.add_text_field("doc_id", STRING | STORED);
    let collection = b.add_text_field("collection", STRING | STORED);
    let title = b.add_text_field("title", stemmed.clone());
    let text = b.add_text_field("text", stemmed);
    (
        b.build(),
        Fields {
            key,
            doc_id,
            collection,
            title,
            text,
        },
    )
}

impl LexicalIndex {
    /// Opens the index in `dir`, creating it if empty. Never rebuilds.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let (schema, fields) = schema();
        let index = if dir.join("meta.json").exists() {
            Index::open_in_dir(dir).map_err(index_err)?
        } else {
            Index::create_in_dir(dir, schema).map_err(index_err)?
        };
        let seq = index
            .load_metas()
            .map_err(index_err)?
            .payload
            .and_then(|p| p.parse::<u64>().ok())
            .unwrap_or(0);
        let writer: IndexWriter = index.writer(64 * 1024 * 1024).map_err(index_err)?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(index_err)?;
        let mut parser = QueryParser::for_index(&index, vec![fields.title, fields.text]);
        parser.set_field_boost(fields.title, 1.5);
        Ok(Self {
            index,
            reader,
            writer: Mutex::new(writer),
            fields,
            parser,
            seq: Mutex::new(seq),
        })
    }

    /// Removes every chunk of `doc_id` (applied at the next commit).
    pub fn delete_document(&self, doc_id: &str) {
        let w = self.writer.lock();
        w.delete_term(Term::from_field_text(self.fields.doc_id, doc_id));
    }

    /// Adds chunks (applied at the next commit).
    pub fn add(&self, docs: &[LexicalDoc<'_>]) -> Result<()> {
        let w = self.writer.lock();
        let f = self.fields;
        for d in docs {
            w.add_document(doc!(
                f.key => d.key,
                f.doc_id => d.doc_id,
                f.collection => d.collection,
                f.title => d.title,
                f.text => d.text,
            ))
            .map_err(index_err)?;
        }
        Ok(())
    }

    /// Commits pending changes, recording `seq` as applied, and makes them searchable.
    pub fn commit(&self, seq: u64) -> Result<()> {
        {
            let mut w = self.writer.lock();
            let mut prepared = w.prepare_commit().map_err(index_err)?;
            prepared.set_payload(&seq.to_string());
            prepared.commit().map_err(index_err)?;
        }
        *self.seq.lock() = seq;
        self.reader.reload().map_err(index_err)?;
        Ok(())
    }

    pub fn applied_seq(&self) -> u64 {
        *self.seq.lock()
    }

    /// Indexed chunks (committed).
    pub fn len(&self) -> usize {
        self.reader.searcher().num_docs() as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The best `k` chunks for `query` (BM25), optionally only in `collection`
    /// and only of the documents in `docs`.
    pub fn search(
        &self,
        query: &str,
        k: usize,
        collection: Option<&str>,
        docs: Option<&HashSet<String>>,
    ) -> Result<Vec<(u64, f32)>> {
        self.search_scoped(query, k, collection, None, docs)
    }

    /// [`Self::search`], also only in the collections of `scope` (a
    /// principal's grants; `None`: every collection). The scope is a clause
    /// of the query, so BM25's top `k` are taken among allowed chunks only.
    pub fn search_scoped(
        &self,
        query: &str,
        k: usize,
        collection: Option<&str>,
        scope: Option<&[String]>,
        docs: Option<&HashSet<String>>,
    ) -> Result<Vec<(u64, f32)>> {
        if k == 0 || query.trim().is_empty() || scope.is_some_and(|s| s.is_empty()) {
            return Ok(Vec::new());
        }
        let (text_query, _errors) = self.parser.parse_query_lenient(query);
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = vec![(Occur::Must, text_query)];
        if let Some(c) = collection {
            clauses.push((
                Occur::Must,
                Box::new(ConstScoreQuery::new(
                    Box::new(TermQuery::new(
                        Term::from_field_text(self.fields.collection, c),
                        IndexRecordOption::Basic,
                    )),
                    0.0,
                )),
            ));
        }
        if let Some(scope) = scope {
            let terms = scope
                .iter()
                .map(|c| Term::from_field_text(self.fields.collection, c));
            clauses.push((
                Occur::Must,
                Box::new(ConstScoreQuery::new(
                    Box::new(TermSetQuery::new(terms)),
                    0.0,
                )),
            ));
        }
        if let Some(docs) = docs {
            if docs.is_empty() {
                return Ok(Vec::new());
            }
            let terms = docs
                .iter()
                .map(|d| Term::from_field_text(self.fields.doc_id, d));
            clauses.push((
                Occur::Must,
                Box::new(ConstScoreQuery::new(
                    Box::new(TermSetQuery::new(terms)),
                    0.0,
                )),
            ));
        }
        let q = BooleanQuery::new(clauses);
        let searcher = self.reader.searcher();
        let top = searcher
            .search(&q, &TopDocs::with_limit(k).order_by_score())
            .map_err(index_err)?;
        // Keys come from the fast field (column), not the document store.
        let mut columns: HashMap<u32, Column<u64>> = HashMap::new();
        let mut out = Vec::with_capacity(top.len());
        for (score, addr) in top {
            let col = match columns.entry(addr.segment_ord) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => e.insert(
                    searcher
                        .segment_reader(addr.segment_ord)
                        .fast_fields()
                        .u64("key")
                        .map_err(index_err)?,
                ),
            };
            if let Some(key) = col.first(addr.doc_id) {
                out.push((key, score));
            }
        }
        Ok(out)
    }

    /// IDF-weighted query-term coverage of each text: for every text, the
    /// share of the query's BM25 IDF weight (from this index's document
    /// frequencies) carried by the query terms the text contains, in `0..=1`.
    /// Terms are the index's own (`en_stem`) tokens, stop words left out
    /// (the extractive generator's list). A query term the index
    /// never saw gets the largest IDF, so text lacking it counts as missing
    /// the query's most specific word. Independent of how hits were ranked
    /// or fused: comparable across queries and retrieval settings.
    pub fn coverage(&self, query: &str, texts: &[&str]) -> Vec<f32> {
        let mut analyzer = match self.index.tokenizer_for_field(self.fields.text) {
            Ok(a) => a,
            Err(_) => return vec![0.0; texts.len()],
        };
        let mut tokens = |s: &str| -> HashSet<String> {
            let mut out = HashSet::new();
            let mut ts = analyzer.token_stream(s);
            while ts.advance() {
                out.insert(ts.token().text.clone());
            }
            out
        };
        // Function words carry no evidence: "what" is in no document of a
        // small corpus, and would count as its most specific missing word.
        let content: Vec<&str> = query
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty() && !crate::generate::extractive::is_stop(&w.to_lowercase()))
            .collect();
        let q = tokens(&content.join(" "));
        if q.is_empty() {
            return vec![0.0; texts.len()];
        }
        let searcher = self.reader.searcher();
        let n = searcher.num_docs() as f64;
        let weights: Vec<(String, f64)> = q
            .into_iter()
            .map(|t| {
                let df = searcher
                    .doc_freq(&Term::from_field_text(self.fields.text, &t))
                    .unwrap_or(0) as f64;
                let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
                (t, idf)
            })
            .collect();
        let total: f64 = weights.iter().map(|w| w.1).sum();
        texts
            .iter()
            .map(|text| {
                let have = tokens(text);
                let covered: f64 = weights
                    .iter()
                    .filter(|(t, _)| have.contains(t))
                    .map(|w| w.1)
                    .sum();
                if total > 0.0 {
                    (covered / total) as f32
                } else {
                    0.0
                }
            })
            .collect()
    }

    /// The underlying tantivy index.
    pub fn index(&self) -> &Index {
        &self.index
    }
}
