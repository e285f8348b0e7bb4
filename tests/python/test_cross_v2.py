"""Format 2 across two implementations: models the independent writer (spec_v2.py,
written from docs/format.md alone) protects are decrypted, partially decrypted and
verified by the onnx-protect binary, and models the binary protects are decrypted and
verified by the independent reader. Both directions must agree byte for byte.

Runs the built binary (target/debug/onnx-protect, or $ONNX_PROTECT_BIN).
"""
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import spec_v2 as v2  # noqa: E402
import test_spec_v2 as t2  # noqa: E402

ROOT = HERE.parents[1]
BIN = os.environ.get("ONNX_PROTECT_BIN", str(ROOT / "target" / "debug" / "onnx-protect"))
pytestmark = pytest.mark.skipif(not os.path.exists(BIN), reason=f"{BIN} is not built")


def run(*args, ok=True):
    p = subprocess.run([BIN, *map(str, args)], capture_output=True, text=True)
    if ok:
        assert p.returncode == 0, f"{args}: {p.stderr}"
    return p


def key_file(path, key: bytes):
    path.write_text(key.hex() + "\n")
    return path


def write_protected(p, dest):
    """The independent writer's output as files: model.onnx and its side files."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "model.onnx").write_bytes(p.model)
    for f in p.dir.iterdir():
        if f.name != "model.onnx":
            shutil.copy(f, dest / f.name)
    return dest / "model.onnx"


@pytest.mark.parametrize("mode", ["ctr", "fp", "dp"])
@pytest.mark.parametrize("case", t2.CASES)
def test_the_binary_decrypts_what_the_independent_writer_protected(case, mode, tmp_path):
    try:
        p = t2.Protected(tmp_path / "spec", case, mode)
    except AssertionError:
        pytest.skip(f"{case} has no tensor for mode {mode}")
    model = write_protected(p, tmp_path / "in")
    k = key_file(tmp_path / "k.hex", p.top)
    run("verify", model)
    run("verify", model, "--key-file", k)
    out = tmp_path / "out" / "model.onnx"
    run("decrypt", model, "-o", out, "--key-file", k)
    assert out.read_bytes() == p.original
    for loc, data in p.originals.items():
        assert (out.parent / loc).read_bytes() == data, loc
    wrong = key_file(tmp_path / "w.hex", os.urandom(32))
    assert run("decrypt", model, "-o", tmp_path / "x.onnx", "--key-file", wrong, ok=False).returncode == 4


def test_partial_decryptions_agree_byte_for_byte(tmp_path):
    p = t2.Protected(tmp_path / "spec", "cnn_torch", "fp", tiers=3)
    model = write_protected(p, tmp_path / "in")
    for t in (1, 2):
        k = key_file(tmp_path / f"k{t}.hex", p.keys[t])
        out = tmp_path / f"t{t}.onnx"
        run("decrypt", model, "-o", out, "--key-file", k)
        ours, _ = p.decrypt(key=p.keys[t])
        assert out.read_bytes() == ours, f"tier {t}: the partial outputs differ"
        # Each implementation reads the other's partial output with the top key.
        top = key_file(tmp_path / "top.hex", p.top)
        full = tmp_path / f"full{t}.onnx"
        run("decrypt", out, "-o", full, "--key-file", top)
        assert full.read_bytes() == p.original
        back, _ = v2.decrypt_all(out.read_bytes(), key=p.top)
        assert back == p.original


def test_signatures_and_x25519_recipients_cross(tmp_path):
    seed = os.urandom(32)
    ident = tmp_path / "id.txt"
    run("keygen", "--recipient", "-o", ident)
    recipient = next(line.split()[-1] for line in ident.read_text().splitlines() if "public key" in line)
    p = t2.Protected(tmp_path / "spec", "cnn_torch", "ctr", recipients=[v2.X25519Recipient(recipient)],
                     signing_keys=[seed])
    model = write_protected(p, tmp_path / "in")
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    signer = v2.signer_string(Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw())
    run("verify", model, "--signer", signer)
    out = tmp_path / "out.onnx"
    run("decrypt", model, "-o", out, "--identity", ident, "--signer", signer)
    assert out.read_bytes() == p.original
    other = v2.signer_string(Ed25519PrivateKey.generate().public_key().public_bytes_raw())
    assert run("verify", model, "--signer", other, ok=False).returncode == 5


@pytest.mark.parametrize("mode", ["ctr", "fp", "dp"])
@pytest.mark.parametrize("case", ["cnn_torch", "typed_fields", "fp16", "external_data", "if_constants"])
def test_the_independent_reader_decrypts_what_the_binary_protected(case, mode, tmp_path):
    src = t2.copy_case(case, tmp_path / "src")
    k = tmp_path / "k.key"
    run("keygen", "-o", k)
    sk = tmp_path / "sig.key"
    run("keygen", "--signing", "-o", sk)
    out = tmp_path / "enc" / "model.onnx"
    r = run("encrypt", src, "-o", out, "--key-file", k, "--mode", f"*={mode}", "--coefficient", "*=0.6",
            "--sign-key", sk, ok=False)
    if r.returncode != 0:
        # Refused policies: nothing to encrypt, or dp spans under 16 elements (the dp
        # vectors of fixtures/vectors cover that mode for the independent reader).
        assert "0 bytes" in r.stderr or "at least 16 elements" in r.stderr, r.stderr
        pytest.skip(f"{case}: the policy is refused in mode {mode}")
    key = v2.read_key_file(str(k))
    signer = v2.parse_signer(next(line.split()[-1] for line in sk.read_text().splitlines() if "public key" in line))
    back, side = v2.decrypt_all(out.read_bytes(), key=key, model_dir=str(out.parent), model_name="model.onnx",
                                signers=[signer])
    assert back == src.read_bytes()
    for loc, data in side.items():
        assert data == (src.parent / loc).read_bytes(), loc
    v2.verify(out.read_bytes(), model_dir=str(out.parent), model_name="model.onnx")


@pytest.mark.parametrize("mode", ["ctr", "fp"])
def test_the_independent_reader_restores_the_names_of_a_same_folder_copy(mode, tmp_path):
    """model.onnx -> model.enc.onnx in one folder: the binary names the protected copy's
    files itself (Header.original_external_files); the reader writes the original names
    and bytes back, and refuses the copy once a data file is renamed or changed."""
    src = t2.copy_case("external_data", tmp_path / "src")
    k = tmp_path / "k.key"
    run("keygen", "-o", k)
    out = src.parent / "model.enc.onnx"
    run("encrypt", src, "-o", out, "--key-file", k, "--mode", f"*={mode}", "--coefficient", "*=0.6")
    key = v2.read_key_file(str(k))
    kw = dict(key=key, model_dir=str(src.parent), model_name=out.name)
    op = v2.open_model(out.read_bytes(), str(src.parent), out.name)
    assert op.header["external_files"] == ["model.enc.onnx.1.data", "model.enc.onnx.2.data"]
    assert op.header["original_external_files"] == ["weights.bin", "extra.bin"]
    back, side = v2.decrypt_all(out.read_bytes(), **kw)
    assert back == src.read_bytes()
    assert sorted(side) == ["extra.bin", "weights.bin"]
    for loc, data in side.items():
        assert data == (src.parent / loc).read_bytes(), loc
    one = src.parent / "model.enc.onnx.1.data"
    one.rename(src.parent / "moved.data")
    with pytest.raises(v2.MissingFile):
        v2.decrypt_all(out.read_bytes(), **kw)
    (src.parent / "moved.data").rename(one)
    data = one.read_bytes()
    one.write_bytes(bytes([data[0] ^ 1]) + data[1:])
    with pytest.raises(v2.Modified):
        v2.decrypt_all(out.read_bytes(), **kw)


def test_the_independent_reader_opens_the_binarys_tiers_and_recipients(tmp_path):
    src = t2.copy_case("cnn_torch", tmp_path / "src")
    k = tmp_path / "k.key"
    run("keygen", "--tiers", "3", "-o", k)
    ident = tmp_path / "id.txt"
    run("keygen", "--recipient", "-o", ident)
    recipient = next(line.split()[-1] for line in ident.read_text().splitlines() if "public key" in line)
    out = tmp_path / "enc.onnx"
    run("encrypt", src, "-o", out, "--key-file", k, "--tiers", "3", "--mode", "*=fp", "--coefficient", "*=0.5",
        "--recipient", f"2:{recipient}")
    model = out.read_bytes()
    top = v2.read_key_file(str(k))
    assert v2.decrypt_all(model, key=top)[0] == src.read_bytes()
    for t in (1, 2):
        tier_key = v2.read_key_file(str(k) + f".tier{t}")
        partial, _ = v2.decrypt_all(model, key=tier_key)
        mine = tmp_path / f"p{t}.onnx"
        run("decrypt", out, "-o", mine, "--key-file", str(k) + f".tier{t}")
        assert mine.read_bytes() == partial, f"tier {t}"
    partial, _ = v2.decrypt_all(model, identities=v2.read_identity_file(str(ident)))
    mine = tmp_path / "pid.onnx"
    run("decrypt", out, "-o", mine, "--identity", ident)
    assert mine.read_bytes() == partial


# --------------------------------------------------------------------------
# §3 Header.external_leaves: the external files' content leaves, written and checked alike


def external_protected(writer, tmp_path):
    """fixtures/models/external_data protected by `writer` ("spec": spec_v2.py, or the
    binary) into tmp_path/in: (model path, key file, key W, original model path)."""
    if writer == "spec":
        p = t2.Protected(tmp_path / "spec", "external_data", "ctr")
        return write_protected(p, tmp_path / "in"), key_file(tmp_path / "k.hex", p.top), p.top, p.src
    src = t2.copy_case("external_data", tmp_path / "src")
    k = tmp_path / "k.key"
    run("keygen", "-o", k)
    model = tmp_path / "in" / "model.onnx"
    run("encrypt", src, "-o", model, "--key-file", k, "--mode", "*=ctr")
    return model, k, v2.read_key_file(str(k)), src


@pytest.fixture(params=["spec", "binary"])
def ext(request, tmp_path):
    return external_protected(request.param, tmp_path)


def variant(model, name, data):
    """`data` as a model file next to `model`, sharing its external files."""
    path = model.parent / f"{name}.onnx"
    path.write_bytes(data)
    return path


def is_modified(r, what="chunk hashes"):
    """The binary's refusal as "modified" (exit 5), naming the external files' chunk hashes."""
    assert r.returncode == 5 and "modified" in r.stderr and what in r.stderr, (r.returncode, r.stderr)


def refused_by_both(path, key_path, key, keyless=True, match="external_leaves"):
    """Both implementations refuse `path` as "modified": without a key when `keyless`, and with it."""
    d, out = str(path.parent), path.parent.parent / "out" / path.stem / "model.onnx"
    if keyless:
        is_modified(run("verify", path, ok=False))
        with pytest.raises(v2.Modified, match=match):
            v2.verify(path.read_bytes(), model_dir=d, model_name=path.name)
    is_modified(run("verify", path, "--key-file", key_path, ok=False))
    is_modified(run("decrypt", path, "-o", out, "--key-file", key_path, ok=False))
    assert not out.parent.exists() or not any(out.parent.iterdir()), "nothing is written on a refusal"
    with pytest.raises(v2.Modified, match=match):
        v2.decrypt_all(path.read_bytes(), key=key, model_dir=d, model_name=path.name)


def accepted_by_both(path, key_path, key, src):
    """Both verify `path` (without and with the key) and decrypt it to the original files."""
    d = str(path.parent)
    run("verify", path)
    run("verify", path, "--key-file", key_path)
    v2.verify(path.read_bytes(), model_dir=d, model_name=path.name)
    out = path.parent.parent / "out" / path.stem / "model.onnx"
    run("decrypt", path, "-o", out, "--key-file", key_path)
    back, side = v2.decrypt_all(path.read_bytes(), key=key, model_dir=d, model_name=path.name)
    assert out.read_bytes() == back == src.read_bytes()
    assert sorted(side) == ["extra.bin", "weights.bin"]
    for loc, data in side.items():
        assert (out.parent / loc).read_bytes() == data == (src.parent / loc).read_bytes(), loc


def test_external_leaves_are_listed_and_both_decrypt(ext):
    """(a) Both writers list the leaves of the external files as written; both readers
    check and decrypt either's file."""
    model, kp, key, src = ext
    op = v2.open_model(model.read_bytes(), str(model.parent), "model.onnx")
    h, files = op.header, op.ext_list()
    assert h["external_files"] == ["weights.bin", "extra.bin"]
    assert h["external_sizes"] == [len(f) for f in files]
    assert h["external_leaves"] == v2.external_leaves(files, h["chunk_size"])
    assert len(h["external_leaves"]) == 32 * 2
    accepted_by_both(model, kp, key, src)


@pytest.mark.parametrize("name", list(t2.LEAF_LENGTH_MUTATIONS))
def test_external_leaves_of_another_length_are_refused_by_both_without_a_key(ext, name):
    """(b) The shape rule of §3, at step 1: only the checksum is re-sealed (no key), and
    keyless verification, which does not see the MACs, refuses already."""
    model, kp, key, _ = ext
    path = variant(model, name, t2.reseal(model.read_bytes(), header=t2.LEAF_LENGTH_MUTATIONS[name]))
    refused_by_both(path, kp, key)


def test_external_leaves_without_external_data_are_refused_by_both(tmp_path):
    src = t2.copy_case("cnn_torch", tmp_path / "src")
    k = tmp_path / "k.key"
    run("keygen", "-o", k)
    model = tmp_path / "in" / "model.onnx"
    run("encrypt", src, "-o", model, "--key-file", k)
    path = variant(model, "leaves", t2.reseal(model.read_bytes(), header=lambda h: h.update(
        external_leaves=bytes(32))))
    refused_by_both(path, k, v2.read_key_file(str(k)))


def test_a_wrong_leaf_with_the_macs_recomputed_is_refused_by_both(ext):
    """(c) The key holder changes one listed leaf and re-seals every MAC: the content and
    its digest are untouched, and step 6 finds the leaf that is not the file's."""
    model, kp, key, _ = ext
    prot = model.read_bytes()
    keys = v2.unlock(v2.open_model(prot, str(model.parent), "model.onnx"), key=key).keys
    leaves = t2.envelope_parts(prot)[2]["external_leaves"]
    for at in (0, 63):  # a bit of the first leaf (weights.bin), of the last (extra.bin)
        path = variant(model, f"leaf{at}", t2.reseal(prot, header=lambda h: h.update(
            external_leaves=t2.flip(leaves, at)), macs_with=keys))
        refused_by_both(path, kp, key)
    swapped = variant(model, "swapped", t2.reseal(prot, header=lambda h: h.update(
        external_leaves=leaves[32:] + leaves[:32]), macs_with=keys))
    refused_by_both(swapped, kp, key)


def test_a_header_without_listed_leaves_is_accepted_by_both(ext):
    """(d) Files written before the field have none: removed and re-sealed by the key
    holder, both accept it; removed without the key, the MACs tell (it is authenticated)."""
    model, kp, key, src = ext
    prot = model.read_bytes()
    keys = v2.unlock(v2.open_model(prot, str(model.parent), "model.onnx"), key=key).keys
    drop = lambda h: h.update(external_leaves=b"")  # noqa: E731
    without = variant(model, "without", t2.reseal(prot, header=drop, macs_with=keys))
    assert t2.envelope_parts(without.read_bytes())[2]["external_leaves"] == b""
    accepted_by_both(without, kp, key, src)
    unsealed = variant(model, "unsealed", t2.reseal(prot, header=drop))
    run("verify", unsealed)  # keyless: the header is not part of the content digest
    v2.verify(unsealed.read_bytes(), model_dir=str(model.parent), model_name=unsealed.name)
    out = model.parent.parent / "out" / "unsealed" / "model.onnx"
    is_modified(run("decrypt", unsealed, "-o", out, "--key-file", kp, ok=False), "MAC")
    with pytest.raises(v2.Modified, match="MAC"):
        v2.decrypt_all(unsealed.read_bytes(), key=key, model_dir=str(model.parent), model_name=unsealed.name)


@pytest.mark.parametrize("writer", ["spec", "binary"])
def test_partial_decryptions_with_external_data_list_the_canonical_leaves(writer, tmp_path):
    """§11: a partial decryption keeps the header, so its listed leaves are of the canonical
    form; both readers rebuild it with the key and compare, and agree byte for byte."""
    if writer == "spec":
        p = t2.Protected(tmp_path / "spec", "external_data", tiers=2, plan=t2.EXT_TIERED_PLAN)
        model = write_protected(p, tmp_path / "in")
        k1, top = key_file(tmp_path / "t1.hex", p.keys[1]), key_file(tmp_path / "top.hex", p.top)
        src = p.src
    else:
        src = t2.copy_case("external_data", tmp_path / "src")
        top = tmp_path / "k.key"
        run("keygen", "--tiers", "2", "-o", top)
        k1 = pathlib.Path(str(top) + ".tier1")
        model = tmp_path / "in" / "model.onnx"
        run("encrypt", src, "-o", model, "--key-file", top, "--tiers", "2", "--mode", "*=fp", "--coefficient",
            "*=0.6")
    w1, wtop = v2.read_key_file(str(k1)), v2.read_key_file(str(top))
    prot = model.read_bytes()
    h = t2.envelope_parts(prot)[2]
    assert h["external_leaves"]
    partial = tmp_path / "p1" / "model.onnx"
    run("decrypt", model, "-o", partial, "--key-file", k1)
    ours, side = v2.decrypt_all(prot, key=w1, model_dir=str(model.parent))
    assert partial.read_bytes() == ours
    for loc, data in side.items():
        assert (partial.parent / loc).read_bytes() == data, loc
    assert t2.envelope_parts(ours)[2] == h, "the header, its listed leaves included, is kept (§11)"
    stored = [(partial.parent / loc).read_bytes() for loc in h["external_files"]]
    stored_leaves = v2.external_leaves(stored, h["chunk_size"])
    if any(e["tier"] == 1 and e["storage"] == v2.S_EXTERNAL for e in h["tensors"]):
        assert stored_leaves != h["external_leaves"]
    else:
        assert writer == "binary", "the spec plan has tier-1 spans in the external files"
    # each reads the partial file: keyless (stored_digest only), and with the top key
    run("verify", partial)
    v2.verify(partial.read_bytes(), model_dir=str(partial.parent))
    full = tmp_path / "full" / "model.onnx"
    run("decrypt", partial, "-o", full, "--key-file", top)
    assert full.read_bytes() == src.read_bytes()
    assert v2.decrypt_all(partial.read_bytes(), key=wtop, model_dir=str(partial.parent))[0] == src.read_bytes()
    # the top key's holder lists other leaves and re-seals: refused with the key by both
    keys = v2.unlock(v2.open_model(prot, str(model.parent)), key=wtop).keys
    forged = {"wrong-leaf": t2.flip(h["external_leaves"], 40)}
    if stored_leaves != h["external_leaves"]:
        forged["stored-leaves"] = stored_leaves  # the files as stored are not the canonical form
    for name, leaves in forged.items():
        path = variant(partial, name, t2.reseal(partial.read_bytes(), header=lambda h: h.update(
            external_leaves=leaves), macs_with=keys))
        # keyless verification of a partially decrypted file checks stored_digest only (§12)
        run("verify", path)
        v2.verify(path.read_bytes(), model_dir=str(path.parent), model_name=path.name)
        refused_by_both(path, top, wtop, keyless=False, match="canonical form")


def two_file_model(d):
    """A model whose weights are in two external files, the first over 4 MiB (five chunks of
    the binary's chunk size for a model under 64 MiB, 1 MiB): (model path)."""
    onnx = pytest.importorskip("onnx")
    import numpy as np
    from onnx import external_data_helper, helper, numpy_helper

    rng = np.random.default_rng(7)
    d.mkdir(parents=True)
    inits = []
    for name, shape, loc in (("w_big", (1024, 1100), "big.bin"), ("w_small", (1100, 4), "small.bin")):
        a = rng.standard_normal(shape).astype(np.float32)
        (d / loc).write_bytes(a.tobytes())
        t = numpy_helper.from_array(a, name)
        external_data_helper.set_external_data(t, location=loc, offset=0, length=a.nbytes)
        t.ClearField("raw_data")
        t.data_location = onnx.TensorProto.EXTERNAL
        inits.append(t)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w_big"], ["h"]), helper.make_node("MatMul", ["h", "w_small"], ["y"])],
        "two_files", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1024])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    (d / "model.onnx").write_bytes(m.SerializeToString())
    assert os.path.getsize(d / "big.bin") > 4 << 20
    return d / "model.onnx"


def test_leaves_of_several_chunks_and_files_agree(tmp_path):
    """File 1's chunks first, then file 2's (§3): the binary's list, over five 1 MiB chunks of
    one file and one of the other, is the reader's; the reader's, over 2^16-byte chunks, is
    accepted by the binary."""
    src = two_file_model(tmp_path / "src")
    originals = {f.name: f.read_bytes() for f in src.parent.iterdir()}
    k = tmp_path / "k.key"
    run("keygen", "-o", k)
    key = v2.read_key_file(str(k))
    model = tmp_path / "bin" / "model.onnx"
    run("encrypt", src, "-o", model, "--key-file", k)
    op = v2.open_model(model.read_bytes(), str(model.parent), "model.onnx")
    h = op.header
    assert h["external_files"] == ["big.bin", "small.bin"] and h["chunk_size"] == 1 << 20
    assert len(h["external_leaves"]) == 32 * 6
    assert h["external_leaves"] == v2.external_leaves(op.ext_list(), h["chunk_size"])
    back, side = v2.decrypt_all(model.read_bytes(), key=key, model_dir=str(model.parent))
    assert back == originals["model.onnx"] and all(side[loc] == originals[loc] for loc in side)
    # the spec writer, 2^16-byte chunks: 69 + 1 leaves, which the binary checks
    plan = {t.locator: [(0, t.nbytes)] for t in v2.encryptable(originals["model.onnx"], str(src.parent))}
    prot, side = v2.spec_encrypt_v2(originals["model.onnx"], plan, [v2.KeyRecipient(key)], chunk_size=1 << 16,
                                    model_dir=str(src.parent), model_name="model.onnx")
    spec_dir = tmp_path / "spec"
    spec_dir.mkdir()
    (spec_dir / "model.onnx").write_bytes(prot)
    t2.write_side(spec_dir, side)
    leaves = t2.envelope_parts(prot)[2]["external_leaves"]
    assert len(leaves) == 32 * (-(-len(originals["big.bin"]) // (1 << 16)) + 1)
    out = tmp_path / "out" / "model.onnx"
    run("decrypt", spec_dir / "model.onnx", "-o", out, "--key-file", k)
    assert {f.name: f.read_bytes() for f in out.parent.iterdir()} == originals
    keys = v2.unlock(v2.open_model(prot, str(spec_dir)), key=key).keys
    last = variant(spec_dir / "model.onnx", "last", t2.reseal(prot, header=lambda h: h.update(
        external_leaves=t2.flip(leaves, len(leaves) - 40)), macs_with=keys))  # big.bin's last chunk
    refused_by_both(last, k, key)


def test_the_independent_reader_opens_each_model_of_a_binary_protected_folder(tmp_path):
    """§16: each model of a folder is read as a model alone; its header's folder binding
    obeys the rules, and a binding breaking one is refused."""
    src = tmp_path / "folder"
    (src / "vision").mkdir(parents=True)
    shutil.copy(ROOT / "fixtures" / "models" / "cnn_torch" / "model.onnx", src / "decoder.onnx")
    ext = ROOT / "fixtures" / "models" / "external_data"
    for f in ext.iterdir():
        shutil.copy(f, src / "vision" / f.name)
    (src / "tokenizer.json").write_text('{"model": "bpe"}')
    k = tmp_path / "k.key"
    run("keygen", "-o", k)
    out = tmp_path / "enc"
    run("encrypt", src, "-o", out, "--key-file", k)
    key = v2.read_key_file(str(k))
    ids = set()
    for rel in ("decoder.onnx", "vision/model.onnx"):
        model = (out / rel).read_bytes()
        d = (out / rel).parent
        back, side = v2.decrypt_all(model, key=key, model_dir=str(d), model_name=pathlib.PurePath(rel).name)
        assert back == (src / rel).read_bytes()
        for loc, data in side.items():
            assert data == ((src / rel).parent / loc).read_bytes(), loc
        _, env, header, _ = t2.envelope_parts(model)
        b = header["folder"]
        assert b["path"] == rel and b["models"] == ["decoder.onnx", "vision/model.onnx"]
        assert [f["path"] for f in b["files"]] == ["tokenizer.json", "vision/expected.json"]
        ids.add(b["folder_id"])
        v2.check_folder_binding(b)
        for broken in ({"path": "other.onnx"}, {"folder_id": b"x" * 15}, {"models": b["models"][::-1]},
                       {"models": ["../decoder.onnx", "vision/model.onnx"]}):
            with pytest.raises(v2.Modified):
                v2.check_folder_binding({**b, **broken})
    assert len(ids) == 1
