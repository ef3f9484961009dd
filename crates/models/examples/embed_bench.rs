//! Embedding throughput of BertEmbedder (driven by bench/models/embed_bench.py).
//!
//! Usage: embed_bench MODEL_DIR TEXTS.jsonl [BATCH_SIZE] [THREADS]
//! TEXTS.jsonl holds one JSON string per line. Prints one JSON line:
//! {"chunks": N, "seconds": S, "chunks_per_s": R}.
use std::time::Instant;

use ragfleet_models::{BertEmbedder, BertOptions};
use ragfleet_rag::embed::Embedder;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        return Err("usage: embed_bench MODEL_DIR TEXTS.jsonl [BATCH_SIZE] [THREADS]".into());
    }
    let mut opts = BertOptions::default();
    if let Some(b) = args.get(3) {
        opts.batch_size = b.parse()?;
    }
    if let Some(t) = args.get(4) {
        opts.threads = t.parse()?;
    }
    let texts: Vec<String> = std::fs::read_to_string(&args[2])?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let e = BertEmbedder::load_with(&args[1], opts)?;
    // Warm-up (allocations, page faults), as the Python side does.
    e.embed(&refs[..refs.len().min(64)])?;
    let t = Instant::now();
    let out = e.embed(&refs)?;
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(out.len(), refs.len());
    println!(
        "{{\"chunks\": {}, \"seconds\": {:.3}, \"chunks_per_s\": {:.1}}}",
        refs.len(),
        secs,
        refs.len() as f64 / secs
    );
    Ok(())
}
