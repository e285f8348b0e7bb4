"""onnxruntime runs models decrypted in memory: no plaintext file is ever written.

`onnx-protect decrypt MODEL --key-file K --stdout` decrypts in memory (a private
copy-on-write map patched in place) and writes the model to a pipe; Python reads
it into bytes and hands them to `InferenceSession(bytes)`. For external-data
models, each side file comes through the pipe the same way
(`--stdout --external LOCATION`) and reaches onnxruntime as external
initializers from memory.

Runs the built binary (target/debug/onnx-protect, or $ONNX_PROTECT_BIN).
"""
import os
import pathlib
import shutil
import subprocess

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = os.environ.get("ONNX_PROTECT_BIN", str(ROOT / "target" / "debug" / "onnx-protect"))
DIGITS = sorted((ROOT / "fixtures" / "digits").glob("*.onnx"))
EXTERNAL = ROOT / "fixtures" / "models" / "external_data" / "model.onnx"
PROVIDERS = ["CPUExecutionProvider"]


def run(*args):
    r = subprocess.run([BIN, *map(str, args)], capture_output=True, text=True)
    assert r.returncode == 0, f"{args}: {r.stderr}"
    return r.stdout


def decrypted_bytes(model, key, external=None):
    """The decrypted model (or one external file), read from a pipe into memory."""
    args = [BIN, "decrypt", str(model), "--key-file", str(key), "--stdout"]
    if external:
        args += ["--external", external]
    r = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout


def protect(model, tmp_path, mode="ctr", coefficient=None):
    src = tmp_path / "src"
    out = tmp_path / "enc"
    src.mkdir()
    out.mkdir()
    for f in model.parent.iterdir():
        if f.is_file() and not f.is_symlink():
            shutil.copy(f, src / f.name)
    key = tmp_path / "k.key"
    run("keygen", "-o", key)
    enc = out / model.name
    args = ["encrypt", src / model.name, "-o", enc, "--key-file", key, "--mode", f"*={mode}", "--coefficient", "*=0.5", "-q"]
    if coefficient is not None:
        args += ["--coefficient", f"*={coefficient}"]
    run(*args)
    return src / model.name, enc, key


def session(model_bytes, so=None):
    return ort.InferenceSession(model_bytes, so or ort.SessionOptions(), providers=PROVIDERS)


@pytest.mark.parametrize("model", DIGITS, ids=lambda p: p.name)
@pytest.mark.parametrize("mode", ["ctr", "fp"])
def test_session_from_decrypted_bytes_matches_the_original(model, mode, tmp_path):
    original, enc, key = protect(model, tmp_path, mode)
    plain = decrypted_bytes(enc, key)
    assert plain == original.read_bytes()
    x = np.load(ROOT / "fixtures" / "digits" / "test_x.npy")[:128]
    s = session(plain)
    name = s.get_inputs()[0].name
    got = s.run(None, {name: x})[0]
    want = session(str(original)).run(None, {name: x})[0]
    assert got.tobytes() == want.tobytes()
    # Without the key, the same runtime gets something else.
    protected = session(str(enc)).run(None, {name: x})[0]
    assert protected.tobytes() != want.tobytes()


def external_arrays(model_bytes, files):
    """numpy arrays for every external initializer, built from in-memory side files."""
    m = onnx.load_model_from_string(model_bytes)
    names, arrays = [], []
    for t in m.graph.initializer:
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        buf = files[info["location"]]
        dtype = helper.tensor_dtype_to_np_dtype(t.data_type)
        count = int(np.prod(t.dims)) if len(t.dims) else 1
        a = np.frombuffer(buf, dtype=dtype, count=count, offset=int(info.get("offset", 0))).reshape(tuple(t.dims))
        names.append(t.name)
        arrays.append(a)
    return names, arrays


def feeds(s):
    rng = np.random.default_rng(0)
    out = {}
    for i in s.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in i.shape]
        out[i.name] = rng.standard_normal(shape).astype(np.float32)
    return out


@pytest.mark.parametrize("mode", ["ctr", "fp"])
def test_external_initializers_from_memory(mode, tmp_path):
    original, enc, key = protect(EXTERNAL, tmp_path, mode, coefficient=1)
    model_bytes = decrypted_bytes(enc, key)
    assert model_bytes == original.read_bytes()
    locations = sorted({e.value for t in onnx.load_model_from_string(model_bytes).graph.initializer
                        for e in t.external_data if e.key == "location"})
    files = {loc: decrypted_bytes(enc, key, loc) for loc in locations}
    for loc, data in files.items():
        assert data == (original.parent / loc).read_bytes(), loc
        # The protected side files differ: the weights in them were encrypted.
        assert data != (enc.parent / loc).read_bytes(), loc
    want = session(str(original))
    f = feeds(want)
    expected = want.run(None, f)

    # 1. SessionOptions.add_external_initializers with OrtValues over the decrypted buffers.
    names, arrays = external_arrays(model_bytes, files)
    so = ort.SessionOptions()
    so.add_external_initializers(names, [ort.OrtValue.ortvalue_from_numpy(a) for a in arrays])
    got = session(model_bytes, so).run(None, f)
    for x, y in zip(got, expected):
        assert x.tobytes() == y.tobytes()

    # 2. The whole side files from memory (onnxruntime >= 1.24.1), matched by location.
    so = ort.SessionOptions()
    if hasattr(so, "add_external_initializers_from_files_in_memory"):
        locs = list(files)
        so.add_external_initializers_from_files_in_memory(
            locs, [np.frombuffer(files[l], dtype=np.uint8) for l in locs], [len(files[l]) for l in locs]
        )
        got = session(model_bytes, so).run(None, f)
        for x, y in zip(got, expected):
            assert x.tobytes() == y.tobytes()


def test_stdout_refuses_a_regular_file(tmp_path):
    model = DIGITS[0]
    _, enc, key = protect(model, tmp_path)
    target = tmp_path / "plain.onnx"
    with open(target, "wb") as f:
        r = subprocess.run([BIN, "decrypt", str(enc), "--key-file", str(key), "--stdout"], stdout=f,
                           stderr=subprocess.PIPE)
    assert r.returncode != 0
    assert b"file" in r.stderr
    assert target.stat().st_size == 0


def test_stdout_with_a_wrong_key_writes_nothing(tmp_path):
    _, enc, _ = protect(DIGITS[0], tmp_path)
    other = tmp_path / "other.key"
    run("keygen", "-o", other)
    r = subprocess.run([BIN, "decrypt", str(enc), "--key-file", str(other), "--stdout"], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE)
    assert r.returncode == 4
    assert r.stdout == b""
