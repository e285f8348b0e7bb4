"""Every way ONNX stores a weight, through the whole path: a small model per case (typed
fields, float16 in int32_data, bfloat16, int4, float8, doubles, Constant values dense and
sparse, sparse initializers, If branches, Loop and Scan bodies, an If inside a Loop, a
model-local function, a training graph, a weight used twice, an initializer that is also a
graph input, a STRING tensor, integer MatMul), each stored in the model file, with its
large tensors in an external file, and with every tensor there; protected with the
built-in policy, then: decrypted back byte for byte (model and data file), verified, and
run by onnx_protect.InferenceSession with the plain session's outputs bit for bit."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper as nh
from onnx.external_data_helper import convert_model_to_external_data

import onnx_protect as op

CPU = ["CPUExecutionProvider"]
RNG = np.random.default_rng(0)


def f32(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def vi(name, shape=None, t=TP.FLOAT):
    return h.make_tensor_value_info(name, t, shape)


def model(nodes, inits, inputs=None, outputs=None, opset=17, ir=9, **kw):
    g = h.make_graph(nodes, "g", inputs or [vi("x", [2, 64])], outputs or [vi("y")], inits,
                     sparse_initializer=kw.get("sparse", []))
    m = h.make_model(g, opset_imports=[h.make_opsetid("", opset)] + kw.get("opsets", []), functions=kw.get("functions", []))
    m.ir_version = ir
    return m


def matmul(w):
    return [h.make_node("MatMul", ["x", w], ["y"])]


def cast_matmul(tensor):
    return model([h.make_node("Cast", [tensor.name], ["wf"], to=TP.FLOAT)] + matmul("wf"), [tensor])


def dequant_matmul(dtype, payload):
    w = h.make_tensor("w", dtype, [64, 64], payload, raw=True)
    nodes = [h.make_node("DequantizeLinear", ["w", "s"], ["wf"])] + matmul("wf")
    return model(nodes, [w, nh.from_array(np.array(0.05, np.float32), "s")], opset=21, ir=10)


def branch(name, scale=1.0):
    return h.make_graph([h.make_node("MatMul", ["x", name], [name + "_y"])], name, [], [vi(name + "_y")],
                        [nh.from_array(f32(64, 64) * scale, name)])


def loop_body(inner):
    return h.make_graph(inner + [h.make_node("Identity", ["cond"], ["cond_out"])], "body",
                        [vi("i", [], TP.INT64), vi("cond", [], TP.BOOL), vi("x", [2, 64])],
                        [vi("cond_out", [], TP.BOOL), vi("x_out", [2, 64])], [nh.from_array(f32(64, 64) * 0.1, "L")])


def loop(body):
    inits = [nh.from_array(np.array(3, np.int64), "n"), nh.from_array(np.array(True), "c0"),
             nh.from_array(np.array(0, np.float32), "zero")]
    return model([h.make_node("Loop", ["n", "c0", "x"], ["y"], body=body)], inits)


def case_float_data():
    return model(matmul("w"), [h.make_tensor("w", TP.FLOAT, [64, 64], f32(4096).tolist())])


def case_float16_in_int32_data():
    bits = f32(64, 64).astype(np.float16).view(np.uint16).astype(np.int32)
    return cast_matmul(h.make_tensor("w", TP.FLOAT16, [64, 64], bits.ravel().tolist()))


def case_bfloat16():
    bits = (f32(64, 64).view(np.uint32) >> 16).astype(np.uint16)
    return cast_matmul(h.make_tensor("w", TP.BFLOAT16, [64, 64], bits.tobytes(), raw=True))


def case_double_data():
    return cast_matmul(h.make_tensor("w", TP.DOUBLE, [64, 64], RNG.standard_normal(4096).tolist()))


def case_int4():
    q = RNG.integers(-8, 8, 4096).astype(np.int8).reshape(-1, 2)
    return dequant_matmul(TP.INT4, ((q[:, 0] & 0xF) | ((q[:, 1] & 0xF) << 4)).astype(np.uint8).tobytes())


def case_float8():
    b = RNG.integers(0, 256, 4096).astype(np.uint8)
    b[(b & 0x7F) == 0x7F] = 0  # no NaN
    return dequant_matmul(TP.FLOAT8E4M3FN, b.tobytes())


def case_constant_value():
    return model([h.make_node("Constant", [], ["w"], value=nh.from_array(f32(64, 64), "cw"))] + matmul("w"), [])


def sparse(name):
    idx = np.sort(RNG.choice(4096, 100, replace=False)).astype(np.int64)
    return h.make_sparse_tensor(nh.from_array(f32(100), name), nh.from_array(idx, name + "_i"), [64, 64])


def case_constant_sparse_value():
    return model([h.make_node("Constant", [], ["w"], sparse_value=sparse("cw"))] + matmul("w"), [])


def case_sparse_initializer():
    return model(matmul("w"), [], sparse=[sparse("w")])


def case_if_branches():
    nodes = [h.make_node("ReduceSum", ["x"], ["s"], keepdims=0), h.make_node("Greater", ["s", "zero"], ["c"]),
             h.make_node("If", ["c"], ["y"], then_branch=branch("T"), else_branch=branch("E"))]
    return model(nodes, [nh.from_array(np.array(0, np.float32), "zero")])


def case_loop_body():
    return loop(loop_body([h.make_node("MatMul", ["x", "L"], ["x_out"])]))


def case_if_inside_loop():
    inner = [h.make_node("ReduceSum", ["x"], ["s"], keepdims=0), h.make_node("Greater", ["s", "zero"], ["c"]),
             h.make_node("If", ["c"], ["x_out"], then_branch=branch("T", 0.1), else_branch=branch("E", 0.1))]
    return loop(loop_body(inner))


def case_scan_body():
    body = h.make_graph([h.make_node("MatMul", ["xi", "S"], ["t"]), h.make_node("Add", ["st", "t"], ["st_out"]),
                         h.make_node("Identity", ["t"], ["yo"])], "scan",
                        [vi("st", [1, 64]), vi("xi", [1, 64])], [vi("st_out", [1, 64]), vi("yo", [1, 64])],
                        [nh.from_array(f32(64, 64) * 0.1, "S")])
    return model([h.make_node("Scan", ["s0", "x"], ["last", "y"], body=body, num_scan_inputs=1)],
                 [nh.from_array(np.zeros((1, 64), np.float32), "s0")], inputs=[vi("x", [5, 1, 64])],
                 outputs=[vi("last"), vi("y")])


def case_local_function():
    fn = h.make_function("local", "F", ["a"], ["b"], [
        h.make_node("Constant", [], ["w"], value=nh.from_array(f32(64, 64), "fw")),
        h.make_node("MatMul", ["a", "w"], ["b"])], [h.make_opsetid("", 17)])
    return model([h.make_node("F", ["x"], ["y"], domain="local")], [], functions=[fn],
                 opsets=[h.make_opsetid("local", 1)])


def case_training_graph():
    m = model(matmul("w"), [nh.from_array(f32(64, 64), "w")])
    t = m.training_info.add()
    t.initialization.CopyFrom(h.make_graph([h.make_node("Identity", ["tw"], ["w_out"])], "init", [], [vi("w_out")],
                                           [nh.from_array(f32(64, 64), "tw")]))
    return m


def case_shared_scalar_and_empty():
    nodes = [h.make_node("MatMul", ["x", "w"], ["a"]), h.make_node("MatMul", ["a", "w"], ["b"]),
             h.make_node("Mul", ["b", "s"], ["c"]), h.make_node("Concat", ["c", "e"], ["y"], axis=0)]
    return model(nodes, [nh.from_array(f32(64, 64), "w"), nh.from_array(np.array(0.5, np.float32), "s"),
                         nh.from_array(np.zeros((0, 64), np.float32), "e")])


def case_initializer_as_graph_input():
    return model(matmul("w"), [nh.from_array(f32(64, 64), "w")], inputs=[vi("x", [2, 64]), vi("w", [64, 64])])


def case_string_tensor():
    nodes = matmul("w") + [h.make_node("Identity", ["labels"], ["l"])]
    labels = h.make_tensor("labels", TP.STRING, [3], [b"a", b"bb", b"ccc"])
    return model(nodes, [nh.from_array(f32(64, 64), "w"), labels], outputs=[vi("y"), vi("l", [3], TP.STRING)])


def case_integer_matmul():
    nodes = [h.make_node("MatMulInteger", ["x", "w"], ["i"]), h.make_node("Cast", ["i"], ["y"], to=TP.FLOAT)]
    w = nh.from_array(RNG.integers(-128, 127, (64, 64)).astype(np.int8), "w")
    return model(nodes, [w], inputs=[vi("x", [2, 64], TP.INT8)])


CASES = {name[5:]: f for name, f in sorted(globals().items()) if name.startswith("case_")}


def feeds_for(session):
    out = {}
    for i in session.get_inputs():
        shape = [d if isinstance(d, int) else 2 for d in i.shape]
        out[i.name] = (RNG.integers(-128, 127, shape).astype(np.int8) if i.type == "tensor(int8)"
                       else RNG.standard_normal(shape).astype(np.float32))
    return out


@pytest.mark.parametrize("storage", ["model file", "large tensors external", "every tensor external"])
@pytest.mark.parametrize("case", CASES)
def test_a_weight_stored_any_way_is_restored_verified_and_run_exactly(case, storage, tmp_path):
    m = CASES[case]()
    plain = tmp_path / "plain" / "model.onnx"
    plain.parent.mkdir()
    if storage != "model file":
        threshold = 1024 if storage == "large tensors external" else 0
        convert_model_to_external_data(m, all_tensors_to_one_file=True, location="model.onnx.data",
                                       size_threshold=threshold, convert_attribute=True)
    onnx.save_model(m, plain)
    try:
        reference = ort.InferenceSession(str(plain), providers=CPU)
    except Exception as e:  # onnxruntime's own refusal of the plain model, not ours
        pytest.skip(f"onnxruntime refuses the plain model: {str(e)[:120]}")
    key = op.new_key()
    enc = tmp_path / "enc" / "model.onnx"
    enc.parent.mkdir()
    op.encrypt(plain, enc, key=key)
    back = tmp_path / "back" / "model.onnx"
    back.parent.mkdir()
    op.decrypt(enc, back, key=key)
    for f in plain.parent.iterdir():
        assert (back.parent / f.name).read_bytes() == f.read_bytes(), f.name
    op.verify(enc, key=key)
    feeds = feeds_for(reference)
    want = reference.run(None, feeds)
    got = op.InferenceSession(enc, providers=CPU, key=key).run(None, feeds)
    for w, g in zip(want, got):
        assert w.dtype == g.dtype and w.shape == g.shape
        assert w.tobytes() == g.tobytes() if w.dtype != object else (w == g).all()
