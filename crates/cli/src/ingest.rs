//! `ragfleet ingest PATH…`: load files and directories (recursively) into a
//! running node over HTTP (`--url`), or straight into a data directory
//! (`--data`) with the engine in this process. A progress bar while it runs,
//! then a summary listing every failure with its file.
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Files or directories (walked recursively; hidden entries skipped).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Send the files to this running node (or gateway).
    #[arg(long, env = "RAGFLEET_URL", conflicts_with = "data")]
    pub url: Option<String>,
    /// Write into this data directory directly, without a node (stop any node
    /// using it first). The data directory of `ragfleet up`: into the
    /// cluster's store, which its nodes follow (running or not).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Models directory (direct mode: the embedding model).
    #[arg(long, env = "RAGFLEET_MODELS", default_value = "models")]
    pub models: PathBuf,
    /// Node config file (direct mode: chunking settings).
    #[arg(long, env = "RAGFLEET_CONFIG")]
    pub config: Option<PathBuf>,
    /// Put the documents in this collection.
    #[arg(long)]
    pub collection: Option<String>,
    /// Files uploaded at once (node mode).
    #[arg(long, default_value_t = 2)]
    pub jobs: usize,
    /// No progress bar (e.g. in scripts); the summary is still printed.
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub key: crate::api_key::KeyArgs,
}

/// What happened to one file.
#[derive(Debug, Default)]
pub struct FileOutcome {
    pub documents: usize,
    pub chunks: usize,
    pub created: usize,
    pub replaced: usize,
    pub unchanged: usize,
    /// The ids of the documents stored, in order.
    pub ids: Vec<String>,
    /// Per-document or per-line failures inside a file that otherwise loaded.
    pub partial_failures: Vec<String>,
}

impl FileOutcome {
    fn count(&mut self, id: String, chunks: usize, status: &str) {
        self.documents += 1;
        self.chunks += chunks;
        match status {
            "created" => self.created += 1,
            "replaced" => self.replaced += 1,
            _ => self.unchanged += 1,
        }
        self.ids.push(id);
    }
}

#[derive(Debug, Default)]
struct Summary {
    files: usize,
    outcome: FileOutcome,
    /// Distinct document ids stored: the documents count.
    ids: std::collections::HashSet<String>,
    failures: Vec<(PathBuf, String)>,
}

impl Summary {
    fn add(&mut self, path: &Path, res: anyhow::Result<FileOutcome>) {
        self.files += 1;
        match res {
            Ok(o) => {
                self.outcome.documents += o.documents;
                self.outcome.chunks += o.chunks;
                self.outcome.created += o.created;
                self.outcome.replaced += o.replaced;
                self.outcome.unchanged += o.unchanged;
                self.ids.extend(o.ids);
                for f in o.partial_failures {
                    self.failures.push((path.to_path_buf(), f));
                }
            }
            Err(e) => self.failures.push((path.to_path_buf(), format!("{e:#}"))),
        }
    }

    fn print(
        &self,
        out: &mut impl std::io::Write,
        elapsed: std::time::Duration,
    ) -> std::io::Result<()> {
        let o = &self.outcome;
        // Documents are counted once each: a document written twice in one
        // run (two JSON lines with one id) is one stored document.
        let again = o.documents.saturating_sub(self.ids.len());
        writeln!(
            out,
            "{} files: {} documents ({} new, {} replaced, {} unchanged{}), {} chunks in {:.1}s",
            self.files,
            self.ids.len(),
            o.created,
            o.replaced,
            o.unchanged,
            if again > 0 {
                format!("; {again} wrote a document again that this run had written")
            } else {
                String::new()
            },
            o.chunks,
            elapsed.as_secs_f64()
        )?;
        if !self.failures.is_empty() {
            writeln!(out, "{} failures:", self.failures.len())?;
            for (p, e) in &self.failures {
                // Loader errors already start with the file's name.
                let name = p.display().to_string();
                if e.starts_with(&name) {
                    writeln!(out, "  {e}")?;
                } else {
                    writeln!(out, "  {name}: {e}")?;
                }
            }
        }
        Ok(())
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(ingest(args))
}

async fn ingest(args: Args) -> anyhow::Result<()> {
    let files = sourced_files(&args.paths)?;
    if files.is_empty() {
        bail!("no files found under the given paths");
    }
    let started = Instant::now();
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        let b = ProgressBar::new(files.len() as u64);
        b.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} files {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    };
    let summary = match (&args.url, &args.data) {
        (Some(url), None) => ingest_remote(&args, url, &files, &bar).await?,
        (None, Some(data)) => direct::ingest_direct(&args, data, &files, &bar).await?,
        (None, None) => bail!("say where to ingest: --url URL (a running node) or --data DIR"),
        (Some(_), Some(_)) => bail!("--url and --data exclude each other"),
    };
    bar.finish_and_clear();
    // A closed standard output (`| head`) is no failure of the ingest.
    if let Err(e) = summary.print(&mut std::io::stdout().lock(), started.elapsed()) {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(crate::ask::stdout_error(e));
        }
    }
    if !summary.failures.is_empty() {
        bail!("{} failures", summary.failures.len());
    }
    Ok(())
}

/// A file to ingest and its source: its path relative to the directory
/// given on the command line (`/` separators), or its name for a file given
/// itself. The source is the document's identity within its collection, so
/// it does not depend on where the command runs from.
pub type SourcedFile = (PathBuf, String);

/// [`collect_files`] with each file's source. Two files with one source
/// (`a/index.html` and `b/index.html` given as `a b`) would replace each
/// other: that is refused, naming them.
pub fn sourced_files(paths: &[PathBuf]) -> anyhow::Result<Vec<SourcedFile>> {
    let mut out: Vec<SourcedFile> = Vec::new();
    let mut seen: std::collections::HashMap<String, PathBuf> = Default::default();
    for root in paths {
        let is_dir = std::fs::metadata(root)
            .with_context(|| format!("{}", root.display()))?
            .is_dir();
        for file in collect_files(std::slice::from_ref(root))? {
            let rel = if is_dir {
                file.strip_prefix(root).unwrap_or(&file).to_path_buf()
            } else {
                file.file_name()
                    .map(PathBuf::from)
                    .unwrap_or_else(|| file.clone())
            };
            let source = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            if let Some(first) = seen.insert(source.clone(), file.clone()) {
                if first != file {
                    bail!(
                        "{} and {} would both be the document {source:?} (a document's source is \
                         its path below the directory given, so one would replace the other): \
                         ingest them into different collections, or give their common parent directory",
                        first.display(),
                        file.display()
                    );
                }
                continue;
            }
            out.push((file, source));
        }
    }
    Ok(out)
}

/// Every regular file under the paths, sorted, hidden entries and
/// directory symlinks skipped. A path that does not exist is an error.
pub fn collect_files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).with_context(|| format!("{}", p.display()))?;
        if meta.is_dir() {
            walk(p, &mut out)?;
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("{}", dir.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("{}", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        if e.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = e.path();
        let ft = e
            .file_type()
            .with_context(|| format!("{}", path.display()))?;
        if ft.is_dir() {
            walk(&path, out)?;
        } else if ft.is_file() || (ft.is_symlink() && path.is_file()) {
            out.push(path);
        }
    }
    Ok(())
}

async fn ingest_remote(
    args: &Args,
    url: &str,
    files: &[SourcedFile],
    bar: &ProgressBar,
) -> anyhow::Result<Summary> {
    let base = url.trim_end_matches('/').to_string();
    let client = args.key.client()?;
    // Fail fast with one clear message when the node is not there.
    client
        .get(format!("{base}/health"))
        .send()
        .await
        .with_context(|| {
            format!("cannot reach the node at {base} (is `ragfleet node` running?)")
        })?;
    let mut summary = Summary::default();
    let mut results = futures::stream::iter(files.iter().cloned())
        .map(|(path, source)| {
            let client = client.clone();
            let base = base.clone();
            let collection = args.collection.clone();
            async move {
                let r = upload_one(&client, &base, &path, &source, collection.as_deref()).await;
                (path, r)
            }
        })
        .buffer_unordered(args.jobs.max(1));
    while let Some((path, res)) = results.next().await {
        bar.set_message(path.display().to_string());
        bar.inc(1);
        if let Err(e) = &res {
            bar.println(format!("failed: {}: {e:#}", path.display()));
        }
        summary.add(&path, res);
    }
    Ok(summary)
}

async fn upload_one(
    client: &reqwest::Client,
    base: &str,
    path: &Path,
    source: &str,
    collection: Option<&str>,
) -> anyhow::Result<FileOutcome> {
    let is_jsonl = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("jsonl"));
    let resp = if is_jsonl {
        // JSON Lines go to the streaming batch endpoint: no size limit on the file.
        let file = tokio::fs::File::open(path).await?;
        let body = reqwest::Body::wrap_stream(tokio_util_reader(file));
        let mut req = client
            .post(format!("{base}/api/v1/documents/batch"))
            .header("content-type", "application/x-ndjson")
            .body(body)
            .query(&[("source", source)]);
        if let Some(c) = collection {
            req = req.query(&[("collection", c)]);
        }
        req.send().await?
    } else {
        let bytes = tokio::fs::read(path).await?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "upload".into());
        let mut form = reqwest::multipart::Form::new()
            .text("source", source.to_string())
            .part(
                "file",
                reqwest::multipart::Part::bytes(bytes).file_name(name),
            );
        if let Some(c) = collection {
            form = form.text("collection", c.to_string());
        }
        client
            .post(format!("{base}/api/v1/documents"))
            .multipart(form)
            .send()
            .await?
    };
    let status = resp.status();
    let text = resp.text().await?;
    if !status.is_success() {
        bail!("{}", crate::ask::error_message(status.as_u16(), &text));
    }
    let v: Value = serde_json::from_str(&text).context("the node's answer is not JSON")?;
    let mut o = FileOutcome::default();
    let empty = Vec::new();
    for d in v["documents"].as_array().unwrap_or(&empty) {
        o.count(
            d["doc_id"].as_str().unwrap_or_default().to_string(),
            d["chunks"].as_u64().unwrap_or(0) as usize,
            d["status"].as_str().unwrap_or_default(),
        );
    }
    for f in v["failures"].as_array().unwrap_or(&empty) {
        o.partial_failures.push(format!(
            "line {}: {}",
            f["line"],
            f["error"]["message"].as_str().unwrap_or_default()
        ));
    }
    Ok(o)
}

/// A file as a stream of byte chunks, for a streamed request body.
fn tokio_util_reader(
    file: tokio::fs::File,
) -> impl futures::Stream<Item = std::io::Result<Vec<u8>>> + Send + 'static {
    use tokio::io::AsyncReadExt;
    futures::stream::unfold(Some(file), |state| async move {
        let mut file = state?;
        let mut buf = vec![0u8; 64 * 1024];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(buf), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    })
}

mod direct {
    //! Direct mode: the engine in this process writes the data directory.
    use super::*;
    use ragfleet_node::{GeneratorKind, NodeConfig};
    use ragfleet_rag::api::IngestStatus;
    use ragfleet_rag::ingest::LoadOptions;

    /// Documents handed to the engine per call (embedded and committed together).
    const GROUP: usize = 32;

    /// The node configuration direct mode opens the engine with: the config
    /// file's chunking, embedder and index settings (so a node started later
    /// on the same directory with the same file finds everything as it
    /// expects), this data and models directory, and no generator model.
    pub(super) fn config(args: &Args, data: &Path) -> anyhow::Result<NodeConfig> {
        let mut cfg = match &args.config {
            Some(p) => NodeConfig::from_file(p)?,
            None => NodeConfig::default(),
        };
        cfg.data_dir = data.to_path_buf();
        if cfg.store.url.is_none() {
            if let Some((db, index_dir)) = up_store(data)? {
                cfg.store.url = Some(format!("sqlite://{}", db.display()));
                cfg.data_dir = index_dir;
            }
        }
        cfg.models_dir = args.models.clone();
        // Ingestion only embeds: never load a generator model for it.
        cfg.generator = GeneratorKind::Extractive;
        cfg.local.enabled = false;
        cfg.validate()?;
        Ok(cfg)
    }

    /// `--data DIR` aimed at the data directory of `ragfleet up` (its
    /// `store/` next to `gateway.toml` or `node-1/`): the store the cluster
    /// reads is `store/ragfleet.db`, not a new one in DIR. Returns that file
    /// and the index directory this ingest keeps for itself (`DIR/ingest`;
    /// the nodes catch up from the store's change log), `None` for any other
    /// directory, and an error when the cluster's store is not here
    /// (`up --postgres-url`): then only the cluster can take the files.
    pub(super) fn up_store(data: &Path) -> anyhow::Result<Option<(PathBuf, PathBuf)>> {
        let is_up = data.join("store").is_dir()
            && (data.join("gateway.toml").is_file() || data.join("node-1").is_dir());
        if !is_up {
            return Ok(None);
        }
        let db = data.join("store").join("ragfleet.db");
        if !db.is_file() {
            let gateway = std::fs::read_to_string(data.join("gateway.toml"))
                .ok()
                .and_then(|t| t.parse::<toml::Table>().ok())
                .and_then(|t| {
                    let a = t.get("listen")?.get("addr")?.as_str()?.to_string();
                    Some(a)
                })
                .unwrap_or_else(|| "127.0.0.1:8080".into());
            bail!(
                "{} is the data directory of `ragfleet up`, but its nodes keep their \
                 documents in another store (--postgres-url), not in this directory; \
                 send the files to the running cluster instead: \
                 ragfleet ingest --url http://{gateway} PATH…",
                data.display()
            );
        }
        let db = std::path::absolute(&db).context("resolving the data directory")?;
        eprintln!(
            "ragfleet ingest: {} is the data directory of `ragfleet up`: writing into its \
             store {} (running nodes pick the documents up from it)",
            data.display(),
            db.display()
        );
        Ok(Some((db, data.join("ingest"))))
    }

    pub(super) async fn ingest_direct(
        args: &Args,
        data: &Path,
        files: &[SourcedFile],
        bar: &ProgressBar,
    ) -> anyhow::Result<Summary> {
        let cfg = config(args, data)?;
        let data = cfg.data_dir.as_path();
        std::fs::create_dir_all(data)
            .with_context(|| format!("creating the data directory {}", data.display()))?;
        let engine = ragfleet_node::open_engine(&cfg)
            .await
            .with_context(|| format!("opening the data directory {}", data.display()))?;
        let opts = LoadOptions {
            collection: args.collection.clone(),
            ..Default::default()
        };
        let mut summary = Summary::default();
        for (path, source) in files {
            bar.set_message(path.display().to_string());
            let opts = LoadOptions {
                source: Some(source.clone()),
                ..opts.clone()
            };
            let res = ingest_file(&engine, path, &opts).await;
            if let Err(e) = &res {
                bar.println(format!("failed: {}: {e:#}", path.display()));
            }
            summary.add(path, res);
            bar.inc(1);
        }
        engine
            .flush()
            .await
            .with_context(|| format!("saving the indexes in {}", data.display()))?;
        Ok(summary)
    }

    /// Load one file (one document, or one per line for JSON Lines) and
    /// ingest what loaded. A file that fails as a whole is an error; bad
    /// lines or documents inside a file are partial failures.
    async fn ingest_file(
        engine: &ragfleet_rag::Engine,
        path: &Path,
        opts: &LoadOptions,
    ) -> anyhow::Result<FileOutcome> {
        let p = path.to_path_buf();
        let o = opts.clone();
        let loaded = tokio::task::spawn_blocking(move || ragfleet_rag::ingest::load_path(&p, &o))
            .await
            .context("the loader task failed")?;
        let mut out = FileOutcome::default();
        let mut docs = Vec::new();
        let mut errors = Vec::new();
        for r in loaded {
            match r {
                Ok(d) => docs.push(d),
                Err(e) => errors.push(e.to_string()),
            }
        }
        if docs.is_empty() {
            match errors.len() {
                0 => bail!("no document in the file"),
                1 => bail!("{}", errors.remove(0)),
                _ => bail!("{}", errors.join("; ")),
            }
        }
        out.partial_failures = errors;
        while !docs.is_empty() {
            let rest = docs.split_off(docs.len().min(GROUP));
            let group = std::mem::replace(&mut docs, rest);
            for r in engine.ingest_batch(group).await {
                match r {
                    Ok(o) => {
                        let status = match o.status {
                            IngestStatus::Created => "created",
                            IngestStatus::Replaced => "replaced",
                            IngestStatus::Unchanged => "unchanged",
                        };
                        out.count(o.doc_id, o.chunks, status);
                    }
                    Err(e) => out.partial_failures.push(e.to_string()),
                }
            }
        }
        if out.documents == 0 {
            bail!("{}", out.partial_failures.join("; "));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collect_files_walks_sorted_and_skips_hidden() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("b/c")).unwrap();
        std::fs::create_dir_all(root.join(".git")).unwrap();
        std::fs::write(root.join("b/c/z.txt"), "z").unwrap();
        std::fs::write(root.join("a.md"), "a").unwrap();
        std::fs::write(root.join(".hidden"), "h").unwrap();
        std::fs::write(root.join(".git/config"), "g").unwrap();
        let got = collect_files(&[root.to_path_buf()]).unwrap();
        assert_eq!(got, vec![root.join("a.md"), root.join("b/c/z.txt")]);
        let err = collect_files(&[root.join("missing")]).unwrap_err();
        assert!(format!("{err:#}").contains("missing"));
    }
}
