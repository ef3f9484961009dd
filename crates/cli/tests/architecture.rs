//! Invariants of the code's shape (ARCHITECTURE.md), checked on the sources:
//!
//! - **Imports point one way.** Within each of these crates no two files
//!   import each other, directly or through others: the `crate::…` and
//!   `super::…` paths of a file (outside its `#[cfg(test)]` part) are
//!   resolved to the deepest module file that exists, and the strongly
//!   connected components of that graph must all be single files (as
//!   `shared/tools/import-cycles.py` counts them: a parent's bare use of
//!   its own child module, `state::X` after `mod state;`, is not an edge).
//! - **The gateway's layers** (`base ← http ← upstream ← proxy ← app`): a
//!   module imports from its own layer or the ones below, never above, and
//!   only through the layers' own paths (not the crate root's re-exports,
//!   which would hide the direction).
//! - **The gateway knows nothing of RAG, the engine nothing of HTTP.**
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const ACYCLIC: &[&str] = &["rag", "node", "models", "cli", "gateway"];

/// The gateway's layers, lowest first.
const GATEWAY_LAYERS: &[&str] = &["base", "http", "upstream", "proxy", "app"];

fn crates_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

type Module = Vec<String>;

fn module_files(src: &Path) -> BTreeMap<Module, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p.strip_prefix(src).unwrap().with_extension("");
                let mut m: Module = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                if matches!(m.last().map(String::as_str), Some("mod" | "lib" | "main")) {
                    m.pop();
                }
                out.insert(m, p);
            }
        }
    }
    out
}

/// The code of a file outside its `#[cfg(test)]` part, comments removed.
fn code_of(text: &str) -> String {
    let code = text.split("#[cfg(test)]").next().unwrap_or("");
    code.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The `crate::`/`super::` paths of a file's non-test code, comments removed.
fn paths_in(text: &str) -> Vec<(bool, Vec<String>)> {
    let code = code_of(text);
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = Vec::new();
    for (root, is_crate) in [("crate::", true), ("super::", false)] {
        let mut rest = code.as_str();
        while let Some(i) = rest.find(root) {
            let before = rest[..i].chars().next_back();
            rest = &rest[i + root.len()..];
            if before.is_some_and(ident) {
                continue;
            }
            // a::b::c or a::{b, c::d}
            let mut segs = Vec::new();
            let mut s = rest;
            loop {
                let n = s.find(|c: char| !ident(c)).unwrap_or(s.len());
                if n == 0 {
                    break;
                }
                segs.push(s[..n].to_string());
                s = &s[n..];
                if let Some(t) = s.strip_prefix("::") {
                    s = t;
                } else {
                    break;
                }
            }
            if let Some(group) = s.strip_prefix('{') {
                let group = &group[..group.find('}').unwrap_or(group.len())];
                for item in group.split(',') {
                    let mut full = segs.clone();
                    full.extend(
                        item.trim()
                            .split("::")
                            .map(|x| x.trim().to_string())
                            .filter(|x| !x.is_empty() && x.chars().all(ident)),
                    );
                    out.push((is_crate, full));
                }
            } else {
                out.push((is_crate, segs));
            }
        }
    }
    out
}

fn import_graph(src: &Path) -> BTreeMap<Module, BTreeSet<Module>> {
    let mods = module_files(src);
    let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (m, p) in &mods {
        let text = std::fs::read_to_string(p).unwrap();
        let e = edges.entry(m.clone()).or_default();
        for (is_crate, segs) in paths_in(&text) {
            let mut full: Module = if is_crate {
                Vec::new()
            } else {
                m[..m.len().saturating_sub(1)].to_vec()
            };
            full.extend(segs);
            let target = (0..=full.len())
                .rev()
                .map(|i| full[..i].to_vec())
                .find(|cand| mods.contains_key(cand));
            if let Some(t) = target {
                if &t != m && !t.is_empty() {
                    e.insert(t);
                }
            }
        }
    }
    edges
}

/// Imports that point from a gateway layer to a layer above it, and
/// `crate::` paths that skip the layers (the crate root's re-exports).
fn layer_violations(src: &Path) -> Vec<String> {
    let rank = |m: &Module| {
        m.first()
            .and_then(|l| GATEWAY_LAYERS.iter().position(|x| x == l))
    };
    let mut out = Vec::new();
    for (m, targets) in import_graph(src) {
        let Some(from) = rank(&m) else {
            continue;
        };
        for t in targets {
            match rank(&t) {
                Some(to) if to <= from => {}
                _ => out.push(format!("{} imports {}", m.join("/"), t.join("/"))),
            }
        }
    }
    for (m, p) in module_files(src) {
        if m.is_empty() {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        for (is_crate, segs) in paths_in(&text) {
            let first = segs.first().map(String::as_str).unwrap_or("");
            if is_crate && !GATEWAY_LAYERS.contains(&first) {
                out.push(format!("{} uses crate::{}", m.join("/"), segs.join("::")));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Strongly connected components with more than one file (Tarjan).
fn cycles(edges: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<Module>> {
    struct T<'a> {
        edges: &'a BTreeMap<Module, BTreeSet<Module>>,
        index: BTreeMap<&'a Module, usize>,
        low: BTreeMap<&'a Module, usize>,
        stack: Vec<&'a Module>,
        on: BTreeSet<&'a Module>,
        out: Vec<Vec<Module>>,
    }
    fn strong<'a>(t: &mut T<'a>, v: &'a Module) {
        let i = t.index.len();
        t.index.insert(v, i);
        t.low.insert(v, i);
        t.stack.push(v);
        t.on.insert(v);
        for w in t.edges.get(v).into_iter().flatten() {
            let Some((w, _)) = t.edges.get_key_value(w) else {
                continue;
            };
            if !t.index.contains_key(w) {
                strong(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                comp.push(w.clone());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !t.index.contains_key(v) {
            strong(&mut t, v);
        }
    }
    t.out
}

#[test]
fn no_import_cycles_between_files() {
    let mut found = Vec::new();
    for c in ACYCLIC {
        for comp in cycles(&import_graph(&crates_dir().join(c).join("src"))) {
            let names: Vec<String> = comp.iter().map(|m| m.join("/")).collect();
            found.push(format!("crates/{c}: {}", names.join(" ")));
        }
    }
    assert!(
        found.is_empty(),
        "import cycles (break them with a layer or a narrower interface):\n{}",
        found.join("\n")
    );
}

/// The checker itself finds a cycle (so the test above can fail).
#[test]
fn the_cycle_check_sees_a_cycle() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("api")).unwrap();
    std::fs::write(dir.path().join("lib.rs"), "mod api; mod state;\n").unwrap();
    std::fs::write(dir.path().join("api/mod.rs"), "pub mod chat;\n").unwrap();
    std::fs::write(
        dir.path().join("api/chat.rs"),
        "use crate::state::{AppState, x::Y};\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("state.rs"),
        "// use crate::nothing;\nfn f() { super::api::chat::go() }\n#[cfg(test)]\nuse crate::lib;\n",
    )
    .unwrap();
    let found = cycles(&import_graph(dir.path()));
    assert_eq!(
        found,
        vec![vec![
            vec!["api".to_string(), "chat".to_string()],
            vec!["state".to_string()]
        ]]
    );
}

#[test]
fn gateway_layers_import_only_downwards() {
    let found = layer_violations(&crates_dir().join("gateway").join("src"));
    assert!(
        found.is_empty(),
        "imports against the gateway's layering (base ← http ← upstream ← proxy ← app):\n{}",
        found.join("\n")
    );
}

/// The layer check sees an upward import and a root re-export used as a
/// shortcut.
#[test]
fn the_layer_check_sees_violations() {
    let dir = tempfile::tempdir().unwrap();
    let w = |p: &str, t: &str| {
        let p = dir.path().join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, t).unwrap();
    };
    w(
        "lib.rs",
        "pub mod base; pub mod http;\npub use http::conn;\n",
    );
    w("base/mod.rs", "pub mod clock;\n");
    w("base/clock.rs", "use crate::http::conn::Handler;\n");
    w("http/mod.rs", "pub mod conn;\npub use conn::Handler;\n");
    w(
        "http/conn.rs",
        "use crate::base::clock::now;\nuse crate::conn::X;\n",
    );
    assert_eq!(
        layer_violations(dir.path()),
        vec![
            "base/clock imports http/conn".to_string(),
            "http/conn uses crate::conn::X".to_string(),
        ]
    );
}

fn dependencies(krate: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(crates_dir().join(krate).join("Cargo.toml")).unwrap();
    let doc: toml::Table = text.parse().unwrap();
    doc.get("dependencies")
        .and_then(|d| d.as_table())
        .map(|t| t.keys().cloned().collect())
        .unwrap_or_default()
}

#[test]
fn the_gateway_knows_nothing_of_rag_and_the_engine_nothing_of_http() {
    let gw = dependencies("gateway");
    assert!(
        gw.iter().all(|d| !d.starts_with("ragfleet-")),
        "the gateway depends on {gw:?}"
    );
    let rag = dependencies("rag");
    for http in ["axum", "hyper", "reqwest", "tower", "tower-http", "http"] {
        assert!(!rag.contains(http), "the engine depends on {http}");
    }
}
