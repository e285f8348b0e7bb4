//! Key files: the typed form round-trips, older forms are still read, kinds are
//! enforced, and hostile files are refused with a typed error that never shows
//! key bytes.

#![allow(clippy::unwrap_used)] // tests may unwrap

use onnx_protect_crypto::{CryptoError, KeyFile, KeyKind, MasterKey, KEY_LINE_TAG, MAX_KEY_FILE_LEN, MAX_TIERS};

/// 00 01 02 … 1f.
const KEY_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

fn key() -> MasterKey {
    MasterKey::from_bytes(core::array::from_fn(|i| i as u8))
}

fn parse(text: &str) -> Result<KeyFile, CryptoError> {
    KeyFile::parse(text.as_bytes())
}

fn fingerprint_hex() -> String {
    key().fingerprint().iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn the_typed_form_is_exactly_as_documented() {
    let fp = fingerprint_hex();
    let cases = [
        (
            KeyKind::Master { tiers: 3 },
            format!(
                "# onnx-protect master key of 3 access tiers (fingerprint {fp}). Keep this file secret.\n\
                 onnx-protect-key-v1 master tiers=3 {KEY_HEX}\n"
            ),
        ),
        (
            KeyKind::Master { tiers: 1 },
            format!(
                "# onnx-protect master key (fingerprint {fp}). Keep this file secret.\n\
                 onnx-protect-key-v1 master tiers=1 {KEY_HEX}\n"
            ),
        ),
        (
            KeyKind::Tier { tier: 2 },
            format!(
                "# onnx-protect key of access tier 2 (fingerprint {fp}). Keep this file secret.\n\
                 onnx-protect-key-v1 tier=2 {KEY_HEX}\n"
            ),
        ),
        (KeyKind::Unlabeled, format!("{KEY_HEX}\n")),
    ];
    for (kind, want) in cases {
        let file = KeyFile::new(kind, key()).unwrap();
        assert_eq!(file.encode().as_str(), want, "{kind:?}");
    }
}

#[test]
fn every_kind_round_trips() {
    let generated = MasterKey::generate().unwrap();
    for kind in [
        KeyKind::Master { tiers: 1 },
        KeyKind::Master { tiers: 7 },
        KeyKind::Master { tiers: MAX_TIERS },
        KeyKind::Tier { tier: 1 },
        KeyKind::Tier { tier: MAX_TIERS },
        KeyKind::Unlabeled,
    ] {
        let text = KeyFile::new(kind, generated.clone()).unwrap().encode();
        let back = KeyFile::parse(text.as_bytes()).unwrap();
        assert_eq!(back.kind(), kind);
        assert_eq!(back.key().fingerprint(), generated.fingerprint(), "{kind:?}");
        assert_eq!(MasterKey::parse_key_file(text.as_bytes()).unwrap().fingerprint(), generated.fingerprint());
    }
}

#[test]
fn the_tier_a_key_file_records() {
    assert_eq!(KeyKind::Master { tiers: 3 }.tier(), Some(3));
    assert_eq!(KeyKind::Tier { tier: 2 }.tier(), Some(2));
    assert_eq!(KeyKind::Unlabeled.tier(), None);
}

#[test]
fn older_forms_are_read_as_unlabeled_keys() {
    let raw: Vec<u8> = (0u8..32).collect();
    for input in [
        raw,
        KEY_HEX.as_bytes().to_vec(),
        format!("{KEY_HEX}\n").into_bytes(),
        format!("  {}\r\n\n", KEY_HEX.to_uppercase()).into_bytes(),
    ] {
        let file = KeyFile::parse(&input).unwrap();
        assert_eq!(file.kind(), KeyKind::Unlabeled);
        assert_eq!(file.key().fingerprint(), key().fingerprint());
    }
    // 32 bytes are always a raw key, even when they look like a comment.
    let hashes = [b'#'; 32];
    assert_eq!(KeyFile::parse(&hashes).unwrap().kind(), KeyKind::Unlabeled);
}

#[test]
fn comments_blank_lines_crlf_case_and_tabs_are_accepted() {
    let text = format!(
        "\r\n# written by hand\r\n\t# another note\n\n  onnx-protect-key-v1\tmaster  tiers=2 {}  \r\n# trailing note\n",
        KEY_HEX.to_uppercase()
    );
    let file = parse(&text).unwrap();
    assert_eq!(file.kind(), KeyKind::Master { tiers: 2 });
    assert_eq!(file.key().fingerprint(), key().fingerprint());
    // Comments may hold any bytes, not only UTF-8.
    let mut bytes = b"# \xff\xfe\x00 binary note\n".to_vec();
    bytes.extend_from_slice(format!("onnx-protect-key-v1 tier=4 {KEY_HEX}").as_bytes());
    assert_eq!(KeyFile::parse(&bytes).unwrap().kind(), KeyKind::Tier { tier: 4 });
}

#[test]
fn a_tier_key_is_refused_where_a_master_key_is_needed() {
    let tier = KeyFile::new(KeyKind::Tier { tier: 1 }, key()).unwrap();
    let e = tier.into_master().err().unwrap();
    assert_eq!(e, CryptoError::WrongKeyKind { found: KeyKind::Tier { tier: 1 }, needed: "a master key" });
    assert_eq!(e.to_string(), "this is the key of access tier 1; a master key is needed here");
    for kind in [KeyKind::Master { tiers: 1 }, KeyKind::Master { tiers: 3 }, KeyKind::Unlabeled] {
        let m = KeyFile::new(kind, key()).unwrap().into_master().unwrap();
        assert_eq!(m.fingerprint(), key().fingerprint(), "{kind:?}");
    }
}

#[test]
fn kinds_with_impossible_tiers_cannot_be_made() {
    for kind in [KeyKind::Master { tiers: 0 }, KeyKind::Tier { tier: 0 }, KeyKind::Tier { tier: MAX_TIERS + 1 }] {
        let e = KeyFile::new(kind, key()).err().unwrap();
        assert!(matches!(e, CryptoError::KeyKindTier { max: MAX_TIERS, .. }), "{kind:?}: {e:?}");
    }
}

#[test]
fn files_that_are_not_key_files_are_refused() {
    for input in [
        Vec::new(),
        b"\n\n".to_vec(),
        b"# only a comment\n".to_vec(),
        b"\x08\x01\x12\x07pytorch ir_version".to_vec(), // the start of an ONNX model
        format!("0x{KEY_HEX}").into_bytes(),
        format!("{KEY_HEX}\n{KEY_HEX}\n").into_bytes(),
    ] {
        let e = KeyFile::parse(&input).err().unwrap();
        assert_eq!(e, CryptoError::KeyFileLength { found: input.len() });
        assert!(e.to_string().starts_with("not a key file: "), "{e}");
    }
}

#[test]
fn huge_files_are_refused_before_parsing() {
    let mut big = format!("onnx-protect-key-v1 tier=1 {KEY_HEX}\n").into_bytes();
    big.resize(MAX_KEY_FILE_LEN + 1, b'#');
    assert_eq!(KeyFile::parse(&big).err(), Some(CryptoError::KeyFileTooLarge { max: MAX_KEY_FILE_LEN }));
    let mut fits = format!("onnx-protect-key-v1 tier=1 {KEY_HEX}\n#").into_bytes();
    fits.resize(MAX_KEY_FILE_LEN, b'#');
    assert_eq!(KeyFile::parse(&fits).unwrap().kind(), KeyKind::Tier { tier: 1 });
}

/// The error a malformed key line must give.
enum Expect {
    /// `KeyFileSyntax` on this line.
    Syntax(usize),
    /// `KeyKindTier` for this value.
    TierRange(u32),
    /// `KeyFileVersion` on this line.
    Version(usize),
}

#[test]
fn malformed_key_lines_are_refused_with_their_line_number() {
    use Expect::{Syntax, TierRange, Version};
    let cases: Vec<(String, Expect)> = vec![
        (format!("onnx-protect-key-v1 tier=1 {}", &KEY_HEX[..63]), Syntax(1)),
        (format!("onnx-protect-key-v1 tier=1 {KEY_HEX}0"), Syntax(1)),
        (format!("onnx-protect-key-v1 tier=1 {}g", &KEY_HEX[..63]), Syntax(1)),
        (format!("onnx-protect-key-v1 tier=1 0x{}", &KEY_HEX[..62]), Syntax(1)),
        (format!("# c\nonnx-protect-key-v1 tier=0 {KEY_HEX}"), Syntax(2)),
        (format!("onnx-protect-key-v1 tier=01 {KEY_HEX}"), Syntax(1)),
        (format!("onnx-protect-key-v1 tier=-1 {KEY_HEX}"), Syntax(1)),
        (format!("onnx-protect-key-v1 tier=1.5 {KEY_HEX}"), Syntax(1)),
        (format!("onnx-protect-key-v1 tier= {KEY_HEX}"), Syntax(1)),
        (format!("onnx-protect-key-v1 tier=99999999999 {KEY_HEX}"), Syntax(1)),
        (format!("onnx-protect-key-v1 tier=17 {KEY_HEX}"), TierRange(17)),
        (format!("onnx-protect-key-v1 tier=99 {KEY_HEX}"), TierRange(99)),
        (format!("onnx-protect-key-v1 master tiers=0 {KEY_HEX}"), Syntax(1)),
        (format!("onnx-protect-key-v1 master tiers=20 {KEY_HEX}"), TierRange(20)),
        (format!("onnx-protect-key-v1 master {KEY_HEX}"), Syntax(1)),
        (format!("onnx-protect-key-v1 master tier=2 {KEY_HEX}"), Syntax(1)),
        (format!("onnx-protect-key-v1 public tiers=2 {KEY_HEX}"), Syntax(1)),
        (format!("onnx-protect-key-v1 tier=1 {KEY_HEX} extra"), Syntax(1)),
        ("onnx-protect-key-v1 tier=1".to_owned(), Syntax(1)),
        (format!("onnx-protect-key-v1 tier=1 {KEY_HEX}\nonnx-protect-key-v1 tier=2 {KEY_HEX}"), Syntax(2)),
        (format!("{KEY_HEX}\nonnx-protect-key-v1 tier=2 {KEY_HEX}"), Syntax(1)),
        (format!("onnx-protect-key-v1 tier=2 {KEY_HEX}\nhello"), Syntax(2)),
        (format!("onnx-protect-key-v2 tier=1 {KEY_HEX}"), Version(1)),
        (format!("onnx-protect-key-v1x tier=1 {KEY_HEX}"), Version(1)),
    ];
    for (text, expected) in cases {
        let e = parse(&text).err().unwrap_or_else(|| panic!("accepted: {text:?}"));
        let as_expected = match expected {
            Syntax(line) => matches!(e, CryptoError::KeyFileSyntax { line: l, .. } if l == line),
            TierRange(value) => e == CryptoError::KeyKindTier { value, max: MAX_TIERS },
            Version(line) => e == CryptoError::KeyFileVersion { line },
        };
        assert!(as_expected, "{text:?}: {e:?}");
        let msg = e.to_string();
        assert!(!msg.contains(&KEY_HEX[..16]) && !msg.contains('\n'), "{msg}");
    }
}

#[test]
fn every_changed_bit_and_every_truncation_parses_or_errors_without_a_panic() {
    let good = KeyFile::new(KeyKind::Tier { tier: 3 }, key()).unwrap().encode();
    let good = good.as_bytes();
    for i in 0..good.len() {
        for bit in 0..8 {
            let mut b = good.to_vec();
            b[i] ^= 1 << bit;
            if let Ok(f) = KeyFile::parse(&b) {
                assert!(f.kind().tier().is_none_or(|t| (1..=MAX_TIERS).contains(&t)), "byte {i} bit {bit}");
            }
        }
    }
    for n in 0..good.len() {
        let _ = KeyFile::parse(&good[..n]);
    }
    assert!(good.starts_with(b"# ") && good.windows(KEY_LINE_TAG.len()).any(|w| w == KEY_LINE_TAG.as_bytes()));
}

#[test]
fn an_environment_variable_holds_hex_or_the_text_of_a_key_file() {
    let var = "ONNX_PROTECT_KEY_FILES_TEST_TEXT";
    let text = KeyFile::new(KeyKind::Tier { tier: 2 }, key()).unwrap().encode();
    std::env::set_var(var, text.as_str());
    let file = KeyFile::from_env(var).unwrap();
    assert_eq!((file.kind(), file.key().fingerprint()), (KeyKind::Tier { tier: 2 }, key().fingerprint()));
    assert!(matches!(file.into_master(), Err(CryptoError::WrongKeyKind { .. })));
    let hex = "ONNX_PROTECT_KEY_FILES_TEST_HEX";
    std::env::set_var(hex, format!(" {KEY_HEX}\n"));
    assert_eq!(KeyFile::from_env(hex).unwrap().kind(), KeyKind::Unlabeled);
    let bad = "ONNX_PROTECT_KEY_FILES_TEST_BAD";
    std::env::set_var(bad, format!("onnx-protect-key-v1 tier=0 {KEY_HEX}"));
    assert!(matches!(KeyFile::from_env(bad), Err(CryptoError::KeyFileSyntax { line: 1, .. })));
    // 32 characters are not a raw key in a variable.
    let short = "ONNX_PROTECT_KEY_FILES_TEST_SHORT";
    std::env::set_var(short, &KEY_HEX[..32]);
    assert_eq!(KeyFile::from_env(short).err(), Some(CryptoError::EnvKeyLength { var: short.into(), found: 32 }));
}
