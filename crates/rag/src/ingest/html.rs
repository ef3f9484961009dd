//! HTML → visible text (html5ever via scraper: parses real-world HTML the way
//! browsers do). Scripts, styles, templates and `<head>` are dropped; block
//! elements become line breaks; whitespace is collapsed except in `<pre>`.
use ego_tree::iter::Edge;
use scraper::{Html, Node, Selector};

pub(super) struct Page {
    pub title: Option<String>,
    pub text: String,
}

/// Elements whose content is never text a reader sees.
const SKIP: &[&str] = &[
    "script", "style", "noscript", "template", "head", "svg", "math", "iframe", "object", "canvas",
];

/// Elements that end a line.
const LINE: &[&str] = &[
    "br",
    "li",
    "tr",
    "dt",
    "dd",
    "option",
    "figcaption",
    "caption",
];

/// Elements that stand as their own paragraph.
const BLOCK: &[&str] = &[
    "p",
    "div",
    "section",
    "article",
    "aside",
    "header",
    "footer",
    "nav",
    "main",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "ul",
    "ol",
    "dl",
    "table",
    "blockquote",
    "pre",
    "hr",
    "form",
    "fieldset",
    "address",
    "figure",
    "details",
    "summary",
    "body",
];

pub(super) fn extract(source: &str) -> Page {
    let doc = Html::parse_document(source);
    let title = first_text(&doc, "title").or_else(|| first_text(&doc, "h1"));
    let mut w = Writer::default();
    let mut skip = 0usize;
    let mut pre = 0usize;
    for edge in doc.tree.root().traverse() {
        match edge {
            Edge::Open(node) => match node.value() {
                Node::Element(e) => {
                    let name = e.name();
                    if SKIP.contains(&name) {
                        skip += 1;
                    } else if skip == 0 {
                        if name == "pre" {
                            pre += 1;
                        }
                        if BLOCK.contains(&name) {
                            w.brk(2);
                        } else if LINE.contains(&name) {
                            w.brk(1);
                        } else if name == "td" || name == "th" {
                            w.cell();
                        }
                    }
                }
                Node::Text(t) if skip == 0 => w.text(t, pre > 0),
                _ => {}
            },
            Edge::Close(node) => {
                if let Node::Element(e) = node.value() {
                    let name = e.name();
                    if SKIP.contains(&name) {
                        skip = skip.saturating_sub(1);
                    } else if skip == 0 {
                        if name == "pre" {
                            pre = pre.saturating_sub(1);
                        }
                        if BLOCK.contains(&name) {
                            w.brk(2);
                        } else if LINE.contains(&name) {
                            w.brk(1);
                        }
                    }
                }
            }
        }
    }
    Page { title, text: w.out }
}

fn first_text(doc: &Html, selector: &str) -> Option<String> {
    let sel = Selector::parse(selector).ok()?;
    let el = doc.select(&sel).next()?;
    let t = collapse(&el.text().collect::<String>());
    (!t.is_empty()).then_some(t)
}

fn collapse(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[derive(Default)]
struct Writer {
    out: String,
    /// Line breaks owed before the next text (0, 1 or 2).
    pending_break: usize,
    /// A space owed before the next text.
    pending_space: bool,
    /// The next text starts a table cell after another one.
    pending_cell: bool,
}

impl Writer {
    fn brk(&mut self, n: usize) {
        self.pending_break = self.pending_break.max(n);
        self.pending_space = false;
        self.pending_cell = false;
    }

    fn cell(&mut self) {
        if !self.out.is_empty() && self.pending_break == 0 && !self.out.ends_with('\n') {
            self.pending_cell = true;
        }
    }

    fn text(&mut self, t: &str, pre: bool) {
        if pre {
            if t.is_empty() {
                return;
            }
            self.flush();
            self.out.push_str(t);
            return;
        }
        let starts_ws = t.starts_with(char::is_whitespace);
        let ends_ws = t.ends_with(char::is_whitespace);
        let words: Vec<&str> = t.split_whitespace().collect();
        if words.is_empty() {
            if !t.is_empty() {
                self.pending_space = true;
            }
            return;
        }
        if starts_ws {
            self.pending_space = true;
        }
        self.flush();
        self.out.push_str(&words.join(" "));
        self.pending_space = ends_ws;
    }

    fn flush(&mut self) {
        if self.out.is_empty() {
            self.pending_break = 0;
            self.pending_space = false;
            self.pending_cell = false;
            return;
        }
        if self.pending_break > 0 {
            while self.out.ends_with(' ') {
                self.out.pop();
            }
            let have = self.out.chars().rev().take_while(|&c| c == '\n').count();
            for _ in have..self.pending_break {
                self.out.push('\n');
            }
        } else if self.pending_cell {
            self.out.push_str(" | ");
        } else if self.pending_space && !self.out.ends_with(char::is_whitespace) {
            self.out.push(' ');
        }
        self.pending_break = 0;
        self.pending_space = false;
        self.pending_cell = false;
    }
}
