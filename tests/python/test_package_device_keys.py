"""Keys on customers' machines in the loaders: the Python package and the C ABI open
models wrapped for age plugin recipients (through the test plugin age-plugin-onnxtest,
crates/age-plugin-test) and for TPM recipients (through swtpm), with the identity files
the command line uses; a failing, dying, PIN-asking or missing plugin and another TPM's
state are refused with the key error and nothing decrypted.

The plugin is target/debug/age-plugin-onnxtest (built by `cargo test --workspace`);
the TPM tests need the package and libonnx_protect built with the cargo feature `tpm`
(scripts/test.sh builds them so once it installed swtpm and libtss2-dev). Without them
these tests skip, saying why, unless ONNX_PROTECT_REQUIRE_TEST_PLUGIN=1 or
ONNX_PROTECT_REQUIRE_SWTPM=1 make the absence a failure.
"""
import os
import pathlib
import shutil
import subprocess

import pytest

import onnx_protect as op
from test_package import BIN, cli, copy_model, EXTERNAL
from test_package_capi import KEY, LIBDIR, programs, run  # noqa: F401 (programs: a fixture)
from test_tpm_cli import SwTpm

ROOT = pathlib.Path(__file__).resolve().parents[2]
PLUGIN = pathlib.Path(BIN).parent / "age-plugin-onnxtest"
MODEL = ROOT / "fixtures" / "models" / "cnn_torch" / "model.onnx"


def require(env, why):
    if os.environ.get(env) == "1":
        pytest.fail(f"{why} ({env}=1)")
    pytest.skip(why)


@pytest.fixture
def plugin_path(monkeypatch):
    """PATH with the test plugin's directory first (the loaders look plugins up there)."""
    if not PLUGIN.exists():
        require("ONNX_PROTECT_REQUIRE_TEST_PLUGIN", f"{PLUGIN} is missing (cargo build -p onnx-protect-age-plugin-test)")
    path = f"{PLUGIN.parent}{os.pathsep}{os.environ.get('PATH', '')}"
    monkeypatch.setenv("PATH", path)
    return path


def device(tmp_path, mode, name=None):
    """(recipient, identity file) of a new test device behaving as `mode`."""
    text = subprocess.run([str(PLUGIN), "--keygen", mode], capture_output=True, text=True, check=True).stdout
    recipient = text.splitlines()[0].removeprefix("# recipient: ")
    ids = tmp_path / f"{name or mode}.identity"
    ids.write_text(text)
    return recipient, ids


def test_the_package_wraps_for_and_opens_with_an_age_plugin(plugin_path, tmp_path):
    plain = copy_model(EXTERNAL, tmp_path / "plain")
    recipient, ids = device(tmp_path, "ok")
    assert recipient.startswith("age1onnxtest1")
    enc = tmp_path / "enc" / "model.onnx"
    enc.parent.mkdir()
    op.encrypt(plain, enc, recipients=[recipient])
    assert any(s.startswith(f"age-plugin {recipient}") for s in op.inspect(enc)["protection"]["recipients"])
    with op.load(enc, identity_file=ids) as m:
        assert m.model == plain.read_bytes()
    # The command line opens what the package wrapped, with the same identity file.
    out = tmp_path / "cli.onnx"
    cli("decrypt", enc, "-o", out, "--identity", ids, "-q")
    assert out.read_bytes() == plain.read_bytes()
    # Another device of the same plugin: the wrong key.
    _, other = device(tmp_path, "ok", "other")
    with pytest.raises(op.WrongKey):
        op.load(enc, identity_file=other)


@pytest.mark.parametrize(
    "mode, reason",
    [("refuse", "PIN blocked"), ("die", "age-plugin-onnxtest"), ("pin", "no PIN")],
)
def test_a_failing_plugin_is_a_key_error_in_the_package(plugin_path, tmp_path, mode, reason):
    recipient, _ = device(tmp_path, "ok")
    enc = tmp_path / "p.onnx"
    cli("encrypt", MODEL, "-o", enc, "--recipient", recipient, "-q")
    _, ids = device(tmp_path, mode)
    with pytest.raises(op.InvalidKey, match=reason):
        op.load(enc, identity_file=ids)


def test_a_missing_or_refusing_plugin_in_the_package(plugin_path, tmp_path, monkeypatch):
    recipient, ids = device(tmp_path, "ok")
    enc = tmp_path / "p.onnx"
    cli("encrypt", MODEL, "-o", enc, "--recipient", recipient, "-q")
    bad, _ = device(tmp_path, "refuse")
    out = tmp_path / "out.onnx"
    with pytest.raises(op.InvalidKey, match="refuses to wrap"):
        op.encrypt(MODEL, out, recipients=[bad])
    assert not out.exists()
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(op.InvalidKey, match="Could not find 'age-plugin-onnxtest' on the PATH"):
        op.load(enc, identity_file=ids)
    with pytest.raises(op.InvalidKey):
        op.encrypt(MODEL, out, recipients=[recipient])
    assert not out.exists()


def test_the_c_abi_opens_an_age_plugin_identity(programs, plugin_path, tmp_path):  # noqa: F811
    recipient, ids = device(tmp_path, "ok")
    enc = tmp_path / "p.onnx"
    cli("encrypt", MODEL, "-o", enc, "--recipient", recipient, "-q")
    r = run(programs[0], enc, "--identity-file", ids, "--compare", MODEL)
    assert r.returncode == 0, r.stderr
    assert f"identical to {MODEL}" in r.stdout
    _, refusing = device(tmp_path, "refuse")
    r = run(programs[0], enc, "--identity-file", refusing)
    assert r.returncode == KEY and "PIN blocked" in r.stderr, r.stderr
    r = run(programs[0], enc, "--identity-file", ids, env=dict(os.environ, PATH="/nonexistent"))
    assert r.returncode == KEY and "age-plugin-onnxtest" in r.stderr, r.stderr


# ---------------------------------------------------------------- TPM identities


@pytest.fixture
def tpms(tmp_path):
    if shutil.which("swtpm") is None:
        require("ONNX_PROTECT_REQUIRE_SWTPM", "swtpm is not installed (Debian package swtpm)")
    started = []

    def start(name):
        t = SwTpm(tmp_path / name)
        started.append(t)
        return t

    yield start
    for t in started:
        t.close()


def tpm_key(tcti, path):
    """A key made in the TPM at `tcti` by the CLI: its recipient string."""
    r = subprocess.run([BIN, "keygen", "--tpm", "-o", str(path), "-q"], capture_output=True, text=True,
                       env=dict(os.environ, ONNX_PROTECT_TPM_TCTI=tcti))
    if "built without TPM support" in r.stderr:
        require("ONNX_PROTECT_REQUIRE_SWTPM", "the binary was built without the cargo feature tpm")
    assert r.returncode == 0, r.stderr
    return next(line.split()[1] for line in path.read_text().splitlines() if line.startswith("onnx-protect-tpm-key-v1"))


def test_the_package_opens_a_tpm_key_file_on_its_tpm_only(tpms, tmp_path, monkeypatch):
    a, b = tpms("a"), tpms("b")
    key = tmp_path / "device.tpmkey"
    recipient = tpm_key(a.tcti, key)
    plain = copy_model(EXTERNAL, tmp_path / "plain")
    enc = tmp_path / "enc" / "model.onnx"
    enc.parent.mkdir()
    # The package wraps for the TPM recipient with no TPM at hand.
    monkeypatch.setenv("ONNX_PROTECT_TPM_TCTI", "swtpm:host=127.0.0.1,port=9")
    op.encrypt(plain, enc, recipients=[recipient])
    monkeypatch.setenv("ONNX_PROTECT_TPM_TCTI", a.tcti)
    try:
        m = op.load(enc, identity_file=key)
    except op.InvalidKey as e:
        if "built without TPM support" not in str(e):
            raise
        require("ONNX_PROTECT_REQUIRE_SWTPM", "the package was built without the cargo feature tpm")
    with m:
        assert m.model == plain.read_bytes()
    # The model and the key file on another machine (another TPM's state): refused.
    monkeypatch.setenv("ONNX_PROTECT_TPM_TCTI", b.tcti)
    with pytest.raises(op.InvalidKey, match="is not in this TPM"):
        op.load(enc, identity_file=key)
    # That machine's own TPM key: the wrong key.
    key_b = tmp_path / "b.tpmkey"
    tpm_key(b.tcti, key_b)
    with pytest.raises(op.WrongKey):
        op.load(enc, identity_file=key_b)
    out = tmp_path / "out.onnx"
    with pytest.raises(op.WrongKey):
        op.decrypt(enc, out, identity_file=key_b)
    assert not out.exists()


def test_the_c_abi_opens_a_tpm_key_file_on_its_tpm_only(programs, tpms, tmp_path):  # noqa: F811
    a, b = tpms("a"), tpms("b")
    key = tmp_path / "device.tpmkey"
    recipient = tpm_key(a.tcti, key)
    enc = tmp_path / "p.onnx"
    cli("encrypt", MODEL, "-o", enc, "--recipient", recipient, "-q")
    r = run(programs[0], enc, "--identity-file", key, "--compare", MODEL,
            env=dict(os.environ, ONNX_PROTECT_TPM_TCTI=a.tcti))
    if "built without TPM support" in r.stderr:
        require("ONNX_PROTECT_REQUIRE_SWTPM", f"{LIBDIR}/libonnx_protect.so was built without the cargo feature tpm")
    assert r.returncode == 0, r.stderr
    assert f"identical to {MODEL}" in r.stdout
    r = run(programs[0], enc, "--identity-file", key, env=dict(os.environ, ONNX_PROTECT_TPM_TCTI=b.tcti))
    assert r.returncode == KEY and "is not in this TPM" in r.stderr, r.stderr
