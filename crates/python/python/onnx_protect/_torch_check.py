"""The check that :mod:`onnx_protect._torch_graph`'s interpreter computes what onnxruntime
computes, on the user's inputs and the weights the attacks start from, before any training
(:func:`check`)."""

from __future__ import annotations

import numpy as np
import onnx
import torch

from ._torch_graph import TorchGraph, all_nodes, filled_input_types, filled_inputs, static_batch
from ._torch_inputs import Inputs, as_torch
from ._torch_ops import Unsupported
from ._torch_qop import QOP_CONTRIB, QOP_OPS


# The check's tolerance for a model that quantises values that float operators computed: a
# last-bit difference there (an erf, a normalisation) can round to the next integer, and the
# step propagates (the digits ConvMixer quantised by onnxruntime, QOperator form: 6.1e-3).
QUANTISED_TOLERANCE = 2e-2


def requantises(model: onnx.ModelProto) -> bool:
    """Whether the model rounds values to integers as it runs (quantises activations)."""
    return any(n.op_type in ("QuantizeLinear", "DynamicQuantizeLinear") or n.op_type in QOP_OPS
               or n.domain == "com.microsoft" and n.op_type in QOP_CONTRIB for n in all_nodes(model.graph))


# The check's tolerance for a model that computes in 16-bit floats, which onnxruntime does and
# this interpreter does not (float32): torchvision's ResNet-18 converted by onnxruntime's
# float16 tool, inputs in float16, differs by 3.6e-4.
HALF_TOLERANCE = 1e-2


def computes_in_half(model: onnx.ModelProto) -> bool:
    """Whether the model holds or computes 16-bit floats (constants, inputs, outputs, casts)."""
    half = (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
    g = model.graph
    return (any(t.data_type in half for t in g.initializer)
            or any(v.type.tensor_type.elem_type in half for v in [*g.input, *g.output])
            or any(a.name == "to" and a.i in half for n in all_nodes(g) if n.op_type == "Cast" for a in n.attribute))


def _fed(sess, name: str, a: np.ndarray) -> np.ndarray:
    """``a`` in the type onnxruntime's session takes for input ``name`` (float16 or double for
    a model declaring them; the interpreter's float32 otherwise)."""
    kind = next((i.type for i in sess.get_inputs() if i.name == name), "")
    wanted = {"tensor(float16)": np.float16, "tensor(double)": np.float64}.get(kind)
    return a.astype(wanted) if wanted is not None and a.dtype.kind == "f" else a


def check(model: onnx.ModelProto, x: np.ndarray | Inputs, tolerance: float = 1e-4) -> float:
    """Runs the model in this interpreter (floats in float32) and in onnxruntime (inputs in
    the types the model declares) on ``x`` (the first data input's batch, or :class:`Inputs`,
    the :data:`FILLED_INPUTS` not given filled); raises :class:`Unsupported` when they differ
    by more than ``tolerance`` (relative to the largest finite output; at least
    :data:`QUANTISED_TOLERANCE` for a model that :func:`requantises`, :data:`HALF_TOLERANCE`
    for one that :func:`computes_in_half`) or in where their outputs are not finite, returns
    the difference otherwise. A model whose onnxruntime output has no finite value cannot be
    checked and is refused."""
    import onnxruntime as ort

    if requantises(model):
        tolerance = max(tolerance, QUANTISED_TOLERANCE)
    if computes_in_half(model):
        tolerance = max(tolerance, HALF_TOLERANCE)
    floats = (lambda a: a.astype(np.float32) if a.dtype.kind == "f" else a)
    x = x.map(floats) if isinstance(x, Inputs) else floats(np.asarray(x))

    m = TorchGraph(model)
    m.logits = False
    try:
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        # An export's fixed batch size: onnxruntime runs the inputs that many at a time.
        step = static_batch(model) or len(x)
        x = x[: len(x) // step * step] if len(x) >= step else x
        parts = []
        for i in range(0, len(x), step):
            xb = x[i:i + step]
            given = xb.arrays if isinstance(xb, Inputs) else {sess.get_inputs()[0].name: xb}
            first = torch.from_numpy(given[sess.get_inputs()[0].name])
            feeds = {k: v.numpy() for k, v in filled_inputs(filled_input_types(model), first, given).items()}
            fed = {k: _fed(sess, k, np.asarray(v)) for k, v in {**given, **feeds}.items()}
            parts.append(sess.run(None, fed)[0])
        want = np.concatenate(parts) if len(parts) > 1 else parts[0]
        want = want.astype(np.float32) if want.dtype.kind == "f" else want
    except Exception as e:  # onnxruntime raises its own exception types
        raise Unsupported(f"onnxruntime cannot run the model on inputs of shape {x.shape} to check the PyTorch "
                          f"interpreter: {' '.join(str(e).split())}") from e
    m.eval()
    with torch.no_grad():
        got = m(as_torch(x)).detach().numpy()
    if got.shape != want.shape:
        raise Unsupported(f"the PyTorch interpreter's output has shape {got.shape}, onnxruntime's {want.shape}")
    finite = np.isfinite(want)
    if not finite.any():
        raise Unsupported("onnxruntime's output has no finite value on the check's weights: "
                          "the PyTorch interpreter cannot be checked on this model")
    same_nonfinite = np.array_equal(np.isfinite(got), finite) and np.array_equal(
        got[~finite], want[~finite], equal_nan=True)
    if not same_nonfinite:
        raise Unsupported("the PyTorch interpreter's output is not finite where onnxruntime's is, or the reverse")
    err = float(np.abs(got[finite] - want[finite]).max() / max(1.0, float(np.abs(want[finite]).max())))
    if not err <= tolerance:
        raise Unsupported(f"the PyTorch interpreter differs from onnxruntime by {err:.2e} on this model")
    return err
