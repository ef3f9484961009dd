//! DOCX → text: `word/document.xml` read with quick-xml. Paragraphs become
//! lines separated by a blank line; table rows become one line with cells
//! joined by ` | `. The title is the core property `dc:title`, else the first
//! paragraph styled Title/Heading 1.
use std::io::{Cursor, Read};

use quick_xml::events::Event;
use quick_xml::Reader;

pub(super) struct Docx {
    pub title: Option<String>,
    pub text: String,
}

/// Largest XML part we inflate (guards against zip bombs).
const MAX_PART: u64 = 256 << 20;

pub(super) fn extract(bytes: &[u8]) -> Result<Docx, String> {
    if bytes.starts_with(&[0xD0, 0xCF, 0x11, 0xE0]) {
        return Err("not a DOCX file: an OLE compound file (a password-protected document or a legacy .doc)".into());
    }
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| format!("not a DOCX file (not a zip archive: {e})"))?;
    let body = read_part(&mut zip, "word/document.xml")?
        .ok_or("not a DOCX file (the archive has no word/document.xml)")?;
    let (text, heading) = parse_body(&body)?;
    let title = match read_part(&mut zip, "docProps/core.xml") {
        Ok(Some(core)) => core_title(&core),
        _ => None,
    }
    .or(heading);
    Ok(Docx { title, text })
}

fn read_part(
    zip: &mut zip::ZipArchive<Cursor<&[u8]>>,
    name: &str,
) -> Result<Option<String>, String> {
    let file = match zip.by_name(name) {
        Ok(f) => f,
        Err(zip::result::ZipError::FileNotFound) => return Ok(None),
        Err(e) => return Err(format!("corrupt DOCX archive ({name}: {e})")),
    };
    let mut buf = Vec::new();
    file.take(MAX_PART)
        .read_to_end(&mut buf)
        .map_err(|e| format!("corrupt DOCX archive ({name}: {e})"))?;
    String::from_utf8(buf)
        .map(Some)
        .map_err(|_| format!("corrupt DOCX archive ({name} is not UTF-8 XML)"))
}

/// Text of the body and the first Title/Heading1 paragraph.
fn parse_body(xml: &str) -> Result<(String, Option<String>), String> {
    let mut reader = Reader::from_str(xml);
    let mut out = String::new();
    let mut para = String::new();
    let mut row: Vec<String> = Vec::new();
    let mut cell = String::new();
    let mut in_text = false;
    let mut table_depth = 0usize;
    let mut style: Option<String> = None;
    let mut heading: Option<String> = None;
    let push_block = |out: &mut String, s: &str| {
        let s = s.trim();
        if s.is_empty() {
            return;
        }
        if !out.is_empty() {
            out.push_str(if out.ends_with('\n') { "\n" } else { "\n\n" });
        }
        out.push_str(s);
    };
    loop {
        let ev = reader.read_event().map_err(|e| {
            format!(
                "corrupt DOCX (word/document.xml at byte {}: {e})",
                reader.error_position()
            )
        })?;
        match ev {
            Event::Start(e) => match e.local_name().as_ref() {
                b"t" => in_text = true,
                b"p" => {
                    para.clear();
                    style = None;
                }
                b"tbl" => table_depth += 1,
                b"tr" => row.clear(),
                b"tc" => cell.clear(),
                _ => {}
            },
            Event::Empty(e) => match e.local_name().as_ref() {
                b"tab" => para.push('\t'),
                b"br" | b"cr" => para.push('\n'),
                b"pStyle" => {
                    for a in e.attributes().flatten() {
                        if a.key.local_name().as_ref() == b"val" {
                            style = Some(String::from_utf8_lossy(&a.value).into_owned());
                        }
                    }
                }
                _ => {}
            },
            Event::Text(t) if in_text => {
                let s = t
                    .decode()
                    .map_err(|e| format!("corrupt DOCX (bad text: {e})"))?;
                para.push_str(&s);
            }
            Event::GeneralRef(r) if in_text => {
                // &amp; &lt; &#233; ... inside <w:t>.
                let name = r
                    .decode()
                    .map_err(|e| format!("corrupt DOCX (bad entity: {e})"))?;
                if let Some(c) = r.resolve_char_ref().ok().flatten() {
                    para.push(c);
                } else if let Some(s) = quick_xml::escape::resolve_predefined_entity(&name) {
                    para.push_str(s);
                }
            }
            Event::End(e) => match e.local_name().as_ref() {
                b"t" => in_text = false,
                b"p" => {
                    if heading.is_none()
                        && style
                            .as_deref()
                            .is_some_and(|s| s == "Title" || s.eq_ignore_ascii_case("heading1"))
                        && !para.trim().is_empty()
                    {
                        heading = Some(para.trim().to_string());
                    }
                    if table_depth > 0 {
                        if !cell.is_empty() && !para.trim().is_empty() {
                            cell.push(' ');
                        }
                        cell.push_str(para.trim());
                    } else {
                        push_block(&mut out, &para);
                    }
                    para.clear();
                }
                b"tc" => row.push(std::mem::take(&mut cell)),
                b"tr" => {
                    let line = row.iter().map(|c| c.trim()).collect::<Vec<_>>().join(" | ");
                    if !line.trim_matches([' ', '|']).is_empty() {
                        if !out.is_empty() && !out.ends_with('\n') {
                            out.push_str("\n\n");
                        }
                        out.push_str(&line);
                        out.push('\n');
                    }
                    row.clear();
                }
                b"tbl" => table_depth = table_depth.saturating_sub(1),
                _ => {}
            },
            Event::Eof => break,
            _ => {}
        }
    }
    Ok((out.trim_end().to_string(), heading))
}

fn core_title(xml: &str) -> Option<String> {
    let mut reader = Reader::from_str(xml);
    let mut in_title = false;
    let mut title = String::new();
    loop {
        match reader.read_event().ok()? {
            Event::Start(e) if e.local_name().as_ref() == b"title" => in_title = true,
            Event::End(e) if e.local_name().as_ref() == b"title" => break,
            Event::Text(t) if in_title => title.push_str(&t.decode().ok()?),
            Event::GeneralRef(r) if in_title => {
                if let Some(c) = r.resolve_char_ref().ok().flatten() {
                    title.push(c);
                } else if let Some(s) =
                    quick_xml::escape::resolve_predefined_entity(&r.decode().ok()?)
                {
                    title.push_str(s);
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    let t = title.trim().to_string();
    (!t.is_empty()).then_some(t)
}
