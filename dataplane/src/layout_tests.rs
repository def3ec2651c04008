//! The crate's layout rules, checked on its own source: no import circle between modules.
//!
//! Every file under `src/` is read, its `use` paths and inline `crate::`/`super::`/child-module
//! paths are resolved (through the `use`s that import it) to the file that defines the item, and each
//! such reference becomes an edge between the two siblings it crosses: `mqtt/session/deliver.rs`
//! using an item of `mqtt/state.rs` is the edge `session -> state` inside `mqtt/`, and an item
//! defined in `mqtt/mod.rs` itself is the sibling `<mod>`. `pub use` lines are the facade, not
//! dependencies; `#[cfg(test)] mod … { }` blocks are skipped.

#![allow(
    clippy::too_many_lines,
    reason = "a test module: the source scanner reads best whole"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The node a directory's own file (`mod.rs`, `lib.rs`, `x.rs` beside `x/`) stands for.
const SELF: &str = "<mod>";

type ModPath = Vec<String>;

struct Module {
    /// Code with comments, strings and `#[cfg(test)]` modules removed.
    code: String,
}

#[test]
fn no_import_circle_between_modules() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules = read_modules(&src);
    let edges = edges(&modules);
    if std::env::var_os("FLEETWARD_PRINT_LAYOUT").is_some() {
        // The graph itself, for a reader redrawing the layout: one directory per line.
        for (dir, graph) in &edges {
            println!("{}: {graph:?}", dir.join("/"));
        }
    }
    let cycles = cycles(&edges);
    assert!(
        cycles.is_empty(),
        "import circles in dataplane/src (break each by moving the shared item to a module both \
         sides may use):\n{}",
        cycles.join("\n")
    );
}

#[test]
fn the_checker_sees_a_circle() {
    // Two siblings that use each other: the checker must report them, or the test above proves
    // nothing.
    let mut modules = BTreeMap::new();
    for (name, code) in [
        ("a", "use crate::b::Thing; pub struct Other;"),
        ("b", "pub struct Thing; fn f() { let _ = super::a::Other; }"),
    ] {
        modules.insert(vec![name.to_string()], Module { code: clean(code) });
    }
    let cycles = cycles(&edges(&modules));
    assert_eq!(cycles, vec!["<crate>: a -> b, b -> a".to_string()]);
}

fn read_modules(src: &Path) -> BTreeMap<ModPath, Module> {
    let mut files = Vec::new();
    collect(src, &mut files);
    let mut modules = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(src).expect("file under src");
        let mut path: ModPath = rel
            .with_extension("")
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if path.last().is_some_and(|l| l == "mod" || l == "lib") {
            path.pop();
        }
        let text = std::fs::read_to_string(&file).expect("source readable");
        modules.insert(path, Module { code: clean(&text) });
    }
    modules
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src readable").flatten() {
        let p = entry.path();
        if p.is_dir() {
            collect(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// Removes comments, string and char literals, and `#[cfg(test)]` inline modules.
fn clean(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            b'r' if (b.get(i + 1) == Some(&b'"') || b.get(i + 1) == Some(&b'#'))
                && (i == 0 || !is_ident(b[i - 1])) =>
            {
                let mut j = i + 1;
                let mut hashes = 0;
                while b.get(j) == Some(&b'#') {
                    hashes += 1;
                    j += 1;
                }
                if b.get(j) != Some(&b'"') {
                    out.push('r');
                    i += 1;
                    continue;
                }
                j += 1;
                let close: Vec<u8> = std::iter::once(b'"')
                    .chain(std::iter::repeat_n(b'#', hashes))
                    .collect();
                while j < b.len() && !b[j..].starts_with(&close) {
                    j += 1;
                }
                out.push_str("\"\"");
                i = j + close.len();
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                out.push_str("\"\"");
                i += 1;
            }
            b'\'' => {
                // A char literal ('x', '\n', '\u{..}') or a lifetime ('a): only the former closes.
                if b.get(i + 1) == Some(&b'\\') {
                    let mut j = i + 2;
                    while j < b.len() && b[j] != b'\'' {
                        j += 1;
                    }
                    i = j + 1;
                } else if let Some(c) = text[i + 1..].chars().next()
                    && text[i + 1 + c.len_utf8()..].starts_with('\'')
                {
                    i += 2 + c.len_utf8();
                } else {
                    out.push('\'');
                    i += 1;
                }
                out.push(' ');
            }
            _ => {
                let c = text[i..].chars().next().expect("in bounds");
                out.push(c);
                i += c.len_utf8();
            }
        }
    }
    strip_test_modules(&out)
}

fn strip_test_modules(code: &str) -> String {
    let mut out = code.to_string();
    while let Some(at) = out.find("#[cfg(test)]") {
        let rest = &out[at + "#[cfg(test)]".len()..];
        let head = rest.trim_start();
        let is_block = ["mod ", "pub mod ", "pub(crate) mod "]
            .iter()
            .any(|p| head.starts_with(p))
            && head
                .find('{')
                .is_some_and(|o| head.find(';').is_none_or(|s| o < s));
        if !is_block {
            // Not an inline test module: drop the attribute only.
            out.replace_range(at..at + "#[cfg(test)]".len(), "");
            continue;
        }
        let open =
            at + "#[cfg(test)]".len() + (rest.len() - head.len()) + head.find('{').unwrap_or(0);
        let mut depth = 0;
        let mut end = out.len();
        for (k, ch) in out[open..].char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + k + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        out.replace_range(at..end, "");
    }
    out
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// A `use` statement: whether it re-exports, and its expanded paths as written.
struct Use {
    public: bool,
    paths: Vec<(Vec<String>, String)>,
}

/// Finds the `use` statements of `code` and returns them with the code that is left.
fn uses(code: &str) -> (Vec<Use>, String) {
    let mut found = Vec::new();
    let mut rest = String::new();
    let mut i = 0;
    let b = code.as_bytes();
    while let Some(off) = code[i..].find("use ") {
        let at = i + off;
        if at > 0 && is_ident(b[at - 1]) {
            rest.push_str(&code[i..at + 4]);
            i = at + 4;
            continue;
        }
        let Some(semi) = code[at..].find(';') else {
            break;
        };
        let before = code[..at].trim_end();
        // `pub use` or `pub(crate) use`: the visibility ends right before `use`.
        let public = before.ends_with("pub")
            || before.rfind("pub(").is_some_and(|p| {
                let vis = &before[p..];
                vis.ends_with(')') && !vis[4..vis.len() - 1].contains([')', ';', '{', '}'])
            });
        let mut paths = Vec::new();
        expand(&code[at + 4..at + semi], Vec::new(), &mut paths);
        found.push(Use { public, paths });
        rest.push_str(&code[i..at]);
        i = at + semi + 1;
    }
    rest.push_str(&code[i..]);
    (found, rest)
}

/// Expands a use tree (`a::{b, c::{d as e}}`) into full paths with the name they bind.
fn expand(tree: &str, prefix: Vec<String>, out: &mut Vec<(Vec<String>, String)>) {
    let tree = tree.trim();
    if tree.is_empty() {
        return;
    }
    if let Some(open) = tree.find('{') {
        let mut prefix = prefix;
        prefix.extend(segments(&tree[..open]));
        let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        let mut depth = 0;
        let mut start = 0;
        for (k, ch) in inner.char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&inner[start..k], prefix.clone(), out);
                    start = k + 1;
                }
                _ => {}
            }
        }
        expand(&inner[start..], prefix, out);
        return;
    }
    let (path, alias) = match tree.split_once(" as ") {
        Some((p, a)) => (p, Some(a.trim().to_string())),
        None => (tree, None),
    };
    let mut full = prefix;
    full.extend(segments(path));
    if full.last().is_some_and(|l| l == "self") {
        full.pop();
    }
    let name = alias.unwrap_or_else(|| full.last().cloned().unwrap_or_default());
    out.push((full, name));
}

fn segments(path: &str) -> impl Iterator<Item = String> + '_ {
    path.split("::")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// Makes a path written in module `at` absolute, or `None` when it names another crate.
fn absolute(at: &ModPath, path: &[String], modules: &BTreeMap<ModPath, Module>) -> Option<ModPath> {
    let first = path.first()?;
    let mut base = match first.as_str() {
        "crate" => Vec::new(),
        "self" => at.clone(),
        "super" => at[..at.len().saturating_sub(1)].to_vec(),
        _ => {
            let mut child = at.clone();
            child.push(first.clone());
            if !modules.contains_key(&child) {
                return None;
            }
            return Some(at.iter().chain(path).cloned().collect());
        }
    };
    let mut rest = &path[1..];
    while rest.first().is_some_and(|s| s == "super") {
        base.pop();
        rest = &rest[1..];
    }
    base.extend(rest.iter().cloned());
    Some(base)
}

/// The module whose file defines what `path` names, following the `use`s that bring it in.
fn resolve(
    path: &[String],
    modules: &BTreeMap<ModPath, Module>,
    exports: &BTreeMap<ModPath, BTreeMap<String, ModPath>>,
    depth: usize,
) -> ModPath {
    let mut cur: ModPath = Vec::new();
    for (k, seg) in path.iter().enumerate() {
        let mut next = cur.clone();
        next.push(seg.clone());
        if modules.contains_key(&next) {
            cur = next;
            continue;
        }
        if depth < 8
            && let Some(target) = exports.get(&cur).and_then(|e| e.get(seg))
        {
            let mut followed = target.clone();
            followed.extend(path[k + 1..].iter().cloned());
            return resolve(&followed, modules, exports, depth + 1);
        }
        break;
    }
    cur
}

/// Sibling-level edges, by directory: `dir -> (from -> {to})`.
type Edges = BTreeMap<ModPath, BTreeMap<String, BTreeSet<String>>>;

fn edges(modules: &BTreeMap<ModPath, Module>) -> Edges {
    let mut exports: BTreeMap<ModPath, BTreeMap<String, ModPath>> = BTreeMap::new();
    let mut refs: Vec<(ModPath, ModPath)> = Vec::new();
    for (at, module) in modules {
        let (found, rest) = uses(&module.code);
        for u in found {
            for (path, name) in u.paths {
                let Some(abs) = absolute(at, &path, modules) else {
                    continue;
                };
                // A name a module imports is not defined there: `super::Name` resolves
                // through it. Only a private `use` is a dependency; a `pub use` is the facade.
                if !u.public {
                    refs.push((at.clone(), abs.clone()));
                }
                if name != "*" {
                    exports.entry(at.clone()).or_default().insert(name, abs);
                }
            }
        }
        for path in inline_paths(&rest) {
            if let Some(abs) = absolute(at, &path, modules) {
                refs.push((at.clone(), abs));
            }
        }
    }
    let mut edges = Edges::new();
    for (from, to) in refs {
        let to = resolve(&to, modules, &exports, 0);
        let mut a = from.clone();
        a.push(SELF.to_string());
        let mut b = to.clone();
        b.push(SELF.to_string());
        let k = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
        if k == a.len() || k == b.len() {
            continue;
        }
        edges
            .entry(a[..k].to_vec())
            .or_default()
            .entry(a[k].clone())
            .or_default()
            .insert(b[k].clone());
    }
    edges
}

/// Paths like `crate::a::b`, `super::x` or `child::f` outside `use` statements.
fn inline_paths(code: &str) -> Vec<Vec<String>> {
    let b = code.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if !is_ident(b[i]) || (i > 0 && (is_ident(b[i - 1]) || b[i - 1] == b':')) {
            i += 1;
            continue;
        }
        let mut segs = Vec::new();
        let mut j = i;
        loop {
            let start = j;
            while j < b.len() && is_ident(b[j]) {
                j += 1;
            }
            if start == j {
                break;
            }
            segs.push(code[start..j].to_string());
            if code[j..].starts_with("::") && b.get(j + 2).is_some_and(|&c| is_ident(c)) {
                j += 2;
            } else {
                break;
            }
        }
        if segs.len() > 1 {
            out.push(segs);
        }
        i = j.max(i + 1);
    }
    out
}

/// Every group of siblings that reach each other (a strongly connected component of more than
/// one), as `dir: a -> b, b -> a` with the edges inside the group, one line each.
fn cycles(edges: &Edges) -> Vec<String> {
    let mut found = Vec::new();
    for (dir, graph) in edges {
        let label = if dir.is_empty() {
            "<crate>".to_string()
        } else {
            dir.join("/")
        };
        let reach = |from: &str| {
            let mut seen = BTreeSet::new();
            let mut todo = vec![from.to_string()];
            while let Some(n) = todo.pop() {
                for next in graph.get(&n).into_iter().flatten() {
                    if seen.insert(next.clone()) {
                        todo.push(next.clone());
                    }
                }
            }
            seen
        };
        let mut grouped = BTreeSet::new();
        for start in graph.keys() {
            if grouped.contains(start) {
                continue;
            }
            let from_start = reach(start);
            if !from_start.contains(start) {
                continue;
            }
            let group: BTreeSet<String> = from_start
                .into_iter()
                .filter(|n| reach(n).contains(start))
                .collect();
            let inside: Vec<String> = group
                .iter()
                .flat_map(|a| {
                    graph[a]
                        .iter()
                        .filter(|b| group.contains(*b))
                        .map(move |b| format!("{a} -> {b}"))
                })
                .collect();
            found.push(format!("{label}: {}", inside.join(", ")));
            grouped.extend(group);
        }
    }
    found
}
