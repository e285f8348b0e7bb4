"""How :mod:`onnx_protect.assess` resets an encrypted constant: as PyTorch initialises the
layer that reads it (fan-in bounds of ``Conv``, ``Gemm``, ``MatMul`` and their biases,
recurrent layers, normalisations, embeddings), 1 where it multiplies, divides or scales a
quantiser."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import onnx
import torch

from . import _torch_graph as tg
from ._torch_qop import is_scale


def _fan_in(shape: Sequence[int], c: tg.Constant) -> int | None:
    op, idx = c.users[0] if c.users else ("", 0)
    if op == "Gemm" and idx == 1 and len(shape) == 2:
        return int(shape[1] if c.gemm_trans_b else shape[0])
    if op == "Conv" and idx == 1 and len(shape) >= 2:
        return int(np.prod(shape[1:]))
    if op == "MatMul" and len(shape) >= 2:
        return int(shape[-2])
    return None


def _bias_fans(model: onnx.ModelProto) -> dict[str, int]:
    """value name of a layer's bias -> fan-in of its layer (Conv/Gemm input 2, the Add
    after a MatMul with a constant weight)."""
    shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for x in n.input:
            consumers.setdefault(x, []).append(n)
    out = {}
    for n in model.graph.node:
        w = shapes.get(n.input[1]) if len(n.input) > 1 else None
        if w is None or len(w) < 2:
            continue
        op = tg.FUSED.get(n.op_type, n.op_type) if n.domain == "com.microsoft" else n.op_type
        if op in ("Conv", "Gemm") and len(n.input) > 2 and n.input[2]:
            trans_b = any(a.name == "transB" and a.i for a in n.attribute)
            fan = w[0] if op == "Gemm" and not trans_b else int(np.prod(w[1:]))
            out[n.input[2]] = fan
        if op == "MatMul":
            for add in consumers.get(n.output[0], []):
                if add.op_type == "Add":
                    other = add.input[1] if add.input[0] == n.output[0] else add.input[0]
                    out[other] = w[-2]
    return out


def default_init(graph: tg.TorchGraph, bias_fans: dict[str, int], locator: str, gen: torch.Generator) -> torch.Tensor:
    """A fresh value of a constant as PyTorch initialises the layer that uses it."""
    c = graph.constants[locator]
    t = graph.tensor(locator)
    shape = list(t.shape)
    users = c.users
    for op, idx in users:
        if op in tg.NORM_OPS:
            return torch.full_like(t, 1.0 if idx in (1, 4) else 0.0)
    if graph.is_stat(locator):
        return torch.zeros_like(t)
    first = users[0] if users else ("", 0)
    if first[0] in ("LSTM", "GRU", "RNN") and first[1] in (1, 2, 3):
        # W, R, B: PyTorch's U(±1/sqrt(hidden)). An initial state (input 5, 6) starts at 0.
        gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[first[0]]
        per = shape[-1] // (2 * gates) if first[1] == 3 else shape[-2] // gates
        bound = 1 / math.sqrt(max(per, 1))
        return (torch.rand(t.shape, generator=gen) * 2 - 1) * bound
    fan = next((bias_fans[v] for v, loc in graph.by_value.items() if loc == locator and v in bias_fans), None)
    if fan:
        return (torch.rand(t.shape, generator=gen) * 2 - 1) / math.sqrt(fan)
    if any(op in ("Mul", "Div") or is_scale(op, i) for op, i in users):
        return torch.ones_like(t)  # a quantisation scale too: 1, then trained
    fan = _fan_in(shape, c)
    if fan:
        # Kaiming-uniform with a = sqrt(5), PyTorch's Conv/Linear default: bound 1/sqrt(fan_in).
        return (torch.rand(t.shape, generator=gen) * 2 - 1) / math.sqrt(fan)
    if first[0] == "Gather" and first[1] == 0:
        return torch.randn(t.shape, generator=gen)
    if first[0] == "Add" and sum(1 for d in shape if d > 1) >= 2:
        return (torch.randn(t.shape, generator=gen) * 0.02).clamp(-0.04, 0.04)
    return torch.zeros_like(t)
