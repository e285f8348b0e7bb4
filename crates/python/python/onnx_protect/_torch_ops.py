"""Operators of :mod:`onnx_protect._torch_graph` beyond the core set: logical and
comparison operators, variadic sums, ``Einsum``, ``CumSum``, ``Trilu``, ``Pad``,
``ConvTranspose``, ``Resize`` (the modes exporters write), ``DepthToSpace`` and
``SpaceToDepth``, the other reductions, ``ArgMax``/``ArgMin``, ``TopK``, the scatters,
``NonZero``, ``LRN`` (and in :mod:`onnx_protect._torch_contrib`, the com.microsoft operators
onnxruntime's transformer optimizer writes): what the PyTorch exporters (``dynamo=True``, the default from
torch 2.9, and the TorchScript one), tf2onnx and that optimizer write for common classifiers,
segmenters and transformers. Each follows the ONNX operator specification; what a case does not cover
(an attribute value, a mode) is refused by name rather than approximated, and
:func:`onnx_protect._torch_graph.check` compares the whole graph with onnxruntime on the
user's inputs before any attack runs.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


class Unsupported(ValueError):
    """The model cannot be run as a trainable PyTorch module (the message says why)."""


def ints(t: torch.Tensor) -> list[int]:
    return [int(v) for v in t.reshape(-1).tolist()]


def _given(ins: list, i: int):
    """Input ``i`` when it is given and not empty, else ``None``."""
    return ins[i] if len(ins) > i and ins[i] is not None and ins[i].numel() > 0 else None


def _variadic(f):
    def run(ins, a, opset):
        y = ins[0]
        for t in ins[1:]:
            y = f(y, t)
        return [y]
    return run


def _mean(ins, a, opset):
    y = ins[0]
    for t in ins[1:]:
        y = y + t
    return [y / len(ins)]


def _unary(f):
    return lambda ins, a, opset: [f(ins[0], a)]


def _is_inf(x, a):
    pos = torch.isposinf(x) if a.get("detect_positive", 1) else torch.zeros_like(x, dtype=torch.bool)
    neg = torch.isneginf(x) if a.get("detect_negative", 1) else torch.zeros_like(x, dtype=torch.bool)
    return pos | neg


def _selu(x, a):
    alpha, gamma = a.get("alpha", 1.67326319217681884765625), a.get("gamma", 1.05070102214813232421875)
    return gamma * torch.where(x > 0, x, alpha * (torch.exp(x) - 1))


def _prelu(ins, a, opset):
    x, slope = ins[0], ins[1]
    if slope.dim() == 1 and x.dim() > 2 and slope.numel() == x.shape[1] != x.shape[-1]:
        slope = slope.reshape(-1, *[1] * (x.dim() - 2))  # one slope per channel (before opset 7)
    return [torch.where(x < 0, slope * x, x)]


def _lrn(ins, a, opset):
    """Local response normalisation over a window of ``size`` channels, ``floor((size - 1) / 2)``
    before each and the rest after."""
    x, size = ins[0], a["size"]
    before = (size - 1) // 2
    sq = x * x
    pad = [sq.new_zeros(sq.shape[0], n, *sq.shape[2:]) for n in (before, size - 1 - before)]
    window = torch.cat([pad[0], sq, pad[1]], 1).unfold(1, size, 1).sum(-1)
    return [x / (a.get("bias", 1.0) + a.get("alpha", 1e-4) / size * window) ** a.get("beta", 0.75)]


def _mod(ins, a, opset):
    x, y = ins[0], ins[1]
    if a.get("fmod", 0):
        return [torch.fmod(x, y)]
    if x.is_floating_point():
        raise Unsupported("Mod of floating-point values without fmod = 1")
    return [torch.remainder(x, y)]


def _cumsum(ins, a, opset):
    x, ax = ins[0], int(ins[1].reshape(-1)[0])
    if a.get("reverse", 0):
        x = x.flip(ax)
    y = torch.cumsum(x, ax, dtype=x.dtype)
    if a.get("exclusive", 0):
        y = torch.cat([torch.zeros_like(y.narrow(ax, 0, 1)), y.narrow(ax, 0, y.shape[ax] - 1)], ax)
    return [y.flip(ax) if a.get("reverse", 0) else y]


def _trilu(ins, a, opset):
    k = _given(ins, 1)
    k = int(k.reshape(-1)[0]) if k is not None else 0
    return [torch.triu(ins[0], k) if a.get("upper", 1) else torch.tril(ins[0], k)]


def _pad(ins, a, opset):
    x = ins[0]
    r = x.dim()
    if opset < 11:
        pads, value = list(a["pads"]), float(a.get("value", 0.0))
    else:
        pads = ints(ins[1])
        v = _given(ins, 2)
        value = v.reshape(-1)[0].item() if v is not None else 0.0
    axes = _given(ins, 3)
    axes = [ax % r for ax in ints(axes)] if axes is not None else list(range(r))
    n = len(axes)
    begin = dict(zip(axes, pads[:n]))
    end = dict(zip(axes, pads[n:]))
    mode = a.get("mode", "constant")
    padded = [ax for ax in range(r) if begin.get(ax, 0) or end.get(ax, 0)]
    if not padded:
        return [x]
    if mode == "constant":
        flat = [p for ax in reversed(range(r)) for p in (begin.get(ax, 0), end.get(ax, 0))]
        return [F.pad(x, flat, value=value)]
    torch_mode = {"reflect": "reflect", "edge": "replicate", "wrap": "circular"}.get(mode)
    first = padded[0]
    if torch_mode is None or r - first > 3 or any(begin.get(ax, 0) < 0 or end.get(ax, 0) < 0 for ax in padded):
        raise Unsupported(f"Pad in mode {mode} over these axes")
    # torch pads the last 1-3 dimensions of a [batch, channels, ...] tensor in these modes.
    lead, tail = x.shape[:first], x.shape[first:]
    flat = [p for ax in reversed(range(first, r)) for p in (begin.get(ax, 0), end.get(ax, 0))]
    y = F.pad(x.reshape(1, -1, *tail), flat, mode=torch_mode)
    return [y.reshape(*lead, *y.shape[2:])]


def _conv_transpose(ins, a, opset):
    x, w = ins[0], ins[1]
    b = _given(ins, 2)
    nd = w.dim() - 2
    if nd not in (1, 2, 3):
        raise Unsupported(f"ConvTranspose over {nd} spatial axes")
    stride, dil = a.get("strides", [1] * nd), a.get("dilations", [1] * nd)
    outpad = list(a.get("output_padding", [0] * nd))
    auto = a.get("auto_pad", "NOTSET")
    if "output_shape" in a or auto in ("SAME_UPPER", "SAME_LOWER"):
        # The pads that give the asked output shape (SAME: input × stride), as the operator
        # specification works them out.
        want = list(a["output_shape"])[-nd:] if "output_shape" in a else [n * s for n, s in zip(x.shape[2:], stride)]
        total = [s * (n - 1) + op + (k - 1) * d + 1 - o
                 for s, n, op, k, d, o in zip(stride, x.shape[2:], outpad, w.shape[2:], dil, want)]
        if any(t < 0 for t in total):
            outpad = [op - min(t, 0) for op, t in zip(outpad, total)]
            total = [max(t, 0) for t in total]
        if auto == "SAME_UPPER":
            pads = [t // 2 for t in total] + [t - t // 2 for t in total]
        else:
            pads = [t - t // 2 for t in total] + [t // 2 for t in total]
    elif auto in ("NOTSET", "VALID"):
        pads = a.get("pads", [0] * 2 * nd) if auto == "NOTSET" else [0] * 2 * nd
    else:
        raise Unsupported(f"ConvTranspose with auto_pad {auto}")
    f = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[nd]
    extra = [max(op - (max(s, d) - 1), 0) for op, s, d in zip(outpad, stride, dil)]  # beyond torch's limit
    y = f(x, w, b, stride=stride, output_padding=[op - e for op, e in zip(outpad, extra)], groups=a.get("group", 1),
          dilation=dil)
    if any(extra):
        spec = [p for i in reversed(range(nd)) for p in (0, extra[i])]
        y = F.pad(y, spec) + (F.pad(torch.zeros_like(y), spec) if b is None else
                              F.pad(torch.zeros_like(y), spec, value=1.0) * b.reshape(1, -1, *[1] * nd))
    crop = [slice(None), slice(None)] + [slice(pads[i], y.shape[2 + i] - pads[nd + i]) for i in range(nd)]
    return [y[tuple(crop)]]


def _source(ctm: str, out_len: int, in_len: int, scale: float) -> torch.Tensor:
    """Where each output position of one axis samples the input (Resize's
    ``coordinate_transformation_mode``), in float32 as onnxruntime computes it."""
    o = torch.arange(out_len, dtype=torch.float32)
    scale = torch.tensor(scale, dtype=torch.float32)
    if ctm == "half_pixel":
        return (o + 0.5) / scale - 0.5
    if ctm == "pytorch_half_pixel":
        return (o + 0.5) / scale - 0.5 if out_len > 1 else torch.zeros(out_len)
    if ctm == "align_corners":  # over the unrounded resized length, in × scale
        span = in_len * scale - 1
        return o * (in_len - 1) / span if span > 0 else torch.zeros(out_len)
    if ctm == "asymmetric":
        return o / scale
    if ctm == "tf_half_pixel_for_nn":
        return (o + 0.5) / scale
    if ctm == "half_pixel_symmetric":
        adjustment = out_len / (scale * in_len)
        return in_len / 2 * (1 - adjustment) + (o + 0.5) / scale - 0.5
    raise Unsupported(f"Resize with coordinate_transformation_mode {ctm}")


def _nearest(xo: torch.Tensor, mode: str, in_len: int) -> torch.Tensor:
    if mode == "round_prefer_floor":
        i = torch.ceil(xo - 0.5)
    elif mode == "round_prefer_ceil":
        i = torch.floor(xo + 0.5)
    elif mode in ("floor", "ceil"):
        i = torch.floor(xo) if mode == "floor" else torch.ceil(xo)
    else:
        raise Unsupported(f"Resize with nearest_mode {mode}")
    return i.clamp(0, in_len - 1).to(torch.int64)


def _resize(ins, a, opset):
    x = ins[0]
    nd = x.dim() - 2
    if opset < 11 or nd < 1 or a.get("antialias", 0) \
            or a.get("keep_aspect_ratio_policy", "stretch") != "stretch" or a.get("exclude_outside", 0):
        raise Unsupported("Resize with these attributes")
    scales, sizes = _given(ins, 2), _given(ins, 3)
    axes = [ax % x.dim() for ax in a.get("axes") or range(x.dim())]
    if sizes is not None:
        out = list(x.shape)
        for ax, o in zip(axes, ints(sizes)):
            out[ax] = o
        sc = [o / n for o, n in zip(out, x.shape)]
    elif scales is not None:
        sc = [1.0] * x.dim()
        for ax, f in zip(axes, torch.tensor(scales.reshape(-1).tolist(), dtype=torch.float32).tolist()):
            sc[ax] = f
        out = [int(n * f) for n, f in zip(x.shape, sc)]
    else:
        raise Unsupported("Resize without scales or sizes")
    if out[:2] != list(x.shape[:2]):
        raise Unsupported("Resize of the batch or channel axis")
    mode = a.get("mode", "nearest")
    ctm = a.get("coordinate_transformation_mode", "half_pixel")
    if mode == "cubic":
        # torch's bicubic (a = -0.75) samples as half_pixel with the given scales, and as
        # align_corners over the output size.
        ok = ctm in ("half_pixel", "pytorch_half_pixel") or ctm == "align_corners" and sizes is not None
        if nd != 2 or not ok or a.get("cubic_coeff_a", -0.75) != -0.75:
            raise Unsupported(f"Resize in mode cubic with coordinate_transformation_mode {ctm}")
        kw = {"size": out[2:]} if sizes is not None else {"scale_factor": sc[2:]}
        return [F.interpolate(x, mode="bicubic", align_corners=ctm == "align_corners", **kw)]
    if mode not in ("nearest", "linear"):
        raise Unsupported(f"Resize in mode {mode}")
    y = x
    for ax in range(2, x.dim()):
        n = x.shape[ax]
        xo = _source(ctm, out[ax], n, sc[ax])
        if mode == "nearest":
            y = y.index_select(ax, _nearest(xo, a.get("nearest_mode", "round_prefer_floor"), n))
            continue
        xo = xo.clamp(0, n - 1)
        lo = torch.floor(xo).to(torch.int64)
        hi = (lo + 1).clamp(max=n - 1)
        shape = [1] * y.dim()
        shape[ax] = -1
        w = (xo - lo.to(xo.dtype)).reshape(shape).to(y.dtype)
        y = y.index_select(ax, lo) * (1 - w) + y.index_select(ax, hi) * w
    return [y]


def _depth_to_space(ins, a, opset):
    x, bs = ins[0], a["blocksize"]
    n, c, h, w = x.shape
    if a.get("mode", "DCR") == "CRD":
        y = x.reshape(n, c // (bs * bs), bs, bs, h, w).permute(0, 1, 4, 2, 5, 3)
    else:
        y = x.reshape(n, bs, bs, c // (bs * bs), h, w).permute(0, 3, 4, 1, 5, 2)
    return [y.reshape(n, c // (bs * bs), h * bs, w * bs)]


def _space_to_depth(ins, a, opset):
    x, bs = ins[0], a["blocksize"]
    n, c, h, w = x.shape
    y = x.reshape(n, c, h // bs, bs, w // bs, bs).permute(0, 3, 5, 1, 2, 4)
    return [y.reshape(n, c * bs * bs, h // bs, w // bs)]


def _reduce_more(op):
    pre = {"ReduceL1": torch.abs, "ReduceL2": torch.square, "ReduceSumSquare": torch.square}.get(op)

    def run(ins, a, opset):
        x = ins[0]
        # Axes as an input from opset 18 (as for ReduceMean), an attribute before.
        axes = ints(ins[1]) if len(ins) > 1 and ins[1] is not None else a.get("axes")
        keep = bool(a.get("keepdims", 1))
        if not axes:
            if a.get("noop_with_empty_axes", 0):
                return [x]
            axes = list(range(x.dim()))
        dims = sorted(ax % x.dim() for ax in axes)
        if op == "ReduceProd":
            y = x
            for ax in reversed(dims):
                y = torch.prod(y, ax, keepdim=keep)
            return [y]
        if op == "ReduceLogSumExp":
            return [torch.logsumexp(x, dims, keepdim=keep)]
        y = torch.sum(pre(x) if pre else x, dims, keepdim=keep)
        return [torch.sqrt(y) if op == "ReduceL2" else torch.log(y) if op == "ReduceLogSum" else y]
    return run


def _arg(op):
    def run(ins, a, opset):
        x, ax = ins[0], a.get("axis", 0) % max(ins[0].dim(), 1)
        f = torch.argmax if op == "ArgMax" else torch.argmin
        keep = bool(a.get("keepdims", 1))
        if a.get("select_last_index", 0):
            i = x.shape[ax] - 1 - f(x.flip(ax), dim=ax, keepdim=keep)
        else:
            i = f(x, dim=ax, keepdim=keep)
        return [i.to(torch.int64)]
    return run


def _topk(ins, a, opset):
    x = ins[0]
    k = int(ins[1].reshape(-1)[0]) if opset >= 10 else a["k"]
    values, indices = torch.topk(x, k, dim=a.get("axis", -1), largest=bool(a.get("largest", 1)), sorted=True)
    return [values, indices.to(torch.int64)]


def _scatter_nd(ins, a, opset):
    if a.get("reduction", "none") != "none":
        raise Unsupported("ScatterND with a reduction")
    y, idx, upd = ins[0].clone(), ins[1].long(), ins[2]
    y[tuple(idx[..., i] for i in range(idx.shape[-1]))] = upd
    return [y]


def _gather_nd(ins, a, opset):
    """``GatherND``: the slices of ``data`` that the last axis of ``indices`` points at, the
    first ``batch_dims`` axes of both walked together."""
    data, idx, b = ins[0], ins[1].long(), a.get("batch_dims", 0)
    k, lead = idx.shape[-1], data.shape[:b]
    n = int(torch.tensor(lead).prod()) if b else 1
    d = data.reshape(n, *data.shape[b:])
    i = idx.reshape(n, -1, k)
    i = torch.where(i < 0, i + torch.tensor(data.shape[b:b + k]), i)
    out = d[(torch.arange(n).reshape(-1, 1),) + tuple(i[..., j] for j in range(k))]
    return [out.reshape(*idx.shape[:-1], *data.shape[b + k:])]


def _scatter_elements(ins, a, opset):
    if a.get("reduction", "none") != "none":
        raise Unsupported("ScatterElements with a reduction")
    x, idx = ins[0], ins[1].long()
    ax = a.get("axis", 0) % x.dim()
    idx = torch.where(idx < 0, idx + x.shape[ax], idx)
    return [torch.scatter(x, ax, idx, ins[2])]


def _logical(f):
    return lambda ins, a, opset: [f(ins[0].bool(), ins[1].bool())]


MORE_OPS: dict[str, Callable] = {
    "IsNaN": _unary(lambda x, a: torch.isnan(x)),
    "IsInf": _unary(_is_inf),
    "Sign": _unary(lambda x, a: torch.sign(x)),
    "Round": _unary(lambda x, a: torch.round(x)),
    "Tan": _unary(lambda x, a: torch.tan(x)),
    "Asin": _unary(lambda x, a: torch.asin(x)),
    "Acos": _unary(lambda x, a: torch.acos(x)),
    "Atan": _unary(lambda x, a: torch.atan(x)),
    "Sinh": _unary(lambda x, a: torch.sinh(x)),
    "Cosh": _unary(lambda x, a: torch.cosh(x)),
    "Selu": _unary(_selu),
    "Celu": _unary(lambda x, a: F.celu(x, a.get("alpha", 1.0))),
    "ThresholdedRelu": _unary(lambda x, a: torch.where(x > a.get("alpha", 1.0), x, torch.zeros_like(x))),
    "PRelu": _prelu,
    "LRN": _lrn,
    "And": _logical(torch.logical_and),
    "Or": _logical(torch.logical_or),
    "Xor": _logical(torch.logical_xor),
    "LessOrEqual": lambda ins, a, opset: [torch.le(ins[0], ins[1])],
    "GreaterOrEqual": lambda ins, a, opset: [torch.ge(ins[0], ins[1])],
    "Mod": _mod,
    "Sum": _variadic(torch.add),
    "Mean": _mean,
    "CastLike": lambda ins, a, opset: [ins[0].to(ins[1].dtype)],
    "Size": lambda ins, a, opset: [torch.tensor(ins[0].numel(), dtype=torch.int64)],
    "Einsum": lambda ins, a, opset: [torch.einsum(a["equation"], *ins)],
    "CumSum": _cumsum,
    "Trilu": _trilu,
    "Pad": _pad,
    "ConvTranspose": _conv_transpose,
    "Resize": _resize,
    "DepthToSpace": _depth_to_space,
    "SpaceToDepth": _space_to_depth,
    "ArgMax": _arg("ArgMax"),
    "ArgMin": _arg("ArgMin"),
    "TopK": _topk,
    "ScatterND": _scatter_nd,
    "GatherND": _gather_nd,
    "ScatterElements": _scatter_elements,
    "NonZero": lambda ins, a, opset: [torch.nonzero(ins[0]).t().to(torch.int64)],
    **{op: _reduce_more(op) for op in
       ("ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceProd", "ReduceLogSum", "ReduceLogSumExp")},
}
