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

/// Whether a terminal would act on `c` (or not show it): what `inspect` must never print raw.
fn drives_a_terminal(c: char) -> bool {
    c != '\n' && onnx_protect_core::inspect::is_non_printing(c)
}

#[test]
fn inspect_prints_the_model_s_names_and_stanza_labels_without_terminal_controls() {
    use onnx_protect_proto::v2 as pb;
    use onnx_protect_proto::Message as _;
    let dir = tempfile::tempdir().expect("tempdir");
    // A producer name of escape sequences (CSI clear screen, an 8-bit CSI), in a file whose
    // name has one too.
    let hostile_producer = "\u{1b}[2J\u{9b}m";
    let mut bytes = std::fs::read(root().join("fixtures/models/cnn_torch/model.onnx")).expect("read");
    let at = bytes.windows(7).position(|w| w == b"pytorch").expect("the producer name");
    bytes[at..at + 7].copy_from_slice(hostile_producer.as_bytes());
    let plain = dir.path().join("plain.onnx");
    std::fs::write(&plain, &bytes).expect("write");
    let key = crate::util::keygen_in(dir.path());
    let p = dir.path().join("m\u{1b}[31m.onnx");
    let (code, _, err) = run(&[
        "encrypt",
        crate::util::path_str(&plain),
        "-o",
        crate::util::path_str(&p),
        "--key-file",
        crate::util::path_str(&key),
        "-q",
    ]);
    assert_eq!(code, 0, "{err}");
    // A stanza of a kind no reader knows (kept, shown by inspect), whose kind and label set a
    // window title, ring the bell, reverse the text and break the line.
    let hostile_label = "\u{1b}]0;owned\u{7}\u{202e}x\ny\u{7f}";
    let bytes = std::fs::read(&p).expect("read");
    let (range, value) = onnx_protect_core::format2::envelope::trailing_entry(&bytes).expect("a v2 entry");
    let sealed = onnx_protect_core::format2::envelope::parse_entry(value, range.clone()).expect("the entry");
    let mut env = sealed.envelope.clone();
    let mut recipients = pb::Recipients::decode(env.recipients.as_slice()).expect("recipients");
    recipients.stanzas.push(pb::Stanza {
        kind: "x-\u{1b}[8m".into(),
        tier: 1,
        label: hostile_label.into(),
        body: vec![1, 2, 3],
        ..Default::default()
    });
    env.recipients = recipients.encode_to_vec();
    env.checksum.clear();
    env.checksum = onnx_protect_crypto::envelope_checksum(&env.encode_to_vec()).to_vec();
    use base64::Engine as _;
    let value = base64::engine::general_purpose::STANDARD.encode(env.encode_to_vec());
    let mut entry = vec![0x0A, 15];
    entry.extend_from_slice(b"onnx-protect/v2");
    entry.push(0x12);
    onnx_protect_format::wire::put_varint(&mut entry, value.len() as u64);
    entry.extend_from_slice(value.as_bytes());
    let mut out = bytes[..range.start as usize].to_vec();
    out.push(0x72);
    onnx_protect_format::wire::put_varint(&mut out, entry.len() as u64);
    out.extend_from_slice(&entry);
    std::fs::write(&p, &out).expect("write");

    let (code, text, err) = run(&["inspect", crate::util::path_str(&p)]);
    assert_eq!(code, 0, "{err}");
    let raw: Vec<char> = text.chars().filter(|&c| drives_a_terminal(c)).collect();
    assert!(raw.is_empty(), "raw controls {raw:?} in:\n{text}");
    // Each shows as its escape, on its own line.
    assert!(text.contains("model        ") && text.contains("m\\u{1b}[31m.onnx"), "{text}");
    assert!(text.contains("producer     \\u{1b}[2J\\u{9b}m 2.15.0"), "{text}");
    let line = text.lines().find(|l| l.contains("recipient    x-")).expect("the stanza's line");
    assert_eq!(line, "  recipient    x-\\u{1b}[8m \\u{1b}]0;owned\\u{7}\\u{202e}x\\u{a}y\\u{7f} (tier 1)", "{text}");
    // JSON: escaped as JSON, the same strings once parsed.
    let (code, json, err) = run(&["inspect", "--json", crate::util::path_str(&p)]);
    assert_eq!(code, 0, "{err}");
    let raw: Vec<char> = json.chars().filter(|&c| drives_a_terminal(c)).collect();
    assert!(raw.is_empty(), "raw controls {raw:?} in:\n{json}");
    let doc: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(doc["producer_name"], hostile_producer);
    assert!(doc["protection"]["recipients"]
        .as_array()
        .expect("recipients")
        .iter()
        .any(|r| r.as_str().is_some_and(|r| r.contains(hostile_label))));
}
