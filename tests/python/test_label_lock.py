"""The label lock (`encrypt --lock-outputs`) on the classifiers of fixtures/digits and
fixtures/zoo, run in onnxruntime:

* without the key, a copy locked with its weights in clear loads and runs anywhere, and
  its top-1 accuracy falls to chance: every example the original classifies correctly is
  answered wrongly (the class order is a derangement); the figures are printed per model;
* with the key, `onnx_protect.InferenceSession` and the C ABI (through ctypes) give
  exactly the original's outputs, and `decrypt` gives back the original file byte for byte,
  with the weights encrypted too or not.
"""

import importlib.util
import os
import pathlib
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

import onnx_protect as op
from test_package import cli

ROOT = pathlib.Path(__file__).resolve().parents[2]
# The C library scripts/test.sh builds (ONNX_PROTECT_CAPI_LIBDIR, as test_package_capi uses);
# run alone, the debug build's if there is one.
LIB = pathlib.Path(os.environ.get("ONNX_PROTECT_CAPI_LIBDIR", ROOT / "target" / "debug")) / "libonnx_protect.so"

# (model, test inputs, test labels)
MODELS = [
    *[(f"digits/{m}.onnx", "digits/test_x.npy", "digits/test_y.npy") for m in ("mlp", "cnn", "convmixer", "vit")],
    *[(f"zoo/vowels/{m}.onnx", "zoo/vowels/test_x.npy", "zoo/vowels/test_y.npy") for m in ("mlp", "lstm", "gru")],
    *[(f"zoo/osuleaf/{m}.onnx", "zoo/osuleaf/test_x.npy", "zoo/osuleaf/test_y.npy") for m in ("conv1d", "vit")],
]


def run(path, x):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})


def lock(tmp_path, src, *extra):
    key = tmp_path / "k.key"
    if not key.exists():
        op.keygen(key)
    out = tmp_path / f"locked{len(extra)}.onnx"
    cli("encrypt", src, "-o", out, "--key-file", key, "--lock-outputs", "-q", "--force", *extra)
    return out, key


@pytest.mark.parametrize("model,xs,ys", MODELS, ids=[m[0] for m in MODELS])
def test_locked_outputs_are_at_chance_without_the_key_and_exact_with_it(tmp_path, model, xs, ys):
    src = ROOT / "fixtures" / model
    x = np.load(ROOT / "fixtures" / xs)[:512]
    y = np.load(ROOT / "fixtures" / ys)[:512].astype(np.int64)
    want = run(src, x)
    locked, key = lock(tmp_path, src, "--clear-weights")
    got = run(locked, x)  # no key: the locked copy runs as it is
    orig_top1, lock_top1 = want[0].argmax(-1), got[0].argmax(-1)
    acc, acc_locked = float((orig_top1 == y).mean()), float((lock_top1 == y).mean())
    chance = float(np.bincount(y).max() / len(y))
    print(f"{model}: top-1 original {acc:.3f}, locked without the key {acc_locked:.3f}, chance {chance:.3f}")
    # A derangement: no example keeps its answer, so every correct one becomes wrong.
    assert not np.any(orig_top1 == lock_top1)
    assert acc_locked <= 1.0 - acc + 1e-9
    # The same values, in another order.
    np.testing.assert_array_equal(np.sort(got[0], axis=-1), np.sort(want[0], axis=-1))
    for extra in ((), ("--clear-weights",)):
        enc, _ = lock(tmp_path, src, *extra)
        sess = op.InferenceSession(enc, key_file=key, providers=["CPUExecutionProvider"])
        outs = sess.run(None, {sess.get_inputs()[0].name: x})
        for a, b in zip(outs, want):
            np.testing.assert_array_equal(a, b)
        back = tmp_path / f"back{len(extra)}.onnx"
        cli("decrypt", enc, "-o", back, "--key-file", key, "-q")
        assert back.read_bytes() == src.read_bytes()


@pytest.mark.skipif(
    not LIB.exists() and "ONNX_PROTECT_CAPI_LIBDIR" not in os.environ,
    reason="no libonnx_protect.so: set ONNX_PROTECT_CAPI_LIBDIR (scripts/test.sh does)",
)
def test_the_c_abi_gives_the_original_outputs_of_a_locked_model(tmp_path):
    spec = importlib.util.spec_from_file_location("session_ctypes", ROOT / "examples/c/session_ctypes.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    lib = example.Lib(str(LIB))
    src = ROOT / "fixtures" / "digits" / "cnn.onnx"
    x = np.load(ROOT / "fixtures" / "digits" / "test_x.npy")[:64]
    want = run(src, x)[0]
    for extra in ((), ("--clear-weights",)):
        enc, key = lock(tmp_path, src, *extra)
        s = example.session(lib, str(enc), str(key))
        np.testing.assert_array_equal(s.run(None, {s.get_inputs()[0].name: x})[0], want)


def test_a_model_without_an_output_layer_is_refused_in_one_line(tmp_path):
    key = tmp_path / "k.key"
    op.keygen(key)
    src = ROOT / "fixtures" / "lock" / "no_head_conv" / "model.onnx"
    out = tmp_path / "o.onnx"
    r = subprocess.run(
        [os.environ.get("ONNX_PROTECT_BIN", str(ROOT / "target" / "debug" / "onnx-protect")), "encrypt", str(src), "-o",
         str(out), "--key-file", str(key), "--lock-outputs", "--clear-weights"],
        capture_output=True, text=True,
    )
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if not ln.startswith("hint:")]
    assert len(lines) == 1 and "Conv" in lines[0], r.stderr
    assert not out.exists()


def test_a_session_below_the_top_tier_of_a_locked_model_is_refused_not_served_in_locked_order(tmp_path):
    """Below the top tier the lock stays (format.md §15): the scores would come out in
    locked order, so the session is refused, naming why; the top tier's session is exact."""
    src = ROOT / "fixtures" / "digits" / "mlp.onnx"
    x = np.load(ROOT / "fixtures" / "digits" / "test_x.npy")[:64]
    key = tmp_path / "k.key"
    op.keygen(key, tiers=2)
    enc = tmp_path / "locked.onnx"
    cli("encrypt", src, "-o", enc, "--key-file", key, "--tiers", "2", "--lock-outputs", "-q")
    tier1 = tmp_path / "k.key.tier1"
    assert tier1.exists()
    for source in (enc, enc.read_bytes()):  # a path, and the protected model's bytes
        for kw in (dict(key_file=tier1), dict(key_file=key, tier=1)):
            with pytest.raises(op.OnnxProtectError, match="label-locked"):
                op.InferenceSession(source, providers=["CPUExecutionProvider"], **kw)
    sess = op.InferenceSession(enc, key_file=key, providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(sess.run(None, {sess.get_inputs()[0].name: x})[0], run(src, x)[0])
