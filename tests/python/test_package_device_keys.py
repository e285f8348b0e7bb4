"""Keys on customers' machines in the loaders: the Python package and the C ABI open
models wrapped for age plugin recipients (through the test plugin age-plugin-onnxtest,
crates/age-plugin-test) and for TPM recipients (through swtpm), with the identity files
the command line uses; a failing, dying, PIN-asking or missing plugin and another TPM's
state are refused with the key error and nothing decrypted.

The plugin is target/debug/age-plugin-onnxtest (built by `cargo test --workspace`);
the TPM tests need the package and libonnx_protect built with the cargo feature `tpm`
(scripts/test.sh builds the workspace so once it installed swtpm and libtss2-dev). Without them
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
from test_package_capi import CC, EXAMPLE, KEY, LIBDIR, programs, run  # noqa: F401 (programs: a fixture)
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
    with pytest.raises(op.InvalidKey, match="could not find 'age-plugin-onnxtest' on the PATH"):
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


def links_the_tss(library):
    """Whether the shared library needs the TSS 2.0 (its dynamic section names libtss2-esys):
    then it was built with the cargo feature tpm."""
    return library.exists() and b"libtss2-esys.so" in library.read_bytes()


@pytest.fixture(scope="module")
def tpm_program(tmp_path_factory):
    """The C example linked to a copy of libonnx_protect built with the cargo feature tpm:
    the one the other C tests use when it has the feature (scripts/test.sh builds the
    workspace with it), else one built here (a copy: other tests may build target/debug's
    library again)."""
    if shutil.which("pkg-config") is None or subprocess.run(["pkg-config", "--exists", "tss2-esys"]).returncode:
        require("ONNX_PROTECT_REQUIRE_SWTPM", "libtss2-dev is missing: libonnx_protect cannot have the feature tpm")
    libdir = LIBDIR
    if not links_the_tss(libdir / "libonnx_protect.so"):
        subprocess.run(["cargo", "build", "-q", "-p", "onnx-protect-capi", "--features", "tpm"], cwd=ROOT, check=True)
        libdir = ROOT / "target" / "debug"
    out = tmp_path_factory.mktemp("ctpm")
    shutil.copy(libdir / "libonnx_protect.so", out / "libonnx_protect.so")
    program = out / "decrypt_model"
    flags = ["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-I", str(ROOT / "crates/capi/include")]
    subprocess.run([CC, *flags, str(EXAMPLE), "-L", str(out), "-lonnx_protect", f"-Wl,-rpath,{out}", "-o", str(program)],
                   check=True)
    return program


def test_the_c_abi_opens_a_tpm_key_file_on_its_tpm_only(tpm_program, tpms, tmp_path):
    programs = (tpm_program,)
    a, b = tpms("a"), tpms("b")
    key = tmp_path / "device.tpmkey"
    recipient = tpm_key(a.tcti, key)
    enc = tmp_path / "p.onnx"
    cli("encrypt", MODEL, "-o", enc, "--recipient", recipient, "-q")
    r = run(programs[0], enc, "--identity-file", key, "--compare", MODEL,
            env=dict(os.environ, ONNX_PROTECT_TPM_TCTI=a.tcti))
    if "built without TPM support" in r.stderr:
        pytest.fail(f"{tpm_program} is linked to a library without the cargo feature tpm")
    assert r.returncode == 0, r.stderr
    assert f"identical to {MODEL}" in r.stdout
    r = run(programs[0], enc, "--identity-file", key, env=dict(os.environ, ONNX_PROTECT_TPM_TCTI=b.tcti))
    assert r.returncode == KEY and "is not in this TPM" in r.stderr, r.stderr


# ---------------------------------------------------------------- licences


def _publisher(tmp_path, name="pub.sk"):
    k = tmp_path / name
    cli("keygen", "--signing", "-o", k, "-q")
    public = next(line.split()[-1] for line in k.read_text().splitlines() if line.startswith("# public key:"))
    return k, public


def _issue(tmp_path, sk, name, *args):
    out = tmp_path / name
    cli("licence", "issue", "--sign-key", sk, "-o", out, "-q", *args)
    return out


WINDOW = ("--not-before", "2020-01-01T00:00:00Z", "--not-after", "2099-12-31T23:59:59Z")


@pytest.fixture
def licensed(tmp_path, monkeypatch):
    """A model encrypted by the package with a licence authority: (plain, protected, key, sk, clock)."""
    monkeypatch.setenv("ONNX_PROTECT_LICENCE_CLOCK", str(tmp_path / "clock"))
    plain = copy_model(EXTERNAL, tmp_path / "plain")
    key = tmp_path / "k.key"
    op.keygen(key)
    sk, authority = _publisher(tmp_path)
    enc = tmp_path / "enc" / "model.onnx"
    enc.parent.mkdir()
    op.encrypt(plain, enc, key_file=key, licence_authority=authority, model_id="det-v3")
    return plain, enc, key, sk, tmp_path / "clock"


def test_the_package_needs_a_valid_licence_and_raises_one_class_per_refusal(licensed, tmp_path):
    plain, enc, key, sk, clock = licensed
    with pytest.raises(op.LicenceMissing) as e:
        op.load(enc, key_file=key)
    assert e.value.kind == "licence_missing"
    ok = _issue(tmp_path, sk, "ok.lic", "--model", "id:det-v3", "--recipient", "any", *WINDOW)
    with op.load(enc, key_file=key, licence=ok) as m:
        assert m.model == plain.read_bytes()
    assert op.verify(enc, key_file=key, licence=ok)["check"] == "mac"
    cases = [
        (op.LicenceExpired, ["--model", "id:det-v3", "--recipient", "any",
                             "--not-before", "2020-01-01T00:00:00Z", "--not-after", "2021-01-01T00:00:00Z"]),
        (op.LicenceNotYetValid, ["--model", "id:det-v3", "--recipient", "any",
                                 "--not-before", "2098-01-01T00:00:00Z", "--not-after", "2099-01-01T00:00:00Z"]),
        (op.LicenceWrongModel, ["--model", "id:other", "--recipient", "any", *WINDOW]),
        (op.LicenceWrongDevice, ["--model", "id:det-v3", "--recipient", "key 0000000000000000", *WINDOW]),
    ]
    out = tmp_path / "out.onnx"
    for i, (cls, args) in enumerate(cases):
        lic = _issue(tmp_path, sk, f"{i}.lic", *args)
        with pytest.raises(cls):
            op.load(enc, key_file=key, licence=lic)
        with pytest.raises(cls):
            op.decrypt(enc, out, key_file=key, licence=lic)
        assert not out.exists()
    other_sk, _ = _publisher(tmp_path, "other.sk")
    other = _issue(tmp_path, other_sk, "other.lic", "--model", "id:det-v3", "--recipient", "any", *WINDOW)
    with pytest.raises(op.LicenceBadSignature):
        op.load(enc, key_file=key, licence=other)
    bad = tmp_path / "bad.lic"
    bad.write_bytes(ok.read_bytes().replace(b"any", b"anx"))
    with pytest.raises(op.LicenceBadSignature):
        op.load(enc, key_file=key, licence=bad)
    bad.write_bytes(b"not a licence\n")
    with pytest.raises(op.LicenceMalformed) as e:
        op.load(enc, key_file=key, licence=bad)
    assert e.value.kind == "licence_malformed"
    with pytest.raises(op.LicenceMalformed):
        op.load(enc, key_file=key, licence=tmp_path / "missing.lic")
    clock.write_text("onnx-protect-clock-v1\nhigh-water: 2090-01-01T00:00:00Z\n")
    with pytest.raises(op.ClockSetBack):
        op.load(enc, key_file=key, licence=ok)
    # Every licence error is an OnnxProtectError; a licence alone is not a key.
    assert issubclass(op.LicenceExpired, op.LicenceError) and issubclass(op.LicenceError, op.OnnxProtectError)
    with pytest.raises(ValueError):
        op.load(enc, licence=ok)


def test_an_inference_session_needs_a_valid_licence(licensed, tmp_path):
    import numpy as np
    import onnxruntime as ort

    plain, enc, key, sk, clock = licensed
    x = np.linspace(0, 1, 3 * 8 * 8, dtype=np.float32).reshape(1, 3, 8, 8)
    want = ort.InferenceSession(str(plain), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    cpu = {"providers": ["CPUExecutionProvider"], "key_file": key}
    with pytest.raises(op.LicenceMissing):
        op.InferenceSession(enc, **cpu)
    ok = _issue(tmp_path, sk, "ok.lic", "--model", "id:det-v3", "--recipient", "any", *WINDOW)
    s = op.InferenceSession(enc, licence=ok, **cpu)
    for a, b in zip(s.run(None, {"x": x}), want):
        np.testing.assert_array_equal(a, b)
    cases = [
        (op.LicenceExpired, ["--model", "id:det-v3", "--recipient", "any",
                             "--not-before", "2020-01-01T00:00:00Z", "--not-after", "2021-01-01T00:00:00Z"]),
        (op.LicenceWrongModel, ["--model", "id:other", "--recipient", "any", *WINDOW]),
        (op.LicenceWrongDevice, ["--model", "id:det-v3", "--recipient", "key 0000000000000000", *WINDOW]),
    ]
    for i, (cls, args) in enumerate(cases):
        with pytest.raises(cls):
            op.InferenceSession(enc, licence=_issue(tmp_path, sk, f"s{i}.lic", *args), **cpu)
    # The clock state named by licence_clock=, set ahead: the clock is set back.
    ahead = tmp_path / "ahead.clock"
    ahead.write_text("onnx-protect-clock-v1\nhigh-water: 2090-01-01T00:00:00Z\n")
    with pytest.raises(op.ClockSetBack):
        op.InferenceSession(enc, licence=ok, licence_clock=ahead, **cpu)
    # A licence without a key is refused before anything is opened.
    with pytest.raises(ValueError):
        op.InferenceSession(enc, licence=ok, providers=["CPUExecutionProvider"])


def test_the_c_abi_needs_a_valid_licence(programs, licensed, tmp_path):  # noqa: F811
    plain, enc, key, sk, clock = licensed
    r = run(programs[0], enc, "--key-file", key)
    assert r.returncode == 14 and "licence required" in r.stderr, r.stderr
    ok = _issue(tmp_path, sk, "ok.lic", "--model-of", enc, "--recipient", "any", *WINDOW)
    r = run(programs[0], enc, "--key-file", key, "--licence", ok, "--compare", plain)
    assert r.returncode == 0, r.stderr
    assert f"identical to {plain}" in r.stdout
    other_sk, _ = _publisher(tmp_path, "other.sk")
    # Every refusal has its status (crates/capi/include/onnx_protect.h), 14 to 20.
    cases = [
        (15, "signature", other_sk, ["--model-of", enc, "--recipient", "any", *WINDOW]),
        (16, "expired", sk, ["--model-of", enc, "--recipient", "any",
                             "--not-before", "2020-01-01T00:00:00Z", "--not-after", "2021-01-01T00:00:00Z"]),
        (17, "not yet valid", sk, ["--model-of", enc, "--recipient", "any",
                                   "--not-before", "2098-01-01T00:00:00Z", "--not-after", "2099-01-01T00:00:00Z"]),
        (18, "wrong model", sk, ["--model", "id:other", "--recipient", "any", *WINDOW]),
        (19, "wrong device", sk, ["--model-of", enc, "--recipient", "tpm onnx-protect-tpm1x", *WINDOW]),
    ]
    for i, (status, what, signer, args) in enumerate(cases):
        lic = _issue(tmp_path, signer, f"c{i}.lic", *args)
        r = run(programs[0], enc, "--key-file", key, "--licence", lic)
        assert r.returncode == status and what in r.stderr, (status, r.stderr)
    # The clock state (ONNX_PROTECT_LICENCE_CLOCK) records a later time than now: 20.
    clock.write_text("onnx-protect-clock-v1\nhigh-water: 2090-01-01T00:00:00Z\n")
    r = run(programs[0], enc, "--key-file", key, "--licence", ok)
    assert r.returncode == 20 and "clock" in r.stderr, r.stderr


def test_a_licence_for_one_tpm_device_opens_on_that_tpm(tpms, tmp_path, monkeypatch):
    a = tpms("a")
    monkeypatch.setenv("ONNX_PROTECT_LICENCE_CLOCK", str(tmp_path / "clock"))
    key = tmp_path / "device.tpmkey"
    recipient = tpm_key(a.tcti, key)
    sk, authority = _publisher(tmp_path)
    enc = tmp_path / "p.onnx"
    cli("encrypt", MODEL, "-o", enc, "--recipient", recipient, "--licence-authority", authority, "-q")
    lic = _issue(tmp_path, sk, "dev.lic", "--model-of", enc, "--recipient", f"tpm {recipient}", *WINDOW)
    out = tmp_path / "out.onnx"
    r = subprocess.run([BIN, "decrypt", str(enc), "-o", str(out), "--identity", str(key), "--licence", str(lic), "-q"],
                       capture_output=True, text=True, env=dict(os.environ, ONNX_PROTECT_TPM_TCTI=a.tcti))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == MODEL.read_bytes()
    # The check recorded the TPM's clock as an anchor beside the high-water mark.
    assert "tpm: " in (tmp_path / "clock").read_text()
