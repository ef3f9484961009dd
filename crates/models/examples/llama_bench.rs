//! Local generation speed of LocalLlama (driven by bench/models/llama_bench.sh).
//!
//! Usage: llama_bench GGUF [FORMATS] [TOKENS] [RUNS]
//! FORMATS: comma-separated weight formats to compare side by side
//! (as_file,q8_0,q4_0,f32; default all). For each: load time, time to first
//! token (prompt processing + first sample) and decode tokens/s over a greedy
//! answer of TOKENS tokens (stop tokens disabled by a long answer request),
//! median of RUNS runs.
use std::time::Instant;

use futures::StreamExt;
use ragfleet_models::{LocalLlama, LocalLlamaOptions, WeightFormat};
use ragfleet_rag::generate::{ChatMessage, GenParams, GenerateRequest, Generator, Role};

fn parse(f: &str) -> Result<WeightFormat, String> {
    Ok(match f {
        "as_file" => WeightFormat::AsFile,
        "q8_0" => WeightFormat::Q8_0,
        "q4_0" => WeightFormat::Q4_0,
        "f32" => WeightFormat::F32,
        other => return Err(format!("unknown format {other}")),
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let path = args
        .get(1)
        .ok_or("usage: llama_bench GGUF [FORMATS] [TOKENS] [RUNS]")?;
    let formats = args
        .get(2)
        .map(String::as_str)
        .unwrap_or("as_file,q8_0,q4_0,f32");
    let tokens: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(128);
    let runs: usize = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(3);
    let system = "You are a helpful assistant. Answer using the sources and cite them like [1].\n\n[1] Super Bowl 50 was an American football game to determine the champion of the National Football League (NFL) for the 2015 season. The Denver Broncos defeated the Carolina Panthers 24–10.\n[2] The game was played on February 7, 2016, at Levi's Stadium in Santa Clara, California.";
    let req = GenerateRequest {
        messages: vec![
            ChatMessage { role: Role::System, content: system.into() },
            ChatMessage {
                role: Role::User,
                content: "Write a detailed, long essay about Super Bowl 50: the teams, the venue, the date and why it mattered.".into(),
            },
        ],
        question: String::new(),
        sources: Vec::new(),
        params: GenParams { max_tokens: tokens, ..GenParams::default() },
    };
    println!(
        "{:<8} {:>8} {:>8} {:>10} {:>10} {:>8}",
        "weights", "load_s", "prompt", "ttft_ms", "tok/s", "tokens"
    );
    for f in formats.split(',') {
        let t = Instant::now();
        let l = LocalLlama::load(
            path,
            LocalLlamaOptions {
                weights: parse(f)?,
                ..Default::default()
            },
        )?;
        let load = t.elapsed().as_secs_f64();
        let prompt_tokens = l.count_tokens(&l.render_chat(&req.messages)?);
        let (mut ttfts, mut rates, mut counts) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            let before = l.tokens_generated();
            let t = Instant::now();
            let mut s = l.generate(req.clone());
            let mut first = None;
            while let Some(d) = s.next().await {
                d?;
                first.get_or_insert_with(|| t.elapsed().as_secs_f64());
            }
            let total = t.elapsed().as_secs_f64();
            let n = (l.tokens_generated() - before) as f64;
            let ttft = first.unwrap_or(total);
            ttfts.push(ttft * 1000.0);
            rates.push((n - 1.0).max(1.0) / (total - ttft).max(1e-9));
            counts.push(n);
        }
        println!(
            "{:<8} {:>8.2} {:>8} {:>10.1} {:>10.1} {:>8}",
            f,
            load,
            prompt_tokens,
            median(ttfts),
            median(rates),
            median(counts)
        );
    }
    Ok(())
}
