//! `ragfleet ask "question"`: ask a running node (or a gateway in front of
//! nodes), stream the answer to the terminal, then list the citations.
use std::io::Write;

use anyhow::{bail, Context};
use futures::StreamExt;
use serde_json::{json, Value};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The question.
    pub question: String,
    /// The node (or gateway) to ask.
    #[arg(long, env = "RAGFLEET_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Continue this conversation (its id is printed after each answer).
    #[arg(long, short = 'c')]
    pub conversation: Option<String>,
    /// Search only this collection.
    #[arg(long)]
    pub collection: Option<String>,
    /// Generator to answer with (local, openai, extractive); the node's default otherwise.
    #[arg(long, short = 'g')]
    pub generator: Option<String>,
    /// Passages to retrieve.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Print the raw events as JSON lines instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub key: crate::api_key::KeyArgs,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(ask(args))
}

/// Standard output was closed by its reader (`ragfleet ask … | head -1`):
/// a normal end, not an error. `main` exits 0 without a message on it.
#[derive(Debug)]
pub struct StdoutClosed;

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("standard output closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// A write to standard output failed: `StdoutClosed` for a broken pipe,
/// the error itself otherwise.
pub fn stdout_error(e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        StdoutClosed.into()
    } else {
        anyhow::Error::new(e).context("writing to standard output")
    }
}

async fn ask(args: Args) -> anyhow::Result<()> {
    let base = args.url.trim_end_matches('/');
    let mut body = json!({ "message": args.question, "stream": true });
    if let Some(c) = &args.conversation {
        body["conversation_id"] = json!(c);
    }
    if let Some(c) = &args.collection {
        body["collection"] = json!(c);
    }
    if let Some(g) = &args.generator {
        body["generator"] = json!(g);
    }
    if let Some(k) = args.top_k {
        body["top_k"] = json!(k);
    }
    let client = args.key.client()?;
    let resp = client
        .post(format!("{base}/api/v1/chat"))
        .header("accept", "text/event-stream")
        .json(&body)
        .send()
        .await
        .with_context(|| {
            format!("cannot reach the node at {base} (is `ragfleet node` running?)")
        })?;
    let status = resp.status();
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        bail!("{}", error_message(status.as_u16(), &text));
    }

    let mut stdout = std::io::stdout();
    let mut parser = SseParser::default();
    let mut stream = resp.bytes_stream();
    let mut finished = false;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.context("the answer stream broke off")?;
        for (event, data) in parser.push(&chunk) {
            let v: Value = serde_json::from_str(&data)
                .with_context(|| format!("bad {event} event from the node: {data}"))?;
            if args.json {
                writeln!(stdout, "{}", json!({ "event": event, "data": v }))
                    .map_err(stdout_error)?;
            }
            match event.as_str() {
                "token" if !args.json => {
                    write!(stdout, "{}", v["text"].as_str().unwrap_or_default())
                        .and_then(|()| stdout.flush())
                        .map_err(stdout_error)?;
                }
                "done" => {
                    finished = true;
                    if !args.json {
                        print_done(&mut stdout, &v).map_err(stdout_error)?;
                    }
                }
                "error" => {
                    bail!(
                        "the node reported an error: {}",
                        v["message"].as_str().unwrap_or("(no message)")
                    );
                }
                _ => {}
            }
        }
    }
    if !finished {
        bail!("the answer stream ended before the answer was complete");
    }
    Ok(())
}

fn print_done(out: &mut impl Write, v: &Value) -> std::io::Result<()> {
    writeln!(out)?;
    let empty = Vec::new();
    let cites = v["citations"].as_array().unwrap_or(&empty);
    if !cites.is_empty() {
        writeln!(out, "\nSources:")?;
        for c in cites {
            let snippet: String = c["snippet"]
                .as_str()
                .unwrap_or_default()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            let short: String = snippet.chars().take(100).collect();
            let ell = if snippet.chars().count() > 100 {
                "…"
            } else {
                ""
            };
            writeln!(
                out,
                "  [{}] {} ({}, chars {}–{})\n      {}{}",
                c["n"],
                c["title"].as_str().unwrap_or_default(),
                c["doc_id"].as_str().unwrap_or_default(),
                c["start"],
                c["end"],
                short,
                ell
            )?;
        }
    }
    if let Some(id) = v["conversation_id"].as_str() {
        eprintln!("\nconversation {id} (continue with: ragfleet ask -c {id} \"...\")");
    }
    Ok(())
}

/// `{"error":{"code","message"}}` → "message (code, HTTP status)".
pub fn error_message(status: u16, body: &str) -> String {
    match serde_json::from_str::<Value>(body) {
        Ok(v) if v["error"]["message"].is_string() => format!(
            "{} ({}, HTTP {status})",
            v["error"]["message"].as_str().unwrap_or_default(),
            v["error"]["code"].as_str().unwrap_or("error")
        ),
        _ => format!("HTTP {status}: {}", body.trim()),
    }
}

/// Incremental Server-Sent Events parser: feed bytes, get `(event, data)` pairs.
#[derive(Default)]
pub struct SseParser {
    buf: String,
    pending: Vec<u8>,
}

impl SseParser {
    pub fn push(&mut self, bytes: &[u8]) -> Vec<(String, String)> {
        // Keep incomplete UTF-8 sequences for the next chunk.
        self.pending.extend_from_slice(bytes);
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(s) => s.len(),
            Err(e) => e.valid_up_to(),
        };
        let text = String::from_utf8_lossy(&self.pending[..valid]).replace("\r\n", "\n");
        self.buf.push_str(&text);
        self.pending.drain(..valid);
        let mut out = Vec::new();
        while let Some(i) = self.buf.find("\n\n") {
            let block: String = self.buf.drain(..i + 2).collect();
            let mut event = String::from("message");
            let mut data: Vec<&str> = Vec::new();
            for line in block.lines() {
                if line.starts_with(':') {
                    continue;
                }
                let (field, value) = match line.split_once(':') {
                    Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                    None => (line, ""),
                };
                match field {
                    "event" => event = value.to_string(),
                    "data" => data.push(value),
                    _ => {}
                }
            }
            if !data.is_empty() {
                out.push((event, data.join("\n")));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_parser_handles_split_chunks_and_multibyte() {
        let mut p = SseParser::default();
        let all =
            "event: token\ndata: {\"text\":\"é\"}\n\n: keepalive\n\nevent: done\ndata: {}\n\n";
        let bytes = all.as_bytes();
        let mut got = Vec::new();
        for b in bytes.chunks(3) {
            got.extend(p.push(b));
        }
        assert_eq!(
            got,
            vec![
                ("token".to_string(), "{\"text\":\"é\"}".to_string()),
                ("done".to_string(), "{}".to_string())
            ]
        );
    }

    #[test]
    fn error_message_reads_the_error_body() {
        let m = error_message(
            422,
            r#"{"error":{"code":"invalid_request","message":"empty"}}"#,
        );
        assert_eq!(m, "empty (invalid_request, HTTP 422)");
        assert_eq!(error_message(502, "bad gateway"), "HTTP 502: bad gateway");
    }
}
