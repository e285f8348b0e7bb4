"""onnxruntime's QOperator quantisation for :mod:`onnx_protect._torch_graph`
(``quantize_static(quant_format=QuantFormat.QOperator)``, and the int8 models of the ONNX
model zoo): ``QLinearConv`` and ``QLinearMatMul``, and com.microsoft's ``QGemm``,
``QLinearAdd``, ``QLinearMul``, ``QLinearConcat``, ``QLinearGlobalAveragePool``,
``QLinearAveragePool``, ``QLinearSigmoid``, ``QLinearLeakyRelu`` and ``QLinearSoftmax``; and
the ``DynamicQuantizeMatMul`` and ``MatMulIntegerToFloat`` that onnxruntime's extended
optimisation makes of a dynamically quantised model's products.

Quantised values travel as floats holding whole numbers, as after ``QuantizeLinear``
(:mod:`onnx_protect._torch_quant`). A product accumulates ``(x − x_zero_point)·(w −
w_zero_point)`` (exact in float32 below 2^24, as onnxruntime's int32 sums are), adds the int32
bias, and requantises as onnxruntime's kernels do: times the float32 multiplier ``x_scale ·
w_scale / y_scale``, rounded half to even (a straight-through gradient), plus the output's
zero point, saturated to its type. The element-wise and pooling operators that onnxruntime
computes through a table or in floats are computed as ``QuantizeLinear(f(DequantizeLinear(x)))``.

Their constant weights and int32 biases are trained as the float values they stand for
(:func:`qlinear_weights`), as :mod:`onnx_protect._torch_quant` trains dynamically quantised
weights: a weight's values divided by its scale's current value where the product reads them,
a bias's by the input's scale times the weight's."""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from ._torch_ops import Unsupported, _given
from ._torch_quant import _TORCH_TO_ONNX, RANGES, Quantized, _along, fit

# Operators with a constant weight: (input of the weight, of its scale, of its zero point,
# of the int32 bias or -1), and the default domain's operator whose weights theirs are.
WEIGHTED = {"QLinearConv": (3, 4, 5, 8, "Conv"), "QLinearMatMul": (3, 4, 5, -1, "MatMul"),
            "QGemm": (3, 4, 5, 6, "Gemm"), "DynamicQuantizeMatMul": (1, 2, 3, -1, "MatMul"),
            "MatMulIntegerToFloat": (1, 3, 5, -1, "MatMul"), "QAttention": (1, 4, 7, -1, "MatMul")}
# Those of them in onnxruntime's com.microsoft domain (the others are the default domain's).
CONTRIB_WEIGHTED = {"QGemm", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QAttention"}
# Element-wise operators whose operands may be constants (a position embedding, a bias added
# after a QLinearMatMul, a class token): (input, its scale, its zero point) of each.
OPERANDS = {"QLinearAdd": [(0, 1, 2), (3, 4, 5)], "QLinearMul": [(0, 1, 2), (3, 4, 5)], "QLinearConcat": []}


def operands(op: str, inputs: int) -> list[tuple[int, int, int]]:
    """The (operand, scale, zero point) inputs of an element-wise QOperator operator."""
    if op == "QLinearConcat":
        return [(i, i + 1, i + 2) for i in range(2, inputs, 3)]
    return OPERANDS.get(op, [])


def slots(op: str, inputs: int) -> list[tuple[int, int, int]]:
    """The (integer input, its scale, its zero point) inputs of a QOperator operator that a
    constant weight or operand can fill: a product's weight, an element-wise operator's operands."""
    if op in WEIGHTED:
        return [WEIGHTED[op][:3]]
    return operands(op, inputs)


def _reads_integers(n: onnx.NodeProto) -> bool:
    """Whether node ``n`` is a QOperator operator with :func:`slots`, in its own domain."""
    if n.op_type in OPERANDS or n.op_type in CONTRIB_WEIGHTED:
        return n.domain == "com.microsoft"
    return n.op_type in WEIGHTED and n.domain in ("", "ai.onnx")


# QEmbedLayerNormalization's tables: (input, its scale, its zero point).
EMBED_TABLES = [(2, 8, 13), (3, 9, 14), (4, 10, 15), (5, 11, 16), (6, 12, 17)]


def _round(v: torch.Tensor) -> torch.Tensor:
    """Rounded half to even, with the gradient of ``v``."""
    return v + (torch.round(v) - v).detach()


def _range(zp: torch.Tensor | None) -> tuple[int, int]:
    kind = _TORCH_TO_ONNX.get(zp.dtype) if zp is not None else onnx.TensorProto.UINT8
    if kind not in RANGES or kind == onnx.TensorProto.INT32:
        raise Unsupported(f"a quantised output of type {zp.dtype if zp is not None else None}")
    return RANGES[kind]


def _zp(zp: torch.Tensor | None) -> torch.Tensor | float:
    return zp.float() if zp is not None else 0.0


def _requantize(v: torch.Tensor, zp: torch.Tensor | None) -> torch.Tensor:
    """``v`` (already divided by the output's scale) rounded, shifted and saturated."""
    lo, hi = _range(zp)
    return torch.clamp(_round(v) + _zp(zp), lo, hi)


def _quantize(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor | None) -> torch.Tensor:
    return _requantize(x / scale.float(), zp)


def _dequantize(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor | None) -> torch.Tensor:
    return (x.float() - _zp(zp)) * scale.float()


def _channels(v: torch.Tensor, rank: int, axis: int) -> torch.Tensor:
    """A per-channel vector shaped to broadcast along ``axis`` of a rank-``rank`` value."""
    if v.numel() == 1:
        return v.reshape(())
    shape = [1] * rank
    shape[axis] = -1
    return v.reshape(shape)


def _centred(w: torch.Tensor, zp: torch.Tensor | None, axis: int) -> torch.Tensor:
    return w.float() - (_channels(zp.float(), w.dim(), axis) if zp is not None else 0.0)


def _qlinear_conv(ins, a, opset):
    from ._torch_graph import run_op

    x, xs, xzp, w, ws, wzp, ys, yzp = ins[:8]
    acc = run_op("Conv", [_centred(x, xzp, 0), _centred(w, wzp, 0), None], a, False, opset)[0]
    if _given(ins, 8) is not None:
        acc = acc + _channels(ins[8].float(), acc.dim(), 1)
    fit(ys, acc * (xs.float() * _channels(ws.float(), acc.dim(), 1)), yzp)
    mult = (xs.float() * _channels(ws.float(), acc.dim(), 1)) / ys.float()
    return [_requantize(acc * mult, yzp)]


def _qlinear_matmul(ins, a, opset):
    x, xs, xzp, w, ws, wzp, ys, yzp = ins[:8]
    # A's scale and zero point are one or one per row; B's one or one per column.
    acc = _centred(x, xzp, x.dim() - 2) @ _centred(w, wzp, w.dim() - 1)
    scale = _channels(xs.float(), acc.dim(), acc.dim() - 2) * _channels(ws.float(), acc.dim(), acc.dim() - 1)
    fit(ys, acc * scale, yzp)
    mult = scale / ys.float()
    return [_requantize(acc * mult, yzp)]


def _qgemm(ins, a, opset):
    """``QGemm``: ``alpha · A'·B'`` on centred integers plus the int32 bias ``C``, requantised
    to ``y_scale`` when given, else as floats."""
    x, xs, xzp, w, ws = ins[:5]
    trans_b = a.get("transB", 0)
    xc = _centred(x, xzp, 0)
    wc = _centred(w, _given(ins, 5), 0 if trans_b else 1)
    acc = (xc.t() if a.get("transA", 0) else xc) @ (wc.t() if trans_b else wc)
    if _given(ins, 6) is not None:
        acc = acc + ins[6].float()
    scale = a.get("alpha", 1.0) * xs.float() * _channels(ws.float(), 2, 1)
    if _given(ins, 7) is None:
        return [acc * scale]
    fit(ins[7], acc * scale, _given(ins, 8))
    return [_requantize(acc * (scale / ins[7].float()), _given(ins, 8))]


def _integer_product(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
    """``x @ w`` on centred integers, summed exactly (float64, as onnxruntime's int32 sums), times
    ``scale`` (per column or one), plus the float ``bias``."""
    acc = (x.double() @ w.double()).float()
    y = acc * _channels(scale.float(), acc.dim(), acc.dim() - 1)
    return y + bias if bias is not None else y


def _dynamic_quantize_matmul(ins, a, opset):
    """``DynamicQuantizeMatMul``: A quantised as ``DynamicQuantizeLinear`` does (uint8 over its
    range widened to hold 0), times the integer B less its zero points, scaled to floats."""
    from ._torch_quant import _dynamic_quantize_op

    q, xs, xzp = _dynamic_quantize_op([ins[0]], {}, opset)
    w = _centred(ins[1], _given(ins, 3), ins[1].dim() - 1)
    return [_integer_product(q - xzp, w, xs * ins[2].float(), _given(ins, 4))]


def _matmul_integer_to_float(ins, a, opset):
    """``MatMulIntegerToFloat``: ``(A − a_zero_point) @ (B − b_zero_point)`` times
    ``a_scale · b_scale``, plus the bias."""
    x, w = _centred(ins[0], _given(ins, 4), -1), _centred(ins[1], _given(ins, 5), ins[1].dim() - 1)
    return [_integer_product(x, w, ins[2].float() * ins[3].float(), _given(ins, 6))]


def _qattention(ins, a, opset):
    """``QAttention``: the quantised input's product with the integer weight (zero points off)
    times ``input_scale · weight_scale``, plus the bias, then ``Attention``'s heads (past
    state as input 8)."""
    from ._torch_contrib import attend

    x = _centred(ins[0], _given(ins, 6), 0)
    w = _centred(ins[1], _given(ins, 7), 1)
    qkv = _integer_product(x, w, ins[3].float() * ins[4].float(), _given(ins, 2))
    return attend(qkv, a, _given(ins, 5), _given(ins, 8), None)


def _qembed_layer_norm(ins, a, opset):
    """``QEmbedLayerNormalization``: ``EmbedLayerNormalization`` over its tables dequantised
    (:func:`embed_tables`)."""
    from ._torch_contrib import _embed_layer_norm

    return _embed_layer_norm(ins[:8], a, opset)


def embed_tables(ins: list, trained: set[int]) -> list:
    """The inputs of a ``QEmbedLayerNormalization`` with each table in floats: dequantised with
    its scale and zero point, or as it is where it is a weight trained as floats (``trained``:
    those inputs)."""
    ins = list(ins)
    for t, sc, zp in EMBED_TABLES:
        if _given(ins, t) is not None and t not in trained:
            ins[t] = _dequantize(ins[t], ins[sc], _given(ins, zp))
    return ins


def _qlinear_add(ins, a, opset):
    x, xs, xzp, y, ys, yzp, cs = ins[:7]
    czp = _given(ins, 7)
    fit(cs, _centred(x, xzp, 0) * xs.float() + _centred(y, yzp, 0) * ys.float(), czp)
    # As onnxruntime's kernel: a · (a_scale / c_scale) + (b · (b_scale / c_scale) + k), the zero
    # points folded into k, each step one fused multiply-add (float64, then float32).
    ra, rb = xs.float() / cs.float(), ys.float() / cs.float()
    k = (_zp(czp) - ra * _zp(xzp)) - rb * _zp(yzp)
    inner = (y.double() * rb.double() + k.double()).float()
    lo, hi = _range(czp)
    return [torch.clamp(_round((x.double() * ra.double() + inner.double()).float()), lo, hi)]


def _qlinear_mul(ins, a, opset):
    x, xs, xzp, y, ys, yzp, cs = ins[:7]
    fit(cs, _centred(x, xzp, 0) * _centred(y, yzp, 0) * (xs.float() * ys.float()), _given(ins, 7))
    v = _centred(x, xzp, 0) * _centred(y, yzp, 0) * (xs.float() * ys.float() / cs.float())
    return [_requantize(v, _given(ins, 7))]


def _qlinear_concat(ins, a, opset):
    ys, yzp = ins[0], _given(ins, 1)
    real = [_dequantize(ins[i], ins[i + 1], _given(ins, i + 2)) for i in range(2, len(ins), 3)]
    fit(ys, torch.cat(real, dim=a.get("axis", 0)), yzp)
    return [torch.cat([_quantize(r, ys, yzp) for r in real], dim=a.get("axis", 0))]


def _qlinear_global_pool(ins, a, opset):
    """``QLinearGlobalAveragePool``: the sum of each channel's centred integers times
    ``x_scale / (y_scale · pixels)``."""
    x, xs, xzp, ys = ins[:4]
    last = a.get("channels_last", 0)
    dims = list(range(1, x.dim() - 1)) if last else list(range(2, x.dim()))
    pixels = int(np.prod([x.shape[d] for d in dims]))
    acc = _centred(x, xzp, 0).sum(dim=dims, keepdim=True)
    fit(ys, acc * xs.float() / pixels, _given(ins, 4))
    return [_requantize(acc * (xs.float() / (ys.float() * pixels)), _given(ins, 4))]


def _through_floats(op: str, **fixed):
    """An operator onnxruntime computes in floats or through a table: ``op`` (of the default
    domain) on the dequantised input, quantised to the output's scale and zero point."""
    def run(ins, a, opset):
        from ._torch_graph import run_op

        if a.get("channels_last", 0):
            raise Unsupported(f"QLinear{op} with channels_last")
        attrs = {k: v for k, v in a.items() if k not in ("opset", "channels_last")} | fixed
        y = run_op(op, [_dequantize(ins[0], ins[1], _given(ins, 2))], attrs, False, a.get("opset", opset))[0]
        fit(ins[3], y, _given(ins, 4))
        return [_quantize(y, ins[3], _given(ins, 4))]
    return run


QOP_OPS = {"QLinearConv": _qlinear_conv, "QLinearMatMul": _qlinear_matmul}
QOP_CONTRIB = {"QGemm": _qgemm, "DynamicQuantizeMatMul": _dynamic_quantize_matmul,
               "MatMulIntegerToFloat": _matmul_integer_to_float, "QAttention": _qattention,
               "QEmbedLayerNormalization": _qembed_layer_norm, "QLinearAdd": _qlinear_add, "QLinearMul": _qlinear_mul,
               "QLinearConcat": _qlinear_concat, "QLinearGlobalAveragePool": _qlinear_global_pool,
               "QLinearAveragePool": _through_floats("AveragePool"), "QLinearSigmoid": _through_floats("Sigmoid"),
               "QLinearLeakyRelu": _through_floats("LeakyRelu"), "QLinearSoftmax": _through_floats("Softmax")}


# The inputs that are scales, by operator (QLinearConcat: its first and every third from the fourth).
SCALES = {"QuantizeLinear": {1}, "DequantizeLinear": {1}, "QLinearConv": {1, 4, 6}, "QLinearMatMul": {1, 4, 6},
          "QGemm": {1, 4, 7}, "QLinearAdd": {1, 4, 6}, "QLinearMul": {1, 4, 6}, "DynamicQuantizeMatMul": {2},
          "MatMulIntegerToFloat": {2, 3}, "QAttention": {3, 4}, "QEmbedLayerNormalization": {8, 9, 10, 11, 12}}


def is_scale(op: str, i: int) -> bool:
    """Whether input ``i`` of ``op`` is a quantisation scale."""
    if op == "QLinearConcat":
        return i == 0 or i >= 3 and i % 3 == 0
    if op.startswith("QLinear") and op not in SCALES:
        return i in (1, 3)
    return i in SCALES.get(op, ())


def role(op: str, i: int) -> tuple[str, int]:
    """Input ``i`` of ``op`` as the default domain's operator and input it is a weight of
    (a QLinear product's weight and bias as its float operator's), for initialisation."""
    spec = WEIGHTED.get(op)
    if spec is not None and i in (spec[0], spec[3]):
        return spec[4], 1 if i == spec[0] else 2
    if op == "QEmbedLayerNormalization" and 2 <= i <= 6:
        return "EmbedLayerNormalization", i
    if op in ("QLinearAdd", "QLinearMul") and i in (0, 3):
        return op[7:], i // 3
    if op == "QLinearConcat" and i >= 2 and i % 3 == 2:
        return "Concat", (i - 2) // 3
    return op, i


def weight_axis(node: onnx.NodeProto, rank: int) -> int:
    """The axis of a weight a per-channel scale runs along."""
    if node.op_type == "QLinearConv":
        return 0
    if node.op_type == "QGemm":
        return 0 if any(x.name == "transB" and x.i for x in node.attribute) else 1
    return rank - 1


def _triple(n: onnx.NodeProto, slot: tuple[int, int, int], constants: dict):
    """The names of ``slot``'s inputs of node ``n``, with the integer constant in the first, its
    constant scale and its constant zero point (``None`` without one); ``None`` if the first two
    are not such constants or a zero point named is not constant."""
    names = [n.input[i] if len(n.input) > i else "" for i in slot]
    table, scale = constants.get(names[0]), constants.get(names[1])
    zero = constants.get(names[2]) if names[2] else None
    if table is None or scale is None or table.data_type not in RANGES or (names[2] and zero is None):
        return None
    return names, table, numpy_helper.to_array(scale).astype(np.float32), \
        None if zero is None else numpy_helper.to_array(zero)


def _slot_names(n: onnx.NodeProto, name: str) -> list[str] | None:
    """The names of the slot (:func:`slots`) in which node ``n`` reads ``name``, else ``None``."""
    if not _reads_integers(n):
        return None
    for slot in slots(n.op_type, len(n.input)):
        names = [n.input[i] if len(n.input) > i else "" for i in slot]
        if names[0] == name:
            return names
    return None


def qlinear_weights(graph: onnx.GraphProto, readers: dict, constants: dict) -> dict[str, Quantized]:
    """The integer constants that QOperator operators read in their :func:`slots` (a product's
    weight, an element-wise operator's operand), each with a constant scale and zero point and
    read by nothing else but slots with the same scale and zero point (one attention scale for
    every head); a product's int32 bias (constant input and weight scales); a
    ``QEmbedLayerNormalization``'s tables (:func:`_embed_weights`). All are trained as the
    floats they stand for; where a product reads them, :func:`as_integers` reads them back."""
    out = {}
    for n in graph.node:
        if n.op_type == "QEmbedLayerNormalization" and n.domain == "com.microsoft":
            out |= _embed_weights(n, readers, constants)
            continue
        if not _reads_integers(n):
            continue
        for slot in slots(n.op_type, len(n.input)):
            found = _triple(n, slot, constants)
            if found is None:
                continue
            names, t, scale, zero = found
            if any(_slot_names(u, names[0]) != names for u in readers.get(names[0], [])):
                continue
            axis = weight_axis(n, len(t.dims)) if n.op_type in WEIGHTED else 0
            out[names[0]] = Quantized(names[0], scale, zero, {"axis": axis}, t.data_type, names[1], rounds=True)
        bi = WEIGHTED[n.op_type][3] if n.op_type in WEIGHTED else -1
        w = out.get(n.input[WEIGHTED[n.op_type][0]]) if n.op_type in WEIGHTED else None
        bias = n.input[bi] if bi >= 0 and len(n.input) > bi else ""
        b, xs = constants.get(bias), constants.get(n.input[1]) if bias else None
        if w is None or b is None or xs is None or b.data_type != onnx.TensorProto.INT32 or len(b.dims) > 1 \
                or len(readers.get(bias, [])) != 1:
            continue
        bs = (numpy_helper.to_array(xs).astype(np.float32) * w.scale).reshape(-1).astype(np.float32)
        out[bias] = Quantized(bias, bs, None, {"axis": 0}, onnx.TensorProto.INT32, bias_of=(n.input[1], w.scale_name),
                              rounds=True)
    return out


def _embed_weights(n: onnx.NodeProto, readers: dict, constants: dict) -> dict[str, Quantized]:
    """The integer tables a ``QEmbedLayerNormalization`` reads, with a constant scale and zero
    point, read by nothing else but (the normalisation's, as ``quantize_dynamic`` writes it) a
    ``DequantizeLinear`` with the same scale and zero point: trained as the floats they stand
    for (:func:`embed_tables` passes them on, as does that ``DequantizeLinear``)."""
    out = {}
    for slot in EMBED_TABLES:
        found = _triple(n, slot, constants)
        if found is None:
            continue
        names, table, scale, zero = found
        others = [u for u in readers.get(names[0], []) if u is not n]
        if len(others) > 1 or any(u.op_type != "DequantizeLinear" or list(u.input) + [""] * (3 - len(u.input)) != names
                                  for u in others):
            continue
        out[names[0]] = Quantized(names[0], scale, zero, {"axis": 0}, table.data_type,
                                  passthrough=others[0].output[0] if others else "")
    return out


def as_integers(op: str, ins: list, q: dict, get) -> list:
    """The inputs of a QOperator operator whose constants in :func:`slots` are trained as
    floats (``q``: those of them, by input): each divided by its scale's current value and
    rounded, its zero point off; a product's int32 bias divided by the input's scale times the
    weight's."""
    ins = list(ins)
    for t, sc, zp in slots(op, len(ins)):
        w = q.get(t)
        if w is None:
            continue
        fit(ins[sc], ins[t], None if w.zp is None else torch.from_numpy(np.array(w.zp)), w.a["axis"])
        ins[t] = _round(ins[t] / _along(ins[sc].float(), ins[t], w.a["axis"], 0))
        if len(ins) > zp:
            ins[zp] = None
    b = q.get(WEIGHTED[op][3]) if op in WEIGHTED else None
    if b is not None:
        xs, ws = (get(v).float() for v in b.bias_of)
        ins[WEIGHTED[op][3]] = _round(ins[WEIGHTED[op][3]] / (xs * ws).reshape(-1 if ws.numel() > 1 else ()))
    return ins
