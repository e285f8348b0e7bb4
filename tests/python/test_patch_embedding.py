"""Key-transformed inputs: a patch-embedding model rewritten by `encrypt-patch-embedding`
computes on key-transformed inputs what the original computes on plain inputs.

Runs the built binary (target/debug/onnx-protect, or $ONNX_PROTECT_BIN) on the
trained digits ConvMixer and ViT (patch 2, so block 2) and on the synthetic
models in fixtures/transform/, and checks the outputs with onnxruntime.
"""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = os.environ.get("ONNX_PROTECT_BIN", str(ROOT / "target" / "debug" / "onnx-protect"))
DIGITS = ROOT / "fixtures" / "digits"
SYNTH = ROOT / "fixtures" / "transform"
KEY_HEX = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
WRONG_HEX = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100"
TOL = 1e-4

# (model, transform flags); every digits input is float32 NCHW in [0, 1].
DIGITS_CASES = [
    ("convmixer", ["--shuffle"]),
    ("convmixer", ["--negpos"]),
    ("convmixer", ["--shuffle", "--negpos"]),
    ("vit", ["--shuffle", "--negpos"]),
    ("vit", ["--scramble-blocks"]),
    ("vit", ["--shuffle", "--negpos", "--scramble-blocks"]),
]


def run(*args, ok=True):
    r = subprocess.run([BIN, *map(str, args)], capture_output=True, text=True)
    if ok:
        assert r.returncode == 0, f"{args}: {r.stderr}"
    return r


@pytest.fixture
def keys(tmp_path):
    k = tmp_path / "key.hex"
    k.write_text(KEY_HEX + "\n")
    w = tmp_path / "wrong.hex"
    w.write_text(WRONG_HEX + "\n")
    return k, w


def session(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def logits(path, x):
    s = session(path)
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def transform(key, x, flags, tmp_path, name, extra=("--range", "0,1")):
    src = tmp_path / f"{name}_plain.npy"
    dst = tmp_path / f"{name}_enc.npy"
    np.save(src, x)
    run("transform-input", "--key-file", key, "--block", flags[0], *flags[1], *extra, "--layout", "nchw", src, dst)
    return np.load(dst)


@pytest.mark.parametrize("name,flags", DIGITS_CASES, ids=lambda v: v if isinstance(v, str) else "+".join(v))
def test_digits_model_on_transformed_inputs_equals_original_on_plain(name, flags, keys, tmp_path):
    key, wrong = keys
    model = DIGITS / f"{name}.onnx"
    out = tmp_path / f"{name}_enc.onnx"
    run("encrypt-patch-embedding", model, "-o", out, "--key-file", key, "--block", 2, *flags, "--range", "0,1")

    x = np.load(DIGITS / "test_x.npy").astype(np.float32)
    y = np.load(DIGITS / "test_y.npy")
    ref = logits(model, x)
    xt = transform(key, x, (2, flags), tmp_path, "right")
    got = logits(out, xt)
    diff = float(np.abs(got - ref).max())
    assert diff <= TOL, f"max |diff| {diff}"
    assert (got.argmax(1) == ref.argmax(1)).all()

    acc_ref = float((ref.argmax(1) == y).mean())
    acc_enc = float((got.argmax(1) == y).mean())
    acc_plain = float((logits(out, x).argmax(1) == y).mean())
    xw = transform(wrong, x, (2, flags), tmp_path, "wrong")
    acc_wrong = float((logits(out, xw).argmax(1) == y).mean())
    print(f"\n{name} {' '.join(flags)}: original {acc_ref:.4f}  transformed model + right key {acc_enc:.4f}  "
          f"plain images {acc_plain:.4f}  wrong key {acc_wrong:.4f}  max|diff| {diff:.2e}", file=sys.stderr)
    assert acc_enc == acc_ref

    # The recorded parameters: everything an input needs, and no key.
    m = onnx.load(str(out))
    meta = {p.key: p.value for p in m.metadata_props}
    rec = json.loads(meta["onnx-protect/input-transform/v1"])
    assert rec["block"] == 2 and rec["channels"] == 1 and rec["layout"] == "nchw"
    assert rec["transforms"] == [f.lstrip("-") for f in flags]
    assert rec["input"] == "input" and rec["patch_embedding"] == "/patch_embed/Conv"
    assert len(rec["key_fingerprint"]) == 16
    blob = out.read_bytes()
    assert KEY_HEX.encode() not in blob and bytes.fromhex(KEY_HEX) not in blob
    onnx.checker.check_model(m, full_check=True)


def test_shuffle_and_negpos_break_plain_and_wrong_key_inputs(keys, tmp_path):
    """With shuffle + negpos the rewritten models are far less accurate on plain images and on
    images transformed with another key."""
    key, wrong = keys
    x = np.load(DIGITS / "test_x.npy").astype(np.float32)
    y = np.load(DIGITS / "test_y.npy")
    for name, flags in [("convmixer", ["--shuffle", "--negpos"]),
                        ("vit", ["--shuffle", "--negpos", "--scramble-blocks"])]:
        out = tmp_path / f"{name}.onnx"
        run("encrypt-patch-embedding", DIGITS / f"{name}.onnx", "-o", out, "--key-file", key, "--block", 2,
            *flags, "--range", "0,1")
        acc_ref = float((logits(DIGITS / f"{name}.onnx", x).argmax(1) == y).mean())
        acc_plain = float((logits(out, x).argmax(1) == y).mean())
        xw = transform(wrong, x, (2, flags), tmp_path, name + "_wrong")
        acc_wrong = float((logits(out, xw).argmax(1) == y).mean())
        assert acc_plain < acc_ref - 0.3, (name, acc_plain, acc_ref)
        assert acc_wrong < acc_ref - 0.3, (name, acc_wrong, acc_ref)


@pytest.mark.parametrize("name,block,flags,shape", [
    ("norm_rgb", 2, ["--shuffle", "--negpos"], (6, 3, 8, 8)),
    ("nobias", 2, ["--shuffle", "--negpos"], (6, 1, 8, 8)),
    ("nobias", 2, ["--shuffle"], (6, 1, 8, 8)),
    ("pos_nchw", 4, ["--shuffle", "--negpos", "--scramble-blocks"], (6, 1, 8, 8)),
])
def test_synthetic_models(name, block, flags, shape, keys, tmp_path):
    key, _ = keys
    model = SYNTH / f"{name}.onnx"
    out = tmp_path / f"{name}_enc.onnx"
    r = run("encrypt-patch-embedding", model, "-o", out, "--key-file", key, "--block", block, *flags,
            "--range", "0,1", "--json")
    report = json.loads(r.stdout)
    x = np.random.default_rng(5).random(shape, dtype=np.float32)
    ref = logits(model, x)
    got = logits(out, transform(key, x, (block, flags), tmp_path, name))
    assert float(np.abs(got - ref).max()) <= TOL
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    if name == "nobias":
        assert report["bias_added"] == ("--negpos" in flags)
    if name == "norm_rgb":
        assert len(report["normalisation"]) == 2


@pytest.mark.parametrize("model,args,code,needle", [
    (DIGITS / "convmixer.onnx", ["--block", "2", "--ffx"], 1, "FFX"),
    (DIGITS / "convmixer.onnx", ["--block", "2", "--scramble-blocks"], 1, "position embedding"),
    (DIGITS / "convmixer.onnx", ["--block", "4", "--shuffle"], 1, "--block 2"),
    (DIGITS / "convmixer.onnx", ["--block", "2", "--negpos"], 1, "range"),
    (DIGITS / "cnn.onnx", ["--block", "2", "--shuffle"], 1, "not a patch embedding"),
    (DIGITS / "mlp.onnx", ["--block", "2", "--shuffle"], 1, "no Conv"),
    (SYNTH / "two_convs.onnx", ["--block", "2", "--shuffle"], 1, "--node"),
    (SYNTH / "padded.onnx", ["--block", "2", "--shuffle"], 1, "not a patch embedding"),
])
def test_refusals(model, args, code, needle, keys, tmp_path):
    key, _ = keys
    out = tmp_path / "out.onnx"
    r = run("encrypt-patch-embedding", model, "-o", out, "--key-file", key, *args, ok=False)
    assert r.returncode != 0, r.stdout
    assert needle in r.stderr, r.stderr
    assert not out.exists()


def test_two_convs_with_node_choice(keys, tmp_path):
    """Two inputs, each with a patch-embedding Conv: --node chooses which input is transformed."""
    key, _ = keys
    out = tmp_path / "o.onnx"
    run("encrypt-patch-embedding", SYNTH / "two_convs.onnx", "-o", out, "--key-file", key, "--block", 2,
        "--shuffle", "--negpos", "--range", "0,1", "--node", "conv_a")
    rng = np.random.default_rng(7)
    x, aux = rng.random((4, 1, 8, 8), dtype=np.float32), rng.random((4, 1, 8, 8), dtype=np.float32)
    ref = session(SYNTH / "two_convs.onnx").run(None, {"input": x, "aux": aux})[0]
    xt = transform(key, x, (2, ["--shuffle", "--negpos"]), tmp_path, "a")
    got = session(out).run(None, {"input": xt, "aux": aux})[0]
    assert float(np.abs(got - ref).max()) <= TOL


def test_shared_input_is_refused(keys, tmp_path):
    """If the input also feeds other layers, they would see transformed data: refused."""
    m = onnx.load(str(SYNTH / "two_convs.onnx"))
    for n in m.graph.node:
        n.input[:] = ["input" if i == "aux" else i for i in n.input]
    del m.graph.input[1]
    p = tmp_path / "shared.onnx"
    onnx.save(m, str(p))
    key, _ = keys
    r = run("encrypt-patch-embedding", p, "-o", tmp_path / "o.onnx", "--key-file", key, "--block", 2,
            "--shuffle", "--node", "conv_a", ok=False)
    assert r.returncode != 0 and "used 2 times" in r.stderr, r.stderr


def test_already_transformed_is_refused(keys, tmp_path):
    key, _ = keys
    once = tmp_path / "once.onnx"
    run("encrypt-patch-embedding", DIGITS / "convmixer.onnx", "-o", once, "--key-file", key, "--block", 2,
        "--shuffle")
    r = run("encrypt-patch-embedding", once, "-o", tmp_path / "twice.onnx", "--key-file", key, "--block", 2,
            "--shuffle", ok=False)
    assert r.returncode == 6 and "already" in r.stderr, (r.returncode, r.stderr)
    shown = run("inspect", once).stdout
    assert "input transform (onnx-protect/input-transform/v1)" in shown, shown
    assert "prepare inputs with: onnx-protect transform-input --block 2 --shuffle --layout nchw" in shown, shown


@pytest.mark.parametrize("flags,layout,dtype", [
    (["--shuffle", "--negpos", "--ffx", "--scramble-blocks"], "nchw", np.uint8),
    (["--shuffle", "--negpos", "--ffx", "--scramble-blocks"], "nhwc", np.uint8),
    (["--shuffle", "--negpos", "--scramble-blocks"], "nchw", np.float32),
    (["--ffx"], "nhwc", np.float32),
])
def test_cli_equals_the_reference_implementation(flags, layout, dtype, keys, tmp_path):
    """fixtures/transform/reference.py, written from docs/transforms.md, gives the CLI's bytes."""
    pytest.importorskip("cryptography")
    import importlib.util
    spec = importlib.util.spec_from_file_location("onnx_protect_transform_reference", SYNTH / "reference.py")
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)

    key, _ = keys
    rng = np.random.default_rng(3)
    shape = (3, 3, 8, 12) if layout == "nchw" else (3, 8, 12, 3)
    if dtype == np.uint8:
        x = rng.integers(0, 256, size=shape, dtype=np.uint8)
        extra = []
        rng_decl = None
    else:
        x = (rng.integers(0, 256, size=shape) / 255.0).astype(np.float32)
        extra = ["--range", "0,1"]
        rng_decl = (0.0, 1.0)
    src, dst = tmp_path / "x.npy", tmp_path / "y.npy"
    np.save(src, x)
    run("transform-input", "--key-file", key, "--block", 2, *flags, *extra, "--layout", layout, src, dst)
    got = np.load(dst)
    want = reference.transform(bytes.fromhex(KEY_HEX), x, 2, "--shuffle" in flags, "--negpos" in flags,
                               "--ffx" in flags, "--scramble-blocks" in flags, rng_decl, layout)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert np.array_equal(got, want)
    back = tmp_path / "back.npy"
    run("transform-input", "--key-file", key, "--block", 2, *flags, *extra, "--layout", layout, "--inverse", dst,
        back)
    if dtype == np.uint8:
        assert np.array_equal(np.load(back), x)
    else:
        # lo+hi-x is rounded to float32: the round trip is within one ulp of 1.
        assert np.abs(np.load(back) - x).max() <= 2**-23
