//! Answer units: the retrieved text cut into pieces an answer can quote —
//! sentences, list items, table rows, code lines, `key = value` lines and
//! headings — respecting the structure the loaders leave in the text
//! (Markdown fences and lists, HTML table rows as `a | b`, PDF lines).
//!
//! Rules:
//! - a fenced code block (```` ``` ````/`~~~`) gives one unit per line;
//! - a line that looks like code or a `key = value` / `key: value` setting,
//!   a list item, a table row is a unit of its own (a list item takes its
//!   indented continuation lines);
//! - other lines are prose: consecutive prose lines are joined (a PDF breaks
//!   lines mid-sentence; a word hyphenated at a line end is re-joined) and
//!   split into sentences at `.`/`!`/`?` followed by a space and a capital,
//!   digit or quote — never inside a `code span`, after a known abbreviation
//!   or initial, or at a `?`/`.` standing alone ("the ? operator");
//! - a short line without final punctuation followed by a blank line or a
//!   capitalised line is a heading.

/// What kind of text an answer unit is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitKind {
    Sentence,
    ListItem,
    TableRow,
    CodeLine,
    KeyValue,
    Heading,
}

/// One answer unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    pub kind: UnitKind,
    pub text: String,
}

const ABBREVIATIONS: &[&str] = &[
    "e.g", "i.e", "etc", "vs", "mr", "mrs", "ms", "dr", "prof", "st", "no", "fig", "cf", "approx",
    "inc", "ltd", "co", "jr", "sr", "u.s", "u.k", "al", "ca", "vol", "pp", "sec", "ch", "jan",
    "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "mt", "ft",
];

/// Cuts `text` into answer units (see the module docs).
pub fn segment(text: &str) -> Vec<Unit> {
    let mut out = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut prose: Vec<&str> = Vec::new();
    let mut in_fence = false;
    let mut i = 0;
    while i < lines.len() {
        let raw = lines[i];
        let line = raw.trim();
        i += 1;
        if line.starts_with("```") || line.starts_with("~~~") {
            flush_prose(&mut prose, &mut out);
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            if !line.is_empty() {
                out.push(unit(UnitKind::CodeLine, line));
            }
            continue;
        }
        if line.is_empty() {
            flush_prose(&mut prose, &mut out);
            continue;
        }
        // A line that goes on with a sentence the previous line left open
        // is prose, however many symbols it holds.
        let continues = prose
            .last()
            .is_some_and(|p| !p.ends_with(['.', ':', ';', '!', '?']))
            && line.starts_with(|c: char| c.is_lowercase());
        let structured = structured_kind(line)
            .filter(|k| !(continues && matches!(k, UnitKind::CodeLine | UnitKind::KeyValue)));
        if let Some(kind) = structured {
            flush_prose(&mut prose, &mut out);
            if kind == UnitKind::TableRow && is_table_separator(line) {
                continue;
            }
            let mut text = strip_list_marker(line).to_string();
            if kind == UnitKind::ListItem {
                // Indented continuation lines belong to the item, and so
                // does a line a PDF broke off it (the item ends without
                // final punctuation, the next line goes on in lower case).
                while i < lines.len()
                    && !lines[i].trim().is_empty()
                    && structured_kind(lines[i].trim()).is_none()
                    && (lines[i].starts_with([' ', '\t'])
                        || (!text.ends_with(['.', ':', ';', '!', '?'])
                            && lines[i].trim().starts_with(|c: char| c.is_lowercase())))
                {
                    join_line(&mut text, lines[i].trim());
                    i += 1;
                }
            }
            if kind == UnitKind::TableRow {
                text = table_row_text(&text);
            }
            if !text.is_empty() {
                out.push(Unit { kind, text });
            }
            continue;
        }
        let next = lines.get(i).map(|l| l.trim()).unwrap_or("");
        if prose.is_empty() && is_heading(line, next) {
            out.push(unit(UnitKind::Heading, line));
            continue;
        }
        prose.push(line);
    }
    flush_prose(&mut prose, &mut out);
    out
}

fn unit(kind: UnitKind, text: &str) -> Unit {
    Unit {
        kind,
        text: text.trim().to_string(),
    }
}

/// Appends a PDF-broken line: a word hyphenated at the break is re-joined.
fn join_line(acc: &mut String, line: &str) {
    if acc.is_empty() {
        acc.push_str(line);
        return;
    }
    let hyphenated = acc.ends_with('-')
        && acc[..acc.len() - 1]
            .chars()
            .next_back()
            .is_some_and(char::is_alphabetic)
        && line.starts_with(|c: char| c.is_lowercase());
    if hyphenated {
        acc.pop();
    } else {
        acc.push(' ');
    }
    acc.push_str(line);
}

fn flush_prose(prose: &mut Vec<&str>, out: &mut Vec<Unit>) {
    if prose.is_empty() {
        return;
    }
    let mut para = String::new();
    for l in prose.drain(..) {
        join_line(&mut para, l);
    }
    for s in sentences(&para) {
        out.push(unit(UnitKind::Sentence, s));
    }
}

/// A short line without final punctuation followed by a blank line, the end
/// or a line starting with a capital: a heading (never joined to prose).
fn is_heading(line: &str, next: &str) -> bool {
    let words = line.split_whitespace().count();
    let ends = line.ends_with(['.', '!', '?', ',', ';', ':', '-']);
    let next_starts_upper = next.is_empty() || next.starts_with(|c: char| !c.is_lowercase());
    let markdown = line.starts_with('#');
    // Followed by a paragraph (not by another short line, as list items
    // rendered one per line are).
    let next_is_text = next.is_empty() || next.split_whitespace().count() >= 10;
    markdown
        || (words <= 8 && !ends && next_starts_upper && next_is_text && line.chars().count() < 60)
}

fn structured_kind(line: &str) -> Option<UnitKind> {
    if line.starts_with('|') || line.matches(" | ").count() >= 1 && line.matches('|').count() >= 1 {
        return Some(UnitKind::TableRow);
    }
    if line.contains('\t') {
        return Some(UnitKind::TableRow);
    }
    if list_marker_len(line).is_some() {
        return Some(UnitKind::ListItem);
    }
    // A TOML/INI section header.
    if line.starts_with('[') && line.ends_with(']') && !line.contains(' ') && line.len() > 2 {
        return Some(UnitKind::KeyValue);
    }
    if is_key_value(line) {
        return Some(UnitKind::KeyValue);
    }
    if looks_like_code(line) {
        return Some(UnitKind::CodeLine);
    }
    None
}

fn list_marker_len(line: &str) -> Option<usize> {
    for m in ["- ", "* ", "+ ", "• ", "· ", "– "] {
        if line.starts_with(m) {
            return Some(m.len());
        }
    }
    let digits = line.chars().take_while(char::is_ascii_digit).count();
    if (1..=3).contains(&digits) {
        let rest = &line[digits..];
        if rest.starts_with(". ") || rest.starts_with(") ") {
            return Some(digits + 2);
        }
    }
    None
}

fn strip_list_marker(line: &str) -> &str {
    match list_marker_len(line) {
        Some(n) => line[n..].trim(),
        None => line,
    }
}

fn is_table_separator(line: &str) -> bool {
    line.chars()
        .all(|c| matches!(c, '|' | '-' | ':' | ' ' | '+' | '='))
}

fn table_row_text(line: &str) -> String {
    line.split(['|', '\t'])
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect::<Vec<_>>()
        .join(" | ")
}

/// `name = value`, `name: value`, `--flag=value` with an identifier-like key.
fn is_key_value(line: &str) -> bool {
    let Some(pos) = line.find(['=', ':']) else {
        return false;
    };
    if line[pos..].starts_with("::") || line[pos..].starts_with("==") {
        return false;
    }
    let key = line[..pos].trim();
    let value = line[pos + 1..].trim();
    !key.is_empty()
        && !value.is_empty()
        && key.len() <= 40
        && !key.contains(' ')
        && key
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '[' | ']' | '"'))
        && line.split_whitespace().count() <= 12
}

/// Shell prompts, statements ending in `;`/`{`/`}`, calls and paths with
/// few plain words.
fn looks_like_code(line: &str) -> bool {
    if line.starts_with("$ ") || line.starts_with("> ") && line.len() < 100 {
        return true;
    }
    let ends = line.ends_with([';', '{', '}']) || line == "}" || line.starts_with('}');
    let symbols = line
        .chars()
        .filter(|c| matches!(c, '(' | ')' | '{' | '}' | ';' | '=' | '<' | '>' | '&' | ':'))
        .count();
    let words = line.split_whitespace().count();
    ends || (symbols >= 3 && symbols * 3 >= words)
}

/// Sentence split of one prose paragraph (see the module docs).
pub fn sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut in_code = false;
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    for (k, &(i, c)) in chars.iter().enumerate() {
        if c == '`' {
            in_code = !in_code;
            continue;
        }
        if in_code || !matches!(c, '.' | '!' | '?') {
            continue;
        }
        // Followed by whitespace, then something that starts a sentence.
        let next = chars.get(k + 1).map(|x| x.1);
        if !next.is_none_or(char::is_whitespace) {
            // `."` / `.)` end a sentence too.
            if !(matches!(next, Some('"' | '”' | '\'' | ')' | '’'))
                && chars.get(k + 2).is_none_or(|x| x.1.is_whitespace()))
            {
                continue;
            }
        }
        let after = chars[k + 1..]
            .iter()
            .map(|x| x.1)
            .find(|c| !c.is_whitespace() && !matches!(c, '"' | '”' | '\'' | ')' | '’'));
        if after.is_some_and(|a| !(a.is_uppercase() || a.is_ascii_digit() || "\"“‘([".contains(a)))
        {
            continue;
        }
        // A `?`/`.` standing alone ("the ? operator") is not an end.
        let prev = if k == 0 { None } else { Some(chars[k - 1].1) };
        if prev.is_none_or(char::is_whitespace) {
            continue;
        }
        if c == '.' && is_abbreviation(&text[start..i]) {
            continue;
        }
        let end = chars.get(k + 1).map_or(text.len(), |x| {
            if x.1.is_whitespace() {
                x.0
            } else {
                chars.get(k + 2).map_or(text.len(), |y| y.0)
            }
        });
        let s = text[start..end].trim();
        if !s.is_empty() {
            out.push(s);
        }
        start = end;
    }
    let s = text[start..].trim();
    if !s.is_empty() {
        out.push(s);
    }
    out
}

/// The word before a `.` is an abbreviation or an initial ("J.", "U.S").
fn is_abbreviation(before: &str) -> bool {
    let word = before
        .rsplit(|c: char| c.is_whitespace() || c == '(')
        .next()
        .unwrap_or("");
    let w = word.to_lowercase();
    if ABBREVIATIONS.contains(&w.as_str()) {
        return true;
    }
    let letters = word.chars().filter(|c| c.is_alphabetic()).count();
    // A single capital ("J") or dotted initials ("U.S").
    (letters == 1 && word.chars().all(|c| c.is_uppercase() || c == '.'))
        || (word.contains('.') && word.split('.').all(|p| p.chars().count() <= 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(units: &[Unit]) -> Vec<&str> {
        units.iter().map(|u| u.text.as_str()).collect()
    }

    #[test]
    fn splits_sentences_but_not_inside_code_or_numbers() {
        assert_eq!(
            sentences(
                "Use the ? operator here. It returns early! Version 1.2.3 of `std::io` is fine."
            ),
            vec![
                "Use the ? operator here.",
                "It returns early!",
                "Version 1.2.3 of `std::io` is fine."
            ]
        );
        assert_eq!(
            sentences("Call `x.unwrap()? . Then` stop. E.g. this works. J. R. R. Tolkien wrote."),
            vec![
                "Call `x.unwrap()? . Then` stop.",
                "E.g. this works.",
                "J. R. R. Tolkien wrote."
            ]
        );
    }

    #[test]
    fn rejoins_pdf_lines_and_keeps_structure() {
        let text = "The maximum is\n128 bytes per tag, and the\nlength is encod-\ned in DER.\n\n- first item\n  continued\n- second\n\n| key | value |\n|---|---|\n| a | 1 |\n\n```\nlet x = 5;\nprintln!(\"{x}\");\n```\nopt-level = 3";
        let u = segment(text);
        assert_eq!(
            texts(&u),
            vec![
                "The maximum is 128 bytes per tag, and the length is encoded in DER.",
                "first item continued",
                "second",
                "key | value",
                "a | 1",
                "let x = 5;",
                "println!(\"{x}\");",
                "opt-level = 3",
            ]
        );
        assert_eq!(u[1].kind, UnitKind::ListItem);
        assert_eq!(u[4].kind, UnitKind::TableRow);
        assert_eq!(u[5].kind, UnitKind::CodeLine);
        assert_eq!(u[7].kind, UnitKind::KeyValue);
    }
}
