//! Local sentence embeddings: a BERT encoder (all-MiniLM-L6-v2 and friends)
//! run with candle on the CPU, equal to sentence-transformers' output.
//!
//! Pipeline per [`Embedder::embed`] call:
//! 1. tokenize every text (with `[CLS]`/`[SEP]`, truncated to the model's
//!    `max_seq_length` from `sentence_bert_config.json`);
//! 2. deal the inputs into batches of about equal token counts (longest
//!    first, each to the lightest batch);
//! 3. run the batches through the encoder ([`crate::bert_encoder`]: no
//!    padding, each sequence attends over its own length) — on several
//!    worker threads when there are enough of them (see
//!    [`BertOptions::threads`]);
//! 4. mean-pool the last hidden state over each input's tokens,
//!    L2-normalise, and put the vectors back in input order.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::Config;
use ragfleet_rag::embed::Embedder;
use ragfleet_rag::{RagError, Result};
use tokenizers::{Tokenizer, TruncationParams};

use crate::bert_encoder::{BertEncoder, Scratch};
use crate::util::{file_sha256, model_err, read_file};

/// Tuning knobs of [`BertEmbedder`]; the defaults are what the benchmark
/// found best on a 2-core machine.
#[derive(Debug, Clone)]
pub struct BertOptions {
    /// Inputs per forward pass at most. Batches carry no padding, so this
    /// only sets how many tokens share one matmul.
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
    /// Worker threads (≥ 1); each runs whole batches, single-threaded.
    threads: usize,
}

struct Inner {
    encoder: BertEncoder,
    /// Truncates to `max_tokens`, adds special tokens, no padding.
    tokenizer: Tokenizer,
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
        let encoder = BertEncoder::load(vb, &config).map_err(|e| model_err(&weights_path, e))?;

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
        Ok(Self {
            inner: Arc::new(Inner { encoder, tokenizer }),
            id: format!("{name}@{}", &hash[..12]),
            dim: config.hidden_size,
            max_tokens,
            batch_size: opts.batch_size.max(1),
            threads: threads.max(1),
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
    /// Embed one batch of tokenized inputs, in the given order.
    fn run_batch(
        &self,
        items: &[&Item],
        scratch: &mut Scratch,
    ) -> candle_core::Result<Vec<Vec<f32>>> {
        let seqs: Vec<&[u32]> = items.iter().map(|i| i.ids.as_slice()).collect();
        self.encoder.embed(&seqs, scratch)
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
        let batches = deal_batches(&mut items, self.batch_size, self.threads);

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
    fn run_batches(&self, batches: &[Vec<&Item>]) -> Result<Vec<Vec<Vec<f32>>>> {
        type BatchResult = candle_core::Result<Vec<Vec<f32>>>;
        let err = |e: candle_core::Error| RagError::Model(format!("running {}: {e}", self.id));
        let workers = self.threads.min(batches.len());
        if workers <= 1 {
            let mut scratch = Scratch::default();
            return batches
                .iter()
                .map(|b| self.inner.run_batch(b, &mut scratch).map_err(err))
                .collect();
        }
        // Workers take batches from a shared counter, each with its own
        // working memory; matmuls run single-threaded inside a worker.
        let next = AtomicUsize::new(0);
        let per_worker: Vec<Vec<(usize, BatchResult)>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    let next = &next;
                    s.spawn(move || {
                        let mut scratch = Scratch::default();
                        let mut done = Vec::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(batch) = batches.get(i) else { break };
                            done.push((i, self.inner.run_batch(batch, &mut scratch)));
                        }
                        done
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

/// Deal the inputs into batches of at most `batch_size` inputs, at least
/// one per worker when there are enough inputs, and of about equal cost:
/// longest input first, each to the cheapest batch that has room. With no
/// padding, a batch's cost is the sum of its inputs' costs, and the
/// workers finish together instead of one waiting on the long inputs.
fn deal_batches(items: &mut [Item], batch_size: usize, workers: usize) -> Vec<Vec<&Item>> {
    // Per token, MiniLM's projections and feed-forward cost about as much
    // as attention over 2300 tokens; attention grows with the length.
    let cost = |len: usize| len * (len + 2300);
    items.sort_by(|a, b| b.ids.len().cmp(&a.ids.len()).then(a.index.cmp(&b.index)));
    let n = items.len();
    let count = n.div_ceil(batch_size.max(1)).max(workers.min(n));
    let cap = n.div_ceil(count.max(1));
    let mut batches: Vec<(usize, Vec<&Item>)> =
        (0..count).map(|_| (0, Vec::with_capacity(cap))).collect();
    for item in items.iter() {
        let c = cost(item.ids.len());
        match batches
            .iter_mut()
            .filter(|(_, b)| b.len() < cap)
            .min_by_key(|(load, _)| *load)
        {
            Some((load, batch)) => {
                *load += c;
                batch.push(item);
            }
            None => batches.push((c, vec![item])),
        }
    }
    batches.into_iter().map(|(_, b)| b).collect()
}

#[cfg(test)]
mod tests {
    use super::{deal_batches, Item};

    fn items(lens: &[usize]) -> Vec<Item> {
        lens.iter()
            .enumerate()
            .map(|(index, &n)| Item {
                index,
                ids: vec![0; n],
            })
            .collect()
    }

    #[test]
    fn batches_are_capped_balanced_and_cover_every_input_once() {
        // 32 inputs, batch size 16, 2 workers: two batches of 16 whose work
        // is within one long input of each other (sorted cutting would give
        // one batch all the long inputs).
        let lens: Vec<usize> = (0..32).map(|i| 20 + i * 7).collect();
        let mut its = items(&lens);
        let batches = deal_batches(&mut its, 16, 2);
        assert_eq!(batches.len(), 2);
        let cost = |b: &Vec<&Item>| {
            b.iter()
                .map(|i| i.ids.len() * (i.ids.len() + 2300))
                .sum::<usize>()
        };
        let (a, b) = (cost(&batches[0]), cost(&batches[1]));
        let longest = 237 * (237 + 2300);
        assert!(a.abs_diff(b) <= longest, "{a} vs {b}");
        let mut seen: Vec<usize> = batches.iter().flatten().map(|i| i.index).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..32).collect::<Vec<_>>());
        assert!(batches.iter().all(|b| b.len() <= 16));

        // Fewer inputs than workers: one batch each; many inputs: capped.
        let mut its = items(&[5, 9, 3]);
        assert_eq!(deal_batches(&mut its, 16, 8).len(), 3);
        let mut its = items(&[10; 100]);
        let batches = deal_batches(&mut its, 16, 2);
        assert_eq!(batches.len(), 7);
        assert!(batches.iter().all(|b| b.len() <= 16));
        assert!(deal_batches(&mut [], 16, 2).is_empty());
    }
}
