//! Local generation speed of LocalLlama (driven by bench/models/llama_bench.sh).
//!
//! Usage: llama_bench GGUF [FORMATS] [TOKENS] [RUNS]
//! FORMATS: comma-separated weight formats to compare side by side
//! (native,f32,as_file,q8_0,q4_0; default native,f32,as_file,q8_0). For each,
//! two prompts — a short RAG prompt (~140 tokens) and a long one (~1,000
//! tokens, many sources) — each answered greedily with TOKENS tokens (a long
//! answer is asked for, so stop tokens rarely end it early): time to first
//! token (prompt processing + first sample) and decode tokens/s after it,
//! median of RUNS runs. The last columns are ratios to the first format.
use std::time::Instant;

use futures::StreamExt;
use ragfleet_models::{LocalLlama, LocalLlamaOptions, WeightFormat};
use ragfleet_rag::generate::{ChatMessage, GenParams, GenerateRequest, Generator, Role};

fn parse(f: &str) -> Result<WeightFormat, String> {
    Ok(match f {
        "native" => WeightFormat::Native,
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

const SOURCES: [&str; 8] = [
    "Super Bowl 50 was an American football game to determine the champion of the National Football League (NFL) for the 2015 season. The Denver Broncos defeated the Carolina Panthers 24–10.",
    "The game was played on February 7, 2016, at Levi's Stadium in the San Francisco Bay Area at Santa Clara, California.",
    "As this was the 50th Super Bowl, the league emphasized the golden anniversary with various gold-themed initiatives, and temporarily suspended the tradition of naming each Super Bowl game with Roman numerals.",
    "The Panthers finished the regular season with a 15–1 record, and quarterback Cam Newton was named the NFL Most Valuable Player. They defeated the Arizona Cardinals 49–15 in the NFC Championship Game.",
    "The Broncos finished the regular season with a 12–4 record, and denied the New England Patriots a chance to defend their title from Super Bowl XLIX by defeating them 20–18 in the AFC Championship Game.",
    "Denver linebacker Von Miller was named Super Bowl MVP, recording five solo tackles, 2½ sacks, and two forced fumbles. The broadcast on CBS was watched by an average of 111.9 million viewers.",
    "The halftime show was headlined by the British rock group Coldplay with special guest performers Beyoncé and Bruno Mars, who headlined the Super Bowl XLVII and Super Bowl XLVIII halftime shows.",
    "CBS charged an average of $5 million for a 30-second commercial during the game, and the stadium's capacity was expanded to 68,500 seats for the event.",
];

fn request(sources: usize, tokens: usize) -> GenerateRequest {
    let mut system =
        "You are a helpful assistant. Answer using the sources and cite them like [1].\n\n"
            .to_string();
    for i in 0..sources {
        system += &format!("[{}] {}\n", i + 1, SOURCES[i % SOURCES.len()]);
    }
    GenerateRequest {
        messages: vec![
            ChatMessage { role: Role::System, content: system },
            ChatMessage {
                role: Role::User,
                content: "Write a detailed, long essay about Super Bowl 50: the teams, the venue, the date and why it mattered.".into(),
            },
        ],
        question: String::new(),
        sources: Vec::new(),
        params: GenParams { max_tokens: tokens, ..GenParams::default() },
    }
}

/// (prompt tokens, ttft ms, decode tokens/s, tokens) medians over `runs`.
async fn measure(
    l: &LocalLlama,
    req: &GenerateRequest,
    runs: usize,
) -> Result<(usize, f64, f64, f64), Box<dyn std::error::Error>> {
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
    Ok((prompt_tokens, median(ttfts), median(rates), median(counts)))
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
        .unwrap_or("native,f32,as_file,q8_0");
    let tokens: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(128);
    let runs: usize = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(3);
    let short = request(2, tokens);
    let long = request(19, tokens);
    // LLAMA_BENCH_LONG=0 skips the long prompt (profiling the short one).
    let with_long = std::env::var("LLAMA_BENCH_LONG").map_or(true, |v| v != "0");
    println!(
        "{:<8} {:>6} | {:>6} {:>8} {:>7} | {:>6} {:>8} {:>7} | {:>8} {:>8} {:>8} {:>8}",
        "weights",
        "load_s",
        "prompt",
        "ttft_ms",
        "tok/s",
        "prompt",
        "ttft_ms",
        "tok/s",
        "ttft×",
        "tok/s×",
        "ttft×L",
        "tok/s×L"
    );
    let mut base: Option<[f64; 4]> = None;
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
        let (sp, st, sr, sn) = measure(&l, &short, runs).await?;
        let (lp, lt, lr, ln) = if with_long {
            measure(&l, &long, runs).await?
        } else {
            (0, f64::NAN, f64::NAN, f64::NAN)
        };
        let b = *base.get_or_insert([st, sr, lt, lr]);
        println!(
            "{:<8} {:>6.2} | {:>6} {:>8.0} {:>7.1} | {:>6} {:>8.0} {:>7.1} | {:>8.2} {:>8.2} {:>8.2} {:>8.2}{}",
            f,
            load,
            sp,
            st,
            sr,
            lp,
            lt,
            lr,
            st / b[0],
            sr / b[1],
            lt / b[2],
            lr / b[3],
            if sn < tokens as f64 || ln < tokens as f64 {
                format!("  (answers of {sn}/{ln} tokens)")
            } else {
                String::new()
            }
        );
    }
    println!("ratios: to the first row (ttft: lower is faster; tok/s: higher is faster)");
    Ok(())
}
