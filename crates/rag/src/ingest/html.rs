//! HTML → the page's main text (html5ever via scraper: parses real-world
//! HTML the way browsers do).
//!
//! What a reader of the page would not call its content goes:
//! - never text: scripts, styles, templates, `<noscript>`, `<head>`, SVG, …;
//! - the page's interface: `<nav>`, `<aside>`, `<menu>`, `<dialog>`, form
//!   controls (buttons, inputs, selects), the page-level `<header>` and
//!   `<footer>` (those of an `<article>` or `<section>` stay), ARIA
//!   landmarks and widgets of the same kinds (`role="navigation"`, `banner`,
//!   `contentinfo`, `complementary`, `search`, `menu`, `toolbar`, …),
//!   elements whose class or id names such a part (`sidebar`, `menu`,
//!   `navbar`, `breadcrumb`, `footer`, `popup`, `modal`, `toolbar`, `pager`,
//!   `cookie`, `hidden`, `hide…`, … — unless it also says `content`, `main`,
//!   `article`, …), and self-links made of one symbol (`¶`, `#`);
//! - hidden elements: the `hidden` attribute, `aria-hidden="true"`, an
//!   inline `display: none` or `visibility: hidden`.
//!
//! Of the rest, the main content is taken: the page's `<main>` (or
//! `role="main"`) elements when it has any, else its one `<article>`, else
//! the block a readability-style text-density score picks (paragraphs score
//! their container by length and commas; link-heavy blocks lose; siblings
//! that score close to the best join it). Should that leave no text, the
//! whole page (without the hidden and never-text parts) is used. Nothing is
//! specific to one site generator. Block elements become line breaks;
//! whitespace is collapsed except in `<pre>`.
use std::collections::{HashMap, HashSet};

use ego_tree::iter::Edge;
use ego_tree::{NodeId, NodeRef};
use scraper::{ElementRef, Html, Node, Selector};
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

/// Interface elements: never the page's content.
const INTERFACE: &[&str] = &[
    "nav", "aside", "menu", "dialog", "button", "select", "input", "textarea", "datalist",
];

/// ARIA roles of the same kinds.
const INTERFACE_ROLES: &[&str] = &[
    "navigation",
    "banner",
    "contentinfo",
    "complementary",
    "search",
    "menu",
    "menubar",
    "toolbar",
    "dialog",
    "alertdialog",
    "tooltip",
    "tablist",
];

/// Words in a class or id that name an interface part (readability's
/// "unlikely candidates", narrowed).
const UNLIKELY_WORDS: &[&str] = &[
    "sidebar",
    "menu",
    "menubar",
    "navbar",
    "nav",
    "navigation",
    "breadcrumb",
    "breadcrumbs",
    "footer",
    "banner",
    "popup",
    "modal",
    "toolbar",
    "pagination",
    "pager",
    "cookie",
    "cookies",
    "share",
    "social",
    "hidden",
];

/// Words that keep an element whose class or id also has an unlikely word.
const LIKELY_WORDS: &[&str] = &[
    "content", "main", "article", "body", "text", "post", "entry",
];

pub(super) fn extract(source: &str) -> Page {
    let doc = Html::parse_document(source);
    let title = first_text(&doc, "title").or_else(|| first_text(&doc, "h1"));
    let root = doc.tree.root();
    let hidden = dropped(root, false);
    let interface = dropped(root, true);
    let text = content_roots(&doc, &interface)
        .map(|roots| render(&roots, &interface))
        .filter(|t| !t.trim().is_empty())
        .unwrap_or_else(|| render(&[root], &hidden));
    Page { title, text }
}

/// Renders the subtrees in order, skipping the `skip` subtrees.
fn render(roots: &[NodeRef<'_, Node>], skip: &HashSet<NodeId>) -> String {
    let mut w = Writer::default();
    for root in roots {
        let mut skipping = 0usize;
        let mut pre = 0usize;
        for edge in root.traverse() {
            match edge {
                Edge::Open(node) => {
                    if skipping > 0 || skip.contains(&node.id()) {
                        skipping += 1;
                        continue;
                    }
                    match node.value() {
                        Node::Element(e) => {
                            let name = e.name();
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
                        Node::Text(t) => w.text(t, pre > 0),
                        _ => {}
                    }
                }
                Edge::Close(node) => {
                    if skipping > 0 {
                        skipping -= 1;
                        continue;
                    }
                    if let Node::Element(e) = node.value() {
                        let name = e.name();
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
        w.brk(2);
    }
    w.out
}

/// The roots of the subtrees to leave out: never-text and hidden elements,
/// and with `interface` the page's interface too (see the module docs).
fn dropped(root: NodeRef<'_, Node>, interface: bool) -> HashSet<NodeId> {
    let mut out = HashSet::new();
    // Open sectioning elements (article, section, main) and code/heading
    // ancestors, counted on the way down.
    let mut sectioning = 0usize;
    let mut literal = 0usize;
    let mut skipping = 0usize;
    for edge in root.traverse() {
        match edge {
            Edge::Open(node) => {
                if skipping > 0 {
                    skipping += 1;
                    continue;
                }
                let Node::Element(e) = node.value() else {
                    continue;
                };
                let name = e.name();
                let drop = SKIP.contains(&name)
                    || is_hidden(e)
                    || (interface && is_interface(node, e, sectioning > 0, literal > 0));
                if drop {
                    out.insert(node.id());
                    skipping = 1;
                    continue;
                }
                if matches!(name, "article" | "section" | "main") || e.attr("role") == Some("main")
                {
                    sectioning += 1;
                }
                if matches!(
                    name,
                    "pre" | "code" | "h1" | "h2" | "h3" | "h4" | "h5" | "h6" | "table"
                ) {
                    literal += 1;
                }
            }
            Edge::Close(node) => {
                if skipping > 0 {
                    skipping -= 1;
                    continue;
                }
                if let Node::Element(e) = node.value() {
                    let name = e.name();
                    if matches!(name, "article" | "section" | "main")
                        || e.attr("role") == Some("main")
                    {
                        sectioning = sectioning.saturating_sub(1);
                    }
                    if matches!(
                        name,
                        "pre" | "code" | "h1" | "h2" | "h3" | "h4" | "h5" | "h6" | "table"
                    ) {
                        literal = literal.saturating_sub(1);
                    }
                }
            }
        }
    }
    out
}

fn is_hidden(e: &scraper::node::Element) -> bool {
    if e.attr("hidden").is_some() || e.attr("aria-hidden").is_some_and(|v| v.trim() == "true") {
        return true;
    }
    e.attr("style").is_some_and(|style| {
        let s: String = style
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_ascii_lowercase();
        s.split(';').any(|d| {
            d == "display:none" || d == "visibility:hidden" || d.starts_with("display:none!")
        })
    })
}

fn is_interface(
    node: NodeRef<'_, Node>,
    e: &scraper::node::Element,
    in_section: bool,
    in_literal: bool,
) -> bool {
    let name = e.name();
    if INTERFACE.contains(&name) {
        return true;
    }
    // The page's own header and footer; an article's or section's stay.
    if matches!(name, "header" | "footer") && !in_section {
        return true;
    }
    if e.attr("role")
        .is_some_and(|r| r.split_whitespace().any(|r| INTERFACE_ROLES.contains(&r)))
    {
        return true;
    }
    if name == "a" {
        // A self-link made of one symbol: a heading's permalink (¶, #, §).
        let href_local = e.attr("href").is_some_and(|h| h.starts_with('#'));
        let text: String = ElementRef::wrap(node)
            .map(|r| r.text().collect::<String>())
            .unwrap_or_default();
        let t = text.trim();
        return href_local && t.chars().count() == 1 && !t.chars().all(char::is_alphanumeric);
    }
    if in_literal || name == "body" || name == "html" {
        return false;
    }
    let mut words = e
        .attr("class")
        .into_iter()
        .chain(e.attr("id"))
        .flat_map(|v| v.split(|c: char| c.is_whitespace() || c == '-' || c == '_'))
        .map(str::to_ascii_lowercase)
        .filter(|w| !w.is_empty())
        .peekable();
    if words.peek().is_none() {
        return false;
    }
    let words: Vec<String> = words.collect();
    words
        .iter()
        .any(|w| UNLIKELY_WORDS.contains(&w.as_str()) || w.starts_with("hide"))
        && !words.iter().any(|w| LIKELY_WORDS.contains(&w.as_str()))
}

/// The subtrees holding the main content: `<main>` / `role="main"`
/// elements, else the page's one `<article>`, else the density pick.
/// `None`: nothing stands out (use the whole page).
fn content_roots<'a>(doc: &'a Html, skip: &HashSet<NodeId>) -> Option<Vec<NodeRef<'a, Node>>> {
    let visible = |n: &NodeRef<'a, Node>| {
        !std::iter::once(*n)
            .chain(n.ancestors())
            .any(|a| skip.contains(&a.id()))
    };
    let outermost = |sel: &str| -> Vec<NodeRef<'a, Node>> {
        let Ok(sel) = Selector::parse(sel) else {
            return Vec::new();
        };
        let found: Vec<NodeRef<'a, Node>> = doc.select(&sel).map(|e| *e).filter(visible).collect();
        let ids: HashSet<NodeId> = found.iter().map(|n| n.id()).collect();
        found
            .into_iter()
            .filter(|n| !n.ancestors().any(|a| ids.contains(&a.id())))
            .collect()
    };
    let mains = outermost("main, [role=main]");
    if !mains.is_empty() {
        return Some(mains);
    }
    let articles = outermost("article");
    if articles.len() == 1 {
        return Some(articles);
    }
    densest(doc, skip)
}

/// Per node: (visible non-space chars, of which inside links, commas).
type Counts = HashMap<NodeId, (usize, usize, usize)>;

fn counts(doc: &Html, skip: &HashSet<NodeId>) -> Counts {
    let mut out: Counts = HashMap::new();
    let mut stack: Vec<(NodeId, usize, usize, usize, bool)> = Vec::new();
    let mut in_link = 0usize;
    let mut skipping = 0usize;
    for edge in doc.tree.root().traverse() {
        match edge {
            Edge::Open(node) => {
                if skipping > 0 || skip.contains(&node.id()) {
                    skipping += 1;
                    continue;
                }
                match node.value() {
                    Node::Text(t) => {
                        let chars = t.chars().filter(|c| !c.is_whitespace()).count();
                        let commas = t.chars().filter(|&c| c == ',').count();
                        if let Some(top) = stack.last_mut() {
                            top.1 += chars;
                            top.3 += commas;
                            if in_link > 0 {
                                top.2 += chars;
                            }
                        }
                    }
                    Node::Element(e) => {
                        let link = e.name() == "a";
                        if link {
                            in_link += 1;
                        }
                        stack.push((node.id(), 0, 0, 0, link));
                    }
                    _ => {}
                }
            }
            Edge::Close(node) => {
                if skipping > 0 {
                    skipping -= 1;
                    continue;
                }
                if !matches!(node.value(), Node::Element(_)) {
                    continue;
                }
                if let Some((id, chars, links, commas, link)) = stack.pop() {
                    if link {
                        in_link = in_link.saturating_sub(1);
                    }
                    out.insert(id, (chars, links, commas));
                    if let Some(parent) = stack.last_mut() {
                        parent.1 += chars;
                        parent.2 += links;
                        parent.3 += commas;
                    }
                }
            }
        }
    }
    out
}

/// Readability's pick: every paragraph-like block (a `p`, `pre`, `td`,
/// `blockquote`, `dd`, or a `div`/`section` with text of its own) of 25
/// chars or more scores 1 + its commas + 1 per 100 chars (at most 3); its
/// parent gets that, its grandparent half, further ancestors less. A
/// candidate's score is scaled by 1 − its link density; the best one is
/// taken with the siblings that score at least a fifth of it (or are
/// paragraphs of real prose).
fn densest<'a>(doc: &'a Html, skip: &HashSet<NodeId>) -> Option<Vec<NodeRef<'a, Node>>> {
    let counts = counts(doc, skip);
    let mut scores: HashMap<NodeId, f64> = HashMap::new();
    for (&id, &(chars, _, commas)) in &counts {
        let Some(node) = doc.tree.get(id) else {
            continue;
        };
        let Node::Element(e) = node.value() else {
            continue;
        };
        let own = match e.name() {
            "p" | "pre" | "td" | "blockquote" | "dd" => chars,
            "div" | "section" => node
                .children()
                .filter_map(|c| c.value().as_text())
                .map(|t| t.chars().filter(|c| !c.is_whitespace()).count())
                .sum(),
            _ => continue,
        };
        if own < 25 {
            continue;
        }
        let score = 1.0 + commas as f64 + (chars as f64 / 100.0).min(3.0);
        for (level, anc) in node.ancestors().take(5).enumerate() {
            if !matches!(anc.value(), Node::Element(_)) {
                break;
            }
            let div = match level {
                0 => 1.0,
                1 => 2.0,
                l => l as f64 * 3.0,
            };
            *scores.entry(anc.id()).or_default() += score / div;
        }
    }
    let final_score = |id: NodeId| -> f64 {
        let s = scores.get(&id).copied().unwrap_or(0.0);
        let (chars, links, _) = counts.get(&id).copied().unwrap_or_default();
        let density = if chars == 0 {
            0.0
        } else {
            links as f64 / chars as f64
        };
        s * (1.0 - density)
    };
    let (top, best) = scores
        .keys()
        .map(|&id| (id, final_score(id)))
        .max_by(|a, b| a.1.total_cmp(&b.1).then_with(|| b.0.cmp(&a.0)))?;
    if best <= 0.0 {
        return None;
    }
    let top_node = doc.tree.get(top)?;
    let Some(parent) = top_node.parent() else {
        return Some(vec![top_node]);
    };
    let threshold = (best * 0.2).max(10.0);
    let mut out = Vec::new();
    for sib in parent.children() {
        if skip.contains(&sib.id()) {
            continue;
        }
        let keep = sib.id() == top || final_score(sib.id()) >= threshold || {
            let (chars, links, _) = counts.get(&sib.id()).copied().unwrap_or_default();
            let is_p = sib.value().as_element().is_some_and(|e| e.name() == "p");
            is_p && chars > 80 && (links as f64) < 0.25 * chars as f64
        };
        if keep {
            out.push(sib);
        }
    }
    Some(out)
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
