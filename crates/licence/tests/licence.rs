//! Licences: the text form against hostile input, signatures, evaluation, and the clock.

#![allow(clippy::unwrap_used)] // tests may unwrap

use onnx_protect_keys::SigningKey;
use onnx_protect_licence::*;

fn t(s: &str) -> u64 {
    parse_utc(s).unwrap()
}

fn terms(publisher: &SigningKey) -> Terms {
    Terms {
        authority: publisher.public(),
        licensee: Some("ACME Robotics, plant 3".into()),
        models: vec![ModelRef::Digest([0xab; 32]), ModelRef::Id("detector-v3".into())],
        recipients: vec![RecipientRef::Stanza { kind: "tpm".into(), label: "onnx-protect-tpm1abc".into() }],
        tiers: 2,
        not_before: t("2025-01-01T00:00:00Z"),
        not_after: t("2025-12-31T23:59:59Z"),
    }
}

fn model(publisher: &SigningKey) -> ModelFacts {
    ModelFacts { authority: publisher.public(), content_digest: [0xab; 32], model_id: None }
}

const TPM: Opener<'static> = Opener { kind: "tpm", label: "onnx-protect-tpm1abc" };

#[test]
fn an_issued_licence_reads_back_and_grants_its_tiers_in_its_window() {
    let k = SigningKey::generate().unwrap();
    let text = terms(&k).issue(&k).unwrap();
    assert!(text.starts_with("onnx-protect-licence-v1\nauthority: onnx-protect-signer1"), "{text}");
    let l = Licence::parse(text.as_bytes()).unwrap();
    assert_eq!(l.terms, terms(&k));
    let g = evaluate(&l, &model(&k), TPM, t("2025-06-01T00:00:00Z")).unwrap();
    assert_eq!(g, Grant { tiers: 2, not_after: t("2025-12-31T23:59:59Z") });
    // Both ends of the window are inside it.
    evaluate(&l, &model(&k), TPM, t("2025-01-01T00:00:00Z")).unwrap();
    evaluate(&l, &model(&k), TPM, t("2025-12-31T23:59:59Z")).unwrap();
    // By model id instead of digest.
    let by_id = ModelFacts { content_digest: [0; 32], model_id: Some("detector-v3".into()), ..model(&k) };
    evaluate(&l, &by_id, TPM, t("2025-06-01T00:00:00Z")).unwrap();
    // Without the final newline.
    Licence::parse(text.trim_end().as_bytes()).unwrap();
}

#[test]
fn each_refusal_has_its_own_kind() {
    let k = SigningKey::generate().unwrap();
    let l = Licence::parse(terms(&k).issue(&k).unwrap().as_bytes()).unwrap();
    let june = t("2025-06-01T00:00:00Z");
    let e = evaluate(&l, &model(&k), TPM, t("2024-12-31T23:59:59Z")).unwrap_err();
    assert!(matches!(e, LicenceError::NotYetValid { .. }), "{e}");
    assert!(e.to_string().contains("starts at 2025-01-01T00:00:00Z"), "{e}");
    let e = evaluate(&l, &model(&k), TPM, t("2026-01-01T00:00:00Z")).unwrap_err();
    assert!(matches!(e, LicenceError::Expired { .. }), "{e}");
    let other_model = ModelFacts { content_digest: [0xcd; 32], model_id: Some("other".into()), ..model(&k) };
    let e = evaluate(&l, &other_model, TPM, june).unwrap_err();
    assert!(matches!(e, LicenceError::WrongModel { .. }), "{e}");
    assert!(e.to_string().contains("id:other"), "{e}");
    let e = evaluate(&l, &model(&k), Opener { kind: "tpm", label: "onnx-protect-tpm1xyz" }, june).unwrap_err();
    assert!(matches!(e, LicenceError::WrongDevice { .. }), "{e}");
    let e = evaluate(&l, &model(&k), Opener { kind: "key", label: "onnx-protect-tpm1abc" }, june).unwrap_err();
    assert!(matches!(e, LicenceError::WrongDevice { .. }), "{e}");
    // Another authority: the model needs a licence from its own.
    let stranger = SigningKey::generate().unwrap();
    let e = evaluate(&l, &model(&stranger), TPM, june).unwrap_err();
    assert!(matches!(e, LicenceError::BadSignature { .. }), "{e}");
    // A licence naming the model's authority but signed by someone else.
    let mut forged = terms(&stranger);
    forged.authority = k.public();
    assert!(forged.issue(&stranger).is_err(), "issue refuses a key that is not the authority");
    let genuine = terms(&k).issue(&k).unwrap();
    let other_sig = terms(&stranger).issue(&stranger).unwrap();
    let spliced = format!(
        "{}{}",
        &genuine[..genuine.find("signature: ").unwrap()],
        &other_sig[other_sig.find("signature: ").unwrap()..]
    );
    let e = evaluate(&Licence::parse(spliced.as_bytes()).unwrap(), &model(&k), TPM, june).unwrap_err();
    assert!(matches!(e, LicenceError::BadSignature { .. }), "{e}");
    // `any` opens for every recipient.
    let mut anyone = terms(&k);
    anyone.recipients = vec![RecipientRef::Any];
    let l = Licence::parse(anyone.issue(&k).unwrap().as_bytes()).unwrap();
    evaluate(&l, &model(&k), Opener { kind: "passphrase", label: "" }, june).unwrap();
}

#[test]
fn every_changed_byte_is_refused() {
    let k = SigningKey::generate().unwrap();
    let text = terms(&k).issue(&k).unwrap().into_bytes();
    let june = t("2025-06-01T00:00:00Z");
    for i in 0..text.len() {
        for flip in [0x01u8, 0x20] {
            let mut b = text.clone();
            b[i] ^= flip;
            let ok = Licence::parse(&b).and_then(|l| evaluate(&l, &model(&k), TPM, june));
            // A changed byte of the signature's Base64 padding area may decode to the
            // same bytes only if it is not significant; Base64 is strict here, so none may.
            assert!(ok.is_err(), "byte {i} ^ {flip:#x} still evaluates: {:?}", String::from_utf8_lossy(&b));
        }
    }
}

#[test]
fn malformed_licences_name_the_line_and_the_field() {
    let k = SigningKey::generate().unwrap();
    let good = terms(&k).issue(&k).unwrap();
    let sig = &good[good.find("signature: ").unwrap()..];
    let auth = k.public().to_text();
    let head = format!("onnx-protect-licence-v1\nauthority: {auth}\n");
    let tail = "recipient: any\ntiers: 1\nnot-before: 2025-01-01T00:00:00Z\nnot-after: 2025-12-31T23:59:59Z\n";
    let cases: Vec<(String, &str)> = vec![
        (String::new(), "no 'signature:' line"),
        (format!("onnx-protect-licence-v2\n{sig}"), "line 1: unknown version"),
        (format!("hello\n{sig}"), "line 1: not a licence"),
        (format!("onnx-protect-licence-v1\nauthority: age1xyz\nmodel: id:a\n{tail}{sig}"), "line 2: authority:"),
        (format!("onnx-protect-licence-v1\nmodel: id:a\n{tail}{sig}"), "line 2: 'model:' where 'authority:' was expected"),
        (format!("{head}{tail}{sig}"), "line 3: 'recipient:' where 'model:' was expected"),
        (format!("{head}model: sha:00\n{tail}{sig}"), "line 3: model: 'sha:00' is neither"),
        (format!("{head}model: digest:{}\n{tail}{sig}", "AB".repeat(32)), "line 3: model: a digest is 64 lowercase hex"),
        (format!("{head}model: digest:abc\n{tail}{sig}"), "64 lowercase hex"),
        (format!("{head}model: id:\n{tail}{sig}"), "line 3: model: an empty id"),
        (format!("{head}model: id:a\nrecipient: Key x\ntiers: 1\n{sig}"), "line 4: recipient: 'Key x'"),
        (format!("{head}model: id:a\nrecipient: any\ntiers: 0\n{sig}"), "line 5: tiers: '0'"),
        (format!("{head}model: id:a\nrecipient: any\ntiers: 17\n{sig}"), "tiers: '17'"),
        (format!("{head}model: id:a\nrecipient: any\ntiers: 01\n{sig}"), "tiers: '01'"),
        (format!("{head}model: id:a\nrecipient: any\ntiers: 1\nnot-before: 2025-01-01\n{sig}"), "line 6: not-before: '2025-01-01'"),
        (
            format!("{head}model: id:a\nrecipient: any\ntiers: 1\nnot-before: 2025-01-01T00:00:00Z\nnot-after: 2024-01-01T00:00:00Z\n{sig}"),
            "line 7: not-after is before not-before",
        ),
        (format!("{head}model: id:a\nrecipient: any\ntiers: 1\n{sig}"), "no 'not-before:' line"),
        (format!("{head}model: id:a\n{tail}extra: x\n{sig}"), "line 8: 'extra:' is out of place or unknown"),
        (format!("{head}model: id:a\n{tail}licensee: x\n{sig}"), "'licensee:' is out of place"),
        (format!("{head}model: id:a\r\n{tail}{sig}"), "line 3: a carriage return"),
        (format!("{head}model:  id:a\n{tail}{sig}"), "line 3: model: surrounding spaces"),
        (format!("{head}model: id:a\u{7}\n{tail}{sig}"), "control characters"),
        (format!("{head}\nmodel: id:a\n{tail}{sig}"), "line 3: '' is not 'NAME: VALUE'"),
        (format!("{head}model: id:{}\n{tail}{sig}", "x".repeat(1100)), "the value has 1103 bytes"),
        (format!("{head}model: id:a\n{tail}signature: AAAA\n"), "signature: 3 bytes, expected 64"),
        (format!("{head}model: id:a\n{tail}signature: ***\n"), "signature: not Base64"),
        (format!("{head}model: id:a\n{tail}{sig}more\n"), "text after the 'signature:' line"),
    ];
    for (text, want) in cases {
        let e = Licence::parse(text.as_bytes()).unwrap_err();
        assert!(matches!(e, LicenceError::Malformed { .. }), "{text:?}: {e}");
        assert!(e.to_string().contains(want), "{text:?}:\n  got  {e}\n  want {want}");
    }
    let many: String = (0..65).map(|i| format!("model: id:m{i}\n")).collect();
    let e = Licence::parse(format!("{head}{many}{tail}{sig}").as_bytes()).unwrap_err();
    assert!(e.to_string().contains("more than 64"), "{e}");
    assert!(Licence::parse(&[0xff; 10]).unwrap_err().to_string().contains("not UTF-8"));
    assert!(Licence::parse(&vec![b'a'; MAX_LICENCE_LEN + 1]).unwrap_err().to_string().contains("at most"));
}

#[test]
fn a_clock_set_back_below_the_high_water_mark_is_refused() {
    let mut s = ClockState::default();
    let day = 86_400;
    let t0 = t("2025-06-01T00:00:00Z");
    assert_eq!(s.advance(t0, None).unwrap(), t0);
    assert_eq!(s.advance(t0 + day, None).unwrap(), t0 + day);
    // A correction within the tolerance is accepted but does not move time back.
    assert_eq!(s.advance(t0 + day - 60, None).unwrap(), t0 + day);
    let e = s.advance(t0, None).unwrap_err();
    assert!(matches!(e, LicenceError::ClockSetBack { .. }), "{e}");
    assert!(e.to_string().contains("high-water"), "{e}");
    // The refused reading did not lower the mark.
    assert_eq!(s.high_water, t0 + day);
}

fn tpm(source: &str, clock_ms: u64) -> TpmReading {
    TpmReading { source: source.into(), clock_ms }
}

#[test]
fn the_tpm_clock_catches_a_set_back_the_high_water_mark_cannot() {
    let mut s = ClockState::default();
    let t0 = t("2025-06-01T00:00:00Z");
    let day = 86_400u64;
    s.advance(t0, Some(&tpm("a", 1_000_000))).unwrap();
    // Thirty days of powered time later, the clock is set to one day after the last check:
    // above the high-water mark, but the TPM has counted (at least 3/4 of) 30 days.
    let later = tpm("a", 1_000_000 + 30 * day * 1000);
    let e = s.advance(t0 + day, Some(&later)).unwrap_err();
    assert!(matches!(e, LicenceError::ClockSetBack { .. }), "{e}");
    assert!(e.to_string().contains("TPM"), "{e}");
    // The honest clock passes; the TPM time counted at 3/4 leaves room for a fast oscillator.
    assert_eq!(s.advance(t0 + 30 * day, Some(&later)).unwrap(), t0 + 30 * day);
    let mut fast = ClockState::default();
    fast.advance(t0, Some(&tpm("a", 0))).unwrap();
    let runs_fast = tpm("a", 10 * day * 1000 * 13 / 10);
    fast.advance(t0 + 10 * day, Some(&runs_fast)).unwrap();
    // A TPM clock behind its anchor (cleared): a new anchor, no refusal.
    let mut cleared = s.clone();
    cleared.advance(t0 + 30 * day + 60, Some(&tpm("a", 5))).unwrap();
    let anchor = TpmAnchor { source: Some(source_id("a")), wall: t0 + 30 * day + 60, clock_ms: 5 };
    assert_eq!(cleared.tpm_anchors, vec![anchor]);
}

#[test]
fn a_check_through_one_source_keeps_the_other_sources_anchors() {
    let t0 = t("2025-06-01T00:00:00Z");
    let day = 86_400u64;
    let mut s = ClockState::default();
    s.advance(t0, Some(&tpm("a", 1_000_000))).unwrap();
    // Another model opened with a key file (no TPM), then through another TPM whose clock is
    // far behind and far ahead of the first: neither touches the first TPM's anchor.
    s.advance(t0 + 60, None).unwrap();
    s.advance(t0 + 120, Some(&tpm("b", 5))).unwrap();
    s.advance(t0 + 180, Some(&tpm("c", 900_000_000_000))).unwrap();
    assert_eq!(s.tpm_anchors.len(), 3);
    let a = s.tpm_anchors.iter().find(|x| x.source == Some(source_id("a"))).unwrap();
    assert_eq!((a.wall, a.clock_ms), (t0, 1_000_000));
    // Through the state file too: the TPM moved 30 days ahead still stops a clock one day on.
    let text = s.to_text();
    let mut read = ClockState::parse(&text).unwrap();
    assert_eq!(read, s);
    let e = read.advance(t0 + day, Some(&tpm("a", 1_000_000 + 30 * day * 1000))).unwrap_err();
    assert!(matches!(e, LicenceError::ClockSetBack { .. }) && e.to_string().contains("TPM"), "{e}");
    // Each source's clock is measured against its own anchor: "c" at its anchor passes.
    read.advance(t0 + day, Some(&tpm("c", 900_000_000_000))).unwrap();
    // An anchor recorded without a source is taken over by the first source without one.
    let legacy = "onnx-protect-clock-v1\nhigh-water: 2025-06-01T00:00:00Z\ntpm: 2025-06-01T00:00:00Z 1000000\n";
    let mut old = ClockState::parse(legacy).unwrap();
    assert_eq!(old.to_text(), legacy);
    old.advance(t0, None).unwrap();
    assert_eq!(old.to_text(), legacy, "a check without a TPM keeps the anchor");
    let e = old.advance(t0 + day, Some(&tpm("a", 1_000_000 + 30 * day * 1000))).unwrap_err();
    assert!(e.to_string().contains("TPM"), "{e}");
    old.advance(t0 + 30 * day, Some(&tpm("a", 1_000_000 + 30 * day * 1000))).unwrap();
    assert_eq!(old.tpm_anchors.len(), 1);
    assert_eq!(old.tpm_anchors[0].source, Some(source_id("a")));
    // At most MAX_TPM_ANCHORS: the one used longest ago goes.
    let mut many = ClockState::default();
    for i in 0..=MAX_TPM_ANCHORS as u64 {
        many.advance(t0 + i, Some(&tpm(&format!("k{i}"), i))).unwrap();
    }
    assert_eq!(many.tpm_anchors.len(), MAX_TPM_ANCHORS);
    assert!(!many.tpm_anchors.iter().any(|a| a.source == Some(source_id("k0"))));
    assert_eq!(ClockState::parse(&many.to_text()).unwrap(), many);
}

#[test]
fn the_clock_file_persists_and_refuses_a_malformed_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state").join("clock");
    let f = ClockFile::new(&path);
    let t0 = t("2025-06-01T00:00:00Z");
    f.check(t0 + 3600, Some(&tpm("onnx-protect-tpm1example", 7))).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let id = source_id("onnx-protect-tpm1example");
    assert_eq!(
        text,
        format!("onnx-protect-clock-v1\nhigh-water: 2025-06-01T01:00:00Z\ntpm: 2025-06-01T01:00:00Z 7 {id}\n")
    );
    // Another licensed model opened with a key file keeps the anchor.
    f.check(t0 + 7200, None).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        text,
        format!("onnx-protect-clock-v1\nhigh-water: 2025-06-01T02:00:00Z\ntpm: 2025-06-01T01:00:00Z 7 {id}\n")
    );
    assert_eq!(ClockState::parse(&text).unwrap().to_text(), text);
    let e = ClockFile::new(&path).check(t0, None).unwrap_err();
    assert!(matches!(e, LicenceError::ClockSetBack { .. }), "{e}");
    let dup = format!("tpm: 2025-06-01T01:00:00Z 7 {id}\n");
    for bad in [
        "onnx-protect-clock-v1\nhigh-water: yesterday\n".to_string(),
        "onnx-protect-clock-v1\nhigh-water: 2025-06-01T01:00:00Z\ntpm: 2025-06-01T01:00:00Z 7 NOT-A-SOURCE-ID\n".into(),
        "onnx-protect-clock-v1\nhigh-water: 2025-06-01T01:00:00Z\ntpm: 2025-06-01T01:00:00Z +7\n".into(),
        format!("onnx-protect-clock-v1\nhigh-water: 2025-06-01T01:00:00Z\n{dup}{dup}"),
        format!("onnx-protect-clock-v1\nhigh-water: 2025-06-01T01:00:00Z\n{}", dup.replace('\n', " x\n")),
    ] {
        std::fs::write(&path, &bad).unwrap();
        let e = f.check(t0 + 7200, None).unwrap_err();
        assert!(matches!(e, LicenceError::State { .. }) && e.to_string().contains("malformed"), "{bad:?}: {e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), bad, "never reset");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path.parent().unwrap()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}
