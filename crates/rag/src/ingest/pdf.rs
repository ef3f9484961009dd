//! PDF → text per page (lopdf parses, pdf-extract lays out the text; both
//! pure Rust). Pages are joined by a blank line; `pages` records where each
//! page starts (char offset) and its 1-based number.
use std::panic::{catch_unwind, AssertUnwindSafe};

use lopdf::{Document, Object};

pub(super) struct Pdf {
    pub title: Option<String>,
    pub text: String,
    pub pages: Vec<(usize, u32)>,
    pub page_count: usize,
}

pub(super) fn extract(bytes: &[u8]) -> Result<Pdf, String> {
    if !bytes.starts_with(b"%PDF") {
        // Some writers put junk before the header; lopdf tolerates a little.
        if !bytes.windows(5).take(1024).any(|w| w == b"%PDF-") {
            return Err("not a PDF file (no %PDF header)".into());
        }
    }
    // pdf-extract/lopdf may panic on hostile input: contain it.
    let result = catch_unwind(AssertUnwindSafe(|| extract_inner(bytes)));
    match result {
        Ok(r) => r,
        Err(_) => Err("malformed PDF (the parser gave up on its structure)".into()),
    }
}

fn extract_inner(bytes: &[u8]) -> Result<Pdf, String> {
    let mut doc = match Document::load_mem(bytes) {
        Ok(d) => d,
        Err(e) => {
            let msg = e.to_string();
            if msg.to_ascii_lowercase().contains("decrypt")
                || msg.to_ascii_lowercase().contains("encrypt")
            {
                return Err(format!("encrypted PDF (password-protected; {msg})"));
            }
            return Err(format!("malformed or truncated PDF ({msg})"));
        }
    };
    if doc.is_encrypted() {
        // An empty user password still opens many "encrypted" PDFs
        // (owner-password only: printing/copy restrictions).
        if doc.decrypt("").is_err() || doc.is_encrypted() {
            return Err("encrypted PDF (password-protected); decrypt it before loading".into());
        }
    }
    let title = info_title(&doc);
    let page_numbers: Vec<u32> = doc.get_pages().keys().copied().collect();
    if page_numbers.is_empty() {
        return Err("malformed PDF (no pages)".into());
    }
    let mut text = String::new();
    let mut chars = 0usize;
    let mut pages = Vec::new();
    for n in &page_numbers {
        let mut raw = String::new();
        {
            let mut out = pdf_extract::PlainTextOutput::new(&mut raw);
            pdf_extract::output_doc_page(&doc, &mut out, *n)
                .map_err(|e| format!("malformed PDF (page {n}: {e})"))?;
        }
        let page = tidy(&raw);
        if page.is_empty() {
            continue;
        }
        if !text.is_empty() {
            text.push_str("\n\n");
            chars += 2;
        }
        pages.push((chars, *n));
        chars += page.chars().count();
        text.push_str(&page);
    }
    if text.is_empty() {
        return Err(
            "no extractable text (a scanned PDF without a text layer? OCR it first)".into(),
        );
    }
    Ok(Pdf {
        title,
        text,
        pages,
        page_count: page_numbers.len(),
    })
}

/// Trim each line's trailing spaces and collapse runs of blank lines.
fn tidy(raw: &str) -> String {
    let mut out = String::new();
    let mut blank = 0usize;
    for line in raw.lines() {
        let line = line.trim_end();
        if line.trim().is_empty() {
            blank += 1;
            continue;
        }
        if !out.is_empty() {
            out.push_str(if blank > 0 { "\n\n" } else { "\n" });
        }
        blank = 0;
        out.push_str(line);
    }
    out
}

fn info_title(doc: &Document) -> Option<String> {
    let info = doc.trailer.get(b"Info").ok()?;
    let dict = match info {
        Object::Reference(id) => doc.get_dictionary(*id).ok()?,
        Object::Dictionary(d) => d,
        _ => return None,
    };
    let title = match dict.get(b"Title").ok()? {
        Object::String(bytes, _) => decode_pdf_string(bytes),
        _ => return None,
    };
    let t = title.trim().to_string();
    (!t.is_empty()).then_some(t)
}

/// PDF text strings: UTF-16BE with a BOM, else PDFDocEncoding (≈ Latin-1).
fn decode_pdf_string(bytes: &[u8]) -> String {
    if let Some(rest) = bytes.strip_prefix(&[0xFE, 0xFF]) {
        let units: Vec<u16> = rest
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect();
        return String::from_utf16_lossy(&units);
    }
    if let Ok(s) = std::str::from_utf8(bytes) {
        return s.to_string();
    }
    bytes.iter().map(|&b| b as char).collect()
}
