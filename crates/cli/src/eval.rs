//! `ragfleet eval`: retrieval quality on a BEIR-layout dataset and answer
//! quality on a SQuAD v1.1 file, measured through a fresh [`Engine`].
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use futures::StreamExt;
use ragfleet_models::{BertEmbedder, LocalLlama, LocalLlamaOptions};
use ragfleet_rag::eval::{
    dedup_ranked, evaluate_run, read_beir, read_squad, AnswerScores, BeirQuery, Bm25Baseline,
    Qrels, RetrievalScores,
};
use ragfleet_rag::generate::extractive::ExtractiveGenerator;
use ragfleet_rag::generate::Generator;
use ragfleet_rag::retrieve::fuse;
use ragfleet_rag::types::{NewDocument, RetrievalMode};
use ragfleet_rag::{
    ChatEvent, ChatRequest, Engine, EngineConfig, FusionMethod, Generators, SearchQuery,
};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand, Debug)]
enum What {
    /// nDCG@10, Recall@10/100, MRR@10 and queries/s per retrieval mode on a
    /// BEIR dataset directory (corpus.jsonl, queries.jsonl, qrels/<split>.tsv).
    Retrieval(RetrievalArgs),
    /// Exact match and token F1 (SQuAD v1.1 scoring) of cited answers.
    Answers(AnswersArgs),
}

#[derive(clap::Args, Debug)]
struct Common {
    /// Models directory (all-minilm-l6-v2/, smollm2/).
    #[arg(long, env = "RAGFLEET_MODELS", default_value = "models")]
    models: PathBuf,
    /// Data directory for the engine (default: a fresh temporary directory,
    /// removed afterwards). An existing directory is reused as it is.
    #[arg(long)]
    work: Option<PathBuf>,
    /// Chunk size in embedding tokens.
    #[arg(long, default_value_t = 200)]
    max_tokens: usize,
    /// Tokens shared by consecutive chunks.
    #[arg(long, default_value_t = 32)]
    overlap_tokens: usize,
    /// Reciprocal rank fusion constant for hybrid retrieval.
    #[arg(long, default_value_t = 60.0)]
    rrf_k: f32,
    /// Candidates each retriever contributes before fusion.
    #[arg(long, default_value_t = 100)]
    candidates: usize,
    /// Weight of the BM25 list in hybrid fusion (default: the engine's).
    #[arg(long)]
    lexical_weight: Option<f32>,
    /// Weight of the vector list in hybrid fusion (default: the engine's).
    #[arg(long)]
    vector_weight: Option<f32>,
    /// Fusion method: rrf, minmax, zscore, adaptive (default: the engine's).
    #[arg(long)]
    fusion: Option<FusionMethod>,
    /// Lexical BM25 k1 (default: the engine's).
    #[arg(long)]
    bm25_k1: Option<f32>,
    /// Lexical BM25 b (default: the engine's).
    #[arg(long)]
    bm25_b: Option<f32>,
    /// Lexical English stemming, true/false (default: the engine's; a change
    /// rebuilds a reused lexical index from the store).
    #[arg(long)]
    stemming: Option<bool>,
    /// Lexical English stop-word removal, true/false (default: the engine's).
    #[arg(long)]
    stop_words: Option<bool>,
    /// Lexical weight of a title match (default: the engine's).
    #[arg(long)]
    title_boost: Option<f32>,
    /// Lexical document-level evidence: share of a document's other chunk
    /// scores added to its best (default: the engine's).
    #[arg(long)]
    doc_sum_weight: Option<f32>,
    /// Print the results as one JSON object on stdout instead of a table
    /// (progress and the dataset summary go to stderr).
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
struct RetrievalArgs {
    /// BEIR dataset directory.
    #[arg(long)]
    data: PathBuf,
    /// Retrieval modes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "lexical,vector,hybrid")]
    modes: Vec<RetrievalMode>,
    /// Evaluate this many queries (spread evenly over the file); default all.
    #[arg(long)]
    queries: Option<usize>,
    /// Where in each step of the even spread to pick (0 ≤ phase < 1): two
    /// runs with different phases evaluate disjoint query sets, e.g. a
    /// development set to tune fusion on and a test set to report.
    #[arg(long, default_value_t = 0.0)]
    phase: f64,
    /// Qrels split (qrels/<split>.tsv).
    #[arg(long, default_value = "test")]
    split: String,
    /// Drop a hit whose document id equals the query id (MTEB's rule for
    /// ArguAna, where every query is also a document of the corpus).
    #[arg(long)]
    drop_self_hits: bool,
    /// Leave out the built-in whole-document BM25 baseline row.
    #[arg(long)]
    no_baseline: bool,
    /// Also score a grid of fusion settings (rrf, minmax, zscore, adaptive ×
    /// vector weights 0.25…3 against lexical weight 1) on the same candidate
    /// lists, one row each, named `method:weight`: the input of the
    /// cross-dataset choice of the fusion default.
    #[arg(long)]
    fusion_grid: bool,
    #[command(flatten)]
    common: Common,
}

#[derive(clap::Args, Debug)]
struct AnswersArgs {
    /// SQuAD v1.1 JSON file.
    #[arg(long)]
    squad: PathBuf,
    /// Questions to ask (a seeded random sample).
    #[arg(long, default_value_t = 100)]
    sample: usize,
    /// Generator: `local` (SmolLM2 from the models dir) or `extractive`.
    #[arg(long, default_value = "extractive")]
    generator: String,
    /// Passages retrieved per question.
    #[arg(long, default_value_t = 3)]
    top_k: usize,
    /// Retrieval mode for the answers.
    #[arg(long, default_value = "hybrid")]
    mode: RetrievalMode,
    /// Index every paragraph of the file (`all`) or only those of the sampled
    /// questions (`sampled`, much faster to ingest; retrieval is then easier).
    #[arg(long, default_value = "all")]
    corpus: String,
    /// Most tokens per answer.
    #[arg(long, default_value_t = 48)]
    answer_tokens: usize,
    /// Sampling seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[command(flatten)]
    common: Common,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async {
        match args.what {
            What::Retrieval(a) => retrieval(a).await,
            What::Answers(a) => answers(a).await,
        }
    })
}

/// The engine's data directory: the given one, or a temporary one removed on drop.
struct WorkDir {
    path: PathBuf,
    remove: bool,
}

impl WorkDir {
    fn new(given: Option<PathBuf>) -> anyhow::Result<Self> {
        match given {
            Some(path) => Ok(Self {
                path,
                remove: false,
            }),
            None => {
                // A fresh, empty directory. Named by pid *and* time: an
                // interrupted run (no Drop) leaves its directory behind, and
                // pids are reused, so a pid-only name could make a later run
                // silently reuse another dataset's index.
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos());
                let path = std::env::temp_dir()
                    .join(format!("ragfleet-eval-{}-{nanos}", std::process::id()));
                std::fs::create_dir(&path)
                    .with_context(|| format!("creating {}", path.display()))?;
                Ok(Self { path, remove: true })
            }
        }
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.remove {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

async fn open_engine(c: &Common, work: &Path, generators: Generators) -> anyhow::Result<Engine> {
    let dir = c.models.join("all-minilm-l6-v2");
    let embedder = tokio::task::spawn_blocking(move || BertEmbedder::load(&dir))
        .await?
        .context("loading the embedding model (set --models or RAGFLEET_MODELS)")?;
    let mut cfg = EngineConfig {
        data_dir: work.to_path_buf(),
        ..Default::default()
    };
    cfg.chunk.max_tokens = c.max_tokens;
    cfg.chunk.overlap_tokens = c.overlap_tokens;
    cfg.retrieval.rrf_k = c.rrf_k;
    cfg.retrieval.candidates = c.candidates;
    if let Some(w) = c.lexical_weight {
        cfg.retrieval.lexical_weight = w;
    }
    if let Some(w) = c.vector_weight {
        cfg.retrieval.vector_weight = w;
    }
    let r = &mut cfg.retrieval;
    r.fusion = c.fusion.unwrap_or(r.fusion);
    let l = &mut r.lexical;
    l.k1 = c.bm25_k1.unwrap_or(l.k1);
    l.b = c.bm25_b.unwrap_or(l.b);
    l.stemming = c.stemming.unwrap_or(l.stemming);
    l.stop_words = c.stop_words.unwrap_or(l.stop_words);
    l.title_boost = c.title_boost.unwrap_or(l.title_boost);
    l.doc_sum_weight = c.doc_sum_weight.unwrap_or(l.doc_sum_weight);
    Engine::open(cfg, Arc::new(embedder), generators)
        .await
        .with_context(|| format!("opening the engine in {}", work.display()))
}

/// Ingest in batches, printing progress; any failure is fatal (scores over a
/// partly indexed corpus would mislead).
async fn ingest_all(engine: &Engine, docs: Vec<NewDocument>) -> anyhow::Result<()> {
    let total = docs.len();
    let started = Instant::now();
    let mut done = 0usize;
    let mut chunks = 0usize;
    let mut it = docs.into_iter().peekable();
    while it.peek().is_some() {
        let batch: Vec<NewDocument> = it.by_ref().take(128).collect();
        for r in engine.ingest_batch(batch).await {
            chunks += r.context("ingesting the corpus")?.chunks;
            done += 1;
        }
        eprint!(
            "\ringested {done}/{total} documents ({chunks} chunks, {:.0}s)",
            started.elapsed().as_secs_f64()
        );
    }
    engine.flush().await.context("saving the indexes")?;
    eprintln!();
    Ok(())
}

async fn retrieval(a: RetrievalArgs) -> anyhow::Result<()> {
    if !(0.0..1.0).contains(&a.phase) {
        bail!("--phase must be at least 0 and below 1, not {}", a.phase);
    }
    let data = a.data.clone();
    let split = a.split.clone();
    let ds = tokio::task::spawn_blocking(move || read_beir(&data, &split)).await??;
    // Judged queries, in file order, optionally thinned evenly to N.
    let mut queries: Vec<_> = ds
        .queries
        .iter()
        .filter(|q| {
            ds.qrels
                .get(&q.id)
                .is_some_and(|j| j.values().any(|&g| g > 0))
        })
        .collect();
    if let Some(n) = a.queries {
        if n == 0 {
            bail!("--queries must be at least 1");
        }
        if n < queries.len() {
            let step = queries.len() as f64 / n as f64;
            queries = (0..n)
                .filter_map(|i| queries.get(((i as f64 + a.phase) * step) as usize).copied())
                .collect();
        }
    }
    if queries.is_empty() {
        bail!("{}: no query has a relevant judgement", a.data.display());
    }
    let qrels: HashMap<String, _> = queries
        .iter()
        .filter_map(|q| ds.qrels.get(&q.id).map(|j| (q.id.clone(), j.clone())))
        .collect();
    let summary = format!(
        "dataset {}: {} documents, {} queries evaluated",
        a.data.display(),
        ds.corpus.len(),
        queries.len()
    );
    if a.common.json {
        eprintln!("{summary}");
    } else {
        println!("{summary}");
    }

    let work = WorkDir::new(a.common.work.clone())?;
    let generators = Generators::single("extractive", Arc::new(ExtractiveGenerator::new()));
    let engine = open_engine(&a.common, &work.path, generators).await?;
    if engine.stats().documents == 0 {
        ingest_all(&engine, ds.corpus.clone()).await?;
    } else {
        eprintln!("reusing the index in {}", work.path.display());
    }

    let mut rows: Vec<(String, RetrievalScores, f64)> = Vec::new();
    for &mode in &a.modes {
        let started = Instant::now();
        let mut run: HashMap<String, Vec<String>> = HashMap::new();
        for (i, q) in queries.iter().enumerate() {
            let mut sq = SearchQuery::new(q.text.clone());
            // Qrels judge documents: ask for documents (one more for the
            // query's own id, which --drop-self-hits removes).
            sq.top_k = 101;
            sq.mode = mode;
            let found = engine
                .search_documents(sq, 1)
                .await
                .with_context(|| format!("query {}", q.id))?;
            let docs: Vec<String> = found.into_iter().map(|d| d.doc_id).collect();
            run.insert(q.id.clone(), top_docs(docs, &q.id, a.drop_self_hits));
            if i % 200 == 199 {
                eprint!("\r{mode:?}: {}/{} queries", i + 1, queries.len());
            }
        }
        let secs = started.elapsed().as_secs_f64();
        eprintln!("\r{mode:?}: {} queries in {secs:.1}s", queries.len());
        rows.push((
            format!("{mode:?}").to_lowercase(),
            evaluate_run(&run, &qrels),
            queries.len() as f64 / secs,
        ));
    }
    if a.fusion_grid {
        rows.extend(fusion_grid(&engine, &queries, &qrels, &a).await?);
    }
    if !a.no_baseline {
        rows.push(baseline_row(&ds.corpus, &queries, &qrels, a.drop_self_hits));
    }
    if a.common.json {
        let modes: Vec<serde_json::Value> = rows
            .iter()
            .map(|(mode, s, qps)| {
                serde_json::json!({
                    "mode": mode,
                    "ndcg_at_10": s.ndcg_at_10,
                    "recall_at_10": s.recall_at_10,
                    "recall_at_100": s.recall_at_100,
                    "mrr_at_10": s.mrr_at_10,
                    "queries": s.queries,
                    "queries_per_s": qps,
                })
            })
            .collect();
        let out = serde_json::json!({
            "dataset": a.data,
            "documents": ds.corpus.len(),
            "queries": queries.len(),
            "drop_self_hits": a.drop_self_hits,
            "modes": modes,
        });
        println!("{out}");
    } else {
        print_table(&rows);
    }
    Ok(())
}

/// The best 100 distinct documents, without the query's own id when asked.
fn top_docs(mut docs: Vec<String>, query_id: &str, drop_self: bool) -> Vec<String> {
    if drop_self {
        docs.retain(|d| d != query_id);
    }
    docs.truncate(100);
    docs
}

/// Vector weights of the fusion grid (lexical weight 1).
const GRID_WEIGHTS: [f32; 8] = [0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0];

/// Every fusion method × [`GRID_WEIGHTS`] over each query's candidate lists,
/// fetched once per query.
async fn fusion_grid(
    engine: &Engine,
    queries: &[&BeirQuery],
    qrels: &Qrels,
    a: &RetrievalArgs,
) -> anyhow::Result<Vec<(String, RetrievalScores, f64)>> {
    let methods = [
        FusionMethod::Rrf,
        FusionMethod::MinMax,
        FusionMethod::ZScore,
        FusionMethod::Adaptive,
    ];
    let names: Vec<(FusionMethod, f32, String)> = methods
        .iter()
        .flat_map(|m| {
            GRID_WEIGHTS.iter().map(move |w| {
                let name = format!("{m:?}").to_lowercase();
                (*m, *w, format!("{name}:{w}"))
            })
        })
        .collect();
    let mut runs: Vec<HashMap<String, Vec<String>>> = vec![HashMap::new(); names.len()];
    let started = Instant::now();
    for (i, q) in queries.iter().enumerate() {
        let l = engine
            .search_candidates(&SearchQuery::new(q.text.clone()), a.common.candidates)
            .await
            .with_context(|| format!("query {}", q.id))?;
        for ((m, w, _), run) in names.iter().zip(runs.iter_mut()) {
            let fused = fuse(
                *m,
                &[(&l.lexical, 1.0), (&l.vector, *w)],
                a.common.rrf_k,
                usize::MAX,
            );
            let docs = dedup_ranked(fused.iter().filter_map(|(k, _)| l.doc_ids.get(k).cloned()));
            run.insert(q.id.clone(), top_docs(docs, &q.id, a.drop_self_hits));
        }
        if i % 200 == 199 {
            eprint!("\rfusion grid: {}/{} queries", i + 1, queries.len());
        }
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!("\rfusion grid: {} queries in {secs:.1}s", queries.len());
    let qps = queries.len() as f64 / secs.max(1e-9);
    Ok(names
        .into_iter()
        .zip(runs)
        .map(|((_, _, name), run)| (name, evaluate_run(&run, qrels), qps))
        .collect())
}

/// The built-in baseline: plain whole-document BM25 (k1 0.9, b 0.4, no
/// stemming), independent of the engine, over the same corpus and queries.
fn baseline_row(
    corpus: &[NewDocument],
    queries: &[&BeirQuery],
    qrels: &Qrels,
    drop_self: bool,
) -> (String, RetrievalScores, f64) {
    let bm = Bm25Baseline::baseline(corpus.iter().map(|d| {
        (
            d.id.as_deref().unwrap_or_default(),
            d.title.as_deref().unwrap_or_default(),
            d.text.as_str(),
        )
    }));
    let started = Instant::now();
    let run: HashMap<String, Vec<String>> = queries
        .iter()
        .map(|q| {
            let skip = drop_self.then_some(q.id.as_str());
            let docs = bm.search(&q.text, 100, skip);
            (
                q.id.clone(),
                docs.into_iter().map(|(d, _)| d.to_string()).collect(),
            )
        })
        .collect();
    let secs = started.elapsed().as_secs_f64();
    eprintln!("bm25 baseline: {} queries in {secs:.1}s", queries.len());
    (
        "bm25-baseline".to_string(),
        evaluate_run(&run, qrels),
        queries.len() as f64 / secs.max(1e-9),
    )
}

fn print_table(rows: &[(String, RetrievalScores, f64)]) {
    println!(
        "\n| mode          | nDCG@10 | Recall@10 | Recall@100 | MRR@10 | queries/s |\n|---------------|---------|-----------|------------|--------|-----------|"
    );
    for (name, s, qps) in rows {
        println!(
            "| {name:<13} | {:.4}  | {:.4}    | {:.4}     | {:.4} | {qps:>9.1} |",
            s.ndcg_at_10, s.recall_at_10, s.recall_at_100, s.mrr_at_10
        );
    }
}

/// splitmix64: a tiny seeded generator for a reproducible sample.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

async fn answers(a: AnswersArgs) -> anyhow::Result<()> {
    let path = a.squad.clone();
    let all = tokio::task::spawn_blocking(move || read_squad(&path)).await??;
    if a.sample == 0 {
        bail!("--sample must be at least 1");
    }
    // Seeded partial Fisher-Yates.
    let mut idx: Vec<usize> = (0..all.len()).collect();
    let mut st = a.seed;
    let n = a.sample.min(all.len());
    for i in 0..n {
        let j = i + (splitmix(&mut st) % (idx.len() - i) as u64) as usize;
        idx.swap(i, j);
    }
    let sample: Vec<_> = idx[..n].iter().map(|&i| &all[i]).collect();

    // Paragraphs as documents, ids as in squad-beir: "{title}#{index}".
    let mut paragraphs: BTreeMap<String, NewDocument> = BTreeMap::new();
    let wanted: Option<std::collections::HashSet<String>> = match a.corpus.as_str() {
        "all" => None,
        "sampled" => Some(
            sample
                .iter()
                .map(|q| format!("{}#{}", q.title, q.paragraph))
                .collect(),
        ),
        other => bail!("--corpus must be `all` or `sampled`, not {other:?}"),
    };
    for q in &all {
        let id = format!("{}#{}", q.title, q.paragraph);
        if wanted.as_ref().is_some_and(|w| !w.contains(&id)) {
            continue;
        }
        paragraphs.entry(id.clone()).or_insert_with(|| NewDocument {
            id: Some(id),
            title: Some(q.title.replace('_', " ")),
            text: q.context.clone(),
            ..Default::default()
        });
    }

    let generator: Arc<dyn Generator> = match a.generator.as_str() {
        "extractive" => Arc::new(ExtractiveGenerator::new()),
        "local" => {
            let file = a
                .common
                .models
                .join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
            let g = tokio::task::spawn_blocking(move || {
                LocalLlama::load(&file, LocalLlamaOptions::default())
            })
            .await?
            .context("loading the local generator (set --models or RAGFLEET_MODELS)")?;
            Arc::new(g)
        }
        other => bail!("--generator must be `local` or `extractive`, not {other:?}"),
    };
    let work = WorkDir::new(a.common.work.clone())?;
    let engine = open_engine(
        &a.common,
        &work.path,
        Generators::single(a.generator.clone(), generator),
    )
    .await?;
    let summary = format!(
        "SQuAD {}: {} questions sampled (seed {}), {} paragraphs indexed, generator {}",
        a.squad.display(),
        n,
        a.seed,
        paragraphs.len(),
        a.generator
    );
    if a.common.json {
        eprintln!("{summary}");
    } else {
        println!("{summary}");
    }
    if engine.stats().documents == 0 {
        ingest_all(&engine, paragraphs.into_values().collect()).await?;
    }

    let started = Instant::now();
    let mut preds: Vec<(String, &[String])> = Vec::new();
    for (i, q) in sample.iter().enumerate() {
        let mut req = ChatRequest::new(q.question.clone());
        req.top_k = Some(a.top_k);
        req.mode = Some(a.mode);
        let mut params = engine.config().generation.clone();
        params.max_tokens = a.answer_tokens;
        params.temperature = 0.0;
        req.params = Some(params);
        let mut stream = engine
            .chat(req)
            .await
            .with_context(|| format!("question {}", q.id))?;
        let mut answer = None;
        while let Some(ev) = stream.next().await {
            match ev {
                ChatEvent::Done { answer: text, .. } => answer = Some(text),
                ChatEvent::Error { message } => bail!("question {}: {message}", q.id),
                _ => {}
            }
        }
        // A stream that ends without `Done` lost its answer: scoring it as
        // an empty answer would quietly lower the numbers.
        let Some(answer) = answer else {
            bail!(
                "question {}: the answer stream ended without a result",
                q.id
            );
        };
        preds.push((strip_citations(&answer), q.answers.as_slice()));
        eprint!("\ranswered {}/{}", i + 1, n);
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!();
    let scores = AnswerScores::from_pairs(preds.iter().map(|(p, g)| (p.as_str(), *g)));
    if a.common.json {
        let out = serde_json::json!({
            "squad": a.squad,
            "generator": a.generator,
            "mode": a.mode,
            "top_k": a.top_k,
            "seed": a.seed,
            "questions": scores.questions,
            "exact_match": scores.exact_match,
            "f1": scores.f1,
            "seconds_per_question": secs / n as f64,
        });
        println!("{out}");
        return Ok(());
    }
    println!(
        "\n| generator  | questions | EM     | F1     | s/question |\n|------------|-----------|--------|--------|------------|\n| {:<10} | {:>9} | {:>6.2} | {:>6.2} | {:>10.2} |",
        a.generator,
        scores.questions,
        scores.exact_match,
        scores.f1,
        secs / n as f64
    );
    Ok(())
}

/// Drop `[n]` citation markers so they are not scored as answer tokens.
fn strip_citations(s: &str) -> String {
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
                        .all(|c| c.is_ascii_digit() || c == ',' || c == ' ') =>
            {
                rest = &after[j + 1..];
            }
            _ => {
                out.push('[');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out.trim().to_string()
}
