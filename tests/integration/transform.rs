//! Key-transformed inputs (issue 6): the `transform-input` and
//! `encrypt-patch-embedding` commands, and the patch-level equivalence of a
//! rewritten model on the trained digits ConvMixer and ViT.

use std::path::{Path, PathBuf};

use onnx_protect_crypto::MasterKey;
use onnx_protect_format::Model;
use onnx_protect_transform::io::{self as tio};
use onnx_protect_transform::patch::TransformRecord;
use onnx_protect_transform::{
    transform_images, Direction, Images, KeyedTransform, Layout, Samples, TransformSpec, ValueRange, METADATA_KEY,
};

use crate::util::{root, run};

const KEY_HEX: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const WRONG_HEX: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

fn key_files(dir: &Path) -> (PathBuf, PathBuf) {
    let k = dir.join("key.hex");
    std::fs::write(&k, format!("{KEY_HEX}\n")).expect("write key");
    let w = dir.join("wrong.hex");
    std::fs::write(&w, format!("{WRONG_HEX}\n")).expect("write key");
    (k, w)
}

fn master() -> MasterKey {
    MasterKey::parse_key_file(KEY_HEX.as_bytes()).expect("key")
}

fn digits(name: &str) -> PathBuf {
    root().join("fixtures/digits").join(name)
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn f32s(model: &Model, name: &str) -> Vec<f32> {
    let t = model.tensors.iter().find(|t| t.name == name).expect("tensor");
    let b = model.tensor_bytes(t.id).expect("bytes");
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn test_images(n: usize) -> Images {
    let l = tio::load(&digits("test_x.npy"), Layout::Nchw).expect("test_x.npy");
    let Samples::F32(v) = l.images.data else { panic!("float32 test images") };
    Images { n, data: Samples::F32(v[..n * 64].to_vec()), ..l.images }
}

/// Patch-embedding outputs `[n, blocks, out]` of a Conv with kernel = stride = m on 1-channel NCHW images.
fn patch_embed(im: &Images, w: &[f32], b: &[f32], m: usize) -> Vec<f64> {
    let Samples::F32(x) = &im.data else { panic!() };
    let o_ch = b.len();
    let (bh, bw) = (im.h / m, im.w / m);
    let mut out = Vec::new();
    for n in 0..im.n {
        for by in 0..bh {
            for bx in 0..bw {
                for o in 0..o_ch {
                    let mut acc = f64::from(b[o]);
                    for i in 0..m {
                        for j in 0..m {
                            let xv = x[n * im.h * im.w + (by * m + i) * im.w + bx * m + j];
                            acc += f64::from(w[(o * m + i) * m + j]) * f64::from(xv);
                        }
                    }
                    out.push(acc);
                }
            }
        }
    }
    out
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

#[test]
fn convmixer_patch_embedding_on_transformed_inputs_equals_the_original() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, _) = key_files(dir.path());
    let src = digits("convmixer.onnx");
    let out = dir.path().join("cm.onnx");
    let (code, stdout, err) = run(&[
        "encrypt-patch-embedding",
        s(&src),
        "-o",
        s(&out),
        "--key-file",
        s(&key),
        "--block",
        "2",
        "--shuffle",
        "--negpos",
        "--range",
        "0,1",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("--block 2 --shuffle --negpos --range 0,1 --layout nchw"), "{stdout}");

    let a = Model::open(&src).expect("original");
    let b = Model::open(&out).expect("rewritten");
    let spec = TransformSpec { block: 2, shuffle: true, negpos: true, ..Default::default() };
    let plain = test_images(50);
    let mut enc = plain.clone();
    transform_images(&master(), &spec, &mut enc, Some(ValueRange { lo: 0.0, hi: 1.0 }), Direction::Forward)
        .expect("transform");
    let want = patch_embed(&plain, &f32s(&a, "patch_embed.weight"), &f32s(&a, "patch_embed.bias"), 2);
    let got = patch_embed(&enc, &f32s(&b, "patch_embed.weight"), &f32s(&b, "patch_embed.bias"), 2);
    assert!(max_diff(&want, &got) < 1e-5, "{}", max_diff(&want, &got));
    // On plain inputs the rewritten layer is far off.
    let wrong = patch_embed(&plain, &f32s(&b, "patch_embed.weight"), &f32s(&b, "patch_embed.bias"), 2);
    assert!(max_diff(&want, &wrong) > 0.1);

    // Only the weight, the bias and the appended metadata changed.
    for t in &a.tensors {
        if t.name != "patch_embed.weight" && t.name != "patch_embed.bias" {
            let u = b.tensor_by_locator(&t.locator).expect("same tensors");
            assert_eq!(a.tensor_bytes(t.id).expect("a"), b.tensor_bytes(u.id).expect("b"), "{}", t.name);
        }
    }
    let entry = b.metadata_value(METADATA_KEY).expect("metadata");
    assert_eq!(b.bytes().len(), a.bytes().len() + (entry.range.end - entry.range.start) as usize);
    let rec = TransformRecord::from_model(&b).expect("valid").expect("present");
    assert_eq!(rec.block, 2);
    assert_eq!(rec.transforms, vec!["shuffle", "negpos"]);
    assert_eq!(rec.range, Some([0.0, 1.0]));
    assert_eq!(rec.key_fingerprint, hex_fp(&master()));
    assert!(!entry.value.contains(KEY_HEX));
}

fn hex_fp(k: &MasterKey) -> String {
    k.fingerprint().iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn vit_block_scrambling_is_absorbed_by_the_position_embedding() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, _) = key_files(dir.path());
    let src = digits("vit.onnx");
    let out = dir.path().join("vit.onnx");
    let args = ["--block", "2", "--shuffle", "--negpos", "--scramble-blocks", "--range", "0,1"];
    let (code, _, err) =
        run(&[&["encrypt-patch-embedding", s(&src), "-o", s(&out), "--key-file", s(&key)], &args[..]].concat());
    assert_eq!(code, 0, "{err}");
    let a = Model::open(&src).expect("original");
    let b = Model::open(&out).expect("rewritten");
    let spec = TransformSpec { block: 2, shuffle: true, negpos: true, scramble_blocks: true, ..Default::default() };
    let plain = test_images(20);
    let mut enc = plain.clone();
    let r = Some(ValueRange { lo: 0.0, hi: 1.0 });
    transform_images(&master(), &spec, &mut enc, r, Direction::Forward).expect("transform");
    let d = 48;
    // Token embeddings + position embeddings, [n, 16, 48].
    let tokens = |im: &Images, m: &Model| {
        let mut e = patch_embed(im, &f32s(m, "patch_embed.weight"), &f32s(m, "patch_embed.bias"), 2);
        let pos = f32s(m, "pos_embed");
        for (i, v) in e.iter_mut().enumerate() {
            *v += f64::from(pos[i % (16 * d)]);
        }
        e
    };
    let want = tokens(&plain, &a);
    let got = tokens(&enc, &b);
    let sigma = KeyedTransform::derive(&master(), &spec, 1, 16).expect("derive");
    let sigma = sigma.block_order().expect("scrambled");
    // Token j of the transformed image is token sigma[j] of the plain one, position embedding included.
    let mut permuted = vec![0f64; want.len()];
    for n in 0..20 {
        for j in 0..16 {
            for k in 0..d {
                permuted[(n * 16 + j) * d + k] = want[(n * 16 + sigma[j] as usize) * d + k];
            }
        }
    }
    assert!(max_diff(&permuted, &got) < 1e-5, "{}", max_diff(&permuted, &got));
    let rec = TransformRecord::from_model(&b).expect("valid").expect("present");
    assert_eq!(rec.blocks, Some(16));
    assert_eq!(rec.position_embedding.as_deref(), Some("pos_embed"));
}

#[test]
fn same_key_same_model_other_key_other_model() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, wrong) = key_files(dir.path());
    let src = digits("convmixer.onnx");
    let mk = |k: &Path, name: &str| {
        let out = dir.path().join(name);
        let (code, _, err) =
            run(&["encrypt-patch-embedding", s(&src), "-o", s(&out), "--key-file", s(k), "--block", "2", "--shuffle"]);
        assert_eq!(code, 0, "{err}");
        std::fs::read(out).expect("read")
    };
    let (a, b, c) = (mk(&key, "a.onnx"), mk(&key, "b.onnx"), mk(&wrong, "c.onnx"));
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert_eq!(a.len(), c.len());
}

#[test]
fn refusals_name_the_reason_and_write_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, _) = key_files(dir.path());
    let out = dir.path().join("out.onnx");
    let cases: &[(&str, &[&str], &str)] = &[
        ("convmixer.onnx", &["--ffx"], "FFX is not affine"),
        ("convmixer.onnx", &["--scramble-blocks"], "needs a position embedding"),
        ("convmixer.onnx", &["--negpos"], "value range"),
        ("cnn.onnx", &["--shuffle"], "not a patch embedding"),
        ("mlp.onnx", &["--shuffle"], "no Conv reads the model input"),
        ("convmixer.onnx", &["--shuffle", "--node", "nope"], "no Conv node named 'nope'"),
    ];
    for (model, extra, needle) in cases {
        let m = digits(model);
        let mut args = vec!["encrypt-patch-embedding", s(&m), "-o", s(&out), "--key-file", s(&key), "--block", "2"];
        args.extend_from_slice(extra);
        let (code, _, err) = run(&args);
        assert_ne!(code, 0, "{model} {extra:?}");
        assert!(err.contains(needle), "{model} {extra:?}: {err}");
        assert!(!out.exists());
    }
    // An encrypted model is refused (its weights are ciphertext), with the state exit code.
    let enc = dir.path().join("encrypted.onnx");
    let m = digits("convmixer.onnx");
    let (code, _, err) = run(&["encrypt", s(&m), "-o", s(&enc), "--key-file", s(&key), "--quiet"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) =
        run(&["encrypt-patch-embedding", s(&enc), "-o", s(&out), "--key-file", s(&key), "--block", "2", "--shuffle"]);
    assert_eq!(code, 6, "{err}");
    assert!(err.contains("decrypt it first"), "{err}");
    // A passphrase is refused: the transform must be reproducible from the key alone.
    let pass = dir.path().join("pass.txt");
    std::fs::write(&pass, "correct horse\n").expect("write");
    let m = digits("convmixer.onnx");
    let (code, _, err) = run(&[
        "encrypt-patch-embedding",
        s(&m),
        "-o",
        s(&out),
        "--passphrase-file",
        s(&pass),
        "--block",
        "2",
        "--shuffle",
    ]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("not a passphrase"), "{err}");
}

#[test]
fn transform_input_round_trips_npy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, wrong) = key_files(dir.path());
    // u8 NHWC tensor, every transform.
    let x: Vec<u8> = (0..2 * 8 * 12 * 3).map(|i| (i * 73 % 256) as u8).collect();
    let arr = onnx_protect_transform::npy::NpyArray { shape: vec![2, 8, 12, 3], data: Samples::U8(x) };
    let src = dir.path().join("x.npy");
    std::fs::write(&src, onnx_protect_transform::npy::write(&arr).expect("npy")).expect("write");
    let enc = dir.path().join("enc.npy");
    let back = dir.path().join("back.npy");
    let t = transform_file;
    t(&key, &src, &enc, false);
    assert_ne!(std::fs::read(&enc).expect("enc"), std::fs::read(&src).expect("src"));
    t(&key, &enc, &back, true);
    assert_eq!(std::fs::read(&back).expect("back"), std::fs::read(&src).expect("src"));
    t(&wrong, &enc, &back, true);
    assert_ne!(std::fs::read(&back).expect("back"), std::fs::read(&src).expect("src"));
}

/// `transform-input` with `--key-file KEY IN OUT` and every transform, NHWC.
fn transform_file(key: &Path, input: &Path, output: &Path, inverse: bool) {
    let mut a = vec!["transform-input", "--key-file", s(key), s(input), s(output), "--force"];
    a.extend_from_slice(&["--block", "2", "--shuffle", "--negpos", "--ffx", "--scramble-blocks", "--layout", "nhwc"]);
    if inverse {
        a.push("--inverse");
    }
    let (code, _, err) = run(&a);
    assert_eq!(code, 0, "{err}");
}

#[test]
#[cfg(feature = "image")]
fn transform_input_round_trips_png() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, _) = key_files(dir.path());
    let t = transform_file;
    // An RGB PNG: the same transform as on the equivalent NHWC tensor.
    let png = dir.path().join("x.png");
    let first = tio::Loaded {
        images: Images {
            n: 1,
            c: 3,
            h: 8,
            w: 12,
            layout: Layout::Nhwc,
            data: Samples::U8((0..8 * 12 * 3).map(|i| (i * 73 % 256) as u8).collect()),
        },
        kind: tio::FileKind::Png,
        npy_shape: vec![],
    };
    tio::save(&png, &first).expect("png");
    let png_enc = dir.path().join("enc.png");
    t(&key, &png, &png_enc, false);
    let got = tio::load(&png_enc, Layout::Nhwc).expect("decode");
    let mut want = first.images.clone();
    let spec = TransformSpec { block: 2, shuffle: true, negpos: true, ffx: true, scramble_blocks: true };
    transform_images(&master(), &spec, &mut want, None, Direction::Forward).expect("transform");
    assert_eq!(got.images, want);
    let png_back = dir.path().join("back.png");
    t(&key, &png_enc, &png_back, true);
    assert_eq!(tio::load(&png_back, Layout::Nhwc).expect("decode").images, first.images);
}

/// Without the `image` feature (`--no-default-features`), PNG and JPEG are refused
/// with a message that says so, before anything is written.
#[test]
#[cfg(not(feature = "image"))]
fn transform_input_without_the_image_feature_names_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, _) = key_files(dir.path());
    let x = root().join("fixtures/digits/test_x.npy");
    let out = dir.path().join("x.png");
    let (code, _, err) = run(&["transform-input", s(&x), s(&out), "--key-file", s(&key), "--block", "2", "--shuffle"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("`image` feature"), "{err}");
    assert!(!out.exists());
}

#[test]
fn transform_input_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, _) = key_files(dir.path());
    let x = digits("test_x.npy");
    let o = dir.path().join("o.npy");
    // Float data needs a range for negpos; the block must divide the image; some transform must be chosen.
    for (args, needle) in [
        (vec!["--block", "2", "--negpos"], "--range"),
        (vec!["--block", "3", "--shuffle"], "not a multiple of the block size"),
        (vec!["--block", "2"], "choose at least one transform"),
        (vec!["--block", "2", "--ffx", "--range", "0,0.5"], "outside the declared range"),
    ] {
        let mut a = vec!["transform-input", "--key-file", s(&key), s(&x), s(&o)];
        a.extend_from_slice(&args);
        let (code, _, err) = run(&a);
        assert_ne!(code, 0, "{args:?}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    assert!(!o.exists());
}
