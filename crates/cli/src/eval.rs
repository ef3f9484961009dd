//! `ragfleet eval`: retrieval quality on a BEIR-layout dataset and answer
//! quality on a SQuAD v1.1 file, measured through a fresh [`Engine`].
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use futures::StreamExt;
use ragfleet_models::{BertEmbedder, LocalLlama, LocalLlamaOptions};
use ragfleet_rag::answer::{strip_markers, Relevance, NO_ANSWER};
use ragfleet_rag::eval::{
    dedup_ranked, evaluate_run, f1_score, max_over_gold, read_beir, read_squad, AnswerScores,
    RetrievalScores, SquadQuestion,
};
use ragfleet_rag::generate::extractive::ExtractiveGenerator;
use ragfleet_rag::generate::Generator;
use ragfleet_rag::types::{NewDocument, RetrievalMode};
use ragfleet_rag::{ChatEvent, ChatRequest, Engine, EngineConfig, Generators, SearchQuery};

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
    /// GGUF model of the `local` generator (llama, qwen2, qwen3, gemma3,
    /// phi3); default: SmolLM2 in the models dir. A path that does not exist
    /// from here is taken relative to the models dir.
    #[arg(long, value_name = "FILE.gguf")]
    llm_model: Option<PathBuf>,
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
    /// Sample only questions of the articles at `even` or `odd` positions in
    /// the file (two disjoint halves: tune on one, report on the other).
    #[arg(long, default_value = "all")]
    articles: String,
    /// Unanswerable questions to ask: the first N sampled questions, each
    /// asked with its whole article removed from the corpus (0 = none).
    #[arg(long)]
    unanswerable: Option<usize>,
    /// Override `[chat] min_relevance` (the abstention threshold).
    #[arg(long)]
    min_relevance: Option<f32>,
    /// Write one JSON line per question (relevance evidence, decision,
    /// scores) to this file.
    #[arg(long)]
    scores: Option<PathBuf>,
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

async fn open_engine(
    c: &Common,
    work: &Path,
    generators: Generators,
    min_relevance: Option<f32>,
) -> anyhow::Result<Engine> {
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
    if let Some(m) = min_relevance {
        cfg.chat.min_relevance = m;
    }
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
    let engine = open_engine(&a.common, &work.path, generators, None).await?;
    if engine.stats().documents == 0 {
        ingest_all(&engine, ds.corpus.clone()).await?;
    } else {
        eprintln!("reusing the index in {}", work.path.display());
    }

    let mut rows: Vec<(RetrievalMode, RetrievalScores, f64)> = Vec::new();
    for &mode in &a.modes {
        let started = Instant::now();
        let mut run: HashMap<String, Vec<String>> = HashMap::new();
        for (i, q) in queries.iter().enumerate() {
            let mut sq = SearchQuery::new(q.text.clone());
            // Chunk-level hits; enough of them to rank 100 distinct documents.
            sq.top_k = 200;
            sq.mode = mode;
            let hits = engine
                .search(sq)
                .await
                .with_context(|| format!("query {}", q.id))?;
            let mut docs = dedup_ranked(hits.into_iter().map(|h| h.doc_id));
            docs.truncate(100);
            run.insert(q.id.clone(), docs);
            if i % 200 == 199 {
                eprint!("\r{mode:?}: {}/{} queries", i + 1, queries.len());
            }
        }
        let secs = started.elapsed().as_secs_f64();
        eprintln!("\r{mode:?}: {} queries in {secs:.1}s", queries.len());
        rows.push((
            mode,
            evaluate_run(&run, &qrels),
            queries.len() as f64 / secs,
        ));
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
            "modes": modes,
        });
        println!("{out}");
    } else {
        print_table(&rows);
    }
    Ok(())
}

fn print_table(rows: &[(RetrievalMode, RetrievalScores, f64)]) {
    println!(
        "\n| mode    | nDCG@10 | Recall@10 | Recall@100 | MRR@10 | queries/s |\n|---------|---------|-----------|------------|--------|-----------|"
    );
    for (mode, s, qps) in rows {
        let name = format!("{mode:?}").to_lowercase();
        println!(
            "| {name:<7} | {:.4}  | {:.4}    | {:.4}     | {:.4} | {qps:>9.1} |",
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

/// One asked question's outcome.
struct Asked {
    answer: String,
    relevance: Option<Relevance>,
    /// (supported sentences, sentences) of the attributed answer.
    grounded: (usize, usize),
    /// The numbered passages the generator was given (none when it
    /// abstained), for diagnosing an answer from the `--scores` file.
    sources: Vec<serde_json::Value>,
}

impl Asked {
    fn abstained(&self) -> bool {
        self.relevance.is_some_and(|r| r.abstained) || strip_markers(&self.answer) == NO_ANSWER
    }
}

async fn ask_one(engine: &Engine, a: &AnswersArgs, q: &SquadQuestion) -> anyhow::Result<Asked> {
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
    let mut done = None;
    while let Some(ev) = stream.next().await {
        match ev {
            ChatEvent::Done { answer, run_id, .. } => done = Some((answer, run_id)),
            ChatEvent::Error { message } => bail!("question {}: {message}", q.id),
            _ => {}
        }
    }
    // A stream that ends without `Done` lost its answer: scoring it as
    // an empty answer would quietly lower the numbers.
    let Some((answer, run_id)) = done else {
        bail!(
            "question {}: the answer stream ended without a result",
            q.id
        );
    };
    let run = engine.get_run(&run_id).await?;
    let (relevance, grounded, sources) = run.map_or((None, (0, 0), Vec::new()), |r| {
        let ok = r.attribution.iter().filter(|s| s.supported).count();
        let sources = r
            .sources
            .iter()
            .map(|s| serde_json::json!({"n": s.n, "chunk_id": s.chunk_id, "text": s.text}))
            .collect();
        (r.relevance, (ok, r.attribution.len()), sources)
    });
    Ok(Asked {
        answer,
        relevance,
        grounded,
        sources,
    })
}

/// The seeded sample, optionally from one half of the articles.
fn sample_questions<'a>(
    all: &'a [SquadQuestion],
    a: &AnswersArgs,
) -> anyhow::Result<Vec<&'a SquadQuestion>> {
    let mut order: HashMap<&str, usize> = HashMap::new();
    for q in all {
        let n = order.len();
        order.entry(q.title.as_str()).or_insert(n);
    }
    let keep = |q: &SquadQuestion| match a.articles.as_str() {
        "even" => order[q.title.as_str()].is_multiple_of(2),
        "odd" => !order[q.title.as_str()].is_multiple_of(2),
        _ => true,
    };
    if !matches!(a.articles.as_str(), "all" | "even" | "odd") {
        bail!("--articles must be all, even or odd, not {:?}", a.articles);
    }
    let pool: Vec<&SquadQuestion> = all.iter().filter(|q| keep(q)).collect();
    // Seeded partial Fisher-Yates.
    let mut idx: Vec<usize> = (0..pool.len()).collect();
    let mut st = a.seed;
    let n = a.sample.min(pool.len());
    for i in 0..n {
        let j = i + (splitmix(&mut st) % (idx.len() - i) as u64) as usize;
        idx.swap(i, j);
    }
    Ok(idx[..n].iter().map(|&i| pool[i]).collect())
}

async fn load_generator(a: &AnswersArgs) -> anyhow::Result<Arc<dyn Generator>> {
    Ok(match a.generator.as_str() {
        "extractive" => Arc::new(ExtractiveGenerator::new()),
        "local" => {
            let file = match &a.llm_model {
                Some(p) if p.is_file() => p.clone(),
                Some(p) => a.common.models.join(p),
                None => a
                    .common
                    .models
                    .join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
            };
            let g = tokio::task::spawn_blocking(move || {
                LocalLlama::load(&file, LocalLlamaOptions::default())
            })
            .await?
            .context("loading the local generator (set --models or RAGFLEET_MODELS)")?;
            Arc::new(g)
        }
        other => bail!("--generator must be `local` or `extractive`, not {other:?}"),
    })
}

async fn answers(a: AnswersArgs) -> anyhow::Result<()> {
    let path = a.squad.clone();
    let all = tokio::task::spawn_blocking(move || read_squad(&path)).await??;
    if a.sample == 0 {
        bail!("--sample must be at least 1");
    }
    let sample = sample_questions(&all, &a)?;
    let n = sample.len();
    // Paragraphs as documents, ids as in squad-beir: "{title}#{index}".
    let wanted: Option<HashSet<String>> = match a.corpus.as_str() {
        "all" => None,
        "sampled" => Some(sample.iter().map(|q| para_id(q)).collect()),
        other => bail!("--corpus must be `all` or `sampled`, not {other:?}"),
    };
    let mut paragraphs: BTreeMap<String, NewDocument> = BTreeMap::new();
    for q in &all {
        let id = para_id(q);
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
    let generator = load_generator(&a).await?;
    let work = WorkDir::new(a.common.work.clone())?;
    let engine = open_engine(
        &a.common,
        &work.path,
        Generators::single(a.generator.clone(), generator),
        a.min_relevance,
    )
    .await?;
    let summary = format!(
        "SQuAD {}: {} questions sampled (seed {}, articles {}), {} paragraphs indexed, generator {}, min_relevance {}",
        a.squad.display(),
        n,
        a.seed,
        a.articles,
        paragraphs.len(),
        a.generator,
        engine.config().chat.min_relevance
    );
    if a.common.json {
        eprintln!("{summary}");
    } else {
        println!("{summary}");
    }
    if engine.stats().documents == 0 {
        ingest_all(&engine, paragraphs.values().cloned().collect()).await?;
    }
    let mut lines: Vec<serde_json::Value> = Vec::new();
    let started = Instant::now();
    let mut preds: Vec<(String, &[String])> = Vec::new();
    let (mut ok_sent, mut all_sent, mut false_abst) = (0usize, 0usize, 0usize);
    for (i, q) in sample.iter().enumerate() {
        let r = ask_one(&engine, &a, q).await?;
        let pred = strip_markers(&r.answer);
        ok_sent += r.grounded.0;
        all_sent += r.grounded.1;
        false_abst += usize::from(r.abstained());
        lines.push(score_line(q, "answerable", &r, Some(pred.as_str())));
        preds.push((pred, q.answers.as_slice()));
        eprint!("\ranswered {}/{}", i + 1, n);
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!();
    let scores = AnswerScores::from_pairs(preds.iter().map(|(p, g)| (p.as_str(), *g)));
    let unans = unanswerable(&engine, &a, &sample, &paragraphs, &mut lines).await?;
    if let Some(path) = &a.scores {
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    let grounding = if all_sent > 0 {
        100.0 * ok_sent as f64 / all_sent as f64
    } else {
        100.0
    };
    let false_abstention = 100.0 * false_abst as f64 / n as f64;
    let abstention = unans.map(|(k, m)| 100.0 * k as f64 / m.max(1) as f64);
    if a.common.json {
        let out = serde_json::json!({
            "squad": a.squad,
            "generator": a.generator,
            "mode": a.mode,
            "top_k": a.top_k,
            "seed": a.seed,
            "articles": a.articles,
            "questions": scores.questions,
            "exact_match": scores.exact_match,
            "f1": scores.f1,
            "grounding": grounding,
            "false_abstention": false_abstention,
            "abstention": abstention,
            "unanswerable_questions": unans.map(|x| x.1),
            "min_relevance": engine.config().chat.min_relevance,
            "seconds_per_question": secs / n as f64,
        });
        println!("{out}");
        return Ok(());
    }
    let abst = abstention.map_or("-".to_string(), |x| format!("{x:.1}"));
    println!(
        "\n| generator  | questions | EM     | F1     | grounding | false abstention | abstention (unanswerable) | s/question |\n|------------|-----------|--------|--------|-----------|------------------|---------------------------|------------|\n| {:<10} | {:>9} | {:>6.2} | {:>6.2} | {:>9.1} | {:>16.1} | {:>25} | {:>10.2} |",
        a.generator,
        scores.questions,
        scores.exact_match,
        scores.f1,
        grounding,
        false_abstention,
        format!("{abst} of {}", unans.map_or(0, |x| x.1)),
        secs / n as f64
    );
    Ok(())
}

fn para_id(q: &SquadQuestion) -> String {
    format!("{}#{}", q.title, q.paragraph)
}

fn score_line(q: &SquadQuestion, set: &str, r: &Asked, pred: Option<&str>) -> serde_json::Value {
    serde_json::json!({
        "id": q.id,
        "article": q.title,
        "set": set,
        "relevance": r.relevance,
        "abstained": r.abstained(),
        "f1": pred.map(|p| max_over_gold(f1_score, p, &q.answers)),
        "answer": r.answer,
        "sources": r.sources,
    })
}

/// Asks the first `--unanswerable` sampled questions with their whole
/// article removed from the corpus (article by article: delete its
/// paragraphs, ask, ingest them again). Returns (abstained, asked).
async fn unanswerable(
    engine: &Engine,
    a: &AnswersArgs,
    sample: &[&SquadQuestion],
    paragraphs: &BTreeMap<String, NewDocument>,
    lines: &mut Vec<serde_json::Value>,
) -> anyhow::Result<Option<(usize, usize)>> {
    let m = a.unanswerable.unwrap_or(sample.len()).min(sample.len());
    if m == 0 {
        return Ok(None);
    }
    let mut by_article: BTreeMap<&str, Vec<&SquadQuestion>> = BTreeMap::new();
    for &q in &sample[..m] {
        by_article.entry(q.title.as_str()).or_default().push(q);
    }
    let (mut abstained, mut asked) = (0usize, 0usize);
    for (title, qs) in by_article {
        let prefix = format!("{title}#");
        let docs: Vec<NewDocument> = paragraphs
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(_, d)| d.clone())
            .collect();
        for d in &docs {
            if let Some(id) = &d.id {
                engine.delete_document(id).await?;
            }
        }
        for q in qs {
            let r = ask_one(engine, a, q).await?;
            abstained += usize::from(r.abstained());
            asked += 1;
            lines.push(score_line(q, "unanswerable", &r, None));
            eprint!("\runanswerable {asked}/{m}");
        }
        for r in engine.ingest_batch(docs).await {
            r.context("re-ingesting an article")?;
        }
    }
    engine.flush().await?;
    eprintln!();
    Ok(Some((abstained, asked)))
}
