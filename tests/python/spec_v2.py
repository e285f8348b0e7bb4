#!/usr/bin/env python3
"""An independent reader and writer of the onnx-protect on-model format, version 2.

Written from the format-2 text of docs/format.md and proto/onnx_protect_v2.proto
only (no Rust sources, no `onnx` or protobuf packages), reusing the wire-format
helpers of the version-1 decryptor (spec_decryptor.py). Section numbers (§n) are
those of the format-2 text. Where the text is silent or ambiguous, the choice made
here is marked "CHOICE:" in a comment.

Library use::

    import spec_v2 as v2
    plain, side = v2.decrypt_all(protected, key=w, model_dir=d)        # + {location: bytes}
    plain, side = v2.decrypt_all(protected, identities=["AGE-SECRET-KEY-1..."], model_dir=d)
    partial, side = v2.decrypt_all(protected, key=tier1_key, up_to_tier=1, model_dir=d)
    info = v2.verify(protected, model_dir=d, signers=[pub32])           # keyless
    prot, side = v2.spec_encrypt_v2(original, [{"locator": "7.0/5.0", "mode": "ctr",
                                               "spans": [(0, 64)], "tier": 1}],
                                    [v2.KeyRecipient(w)], model_dir=d)

Command line: `python3 spec_v2.py decrypt|verify|encrypt ...` (see --help).

Refusals raise a subclass of spec_decryptor.SpecError: WrongKey, Modified,
UnsupportedVersion, NotProtected, MalformedModel, and NotSigned (§10 "not signed by
a trusted signer") and AlreadyDecrypted (§11 "already decrypted for this key's
tier"), which the format names but the error list of the brief does not.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import re
import struct
import sys
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import spec_age  # noqa: E402
import spec_decryptor as v1  # noqa: E402
from spec_decryptor import (  # noqa: E402,F401  (re-exported error classes)
    Modified, NotProtected, SpecError, UnsupportedVersion, WrongKey,
    WT_I32, WT_I64, WT_LEN, WT_VARINT, encode_varint, hkdf_expand, hkdf_extract, keystream,
    parse_fields, read_varint, xor_span,
)

# --------------------------------------------------------------------------
# Errors.


class MalformedModel(SpecError):
    """The model itself is invalid (§4: a tensor whose data disagrees with its dims,
    data stored in more than one way, unsafe external data)."""

    def __init__(self, detail: str = ""):
        super().__init__("invalid model" + (f": {detail}" if detail else ""))


class MissingFile(MalformedModel):
    """An external data file the model names does not exist: a missing file, never
    "modified" (a packaging slip, not a change of what was protected)."""


class NotSigned(SpecError):
    def __init__(self, detail: str = ""):
        super().__init__("not signed by a trusted signer" + (f": {detail}" if detail else ""))


class AlreadyDecrypted(SpecError):
    def __init__(self, detail: str = ""):
        super().__init__("already decrypted for this key's tier" + (f": {detail}" if detail else ""))


class LicenceRequired(SpecError):
    """§3: the header names a licence authority; this reader checks no licence, so it
    opens no stanza of such a model (it still verifies it without a key)."""

    def __init__(self, detail: str = ""):
        super().__init__("licence required" + (f": {detail}" if detail else ""))


class UsageError(SpecError):
    """A caller's mistake (missing key material, a bad plan for the encryptor)."""


# --------------------------------------------------------------------------
# Labels (§7–§10).

L_TIER_SALT = b"onnx-protect/v2/tier-salt"
L_TIER_DOWN = b"onnx-protect/v2/tier-down"
L_DATA_KEY = b"onnx-protect/v2/data-key"
L_TENSOR = b"onnx-protect/v2/tensor"
L_MAC = b"onnx-protect/v2/mac"
L_KCV = b"onnx-protect/v2/key-check"
L_WRAP_KEY = b"onnx-protect/v2/wrap/key"
L_WRAP_PASSPHRASE = b"onnx-protect/v2/wrap/passphrase"
L_FINGERPRINT = b"onnx-protect/v1/fingerprint"
L_CHUNK = b"onnx-protect/v2/chunk"
L_CONTENT = b"onnx-protect/v2/content"
L_SIGNATURE = b"onnx-protect/v2/signature"
L_CHECKSUM = b"onnx-protect/v2/checksum"
L_POSITIONS = b"onnx-protect/v2/positions"
L_LABEL_LOCK = b"onnx-protect/v2/label-lock"
L_LABEL_LOCK_PERMUTATION = b"onnx-protect/v2/label-lock/permutation"

ENTRY_KEY = "onnx-protect/v2"
MANIFEST_KEY_RE = re.compile(r"onnx-protect/v[0-9]+")
SIGNER_HRP = "onnx-protect-signer"  # the text form of a signer key (format.md, appendix A)

# Argon2id caps (§8) and what onnx-protect writes.
ARGON2_CAPS = dict(m_min=8, m_max=131072, t_min=1, t_max=6, p_min=1, p_max=4)
ARGON2_DEFAULT = dict(m_cost_kib=65536, t_cost=3, p_cost=1)


def u32be(v: int) -> bytes:
    return struct.pack(">I", v)


def u64be(v: int) -> bytes:
    return struct.pack(">Q", v)


# --------------------------------------------------------------------------
# §2: the messages, a schema-driven canonical codec.
#
# kinds: u32, u64, i32 (int32 and enums), string, bytes, msg:NAME; "r" prefix = repeated
# (repeated u64 is packed).

SCHEMAS = {
    "Envelope": [(1, "header", "bytes"), (2, "recipients", "bytes"), (3, "content_digest", "bytes"),
                 (4, "macs", "rbytes"), (5, "signatures", "rmsg:Signature"), (6, "restored_tiers", "u32"),
                 (7, "stored_digest", "bytes"), (8, "checksum", "bytes")],
    "Header": [(1, "format_version", "u32"), (2, "tiers", "u32"), (3, "key_checks", "rbytes"),
               (4, "tensors", "rmsg:TensorEntry"), (5, "chunk_size", "u64"), (6, "external_files", "rstring"),
               (7, "tool", "string"), (8, "policy_summary", "string"), (9, "positions", "u32"),
               (10, "external_sizes", "ru64"), (11, "label_lock", "msg:LabelLock"), (12, "licence_authority", "bytes"),
               (13, "model_id", "string"), (14, "original_external_files", "rstring"),
               (15, "external_leaves", "bytes"), (16, "folder", "msg:FolderBinding")],
    "FolderBinding": [(1, "folder_id", "bytes"), (2, "path", "string"), (3, "models", "rstring"),
                      (4, "files", "rmsg:FolderFile")],
    "FolderFile": [(1, "path", "string"), (2, "length", "u64"), (3, "hash", "bytes")],
    "LabelLock": [(1, "classes", "u32"), (2, "sealed_seed", "bytes"), (3, "tensors", "rmsg:LockedTensor"),
                  (4, "outputs", "rmsg:LockedOutput"), (5, "node", "string")],
    "LockedTensor": [(1, "locator", "string"), (2, "name", "string"), (3, "data_type", "i32"), (4, "dims", "ru64"),
                     (5, "axis", "u32"), (6, "part", "string")],
    "LockedOutput": [(1, "name", "string"), (2, "kind", "i32")],
    "TensorEntry": [(1, "stream_id", "u64"), (2, "locator", "string"), (3, "name", "string"),
                    (4, "data_type", "i32"), (5, "storage", "i32"), (6, "nbytes", "u64"), (7, "mode", "i32"),
                    (8, "spans", "ru64"), (9, "tier", "u32"), (10, "op_type", "string"), (11, "role", "string"),
                    (12, "subsequences", "u64"), (13, "chosen", "u64"), (14, "sealed_spans", "bytes")],
    "Recipients": [(1, "stanzas", "rmsg:Stanza")],
    "Stanza": [(1, "kind", "string"), (2, "tier", "u32"), (3, "label", "string"), (4, "salt", "bytes"),
               (5, "kdf", "msg:KdfParams"), (6, "body", "bytes")],
    "KdfParams": [(1, "algorithm", "string"), (2, "salt", "bytes"), (3, "m_cost_kib", "u32"),
                  (4, "t_cost", "u32"), (5, "p_cost", "u32")],
    "Signature": [(1, "public_key", "bytes"), (2, "signature", "bytes")],
}


def _default(kind: str):
    if kind.startswith("r"):
        return []
    if kind.startswith("msg:"):
        return None
    return {"u32": 0, "u64": 0, "i32": 0, "string": "", "bytes": b""}[kind]


def new_message(message: str, /, **values) -> dict:
    msg = {fname: _default(kind) for _, fname, kind in SCHEMAS[message]}
    for k, v in values.items():
        if k not in msg:
            raise KeyError(f"{message} has no field {k}")
        msg[k] = v
    return msg


def _scalar(kind: str, f, buf):
    if kind in ("u32", "u64", "i32"):
        if f.wire != WT_VARINT:
            raise Modified(f"field {f.number}: expected a varint")
        if kind == "u32":
            return f.value & 0xFFFFFFFF
        if kind == "i32":
            v = f.value & 0xFFFFFFFF
            return v - (1 << 32) if v >> 31 else v
        return f.value
    if f.wire != WT_LEN:
        raise Modified(f"field {f.number}: expected length-delimited")
    data = bytes(buf[f.vstart:f.vend])
    if kind == "string":
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise Modified(f"field {f.number}: invalid UTF-8") from e
    return data


def decode(name: str, buf: bytes) -> dict:
    """Decode (leniently, as protobuf would: last value wins, unknown fields skipped);
    `decode_canonical` then insists on the canonical bytes."""
    schema = {num: (fname, kind) for num, fname, kind in SCHEMAS[name]}
    msg = new_message(name)
    try:
        fields = parse_fields(buf)
    except v1.Malformed as e:
        raise Modified(f"{name}: {e}") from e
    for f in fields:
        if f.number not in schema:
            continue
        fname, kind = schema[f.number]
        if kind == "ru64":
            msg[fname].extend(_packed(buf, [f], f"{name}.{fname}", Modified))
        elif kind.startswith("rmsg:") or kind.startswith("msg:"):
            if f.wire != WT_LEN:
                raise Modified(f"{name}.{fname}: expected a message")
            sub = decode(kind.split(":", 1)[1], bytes(buf[f.vstart:f.vend]))
            if kind.startswith("r"):
                msg[fname].append(sub)
            else:
                msg[fname] = sub  # CHOICE: a repeated singular message is not merged (canonical check refuses it)
        elif kind.startswith("r"):
            msg[fname].append(_scalar(kind[1:], f, buf))
        else:
            msg[fname] = _scalar(kind, f, buf)
    return msg


def _key(num: int, wire: int) -> bytes:
    return encode_varint((num << 3) | wire)


def _ld(num: int, data: bytes) -> bytes:
    return _key(num, WT_LEN) + encode_varint(len(data)) + data


def encode(name: str, msg: dict) -> bytes:
    """The canonical encoding (§2): ascending field numbers, defaults omitted,
    repeated scalars packed, minimal varints."""
    out = bytearray()
    for num, fname, kind in SCHEMAS[name]:
        v = msg[fname]
        if kind in ("u32", "u64", "i32"):
            if v:
                out += _key(num, WT_VARINT) + encode_varint(v)
        elif kind == "string":
            if v:
                out += _ld(num, v.encode("utf-8"))
        elif kind == "bytes":
            if v:
                out += _ld(num, bytes(v))
        elif kind == "ru64":
            if v:
                out += _ld(num, b"".join(encode_varint(x) for x in v))
        elif kind == "rbytes":
            for x in v:
                out += _ld(num, bytes(x))
        elif kind == "rstring":
            for x in v:
                out += _ld(num, x.encode("utf-8"))
        elif kind.startswith("rmsg:"):
            for x in v:
                out += _ld(num, encode(kind[5:], x))
        elif kind.startswith("msg:"):
            if v is not None:
                out += _ld(num, encode(kind[4:], v))
        else:  # pragma: no cover
            raise AssertionError(kind)
    return bytes(out)


def decode_canonical(name: str, buf: bytes) -> dict:
    msg = decode(name, buf)
    if encode(name, msg) != bytes(buf):
        raise Modified(f"{name} is not canonically encoded")
    return msg


# --------------------------------------------------------------------------
# §5: data types, storage kinds, element bytes.

DTYPES = dict(v1.DTYPES)
DTYPES.update({27: ("FLOAT6E2M3", 6), 28: ("FLOAT6E3M2", 6)})
STRING = 8

S_RAW, S_FLOAT, S_INT32, S_INT64, S_DOUBLE, S_UINT64, S_EXTERNAL = 1, 2, 3, 4, 5, 6, 7
STORAGE_NAMES = {S_RAW: "RAW_DATA", S_FLOAT: "FLOAT_DATA", S_INT32: "INT32_DATA", S_INT64: "INT64_DATA",
                 S_DOUBLE: "DOUBLE_DATA", S_UINT64: "UINT64_DATA", S_EXTERNAL: "EXTERNAL"}
VARINT_STORAGES = (S_INT32, S_INT64, S_UINT64)
TP_DIMS, TP_DATA_TYPE, TP_FLOAT, TP_INT32, TP_STRING, TP_INT64 = 1, 2, 4, 5, 6, 7
TP_NAME, TP_RAW, TP_DOUBLE, TP_UINT64, TP_EXTERNAL_DATA, TP_DATA_LOCATION = 8, 9, 10, 11, 13, 14
TYPED_FIELDS = {TP_FLOAT: S_FLOAT, TP_INT32: S_INT32, TP_INT64: S_INT64, TP_DOUBLE: S_DOUBLE, TP_UINT64: S_UINT64}
FIELD_OF_STORAGE = {s: f for f, s in TYPED_FIELDS.items()}
FIELD_OF_STORAGE[S_RAW] = TP_RAW

MODE_CTR, MODE_FP, MODE_DP = 1, 2, 3
MODE_NAMES = {"ctr": MODE_CTR, "fp": MODE_FP, "dp": MODE_DP}
SIGN_EXTENDED = {3, 5, 6, 7}  # INT8, INT16, INT32, INT64
FLOAT6 = {27, 28}


def typed_storage_of(data_type: int) -> int:
    """ONNX's typed field for a data type (§5), as a STORAGE_* value; STRING gives None."""
    if data_type in (1, 14):
        return S_FLOAT
    if data_type in (11, 15):
        return S_DOUBLE
    if data_type == 7:
        return S_INT64
    if data_type in (12, 13):
        return S_UINT64
    if data_type == STRING:
        return None
    return S_INT32


def varint_width(data_type: int) -> int | None:
    """w of §5 (element bytes per stored value); None for FLOAT6 (one 6-bit element per value)."""
    if data_type in FLOAT6:
        return None
    bits = DTYPES[data_type][1]
    if bits <= 8:
        return 1
    if bits == 16:
        return 2
    if data_type in (6, 12):
        return 4
    if data_type in (7, 13):
        return 8
    return None  # e.g. FLOAT in int32_data: not a valid pairing (refused before this is asked)


def element_size(data_type: int) -> int:
    return (DTYPES[data_type][1] + 7) // 8


def nbytes_of(dims: list[int], data_type: int) -> int:
    n = 1
    for d in dims:
        n *= d
    return (n * DTYPES[data_type][1] + 7) // 8


def numel_of(dims: list[int]) -> int:
    n = 1
    for d in dims:
        n *= d
    return n


# --------------------------------------------------------------------------
# §4: walking the model. Tensor places, by the kind of the enclosing message.

MAX_GRAPH_DEPTH = 64  # §4
CHILDREN = {
    "model": {7: "graph", 25: "function", 20: "training"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "node": {5: "attr"},
    "attr": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
    "function": {7: "node"},
    "training": {1: "graph", 2: "graph"},
}
# CHOICE: a singular message field that occurs twice would be merged by protobuf;
# the format does not say how to locate into a merged message, so it is refused.
SINGULAR = {("model", 7), ("attr", 5), ("attr", 6), ("attr", 22), ("sparse", 1), ("sparse", 2),
            ("training", 1), ("training", 2)}


@dataclass
class Tensor:
    locator: str
    chain_start: int  # offset of the TensorProto's value in the model
    chain_end: int
    name: str
    data_type: int
    dims: list[int]
    storage: int | None  # None: no elements (or STRING)
    nbytes: int
    segments: list[tuple[int, int]] = field(default_factory=list)  # raw/float/double: (file offset, length)
    varint_values: list[int] | None = None
    ext_location: str | None = None
    ext_real: str | None = None
    ext_offset: int = 0


def location_key(location: str) -> tuple[str, ...]:
    """§3: the file a location names: its components, split at `/` and `\\`, without the
    empty and "." ones."""
    return tuple(p for p in re.split(r"[/\\]", location) if p not in ("", "."))


class Files:
    """External data files, read once, keyed by real path; every byte is kept (§9 covers whole files)."""

    def __init__(self, model_dir: str | None, model_name: str | None):
        self.model_dir = model_dir
        self.model_real = os.path.realpath(os.path.join(model_dir, model_name)) if model_dir and model_name else None
        self.data: dict[str, bytearray] = {}
        self.location_of_real: dict[str, str] = {}

    def resolve(self, location: str) -> str:
        """Real path of a location (§5 safety rules), MalformedModel when unsafe."""
        if self.model_dir is None:
            raise UsageError(f"external data {location!r}: model_dir is needed")
        if not location:
            raise MalformedModel("external data location is empty")
        if location.startswith(("/", "\\")) or os.path.isabs(location) or re.match(r"^[A-Za-z]:", location):
            raise MalformedModel(f"external data location {location!r} is absolute")
        # CHOICE: backslash counts as a separator too; "." components are allowed.
        parts = re.split(r"[/\\]", location)
        if ".." in parts:
            raise MalformedModel(f"external data location {location!r} has a '..' component")
        # §5: empty and "." components are allowed (`d//w.bin` names `d/w.bin`).
        base = os.path.realpath(self.model_dir)
        real = os.path.realpath(os.path.join(base, *parts))
        if real == base:
            raise MalformedModel(f"external data location {location!r} names the model directory")
        if self.model_real is not None and real == self.model_real:
            raise MalformedModel(f"external data location {location!r} names the model file itself")
        return real

    def load(self, location: str, missing=MalformedModel) -> str:
        real = self.resolve(location)
        if real not in self.data:
            if not os.path.isfile(real):
                raise (MissingFile if not os.path.lexists(real) else missing)(
                    f"external data file {location!r} missing")
            with open(real, "rb") as fh:
                self.data[real] = bytearray(fh.read())
            self.location_of_real[real] = location
        return real

    def copy(self) -> "Files":
        other = Files(self.model_dir, None)
        other.model_real = self.model_real
        other.data = {k: bytearray(v) for k, v in self.data.items()}
        other.location_of_real = dict(self.location_of_real)
        return other


def _fields(buf, start, end, what):
    try:
        return parse_fields(buf, start, end)
    except v1.Malformed as e:
        raise MalformedModel(f"{what}: {e}") from e


def _get_str(buf, f, what) -> str:
    if f.wire != WT_LEN:
        raise MalformedModel(f"{what}: expected a string")
    try:
        return bytes(buf[f.vstart:f.vend]).decode("utf-8")
    except UnicodeDecodeError as e:
        raise MalformedModel(f"{what}: invalid UTF-8") from e


def _uint(f, what) -> int:
    if f.wire != WT_VARINT:
        raise MalformedModel(f"{what}: expected a varint")
    return f.value


def _packed(buf, flist, what, error=MalformedModel) -> list[int]:
    """Values of a repeated varint field (packed or not); `error` on bad bytes."""
    out = []
    for f in flist:
        if f.wire == WT_VARINT:
            out.append(f.value)
        elif f.wire == WT_LEN:
            p = f.vstart
            while p < f.vend:
                try:
                    v, p = read_varint(buf, p, f.vend)
                except v1.Malformed as e:
                    raise error(f"{what}: {e}") from e
                out.append(v)
        else:
            raise error(f"{what}: bad wire type")
    return out


def _i64(v: int) -> int:
    return v - (1 << 64) if v >> 63 else v


def read_tensor(model, start: int, end: int, locator: str, files: Files) -> Tensor:
    """Parse and validate (§4, §5) the TensorProto whose value is model[start:end]."""
    by = {}
    for f in _fields(model, start, end, locator):
        if f.number in (TP_FLOAT, TP_INT32, TP_INT64, TP_DOUBLE, TP_UINT64) and f.wire == WT_LEN \
                and f.vend == f.vstart:
            continue  # §5: a packed typed field of length 0 holds no value, stores nothing
        by.setdefault(f.number, []).append(f)
    name = _get_str(model, by[TP_NAME][-1], f"{locator} name") if TP_NAME in by else ""
    data_type = _i64(_uint(by[TP_DATA_TYPE][-1], f"{locator} data_type")) if TP_DATA_TYPE in by else 0
    if data_type not in DTYPES:
        # CHOICE: the format gives no bits for codes 0 and > 28, so their length cannot be checked.
        raise MalformedModel(f"{locator} ({name!r}): data_type {data_type} is not in the table of §5")
    dims = [_i64(v) for v in _packed(model, by.get(TP_DIMS, []), f"{locator} dims")]
    if any(d < 0 for d in dims):
        raise MalformedModel(f"{locator} ({name!r}): negative dimension")
    external = TP_DATA_LOCATION in by and _uint(by[TP_DATA_LOCATION][-1], f"{locator} data_location") == 1
    present = [fno for fno in (TP_RAW, TP_FLOAT, TP_INT32, TP_STRING, TP_INT64, TP_DOUBLE, TP_UINT64) if fno in by]
    ways = len(present) + (1 if external else 0)
    if ways > 1:
        raise MalformedModel(f"{locator} ({name!r}): data stored in more than one way")
    nbytes = nbytes_of(dims, data_type) if data_type != STRING else 0
    t = Tensor(locator, start, end, name, data_type, dims, None, nbytes)
    if data_type == STRING:
        # §5: STRING tensors keep one string_data value per element, nowhere else.
        if present and present[0] != TP_STRING or external:
            raise MalformedModel(f"{locator} ({name!r}): STRING tensor stores non-string data")
        if len(by.get(TP_STRING, [])) != numel_of(dims):
            raise MalformedModel(f"{locator} ({name!r}): {len(by.get(TP_STRING, []))} strings for "
                                 f"{numel_of(dims)} elements")
        return t
    if present == [TP_STRING]:
        raise MalformedModel(f"{locator} ({name!r}): string_data in a non-STRING tensor")
    if external:
        t.storage = S_EXTERNAL
        kv = {}
        for f in by.get(TP_EXTERNAL_DATA, []):
            if f.wire != WT_LEN:
                raise MalformedModel(f"{locator}: external_data is not a message")
            k = v = ""
            for g in _fields(model, f.vstart, f.vend, f"{locator} external_data"):
                if g.number == 1:
                    k = _get_str(model, g, f"{locator} external_data key")
                elif g.number == 2:
                    v = _get_str(model, g, f"{locator} external_data value")
            kv[k] = v  # CHOICE: a repeated key: the last one counts
        if "location" not in kv:
            raise MalformedModel(f"{locator} ({name!r}): external data without a location")
        real = files.resolve(kv["location"])
        if not os.path.isfile(real):
            raise (MissingFile if not os.path.lexists(real) else MalformedModel)(
                f"external data file {kv['location']!r} missing")
        size = len(files.data[real]) if real in files.data else os.path.getsize(real)
        for k in ("offset", "length"):
            if k in kv and not re.fullmatch(r"[0-9]+", kv[k]):
                raise MalformedModel(f"{locator} ({name!r}): external {k} {kv[k]!r} is not decimal digits")
        offset = int(kv.get("offset", "0"))
        length = int(kv["length"]) if "length" in kv else size - offset
        if offset > size or offset + length > size:
            raise MalformedModel(f"{locator} ({name!r}): external range past the end of {kv['location']!r}")
        if length != nbytes:
            raise MalformedModel(f"{locator} ({name!r}): external length {length} but dims give {nbytes} bytes")
        t.ext_location, t.ext_real, t.ext_offset = kv["location"], real, offset
        return t
    if not present:
        if numel_of(dims) != 0:
            # CHOICE: "holds no elements" read as: numel must be 0.
            raise MalformedModel(f"{locator} ({name!r}): {numel_of(dims)} elements but no data")
        return t
    fno = present[0]
    if fno == TP_RAW:
        f = by[TP_RAW][-1]  # the last occurrence counts
        if f.wire != WT_LEN:
            raise MalformedModel(f"{locator}: raw_data is not length-delimited")
        t.storage = S_RAW
        t.segments = [(f.vstart, f.vend - f.vstart)]
        stored = f.vend - f.vstart
    else:
        t.storage = TYPED_FIELDS[fno]
        if typed_storage_of(data_type) != t.storage:
            raise MalformedModel(f"{locator} ({name!r}): {STORAGE_NAMES[t.storage]} does not belong to "
                                 f"data_type {DTYPES[data_type][0]}")
        if t.storage in (S_FLOAT, S_DOUBLE):
            width = 4 if t.storage == S_FLOAT else 8
            unpacked = WT_I32 if width == 4 else WT_I64
            for f in by[fno]:
                if f.wire == WT_LEN:
                    if (f.vend - f.vstart) % width:
                        raise MalformedModel(f"{locator}: packed payload not a multiple of {width}")
                    t.segments.append((f.vstart, f.vend - f.vstart))
                elif f.wire == unpacked:
                    t.segments.append((f.vstart, width))
                else:
                    raise MalformedModel(f"{locator}: typed field with a wrong wire type")
            stored = sum(n for _, n in t.segments)
        else:
            t.varint_values = _packed(model, by[fno], locator)
            w = varint_width(data_type)
            if w is None:  # FLOAT6: one element per value
                stored = None
                if len(t.varint_values) != numel_of(dims):
                    raise MalformedModel(f"{locator} ({name!r}): {len(t.varint_values)} values for "
                                         f"{numel_of(dims)} elements")
                return t
            stored = len(t.varint_values) * w
    if stored != nbytes:
        raise MalformedModel(f"{locator} ({name!r}): stored data is {stored} bytes, dims and data_type "
                             f"give {nbytes}")
    return t


def walk(model, files: Files) -> list[Tensor]:
    """Every tensor of the model (§4 places), validated, in file order."""
    out = []
    # depth: §4's graph level of the message (the main graph and functions 0, a
    # training_info graph 1, a graph in an attribute one below its node's graph).
    stack = [("model", 0, len(model), "", 0)]
    while stack:
        kind, start, end, prefix, depth = stack.pop()
        if kind == "tensor":
            out.append(read_tensor(model, start, end, prefix, files))
            continue
        if kind == "graph" and depth > MAX_GRAPH_DEPTH:
            raise MalformedModel(f"{prefix}: graphs nest more than {MAX_GRAPH_DEPTH} levels")
        children = CHILDREN[kind]
        counts: dict[int, int] = {}
        todo = []
        for f in _fields(model, start, end, prefix or "model"):
            n = counts.get(f.number, 0)
            counts[f.number] = n + 1
            if f.number not in children:
                continue
            if f.wire != WT_LEN:
                raise MalformedModel(f"{prefix or 'model'}: field {f.number} is not a message")
            if (kind, f.number) in SINGULAR and n:
                raise MalformedModel(f"{prefix or 'model'}: field {f.number} occurs more than once")
            loc = f"{prefix}/{f.number}.{n}" if prefix else f"{f.number}.{n}"
            child = children[f.number]
            todo.append((child, f.vstart, f.vend, loc, depth + (child == "graph" and kind != "model")))
        stack.extend(reversed(todo))
    return out


def model_order(tensors: list[Tensor]) -> list[Tensor]:
    """§4's model order: the main graph's tensors, then the functions', then training_info's
    (each in file order), whatever order those fields have in the file."""
    rank = {"7": 0, "25": 1, "20": 2}
    return sorted(tensors, key=lambda t: rank.get(t.locator.split(".", 1)[0], 3))


def element_bytes(model, t: Tensor, files: Files) -> bytearray:
    if t.storage == S_EXTERNAL:
        files.load(t.ext_location)
        return bytearray(files.data[t.ext_real][t.ext_offset:t.ext_offset + t.nbytes])
    if t.storage in VARINT_STORAGES:
        w = varint_width(t.data_type)
        mask = (1 << (8 * w)) - 1
        return bytearray(b"".join((v & mask).to_bytes(w, "little") for v in t.varint_values))
    return bytearray(b"".join(bytes(model[o:o + n]) for o, n in t.segments))


def put_element_bytes(model: bytearray, t: Tensor, files: Files, data: bytes):
    """Write element bytes back in place (not for varint storage)."""
    if t.storage == S_EXTERNAL:
        files.load(t.ext_location)
        files.data[t.ext_real][t.ext_offset:t.ext_offset + t.nbytes] = data
        return
    assert t.storage not in VARINT_STORAGES
    pos = 0
    for o, n in t.segments:
        model[o:o + n] = data[pos:pos + n]
        pos += n


def rewrite_varint(model: bytes, locator: str, storage: int, data_type: int, data: bytes) -> bytes:
    """§5 encoding: one packed field at the place of the first occurrence, enclosing
    length prefixes re-encoded as minimal varints."""
    w = varint_width(data_type)
    payload = bytearray()
    for i in range(0, len(data), w):
        v = int.from_bytes(data[i:i + w], "little")
        if data_type in SIGN_EXTENDED and v >> (8 * w - 1):
            v -= 1 << (8 * w)
        payload += encode_varint(v)
    chain = v1.locate(model, v1.parse_locator(locator))
    t = chain[-1]
    fno = FIELD_OF_STORAGE[storage]
    parts, placed, pos = [], False, t.vstart
    for f in parse_fields(model, t.vstart, t.vend):
        if f.number == fno:
            parts.append(model[pos:f.start])
            if not placed:
                parts.append(_ld(fno, bytes(payload)))
                placed = True
            pos = f.end
    parts.append(model[pos:t.vend])
    body = b"".join(parts)
    for i in reversed(range(len(chain))):
        f = chain[i]
        _, after_key = read_varint(model, f.start, f.vstart)
        new_field = model[f.start:after_key] + encode_varint(len(body)) + body
        if i == 0:
            return model[:f.start] + new_field + model[f.end:]
        parent = chain[i - 1]
        body = model[parent.vstart:f.start] + new_field + model[f.end:parent.vend]
    raise AssertionError("unreachable")


def rewrite_location(model: bytes, locator: str, name: str) -> bytes:
    """§12 step 7: the last `value` field of the tensor's last `location` entry becomes
    0x12, the minimal varint of len(name), name; enclosing length prefixes minimal."""
    chain = v1.locate(model, v1.parse_locator(locator))
    t = chain[-1]
    entry = None
    for f in parse_fields(model, t.vstart, t.vend):
        if f.number == TP_EXTERNAL_DATA:
            fs = parse_fields(model, f.vstart, f.vend)
            keys = [_get_str(model, g, "key") for g in fs if g.number == 1]
            if keys and keys[-1] == "location":
                entry = (f, fs)
    f, fs = entry
    value = [g for g in fs if g.number == 2][-1]
    body = model[f.vstart:value.start] + _ld(2, name.encode()) + model[value.end:f.vend]
    chain = chain + [f]
    for i in reversed(range(len(chain))):
        f = chain[i]
        _, after_key = read_varint(model, f.start, f.vstart)
        new_field = model[f.start:after_key] + encode_varint(len(body)) + body
        if i == 0:
            return model[:f.start] + new_field + model[f.end:]
        parent = chain[i - 1]
        body = model[parent.vstart:f.start] + new_field + model[f.end:parent.vend]
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------
# §6: spans and modes.

FP_MASKS = {code: v1.FP_MASKS[name] for code, (name, _) in DTYPES.items() if name in v1.FP_MASKS}


def check_entry_spans(e: dict):
    loc, mode, spans = e["locator"], e["mode"], e["spans"]
    if len(spans) % 2:
        raise Modified(f"{loc}: odd number of span values")
    pairs = list(zip(spans[0::2], spans[1::2]))
    dt = e["data_type"]
    if mode == MODE_FP and dt not in FP_MASKS:
        raise Modified(f"{loc}: {DTYPES[dt][0]} has no format-preserving mask")
    if mode == MODE_DP and DTYPES[dt][1] < 8:
        raise Modified(f"{loc}: distribution-preserving mode needs whole-byte elements")
    esize = element_size(dt)
    prev_end = None
    for b, en in pairs:
        if not b < en:
            raise Modified(f"{loc}: empty or reversed span [{b}, {en})")
        if en > e["nbytes"]:
            raise Modified(f"{loc}: span [{b}, {en}) past nbytes {e['nbytes']}")
        if prev_end is not None and (b < prev_end or (b == prev_end and mode != MODE_DP)):
            raise Modified(f"{loc}: spans not sorted and disjoint (adjacent only in mode 3)")
        if mode in (MODE_FP, MODE_DP) and (b % esize or en % esize):
            raise Modified(f"{loc}: span [{b}, {en}) not aligned to {esize}-byte elements")
        if mode == MODE_DP and (en - b) // esize < 16:
            raise Modified(f"{loc}: span [{b}, {en}) has fewer than 16 elements")
        prev_end = en
    return pairs


def dp_swaps(k_s: bytes, a: int, n: int) -> list[tuple[int, int]]:
    """§6: the (i, j) swaps of the span starting at element-byte offset a with n elements."""
    base = a << 24
    words: list[int] = []
    used = 0
    swaps = []
    for i in range(n - 1, 0, -1):
        m = i + 1
        limit = (1 << 32) - ((1 << 32) % m)
        while True:
            if used == len(words):
                more = max(64, n + 16)
                start = base + 4 * len(words)
                words.extend(struct.unpack(f"<{more}I", keystream(k_s, start, start + 4 * more)))
            r = words[used]
            used += 1
            if r < limit:
                break
        swaps.append((i, r % m))
    return swaps


def transform(elem: bytearray, entry: dict, pairs, k_s: bytes, encrypt: bool):
    """Apply (encrypt=True) or undo the entry's mode on its spans, in place."""
    mode = entry["mode"]
    if mode in (MODE_CTR, MODE_FP):
        mask = FP_MASKS[entry["data_type"]] if mode == MODE_FP else None
        for b, en in pairs:
            elem[b:en] = xor_span(bytes(elem[b:en]), keystream(k_s, b, en), b, mask)
        return
    e = element_size(entry["data_type"])
    for a, en in pairs:
        n = (en - a) // e
        items = [bytes(elem[a + i * e:a + (i + 1) * e]) for i in range(n)]
        swaps = dp_swaps(k_s, a, n)
        for i, j in (swaps if encrypt else reversed(swaps)):
            items[i], items[j] = items[j], items[i]
        elem[a:en] = b"".join(items)


# --------------------------------------------------------------------------
# §7: keys.


def hkdf(salt: bytes, ikm: bytes, info: bytes, length: int = 32) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def tier_down(dk: bytes) -> bytes:
    return hkdf(L_TIER_SALT, dk, L_TIER_DOWN)


class TierKeys:
    def __init__(self, dk: bytes):
        self.dk = dk
        self.prk = hkdf_extract(L_DATA_KEY, dk)

    def tensor_key(self, stream_id: int) -> bytes:
        return hkdf_expand(self.prk, L_TENSOR + u64be(stream_id), 32)

    def mac_key(self) -> bytes:
        return hkdf_expand(self.prk, L_MAC, 32)

    def kcv(self) -> bytes:
        return hkdf_expand(self.prk, L_KCV, 16)


def data_keys_down(dk_k: bytes, k: int) -> dict[int, TierKeys]:
    """{t: keys of tier t} for t = k down to 1."""
    out, dk = {}, dk_k
    for t in range(k, 0, -1):
        out[t] = TierKeys(dk)
        dk = tier_down(dk)
    return out


def fingerprint(w: bytes) -> str:
    return hashlib.sha256(L_FINGERPRINT + w).digest()[:8].hex()


def argon2id(passphrase: bytes, salt: bytes, m: int, t: int, p: int) -> bytes:
    return v1.argon2id(passphrase, salt, m, t, p)


def argon2_within_caps(m: int, t: int, p: int) -> bool:
    c = ARGON2_CAPS
    return c["m_min"] <= m <= c["m_max"] and c["t_min"] <= t <= c["t_max"] and c["p_min"] <= p <= c["p_max"] \
        and m >= 8 * p


def wrap(kek: bytes, dk: bytes) -> bytes:
    return ChaCha20Poly1305(kek).encrypt(bytes(12), dk, b"")


def unwrap(kek: bytes, body: bytes) -> bytes | None:
    try:
        return ChaCha20Poly1305(kek).decrypt(bytes(12), body, b"")
    except InvalidTag:
        return None


# --------------------------------------------------------------------------
# §9 content digest, §10 integrity.


def _blake3(data=b""):
    import blake3

    return blake3.blake3(data)


def file_leaves(i: int, data: bytes, chunk_size: int) -> list[bytes]:
    """§9: leaf(i, j) of every chunk j of covered file i (none for an empty file)."""
    mv = memoryview(data)
    return [_blake3(L_CHUNK + u32be(i) + u64be(j) + bytes(mv[off:off + chunk_size])).digest()
            for j, off in enumerate(range(0, len(mv), chunk_size))]


def content_digest(content: bytes, ext: list[bytes], chunk_size: int) -> bytes:
    h = _blake3(L_CONTENT + u32be(len(ext) + 1))
    for i, data in enumerate([content, *ext]):
        h.update(u64be(len(data)))
        for leaf in file_leaves(i, data, chunk_size):
            h.update(leaf)
    return h.digest()


def external_leaves(ext: list[bytes], chunk_size: int) -> bytes:
    """§3 `Header.external_leaves`: the leaves of the external files i = 1 … n (not of file
    0, the model), 32 bytes each, file 1's chunks first and, within a file, in order of j."""
    return b"".join(leaf for i, data in enumerate(ext, 1) for leaf in file_leaves(i, data, chunk_size))


def listed_leaves_len(h: dict) -> int | None:
    """§3: the length a non-empty `external_leaves` must have, 32 · Σ ⌈external_sizes[i − 1] /
    chunk_size⌉; None without `external_sizes` (then only an empty list is allowed)."""
    if not h["external_sizes"]:
        return None
    c = h["chunk_size"]
    return 32 * sum((size + c - 1) // c for size in h["external_sizes"])


def check_listed_leaves(h: dict, ext: list[bytes], canonical: str = ""):
    """§3, §12 step 6: the listed leaves, if any, are those of the external files `ext` in
    canonical form (§11). This reader hashes every covered file, so it compares the leaves
    it computed with the listed ones; a difference is "modified".
    CHOICE: §3 also allows checking D from the model file's leaves and the listed ones, then
    each chunk against its leaf as it is read; this reader reads and hashes whole files, so
    it takes the first way."""
    if h["external_leaves"] and not hmac.compare_digest(external_leaves(ext, h["chunk_size"]),
                                                       h["external_leaves"]):
        raise Modified(f"external_leaves: the listed leaves are not those of the external files{canonical}")


def mac_input(h: bytes, r: bytes, d: bytes) -> bytes:
    return u64be(len(h)) + h + u64be(len(r)) + r + d


def tier_mac(keys: TierKeys, t: int, T: bytes) -> bytes:
    return hmac.new(keys.mac_key(), L_MAC + u32be(t) + T, hashlib.sha256).digest()


def checksum_of(env_without_checksum: bytes) -> bytes:
    return hashlib.sha256(L_CHECKSUM + env_without_checksum).digest()


# Ed25519 strictness (§10: verify_strict semantics). OpenSSL already refuses S >= L;
# small-order keys and R values are found by decompressing the point (RFC 8032 §5.1.3)
# and multiplying it by the cofactor 8. This only classifies points: the signature
# itself is verified by `cryptography`.
_P = 2 ** 255 - 19
_L = 2 ** 252 + 27742317777372353535851937790883648493
_D = -121665 * pow(121666, _P - 2, _P) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)


def _decompress(s: bytes):
    y = int.from_bytes(s, "little") & ((1 << 255) - 1)
    sign = s[31] >> 7
    if y >= _P:
        return None
    u, v = (y * y - 1) % _P, (_D * y * y + 1) % _P
    x = u * pow(v, 3, _P) * pow(u * pow(v, 7, _P), (_P - 5) // 8, _P) % _P
    if v * x * x % _P == (-u) % _P:
        x = x * _SQRT_M1 % _P
    elif v * x * x % _P != u:
        return None
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = _P - x
    return x, y


def _edwards_add(p1, p2):
    (x1, y1), (x2, y2) = p1, p2
    t = _D * x1 * x2 * y1 * y2 % _P
    x3 = (x1 * y2 + x2 * y1) * pow(1 + t, _P - 2, _P) % _P
    y3 = (y1 * y2 + x1 * x2) * pow(1 - t, _P - 2, _P) % _P
    return x3, y3


def is_small_order(s: bytes) -> bool:
    pt = _decompress(s)
    if pt is None:
        return True  # not a point at all: refused likewise
    for _ in range(3):
        pt = _edwards_add(pt, pt)
    return pt == (0, 1)


def verify_strict(public_key: bytes, signature: bytes, message: bytes) -> bool:
    if is_small_order(public_key) or is_small_order(signature[:32]):
        return False
    if int.from_bytes(signature[32:], "little") >= _L:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def signer_string(public_key: bytes) -> str:
    return spec_age.bech32_encode(SIGNER_HRP, public_key)


def parse_signer(s: str) -> bytes:
    hrp, data = spec_age.bech32_decode(s.strip())
    if hrp != SIGNER_HRP or len(data) != 32:
        raise UsageError(f"not an {SIGNER_HRP}1... public key")
    return data


# --------------------------------------------------------------------------
# §1: the entry.


def _entry_bytes(key: bytes, value: bytes) -> bytes:
    body = _ld(1, key) + _ld(2, value)
    return _ld(14, body)


def _varint(b: bytes, at: int) -> tuple[int, int] | None:
    """A minimal varint at `at`: (value, length), or None."""
    v = 0
    for i in range(10):
        if at + i >= len(b):
            return None
        c = b[at + i]
        v |= (c & 0x7F) << (7 * i)
        if not c & 0x80:
            return (v, i + 1) if i == 0 or c else None
    return None


def find_entry(model: bytes) -> tuple[int, bytes] | None:
    """§1: the entry at the end of the file without parsing the model: (entry_start, value)."""
    k = b"\x0a\x0f" + ENTRY_KEY.encode() + b"\x12"
    a = model.rfind(k)
    if a < 0:
        return None
    lv = _varint(model, a + len(k))
    if lv is None or a + len(k) + lv[1] + lv[0] != len(model):
        return None
    prefix = b"\x72" + encode_varint(len(model) - a)
    if a < len(prefix) or model[a - len(prefix):a] != prefix:
        return None
    return a - len(prefix), model[a + len(k) + lv[1]:]


def manifest_entries(model) -> list[tuple[str, object, bytes]]:
    """Top-level metadata_props entries whose key is a manifest key: (key, field, value)."""
    # §1: a file that does not parse (its top-level fields, or the fields of a top-level
    # metadata_props entry) is "modified" when the search finds an entry at its end, else
    # an invalid model.
    def broken(e):
        if find_entry(model) is not None:
            return Modified(f"the model no longer parses under its entry: {e}")
        return MalformedModel(f"not a protobuf message: {e}")
    try:
        top = parse_fields(model)
    except v1.Malformed as e:
        raise broken(e) from e
    found = []
    for f in top:
        if f.number != 14 or f.wire != WT_LEN:
            continue
        try:
            sub = parse_fields(model, f.vstart, f.vend)
        except v1.Malformed as e:
            raise broken(f"a metadata_props entry: {e}") from e
        key = value = b""
        for g in sub:
            if g.number == 1 and g.wire == WT_LEN:
                key = bytes(model[g.vstart:g.vend])
            elif g.number == 2 and g.wire == WT_LEN:
                value = bytes(model[g.vstart:g.vend])
        try:
            k = key.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if MANIFEST_KEY_RE.fullmatch(k):
            found.append((k, f, value))
    return found


def manifest_version(model) -> int | None:
    """1 or 2 for a single v1/v2 manifest; None when unprotected. Raises for the other §1 refusals."""
    found = manifest_entries(model)
    if not found:
        return None
    if len(found) > 1:
        raise Modified("more than one manifest entry (onnx-protect/vN)")
    key = found[0][0]
    if key == "onnx-protect/v1":
        return 1
    if key == ENTRY_KEY:
        return 2
    raise UnsupportedVersion(f"metadata key {key!r}")


# --------------------------------------------------------------------------
# Reading (§12).


@dataclass
class Opened:
    model: bytes  # the whole protected file
    content: bytes  # [0, entry_start)
    env: dict
    header: dict
    recipients: dict
    H: bytes
    R: bytes
    files: Files
    tensors: list[Tensor] = field(default_factory=list)
    entries: list[tuple[dict, Tensor, list]] = field(default_factory=list)  # (entry, tensor, span pairs)

    @property
    def tiers(self) -> int:
        return self.header["tiers"]

    @property
    def restored(self) -> int:
        return self.env["restored_tiers"]

    def ext_list(self, files: Files | None = None) -> list[bytes]:
        files = files or self.files
        return [bytes(files.data[files.resolve(loc)]) for loc in self.header["external_files"]]

    def T(self) -> bytes:
        return mac_input(self.H, self.R, self.env["content_digest"])


def _folder_path_ok(p: str) -> bool:
    """§16: a relative path as a folder binding writes it."""
    if not p or len(p.encode()) > 4096 or p.startswith("/") or "\\" in p or "\0" in p:
        return False
    if len(p) >= 2 and p[1] == ":" and p[0].isascii() and p[0].isalpha():
        return False
    return all(c not in ("", ".", "..") for c in p.split("/"))


def check_folder_binding(b: dict) -> None:
    """§16's rules on a header's `folder`; a binding breaking one is "modified"."""
    if len(b["folder_id"]) != 16:
        raise Modified(f"folder binding: folder_id of {len(b['folder_id'])} bytes (16)")
    models, files = b["models"], [f["path"] for f in b["files"]]
    for what, paths in (("models", models), ("files", files)):
        if any(not _folder_path_ok(x) for x in paths):
            raise Modified(f"folder binding: a path of {what} breaks §16's rules")
        raw = [x.encode() for x in paths]
        if raw != sorted(raw) or len(set(raw)) != len(raw):
            raise Modified(f"folder binding: {what} not sorted by bytes without duplicates")
    if not 1 <= len(models) <= 1024 or len(models) + len(files) > 65536:
        raise Modified("folder binding: 1 to 1024 models, at most 65536 paths")
    if any(not m.lower().endswith(".onnx") for m in models):
        raise Modified("folder binding: a model path not ending in .onnx")
    if set(models) & set(files):
        raise Modified("folder binding: a path both a model and a file")
    if b["path"] not in models:
        raise Modified("folder binding: path is not one of models")
    if any(len(f["hash"]) != 32 for f in b["files"]):
        raise Modified("folder binding: a file hash not of 32 bytes")


def check_header(h: dict):
    """§3, the rules that need no model."""
    if h["format_version"] != 2:
        raise Modified(f"header format_version {h['format_version']}")
    n = h["tiers"]
    if not 1 <= n <= 16:
        raise Modified(f"tiers {n} outside 1..=16")
    if len(h["key_checks"]) != n or any(len(k) != 16 for k in h["key_checks"]):
        raise Modified("key_checks: not `tiers` values of 16 bytes")
    c = h["chunk_size"]
    if not (1 << 16 <= c <= 1 << 30) or c & (c - 1):
        raise Modified(f"chunk_size {c} is not a power of two in [2^16, 2^30]")
    if h["positions"] not in (0, 1):
        raise Modified(f"positions {h['positions']} is neither 0 nor 1")
    secret = h["positions"] == 1
    if len(h["licence_authority"]) not in (0, 32):
        raise Modified(f"licence_authority of {len(h['licence_authority'])} bytes (empty or 32)")
    if h["model_id"] and not h["licence_authority"]:
        raise Modified("model_id without licence_authority")
    if len(h["model_id"].encode()) > 1024:
        raise Modified("model_id over 1024 bytes")
    if h["folder"] is not None:
        check_folder_binding(h["folder"])
    streams, pairs = set(), set()
    by_locator: dict[str, list[dict]] = {}
    for e in h["tensors"]:
        loc = e["locator"]
        # §3: positions 0, every entry has spans and no sealed_spans; 1, the reverse.
        if secret and (e["spans"] or not e["sealed_spans"]):
            raise Modified(f"{loc}: secret positions: sealed_spans and no spans")
        if not secret and (not e["spans"] or e["sealed_spans"]):
            raise Modified(f"{loc}: public positions: spans and no sealed_spans")
        if not 1 <= e["tier"] <= n:
            raise Modified(f"{loc}: tier {e['tier']} outside 1..={n}")
        if e["mode"] not in (MODE_CTR, MODE_FP, MODE_DP):
            raise Modified(f"{loc}: mode {e['mode']}")
        if not 1 <= e["storage"] <= 7:
            raise Modified(f"{loc}: storage {e['storage']}")
        if e["data_type"] not in DTYPES or e["data_type"] == STRING:
            raise Modified(f"{loc}: data_type {e['data_type']} is never encrypted")
        if e["stream_id"] in streams:
            raise Modified(f"stream_id {e['stream_id']} used twice")
        streams.add(e["stream_id"])
        if (loc, e["tier"]) in pairs:
            raise Modified(f"{loc}: two entries for tier {e['tier']}")
        pairs.add((loc, e["tier"]))
        by_locator.setdefault(loc, []).append(e)
        check_entry_spans(e)
    for loc, es in by_locator.items():
        first = es[0]
        for e in es[1:]:
            for k in ("mode", "data_type", "storage", "nbytes"):
                if e[k] != first[k]:
                    raise Modified(f"{loc}: entries of one tensor disagree on {k}")
        if first["storage"] in VARINT_STORAGES:
            if len(es) != 1 or first["tier"] != n:
                raise Modified(f"{loc}: a varint-stored tensor has one entry, of the top tier")
            if first["data_type"] in FLOAT6:
                raise Modified(f"{loc}: FLOAT6 in int32_data is never encrypted")
        if len(es) > 1:
            spans = sorted(p for e in es for p in zip(e["spans"][0::2], e["spans"][1::2]))
            for (b0, e0), (b1, _) in zip(spans, spans[1:]):
                if b1 < e0:
                    raise Modified(f"{loc}: spans of different tiers overlap")


def check_envelope(env: dict, h: dict, rec: dict):
    """§12 step 1: sizes and counts."""
    n = h["tiers"]
    if len(env["content_digest"]) != 32 or len(env["checksum"]) != 32:
        raise Modified("content_digest and checksum must be 32 bytes")
    if len(env["macs"]) != n or any(len(m) != 32 for m in env["macs"]):
        raise Modified("macs: not `tiers` values of 32 bytes")
    keys = set()
    for s in env["signatures"]:
        if len(s["public_key"]) != 32 or len(s["signature"]) != 64:
            raise Modified("signature: key must be 32 bytes and signature 64")
        if s["public_key"] in keys:
            raise Modified("two signatures by one public key")
        keys.add(s["public_key"])
    r = env["restored_tiers"]
    if not r < n:
        raise Modified(f"restored_tiers {r} not below tiers {n}")
    if len(env["stored_digest"]) != (32 if r > 0 else 0):
        raise Modified("stored_digest must be 32 bytes iff restored_tiers > 0")
    for st in rec["stanzas"]:
        if not 1 <= st["tier"] <= n:
            raise Modified(f"stanza tier {st['tier']} outside 1..={n}")
        check_stanza_shape(st)
    if h["external_sizes"] and len(h["external_sizes"]) != len(h["external_files"]):
        raise Modified("external_sizes: not one value per external file")
    # §3: `external_leaves` is empty or exactly 32 bytes per chunk of the external files whose
    # sizes `external_sizes` records; it needs `external_sizes`. Any other length is
    # "modified" here, at step 1, without a key (and before any file is read).
    if h["external_leaves"]:
        want = listed_leaves_len(h)
        if want is None:
            raise Modified("external_leaves without external_sizes")
        if len(h["external_leaves"]) != want:
            raise Modified(f"external_leaves: {len(h['external_leaves'])} bytes, not 32 per chunk of the "
                           f"external files ({want} bytes)")
    names = h["original_external_files"]
    if names and len(names) != len(h["external_files"]):
        raise Modified("original_external_files: not one name per external file")
    for name in names:
        parts = re.split(r"[/\\]", name)
        if (not name or "\0" in name or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name)
                or ".." in parts):
            raise Modified(f"original_external_files: {name!r} is not a location §5 allows")
    # §3: no two alike, that is naming one file: equal once empty and "." components are dropped.
    if len({location_key(n) for n in names}) != len(names):
        raise Modified("original_external_files: two names name one file")
    if len(h["tensors"]) > 1 << 20 or not 1 <= len(rec["stanzas"]) <= 1024 or len(env["signatures"]) > 64:
        raise Modified("too many entries, signatures, or stanzas (or none)")
    for kind in ("passphrase", "pkcs11", "command", "age-plugin", "tpm"):
        if sum(st["kind"] == kind for st in rec["stanzas"]) > 8:
            raise Modified(f"more than 8 {kind} stanzas")


def check_stanza_shape(st: dict):
    """§8: stanzas of the kinds the format defines are checked for shape (and the Argon2id
    caps) up front, whatever key material was given; a bad one is "modified". A stanza of
    another kind is skipped whole (its kdf, salt and body not examined)."""
    kind = st["kind"]
    if len(kind.encode()) > 64 or len(st["label"].encode()) > 4096 or len(st["body"]) > 16384:
        raise Modified(f"a {kind[:64]!r} stanza over the size caps (kind 64, label 4096, body 16384 bytes)")
    if kind == "key":
        if len(st["salt"]) != 16 or st["kdf"] is not None or len(st["body"]) != 48:
            raise Modified("key stanza: salt 16 bytes, no kdf, body 48 bytes")
    elif kind == "passphrase":
        k = st["kdf"]
        if k is None or len(st["salt"]) != 16 or len(st["body"]) != 48 or st["label"]:
            raise Modified("passphrase stanza: kdf, 16-byte salt, 48-byte body, empty label")
        if k["algorithm"] != "argon2id" or len(k["salt"]) != 16:
            raise Modified(f"passphrase stanza: algorithm {k['algorithm']!r} / kdf salt")
        if not argon2_within_caps(k["m_cost_kib"], k["t_cost"], k["p_cost"]):
            raise Modified(f"passphrase stanza: Argon2id parameters m={k['m_cost_kib']} t={k['t_cost']} "
                           f"p={k['p_cost']} outside the caps")
    elif kind == "x25519":
        if st["salt"] or st["kdf"] is not None:
            raise Modified("x25519 stanza: salt and kdf must be absent")
        check_age_body(st["body"])
    elif kind == "pkcs11":
        if st["salt"] or st["kdf"] is not None or len(st["body"]) != 60:
            raise Modified("pkcs11 stanza: salt and kdf absent, body 60 bytes")
    elif kind == "command":
        if st["salt"] or st["kdf"] is not None or not 1 <= len(st["body"]) <= 16384:
            raise Modified("command stanza: salt and kdf absent, body 1 to 16384 bytes")
        label = st["label"]
        if len(label.encode()) > 512 or any(ord(c) < 0x20 or 0x7f <= ord(c) <= 0x9f or c in "\u2028\u2029"
                                            for c in label):
            raise Modified("command stanza: a label over 512 bytes or with a control character or line break")
    elif kind == "tpm":
        if st["salt"] or st["kdf"] is not None or len(st["body"]) != 81:
            raise Modified("tpm stanza: salt and kdf absent, body 81 bytes")
    elif kind == "age-plugin":
        if st["salt"] or st["kdf"] is not None:
            raise Modified("age-plugin stanza: salt and kdf must be absent")


def check_age_body(body: bytes):
    """§8: at most 1024 bytes; among the header lines one X25519 stanza and at most one
    other (age's grease)."""
    if len(body) > 1024:
        raise Modified(f"x25519 stanza: an age body of {len(body)} bytes")
    x25519 = other = 0
    for line in body.split(b"\n")[1:]:
        if line.startswith(b"---"):
            break
        if line.startswith(b"-> X25519 "):
            x25519 += 1
        elif line.startswith(b"-> "):
            other += 1
    if x25519 != 1 or other > 1:
        raise Modified(f"x25519 stanza: {x25519} X25519 and {other} other age stanzas")


TPM_HRP = "onnx-protect-tpm"
L_WRAP_TPM = b"onnx-protect/v2/wrap/tpm"


def tpm_recipient(d: int) -> str:
    """Appendix A: the recipient string of the P-256 private scalar d."""
    pub = ec.derive_private_key(d, ec.SECP256R1()).public_key()
    return spec_age.bech32_encode(TPM_HRP, pub.public_bytes(Encoding.X962, PublicFormat.CompressedPoint))


def open_tpm(st: dict, d: int) -> bytes | None:
    """§8 `tpm`, with the private scalar in software (what the TPM computes inside): the
    data key, or None if the stanza is for another key or does not open."""
    if st["label"] != tpm_recipient(d):
        return None  # labels pick stanzas to skip
    body = st["body"]
    if len(body) != 81:
        return None  # malformed: never opens
    e, sealed = body[:33], body[33:]
    try:
        e_pub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), e)
    except ValueError:
        return None
    priv = ec.derive_private_key(d, ec.SECP256R1())
    z = priv.exchange(ec.ECDH(), e_pub)
    p = priv.public_key().public_bytes(Encoding.X962, PublicFormat.CompressedPoint)
    kek = hkdf(e + p, z, L_WRAP_TPM + u32be(st["tier"]))
    return unwrap(kek, sealed)


def open_model(model_bytes: bytes, model_dir: str | None = None, model_name: str | None = None) -> Opened:
    """§12 steps 1–3 and the keyless half of step 6: the digest of the content as stored."""
    model = bytes(model_bytes)
    found = manifest_entries(model)
    if not found:
        raise NotProtected(detail=f"no {ENTRY_KEY!r} metadata_props entry")
    if len(found) > 1:
        raise Modified("more than one manifest entry (onnx-protect/vN)")
    key, f, value = found[0]
    if key != ENTRY_KEY:
        raise UnsupportedVersion(f"metadata key {key!r}")
    # §1: last field, encoded exactly so. CHOICE: "a varint length" read as minimal.
    if model[f.start:] != _entry_bytes(key.encode(), value) or find_entry(model) != (f.start, value):
        raise Modified("the manifest entry is not the last field or not encoded as §1 says")
    try:
        env_bytes = base64.b64decode(value, validate=True)
    except ValueError as e:
        raise Modified("the manifest value is not base64") from e
    if base64.b64encode(env_bytes) != value:  # CHOICE: canonical base64 (zero padding bits)
        raise Modified("the manifest value is not canonical base64")
    env = decode_canonical("Envelope", env_bytes)
    header = decode_canonical("Header", env["header"])
    if len(env["recipients"]) > 1 << 20:  # §8: the recipient list's cap, before decoding it
        raise Modified("the encoded Recipients message is over 1 MiB")
    rec = decode_canonical("Recipients", env["recipients"])
    check_header(header)
    check_envelope(env, header, rec)
    # step 2: checksum. Canonical encoding puts field 8 last: tag 0x42, length 32.
    if not env_bytes.endswith(b"\x42\x20" + env["checksum"]):
        raise Modified("checksum is not the last envelope field")
    if not hmac.compare_digest(checksum_of(env_bytes[:-34]), env["checksum"]):
        raise Modified("checksum mismatch")
    op = Opened(model, model[:f.start], env, header, rec, env["header"], env["recipients"],
                Files(model_dir, model_name))
    # §3: each external file's recorded length (absent in older files) before it is read.
    for loc, size in zip(header["external_files"], header["external_sizes"]):
        real = op.files.resolve(loc)
        if os.path.isfile(real) and os.path.getsize(real) != size:
            raise Modified(f"external data file {loc!r} is {os.path.getsize(real)} bytes; the header records {size}")
    # §12 step 3: the model parses and matches the header (a failure under a sound entry is
    # "modified"), before any external file is read.
    try:
        op.tensors = walk(op.content, op.files)
    except MissingFile as e:
        # A file the header lists that is not there is missing; an unlisted location is a change.
        if any(repr(loc) in str(e) for loc in header["external_files"]):
            raise
        raise Modified(f"the model no longer parses: {e}") from e
    except MalformedModel as e:
        raise Modified(f"the model no longer parses: {e}") from e
    ext_order = []
    for t in model_order(op.tensors):
        if t.storage == S_EXTERNAL and t.ext_location not in ext_order:
            ext_order.append(t.ext_location)
    if ext_order != header["external_files"]:
        raise Modified(f"external_files {header['external_files']} but the model's external tensors use "
                       f"{ext_order}")
    by_loc = {t.locator: t for t in op.tensors}
    check_label_lock(header["label_lock"], by_loc, main_graph_outputs(op.content))
    for e in header["tensors"]:
        t = by_loc.get(e["locator"])
        if t is None:
            raise Modified(f"no tensor at locator {e['locator']!r}")
        for what, mine, theirs in (("name", t.name, e["name"]), ("data_type", t.data_type, e["data_type"]),
                                   ("nbytes", t.nbytes, e["nbytes"]), ("storage", t.storage, e["storage"])):
            if mine != theirs:
                raise Modified(f"{e['locator']}: {what} {mine!r} in the model, {theirs!r} in the header")
        if t.storage in VARINT_STORAGES and varint_width(t.data_type) is None:
            raise Modified(f"{e['locator']}: no element bytes for this varint-stored type")
        op.entries.append((e, t, list(zip(e["spans"][0::2], e["spans"][1::2]))))
    # §12 step 6, keyless: the digest of the files as stored (the key's checks come later).
    for loc in header["external_files"]:
        op.files.load(loc, missing=MissingFile)
    want = env["stored_digest"] if op.restored else env["content_digest"]
    if not hmac.compare_digest(content_digest(op.content, op.ext_list(), header["chunk_size"]), want):
        raise Modified("content digest mismatch" + (" (stored_digest)" if op.restored else ""))
    # §3, step 6: the listed leaves are those of the external files in canonical form. With
    # restored_tiers = 0 the files as stored are canonical: compared here, without a key. Of a
    # partially decrypted file the canonical form needs the key (§11; keyless verification
    # checks stored_digest only, §12): compared in `unlock`.
    # CHOICE: the digest is compared first, then the leaves (a file whose digest matches but
    # whose listed leaves differ gets a message of its own).
    if not op.restored:
        check_listed_leaves(header, op.ext_list())
    return op


LOCATOR_RE = re.compile(r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(/(0|[1-9][0-9]*)\.(0|[1-9][0-9]*))*")


def main_graph_outputs(content: bytes) -> set[str]:
    """The names of the main graph's outputs (GraphProto.output = 12, ValueInfoProto.name = 1)."""
    names = set()
    for g in _fields(content, 0, len(content), "model"):
        if g.number != 7 or g.wire != WT_LEN:
            continue
        for o in _fields(content, g.vstart, g.vend, "graph"):
            if o.number == 12 and o.wire == WT_LEN:
                for f in _fields(content, o.vstart, o.vend, "graph output"):
                    if f.number == 1:
                        names.add(_get_str(content, f, "graph output name"))
    return names


def check_label_lock(lock: dict | None, by_loc: dict, outputs: set[str]):
    """§15 rules, at §12 step 3 without a key: any failure is "modified"."""
    if lock is None:
        return
    c = lock["classes"]
    if not 3 <= c <= 1 << 24:
        raise Modified(f"label_lock: {c} classes (3 to 2^24)")
    if len(lock["sealed_seed"]) != 48:
        raise Modified("label_lock: sealed_seed is not 48 bytes")
    if not 1 <= len(lock["tensors"]) <= 16 or not lock["outputs"]:
        raise Modified("label_lock: 1 to 16 tensors and at least one output")
    seen = set()
    for lt in lock["tensors"]:
        loc = lt["locator"]
        if not LOCATOR_RE.fullmatch(loc) or loc not in by_loc:
            raise Modified(f"label_lock: locator {loc!r} does not name a tensor")
        if loc in seen:
            raise Modified(f"label_lock: tensor {loc} twice")
        seen.add(loc)
        t = by_loc[loc]
        if (t.name, t.data_type, list(t.dims)) != (lt["name"], lt["data_type"], list(lt["dims"])):
            raise Modified(f"label_lock: {loc} is not the tensor recorded (name, data_type, dims)")
        # §15: a locked tensor has element bytes a reader can permute and store back exactly.
        if t.data_type == STRING or t.storage is None or (t.storage in VARINT_STORAGES
                                                          and varint_width(t.data_type) is None):
            raise Modified(f"label_lock: {loc} has no element bytes that can be locked")
        if not lt["axis"] < len(t.dims) or t.dims[lt["axis"]] != c:
            raise Modified(f"label_lock: {loc} has no axis {lt['axis']} of {c} classes")
    for o in lock["outputs"]:
        if o["name"] not in outputs or o["kind"] not in (1, 2):
            raise Modified(f"label_lock: output {o['name']!r} (kind {o['kind']}) is not a graph output of kind 1 or 2")


def class_order(seed: bytes, c: int) -> list[int]:
    """§15: the first derangement among the 256 keyed shuffles of 0..C-1."""
    prk = hkdf_extract(L_LABEL_LOCK, seed)
    for a in range(256):
        k_a = hkdf_expand(prk, L_LABEL_LOCK_PERMUTATION + u32be(c) + u32be(a), 32)
        stream, pos = b"", 0
        p = list(range(c))
        for i in range(c - 1, 0, -1):
            m = i + 1
            limit = (1 << 32) - ((1 << 32) % m)
            while True:
                if pos + 4 > len(stream):
                    stream += keystream(k_a, len(stream), len(stream) + 4096)
                r = int.from_bytes(stream[pos:pos + 4], "big")
                pos += 4
                if r < limit:
                    break
            j = r % m
            p[i], p[j] = p[j], p[i]
        if all(p[q] != q for q in range(c)):
            return p
    raise Modified("label_lock: no derangement among the 256 shuffles")


def open_lock_seed(lock: dict, tier1: "TierKeys") -> bytes:
    """§15: the seed, sealed under tier 1's K_lock; a seal that does not open is "modified"."""
    k_lock = hkdf_expand(tier1.prk, L_LABEL_LOCK, 32)
    try:
        return ChaCha20Poly1305(k_lock).decrypt(bytes(12), lock["sealed_seed"], L_LABEL_LOCK)
    except InvalidTag as e:
        raise Modified("label_lock: the sealed seed does not open") from e


def unlock_classes(data: bytes, dims: list[int], axis: int, bits: int, p: list[int]) -> bytes:
    """§15: stored slice q goes back to position p[q] along `axis`, for every outer index;
    elements move whole (sub-byte elements bit by bit, LSB first, padding bits kept)."""
    c = dims[axis]
    outer = numel_of(dims[:axis]) if axis else 1
    inner = numel_of(dims[axis + 1:]) if axis + 1 < len(dims) else 1
    if bits % 8 == 0:
        e = bits // 8
        out = bytearray(data)
        block = inner * e
        for o in range(outer):
            base = o * c * block
            for q in range(c):
                out[base + p[q] * block:base + (p[q] + 1) * block] = data[base + q * block:base + (q + 1) * block]
        return bytes(out)
    src = int.from_bytes(data, "little")
    dst = src
    mask = (1 << (bits * inner)) - 1
    for o in range(outer):
        for q in range(c):
            s_at = ((o * c + q) * inner) * bits
            d_at = ((o * c + p[q]) * inner) * bits
            dst = (dst & ~(mask << d_at)) | (((src >> s_at) & mask) << d_at)
    return dst.to_bytes(len(data), "little")


def unseal_positions(op: Opened, keys: dict[int, "TierKeys"]):
    """§6 secret positions: unseal the spans of the entries of the tiers the key reaches
    (a seal that does not open is "modified") and apply §6 and §3 to them."""
    if op.header["positions"] != 1:
        return
    entries = []
    for e, t, _ in op.entries:
        if e["tier"] not in keys:
            entries.append((e, t, []))
            continue
        k_pos = hkdf_expand(keys[e["tier"]].prk, L_POSITIONS, 32)
        try:
            plain = ChaCha20Poly1305(k_pos).decrypt(bytes(4) + u64be(e["stream_id"]), e["sealed_spans"], L_POSITIONS)
        except InvalidTag as ex:
            raise Modified(f"{e['locator']}: sealed_spans do not open") from ex
        if not plain or len(plain) % 16:
            raise Modified(f"{e['locator']}: sealed_spans hold no whole (begin, end) pairs")
        spans = [int.from_bytes(plain[i:i + 8], "big") for i in range(0, len(plain), 8)]
        opened = dict(e, spans=spans)
        entries.append((opened, t, check_entry_spans(opened)))
    by_loc: dict[str, list] = {}
    for e, _, pairs in entries:
        by_loc.setdefault(e["locator"], []).extend(pairs)
    for loc, pairs in by_loc.items():
        pairs.sort()
        for (b0, e0), (b1, _) in zip(pairs, pairs[1:]):
            if b1 < e0:
                raise Modified(f"{loc}: spans of different tiers overlap")
    op.entries = entries


def open_stanza(op: Opened, key: bytes | None, passphrase: bytes | None,
                identities: list[str] | None, tpm_keys: list[int] | None = None) -> tuple[int, bytes]:
    """§8: (tier k, DK_k) from the first stanza the key material opens."""
    if key is None and passphrase is None and not identities and not tpm_keys:
        raise UsageError("a key, a passphrase, an identity or a TPM key is needed")
    if key is not None and len(key) != 32:
        raise UsageError("a key is 32 bytes")
    for st in op.recipients["stanzas"]:
        kind, tier = st["kind"], st["tier"]
        dk = None
        if kind == "key" and key is not None:
            dk = unwrap(hkdf(st["salt"], key, L_WRAP_KEY + u32be(tier)), st["body"])
        elif kind == "passphrase" and passphrase is not None:
            k = st["kdf"]
            w = argon2id(passphrase, k["salt"], k["m_cost_kib"], k["t_cost"], k["p_cost"])
            dk = unwrap(hkdf(st["salt"], w, L_WRAP_PASSPHRASE + u32be(tier)), st["body"])
        elif kind == "x25519" and identities:
            try:
                dk = spec_age.decrypt(st["body"], identities)
            except spec_age.AgeError:
                dk = None  # §8: a body not a well-formed age file for the identity does not open
            if dk is not None and len(dk) != 32:
                raise Modified("x25519 stanza: the age payload is not 32 bytes")
        elif kind == "tpm" and tpm_keys:
            dk = next((k for k in (open_tpm(st, d) for d in tpm_keys) if k is not None), None)
        if dk is not None:
            return tier, dk  # CHOICE: the first stanza that opens (§8 recommends, not requires, the highest tier)
    raise WrongKey("no recipient stanza matched")


def _canonical_state(op: Opened, keys: dict[int, TierKeys]) -> tuple[bytearray, Files]:
    """§11: the content with the spans of tiers <= restored_tiers encrypted again."""
    content, files = bytearray(op.content), op.files.copy()
    for e, t, pairs in op.entries:
        if e["tier"] <= op.restored:
            elem = element_bytes(content, t, files)
            transform(elem, e, pairs, keys[e["tier"]].tensor_key(e["stream_id"]), True)
            put_element_bytes(content, t, files, bytes(elem))
    return content, files


def check_signatures(op: Opened, signers: list[bytes]):
    trusted = [s for s in op.env["signatures"] if s["public_key"] in set(signers)]
    if not trusted:
        raise NotSigned()
    msg = L_SIGNATURE + op.T()
    for s in trusted:
        if not verify_strict(s["public_key"], s["signature"], msg):
            raise Modified(f"signature by {signer_string(s['public_key'])} does not verify")


@dataclass
class Unlocked:
    op: Opened
    tier: int
    keys: dict[int, TierKeys]


def unlock(op: Opened, key=None, passphrase=None, identities=None, signers=None, tpm_keys=None) -> Unlocked:
    """§12 steps 3–4."""
    if op.header["licence_authority"]:
        # §3: a reader that knows the field and checks no licence refuses rather than opens.
        raise LicenceRequired("the header names a licence authority; this reader checks no licence")
    k, dk = open_stanza(op, key, passphrase, identities, tpm_keys)
    keys = data_keys_down(dk, k)
    for t, tk in keys.items():
        if not hmac.compare_digest(tk.kcv(), op.header["key_checks"][t - 1]):
            raise Modified(f"key check value of tier {t} does not match")
    # CHOICE: the MACs (step 5) cover the sealed spans, but the spans are unsealed here,
    # before the canonical digest of a partial file needs them.
    unseal_positions(op, keys)
    if k <= op.restored:
        raise AlreadyDecrypted(f"tier {k}, restored_tiers {op.restored}")
    if op.restored:
        content, files = _canonical_state(op, keys)
        d = content_digest(bytes(content), op.ext_list(files), op.header["chunk_size"])
        if not hmac.compare_digest(d, op.env["content_digest"]):
            raise Modified("canonical content digest mismatch")
        # §3, step 6: the listed leaves against the canonical external files (§11).
        check_listed_leaves(op.header, op.ext_list(files), " in canonical form")
    # (restored_tiers = 0: the stored digest and the listed leaves were already compared)
    T = op.T()
    for t in range(1, k + 1):
        if not hmac.compare_digest(tier_mac(keys[t], t, T), op.env["macs"][t - 1]):
            raise Modified(f"MAC of tier {t} mismatch")
    if signers is not None:
        check_signatures(op, signers)
    return Unlocked(op, k, keys)


def decrypt_all(model_bytes: bytes, key: bytes | None = None, passphrase: bytes | None = None,
                identities: list[str] | None = None, model_dir: str | None = None,
                model_name: str | None = None, signers: list[bytes] | None = None,
                up_to_tier: int | None = None, tpm_keys: list[int] | None = None) -> tuple[bytes, dict[str, bytes]]:
    """Decrypt tiers restored_tiers+1 .. up_to_tier (default: the key's tier).
    Returns (model bytes, {location: side file bytes for every external file}).
    When the result is the top tier, it is the original model; else a partially
    decrypted protected model (§11)."""
    op = open_model(model_bytes, model_dir, model_name)
    u = unlock(op, key, passphrase, identities, signers, tpm_keys)
    T = u.tier if up_to_tier is None else up_to_tier
    if not op.restored < T <= u.tier:
        raise UsageError(f"up_to_tier {T}: must be in {op.restored + 1}..={u.tier}")
    content, files = bytearray(op.content), op.files.copy()
    varint = []
    for e, t, pairs in op.entries:
        if not op.restored < e["tier"] <= T:
            continue
        elem = element_bytes(content, t, files)
        transform(elem, e, pairs, u.keys[e["tier"]].tensor_key(e["stream_id"]), False)
        if t.storage in VARINT_STORAGES:
            varint.append((e, bytes(elem)))
        else:
            put_element_bytes(content, t, files, bytes(elem))
    lock = op.header["label_lock"]
    if T == op.tiers and lock is not None:
        # §15, §12 step 7: a full decryption puts every locked tensor's classes back.
        p = class_order(open_lock_seed(lock, u.keys[1]), lock["classes"])
        by_loc = {t.locator: t for t in op.tensors}
        pending = {e["locator"]: i for i, (e, _) in enumerate(varint)}
        for lt in lock["tensors"]:
            t = by_loc[lt["locator"]]
            bits = DTYPES[t.data_type][1]
            if t.storage is None or not bits:
                raise Modified(f"label_lock: {t.locator} has no element bytes to restore")
            if t.storage in VARINT_STORAGES:
                i = pending.get(t.locator)
                data = varint[i][1] if i is not None else bytes(element_bytes(content, t, files))
                data = unlock_classes(data, t.dims, lt["axis"], bits, p)
                if i is not None:
                    varint[i] = (varint[i][0], data)
                else:
                    varint.append((dict(locator=t.locator, storage=t.storage, data_type=t.data_type), data))
            else:
                data = unlock_classes(bytes(element_bytes(content, t, files)), t.dims, lt["axis"], bits, p)
                put_element_bytes(content, t, files, data)
    side = {loc: bytes(files.data[files.resolve(loc)]) for loc in op.header["external_files"]}
    if T == op.tiers:
        out = bytes(content)
        for e, data in varint:
            out = rewrite_varint(out, e["locator"], e["storage"], e["data_type"], data)
        # §12 step 7: the original names of the external files, when the header records them.
        names = dict(zip(op.header["external_files"], op.header["original_external_files"]))
        if names:
            for t in [t for t in op.tensors if t.storage == S_EXTERNAL]:
                out = rewrite_location(out, t.locator, names[t.ext_location])
            side = {names[loc]: data for loc, data in side.items()}
        return out, side
    assert not varint  # §3: varint tensors are top tier
    env = dict(op.env)
    env["restored_tiers"] = T
    env["stored_digest"] = content_digest(bytes(content), list(side.values()), op.header["chunk_size"])
    env["checksum"] = b""
    body = encode("Envelope", env)
    env["checksum"] = checksum_of(body)
    value = base64.b64encode(encode("Envelope", env))
    return bytes(content) + _entry_bytes(ENTRY_KEY.encode(), value), side


def decrypt(model_bytes: bytes, out_dir: str | None = None, **kw) -> bytes:
    out, side = decrypt_all(model_bytes, **kw)
    if side:
        if out_dir is None:
            raise UsageError("the model has external data: pass out_dir, or use decrypt_all()")
        v1.write_side_files(out_dir, side)
    return out


def verify(model_bytes: bytes, model_dir: str | None = None, model_name: str | None = None,
           signers: list[bytes] | None = None, key=None, passphrase=None, identities=None, tpm_keys=None) -> dict:
    """Keyless verification (checksum and stored digest, the listed external leaves when the
    file is not partially decrypted, and signatures when asked and the file is not partially
    decrypted); with key material, the MACs (and the canonical digest and leaves) as well."""
    op = open_model(model_bytes, model_dir, model_name)
    info = {"tiers": op.tiers, "restored_tiers": op.restored, "entries": len(op.entries),
            "signers": [signer_string(s["public_key"]) for s in op.env["signatures"]]}
    if key is not None or passphrase is not None or identities or tpm_keys:
        info["key_tier"] = unlock(op, key, passphrase, identities, signers, tpm_keys).tier
    elif signers is not None:
        if op.restored:
            raise UsageError("a partially decrypted file needs a key to check signatures (§12)")
        check_signatures(op, signers)
    return info


# --------------------------------------------------------------------------
# Writing.


@dataclass
class KeyRecipient:
    key: bytes  # W, 32 bytes
    tier: int | None = None  # None: the top tier


@dataclass
class PassphraseRecipient:
    passphrase: bytes
    tier: int | None = None
    m_cost_kib: int = ARGON2_DEFAULT["m_cost_kib"]
    t_cost: int = ARGON2_DEFAULT["t_cost"]
    p_cost: int = ARGON2_DEFAULT["p_cost"]


@dataclass
class X25519Recipient:
    recipient: str  # age1...
    tier: int | None = None


def make_stanza(r, tier: int, dk: bytes) -> dict:
    if isinstance(r, KeyRecipient):
        if len(r.key) != 32:
            raise UsageError("a key is 32 bytes")
        salt = os.urandom(16)
        body = wrap(hkdf(salt, r.key, L_WRAP_KEY + u32be(tier)), dk)
        return new_message("Stanza", kind="key", tier=tier, label=fingerprint(r.key), salt=salt, body=body)
    if isinstance(r, PassphraseRecipient):
        if not argon2_within_caps(r.m_cost_kib, r.t_cost, r.p_cost):
            raise UsageError("Argon2id parameters outside the caps of §8")
        kdf = new_message("KdfParams", algorithm="argon2id", salt=os.urandom(16), m_cost_kib=r.m_cost_kib,
                          t_cost=r.t_cost, p_cost=r.p_cost)
        w = argon2id(r.passphrase, kdf["salt"], r.m_cost_kib, r.t_cost, r.p_cost)
        salt = os.urandom(16)
        body = wrap(hkdf(salt, w, L_WRAP_PASSPHRASE + u32be(tier)), dk)
        return new_message("Stanza", kind="passphrase", tier=tier, salt=salt, kdf=kdf, body=body)
    if isinstance(r, X25519Recipient):
        return new_message("Stanza", kind="x25519", tier=tier, label=r.recipient,
                           body=spec_age.encrypt(dk, [r.recipient]))
    raise UsageError(f"unknown recipient {r!r}")


def _plan_items(plan, default_mode) -> list[dict]:
    if isinstance(plan, dict):  # {locator: spans}
        plan = [{"locator": loc, "spans": spans} for loc, spans in plan.items()]
    out = []
    for p in plan:
        mode = p.get("mode", default_mode)
        mode = MODE_NAMES[mode] if isinstance(mode, str) else int(mode)
        spans = [x for b_e in p["spans"] for x in b_e]
        out.append(dict(p, mode=mode, spans=spans))
    return out


def spec_encrypt_v2(original: bytes, plan, recipients: list, *, tiers: int = 1, mode="ctr",
                    chunk_size: int = 1 << 22, signing_keys: list[bytes] = (), model_dir: str | None = None,
                    model_name: str | None = None, data_key: bytes | None = None, tool: str = "spec_v2.py",
                    policy_summary: str = "") -> tuple[bytes, dict[str, bytes]]:
    """Protect `original` (format 2). `plan`: {locator: [(begin, end), ...]} or a list of
    {"locator", "spans", "mode" ("ctr"|"fp"|"dp"), "tier", "op_type", "role",
    "subsequences", "chosen"}; one item per (tensor, tier). Recipients: KeyRecipient,
    PassphraseRecipient, X25519Recipient (tier None = top). `signing_keys`: Ed25519
    32-byte seeds. Returns (protected model, {location: side file bytes})."""
    model = bytes(original)
    if manifest_entries(model):
        raise UsageError("the model already has a manifest key (§1)")
    if not recipients:
        raise UsageError("at least one recipient")
    files = Files(model_dir, model_name)
    tensors = walk(model, files)
    by_loc = {t.locator: t for t in tensors}
    ext_files = []
    for t in model_order(tensors):
        if t.storage == S_EXTERNAL and t.ext_location not in ext_files:
            ext_files.append(t.ext_location)
    entries = []
    for sid, p in enumerate(_plan_items(plan, mode)):
        t = by_loc.get(p["locator"])
        if t is None:
            raise UsageError(f"no tensor at locator {p['locator']!r}")
        if t.storage is None:
            raise UsageError(f"{t.locator} ({t.name!r}) holds no encryptable elements")
        if t.storage == S_EXTERNAL:
            # CHOICE: the format does not forbid tensors sharing external bytes; encrypting
            # one of them would change the other, so this writer refuses.
            for o in tensors:
                if o is not t and o.ext_real == t.ext_real and o.ext_offset < t.ext_offset + t.nbytes \
                        and t.ext_offset < o.ext_offset + o.nbytes:
                    raise UsageError(f"{t.locator}: its external bytes overlap those of {o.locator}")
        if t.storage in VARINT_STORAGES:
            if varint_width(t.data_type) is None:
                raise UsageError(f"{t.locator}: FLOAT6 in int32_data is never encrypted")
            plain = element_bytes(model, t, files)
            if rewrite_varint(model, t.locator, t.storage, t.data_type, bytes(plain)) != model:
                raise UsageError(f"{t.locator} ({t.name!r}): the varint encoding of §5 does not reproduce "
                                 "the stored bytes")
        e = new_message("TensorEntry", stream_id=sid, locator=t.locator, name=t.name, data_type=t.data_type,
                        storage=t.storage, nbytes=t.nbytes, mode=p["mode"], spans=p["spans"],
                        tier=p.get("tier") or tiers, op_type=p.get("op_type", ""), role=p.get("role", ""),
                        subsequences=p.get("subsequences", 0), chosen=p.get("chosen", 0))
        entries.append((e, t))
    ext_sizes = [os.path.getsize(files.resolve(loc)) for loc in ext_files]
    header = new_message("Header", format_version=2, tiers=tiers, tensors=[e for e, _ in entries],
                         chunk_size=chunk_size, external_files=ext_files, tool=tool, policy_summary=policy_summary,
                         external_sizes=ext_sizes)
    dk_top = data_key if data_key is not None else os.urandom(32)
    keys = data_keys_down(dk_top, tiers)
    header["key_checks"] = [keys[t].kcv() for t in range(1, tiers + 1)]
    try:
        check_header(header)
    except Modified as err:
        raise UsageError(f"the plan breaks §3/§6: {err}") from err
    # encrypt: in-place kinds first, varint re-encoding last (it moves bytes)
    content = bytearray(model)
    varint = []
    for e, t in entries:
        elem = element_bytes(content, t, files)
        transform(elem, e, list(zip(e["spans"][0::2], e["spans"][1::2])), keys[e["tier"]].tensor_key(
            e["stream_id"]), True)
        if t.storage in VARINT_STORAGES:
            varint.append((e, bytes(elem)))
        else:
            put_element_bytes(content, t, files, bytes(elem))
    out = bytes(content)
    for e, data in varint:
        out = rewrite_varint(out, e["locator"], e["storage"], e["data_type"], data)
    side = {loc: bytes(files.data[files.load(loc)]) for loc in ext_files}
    digest = content_digest(out, list(side.values()), chunk_size)
    # §3: the leaves of the external files as written, whenever the model has external data
    # (what onnx-protect does; the field is optional, a reader accepts a header without it).
    header["external_leaves"] = external_leaves(list(side.values()), chunk_size)
    stanzas = []
    for r in recipients:
        tier = r.tier or tiers
        if tier not in keys:
            raise UsageError(f"recipient tier {tier} outside 1..={tiers}")
        stanzas.append(make_stanza(r, tier, keys[tier].dk))
    rec = new_message("Recipients", stanzas=stanzas)
    H, R = encode("Header", header), encode("Recipients", rec)
    T = mac_input(H, R, digest)
    sigs = []
    for seed in signing_keys:
        sk = Ed25519PrivateKey.from_private_bytes(seed)
        pub = sk.public_key().public_bytes_raw()
        sigs.append(new_message("Signature", public_key=pub, signature=sk.sign(L_SIGNATURE + T)))
    env = new_message("Envelope", header=H, recipients=R, content_digest=digest,
                      macs=[tier_mac(keys[t], t, T) for t in range(1, tiers + 1)], signatures=sigs)
    env["checksum"] = checksum_of(encode("Envelope", env))
    value = base64.b64encode(encode("Envelope", env))
    return out + _entry_bytes(ENTRY_KEY.encode(), value), side


encrypt = spec_encrypt_v2


def encryptable(model: bytes, model_dir: str | None = None) -> list[Tensor]:
    """Tensors that hold element bytes a format-2 entry can cover (for building plans)."""
    out = []
    for t in walk(model, Files(model_dir, None)):
        if t.storage is None or t.nbytes == 0:
            continue
        if t.storage in VARINT_STORAGES and varint_width(t.data_type) is None:
            continue
        out.append(t)
    return out


# --------------------------------------------------------------------------
# Key files.


def read_key_file(path: str) -> bytes:
    with open(path, "rb") as fh:
        return v1.parse_key_file(fh.read())


def read_passphrase_file(path: str) -> bytes:
    """CHOICE (the format says only "its raw bytes"): the file's first line, without the newline."""
    with open(path, "rb") as fh:
        return fh.read().split(b"\n", 1)[0].rstrip(b"\r")


def read_identity_file(path: str) -> list[str]:
    with open(path, encoding="utf-8") as fh:
        return spec_age.parse_identity_file(fh.read())


def read_signer_file(path: str) -> bytes:
    """A signer public key file: its first line that is not blank or a '#' comment."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if line and not line.startswith("#"):
                return parse_signer(line)
    raise UsageError(f"{path}: no signer key")


# --------------------------------------------------------------------------
# Command line.


def _key_material(a) -> dict:
    kw = {}
    if getattr(a, "key_file", None):
        kw["key"] = read_key_file(a.key_file)
    if getattr(a, "passphrase_file", None):
        kw["passphrase"] = read_passphrase_file(a.passphrase_file)
    if getattr(a, "identity", None):
        kw["identities"] = [i for p in a.identity for i in read_identity_file(p)]
    return kw


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    def key_args(p):
        p.add_argument("--key-file")
        p.add_argument("--passphrase-file")
        p.add_argument("--identity", action="append")
        p.add_argument("--signer", action="append", help="a file holding an onnx-protect-signer1... key")

    d = sub.add_parser("decrypt")
    d.add_argument("input")
    d.add_argument("output")
    d.add_argument("--up-to-tier", type=int)
    key_args(d)
    v = sub.add_parser("verify")
    v.add_argument("input")
    key_args(v)
    e = sub.add_parser("encrypt")
    e.add_argument("input")
    e.add_argument("output")
    e.add_argument("--plan", help="JSON: [{locator, spans: [[b, e], ...], mode, tier}, ...]")
    e.add_argument("--whole", choices=list(MODE_NAMES), help="encrypt every encryptable tensor whole")
    e.add_argument("--tiers", type=int, default=1)
    e.add_argument("--key-file", action="append", default=[], help="[TIER:]FILE, a key stanza")
    e.add_argument("--passphrase-file")
    e.add_argument("--recipient", action="append", default=[], help="[TIER:]age1...")
    e.add_argument("--sign-key", action="append", default=[], help="a file with a 32-byte Ed25519 seed in hex")
    e.add_argument("--chunk-size", type=int, default=1 << 22)
    a = ap.parse_args(argv)
    try:
        model_dir = os.path.dirname(os.path.abspath(a.input))
        with open(a.input, "rb") as fh:
            model = fh.read()
        if a.cmd == "encrypt":
            if a.plan:
                with open(a.plan, encoding="utf-8") as fh:
                    plan = json.load(fh)
            elif a.whole:
                plan = [{"locator": t.locator, "mode": a.whole,
                         "spans": [[0, t.nbytes - t.nbytes % element_size(t.data_type)]]}
                        for t in encryptable(model, model_dir)]
            else:
                raise UsageError("--plan or --whole")
            recips = []
            for s in a.key_file:
                tier, _, path = s.rpartition(":") if re.match(r"^[0-9]+:", s) else ("", "", s)
                recips.append(KeyRecipient(read_key_file(path), int(tier) if tier else None))
            if a.passphrase_file:
                recips.append(PassphraseRecipient(read_passphrase_file(a.passphrase_file)))
            for s in a.recipient:
                tier, _, r = s.partition(":") if re.match(r"^[0-9]+:", s) else ("", "", s)
                recips.append(X25519Recipient(r, int(tier) if tier else None))
            seeds = [read_key_file(p) for p in a.sign_key]
            out, side = spec_encrypt_v2(model, plan, recips, tiers=a.tiers, signing_keys=seeds,
                                        model_dir=model_dir, model_name=os.path.basename(a.input),
                                        chunk_size=a.chunk_size)
        else:
            kw = _key_material(a)
            signers = [read_signer_file(p) for p in a.signer] if a.signer else None
            if a.cmd == "verify":
                print(json.dumps(verify(model, model_dir, os.path.basename(a.input), signers=signers, **kw)))
                return 0
            out, side = decrypt_all(model, model_dir=model_dir, model_name=os.path.basename(a.input),
                                    signers=signers, up_to_tier=a.up_to_tier, **kw)
    except (SpecError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    v1.write_side_files(os.path.dirname(os.path.abspath(a.output)), side)
    with open(a.output, "wb") as fh:
        fh.write(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
