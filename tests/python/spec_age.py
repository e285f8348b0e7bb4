"""age (age-encryption.org/v1) with X25519 recipients, and Bech32 key strings.

Written from the public age specification (C2SP age, "age-encryption.org/v1")
and BIP 173 (Bech32), on top of `cryptography`'s X25519, HKDF-SHA-256,
HMAC-SHA-256 and ChaCha20-Poly1305: no age library. The tests check it against
an age implementation from PyPI (`pyrage`) in both directions.

Only what the onnx-protect `x25519` stanza needs: binary (not armored) files,
X25519 recipient stanzas; stanzas of other types are skipped when decrypting.

    identity, recipient = generate_identity()      # "AGE-SECRET-KEY-1...", "age1..."
    body = encrypt(b"payload", [recipient])
    decrypt(body, [identity]) == b"payload"

Errors are AgeError; a file no given identity opens raises NoIdentityMatched.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.exceptions import InvalidTag


class AgeError(Exception):
    """A malformed age file, key string or a failed authentication."""


class NoIdentityMatched(AgeError):
    """No stanza of the file opens with the given identities."""


# --------------------------------------------------------------------------
# Bech32 (BIP 173), without the 90-character limit (as age uses it).

_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_GEN = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


def _polymod(values) -> int:
    chk = 1
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i in range(5):
            if (top >> i) & 1:
                chk ^= _GEN[i]
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _convertbits(data, frombits: int, tobits: int, pad: bool) -> list[int]:
    acc, bits, out = 0, 0, []
    maxv = (1 << tobits) - 1
    for v in data:
        acc = (acc << frombits) | v
        bits += frombits
        while bits >= tobits:
            bits -= tobits
            out.append((acc >> bits) & maxv)
    if pad:
        if bits:
            out.append((acc << (tobits - bits)) & maxv)
    elif bits >= frombits or (acc << (tobits - bits)) & maxv:
        raise AgeError("bech32: non-zero or excess padding bits")
    return out


def bech32_encode(hrp: str, data: bytes) -> str:
    """Lowercase Bech32 string of `data` under the human-readable part `hrp`."""
    hrp = hrp.lower()
    five = _convertbits(data, 8, 5, True)
    poly = _polymod(_hrp_expand(hrp) + five + [0] * 6) ^ 1
    checksum = [(poly >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(_CHARSET[d] for d in five + checksum)


def bech32_decode(s: str) -> tuple[str, bytes]:
    """(lowercase hrp, data) of a Bech32 string; refuses mixed case and bad checksums."""
    if s.lower() != s and s.upper() != s:
        raise AgeError("bech32: mixed case")
    s = s.lower()
    pos = s.rfind("1")
    if pos < 1 or pos + 7 > len(s):
        raise AgeError("bech32: no separator or too short")
    if any(ord(c) < 33 or ord(c) > 126 for c in s):
        raise AgeError("bech32: character out of range")
    hrp, rest = s[:pos], s[pos + 1:]
    try:
        five = [_CHARSET.index(c) for c in rest]
    except ValueError as e:
        raise AgeError("bech32: invalid character") from e
    if _polymod(_hrp_expand(hrp) + five) != 1:
        raise AgeError("bech32: bad checksum")
    return hrp, bytes(_convertbits(five[:-6], 5, 8, False))


# --------------------------------------------------------------------------
# Keys.

RECIPIENT_HRP = "age"
IDENTITY_HRP = "age-secret-key-"


def generate_identity() -> tuple[str, str]:
    """A fresh (identity string, recipient string)."""
    sk = X25519PrivateKey.generate()
    raw = sk.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                           serialization.NoEncryption())
    return identity_string(raw), recipient_of(raw)


def identity_string(secret: bytes) -> str:
    return bech32_encode(IDENTITY_HRP, secret).upper()


def recipient_of(secret: bytes) -> str:
    pub = X25519PrivateKey.from_private_bytes(secret).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return bech32_encode(RECIPIENT_HRP, pub)


def parse_identity(s: str) -> bytes:
    """The 32-byte X25519 secret of an `AGE-SECRET-KEY-1...` string (uppercase, as age writes it)."""
    if s != s.upper():
        raise AgeError("identity: not uppercase")
    hrp, data = bech32_decode(s)
    if hrp != IDENTITY_HRP or len(data) != 32:
        raise AgeError("identity: not an age X25519 identity")
    return data


def parse_recipient(s: str) -> bytes:
    """The 32-byte X25519 public key of an `age1...` string (lowercase)."""
    if s != s.lower():
        raise AgeError("recipient: not lowercase")
    hrp, data = bech32_decode(s)
    if hrp != RECIPIENT_HRP or len(data) != 32:
        raise AgeError("recipient: not an age X25519 recipient")
    return data


def parse_identity_file(text: str) -> list[str]:
    """Identity strings of an age identity file: one per line; '#' comments and blank lines skipped."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            parse_identity(line)
            out.append(line)
    if not out:
        raise AgeError("identity file: no identity")
    return out


# --------------------------------------------------------------------------
# The format.

VERSION_LINE = b"age-encryption.org/v1"
X25519_LABEL = b"age-encryption.org/v1/X25519"
CHUNK = 64 * 1024


def _hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data).rstrip(b"=")


def _unb64(s: bytes) -> bytes:
    """Canonical unpadded standard base64 (age refuses padding and non-canonical trailing bits)."""
    if b"=" in s or len(s) % 4 == 1:
        raise AgeError("base64: padding or bad length")
    try:
        data = base64.b64decode(s + b"=" * (-len(s) % 4), validate=True)
    except ValueError as e:
        raise AgeError("base64: invalid") from e
    if _b64(data) != s:
        raise AgeError("base64: non-canonical")
    return data


def _wrap_body(body: bytes) -> bytes:
    enc = _b64(body)
    lines = [enc[i:i + 64] for i in range(0, len(enc), 64)]
    if not lines or len(lines[-1]) == 64:
        lines.append(b"")  # the last line is always shorter than 64 columns
    return b"".join(line + b"\n" for line in lines)


def _stream(key: bytes, data: bytes, seal: bool) -> bytes:
    aead = ChaCha20Poly1305(key)
    step = CHUNK if seal else CHUNK + 16
    chunks = [data[i:i + step] for i in range(0, len(data), step)] or [b""]
    if not seal and len(chunks) > 1 and len(chunks[-1]) == 16:
        raise AgeError("payload: empty last chunk")
    out = []
    for n, c in enumerate(chunks):
        last = n == len(chunks) - 1
        nonce = n.to_bytes(11, "big") + (b"\x01" if last else b"\x00")
        if seal:
            out.append(aead.encrypt(nonce, c, None))
        else:
            try:
                out.append(aead.decrypt(nonce, c, None))
            except InvalidTag as e:
                raise AgeError("payload: authentication failed") from e
    return b"".join(out)


def encrypt(payload: bytes, recipients: list[str]) -> bytes:
    """A binary age file of `payload` for the X25519 recipients (`age1...`)."""
    if not recipients:
        raise AgeError("no recipient")
    file_key = os.urandom(16)
    header = VERSION_LINE + b"\n"
    for r in recipients:
        pub = parse_recipient(r)
        eph = X25519PrivateKey.generate()
        share = eph.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        shared = eph.exchange(X25519PublicKey.from_public_bytes(pub))
        wrap = _hkdf(shared, share + pub, X25519_LABEL)
        body = ChaCha20Poly1305(wrap).encrypt(bytes(12), file_key, None)
        header += b"-> X25519 " + _b64(share) + b"\n" + _wrap_body(body)
    header += b"---"
    mac = hmac.new(_hkdf(file_key, b"", b"header"), header, hashlib.sha256).digest()
    nonce = os.urandom(16)
    return header + b" " + _b64(mac) + b"\n" + nonce + _stream(_hkdf(file_key, nonce, b"payload"), payload, True)


def _parse_header(data: bytes):
    """([(type, args, body)], bytes MACed, mac, payload offset)."""
    lines_end = 0

    def line():
        nonlocal lines_end
        nl = data.find(b"\n", lines_end)
        if nl < 0:
            raise AgeError("header: truncated")
        s = data[lines_end:nl]
        lines_end = nl + 1
        return s

    if line() != VERSION_LINE:
        raise AgeError("header: not an age-encryption.org/v1 file")
    stanzas = []
    while True:
        start = lines_end
        s = line()
        if s.startswith(b"--- "):
            mac = _unb64(s[4:])
            if len(mac) != 32:
                raise AgeError("header: MAC length")
            return stanzas, data[:start + 3], mac, lines_end
        if not s.startswith(b"-> "):
            raise AgeError("header: expected a stanza or the footer")
        args = s[3:].split(b" ")
        if not args or any(not a or any(c < 33 or c > 126 for c in a) for a in args):
            raise AgeError("header: bad stanza arguments")
        body = b""
        while True:
            b = line()
            if len(b) > 64:
                raise AgeError("header: stanza body line longer than 64 columns")
            body += b
            if len(b) < 64:
                break
        stanzas.append((args[0], args[1:], _unb64(body)))


def decrypt(data: bytes, identities: list[str]) -> bytes:
    """The payload of a binary age file, opened with one of the identities."""
    stanzas, maced, mac, off = _parse_header(data)
    secrets = [parse_identity(i) for i in identities]
    file_key = None
    for typ, args, body in stanzas:
        if typ != b"X25519":
            continue
        if len(args) != 1 or len(body) != 32:
            raise AgeError("X25519 stanza: malformed")
        share = _unb64(args[0])
        if len(share) != 32:
            raise AgeError("X25519 stanza: share length")
        for sk in secrets:
            priv = X25519PrivateKey.from_private_bytes(sk)
            shared = priv.exchange(X25519PublicKey.from_public_bytes(share))
            if shared == bytes(32):
                raise AgeError("X25519 stanza: low-order share")
            pub = priv.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            try:
                file_key = ChaCha20Poly1305(_hkdf(shared, share + pub, X25519_LABEL)).decrypt(bytes(12), body, None)
            except InvalidTag:
                continue
            break
        if file_key is not None:
            break
    if file_key is None:
        raise NoIdentityMatched("no identity matched")
    if len(file_key) != 16:
        raise AgeError("file key length")
    if not hmac.compare_digest(hmac.new(_hkdf(file_key, b"", b"header"), maced, hashlib.sha256).digest(), mac):
        raise AgeError("header MAC mismatch")
    if len(data) - off < 16:
        raise AgeError("payload: no nonce")
    nonce = data[off:off + 16]
    return _stream(_hkdf(file_key, nonce, b"payload"), data[off + 16:], False)
