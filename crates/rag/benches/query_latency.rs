//! Query latency per retrieval mode at 10k and 100k chunks, the query
//! embedding left out (it is the embedder's cost, benchmarked in
//! bench/models). Run: `bench/rag/query_latency.sh` (see bench/rag/README.md
//! for the profiles; `RAG_BENCH_SIZES=10000` for a quick run).
//!
//! Corpus: sentences of the SQuAD paragraphs in ../shared/data/squad-beir,
//! embedded once with the real all-MiniLM-L6-v2. To reach 100k chunks each
//! sentence is repeated under a different document id and title with its
//! vector jittered (Gaussian noise, renormalised), so the vector index sees
//! 100k distinct points with the real embedding's geometry. Ingestion goes
//! through the engine with an embedder that looks those vectors up.
//! Queries: SQuAD questions, embedded with the real model before timing.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use ragfleet_models::BertEmbedder;
use ragfleet_rag::config::IndexConfig;
use ragfleet_rag::embed::Embedder;
use ragfleet_rag::generate::extractive::ExtractiveGenerator;
use ragfleet_rag::types::{NewDocument, RetrievalMode};
use ragfleet_rag::{Engine, EngineConfig, Generators, RagError, SearchQuery};

/// Looks precomputed vectors up by text; token counts from the real tokenizer.
struct Lookup {
    real: Arc<BertEmbedder>,
    vectors: HashMap<String, Vec<f32>>,
}

impl Embedder for Lookup {
    fn id(&self) -> String {
        self.real.id()
    }
    fn dim(&self) -> usize {
        self.real.dim()
    }
    fn max_tokens(&self) -> usize {
        self.real.max_tokens()
    }
    fn count_tokens(&self, text: &str) -> usize {
        self.real.count_tokens(text)
    }
    fn embed(&self, texts: &[&str]) -> ragfleet_rag::Result<Vec<Vec<f32>>> {
        texts
            .iter()
            .map(|t| {
                self.vectors
                    .get(*t)
                    .cloned()
                    .ok_or_else(|| RagError::Model(format!("no precomputed vector for {t:?}")))
            })
            .collect()
    }
}

struct Rng(u64);
impl Rng {
    fn gauss(&mut self) -> f32 {
        let mut s = 0.0;
        for _ in 0..6 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
            s += ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
        }
        s / 2.0
    }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The real embeddings of `texts`, cached in the target directory (keyed by
/// model and texts): embedding 10k sentences takes minutes on 2 cores and is
/// not what this benchmark measures.
fn embed_cached(real: &BertEmbedder, texts: &[String]) -> Vec<Vec<f32>> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(real.id().as_bytes());
    for t in texts {
        h.update((t.len() as u64).to_le_bytes());
        h.update(t.as_bytes());
    }
    let dim = real.dim();
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "query_latency-{}.f32",
        &hex::encode(h.finalize())[..16]
    ));
    if let Ok(bytes) = std::fs::read(&path) {
        if bytes.len() == texts.len() * dim * 4 {
            eprintln!("{} sentence vectors from {}", texts.len(), path.display());
            let flat: Vec<f32> = bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            return flat.chunks(dim).map(<[f32]>::to_vec).collect();
        }
    }
    let t = Instant::now();
    let mut vecs = Vec::with_capacity(texts.len());
    for batch in texts.chunks(256) {
        let refs: Vec<&str> = batch.iter().map(String::as_str).collect();
        vecs.extend(real.embed(&refs).expect("embed"));
    }
    eprintln!(
        "embedded {} sentences in {:.1}s",
        texts.len(),
        t.elapsed().as_secs_f64()
    );
    let bytes: Vec<u8> = vecs
        .iter()
        .flatten()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    if let Err(e) = std::fs::write(&path, bytes) {
        eprintln!("not caching the vectors in {}: {e}", path.display());
    }
    vecs
}

/// The 1/5/15-minute load averages, to print beside the numbers.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn main() {
    let models = std::env::var_os("RAGFLEET_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("models"));
    let data = std::env::var_os("RAGFLEET_EVAL_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("../shared/data"));
    let sizes: Vec<usize> = std::env::var("RAG_BENCH_SIZES")
        .unwrap_or_else(|_| "10000,100000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let real = Arc::new(BertEmbedder::load(models.join("all-minilm-l6-v2")).expect("embedder"));

    // Sentences (title, text) of the corpus.
    let corpus = std::fs::read_to_string(data.join("squad-beir/corpus.jsonl")).expect("corpus");
    let mut sentences: Vec<(String, String)> = Vec::new();
    for line in corpus.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("json");
        let title = v["title"].as_str().unwrap_or("").to_string();
        for s in v["text"].as_str().unwrap_or("").split(". ") {
            let s = s.trim();
            // Well under one chunk (200 tokens): the engine embeds exactly
            // the texts looked up below.
            if s.split_whitespace().count() >= 4 && real.count_tokens(s) <= 150 {
                sentences.push((title.clone(), s.to_string()));
            }
        }
    }
    let base_n = sentences.len().min(*sizes.iter().min().unwrap_or(&10_000));
    sentences.truncate(base_n);
    let texts: Vec<String> = sentences
        .iter()
        .map(|(ti, te)| format!("{ti}\n{te}"))
        .collect();
    let base_vecs = embed_cached(&real, &texts);

    let queries_text =
        std::fs::read_to_string(data.join("squad-beir/queries.jsonl")).expect("queries");
    let questions: Vec<String> = queries_text
        .lines()
        .step_by(10)
        .take(300)
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("json")["text"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    let qrefs: Vec<&str> = questions.iter().map(String::as_str).collect();
    let qvecs = real.embed(&qrefs).expect("embed queries");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "load average before the runs: {} ({} CPUs)",
        loadavg(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("| chunks | mode | p50 ms | p99 ms | mean ms | p50 vs 10 ms target |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for &n in &sizes {
        let mut vectors = HashMap::with_capacity(n);
        let mut docs = Vec::with_capacity(n);
        let mut rng = Rng(n as u64);
        for i in 0..n {
            let (title, text) = &sentences[i % base_n];
            let copy = i / base_n;
            let title = if copy == 0 {
                title.clone()
            } else {
                format!("{title} {copy}")
            };
            let mut v = base_vecs[i % base_n].clone();
            if copy > 0 {
                v.iter_mut().for_each(|x| *x += 0.02 * rng.gauss());
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                v.iter_mut().for_each(|x| *x /= norm);
            }
            vectors.insert(format!("{title}\n{text}"), v);
            docs.push(NewDocument {
                id: Some(format!("s{i}")),
                title: Some(title),
                text: text.clone(),
                ..Default::default()
            });
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = EngineConfig {
            data_dir: dir.path().to_path_buf(),
            index: IndexConfig {
                save_every: usize::MAX,
                ..Default::default()
            },
            ..Default::default()
        };
        let embedder = Arc::new(Lookup {
            real: real.clone(),
            vectors,
        });
        let engine = rt
            .block_on(Engine::open(
                cfg,
                embedder,
                Generators::single("extractive", Arc::new(ExtractiveGenerator::new())),
            ))
            .expect("engine");
        let t = Instant::now();
        for part in docs.chunks(1000) {
            for r in rt.block_on(engine.ingest_batch(part.to_vec())) {
                r.expect("ingest");
            }
        }
        let ingest_s = t.elapsed().as_secs_f64();
        eprintln!(
            "{n} chunks ingested in {ingest_s:.1}s ({:.0} chunks/s, embedding excluded)",
            n as f64 / ingest_s
        );
        let load_before = loadavg();
        let mut p50s = HashMap::new();
        for mode in [
            RetrievalMode::Lexical,
            RetrievalMode::Vector,
            RetrievalMode::Hybrid,
        ] {
            let mut lat = Vec::with_capacity(questions.len());
            // Warm-up.
            for (q, v) in questions.iter().zip(&qvecs).take(20) {
                let sq = SearchQuery {
                    mode,
                    ..SearchQuery::new(q.clone())
                };
                rt.block_on(engine.search_embedded(sq, v.clone()))
                    .expect("search");
            }
            for (q, v) in questions.iter().zip(&qvecs) {
                let sq = SearchQuery {
                    mode,
                    ..SearchQuery::new(q.clone())
                };
                let t = Instant::now();
                let hits = rt
                    .block_on(engine.search_embedded(sq, v.clone()))
                    .expect("search");
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
                assert!(!hits.is_empty() || mode == RetrievalMode::Lexical);
            }
            lat.sort_by(f64::total_cmp);
            let p50 = percentile(&lat, 0.5);
            p50s.insert(mode, p50);
            println!(
                "| {n} | {mode:?} | {p50:.2} | {:.2} | {:.2} | {:.2}x |",
                percentile(&lat, 0.99),
                lat.iter().sum::<f64>() / lat.len() as f64,
                p50 / 10.0
            );
        }
        eprintln!(
            "{n}: load average before / after the queries: {load_before} / {}",
            loadavg()
        );
        eprintln!(
            "{n}: hybrid p50 / (lexical p50 + vector p50) = {:.2}",
            p50s[&RetrievalMode::Hybrid]
                / (p50s[&RetrievalMode::Lexical] + p50s[&RetrievalMode::Vector])
        );
        drop(engine);
    }
    println!("load average after the runs: {}", loadavg());
}
