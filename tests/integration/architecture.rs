//! docs/architecture.md's table of crates says what each crate's Cargo.toml says: the
//! workspace crates it depends on (its `[dependencies]`, optional ones included).

use std::collections::BTreeSet;

use crate::util::root;

/// The workspace crates (`onnx-protect-NAME` → `NAME`) in the `[dependencies]` of the
/// Cargo.toml at `path`.
fn workspace_dependencies(path: &std::path::Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut section = "";
    let mut deps = BTreeSet::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
        } else if section == "[dependencies]" {
            if let Some(rest) = line.strip_prefix("onnx-protect-") {
                let name = rest.split(['.', ' ', '=']).next().unwrap_or("");
                deps.insert(name.to_string());
            }
        }
    }
    deps
}

/// The backticked words of `cell` that name a crate of `crates`.
fn crates_named(cell: &str, crates: &BTreeSet<String>) -> BTreeSet<String> {
    cell.split('`').skip(1).step_by(2).filter(|w| crates.contains(*w)).map(str::to_string).collect()
}

#[test]
fn the_crate_table_lists_each_crates_workspace_dependencies() {
    let crates: BTreeSet<String> = std::fs::read_dir(root().join("crates"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let doc = std::fs::read_to_string(root().join("docs/architecture.md")).unwrap();
    let mut seen = BTreeSet::new();
    for line in doc.lines().filter(|l| l.starts_with("| ")) {
        let cells: Vec<&str> = line.split(" | ").collect();
        let [name, _purpose, deps] = cells[..] else { continue };
        let name = name.trim_start_matches("| ");
        let deps = deps.trim_end_matches(" |");
        let (manifest, listed) = if name == "binary (`src/`)" {
            // What the binary does not depend on follows "Not".
            (root().join("Cargo.toml"), deps.split(" Not ").next().unwrap_or(""))
        } else {
            let n = name.trim_matches('`');
            if !crates.contains(n) {
                continue;
            }
            (root().join("crates").join(n).join("Cargo.toml"), deps)
        };
        assert_eq!(crates_named(listed, &crates), workspace_dependencies(&manifest), "docs/architecture.md: {name}");
        seen.insert(name.trim_matches('`').to_string());
    }
    let missing: Vec<&String> = crates.iter().filter(|c| !seen.contains(*c)).collect();
    assert!(missing.is_empty(), "docs/architecture.md has no row for {missing:?}");
    assert!(seen.contains("binary (`src/`)"), "docs/architecture.md has no row for the binary");
}

/// docs/architecture.md names the crates that hold `unsafe` code; the root of every other
/// crate (`src/lib.rs`, `src/main.rs`), the binary's included, is `#![forbid(unsafe_code)]`.
#[test]
fn crates_the_architecture_does_not_name_forbid_unsafe_code() {
    let crates: BTreeSet<String> = std::fs::read_dir(root().join("crates"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let doc = std::fs::read_to_string(root().join("docs/architecture.md")).unwrap();
    let doc = doc.split_whitespace().collect::<Vec<_>>().join(" ");
    let from =
        doc.find("`unsafe` code lives only in").expect("docs/architecture.md says which crates hold unsafe code");
    let to = from + doc[from..].find("the other crates").expect("docs/architecture.md says what the other crates do");
    let allowed = crates_named(&doc[from..to], &crates);
    assert!(allowed.contains("fsio") && allowed.len() < crates.len(), "{allowed:?}");
    let mut roots = vec![root().join("src/main.rs")];
    for c in crates.difference(&allowed) {
        roots.extend(
            ["src/lib.rs", "src/main.rs"]
                .map(|f| root().join("crates").join(c).join(f))
                .into_iter()
                .filter(|p| p.exists()),
        );
    }
    let forbids = |p: &std::path::Path| {
        std::fs::read_to_string(p).unwrap().lines().any(|l| l.trim() == "#![forbid(unsafe_code)]")
    };
    let missing: Vec<_> = roots.iter().filter(|p| !forbids(p)).collect();
    assert!(
        roots.len() > crates.len() - allowed.len() && missing.is_empty(),
        "no #![forbid(unsafe_code)] in {missing:?}"
    );
}
