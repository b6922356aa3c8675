//! Architecture checks on `src/`, std only (no crate dependency, not even
//! on the library): every `.rs` file is read, the crate modules it imports
//! are worked out, and the test fails when
//!
//! * the file-level import graph has a cycle between modules neither of
//!   which contains the other (parent <-> child imports are one unit), or
//! * a module under a layer folder imports a folder it must not.
//!
//! Layers, lowest first: `config` < `net` < `ops` < `google` < `policy` <
//! `control` < `proxy`; `ca` may import `config`, `net`, `ops` and only
//! `proxy` may import it. `emulator` and `demo` are tools: they may import
//! anything, no layer may import them. The crate root (`lib.rs`, `main.rs`)
//! and top-level modules outside these folders are not constrained.
//!
//! What counts as an import: every `crate::…`, `super::…` and `self::…` path
//! in the code (in `use` items, grouped `use crate::{a, b::{c, d}}` over
//! several lines, or inline like `crate::ops::metrics::global()`), resolved
//! to the longest prefix that is a module with its own file. Comments and
//! string literals are blanked out first. Test code is skipped: files named
//! `tests.rs`, modules declared `#[cfg(test)] mod x;`, and the bodies of
//! `#[cfg(test)] mod x { … }` / `#[cfg(test)] use …;`.
//!
//! Standalone: `CARGO_MANIFEST_DIR=$PWD rustc --edition 2021 --test
//! tests/layers.rs -o /tmp/layers && /tmp/layers`

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;

// ------------------------------------------------------------------ rules

/// Each layer folder and the folders it may import (its own included).
const LAYERS: &[(&str, &[&str])] = &[
    ("config", &["config"]),
    ("net", &["config", "net"]),
    ("ops", &["config", "net", "ops"]),
    ("google", &["config", "net", "ops", "google"]),
    ("policy", &["config", "net", "ops", "google", "policy"]),
    (
        "control",
        &["config", "net", "ops", "google", "policy", "control"],
    ),
    ("ca", &["config", "net", "ops", "ca"]),
    (
        "proxy",
        &[
            "config", "net", "ops", "google", "policy", "control", "ca", "proxy",
        ],
    ),
];

/// Tools: may import anything; no layer may import them.
const TOOLS: &[&str] = &["emulator", "demo"];

fn is_layer(folder: &str) -> bool {
    LAYERS.iter().any(|(l, _)| *l == folder)
}

/// Whether a module in top-level folder `from` may import one in `to`
/// (`None`: the crate root, unconstrained both ways).
fn may_import(from: Option<&str>, to: Option<&str>) -> bool {
    let (Some(from), Some(to)) = (from, to) else {
        return true;
    };
    if from == to || TOOLS.contains(&from) {
        return true;
    }
    let Some((_, allowed)) = LAYERS.iter().find(|(l, _)| *l == from) else {
        return true; // a top-level module outside the named folders
    };
    if TOOLS.contains(&to) {
        return false;
    }
    !is_layer(to) || allowed.contains(&to)
}

fn allowed_list(from: &str) -> String {
    match LAYERS.iter().find(|(l, _)| *l == from) {
        Some((_, a)) => a.join(", "),
        None => "anything".into(),
    }
}

// --------------------------------------------------------------- modules

type ModPath = Vec<String>;

fn show(m: &[String]) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

fn is_prefix(a: &[String], b: &[String]) -> bool {
    a.len() <= b.len() && a == &b[..a.len()]
}

/// The module a file under `src/` defines: `a.rs`, `a/mod.rs` -> `a`;
/// `a/b.rs` -> `a::b`; `lib.rs`, `main.rs` -> the crate root. `None` for
/// `src/bin/…` (other crate roots) and non-`.rs` files.
fn module_of(rel_in_src: &str) -> Option<ModPath> {
    let parts: Vec<&str> = rel_in_src.split('/').collect();
    let (file, dirs) = parts.split_last()?;
    let stem = file.strip_suffix(".rs")?;
    if dirs.first() == Some(&"bin") {
        return None;
    }
    let mut m: ModPath = dirs.iter().map(|s| s.to_string()).collect();
    if dirs.is_empty() && (stem == "lib" || stem == "main") {
        return Some(m);
    }
    if stem != "mod" {
        m.push(stem.to_string());
    }
    Some(m)
}

// ---------------------------------------------------------------- lexing

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The source with comments and string/char literals replaced by spaces
/// (newlines kept, so line numbers still match).
fn blank_comments_and_strings(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let blank = |ch: char| if ch == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        let next = c.get(i + 1).copied();
        let token_start = i == 0 || !is_ident_char(c[i - 1]);
        if ch == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if ch == '/' && next == Some('*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(c[i]));
                    i += 1;
                }
            }
        } else if let Some(end) = raw_string_end(&c, i).filter(|_| token_start) {
            while i < end {
                out.push(blank(c[i]));
                i += 1;
            }
        } else if ch == '"' {
            out.push(' ');
            i += 1;
            while i < c.len() {
                let d = c[i];
                out.push(blank(d));
                i += 1;
                if d == '\\' && i < c.len() {
                    out.push(blank(c[i]));
                    i += 1;
                } else if d == '"' {
                    break;
                }
            }
        } else if ch == '\'' && next == Some('\\') {
            // '\n', '\'', '\u{..}'
            out.push_str("  ");
            i += 2;
            if i < c.len() {
                out.push(' ');
                i += 1;
            }
            while i < c.len() && c[i] != '\'' && c[i] != '\n' {
                out.push(' ');
                i += 1;
            }
            if i < c.len() && c[i] == '\'' {
                out.push(' ');
                i += 1;
            }
        } else if ch == '\'' && c.get(i + 2) == Some(&'\'') && next != Some('\n') {
            // 'x' (a lifetime `'a` is never followed by a quote)
            out.push_str("   ");
            i += 3;
        } else {
            out.push(ch);
            i += 1;
        }
    }
    out
}

/// If a raw string (`r"…"`, `r#"…"#`, `br#"…"#`, `cr"…"`) starts at `i`,
/// the index just past it.
fn raw_string_end(c: &[char], i: usize) -> Option<usize> {
    let mut j = i;
    if matches!(c.get(j), Some('b') | Some('c')) {
        j += 1;
    }
    if c.get(j) != Some(&'r') {
        return None;
    }
    j += 1;
    let mut hashes = 0;
    while c.get(j) == Some(&'#') {
        hashes += 1;
        j += 1;
    }
    if c.get(j) != Some(&'"') {
        return None;
    }
    j += 1;
    while j < c.len() {
        if c[j] == '"' && (1..=hashes).all(|k| c.get(j + k) == Some(&'#')) {
            return Some(j + 1 + hashes);
        }
        j += 1;
    }
    Some(c.len())
}

#[derive(Debug, Clone)]
struct Tok {
    text: String,
    line: usize,
}

impl Tok {
    fn is_ident(&self) -> bool {
        self.text
            .chars()
            .next()
            .is_some_and(|c| c.is_alphabetic() || c == '_')
    }
}

/// Identifiers, numbers, `::`, and single punctuation characters.
fn tokenize(clean: &str) -> Vec<Tok> {
    let c: Vec<char> = clean.chars().collect();
    let mut toks = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if is_ident_char(ch) {
            let start = i;
            while i < c.len() && is_ident_char(c[i]) {
                i += 1;
            }
            toks.push(Tok {
                text: c[start..i].iter().collect(),
                line,
            });
        } else if ch == ':' && c.get(i + 1) == Some(&':') {
            toks.push(Tok {
                text: "::".into(),
                line,
            });
            i += 2;
        } else {
            toks.push(Tok {
                text: ch.to_string(),
                line,
            });
            i += 1;
        }
    }
    toks
}

// --------------------------------------------------------------- parsing

/// What one file imports.
#[derive(Debug, Default)]
struct Parsed {
    /// Absolute module/item paths (`crate::` stripped), each with the
    /// line of the token naming each prefix: `lines[k]` for the first `k`
    /// segments (`lines[0]`: the `crate`/`super`/`self` token).
    imports: Vec<(ModPath, Vec<usize>)>,
    /// Children declared `#[cfg(test)] mod x;` (test-only files).
    test_children: Vec<String>,
    /// The file starts with `#![cfg(test)]`.
    test_only: bool,
}

fn text(t: &[Tok], i: usize) -> &str {
    t.get(i).map_or("", |t| t.text.as_str())
}

/// Index just past the bracket that closes the one at `i`.
fn skip_balanced(t: &[Tok], i: usize) -> usize {
    let (open, close) = match text(t, i) {
        "{" => ("{", "}"),
        "[" => ("[", "]"),
        "(" => ("(", ")"),
        _ => return i + 1,
    };
    let mut depth = 0;
    let mut j = i;
    while j < t.len() {
        if t[j].text == open {
            depth += 1;
        } else if t[j].text == close {
            depth -= 1;
            if depth == 0 {
                return j + 1;
            }
        }
        j += 1;
    }
    t.len()
}

/// `#[cfg(test)]` or `#![cfg(test)]` at `i`: (inner, index past it).
fn cfg_test_at(t: &[Tok], i: usize) -> Option<(bool, usize)> {
    let mut j = i + 1;
    let inner = text(t, j) == "!";
    if inner {
        j += 1;
    }
    let pat = ["[", "cfg", "(", "test", ")", "]"];
    if pat.iter().enumerate().all(|(k, p)| text(t, j + k) == *p) {
        Some((inner, j + pat.len()))
    } else {
        None
    }
}

/// One use tree (or inline path) starting at `i`, flattened into paths.
fn parse_tree(
    t: &[Tok],
    i: &mut usize,
    mut segs: Vec<(String, usize)>,
    out: &mut Vec<Vec<(String, usize)>>,
) {
    while let Some(tok) = t.get(*i) {
        if tok.is_ident() {
            segs.push((tok.text.clone(), tok.line));
            *i += 1;
            if text(t, *i) == "::" {
                *i += 1;
                continue;
            }
            if text(t, *i) == "as" {
                *i += 2;
            }
        } else if tok.text == "{" {
            *i += 1;
            loop {
                match text(t, *i) {
                    "" => return,
                    "}" => {
                        *i += 1;
                        return;
                    }
                    "," => *i += 1,
                    _ => {
                        let before = *i;
                        parse_tree(t, i, segs.clone(), out);
                        if *i == before {
                            *i += 1;
                        }
                    }
                }
            }
        } else if tok.text == "*" {
            *i += 1;
        }
        break;
    }
    if !segs.is_empty() {
        out.push(segs);
    }
}

/// `crate::`/`super::`/`self::` segments made absolute from module `here`,
/// with the line of the token behind each prefix (see `Parsed::imports`).
fn absolute(segs: &[(String, usize)], here: &[String]) -> Option<(ModPath, Vec<usize>)> {
    let ((first, line), rest) = segs.split_first()?;
    let mut out: ModPath = match first.as_str() {
        "crate" => Vec::new(),
        "self" => here.to_vec(),
        "super" => {
            let mut m = here.to_vec();
            m.pop()?;
            m
        }
        _ => return None,
    };
    let mut lines = vec![*line; out.len() + 1];
    for (s, line) in rest {
        match s.as_str() {
            "self" => {}
            "super" => {
                out.pop()?;
                lines.pop();
            }
            "crate" => return None,
            _ => {
                out.push(s.clone());
                lines.push(*line);
            }
        }
    }
    Some((out, lines))
}

/// The crate paths a file at module `module` uses, outside test code.
fn parse(src: &str, module: &[String]) -> Parsed {
    let t = tokenize(&blank_comments_and_strings(src));
    let mut p = Parsed::default();
    // Inline `mod x { … }` blocks we are in: (name, brace depth inside it).
    let mut scope: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < t.len() {
        match t[i].text.as_str() {
            "{" => {
                depth += 1;
                i += 1;
            }
            "}" => {
                if scope.last().is_some_and(|s| s.1 == depth) {
                    scope.pop();
                }
                depth = depth.saturating_sub(1);
                i += 1;
            }
            "#" => match cfg_test_at(&t, i) {
                Some((true, _)) if depth == 0 => {
                    p.test_only = true;
                    return p;
                }
                Some((true, mut j)) => {
                    // The rest of this inline module is test code: stop
                    // before the brace that closes it.
                    let mut d = 0i32;
                    while j < t.len() {
                        match t[j].text.as_str() {
                            "{" => d += 1,
                            "}" if d == 0 => break,
                            "}" => d -= 1,
                            _ => {}
                        }
                        j += 1;
                    }
                    i = j;
                }
                Some((false, mut j)) => {
                    while text(&t, j) == "#" && text(&t, j + 1) == "[" {
                        j = skip_balanced(&t, j + 1);
                    }
                    if text(&t, j) == "pub" {
                        j += 1;
                        if text(&t, j) == "(" {
                            j = skip_balanced(&t, j);
                        }
                    }
                    i = match text(&t, j) {
                        "mod" if text(&t, j + 2) == "{" => skip_balanced(&t, j + 2),
                        "mod" if text(&t, j + 2) == ";" => {
                            p.test_children.push(text(&t, j + 1).to_string());
                            j + 3
                        }
                        "use" => {
                            while j < t.len() && t[j].text != ";" {
                                j += 1;
                            }
                            j
                        }
                        _ => j, // a test-only fn/impl/…: scanned as usual
                    };
                }
                None => i += 1,
            },
            "mod" if t.get(i + 1).is_some_and(Tok::is_ident) && text(&t, i + 2) == "{" => {
                scope.push((t[i + 1].text.clone(), depth + 1));
                i += 2;
            }
            "crate" | "super" | "self"
                if text(&t, i + 1) == "::" && (i == 0 || t[i - 1].text != "::") =>
            {
                let mut here: ModPath = module.to_vec();
                here.extend(scope.iter().map(|s| s.0.clone()));
                let mut paths = Vec::new();
                parse_tree(&t, &mut i, Vec::new(), &mut paths);
                p.imports
                    .extend(paths.iter().filter_map(|segs| absolute(segs, &here)));
            }
            _ => i += 1,
        }
    }
    p
}

// ----------------------------------------------------------------- graph

#[derive(Debug, Clone)]
struct Evidence {
    file: String,
    line: usize,
    code: String,
}

impl std::fmt::Display for Evidence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.code)
    }
}

#[derive(Debug, Default)]
struct Graph {
    /// Module -> the files that define it (the root has lib.rs and main.rs).
    modules: BTreeMap<ModPath, Vec<String>>,
    /// (importer, imported) -> where, for every pair of distinct modules.
    edges: BTreeMap<(ModPath, ModPath), Vec<Evidence>>,
}

/// `files`: (path relative to the crate, e.g. `src/a/b.rs`; contents).
fn build(files: &[(String, String)]) -> Result<Graph, String> {
    let mut parsed = Vec::new();
    let mut excluded: Vec<ModPath> = Vec::new();
    let mut defined: BTreeMap<ModPath, Vec<String>> = BTreeMap::new();
    for (rel, src) in files {
        let Some(in_src) = rel.strip_prefix("src/") else {
            continue;
        };
        let Some(module) = module_of(in_src) else {
            continue;
        };
        let p = parse(src, &module);
        if p.test_only || module.last().is_some_and(|s| s == "tests") {
            excluded.push(module.clone());
        }
        for child in &p.test_children {
            let mut m = module.clone();
            m.push(child.clone());
            excluded.push(m);
        }
        defined.entry(module.clone()).or_default().push(rel.clone());
        parsed.push((rel, src, module, p));
    }
    for (m, files) in &defined {
        if !m.is_empty() && files.len() > 1 {
            return Err(format!(
                "module `{}` is defined twice: {}",
                show(m),
                files.join(", ")
            ));
        }
    }
    let is_test = |m: &ModPath| excluded.iter().any(|e| !e.is_empty() && is_prefix(e, m));
    let mut g = Graph::default();
    g.modules.insert(Vec::new(), Vec::new());
    for (m, files) in defined {
        if !is_test(&m) {
            g.modules.entry(m).or_default().extend(files);
        }
    }
    for (rel, src, module, p) in parsed {
        if is_test(&module) {
            continue;
        }
        let lines: Vec<&str> = src.lines().collect();
        for (path, path_lines) in p.imports {
            let target = (0..=path.len())
                .rev()
                .map(|n| path[..n].to_vec())
                .find(|m| g.modules.contains_key(m))
                .unwrap_or_default();
            if target == module {
                continue;
            }
            // The line naming the imported module (in a `use` group over
            // several lines, `use crate::config::{` rather than an item).
            let line = path_lines[target.len()];
            let mut code = lines.get(line - 1).map_or("", |l| l.trim()).to_string();
            if code.chars().count() > 110 {
                code = code.chars().take(107).collect::<String>() + "...";
            }
            let ev = g.edges.entry((module.clone(), target)).or_default();
            if !ev.iter().any(|e| e.line == line) {
                ev.push(Evidence {
                    file: rel.clone(),
                    line,
                    code,
                });
            }
        }
    }
    Ok(g)
}

/// Import cycles between modules neither of which contains the other: for
/// every import that lies on a cycle, a shortest cycle through it, skipping
/// cycles whose imports are all shown already. Shortest first.
fn find_cycles(g: &Graph) -> Vec<Vec<ModPath>> {
    let nodes: Vec<&ModPath> = g.modules.keys().collect();
    let idx: BTreeMap<&ModPath, usize> = nodes.iter().enumerate().map(|(i, m)| (*m, i)).collect();
    let mut adj: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); nodes.len()];
    for (a, b) in g.edges.keys() {
        if !is_prefix(a, b) && !is_prefix(b, a) {
            adj[idx[a]].insert(idx[b]);
        }
    }
    let comp = sccs(&adj);
    // Shortest path from `from` to `to` inside their component.
    let path = |from: usize, to: usize| -> Option<Vec<usize>> {
        let mut prev = vec![usize::MAX; nodes.len()];
        let mut q = VecDeque::from([from]);
        prev[from] = from;
        while let Some(u) = q.pop_front() {
            if u == to {
                let mut p = vec![to];
                let mut x = to;
                while x != from {
                    x = prev[x];
                    p.push(x);
                }
                p.reverse();
                return Some(p);
            }
            for &v in &adj[u] {
                if prev[v] == usize::MAX && comp[v] == comp[from] {
                    prev[v] = u;
                    q.push_back(v);
                }
            }
        }
        None
    };
    let mut candidates: BTreeSet<(usize, Vec<usize>)> = BTreeSet::new();
    for (u, outs) in adj.iter().enumerate() {
        for &v in outs {
            if comp[u] != comp[v] {
                continue;
            }
            let Some(mut cyc) = path(v, u) else { continue };
            cyc.insert(0, u); // u -> v -> … -> u, without repeating u
            cyc.pop();
            let min = (0..cyc.len()).min_by_key(|&k| nodes[cyc[k]]).unwrap();
            cyc.rotate_left(min);
            candidates.insert((cyc.len(), cyc));
        }
    }
    let mut covered: BTreeSet<(usize, usize)> = BTreeSet::new();
    let mut out = Vec::new();
    for (_, cyc) in candidates {
        let hops: Vec<(usize, usize)> = (0..cyc.len())
            .map(|k| (cyc[k], cyc[(k + 1) % cyc.len()]))
            .collect();
        if hops.iter().all(|h| covered.contains(h)) {
            continue;
        }
        covered.extend(hops);
        let mut named: Vec<ModPath> = cyc.iter().map(|&k| nodes[k].clone()).collect();
        named.push(named[0].clone());
        out.push(named);
    }
    out
}

/// Strongly connected component id of every node (Tarjan).
fn sccs(adj: &[BTreeSet<usize>]) -> Vec<usize> {
    struct T<'a> {
        adj: &'a [BTreeSet<usize>],
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on: Vec<bool>,
        stack: Vec<usize>,
        comp: Vec<usize>,
        next: usize,
        ncomp: usize,
    }
    fn visit(t: &mut T, u: usize) {
        t.index[u] = Some(t.next);
        t.low[u] = t.next;
        t.next += 1;
        t.stack.push(u);
        t.on[u] = true;
        for v in t.adj[u].clone() {
            match t.index[v] {
                None => {
                    visit(t, v);
                    t.low[u] = t.low[u].min(t.low[v]);
                }
                Some(iv) if t.on[v] => t.low[u] = t.low[u].min(iv),
                _ => {}
            }
        }
        if Some(t.low[u]) == t.index[u] {
            while let Some(w) = t.stack.pop() {
                t.on[w] = false;
                t.comp[w] = t.ncomp;
                if w == u {
                    break;
                }
            }
            t.ncomp += 1;
        }
    }
    let n = adj.len();
    let mut t = T {
        adj,
        index: vec![None; n],
        low: vec![0; n],
        on: vec![false; n],
        stack: Vec::new(),
        comp: vec![0; n],
        next: 0,
        ncomp: 0,
    };
    for u in 0..n {
        if t.index[u].is_none() {
            visit(&mut t, u);
        }
    }
    t.comp
}

fn cycle_report(g: &Graph) -> Option<String> {
    let cycles = find_cycles(g);
    if cycles.is_empty() {
        return None;
    }
    let mut s = format!(
        "{} import cycle(s) between modules of src/ (imports between a module and its own \
         parent/child are not counted); break each by moving the shared item down a layer:\n",
        cycles.len()
    );
    for c in &cycles {
        let chain: Vec<String> = c.iter().map(|m| show(m)).collect();
        s += &format!("\n  {}\n", chain.join(" -> "));
        for hop in c.windows(2) {
            let ev = &g.edges[&(hop[0].clone(), hop[1].clone())];
            let more = if ev.len() > 1 {
                format!("  (+{} more)", ev.len() - 1)
            } else {
                String::new()
            };
            s += &format!("      {}{more}\n", ev[0]);
        }
    }
    Some(s)
}

fn layer_report(g: &Graph) -> Option<String> {
    let folder = |m: &ModPath| m.first().cloned();
    let mut s = String::new();
    let mut n = 0;
    for ((from, to), ev) in &g.edges {
        let (ff, tf) = (folder(from), folder(to));
        if may_import(ff.as_deref(), tf.as_deref()) {
            continue;
        }
        let (ff, tf) = (ff.unwrap(), tf.unwrap());
        n += 1;
        s += &format!(
            "\n  {} (folder `{ff}`) imports {} (folder `{tf}`, {}); `{ff}` may import only: {}\n",
            show(from),
            show(to),
            g.modules[to].join(", "),
            allowed_list(&ff),
        );
        for e in ev {
            s += &format!("      {e}\n");
        }
    }
    (n > 0).then(|| {
        format!(
            "{n} layer violation(s) (order: config < net < ops < google < policy < control < \
             proxy; ca above net/ops, below proxy; emulator/demo are tools):\n{s}"
        )
    })
}

// ----------------------------------------------------------------- the tree

fn read_src() -> Vec<(String, String)> {
    fn walk(dir: &Path, rel: &str, out: &mut Vec<(String, String)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .map(|e| e.unwrap())
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            let rel = format!("{rel}/{name}");
            if path.is_dir() {
                walk(&path, &rel, out);
            } else if name.ends_with(".rs") {
                let text = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
                out.push((rel, text));
            }
        }
    }
    let mut out = Vec::new();
    walk(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        "src",
        &mut out,
    );
    assert!(!out.is_empty(), "no .rs files under src/");
    out
}

fn src_graph() -> Graph {
    let g = build(&read_src()).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        g.modules.len() > 1 && !g.edges.is_empty(),
        "no modules or imports found in src/"
    );
    g
}

#[test]
fn src_has_no_import_cycles() {
    if let Some(r) = cycle_report(&src_graph()) {
        panic!("\n{r}");
    }
}

#[test]
fn src_respects_layers() {
    if let Some(r) = layer_report(&src_graph()) {
        panic!("\n{r}");
    }
}

// ------------------------------------------------- tests of the checker

#[cfg(test)]
mod checker {
    use super::*;

    fn m(s: &str) -> ModPath {
        if s == "crate" {
            Vec::new()
        } else {
            s.split("::").map(String::from).collect()
        }
    }

    /// The imports of `src` in module `module`, as `a::b` strings.
    fn imports(module: &str, src: &str) -> Vec<String> {
        parse(src, &m(module))
            .imports
            .into_iter()
            .map(|(p, _)| show(&p))
            .collect()
    }

    fn graph(files: &[(&str, &str)]) -> Graph {
        let files: Vec<(String, String)> = files
            .iter()
            .map(|(p, s)| (p.to_string(), s.to_string()))
            .collect();
        build(&files).unwrap()
    }

    fn chains(g: &Graph) -> Vec<String> {
        find_cycles(g)
            .iter()
            .map(|c| c.iter().map(|m| show(m)).collect::<Vec<_>>().join(" -> "))
            .collect()
    }

    #[test]
    fn module_paths_from_file_paths() {
        assert_eq!(module_of("a.rs"), Some(m("a")));
        assert_eq!(module_of("a/mod.rs"), Some(m("a")));
        assert_eq!(module_of("a/b.rs"), Some(m("a::b")));
        assert_eq!(module_of("lib.rs"), Some(m("crate")));
        assert_eq!(module_of("main.rs"), Some(m("crate")));
        assert_eq!(module_of("bin/tool.rs"), None);
        assert_eq!(module_of("a/notes.md"), None);
    }

    #[test]
    fn grouped_use_over_several_lines() {
        let src = "use crate::{\n    a,\n    b::{c, d as e},\n    f::*,\n};\nuse crate::request::{self, Origin};\n";
        assert_eq!(
            imports("x", src),
            ["a", "b::c", "b::d", "f", "request", "request::Origin"]
        );
        let p = parse(src, &m("x"));
        let lines: Vec<&[usize]> = p.imports.iter().map(|i| &i.1[..]).collect();
        assert_eq!(
            lines,
            [
                &[1, 2][..],
                &[1, 3, 3],
                &[1, 3, 3],
                &[1, 4],
                &[6, 6],
                &[6, 6, 6]
            ]
        );
    }

    #[test]
    fn inline_paths_and_macros() {
        let src = "fn f() { let _ = crate::ops::metrics::global().tunnel(); }\n\
                   fn g() -> crate::net::Body<crate::ops::X> { crate::a::f::<u8>(); $crate::b::m!() }\n\
                   pub(crate) fn h() {}\n";
        assert_eq!(
            imports("x", src),
            [
                "ops::metrics::global",
                "net::Body",
                "ops::X",
                "a::f",
                "b::m"
            ]
        );
    }

    #[test]
    fn super_and_self_are_relative_to_the_module() {
        assert_eq!(imports("a::b", "use super::c::D;"), ["a::c::D"]);
        assert_eq!(imports("a::b", "use super::{c, super::e};"), ["a::c", "e"]);
        assert_eq!(imports("a::b::c", "use super::super::x;"), ["a::x"]);
        assert_eq!(imports("a", "use self::inner::Y;"), ["a::inner::Y"]);
        assert_eq!(imports("a", "use super::Z;"), ["Z"]);
        // super:: inside an inline module is relative to that module.
        assert_eq!(
            imports("a::b", "mod inner { use super::X; }\nuse super::Y;"),
            ["a::b::X", "a::Y"]
        );
        // No parent for the crate root: ignored.
        assert!(imports("crate", "use super::X;").is_empty());
    }

    #[test]
    fn comments_and_strings_make_no_imports() {
        let src = r####"
//! Module docs mention crate::a.
/// Item docs: see `crate::b::thing`.
// use crate::c;
/* use crate::d; /* nested crate::e */ still crate::f */
const S: &str = "crate::g \" crate::h";
const R: &str = r#"crate::i "quoted" crate::j"#;
const B: &[u8] = br##"crate::k"##;
const C: char = '"';
const Q: char = '\'';
fn f<'a>(x: &'a str) -> &'a str { let _ = crate::real::f(); x } // crate::l
"####;
        assert_eq!(imports("x", src), ["real::f"]);
    }

    #[test]
    fn blanking_keeps_lines_and_code() {
        let src = "let a = \"x\ny\"; // c\nlet b = 'q'; let c: &'static str = r\"z\";\n";
        let clean = blank_comments_and_strings(src);
        assert_eq!(clean.lines().count(), src.lines().count());
        assert!(clean.contains("let a ="));
        assert!(clean.contains("&'static str"));
        assert!(!clean.contains('x') && !clean.contains('q') && !clean.contains('z'));
    }

    #[test]
    fn test_code_is_skipped() {
        let src = "use crate::a;\n#[cfg(test)]\nmod tests {\n    use super::*;\n    use crate::b;\n    fn f() { if x { crate::c::f() } }\n}\n\
                   #[cfg(test)]\npub(crate) mod helpers { use crate::d; }\n\
                   #[cfg(test)]\nuse crate::e;\n\
                   #[cfg(test)]\n#[path = \"t.rs\"]\nmod more;\n\
                   use crate::after;\n";
        let p = parse(src, &m("x"));
        let got: Vec<String> = p.imports.iter().map(|(i, _)| show(i)).collect();
        assert_eq!(got, ["a", "after"]);
        assert_eq!(p.test_children, ["more"]);
        assert!(parse("#![cfg(test)]\nuse crate::a;", &m("x")).test_only);
    }

    #[test]
    fn imports_resolve_to_the_longest_module_with_a_file() {
        let g = graph(&[
            ("src/lib.rs", "mod a; mod b; pub use a::Thing;"),
            ("src/a.rs", "use crate::b::c::D; use crate::b::E; fn f() { crate::Thing::new(); crate::a::g(); }\nuse crate::{\n    b::{\n        c::D,\n    },\n};"),
            ("src/b/mod.rs", "pub mod c; pub struct E;"),
            ("src/b/c.rs", "pub struct D;"),
        ]);
        let edges: Vec<String> = g
            .edges
            .keys()
            .map(|(a, b)| format!("{} -> {}", show(a), show(b)))
            .collect();
        assert_eq!(edges, ["a -> crate", "a -> b", "a -> b::c"]);
        let lines =
            |to: &str| -> Vec<usize> { g.edges[&(m("a"), m(to))].iter().map(|e| e.line).collect() };
        assert_eq!(lines("b::c"), [1, 4]);
        assert_eq!(lines("b"), [1]);
    }

    #[test]
    fn test_files_are_left_out() {
        let g = graph(&[
            ("src/lib.rs", "mod a;"),
            (
                "src/a.rs",
                "#[cfg(test)]\nmod tests;\n#[cfg(test)]\nmod fixtures;",
            ),
            ("src/a/tests.rs", "use crate::b::X;"),
            ("src/a/fixtures.rs", "use crate::b::X;"),
            ("src/b.rs", "use crate::a::Y;"),
        ]);
        assert!(!g.modules.contains_key(&m("a::tests")));
        assert!(!g.modules.contains_key(&m("a::fixtures")));
        assert!(find_cycles(&g).is_empty());
    }

    #[test]
    fn cycles_ignore_parent_and_child() {
        let g = graph(&[
            ("src/lib.rs", "mod p; mod q;"),
            ("src/p.rs", "mod c; use self::c::X; use crate::q::Z;"),
            ("src/p/c.rs", "use super::Y; use crate::p::W;"),
            ("src/q.rs", "use crate::p::c::X;"),
        ]);
        // p <-> p::c is one unit; p -> q -> p::c is not a cycle either.
        assert!(find_cycles(&g).is_empty(), "{:?}", chains(&g));
    }

    #[test]
    fn cycles_are_reported_as_chains() {
        let g = graph(&[
            ("src/lib.rs", ""),
            (
                "src/proxy/mod.rs",
                "mod listener; mod tunnel; use crate::config::C;",
            ),
            ("src/proxy/listener.rs", "use crate::proxy::tunnel;"),
            ("src/proxy/tunnel.rs", "use super::listener::ConnPermit;"),
            ("src/config.rs", "fn f() { crate::routes::compile(); }"),
            ("src/routes.rs", "use crate::google::T;"),
            ("src/google.rs", "use crate::config::Config;"),
            ("src/a.rs", "use crate::b::X;"),
            ("src/b.rs", "use crate::c::X; use crate::a::Y;"),
            ("src/c.rs", "use crate::a::X;"),
        ]);
        assert_eq!(
            chains(&g),
            [
                "a -> b -> a",
                "proxy::listener -> proxy::tunnel -> proxy::listener",
                "a -> b -> c -> a",
                "config -> routes -> google -> config",
            ]
        );
        let r = cycle_report(&g).unwrap();
        assert!(
            r.contains("src/proxy/tunnel.rs:1: use super::listener::ConnPermit;"),
            "{r}"
        );
    }

    #[test]
    fn layer_rules() {
        let ok = |a: &str, b: &str| may_import(Some(a), Some(b));
        assert!(ok("proxy", "ca") && ok("proxy", "config") && ok("proxy", "control"));
        assert!(ok("ca", "ops") && ok("ca", "net") && ok("ca", "config"));
        assert!(!ok("ca", "google") && !ok("google", "ca") && !ok("control", "ca"));
        assert!(!ok("config", "net") && !ok("ops", "google") && !ok("control", "proxy"));
        assert!(ok("google", "ops") && ok("policy", "google") && ok("net", "net"));
        assert!(ok("emulator", "proxy") && ok("demo", "emulator") && !ok("net", "emulator"));
        // Outside the named folders: unconstrained.
        assert!(ok("routes", "proxy") && ok("config", "routes"));
        assert!(may_import(None, Some("proxy")) && may_import(Some("config"), None));
    }

    #[test]
    fn layer_violations_name_both_files_and_the_line() {
        let g = graph(&[
            ("src/main.rs", "use crate::proxy::P;"),
            ("src/config/mod.rs", "pub mod load;"),
            (
                "src/config/load.rs",
                "use crate::config::X;\nfn f() {\n    crate::google::principal_email(sa);\n}",
            ),
            ("src/google/mod.rs", "use crate::config::load::L;"),
            ("src/proxy.rs", "use crate::ca::Ca; use crate::google::T;"),
            ("src/ca.rs", "use crate::proxy::Shared;"),
        ]);
        let r = layer_report(&g).unwrap();
        assert!(r.starts_with("2 layer violation(s)"), "{r}");
        assert!(r.contains("config::load (folder `config`) imports google (folder `google`, src/google/mod.rs)"), "{r}");
        assert!(
            r.contains("src/config/load.rs:3: crate::google::principal_email(sa);"),
            "{r}"
        );
        assert!(r.contains("ca (folder `ca`) imports proxy (folder `proxy`, src/proxy.rs); `ca` may import only: config, net, ops, ca"), "{r}");
    }
}
