"""``onnx_protect.assess`` on models onnxruntime saved optimised
(``SessionOptions.optimized_model_filepath`` at ``ORT_ENABLE_EXTENDED``, the level whose output
runs on any machine): convolutions fused with their activation (``FusedConv``), ``FusedGemm``,
``FusedMatMul``, ``BiasGelu``, ``SkipLayerNormalization``. The interpreter runs them as
onnxruntime does, initialises their weights as the operators they fuse, and the attacks run on
a protected one."""
import pathlib

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the training attacks need torch (tests/requirements.txt)")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import onnx_protect  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx_protect import _torch_graph as tg  # noqa: E402
from onnx_protect import assess  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
ZOO = ROOT / "fixtures" / "zoo"
DIGITS = ROOT / "fixtures" / "digits"
RNG = np.random.default_rng(3)


def optimized(src, out):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(out)
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    return onnx.load(out)


@pytest.fixture(scope="module")
def data():
    return [np.load(DIGITS / f"{n}.npy") for n in ("train_x", "train_y", "test_x", "test_y")]


@pytest.mark.parametrize("name, fused", [
    ("digits/cnn", {"FusedConv"}),
    ("families/digits-resnet", {"FusedConv"}),
    ("digits/vit", {"FusedMatMul", "BiasGelu", "SkipLayerNormalization"}),
])
def test_an_optimised_zoo_model_runs_as_onnxruntime_runs_it(name, fused, tmp_path, data):
    m = optimized(ZOO / f"{name}.onnx", tmp_path / "o.onnx")
    ops = {n.op_type for n in m.graph.node if n.domain == "com.microsoft"}
    assert fused <= ops, ops
    assert tg.check(m, data[2][:64]) <= 1e-4
    g = tg.TorchGraph(m)
    for c in g.constants.values():  # the fused operators' weights are read as the plain ones
        assert not any(op.startswith("Fused") for op, _ in c.users), (c.name, c.users)


def fused_model(node, inits, shape):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))
    g = helper.make_graph([node], "fused", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    m.ir_version = 8
    return m


def w(name, *shape):
    return numpy_helper.from_array(RNG.standard_normal(shape).astype(np.float32), name)


@pytest.mark.parametrize("node, inits, shape", [
    (helper.make_node("FusedConv", ["x", "w", "b", "z"], ["y"], domain="com.microsoft", activation="LeakyRelu",
                      activation_params=[0.2], pads=[1, 1, 1, 1]), [w("w", 4, 3, 3, 3), w("b", 4), w("z", 2, 4, 5, 5)],
     (2, 3, 5, 5)),
    (helper.make_node("FusedConv", ["x", "w"], ["y"], domain="com.microsoft", activation="Clip",
                      activation_params=[-0.5, 0.5], strides=[2, 2]), [w("w", 4, 3, 3, 3)], (2, 3, 5, 5)),
    (helper.make_node("FusedConv", ["x", "w", "b"], ["y"], domain="com.microsoft", activation="HardSigmoid",
                      activation_params=[0.3, 0.4]), [w("w", 4, 3, 1, 1), w("b", 4)], (2, 3, 5, 5)),
    (helper.make_node("FusedGemm", ["x", "w", "b"], ["y"], domain="com.microsoft", activation="Tanh", transB=1,
                      alpha=0.5, beta=2.0), [w("w", 6, 5), w("b", 6)], (4, 5)),
    (helper.make_node("FusedGemm", ["x", "w"], ["y"], domain="com.microsoft", activation="LeakyRelu",
                      activation_alpha=0.3), [w("w", 5, 6)], (4, 5)),
    (helper.make_node("FusedMatMul", ["x", "w"], ["y"], domain="com.microsoft", alpha=0.25, transA=1, transB=1),
     [w("w", 2, 6, 4)], (2, 4, 3)),
])
def test_each_fused_operator_runs_as_onnxruntime_runs_it(node, inits, shape):
    m = fused_model(node, inits, shape)
    assert tg.check(m, RNG.standard_normal(shape).astype(np.float32)) <= 1e-4


def test_assess_attacks_an_optimised_cnn(tmp_path, data):
    m = optimized(ZOO / "digits" / "cnn.onnx", tmp_path / "cnn.opt.onnx")
    assert any(n.op_type == "FusedConv" for n in m.graph.node)
    enc = tmp_path / "cnn.enc.onnx"
    onnx_protect.encrypt(tmp_path / "cnn.opt.onnx", enc, key=onnx_protect.new_key())
    r = assess.attack(enc, *data, sizes=(0.05,), seeds=1, steps=40, lrs=(1e-2,))
    assert r["share"] == 1.0
    row = r["sizes"][0]
    assert row["scratch"][0] > 0.2, row  # trained from PyTorch's Conv initialisation; chance 10%
