"""onnxruntime's com.microsoft operators that its transformer optimizer writes (``python -m
onnxruntime.transformers.optimizer``), for :mod:`onnx_protect._torch_graph`: the GELU
variants, ``SkipLayerNormalization``, a BERT's fused ``EmbedLayerNormalization`` and
``Attention`` (past state too; a shared past buffer or rotary embeddings refused by name), and the
``FusedConv``, ``FusedGemm`` and ``FusedMatMul`` of a model onnxruntime saved optimised
(``optimized_model_filepath`` at the extended level). Each follows
onnxruntime's operator documentation (docs/ContribOperators.md); the tests compare each with
onnxruntime, and :func:`onnx_protect._torch_graph.check` the whole graph on the user's inputs.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from ._torch_ops import Unsupported, _given


def _skip_norm(rms):
    """``SkipLayerNormalization`` / ``SkipSimplifiedLayerNormalization``: ``s = input + skip
    (+ bias)`` normalised over the last axis; outputs the result, the mean and inverse
    standard deviation, and ``s``."""
    def run(ins, a, opset):
        gamma = ins[2]
        beta = _given(ins, 3) if not rms else None
        bias = _given(ins, 4 if not rms else 3)
        s = ins[0] + ins[1] + (bias if bias is not None else 0)
        eps = a.get("epsilon", 1e-12 if not rms else 1e-6)
        mean = s.mean(-1, keepdim=True) if not rms else torch.zeros_like(s[..., :1])
        inv_std = torch.rsqrt((s - mean).square().mean(-1, keepdim=True) + eps)
        y = (s - mean) * inv_std * gamma + (beta if beta is not None else 0)
        return [y, mean, inv_std, s]
    return run


def _embed_layer_norm(ins, a, opset):
    """``EmbedLayerNormalization``: word, position (``position_ids``, else 0 … S − 1) and
    segment embeddings summed and layer-normalised; outputs the result, each row's count of
    mask ones (``mask_index``, 0 without a mask) and the sum before normalising."""
    ids, segments = ins[0].long(), _given(ins, 1)
    word, position, segment = ins[2], ins[3], _given(ins, 4)
    gamma, beta, mask, pos_ids = ins[5], ins[6], _given(ins, 7), _given(ins, 8)
    b, s = ids.shape
    pos = pos_ids.long() if pos_ids is not None else torch.arange(s).unsqueeze(0)
    e = word[ids] + position[pos].expand(b, s, -1)
    if segment is not None and segments is not None:
        e = e + segment[segments.long()]
    y = F.layer_norm(e, (e.shape[-1],), gamma, beta, a.get("epsilon", 1e-12))
    mask_index = mask.sum(1).to(torch.int32) if mask is not None else torch.zeros(b, dtype=torch.int32)
    return [y, mask_index, e]


def _attention_mask(mask: torch.Tensor, b: int, s: int, total: int) -> torch.Tensor:
    """Which (query, key) pairs ``mask_index`` hides, broadcast to ``[B, 1, S, total]``:
    ``[B]`` key lengths, ``[2B]`` key ends then starts, ``[B, total]`` ones to attend,
    ``[B, S, total]`` per query (onnxruntime's CPU kernel refuses a 4-D mask: so is it here)."""
    keys = torch.arange(total)
    if mask.dim() == 1 and mask.shape[0] in (b, 2 * b):
        end = mask[:b].long().view(b, 1)
        start = mask[b:].long().view(b, 1) if mask.shape[0] == 2 * b else torch.zeros(b, 1, dtype=torch.long)
        return ((keys >= end) | (keys < start)).view(b, 1, 1, total)
    if mask.dim() == 2:
        return (mask == 0).view(b, 1, 1, total)
    if mask.dim() == 3:
        return (mask == 0).view(b, 1, s, total)
    raise Unsupported(f"Attention with a mask_index of shape {tuple(mask.shape)}")


def _attention(ins, a, opset):
    """``Attention``: multi-head self-attention of ``input @ weights + bias`` split into Q, K,
    V (``qkv_hidden_sizes``, else thirds), scaled by ``scale`` (else 1/√head size), hidden
    pairs (``mask_index``, ``unidirectional``) given ``mask_filter_value`` (default −10000)
    added, ``attention_bias`` added; with ``past`` (``[2, B, heads, P, head size]``) its keys and
    values come before the input's, the input's queries at positions ``P …``; outputs the result
    and, when K and V have one size, ``present`` (past and the input's keys and values)."""
    if _given(ins, 6) is not None:
        raise Unsupported("Attention with a shared past buffer")
    x, w, bias = ins[0], ins[1], _given(ins, 2)
    return attend(x @ w + (bias if bias is not None else 0), a, _given(ins, 3), _given(ins, 4), _given(ins, 5))


def attend(qkv, a, mask, past, attention_bias):
    """Attention's heads over ``qkv`` (``[B, S, Q + K + V]``, the input's projection): as
    :func:`_attention` says, for it and for the quantised ``QAttention``."""
    if a.get("past_present_share_buffer", 0) or a.get("do_rotary", 0):
        raise Unsupported("Attention with a shared past buffer or rotary embeddings")
    heads, (b, s) = int(a["num_heads"]), qkv.shape[:2]
    sizes = [int(v) for v in a.get("qkv_hidden_sizes", [])] or [qkv.shape[-1] // 3] * 3
    q, k, v = (t.reshape(b, s, heads, -1).transpose(1, 2) for t in torch.split(qkv, sizes, dim=-1))
    p = past.shape[3] if past is not None else 0
    if past is not None:
        k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
    total = p + s
    scores = q @ k.transpose(-1, -2) * (a.get("scale", 0.0) or 1.0 / math.sqrt(q.shape[-1]))
    hidden = torch.zeros(b, 1, s, total, dtype=torch.bool)
    if mask is not None:
        hidden = hidden | _attention_mask(mask, b, s, total)
    if a.get("unidirectional", 0):
        hidden = hidden | torch.ones(s, total, dtype=torch.bool).triu(p + 1)
    scores = scores + hidden.to(scores.dtype) * a.get("mask_filter_value", -10000.0)
    if attention_bias is not None:
        scores = scores + attention_bias
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, s, -1)
    return [out, torch.stack([k, v])] if k.shape == v.shape else [out]


def _activation(name: str, params: list[float]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation a fused node applies after its operation (onnxruntime's MLAS kinds)."""
    p = list(params)
    kinds = {"": lambda x: x, "Relu": F.relu, "Tanh": torch.tanh, "Sigmoid": torch.sigmoid,
             "LeakyRelu": lambda x: F.leaky_relu(x, p[0] if p else 0.01),
             "Clip": lambda x: torch.clamp(x, p[0], p[1]) if len(p) > 1 else x,
             "HardSigmoid": lambda x: torch.clamp((p[0] if p else 0.2) * x + (p[1] if len(p) > 1 else 0.5), 0, 1)}
    if name not in kinds:
        raise Unsupported(f"a fused activation {name!r}")
    return kinds[name]


def _base(op: str, ins: list, a: dict, opset: int) -> torch.Tensor:
    from ._torch_graph import run_op  # the default domain's operator (imported when first run)

    return run_op(op, ins, a, False, opset)[0]


def _fused_conv(ins, a, opset):
    """``FusedConv``: ``Conv``, plus input 3 when given, then the activation."""
    y = _base("Conv", ins[:3], a, opset)
    if _given(ins, 3) is not None:
        y = y + ins[3]
    return [_activation(a.get("activation", ""), a.get("activation_params", []))(y)]


def _fused_gemm(ins, a, opset):
    """``FusedGemm``: ``Gemm``, then the activation (``activation_alpha``, ``_beta``)."""
    params = [a[k] for k in ("activation_alpha", "activation_beta") if k in a]
    return [_activation(a.get("activation", ""), params)(_base("Gemm", ins, a, opset))]


def _fused_matmul(ins, a, opset):
    """``FusedMatMul``: ``alpha · A @ B`` with ``transA``/``transB`` on the last two axes."""
    if a.get("transBatchA", 0) or a.get("transBatchB", 0):
        raise Unsupported("FusedMatMul with transBatchA or transBatchB")
    x, y = ins[0], ins[1]
    x = x.transpose(-1, -2) if a.get("transA", 0) else x
    y = y.transpose(-1, -2) if a.get("transB", 0) else y
    return [a.get("alpha", 1.0) * (x @ y)]


CONTRIB: dict[str, Callable] = {
    "FastGelu": lambda ins, a, opset: [F.gelu(ins[0] + (_given(ins, 1) if _given(ins, 1) is not None else 0),
                                              approximate="tanh")],
    "BiasGelu": lambda ins, a, opset: [F.gelu(ins[0] + ins[1])],
    "QuickGelu": lambda ins, a, opset: [ins[0] * torch.sigmoid(a.get("alpha", 1.702) * ins[0])],
    "SkipLayerNormalization": _skip_norm(rms=False),
    "SkipSimplifiedLayerNormalization": _skip_norm(rms=True),
    "EmbedLayerNormalization": _embed_layer_norm,
    "Attention": _attention,
    "FusedConv": _fused_conv,
    "FusedGemm": _fused_gemm,
    "FusedMatMul": _fused_matmul,
}

# The default domain's operator each fused one performs (what its weights are initialised as).
FUSED = {"FusedConv": "Conv", "FusedGemm": "Gemm", "FusedMatMul": "MatMul"}

# The com.microsoft operators run, by name (com.microsoft's Gelu is the default domain's).
CONTRIB_OPS = frozenset(CONTRIB) | {"Gelu"}
