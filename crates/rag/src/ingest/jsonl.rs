//! JSON Lines in BEIR corpus layout: one `{"_id", "title", "text"}` object a
//! line. Ids are kept verbatim (`id` is accepted too; numbers become their
//! decimal text). Other fields go to metadata (a `metadata` object is merged).
//! A document with an empty `text` but a title (BEIR has such) is its title.
//! A bad line is an error naming its line number; the other lines still load.
use serde_json::Value;

use super::formats::Parsed;
use crate::types::NewDocument;

pub(super) fn parse(text: &str) -> Parsed {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        out.push(
            parse_line(line)
                .map(|mut d| {
                    // No id: the line is identified by its place in the file
                    // (the loader prefixes the file's source).
                    if d.id.is_none() {
                        d.source = Some(format!("#{}", i + 1));
                    }
                    d
                })
                .map_err(|reason| format!("line {}: {reason}", i + 1)),
        );
    }
    if out.is_empty() {
        return Err("no JSON lines (only whitespace)".into());
    }
    Ok(out)
}

fn parse_line(line: &str) -> Result<NewDocument, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("invalid JSON ({e})"))?;
    let Value::Object(mut obj) = v else {
        return Err("expected a JSON object with `_id`, `title` and `text`".into());
    };
    let id = match obj.remove("_id").or_else(|| obj.remove("id")) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => return Err("`_id` is empty".into()),
        Some(Value::String(s)) => Some(s),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(_) => return Err("`_id` must be a string or a number".into()),
    };
    let text = match obj.remove("text") {
        Some(Value::String(s)) => s,
        Some(_) => return Err("`text` must be a string".into()),
        None => return Err("missing `text`".into()),
    };
    let title = match obj.remove("title") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.trim().is_empty() => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => return Err("`title` must be a string".into()),
    };
    // Some BEIR corpora hold title-only documents (an empty `text`): the
    // title is then the whole searchable content, so it becomes the text.
    let text = match (text.trim().is_empty(), &title) {
        (false, _) => text,
        (true, Some(t)) => t.clone(),
        (true, None) => return Err("`text` is empty and there is no `title`".into()),
    };
    let mut metadata = match obj.remove("metadata") {
        Some(Value::Object(m)) => m,
        None | Some(Value::Null) => Default::default(),
        Some(_) => return Err("`metadata` must be an object".into()),
    };
    for (k, v) in obj {
        metadata.entry(k).or_insert(v);
    }
    Ok(NewDocument {
        id,
        title,
        text,
        metadata,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn title_only_documents_are_their_title() {
        let docs = parse(concat!(
            "{\"_id\": \"t\", \"title\": \"Only a title\", \"text\": \"\"}\n",
            "{\"_id\": \"e\", \"title\": \" \", \"text\": \"  \"}\n",
        ))
        .unwrap();
        let first = docs[0].as_ref().unwrap();
        assert_eq!(first.text, "Only a title");
        assert_eq!(first.title.as_deref(), Some("Only a title"));
        let err = docs[1].as_ref().unwrap_err();
        assert!(
            err.contains("`text` is empty and there is no `title`"),
            "{err}"
        );
    }
}
