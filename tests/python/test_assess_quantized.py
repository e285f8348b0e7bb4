"""``onnx_protect.assess`` on quantised models as onnxruntime's quantisation writes them: in
QDQ form (``quantize_static``: int8 weights per output channel, int32 biases, every activation
quantised and dequantised, calibrated on 64 training images) and dynamically
(``quantize_dynamic``: ``DynamicQuantizeLinear``, ``MatMulInteger``/``ConvInteger``, the
weight's scale in the ``Mul`` after), of the digits CNN and MLP of fixtures/zoo. The
interpreter runs them as onnxruntime does, trains each stored-integer weight as the float
values it stands for, and the attacks run on the protected files."""
import pathlib

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the training attacks need torch (tests/requirements.txt)")
onnx = pytest.importorskip("onnx")
quantization = pytest.importorskip("onnxruntime.quantization")

import onnx_protect  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx_protect import _torch_graph as tg  # noqa: E402
from onnx_protect import assess  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
DIGITS = ROOT / "fixtures" / "digits"


@pytest.fixture(scope="module")
def data():
    return [np.load(DIGITS / f"{n}.npy") for n in ("train_x", "train_y", "test_x", "test_y")]


class Calibration(quantization.CalibrationDataReader):
    def __init__(self, name, x):
        self.batches = iter([{name: x[i:i + 8]} for i in range(0, 64, 8)])

    def get_next(self):
        return next(self.batches, None)


def quantized(tmp, name, x, static=True):
    """The zoo's digits model quantised (its stale shape annotations dropped first)."""
    src = onnx.load(ROOT / "fixtures" / "zoo" / "digits" / f"{name}.onnx")
    del src.graph.value_info[:]
    plain, out = tmp / f"{name}.onnx", tmp / f"{name}.{'qdq' if static else 'dyn'}.onnx"
    onnx.save(src, plain)
    if static:
        quantization.quantize_static(str(plain), str(out), Calibration(src.graph.input[0].name, x),
                                     quant_format=quantization.QuantFormat.QDQ, per_channel=True)
    else:
        quantization.quantize_dynamic(str(plain), str(out), weight_type=quantization.QuantType.QInt8)
    return out


@pytest.mark.parametrize("name, static", [("cnn", True), ("mlp", True), ("cnn", False), ("mlp", False)])
def test_a_quantised_model_runs_as_onnxruntime_runs_it_and_is_attacked(name, static, tmp_path, data):
    path = quantized(tmp_path, name, data[0], static)
    model = onnx.load(path)
    ops = {n.op_type for n in model.graph.node}
    want = {"QuantizeLinear", "DequantizeLinear"} if static else {"DynamicQuantizeLinear", "MatMulInteger"}
    assert want <= ops, ops
    assert tg.check(model, data[2][:64]) <= 1e-4
    g = tg.TorchGraph(model)
    weights = [c for c in g.constants.values() if c.quant is not None]
    assert all(bool(c.quant.scale_name) != static for c in weights)
    ints = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer
            if t.data_type in (TensorProto.INT8, TensorProto.INT32) and t.name.endswith("_quantized")}
    assert sorted(c.name for c in weights) == sorted(ints), (sorted(c.name for c in weights), sorted(ints))
    for c in weights:
        assert np.array_equal(c.quant.integers(c.array), ints[c.name]), c.name  # floats and back
        assert c.users and c.users[0][0] in ("Conv", "Gemm", "MatMul"), (c.name, c.users)
    # The interpreter's accuracy is onnxruntime's (the check's outputs agree to 1e-4).
    sess = __import__("onnxruntime").InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want = float((sess.run(None, {sess.get_inputs()[0].name: data[2]})[0].argmax(1) == data[3]).mean())
    assert abs(assess.accuracy(g, data[2], data[3]) - want) <= 2 / len(data[3])

    if not static:  # the weight's scale, trained as the attacks train an encrypted one, cancels
        names = [t.name for t in model.graph.initializer]
        loc = f"7.0/5.{names.index(weights[0].quant.scale_name)}"
        g = tg.TorchGraph(model, trainable=frozenset({loc})).eval()
        x = torch.from_numpy(data[2][:8])
        with torch.no_grad():
            before = g(x).clone()
            g.tensor(loc).mul_(3.0)
            assert torch.allclose(g(x), before, rtol=1e-4, atol=1e-5)
    enc = tmp_path / f"{name}.enc.onnx"
    onnx_protect.encrypt(path, enc, key=onnx_protect.new_key())
    kinds = {t["data_type"] for t in onnx_protect.inspect(enc)["protection"]["tensors"]}
    assert ({"INT8", "INT32"} if static else {"INT8", "FLOAT"}) <= kinds, kinds
    r = assess.attack(enc, *data, sizes=(0.05,), seeds=1, steps=40, lrs=(1e-2,))
    assert r["share"] >= 0.99
    row = r["sizes"][0]
    for k in ("start", "scratch", "relearn", "finetune"):
        assert 0.0 <= row[k][0] <= 1.0, row
    assert row["scratch"][0] > 0.2, row  # a trained reference, chance is 10%


def test_quantize_linear_passes_gradients_straight_through():
    """x -> QuantizeLinear -> DequantizeLinear -> MatMul(w): the output as onnxruntime gives
    it, and a gradient reaching w and the input through the rounding."""
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"]),
             helper.make_node("MatMul", ["d", "w"], ["y"])]
    inits = [numpy_helper.from_array(np.float32(0.05), "s"), numpy_helper.from_array(np.int8(3), "z"),
             numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32), "w")]
    g = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)])
    m.ir_version = 9
    x = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    assert tg.check(m, x) <= 1e-5
    graph = tg.TorchGraph(m)
    xt = torch.from_numpy(x).requires_grad_(True)
    graph(xt).sum().backward()
    w = graph.tensor("7.0/5.2")
    assert w.grad is not None and float(w.grad.abs().sum()) > 0
    assert xt.grad is not None and float(xt.grad.abs().sum()) > 0


def test_a_dynamically_quantised_bert_runs_as_onnxruntime_runs_it_and_is_attacked(tmp_path):
    """The Hugging Face BERT export through `quantize_dynamic`: every weight MatMul a
    `MatMulInteger`, the word, position and segment embeddings stored as integers, gathered, then
    dequantised (the rows trained as floats); onnxruntime and the interpreter agree, the attacks run."""
    from test_assess_standard import TINY, hub_bert, ran

    plain, data = hub_bert(tmp_path / "hub.onnx")
    dyn = tmp_path / "hub.dyn.onnx"
    quantization.quantize_dynamic(str(plain), str(dyn), weight_type=quantization.QuantType.QInt8)
    model = onnx.load(dyn)
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= {n.op_type for n in model.graph.node}
    assert tg.check(model, data[2][:16]) <= 1e-4
    g = tg.TorchGraph(model)
    rows = [c for c in g.constants.values() if c.quant is not None and c.quant.passthrough]
    assert len(rows) == 3 and all(c.users == [("Gather", 0)] for c in rows), [(c.name, c.users) for c in rows]
    enc = tmp_path / "hub.dyn.enc.onnx"
    onnx_protect.encrypt(dyn, enc, key=onnx_protect.new_key())
    r = assess.attack(enc, *data, **TINY)
    assert r["share"] >= 0.99
    ran(r, reused=["relearn", "finetune"])


def test_qoperator_quantisation_is_refused_naming_its_operators_and_the_qdq_form(tmp_path, data):
    """``quantize_static(quant_format=QOperator)`` writes ``QLinearConv`` and com.microsoft
    ``QGemm``, which the interpreter does not run: refused by name, with the form that runs."""
    src = onnx.load(ROOT / "fixtures" / "zoo" / "digits" / "cnn.onnx")
    del src.graph.value_info[:]
    plain, out = tmp_path / "cnn.onnx", tmp_path / "cnn.qop.onnx"
    onnx.save(src, plain)
    quantization.quantize_static(str(plain), str(out), Calibration(src.graph.input[0].name, data[0]),
                                 quant_format=quantization.QuantFormat.QOperator, per_channel=True)
    with pytest.raises(tg.Unsupported, match=r"operators QLinearConv, com.microsoft.QGemm; onnxruntime's QOperator "
                                             r"quantisation runs in QDQ form"):
        tg.TorchGraph(onnx.load(out))
