//! Ask the local model one question and stream the answer to stdout.
//!
//! Usage: llama_chat GGUF "QUESTION" [WEIGHTS] [MAX_TOKENS]
//! WEIGHTS: as_file | q8_0 | q4_0 | f32 (default q8_0). Greedy decoding.
use std::io::Write;

use futures::StreamExt;
use ragfleet_models::{LocalLlama, LocalLlamaOptions, WeightFormat};
use ragfleet_rag::generate::{ChatMessage, GenParams, GenerateRequest, Generator, Role};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        return Err("usage: llama_chat GGUF \"QUESTION\" [WEIGHTS] [MAX_TOKENS]".into());
    }
    let weights = match args.get(3).map(String::as_str).unwrap_or("q8_0") {
        "as_file" => WeightFormat::AsFile,
        "q8_0" => WeightFormat::Q8_0,
        "q4_0" => WeightFormat::Q4_0,
        "f32" => WeightFormat::F32,
        other => return Err(format!("unknown weights {other}").into()),
    };
    let max_tokens = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(128);
    let l = LocalLlama::load(
        &args[1],
        LocalLlamaOptions {
            weights,
            ..Default::default()
        },
    )?;
    let req = GenerateRequest {
        messages: vec![ChatMessage {
            role: Role::User,
            content: args[2].clone(),
        }],
        question: args[2].clone(),
        sources: Vec::new(),
        params: GenParams {
            max_tokens,
            ..GenParams::default()
        },
    };
    let mut s = l.generate(req);
    let mut out = std::io::stdout();
    while let Some(d) = s.next().await {
        write!(out, "{}", d?)?;
        out.flush()?;
    }
    writeln!(out)?;
    Ok(())
}
