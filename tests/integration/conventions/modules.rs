//! The binary's source layout: one file per command in `src/cmd/`, no command importing
//! another, and no circle of imports among the modules of `src/`. The sources are read as
//! text (comments, strings and `#[cfg(test)]` items left out) for their `crate::` and
//! `super::` paths.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::util::root;

/// `text` with its comments, string and character literals blanked out (line breaks kept),
/// so that the paths and braces left are the code's own.
fn code_only(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = c.clone();
    let ident = |k: usize| k < c.len() && (c[k].is_alphanumeric() || c[k] == '_');
    // The first `pat` at or after `from`, or the end.
    let find = |from: usize, pat: &[char]| (from..c.len()).find(|&k| c[k..].starts_with(pat)).unwrap_or(c.len());
    let mut i = 0;
    while i < c.len() {
        let end = match (c[i], c.get(i + 1).copied().unwrap_or(' ')) {
            ('/', '/') => find(i, &['\n']),
            ('/', '*') => {
                let (mut k, mut depth) = (i, 0);
                while k < c.len() {
                    depth += c[k..].starts_with(&['/', '*']) as i32 - c[k..].starts_with(&['*', '/']) as i32;
                    k += if c[k..].starts_with(&['/', '*']) || c[k..].starts_with(&['*', '/']) { 2 } else { 1 };
                    if depth == 0 {
                        break;
                    }
                }
                k
            }
            ('r', '"' | '#') if !ident(i.wrapping_sub(1)) => {
                let hashes = c[i + 1..].iter().take_while(|&&h| h == '#').count();
                if c.get(i + 1 + hashes) != Some(&'"') {
                    i += 1;
                    continue;
                }
                let close: Vec<char> = std::iter::once('"').chain(std::iter::repeat_n('#', hashes)).collect();
                find(i + 2 + hashes, &close) + close.len()
            }
            ('"', _) => {
                let mut k = i + 1;
                while k < c.len() && c[k] != '"' {
                    k += if c[k] == '\\' { 2 } else { 1 };
                }
                k + 1
            }
            // A character literal; a lifetime (`'a`) has no closing quote.
            ('\'', n) if n == '\\' || c.get(i + 2) == Some(&'\'') => find(i + 2, &['\'']) + 1,
            _ => {
                i += 1;
                continue;
            }
        };
        let end = end.min(c.len());
        out[i..end].iter_mut().filter(|ch| **ch != '\n').for_each(|ch| *ch = ' ');
        i = end;
    }
    out.into_iter().collect()
}

/// `code` without the items marked `#[cfg(test)]`: they end at their first `;` outside
/// braces, or with the braces they open.
fn without_tests(code: &str) -> String {
    let mut out = code.to_string();
    while let Some(at) = out.find("#[cfg(test)]") {
        let (mut end, mut depth) = (at + "#[cfg(test)]".len(), 0);
        for (k, b) in out.bytes().enumerate().skip(end) {
            depth += (b == b'{') as i32 - (b == b'}') as i32;
            end = k + 1;
            if depth == 0 && (b == b';' || b == b'}') {
                break;
            }
        }
        out.replace_range(at..end, "");
    }
    out
}

/// Each path that follows `prefix` in `code` (`crate::a::b`, and each one of a group
/// `crate::{a::b, c}`): its offset and first two segments.
fn paths_after(code: &str, prefix: &str) -> Vec<(usize, Vec<String>)> {
    let mut found = Vec::new();
    for (at, _) in code.match_indices(prefix) {
        if code[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let rest = &code[at + prefix.len()..];
        let group = match rest.strip_prefix('{') {
            Some(g) => g[..g.find('}').unwrap_or(g.len())].split(',').collect(),
            None => vec![rest],
        };
        for path in group {
            let segments = path
                .trim_start()
                .split("::")
                .map(|s| s.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>());
            found.push((at, segments.take_while(|s| !s.is_empty()).take(2).collect()));
        }
    }
    found
}

/// The spans of the inline modules (`mod name { … }`) of `code`, where `super::` is the file's module.
fn inline_modules(code: &str) -> Vec<std::ops::Range<usize>> {
    let b = code.as_bytes();
    let mut spans = Vec::new();
    for (at, _) in code.match_indices("mod ") {
        let name_end = at + 4 + code[at + 4..].find(|c: char| !c.is_alphanumeric() && c != '_').unwrap_or(0);
        let open = name_end + code[name_end..].len() - code[name_end..].trim_start().len();
        if b.get(open) != Some(&b'{') || (at > 0 && (b[at - 1].is_ascii_alphanumeric() || b[at - 1] == b'_')) {
            continue;
        }
        let mut depth = 0;
        let close = (open..b.len()).find(|&k| {
            depth += (b[k] == b'{') as i32 - (b[k] == b'}') as i32;
            depth == 0
        });
        spans.push(open..close.unwrap_or(b.len()));
    }
    spans
}

/// The module graph of the binary's sources (path under `src/`, text): each module (`main`,
/// `cmd`, `cmd::encrypt`, …) with the modules whose paths it names through `crate::` or
/// `super::`, and, for `main.rs` and a `mod.rs`, its own modules by name. A `crate::` path
/// to no module names an item of `main`.
fn module_graph(files: &[(String, String)]) -> BTreeMap<String, BTreeSet<String>> {
    let module_of = |path: &str| match path.trim_end_matches(".rs").trim_end_matches("/mod") {
        "main" => "main".to_string(),
        m => m.replace('/', "::"),
    };
    let modules: BTreeSet<String> = files.iter().map(|(p, _)| module_of(p)).collect();
    let under = |base: &str, segments: &[String]| {
        let join = |m: &str, s: &str| if m == "main" { s.to_string() } else { format!("{m}::{s}") };
        let one = segments.first().map(|s| join(base, s)).filter(|m| modules.contains(m));
        let two = one.as_ref().zip(segments.get(1)).map(|(m, s)| join(m, s)).filter(|m| modules.contains(m));
        two.or(one)
    };
    let mut graph = BTreeMap::new();
    for (path, text) in files {
        let module = module_of(path);
        let code = without_tests(&code_only(text));
        let mut to = BTreeSet::new();
        for (_, segments) in paths_after(&code, "crate::") {
            to.insert(under("main", &segments).unwrap_or_else(|| "main".into()));
        }
        let parent = module.rsplit_once("::").map_or("main", |(p, _)| p).to_string();
        let inline = inline_modules(&code);
        for (at, segments) in paths_after(&code, "super::") {
            let base = if inline.iter().any(|s| s.contains(&at)) { &module } else { &parent };
            to.insert(under(base, &segments).unwrap_or_else(|| base.clone()));
        }
        if path == "main.rs" || path.ends_with("/mod.rs") {
            let children = modules.iter().filter_map(|m| Some(m.strip_prefix(&format!("{module}::"))?.to_string()));
            for child in children.chain(modules.iter().filter(|m| module == "main" && !m.contains("::")).cloned()) {
                for (_, segments) in paths_after(&code, &format!("{child}::")) {
                    let named = [vec![child.clone()], segments].concat();
                    to.extend(under(&module, &named));
                }
            }
        }
        to.remove(&module);
        graph.insert(module, to);
    }
    graph
}

/// What breaks the layout: a command importing another, and each circle of imports.
fn layout_violations(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let command = |m: &str| m.strip_prefix("cmd::").is_some_and(|c| !c.contains("::"));
    let mut found: Vec<String> = graph
        .iter()
        .flat_map(|(m, to)| to.iter().filter(|t| command(m) && command(t)).map(move |t| format!("{m} imports {t}")))
        .collect();
    // Depth first: a module reached again while still on the path closes a circle.
    fn walk(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        found: &mut Vec<String>,
    ) {
        if let Some(at) = path.iter().position(|p| p == m) {
            found.push(format!("circle: {} -> {m}", path[at..].join(" -> ")));
            return;
        }
        if !done.insert(m.to_string()) {
            return;
        }
        path.push(m.to_string());
        for t in graph.get(m).into_iter().flatten() {
            walk(t, graph, path, done, found);
        }
        path.pop();
    }
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        walk(m, graph, &mut Vec::new(), &mut done, &mut found);
    }
    found
}

/// The binary's sources: one file per command in `src/cmd/`, none importing another, and no
/// module of `src/` in a circle of imports.
#[test]
fn commands_import_no_command_and_modules_no_circle() {
    fn read(dir: &Path, src: &Path, out: &mut Vec<(String, String)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                read(&p, src, out);
            } else if p.extension().is_some_and(|e| e == "rs") {
                let rel = p.strip_prefix(src).unwrap().to_string_lossy().replace('\\', "/");
                out.push((rel, std::fs::read_to_string(&p).unwrap()));
            }
        }
    }
    let src = root().join("src");
    let mut files = Vec::new();
    read(&src, &src, &mut files);
    let graph = module_graph(&files);
    let commands = graph.keys().filter(|m| m.starts_with("cmd::")).count();
    assert!(commands >= 15, "src/cmd/ holds {commands} commands: {:?}", graph.keys().collect::<Vec<_>>());
    assert!(graph["main"].len() > 5 && graph.values().filter(|t| !t.is_empty()).count() > 20, "{graph:?}");
    let found = layout_violations(&graph);
    assert!(found.is_empty(), "src/: {found:#?}");
}

/// The walker finds a command importing another (by `crate::` and by `super::`) and a
/// circle, and leaves comments, strings and tests out.
#[test]
fn the_module_walker_finds_imports_between_commands_and_circles() {
    let file = |p: &str, t: &str| (p.to_string(), t.to_string());
    let mut files = vec![
        file("main.rs", "mod cmd; mod keys; fn main() { cmd::a::run(); keys::read(); }"),
        file("cmd/mod.rs", "pub mod a; pub mod b;"),
        file("cmd/a.rs", "use crate::keys::{self, X}; // crate::cmd::b\nfn f() { \"super::b\"; '{'; }\n#[cfg(test)]\nmod t { use super::b; }"),
        file("cmd/b.rs", "mod inner { use super::*; }"),
        file("keys.rs", "pub fn read() {}"),
    ];
    let graph = module_graph(&files);
    assert_eq!(graph["main"], BTreeSet::from(["cmd::a".to_string(), "keys".into()]));
    assert_eq!(graph["cmd::a"], BTreeSet::from(["keys".to_string()]));
    assert!(graph["cmd::b"].is_empty() && layout_violations(&graph).is_empty(), "{graph:?}");
    files[3].1 = "use super::a::run;".into();
    files[4].1 = "use crate::cmd::b;".into();
    let found = layout_violations(&module_graph(&files));
    assert_eq!(found, ["cmd::b imports cmd::a", "circle: cmd::a -> keys -> cmd::b -> cmd::a"]);
}
