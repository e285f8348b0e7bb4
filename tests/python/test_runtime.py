"""onnxruntime loads protected models, and decrypted models compute bit-identical outputs.

Runs the built binary (target/debug/onnx-protect, or $ONNX_PROTECT_BIN) on every
fixture model and on the digits models.
"""
import os
import pathlib
import shutil
import subprocess

import numpy as np
import onnxruntime as ort
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = os.environ.get("ONNX_PROTECT_BIN", str(ROOT / "target" / "debug" / "onnx-protect"))

FIXTURES = sorted(p for p in (ROOT / "fixtures" / "models").glob("*/model.onnx"))
DIGITS = sorted((ROOT / "fixtures" / "digits").glob("*.onnx"))


def run(*args):
    r = subprocess.run([BIN, *map(str, args)], capture_output=True, text=True)
    assert r.returncode == 0, f"{args}: {r.stderr}"
    return r.stdout


def feeds(session, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for i in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in i.shape]
        t = i.type
        if t == "tensor(bool)":
            out[i.name] = np.array(True).reshape(shape) if shape else np.array(True)
        elif t in ("tensor(int64)", "tensor(int32)"):
            out[i.name] = np.zeros(shape, dtype=np.int64 if "64" in t else np.int32)
        elif t == "tensor(uint8)":
            out[i.name] = rng.integers(0, 255, size=shape, dtype=np.uint8)
        elif t == "tensor(int8)":
            out[i.name] = rng.integers(-100, 100, size=shape, dtype=np.int8)
        elif t == "tensor(float16)":
            out[i.name] = rng.standard_normal(shape).astype(np.float16)
        elif t == "tensor(double)":
            out[i.name] = rng.standard_normal(shape)
        else:
            out[i.name] = rng.standard_normal(shape).astype(np.float32)
    return out


def copy_case(model, dest):
    for f in model.parent.iterdir():
        if f.is_file() and not f.is_symlink():
            shutil.copy(f, dest / f.name)
    return dest / model.name


@pytest.mark.parametrize("model", FIXTURES + DIGITS, ids=lambda p: f"{p.parent.name}/{p.name}")
@pytest.mark.parametrize("mode", ["fp", "ctr"])
def test_protected_model_loads_and_decrypted_outputs_are_bit_identical(model, mode, tmp_path):
    src_dir = tmp_path / "src"
    enc_dir = tmp_path / "enc"
    dec_dir = tmp_path / "dec"
    for d in (src_dir, enc_dir, dec_dir):
        d.mkdir()
    original = copy_case(model, src_dir)
    key = tmp_path / "k.key"
    run("keygen", "-o", key)
    enc = enc_dir / original.name
    run("encrypt", original, "-o", enc, "--key-file", key, "--mode", f"*={mode}", "--coefficient", "*=0.5", "-q")
    # The protected model is still a model onnxruntime accepts and runs.
    protected = ort.InferenceSession(str(enc), providers=["CPUExecutionProvider"])
    f = feeds(protected)
    protected.run(None, f)
    dec = dec_dir / original.name
    run("decrypt", enc, "-o", dec, "--key-file", key, "-q")
    assert dec.read_bytes() == original.read_bytes()
    a = ort.InferenceSession(str(original), providers=["CPUExecutionProvider"]).run(None, f)
    b = ort.InferenceSession(str(dec), providers=["CPUExecutionProvider"]).run(None, f)
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()


@pytest.mark.parametrize("model", DIGITS, ids=lambda p: p.name)
def test_format_preserving_mode_keeps_outputs_finite(model, tmp_path):
    key = tmp_path / "k.key"
    run("keygen", "-o", key)
    enc = tmp_path / "enc.onnx"
    run("encrypt", model, "-o", enc, "--key-file", key, "--mode", "*=fp", "--coefficient", "*=0.5", "-q")
    x = np.load(ROOT / "fixtures" / "digits" / "test_x.npy")[:64]
    s = ort.InferenceSession(str(enc), providers=["CPUExecutionProvider"])
    y = s.run(None, {s.get_inputs()[0].name: x})[0]
    assert np.isfinite(y).all()
