//! Every hostile file in `fixtures/malformed/` is refused with the error kind its
//! row in `fixtures/malformed/EXPECTED.md` names, by the library and by the CLI.

use onnx_protect_format::Model;

use crate::util::{root, run};

fn table() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(root().join("fixtures/malformed/EXPECTED.md")).expect("EXPECTED.md");
    let mut rows = Vec::new();
    for line in text.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 5 || !cells[1].starts_with('`') {
            continue;
        }
        let file = cells[1].trim_matches('`').to_string();
        let kind = cells[3].trim_matches('`').to_string();
        rows.push((file, kind));
    }
    assert!(rows.len() >= 25, "EXPECTED.md lists only {} files", rows.len());
    rows
}

#[test]
fn each_hostile_file_gets_its_expected_error_kind() {
    let mut wrong = Vec::new();
    for (file, kind) in table() {
        let path = root().join("fixtures/malformed").join(&file);
        match Model::open(&path) {
            Ok(_) => wrong.push(format!("{file}: accepted, expected {kind}")),
            Err(e) if e.kind().as_str() != kind => {
                wrong.push(format!("{file}: got {} ({e}), expected {kind}", e.kind()))
            }
            Err(_) => {}
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn each_hostile_file_fails_the_cli_with_one_line_and_exit_3() {
    for (file, _) in table() {
        let path = root().join("fixtures/malformed").join(&file);
        let (code, out, err) = run(&["inspect", path.to_str().unwrap()]);
        assert_eq!(code, 3, "{file}: {err}");
        assert!(out.is_empty(), "{file}: printed {out}");
        let first = err.lines().next().unwrap_or("");
        assert!(first.starts_with("error: ") && first.len() > 20, "{file}: {err}");
    }
}
