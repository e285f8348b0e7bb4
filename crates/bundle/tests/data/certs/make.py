"""Writes the certificates of crates/bundle/tests/cert.rs (run from this directory:
`python3 make.py`). Validity is checked at the leaf's notBefore, so these never expire for
the tests; each run makes new keys."""
import datetime
import pathlib

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

START = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
DAY = datetime.timedelta(days=1)
KEYS = {}


def issue(name, issuer, ca=False, digital_signature=True, start=0, days=36500, curve=ec.SECP256R1()):
    key = KEYS[name] = ec.generate_private_key(curve)
    n = lambda cn: x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    b = (x509.CertificateBuilder().subject_name(n(name)).issuer_name(n(issuer)).public_key(key.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(START + start * DAY)
         .not_valid_after(START + (start + days) * DAY)
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
         .add_extension(x509.KeyUsage(digital_signature and not ca, False, not digital_signature and not ca, False,
                                      False, ca, ca, False, False), critical=True))
    cert = b.sign(KEYS[issuer], hashes.SHA384() if issuer.endswith("root") else hashes.SHA256())
    pathlib.Path(f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if not ca:  # the leaves' keys sign bundles in the tests
        pathlib.Path(f"{name}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


issue("root", "root", ca=True, curve=ec.SECP384R1())
issue("inter", "root", ca=True, start=10)
issue("leaf", "inter", start=20)
issue("early", "inter", start=5)
issue("encipher", "inter", digital_signature=False, start=20)
issue("other-root", "other-root", ca=True)
issue("stranger", "other-root", start=20)
