"""The wheel installs and works without Rust: scripts/build-wheel.sh's wheel (the one in
$ONNX_PROTECT_WHEEL_DIR, else target/wheels) goes into a fresh virtual environment with
no cargo or rustc on PATH, and the package tests that need no torch (test_package.py,
test_package_parity.py) run there, importing the package from that environment; the
other tests run against the same wheel in scripts/test.sh's interpreter. The metadata's
extras are checked too: `[torch]` brings what `export` needs (onnx, onnxscript)."""
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
WHEELS = pathlib.Path(os.environ.get("ONNX_PROTECT_WHEEL_DIR") or ROOT / "target" / "wheels")
BIN = os.environ.get("ONNX_PROTECT_BIN", str(ROOT / "target" / "debug" / "onnx-protect"))
PACKAGE_TESTS = ["test_package.py", "test_package_parity.py"]
# What the package tests import besides the package and its onnxruntime extra, pinned
# as the test interpreter has them (tests/requirements.txt).
TEST_DEPS = ["pytest", "onnx", "pyrage", "cryptography"]


def the_wheel():
    wheels = sorted(WHEELS.glob("onnx_protect-*.whl"))
    if not wheels:
        pytest.skip(f"no wheel in {WHEELS}: build one with `bash scripts/build-wheel.sh` (scripts/test.sh does)")
    assert len(wheels) == 1, f"one wheel expected in {WHEELS}, found {[w.name for w in wheels]}"
    return wheels[0]


def pinned(name):
    for line in (ROOT / "tests" / "requirements.txt").read_text().splitlines():
        if line.split("==")[0].strip().lower() == name:
            return line.strip()
    return name


def without_rust(path):
    """PATH with every directory holding cargo or rustc left out."""
    keep = [d for d in path.split(os.pathsep)
            if d and not any(os.path.exists(os.path.join(d, t)) for t in ("cargo", "rustc"))]
    return os.pathsep.join(keep)


def test_the_wheel_is_abi3_manylinux_and_its_extras_bring_what_export_needs():
    wheel = the_wheel()
    assert "-cp311-abi3-manylinux_" in wheel.name, wheel.name
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode()
        assert not [n for n in z.namelist() if n.endswith((".rs", "Cargo.toml"))], "no sources in the wheel"
    requires = [line for line in text.splitlines() if line.startswith("Requires-Dist:")]
    for dep, extra in (("torch", "torch"), ("onnx", "torch"), ("onnxscript", "torch"),
                       ("onnxruntime", "onnxruntime"), ("numpy", "onnxruntime")):
        assert any(r.split()[1].startswith(dep) and f"extra == '{extra}'" in r for r in requires), (dep, requires)
    assert "Requires-Python: >=3.11" in text


def test_the_wheel_installed_without_rust_passes_the_package_tests(tmp_path):
    wheel = the_wheel()
    if not os.path.exists(BIN):
        pytest.skip(f"the package tests compare with the CLI: build {BIN} first (cargo build)")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CARGO", "RUSTUP", "PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = without_rust(os.environ["PATH"])
    assert shutil.which("cargo", path=env["PATH"]) is None and shutil.which("rustc", path=env["PATH"]) is None
    deps = [pinned(d) for d in ("onnxruntime", "numpy", *TEST_DEPS)]
    r = subprocess.run([str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        f"{wheel}[onnxruntime]", *deps], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    where = subprocess.run([str(py), "-c", "import onnx_protect, sys; print(onnx_protect.__file__)"],
                           env=env, cwd=tmp_path, capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(str(venv)), where
    env["ONNX_PROTECT_BIN"] = str(pathlib.Path(BIN).resolve())
    tests = [str(ROOT / "tests" / "python" / t) for t in PACKAGE_TESTS]
    r = subprocess.run([str(py), "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
                       env=env, cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    assert " passed" in r.stdout and " failed" not in r.stdout, r.stdout[-2000:]
    print(r.stdout.strip().splitlines()[-1])
