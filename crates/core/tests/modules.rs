//! The modules of `onnx-protect-core` and `onnx-protect-keys` import one another without a
//! circle: this test reads their sources (code only: comments, strings and `#[cfg(test)]`
//! items left out), collects every `crate::`, `super::` and child-module path, and fails
//! on any strongly connected component of more than one module, naming it. A path to an
//! item the crate root re-exports (`crate::Name`) fails too: modules name the module that
//! defines what they use. Core's byte pass and entry matching use nothing of selection.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// `text` with every comment, string and character literal replaced by spaces (line
/// breaks kept), so that braces and paths are the code's own.
fn code_only(text: &str) -> String {
    let b: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |out: &mut String, c: char| out.push(if c == '\n' { '\n' } else { ' ' });
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                blank(&mut out, b[i]);
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, b[i]);
                    i += 1;
                }
            }
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && !ident_char(b.get(i.wrapping_sub(1))) {
            // A raw string: r"…", r#"…"#, …
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                match b.get(j) {
                    None => break,
                    Some('"') if (0..hashes).all(|h| b.get(j + 1 + h) == Some(&'#')) => {
                        j += 1 + hashes;
                        break;
                    }
                    _ => j += 1,
                }
            }
            for &ch in &b[i..j.min(b.len())] {
                blank(&mut out, ch);
            }
            i = j;
        } else if c == '"' {
            blank(&mut out, c);
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    blank(&mut out, b[i]);
                    i += 1;
                }
                if i < b.len() {
                    blank(&mut out, b[i]);
                    i += 1;
                }
            }
            if i < b.len() {
                blank(&mut out, b[i]);
                i += 1;
            }
        } else if c == '\'' && (next == Some('\\') || b.get(i + 2) == Some(&'\'')) {
            // A character literal ('x', '\n', '\u{…}'); a lifetime has no closing quote.
            let mut j = i + 1;
            if b.get(j) == Some(&'\\') {
                j += 2;
            } else {
                j += 1;
            }
            while j < b.len() && b[j] != '\'' {
                j += 1;
            }
            for &ch in &b[i..(j + 1).min(b.len())] {
                blank(&mut out, ch);
            }
            i = j + 1;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn ident_char(c: Option<&char>) -> bool {
    c.is_some_and(|c| c.is_alphanumeric() || *c == '_')
}

/// `code` without the items marked `#[cfg(test)]` (a `use`, a function, a module).
fn without_tests(code: &str) -> String {
    let mut out = code.to_string();
    while let Some(at) = out.find("#[cfg(test)]") {
        let b = out.as_bytes();
        let mut i = at + "#[cfg(test)]".len();
        // The item ends at its first `;` before any `{`, or with the braces it opens.
        let mut depth = 0usize;
        while i < b.len() {
            match b[i] {
                b';' if depth == 0 => {
                    i += 1;
                    break;
                }
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        i += 1;
                        break;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        out.replace_range(at..i, "");
    }
    out
}

/// The module path of a source file (`lib` for the crate root).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("a file of the crate");
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().expect("a file name");
    match last.as_str() {
        "lib.rs" if parts.is_empty() => "lib".into(),
        "mod.rs" => parts.join("::"),
        name => {
            parts.push(name.trim_end_matches(".rs").to_string());
            parts.join("::")
        }
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("a source directory") {
        let path = entry.expect("an entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The identifiers that follow `prefix` in `code` (`crate::` → `a` of `crate::a::b`, or
/// each first segment of `crate::{a::b, c}`), each with the segment after it, if any.
fn paths_after(code: &str, prefix: &str) -> Vec<(String, Option<String>)> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find(prefix) {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let mut segs = item.trim().split("::").map(|s| s.trim().to_string());
                if let Some(first) = segs.next().filter(|s| !s.is_empty()) {
                    found.push((first, segs.next().filter(|s| !s.is_empty() && !s.starts_with('{'))));
                }
            }
            continue;
        }
        let ident: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        let after = rest[ident.len()..]
            .strip_prefix("::")
            .map(|r| r.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>());
        if !ident.is_empty() {
            found.push((ident, after.filter(|s| !s.is_empty())));
        }
    }
    found
}

/// The import graph of the crate whose sources are in `src`: module → modules it uses;
/// and the paths to items of the crate root.
fn graph(src: &Path) -> (BTreeMap<String, BTreeSet<String>>, Vec<String>) {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeMap<String, PathBuf> = files.iter().map(|f| (module_of(src, f), f.clone())).collect();
    let resolve = |base: &str, first: &str, second: Option<&String>| -> Option<String> {
        let join = |a: &str, b: &str| if a.is_empty() { b.to_string() } else { format!("{a}::{b}") };
        let one = join(base, first);
        if let Some(two) = second.map(|s| join(&one, s)).filter(|m| modules.contains_key(m)) {
            return Some(two);
        }
        modules.contains_key(&one).then_some(one)
    };
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut root_items = Vec::new();
    for (module, file) in &modules {
        let code = without_tests(&code_only(&std::fs::read_to_string(file).expect("a source file")));
        let to = edges.entry(module.clone()).or_default();
        if module == "lib" {
            continue; // the root declares the modules and the public API
        }
        let parent = module.rsplit_once("::").map(|(p, _)| p.to_string()).unwrap_or_default();
        for (first, second) in paths_after(&code, "crate::") {
            match resolve("", &first, second.as_ref()) {
                Some(m) => {
                    to.insert(m);
                }
                None => root_items.push(format!("{module}: crate::{first}")),
            }
        }
        for (first, second) in paths_after(&code, "super::") {
            match resolve(&parent, &first, second.as_ref()) {
                Some(m) => to.insert(m),
                None => to.insert(if parent.is_empty() { "lib".into() } else { parent.clone() }),
            };
        }
        // A directory module reaches its children by their names (`self::a::…`, `a::…`).
        let is_dir = file.file_name().is_some_and(|n| n == "mod.rs");
        if is_dir {
            for (first, second) in paths_after(&code, "self::") {
                to.extend(resolve(module, &first, second.as_ref()));
            }
            for child in modules.keys().filter(|m| m.strip_prefix(&format!("{module}::")).is_some()) {
                let name = child.rsplit("::").next().unwrap_or_default();
                if !paths_after(&code, &format!("{name}::")).is_empty() {
                    to.insert(child.clone());
                }
            }
        }
        to.remove(module);
    }
    (edges, root_items)
}

/// The strongly connected components of more than one module (Tarjan's algorithm).
fn circles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on_stack.insert(v);
        let next: Vec<&'a str> = s.edges.get(v).into_iter().flatten().map(String::as_str).collect();
        for w in next {
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut s = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in edges.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.found
}

fn check_crate(dir: &str) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let (edges, root_items) = graph(&src);
    assert!(edges.len() > 3, "{}: too few modules found ({edges:?})", src.display());
    let found = circles(&edges);
    assert!(found.is_empty(), "{}: modules that import one another in a circle: {found:?}", src.display());
    assert!(root_items.is_empty(), "{}: paths to items of the crate root: {root_items:?}", src.display());
}

#[test]
fn core_modules_import_one_another_without_a_circle() {
    check_crate("src");
}

#[test]
fn keys_modules_import_one_another_without_a_circle() {
    check_crate("../keys/src");
}

/// The byte pass (`src/pass/`) and the matching of manifest entries (`src/target.rs`) ask
/// the cipher (`onnx_protect_crypto::Mode`, `fp_mask`) what a mode does, never selection:
/// their code names nothing of `onnx_protect_select`.
#[test]
fn the_byte_pass_and_entry_matching_import_nothing_from_selection() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![src.join("target.rs")];
    rust_files(&src.join("pass"), &mut files);
    assert!(files.len() > 3, "{files:?}");
    let importing: Vec<&PathBuf> = files
        .iter()
        .filter(|f| {
            let code = without_tests(&code_only(&std::fs::read_to_string(f).expect("a source file")));
            code.contains("onnx_protect_select")
        })
        .collect();
    assert!(importing.is_empty(), "modules of the byte pass that use selection: {importing:?}");
}

#[test]
fn the_walker_finds_a_circle_and_leaves_tests_and_comments_out() {
    let code = code_only(
        "use crate::a::X; // crate::b\nlet s = \"crate::c\"; let c = '{';\n#[cfg(test)]\nmod tests { use crate::d; }\n",
    );
    let code = without_tests(&code);
    let found: Vec<String> = paths_after(&code, "crate::").into_iter().map(|(a, _)| a).collect();
    assert_eq!(found, ["a"]);
    let grouped: Vec<String> = paths_after("use crate::{a::B, c};", "crate::").into_iter().map(|(a, _)| a).collect();
    assert_eq!(grouped, ["a", "c"]);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    edges.entry("a".into()).or_default().insert("b".into());
    edges.entry("b".into()).or_default().insert("c".into());
    edges.entry("c".into()).or_default().insert("a".into());
    edges.entry("d".into()).or_default().insert("a".into());
    assert_eq!(circles(&edges), vec![vec!["a".to_string(), "b".into(), "c".into()]]);
    edges.insert("c".into(), BTreeSet::new());
    assert!(circles(&edges).is_empty());
}
