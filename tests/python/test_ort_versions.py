"""onnx_protect.InferenceSession on the onnxruntime versions the package supports
(`onnxruntime>=1.15`, crates/python/pyproject.toml; docs/python.md#onnxruntime-versions):
the oldest, the last before `add_external_initializers_from_files_in_memory` (1.24.1),
the first with it, and the newest on PyPI. For each, a virtual environment under
target/ort-venvs (made once with pip from PyPI, then reused) gets that onnxruntime (with
numpy < 2 where it needs it) and the wheel under test (scripts/build-wheel.sh's, found as
by test_wheel.py), and runs tests/python/ort_version_check.py there: protected models
(single-file; external data protected into another folder and into its own) give that
onnxruntime's outputs on the plain models bit for bit, weights in place; the fallback for
unshared data over 2 GiB takes the files from memory where the version has the call and one
OrtValue per initializer where it does not; a graph naming the sentinel '.' fails to load
rather than read something; options that write the decrypted model are refused (EP context
models switched off).
Skipped when there is no wheel, or when a virtual environment has to be made and PyPI
cannot be reached. The last test runs that fallback on the test interpreter, on a model
protected into its own folder whose plain files are gone."""
import concurrent.futures
import fcntl
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_protect as op
from test_wheel import the_wheel

ROOT = pathlib.Path(__file__).resolve().parents[2]
VENVS = pathlib.Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target") / "ort-venvs"
CHECK = ROOT / "tests" / "python" / "ort_version_check.py"
# (onnxruntime version, numpy requirement, how unshared data over 2 GiB reaches it, the
# way by default and with in_place=True: from 1.31 every large tensor is read in place from
# files in memory, before that the large MatMul/Gemm weights go in with add_initializer
# when asked, and the digits models' weights are under the default 64 KiB).
VERSIONS = [
    ("1.15.0", "numpy<2", "initializers", ("graph", "in_place")),  # the oldest pyproject.toml allows
    ("1.23.2", "numpy", "initializers", ("graph", "in_place")),  # the last without files in memory
    ("1.24.1", "numpy", "files_in_memory", ("graph", "in_place")),  # the first with them
    ("1.32.0", "numpy", "files_in_memory", ("files_in_place", "files_in_place")),  # the newest on PyPI when written
]


def clean_env():
    return {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "PIP_REQUIRE"))}


def offered_versions():
    """The onnxruntime versions the package index offers, or why it cannot be reached."""
    r = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "onnxruntime"],
                       env=clean_env(), capture_output=True, text=True, timeout=300)
    listed = [line for line in r.stdout.splitlines() if line.startswith("Available versions:")]
    if r.returncode != 0 or not listed:
        return None, (r.stderr.strip().splitlines() or ["no output"])[-1]
    return {v.strip() for v in listed[0].split(":", 1)[1].split(",")}, None


def made(version, numpy_req):
    """target/ort-venvs/onnxruntime-VERSION and what its stamp (written last, once it is
    complete) must say."""
    venv = VENVS / f"onnxruntime-{version}"
    want = {"onnxruntime": version, "numpy": numpy_req, "python": sys.version.split()[0]}
    stamp = venv / "onnx-protect-ort.json"
    return venv, want, stamp.exists() and json.loads(stamp.read_text()) == want


def make_venv(version, numpy_req):
    """Makes the virtual environment of `version` (an interrupted one is made again);
    returns None, or pip's output when it failed. `--no-compile`: Python compiles what
    the check imports, not all of sympy (an onnxruntime dependency), which took 2/3 of
    the time."""
    venv, want, _ = made(version, numpy_req)
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    r = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        "--no-compile", f"onnxruntime=={version}", numpy_req],
                       env=clean_env(), capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        return r.stdout + r.stderr
    (venv / "onnx-protect-ort.json").write_text(json.dumps(want))
    return None


@pytest.fixture(scope="module")
def venvs():
    """Every version's virtual environment, the missing ones made side by side, under a
    lock (one pytest at a time makes or changes them). Yields {version: why it is missing}:
    ("skip", PyPI unreachable) or ("fail", pip's output)."""
    the_wheel()  # skips first when there is no wheel to test
    VENVS.mkdir(parents=True, exist_ok=True)
    with open(VENVS / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        missing = [(v, n) for v, n, *_ in VERSIONS if not made(v, n)[2]]
        why = {}
        if missing:
            offered, unreachable = offered_versions()
            if offered is None:
                why = {v: ("skip", f"PyPI cannot be reached to make its virtual environment: {unreachable}")
                       for v, _ in missing}
                missing = []
            why.update({v: ("fail", "not on the package index") for v, _ in missing if v not in offered})
            missing = [(v, n) for v, n in missing if v not in why]
            with concurrent.futures.ThreadPoolExecutor(max(1, len(missing))) as pool:
                for (v, _), err in zip(missing, pool.map(lambda vn: make_venv(*vn), missing)):
                    if err is not None:
                        why[v] = ("fail", f"pip could not make its virtual environment: {err}")
        yield why


def install_wheel(venv, wheel):
    """The wheel under test, installed unless this very file is already."""
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    stamp = venv / "onnx-protect-wheel.sha256"
    if stamp.exists() and stamp.read_text() == digest:
        return
    r = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        "--no-deps", "--force-reinstall", "--no-compile", str(wheel)],
                       env=clean_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    stamp.write_text(digest)


def sentinel_model(folder):
    """y = x · Transpose(W), twice: in sentinel.onnx W (1 KiB, the least a shared tensor
    has) has its data at the sentinel '.', as a shared tensor has in the graph handed
    over, and constant folding reads it; the directory '.' has a size (4096 bytes on
    ext4), larger than W: the read must fail, not return some bytes. control.onnx holds W:
    it loads (so the failure is the read's). IR 8, which onnxruntime 1.15 reads."""
    w = np.random.default_rng(3).standard_normal((16, 16)).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "W.npy", w)
    for name, at_sentinel in (("control.onnx", False), ("sentinel.onnx", True)):
        t = numpy_helper.from_array(w, "W")
        if at_sentinel:
            t.ClearField("raw_data")
            t.data_location = TensorProto.EXTERNAL
            for k, v in (("location", "."), ("offset", "0"), ("length", str(w.nbytes))):
                t.external_data.add(key=k, value=v)
        graph = helper.make_graph(
            [helper.make_node("Transpose", ["W"], ["Wt"], perm=[1, 0]), helper.make_node("MatMul", ["x", "Wt"], ["y"])],
            "sentinel",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])],
            [t],
        )
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
        (folder / name).write_bytes(m.SerializeToString())


@pytest.mark.parametrize("version, numpy_req, big, ways", VERSIONS, ids=[v[0] for v in VERSIONS])
def test_inference_session_on_this_onnxruntime_version(version, numpy_req, big, ways, venvs, tmp_path):
    wheel = the_wheel()
    if version in venvs:
        outcome, why = venvs[version]
        (pytest.skip if outcome == "skip" else pytest.fail)(f"onnxruntime {version}: {why}")
    venv, _, complete = made(version, numpy_req)
    assert complete
    install_wheel(venv, wheel)
    sentinel_model(tmp_path / "sentinel")
    r = subprocess.run([str(venv / "bin" / "python"), str(CHECK), str(ROOT), str(tmp_path)],
                       env=clean_env(), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-6000:]
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["onnxruntime"] == version
    assert report["package"].startswith(str(venv)), report["package"]
    assert sorted(report["cases"]) == ["external-other-folder", "external-same-folder", "mlp", "vit"]
    for name, got in report["cases"].items():
        assert (got["default"], got["in_place=True"]) == ways, (name, got)
        assert got["in_place=False"] == "graph", (name, got)
        if name.startswith("external"):
            assert got["over 2 GiB"] == big, (name, got)
    print(version, json.dumps(report))


def test_the_fallback_without_files_in_memory_on_a_model_protected_into_its_own_folder(tmp_path, monkeypatch):
    """On the test interpreter's onnxruntime, as if it were older than 1.24.1: the external
    files of a model protected into its own folder are renamed (model.protected.onnx.1.data,
    ...), its full decryption names them as the original did, and `external_tensors` names
    the same files, so one OrtValue per initializer finds its bytes. The plain files are
    gone first: nothing is read from them."""
    src = ROOT / "fixtures" / "models" / "external_data"
    folder = tmp_path / "m"
    shutil.copytree(src, folder)
    key = op.new_key()
    op.encrypt(folder / "model.onnx", folder / "model.protected.onnx", key=key, coefficient=1)
    for name in ("model.onnx", "weights.bin", "extra.bin"):
        (folder / name).unlink()
    with op.load(folder / "model.protected.onnx", key=key) as m:
        assert sorted(m.external) == ["extra.bin", "weights.bin"]
        assert {t.location for t in m.external_tensors} == set(m.external)
    monkeypatch.setattr(op._session, "_ort_supports_files_in_memory", lambda _ort: False)
    monkeypatch.chdir(tmp_path)  # the model is handed over as bytes: no data file here either
    s = op._session._session_with_external_files(ort, np, str(folder / "model.protected.onnx"), key, None, (),
                                                 ort.SessionOptions(), ["CPUExecutionProvider"], None, {})
    assert s.onnx_protect_weights == "initializers"
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    want = ort.InferenceSession(str(src / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert [a.tobytes() for a in s.run(None, {"x": x})] == [a.tobytes() for a in want]
