"""Protected onnxruntime-genai folders through `onnx_protect.genai`: greedy generation
from the protected folder is token for token that of the plain folder (fp32 and int4,
external data); a changed byte of a model file, a wrong key, a missing licence and a
configuration that would write the model to disk are refused before generation; no file
written during the run holds plaintext of a weight. The models are made here by
scripts/make_genai_model.py (nothing downloaded); skipped where onnxruntime-genai,
transformers or tokenizers are not installed."""
import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import pytest

import onnx_protect as op

og = pytest.importorskip("onnxruntime_genai")
pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
pytest.importorskip("torch")  # the test models are made with torch and transformers
pytest.importorskip("onnx_ir")
import onnx_protect.genai as opg  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = os.environ.get("ONNX_PROTECT_BIN", str(ROOT / "target" / "debug" / "onnx-protect"))

_spec = importlib.util.spec_from_file_location("make_genai_model", ROOT / "scripts" / "make_genai_model.py")
make_genai_model = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_genai_model)

PROMPT = "the cat sat on"


def cli(*args):
    r = subprocess.run([BIN, *map(str, args)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r


def protect(plain, out, key, *args):
    """The folder protected in one step."""
    cli("encrypt", plain, "-o", out, "--key-file", key, "-q", *args)
    return out


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """{precision: (plain folder, protected folder, key file)}."""
    out = {}
    base = tmp_path_factory.mktemp("genai")
    key = base / "k.key"
    op.keygen(key)
    for precision in ("fp32", "int4"):
        plain = make_genai_model.make(base / f"plain-{precision}", precision)
        protected = base / f"protected-{precision}"
        protect(plain, protected, key)
        out[precision] = (plain, protected, key)
    return out


def generate(model, max_length=24):
    tok = og.Tokenizer(model)
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=max_length)
    g = og.Generator(model, params)
    g.append_tokens(tok.encode(PROMPT))
    while not g.is_done():
        g.generate_next_token()
    return [int(t) for t in g.get_sequence(0)]


@pytest.mark.parametrize("precision", ["fp32", "int4"])
def test_generation_from_the_protected_folder_is_the_plain_folders(folders, precision):
    plain, protected, key = folders[precision]
    want = generate(og.Model(str(plain)))
    model = opg.Model(protected, key_file=key)
    assert isinstance(model, og.Model)
    got = generate(model)
    assert got == want
    assert len(set(want)) > 3, "the test model generates varied tokens"
    # The model files as stored are not the plain ones: onnxruntime-genai cannot use them.
    assert (protected / "model.onnx.data").read_bytes() != (plain / "model.onnx.data").read_bytes()
    # A config made first, then the model from it, generates the same.
    config = opg.Config(protected, key_file=key)
    assert isinstance(config, og.Config)
    with pytest.raises(TypeError):
        opg.Model(config, key_file=key)  # a config carries its models
    assert generate(opg.Model(config)) == want


def test_plain_onnxruntime_genai_gets_nothing_of_use_from_the_protected_folder(folders):
    plain, protected, _ = folders["int4"]
    try:
        got = generate(og.Model(str(protected)))
    except Exception:  # onnxruntime may refuse what it reads
        return
    assert got[:5] == generate(og.Model(str(plain)))[:5]  # the prompt
    assert got[5:] != generate(og.Model(str(plain)))[5:]


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_a_changed_byte_of_a_model_file_is_refused_before_generation(folders, tmp_path):
    _, protected, key = folders["int4"]
    for name in ("model.onnx", "model.onnx.data"):
        size = (protected / name).stat().st_size
        for pos in sorted({0, 1, size // 3, size // 2, size - 2, size - 1}):
            bad = _copy(protected, tmp_path / f"{name}-{pos}")
            data = bytearray((bad / name).read_bytes())
            data[pos] ^= 0x01
            (bad / name).write_bytes(bytes(data))
            with pytest.raises(op.OnnxProtectError):
                opg.Model(bad, key_file=key)


def test_a_changed_missing_extra_or_swapped_file_of_the_folder_is_refused(folders, tmp_path):
    _, protected, key = folders["int4"]
    before = set(pathlib.Path(tempfile.gettempdir()).glob("onnx-protect-genai-*"))
    bad = _copy(protected, tmp_path / "tok")
    data = bytearray((bad / "tokenizer.json").read_bytes())
    data[len(data) // 2] ^= 0x01
    (bad / "tokenizer.json").write_bytes(bytes(data))
    with pytest.raises(op.Modified, match="tokenizer.json"):
        opg.Model(bad, key_file=key)
    bad = _copy(protected, tmp_path / "cfg")
    (bad / "genai_config.json").write_text((bad / "genai_config.json").read_text().replace("24", "25", 1) + " ")
    with pytest.raises(op.Modified, match="genai_config.json"):
        opg.Model(bad, key_file=key)
    bad = _copy(protected, tmp_path / "missing")
    (bad / "tokenizer_config.json").unlink()
    with pytest.raises(op.Modified, match="tokenizer_config.json"):
        opg.Model(bad, key_file=key)
    bad = _copy(protected, tmp_path / "extra")
    (bad / "chat_template.jinja").write_text("{{ messages }}")
    with pytest.raises(op.Modified, match="chat_template.jinja"):
        opg.Model(bad, key_file=key)
    # A folder of two models (the decoder and another ONNX file beside it), encrypted twice:
    # the models swapped within one, and one model of the other encryption put in.
    two = tmp_path / "two-plain"
    shutil.copytree(folders["int4"][0], two)
    shutil.copyfile(ROOT / "fixtures" / "models" / "cnn_torch" / "model.onnx", two / "aux.onnx")
    first, second = protect(two, tmp_path / "two-a", key), protect(two, tmp_path / "two-b", key)
    generate(opg.Model(first, key_file=key))  # the folder as protected loads
    bad = _copy(first, tmp_path / "swapped")
    (bad / "aux.onnx").rename(bad / "tmp.onnx")
    (bad / "model.onnx").rename(bad / "aux.onnx")
    (bad / "tmp.onnx").rename(bad / "model.onnx")
    with pytest.raises(op.Modified):
        opg.Model(bad, key_file=key)
    bad = _copy(first, tmp_path / "mixed")
    shutil.copyfile(second / "aux.onnx", bad / "aux.onnx")
    with pytest.raises(op.Modified):
        opg.Model(bad, key_file=key)
    after = set(pathlib.Path(tempfile.gettempdir()).glob("onnx-protect-genai-*"))
    assert after == before, "a refused folder leaves no private folder behind"


def test_a_wrong_key_and_a_missing_licence_are_refused_as_by_inference_session(folders, tmp_path, monkeypatch):
    plain, protected, _ = folders["fp32"]
    other = tmp_path / "other.key"
    op.keygen(other)
    with pytest.raises(op.WrongKey):
        opg.Model(protected, key_file=other)
    with pytest.raises(ValueError, match="a key is required"):
        opg.Model(protected)
    # A licensed folder: the model needs a licence, and without one the same class as
    # InferenceSession's is raised.
    monkeypatch.setenv("ONNX_PROTECT_LICENCE_CLOCK", str(tmp_path / "clock"))
    sk = tmp_path / "pub.sk"
    cli("keygen", "--signing", "-o", sk, "-q")
    authority = next(line.split()[-1] for line in sk.read_text().splitlines() if line.startswith("# public key:"))
    key = tmp_path / "k.key"
    op.keygen(key)
    licensed = tmp_path / "licensed"
    protect(plain, licensed, key, "--licence-authority", authority, "--model-id", "llm")
    with pytest.raises(op.LicenceMissing) as e:
        opg.Model(licensed, key_file=key)
    with pytest.raises(op.LicenceMissing) as s:
        op.InferenceSession(licensed / "model.onnx", key_file=key)
    assert e.value.kind == s.value.kind == "licence_missing"


@pytest.mark.parametrize(
    "entry",
    [
        {"ep.context_enable": "1"},
        {"ep.context_file_path": "ctx.onnx"},
        {"custom_ops_library": "libcustom.so"},
        {"provider_options": [{"OpenVINO": {"cache_dir": "cache"}}]},
    ],
)
def test_a_configuration_that_writes_the_model_to_disk_is_refused(folders, tmp_path, entry):
    plain, _, key = folders["fp32"]
    bad = _copy(plain, tmp_path / "plain")
    cfg = json.loads((bad / "genai_config.json").read_text())
    cfg["model"]["decoder"].setdefault("session_options", {}).update(entry)
    (bad / "genai_config.json").write_text(json.dumps(cfg))
    protected = protect(bad, tmp_path / "protected", key)
    with pytest.raises(op.UnsafeSessionOptions):
        opg.Model(protected, key_file=key)
    # Changed after protection, the configuration is refused as a changed file.
    _, protected, key = folders["fp32"]
    bad = _copy(protected, tmp_path / "changed")
    (bad / "genai_config.json").write_text(json.dumps(cfg))
    with pytest.raises(op.Modified, match="genai_config.json"):
        opg.Model(bad, key_file=key)


CHILD = r"""
import os, sys, threading, time, json
import onnxruntime_genai as og
import onnx_protect.genai as opg
protected, key, plain_data = sys.argv[1:4]
tmp = os.environ["TMPDIR"]
seen = {}
stop = threading.Event()
def watch():
    while not stop.is_set():
        for base in (tmp, protected):
            for d, _, names in os.walk(base):
                for n in names:
                    p = os.path.join(d, n)
                    try:
                        with open(p, "rb") as f:
                            seen.setdefault(p, set()).add(f.read())
                    except OSError:
                        pass
        time.sleep(0.001)
t = threading.Thread(target=watch, daemon=True)
t.start()
m = opg.Model(protected, key_file=key)
tok = og.Tokenizer(m)
p = og.GeneratorParams(m)
p.set_search_options(do_sample=False, max_length=16)
g = og.Generator(m, p)
g.append_tokens(tok.encode("the cat sat on"))
while not g.is_done():
    g.generate_next_token()
private = m._onnx_protect.private
del g, p, tok, m
import gc; gc.collect()
time.sleep(0.05)
stop.set(); t.join()
import onnx
import onnx_protect as op
encrypted = {t["name"] for t in op.inspect(os.path.join(protected, "model.onnx"))["protection"]["tensors"]}
plain = onnx.load(os.path.join(os.path.dirname(plain_data), "model.onnx"), load_external_data=False)
data = open(plain_data, "rb").read()
markers = []
for t in plain.graph.initializer:
    info = {kv.key: kv.value for kv in t.external_data}
    if t.name in encrypted and "offset" in info and int(info["length"]) >= 64:
        mk = data[int(info["offset"]):int(info["offset"]) + 64]
        if len(set(mk)) > 16:  # not a constant pattern found anywhere
            markers.append(mk)
leaks = sorted({p for p, vs in seen.items() for v in vs for mk in markers if mk in v})
print(json.dumps({"markers": len(markers), "leaks": leaks, "private_left": os.path.exists(private),
                  "seen": sorted(seen)}))
"""


def test_no_plaintext_reaches_a_file_and_the_private_folder_goes(folders, tmp_path):
    plain, protected, key = folders["int4"]
    fresh = tmp_path / "tmp"
    fresh.mkdir()
    env = dict(os.environ, TMPDIR=str(fresh))
    r = subprocess.run(
        [sys.executable, "-c", CHILD, str(protected), str(key), str(plain / "model.onnx.data")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["markers"] >= 10
    assert res["leaks"] == []
    assert not res["private_left"], "the private folder is removed with the model"
    assert any("onnx-protect-genai-" in p for p in res["seen"]), "the watcher saw the private folder"


LIBDIR = pathlib.Path(os.environ.get("ONNX_PROTECT_CAPI_LIBDIR", ROOT / "target" / "debug"))


def test_the_c_path_generates_the_plain_folders_tokens(folders, tmp_path):
    plain, protected, key = folders["int4"]
    lib = LIBDIR / "libonnx_protect.so"
    if not lib.exists():
        pytest.skip(f"{lib} is not built (cargo build -p onnx-protect-capi)")
    example = ROOT / "examples" / "c" / "genai_ctypes.py"
    r = subprocess.run([sys.executable, str(example), str(lib), str(protected), str(key)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("tokens:")[1].split() == [str(t) for t in generate(og.Model(str(plain)))]
    bad = _copy(protected, tmp_path / "bad")
    data = bytearray((bad / "model.onnx.data").read_bytes())
    data[len(data) // 2] ^= 0x01
    (bad / "model.onnx.data").write_bytes(bytes(data))
    r = subprocess.run([sys.executable, str(example), str(lib), str(bad), str(key)], capture_output=True, text=True)
    assert r.returncode != 0 and "tokens:" not in r.stdout
    assert "modified" in r.stderr.lower() or "MODIFIED" in r.stderr, r.stderr
    # The folder check in C: a changed tokenizer file and an extra file end it before any
    # model is opened (status 9, MODIFIED), nothing generated.
    for what, change in [
        ("changed tokenizer", lambda d: (d / "tokenizer.json").write_bytes((d / "tokenizer.json").read_bytes() + b" ")),
        ("extra file", lambda d: (d / "notes.txt").write_text("x")),
    ]:
        bad = _copy(protected, tmp_path / what.replace(" ", "-"))
        change(bad)
        r = subprocess.run([sys.executable, str(example), str(lib), str(bad), str(key)], capture_output=True, text=True)
        assert r.returncode != 0 and "tokens:" not in r.stdout, what
        assert r.stderr.startswith("folder:") and "(status 9)" in r.stderr, f"{what}: {r.stderr}"


def test_private_folders_of_killed_processes_are_removed_and_live_ones_kept(folders, tmp_path, monkeypatch):
    _, protected, key = folders["fp32"]
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    tempfile.tempdir = None  # re-read TMPDIR
    try:
        gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        dead_pid = int(gone.stdout)
        stale = tmp_path / f"onnx-protect-genai-{dead_pid}-abc"
        live = tmp_path / f"onnx-protect-genai-{os.getppid()}-def"
        other = tmp_path / "onnx-protect-genai-notapid"
        for d in (stale, live, other):
            d.mkdir()
            (d / "genai_config.json").write_text("{}")
        model = opg.Model(protected, key_file=key)
        assert not stale.exists(), "the folder of a process that is gone"
        assert live.exists() and other.exists(), "a live process's folder and a folder of another name stay"
        del model
    finally:
        tempfile.tempdir = None
