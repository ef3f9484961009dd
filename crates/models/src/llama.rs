//! Local generation with a GGUF chat model on the CPU: `llama` (SmolLM2,
//! Llama 3.x), `qwen2`, `qwen3`, `gemma3`, `phi3` ([`crate::transformer::SUPPORTED`]).
//!
//! - Tokenizer, chat template and end-of-turn tokens come from the GGUF file
//!   itself ([`crate::gguf_tokenizer`]); the template is rendered with
//!   minijinja (the files' templates are Jinja programs: loops, slicing,
//!   `raise_exception`, Python string methods, so a renderer of a few fixed
//!   formats would misrender the next model's). A file without a template
//!   gets its family's format, recognised by the turn tokens it has.
//! - Weights ([`WeightFormat`]), llama: by default ragfleet's own forward
//!   pass over the file's quantized blocks with f32 activations
//!   ([`crate::native`]); optionally candle's `quantized_llama`, re-quantised
//!   at load. Other architectures: [`crate::transformer`] on candle's ops.
//! - Decoding ([`crate::decode`]): repetition penalty and no-repeat n-gram
//!   from [`GenParams`], and an answer that starts repeating itself ends.
//! - Concurrency: the weights are loaded once and shared read-only; each
//!   generation gets its own KV cache (a native session, or a clone of
//!   candle's model handle). At most [`LocalLlamaOptions::max_concurrent`]
//!   generations run at once (one already uses every core); the others wait
//!   their turn.
//! - Each generation runs on its own OS thread and sends text deltas through a
//!   bounded channel; dropping the stream closes the channel, which the
//!   thread notices before the next token and stops.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use candle_core::quantized::gguf_file::{self, Content};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use candle_transformers::models::quantized_llama::{ModelWeights, MAX_SEQ_LEN};
use futures::stream::BoxStream;
use futures::StreamExt;
use ragfleet_rag::generate::{ChatMessage, GenParams, GenerateRequest, Generator, Role};
use ragfleet_rag::{RagError, Result};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::decode::{LoopGuard, Penalties};
use crate::gguf_tokenizer::GgufTokenizer;
use crate::native::{self, NativeModel};
use crate::text_stream::{StopMatcher, Utf8Stream};
use crate::transformer::{self, Arch};
use crate::util::{file_sha256, model_err, read_file};

/// How the weights are held in memory for inference.
///
/// `native` (the default) runs ragfleet's own forward pass
/// ([`crate::native`]): the file's quantized blocks as they are, f32
/// activations, AVX2/FMA kernels chosen at run time (scalar elsewhere). The
/// other layouts run candle's `quantized_llama`. candle's quantized matmuls
/// quantize their *input* activations to 8 bits per block of 32, which spoils
/// SmolLM2's answers unless `ffn_down` stays f32; its f32 layout is exact but
/// reads ~540 MB of weights per token (bench/models/llama_bench.sh).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightFormat {
    /// ragfleet's forward pass over the file's own blocks (Q4_1, Q8_0; other
    /// types dequantised to f32 at load) with f32 activations: the f32
    /// answers at about 1/6 of the memory traffic.
    #[default]
    Native,
    /// candle, weights as stored in the file (SmolLM2: Q4_1). Degrades
    /// SmolLM2's answers badly.
    AsFile,
    /// candle, Q8_0 at load, except `ffn_down` kept f32 (its outlier-heavy
    /// input breaks 8-bit activation quantization). Half the memory of f32.
    Q8_0,
    /// candle, Q4_0 at load, `ffn_down` kept f32 like Q8_0.
    Q4_0,
    /// candle, dequantised to f32: dense matmuls through gemm. The reference
    /// the native path is tested against.
    F32,
}

/// Options of [`LocalLlama`].
#[derive(Debug, Clone)]
pub struct LocalLlamaOptions {
    pub weights: WeightFormat,
    /// Generations running at once; further requests wait. Default 1: one
    /// generation already keeps every core busy.
    pub max_concurrent: usize,
    /// Cap on the context window (prompt + answer); default: the model's,
    /// at most candle's 4096-position rotary table.
    pub context_tokens: Option<usize>,
}

impl Default for LocalLlamaOptions {
    fn default() -> Self {
        Self {
            weights: WeightFormat::default(),
            max_concurrent: 1,
            context_tokens: None,
        }
    }
}

/// A local GGUF chat model implementing [`Generator`].
#[derive(Clone)]
pub struct LocalLlama {
    shared: Arc<Shared>,
}

/// The loaded weights.
enum Engine {
    /// candle's model with an empty KV cache; cloned per generation.
    Candle(Box<ModelWeights>),
    /// ragfleet's forward; each generation opens a [`native::Session`].
    Native(Arc<NativeModel>),
    /// qwen2, qwen3, gemma3, phi3 (and llama in tests).
    Transformer(Arc<transformer::Model>),
}

/// One generation's model state: logits for the next token after feeding
/// tokens at a position.
enum Runner {
    Candle(Box<ModelWeights>),
    Native(native::Session),
    Transformer(transformer::Session),
}

impl Runner {
    /// Feed `tokens` (positions `pos..`); logits after the last one.
    fn step(&mut self, tokens: &[u32], pos: usize) -> Result<Vec<f32>> {
        let err = |e: candle_core::Error| RagError::Model(e.to_string());
        match self {
            Runner::Candle(m) => {
                let input = Tensor::new(tokens, &Device::Cpu)
                    .and_then(|t| t.unsqueeze(0))
                    .map_err(err)?;
                m.forward(&input, pos)
                    .and_then(|l| l.squeeze(0))
                    .and_then(|l| l.to_vec1::<f32>())
                    .map_err(err)
            }
            Runner::Native(s) => s.forward(tokens),
            Runner::Transformer(s) => s.forward(tokens).map_err(err),
        }
    }
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

struct Shared {
    engine: Engine,
    arch: Arch,
    tok: GgufTokenizer,
    template: minijinja::Environment<'static>,
    /// Token ids that end the answer (EOS, `<|im_end|>`, `<|endoftext|>`).
    stop_ids: Vec<u32>,
    context: usize,
    id: String,
    path: PathBuf,
    slots: Slots,
    /// Generation threads alive (waiting for a slot or running).
    active: AtomicUsize,
    /// Tokens sampled since load, all generations together.
    tokens: AtomicU64,
}

/// A counting semaphore for blocking threads.
struct Slots {
    free: Mutex<usize>,
    cv: Condvar,
}

struct SlotGuard<'a>(&'a Slots);

impl Slots {
    fn acquire(&self) -> SlotGuard<'_> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        while *free == 0 {
            free = self.cv.wait(free).unwrap_or_else(|p| p.into_inner());
        }
        *free -= 1;
        SlotGuard(self)
    }
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        let mut free = self.0.free.lock().unwrap_or_else(|p| p.into_inner());
        *free += 1;
        self.0.cv.notify_one();
    }
}

const FALLBACK_CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Gemma's turn format (its official template less the multimodal parts):
/// the system prompt opens the first user turn; the assistant is `model`.
const FALLBACK_GEMMA: &str = "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set first_user_prefix = messages[0]['content'] + '\n\n' %}{% set loop_messages = messages[1:] %}{% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}{% for message in loop_messages %}{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}";

/// Llama 3's header format.
const FALLBACK_LLAMA3: &str = "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

/// Phi-3's format.
const FALLBACK_PHI3: &str = "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}";

/// No chat markup known: plain text turns.
const FALLBACK_PLAIN: &str = "{% for message in messages %}{{ message['role'] | capitalize + ': ' + message['content'] + '\n\n' }}{% endfor %}{% if add_generation_prompt %}{{ 'Assistant: ' }}{% endif %}";

/// End-of-turn tokens of the known chat formats.
const END_OF_TURN: &[&str] = &[
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<end_of_turn>",
    "<|end|>",
];

/// The file's chat template, or its family's format when it has none, in
/// a minijinja environment with what the files' templates call.
fn chat_environment(
    tok: &GgufTokenizer,
) -> std::result::Result<minijinja::Environment<'static>, minijinja::Error> {
    let source = match &tok.chat_template {
        Some(t) => t.clone(),
        None => {
            let has = |t: &str| tok.special.contains_key(t);
            if has("<start_of_turn>") {
                FALLBACK_GEMMA
            } else if has("<|im_start|>") {
                FALLBACK_CHATML
            } else if has("<|start_header_id|>") {
                FALLBACK_LLAMA3
            } else if has("<|assistant|>") {
                FALLBACK_PHI3
            } else {
                FALLBACK_PLAIN
            }
            .to_string()
        }
    };
    let mut env = minijinja::Environment::new();
    // Python's str methods (`.strip()`, `.startswith()`, `.split()`), which
    // Qwen and Llama templates call.
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                msg,
            ))
        },
    );
    env.add_template_owned("chat", source)?;
    Ok(env)
}

/// Load a non-native model: the file's blocks (`native`, `as_file`), f32,
/// or re-quantised (`q8_0`, `q4_0`, with `ffn_down` kept f32 as for llama).
fn load_transformer(
    arch: Arch,
    ct: &Content,
    cursor: &mut std::io::Cursor<&Vec<u8>>,
    context: usize,
    weights: WeightFormat,
) -> candle_core::Result<Engine> {
    let requant = |target: GgmlDType| {
        move |name: &str, qt: QTensor| -> candle_core::Result<QTensor> {
            let dims = qt.shape().dims().to_vec();
            let target = if name.contains("ffn_down") {
                GgmlDType::F32
            } else {
                target
            };
            let row = dims.last().copied().unwrap_or(0);
            if dims.len() == 2 && row % target.block_size() == 0 && qt.dtype() != target {
                QTensor::quantize(&qt.dequantize(&Device::Cpu)?, target)
            } else {
                Ok(qt)
            }
        }
    };
    let model = match weights {
        WeightFormat::Native | WeightFormat::AsFile => {
            transformer::Model::load(arch, ct, cursor, context, &transformer::as_file)?
        }
        WeightFormat::F32 => {
            transformer::Model::load(arch, ct, cursor, context, &transformer::to_f32)?
        }
        WeightFormat::Q8_0 => {
            transformer::Model::load(arch, ct, cursor, context, &requant(GgmlDType::Q8_0))?
        }
        WeightFormat::Q4_0 => {
            transformer::Model::load(arch, ct, cursor, context, &requant(GgmlDType::Q4_0))?
        }
    };
    Ok(Engine::Transformer(Arc::new(model)))
}

#[derive(Serialize)]
struct TemplateMessage<'a> {
    role: &'static str,
    content: &'a str,
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
    }
}

impl LocalLlama {
    /// Load a GGUF file of a [`transformer::SUPPORTED`] architecture.
    pub fn load(path: impl AsRef<Path>, opts: LocalLlamaOptions) -> Result<Self> {
        Self::load_inner(path.as_ref(), opts, false)
    }

    /// Load a llama file through [`crate::transformer`] rather than the
    /// native path or candle's `quantized_llama`: for tests that check the
    /// transformer against those.
    #[doc(hidden)]
    pub fn load_via_transformer(path: impl AsRef<Path>, opts: LocalLlamaOptions) -> Result<Self> {
        Self::load_inner(path.as_ref(), opts, true)
    }

    fn load_inner(path: &Path, opts: LocalLlamaOptions, force_transformer: bool) -> Result<Self> {
        let bytes = read_file(path)?;
        let hash = file_sha256(&bytes);
        let mut cursor = std::io::Cursor::new(&bytes);
        let ct = Content::read(&mut cursor)
            .map_err(|e| model_err(path, format!("not a GGUF file: {e}")))?;
        let arch = ct
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        let Some(arch_kind) = Arch::from_name(&arch) else {
            return Err(model_err(
                path,
                format!(
                    "architecture {arch:?} is not supported; supported: {}",
                    transformer::SUPPORTED.join(", ")
                ),
            ));
        };
        let tok = GgufTokenizer::from_gguf(&ct, path)?;
        let model_ctx = ct
            .metadata
            .get(&format!("{arch}.context_length"))
            .and_then(|v| v.to_u32().ok())
            .map(|v| v as usize)
            .unwrap_or(2048);
        let context = opts
            .context_tokens
            .unwrap_or(model_ctx)
            .min(model_ctx)
            .min(MAX_SEQ_LEN);

        let device = Device::Cpu;
        let engine = match opts.weights {
            _ if arch_kind != Arch::Llama || force_transformer => {
                load_transformer(arch_kind, &ct, &mut cursor, context, opts.weights)
                    .map_err(|e| model_err(path, format!("loading {arch} weights: {e}")))?
            }
            WeightFormat::Native => {
                let m = NativeModel::load(&ct, &bytes, context)
                    .map_err(|e| model_err(path, format!("loading weights: {e}")))?;
                tracing::info!(
                    model = %path.display(),
                    weight_mb = m.weight_bytes() / 1_000_000,
                    simd = native::simd(),
                    "native llama forward: weights read per token"
                );
                Engine::Native(Arc::new(m))
            }
            WeightFormat::AsFile => ModelWeights::from_gguf(ct, &mut cursor, &device)
                .map(|m| Engine::Candle(Box::new(m)))
                .map_err(|e| model_err(path, format!("loading weights: {e}")))?,
            other => requantize(&ct, &mut cursor, other, &device)
                .and_then(|buf| {
                    let mut c = std::io::Cursor::new(buf);
                    let ct2 = Content::read(&mut c)?;
                    ModelWeights::from_gguf(ct2, &mut c, &device)
                })
                .map(|m| Engine::Candle(Box::new(m)))
                .map_err(|e| model_err(path, format!("loading weights: {e}")))?,
        };

        let template = chat_environment(&tok)
            .map_err(|e| model_err(path, format!("tokenizer.chat_template: {e}")))?;

        // End of answer: the file's EOS and EOT ids, and the end-of-turn
        // control tokens of the known chat formats.
        let mut stop_ids: Vec<u32> = tok.eos_id.into_iter().chain(tok.eot_id).collect();
        for name in END_OF_TURN {
            if let Some(id) = tok.special.get(*name) {
                if !stop_ids.contains(id) {
                    stop_ids.push(*id);
                }
            }
        }
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "gguf".to_string());
        Ok(Self {
            shared: Arc::new(Shared {
                engine,
                arch: arch_kind,
                tok,
                template,
                stop_ids,
                context,
                id: format!("local:{stem}@{}", &hash[..12]),
                path: path.to_path_buf(),
                slots: Slots {
                    free: Mutex::new(opts.max_concurrent.max(1)),
                    cv: Condvar::new(),
                },
                active: AtomicUsize::new(0),
                tokens: AtomicU64::new(0),
            }),
        })
    }

    /// The prompt text the model sees for `messages` (the file's chat
    /// template, with the assistant turn opened).
    pub fn render_chat(&self, messages: &[ChatMessage]) -> Result<String> {
        let msgs: Vec<TemplateMessage> = messages
            .iter()
            .map(|m| TemplateMessage {
                role: role_name(m.role),
                content: &m.content,
            })
            .collect();
        let tmpl = self
            .shared
            .template
            .get_template("chat")
            .map_err(|e| RagError::Model(e.to_string()))?;
        let tok = &self.shared.tok;
        let name = |id: Option<u32>| id.and_then(|i| tok.token_text(i)).unwrap_or_default();
        tmpl.render(minijinja::context! {
            messages => msgs,
            add_generation_prompt => true,
            bos_token => name(tok.bos_id),
            eos_token => name(tok.eos_id),
        })
        .map_err(|e| {
            RagError::Model(format!(
                "{}: rendering tokenizer.chat_template: {e}",
                self.shared.path.display()
            ))
        })
    }

    /// Token ids of `text` (control-token markup such as `<|im_start|>`
    /// becomes its id; no BOS added).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.shared.tok.encode(text)
    }

    /// The prompt ids for `messages`: the rendered chat template, with the
    /// BOS id in front when the file asks for one (`add_bos_token`) and the
    /// template did not write it.
    pub fn prompt_ids(&self, messages: &[ChatMessage]) -> Result<Vec<u32>> {
        let mut ids = self.encode(&self.render_chat(messages)?)?;
        let tok = &self.shared.tok;
        if let (true, Some(bos)) = (tok.add_bos, tok.bos_id) {
            if ids.first() != Some(&bos) {
                ids.insert(0, bos);
            }
        }
        Ok(ids)
    }

    /// Text of token ids (bytes joined, invalid UTF-8 replaced).
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids
            .iter()
            .flat_map(|&i| {
                self.shared
                    .tok
                    .token_bytes
                    .get(i as usize)
                    .cloned()
                    .unwrap_or_default()
            })
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The file's architecture.
    pub fn architecture(&self) -> &'static str {
        self.shared.arch.name()
    }

    /// Token ids of a generation with `params`, as [`Generator::generate`]
    /// would produce them (for tests and measurements).
    pub fn generate_ids(&self, messages: &[ChatMessage], params: &GenParams) -> Result<Vec<u32>> {
        let ids = self.prompt_ids(messages)?;
        let mut out = Vec::new();
        self.shared.decode_loop(&ids, params, |tok, _| {
            out.push(tok);
            true
        })?;
        Ok(out)
    }

    /// Generations in progress (running or waiting for a slot).
    pub fn active_generations(&self) -> usize {
        self.shared.active.load(Ordering::SeqCst)
    }

    /// Tokens sampled since load, over all generations.
    pub fn tokens_generated(&self) -> u64 {
        self.shared.tokens.load(Ordering::SeqCst)
    }

    /// Ids that end generation.
    pub fn stop_token_ids(&self) -> &[u32] {
        &self.shared.stop_ids
    }

    /// Next-token logits along a decode, for tests and diagnostics: feeds
    /// `prompt` in one pass, then `steps - 1` single tokens the way
    /// generation does; the token fed after step `i` is `forced[i]` when
    /// given (teacher forcing), else the greedy choice. Returns the logits of
    /// every step (`steps` vectors of the vocabulary's size).
    pub fn logits_trace(
        &self,
        prompt: &[u32],
        steps: usize,
        forced: Option<&[u32]>,
    ) -> Result<Vec<Vec<f32>>> {
        let s = &self.shared;
        if prompt.is_empty() || prompt.len() + steps > s.context {
            return Err(RagError::InvalidInput(format!(
                "{} prompt tokens + {steps} steps do not fit the context of {}",
                prompt.len(),
                s.context
            )));
        }
        let mut runner = s.runner(prompt.len() + steps)?;
        let mut out = Vec::with_capacity(steps);
        let mut logits = runner.step(prompt, 0)?;
        for i in 0..steps {
            let next = match forced.and_then(|f| f.get(i)) {
                Some(&t) => t,
                None => argmax(&logits),
            };
            out.push(std::mem::take(&mut logits));
            if i + 1 < steps {
                logits = runner.step(&[next], prompt.len() + i)?;
            }
        }
        Ok(out)
    }
}

/// Re-quantise every 2-D weight of a GGUF file to `format`, writing a new
/// GGUF image in memory (candle's llama loader reads from a GGUF reader).
fn requantize(
    ct: &Content,
    reader: &mut std::io::Cursor<&Vec<u8>>,
    format: WeightFormat,
    device: &Device,
) -> candle_core::Result<Vec<u8>> {
    let target = match format {
        WeightFormat::Q8_0 => GgmlDType::Q8_0,
        WeightFormat::Q4_0 => GgmlDType::Q4_0,
        WeightFormat::F32 | WeightFormat::AsFile | WeightFormat::Native => GgmlDType::F32,
    };
    let mut names: Vec<&String> = ct.tensor_infos.keys().collect();
    names.sort();
    let mut tensors: Vec<(String, QTensor)> = Vec::with_capacity(names.len());
    for name in names {
        let qt = ct.tensor(reader, name, device)?;
        let dims = qt.shape().dims().to_vec();
        let row = dims.last().copied().unwrap_or(0);
        // ffn_down's input (silu(gate) * up) has large outliers; candle's
        // quantized matmuls quantize their input to 8 bits per block of 32,
        // which wrecks SmolLM2's answers. That one weight stays dense f32.
        let target = if name.contains("ffn_down") {
            GgmlDType::F32
        } else {
            target
        };
        let convertible = dims.len() == 2 && row % target.block_size() == 0;
        let qt = if convertible && qt.dtype() != target {
            QTensor::quantize(&qt.dequantize(device)?, target)?
        } else {
            qt
        };
        tensors.push((name.clone(), qt));
    }
    let metadata: Vec<(&str, &gguf_file::Value)> =
        ct.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut out = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut out, &metadata, &tensor_refs)?;
    Ok(out.into_inner())
}

/// What a generation thread sends.
type Delta = Result<String>;

impl Shared {
    /// The whole generation; runs on its own thread. Returns when done, on
    /// error (sent to the stream), or as soon as the receiver is gone.
    fn run(&self, llama: &LocalLlama, req: GenerateRequest, tx: mpsc::Sender<Delta>) {
        let _slot = self.slots.acquire();
        if tx.is_closed() {
            return;
        }
        if let Err(e) = self.run_inner(llama, &req, &tx) {
            let _ = tx.blocking_send(Err(e));
        }
    }

    /// Fresh per-generation state for at most `positions` tokens.
    fn runner(&self, positions: usize) -> Result<Runner> {
        Ok(match &self.engine {
            Engine::Candle(m) => Runner::Candle(Box::new(ModelWeights::clone(m))),
            Engine::Native(m) => Runner::Native(
                native::Session::new(Arc::clone(m), positions)
                    .map_err(|e| RagError::Model(format!("{}: {e}", self.id)))?,
            ),
            Engine::Transformer(m) => Runner::Transformer(transformer::Session::new(Arc::clone(m))),
        })
    }

    /// The decoding loop: samples up to `max_tokens` tokens after `ids`
    /// under the decoding controls, calling `emit(token, text_bytes)` for
    /// each (not for an end-of-turn token); `emit` returns false to stop.
    /// Ends at an end-of-turn token, at the cap, or when the answer loops.
    fn decode_loop(
        &self,
        ids: &[u32],
        params: &GenParams,
        mut emit: impl FnMut(u32, &[u8]) -> bool,
    ) -> Result<()> {
        if ids.is_empty() {
            return Err(RagError::InvalidInput("empty prompt".into()));
        }
        if ids.len() >= self.context {
            return Err(RagError::InvalidInput(format!(
                "prompt has {} tokens; {} allows at most {}",
                ids.len(),
                self.id,
                self.context - 1
            )));
        }
        let max_new = params.max_tokens.min(self.context - ids.len());
        if max_new == 0 {
            return Ok(());
        }
        let sampling = if params.temperature <= 0.0 {
            Sampling::ArgMax
        } else {
            match params.top_p {
                Some(p) if p > 0.0 && p < 1.0 => Sampling::TopP {
                    p,
                    temperature: params.temperature,
                },
                _ => Sampling::All {
                    temperature: params.temperature,
                },
            }
        };
        let mut sampler = LogitsProcessor::from_sampling(params.seed, sampling);
        let mut penalties = Penalties::new(params.repetition_penalty, params.no_repeat_ngram);
        let mut guard = LoopGuard::default();
        let mut runner = self.runner(ids.len() + max_new)?;
        let err = |e: candle_core::Error| RagError::Model(format!("{}: {e}", self.id));
        let mut logits = runner.step(ids, 0)?;
        for (pos, produced) in (ids.len()..).zip(1..=max_new) {
            penalties.apply(&mut logits, &self.stop_ids);
            let n = logits.len();
            let t = Tensor::from_vec(std::mem::take(&mut logits), n, &Device::Cpu).map_err(err)?;
            let next = sampler.sample(&t).map_err(err)?;
            self.tokens.fetch_add(1, Ordering::SeqCst);
            if self.stop_ids.contains(&next) {
                break;
            }
            let bytes = self
                .tok
                .token_bytes
                .get(next as usize)
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            if !emit(next, bytes) {
                break;
            }
            penalties.push(next);
            if guard.push(&String::from_utf8_lossy(bytes)) {
                tracing::debug!(model = %self.id, tokens = produced, "answer repeats itself: ended");
                break;
            }
            if produced == max_new {
                break;
            }
            logits = runner.step(&[next], pos)?;
        }
        Ok(())
    }

    fn run_inner(
        &self,
        llama: &LocalLlama,
        req: &GenerateRequest,
        tx: &mpsc::Sender<Delta>,
    ) -> Result<()> {
        let ids = llama.prompt_ids(&req.messages)?;
        let mut utf8 = Utf8Stream::default();
        let mut stops = StopMatcher::new(&req.params.stop);
        let mut done = false;
        self.decode_loop(&ids, &req.params, |_, bytes| {
            let text = stops.push(&utf8.push(bytes));
            if !text.is_empty() && tx.blocking_send(Ok(text)).is_err() {
                done = true; // receiver dropped: cancelled
                return false;
            }
            if stops.stopped() || tx.is_closed() {
                done = true; // stop string found (nothing to flush), or cancelled
                return false;
            }
            true
        })?;
        if done {
            return Ok(());
        }
        let rest = stops.push(&utf8.finish()) + &stops.finish();
        if !rest.is_empty() {
            let _ = tx.blocking_send(Ok(rest));
        }
        Ok(())
    }
}

impl Generator for LocalLlama {
    fn id(&self) -> String {
        self.shared.id.clone()
    }

    fn context_tokens(&self) -> usize {
        self.shared.context
    }

    fn count_tokens(&self, text: &str) -> usize {
        self.shared
            .tok
            .encode(text)
            .map(|ids| ids.len())
            .unwrap_or_else(|_| text.len() / 4 + 1)
    }

    fn generate(&self, req: GenerateRequest) -> BoxStream<'static, Result<String>> {
        let (tx, rx) = mpsc::channel::<Delta>(32);
        let me = self.clone();
        self.shared.active.fetch_add(1, Ordering::SeqCst);
        let spawned = std::thread::Builder::new()
            .name("llama-generate".into())
            .spawn(move || {
                me.shared.run(&me, req, tx);
                me.shared.active.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            self.shared.active.fetch_sub(1, Ordering::SeqCst);
            return futures::stream::once(async move {
                Err(RagError::Model(format!("starting generation thread: {e}")))
            })
            .boxed();
        }
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|d| (d, rx)) })
            .boxed()
    }
}
