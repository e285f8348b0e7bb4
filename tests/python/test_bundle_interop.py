"""OpenSSF model-signing bundles, both ways: `model_signing verify key` (the PyPI package)
accepts the bundles `onnx-protect bundle sign` writes, and `onnx-protect bundle verify`
accepts the bundles `model_signing sign key` writes, with P-256 and P-384 keys, for a single-file and an
external-data model, plain and protected; a one-byte change in any file, a missing file,
an extra file and a wrong key are refused by both.

Runs the built binary (target/debug/onnx-protect, or $ONNX_PROTECT_BIN) and the
`model_signing` package of tests/requirements.txt, in process, configured as its
`model_signing sign key` and `verify key` commands configure it (the commands themselves
take seconds to start).
"""
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = os.environ.get("ONNX_PROTECT_BIN", str(ROOT / "target" / "debug" / "onnx-protect"))


def run(cmd, ok=True):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if ok and r.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))}: exit {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def ours(*args, ok=True):
    return run([BIN, *args], ok=ok)


def _hashing(model, sig):
    import model_signing

    # As the command line does: the signature file is ignored when it lies in the model.
    ignored = []
    try:
        ignored.append(pathlib.Path(sig).resolve().relative_to(pathlib.Path(model).resolve()))
    except ValueError:
        pass
    return model_signing.hashing.Config().set_ignored_paths(paths=ignored, ignore_git_paths=True).set_allow_symlinks(False)


def theirs_sign(model, private_key, sig):
    import model_signing

    model_signing.signing.Config().use_elliptic_key_signer(private_key=private_key).set_hashing_config(
        _hashing(model, sig)).sign(model, sig)


def theirs_verify(model, sig, public_key, ignore_unsigned=False):
    """True when model_signing accepts the bundle for the model."""
    import model_signing

    try:
        model_signing.verifying.Config().use_elliptic_key_verifier(public_key=public_key).set_hashing_config(
            _hashing(model, sig)).set_ignore_unsigned_files(ignore_unsigned).verify(model, sig)
        return True
    except Exception:  # noqa: BLE001 (model_signing raises ValueError, OSError, and its own)
        return False


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """(private, public) PEM files by (who made the key, curve): P-256 and P-384 keys written
    by `bundle keygen` (PKCS#8) and by openssl (SEC1), and another `bundle keygen` key."""
    d = tmp_path_factory.mktemp("keys")
    out = {}
    for curve, openssl_name in (("p256", "prime256v1"), ("p384", "secp384r1")):
        ours("bundle", "keygen", "--curve", curve, "-o", d / f"ours-{curve}.pem", "-q")
        out[("ours", curve)] = (d / f"ours-{curve}.pem", d / f"ours-{curve}.pem.pub.pem")
        shown = run(["openssl", "ec", "-pubin", "-in", out[("ours", curve)][1], "-noout", "-text"]).stdout
        assert f"ASN1 OID: {openssl_name}" in shown, shown
        priv, pub = d / f"theirs-{curve}.pem", d / f"theirs-{curve}.pub.pem"
        run(["openssl", "ecparam", "-name", openssl_name, "-genkey", "-noout", "-out", priv])
        run(["openssl", "ec", "-in", priv, "-pubout", "-out", pub])
        out[("theirs", curve)] = (priv, pub)
    ours("bundle", "keygen", "-o", d / "other.pem", "-q")
    out["other"] = (d / "other.pem", d / "other.pem.pub.pem")
    return out


def models(tmp: pathlib.Path):
    """(label, path to sign, the files a change must be caught in, model_signing's extra
    verify options) for each kind of model: a single file, a model file with external
    data (model_signing checks its directory with --ignore_unsigned_files), a directory;
    each plain and protected."""
    key = tmp / "k.key"
    ours("keygen", "-o", key, "-q")
    out = []
    for protected in (False, True):
        tag = "protected" if protected else "plain"
        single = tmp / f"single-{tag}"
        single.mkdir()
        src = ROOT / "fixtures" / "digits" / "cnn.onnx"
        if protected:
            ours("encrypt", src, "-o", single / "cnn.onnx", "--key-file", key, "-q")
        else:
            shutil.copy(src, single / "cnn.onnx")
        out.append((f"single-{tag}", single / "cnn.onnx", [single / "cnn.onnx"], False))
        ext = tmp / f"external-{tag}"
        if protected:
            ext.mkdir()
            ours("encrypt", ROOT / "fixtures/models/external_data/model.onnx", "-o", ext / "model.onnx", "--key-file", key, "-q")
        else:
            shutil.copytree(ROOT / "fixtures" / "models" / "external_data", ext)
            (ext / "expected.json").unlink()
        files = sorted(ext.iterdir())
        out.append((f"external-{tag}", ext / "model.onnx", files, True))
        out.append((f"directory-{tag}", ext, files, False))
    return out


def target_for_theirs(path: pathlib.Path) -> pathlib.Path:
    """model_signing checks a model file with external data through its directory."""
    return path.parent if path.is_file() and any(p.suffix == ".bin" for p in path.parent.iterdir()) else path


@pytest.mark.parametrize("curve", ["p256", "p384"])
@pytest.mark.parametrize("signer", ["ours", "theirs"])
def test_bundles_verify_both_ways_and_refuse_every_change(tmp_path, keys, signer, curve):
    """`signer` signs with a key of `curve` it made (ECDSA with SHA-256 on P-256, SHA-384 on
    P-384); the other verifies."""
    for label, path, files, unsigned_ok in models(tmp_path / signer):
        priv, pub = keys[(signer, curve)]
        sig = tmp_path / f"{signer}-{label}.sig"
        if signer == "ours":
            ours("bundle", "sign", path, "--key", priv, "-o", sig, "-q")
        else:
            if path.is_file() and unsigned_ok:
                # model_signing signs a file alone; onnx-protect refuses such a bundle for a
                # model with external data, which it does not cover.
                theirs_sign(path, priv, sig)
                r = ours("bundle", "verify", path, "--key", pub, "--bundle", sig, ok=False)
                assert r.returncode == 5 and "external data" in r.stderr, r.stderr
                continue
            theirs_sign(path, priv, sig)
        their_target = target_for_theirs(path) if signer == "ours" else path

        def both_accept():
            ours("bundle", "verify", path, "--key", pub, "--bundle", sig, "-q")
            assert theirs_verify(their_target, sig, pub, unsigned_ok), f"{label}: model_signing refused it"

        def both_refuse(what):
            r = ours("bundle", "verify", path, "--key", pub, "--bundle", sig, "-q", ok=False)
            assert r.returncode == 5, f"{label} {what}: onnx-protect exit {r.returncode}: {r.stderr}"
            assert not theirs_verify(their_target, sig, pub, unsigned_ok), f"{label} {what}: model_signing accepted it"

        both_accept()
        for f in files:
            data = f.read_bytes()
            for i in (len(data) // 2,):
                changed = bytearray(data)
                changed[i] ^= 0x01
                f.write_bytes(bytes(changed))
                both_refuse(f"{f.name} byte {i}")
            f.write_bytes(data)
        both_accept()
        if len(files) > 1:
            gone = [f for f in files if f.suffix == ".bin"][0]
            data = gone.read_bytes()
            gone.unlink()
            both_refuse(f"{gone.name} missing")
            gone.write_bytes(data)
        if path.is_dir():
            (path / "extra.txt").write_text("not signed")
            both_refuse("an extra file")
            (path / "extra.txt").unlink()
        # Another key.
        _, other_pub = keys["other"]
        r = ours("bundle", "verify", path, "--key", other_pub, "--bundle", sig, "-q", ok=False)
        assert r.returncode == 5, r.stderr
        assert not theirs_verify(their_target, sig, other_pub, unsigned_ok)
        both_accept()


def test_model_signing_needs_pyopenssl_as_signing_md_says():
    """model-signing imports OpenSSL (pyOpenSSL) as it starts without listing it as a
    dependency: signing.md's install line names both, at the version tested here."""
    import importlib.metadata

    version = importlib.metadata.version("model-signing")
    assert not any(r.lower().startswith("pyopenssl") for r in importlib.metadata.requires("model-signing") or [])
    code = "import sys; sys.modules['OpenSSL'] = None; import model_signing._cli"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode != 0 and "OpenSSL" in r.stderr, r.stderr
    text = (ROOT / "docs" / "signing.md").read_text(encoding="utf-8")
    assert f"`pip install model-signing=={version} pyopenssl`" in text
