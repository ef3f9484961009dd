//! BM25 over chunk title + text (tantivy), persisted in a directory. The last
//! applied change sequence is the commit payload.
//!
//! Scoring is this module's own BM25 term query ([`Bm25TermQuery`]) so that
//! k1 and b are configurable (tantivy's are fixed at 1.2 / 0.75); postings,
//! document frequencies and field lengths are tantivy's. The analyzer
//! (stemming, stop words) is chosen by [`LexicalConfig`]; an index built with
//! another analyzer is rebuilt (emptied, then refilled from the store's change
//! log by the engine).
use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::path::Path;

use parking_lot::Mutex;
use tantivy::collector::TopDocs;
use tantivy::columnar::Column;
use tantivy::fieldnorm::FieldNormReader;
use tantivy::postings::{Postings, SegmentPostings};
use tantivy::query::{
    Bm25StatisticsProvider, BooleanQuery, ConstScoreQuery, EmptyScorer, EnableScoring, Explanation,
    Occur, Query, Scorer, TermQuery, TermSetQuery, Weight,
};
use tantivy::schema::{
    Field, FieldType, IndexRecordOption, Schema, TextFieldIndexing, TextOptions, FAST, INDEXED,
    STORED, STRING,
};
use tantivy::tokenizer::{
    Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer, StopWordFilter, TextAnalyzer,
};
use tantivy::{
    doc, DocId, DocSet, Index, IndexReader, IndexWriter, ReloadPolicy, Score, SegmentReader, Term,
};

use super::index_err;
use crate::config::LexicalConfig;
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
    analyzer: TextAnalyzer,
    cfg: LexicalConfig,
    seq: Mutex<u64>,
}

/// The analyzer's registered name: it is stored in the schema, so an index
/// built with another analyzer is recognised at open.
fn analyzer_name(cfg: &LexicalConfig) -> &'static str {
    match (cfg.stemming, cfg.stop_words) {
        // The name tantivy's built-in stemmed analyzer has always had here.
        (true, false) => "en_stem",
        (true, true) => "rf_en_stem_stop",
        (false, false) => "rf_plain",
        (false, true) => "rf_plain_stop",
    }
}

/// Split on non-alphanumerics, drop tokens over 40 bytes, lower-case, then
/// optionally drop English stop words and stem.
fn analyzer(cfg: &LexicalConfig) -> TextAnalyzer {
    let base = TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(40))
        .filter(LowerCaser);
    match (cfg.stemming, cfg.stop_words) {
        (true, false) => base.filter(Stemmer::new(Language::English)).build(),
        (true, true) => base
            .filter(
                StopWordFilter::new(Language::English)
                    .unwrap_or_else(|| StopWordFilter::remove(Vec::<String>::new())),
            )
            .filter(Stemmer::new(Language::English))
            .build(),
        (false, false) => base.build(),
        (false, true) => base
            .filter(
                StopWordFilter::new(Language::English)
                    .unwrap_or_else(|| StopWordFilter::remove(Vec::<String>::new())),
            )
            .build(),
    }
}

/// The tokenizer name the schema's `text` field was built with.
fn schema_tokenizer(schema: &Schema) -> Option<String> {
    let field = schema.get_field("text").ok()?;
    match schema.get_field_entry(field).field_type() {
        FieldType::Str(opts) => opts
            .get_indexing_options()
            .map(|o| o.tokenizer().to_string()),
        _ => None,
    }
}

fn schema(tokenizer: &str) -> (Schema, Fields) {
    let mut b = Schema::builder();
    let stemmed = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(tokenizer)
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
    /// Opens the index in `dir` with the default settings.
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_with(dir, &LexicalConfig::default())
    }

    /// Opens the index in `dir`, creating it if empty. An index built with
    /// another analyzer is emptied (its applied sequence becomes 0, so the
    /// engine refills it from the store's change log).
    pub fn open_with(dir: &Path, cfg: &LexicalConfig) -> Result<Self> {
        cfg.validate().map_err(crate::RagError::InvalidInput)?;
        std::fs::create_dir_all(dir)?;
        let name = analyzer_name(cfg);
        let (schema, fields) = schema(name);
        let mut index = None;
        if dir.join("meta.json").exists() {
            let existing = Index::open_in_dir(dir).map_err(index_err)?;
            let built_with = schema_tokenizer(&existing.schema());
            if built_with.as_deref() == Some(name) {
                index = Some(existing);
            } else {
                tracing::warn!(
                    dir = %dir.display(),
                    built_with = built_with.as_deref().unwrap_or("?"),
                    configured = name,
                    "the lexical index was built with another analyzer: rebuilding it"
                );
                drop(existing);
                std::fs::remove_dir_all(dir)?;
                std::fs::create_dir_all(dir)?;
            }
        }
        let index = match index {
            Some(i) => i,
            None => Index::create_in_dir(dir, schema).map_err(index_err)?,
        };
        let analyzer = analyzer(cfg);
        index.tokenizers().register(name, analyzer.clone());
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
        Ok(Self {
            index,
            reader,
            writer: Mutex::new(writer),
            fields,
            analyzer,
            cfg: cfg.clone(),
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
        if k == 0 || query.trim().is_empty() {
            return Ok(Vec::new());
        }
        let searcher = self.reader.searcher();
        let Some(text_query) = self.bm25_query(&searcher, query)? else {
            return Ok(Vec::new());
        };
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

    /// One should-clause per distinct analysed query word and field (title,
    /// text), weighted by idf × (k1 + 1) × the word's count in the query ×
    /// the field's boost. `None` when no word survives analysis.
    fn bm25_query(
        &self,
        searcher: &tantivy::Searcher,
        query: &str,
    ) -> Result<Option<Box<dyn Query>>> {
        let mut counts: Vec<(String, u32)> = Vec::new();
        let mut analyzer = self.analyzer.clone();
        let mut stream = analyzer.token_stream(query);
        while let Some(tok) = stream.next() {
            match counts.iter_mut().find(|(t, _)| *t == tok.text) {
                Some(e) => e.1 += 1,
                None => counts.push((tok.text.clone(), 1)),
            }
        }
        let n = searcher.total_num_docs().map_err(index_err)? as f32;
        if counts.is_empty() || n == 0.0 {
            return Ok(None);
        }
        let cfg = &self.cfg;
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        for (field, boost) in [
            (self.fields.title, cfg.title_boost),
            (self.fields.text, 1.0),
        ] {
            if boost <= 0.0 {
                continue;
            }
            let tokens = searcher.total_num_tokens(field).map_err(index_err)? as f32;
            let avgdl = (tokens / n).max(f32::MIN_POSITIVE);
            for (word, qtf) in &counts {
                let term = Term::from_field_text(field, word);
                let df = searcher.doc_freq(&term).map_err(index_err)? as f32;
                if df == 0.0 {
                    continue;
                }
                let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
                clauses.push((
                    Occur::Should,
                    Box::new(Bm25TermQuery {
                        term,
                        weight: idf * (cfg.k1 + 1.0) * boost * *qtf as f32,
                        k1: cfg.k1,
                        b: cfg.b,
                        avgdl,
                    }),
                ));
            }
        }
        if clauses.is_empty() {
            return Ok(None);
        }
        Ok(Some(Box::new(BooleanQuery::new(clauses))))
    }

    /// The underlying tantivy index.
    pub fn index(&self) -> &Index {
        &self.index
    }
}

/// One term's BM25 contribution with configurable k1 and b:
/// `weight · tf / (tf + k1 · (1 − b + b · len / avgdl))`, `weight` carrying
/// idf × (k1 + 1) × boosts, `len` the field length tantivy stores per doc.
#[derive(Debug, Clone)]
struct Bm25TermQuery {
    term: Term,
    weight: f32,
    k1: f32,
    b: f32,
    avgdl: f32,
}

impl Query for Bm25TermQuery {
    fn weight(&self, _scoring: EnableScoring<'_>) -> tantivy::Result<Box<dyn Weight>> {
        Ok(Box::new(self.clone()))
    }

    fn query_terms<'a>(&'a self, visitor: &mut dyn FnMut(&'a Term, bool)) {
        visitor(&self.term, false);
    }
}

impl Weight for Bm25TermQuery {
    fn scorer(&self, reader: &SegmentReader, boost: Score) -> tantivy::Result<Box<dyn Scorer>> {
        let field = self.term.field();
        let postings = reader
            .inverted_index(field)?
            .read_postings(&self.term, IndexRecordOption::WithFreqs)?;
        let Some(postings) = postings else {
            return Ok(Box::new(EmptyScorer));
        };
        let norms = reader.get_fieldnorms_reader(field)?;
        let mut cache = [0f32; 256];
        for (id, c) in cache.iter_mut().enumerate() {
            let len = FieldNormReader::id_to_fieldnorm(id as u8) as f32;
            *c = self.k1 * (1.0 - self.b + self.b * len / self.avgdl);
        }
        Ok(Box::new(Bm25TermScorer {
            postings,
            norms,
            cache,
            weight: self.weight * boost,
        }))
    }

    fn explain(&self, reader: &SegmentReader, doc: DocId) -> tantivy::Result<Explanation> {
        let mut s = self.scorer(reader, 1.0)?;
        if s.doc() > doc || s.seek(doc) != doc {
            return Err(tantivy::TantivyError::InvalidArgument(format!(
                "document {doc} does not match"
            )));
        }
        Ok(Explanation::new("bm25 (configured k1, b)", s.score()))
    }
}

struct Bm25TermScorer {
    postings: SegmentPostings,
    norms: FieldNormReader,
    cache: [f32; 256],
    weight: f32,
}

impl DocSet for Bm25TermScorer {
    fn advance(&mut self) -> DocId {
        self.postings.advance()
    }
    fn seek(&mut self, target: DocId) -> DocId {
        self.postings.seek(target)
    }
    fn doc(&self) -> DocId {
        self.postings.doc()
    }
    fn size_hint(&self) -> u32 {
        self.postings.size_hint()
    }
}

impl Scorer for Bm25TermScorer {
    fn score(&mut self) -> Score {
        let doc = self.postings.doc();
        let tf = self.postings.term_freq() as f32;
        let norm = self.cache[self.norms.fieldnorm_id(doc) as usize];
        self.weight * tf / (tf + norm)
    }
}
