//! The tokenizer of a GGUF file, built from its metadata
//! (`tokenizer.ggml.*`), so a GGUF model needs no separate tokenizer.json.
//!
//! Supported `tokenizer.ggml.model`s:
//! - `gpt2`: byte-level BPE (SmolLM2, Llama 3, Qwen 2/3) with the
//!   pre-tokenizers llama.cpp calls `smollm` (GPT-2 regex, every digit its
//!   own piece), `gpt2`/`default` (GPT-2 regex), `llama-bpe`/`llama3`
//!   (Llama 3's regex, digits in runs of up to 3) and `qwen2` (Llama 3's
//!   regex, single digits); built on the `tokenizers` crate.
//! - `llama`: SentencePiece BPE with byte fallback (Gemma 3, Phi-3): the
//!   pieces are merged highest score first, `▁` stands for a space, and a
//!   character no piece covers becomes its `<0xNN>` byte tokens ([`Spm`]).
//!
//! Control tokens (`token_type == 3`, e.g. `<|im_start|>`) and user-defined
//! ones (`token_type == 4`, e.g. Gemma's runs of newlines) are matched as a
//! whole in input text and never split.
use std::collections::{BinaryHeap, HashMap};
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use ragfleet_rag::Result;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::util::model_err;

/// GGUF `token_type` of control tokens.
const TOKEN_TYPE_CONTROL: i32 = 3;
/// GGUF `token_type` of user-defined tokens (matched whole in text).
const TOKEN_TYPE_USER_DEFINED: i32 = 4;
/// GGUF `token_type` of byte-fallback tokens (`<0x0A>`).
const TOKEN_TYPE_BYTE: i32 = 6;

/// The two tokenizer families.
enum Kind {
    Bpe(Box<Tokenizer>),
    Spm(Box<Spm>),
}

/// The tokenizer plus what generation needs beside it.
pub struct GgufTokenizer {
    kind: Kind,
    /// Token strings by id.
    tokens: Vec<String>,
    /// Raw bytes each token id stands for (empty for control tokens), so a
    /// stream of ids turns into bytes without re-decoding the whole output.
    pub token_bytes: Vec<Vec<u8>>,
    /// Control token ids by text (`<|im_end|>` → 2).
    pub special: HashMap<String, u32>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    /// `tokenizer.ggml.eot_token_id` (end of turn), when the file names one.
    pub eot_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`: the model expects BOS first.
    pub add_bos: bool,
    pub chat_template: Option<String>,
}

fn md<'a>(ct: &'a Content, key: &str, path: &Path) -> Result<&'a Value> {
    ct.metadata
        .get(key)
        .ok_or_else(|| model_err(path, format!("GGUF metadata has no {key}")))
}

fn md_strings(ct: &Content, key: &str, path: &Path) -> Result<Vec<String>> {
    md(ct, key, path)?
        .to_vec()
        .map_err(|e| model_err(path, format!("{key}: {e}")))?
        .iter()
        .map(|v| {
            v.to_string()
                .cloned()
                .map_err(|e| model_err(path, format!("{key}: {e}")))
        })
        .collect()
}

fn md_u32(ct: &Content, key: &str) -> Option<u32> {
    ct.metadata.get(key).and_then(|v| v.to_u32().ok())
}

/// GPT-2's printable stand-in characters for raw bytes, inverted.
fn unicode_to_byte() -> HashMap<char, u8> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    bs.into_iter()
        .zip(cs)
        .filter_map(|(b, c)| char::from_u32(c).map(|c| (c, b as u8)))
        .collect()
}

impl GgufTokenizer {
    pub fn from_gguf(ct: &Content, path: &Path) -> Result<Self> {
        let model = md(ct, "tokenizer.ggml.model", path)?
            .to_string()
            .map_err(|e| model_err(path, e))?
            .clone();
        let tokens = md_strings(ct, "tokenizer.ggml.tokens", path)?;
        let types: Vec<i32> = match ct.metadata.get("tokenizer.ggml.token_type") {
            Some(v) => v
                .to_vec()
                .map_err(|e| model_err(path, format!("tokenizer.ggml.token_type: {e}")))?
                .iter()
                .map(|t| t.to_i32().unwrap_or(1))
                .collect(),
            None => vec![1; tokens.len()],
        };
        if types.len() != tokens.len() {
            return Err(model_err(
                path,
                "tokenizer.ggml.token_type and tokenizer.ggml.tokens differ in length",
            ));
        }
        let mut special = HashMap::new();
        for (i, (t, ty)) in tokens.iter().zip(&types).enumerate() {
            if *ty == TOKEN_TYPE_CONTROL {
                special.insert(t.clone(), i as u32);
            }
        }
        let (kind, token_bytes) = match model.as_str() {
            "gpt2" => bpe(ct, path, &tokens, &types)?,
            "llama" => {
                let spm = Spm::new(ct, path, &tokens, &types)?;
                let bytes = spm.token_bytes(&tokens, &types);
                (Kind::Spm(Box::new(spm)), bytes)
            }
            other => {
                return Err(model_err(
                    path,
                    format!(
                        "tokenizer.ggml.model {other:?} is not supported (\"gpt2\" byte-level BPE, \"llama\" SentencePiece)"
                    ),
                ))
            }
        };
        let chat_template = ct
            .metadata
            .get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok())
            .cloned();
        let add_bos = ct
            .metadata
            .get("tokenizer.ggml.add_bos_token")
            .and_then(|v| v.to_bool().ok())
            .unwrap_or(false);
        Ok(Self {
            kind,
            tokens,
            token_bytes,
            special,
            bos_id: md_u32(ct, "tokenizer.ggml.bos_token_id"),
            eos_id: md_u32(ct, "tokenizer.ggml.eos_token_id"),
            eot_id: md_u32(ct, "tokenizer.ggml.eot_token_id"),
            add_bos,
            chat_template,
        })
    }

    /// Token ids of `text`; control-token markup (`<|im_start|>`) becomes
    /// its single id. No BOS is added (SmolLM2's `add_bos_token` is false;
    /// chat templates write their own markup).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match &self.kind {
            Kind::Bpe(t) => t
                .encode_fast(text, false)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| ragfleet_rag::RagError::Model(format!("tokenizing: {e}"))),
            Kind::Spm(s) => Ok(s.encode(text)),
        }
    }

    /// Text of `id` as a token string (for stop-token lookup by name).
    pub fn token_text(&self, id: u32) -> Option<String> {
        self.tokens.get(id as usize).cloned()
    }

    /// Id of a token string, if the vocabulary has it.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        match &self.kind {
            Kind::Bpe(t) => t.token_to_id(text),
            Kind::Spm(s) => s.vocab.get(text).copied(),
        }
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }
}

/// Llama 3's pre-tokenizer regex (llama.cpp `llama-bpe`).
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen 2's: Llama 3's with single digits.
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The byte-level BPE tokenizer (`tokenizer.ggml.model == "gpt2"`).
fn bpe(
    ct: &Content,
    path: &Path,
    tokens: &[String],
    types: &[i32],
) -> Result<(Kind, Vec<Vec<u8>>)> {
    let pre = ct
        .metadata
        .get("tokenizer.ggml.pre")
        .and_then(|v| v.to_string().ok())
        .map(String::as_str)
        .unwrap_or("default");
    let mut pres: Vec<PreTokenizerWrapper> = Vec::new();
    let regex = match pre {
        "smollm" => {
            pres.push(Digits::new(true).into());
            None
        }
        "gpt2" | "default" => None,
        "llama-bpe" | "llama3" | "llama-v3" => Some(LLAMA3_REGEX),
        "qwen2" => Some(QWEN2_REGEX),
        other => {
            return Err(model_err(
                path,
                format!(
                    "tokenizer.ggml.pre {other:?} is not supported (smollm, gpt2, default, llama-bpe, qwen2)"
                ),
            ))
        }
    };
    match regex {
        Some(r) => {
            let split = Split::new(
                SplitPattern::Regex(r.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| model_err(path, format!("pre-tokenizer regex: {e}")))?;
            pres.push(split.into());
            pres.push(ByteLevel::new(false, true, false).into());
        }
        None => pres.push(ByteLevel::new(false, true, true).into()),
    }
    let merges = md_strings(ct, "tokenizer.ggml.merges", path)?;
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let merges: Vec<(String, String)> = merges
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| model_err(path, format!("malformed merge {m:?}")))
        })
        .collect::<Result<_>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(regex == Some(LLAMA3_REGEX))
        .build()
        .map_err(|e| model_err(path, format!("building BPE: {e}")))?;
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(Sequence::new(pres)));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    let added: Vec<AddedToken> = tokens
        .iter()
        .zip(types)
        .filter(|(_, ty)| **ty == TOKEN_TYPE_CONTROL || **ty == TOKEN_TYPE_USER_DEFINED)
        .map(|(t, ty)| AddedToken::from(t.clone(), *ty == TOKEN_TYPE_CONTROL))
        .collect();
    tokenizer.add_special_tokens(&added);

    let map = unicode_to_byte();
    let token_bytes = tokens
        .iter()
        .zip(types)
        .map(|(t, ty)| {
            if *ty == TOKEN_TYPE_CONTROL {
                Vec::new()
            } else if *ty == TOKEN_TYPE_USER_DEFINED {
                t.as_bytes().to_vec()
            } else {
                // Unknown characters cannot occur in a byte-level vocab;
                // fall back to their UTF-8 if a file has some anyway.
                let mut out = Vec::with_capacity(t.len());
                for c in t.chars() {
                    match map.get(&c) {
                        Some(b) => out.push(*b),
                        None => out.extend_from_slice(c.to_string().as_bytes()),
                    }
                }
                out
            }
        })
        .collect();
    Ok((Kind::Bpe(Box::new(tokenizer)), token_bytes))
}

/// SentencePiece BPE as llama.cpp runs it for `tokenizer.ggml.model ==
/// "llama"`: split the text at whole-token matches of control and
/// user-defined tokens (longest first), replace spaces by `▁` (and prefix
/// one when `tokenizer.ggml.add_space_prefix` says so), then repeatedly
/// merge the adjacent pair whose merged piece has the highest score (the
/// leftmost on ties); a piece left that is not in the vocabulary becomes
/// its bytes' `<0xNN>` tokens.
pub struct Spm {
    vocab: HashMap<String, u32>,
    scores: Vec<f32>,
    /// Control and user-defined token texts, longest first.
    whole: Vec<(String, u32)>,
    byte_ids: [Option<u32>; 256],
    unk: Option<u32>,
    add_space_prefix: bool,
}

/// A candidate merge of the symbols starting at `left` and `right`.
#[derive(PartialEq)]
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    /// Byte length of the merged text, to tell a stale candidate.
    len: usize,
}

impl Eq for Bigram {}

impl Ord for Bigram {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        // Highest score first; on equal scores the leftmost.
        self.score
            .total_cmp(&o.score)
            .then_with(|| o.left.cmp(&self.left))
    }
}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

impl Spm {
    fn new(ct: &Content, path: &Path, tokens: &[String], types: &[i32]) -> Result<Self> {
        let scores: Vec<f32> = match ct.metadata.get("tokenizer.ggml.scores") {
            Some(v) => v
                .to_vec()
                .map_err(|e| model_err(path, format!("tokenizer.ggml.scores: {e}")))?
                .iter()
                .map(|s| s.to_f32().unwrap_or(0.0))
                .collect(),
            None => {
                return Err(model_err(
                    path,
                    "GGUF metadata has no tokenizer.ggml.scores",
                ))
            }
        };
        if scores.len() != tokens.len() {
            return Err(model_err(
                path,
                "tokenizer.ggml.scores and tokenizer.ggml.tokens differ in length",
            ));
        }
        let mut vocab = HashMap::with_capacity(tokens.len());
        let mut whole = Vec::new();
        let mut byte_ids = [None; 256];
        for (i, (t, ty)) in tokens.iter().zip(types).enumerate() {
            let id = i as u32;
            vocab.entry(t.clone()).or_insert(id);
            if (*ty == TOKEN_TYPE_CONTROL || *ty == TOKEN_TYPE_USER_DEFINED) && !t.is_empty() {
                whole.push((t.clone(), id));
            }
            if *ty == TOKEN_TYPE_BYTE {
                if let Some(b) = t
                    .strip_prefix("<0x")
                    .and_then(|h| h.strip_suffix('>'))
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    byte_ids[b as usize] = Some(id);
                }
            }
        }
        whole.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        let add_space_prefix = ct
            .metadata
            .get("tokenizer.ggml.add_space_prefix")
            .and_then(|v| v.to_bool().ok())
            .unwrap_or(true);
        Ok(Self {
            vocab,
            scores,
            whole,
            byte_ids,
            unk: md_u32(ct, "tokenizer.ggml.unknown_token_id"),
            add_space_prefix,
        })
    }

    /// Bytes each token stands for: `▁` is a space, `<0xNN>` its byte,
    /// control tokens nothing.
    fn token_bytes(&self, tokens: &[String], types: &[i32]) -> Vec<Vec<u8>> {
        tokens
            .iter()
            .zip(types)
            .enumerate()
            .map(|(i, (t, ty))| match *ty {
                TOKEN_TYPE_CONTROL => Vec::new(),
                TOKEN_TYPE_BYTE => self
                    .byte_ids
                    .iter()
                    .position(|b| *b == Some(i as u32))
                    .map(|b| vec![b as u8])
                    .unwrap_or_default(),
                _ => t.replace('\u{2581}', " ").into_bytes(),
            })
            .collect()
    }

    fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        // Split at whole-token matches, longest token first (llama.cpp's
        // partition): fragments are either a token id or raw text.
        enum Frag<'a> {
            Id(u32),
            Text(&'a str),
        }
        let mut frags = vec![Frag::Text(text)];
        for (tok, id) in &self.whole {
            if !text.contains(tok.as_str()) {
                continue;
            }
            let mut next = Vec::with_capacity(frags.len());
            for f in frags {
                match f {
                    Frag::Text(t) if t.contains(tok.as_str()) => {
                        let mut rest = t;
                        while let Some(at) = rest.find(tok.as_str()) {
                            if at > 0 {
                                next.push(Frag::Text(&rest[..at]));
                            }
                            next.push(Frag::Id(*id));
                            rest = &rest[at + tok.len()..];
                        }
                        if !rest.is_empty() {
                            next.push(Frag::Text(rest));
                        }
                    }
                    other => next.push(other),
                }
            }
            frags = next;
        }
        for (i, f) in frags.into_iter().enumerate() {
            match f {
                Frag::Id(id) => out.push(id),
                Frag::Text(t) => {
                    let mut s = String::with_capacity(t.len() + 3);
                    if self.add_space_prefix && i == 0 {
                        s.push('\u{2581}');
                    }
                    for c in t.chars() {
                        s.push(if c == ' ' { '\u{2581}' } else { c });
                    }
                    self.encode_piece(&s, &mut out);
                }
            }
        }
        out
    }

    /// Score-ordered merging of one fragment's characters.
    fn encode_piece(&self, text: &str, out: &mut Vec<u32>) {
        // Symbols as byte ranges into `text`, linked left/right.
        let mut start: Vec<usize> = Vec::new();
        let mut len: Vec<usize> = Vec::new();
        for (i, c) in text.char_indices() {
            start.push(i);
            len.push(c.len_utf8());
        }
        let n = start.len();
        if n == 0 {
            return;
        }
        let mut prev: Vec<Option<usize>> = (0..n).map(|i| i.checked_sub(1)).collect();
        let mut next: Vec<Option<usize>> = (0..n).map(|i| (i + 1 < n).then_some(i + 1)).collect();
        let mut heap = BinaryHeap::new();
        let push =
            |heap: &mut BinaryHeap<Bigram>, l: usize, r: usize, start: &[usize], len: &[usize]| {
                let s = &text[start[l]..start[r] + len[r]];
                if let Some(&id) = self.vocab.get(s) {
                    heap.push(Bigram {
                        score: self.scores[id as usize],
                        left: l,
                        right: r,
                        len: s.len(),
                    });
                }
            };
        for i in 1..n {
            push(&mut heap, i - 1, i, &start, &len);
        }
        while let Some(b) = heap.pop() {
            let (l, r) = (b.left, b.right);
            // Stale: one side was merged away or grew since.
            if len[l] == 0 || len[r] == 0 || next[l] != Some(r) || len[l] + len[r] != b.len {
                continue;
            }
            len[l] += len[r];
            len[r] = 0;
            next[l] = next[r];
            if let Some(nr) = next[r] {
                prev[nr] = Some(l);
            }
            if let Some(p) = prev[l] {
                push(&mut heap, p, l, &start, &len);
            }
            if let Some(nx) = next[l] {
                push(&mut heap, l, nx, &start, &len);
            }
        }
        let mut i = Some(0);
        while let Some(s) = i {
            let piece = &text[start[s]..start[s] + len[s]];
            match self.vocab.get(piece) {
                Some(&id) => out.push(id),
                None => {
                    for b in piece.bytes() {
                        if let Some(id) = self.byte_ids[b as usize].or(self.unk) {
                            out.push(id);
                        }
                    }
                }
            }
            i = next[s];
        }
    }
}
