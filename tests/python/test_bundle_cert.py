"""Model-signing bundles signed with a certificate chain, both ways: `model_signing verify
certificate` (the PyPI package) accepts the bundles `onnx-protect bundle sign --certificate`
writes, `onnx-protect bundle verify --certificate-chain` accepts those `model_signing sign
certificate` writes, and both refuse the same bundles: a changed model byte, a leaf issued
under another root, a chain without its intermediate, a leaf not for signing, an issuer that
is not a CA, a leaf issued outside its issuer's validity. An expired leaf is accepted by both
(model_signing validates at the leaf's notBefore). A changed byte of the chain in one of our
bundles is refused by onnx-protect (every byte: crates/bundle/tests/cert.rs).

The certificates are made here with `cryptography` (root P-384, intermediate and leaves
P-256 or P-384). model_signing runs in process, configured as its `sign certificate` and
`verify certificate` commands configure it (the commands take seconds to start).
"""
import base64
import datetime
import json
import os
import pathlib
import shutil
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = os.environ.get("ONNX_PROTECT_BIN", str(ROOT / "target" / "debug" / "onnx-protect"))
NOW = datetime.datetime.now(datetime.timezone.utc)
DAY = datetime.timedelta(days=1)


def ours(*args):
    return subprocess.run([BIN, *map(str, args)], capture_output=True, text=True)


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key_usage(digital_signature=False, key_encipherment=False, cert_sign=False):
    return x509.KeyUsage(digital_signature, False, key_encipherment, False, False, cert_sign, cert_sign, False, False)


class Pki:
    """Keys and certificates written as PEM files in one directory."""

    def __init__(self, d: pathlib.Path):
        self.d = d
        self.keys = {}

    def issue(self, name, issuer, curve=ec.SECP256R1(), ca=False, usage="sign", valid=(-1, 365), sha=hashes.SHA256()):
        key = ec.generate_private_key(curve)
        self.keys[name] = key
        ikey = key if issuer == name else self.keys[issuer]
        b = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(issuer))
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(NOW + valid[0] * DAY).not_valid_after(NOW + valid[1] * DAY))
        if ca:
            b = b.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            b = b.add_extension(_key_usage(cert_sign=True), critical=True)
        else:
            b = b.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            if usage == "sign":
                b = b.add_extension(_key_usage(digital_signature=True), critical=True)
            elif usage == "codesigning":
                b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
            elif usage == "encipher":
                b = b.add_extension(_key_usage(key_encipherment=True), critical=True)
                b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        cert = b.sign(ikey, sha)
        (self.d / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (self.d / f"{name}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))

    def cert(self, name):
        return self.d / f"{name}.pem"

    def key(self, name):
        return self.d / f"{name}.key"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    p = Pki(tmp_path_factory.mktemp("pki"))
    p.issue("root", "root", ec.SECP384R1(), ca=True, valid=(-30, 3650), sha=hashes.SHA384())
    p.issue("inter", "root", ca=True, valid=(-20, 1000), sha=hashes.SHA384())
    p.issue("leaf", "inter")
    p.issue("leaf384", "inter", ec.SECP384R1())
    p.issue("codesigner", "inter", usage="codesigning")
    p.issue("expired", "inter", valid=(-10, -2))
    # Refused: issued before the intermediate was valid; not for signing; under a non-CA.
    p.issue("early", "inter", valid=(-25, 30))
    p.issue("encipher", "inter", usage="encipher")
    p.issue("notca", "inter", usage="sign")
    p.issue("undernotca", "notca")
    # Another root with its own intermediate, and a leaf under it.
    p.issue("other-root", "other-root", ca=True, valid=(-30, 3650))
    p.issue("other-inter", "other-root", ca=True, valid=(-20, 1000))
    p.issue("stranger", "other-inter")
    return p


# (leaf, chain certificates in the bundle): the cases both verifiers accept, then refuse.
# Trusted certificates: root.pem alone.
ACCEPTED = [("leaf", ["inter"]), ("leaf384", ["inter"]), ("codesigner", ["inter"]), ("expired", ["inter"]),
            ("leaf", ["inter", "root"])]
REFUSED = [("stranger", ["other-inter"]), ("stranger", ["other-inter", "other-root"]), ("leaf", []),
           ("encipher", ["inter"]), ("undernotca", ["notca", "inter"]), ("early", ["inter"])]


def _hashing():
    import model_signing

    return model_signing.hashing.Config().set_ignored_paths(paths=[], ignore_git_paths=True).set_allow_symlinks(False)


def theirs_sign(model, pki, leaf, chain, sig):
    import model_signing

    # model_signing 1.1.1 cannot sign with no chain certificate (it fails to load an empty
    # PEM list): a bundle without its intermediate is then its bundle with the chain removed.
    model_signing.signing.Config().use_certificate_signer(
        private_key=pki.key(leaf), signing_certificate=pki.cert(leaf),
        certificate_chain=[pki.cert(c) for c in chain or ["inter"]]).set_hashing_config(_hashing()).sign(model, sig)
    if not chain:
        bundle = json.loads(pathlib.Path(sig).read_text())
        del bundle["verificationMaterial"]["x509CertificateChain"]["certificates"][1:]
        pathlib.Path(sig).write_text(json.dumps(bundle))


def theirs_verify(model, sig, roots):
    """None when model_signing accepts the bundle, else its error."""
    import model_signing

    try:
        model_signing.verifying.Config().use_certificate_verifier(certificate_chain=roots).set_hashing_config(
            _hashing()).verify(model, sig)
        return None
    except Exception as e:  # noqa: BLE001 (model_signing raises ValueError, OpenSSL errors, its own)
        return e


def ours_sign(model, pki, leaf, chain, sig):
    args = ["bundle", "sign", model, "--key", pki.key(leaf), "--certificate", pki.cert(leaf), "-o", sig, "-q",
            "--force"]
    for c in chain:
        args += ["--certificate-chain", pki.cert(c)]
    r = ours(*args)
    assert r.returncode == 0, r.stderr


def ours_verify(model, sig, roots):
    args = ["bundle", "verify", model, "--bundle", sig]
    for r in roots:
        args += ["--certificate-chain", r]
    return ours(*args)


@pytest.fixture()
def model(tmp_path):
    m = tmp_path / "model" / "cnn.onnx"
    m.parent.mkdir()
    shutil.copy(ROOT / "fixtures" / "digits" / "cnn.onnx", m)
    return m


@pytest.mark.parametrize("signer", ["ours", "theirs"])
def test_certificate_bundles_verify_both_ways_and_are_refused_by_both(pki, model, signer, tmp_path):
    sign = ours_sign if signer == "ours" else theirs_sign
    roots = [pki.cert("root")]
    for i, (leaf, chain) in enumerate(ACCEPTED):
        sig = tmp_path / f"ok{i}.sig"
        sign(model, pki, leaf, chain, sig)
        r = ours_verify(model, sig, roots)
        assert r.returncode == 0, f"{signer} {leaf} {chain}: {r.stderr}"
        assert theirs_verify(model, sig, roots) is None, f"{signer} {leaf} {chain}: model_signing refused"
        if i == 0:
            # A changed model byte: refused by both.
            data = model.read_bytes()
            model.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
            r = ours_verify(model, sig, roots)
            assert r.returncode == 5 and "changed" in r.stderr, r.stderr
            assert theirs_verify(model, sig, roots) is not None
            model.write_bytes(data)
            # Trusting another root only: refused by both.
            r = ours_verify(model, sig, [pki.cert("other-root")])
            assert r.returncode == 5 and "not trusted" in r.stderr, r.stderr
            assert theirs_verify(model, sig, [pki.cert("other-root")]) is not None
            # Trusting the intermediate alone: refused by both (the path must reach a root).
            r = ours_verify(model, sig, [pki.cert("inter")])
            assert r.returncode == 5 and "not trusted" in r.stderr, r.stderr
            assert theirs_verify(model, sig, [pki.cert("inter")]) is not None
    for i, (leaf, chain) in enumerate(REFUSED):
        sig = tmp_path / f"bad{i}.sig"
        sign(model, pki, leaf, chain, sig)
        r = ours_verify(model, sig, roots)
        assert r.returncode == 5, f"{signer} {leaf} {chain}: exit {r.returncode} {r.stderr}"
        assert len(r.stderr.strip().splitlines()) == 1 and "not trusted" in r.stderr, r.stderr
        assert theirs_verify(model, sig, roots) is not None, f"{signer} {leaf} {chain}: model_signing accepted"


def test_changed_chain_bytes_are_refused_with_exit_5(pki, model, tmp_path):
    """Every byte of the chain is covered in-process by crates/bundle/tests/cert.rs; here, the
    first, middle and last byte of each certificate through the command line."""
    sig = tmp_path / "model.sig"
    ours_sign(model, pki, "leaf", ["inter"], sig)
    bundle = json.loads(sig.read_text())
    certs = bundle["verificationMaterial"]["x509CertificateChain"]["certificates"]
    assert len(certs) == 2
    bad = tmp_path / "bad.sig"
    failures = []
    for n, c in enumerate(certs):
        der = base64.b64decode(c["rawBytes"])
        for i in (0, len(der) // 2, len(der) - 1):
            changed = bytearray(der)
            changed[i] ^= 0x01
            c["rawBytes"] = base64.b64encode(bytes(changed)).decode()
            bad.write_text(json.dumps(bundle))
            r = ours_verify(model, bad, [pki.cert("root")])
            if r.returncode != 5:
                failures.append((n, i, r.returncode, r.stderr))
        c["rawBytes"] = base64.b64encode(der).decode()
    assert not failures, failures[:5]
    bad.write_text(json.dumps(bundle))
    assert ours_verify(model, bad, [pki.cert("root")]).returncode == 0


def test_certificate_options_refuse_unusable_input(pki, model, tmp_path):
    sig = tmp_path / "model.sig"
    # A certificate that is not the key's, a file that holds no certificate: key errors.
    r = ours("bundle", "sign", model, "--key", pki.key("leaf"), "--certificate", pki.cert("leaf384"), "-o", sig)
    assert r.returncode == 4 and "not the public key" in r.stderr, r.stderr
    r = ours("bundle", "sign", model, "--key", pki.key("leaf"), "--certificate", pki.key("leaf"), "-o", sig)
    assert r.returncode == 4 and "no PEM certificate" in r.stderr, r.stderr
    assert not sig.exists()
    ours_sign(model, pki, "leaf", ["inter"], sig)
    r = ours_verify(model, sig, [pki.key("root")])
    assert r.returncode == 4 and "no PEM certificate" in r.stderr, r.stderr
    # A key-signed bundle checked against certificates: named, refused.
    kb = tmp_path / "key.sig"
    assert ours("bundle", "sign", model, "--key", pki.key("leaf"), "-o", kb, "-q").returncode == 0
    r = ours_verify(model, kb, [pki.cert("root")])
    assert r.returncode == 5 and "signed with a key" in r.stderr, r.stderr
    # --key and --certificate-chain together, or neither: usage errors.
    assert ours("bundle", "verify", model, "--bundle", sig).returncode == 2
    pub = tmp_path / "leaf.pub.pem"
    pub.write_bytes(pki.keys["leaf"].public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    assert ours("bundle", "verify", model, "--bundle", sig, "--key", pub, "--certificate-chain",
                pki.cert("root")).returncode == 2
    # The leaf's public key alone still verifies the signature (the chain is then not read).
    assert ours("bundle", "verify", model, "--bundle", sig, "--key", pub).returncode == 0
