"""``onnx_protect.assess`` on models as conversion tools leave them: onnxruntime's float16
conversion (``onnxruntime.transformers.float16.convert_float_to_float16``) stores every weight
in float16, computes in it, and appends the casts of kept float32 inputs after the nodes that
read them, out of the order the ONNX specification asks for (onnxruntime runs such graphs).
The interpreter computes in float32, runs the nodes in an order where each value is made
before it is read, and is checked against onnxruntime within the check's tolerance for models
that compute in 16-bit floats; the attacks run on the protected file."""
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the training attacks need torch (tests/requirements.txt)")
onnx = pytest.importorskip("onnx")
float16 = pytest.importorskip("onnxruntime.transformers.float16")

import onnx_protect  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx_protect import _torch_graph as tg  # noqa: E402
from onnx_protect import assess  # noqa: E402

from test_assess_quantized import ROOT, data  # noqa: E402,F401 (data: the digits splits, a fixture)


def half(path, out, keep_io):
    model = onnx.load(path)
    del model.graph.value_info[:]
    onnx.save(float16.convert_float_to_float16(model, keep_io_types=keep_io), out)
    return onnx.load(out)


def test_nodes_out_of_order_run_in_an_order_that_makes_each_value_first():
    """A Cast the graph lists after its reader, and an If whose branch reads a value made after
    the If in the list: run as onnxruntime runs them."""
    then = helper.make_graph([helper.make_node("Mul", ["h", "two"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    other = helper.make_graph([helper.make_node("Neg", ["h"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("Relu", ["c"], ["h"]),
             helper.make_node("If", ["flag"], ["y"], then_branch=then, else_branch=other),
             helper.make_node("Greater", ["s", "zero"], ["flag"]),
             helper.make_node("ReduceSum", ["c"], ["s"], keepdims=0),
             helper.make_node("Cast", ["x"], ["c"], to=TensorProto.FLOAT)]
    inits = [numpy_helper.from_array(np.float32(2), "two"), numpy_helper.from_array(np.float32(0), "zero")]
    g = helper.make_graph(nodes, "unsorted", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    for x in (np.abs(np.random.default_rng(0).standard_normal((4, 3))), -np.ones((4, 3))):
        assert tg.check(m, x.astype(np.float32)) <= 1e-6


@pytest.mark.parametrize("keep_io", [False, True])
def test_a_torchvision_resnet_converted_to_float16_runs_as_onnxruntime_runs_it(keep_io, tmp_path):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()
    x = np.random.default_rng(0).standard_normal((4, 3, 48, 48)).astype(np.float32)
    plain = tmp_path / "resnet18.onnx"
    torch.onnx.export(net, torch.from_numpy(x[:1]), plain, input_names=["x"], dynamic_axes={"x": {0: "b"}},
                      dynamo=False, opset_version=17)
    model = half(plain, tmp_path / "resnet18.fp16.onnx", keep_io)
    inputs = [i.type.tensor_type.elem_type for i in model.graph.input]
    assert inputs == [TensorProto.FLOAT if keep_io else TensorProto.FLOAT16]
    assert {t.data_type for t in model.graph.initializer if t.dims} == {TensorProto.FLOAT16}
    if keep_io:  # the input's cast comes after the convolution that reads it
        first = next(i for i, n in enumerate(model.graph.node) if n.op_type == "Conv")
        cast = next(i for i, n in enumerate(model.graph.node) if n.op_type == "Cast" and n.input[0] == "x")
        assert cast > first
    assert tg.check(model, x) <= tg.HALF_TOLERANCE
    assert tg.check(model, x.astype(np.float16)) <= tg.HALF_TOLERANCE


def test_assess_attacks_a_float16_model(tmp_path, data):
    """The zoo's digits CNN in float16 (inputs too): data given in float32 is fed to
    onnxruntime in float16, the attacks train float32 copies of the weights."""
    model = half(ROOT / "fixtures" / "zoo" / "digits" / "cnn.onnx", tmp_path / "cnn.fp16.onnx", False)
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    enc = tmp_path / "cnn.fp16.enc.onnx"
    onnx_protect.encrypt(tmp_path / "cnn.fp16.onnx", enc, key=onnx_protect.new_key())
    kinds = {t["data_type"] for t in onnx_protect.inspect(enc)["protection"]["tensors"]}
    assert kinds == {"FLOAT16"}, kinds
    r = assess.attack(enc, *data, sizes=(0.05,), seeds=1, steps=40, lrs=(1e-2,))
    row = r["sizes"][0]
    assert r["share"] >= 0.99 and row["scratch"][0] > 0.2, row
