"""Writes transposed/: y = x · Transpose(W) · V with W and V float32 in the external
file weights.bin (onnxruntime folds Transpose(W) into a constant while it optimises the
graph; V feeds a MatMul and is shared in place). Run once; the files are committed."""
import pathlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

out = pathlib.Path(__file__).parent / "transposed"
rng = np.random.default_rng(1)
w = rng.standard_normal((48, 32)).astype(np.float32)
v = rng.standard_normal((48, 16)).astype(np.float32)
graph = helper.make_graph(
    [helper.make_node("Transpose", ["W"], ["Wt"], perm=[1, 0]),
     helper.make_node("MatMul", ["x", "Wt"], ["h"]),
     helper.make_node("MatMul", ["h", "V"], ["y"])],
    "transposed",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])],
    [numpy_helper.from_array(w, "W"), numpy_helper.from_array(v, "V")],
)
m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
out.mkdir(exist_ok=True)
onnx.save_model(m, str(out / "model.onnx"), save_as_external_data=True, location="weights.bin", size_threshold=0)
