#!/usr/bin/env python3
"""An independent decryptor for the onnx-protect on-model format, version 1.

Written from docs/format.md and proto/onnx_protect.proto only (no Rust sources,
no `onnx` or protobuf packages): it checks that the specification is enough to
undo what `onnx-protect encrypt` does. Section numbers (§n) refer to
docs/format.md.

Library use::

    from spec_decryptor import decrypt, decrypt_all
    plain = decrypt(protected_bytes, key=master_key)              # bytes
    plain, side = decrypt_all(protected_bytes, key=k, model_dir=d)  # + {location: bytes}

Command line::

    python3 spec_decryptor.py IN OUT (--key-file K | --passphrase-env VAR | --passphrase-file F)

Format-2 models are decrypted by spec_v2.py (this module hands them over); its own
command line also takes age identities, signers and partial decryption.

Restored external-data files are written next to OUT under their `location`.

Dependencies: the standard library and `cryptography` (AES-256, HKDF pieces
are done with hmac/hashlib, Argon2id from `cryptography` >= 44).
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import os
import re
import struct
import sys
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

# --------------------------------------------------------------------------
# Errors. The messages start with the words the spec uses.


class SpecError(Exception):
    """Any refusal of this decryptor."""


class WrongKey(SpecError):
    def __init__(self, detail: str = ""):
        super().__init__("wrong key" + (f": {detail}" if detail else ""))


class Modified(SpecError):
    def __init__(self, detail: str = ""):
        super().__init__("modified" + (f": {detail}" if detail else ""))


class UnsupportedVersion(SpecError):
    def __init__(self, detail: str = ""):
        super().__init__("unsupported version" + (f": {detail}" if detail else ""))


class Malformed(Modified):
    """The protection data is not well formed (bad base64, manifest, spans, ...).

    The spec does not name this case; a well-formed protected model only gets here
    by being changed, so it is reported as "modified" (as the reference binary does)."""

    def __init__(self, detail: str = ""):
        super().__init__("invalid protection data" + (f": {detail}" if detail else ""))


class NotProtected(SpecError):
    def __init__(self, detail: str = "no 'onnx-protect/v1' metadata_props entry"):
        super().__init__(f"not protected: {detail}")


class UnsafePath(SpecError):
    pass


# --------------------------------------------------------------------------
# Protobuf wire format (just enough).

WT_VARINT, WT_I64, WT_LEN, WT_SGROUP, WT_EGROUP, WT_I32 = 0, 1, 2, 3, 4, 5


def read_varint(buf, pos: int, end: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise Malformed("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            break
        shift += 7
        if shift >= 70:
            raise Malformed("varint too long")
    return result & 0xFFFFFFFFFFFFFFFF, pos


def encode_varint(v: int) -> bytes:
    if v < 0:
        v &= 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


@dataclass
class Field:
    number: int
    wire: int
    start: int  # offset of the tag
    vstart: int  # offset of the value (after the length prefix for WT_LEN)
    vend: int  # end of the value = end of the field
    value: int = 0  # for varint / fixed fields

    @property
    def end(self) -> int:
        return self.vend


def parse_fields(buf, start: int = 0, end: int | None = None) -> list[Field]:
    """All fields of the message occupying buf[start:end], in file order."""
    if end is None:
        end = len(buf)
    pos = start
    out = []
    while pos < end:
        tag_pos = pos
        key, pos = read_varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise Malformed(f"field number 0 at byte {tag_pos}")
        if wire == WT_VARINT:
            v, pos2 = read_varint(buf, pos, end)
            out.append(Field(number, wire, tag_pos, pos, pos2, v))
            pos = pos2
        elif wire == WT_I64:
            if pos + 8 > end:
                raise Malformed("truncated fixed64")
            out.append(Field(number, wire, tag_pos, pos, pos + 8, struct.unpack_from("<Q", buf, pos)[0]))
            pos += 8
        elif wire == WT_I32:
            if pos + 4 > end:
                raise Malformed("truncated fixed32")
            out.append(Field(number, wire, tag_pos, pos, pos + 4, struct.unpack_from("<I", buf, pos)[0]))
            pos += 4
        elif wire == WT_LEN:
            n, pos = read_varint(buf, pos, end)
            if pos + n > end:
                raise Malformed(f"length-delimited field {number} at byte {tag_pos} runs past its message")
            out.append(Field(number, wire, tag_pos, pos, pos + n))
            pos += n
        elif wire == WT_SGROUP:
            # Skip a (deprecated) group, nested groups included.
            depth = 1
            gstart = pos
            while depth:
                k, pos = read_varint(buf, pos, end)
                w = k & 7
                if w == WT_SGROUP:
                    depth += 1
                elif w == WT_EGROUP:
                    depth -= 1
                elif w == WT_VARINT:
                    _, pos = read_varint(buf, pos, end)
                elif w == WT_I64:
                    pos += 8
                elif w == WT_I32:
                    pos += 4
                elif w == WT_LEN:
                    n, pos = read_varint(buf, pos, end)
                    pos += n
                else:
                    raise Malformed("bad wire type in group")
                if pos > end:
                    raise Malformed("truncated group")
            out.append(Field(number, wire, tag_pos, gstart, pos))
        else:
            raise Malformed(f"bad wire type {wire} at byte {tag_pos}")
    if pos != end:
        raise Malformed("message overruns its length")
    return out


def decode_message(buf: bytes) -> dict[int, list[Field]]:
    by_num: dict[int, list[Field]] = {}
    for f in parse_fields(buf):
        by_num.setdefault(f.number, []).append(f)
    return by_num


def _last(fields: dict[int, list[Field]], num: int) -> Field | None:
    lst = fields.get(num)
    return lst[-1] if lst else None


def get_uint(buf, fields, num: int, default: int = 0) -> int:
    f = _last(fields, num)
    if f is None:
        return default
    if f.wire != WT_VARINT:
        raise Malformed(f"field {num}: expected a varint")
    return f.value


def get_bytes(buf, fields, num: int, default: bytes = b"") -> bytes:
    f = _last(fields, num)
    if f is None:
        return default
    if f.wire != WT_LEN:
        raise Malformed(f"field {num}: expected length-delimited")
    return bytes(buf[f.vstart:f.vend])


def get_str(buf, fields, num: int) -> str:
    try:
        return get_bytes(buf, fields, num).decode("utf-8")
    except UnicodeDecodeError as e:
        raise Malformed(f"field {num}: invalid UTF-8") from e


def get_packed_uints(buf, fields, num: int) -> list[int]:
    out = []
    for f in fields.get(num, []):
        if f.wire == WT_VARINT:
            out.append(f.value)
        elif f.wire == WT_LEN:
            p = f.vstart
            while p < f.vend:
                v, p = read_varint(buf, p, f.vend)
                out.append(v)
        else:
            raise Malformed(f"field {num}: bad wire type")
    return out


def to_int64(v: int) -> int:
    return v - (1 << 64) if v & (1 << 63) else v


# --------------------------------------------------------------------------
# Format constants (§2, §4, §5). ONNX TensorProto field numbers and data
# types are those of onnx.proto.

TP_DIMS, TP_DATA_TYPE, TP_FLOAT_DATA, TP_INT32_DATA = 1, 2, 4, 5
TP_INT64_DATA, TP_NAME, TP_RAW_DATA, TP_DOUBLE_DATA = 7, 8, 9, 10
TP_UINT64_DATA, TP_EXTERNAL_DATA, TP_DATA_LOCATION = 11, 13, 14
MODEL_METADATA_PROPS = 14

STORAGE_RAW, STORAGE_FLOAT, STORAGE_INT32, STORAGE_INT64 = 1, 2, 3, 4
STORAGE_DOUBLE, STORAGE_UINT64, STORAGE_EXTERNAL = 5, 6, 7
STORAGE_FIELD = {
    STORAGE_RAW: TP_RAW_DATA,
    STORAGE_FLOAT: TP_FLOAT_DATA,
    STORAGE_INT32: TP_INT32_DATA,
    STORAGE_INT64: TP_INT64_DATA,
    STORAGE_DOUBLE: TP_DOUBLE_DATA,
    STORAGE_UINT64: TP_UINT64_DATA,
}
STORAGE_NAMES = {1: "RAW_DATA", 2: "FLOAT_DATA", 3: "INT32_DATA", 4: "INT64_DATA",
                 5: "DOUBLE_DATA", 6: "UINT64_DATA", 7: "EXTERNAL"}
VARINT_STORAGES = (STORAGE_INT32, STORAGE_INT64, STORAGE_UINT64)

MODE_CTR, MODE_FP = 1, 2

# ONNX TensorProto.DataType -> (name, bits per element)
DTYPES = {
    1: ("FLOAT", 32), 2: ("UINT8", 8), 3: ("INT8", 8), 4: ("UINT16", 16), 5: ("INT16", 16),
    6: ("INT32", 32), 7: ("INT64", 64), 8: ("STRING", 0), 9: ("BOOL", 8), 10: ("FLOAT16", 16),
    11: ("DOUBLE", 64), 12: ("UINT32", 32), 13: ("UINT64", 64), 14: ("COMPLEX64", 64),
    15: ("COMPLEX128", 128), 16: ("BFLOAT16", 16), 17: ("FLOAT8E4M3FN", 8),
    18: ("FLOAT8E4M3FNUZ", 8), 19: ("FLOAT8E5M2", 8), 20: ("FLOAT8E5M2FNUZ", 8),
    21: ("UINT4", 4), 22: ("INT4", 4), 23: ("FLOAT4E2M1", 4), 24: ("FLOAT8E8M0", 8),
    25: ("UINT2", 2), 26: ("INT2", 2),
}

# §5 format-preserving masks, little-endian bytes of one element.
FP_MASKS = {
    "FLOAT": b"\xff\xff\x7f\x80", "COMPLEX64": b"\xff\xff\x7f\x80",
    "DOUBLE": b"\xff\xff\xff\xff\xff\xff\x0f\x80", "COMPLEX128": b"\xff\xff\xff\xff\xff\xff\x0f\x80",
    "FLOAT16": b"\xff\x83", "BFLOAT16": b"\x7f\x80",
    "FLOAT8E4M3FN": b"\x87", "FLOAT8E4M3FNUZ": b"\x87",
    "FLOAT8E5M2": b"\x83", "FLOAT8E5M2FNUZ": b"\x83",
    "FLOAT4E2M1": b"\x99", "BOOL": b"\x01",
    "UINT8": b"\xff", "INT8": b"\xff", "UINT4": b"\xff", "INT4": b"\xff", "UINT2": b"\xff", "INT2": b"\xff",
    "UINT16": b"\xff\xff", "INT16": b"\xff\xff",
    "INT32": b"\xff" * 4, "UINT32": b"\xff" * 4,
    "INT64": b"\xff" * 8, "UINT64": b"\xff" * 8,
}

# §4 varint width w (element bytes per stored value) and sign extension.
SIGN_EXTENDED = {"INT8", "INT16", "INT32", "INT64"}


def varint_width(dtype_name: str, bits: int) -> int:
    if bits <= 8:
        return 1  # 8-bit types, BOOL, 4-/2-bit types (one packed byte per value)
    if bits == 16:
        return 2
    if dtype_name in ("INT32", "UINT32"):
        return 4
    if dtype_name in ("INT64", "UINT64"):
        return 8
    raise Malformed(f"data type {dtype_name} cannot be varint-stored")


def element_size(dtype_name: str, bits: int) -> int:
    """Element size in bytes for the format-preserving alignment rule (1 for sub-byte types)."""
    return max(1, bits // 8)


def numel_nbytes(dims: list[int], bits: int) -> int:
    n = 1
    for d in dims:
        if d < 0:
            raise Modified("negative dimension")
        n *= d
    return (n * bits + 7) // 8


# --------------------------------------------------------------------------
# Key derivation (§6).

LABEL_TENSOR = b"onnx-protect/v1/tensor"
LABEL_MAC = b"onnx-protect/v1/mac"
LABEL_KCV = b"onnx-protect/v1/key-check"
LABEL_CHUNK = b"onnx-protect/v1/chunk"
LABEL_MAC_INPUT = b"onnx-protect/v1/mac-input"
LABEL_CHECKSUM = b"onnx-protect/v1/checksum"


def u64be(v: int) -> bytes:
    return struct.pack(">Q", v)


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    return hmac.new(salt, ikm, hashlib.sha256).digest()


def hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    out, t, i = b"", b"", 1
    while len(out) < length:
        t = hmac.new(prk, t + info + bytes([i]), hashlib.sha256).digest()
        out += t
        i += 1
    return out[:length]


def argon2id(passphrase: bytes, salt: bytes, m_kib: int, t: int, p: int) -> bytes:
    from cryptography.hazmat.primitives.kdf.argon2 import Argon2id  # cryptography >= 44

    return Argon2id(salt=salt, length=32, iterations=t, lanes=p, memory_cost=m_kib).derive(passphrase)


def keystream(k_s: bytes, begin: int, end: int) -> bytes:
    """k(o) for o in [begin, end): AES-256-CTR, counter block = u128be(o // 16)."""
    if end <= begin:
        return b""
    first_block = begin // 16
    skip = begin - first_block * 16
    enc = Cipher(algorithms.AES(k_s), modes.CTR(first_block.to_bytes(16, "big"))).encryptor()
    ks = enc.update(bytes(skip + (end - begin)))
    return ks[skip:]


def xor_span(data: bytes, k: bytes, begin: int, mask: bytes | None) -> bytes:
    """XOR keystream k (for element offsets begin..) into data, masked for fp mode."""
    if mask is None:
        return bytes(a ^ b for a, b in zip(data, k))
    m = len(mask)
    return bytes(a ^ (b & mask[(begin + i) % m]) for i, (a, b) in enumerate(zip(data, k)))


try:  # numpy makes large XORs fast; optional
    import numpy as _np

    def xor_span(data, k, begin, mask):  # noqa: F811
        a = _np.frombuffer(bytes(data), dtype=_np.uint8)
        b = _np.frombuffer(bytes(k), dtype=_np.uint8)
        if mask is not None:
            m = _np.frombuffer(mask, dtype=_np.uint8)
            idx = (_np.arange(len(a), dtype=_np.int64) + begin) % len(mask)
            b = b & m[idx]
        return (a ^ b).tobytes()
except ImportError:  # pragma: no cover
    pass


# --------------------------------------------------------------------------
# Manifest decoding (§2).


@dataclass
class Entry:
    stream_id: int
    locator: str
    name: str
    data_type: int
    storage: int
    nbytes: int
    mode: int
    spans: list[tuple[int, int]]


@dataclass
class Manifest:
    raw: bytes
    format_version: int
    salt: bytes
    key_check: bytes
    kdf: dict | None
    entries: list[Entry]
    chunk_size: int
    tool: str = ""
    leaf_hash: int = 0  # §7: 0 = SHA-256, 1 = BLAKE3


def parse_manifest(m: bytes) -> Manifest:
    f = decode_message(m)
    version = get_uint(m, f, 1)
    if version != 1:
        raise UnsupportedVersion(f"manifest format_version {version}")
    salt = get_bytes(m, f, 2)
    kcv = get_bytes(m, f, 3)
    kdf = None
    kf = _last(f, 4)
    if kf is not None:
        if kf.wire != WT_LEN:
            raise Malformed("kdf: expected a message")
        kb = m[kf.vstart:kf.vend]
        kff = decode_message(kb)
        kdf = {
            "algorithm": get_str(kb, kff, 1),
            "salt": get_bytes(kb, kff, 2),
            "m_cost_kib": get_uint(kb, kff, 3),
            "t_cost": get_uint(kb, kff, 4),
            "p_cost": get_uint(kb, kff, 5),
        }
    entries = []
    for tf in f.get(5, []):
        if tf.wire != WT_LEN:
            raise Malformed("tensors: expected a message")
        tb = m[tf.vstart:tf.vend]
        tff = decode_message(tb)
        flat = get_packed_uints(tb, tff, 8)
        if len(flat) % 2:
            raise Malformed("spans: odd number of values")
        entries.append(Entry(
            stream_id=get_uint(tb, tff, 1),
            locator=get_str(tb, tff, 2),
            name=get_str(tb, tff, 3),
            data_type=to_int64(get_uint(tb, tff, 4)),
            storage=get_uint(tb, tff, 5),
            nbytes=get_uint(tb, tff, 6),
            mode=get_uint(tb, tff, 7),
            spans=[(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)],
        ))
    man = Manifest(m, version, salt, kcv, kdf, entries, get_uint(m, f, 8), get_str(m, f, 6), get_uint(m, f, 11))
    if man.leaf_hash not in LEAF_HASHES:
        raise Malformed(f"unknown leaf_hash {man.leaf_hash}")
    if len(man.salt) != 32:
        raise Malformed(f"salt is {len(man.salt)} bytes, not 32")
    if len(man.key_check) != 16:
        raise Malformed(f"key_check is {len(man.key_check)} bytes, not 16")
    if not 4096 <= man.chunk_size <= 1 << 30:
        raise Malformed(f"chunk_size {man.chunk_size} outside [4096, 2^30]")
    return man


# --------------------------------------------------------------------------
# §1: finding the envelope.

KEY_RE = re.compile(r"^onnx-protect/v[0-9]")


def find_envelope(model: bytes) -> tuple[Field, bytes]:
    """Return the top-level metadata_props field holding the manifest and its value."""
    found = []
    for f in parse_fields(model):
        if f.number != MODEL_METADATA_PROPS or f.wire != WT_LEN:
            continue
        sub = decode_message(model[f.vstart:f.vend])
        eb = model[f.vstart:f.vend]
        try:
            key = get_str(eb, sub, 1)
        except Malformed:
            continue
        if KEY_RE.match(key):
            found.append((key, f, get_bytes(eb, sub, 2)))
    if not found:
        raise NotProtected()
    for key, _, _ in found:
        if key != "onnx-protect/v1":
            raise UnsupportedVersion(f"metadata key {key!r}")
    if len(found) > 1:
        raise Modified("more than one 'onnx-protect/v1' metadata_props entry")
    _, f, value = found[0]
    try:
        env = base64.b64decode(value, validate=True)
    except Exception as e:  # binascii.Error, ValueError
        raise Malformed("envelope is not valid base64") from e
    return f, env


# --------------------------------------------------------------------------
# §3 and §4: locating a tensor and its element bytes.


def parse_locator(loc: str) -> list[tuple[int, int]]:
    steps = []
    for s in loc.split("/"):
        m = re.fullmatch(r"([0-9]+)\.([0-9]+)", s)
        if not m:
            raise Modified(f"bad locator {loc!r}")
        steps.append((int(m.group(1)), int(m.group(2))))
    if not steps:
        raise Modified(f"bad locator {loc!r}")
    return steps


def locate(model, steps) -> list[Field]:
    """Walk the locator. Returns the chain of length-delimited fields, outermost first."""
    chain = []
    start, end = 0, len(model)
    for num, idx in steps:
        seen = 0
        hit = None
        for f in parse_fields(model, start, end):
            if f.number == num:
                if seen == idx:
                    hit = f
                    break
                seen += 1
        if hit is None or hit.wire != WT_LEN:
            raise Modified(f"locator step {num}.{idx} does not exist")
        chain.append(hit)
        start, end = hit.vstart, hit.vend
    return chain


@dataclass
class Located:
    entry: Entry
    chain: list[Field]
    # raw/float/double storage: where the element bytes sit in the model file,
    # as (file offset, length) pieces in element order; empty for varint and external
    segments: list[tuple[int, int]] = field(default_factory=list)
    varint_values: list[int] | None = None
    ext_location: str | None = None
    ext_path: str | None = None
    ext_offset: int = 0
    element_bytes: bytes = b""


def safe_external_path(model_dir: str, location: str) -> str:
    if not location:
        raise UnsafePath("external data location is empty")
    if os.path.isabs(location) or location.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", location):
        raise UnsafePath(f"external data location {location!r} is absolute")
    parts = re.split(r"[/\\]", location)
    if ".." in parts:
        raise UnsafePath(f"external data location {location!r} has a '..' component")
    base = os.path.realpath(model_dir)
    path = os.path.join(base, *[p for p in parts if p not in ("", ".")])
    return path


def read_tensor(model, entry: Entry, model_dir: str | None) -> Located:
    chain = locate(model, parse_locator(entry.locator))
    t = chain[-1]
    tb = model[t.vstart:t.vend]
    tf = decode_message(tb)
    name = get_str(tb, tf, TP_NAME)
    data_type = to_int64(get_uint(tb, tf, TP_DATA_TYPE))
    dims = [to_int64(v) for v in get_packed_uints(tb, tf, TP_DIMS)]
    if name != entry.name:
        raise Modified(f"{entry.locator}: tensor name {name!r} != manifest {entry.name!r}")
    if data_type != entry.data_type:
        raise Modified(f"{entry.locator}: data_type {data_type} != manifest {entry.data_type}")
    if data_type not in DTYPES:
        raise Modified(f"{entry.locator}: unknown data_type {data_type}")
    dname, bits = DTYPES[data_type]
    if numel_nbytes(dims, bits) != entry.nbytes:
        raise Modified(f"{entry.locator}: dims give {numel_nbytes(dims, bits)} bytes, manifest says {entry.nbytes}")

    external = get_uint(tb, tf, TP_DATA_LOCATION) == 1
    if external:
        storage = STORAGE_EXTERNAL
    elif TP_RAW_DATA in tf:
        storage = STORAGE_RAW
    else:
        storage = entry.storage if entry.storage in STORAGE_FIELD and STORAGE_FIELD[entry.storage] in tf else None
    if storage != entry.storage:
        raise Modified(f"{entry.locator}: storage kind does not match manifest "
                       f"({STORAGE_NAMES.get(entry.storage, entry.storage)})")

    loc = Located(entry, chain)
    base = t.vstart
    if storage == STORAGE_RAW:
        f = tf[TP_RAW_DATA][-1]  # protobuf: the last occurrence of a bytes field wins
        if f.wire != WT_LEN:
            raise Modified("raw_data is not length-delimited")
        loc.segments = [(base + f.vstart, f.vend - f.vstart)]
    elif storage in (STORAGE_FLOAT, STORAGE_DOUBLE):
        width = 4 if storage == STORAGE_FLOAT else 8
        wire_unpacked = WT_I32 if width == 4 else WT_I64
        for f in tf[STORAGE_FIELD[storage]]:
            if f.wire == WT_LEN:
                if (f.vend - f.vstart) % width:
                    raise Modified("packed float/double payload not a multiple of the element width")
                loc.segments.append((base + f.vstart, f.vend - f.vstart))
            elif f.wire == wire_unpacked:
                loc.segments.append((base + f.vstart, width))
            else:
                raise Modified("float_data/double_data with a wrong wire type")
    elif storage in VARINT_STORAGES:
        w = varint_width(dname, bits)
        values = get_packed_uints(tb, tf, STORAGE_FIELD[storage])
        loc.varint_values = values
        loc.element_bytes = b"".join((v & ((1 << (8 * w)) - 1)).to_bytes(w, "little") for v in values)
    elif storage == STORAGE_EXTERNAL:
        kv = {}
        for f in tf.get(TP_EXTERNAL_DATA, []):
            eb = tb[f.vstart:f.vend]
            ef = decode_message(eb)
            kv[get_str(eb, ef, 1)] = get_str(eb, ef, 2)
        if model_dir is None:
            raise SpecError(f"{entry.locator}: external data needs model_dir")
        location = kv.get("location", "")
        path = safe_external_path(model_dir, location)
        if not os.path.isfile(path):
            raise SpecError(f"external data file {location!r} missing")
        size = os.path.getsize(path)
        try:
            offset = int(kv.get("offset", "0"), 10)
            length = int(kv["length"], 10) if "length" in kv else size - offset
        except ValueError as e:
            raise Modified(f"{entry.locator}: bad external offset/length") from e
        if offset < 0 or length < 0 or offset + length > size:
            raise Modified(f"{entry.locator}: external range past the end of {location!r}")
        with open(path, "rb") as fh:
            fh.seek(offset)
            loc.element_bytes = fh.read(length)
        loc.ext_location, loc.ext_path, loc.ext_offset = location, path, offset
    else:
        raise Modified(f"{entry.locator}: unsupported storage {entry.storage}")

    if loc.segments:
        loc.element_bytes = b"".join(bytes(model[o:o + n]) for o, n in loc.segments)
    if len(loc.element_bytes) != entry.nbytes:
        raise Modified(f"{entry.locator}: stored element bytes are {len(loc.element_bytes)}, "
                       f"manifest says {entry.nbytes}")
    return loc


def check_spans(entry: Entry):
    if entry.mode not in (MODE_CTR, MODE_FP):
        raise Malformed(f"{entry.locator}: unknown mode {entry.mode}")
    if not entry.spans:
        raise Malformed(f"{entry.locator}: no spans")
    dname, bits = DTYPES[entry.data_type]
    if entry.mode == MODE_FP and dname not in FP_MASKS:
        raise Malformed(f"{entry.locator}: {dname} has no format-preserving mask")
    esize = element_size(dname, bits)
    prev_end = -1
    for b, e in entry.spans:
        if not b < e:
            raise Malformed(f"{entry.locator}: empty or reversed span [{b}, {e})")
        if e > entry.nbytes:
            raise Malformed(f"{entry.locator}: span [{b}, {e}) past nbytes {entry.nbytes}")
        if b <= prev_end:
            raise Malformed(f"{entry.locator}: spans not sorted, disjoint and non-adjacent")
        if entry.mode == MODE_FP and (b % esize or e % esize):
            raise Malformed(f"{entry.locator}: span [{b}, {e}) not element-aligned")
        prev_end = e


# --------------------------------------------------------------------------
# §7 integrity.


def _blake3(data: bytes) -> bytes:
    import blake3  # PyPI `blake3`, only needed for manifests with leaf_hash = 1

    return blake3.blake3(data).digest()


LEAF_HASHES = {0: lambda data: hashlib.sha256(data).digest(), 1: _blake3}


def leaves(located: list[Located], chunk_size: int, leaf_hash: int) -> bytes:
    h = LEAF_HASHES[leaf_hash]
    out = []
    for loc in located:
        c = b"".join(loc.element_bytes[b:e] for b, e in loc.entry.spans)
        s = u64be(loc.entry.stream_id)
        for j, off in enumerate(range(0, len(c), chunk_size)):
            out.append(h(LABEL_CHUNK + s + u64be(j) + c[off:off + chunk_size]))
    return b"".join(out)


# --------------------------------------------------------------------------
# §4 varint write-back.


def encode_varint_field(field_no: int, element_bytes: bytes, dname: str, w: int) -> bytes:
    payload = bytearray()
    for i in range(0, len(element_bytes), w):
        v = int.from_bytes(element_bytes[i:i + w], "little")
        if dname in SIGN_EXTENDED and v >> (8 * w - 1):
            v -= 1 << (8 * w)  # sign-extend to 64 bits
        payload += encode_varint(v)
    return encode_varint((field_no << 3) | WT_LEN) + encode_varint(len(payload)) + bytes(payload)


def rewrite_varint_tensor(model: bytes, entry: Entry, element_bytes: bytes) -> bytes:
    chain = locate(model, parse_locator(entry.locator))
    t = chain[-1]
    tb = model[t.vstart:t.vend]
    fno = STORAGE_FIELD[entry.storage]
    dname, bits = DTYPES[entry.data_type]
    new_field = encode_varint_field(fno, element_bytes, dname, varint_width(dname, bits))
    parts, placed, pos = [], False, 0
    for f in parse_fields(tb):
        if f.number == fno:
            parts.append(tb[pos:f.start])
            if not placed:
                parts.append(new_field)
                placed = True
            pos = f.end
    parts.append(tb[pos:])
    new_body = b"".join(parts)
    # Re-wrap with canonical length prefixes, innermost first.
    for i in reversed(range(len(chain))):
        f = chain[i]
        _, after_key = read_varint(model, f.start, f.vstart)
        new_field_bytes = model[f.start:after_key] + encode_varint(len(new_body)) + new_body
        if i == 0:
            return model[:f.start] + new_field_bytes + model[f.end:]
        parent = chain[i - 1]
        new_body = model[parent.vstart:f.start] + new_field_bytes + model[f.end:parent.vend]
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------
# Decryption (§8).


def _master_key(man: Manifest, key: bytes | None, passphrase: bytes | None) -> bytes:
    if key is not None:
        if len(key) != 32:
            raise SpecError("the master key must be 32 bytes")
        return key
    if passphrase is None:
        raise SpecError("a key or a passphrase is needed")
    kdf = man.kdf
    if kdf is None:
        raise WrongKey("the model was encrypted with a key, not a passphrase")
    if kdf["algorithm"] != "argon2id":
        raise Malformed(f"kdf algorithm {kdf['algorithm']!r}")
    m, t, p = kdf["m_cost_kib"], kdf["t_cost"], kdf["p_cost"]
    if not (8 <= m <= 1048576 and 1 <= t <= 64 and 1 <= p <= 16 and m >= 8 * p):
        raise Malformed(f"argon2 parameters out of range (m={m}, t={t}, p={p})")
    if len(kdf["salt"]) != 16:
        raise Malformed("kdf salt is not 16 bytes")
    return argon2id(passphrase, kdf["salt"], m, t, p)


def decrypt_all(model_bytes: bytes, key: bytes | None = None, passphrase: bytes | None = None,
                model_dir: str | None = None) -> tuple[bytes, dict[str, bytes]]:
    """Decrypt a protected model. Returns (original model bytes, {location: restored side file}).

    A format-2 model (an `onnx-protect/v2` entry) is handed to spec_v2.decrypt_all, whose
    §1 rules (one manifest key at most, known versions only) apply to every model."""
    model = bytes(model_bytes)
    import spec_v2

    if spec_v2.manifest_version(model) == 2:
        return spec_v2.decrypt_all(model, key=key, passphrase=passphrase, model_dir=model_dir)
    # 1. envelope and manifest
    env_field, env = find_envelope(model)
    ef = decode_message(env)
    manifest_bytes = get_bytes(env, ef, 1)
    mac = get_bytes(env, ef, 2)
    checksum = get_bytes(env, ef, 3)
    man = parse_manifest(manifest_bytes)
    if len(mac) != 32 or len(checksum) != 32:
        raise Malformed("mac and checksum must be 32 bytes")

    # 2. locate and check tensors, spans, uniqueness
    located = []
    streams, locators = set(), set()
    for e in man.entries:
        if e.stream_id in streams:
            raise Malformed(f"stream id {e.stream_id} used twice")
        steps = tuple(parse_locator(e.locator))  # "5.00" and "5.0" are the same tensor
        if steps in locators:
            raise Malformed(f"tensor {e.locator} listed twice")
        streams.add(e.stream_id)
        locators.add(steps)
        loc = read_tensor(model, e, model_dir)
        check_spans(e)
        located.append(loc)

    # 3. keys, KCV, MAC, checksum
    master = _master_key(man, key, passphrase)
    prk = hkdf_extract(man.salt, master)
    if not hmac.compare_digest(hkdf_expand(prk, LABEL_KCV, 16), man.key_check):
        raise WrongKey()
    k_mac = hkdf_expand(prk, LABEL_MAC, 32)
    L = leaves(located, man.chunk_size, man.leaf_hash)
    M = man.raw
    msg = u64be(len(M)) + M + L
    if not hmac.compare_digest(hmac.new(k_mac, LABEL_MAC_INPUT + msg, hashlib.sha256).digest(), mac):
        raise Modified("MAC mismatch")
    if not hmac.compare_digest(hashlib.sha256(LABEL_CHECKSUM + msg).digest(), checksum):
        raise Modified("checksum mismatch")

    # 4. XOR the keystreams
    out = bytearray(model)
    side: dict[str, bytearray] = {}
    side_paths: dict[str, str] = {}
    varint_plain = []
    for loc in located:
        e = loc.entry
        dname, _ = DTYPES[e.data_type]
        mask = FP_MASKS[dname] if e.mode == MODE_FP else None
        k_s = hkdf_expand(prk, LABEL_TENSOR + u64be(e.stream_id), 32)
        plain = bytearray(loc.element_bytes)
        for b, en in e.spans:
            plain[b:en] = xor_span(plain[b:en], keystream(k_s, b, en), b, mask)
        if e.storage in VARINT_STORAGES:
            varint_plain.append((e, bytes(plain)))
        elif e.storage == STORAGE_EXTERNAL:
            real = os.path.realpath(loc.ext_path)
            if real not in side:
                with open(loc.ext_path, "rb") as fh:
                    side[real] = bytearray(fh.read())
                side_paths[real] = loc.ext_location
            side[real][loc.ext_offset:loc.ext_offset + e.nbytes] = plain
        else:
            pos = 0
            for off, n in loc.segments:
                out[off:off + n] = plain[pos:pos + n]
                pos += n

    # 5. remove the entry (top-level, no enclosing length), then re-encode varint tensors
    result = bytes(out[:env_field.start] + out[env_field.end:])
    for e, plain in varint_plain:
        result = rewrite_varint_tensor(result, e, plain)
    return result, {side_paths[r]: bytes(b) for r, b in side.items()}


def decrypt(model_bytes: bytes, key: bytes | None = None, passphrase: bytes | None = None,
            model_dir: str | None = None, out_dir: str | None = None) -> bytes:
    """Decrypt; returns the original model bytes. Restored external-data files are
    written into out_dir (under their `location`) when out_dir is given."""
    result, side = decrypt_all(model_bytes, key, passphrase, model_dir)
    if side:
        if out_dir is None:
            raise SpecError("the model has external data: pass out_dir, or use decrypt_all()")
        write_side_files(out_dir, side)
    return result


def write_side_files(out_dir: str, side: dict[str, bytes]):
    for location, data in side.items():
        path = safe_external_path(out_dir, location)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".spec-tmp"
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)


def parse_key_file(data: bytes) -> bytes:
    """A key file (docs/format.md, appendix): a `onnx-protect-key-v1` key line among `#` comments,
    or the older forms, 32 raw bytes or 64 hex digits. Any kind of key is returned."""
    if len(data) == 32:
        return data
    if len(data) > 4096:
        raise SpecError("key file: larger than 4096 bytes")
    lines = [line.strip(b" \t\r") for line in data.split(b"\n")]
    if any(line.startswith(b"onnx-protect-key-") for line in lines):
        keys = [line for line in lines if line and not line.startswith(b"#")]
        if len(keys) != 1:
            raise SpecError("key file: expected exactly one key line and comments")
        m = re.fullmatch(rb"onnx-protect-key-v1[ \t]+(?:master[ \t]+tiers=([1-9][0-9]?)|tier=([1-9][0-9]?))"
                         rb"[ \t]+([0-9a-fA-F]{64})", keys[0])
        if not m or int(m.group(1) or m.group(2)) > 16:
            raise SpecError("key file: malformed key line")
        return bytes.fromhex(m.group(3).decode())
    text = data.strip()
    if len(text) == 64 and re.fullmatch(rb"[0-9a-fA-F]{64}", text):
        return bytes.fromhex(text.decode())
    raise SpecError("key file: expected a key line, 64 hex digits or 32 raw bytes")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("input")
    ap.add_argument("output")
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--key-file")
    g.add_argument("--passphrase-env")
    g.add_argument("--passphrase-file")
    a = ap.parse_args(argv)
    key = passphrase = None
    if a.key_file:
        with open(a.key_file, "rb") as fh:
            key = parse_key_file(fh.read())
    elif a.passphrase_env:
        passphrase = os.environ[a.passphrase_env].encode("utf-8")
    else:
        with open(a.passphrase_file, "rb") as fh:
            passphrase = fh.read().split(b"\n", 1)[0].rstrip(b"\r")
    with open(a.input, "rb") as fh:
        model = fh.read()
    try:
        result, side = decrypt_all(model, key, passphrase, os.path.dirname(os.path.abspath(a.input)))
    except SpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    out_dir = os.path.dirname(os.path.abspath(a.output))
    write_side_files(out_dir, side)
    with open(a.output, "wb") as fh:
        fh.write(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
