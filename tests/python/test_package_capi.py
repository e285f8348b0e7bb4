"""The C ABI (crates/capi) from C: examples/c/decrypt_model.c is compiled with the
system C compiler against the checked-in header, linked to the shared and to the
static library, and run on protected models (made by the package and by the CLI)
with every key source and every failure a C caller meets. examples/c/session_ctypes.py then creates an
onnxruntime session from bytes decrypted through the same ABI.

Uses libonnx_protect.{so,a} from $ONNX_PROTECT_CAPI_LIBDIR (scripts/test.sh: the library
`cargo test --workspace` built), else from target/debug (built here if missing), and the
CLI binary.
"""
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
from pyrage import x25519

import onnx_protect as op
from test_package import cli

ROOT = pathlib.Path(__file__).resolve().parents[2]
LIBDIR = pathlib.Path(os.environ.get("ONNX_PROTECT_CAPI_LIBDIR", ROOT / "target" / "debug"))
EXAMPLE = ROOT / "examples" / "c" / "decrypt_model.c"
CC = os.environ.get("CC", "gcc")

# OnnxProtectStatus values (crates/capi/include/onnx_protect.h).
IO, MALFORMED, KEY, NOT_PROTECTED, WRONG_KEY, MODIFIED, NOT_SIGNED = 2, 3, 4, 5, 8, 9, 10


@pytest.fixture(scope="module")
def programs(tmp_path_factory):
    """The example linked to the shared library and to the static one."""
    if not (LIBDIR / "libonnx_protect.so").exists() or not (LIBDIR / "libonnx_protect.a").exists():
        assert "ONNX_PROTECT_CAPI_LIBDIR" not in os.environ, f"no libonnx_protect in {LIBDIR}"
        subprocess.run(["cargo", "build", "-q", "-p", "onnx-protect-capi"], cwd=ROOT, check=True)
    out = tmp_path_factory.mktemp("c")
    flags = ["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-I", str(ROOT / "crates/capi/include")]
    shared, static = out / "decrypt_model", out / "decrypt_model_static"
    subprocess.run(
        [CC, *flags, str(EXAMPLE), "-L", str(LIBDIR), "-lonnx_protect", f"-Wl,-rpath,{LIBDIR}", "-o", str(shared)],
        check=True,
    )
    # A library built with the feature tpm (scripts/test.sh, with swtpm) also needs the
    # system's TSS 2.0 libraries when linked statically; unused ones are dropped (--as-needed).
    tss = subprocess.run(["pkg-config", "--libs", "tss2-esys", "tss2-tctildr", "tss2-mu", "tss2-sys"],
                         capture_output=True, text=True) if shutil.which("pkg-config") else None
    tss_libs = tss.stdout.split() if tss is not None and tss.returncode == 0 else []
    subprocess.run(
        [CC, *flags, str(EXAMPLE), str(LIBDIR / "libonnx_protect.a"), "-lpthread", "-ldl", "-lm", *tss_libs,
         "-o", str(static)],
        check=True,
    )
    return shared, static


@pytest.fixture
def protected(tmp_path):
    """The external-data fixture protected by the package: (plain model, protected model, key file)."""
    plain = tmp_path / "plain"
    plain.mkdir()
    for f in (ROOT / "fixtures/models/external_data").iterdir():
        if f.suffix in (".onnx", ".bin"):
            shutil.copy(f, plain / f.name)
    key = tmp_path / "k.key"
    op.keygen(key)
    enc = tmp_path / "enc" / "model.onnx"
    enc.parent.mkdir()
    op.encrypt(plain / "model.onnx", enc, key_file=key)
    return plain / "model.onnx", enc, key


def run(program, *args, env=None):
    return subprocess.run([str(program), *map(str, args)], capture_output=True, text=True, env=env)


@pytest.mark.parametrize("link", ["shared", "static"])
def test_the_c_example_decrypts_byte_identical_models_with_external_data(programs, protected, link):
    program = programs[0] if link == "shared" else programs[1]
    plain, enc, key = protected
    r = run(program, enc, "--key-file", key, "--compare", plain)
    assert r.returncode == 0, r.stderr
    assert "format 2" in r.stdout and "2 external data file(s)" in r.stdout
    assert f"identical to {plain}" in r.stdout


def test_the_c_example_takes_every_key_source(programs, protected, tmp_path):
    program = programs[0]
    plain, enc, key = protected
    env = dict(os.environ, ONNX_PROTECT_C_KEY=key.read_text())
    r = run(program, enc, "--key-env", "ONNX_PROTECT_C_KEY", "--compare", plain, env=env)
    assert r.returncode == 0, r.stderr
    enc2 = tmp_path / "pass" / "model.onnx"
    enc2.parent.mkdir()
    env = dict(os.environ, ONNX_PROTECT_C_PASS="a passphrase")
    op.encrypt(plain, enc2, passphrase="a passphrase")
    r = run(program, enc2, "--passphrase-env", "ONNX_PROTECT_C_PASS", "--compare", plain, env=env)
    assert r.returncode == 0, r.stderr
    ident = x25519.Identity.generate()
    ids = tmp_path / "id.txt"
    ids.write_text(f"{ident}\n")
    enc3 = tmp_path / "age" / "model.onnx"
    enc3.parent.mkdir()
    op.encrypt(plain, enc3, recipients=[str(ident.to_public())])
    r = run(program, enc3, "--identity-file", ids, "--compare", plain)
    assert r.returncode == 0, r.stderr


def test_the_c_example_reports_each_failure_with_its_status(programs, protected, tmp_path):
    program = programs[0]
    plain, enc, key = protected
    other = tmp_path / "other.key"
    op.keygen(other)
    cases = [
        ((enc, "--key-file", other), WRONG_KEY, "wrong key"),
        ((plain, "--key-file", key), NOT_PROTECTED, "not protected"),
        ((tmp_path / "missing.onnx", "--key-file", key), IO, "missing.onnx"),
        ((ROOT / "fixtures/malformed/garbage.onnx", "--key-file", key), MALFORMED, "garbage.onnx"),
        ((enc, "--key-file", plain), KEY, "key file"),
        ((enc, "--key-file", key, "--signer", "onnx-protect-signer1qqqq"), KEY, "signer"),
    ]
    for args, status, words in cases:
        r = run(program, *args)
        assert r.returncode == status, (args, r.returncode, r.stderr)
        assert words in r.stderr, (args, r.stderr)
        assert r.stderr.count("\n") == 1, "one line"
    weights = enc.parent / "weights.bin"
    b = bytearray(weights.read_bytes())
    b[0] ^= 1
    weights.write_bytes(bytes(b))
    r = run(program, enc, "--key-file", key)
    assert r.returncode == MODIFIED and "modified" in r.stderr, r.stderr
    assert "decrypted model" not in r.stdout, "nothing is decrypted from a modified file"


def test_the_c_example_opens_what_the_cli_protected(programs, tmp_path):
    digits = ROOT / "fixtures" / "digits" / "cnn.onnx"
    key = tmp_path / "d.key"
    cli("keygen", "-o", key)
    enc = tmp_path / "cnn.onnx"
    cli("encrypt", digits, "-o", enc, "--key-file", key, "-q")
    r = run(programs[0], enc, "--key-file", key, "--compare", digits)
    assert r.returncode == 0, r.stderr


def test_the_session_step_through_ctypes_matches_the_original(protected, tmp_path):
    digits = ROOT / "fixtures" / "digits" / "cnn.onnx"
    key = tmp_path / "d.key"
    op.keygen(key)
    enc = tmp_path / "cnn.onnx"
    op.encrypt(digits, enc, key_file=key)
    x = np.load(ROOT / "fixtures" / "digits" / "test_x.npy")[:64]
    xfile = tmp_path / "x.npy"
    np.save(xfile, x)
    r = subprocess.run(
        [sys.executable, str(ROOT / "examples/c/session_ctypes.py"), str(LIBDIR / "libonnx_protect.so"), str(enc), str(key), str(xfile)],
        capture_output=True, text=True,
    )
    assert r.returncode == 0, r.stderr
    s = ort.InferenceSession(str(digits), providers=["CPUExecutionProvider"])
    want = s.run(None, {s.get_inputs()[0].name: x})[0]
    assert f"output {want.shape} {float(want.astype(np.float64).sum())}" in r.stdout, r.stdout
    # External data through ctypes too.
    plain, enc_ext, key_ext = protected
    r = subprocess.run(
        [sys.executable, str(ROOT / "examples/c/session_ctypes.py"), str(LIBDIR / "libonnx_protect.so"), str(enc_ext), str(key_ext)],
        capture_output=True, text=True,
    )
    assert r.returncode == 0 and "session inputs: ['x']" in r.stdout, r.stderr
