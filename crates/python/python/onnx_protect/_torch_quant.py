"""Quantised models for :mod:`onnx_protect._torch_graph`: in QDQ form (onnxruntime's
``quantize_static``, quantisation-aware exports), ``DequantizeLinear`` and ``QuantizeLinear``
as the ONNX operator specification computes them (per tensor, per axis, per block), and the
weights they read; dynamically quantised (``quantize_dynamic``), ``DynamicQuantizeLinear``,
``MatMulInteger`` and ``ConvInteger`` and their weights.

A weight stored as integers and read by a ``DequantizeLinear`` whose scale and zero point are
constants (:func:`quantized_weights`) is trained as the float values it stands for, the
``DequantizeLinear``'s output: an attacker trains the real-valued weights and quantises them at
the end, as quantisation-aware training does. Activations' ``QuantizeLinear`` rounds with a
straight-through gradient (the rounding's gradient taken as 1) and returns its integers as
floats, which the ``DequantizeLinear`` after it reads. :meth:`Quantized.integers` turns
trained values back into the stored integers, for onnxruntime to check the interpreter on them.

A weight a ``MatMulInteger`` or ``ConvInteger`` reads, whose scale is a constant that the
``Mul`` after the product applies (``quantize_dynamic``'s form: ``Cast``, then ``Mul`` by the
input's scale times the weight's), is trained the same way: as its float values, divided by
the scale's current value where the product reads it (:func:`quantized_weights`). An attacker
who trains that scale too changes nothing: it cancels."""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from ._torch_ops import Unsupported, _given

# Integer types a quantised tensor is stored in, with their ranges.
RANGES = {onnx.TensorProto.INT8: (-128, 127), onnx.TensorProto.UINT8: (0, 255),
          onnx.TensorProto.INT16: (-32768, 32767), onnx.TensorProto.UINT16: (0, 65535),
          onnx.TensorProto.INT32: (-2**31, 2**31 - 1)}


def _along(v: torch.Tensor, x: torch.Tensor, axis: int, block: int) -> torch.Tensor:
    """A scale or zero point ``v`` broadcast to ``x``: a scalar as it is, a vector along
    ``axis``, a block-quantised one (same rank as ``x``) repeated ``block`` times along it."""
    if v.dim() == 0 or v.numel() == 1 and x.dim() == 0:
        return v.reshape(())
    axis %= max(x.dim(), 1)
    if block:
        return v.repeat_interleave(block, dim=axis).narrow(axis, 0, x.shape[axis])
    if v.dim() != 1:
        raise Unsupported(f"a quantisation scale of shape {tuple(v.shape)} without block_size")
    shape = [1] * x.dim()
    shape[axis] = -1
    return v.reshape(shape)


def dequantize(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor | None, a: dict) -> torch.Tensor:
    axis, block = a.get("axis", 1), a.get("block_size", 0)
    s = _along(scale.float(), x, axis, block)
    z = _along(zp.float(), x, axis, block) if zp is not None else 0.0
    return (x.float() - z) * s


# Scales (by the identity of their parameter) that a calibration pass fits to the values
# quantised with them (:meth:`onnx_protect._torch_graph.TorchGraph.calibrate`), each once.
FITTING: set[int] = set()


def fit(scale: torch.Tensor, real: torch.Tensor, zp: torch.Tensor | None, axis: int | None = None) -> None:
    """In a calibration pass, a scale being fitted becomes the one that maps ``real`` (the
    real values it quantises; per channel along ``axis`` for a scale of several) onto the
    integers of ``zp``'s type (uint8 without one) around the zero point, as onnxruntime's
    calibration sets a scale from the range it saw."""
    if id(scale) not in FITTING:
        return
    FITTING.discard(id(scale))
    kind = _TORCH_TO_ONNX.get(zp.dtype) if zp is not None else onnx.TensorProto.UINT8
    lo, hi = RANGES.get(kind, RANGES[onnx.TensorProto.UINT8])
    r = real.detach().float()
    if scale.numel() > 1 and axis is not None:
        r = r.movedim(axis % r.dim(), 0).reshape(scale.numel(), -1)
        top, bottom = r.max(dim=1).values, r.min(dim=1).values
    else:
        top, bottom = r.max(), r.min()
    z = zp.detach().float().reshape(top.shape) if zp is not None else torch.zeros_like(top)
    up = torch.where(hi > z, top.clamp(min=0) / (hi - z).clamp(min=1), torch.zeros_like(top))
    down = torch.where(lo < z, bottom.clamp(max=0) / (lo - z).clamp(max=-1), torch.zeros_like(top))
    scale.data.copy_(torch.maximum(torch.maximum(up, down), torch.full_like(up, 1e-8)).reshape(scale.shape))


def _dequantize_op(ins, a, opset):
    return [dequantize(ins[0], ins[1], _given(ins, 2), a)]


def _quantize_op(ins, a, opset):
    x, scale, zp = ins[0], ins[1], _given(ins, 2)
    fit(scale, x, zp, a.get("axis", 1))
    kind = a.get("output_dtype") or (_TORCH_TO_ONNX.get(zp.dtype) if zp is not None else onnx.TensorProto.UINT8)
    if kind not in RANGES or kind == onnx.TensorProto.INT32:
        raise Unsupported(f"QuantizeLinear to ONNX type {kind}")
    lo, hi = RANGES[kind]
    axis, block = a.get("axis", 1), a.get("block_size", 0)
    v = x.float() / _along(scale.float(), x, axis, block)
    z = _along(zp.float(), x, axis, block) if zp is not None else 0.0
    q = torch.clamp(torch.round(v) + z, lo, hi)  # rounded (half to even) before the zero point
    return [q + (v - v.detach())]  # the integers exactly, with the gradient of v


_TORCH_TO_ONNX = {torch.int8: onnx.TensorProto.INT8, torch.uint8: onnx.TensorProto.UINT8,
                  torch.int16: onnx.TensorProto.INT16, torch.uint16: onnx.TensorProto.UINT16,
                  torch.int32: onnx.TensorProto.INT32}


def _dynamic_quantize_op(ins, a, opset):
    """``DynamicQuantizeLinear``: uint8 over the input's range widened to hold 0; the integers
    with a straight-through gradient, the scale and the zero point."""
    x = ins[0].float()
    lo, hi = torch.clamp(x.min(), max=0.0), torch.clamp(x.max(), min=0.0)
    scale = (hi - lo) / 255.0
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    zp = torch.round(torch.clamp(-lo / safe, 0, 255))
    v = x / safe
    q = torch.clamp(torch.round(v) + zp, 0, 255)
    return [q + (v - v.detach()), scale, zp]


def _matmul_integer_op(ins, a, opset):
    """``MatMulInteger``: ``(A − a_zero_point) @ (B − b_zero_point)``, a zero point per row of A
    or per column of B, in floats."""
    x, w = ins[0].float(), ins[1].float()
    azp, bzp = _given(ins, 2), _given(ins, 3)
    if azp is not None:
        x = x - (azp.float().reshape(-1, 1) if azp.numel() > 1 else azp.float().reshape(()))
    if bzp is not None:
        w = w - bzp.float()
    return [x @ w]


QUANT_OPS = {"DequantizeLinear": _dequantize_op, "QuantizeLinear": _quantize_op,
             "DynamicQuantizeLinear": _dynamic_quantize_op, "MatMulInteger": _matmul_integer_op}
# The operator whose weights an integer one's are (for their initialisation).
INTEGER_OPS = {"MatMulInteger": "MatMul", "ConvInteger": "Conv"}


def scaled(weight: torch.Tensor, scale: torch.Tensor, q: Quantized) -> torch.Tensor:
    """A dynamically quantised weight's float values as its product reads them: divided by
    its scale's current value (its zero point already taken off)."""
    return weight / _along(scale.float(), weight, q.a.get("axis", 1), 0)


class Quantized:
    """How a weight stored as integers is dequantised: the value name its float values stand
    for (its ``DequantizeLinear``'s output, or itself where a ``Gather`` or an integer product
    reads it), scale, zero point, attributes and the stored type."""

    def __init__(self, output: str, scale: np.ndarray, zp: np.ndarray | None, a: dict, data_type: int,
                 scale_name: str = "", passthrough: str = "", bias_of: tuple[str, str] | None = None,
                 rounds: bool = False):
        self.output, self.scale, self.zp, self.a, self.data_type = output, scale, zp, a, data_type
        # For a weight of MatMulInteger/ConvInteger: the value name of its scale.
        self.scale_name = scale_name
        # For rows gathered before their DequantizeLinear: its output, the gathered floats as they are.
        self.passthrough = passthrough
        # For an int32 bias of a QLinear product: the value names of its input's scale and
        # its weight's, whose product is its scale.
        self.bias_of = bias_of
        # Whether its product reads it rounded to integers (a QLinear operator's weight, bias).
        self.rounds = rounds

    def floats(self, stored: np.ndarray) -> np.ndarray:
        """The float values the stored integers stand for."""
        zp = None if self.zp is None else torch.from_numpy(np.array(self.zp))
        return dequantize(torch.from_numpy(np.array(stored)), torch.from_numpy(self.scale), zp, self.a).numpy()

    def integers(self, values: np.ndarray, scale: np.ndarray | None = None) -> np.ndarray:
        """Float values quantised to the stored type (round half to even, saturated), with the
        stored scale or ``scale``."""
        x = torch.from_numpy(np.asarray(values, np.float32))
        axis, block = self.a.get("axis", 1), self.a.get("block_size", 0)
        s = torch.from_numpy(np.asarray(self.scale if scale is None else scale, np.float32))
        v = torch.round(x / _along(s, x, axis, block)).double()
        if self.zp is not None:
            v = v + _along(torch.from_numpy(np.array(self.zp)).double(), x, axis, block)
        lo, hi = RANGES[self.data_type]
        return torch.clamp(v, lo, hi).numpy().astype(
            onnx.helper.tensor_dtype_to_np_dtype(self.data_type))


def _scale_after(node: onnx.NodeProto, readers: dict, producer: dict, constants: dict) -> str | None:
    """The constant weight scale a ``MatMulInteger``/``ConvInteger``'s product is multiplied
    by: its ``Cast`` read by a ``Mul`` whose other input a ``Mul`` of one constant makes."""
    casts = [u for u in readers.get(node.output[0], []) if u.op_type == "Cast"]
    if len(casts) != 1:
        return None
    for m in readers.get(casts[0].output[0], []):
        if m.op_type != "Mul":
            continue
        other = producer.get(m.input[1] if m.input[0] == casts[0].output[0] else m.input[0])
        names = [i for i in other.input if i in constants] if other is not None and other.op_type == "Mul" else []
        if len(names) == 1:
            return names[0]
    return None


def _dynamic_weights(graph: onnx.GraphProto, readers: dict, constants: dict) -> dict[str, Quantized]:
    """The integer constants (by value name) that a ``MatMulInteger`` (as B) or
    ``ConvInteger`` (as W) alone reads, with a constant zero point and a constant scale
    found after the product (:func:`_scale_after`), and how they dequantise."""
    producer = {o: n for n in graph.node for o in n.output}
    out = {}
    for n in graph.node:
        if n.op_type not in INTEGER_OPS or n.domain not in ("", "ai.onnx") or len(n.input) < 2:
            continue
        name, zp_name = n.input[1], n.input[3] if len(n.input) > 3 else ""
        t, zp = constants.get(name), constants.get(zp_name) if zp_name else None
        if t is None or t.data_type not in RANGES or len(readers.get(name, [])) != 1 or (zp_name and zp is None):
            continue
        scale = _scale_after(n, readers, producer, constants)
        if scale is None:
            continue
        axis = 1 if n.op_type == "MatMulInteger" else 0
        out[name] = Quantized(name, numpy_helper.to_array(constants[scale]).astype(np.float32),
                              None if zp is None else numpy_helper.to_array(zp), {"axis": axis}, t.data_type, scale)
    return out


def quantized_weights(graph: onnx.GraphProto, constants: dict[str, onnx.TensorProto]) -> dict[str, Quantized]:
    """The integer constants (by value name) that are weights the attacks train as floats,
    and how each dequantises: read by a ``DequantizeLinear`` with a constant scale and zero
    point, directly or after a ``Gather`` of rows (a quantised embedding, with one scale or one
    per column), or by an integer product (:func:`_dynamic_weights`,
    :func:`onnx_protect._torch_qop.qlinear_weights`). One read by several, or
    by anything else, is left as stored."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for v in n.input:
            readers.setdefault(v, []).append(n)
    from ._torch_qop import qlinear_weights

    out = _dynamic_weights(graph, readers, constants) | qlinear_weights(graph, readers, constants)
    for name, t in constants.items():
        users = readers.get(name, [])
        if t.data_type not in RANGES or len(users) != 1 or users[0].domain not in ("", "ai.onnx") \
                or users[0].input[0] != name:
            continue
        gather = None
        if users[0].op_type == "Gather" and not any(x.name == "axis" and x.i for x in users[0].attribute):
            gather, users = users[0], readers.get(users[0].output[0], [])
            if len(users) != 1 or users[0].input[0] != gather.output[0]:
                continue
        if users[0].op_type != "DequantizeLinear":
            continue
        dq = users[0]
        scale = constants.get(dq.input[1])
        zp = constants.get(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else None
        if scale is None or (len(dq.input) > 2 and dq.input[2] and zp is None):
            continue
        a = {x.name: onnx.helper.get_attribute_value(x) for x in dq.attribute}
        s = numpy_helper.to_array(scale).astype(np.float32)
        if gather is not None:
            if s.size > 1 and (a.get("block_size", 0) or s.ndim != 1 or s.size != t.dims[-1]):
                continue  # one scale, or one per column of the rows gathered
            a = {"axis": len(t.dims) - 1}
        out[name] = Quantized(name if gather else dq.output[0], s, None if zp is None else numpy_helper.to_array(zp),
                              a, t.data_type, passthrough=dq.output[0] if gather else "")
    return out
