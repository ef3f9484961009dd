//! Local sentence embeddings: a BERT encoder (all-MiniLM-L6-v2 and friends)
//! run with candle on the CPU, equal to sentence-transformers' output.
//!
//! Pipeline per [`Embedder::embed`] call:
//! 1. tokenize every text (with `[CLS]`/`[SEP]`, truncated to the model's
//!    `max_seq_length` from `sentence_bert_config.json`);
//! 2. sort the inputs by token length and cut them into batches, so each batch
//!    is padded only to its own longest member (little wasted compute);
//! 3. run the batches — on several worker threads when there are enough of
//!    them (see [`BertOptions::threads`]);
//! 4. mean-pool the last hidden state over the attention mask, L2-normalise,
//!    and put the vectors back in input order.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use ragfleet_rag::embed::Embedder;
use ragfleet_rag::{RagError, Result};
use tokenizers::{Tokenizer, TruncationParams};

use crate::util::{file_sha256, model_err, read_file};

/// Tuning knobs of [`BertEmbedder`]; the defaults are what the benchmark
/// found best on a 2-core machine.
#[derive(Debug, Clone)]
pub struct BertOptions {
    /// Inputs per forward pass (after sorting by length).
    pub batch_size: usize,
    /// Worker threads running batches side by side; 0 = one per CPU core.
    /// Each worker runs its matmuls single-threaded, which beats one
    /// multi-threaded forward pass for the small matrices of MiniLM.
    pub threads: usize,
    /// Override the truncation length (word pieces incl. special tokens);
    /// `None` reads `sentence_bert_config.json` (`max_seq_length`), else the
    /// model's `max_position_embeddings`.
    pub max_tokens: Option<usize>,
}

impl Default for BertOptions {
    fn default() -> Self {
        Self {
            batch_size: 16,
            threads: 0,
            max_tokens: None,
        }
    }
}

/// A BERT sentence embedder (mean pooling + L2 normalisation) loaded from a
/// directory in Hugging Face layout: `config.json`, `tokenizer.json`,
/// `model.safetensors` (and optionally `sentence_bert_config.json`).
pub struct BertEmbedder {
    inner: Arc<Inner>,
    id: String,
    dim: usize,
    max_tokens: usize,
    batch_size: usize,
    /// One single-threaded rayon pool per worker: candle's matmuls (gemm)
    /// and other rayon-parallel ops then stay on the worker's own thread.
    pools: Vec<rayon::ThreadPool>,
}

struct Inner {
    model: BertModel,
    /// Truncates to `max_tokens`, adds special tokens, no padding.
    tokenizer: Tokenizer,
    device: Device,
}

impl BertEmbedder {
    /// Load with default options.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        Self::load_with(dir, BertOptions::default())
    }

    pub fn load_with(dir: impl AsRef<Path>, opts: BertOptions) -> Result<Self> {
        let dir = dir.as_ref();
        let config_path = dir.join("config.json");
        let config: Config = serde_json::from_slice(&read_file(&config_path)?)
            .map_err(|e| model_err(&config_path, format!("not a BERT config: {e}")))?;

        let max_tokens = match opts.max_tokens {
            Some(n) => n,
            None => read_max_seq_length(dir)?.unwrap_or(config.max_position_embeddings),
        }
        .min(config.max_position_embeddings);
        if max_tokens < 2 {
            return Err(RagError::Model(format!(
                "{}: max tokens {max_tokens} leaves no room for text",
                dir.display()
            )));
        }

        let tok_path = dir.join("tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&tok_path).map_err(|e| model_err(&tok_path, e))?;
        // tokenizer.json may carry fixed padding/truncation from its export
        // (all-MiniLM-L6-v2 pads to 128); we pad per batch ourselves.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                ..Default::default()
            }))
            .map_err(|e| model_err(&tok_path, e))?;

        let weights_path = dir.join("model.safetensors");
        let bytes = read_file(&weights_path)?;
        let hash = file_sha256(&bytes);
        let device = Device::Cpu;
        let vb = VarBuilder::from_buffered_safetensors(bytes, DType::F32, &device)
            .map_err(|e| model_err(&weights_path, e))?;
        let model = BertModel::load(vb, &config).map_err(|e| model_err(&weights_path, e))?;

        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "bert".to_string());
        let threads = if opts.threads == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            opts.threads
        };
        let pools = if threads <= 1 {
            Vec::new()
        } else {
            (0..threads)
                .map(|i| {
                    rayon::ThreadPoolBuilder::new()
                        .num_threads(1)
                        .thread_name(move |_| format!("bert-embed-{i}"))
                        .build()
                        .map_err(|e| RagError::Model(format!("starting embedding workers: {e}")))
                })
                .collect::<Result<Vec<_>>>()?
        };
        Ok(Self {
            inner: Arc::new(Inner {
                model,
                tokenizer,
                device,
            }),
            id: format!("{name}@{}", &hash[..12]),
            dim: config.hidden_size,
            max_tokens,
            batch_size: opts.batch_size.max(1),
            pools,
        })
    }

    /// Where this embedder was configured to truncate (word pieces incl.
    /// `[CLS]`/`[SEP]`).
    pub fn truncation(&self) -> usize {
        self.max_tokens
    }
}

fn read_max_seq_length(dir: &Path) -> Result<Option<usize>> {
    let p: PathBuf = dir.join("sentence_bert_config.json");
    if !p.exists() {
        return Ok(None);
    }
    let v: serde_json::Value = serde_json::from_slice(&read_file(&p)?)
        .map_err(|e| model_err(&p, format!("invalid JSON: {e}")))?;
    Ok(v.get("max_seq_length")
        .and_then(|x| x.as_u64())
        .map(|x| x as usize))
}

/// One tokenized input.
struct Item {
    index: usize,
    ids: Vec<u32>,
}

impl Inner {
    /// Embed one batch of tokenized inputs (any lengths), in the given order.
    fn run_batch(&self, items: &[Item]) -> candle_core::Result<Vec<Vec<f32>>> {
        let n = items.len();
        let len = items.iter().map(|i| i.ids.len()).max().unwrap_or(0).max(1);
        let mut ids = vec![0u32; n * len];
        let mut mask = vec![0u32; n * len];
        for (row, item) in items.iter().enumerate() {
            ids[row * len..row * len + item.ids.len()].copy_from_slice(&item.ids);
            mask[row * len..row * len + item.ids.len()].fill(1);
        }
        let ids = Tensor::from_vec(ids, (n, len), &self.device)?;
        let mask = Tensor::from_vec(mask, (n, len), &self.device)?;
        let types = ids.zeros_like()?;
        let hidden = self.model.forward(&ids, &types, Some(&mask))?; // (n, len, dim)
        let maskf = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // (n, len, 1)
        let summed = hidden.broadcast_mul(&maskf)?.sum(1)?; // (n, dim)
        let counts = maskf.sum(1)?.clamp(1e-9f32, f32::MAX)?; // (n, 1)
        let mean = summed.broadcast_div(&counts)?;
        let norms = mean
            .sqr()?
            .sum_keepdim(1)?
            .sqrt()?
            .clamp(1e-12f32, f32::MAX)?;
        mean.broadcast_div(&norms)?.to_vec2::<f32>()
    }
}

impl Embedder for BertEmbedder {
    fn id(&self) -> String {
        self.id.clone()
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn max_tokens(&self) -> usize {
        // Room for text once [CLS] and [SEP] are added.
        self.max_tokens - 2
    }

    fn count_tokens(&self, text: &str) -> usize {
        // Untruncated count, special tokens excluded: the chunker needs the
        // real length to know when a chunk would not fit.
        match self.inner.tokenizer.encode_fast(text, false) {
            Ok(enc) => {
                enc.get_ids().len()
                    + enc
                        .get_overflowing()
                        .iter()
                        .map(|o| o.get_ids().len())
                        .sum::<usize>()
            }
            Err(_) => text.split_whitespace().count(),
        }
    }

    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let encs = self
            .inner
            .tokenizer
            .encode_batch_fast(texts.to_vec(), true)
            .map_err(|e| RagError::Model(format!("tokenizing for {}: {e}", self.id)))?;
        let mut items: Vec<Item> = encs
            .into_iter()
            .enumerate()
            .map(|(index, e)| Item {
                index,
                ids: e.get_ids().to_vec(),
            })
            .collect();
        // Longest first: the expensive batches start early and the tail of
        // the work is made of cheap short batches that balance the workers.
        items.sort_by(|a, b| b.ids.len().cmp(&a.ids.len()).then(a.index.cmp(&b.index)));
        let batches: Vec<&[Item]> = items.chunks(self.batch_size).collect();

        let mut out: Vec<Vec<f32>> = vec![Vec::new(); texts.len()];
        let results = self.run_batches(&batches)?;
        for (batch, vecs) in batches.iter().zip(results) {
            for (item, v) in batch.iter().zip(vecs) {
                out[item.index] = v;
            }
        }
        Ok(out)
    }
}

impl BertEmbedder {
    fn run_batches(&self, batches: &[&[Item]]) -> Result<Vec<Vec<Vec<f32>>>> {
        type BatchResult = candle_core::Result<Vec<Vec<f32>>>;
        let err = |e: candle_core::Error| RagError::Model(format!("running {}: {e}", self.id));
        let workers = self.pools.len().min(batches.len());
        if workers <= 1 {
            return batches
                .iter()
                .map(|b| self.inner.run_batch(b).map_err(err))
                .collect();
        }
        // Workers take batches from a shared counter; each runs its forward
        // passes inside its own 1-thread pool (see BertOptions::threads).
        let next = AtomicUsize::new(0);
        let per_worker: Vec<Vec<(usize, BatchResult)>> = std::thread::scope(|s| {
            let handles: Vec<_> = self.pools[..workers]
                .iter()
                .map(|pool| {
                    let next = &next;
                    s.spawn(move || {
                        pool.install(|| {
                            let mut done = Vec::new();
                            loop {
                                let i = next.fetch_add(1, Ordering::Relaxed);
                                let Some(batch) = batches.get(i) else { break };
                                done.push((i, self.inner.run_batch(batch)));
                            }
                            done
                        })
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_default())
                .collect()
        });
        let mut results: Vec<Option<BatchResult>> = (0..batches.len()).map(|_| None).collect();
        for (i, r) in per_worker.into_iter().flatten() {
            results[i] = Some(r);
        }
        results
            .into_iter()
            .map(|r| match r {
                Some(r) => r.map_err(err),
                None => Err(RagError::Model(format!(
                    "{}: an embedding worker panicked",
                    self.id
                ))),
            })
            .collect()
    }
}
