"""The training attacks' interpreter (``onnx_protect._torch_graph``) on the ONNX backend
test corpus (``scripts/fetch-corpus.sh``: the tests of onnx 1.22.0, each a model with given
inputs and the reference outputs: one operator (node), PyTorch-converted layers, simple
graphs; and the light ImageNet models, against onnxruntime): every test whose operators the
interpreter lists either gives the reference's first output (within 1e-3 relative, 1e-4
absolute; NaN where it has NaN) or is refused by name (``Unsupported``), never another
exception. Inputs after the first are made constants (the interpreter takes one data input),
and tests whose first input has no PyTorch type (float8, int4, ...) are left out. The few that
differ are listed with why."""
import pathlib
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the interpreter is PyTorch (tests/requirements-torch.txt)")
onnx = pytest.importorskip("onnx")

from onnx import numpy_helper  # noqa: E402

from onnx_protect import _torch_graph as tg  # noqa: E402

DATA = pathlib.Path(__file__).resolve().parents[2] / "corpus" / "data"
# Folders of one-model tests with inputs and reference outputs.
FOLDERS = ("node", "pytorch-converted", "pytorch-operator", "simple")

# Reference outputs the interpreter does not reproduce, and why that does not touch the attacks.
DIFFERENT = {
    # Training-mode BatchNormalization (`training_mode = 1`) and Dropout with a ratio: the
    # interpreter runs a graph as exported for inference.
    "test_batchnorm_epsilon_training_mode", "test_batchnorm_example_training_mode",
    "test_training_dropout", "test_training_dropout_default", "test_training_dropout_default_mask",
    "test_training_dropout_mask",
    # Casts to bfloat16: the interpreter computes in float32 (rounding to bfloat16 differs).
    "test_cast_FLOAT_to_BFLOAT16", "test_castlike_FLOAT_to_BFLOAT16", "test_castlike_FLOAT_to_BFLOAT16_expanded",
}


def tensors(folder, kind):
    files = sorted(folder.glob(f"{kind}_*.pb"), key=lambda p: int(p.stem.split("_")[-1]))
    return [numpy_helper.to_array(onnx.load_tensor(str(f))) for f in files]


def cases():
    return sorted(f"{f}/{p.name}" for f in FOLDERS if (DATA / f).is_dir()
                  for p in (DATA / f).iterdir() if (p / "model.onnx").is_file())


def run(name):
    """'match', 'refused: ...', 'skipped', or what went wrong."""
    d = DATA / name
    m = onnx.load(str(d / "model.onnx"))
    if any(n.domain not in ("", "ai.onnx") or n.op_type not in tg.SUPPORTED_OPS for n in m.graph.node):
        return "skipped"
    try:
        ins, outs = tensors(d / "test_data_set_0", "input"), tensors(d / "test_data_set_0", "output")
        x = torch.from_numpy(np.array(ins[0], order="C"))  # a 0-d input stays 0-d
    except (TypeError, ValueError, IndexError):  # sequences, optionals, types torch lacks
        return "skipped"
    inits = {t.name for t in m.graph.initializer}
    data = [i for i in m.graph.input if i.name not in inits]
    for i, v in zip(data[1:], ins[1:]):
        m.graph.initializer.append(numpy_helper.from_array(v, i.name))
    try:
        g = tg.TorchGraph(m)
        g.eval()
        g.logits = False  # the graph's own output, a final Softmax included
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = g(x)
    except tg.Unsupported as e:
        return f"refused: {e}"
    got, want = np.asarray(got.detach().numpy()), outs[0]
    if got.shape != want.shape:
        return f"shape {got.shape}, reference {want.shape}"
    if want.dtype.kind in "fc":
        same = np.allclose(got.astype(np.float64), want.astype(np.float64), rtol=1e-3, atol=1e-4, equal_nan=True)
    else:
        same = np.array_equal(got, want)
    return "match" if same else "values differ"


@pytest.mark.skipif(not cases(), reason="the corpus is fetched by scripts/fetch-corpus.sh (scripts/test.sh runs it)")
def test_every_node_test_of_a_listed_operator_matches_the_reference_or_is_refused_by_name():
    outcomes = {name: run(name) for name in cases()}
    wrong = {n: o for n, o in outcomes.items() if o not in ("match", "skipped") and not o.startswith("refused: ")
             and n.split("/")[1] not in DIFFERENT}
    assert not wrong, wrong
    matched = sum(o == "match" for o in outcomes.values())
    # onnx 1.22.0's tests: 1,167 match with this interpreter; the count guards against a
    # corpus read wrongly (every test skipped).
    assert matched >= 1157, matched
    assert all(outcomes.get(f"node/{n}") != "match" for n in DIFFERENT), "listed as different but matches"


@pytest.mark.skipif(not (DATA / "light").is_dir(), reason="the corpus is fetched by scripts/fetch-corpus.sh")
@pytest.mark.parametrize("name", ["bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50",
                                  "shufflenet", "squeezenet", "vgg19", "zfnet512"])
def test_the_corpus_light_models_run_as_onnxruntime_runs_them(name):
    """The corpus's classic ImageNet architectures (LRN, Sum, Dropout, initializers listed as
    graph inputs, opset 8-9), on random images, against onnxruntime."""
    m = onnx.load(str(DATA / "light" / f"light_{name}.onnx"))
    inits = {t.name for t in m.graph.initializer}
    data = next(i for i in m.graph.input if i.name not in inits)
    shape = [d.dim_value or 1 for d in data.type.tensor_type.shape.dim]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert tg.check(m, x) <= 1e-4
