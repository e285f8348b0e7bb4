"""The independent format-2 reader and writer (spec_v2.py, written from the format-2
text alone): round trips on every fixture model, access tiers and partial
decryption, every recipient kind, signatures, and one test per refusal. The
Rust-made vectors (fixtures/vectors/*_v2*, layout in tests/python/VECTORS-V2.md)
are decrypted when they exist.

Needs `cryptography`, `blake3`, numpy, `onnx` (only to check that protected files
are still ONNX models) and `pyrage` (only for the age interoperability tests).
"""
import base64
import hashlib
import json
import os
import pathlib
import random
import re
import shutil
import struct
import subprocess
import sys

import pytest

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import spec_age  # noqa: E402
import spec_decryptor as sd  # noqa: E402
import spec_v2 as v2  # noqa: E402

ROOT = HERE.parents[1]
MODELS_DIR = ROOT / "fixtures" / "models"
CASES = sorted(p.name for p in MODELS_DIR.iterdir() if (p / "model.onnx").is_file())
VECTORS = ROOT / "fixtures" / "vectors"
V2_VECTORS = sorted(p for p in VECTORS.glob("*_v2*") if p.is_dir())
MALFORMED = ROOT / "fixtures" / "malformed"

REFUSALS = (v2.Modified, v2.MalformedModel, v2.NotProtected, v2.UnsupportedVersion)
FAST_ARGON = dict(m_cost_kib=64, t_cost=1, p_cost=1)


# --------------------------------------------------------------------------
# helpers


def copy_case(case, dest):
    dest.mkdir(parents=True, exist_ok=True)
    for f in (MODELS_DIR / case).iterdir():
        if f.is_file() and f.name != "expected.json":
            shutil.copy(f, dest / f.name)
    return dest / "model.onnx"


def write_side(dest, side):
    for loc, data in side.items():
        (dest / loc).write_bytes(data)


def spans_for(t, mode, rng, several=True):
    """Element-aligned spans covering about half of the tensor, in several pieces."""
    e = v2.element_size(t.data_type)
    n = t.nbytes // e
    if mode == "dp":
        if v2.DTYPES[t.data_type][1] < 8 or n < 16:
            return None
        third = max(32, n // 2)
        if n - third >= 16 and several:
            return [(0, 16 * e), (16 * e, 32 * e), (third * e, n * e)]  # adjacent units allowed in dp
        return [(0, n * e)]
    if mode == "fp" and t.data_type not in v2.FP_MASKS:
        return None
    if n == 0:
        return None
    if not several or n < 4:
        return [(0, n * e)]
    cuts = sorted(rng.sample(range(1, n), 3))
    return [(0, cuts[0] * e), (cuts[1] * e, cuts[2] * e)]


def plan_for(model, model_dir, mode, seed=0, tiers=1):
    rng = random.Random(seed)
    plan = []
    for t in v2.encryptable(model, model_dir):
        spans = spans_for(t, mode, rng)
        if not spans:
            continue
        if tiers > 1 and t.storage not in v2.VARINT_STORAGES and len(spans) >= 2:
            # one tensor in two tiers: disjoint spans
            plan.append({"locator": t.locator, "mode": mode, "spans": spans[:1], "tier": rng.randint(1, tiers)})
            rest = [x for x in range(1, tiers + 1) if x != plan[-1]["tier"]]
            plan.append({"locator": t.locator, "mode": mode, "spans": spans[1:], "tier": rng.choice(rest)})
        else:
            tier = tiers if t.storage in v2.VARINT_STORAGES else rng.randint(1, tiers)
            plan.append({"locator": t.locator, "mode": mode, "spans": spans, "tier": tier})
    return plan


class Protected:
    """A protected copy of a fixture case in its own directory."""

    def __init__(self, tmp, case, mode="ctr", tiers=1, recipients=None, signing_keys=(), chunk_size=1 << 16,
                 seed=0, plan=None):
        self.src = copy_case(case, tmp / "src")
        self.original = self.src.read_bytes()
        self.originals = {f.name: f.read_bytes() for f in self.src.parent.iterdir() if f.name != "model.onnx"}
        self.keys = {t: os.urandom(32) for t in range(1, tiers + 1)}
        self.recipients = recipients if recipients is not None else [
            v2.KeyRecipient(self.keys[t], t) for t in range(1, tiers + 1)]
        self.plan = plan if plan is not None else plan_for(self.original, str(self.src.parent), mode, seed, tiers)
        assert self.plan, f"{case}: nothing to encrypt in mode {mode}"
        self.model, side = v2.spec_encrypt_v2(self.original, self.plan, self.recipients, tiers=tiers,
                                              signing_keys=signing_keys, model_dir=str(self.src.parent),
                                              model_name="model.onnx", chunk_size=chunk_size)
        self.dir = tmp / "protected"
        self.dir.mkdir()
        for f in self.src.parent.iterdir():
            if f.name != "model.onnx":
                shutil.copy(f, self.dir / f.name)
        write_side(self.dir, side)
        self.side = side
        self.tiers = tiers
        self.top = self.keys.get(tiers)

    def decrypt(self, model=None, **kw):
        kw.setdefault("model_dir", str(self.dir))
        return v2.decrypt_all(self.model if model is None else model, **kw)


def envelope_parts(model):
    (key, f, value), = v2.manifest_entries(model)
    env = v2.decode("Envelope", base64.b64decode(value))
    return model[:f.start], env, v2.decode("Header", env["header"]), v2.decode("Recipients", env["recipients"])


def entry(env_bytes):
    return v2._entry_bytes(b"onnx-protect/v2", base64.b64encode(env_bytes))


def reseal(model, header=None, recipients=None, env_fn=None, content=None, macs_with=None, raw_header=None,
           raw_recipients=None):
    """Rebuild the entry after changes, with a valid checksum (what anyone can do without a key).
    `macs_with`: {tier: TierKeys} whose MACs are recomputed (what a key holder can do)."""
    c, env, h, r = envelope_parts(model)
    if header:
        header(h)
    if recipients:
        recipients(r)
    env["header"] = raw_header if raw_header is not None else v2.encode("Header", h)
    env["recipients"] = raw_recipients if raw_recipients is not None else v2.encode("Recipients", r)
    if env_fn:
        env_fn(env)
    if macs_with:
        T = v2.mac_input(env["header"], env["recipients"], env["content_digest"])
        for t, k in macs_with.items():
            env["macs"][t - 1] = v2.tier_mac(k, t, T)
    env["checksum"] = b""
    env["checksum"] = v2.checksum_of(v2.encode("Envelope", env))
    return (c if content is None else content) + entry(v2.encode("Envelope", env))


def nonminimal_varint(n):
    b = sd.encode_varint(n)
    return b[:-1] + bytes([b[-1] | 0x80, 0x00])


def flip(b, i, bit=0x01):
    out = bytearray(b)
    out[i] ^= bit
    return bytes(out)


# --------------------------------------------------------------------------
# §4: the walk finds what fixtures/gen/describe.py (with onnx) found


STORAGE_OF_DESCRIBE = {"raw_data": v2.S_RAW, "float_data": v2.S_FLOAT, "int32_data": v2.S_INT32,
                       "int64_data": v2.S_INT64, "double_data": v2.S_DOUBLE, "uint64_data": v2.S_UINT64,
                       "external": v2.S_EXTERNAL, "empty": None, "string_data": None}


@pytest.mark.parametrize("case", CASES)
def test_walk_finds_every_tensor_of_expected_json(case):
    d = MODELS_DIR / case
    expected = json.loads((d / "expected.json").read_text())["tensors"]
    got = v2.walk((d / "model.onnx").read_bytes(), v2.Files(str(d), "model.onnx"))
    # describe.py lists initializers before node attributes; the walk is in file order
    assert sorted((t.name, t.data_type, t.dims, t.storage or 0, t.nbytes) for t in got) == \
        sorted((x["name"], x["data_type"], x["dims"], STORAGE_OF_DESCRIBE[x["storage"]] or 0, x["nbytes"])
               for x in expected)
    offsets = [t.chain_start for t in got]
    assert offsets == sorted(offsets)


# --------------------------------------------------------------------------
# round trips on every fixture case and mode


def test_every_storage_case_is_exercised():
    kinds = set()
    for case in CASES:
        d = MODELS_DIR / case
        for t in v2.encryptable((d / "model.onnx").read_bytes(), str(d)):
            kinds.add(v2.STORAGE_NAMES[t.storage])
    assert kinds == set(v2.STORAGE_NAMES.values())


@pytest.mark.parametrize("mode", ["ctr", "fp", "dp"])
@pytest.mark.parametrize("case", CASES)
def test_round_trip(case, mode, tmp_path):
    try:
        p = Protected(tmp_path, case, mode)
    except AssertionError:
        pytest.skip(f"{case} has no tensor for mode {mode}")
    import onnx

    m = onnx.load_from_string(p.model)  # still an ONNX model, the entry is the last metadata_props
    assert m.metadata_props[-1].key == "onnx-protect/v2"
    changed = p.model[:len(p.original)] != p.original or any(p.side[k] != p.originals[k] for k in p.side)
    assert changed, "nothing was encrypted"
    out, side = p.decrypt(key=p.top)
    assert out == p.original
    assert side == {k: p.originals[k] for k in side}
    with pytest.raises(v2.WrongKey):
        p.decrypt(key=os.urandom(32))
    v2.verify(p.model, model_dir=str(p.dir))  # keyless


def test_bytes_outside_spans_are_unchanged(tmp_path):
    p = Protected(tmp_path, "cnn_torch", "ctr")
    op = v2.open_model(p.model, str(p.dir))
    orig = v2.walk(p.original, v2.Files(None, None))
    for e, t, pairs in op.entries:
        plain = v2.element_bytes(p.original, next(x for x in orig if x.locator == t.locator), None)
        stored = v2.element_bytes(op.content, t, None)
        inside = set()
        for b, en in pairs:
            inside.update(range(b, en))
        assert all(plain[i] == stored[i] for i in range(t.nbytes) if i not in inside)
        assert sum(plain[i] != stored[i] for i in inside) > len(inside) // 2


def test_varint_storage_is_reencoded_and_restored(tmp_path):
    p = Protected(tmp_path, "typed_fields", "ctr")
    op = v2.open_model(p.model, str(p.dir))
    varint = [e for e, t, _ in op.entries if t.storage in v2.VARINT_STORAGES]
    assert {e["storage"] for e in varint} == {v2.S_INT32, v2.S_INT64, v2.S_UINT64}
    assert len(op.content) != len(p.original)  # negative varints grew or shrank
    out, _ = p.decrypt(key=p.top)
    assert out == p.original


def test_fp_keeps_exponents(tmp_path):
    """§6: MODE_FORMAT_PRESERVING leaves the exponent bits of FLOAT and FLOAT16 in clear."""
    for case, (dt, mask) in (("cnn_torch", (1, 0x7F80)), ("fp16", (10, 0x7C00))):
        p = Protected(tmp_path / case, case, "fp")
        op = v2.open_model(p.model, str(p.dir))
        orig = {t.locator: t for t in v2.walk(p.original, v2.Files(None, None))}
        width = 4 if dt == 1 else 2
        for e, t, pairs in op.entries:
            if t.data_type != dt:
                continue
            a = v2.element_bytes(p.original, orig[t.locator], None)
            b = v2.element_bytes(op.content, t, None)
            for s, en in pairs:
                for i in range(s, en, width):
                    # the top 16 bits of the element hold sign, exponent and the top mantissa bits
                    hi_a = int.from_bytes(a[i + width - 2:i + width], "little")
                    hi_b = int.from_bytes(b[i + width - 2:i + width], "little")
                    assert hi_a & mask == hi_b & mask


def test_dp_permutes_whole_elements(tmp_path):
    p = Protected(tmp_path, "rnn", "dp")
    op = v2.open_model(p.model, str(p.dir))
    orig = {t.locator: t for t in v2.walk(p.original, v2.Files(None, None))}
    moved = 0
    for e, t, pairs in op.entries:
        a = v2.element_bytes(p.original, orig[t.locator], None)
        b = v2.element_bytes(op.content, t, None)
        es = v2.element_size(t.data_type)
        for s, en in pairs:
            ea = sorted(bytes(a[i:i + es]) for i in range(s, en, es))
            eb = sorted(bytes(b[i:i + es]) for i in range(s, en, es))
            assert ea == eb  # the same multiset of values
            moved += a[s:en] != b[s:en]
    assert moved


def test_dp_swaps_follow_the_text():
    """§6: rejection sampling below 2^32 - (2^32 mod m); words from offset a * 2^24."""
    k = bytes(range(32))
    swaps = v2.dp_swaps(k, 3, 20)
    words = struct.unpack("<64I", v2.keystream(k, 3 << 24, (3 << 24) + 256))
    w = iter(words)
    for i, j in swaps:
        m = i + 1
        limit = (1 << 32) - (1 << 32) % m
        r = next(w)
        while r >= limit:
            r = next(w)
        assert j == r % m
    assert [i for i, _ in swaps] == list(range(19, 0, -1))


def test_multi_chunk_digest_and_a_flip_in_the_second_chunk(tmp_path):
    rng = random.Random(3)
    model = synth_model([("big", 1, [40000], 9, rng.randbytes(160000))])
    (tmp_path / "m").mkdir()
    prot, _ = v2.spec_encrypt_v2(model, {"7.0/5.0": [(0, 160000)]}, [v2.KeyRecipient(b"k" * 32)],
                                 chunk_size=1 << 16)
    assert v2.decrypt_all(prot, key=b"k" * 32)[0] == model
    op = v2.open_model(prot)
    off = op.entries[0][1].segments[0][0] + 70000  # in chunk 1
    with pytest.raises(v2.Modified, match="digest"):
        v2.decrypt_all(flip(prot, off), key=b"k" * 32)


# --------------------------------------------------------------------------
# synthetic models: sub-byte, 6-bit and varint-stored types


def _vi(n, v):
    return sd.encode_varint(n << 3) + sd.encode_varint(v)


def _ld(n, b):
    return sd.encode_varint((n << 3) | 2) + sd.encode_varint(len(b)) + b


def synth_model(tensors):
    """A ModelProto whose graph holds the given initializers:
    (name, data_type, dims, field_no, payload bytes)."""
    inits = b""
    for name, dt, dims, fno, payload, *extra in tensors:
        t = b"".join(_vi(1, d) for d in dims) + _vi(2, dt) + _ld(8, name.encode())
        t += (_ld(fno, payload) if fno else b"") + b"".join(extra)
        inits += _ld(5, t)
    graph = _ld(2, b"g") + inits
    return _vi(1, 10) + _ld(7, graph) + _ld(8, _ld(1, b"") + _vi(2, 21))


def varints(values):
    return b"".join(sd.encode_varint(v) for v in values)


SUB_BYTE = [  # name, data_type, bits
    ("UINT4", 21, 4), ("INT4", 22, 4), ("FLOAT4E2M1", 23, 4), ("UINT2", 25, 2), ("INT2", 26, 2),
    ("FLOAT6E2M3", 27, 6), ("FLOAT6E3M2", 28, 6), ("FLOAT8E8M0", 24, 8), ("BFLOAT16", 16, 16),
    ("COMPLEX64", 14, 64), ("COMPLEX128", 15, 128), ("BOOL", 9, 8),
]


@pytest.mark.parametrize("name,dt,bits", SUB_BYTE, ids=[s[0] for s in SUB_BYTE])
def test_raw_data_of_every_width(name, dt, bits):
    rng = random.Random(name)
    numel = 61  # odd: the last byte or group is padded
    nb = (numel * bits + 7) // 8
    raw = rng.randbytes(nb)
    tensors = [(name, dt, [numel], 9, raw)]
    if bits <= 8 and dt not in (27, 28):
        tensors.append((name + "_i32", dt, [numel], 5, varints(list(raw if bits == 8 else raw))))
        if bits < 8:  # one packed byte per int32 value
            tensors[-1] = (name + "_i32", dt, [numel], 5, varints(list(raw)))
    model = synth_model(tensors)
    modes = ["ctr"] + (["fp"] if dt in v2.FP_MASKS else []) + (["dp"] if bits >= 8 else [])
    for mode in modes:
        e = v2.element_size(dt)
        plan = [{"locator": f"7.0/5.{i}", "mode": mode, "spans": [(0, (nb // e) * e)]} for i in range(len(tensors))]
        prot, _ = v2.spec_encrypt_v2(model, plan, [v2.KeyRecipient(b"s" * 32)])
        assert prot[:len(model)] != model
        assert v2.decrypt_all(prot, key=b"s" * 32)[0] == model


def nested_graph(levels):
    """A GraphProto holding graphs `levels` deep below it (an If node's then_branch in each)."""
    graph = b""
    for _ in range(levels):
        attr = _ld(1, b"then_branch") + _vi(20, 5) + _ld(6, graph)
        graph = _ld(1, _ld(4, b"If") + _ld(5, attr))
    return graph


def test_graph_depth_is_counted_as_section_4_says():
    """§4: the main graph and a function's nodes are at level 0, a training_info graph at
    level 1, an attribute's graph one below; a level above 64 is an invalid model."""
    def levels_ok(model):
        try:
            v2.walk(model, v2.Files(None, None))
            return True
        except v2.MalformedModel as e:
            assert "64 levels" in str(e), e
            return False
    opset = _ld(8, _ld(1, b"") + _vi(2, 21))
    main = lambda n: _vi(1, 10) + _ld(7, nested_graph(n)) + opset  # noqa: E731
    if_node = lambda n: _ld(4, b"If") + _ld(5, _ld(1, b"then_branch") + _vi(20, 5) + _ld(6, nested_graph(n)))  # noqa: E731
    func = lambda n: _vi(1, 10) + _ld(25, _ld(1, b"f") + _ld(10, b"d") + _ld(7, if_node(n))) + opset  # noqa: E731
    train = lambda n: _vi(1, 10) + _ld(7, b"") + _ld(20, _ld(1, nested_graph(n))) + opset  # noqa: E731
    assert levels_ok(main(64)) and not levels_ok(main(65))
    assert levels_ok(train(63)) and not levels_ok(train(64))
    assert levels_ok(func(63)) and not levels_ok(func(64))


def test_float6_in_int32_data_is_never_encrypted():
    model = synth_model([("f6", 27, [8], 5, varints(range(8)))])
    assert v2.encryptable(model) == []
    with pytest.raises(v2.UsageError, match="FLOAT6"):
        v2.spec_encrypt_v2(model, {"7.0/5.0": [(0, 6)]}, [v2.KeyRecipient(b"s" * 32)])


def test_non_reproducible_varints_are_not_encrypted():
    """§5: a varint tensor whose stored bytes the re-encoding would not reproduce."""
    unpacked = b"".join(_vi(5, v) for v in (1, 2, 3, 4))  # int32_data not packed
    padded = _ld(5, b"\x81\x00" + varints([2, 3, 4]))  # a non-minimal varint
    int8_zero_extended = _ld(5, varints([0xFF, 1, 2, 3]))  # INT8 -1 must be sign-extended
    for payload in (unpacked, padded, int8_zero_extended):
        t = b"".join(_vi(1, d) for d in [4]) + _vi(2, 3) + _ld(8, b"q") + payload
        model = _vi(1, 10) + _ld(7, _ld(2, b"g") + _ld(5, t))
        with pytest.raises(v2.UsageError, match="reproduce"):
            v2.spec_encrypt_v2(model, {"7.0/5.0": [(0, 4)]}, [v2.KeyRecipient(b"s" * 32)])


def test_varint_tensor_must_be_top_tier():
    model = synth_model([("q", 3, [32], 5, varints(range(32)))])
    with pytest.raises(v2.UsageError, match="top tier"):
        v2.spec_encrypt_v2(model, [{"locator": "7.0/5.0", "spans": [(0, 32)], "tier": 1}],
                           [v2.KeyRecipient(b"s" * 32)], tiers=2)


# --------------------------------------------------------------------------
# §7 key schedule, §8 stanzas


def test_key_schedule_relations():
    dk = bytes(range(32))
    keys = v2.data_keys_down(dk, 3)
    assert keys[3].dk == dk
    assert keys[2].dk == v2.hkdf(b"onnx-protect/v2/tier-salt", dk, b"onnx-protect/v2/tier-down")
    assert keys[1].dk == v2.tier_down(keys[2].dk)
    prk = v2.hkdf_extract(b"onnx-protect/v2/data-key", dk)
    assert keys[3].tensor_key(5) == v2.hkdf_expand(prk, b"onnx-protect/v2/tensor" + struct.pack(">Q", 5), 32)
    assert len(keys[3].kcv()) == 16 and keys[3].kcv() != keys[2].kcv()
    # the keystream is AES-256-CTR with a 128-bit big-endian counter from zero
    assert v2.keystream(keys[3].tensor_key(0), 16, 32) == v2.keystream(keys[3].tensor_key(0), 0, 32)[16:]


DERIVATION_V2 = ROOT / "crates" / "crypto" / "tests" / "vectors" / "derivation-v2.txt"


def derivation_v2_records():
    recs, cur = {}, None
    for line in DERIVATION_V2.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        k, v = (x.strip() for x in line.split("=", 1))
        if k == "case":
            cur = recs.setdefault(v, {})
        else:
            cur[k] = bytes.fromhex(v)
    return recs


@pytest.mark.skipif(not DERIVATION_V2.is_file(), reason="derivation-v2 vectors missing")
def test_key_schedule_against_the_derivation_v2_vectors():
    r = derivation_v2_records()
    d = r["data-key-v2"]
    k = v2.TierKeys(d["data-key"])
    assert k.prk == d["prk"]
    assert k.tensor_key(0) == d["tensor-key-0"] and k.tensor_key(1) == d["tensor-key-1"]
    assert k.mac_key() == d["mac-key"] and k.kcv() == d["key-check"]
    assert v2.keystream(k.tensor_key(0), 0, 32) == d["keystream-0"]
    assert v2.tier_down(d["data-key"]) == d["tier-down"]
    assert v2.TierKeys(d["tier-down"]).kcv() == d["tier-down-key-check"]
    s = r["key-stanza-v2"]
    tier = int.from_bytes(s["tier"], "big")
    kek = v2.hkdf(s["stanza-salt"], s["wrapping-key"], v2.L_WRAP_KEY + struct.pack(">I", tier))
    assert kek == s["kek"]
    assert v2.wrap(kek, s["data-key"]) == s["body"]
    assert v2.fingerprint(s["wrapping-key"]) == s["label"].hex()


def test_key_stanza_label_is_the_fingerprint(tmp_path):
    p = Protected(tmp_path, "functions")
    _, _, _, r = envelope_parts(p.model)
    (st,) = r["stanzas"]
    assert st["kind"] == "key" and st["label"] == hashlib.sha256(
        b"onnx-protect/v1/fingerprint" + p.top).digest()[:8].hex()


def test_passphrase_recipient(tmp_path):
    pw = "correct horse battery staple ü".encode()
    p = Protected(tmp_path, "rnn", recipients=[v2.PassphraseRecipient(pw, **FAST_ARGON)])
    assert p.decrypt(passphrase=pw)[0] == p.original
    with pytest.raises(v2.WrongKey):
        p.decrypt(passphrase=pw + b"!")
    with pytest.raises(v2.WrongKey):  # a raw key for a passphrase-only file
        p.decrypt(key=os.urandom(32))


def test_passphrase_for_a_key_only_file_is_wrong_key(tmp_path, monkeypatch):
    p = Protected(tmp_path, "rnn")
    monkeypatch.setattr(v2, "argon2id", lambda *a: pytest.fail("no passphrase stanza: Argon2id must not run"))
    with pytest.raises(v2.WrongKey):
        p.decrypt(passphrase=b"anything")


def test_x25519_recipient(tmp_path):
    ident, recip = spec_age.generate_identity()
    other, _ = spec_age.generate_identity()
    p = Protected(tmp_path, "quant_uint8", recipients=[v2.X25519Recipient(recip)])
    _, _, _, r = envelope_parts(p.model)
    assert r["stanzas"][0]["label"] == recip and r["stanzas"][0]["body"].startswith(b"age-encryption.org/v1\n")
    assert p.decrypt(identities=[ident])[0] == p.original
    assert p.decrypt(identities=[other, ident])[0] == p.original
    with pytest.raises(v2.WrongKey):
        p.decrypt(identities=[other])


def test_an_age_body_of_many_stanzas_or_many_bytes_is_modified_without_a_key(tmp_path):
    ident, recip = spec_age.generate_identity()
    p = Protected(tmp_path, "quant_uint8", recipients=[v2.X25519Recipient(recip)])
    body = envelope_parts(p.model)[3]["stanzas"][0]["body"]
    lines = body.split(b"\n")
    stanza = lines[1:3]  # "-> X25519 SHARE" and its body line
    many = b"\n".join([lines[0]] + stanza * 3 + lines[3:])
    for bad in (many, body + b"A" * 1024):
        forged = reseal(p.model, recipients=lambda rr, b=bad: rr["stanzas"][0].update(body=b))
        with pytest.raises(v2.Modified, match="x25519"):
            v2.verify(forged, model_dir=str(p.dir))
        with pytest.raises(v2.Modified, match="x25519"):
            p.decrypt(forged, identities=[ident])


def test_at_most_eight_stanzas_of_each_costly_kind(tmp_path):
    k = os.urandom(32)
    p = Protected(tmp_path, "quant_uint8", recipients=[v2.KeyRecipient(k)])
    for kind, body in (("pkcs11", bytes(60)), ("command", b"wrapped")):
        for n, ok in ((8, True), (9, False)):
            forged = reseal(p.model, recipients=lambda rr, n=n, kind=kind, body=body: rr["stanzas"].extend(
                v2.new_message("Stanza", kind=kind, tier=1, body=body) for _ in range(n)))
            if ok:
                v2.verify(forged, model_dir=str(p.dir))
            else:
                with pytest.raises(v2.Modified, match=f"8 {kind}"):
                    v2.verify(forged, model_dir=str(p.dir))


def test_an_external_file_of_another_length_is_modified_before_it_is_read(tmp_path, monkeypatch):
    p = Protected(tmp_path, "external_data")
    assert envelope_parts(p.model)[2]["external_sizes"]
    side = p.dir / envelope_parts(p.model)[2]["external_files"][0]
    with open(side, "r+b") as fh:
        fh.truncate(1 << 40)  # sparse
    monkeypatch.setattr(v2.Files, "load", lambda *a, **k: pytest.fail("the file was read"))
    with pytest.raises(v2.Modified, match="bytes; the header records"):
        v2.verify(p.model, model_dir=str(p.dir), model_name="model.onnx")


# --------------------------------------------------------------------------
# §3 `external_leaves`: the external files' content leaves (§9), listed in the header


def external_tensor(name, nbytes, location, offset=0):
    """An initializer (FLOAT, 1-D) whose `nbytes` bytes are in `location` from `offset`."""
    kv = lambda k, v: _ld(13, _ld(1, k.encode()) + _ld(2, v.encode()))  # noqa: E731
    return (name, 1, [nbytes // 4], 0, b"", kv("location", location), kv("offset", str(offset)),
            kv("length", str(nbytes)), _vi(14, 1))


def test_the_writer_lists_the_leaves_of_the_external_files_as_written(tmp_path):
    p = Protected(tmp_path, "external_data")
    h = envelope_parts(p.model)[2]
    side = [p.side[loc] for loc in h["external_files"]]
    assert side != [p.originals[loc] for loc in h["external_files"]], "the external files are encrypted"
    assert h["external_leaves"] == v2.external_leaves(side, h["chunk_size"])
    assert h["external_leaves"] == b"".join(v2.file_leaves(i, d, h["chunk_size"])[0]
                                            for i, d in enumerate(side, 1))
    assert len(h["external_leaves"]) == 32 * 2 and h["external_sizes"] == [len(d) for d in side]
    assert p.decrypt(key=p.top)[0] == p.original
    v2.verify(p.model, model_dir=str(p.dir))
    # without external data there is nothing to list
    assert envelope_parts(Protected(tmp_path / "q", "cnn_torch").model)[2]["external_leaves"] == b""


def test_leaves_of_several_chunks_and_files_in_order(tmp_path):
    """File 1's chunks first, then file 2's, each in order of j (§3), with §9's leaf(i, j)."""
    rng = random.Random(11)
    a, b = rng.randbytes(3 * 65536 + 100), rng.randbytes(65536 + 4)  # 4 and 2 chunks of 2^16
    (tmp_path / "a.bin").write_bytes(a)
    (tmp_path / "b.bin").write_bytes(b)
    model = synth_model([external_tensor("wb", len(b), "b.bin"), external_tensor("wa", len(a), "a.bin")])
    plan = {"7.0/5.0": [(0, 65536 + 4)], "7.0/5.1": [(4, len(a) - 4)]}
    prot, side = v2.spec_encrypt_v2(model, plan, [v2.KeyRecipient(b"k" * 32)], chunk_size=1 << 16,
                                    model_dir=str(tmp_path), model_name="model.onnx")
    h = envelope_parts(prot)[2]
    assert h["external_files"] == ["b.bin", "a.bin"]  # model order, the order of i
    leaves = h["external_leaves"]
    assert len(leaves) == 32 * (2 + 4)
    want = []
    for i, loc in enumerate(h["external_files"], 1):
        data = side[loc]
        for j in range(0, (len(data) + 65535) // 65536):
            chunk = data[j * 65536:(j + 1) * 65536]
            want.append(v2._blake3(b"onnx-protect/v2/chunk" + struct.pack(">IQ", i, j) + chunk).digest())
    assert leaves == b"".join(want)
    out = tmp_path / "out"
    out.mkdir()
    write_side(out, side)
    assert v2.decrypt_all(prot, key=b"k" * 32, model_dir=str(out))[0] == model
    # a leaf of file 2 moved before file 1's, the MACs recomputed: "modified"
    keys = v2.unlock(v2.open_model(prot, str(out)), key=b"k" * 32).keys
    swapped = reseal(prot, header=lambda h: h.update(external_leaves=leaves[64:] + leaves[:64]), macs_with=keys)
    with pytest.raises(v2.Modified, match="external_leaves"):
        v2.verify(swapped, model_dir=str(out))


LEAF_LENGTH_MUTATIONS = {
    "one-leaf-more": lambda h: h.update(external_leaves=h["external_leaves"] + bytes(32)),
    "one-leaf-fewer": lambda h: h.update(external_leaves=h["external_leaves"][:-32]),
    "one-byte-short": lambda h: h.update(external_leaves=h["external_leaves"][:-1]),
    "one-byte-more": lambda h: h.update(external_leaves=h["external_leaves"] + b"\0"),
    "without-external_sizes": lambda h: h.update(external_sizes=[]),
}


@pytest.mark.parametrize("name", list(LEAF_LENGTH_MUTATIONS))
def test_external_leaves_of_another_length_are_modified_without_a_key(name, tmp_path, monkeypatch):
    p = Protected(tmp_path, "external_data")
    model = reseal(p.model, header=LEAF_LENGTH_MUTATIONS[name])  # keyless: the MACs are not recomputed
    monkeypatch.setattr(v2.Files, "load", lambda *a, **k: pytest.fail("a file was read"))
    with pytest.raises(v2.Modified, match="external_leaves"):
        v2.verify(model, model_dir=str(p.dir), model_name="model.onnx")  # step 1, before any file
    with pytest.raises(v2.Modified, match="external_leaves"):
        p.decrypt(model, key=p.top)


def test_external_leaves_without_external_data_are_modified(tmp_path):
    p = Protected(tmp_path, "cnn_torch")
    keys = v2.unlock(v2.open_model(p.model), key=p.top).keys
    for leaves in (bytes(32), bytes(64)):
        model = reseal(p.model, header=lambda h: h.update(external_leaves=leaves), macs_with=keys)
        with pytest.raises(v2.Modified, match="external_leaves without external_sizes"):
            p.decrypt(model, key=p.top)


def test_a_wrong_listed_leaf_is_modified_even_with_the_macs_recomputed(tmp_path):
    p = Protected(tmp_path, "external_data")
    keys = v2.unlock(v2.open_model(p.model, str(p.dir)), key=p.top).keys
    leaves = envelope_parts(p.model)[2]["external_leaves"]
    for at in (0, 31, 32, 63):  # a bit of each leaf, first and last byte
        model = reseal(p.model, header=lambda h: h.update(external_leaves=flip(leaves, at)), macs_with=keys)
        with pytest.raises(v2.Modified, match="external_leaves"):
            p.decrypt(model, key=p.top)
        with pytest.raises(v2.Modified, match="external_leaves"):
            v2.verify(model, model_dir=str(p.dir))  # restored_tiers = 0: the files as stored are canonical


def test_a_header_without_listed_leaves_is_accepted(tmp_path):
    """Older files have none (§3): removed and re-sealed by the key holder, the file is
    still accepted; removed without the key, the MACs no longer match (it is authenticated)."""
    p = Protected(tmp_path, "external_data")
    keys = v2.unlock(v2.open_model(p.model, str(p.dir)), key=p.top).keys
    drop = lambda h: h.update(external_leaves=b"")  # noqa: E731
    model = reseal(p.model, header=drop, macs_with=keys)
    assert envelope_parts(model)[2]["external_leaves"] == b""
    v2.verify(model, model_dir=str(p.dir))
    assert p.decrypt(model, key=p.top)[0] == p.original
    with pytest.raises(v2.Modified, match="MAC"):
        p.decrypt(reseal(p.model, header=drop), key=p.top)
    # the side files are still covered by the content digest
    side = p.dir / "weights.bin"
    side.write_bytes(flip(side.read_bytes(), 7))
    with pytest.raises(v2.Modified, match="digest"):
        p.decrypt(model, key=p.top)


# One tier-1 span in each external file (and inline), tier 2 elsewhere.
EXT_TIERED_PLAN = [
    {"locator": "7.0/5.0", "mode": "fp", "spans": [(0, 64)], "tier": 1},
    {"locator": "7.0/5.0", "mode": "fp", "spans": [(128, 192)], "tier": 2},
    {"locator": "7.0/5.1", "mode": "fp", "spans": [(0, 16)], "tier": 1},
    {"locator": "7.0/5.3", "mode": "fp", "spans": [(0, 256)], "tier": 2},
    {"locator": "7.0/5.5", "mode": "fp", "spans": [(0, 32)], "tier": 1},
]


def partial_folder(p, tier, dest):
    """The partial decryption of `p` to `tier` by spec_v2.py, written as model.onnx and side files."""
    partial, side = p.decrypt(key=p.keys[tier])
    dest.mkdir(parents=True)
    (dest / "model.onnx").write_bytes(partial)
    write_side(dest, side)
    return dest / "model.onnx"


def test_a_partial_decryption_keeps_the_canonical_leaves(tmp_path):
    """§11: the listed leaves are of the canonical form; a partially decrypted file's files
    as stored differ, and the key rebuilds the canonical form to compare them."""
    p = Protected(tmp_path, "external_data", tiers=2, plan=EXT_TIERED_PLAN)
    h = envelope_parts(p.model)[2]
    pm = partial_folder(p, 1, tmp_path / "partial")
    partial = pm.read_bytes()
    ph = envelope_parts(partial)[2]
    assert ph == h, "the header is kept whole (§11)"
    stored = [(pm.parent / loc).read_bytes() for loc in h["external_files"]]
    assert stored != [p.side[loc] for loc in h["external_files"]], "tier 1 has spans in both files"
    stored_leaves = v2.external_leaves(stored, h["chunk_size"])
    assert stored_leaves != h["external_leaves"]
    v2.verify(partial, model_dir=str(pm.parent))  # keyless: stored_digest only (§12)
    assert v2.decrypt_all(partial, key=p.keys[2], model_dir=str(pm.parent))[0] == p.original
    # the key holder lists the leaves of the files as stored: keyless verification cannot
    # tell, the key's canonical form can
    keys = v2.unlock(v2.open_model(p.model, str(p.dir)), key=p.top).keys
    forged = reseal(partial, header=lambda h: h.update(external_leaves=stored_leaves), macs_with=keys)
    v2.verify(forged, model_dir=str(pm.parent))
    with pytest.raises(v2.Modified, match="external_leaves: .* in canonical form"):
        v2.decrypt_all(forged, key=p.keys[2], model_dir=str(pm.parent))
    # one wrong canonical leaf likewise
    forged = reseal(partial, header=lambda h: h.update(external_leaves=flip(h["external_leaves"], 40)),
                    macs_with=keys)
    with pytest.raises(v2.Modified, match="canonical form"):
        v2.decrypt_all(forged, key=p.keys[2], model_dir=str(pm.parent))


def test_known_stanza_kinds_have_their_shape_and_unknown_kinds_are_skipped_whole(tmp_path):
    k = os.urandom(32)
    p = Protected(tmp_path, "quant_uint8", recipients=[v2.KeyRecipient(k)])
    bad_kdf = v2.new_message("KdfParams", algorithm="scrypt", salt=b"x")
    for st, ok in ((v2.new_message("Stanza", kind="pkcs11", tier=1, body=bytes(48)), False),
                   (v2.new_message("Stanza", kind="command", tier=1, body=b"w", kdf=bad_kdf), False),
                   (v2.new_message("Stanza", kind="future", tier=1, body=b"w", salt=b"s", kdf=bad_kdf), True)):
        forged = reseal(p.model, recipients=lambda rr, st=st: rr["stanzas"].append(st))
        if ok:
            v2.verify(forged, model_dir=str(p.dir))
        else:
            with pytest.raises(v2.Modified):
                v2.verify(forged, model_dir=str(p.dir))


def test_the_entry_is_found_by_the_search_of_section_1():
    key = b"onnx-protect/v2"
    for n in (4, 10, 1269, 200000):  # value lengths whose varints hold 0x0A or not, one to three bytes
        value = b"Q" * n
        model = b"\x0a\x0a\x0a\x3a\x00" + v2._entry_bytes(key, value)
        assert v2.find_entry(model) == (5, value)
        assert v2.find_entry(model + b"\x00") is None
        # A field length that is not a minimal varint: no entry.
        body = v2._ld(1, key) + v2._ld(2, value)
        assert v2.find_entry(b"\x72" + v2.encode_varint(len(body)) + body) == (0, value)
        assert v2.find_entry(b"\x72" + nonminimal_varint(len(body)) + body) is None


def test_several_recipients_each_open(tmp_path):
    ident, recip = spec_age.generate_identity()
    k = os.urandom(32)
    p = Protected(tmp_path, "if_constants", recipients=[
        v2.X25519Recipient(recip), v2.PassphraseRecipient(b"pw", **FAST_ARGON), v2.KeyRecipient(k)])
    for kw in (dict(identities=[ident]), dict(passphrase=b"pw"), dict(key=k)):
        assert p.decrypt(**kw)[0] == p.original


def test_age_body_interoperates_with_pyrage(tmp_path):
    pyrage = pytest.importorskip("pyrage")
    ident = pyrage.x25519.Identity.generate()
    recip = str(ident.to_public())
    p = Protected(tmp_path, "functions", recipients=[v2.X25519Recipient(recip)])
    _, _, _, r = envelope_parts(p.model)
    dk = pyrage.decrypt(r["stanzas"][0]["body"], [ident])  # our age file, their decryptor
    assert len(dk) == 32
    assert p.decrypt(identities=[str(ident)])[0] == p.original
    # their age file, our decryptor: replace the body by pyrage's encryption of the same DK
    body = pyrage.encrypt(dk, [pyrage.x25519.Recipient.from_str(recip)])
    k = {t: v2.TierKeys(dk) for t in (1,)}
    forged = reseal(p.model, recipients=lambda rr: rr["stanzas"][0].update(body=body), macs_with=k)
    assert p.decrypt(forged, identities=[str(ident)])[0] == p.original


def test_bech32_age_strings_match_pyrage():
    pyrage = pytest.importorskip("pyrage")
    ident = pyrage.x25519.Identity.generate()
    secret = spec_age.parse_identity(str(ident))
    assert spec_age.identity_string(secret) == str(ident)
    assert spec_age.recipient_of(secret) == str(ident.to_public())


# --------------------------------------------------------------------------
# §11 access tiers and partial decryption


@pytest.fixture
def tiered(tmp_path):
    return Protected(tmp_path, "cnn_torch", "ctr", tiers=3, seed=5)


def test_tiered_plan_has_every_tier_and_a_split_tensor(tiered):
    tiers = {p["tier"] for p in tiered.plan}
    locs = [p["locator"] for p in tiered.plan]
    assert tiers == {1, 2, 3} and len(locs) != len(set(locs))


def test_top_key_decrypts_everything(tiered):
    assert tiered.decrypt(key=tiered.keys[3])[0] == tiered.original


def test_partial_decryption_then_full(tiered):
    partial, side = tiered.decrypt(key=tiered.keys[1])
    op = v2.open_model(partial, str(tiered.dir))
    assert op.restored == 1 and len(op.env["stored_digest"]) == 32
    orig = {t.locator: t for t in v2.walk(tiered.original, v2.Files(None, None))}
    for e, t, pairs in op.entries:
        plain = v2.element_bytes(tiered.original, orig[t.locator], None)
        now = v2.element_bytes(op.content, t, None)
        for b, en in pairs:
            assert (now[b:en] == plain[b:en]) == (e["tier"] == 1), (e["locator"], e["tier"])
    # the envelope is the old one but for restored_tiers, stored_digest and checksum
    _, old, _, _ = envelope_parts(tiered.model)
    _, new, _, _ = envelope_parts(partial)
    assert {k for k in old if old[k] != new[k]} == {"restored_tiers", "stored_digest", "checksum"}
    v2.verify(partial, model_dir=str(tiered.dir))  # keyless: stored_digest and checksum
    with pytest.raises(v2.AlreadyDecrypted):
        v2.decrypt_all(partial, key=tiered.keys[1], model_dir=str(tiered.dir))
    p2, _ = v2.decrypt_all(partial, key=tiered.keys[2], model_dir=str(tiered.dir))
    assert v2.open_model(p2, str(tiered.dir)).restored == 2
    assert v2.decrypt_all(p2, key=tiered.keys[3], model_dir=str(tiered.dir))[0] == tiered.original
    assert v2.decrypt_all(partial, key=tiered.keys[3], model_dir=str(tiered.dir))[0] == tiered.original


def test_top_key_may_stop_at_a_lower_tier(tiered):
    p2, _ = tiered.decrypt(key=tiered.keys[3], up_to_tier=2)
    assert v2.open_model(p2, str(tiered.dir)).restored == 2
    via_tier2, _ = tiered.decrypt(key=tiered.keys[2])
    assert via_tier2 == p2  # the partial output is determined by the text (§11)
    with pytest.raises(v2.UsageError):
        tiered.decrypt(key=tiered.keys[2], up_to_tier=3)


def test_partial_file_tampering_is_refused(tiered):
    partial, _ = tiered.decrypt(key=tiered.keys[1])
    op = v2.open_model(partial, str(tiered.dir))
    e, t, pairs = next(x for x in op.entries if x[0]["tier"] == 1)
    off = t.segments[0][0] + pairs[0][0]
    for key in (None, tiered.keys[2], tiered.keys[3]):
        with pytest.raises(v2.Modified):
            if key is None:
                v2.verify(flip(partial, off), model_dir=str(tiered.dir))
            else:
                v2.decrypt_all(flip(partial, off), key=key, model_dir=str(tiered.dir))
    # a new stored_digest (keyless forgery of the partial file) is caught by the canonical digest
    content = flip(op.content, off)
    files = op.files
    forged = reseal(partial, content=content, env_fn=lambda env: env.update(
        stored_digest=v2.content_digest(content, op.ext_list(files), op.header["chunk_size"])))
    v2.verify(forged, model_dir=str(tiered.dir))  # keyless verification cannot tell (§11)
    with pytest.raises(v2.Modified, match="canonical"):
        v2.decrypt_all(forged, key=tiered.keys[3], model_dir=str(tiered.dir))


def forge_tier1(p, partial=False):
    """Holding only the tier-1 key: negate the tier-1 FLOAT weights and re-seal tier 1."""
    op = v2.open_model(p.model, str(p.dir))
    u = v2.unlock(op, key=p.keys[1])
    content = bytearray(op.content)
    n = 0
    for e, t, pairs in op.entries:
        if e["tier"] != 1 or t.data_type != 1:
            continue
        k = u.keys[1].tensor_key(e["stream_id"])
        elem = v2.element_bytes(content, t, op.files)
        v2.transform(elem, e, pairs, k, False)
        for b, en in pairs:
            for i in range(b + 3, en, 4):
                elem[i] ^= 0x80
                n += 1
        v2.transform(elem, e, pairs, k, True)
        v2.put_element_bytes(content, t, op.files, bytes(elem))
    assert n
    d = v2.content_digest(bytes(content), op.ext_list(), op.header["chunk_size"])
    return reseal(p.model, content=bytes(content), env_fn=lambda env: env.update(content_digest=d),
                  macs_with={1: u.keys[1]})


def test_tier1_key_holder_cannot_forge_for_higher_tiers(tiered):
    forged = forge_tier1(tiered)
    # holders of the same key can forge each other's MAC (§10): tier 1 accepts
    tiered.decrypt(forged, key=tiered.keys[1])
    for t in (2, 3):
        with pytest.raises(v2.Modified, match="MAC of tier 2"):
            tiered.decrypt(forged, key=tiered.keys[t])


def test_lower_tier_kcv_is_checked(tiered):
    forged = reseal(tiered.model, header=lambda h: h["key_checks"].__setitem__(0, bytes(16)))
    with pytest.raises(v2.Modified, match="key check value of tier 1"):
        tiered.decrypt(forged, key=tiered.keys[3])


# --------------------------------------------------------------------------
# §10 signatures


def seed_pub(seed):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()


def test_signatures(tmp_path):
    s1, s2, s3 = os.urandom(32), os.urandom(32), os.urandom(32)
    p = Protected(tmp_path, "external_data", signing_keys=[s1, s2])
    pub1, pub2, pub3 = seed_pub(s1), seed_pub(s2), seed_pub(s3)
    d = str(p.dir)
    v2.verify(p.model, model_dir=d, signers=[pub1])
    v2.verify(p.model, model_dir=d, signers=[pub3, pub2])
    assert p.decrypt(key=p.top, signers=[pub2])[0] == p.original
    with pytest.raises(v2.NotSigned):
        v2.verify(p.model, model_dir=d, signers=[pub3])
    # a trusted signature that does not verify (checksum re-sealed) is "modified"
    bad = reseal(p.model, env_fn=lambda env: env["signatures"][1].update(
        signature=flip(env["signatures"][1]["signature"], 5)))
    v2.verify(bad, model_dir=d, signers=[pub1])  # only trusted keys are checked
    with pytest.raises(v2.Modified, match="signature"):
        v2.verify(bad, model_dir=d, signers=[pub1, pub2])
    # dropping the signatures leaves a valid file that no signer vouches for
    stripped = reseal(p.model, env_fn=lambda env: env.update(signatures=[]))
    assert p.decrypt(stripped, key=p.top)[0] == p.original
    with pytest.raises(v2.NotSigned):
        p.decrypt(stripped, key=p.top, signers=[pub1])
    # a change of content, re-sealed without a key, breaks the signature and the MAC
    op = v2.open_model(p.model, d)
    c = flip(op.content, 40)
    forged = reseal(p.model, content=c, env_fn=lambda env: env.update(
        content_digest=v2.content_digest(c, op.ext_list(), op.header["chunk_size"])))
    with pytest.raises(v2.Modified):
        v2.verify(forged, model_dir=d, signers=[pub1])
    # duplicate signer
    dup = reseal(p.model, env_fn=lambda env: env["signatures"].append(dict(env["signatures"][0])))
    with pytest.raises(v2.Modified, match="two signatures"):
        v2.verify(dup, model_dir=d)


def test_verify_strict_rejects_small_order_keys_and_large_s():
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    sk = Ed25519PrivateKey.generate()
    pub = sk.public_key().public_bytes_raw()
    sig = sk.sign(b"m")
    assert v2.verify_strict(pub, sig, b"m")
    assert not v2.verify_strict(pub, sig, b"n")
    s = int.from_bytes(sig[32:], "little") + v2._L
    assert s < 1 << 256
    assert not v2.verify_strict(pub, sig[:32] + s.to_bytes(32, "little"), b"m")
    identity = (1).to_bytes(32, "little")
    assert v2.is_small_order(identity) and v2.is_small_order(((1 << 255) | 0).to_bytes(32, "little")) is True
    assert not v2.verify_strict(identity, identity + bytes(32), b"m")
    assert not v2.is_small_order(pub)


def test_signer_text_form_round_trips():
    pub = os.urandom(32)
    s = v2.signer_string(pub)
    assert s.startswith("onnx-protect-signer1") and v2.parse_signer(s) == pub
    with pytest.raises((v2.UsageError, spec_age.AgeError)):
        v2.parse_signer(s[:-1] + ("q" if s[-1] != "q" else "p"))


# --------------------------------------------------------------------------
# refusals: every byte


@pytest.mark.parametrize("case", ["functions", "metadata_unknown"])
def test_every_byte_flip_is_refused(case, tmp_path):
    _, recip = spec_age.generate_identity()
    k = os.urandom(32)
    p = Protected(tmp_path, case, "ctr", signing_keys=[os.urandom(32)], recipients=[
        v2.KeyRecipient(k), v2.X25519Recipient(recip), v2.PassphraseRecipient(b"pw", **FAST_ARGON)])
    p.top = k
    for i in range(len(p.model)):
        for bit in (0x01, 0x80):
            bad = flip(p.model, i, bit)
            try:
                p.decrypt(bad, key=p.top)
            except REFUSALS:
                continue
            raise AssertionError(f"byte {i} ^ {bit:#x} of {len(p.model)} accepted")


def test_every_side_file_byte_flip_is_refused(tmp_path):
    p = Protected(tmp_path, "external_data", "ctr")
    for loc in p.side:
        path = p.dir / loc
        data = path.read_bytes()
        for i in range(len(data)):
            path.write_bytes(flip(data, i))
            with pytest.raises(v2.Modified, match="digest"):
                p.decrypt(key=p.top)
        path.write_bytes(data)
        path.write_bytes(data + b"\0")  # appended byte
        with pytest.raises(v2.Modified):
            p.decrypt(key=p.top)
        path.unlink()
        with pytest.raises(v2.MissingFile, match="missing"):
            p.decrypt(key=p.top)
        path.write_bytes(data)
    assert p.decrypt(key=p.top)[0] == p.original


def test_content_change_with_wrong_key_is_modified_not_wrong_key(tmp_path):
    p = Protected(tmp_path, "cnn_torch")
    with pytest.raises(v2.Modified):
        p.decrypt(flip(p.model, 100), key=os.urandom(32))


def test_wrong_key_is_wrong_key_for_every_kind(tmp_path):
    ident, recip = spec_age.generate_identity()
    other, _ = spec_age.generate_identity()
    p = Protected(tmp_path, "fp16", recipients=[v2.KeyRecipient(b"a" * 32), v2.X25519Recipient(recip),
                                                 v2.PassphraseRecipient(b"pw", **FAST_ARGON)])
    for kw in (dict(key=b"b" * 32), dict(identities=[other]), dict(passphrase=b"pW")):
        with pytest.raises(v2.WrongKey):
            p.decrypt(**kw)


# --------------------------------------------------------------------------
# refusals: §1 the entry


def test_not_protected_and_versions(tmp_path):
    p = Protected(tmp_path, "functions")
    c, env, _, _ = envelope_parts(p.model)
    with pytest.raises(v2.NotProtected):
        v2.decrypt_all(p.original, key=p.top)
    raw = v2.encode("Envelope", env)
    v3 = c + v2._entry_bytes(b"onnx-protect/v3", base64.b64encode(raw))
    with pytest.raises(v2.UnsupportedVersion):
        v2.decrypt_all(v3, key=p.top)
    with pytest.raises(v2.UnsupportedVersion):
        v2.decrypt_all(c + v2._entry_bytes(b"onnx-protect/v22", base64.b64encode(raw)), key=p.top)
    # other keys of the namespace are content
    other = v2._entry_bytes(b"onnx-protect/input-transform/v1", b"x")
    prot, _ = v2.spec_encrypt_v2(p.original + other, {"7.0/5.0": [(0, 16)]}, [v2.KeyRecipient(p.top)])
    assert v2.decrypt_all(prot, key=p.top)[0] == p.original + other


def test_two_manifest_entries_are_modified(tmp_path):
    p = Protected(tmp_path, "functions")
    c, env, _, _ = envelope_parts(p.model)
    ent = p.model[len(c):]
    for model in (c + ent + ent, c + v2._entry_bytes(b"onnx-protect/v1", b"x") + ent,
                  c + v2._entry_bytes(b"onnx-protect/v7", b"x") + ent):
        with pytest.raises(v2.Modified, match="more than one"):
            v2.decrypt_all(model, key=p.top)


def test_entry_not_last_is_modified(tmp_path):
    p = Protected(tmp_path, "functions")
    c, _, _, _ = envelope_parts(p.model)
    ent = p.model[len(c):]
    trailer = _vi(1000, 424242)
    for model in (p.model + trailer, c[:2] + ent + c[2:] if c[0] == 0x08 else None):
        if model is None:
            continue
        with pytest.raises(v2.Modified, match="last field"):
            v2.decrypt_all(model, key=p.top)


def test_entry_encoding_variants_are_modified(tmp_path):
    p = Protected(tmp_path, "functions")
    c, env, _, _ = envelope_parts(p.model)
    value = base64.b64encode(v2.encode("Envelope", env))
    key = b"onnx-protect/v2"
    body_swapped = _ld(2, value) + _ld(1, key)
    long_len = b"\x0a" + nonminimal_varint(len(key)) + key + _ld(2, value)
    extra = _ld(1, key) + _ld(2, value) + _ld(3, b"")  # a third field
    for body in (body_swapped, long_len, extra):
        with pytest.raises(v2.Modified, match="encoded"):
            v2.decrypt_all(c + _ld(14, body), key=p.top)
    inner = _ld(1, key) + _ld(2, value)
    with pytest.raises(v2.Modified, match="encoded"):  # a non-minimal outer length
        v2.decrypt_all(c + b"\x72" + nonminimal_varint(len(inner)) + inner, key=p.top)


def test_base64_must_be_canonical(tmp_path):
    p = Protected(tmp_path, "functions")
    c, env, _, _ = envelope_parts(p.model)
    raw = v2.encode("Envelope", env)
    value = base64.b64encode(raw)
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    if value.endswith(b"="):  # set a padding bit: decodes to the same bytes
        i = len(value.rstrip(b"=")) - 1
        bumped = value[:i] + bytes([alphabet[alphabet.index(value[i]) + 1]]) + value[i + 1:]
        assert base64.b64decode(bumped) == raw
        with pytest.raises(v2.Modified, match="base64"):
            v2.decrypt_all(c + v2._entry_bytes(b"onnx-protect/v2", bumped), key=p.top)
    for bad in (value.rstrip(b"="), value[:40] + b"\n" + value[40:], value[:-4] + b"!!!!"):
        if bad != value:
            with pytest.raises(v2.Modified, match="base64"):
                v2.decrypt_all(c + v2._entry_bytes(b"onnx-protect/v2", bad), key=p.top)


# --------------------------------------------------------------------------
# refusals: §2 canonical encoding (checksums re-sealed, so the canonical check is what refuses)


def _env_with_checksum(prefix: bytes) -> bytes:
    return prefix + _ld(8, v2.checksum_of(prefix))


@pytest.mark.parametrize("what", ["unknown-field", "explicit-default", "order", "nonminimal-varint",
                                  "header-unknown", "header-unpacked-spans", "recipients-unknown",
                                  "stanza-unknown", "entry-unknown"])
def test_non_canonical_encoding_is_modified(what, tmp_path):
    p = Protected(tmp_path, "cnn_torch")
    c, env, h, r = envelope_parts(p.model)
    H, R = env["header"], env["recipients"]
    if what == "header-unknown":
        H = H + _vi(99, 1)
    elif what == "header-unpacked-spans":
        e0 = v2.encode("TensorEntry", h["tensors"][0])
        spans = h["tensors"][0]["spans"]
        e0u = v2.encode("TensorEntry", dict(h["tensors"][0], spans=[])).replace(
            _vi(9, h["tensors"][0]["tier"]), b"".join(_vi(8, s) for s in spans) + _vi(9, h["tensors"][0]["tier"]))
        assert e0u != e0
        H = H.replace(_ld(4, e0), _ld(4, e0u), 1)
    elif what == "recipients-unknown":
        R = R + _ld(7, b"x")
    elif what == "stanza-unknown":
        st = v2.encode("Stanza", r["stanzas"][0])
        R = _ld(1, st + _vi(30, 5))
    elif what == "entry-unknown":
        e0 = v2.encode("TensorEntry", h["tensors"][0])
        H = H.replace(_ld(4, e0), _ld(4, e0 + _vi(20, 1)), 1)
    env = dict(env, header=H, recipients=R, checksum=b"")
    body = v2.encode("Envelope", env)
    if what == "unknown-field":
        body = body + _vi(15, 1)
    elif what == "explicit-default":
        body = body + _vi(6, 0)
    elif what == "order":
        parts = v2.parse_fields(body)
        first, second = parts[0], parts[1]
        body = body[second.start:second.end] + body[first.start:first.end] + body[second.end:]
    elif what == "nonminimal-varint":
        body = body + b"\x30\x81\x00"  # restored_tiers = 1 in two bytes
    model = c + entry(_env_with_checksum(body))
    with pytest.raises(v2.Modified, match="canonical"):
        v2.decrypt_all(model, key=p.top)


def test_checksum_is_checked_without_a_key(tmp_path):
    p = Protected(tmp_path, "cnn_torch")
    c, env, _, _ = envelope_parts(p.model)
    env["checksum"] = flip(env["checksum"], 0)
    with pytest.raises(v2.Modified, match="checksum"):
        v2.verify(c + entry(v2.encode("Envelope", env)))


# --------------------------------------------------------------------------
# refusals: §3 header rules, §6 spans, step 1 sizes (checksums re-sealed)


def _entry0(f):
    return lambda h: f(h["tensors"][0])


def _set_spans(spans):
    return _entry0(lambda e: e.update(spans=spans))


HEADER_MUTATIONS = {
    "format_version": (lambda h: h.update(format_version=3), "format_version"),
    "tiers-0": (lambda h: h.update(tiers=0), "tiers"),
    "tiers-17": (lambda h: h.update(tiers=17, key_checks=h["key_checks"] * 17), "tiers"),
    "key_checks-count": (lambda h: h["key_checks"].append(bytes(16)), "key_checks"),
    "key_checks-size": (lambda h: h["key_checks"].__setitem__(0, bytes(15)), "key_checks"),
    "chunk_size-not-pow2": (lambda h: h.update(chunk_size=(1 << 16) + 1), "chunk_size"),
    "chunk_size-small": (lambda h: h.update(chunk_size=1 << 15), "chunk_size"),
    "chunk_size-large": (lambda h: h.update(chunk_size=1 << 31), "chunk_size"),
    "tier-0": (_entry0(lambda e: e.update(tier=0)), "tier"),
    "tier-2": (_entry0(lambda e: e.update(tier=2)), "tier"),
    "mode-0": (_entry0(lambda e: e.update(mode=0)), "mode"),
    "mode-4": (_entry0(lambda e: e.update(mode=4)), "mode"),
    "storage-8": (_entry0(lambda e: e.update(storage=8)), "storage"),
    "string-type": (_entry0(lambda e: e.update(data_type=8)), "never encrypted"),
    "type-29": (_entry0(lambda e: e.update(data_type=29)), "never encrypted"),
    "stream-dup": (lambda h: h["tensors"][1].update(stream_id=h["tensors"][0]["stream_id"]), "stream_id"),
    "tensor-dup": (lambda h: h["tensors"].append(dict(h["tensors"][0], stream_id=99)), "two entries"),
    "odd-spans": (_set_spans([0, 4, 8]), "odd"),
    "empty-span": (_set_spans([4, 4]), "empty"),
    "reversed-span": (_set_spans([8, 4]), "empty or reversed"),
    "span-past-nbytes": (_entry0(lambda e: e.update(spans=[0, e["nbytes"] + 4])), "past nbytes"),
    "unsorted": (_set_spans([8, 12, 0, 4]), "sorted"),
    "adjacent-ctr": (_set_spans([0, 4, 4, 8]), "sorted"),
    "overlap": (_set_spans([0, 8, 4, 12]), "sorted"),
    "fp-misaligned": (_entry0(lambda e: e.update(mode=2, spans=[2, 8])), "aligned"),
    "dp-short": (_entry0(lambda e: e.update(mode=3, spans=[0, 60])), "16 elements"),
    "dp-misaligned": (_entry0(lambda e: e.update(mode=3, spans=[1, 65])), "aligned"),
    "name": (_entry0(lambda e: e.update(name="other")), "name"),
    "data_type": (_entry0(lambda e: e.update(data_type=10)), "data_type"),
    "nbytes": (_entry0(lambda e: e.update(nbytes=e["nbytes"] - 4)), "nbytes"),
    "storage": (_entry0(lambda e: e.update(storage=2)), "storage"),
    "locator-missing": (_entry0(lambda e: e.update(locator="7.0/5.99")), "no tensor"),
    "locator-not-a-tensor": (_entry0(lambda e: e.update(locator="7.0/1.0")), "no tensor"),
    "locator-leading-zero": (_entry0(lambda e: e.update(locator="7.0/5.00")), "no tensor"),
    "external_files": (lambda h: h["external_files"].append("weights.bin"), "external_files"),
}


@pytest.mark.parametrize("name", list(HEADER_MUTATIONS))
def test_header_rule_is_modified(name, tmp_path):
    p = Protected(tmp_path, "cnn_torch", "ctr", plan=[
        {"locator": "7.0/5.0", "spans": [(0, 64), (128, 192)]}, {"locator": "7.0/5.6", "spans": [(0, 64)]}])
    mutate, msg = HEADER_MUTATIONS[name]
    model = reseal(p.model, header=mutate)
    if name == "external_files":  # a listed file that no tensor uses, with a matching digest
        w = (MODELS_DIR / "external_data" / "weights.bin").read_bytes()
        (p.dir / "weights.bin").write_bytes(w)
        c = envelope_parts(p.model)[0]
        model = reseal(model, env_fn=lambda env: env.update(content_digest=v2.content_digest(c, [w], 1 << 16)))
    with pytest.raises(v2.Modified, match=msg):
        p.decrypt(model, key=p.top)


def test_tier_rules_of_one_tensor(tmp_path):
    p = Protected(tmp_path, "cnn_torch", "ctr", tiers=2, plan=[
        {"locator": "7.0/5.0", "spans": [(0, 64)], "tier": 1},
        {"locator": "7.0/5.0", "spans": [(128, 192)], "tier": 2}])
    assert p.decrypt(key=p.keys[2])[0] == p.original
    for mutate, msg in ((lambda h: h["tensors"][1].update(spans=[32, 96]), "overlap"),
                        (lambda h: h["tensors"][1].update(mode=2), "disagree on mode"),
                        (lambda h: h["tensors"][1].update(nbytes=h["tensors"][1]["nbytes"] + 4), "disagree")):
        with pytest.raises(v2.Modified, match=msg):
            p.decrypt(reseal(p.model, header=mutate), key=p.keys[2])


def test_varint_entry_not_top_tier_is_modified(tmp_path):
    p = Protected(tmp_path, "typed_fields", "ctr", tiers=2, plan=[
        {"locator": "7.0/5.2", "spans": [(0, 64)], "tier": 2}])
    with pytest.raises(v2.Modified, match="top tier"):
        p.decrypt(reseal(p.model, header=lambda h: h["tensors"][0].update(tier=1)), key=p.keys[2])


ENVELOPE_MUTATIONS = {
    "digest-size": (lambda env: env.update(content_digest=env["content_digest"][:31]), "32 bytes"),
    "macs-count": (lambda env: env["macs"].append(bytes(32)), "macs"),
    "mac-size": (lambda env: env["macs"].__setitem__(0, bytes(31)), "macs"),
    "restored-too-high": (lambda env: env.update(restored_tiers=1, stored_digest=bytes(32)), "restored_tiers"),
    "stored-digest-without-restore": (lambda env: env.update(stored_digest=bytes(32)), "stored_digest"),
    "signature-size": (lambda env: env["signatures"].append({"public_key": bytes(32), "signature": bytes(63)}),
                       "signature"),
    "mac-value": (lambda env: env["macs"].__setitem__(0, flip(env["macs"][0], 0)), "MAC"),
    "content-digest-value": (lambda env: env.update(content_digest=flip(env["content_digest"], 0)), "digest"),
}


@pytest.mark.parametrize("name", list(ENVELOPE_MUTATIONS))
def test_envelope_rule_is_modified(name, tmp_path):
    p = Protected(tmp_path, "cnn_torch")
    mutate, msg = ENVELOPE_MUTATIONS[name]
    with pytest.raises(v2.Modified, match=msg):
        p.decrypt(reseal(p.model, env_fn=mutate), key=p.top)


def test_authenticated_fields_changed_without_a_key_break_the_mac(tmp_path):
    """Re-sealing the checksum is not enough: header, recipients and digest are in T."""
    p = Protected(tmp_path, "cnn_torch", signing_keys=[os.urandom(32)])
    for kw in (dict(header=lambda h: h.update(tool="other")),
               dict(header=lambda h: h["tensors"][0].update(op_type="Gemm")),
               dict(recipients=lambda r: r["stanzas"][0].update(label="0" * 16)),
               dict(recipients=lambda r: r["stanzas"].append(dict(r["stanzas"][0], kind="future-kind")))):
        with pytest.raises(v2.Modified, match="MAC"):
            p.decrypt(reseal(p.model, **kw), key=p.top)


# --------------------------------------------------------------------------
# refusals: §8 stanzas


def test_stanza_tier_out_of_range_is_modified(tmp_path):
    p = Protected(tmp_path, "functions")
    for tier in (0, 2):
        with pytest.raises(v2.Modified, match="stanza tier"):
            p.decrypt(reseal(p.model, recipients=lambda r: r["stanzas"][0].update(tier=tier)), key=p.top)


def test_unknown_stanza_kinds_are_skipped(tmp_path):
    p = Protected(tmp_path, "functions")
    model = reseal(p.model, recipients=lambda r: r["stanzas"].insert(0, v2.new_message(
        "Stanza", kind="command", tier=1, body=b"whatever")))
    # the MAC covers the recipients, so the key holder has to re-seal: what a publisher would do
    op = v2.open_model(p.model)
    u = v2.unlock(op, key=p.top)
    model = reseal(model, macs_with=u.keys)
    assert v2.decrypt_all(model, key=p.top)[0] == p.original


@pytest.mark.parametrize("params,msg", [
    ((131073, 1, 1), "caps"), ((65536, 7, 1), "caps"), ((65536, 1, 5), "caps"), ((7, 1, 1), "caps"),
    ((16, 1, 4), "caps"), ((65536, 0, 1), "caps"), ((1 << 31, 1, 1), "caps")])
def test_argon2_over_the_caps_is_refused_before_running(params, msg, tmp_path, monkeypatch):
    p = Protected(tmp_path, "functions", recipients=[v2.PassphraseRecipient(b"pw", **FAST_ARGON)])
    m, t, par = params
    model = reseal(p.model, recipients=lambda r: r["stanzas"][0]["kdf"].update(m_cost_kib=m, t_cost=t, p_cost=par))
    monkeypatch.setattr(v2, "argon2id", lambda *a: pytest.fail("Argon2id ran before the caps were checked"))
    with pytest.raises(v2.Modified, match=msg):
        v2.decrypt_all(model, passphrase=b"pw")
    with pytest.raises(v2.Modified, match=msg):  # whatever key material is given
        v2.decrypt_all(model, key=os.urandom(32))


def test_argon2_algorithm_and_salt(tmp_path, monkeypatch):
    p = Protected(tmp_path, "functions", recipients=[v2.PassphraseRecipient(b"pw", **FAST_ARGON)])
    monkeypatch.setattr(v2, "argon2id", lambda *a: pytest.fail("Argon2id must not run"))
    for mutate in (lambda r: r["stanzas"][0]["kdf"].update(algorithm="argon2i"),
                   lambda r: r["stanzas"][0]["kdf"].update(salt=b"short"),
                   lambda r: r["stanzas"][0].update(kdf=None)):
        with pytest.raises(v2.Modified, match="passphrase stanza"):
            v2.decrypt_all(reseal(p.model, recipients=mutate), passphrase=b"pw")


def test_malformed_key_stanza_is_modified(tmp_path):
    p = Protected(tmp_path, "functions")
    for mutate in (lambda r: r["stanzas"][0].update(salt=b"x" * 15),
                   lambda r: r["stanzas"][0].update(body=r["stanzas"][0]["body"][:47]),
                   lambda r: r["stanzas"][0].update(kdf=v2.new_message("KdfParams"))):
        with pytest.raises(v2.Modified, match="key stanza"):
            p.decrypt(reseal(p.model, recipients=mutate), key=p.top)


def test_stanza_for_the_wrong_data_key_is_modified_not_wrong_key(tmp_path):
    """A stanza that opens but yields a DK whose KCV does not match: "modified"."""
    p = Protected(tmp_path, "functions")
    other = v2.make_stanza(v2.KeyRecipient(p.top), 1, os.urandom(32))
    with pytest.raises(v2.Modified, match="key check"):
        p.decrypt(reseal(p.model, recipients=lambda r: r["stanzas"].__setitem__(0, other)), key=p.top)


# --------------------------------------------------------------------------
# invalid models (§4, §5): the writer refuses them (MalformedModel)


MALFORMED_CASES = ["truncated_mid_tensor.onnx", "truncated_mid_varint.onnx", "garbage.onnx",
                   "length_larger_than_file.onnx", "length_past_parent.onnx", "length_past_eof_toplevel.onnx",
                   "invalid_utf8_name.onnx", "negative_dim.onnx", "dim_overflow.onnx", "dim_overflow_bytes.onnx",
                   "raw_data_short.onnx", "raw_data_long.onnx", "float_data_count.onnx", "data_type_99.onnx",
                   "external_absolute/model.onnx", "external_dotdot/model.onnx",
                   "external_dotdot_inner/model.onnx",
                   "external_past_eof/model.onnx", "external_negative_offset/model.onnx",
                   "external_nonnumeric_offset/model.onnx", "external_missing/model.onnx"]


@pytest.mark.parametrize("name", MALFORMED_CASES)
def test_invalid_models_are_refused(name):
    path = MALFORMED / name
    with pytest.raises(v2.MalformedModel):
        v2.spec_encrypt_v2(path.read_bytes(), {"7.0/5.0": [(0, 16)]}, [v2.KeyRecipient(b"k" * 32)],
                           model_dir=str(path.parent), model_name=path.name)


def test_more_invalid_tensors():
    f = struct.pack("<4f", 1, 2, 3, 4)
    base = [("w", 1, [4], 9, f)]
    assert v2.walk(synth_model(base), v2.Files(None, None))
    cases = {
        "two-ways": lambda: synth_model([("w", 1, [4], 9, f, _ld(4, f))]),
        "typed-field-of-other-type": lambda: synth_model([("w", 1, [4], 5, varints([1, 2, 3, 4]))]),
        "no-data": lambda: synth_model([("w", 1, [4], 0, b"")]),
        "string-raw": lambda: synth_model([("w", 8, [4], 9, f)]),
        "string-count": lambda: synth_model([("w", 8, [4], 6, b"a", _ld(6, b"b"))]),
        "raw-and-packed": lambda: synth_model([("w", 1, [4], 9, f, _ld(4, f))]),
        "external-and-raw": lambda: synth_model([("w", 1, [4], 9, f, _vi(14, 1))]),
        "graph-twice": lambda: synth_model(base) + _ld(7, _ld(2, b"h")),
        "data_type-0": lambda: synth_model([("w", 0, [4], 9, f)]),
        "unpacked-float-wrong-wire": lambda: synth_model([("w", 1, [1], 0, b"", _vi(4, 7))]),
    }
    for name, make in cases.items():
        with pytest.raises(v2.MalformedModel):
            v2.walk(make(), v2.Files(None, None))
            pytest.fail(name)
    # §5: a packed typed field of length 0 holds no value: no second way of storing data
    for fno in (4, 5, 7, 10, 11):
        assert v2.walk(synth_model([("w", 1, [4], 9, f, _ld(fno, b""))]), v2.Files(None, None))[0].storage == v2.S_RAW
    strings = synth_model([("s", 8, [2], 6, b"a", _ld(6, b"b"))])
    assert v2.walk(strings, v2.Files(None, None))[0].storage is None
    empty = synth_model([("w", 1, [0, 4], 0, b"")])  # no data and no elements: valid, never encrypted
    assert v2.walk(empty, v2.Files(None, None))[0].storage is None


def test_external_location_naming_the_model_is_refused(tmp_path):
    src = copy_case("external_data", tmp_path)
    model = src.read_bytes().replace(b"extra.bin", b"model.onn")  # same length
    (tmp_path / "model.onn").write_bytes(b"\0" * 4096)
    with pytest.raises(v2.MalformedModel, match="model file itself"):
        v2.spec_encrypt_v2(model, {}, [v2.KeyRecipient(b"k" * 32)], model_dir=str(tmp_path),
                           model_name="model.onn")


def test_writer_refuses_tensors_sharing_external_bytes(tmp_path):
    src = copy_case("external_data", tmp_path)
    model = src.read_bytes()
    ts = {t.name: t for t in v2.walk(model, v2.Files(str(tmp_path), "model.onnx"))}
    # point mm_W (offset 512) at conv_W's bytes: offset 0
    assert b"512" in model
    shared = model.replace(b"512", b"000", 1)
    assert ts["mm_W"].ext_offset == 512
    with pytest.raises(v2.UsageError, match="overlap"):
        v2.spec_encrypt_v2(shared, {ts["conv_W"].locator: [(0, 16)]}, [v2.KeyRecipient(b"k" * 32)],
                           model_dir=str(tmp_path), model_name="model.onnx")


def test_already_protected_is_refused(tmp_path):
    p = Protected(tmp_path, "functions")
    with pytest.raises(v2.UsageError, match="already"):
        v2.spec_encrypt_v2(p.model, {}, [v2.KeyRecipient(p.top)])


# --------------------------------------------------------------------------
# the version-1 entry point and the command line


def test_v1_entry_point_hands_v2_to_spec_v2(tmp_path):
    p = Protected(tmp_path, "cnn_torch")
    assert sd.decrypt_all(p.model, key=p.top)[0] == p.original


def test_command_line_round_trip(tmp_path):
    src = copy_case("external_data", tmp_path / "in")
    (tmp_path / "k").write_text(os.urandom(32).hex() + "\n")
    seed = os.urandom(32)
    (tmp_path / "s").write_text(seed.hex() + "\n")
    (tmp_path / "signer.pub").write_text(v2.signer_string(seed_pub(seed)) + "\n")
    ident, recip = spec_age.generate_identity()
    (tmp_path / "id.txt").write_text(f"# public key: {recip}\n{ident}\n")
    out = tmp_path / "prot"
    out.mkdir()
    run = [sys.executable, str(HERE / "spec_v2.py")]
    r = subprocess.run(run + ["encrypt", str(src), str(out / "model.onnx"), "--whole", "ctr", "--key-file",
                              str(tmp_path / "k"), "--recipient", recip, "--sign-key", str(tmp_path / "s")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for f in ("weights.bin", "extra.bin"):
        if not (out / f).exists():
            shutil.copy(src.parent / f, out / f)
    r = subprocess.run(run + ["verify", str(out / "model.onnx"), "--signer", str(tmp_path / "signer.pub")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    dec = tmp_path / "dec"
    dec.mkdir()
    r = subprocess.run(run + ["decrypt", str(out / "model.onnx"), str(dec / "model.onnx"), "--identity",
                              str(tmp_path / "id.txt"), "--signer", str(tmp_path / "signer.pub")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (dec / "model.onnx").read_bytes() == src.read_bytes()
    for f in ("weights.bin", "extra.bin"):
        assert (dec / f).read_bytes() == (src.parent / f).read_bytes()
    r = subprocess.run(run + ["decrypt", str(out / "model.onnx"), str(tmp_path / "x.onnx"), "--key-file",
                              str(tmp_path / "s")], capture_output=True, text=True)
    assert r.returncode == 1 and "wrong key" in r.stderr and not (tmp_path / "x.onnx").exists()


# --------------------------------------------------------------------------
# Rust-made vectors (fixtures/vectors/*_v2*, layout in tests/python/VECTORS-V2.md)


def vector_expect_hashes():
    readme = VECTORS / "README.md"
    out = {}
    if readme.is_file():
        for line in readme.read_text().splitlines():
            m = re.fullmatch(r"expect: (\S+)((?: \S+=[0-9a-f]{64})+)", line)
            if m:
                out[m.group(1)] = dict(kv.split("=") for kv in m.group(2).split())
    return out


class V2Vector:
    def __init__(self, d: pathlib.Path):
        self.dir = d
        self.name = d.name
        nested = (d / "protected").is_dir()
        self.protected_path = d / "protected" / "model.onnx" if nested else d / "protected.onnx"
        self.original_path = d / "original" / "model.onnx" if nested else d / "original.onnx"
        self.protected = self.protected_path.read_bytes()
        self.original = self.original_path.read_bytes()
        self.key = v2.read_key_file(str(d / "key.hex")) if (d / "key.hex").is_file() else None
        self.passphrase = v2.read_passphrase_file(str(d / "passphrase.txt")) \
            if (d / "passphrase.txt").is_file() else None
        self.identities = v2.read_identity_file(str(d / "identity.txt")) if (d / "identity.txt").is_file() else None
        self.signer = v2.read_signer_file(str(d / "signer.pub")) if (d / "signer.pub").is_file() else None
        # A TPM recipient's private scalar (what the TPM holds), 64 hex digits.
        self.tpm = int((d / "tpm.hex").read_text().strip(), 16) if (d / "tpm.hex").is_file() else None
        self.tier_keys = {int(m.group(1)): v2.read_key_file(str(f)) for f in d.iterdir()
                          if (m := re.fullmatch(r"tier([0-9]+)\.hex", f.name))}
        self.partials = {int(m.group(1)): f for f in d.iterdir()
                         if (m := re.fullmatch(r"partial-t([0-9]+)(\.onnx)?", f.name))}

    def materials(self):
        out = []
        if self.key is not None:
            out.append(("key.hex", dict(key=self.key)))
        if self.passphrase is not None:
            out.append(("passphrase.txt", dict(passphrase=self.passphrase)))
        if self.identities:
            out.append(("identity.txt", dict(identities=self.identities)))
        if self.tpm is not None:
            out.append(("tpm.hex", dict(tpm_keys=[self.tpm])))
        return out

    def side(self, which):
        d = self.dir / which
        return {f.name: f.read_bytes() for f in d.iterdir() if f.name != "model.onnx"} if d.is_dir() else {}


needs_v2_vectors = pytest.mark.skipif(not V2_VECTORS, reason="fixtures/vectors has no *_v2* folder yet")


@pytest.fixture(params=V2_VECTORS or [None], ids=lambda p: p.name if p else "none")
def v2vec(request):
    if request.param is None:
        pytest.skip("fixtures/vectors has no *_v2* folder yet")
    return V2Vector(request.param)


@needs_v2_vectors
def test_v2_vectors_cover_the_issue_list():
    names = " ".join(p.name for p in V2_VECTORS)
    vecs = [V2Vector(p) for p in V2_VECTORS]
    assert any(v.passphrase for v in vecs), "a passphrase vector"
    assert any(v.identities for v in vecs), "an X25519 vector"
    assert any(v.signer for v in vecs), "a signed vector"
    assert any(v.partials for v in vecs), "a tiered vector with a partial decryption"
    assert any((v.dir / "protected").is_dir() for v in vecs), "an external-data vector"
    ext = {v.name: envelope_parts(v.protected)[2]["external_leaves"] for v in vecs if (v.dir / "protected").is_dir()}
    assert any(ext.values()), "an external-data vector with listed leaves (§3 external_leaves)"
    assert not all(ext.values()), "an external-data vector without them (written before the field)"
    modes = set()
    for v in vecs:
        modes |= {e["mode"] for e in v2.decode("Header", envelope_parts(v.protected)[1]["header"])["tensors"]}
    assert modes == {1, 2, 3}, f"modes seen: {modes} in {names}"


def test_v2_vector_hashes(v2vec):
    expect = vector_expect_hashes().get(v2vec.name)
    if expect is None:
        pytest.skip("no expect: line for this vector in fixtures/vectors/README.md")
    for rel, digest in expect.items():
        assert hashlib.sha256((v2vec.dir / rel).read_bytes()).hexdigest() == digest, rel


def test_v2_vector_decrypts_to_original(v2vec):
    assert v2vec.materials(), "a vector needs key.hex, passphrase.txt or identity.txt"
    model_dir = str(v2vec.protected_path.parent)
    signers = [v2vec.signer] if v2vec.signer else None
    for what, kw in v2vec.materials():
        out, side = v2.decrypt_all(v2vec.protected, model_dir=model_dir, model_name=v2vec.protected_path.name,
                                   signers=signers, **kw)
        assert out == v2vec.original, what
        assert side == v2vec.side("original"), what


def test_v2_vector_keyless_verify_and_signers(v2vec):
    model_dir = str(v2vec.protected_path.parent)
    info = v2.verify(v2vec.protected, model_dir=model_dir, model_name=v2vec.protected_path.name)
    if v2vec.signer:
        assert v2.signer_string(v2vec.signer) in info["signers"]
        v2.verify(v2vec.protected, model_dir=model_dir, signers=[v2vec.signer])
        with pytest.raises(v2.NotSigned):
            v2.verify(v2vec.protected, model_dir=model_dir, signers=[seed_pub(os.urandom(32))])


def test_v2_vector_wrong_material_is_wrong_key(v2vec):
    model_dir = str(v2vec.protected_path.parent)
    for what, kw in v2vec.materials():
        if "key" in kw:
            bad = dict(key=flip(kw["key"], 0))
        elif "passphrase" in kw:
            bad = dict(passphrase=kw["passphrase"] + b"x")
        elif "tpm_keys" in kw:
            bad = dict(tpm_keys=[kw["tpm_keys"][0] + 1])
        else:
            bad = dict(identities=[spec_age.generate_identity()[0]])
        with pytest.raises(v2.WrongKey):
            v2.decrypt_all(v2vec.protected, model_dir=model_dir, **bad)


def test_v2_vector_labels(v2vec):
    _, _, h, r = envelope_parts(v2vec.protected)
    if v2vec.key is not None:
        labels = {s["label"] for s in r["stanzas"] if s["kind"] == "key"}
        assert v2.fingerprint(v2vec.key) in labels
    for t, k in v2vec.tier_keys.items():
        assert any(s["label"] == v2.fingerprint(k) and s["tier"] == t for s in r["stanzas"] if s["kind"] == "key")
    if v2vec.identities:
        recips = {spec_age.recipient_of(spec_age.parse_identity(i)) for i in v2vec.identities}
        assert recips & {s["label"] for s in r["stanzas"] if s["kind"] == "x25519"}


def test_v2_vector_tiers_and_partials(v2vec):
    if not v2vec.tier_keys:
        pytest.skip("not a tiered vector")
    model_dir = str(v2vec.protected_path.parent)
    top = max(v2vec.tier_keys)
    tiers = v2.decode("Header", envelope_parts(v2vec.protected)[1]["header"])["tiers"]
    assert top == tiers
    for t, k in sorted(v2vec.tier_keys.items()):
        out, side = v2.decrypt_all(v2vec.protected, key=k, model_dir=model_dir)
        if t == tiers:
            assert out == v2vec.original
            continue
        assert v2.open_model(out, model_dir).restored == t
        if t in v2vec.partials:
            f = v2vec.partials[t]
            want = (f / "model.onnx").read_bytes() if f.is_dir() else f.read_bytes()
            assert out == want, f"partial decryption to tier {t} differs from {f.name}"
        full, _ = v2.decrypt_all(out, key=v2vec.tier_keys[top], model_dir=model_dir)
        assert full == v2vec.original
    for t, f in v2vec.partials.items():
        pm = (f / "model.onnx").read_bytes() if f.is_dir() else f.read_bytes()
        pdir = str(f if f.is_dir() else f.parent)
        v2.verify(pm, model_dir=pdir)
        assert v2.decrypt_all(pm, key=v2vec.tier_keys[top], model_dir=pdir)[0] == v2vec.original


def test_v2_vector_external_leaves(v2vec):
    """§3: a vector's listed leaves are those of its protected external files; a wrong
    length is refused without a key, a wrong leaf with the MACs recomputed with one, and
    the vector without them re-sealed is accepted."""
    h = envelope_parts(v2vec.protected)[2]
    if not h["external_files"]:
        assert h["external_leaves"] == b""
        pytest.skip("no external data")
    model_dir = str(v2vec.protected_path.parent)
    op = v2.open_model(v2vec.protected, model_dir, "model.onnx")
    if not h["external_leaves"]:
        pytest.skip("written before headers listed the external files' leaves")
    assert h["external_leaves"] == v2.external_leaves(op.ext_list(), h["chunk_size"])
    assert len(h["external_leaves"]) == v2.listed_leaves_len(h)
    with pytest.raises(v2.Modified, match="external_leaves"):
        v2.verify(reseal(v2vec.protected, header=lambda h: h.update(external_leaves=h["external_leaves"][:-32])),
                  model_dir=model_dir)
    key, kw = v2vec.materials()[0]
    keys = v2.unlock(op, **kw).keys
    wrong = reseal(v2vec.protected, header=lambda h: h.update(external_leaves=flip(h["external_leaves"], 5)),
                   macs_with=keys)
    with pytest.raises(v2.Modified, match="external_leaves"):
        v2.decrypt_all(wrong, model_dir=model_dir, **kw)
    without = reseal(v2vec.protected, header=lambda h: h.update(external_leaves=b""), macs_with=keys)
    assert v2.decrypt_all(without, model_dir=model_dir, **kw)[0] == v2vec.original


def test_v2_vector_every_byte_flip_is_refused_keyless(v2vec):
    model_dir = str(v2vec.protected_path.parent)
    model = v2vec.protected
    step = max(1, len(model) // 4096)
    for i in range(0, len(model), step):
        with pytest.raises(REFUSALS):
            v2.verify(flip(model, i), model_dir=model_dir)


def test_tpm_stanza_opens_with_its_scalar_only_and_every_body_byte_counts():
    """§8 `tpm`: the vector's stanza, under the private scalar in software (the TPM's role)."""
    d = VECTORS / "cnn_torch_v2_tpm"
    if not d.is_dir():
        pytest.skip("no tpm vector")
    vec = V2Vector(d)
    op = v2.open_model(vec.protected)
    st = next(s for s in op.recipients["stanzas"] if s["kind"] == "tpm")
    assert st["label"] == v2.tpm_recipient(vec.tpm)
    assert len(st["body"]) == 81
    assert v2.open_tpm(st, vec.tpm) is not None
    assert v2.open_tpm(st, vec.tpm + 1) is None, "another key: its label differs, skipped"
    for i in range(len(st["body"])):
        changed = dict(st, body=flip(st["body"], i))
        assert v2.open_tpm(changed, vec.tpm) is None, f"body byte {i}"
    assert v2.open_tpm(dict(st, tier=st["tier"] + 1), vec.tpm) is None, "the tier is bound"



# --------------------------------------------------------------------------
# Header fields 9 (positions), 11 (label_lock), 12 (licence_authority), 13 (model_id)

SECRET_LOCKED = VECTORS / "cnn_torch_v2_secret_locked"


def test_secret_positions_and_a_label_lock_are_read_and_undone():
    """§6 secret positions, §15 label lock: the reader parses the fields, unseals the
    spans with the key and restores the class order of a full decryption; a changed
    sealed seed or sealed span list, re-MACed by the key holder, is "modified"."""
    vec = V2Vector(SECRET_LOCKED)
    op = v2.open_model(vec.protected)
    h = op.header
    assert h["positions"] == 1 and h["label_lock"]["classes"] == 10
    assert all(e["sealed_spans"] and not e["spans"] for e in h["tensors"])
    out, _ = v2.decrypt_all(vec.protected, key=vec.key)
    assert out == vec.original
    keys = v2.unlock(op, key=vec.key).keys
    lock_moved = v2.open_model(vec.protected)
    v2.unseal_positions(lock_moved, keys)
    assert all(pairs for _, _, pairs in lock_moved.entries)
    bad_seed = reseal(vec.protected, macs_with=keys, header=lambda h: h["label_lock"].update(
        sealed_seed=flip(h["label_lock"]["sealed_seed"], 3)))
    v2.verify(bad_seed, key=vec.key)  # §15: verification does not open the seed
    with pytest.raises(v2.Modified, match="sealed seed"):
        v2.decrypt_all(bad_seed, key=vec.key)
    bad_spans = reseal(vec.protected, macs_with=keys, header=lambda h: h["tensors"][0].update(
        sealed_spans=flip(h["tensors"][0]["sealed_spans"], 0)))
    with pytest.raises(v2.Modified, match="sealed_spans"):
        v2.decrypt_all(bad_spans, key=vec.key)


@pytest.mark.parametrize("change, msg", [
    (lambda h: h.update(positions=2), "positions"),
    (lambda h: h["tensors"][0].update(spans=[0, 4]), "secret positions"),
    (lambda h: h["label_lock"].update(classes=11), "label_lock"),
    (lambda h: h["label_lock"]["tensors"][0].update(name="other"), "label_lock"),
    (lambda h: h["label_lock"]["tensors"].append(dict(h["label_lock"]["tensors"][0])), "twice"),
    (lambda h: h["label_lock"]["tensors"][0].update(locator="7.0/5.08"), "label_lock"),
    (lambda h: h["label_lock"]["outputs"][0].update(name="nope"), "label_lock"),
    (lambda h: h["label_lock"].update(sealed_seed=b"x" * 47), "sealed_seed"),
    (lambda h: h.update(model_id="acme"), "model_id"),
    (lambda h: h.update(licence_authority=b"k" * 31), "licence_authority"),
])
def test_rules_of_the_new_header_fields_are_modified_without_a_key(change, msg):
    vec = V2Vector(SECRET_LOCKED)
    with pytest.raises(v2.Modified, match=msg):
        v2.verify(reseal(vec.protected, header=change))


def test_a_licensed_model_is_read_without_a_key_and_no_stanza_of_it_is_opened():
    """§3: licence_authority and model_id parse; a reader that checks no licence verifies
    the file without a key and refuses to open it with one."""
    vec = V2Vector(SECRET_LOCKED)
    licensed = (SECRET_LOCKED / "licensed.onnx").read_bytes()
    op = v2.open_model(licensed)
    authority = (SECRET_LOCKED / "authority.pub").read_text().strip()
    assert v2.signer_string(op.header["licence_authority"]) == authority
    assert op.header["model_id"] == "acme/cnn-1"
    v2.verify(licensed)
    with pytest.raises(v2.LicenceRequired):
        v2.decrypt_all(licensed, key=vec.key)


# --------------------------------------------------------------------------
# Issue 49: the answers docs/format.md gives where a reader could go either way


def test_empty_and_dot_components_name_the_file_without_them(tmp_path):
    """§5: `d//w.bin` and `./d/w.bin` are allowed and name `d/w.bin`; `..` is not."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "w.bin").write_bytes(b"x")
    files = v2.Files(str(tmp_path), None)
    want = os.path.realpath(tmp_path / "d" / "w.bin")
    assert files.resolve("d//w.bin") == want
    assert files.resolve("./d/w.bin") == want
    with pytest.raises(v2.MalformedModel):
        files.resolve("d/../../w.bin")


@pytest.mark.parametrize("names, ok", [
    (["a//b.bin", "c.bin"], True),
    (["a/b.bin", "a//b.bin"], False),
    (["./c.bin", "c.bin"], False),
    (["a\\b.bin", "a/b.bin"], False),
    (["a/../b.bin", "c.bin"], False),
])
def test_original_names_alike_when_they_name_one_file(names, ok):
    """§3: original names follow §5 (empty components allowed) and no two name one file."""
    vec = V2Vector(VECTORS / "external_data_v2_ctr")
    model_dir = str(vec.protected_path.parent)
    changed = reseal(vec.protected, header=lambda h: h.update(original_external_files=names))
    if ok:
        v2.verify(changed, model_dir=model_dir)
    else:
        with pytest.raises(v2.Modified, match="original_external_files"):
            v2.verify(changed, model_dir=model_dir)


def test_a_broken_frame_is_modified_only_under_an_entry_found_at_the_end():
    """§1: a file that does not parse is "modified" when the search finds an entry at its
    end, else an invalid model; a parsing file without a manifest key is not protected."""
    m = (VECTORS / "cnn_torch_v2_ctr" / "protected.onnx").read_bytes()
    a = v2.find_entry(m)[0]
    value_tag = a + m[a:].index(b"onnx-protect/v2") + 15
    value_len = bytearray(m)
    value_len[value_tag + 1] += 1  # the value's length runs past its entry
    with pytest.raises(v2.MalformedModel):
        v2.verify(bytes(value_len))
    entry_len = bytearray(m)
    entry_len[a + 1] += 1  # the entry's length runs past the file
    with pytest.raises(v2.MalformedModel):
        v2.verify(bytes(entry_len))
    with pytest.raises(v2.Modified):  # the content breaks, the entry is intact at the end
        v2.verify(b"\x3a\xff\xff\x03" + m)
    with pytest.raises(v2.Modified):  # the value field has another tag
        v2.verify(flip(m, value_tag, 0x08))
    with pytest.raises(v2.NotProtected):  # the entry is another field: no manifest key
        v2.verify(m[:a] + b"\x7a" + m[a + 1:])


@pytest.mark.parametrize("change", [
    lambda b: b.replace(b"age-encryption.org/v1", b"age-encryption.org/v9", 1),
    lambda b: b[:b.index(b"\n---")],
    lambda b: b.replace(b"\n---", b"\n===", 1),
])
def test_an_age_body_that_passes_step_1_but_is_no_age_file_does_not_open(change):
    """§8 x25519: step 1 looks at the header lines only (not the first line; without a
    `---` line every line after the first); such a body is not "modified" but does not
    open: "wrong key"."""
    vec = V2Vector(VECTORS / "roles_mix_v2_x25519")

    def edit(r):
        for st in r["stanzas"]:
            if st["kind"] == "x25519":
                st["body"] = change(st["body"])
    changed = reseal(vec.protected, recipients=edit)
    v2.verify(changed)
    with pytest.raises(v2.WrongKey):
        v2.decrypt_all(changed, identities=vec.identities)
