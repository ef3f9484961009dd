//! A byte-level BPE tokenizer built from a GGUF file's metadata
//! (`tokenizer.ggml.*`), so a GGUF model needs no separate tokenizer.json.
//!
//! Supported: `tokenizer.ggml.model == "gpt2"` (byte-level BPE) with the
//! pre-tokenizers llama.cpp calls `smollm` (GPT-2 regex, no prefix space,
//! every digit its own piece) and `gpt2`/`default` (GPT-2 regex only).
//! Control tokens (`token_type == 3`, e.g. `<|im_start|>`) are special: they
//! are matched as a whole in input text and never split.
use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use ragfleet_rag::Result;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, Tokenizer};

use crate::util::model_err;

/// GGUF `token_type` of control tokens.
const TOKEN_TYPE_CONTROL: i32 = 3;

/// The tokenizer plus what generation needs beside it.
pub struct GgufTokenizer {
    pub tokenizer: Tokenizer,
    /// Raw bytes each token id stands for (empty for control tokens), so a
    /// stream of ids turns into bytes without re-decoding the whole output.
    pub token_bytes: Vec<Vec<u8>>,
    /// Control token ids by text (`<|im_end|>` → 2).
    pub special: HashMap<String, u32>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
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
            .map_err(|e| model_err(path, e))?;
        if model != "gpt2" {
            return Err(model_err(
                path,
                format!("tokenizer.ggml.model {model:?} is not supported (only byte-level BPE \"gpt2\")"),
            ));
        }
        let pre = ct
            .metadata
            .get("tokenizer.ggml.pre")
            .and_then(|v| v.to_string().ok())
            .map(String::as_str)
            .unwrap_or("default");
        let split_digits = match pre {
            "smollm" => true,
            "gpt2" | "default" => false,
            other => {
                return Err(model_err(
                    path,
                    format!("tokenizer.ggml.pre {other:?} is not supported (smollm, gpt2)"),
                ))
            }
        };
        let tokens = md_strings(ct, "tokenizer.ggml.tokens", path)?;
        let merges = md_strings(ct, "tokenizer.ggml.merges", path)?;
        let types: Vec<i32> = match ct.metadata.get("tokenizer.ggml.token_type") {
            Some(v) => v
                .to_vec()
                .map_err(|e| model_err(path, format!("tokenizer.ggml.token_type: {e}")))?
                .iter()
                .map(|t| t.to_i32().unwrap_or(1))
                .collect(),
            None => vec![1; tokens.len()],
        };

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
            .build()
            .map_err(|e| model_err(path, format!("building BPE: {e}")))?;
        let mut tokenizer = Tokenizer::new(bpe);
        let byte_level = ByteLevel::new(false, true, true);
        let mut pres: Vec<PreTokenizerWrapper> = Vec::new();
        if split_digits {
            pres.push(Digits::new(true).into());
        }
        pres.push(byte_level.into());
        tokenizer.with_pre_tokenizer(Some(Sequence::new(pres)));
        tokenizer.with_decoder(Some(ByteLevelDecoder::default()));

        let mut special = HashMap::new();
        let mut added = Vec::new();
        for (i, (t, ty)) in tokens.iter().zip(&types).enumerate() {
            if *ty == TOKEN_TYPE_CONTROL {
                special.insert(t.clone(), i as u32);
                added.push(AddedToken::from(t.clone(), true));
            }
        }
        tokenizer.add_special_tokens(&added);

        let map = unicode_to_byte();
        let token_bytes = tokens
            .iter()
            .zip(&types)
            .map(|(t, ty)| {
                if *ty == TOKEN_TYPE_CONTROL {
                    Vec::new()
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

        let chat_template = ct
            .metadata
            .get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok())
            .cloned();
        Ok(Self {
            tokenizer,
            token_bytes,
            special,
            bos_id: md_u32(ct, "tokenizer.ggml.bos_token_id"),
            eos_id: md_u32(ct, "tokenizer.ggml.eos_token_id"),
            chat_template,
        })
    }

    /// Token ids of `text`; control-token markup (`<|im_start|>`) becomes
    /// its single id. No BOS is added (SmolLM2's `add_bos_token` is false;
    /// chat templates write their own markup).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer
            .encode_fast(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| ragfleet_rag::RagError::Model(format!("tokenizing: {e}")))
    }

    /// Text of `id` as a token string (for stop-token lookup by name).
    pub fn token_text(&self, id: u32) -> Option<String> {
        self.tokenizer.id_to_token(id)
    }
}
