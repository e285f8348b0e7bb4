"""The independent readers written from docs/format.md alone: the format-1 decryptor
(spec_decryptor.py) against the format-1 known-answer vectors in fixtures/vectors/,
and the format-2 reader (spec_v2.py) against live output of the onnx-protect binary
(target/debug/onnx-protect, or $ONNX_PROTECT_BIN), which writes format 2 only.

Needs `cryptography` (AES, Argon2id, ChaCha20-Poly1305), `blake3` and numpy; no onnx or
protobuf packages.
"""
import hashlib
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
import spec_decryptor as sd  # noqa: E402
import spec_v2 as v2  # noqa: E402

ROOT = HERE.parents[1]
VECTORS = ROOT / "fixtures" / "vectors"
MODELS = sorted((ROOT / "fixtures" / "models").glob("*/model.onnx"))
BIN = os.environ.get("ONNX_PROTECT_BIN", str(ROOT / "target" / "debug" / "onnx-protect"))
DERIVATION = ROOT / "crates" / "crypto" / "tests" / "vectors" / "derivation-v1.txt"

needs_bin = pytest.mark.skipif(not os.access(BIN, os.X_OK), reason=f"no onnx-protect binary at {BIN}")


# --------------------------------------------------------------------------
# helpers


def sha256(p):
    return hashlib.sha256(pathlib.Path(p).read_bytes()).hexdigest()


def read_vectors():
    """Parse the `expect:` lines of the format-1 vectors in fixtures/vectors/README.md
    (the format-2 vectors, `*_v2_*`, are test_spec_v2.py's)."""
    cases = []
    for line in (VECTORS / "README.md").read_text().splitlines():
        m = re.fullmatch(r"expect: (\S+)((?: \S+=[0-9a-f]{64})+)", line)
        if m and "_v2_" not in m.group(1):
            files = dict(kv.split("=") for kv in m.group(2).split())
            cases.append((m.group(1), files))
    return cases


VECTOR_CASES = read_vectors()


class Vector:
    def __init__(self, name, files):
        self.name, self.files = name, files
        self.dir = VECTORS / name
        self.key = sd.parse_key_file((self.dir / "key.hex").read_bytes())
        self.protected_path = self.dir / next(f for f in files if f.startswith("protected") and f.endswith(".onnx"))
        self.original_path = self.dir / next(f for f in files if f.startswith("original") and f.endswith(".onnx"))
        self.protected = self.protected_path.read_bytes()
        self.original = self.original_path.read_bytes()

    def side_files(self, which):
        return {pathlib.Path(f).name: (self.dir / f).read_bytes()
                for f in self.files if f.startswith(which + "/") and not f.endswith(".onnx")}


@pytest.fixture(params=[c[0] for c in VECTOR_CASES])
def vector(request):
    return Vector(*next(c for c in VECTOR_CASES if c[0] == request.param))


def run_bin(*args, check=True):
    r = subprocess.run([BIN, *map(str, args)], capture_output=True, text=True)
    if check:
        assert r.returncode == 0, f"{args}: {r.stderr}"
    return r


def manifest_of(model):
    _, env = sd.find_envelope(model)
    ef = sd.decode_message(env)
    return sd.parse_manifest(sd.get_bytes(env, ef, 1))


def wrong_key(k):
    return bytes([k[0] ^ 0x01]) + k[1:]


def copy_tree(src_dir, dest):
    dest.mkdir(parents=True, exist_ok=True)
    for f in src_dir.iterdir():
        if f.is_file() and not f.is_symlink() and f.name != "expected.json":
            shutil.copy(f, dest / f.name)


# --------------------------------------------------------------------------
# known-answer vectors


def test_vectors_exist():
    assert len(VECTOR_CASES) >= 3, "fixtures/vectors/README.md lists fewer than 3 `expect:` cases"
    for name, _ in VECTOR_CASES:
        assert (VECTORS / name / "key.hex").is_file()


def test_vector_files_match_expect_hashes(vector):
    for rel, digest in vector.files.items():
        assert sha256(vector.dir / rel) == digest, f"{vector.name}/{rel} changed"


def test_vector_original_is_the_fixture_model(vector):
    model = re.sub(r"_(fp|ctr)$", "", vector.name)
    assert vector.original == (ROOT / "fixtures" / "models" / model / "model.onnx").read_bytes()


def test_vector_decrypts_to_original_byte_for_byte(vector):
    model_dir = str(vector.protected_path.parent)
    out, side = sd.decrypt_all(vector.protected, key=vector.key, model_dir=model_dir)
    assert out == vector.original
    assert side == vector.side_files("original")


def test_vector_wrong_key_is_refused(vector):
    with pytest.raises(sd.WrongKey, match="^wrong key"):
        sd.decrypt_all(vector.protected, key=wrong_key(vector.key), model_dir=str(vector.protected_path.parent))


def flip_first_ciphertext_byte(vec, tmp_path):
    """Copy the protected case to tmp_path and flip one bit of encrypted element
    bytes (in the model, or in a side file). Returns (model bytes, model dir)."""
    copy_tree(vec.protected_path.parent, tmp_path)
    model = bytearray(vec.protected)
    man = manifest_of(bytes(model))
    for e in man.entries:
        loc = sd.read_tensor(bytes(model), e, str(tmp_path))
        b = e.spans[0][0]
        if loc.segments:  # raw / float / double: element bytes are in the file as they are
            off, n = loc.segments[0]
            assert b < n
            model[off + b] ^= 0x01
            return bytes(model), str(tmp_path)
        if loc.ext_path:
            data = bytearray(pathlib.Path(loc.ext_path).read_bytes())
            data[loc.ext_offset + b] ^= 0x01
            pathlib.Path(loc.ext_path).write_bytes(bytes(data))
            return bytes(model), str(tmp_path)
    raise AssertionError("no raw/float/double/external tensor in this vector")


def test_vector_flipped_ciphertext_byte_is_modified(vector, tmp_path):
    model, model_dir = flip_first_ciphertext_byte(vector, tmp_path)
    with pytest.raises(sd.Modified, match="^modified"):
        sd.decrypt_all(model, key=vector.key, model_dir=model_dir)
    # with the wrong key, the key check comes first
    with pytest.raises(sd.WrongKey):
        sd.decrypt_all(model, key=wrong_key(vector.key), model_dir=model_dir)


def test_flipped_varint_element_is_modified():
    vec = Vector(*next(c for c in VECTOR_CASES if c[0] == "typed_fields_ctr"))
    man = manifest_of(vec.protected)
    e = next(e for e in man.entries if e.storage in sd.VARINT_STORAGES)
    chain = sd.locate(vec.protected, sd.parse_locator(e.locator))
    t = chain[-1]
    tb = vec.protected[t.vstart:t.vend]
    f = sd.decode_message(tb)[sd.STORAGE_FIELD[e.storage]][0]
    model = bytearray(vec.protected)
    model[t.vstart + f.vstart] ^= 0x01  # low bit of the first value = bit 0 of element byte 0
    with pytest.raises(sd.Modified, match="MAC"):
        sd.decrypt(bytes(model), key=vec.key)


def test_flipped_manifest_byte_is_modified():
    vec = Vector(*next(c for c in VECTOR_CASES if c[0] == "cnn_torch_fp"))
    field, env = sd.find_envelope(vec.protected)
    ef = sd.decode_message(env)
    mfield = ef[1][0]
    m = bytearray(sd.get_bytes(env, ef, 1))
    m[-1] ^= 0x01  # inside the last field of the manifest (chunk_size varint / policy_summary)
    new_env = env[:mfield.vstart] + bytes(m) + env[mfield.vend:]
    model = replace_envelope(vec.protected, field, new_env)
    with pytest.raises(sd.Modified):
        sd.decrypt(model, key=vec.key)


def test_clear_bytes_are_not_covered_by_the_mac():
    """§7: bytes outside the spans are not covered; decryption succeeds, output differs."""
    vec = Vector(*next(c for c in VECTOR_CASES if c[0] == "cnn_torch_fp"))
    man = manifest_of(vec.protected)
    e = next(e for e in man.entries if e.spans[-1][1] < e.nbytes)
    loc = sd.read_tensor(vec.protected, e, None)
    model = bytearray(vec.protected)
    model[loc.segments[0][0] + e.spans[-1][1]] ^= 0x01
    out = sd.decrypt(bytes(model), key=vec.key)
    assert out != vec.original and len(out) == len(vec.original)


def entry_field(key: bytes, value: bytes) -> bytes:
    body = b"\x0a" + sd.encode_varint(len(key)) + key + b"\x12" + sd.encode_varint(len(value)) + value
    return b"\x72" + sd.encode_varint(len(body)) + body  # ModelProto field 14, length-delimited


def replace_envelope(model, field, env):
    import base64

    return model[:field.start] + entry_field(b"onnx-protect/v1", base64.b64encode(env)) + model[field.end:]


def test_unsupported_version_key():
    """Format 2 §1: a single manifest key other than v1 and v2 is an unsupported version;
    a second manifest key next to the v1 entry is "modified"."""
    vec = Vector(*next(c for c in VECTOR_CASES if c[0] == "cnn_torch_fp"))
    field, env = sd.find_envelope(vec.protected)
    import base64

    model = vec.protected[:field.start] + entry_field(b"onnx-protect/v3", base64.b64encode(env))
    with pytest.raises(sd.UnsupportedVersion, match="^unsupported version"):
        sd.decrypt(model, key=vec.key)
    with pytest.raises(sd.Modified, match="more than one manifest"):
        sd.decrypt(vec.protected + entry_field(b"onnx-protect/v3", b"x"), key=vec.key)


def test_unsupported_format_version():
    vec = Vector(*next(c for c in VECTOR_CASES if c[0] == "cnn_torch_fp"))
    field, env = sd.find_envelope(vec.protected)
    ef = sd.decode_message(env)
    mfield = ef[1][0]
    m = sd.get_bytes(env, ef, 1)
    assert m[:2] == b"\x08\x01"
    new_env = env[:mfield.start] + b"\x0a" + sd.encode_varint(len(m)) + b"\x08\x02" + m[2:] + env[mfield.vend:]
    with pytest.raises(sd.UnsupportedVersion, match="format_version 2"):
        sd.decrypt(replace_envelope(vec.protected, field, new_env), key=vec.key)


def test_two_v1_entries_are_refused():
    vec = Vector(*next(c for c in VECTOR_CASES if c[0] == "cnn_torch_fp"))
    field, _ = sd.find_envelope(vec.protected)
    with pytest.raises(sd.Modified):
        sd.decrypt(vec.protected + vec.protected[field.start:field.end], key=vec.key)


def test_renamed_tensor_is_modified():
    vec = Vector(*next(c for c in VECTOR_CASES if c[0] == "cnn_torch_fp"))
    t = sd.locate(vec.protected, sd.parse_locator("7.0/5.0"))[-1]
    i = vec.protected.index(b"conv1.weight", t.vstart)
    model = bytearray(vec.protected)
    model[i + 11] = ord("X")
    with pytest.raises(sd.Modified, match="name"):
        sd.decrypt(bytes(model), key=vec.key)


def test_external_path_escape_is_refused(tmp_path):
    vec = Vector(*next(c for c in VECTOR_CASES if c[0] == "external_data_ctr"))
    with pytest.raises(sd.UnsafePath):
        sd.safe_external_path(str(tmp_path), "../weights.bin")
    with pytest.raises(sd.UnsafePath):
        sd.safe_external_path(str(tmp_path), "/etc/passwd")
    # A symbolic link leading out of the directory is followed (format.md §5).
    d = tmp_path / "m"
    copy_tree(vec.protected_path.parent, d)
    (d / "weights.bin").unlink()
    outside = tmp_path / "outside.bin"
    shutil.copy(vec.protected_path.parent / "weights.bin", outside)
    (d / "weights.bin").symlink_to(outside)
    assert sd.decrypt_all(vec.protected, key=vec.key, model_dir=str(d))


def test_cli_decrypts_external_vector(tmp_path):
    vec = Vector(*next(c for c in VECTOR_CASES if c[0] == "external_data_ctr"))
    out = tmp_path / "restored" / "model.onnx"
    out.parent.mkdir()
    r = subprocess.run([sys.executable, str(HERE / "spec_decryptor.py"), str(vec.protected_path), str(out),
                        "--key-file", str(vec.dir / "key.hex")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == vec.original
    for name, data in vec.side_files("original").items():
        assert (out.parent / name).read_bytes() == data
    r = subprocess.run([sys.executable, str(HERE / "spec_decryptor.py"), str(vec.protected_path),
                        str(tmp_path / "x.onnx"), "--key-file", str(VECTORS / "cnn_torch_fp" / "key.hex")],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "wrong key" in r.stderr


@needs_bin
def test_binary_decrypts_vectors(vector, tmp_path):
    """The vectors stay valid for the reference implementation too."""
    copy_tree(vector.protected_path.parent, tmp_path / "in")
    (tmp_path / "out").mkdir()
    run_bin("decrypt", tmp_path / "in" / vector.protected_path.name, "-o", tmp_path / "out" / "model.onnx",
            "--key-file", vector.dir / "key.hex", "-q")
    assert (tmp_path / "out" / "model.onnx").read_bytes() == vector.original
    for name, data in vector.side_files("original").items():
        assert (tmp_path / "out" / name).read_bytes() == data


# --------------------------------------------------------------------------
# §6 derivations against crates/crypto/tests/vectors/derivation-v1.txt


def derivation_records():
    recs, cur = [], {}
    for line in DERIVATION.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            if cur and not line:
                recs.append(cur)
                cur = {}
            continue
        k, v = (x.strip() for x in line.split("=", 1))
        cur[k] = v
    if cur:
        recs.append(cur)
    return {r["case"]: r for r in recs}


@pytest.mark.skipif(not DERIVATION.is_file(), reason="derivation vectors missing")
def test_key_derivation_vectors():
    recs = derivation_records()
    r = recs["derivation-v1"]
    master, salt = bytes.fromhex(r["master"]), bytes.fromhex(r["salt"])
    prk = sd.hkdf_extract(salt, master)
    assert prk.hex() == r["prk"]
    for s in (0, 1):
        assert sd.hkdf_expand(prk, sd.LABEL_TENSOR + struct.pack(">Q", s), 32).hex() == r[f"tensor-key-{s}"]
    assert sd.hkdf_expand(prk, sd.LABEL_MAC, 32).hex() == r["mac-key"]
    assert sd.hkdf_expand(prk, sd.LABEL_KCV, 16).hex() == r["key-check"]
    k0 = bytes.fromhex(r["tensor-key-0"])
    assert sd.keystream(k0, 0, 32).hex() == r["keystream-0"]
    assert sd.keystream(k0, 5, 27) == bytes.fromhex(r["keystream-0"])[5:27]  # any span on its own
    p = recs["passphrase-v1"]
    master = sd.argon2id(bytes.fromhex(p["passphrase"]), bytes.fromhex(p["kdf-salt"]),
                         int(p["m-cost-kib"], 16), int(p["t-cost"], 16), int(p["p-cost"], 16))
    assert master.hex() == p["master"]


# --------------------------------------------------------------------------
# live round trips with the binary: it writes format 2, read by spec_v2.py


def v2_entries(model):
    """The (entry, tensor, span pairs) of a format-2 model, checked keyless (§12 steps 1-2)."""
    return v2.open_model(model).entries


@needs_bin
@pytest.mark.parametrize("coefficient", [None, "1"], ids=["default-coef", "coef1"])
@pytest.mark.parametrize("mode", ["ctr", "fp"])
@pytest.mark.parametrize("model", MODELS, ids=lambda p: p.parent.name)
def test_live_round_trip(model, mode, coefficient, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    copy_tree(model.parent, src)
    out.mkdir()
    run_bin("keygen", "-o", tmp_path / "k")
    args = ["encrypt", src / "model.onnx", "-o", out / "model.onnx", "--key-file", tmp_path / "k",
            "--mode", f"*={mode}", "--coefficient", "*=0.5", "-q"]
    if coefficient:
        args += ["--coefficient", f"*={coefficient}"]
    run_bin(*args)
    key = sd.parse_key_file((tmp_path / "k").read_bytes())
    protected = (out / "model.onnx").read_bytes()
    assert v2.manifest_version(protected) == 2
    info = v2.verify(protected, model_dir=str(out))  # keyless: checksum and content digest
    assert info["tiers"] == 1 and info["restored_tiers"] == 0
    restored, side = v2.decrypt_all(protected, key=key, model_dir=str(out))
    assert restored == model.read_bytes()
    # format 2 covers every external data file: each one comes back from the reader
    originals = {f.name: f.read_bytes() for f in model.parent.iterdir() if f.suffix == ".bin"}
    assert side == originals
    with pytest.raises(v2.WrongKey):
        v2.decrypt_all(protected, key=wrong_key(key), model_dir=str(out))


@needs_bin
def test_live_passphrase_round_trip(tmp_path):
    model = ROOT / "fixtures" / "models" / "rnn" / "model.onnx"
    env = dict(os.environ, SPEC_TEST_PASSPHRASE="correct horse battery staple ü")
    r = subprocess.run([BIN, "encrypt", str(model), "-o", str(tmp_path / "p.onnx"),
                        "--passphrase-env", "SPEC_TEST_PASSPHRASE", "--coefficient", "*=0.5", "-q"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    protected = (tmp_path / "p.onnx").read_bytes()
    stanzas = v2.open_model(protected).recipients["stanzas"]
    assert [s["kind"] for s in stanzas] == ["passphrase"] and stanzas[0]["label"] == ""
    kdf = stanzas[0]["kdf"]
    assert kdf["algorithm"] == "argon2id" and len(kdf["salt"]) == 16
    assert (kdf["m_cost_kib"], kdf["t_cost"], kdf["p_cost"]) == (65536, 3, 1)
    out = v2.decrypt(protected, passphrase="correct horse battery staple ü".encode())
    assert out == model.read_bytes()
    with pytest.raises(v2.WrongKey):
        v2.decrypt(protected, passphrase=b"correct horse battery staple")


# Synthetic models: every varint storage and element width (§4), including
# UINT64_DATA and sub-byte types, which the fixture models do not encrypt.

V = sd.encode_varint


def _ld(n, b):
    return V((n << 3) | 2) + V(len(b)) + b


def _vi(n, v):
    return V(n << 3) + V(v)


def _st(n, s):
    return _ld(n, s.encode())


def gather_model(data_type, dims, field_no, values):
    tensor = b"".join(_vi(1, d) for d in dims) + _vi(2, data_type) + _ld(field_no, b"".join(V(v) for v in values)) \
        + _st(8, "table")
    node = _st(1, "table") + _st(1, "ids") + _st(2, "y") + _st(4, "Gather")
    graph = _ld(1, node) + _st(2, "g") + _ld(5, tensor) + _ld(11, _st(1, "ids")) + _ld(12, _st(1, "y"))
    return _vi(1, 8) + _st(2, "spec-test") + _ld(7, graph) + _ld(8, _st(1, "") + _vi(2, 17))


def _sx(v, bits):
    return v - (1 << bits) if v >> (bits - 1) else v


# name: (data_type, TensorProto field, value generator)
SYNTH = {
    "INT8": (3, 5, lambda r: _sx(r.randrange(256), 8)),
    "UINT8": (2, 5, lambda r: r.randrange(256)),
    "INT16": (5, 5, lambda r: _sx(r.randrange(1 << 16), 16)),
    "UINT16": (4, 5, lambda r: r.randrange(1 << 16)),
    "BOOL": (9, 5, lambda r: r.randrange(2)),
    "FLOAT16": (10, 5, lambda r: r.randrange(1 << 16)),
    "BFLOAT16": (16, 5, lambda r: r.randrange(1 << 16)),
    "FLOAT8E4M3FN": (17, 5, lambda r: r.randrange(256)),
    "FLOAT8E5M2": (19, 5, lambda r: r.randrange(256)),
    "INT4": (22, 5, lambda r: r.randrange(256)),
    "UINT4": (21, 5, lambda r: r.randrange(256)),
    "FLOAT4E2M1": (23, 5, lambda r: r.randrange(256)),
    "UINT2": (25, 5, lambda r: r.randrange(256)),
    "INT32": (6, 5, lambda r: _sx(r.randrange(1 << 32), 32)),
    "INT64": (7, 7, lambda r: _sx(r.randrange(1 << 64), 64)),
    "UINT32": (12, 11, lambda r: r.randrange(1 << 32)),
    "UINT64": (13, 11, lambda r: r.randrange(1 << 64)),
}


@needs_bin
@pytest.mark.parametrize("coefficient", ["1", "0.5"])
@pytest.mark.parametrize("mode", ["ctr", "fp"])
@pytest.mark.parametrize("dtype", list(SYNTH))
def test_live_varint_storage(dtype, mode, coefficient, tmp_path):
    data_type, field_no, gen = SYNTH[dtype]
    bits = sd.DTYPES[data_type][1]
    dims = [6, 4] if bits >= 8 else [6, 32 // bits]  # rows of whole bytes
    numel = dims[0] * dims[1]
    rng = random.Random(f"{dtype}")
    nvalues = (numel * bits + 7) // 8 // sd.varint_width(dtype, bits)
    model = gather_model(data_type, dims, field_no, [gen(rng) for _ in range(nvalues)])
    (tmp_path / "m.onnx").write_bytes(model)
    run_bin("keygen", "-o", tmp_path / "k")
    run_bin("encrypt", tmp_path / "m.onnx", "-o", tmp_path / "p.onnx", "--key-file", tmp_path / "k",
            "--mode", f"*={mode}", "--coefficient", f"*={coefficient}", "-q")
    protected = (tmp_path / "p.onnx").read_bytes()
    entries = v2_entries(protected)
    assert len(entries) == 1 and entries[0][0]["storage"] in v2.VARINT_STORAGES
    assert entries[0][0]["tier"] == 1  # the top (and only) tier, §3
    key = sd.parse_key_file((tmp_path / "k").read_bytes())
    assert v2.decrypt(protected, key=key) == model


@needs_bin
def test_live_multi_chunk(tmp_path):
    """§9 with more than one chunk: a 5 MiB tensor against the 4 MiB chunk_size the CLI uses."""
    rng = random.Random(7)
    dims = [2, 655363]
    raw = rng.randbytes(dims[0] * dims[1] * 4)
    tensor = b"".join(_vi(1, d) for d in dims) + _vi(2, 1) + _ld(9, raw) + _st(8, "table")
    node = _st(1, "table") + _st(1, "ids") + _st(2, "y") + _st(4, "Gather")
    graph = _ld(1, node) + _st(2, "g") + _ld(5, tensor) + _ld(11, _st(1, "ids")) + _ld(12, _st(1, "y"))
    model = _vi(1, 8) + _ld(7, graph) + _ld(8, _st(1, "") + _vi(2, 17))
    (tmp_path / "m.onnx").write_bytes(model)
    run_bin("keygen", "-o", tmp_path / "k")
    run_bin("encrypt", tmp_path / "m.onnx", "-o", tmp_path / "p.onnx", "--key-file", tmp_path / "k",
            "--mode", "*=ctr", "--coefficient", "*=1", "-q")
    protected = (tmp_path / "p.onnx").read_bytes()
    op = v2.open_model(protected)
    chunk = op.header["chunk_size"]
    assert len(op.content) > chunk, "test needs more than one chunk"
    (e, _, pairs), = op.entries
    assert sum(b - a for a, b in pairs) > chunk
    key = sd.parse_key_file((tmp_path / "k").read_bytes())
    assert v2.decrypt(protected, key=key) == model
    # a flip in the second chunk is caught, with and without the key
    t = sd.locate(protected, sd.parse_locator("7.0/5.0"))[-1]
    f = sd.decode_message(protected[t.vstart:t.vend])[9][0]
    bad = bytearray(protected)
    bad[t.vstart + f.vstart + chunk + 100] ^= 0x80
    with pytest.raises(v2.Modified):
        v2.decrypt(bytes(bad), key=key)
    with pytest.raises(v2.Modified):
        v2.verify(bytes(bad))
