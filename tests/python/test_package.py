"""The Python package `onnx_protect` (crates/python), as installed by scripts/test.sh:
round trips against the command-line binary, every key source, every error kind,
external data, access tiers, onnxruntime sessions from memory, and the hygiene of
decrypted buffers. tests/python/test_package_plaintext.py checks that no plaintext
file is left behind; tests/python/test_package_capi.py covers the C ABI.

Runs the built binary (target/debug/onnx-protect, built here if missing, or $ONNX_PROTECT_BIN).
"""
import ast
import json
import os
import pathlib
import shutil
import stat
import subprocess

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from pyrage import x25519

import onnx_protect as op

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = os.environ.get("ONNX_PROTECT_BIN", str(ROOT / "target" / "debug" / "onnx-protect"))
DIGITS = sorted((ROOT / "fixtures" / "digits").glob("*.onnx"))
EXTERNAL = ROOT / "fixtures" / "models" / "external_data"
PROVIDERS = ["CPUExecutionProvider"]


def cli(*args):
    if not os.path.exists(BIN) and "ONNX_PROTECT_BIN" not in os.environ:
        subprocess.run(["cargo", "build", "-q", "--bin", "onnx-protect"], cwd=ROOT, check=True)
    r = subprocess.run([BIN, *map(str, args)], capture_output=True, text=True)
    assert r.returncode == 0, f"{args}: {r.stderr}"
    return r


def copy_model(src_dir, dst_dir, name="model.onnx"):
    """Copies a fixture model and its external files (not expected.json) into dst_dir."""
    dst_dir.mkdir(parents=True, exist_ok=True)
    for f in src_dir.iterdir():
        if f.is_file() and f.suffix in (".onnx", ".bin", ".data"):
            shutil.copy(f, dst_dir / f.name)
    return dst_dir / name


def external_files(model_dir):
    return {f.name: f.read_bytes() for f in model_dir.iterdir() if f.suffix == ".bin"}


def protect_ext(tmp_path, by_cli=False):
    """The external-data fixture protected by the package (or the CLI): (plain, protected, key file)."""
    plain = copy_model(EXTERNAL, tmp_path / "plain")
    key = tmp_path / "k.key"
    enc = tmp_path / "enc" / "model.onnx"
    enc.parent.mkdir()
    if by_cli:
        cli("keygen", "-o", key)
        cli("encrypt", plain, "-o", enc, "--key-file", key, "-q")
    else:
        op.keygen(key)
        op.encrypt(plain, enc, key_file=key)
    return plain, enc, key


@pytest.fixture
def ext(tmp_path):
    return protect_ext(tmp_path)


@pytest.fixture
def cli_ext(tmp_path):
    return protect_ext(tmp_path, by_cli=True)


# ---------------------------------------------------------------- round trips with the CLI


def test_load_of_a_cli_protected_model_gives_the_original_bytes_and_external_files(cli_ext):
    plain, enc, key = cli_ext
    with op.load(enc, key_file=key) as m:
        assert isinstance(m.model, bytes)
        assert m.model == plain.read_bytes()
        assert set(m.external) == {"weights.bin", "extra.bin"}
        for loc, buf in m.external.items():
            assert bytes(memoryview(buf)) == (plain.parent / loc).read_bytes(), loc
        assert m.tensors > 0 and m.decrypted_bytes > 0
        names = {t.name for t in m.external_tensors}
        assert names == {"conv_W", "mm_W", "mm2_W"}
    assert all(b.closed for b in m.external.values()), "the with block closes every buffer"


def test_python_decrypt_of_a_cli_protected_model_is_byte_identical(cli_ext, tmp_path):
    plain, enc, key = cli_ext
    out = tmp_path / "dec" / "model.onnx"
    out.parent.mkdir()
    report = op.decrypt(enc, out, key_file=key)
    assert report["decrypted_bytes"] > 0
    assert out.read_bytes() == plain.read_bytes()
    assert external_files(out.parent) == external_files(plain.parent)


def test_cli_decrypts_and_verifies_what_python_encrypted(tmp_path):
    plain = copy_model(EXTERNAL, tmp_path / "plain")
    key = tmp_path / "k.key"
    op.keygen(key)
    enc = tmp_path / "enc" / "model.onnx"
    enc.parent.mkdir()
    report = op.encrypt(plain, enc, key_file=key, mode="fp", coefficient={"Conv": 1.0, "MatMul": 0.5})
    assert report["encrypted_bytes"] > 0 and report["recipients"] == 1
    cli("verify", enc)
    cli("verify", enc, "--key-file", key)
    out = tmp_path / "dec" / "model.onnx"
    out.parent.mkdir()
    cli("decrypt", enc, "-o", out, "--key-file", key, "-q")
    assert out.read_bytes() == plain.read_bytes()
    assert external_files(out.parent) == external_files(plain.parent)
    # The overrides reached the policy: every Conv weight byte is encrypted, in fp mode.
    info = op.inspect(enc)["protection"]
    conv = [t for t in info["tensors"] if t["name"] == "conv_W"]
    assert conv and conv[0]["encrypted_bytes"] == 4 * 3 * 3 * 3 * 4
    assert all(t["mode"] == "fp" for t in info["tensors"]), info["tensors"]


def test_verify_and_inspect_report_like_the_cli(cli_ext):
    _, enc, key = cli_ext
    keyless = op.verify(enc)
    with_key = op.verify(enc, key_file=key)
    assert keyless["check"] == "checksum" and with_key["check"] == "mac"
    assert with_key["format_version"] == 2
    report = op.inspect(enc)
    cli_report = json.loads(cli("inspect", enc, "--json").stdout)
    report.pop("file", None)
    cli_report.pop("file", None)
    assert report == cli_report


# ---------------------------------------------------------------- key sources


def test_every_key_source_opens_the_model(ext, tmp_path, monkeypatch):
    plain, enc, key = ext
    text = key.read_bytes()
    original = plain.read_bytes()
    assert op.load(enc, key=text).model == original
    assert op.load(enc, key=op.Key.from_file(str(key))).model == original
    monkeypatch.setenv("ONNX_PROTECT_TEST_KEY", text.decode())
    assert op.load(enc, key_env="ONNX_PROTECT_TEST_KEY").model == original
    hex_line = [line for line in text.decode().splitlines() if line.startswith("onnx-protect-key-v1")][0].split()[-1]
    monkeypatch.setenv("ONNX_PROTECT_TEST_HEX", hex_line)
    assert op.load(enc, key_env="ONNX_PROTECT_TEST_HEX").model == original
    assert op.load(enc, key=bytes.fromhex(hex_line)).model == original


def test_passphrases_and_age_identities(tmp_path, monkeypatch):
    plain = copy_model(EXTERNAL, tmp_path / "plain")
    ident = x25519.Identity.generate()
    ids = tmp_path / "me.age"
    ids.write_text(f"# test identity\n{ident}\n")
    enc = tmp_path / "enc" / "model.onnx"
    enc.parent.mkdir()
    op.encrypt(plain, enc, passphrase="correct horse", recipients=[str(ident.to_public())])
    original = plain.read_bytes()
    assert op.load(enc, passphrase="correct horse").model == original
    monkeypatch.setenv("ONNX_PROTECT_TEST_PASS", "correct horse")
    assert op.load(enc, passphrase_env="ONNX_PROTECT_TEST_PASS").model == original
    assert op.load(enc, identity_file=ids).model == original
    with pytest.raises(op.WrongKey):
        op.load(enc, passphrase="wrong horse")
    other = tmp_path / "other.age"
    other.write_text(f"{x25519.Identity.generate()}\n")
    with pytest.raises(op.WrongKey):
        op.load(enc, identity_file=other)


def test_key_commands_and_pkcs11_keys(tmp_path, monkeypatch):
    toy = ROOT / "fixtures" / "key-commands" / "toy-kms.sh"
    plain = copy_model(EXTERNAL, tmp_path / "plain")
    original = plain.read_bytes()
    enc = tmp_path / "enc" / "model.onnx"
    enc.parent.mkdir()
    op.encrypt(plain, enc, key=op.Key.from_command(f"'{toy}' kms-a"))
    assert op.load(enc, key=op.Key.from_command(f"'{toy}' kms-a", timeout=30)).model == original
    with pytest.raises(op.WrongKey):
        op.load(enc, key=op.Key.from_command(f"'{toy}' kms-b"))
    hang = tmp_path / "hang.sh"
    hang.write_text("#!/bin/sh\nexec sleep 300\n")
    hang.chmod(0o755)
    with pytest.raises(op.InvalidKey, match="did not answer within 0.5 s"):
        op.load(enc, key=op.Key.from_command(str(hang), timeout=0.5))
    with pytest.raises(op.InvalidKey, match="no module-path"):
        op.Key.from_pkcs11("pkcs11:token=t;object=k")
    module = pathlib.Path("/usr/lib/softhsm/libsofthsm2.so")
    if not module.exists() or shutil.which("softhsm2-util") is None:
        print("SKIPPED: SoftHSM2 is not installed; PKCS#11 from Python untested")
        return
    (tmp_path / "tokens").mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tmp_path / 'tokens'}\n")
    monkeypatch.setenv("SOFTHSM2_CONF", str(conf))
    monkeypatch.setenv("HSM_PIN", "4321")
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "py", "--pin", "4321", "--so-pin", "8765"],
                   check=True, capture_output=True)
    uri = f"pkcs11:token=py;object=kek?module-path={module}&pin-source=env:HSM_PIN"
    cli("keygen", "--pkcs11", uri)
    enc2 = tmp_path / "enc2" / "model.onnx"
    enc2.parent.mkdir()
    op.encrypt(plain, enc2, key=op.Key.from_command(f"'{toy}' kms-a"), recipients=[uri])
    assert op.load(enc2, key=op.Key.from_pkcs11(uri)).model == original


def test_the_cli_opens_a_python_passphrase_model(tmp_path, monkeypatch):
    plain = copy_model(EXTERNAL, tmp_path / "plain")
    enc = tmp_path / "enc" / "model.onnx"
    enc.parent.mkdir()
    op.encrypt(plain, enc, passphrase="correct horse")
    monkeypatch.setenv("ONNX_PROTECT_TEST_PASS", "correct horse")
    out = tmp_path / "dec" / "model.onnx"
    out.parent.mkdir()
    cli("decrypt", enc, "-o", out, "--passphrase-env", "ONNX_PROTECT_TEST_PASS", "-q")
    assert out.read_bytes() == plain.read_bytes()
    assert external_files(out.parent) == external_files(plain.parent)


def test_key_arguments_are_checked():
    with pytest.raises(ValueError, match="only one"):
        op._key(key=b"x", key_file="k")
    with pytest.raises(ValueError, match="a key is required"):
        op.load("m.onnx")
    with pytest.raises(TypeError, match="key_file="):
        op.load("m.onnx", key="model.key")
    with pytest.raises(op.InvalidKey) as e:
        op.Key.from_bytes(b"short")
    assert e.value.kind == "key"
    with pytest.raises(op.InvalidKey, match="ONNX_PROTECT_SURELY_UNSET"):
        op.Key.from_env("ONNX_PROTECT_SURELY_UNSET")
    with pytest.raises(op.InvalidKey, match="empty"):
        op.Key.from_passphrase(b"")
    assert "secret" not in repr(op.Key.from_bytes(bytes(32)))


def test_tier_keys_cannot_encrypt(tmp_path):
    key = tmp_path / "k.key"
    op.keygen(key, tiers=2)
    plain = copy_model(EXTERNAL, tmp_path / "plain")
    with pytest.raises(op.InvalidKey, match="tier 1"):
        op.encrypt(plain, tmp_path / "enc.onnx", key_file=str(key) + ".tier1")


def test_a_master_key_recording_other_tiers_wraps_no_tiered_model(tmp_path):
    """A master key's `tiers=N` binds where it wraps the data keys of a model of more than
    one tier (docs/format.md Appendix A), as on the command line; an untiered model takes
    any master key."""
    plain = copy_model(EXTERNAL, tmp_path / "plain")
    two, one = tmp_path / "two.key", tmp_path / "one.key"
    op.keygen(two, tiers=2)
    op.keygen(one)
    for key, tiers, recorded in [(two, 3, "2 access tiers"), (one, 2, "no access tiers")]:
        dst = tmp_path / f"{key.stem}-{tiers}" / "model.onnx"
        dst.parent.mkdir()
        with pytest.raises(op.InvalidKey, match=f"master key of {recorded}, and this model has {tiers} access tiers"):
            op.encrypt(plain, dst, key_file=key, tiers=tiers)
        assert not dst.exists()
    for key, tiers in [(two, 2), (two, None), (one, None)]:
        dst = tmp_path / f"ok-{key.stem}-{tiers}" / "model.onnx"
        dst.parent.mkdir()
        op.encrypt(plain, dst, key_file=key, tiers=tiers)
        assert op.load(dst, key_file=key).model == plain.read_bytes()


def test_a_key_whose_tiers_are_in_clear_gets_the_file_as_it_is(tmp_path):
    """With no tier asked for, a key whose tiers the file has in clear already gets the
    file as it is, written or loaded alike; asking for such a tier is AlreadyDecrypted."""
    plain, enc, key = tiered(tmp_path)
    half = tmp_path / "half" / "model.onnx"
    again = tmp_path / "again" / "model.onnx"
    half.parent.mkdir()
    again.parent.mkdir()
    low = str(key) + ".tier1"
    op.decrypt(enc, half, key_file=key, tier=1)
    op.decrypt(half, again, key_file=low)
    assert again.read_bytes() == half.read_bytes()
    assert external_files(again.parent) == external_files(half.parent)
    assert op.load(half, key_file=low).model == half.read_bytes()
    with pytest.raises(op.AlreadyDecrypted):
        op.load(half, key_file=low, tier=1)


def test_keygen_writes_private_files_and_never_overwrites(tmp_path):
    key = tmp_path / "k.key"
    r = op.keygen(key, tiers=3)
    assert r["tier_key_files"] == [str(key) + ".tier1", str(key) + ".tier2"]
    for p in [key, *map(pathlib.Path, r["tier_key_files"])]:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert b"onnx-protect-key-v1 master tiers=3" in key.read_bytes()
    with pytest.raises(op.OutputError, match="never overwrites"):
        op.keygen(key)
    assert b"tiers=2" in op.new_key(tiers=2)
    with pytest.raises(ValueError):
        op.new_key(tiers=0)


# ---------------------------------------------------------------- every error kind


def flip(path, offset):
    b = bytearray(path.read_bytes())
    b[offset] ^= 1
    path.write_bytes(bytes(b))


def with_metadata(src, dst, key, value):
    m = onnx.load(str(src))
    e = m.metadata_props.add()
    e.key, e.value = key, value
    onnx.save(m, str(dst))
    return dst


def test_every_error_kind_has_its_exception(ext, tmp_path):
    plain, enc, key = ext
    other = op.new_key()
    cases = []

    def expect(exc, kind, f):
        with pytest.raises(exc) as e:
            f()
        assert isinstance(e.value, op.OnnxProtectError)
        assert e.value.kind == kind, (exc, e.value.kind, str(e.value))
        assert str(e.value), "every error has a message"
        cases.append(exc)

    expect(op.WrongKey, "wrong_key", lambda: op.load(enc, key=other))
    expect(op.NotProtected, "not_protected", lambda: op.load(plain, key=other))
    expect(op.FileError, "io", lambda: op.load(tmp_path / "missing.onnx", key=other))
    expect(op.MalformedModel, "truncated", lambda: op.inspect(ROOT / "fixtures/malformed/truncated_mid_tensor.onnx"))
    expect(op.AlreadyProtected, "already_protected", lambda: op.encrypt(enc, tmp_path / "again.onnx", key=other))
    expect(op.InvalidPolicy, "policy", lambda: op.encrypt(plain, tmp_path / "p.onnx", key=other, coefficient=2.0))
    expect(op.InvalidPolicy, "policy", lambda: op.encrypt(plain, tmp_path / "p.onnx", key=other, mode="nope"))
    expect(op.InvalidKey, "key", lambda: op.load(enc, key_file=tmp_path / "missing.key"))
    expect(op.OutputError, "output", lambda: op.decrypt(enc, enc, key_file=key))
    expect(op.NotSigned, "not_signed", lambda: op.load(enc, key_file=key, signers=[_signer(tmp_path)]))
    digits = ROOT / "fixtures" / "digits" / "mlp.onnx"
    v3 = with_metadata(digits, tmp_path / "v3.onnx", "onnx-protect/v3", "x")
    expect(op.UnsupportedVersion, "unsupported_version", lambda: op.load(v3, key=other))
    bad = with_metadata(digits, tmp_path / "bad.onnx", "onnx-protect/v2", "garbage")
    expect(op.BadManifest, "bad_manifest", lambda: op.load(bad, key=other))
    flip(enc.parent / "weights.bin", 0)
    expect(op.Modified, "modified", lambda: op.load(enc, key_file=key))
    expect(op.Modified, "modified", lambda: op.verify(enc))
    expect(op.AlreadyDecrypted, "already_decrypted", lambda: _already_decrypted(tmp_path))
    unsafe = ort.SessionOptions()
    unsafe.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    expect(op.UnsafeSessionOptions, "unsafe_session_options", lambda: op.InferenceSession(plain, unsafe, key=other))
    named = {c.__name__ for c in cases}
    exported = {n for n in op.__all__ if isinstance(getattr(op, n), type) and issubclass(getattr(op, n), op.OnnxProtectError)}
    # The licence classes are raised, each by its case, in test_package_device_keys.py.
    licence = {n for n in exported if issubclass(getattr(op, n), op.LicenceError)}
    assert exported - {"OnnxProtectError"} - licence == named, "every exception class is raised by some case"


def _signer(tmp_path):
    """A well-formed signer key (an Ed25519 public key) that signed nothing."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    import spec_v2

    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    return spec_v2.signer_string(Ed25519PrivateKey.generate().public_key().public_bytes(*raw))


def _already_decrypted(tmp_path):
    d = tmp_path / "tiers"
    plain = copy_model(EXTERNAL, d / "plain")
    key = d / "k.key"
    op.keygen(key, tiers=2)
    outs = {n: d / n / "model.onnx" for n in ("enc", "half", "again")}
    for p in outs.values():
        p.parent.mkdir()
    op.encrypt(plain, outs["enc"], key_file=key, tiers=2)
    op.decrypt(outs["enc"], outs["half"], key_file=key, tier=1)
    op.decrypt(outs["half"], outs["again"], key_file=str(key) + ".tier1", tier=1)


# ---------------------------------------------------------------- tiers


def tiered(tmp_path):
    """The external-data fixture encrypted in 2 access tiers: (plain, protected, top key file)."""
    plain = copy_model(EXTERNAL, tmp_path / "plain")
    key = tmp_path / "k.key"
    op.keygen(key, tiers=2)
    enc = tmp_path / "enc" / "model.onnx"
    enc.parent.mkdir()
    op.encrypt(plain, enc, key_file=key, tiers=2)
    return plain, enc, key


def test_tiers_restore_what_each_key_reaches(tmp_path):
    plain, enc, key = tiered(tmp_path)
    original = plain.read_bytes()
    originals = external_files(plain.parent)
    top = op.load(enc, key_file=key)
    assert top.model == original
    assert {k: bytes(memoryview(v)) for k, v in top.external.items()} == originals
    low = op.load(enc, key_file=str(key) + ".tier1")
    low_files = {k: bytes(memoryview(v)) for k, v in low.external.items()}
    assert low_files != originals, "tier 2 stays encrypted with the tier-1 key"
    same_with_top = op.load(enc, key_file=key, tier=1)
    assert same_with_top.model == low.model, "the top key stopped at tier 1 gives what the tier-1 key gives"
    assert {k: bytes(memoryview(v)) for k, v in same_with_top.external.items()} == low_files
    py_out = tmp_path / "py" / "model.onnx"
    py_out.parent.mkdir()
    op.decrypt(enc, py_out, key_file=key, tier=1)
    assert op.load(py_out, key_file=key).model == original, "the top key finishes a tier-1 file"
    assert op.verify(py_out)["restored_bytes"] > 0


def test_tier_classes_choose_the_classes_each_tier_serves(tmp_path):
    """``tier_classes`` as ``--tier-classes``: the same file as the command line's (for the same
    key), the groups in the manifest's policy summary; a class the model does not have is an
    ``InvalidPolicy`` and writes nothing."""
    mlp = ROOT / "fixtures" / "zoo" / "digits" / "mlp.onnx"
    key = tmp_path / "k.key"
    op.keygen(key, tiers=3)
    py_out, cli_out = tmp_path / "py.onnx", tmp_path / "cli.onnx"
    op.encrypt(mlp, py_out, key_file=key, tiers=3, tier_classes=[[9, 0], [5]])
    summary = op.inspect(py_out)["protection"]["policy_summary"]
    assert summary.endswith(";tiers=3;order=classes;classes=9,0;5"), summary
    cli("encrypt", mlp, "-o", cli_out, "--key-file", key, "--tiers", "3", "--tier-classes", "9,0;5", "-q")
    tiers = lambda p: sorted((t["name"], t["tier"], tuple(map(tuple, t["spans"]))) for t in op.inspect(p)["protection"]["tensors"])
    assert tiers(py_out) == tiers(cli_out)
    with pytest.raises(op.InvalidPolicy, match="class 10"):
        op.encrypt(mlp, tmp_path / "bad.onnx", key_file=key, tiers=3, tier_classes=[[0], [10]])
    assert not (tmp_path / "bad.onnx").exists()


def test_python_and_the_cli_write_the_same_tier_1_file(tmp_path):
    plain, enc, key = tiered(tmp_path)
    py_out = tmp_path / "py" / "model.onnx"
    cli_out = tmp_path / "cli" / "model.onnx"
    py_out.parent.mkdir()
    cli_out.parent.mkdir()
    op.decrypt(enc, py_out, key_file=key, tier=1)
    cli("decrypt", enc, "-o", cli_out, "--key-file", key, "--tier", "1", "-q")
    assert py_out.read_bytes() == cli_out.read_bytes()
    assert external_files(py_out.parent) == external_files(cli_out.parent)


# ---------------------------------------------------------------- onnxruntime


@pytest.mark.parametrize("model", DIGITS, ids=lambda p: p.name)
@pytest.mark.parametrize("mode", ["ctr", "fp"])
def test_sessions_from_protected_digits_models_match_the_original(model, mode, tmp_path):
    enc = tmp_path / model.name
    key = op.new_key()
    op.encrypt(model, enc, key=key, mode=mode)
    x = np.load(ROOT / "fixtures" / "digits" / "test_x.npy")[:128]
    s = op.InferenceSession(enc, key=key, providers=PROVIDERS)
    assert isinstance(s, ort.InferenceSession)
    name = s.get_inputs()[0].name
    got = s.run(None, {name: x})[0]
    want = ort.InferenceSession(str(model), providers=PROVIDERS).run(None, {name: x})[0]
    assert got.tobytes() == want.tobytes()
    # Without the key, the same runtime computes something else from the same file.
    garbled = ort.InferenceSession(str(enc), providers=PROVIDERS).run(None, {name: x})[0]
    assert garbled.tobytes() != want.tobytes()


def test_sessions_take_external_data_from_memory_in_place(ext):
    plain, enc, key = ext
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    s = op.InferenceSession(enc, key_file=key, providers=PROVIDERS, in_place=True)
    got = s.run(None, {"x": x})[0]
    want = ort.InferenceSession(str(plain), providers=PROVIDERS).run(None, {"x": x})[0]
    assert got.tobytes() == want.tobytes()
    sm, kept = s._onnx_protect_buffers
    if s.onnx_protect_weights == "files_in_place":  # onnxruntime >= 1.31
        assert [name.startswith("onnx-protect.") for name, _ in sm.files] == [True], "one decrypted file in memory"
        assert kept and kept[0].base is not None, "a view of the decrypted memory, not a copy"
    else:
        assert [name for name, *_ in sm.shared] == ["mm_W"], "the 2 KiB MatMul weight is used in place when asked"
        assert kept and kept[0][0].base is not None, "a view of the decrypted memory, not a copy"
    # onnxruntime re-creates the session from the options, which still hold the views.
    s.set_providers(PROVIDERS)
    assert s.run(None, {"x": x})[0].tobytes() == want.tobytes()


def test_session_options_and_kwargs_reach_onnxruntime(ext):
    _, enc, key = ext
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    s = op.InferenceSession(enc, key_file=key, sess_options=so, providers=PROVIDERS)
    assert s.get_providers() == PROVIDERS
    assert s.get_session_options().intra_op_num_threads == 1
    with pytest.raises(op.WrongKey):
        op.InferenceSession(enc, key=op.new_key())


def test_export_refuses_what_would_write_plaintext_files(tmp_path):
    with pytest.raises(ValueError, match="external_data"):
        op.export(None, (), tmp_path / "m.onnx", key=op.new_key(), external_data=True)
    with pytest.raises(TypeError, match="do not pass f"):
        op.export(None, (), tmp_path / "m.onnx", key=op.new_key(), f=str(tmp_path / "plain.onnx"))
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- buffers


def test_buffers_are_read_only_views_and_close_only_when_unused(ext):
    _, enc, key = ext
    m = op.load(enc, key_file=key)
    buf = m.external["weights.bin"]
    view = memoryview(buf)
    assert view.readonly and view.format == "B" and view.nbytes == len(buf) == 2560
    with pytest.raises(TypeError):
        view[0] = 1
    arr = np.frombuffer(buf, dtype=np.uint8)
    with pytest.raises(BufferError, match="still alive"):
        buf.close()
    with pytest.raises(BufferError):
        m.close()
    assert not buf.closed, "a refused close changes nothing"
    del arr
    view.release()
    m.close()
    assert buf.closed and len(buf) == 0
    with pytest.raises(BufferError, match="closed"):
        memoryview(buf)
    with pytest.raises(ValueError, match="closed"):
        m.model
    buf.close()  # idempotent


# ---------------------------------------------------------------- typing


def test_the_stub_names_every_native_name():
    pkg = pathlib.Path(op.__file__).parent
    assert (pkg / "py.typed").exists()
    tree = ast.parse((pkg / "_native.pyi").read_text())
    stubbed = {n.name for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef))}
    stubbed |= {t.target.id for t in tree.body if isinstance(t, ast.AnnAssign)}
    native = {n for n in dir(op._native) if not n.startswith("_")} | {"__version__"}
    assert stubbed == native
    for name in op.__all__:
        assert hasattr(op, name), name


# ---------------------------------------------------------------- the GIL


def test_load_lets_other_threads_run_while_it_works(tmp_path):
    """With a switch interval far beyond the test's length, a thread waiting for the GIL
    runs only when the main thread lets go of it: a `load` that kept the GIL would leave
    the counter unchanged. The passphrase (Argon2id) makes the call long enough."""
    import sys
    import threading
    import time

    plain = copy_model(EXTERNAL, tmp_path / "plain")
    enc = tmp_path / "enc" / "model.onnx"
    enc.parent.mkdir()
    op.encrypt(plain, enc, passphrase="slow to stretch")
    key = op.Key.from_passphrase(b"slow to stretch")
    counter, stop, started = [0], threading.Event(), threading.Event()

    def spin():
        started.set()
        while not stop.is_set():
            counter[0] += 1
            time.sleep(0)  # gives the GIL back, so the main thread can always take it again

    old = sys.getswitchinterval()
    sys.setswitchinterval(1000.0)
    t = threading.Thread(target=spin)
    try:
        t.start()
        started.wait()
        before = counter[0]
        m = op._native.load(str(enc), key=key, tier=None, signers=[])
        during = counter[0] - before
    finally:
        stop.set()
        t.join()
        sys.setswitchinterval(old)
    assert m.model == plain.read_bytes()
    assert during > 0, "another thread ran while load worked"


def test_encrypt_with_a_fingerprint_is_traced_to_its_recipient(tmp_path):
    model = ROOT / "fixtures" / "digits" / "cnn.onnx"
    secret = tmp_path / "fp.secret"
    info = op.fingerprint_secret(secret)
    assert len(info["key_id"]) == 16 and stat.S_IMODE(secret.stat().st_mode) == 0o600
    with pytest.raises(op.OutputError, match="never overwrites"):
        op.fingerprint_secret(secret)
    key, ledger = op.new_key(), tmp_path / "ledger.txt"
    copies = {}
    for rid in ("ann", "bob"):
        enc, dec = tmp_path / f"{rid}.protected.onnx", tmp_path / f"{rid}.onnx"
        r = op.encrypt(model, enc, key=key, fingerprint=rid, fingerprint_secret=secret, ledger=ledger)
        assert (r["fingerprint"]["recipient"], r["fingerprint"]["variant"]) == (rid, 0)
        assert r["fingerprint"]["tensors"] > 0 and r["fingerprint"]["alpha"] == 0.002
        op.decrypt(enc, dec, key=key)
        copies[rid] = dec
    assert dec.read_bytes() != model.read_bytes(), "the decrypted copy carries the mark"
    assert sum(line.startswith("{") for line in ledger.read_text().splitlines()) == 2
    for rid, copy in copies.items():
        t = json.loads(cli("trace", copy, "--ledger", ledger, "--fingerprint-secret", secret, "--original", model,
                           "--json").stdout)
        assert t["recipient"] == rid and len(t["matches"]) == 1, t
    out = tmp_path / "x.onnx"
    with pytest.raises(TypeError, match="go together"):
        op.encrypt(model, out, key=key, fingerprint="ann")
    with pytest.raises(ValueError, match="recipient"):
        op.encrypt(model, out, key=key, fingerprint="a b", fingerprint_secret=secret, ledger=ledger)
    key_file = tmp_path / "k.key"
    op.keygen(key_file)
    with pytest.raises(op.InvalidKey):
        op.encrypt(model, out, key=key, fingerprint="cid", fingerprint_secret=key_file, ledger=ledger)
    with pytest.raises(op.AlreadyProtected):
        op.encrypt(copies["ann"].with_name("ann.protected.onnx"), out, key=key, fingerprint="cid",
                   fingerprint_secret=secret, ledger=ledger)
    assert not out.exists()
    assert sum(line.startswith("{") for line in ledger.read_text().splitlines()) == 2, "no entry for a refused copy"
