"""The onnxruntime-genai test models of scripts/make_genai_model.py, made here (nothing is
downloaded): the tiny fp32 and int4 folders load into onnxruntime-genai, its tokenizer reads
the tokenizer trained here, greedy generation is the same from two loads of a folder and does
not repeat a few tokens, every weight is in model.onnx.data, the int4 model's MatMuls are
MatMulNBits, the same seed gives the same bytes and another seed other weights, and bad
arguments, a missing package or a failing builder leave no folder behind. Skipped where
onnxruntime-genai, transformers, tokenizers, torch or onnx_ir is not installed."""
import fcntl
import hashlib
import importlib.util
import logging
import os
import pathlib
import sys

import pytest

og = pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai is not installed (tests/requirements.txt)")
# Looked up, not imported: torch and transformers are imported by the tests that build.
for _name in ("transformers", "tokenizers", "torch", "onnx_ir"):
    if importlib.util.find_spec(_name) is None:
        pytest.skip(f"{_name} is not installed (tests/requirements.txt)", allow_module_level=True)
import onnx  # noqa: E402
import tokenizers  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("make_genai_model", ROOT / "scripts" / "make_genai_model.py")
gm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gm)

PROMPT = "The quick brown fox"
MAX_LENGTH = 24


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """The tiny fp32 and int4 folders (seed 0), made once for all pytest-xdist workers."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # shared by the workers of this run
    shared = base / "genai-models"
    shared.mkdir(exist_ok=True)
    with open(base / "genai-models.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return {p: shared / p if (shared / p).is_dir() else gm.make(shared / p, p) for p in ("fp32", "int4")}


def greedy(folder):
    """(prompt ids, generated ids) of a greedy generation from a fresh og.Model of folder."""
    model = og.Model(str(folder))
    tok = og.Tokenizer(model)
    prompt = [int(t) for t in tok.encode(PROMPT)]
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=MAX_LENGTH)
    g = og.Generator(model, params)
    g.append_tokens(prompt)
    while not g.is_done():
        g.generate_next_token()
    seq = [int(t) for t in g.get_sequence(0)]
    assert seq[: len(prompt)] == prompt
    return prompt, seq[len(prompt) :]


def digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("precision", ["fp32", "int4"])
def test_greedy_generation_is_deterministic_and_varied(folders, precision):
    prompt, first = greedy(folders[precision])
    _, second = greedy(folders[precision])
    assert first == second
    # Greedy decoding runs to max_length (no end token was drawn), the ids are in the
    # vocabulary, and the model does not repeat a few tokens.
    assert len(prompt) + len(first) == MAX_LENGTH
    assert all(0 <= t < gm.SHAPES[("tiny", precision)].vocab for t in first)
    assert len(set(first)) > len(first) // 2, first
    assert len(set(first[-8:])) > 3, first


@pytest.mark.parametrize("precision", ["fp32", "int4"])
def test_onnxruntime_genai_reads_the_tokenizer_trained_here(folders, precision):
    folder = folders[precision]
    model = og.Model(str(folder))
    tok = og.Tokenizer(model)
    ids = [int(t) for t in tok.encode(PROMPT)]
    assert ids == tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json")).encode(PROMPT).ids
    assert 1 < len(ids) < len(PROMPT)  # merged, not one token per byte
    assert tok.decode(ids) == PROMPT


@pytest.mark.parametrize("precision", ["fp32", "int4"])
def test_every_weight_is_in_the_external_data_file(folders, precision):
    folder = folders[precision]
    assert sorted(p.name for p in folder.iterdir()) == [
        "genai_config.json",
        "model.onnx",
        "model.onnx.data",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    m = onnx.load(folder / "model.onnx", load_external_data=False)
    assert len(m.graph.initializer) > 10
    for t in m.graph.initializer:
        assert t.data_location == onnx.TensorProto.EXTERNAL, t.name
        assert {e.key: e.value for e in t.external_data}["location"] == "model.onnx.data", t.name
    assert (folder / "model.onnx").stat().st_size < 50_000
    assert (folder / "model.onnx.data").stat().st_size > (2_000_000 if precision == "fp32" else 700_000)


def test_int4_matmuls_are_matmulnbits(folders):
    ops = {p: [n for n in onnx.load(folders[p] / "model.onnx", load_external_data=False).graph.node] for p in folders}
    nbits = [n for n in ops["int4"] if n.op_type == "MatMulNBits"]
    # Per layer q/k/v (fused), o, gate, up, down, and the output head.
    assert len(nbits) == 2 * 5 + 1
    assert all(n.domain == "com.microsoft" for n in nbits)
    assert {a.name: a.i for a in nbits[0].attribute if a.name in ("bits", "block_size")} == {"bits": 4, "block_size": 32}
    assert not [n for n in ops["int4"] if n.op_type == "MatMul"]
    assert not [n for n in ops["fp32"] if n.op_type == "MatMulNBits"]
    assert len([n for n in ops["fp32"] if n.op_type == "MatMul"]) == 2 * 5 + 1


def test_same_seed_same_bytes_other_seed_other_weights(folders, tmp_path):
    again = gm.make(tmp_path / "again", "fp32", seed=0)
    assert digests(again) == digests(folders["fp32"])
    other = gm.make(tmp_path / "other", "fp32", seed=1)
    assert (other / "model.onnx.data").read_bytes() != (again / "model.onnx.data").read_bytes()
    assert (other / "tokenizer.json").read_bytes() != (again / "tokenizer.json").read_bytes()
    # Only the folders asked for: no work folder is left beside them.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "other"]


def test_make_puts_the_root_logger_back(tmp_path, monkeypatch):
    real = gm.run_builder

    def configuring(*args):
        # What the first import of onnxruntime's int4 quantizer does, in every process.
        logging.basicConfig(level=logging.DEBUG, force=True)
        real(*args)

    monkeypatch.setattr(gm, "run_builder", configuring)
    root = logging.getLogger()
    before = (root.level, list(root.handlers))
    gm.make(tmp_path / "m", "int4")
    assert (root.level, list(root.handlers)) == before


def test_qwen2_shape(tmp_path):
    folder = gm.make(tmp_path / "qwen2", "int4", arch="qwen2")
    assert '"type": "qwen2"' in (folder / "genai_config.json").read_text()
    names = [t.name for t in onnx.load(folder / "model.onnx", load_external_data=False).graph.initializer]
    assert any(n.endswith("qkv_proj.Add.bias") for n in names)
    _, first = greedy(folder)
    assert len(set(first)) > len(first) // 2, first


def test_a_folder_that_is_not_empty_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert gm.main([str(out), "--precision", "fp32"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists and is not an empty directory" in err and str(out) in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"precision": "fp16"}, "precision 'fp16'"),
        ({"precision": "fp32", "size": "huge"}, "size 'huge'"),
        ({"precision": "fp32", "arch": "phi"}, "arch 'phi'"),
        ({"precision": "fp32", "seed": -1}, "seed -1"),
    ],
)
def test_bad_arguments_are_refused(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        gm.make(tmp_path / "out", **kwargs)
    assert not list(tmp_path.iterdir())


def test_a_missing_package_is_named_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers raises ImportError
    assert gm.main([str(tmp_path / "out"), "--precision", "int4"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("make_genai_model.py: error: transformers is not installed") and err.count("\n") == 1
    assert not list(tmp_path.iterdir())


def test_a_failing_builder_leaves_no_folder(tmp_path, capsys, monkeypatch):
    import onnxruntime_genai.models  # noqa: F401
    from onnxruntime_genai.models import builder

    def fail(*args, **kwargs):
        raise ValueError("the builder refused\nthis model")

    monkeypatch.setattr(builder, "create_model", fail)
    assert gm.main([str(tmp_path / "out"), "--precision", "fp32"]) == 1
    err = capsys.readouterr().err
    assert err == (
        "make_genai_model.py: error: onnxruntime-genai's model builder failed: ValueError: the builder refused this model\n"
    )
    assert not list(tmp_path.iterdir())
