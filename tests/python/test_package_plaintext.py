"""No plaintext model reaches a file: `onnx_protect.load`, `InferenceSession` and `export`
run in a child process whose TMPDIR is a fresh directory. A watcher thread polls that
directory and the output directory during every step and keeps a copy of every file it
sees; after each step the set of files under TMPDIR must be what the imports of torch
and onnxruntime (and a first export of an unrelated module into memory) left there
before the first step, and afterwards no file seen at any time may contain the
plaintext of an encrypted tensor. The export test needs torch
(an optional dependency; it is skipped where torch is not installed).
"""
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

import onnx_protect as op

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXTERNAL = ROOT / "fixtures" / "models" / "external_data"

CHILD = r'''
import json, os, sys, threading, time
import numpy as np
import onnx
import onnxruntime as ort
import onnx_protect as op

mode, out_dir, ext_protected, ext_key, cnn_protected, cnn_key = sys.argv[1:7]
if mode == "export":
    import io
    import torch
    # Both exporters once, on an unrelated module and into memory, before the baseline:
    # torch writes files of its own under TMPDIR on first use (a template of
    # torch.distributed's remote modules), which are not ours to account for.
    warm = torch.nn.Linear(2, 2).eval()
    torch.onnx.export(warm, (torch.zeros(1, 2),), dynamo=True)
    torch.onnx.export(warm, (torch.zeros(1, 2),), io.BytesIO(), dynamo=False)
tmp = os.environ["TMPDIR"]
seen = {}          # path -> contents, every version seen
stop = threading.Event()

def files():
    for base in (tmp, out_dir):
        for d, _, names in os.walk(base):
            for n in names:
                yield os.path.join(d, n)

def watch():
    while not stop.is_set():
        for p in files():
            try:
                with open(p, "rb") as f:
                    data = f.read()
            except OSError:
                continue  # gone between the listing and the read
            seen.setdefault(p, set()).add(data)
        time.sleep(0.001)

def regular_files_under_tmp():
    return sorted(os.path.relpath(p, tmp) for p in files() if p.startswith(tmp + os.sep))

baseline = regular_files_under_tmp()
watcher = threading.Thread(target=watch, daemon=True)
watcher.start()
after = {}

if mode == "export":
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 10)
    ).eval()
    x = torch.randn(2, 1, 8, 8)
    key = op.new_key()
    protected = os.path.join(out_dir, "net.onnx")
    op.export(net, (x,), protected, key=key, overrides={"coefficient": 1.0})
    after["export"] = regular_files_under_tmp()
    op.export(net, (x,), os.path.join(out_dir, "net_ts.onnx"), key=key, dynamo=False, overrides={"coefficient": 1.0})
    after["export (dynamo=False)"] = regular_files_under_tmp()
    m = op.load(protected, key=key)
    after["load"] = regular_files_under_tmp()
    s = op.InferenceSession(protected, key=key, providers=["CPUExecutionProvider"])
    got = s.run(None, {s.get_inputs()[0].name: x.numpy()})[0]
    after["InferenceSession"] = regular_files_under_tmp()
    max_abs_diff = float(np.abs(got - net(x).detach().numpy()).max())
else:
    m = op.load(cnn_protected, key_file=cnn_key)
    after["load"] = regular_files_under_tmp()
    s = op.InferenceSession(cnn_protected, key_file=cnn_key, providers=["CPUExecutionProvider"])
    after["InferenceSession"] = regular_files_under_tmp()
    protected, max_abs_diff = cnn_protected, 0.0
e = op.load(ext_protected, key_file=ext_key)
se = op.InferenceSession(ext_protected, key_file=ext_key, providers=["CPUExecutionProvider"])
after["external data"] = regular_files_under_tmp()
time.sleep(0.05)
stop.set()
watcher.join()

# The plaintext of every encrypted tensor, from the decrypted models.
def encrypted_plaintexts(protected_path, model_bytes, external):
    names = {t["name"] for t in op.inspect(protected_path)["protection"]["tensors"]}
    proto = onnx.load_model_from_string(model_bytes)
    out = []
    for t in proto.graph.initializer:
        if t.name not in names:
            continue
        if t.data_location == onnx.TensorProto.EXTERNAL:
            info = {kv.key: kv.value for kv in t.external_data}
            off, n = int(info.get("offset", 0)), int(info["length"])
            out.append(bytes(memoryview(external[info["location"]]))[off:off + n])
        else:
            out.append(t.raw_data)
    return out

secrets = encrypted_plaintexts(protected, m.model, {})
secrets += encrypted_plaintexts(ext_protected, e.model, e.external)
markers = [s[:64] for s in secrets if len(s) >= 64]
leaks = sorted({p for p, versions in seen.items() for v in versions for mk in markers if mk in v})
print(json.dumps({
    "baseline": baseline,
    "after": after,
    "seen": sorted(seen),
    "markers": len(markers),
    "leaks": leaks,
    "max_abs_diff": max_abs_diff,
}))
'''


def watched(tmp_path, mode):
    """Runs the child in `mode` with a fresh TMPDIR; returns its report and the output dir."""
    fresh_tmp = tmp_path / "tmpdir"
    out = tmp_path / "out"
    fresh_tmp.mkdir()
    out.mkdir()
    src = tmp_path / "src"
    src.mkdir()
    for f in EXTERNAL.iterdir():
        if f.suffix in (".onnx", ".bin"):
            shutil.copy(f, src / f.name)
    key = tmp_path / "k.key"
    op.keygen(key)
    enc_dir = tmp_path / "enc"
    enc_dir.mkdir()
    op.encrypt(src / "model.onnx", enc_dir / "model.onnx", key_file=key, coefficient=1.0)
    cnn = tmp_path / "cnn.onnx"
    op.encrypt(ROOT / "fixtures" / "digits" / "cnn.onnx", cnn, key_file=key, coefficient=1.0)
    env = dict(os.environ, TMPDIR=str(fresh_tmp))
    r = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(out), str(enc_dir / "model.onnx"), str(key), str(cnn), str(key)],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["markers"] >= 4, "the check looks for the plaintext of several encrypted tensors"
    assert res["leaks"] == [], f"files that held plaintext: {res['leaks']}"
    for step, files in res["after"].items():
        assert files == res["baseline"], f"{step} left {sorted(set(files) - set(res['baseline']))} under TMPDIR"
    return res, out


def test_load_and_sessions_write_no_file(tmp_path):
    res, out = watched(tmp_path, "load")
    assert set(res["after"]) == {"load", "InferenceSession", "external data"}
    assert list(out.iterdir()) == []


def test_export_leaves_no_plaintext_file(tmp_path):
    pytest.importorskip("torch", reason="torch is optional: export is tested where it is installed")
    res, out = watched(tmp_path, "export")
    # The only files ever seen next to the outputs are the protected models and their
    # staging files, which hold ciphertext (the leak check covers every version seen).
    assert sorted(p.name for p in out.iterdir()) == ["net.onnx", "net_ts.onnx"]
    assert res["max_abs_diff"] < 1e-5, "the session of the exported model computes what torch computes"
