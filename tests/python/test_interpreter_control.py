"""``If``, ``Loop`` and ``Scan`` in the training attacks' interpreter
(``onnx_protect._torch_control``) against onnxruntime, each subgraph with weights of its own
(an initializer or a ``Constant``) and values of the enclosing graph: the interpreter's output
within 1e-4 of onnxruntime's (``_torch_graph.check``), the subgraphs' weights located where
``inspect`` locates what the built-in policy encrypts, gradients reaching them, and the
attacks running on a protected classifier whose layers sit in a ``Loop``'s body."""
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the interpreter is PyTorch (tests/requirements-torch.txt)")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import onnx_protect  # noqa: E402
from onnx_protect import _torch_graph as tg  # noqa: E402
from onnx_protect import assess  # noqa: E402
from test_interpreter_ops import F32, init, n  # noqa: E402

RNG = np.random.default_rng(11)


def w(name, *shape):
    return init(name, (RNG.standard_normal(shape) * 0.5).astype(np.float32))


def vi(name, shape=None, elem=F32):
    return helper.make_tensor_value_info(name, elem, shape)


def model(nodes, inits, outputs=("y",), d=4):
    g = helper.make_graph(nodes, "control", [vi("x", ["N", d])], [vi(o) for o in outputs], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def if_model():
    """y = x @ Wt if sum(x) > 0 else (x @ We) * k, Wt and We the branches' initializers, k a
    Constant of the else branch."""
    then = helper.make_graph([n("MatMul", ["x", "wt"], ["t"])], "then", [], [vi("t")], [w("wt", 4, 3)])
    other = helper.make_graph([n("MatMul", ["x", "we"], ["e0"]),
                               n("Constant", [], ["k"], value=init("kv", np.float32([0.5, -2.0, 1.5]))),
                               n("Mul", ["e0", "k"], ["e"])], "else", [], [vi("e")], [w("we", 4, 3)])
    nodes = [n("ReduceSum", ["x"], ["s"], keepdims=0), n("Greater", ["s", "zero"], ["c"]),
             n("If", ["c"], ["y"], then_branch=then, else_branch=other)]
    return model(nodes, [init("zero", np.float32(0))])


def loop_model(output):
    """Three steps of h = tanh(h @ Wb + x @ Wx + b) from h = 0 (Wb an initializer of the body,
    Wx and b of the main graph); ``output`` 0: the last h, 1: every step's h stacked."""
    body = helper.make_graph(
        [n("MatMul", ["h", "wb"], ["hw"]), n("MatMul", ["x", "wx"], ["xw"]), n("Add", ["hw", "xw"], ["s0"]),
         n("Add", ["s0", "b"], ["s"]), n("Tanh", ["s"], ["h2"]), n("Identity", ["cond"], ["cond2"]),
         n("Identity", ["h2"], ["scan"])],
        "body", [vi("i", [], TensorProto.INT64), vi("cond", [], TensorProto.BOOL), vi("h")],
        [vi("cond2", [], TensorProto.BOOL), vi("h2"), vi("scan")], [w("wb", 3, 3)])
    nodes = [n("Shape", ["x"], ["shape"]), n("Gather", ["shape", "zero"], ["batch"], axis=0),
             n("Concat", ["batch", "three"], ["hs"], axis=0),
             n("ConstantOfShape", ["hs"], ["h0"], value=init("z", np.float32([0]))),
             n("Loop", ["trips", "true", "h0"], ["h_last", "hs_all"], body=body),
             n("Identity", [["h_last", "hs_all"][output]], ["y"])]
    inits = [init("zero", np.int64([0])), init("three", np.int64([3])), init("trips", np.int64(3)),
             init("true", np.bool_(True)), w("wx", 4, 3), w("b", 3)]
    return model(nodes, inits)


def scan_model(output, reverse=1, out_axis=1):
    """A running sum over the 4 features of x read backwards (``Scan`` over axis 1): the state
    s = s + x_t * v (v a Constant of the body) from a zero row, every step's state stacked
    along ``out_axis``; ``output`` 0: the last state, 1: the stacked states."""
    body = helper.make_graph(
        [n("Constant", [], ["v"], value=init("vv", (RNG.standard_normal((1,)) + 1).astype(np.float32))),
         n("Mul", ["xt", "v"], ["xv"]), n("Add", ["s", "xv"], ["s2"]), n("Identity", ["s2"], ["o"])],
        "body", [vi("s"), vi("xt")], [vi("s2"), vi("o")], [])
    nodes = [n("ReduceSum", ["x", "one"], ["s0"], keepdims=0), n("Mul", ["s0", "zero"], ["s00"]),
             n("Scan", ["s00", "x"], ["s_last", "states"], body=body, num_scan_inputs=1,
               scan_input_axes=[1], scan_input_directions=[reverse], scan_output_axes=[out_axis]),
             n("Identity", [["s_last", "states"][output]], ["y"])]
    return model(nodes, [init("one", np.int64([1])), init("zero", np.float32(0))])


def scan8_model(output, reverse=0, lens=None):
    """The running sum of ``scan_model`` with opset 8's ``Scan``: batch first, each of the 6
    samples scanned along its 4 features (read backwards with ``reverse``) for its length in
    ``lens`` (all of them without), its stacked states zero past it."""
    body = helper.make_graph(
        [n("Constant", [], ["v"], value=init("vv", (RNG.standard_normal(()) + 1).astype(np.float32))),
         n("Mul", ["xt", "v"], ["xv"]), n("Add", ["s", "xv"], ["s2"]), n("Identity", ["s2"], ["o"])],
        "body", [vi("s", []), vi("xt", [])], [vi("s2", []), vi("o", [])], [])
    inits = [init("zero", np.float32(0))]
    if lens is not None:
        inits.append(init("lens", np.array(lens, np.int64)))
    nodes = [n("ReduceSum", ["x"], ["s0"], axes=[1], keepdims=0), n("Mul", ["s0", "zero"], ["s00"]),
             n("Scan", ["lens" if lens is not None else "", "s00", "x"], ["s_last", "states"], body=body,
               num_scan_inputs=1, directions=[reverse]),
             n("Identity", [["s_last", "states"][output]], ["y"])]
    g = helper.make_graph(nodes, "control", [vi("x", [6, 4])], [vi("y")], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 8)])
    m.ir_version = 3
    return m


CASES = {
    "If": if_model(),
    "Loop, last state": loop_model(0),
    "Loop, scan output": loop_model(1),
    "Scan reversed, last state": scan_model(0),
    "Scan reversed, stacked along axis 1": scan_model(1),
    "Scan forward, stacked along axis 0": scan_model(1, reverse=0, out_axis=0),
    "Scan opset 8, last state": scan8_model(0),
    "Scan opset 8 reversed, stacked": scan8_model(1, reverse=1),
    "Scan opset 8 with lengths, last state": scan8_model(0, lens=[4, 3, 2, 4, 1, 4]),
    "Scan opset 8 reversed with lengths, stacked": scan8_model(1, reverse=1, lens=[4, 3, 2, 4, 1, 4]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_control_operator_runs_as_onnxruntime_runs_it(case):
    x = RNG.standard_normal((6, 4)).astype(np.float32)
    assert tg.check(CASES[case], x) <= 1e-4
    if case == "If":  # the other branch too
        assert tg.check(CASES[case], np.abs(x)) <= 1e-4 and tg.check(CASES[case], -np.abs(x)) <= 1e-4


@pytest.mark.parametrize("case", ["If", "Loop, scan output", "Scan reversed, stacked along axis 1"])
def test_subgraph_weights_sit_where_inspect_locates_them_and_get_gradients(case, tmp_path):
    plain = tmp_path / "m.onnx"
    onnx.save(CASES[case], plain)
    enc = tmp_path / "m.enc.onnx"
    onnx_protect.encrypt(plain, enc, key=onnx_protect.new_key())
    located = {t["locator"] for t in onnx_protect.inspect(enc)["protection"]["tensors"]}
    inside = {loc for loc in located if "/6.0/" in loc}
    assert inside, located
    g = tg.TorchGraph(CASES[case], trainable=frozenset(located))
    assert located <= set(g.constants), (located, set(g.constants))
    for loc in inside:
        stored = numpy_helper.to_array(assess._tensor_at(CASES[case], loc))
        assert np.array_equal(g.constants[loc].array, stored.astype(np.float32)), loc
    g.train()
    x = np.abs(RNG.standard_normal((6, 4)).astype(np.float32))
    for sign in (1, -1):  # both branches of the If
        g(torch.from_numpy(sign * x)).square().sum().backward()
    for loc in inside:
        grad = g.tensor(loc).grad
        assert grad is not None and bool(torch.isfinite(grad).all()) and float(grad.abs().sum()) > 0, loc


def test_assess_attacks_a_classifier_whose_layers_run_in_a_loop(tmp_path):
    """The digits through a Gemm, three steps of a `Loop` whose body holds a layer of its own,
    then a head: the built-in policy encrypts the body's weight too; the attacks reset and train
    it with the rest, and the report's accuracies are fractions."""
    digits = "fixtures/digits"
    root = __import__("pathlib").Path(__file__).resolve().parents[2] / digits
    data = [np.load(root / f"{k}.npy") for k in ("train_x", "train_y", "test_x", "test_y")]
    body = helper.make_graph(
        [n("MatMul", ["h", "wb"], ["hw"]), n("Add", ["hw", "h"], ["r"]), n("Relu", ["r"], ["h2"]),
         n("Identity", ["cond"], ["cond2"])],
        "body", [vi("i", [], TensorProto.INT64), vi("cond", [], TensorProto.BOOL), vi("h")],
        [vi("cond2", [], TensorProto.BOOL), vi("h2")], [w("wb", 16, 16)])
    nodes = [n("Flatten", ["x"], ["f"]), n("Gemm", ["f", "w1", "b1"], ["h0"], transB=1),
             n("Loop", ["trips", "true", "h0"], ["h"], body=body), n("Gemm", ["h", "w2", "b2"], ["y"], transB=1)]
    inits = [w("w1", 16, 64), w("b1", 16), init("trips", np.int64(3)), init("true", np.bool_(True)),
             w("w2", 10, 16), w("b2", 10)]
    g = helper.make_graph(nodes, "loopnet", [vi("x", ["N", 1, 8, 8])], [vi("y", ["N", 10])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    plain, enc = tmp_path / "loop.onnx", tmp_path / "loop.enc.onnx"
    onnx.save(m, plain)
    onnx_protect.encrypt(plain, enc, key=onnx_protect.new_key())
    r = assess.attack(enc, *data, sizes=(0.05,), seeds=1, steps=30, lrs=(1e-2,))
    assert r["share"] == 1.0
    row = r["sizes"][0]
    for name in ("start", "scratch", "relearn", "finetune"):
        assert 0.0 <= row[name][0] <= 1.0, row
