"""An ONNX graph as a trainable PyTorch module, for the training attacks of
:mod:`onnx_protect.assess`.

Every floating-point constant of the main graph with more than one element (an
initializer or a ``Constant`` node's value) becomes a parameter, addressed by its
locator (docs/format.md §4: ``7.0/5.K`` for initializer K, ``7.0/1.N/5.A/5.0`` for
the value of node N's attribute A); ``BatchNormalization`` running statistics become
buffers; every other constant stays constant. The graph runs with PyTorch operators.

What is covered is listed in :data:`SUPPORTED_OPS`: the operators of feed-forward and
convolutional networks, transformers (attention written out with MatMul/Softmax, or
``LayerNormalization``/``Gelu``), and ``LSTM``/``GRU``/``RNN`` layers
(:mod:`onnx_protect._torch_rnn`), in the default domain, with those of
:mod:`onnx_protect._torch_ops` (logical operators, ``Einsum``, ``Pad``, ``ConvTranspose``,
``Resize``, the other reductions, scatters, ...) and, in onnxruntime's com.microsoft domain,
:mod:`onnx_protect._torch_contrib`'s (a BERT fused by its transformer optimizer). Model-local
functions run inlined; ``If``, ``Loop`` and ``Scan`` run their subgraphs
(:mod:`onnx_protect._torch_control`), whose constants are located and trained as the main
graph's; ``QuantizeLinear``/``DequantizeLinear`` and the weights stored as integers behind
them: :mod:`onnx_protect._torch_quant`. A graph with another domain or an operator outside that
list is refused before anything is trained (:class:`Unsupported`, naming every offending
operator). A model with several data inputs runs on :class:`onnx_protect._torch_inputs.Inputs`;
the Hugging Face ones after the first that the data does not give are filled
(:data:`FILLED_INPUTS`).

``onnx2torch`` is not used: 1.5.15 (with torch 2.9.1) converts none of the fourteen
classifiers of fixtures/zoo, having no converter for ``Reshape`` and ``Shape`` at opset
19, ``ReduceMean`` at 18 or ``Gelu`` at 20, the versions the current PyTorch exporter
writes. :func:`check` compares this interpreter with onnxruntime on the user's own
inputs before any result is reported.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from ._torch_inputs import (BATCHED_SHAPES, FILLED_INPUTS, FLOAT_TYPES,  # noqa: F401 (FILLED_INPUTS: API)
                            Inputs, as_torch, concat_batch,
                            data_inputs, filled_input_types, filled_inputs, static_batch, with_batch)
from ._torch_contrib import CONTRIB, CONTRIB_OPS, FUSED
from ._torch_order import in_order
from ._torch_qop import OPERANDS, QOP_CONTRIB, QOP_OPS, WEIGHTED, as_integers, embed_tables, role
from ._torch_control import CONTROL, CONTROL_OPS, all_nodes, subgraphs
from ._torch_folded import ACTIVATIONS, NORM_OPS, folded_batchnorm_convs  # noqa: F401 (API)
from ._torch_inline import _inline_cached, inline, inlined  # noqa: F401 (inline, inlined: API)
from ._torch_ops import MORE_OPS, Unsupported, _given, ints
from ._torch_quant import FITTING, INTEGER_OPS, QUANT_OPS, Quantized, quantized_weights, scaled
from ._torch_rnn import recurrent

# onnxruntime's com.microsoft operators the interpreter runs: the transformer optimizer's, the
# quantisation's.
MICROSOFT = {**CONTRIB, **QOP_CONTRIB}

PASS_THROUGH = {
    "Cast", "Transpose", "Reshape", "Identity", "Squeeze", "Unsqueeze", "Flatten", "Slice", "Split",
    "Expand", "Tile", "Concat",
}


def attrs(node: onnx.NodeProto) -> dict[str, Any]:
    out = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


class Constant:
    """One floating-point constant of the graph (or a quantised weight, as its float values):
    where it is and how it is used."""

    def __init__(self, locator: str, name: str, array: np.ndarray):
        self.locator = locator
        self.name = name
        self.array = array
        self.users: list[tuple[str, int]] = []  # (op_type, input index), through pass-throughs
        self.gemm_trans_b = True  # transB of the first Gemm reading it as B
        self.key = ""
        self.quant: Quantized | None = None  # a weight stored as integers: how it is dequantised


class TorchGraph(torch.nn.Module):
    """Runs the main graph of an ONNX model with PyTorch operators (module docs)."""

    def __init__(self, model: onnx.ModelProto, trainable: frozenset[str] = frozenset()):
        """``trainable``: locators of one-element float constants that become parameters
        too (others stay fixed values: an attention scale, an epsilon). Local functions run
        inlined (:func:`inlined`); locators are the file's."""
        super().__init__()
        source, (model, origins) = model, _inline_cached(model)
        refuse_unsupported(model)
        self.trainable = trainable
        g = model.graph
        self.graph = g
        self._orders: dict[int, tuple] = {}  # id of a node list -> (the list, the order it runs in)
        self.opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=13)
        init_names = {t.name for t in g.initializer}
        self.inputs = [i.name for i in g.input if i.name not in init_names]
        self.filled = filled_input_types(model)
        self.batch = static_batch(model)
        # Training and scoring read the scores before a final Softmax (cross-entropy on
        # probabilities barely trains); `check` reads the output itself.
        self.read, self.logits = scores_before_softmax(model), True
        self.constants: dict[str, Constant] = {}  # locator -> constant
        self.by_value: dict[str, str] = {}  # value name -> locator (float constants)
        self.fixed: dict[str, torch.Tensor] = {}  # value name -> non-float or scalar constant
        stats = {n.input[i] for n in all_nodes(g) if n.op_type == "BatchNormalization" for i in (3, 4)
                 if len(n.input) > i}
        self.params = torch.nn.ParameterDict()
        self.stat_names: dict[str, str] = {}
        # BatchNormalization statistics (value names) that stay as stored in training mode.
        self.frozen_stats: set[str] = set()
        # (parameter, mask of the elements that train, stored values): the other elements
        # are put back after each optimiser step (assess's relearn on partly encrypted tensors).
        self.restore: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        # Conv output name -> index of a BatchNormalization inserted after it (insert_batchnorm).
        self.inserted: dict[str, int] = {}
        # Weights stored as integers behind a DequantizeLinear: trained as their float values.
        named = {t.name: t for t in g.initializer}
        named |= {n.output[0]: a.t for n in g.node if n.op_type == "Constant" for a in n.attribute[:1]
                  if a.name == "value" and a.type == onnx.AttributeProto.TENSOR}
        self.quantized = quantized_weights(g, named)
        self.dynamic = {name: q for name, q in self.quantized.items() if q.scale_name}
        self.passthrough = {q.passthrough for q in self.quantized.values() if q.passthrough}
        for k, t in enumerate(g.initializer):
            self._add(f"7.0/5.{k}", t.name, t, t.name in stats)
        for n_idx, node in enumerate(source.graph.node):
            if node.op_type != "Constant":
                continue
            for a_idx, a in enumerate(node.attribute):
                if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                    self._add(f"7.0/1.{n_idx}/5.{a_idx}/5.0", node.output[0], a.t, node.output[0] in stats)
        for where, sub in subgraphs(source.graph):
            for k, t in enumerate(sub.initializer):
                self._add(f"{where}/5.{k}", t.name, t, t.name in stats)
            for n_idx, node in enumerate(sub.node):
                for a_idx, a in enumerate(node.attribute if node.op_type == "Constant" else []):
                    if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                        self._add(f"{where}/1.{n_idx}/5.{a_idx}/5.0", node.output[0], a.t, node.output[0] in stats)
        # A function's constant, once per call: one parameter for all (a fixed value per call).
        body = {o: n.attribute for n in model.graph.node if n.op_type == "Constant" for o in n.output[:1]}
        for value, locator in origins.items():
            if locator in self.constants:
                self.by_value[value] = locator
            else:
                self._add(locator, value, next(a.t for a in body[value] if a.name == "value"), value in stats)
        self._resolve_users()

    def _add(self, locator: str, value: str, t: onnx.TensorProto, is_stat: bool) -> None:
        # A copy in C order of the tensor's own shape: a 0-d constant (a scalar index of
        # Gather, a GELU divisor) stays 0-d (np.ascontiguousarray would make it (1,)).
        a = np.array(numpy_helper.to_array(t), order="C", copy=True)
        quant = self.quantized.get(value)
        if quant is not None:  # read as its DequantizeLinear's output, which is not run
            a, value = quant.floats(a), quant.output
        if t.data_type in FLOAT_TYPES or quant is not None:
            a = a.astype(np.float32, copy=False)
            c = Constant(locator, t.name or value, a)
            c.quant = quant
            key = f"c{len(self.constants)}"
            tensor = torch.from_numpy(a)
            if is_stat:
                self.register_buffer(key, tensor)
                self.stat_names[locator] = key
            elif a.size > 1 or locator in self.trainable:
                self.params[key] = torch.nn.Parameter(tensor)
            else:
                self.fixed[value] = tensor
                return
            c.key = key
            self.constants[locator] = c
            self.by_value[value] = locator
        else:
            try:
                self.fixed[value] = torch.from_numpy(a)
            except TypeError as e:  # float8, int4, ...: no torch type
                raise Unsupported(f"the constant '{t.name or value}' is of ONNX type {t.data_type}, which PyTorch "
                                  f"has no type for") from e

    def _resolve_users(self) -> None:
        consumers: dict[str, list[tuple[str, int, onnx.NodeProto]]] = {}
        for n in all_nodes(self.graph):
            op = FUSED.get(n.op_type, n.op_type) if n.domain == "com.microsoft" else INTEGER_OPS.get(n.op_type, n.op_type)
            for i, x in enumerate(n.input):
                consumers.setdefault(x, []).append((*role(op, i), n))
        for value, locator in self.by_value.items():
            seen, stack, users = set(), [value], []
            while stack:
                v = stack.pop()
                for op, i, n in consumers.get(v, []):
                    if op in PASS_THROUGH and (op == "Concat" or i == 0):
                        if id(n) not in seen:
                            seen.add(id(n))
                            stack.extend(n.output)
                    else:
                        if op == "Gemm" and i == 1 and not users:
                            self.constants[locator].gemm_trans_b = bool(attrs(n).get("transB", 0))
                        users.append((op, i))
            self.constants[locator].users = users

    def insert_batchnorm(self, outputs: list[str]) -> None:
        """Adds a batch normalisation after each of these Conv outputs: fresh statistics
        (mean 0, variance 1, PyTorch's momentum 0.1 and epsilon 1e-5) and an affine
        weight 1 and bias 0 that are parameters (``bn{i}_weight``, ``bn{i}_bias``), as
        ``torch.nn.BatchNorm2d`` starts. For scratch references of graphs whose export
        folded the normalisation into the convolutions (:func:`folded_batchnorm_convs`)."""
        weights = {n.output[0]: n.input[1] for n in self.graph.node if n.op_type == "Conv"}
        for v in outputs:
            w = weights.get(v)
            if w is None:
                raise Unsupported(f"{v!r} is not the output of a Conv")
            if v in self.inserted:
                continue
            shape = self.tensor(self.by_value[w]).shape if w in self.by_value else self.fixed[w].shape
            channels = int(shape[0])
            i = len(self.inserted)
            self.params[f"bn{i}_weight"] = torch.nn.Parameter(torch.ones(channels))
            self.params[f"bn{i}_bias"] = torch.nn.Parameter(torch.zeros(channels))
            self.register_buffer(f"bn{i}_mean", torch.zeros(channels))
            self.register_buffer(f"bn{i}_var", torch.ones(channels))
            self.inserted[v] = i

    def _inserted_bn(self, i: int, v: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(v, getattr(self, f"bn{i}_mean"), getattr(self, f"bn{i}_var"),
                            self.params[f"bn{i}_weight"], self.params[f"bn{i}_bias"], training=self.training,
                            momentum=0.1, eps=1e-5)

    def calibrate(self, x: torch.Tensor | Inputs, values: Sequence[str]) -> None:
        """Fits the quantisation scales named ``values`` to a run on ``x`` (a training batch):
        each, where it is first used, maps what it quantises onto its integers
        (:func:`onnx_protect._torch_quant.fit`), as calibration does for a fresh model."""
        FITTING.clear()
        FITTING.update(id(self._get({}, v)) for v in values)
        training = self.training
        try:
            with torch.no_grad():
                self.eval()(x)
        finally:
            FITTING.clear()
            self.train(training)

    def tensor(self, locator: str) -> torch.Tensor:
        """The parameter or buffer of a constant."""
        key = self.constants[locator].key
        return self.params[key] if key in self.params else getattr(self, key)

    def is_stat(self, locator: str) -> bool:
        return locator in self.stat_names

    def forward(self, x: torch.Tensor | Inputs) -> torch.Tensor:
        """The scores (or with ``logits`` false the first output) for ``x``: the first data
        input's batch, or :class:`Inputs` of several (those of :data:`FILLED_INPUTS` not given
        are filled)."""
        n = len(x) if isinstance(x, Inputs) else x.shape[0] if x.dim() else 1
        if self.batch and self.batch > 1 and n != self.batch:
            # An export whose shapes hold its batch size (torch.export's at a batch over 1) runs
            # that many at a time, as onnxruntime does; the last step padded with its first row.
            parts = []
            for i in range(0, n, self.batch):
                k = min(self.batch, n - i)
                idx = torch.tensor(list(range(i, i + k)) + [i] * (self.batch - k))
                parts.append(self(x[idx])[:k])
            return torch.cat(parts)
        env: dict[str, torch.Tensor] = dict(x.arrays) if isinstance(x, Inputs) else {self.inputs[0]: x}
        x = env[self.inputs[0]]
        env.update(filled_inputs(self.filled, x, env))
        missing = [n for n in self.inputs if n not in env]
        if missing:
            raise Unsupported(f"no data for the model's input {missing[0]!r}")
        self._run(self.graph.node, env, x.shape[0] if x.dim() else 1)
        return env[self.read if self.logits else self.graph.output[0].name]

    def _get(self, env: Mapping[str, torch.Tensor], name: str) -> torch.Tensor:
        if name in env:
            return env[name]
        if name in self.by_value:
            return self.tensor(self.by_value[name])
        return self.fixed[name]

    def _subgraph(self, g: onnx.GraphProto, env: Mapping, bound: dict, batch: int) -> list:
        """Runs subgraph ``g`` with its inputs ``bound`` and the enclosing values of ``env``;
        its outputs. Initializers not located in the file (a function's subgraph) are fixed."""
        inner = collections.ChainMap(dict(bound), env)
        for t in g.initializer:
            if t.name not in self.by_value and t.name not in self.fixed:
                inner[t.name] = torch.from_numpy(numpy_helper.to_array(t).copy())
        self._run(g.node, inner, batch)
        return [self._get(inner, o.name) for o in g.output]

    def _run(self, nodes, env: MutableMapping[str, torch.Tensor], batch: int) -> None:
        """Runs ``nodes`` in an order that has every value made before it is read (as
        onnxruntime does: tools such as onnxruntime's float16 conversion append nodes out of
        order), their outputs put in ``env``."""
        def get(name: str) -> torch.Tensor:
            return self._get(env, name)

        # Keyed by the node list's identity, which the entry keeps alive (a subgraph's list,
        # reached through a node attribute, would otherwise be freed and its id reused).
        kept, order = self._orders.get(id(nodes), (None, None))
        if kept is not nodes:
            order = in_order(nodes)
            self._orders[id(nodes)] = (nodes, order)
        for node in order:
            if node.op_type in ("Constant", "DequantizeLinear") and node.output[0] in self.by_value:
                continue  # a weight (a DequantizeLinear's: a quantised weight's float values)
            if node.op_type == "DequantizeLinear" and node.output[0] in self.passthrough:
                env[node.output[0]] = get(node.input[0])  # rows of a quantised weight, gathered as floats
                continue
            if node.op_type == "Constant":
                if node.output[0] in self.fixed:
                    continue
                env[node.output[0]] = constant_node(node)
                continue
            ins = [get(i) if i else None for i in node.input]
            if node.op_type in INTEGER_OPS and node.input[1] in self.dynamic:
                q = self.dynamic[node.input[1]]  # its float values: the product reads them scaled back
                ins = [ins[0], scaled(ins[1], get(q.scale_name), q), *ins[2:3]]
            elif node.op_type in WEIGHTED or node.op_type in OPERANDS:
                q = {i: self.quantized[v] for i, v in enumerate(node.input) if v in self.quantized}
                ins = as_integers(node.op_type, ins, q, get) if q else ins
            elif node.op_type == "QEmbedLayerNormalization":
                ins = embed_tables(ins, {i for i, v in enumerate(node.input) if v in self.quantized})
            if self.batch and node.op_type in BATCHED_SHAPES and len(ins) > 1 and node.input[1] not in env:
                ins[1] = with_batch(node.op_type, ins, self.batch, batch)
            elif self.batch and node.op_type == "Concat":
                ins = concat_batch(ins, attrs(node).get("axis", 0), self.batch, batch)
            training = self.training
            if node.op_type == "BatchNormalization" and node.input[3] in self.frozen_stats:
                training = False
            try:
                a = attrs(node)
                if node.op_type == "Split":  # opset 13-17: as many equal parts as outputs
                    a.setdefault("num_outputs", len(node.output))
                if node.domain == "com.microsoft" and node.op_type in MICROSOFT:
                    outs = MICROSOFT[node.op_type](ins, a, self.opset)
                elif node.op_type in CONTROL:
                    outs = CONTROL[node.op_type](ins, a, lambda g, bound: self._subgraph(g, env, bound, batch),
                                                 self.opset)
                else:
                    outs = run_op(node.op_type, ins, a, training, self.opset)
            except Unsupported:
                raise
            except (RuntimeError, ValueError, TypeError, IndexError) as e:
                where = f"{node.op_type} node {node.name!r}" if node.name else f"a {node.op_type} node"
                shapes = ", ".join(str(tuple(t.shape)) if t is not None else "-" for t in ins)
                first = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise Unsupported(f"the PyTorch interpreter cannot run {where} on inputs of shapes {shapes}: "
                                  f"{first}") from e
            for name, v in zip(node.output, outs):
                if name:
                    env[name] = self._inserted_bn(self.inserted[name], v) if name in self.inserted else v


def constant_node(node: onnx.NodeProto) -> torch.Tensor:
    a = node.attribute[0]
    if a.name == "value":
        return torch.from_numpy(numpy_helper.to_array(a.t).copy())
    v = onnx.helper.get_attribute_value(a)
    dtype = torch.float32 if a.name.startswith("value_float") else torch.int64
    return torch.tensor(v, dtype=dtype)


def scores_before_softmax(model: onnx.ModelProto) -> str:
    """The value the first graph output is a ``Softmax`` of over its last or second axis
    (through ``Identity``), else that output."""
    out = model.graph.output[0].name
    producer = {o: n for n in model.graph.node for o in n.output}
    name = out
    while (n := producer.get(name)) is not None and n.domain in ("", "ai.onnx"):
        if n.op_type == "Identity":
            name = n.input[0]
            continue
        opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=13)
        axis = next((a.i for a in n.attribute if a.name == "axis"), -1 if opset >= 13 else 1)
        rank = next((len(v.type.tensor_type.shape.dim) for v in model.graph.output if v.name == out
                     and v.type.tensor_type.HasField("shape")), 2)
        # The last axis (a classifier, a token classifier) or the second (a segmentation
        # map's classes); before opset 13 Softmax flattens from its axis: rank 2 only.
        if n.op_type == "Softmax" and axis in (-1, 1, rank - 1) and (opset >= 13 or rank == 2):
            return n.input[0]
        break
    return out


def runs(n: onnx.NodeProto) -> bool:
    """Whether the interpreter runs node ``n``: an operator of :data:`SUPPORTED_OPS` in the
    default domain, or of :data:`CONTRIB_OPS` in onnxruntime's com.microsoft."""
    if n.domain == "com.microsoft":
        return n.op_type in CONTRIB_OPS or n.op_type in MICROSOFT
    return n.domain in ("", "ai.onnx") and n.op_type in SUPPORTED_OPS


def refuse_unsupported(model: onnx.ModelProto) -> None:
    g = model.graph
    problems = []
    bad = sorted({n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
                  for n in all_nodes(g) if not runs(n)})
    if bad:
        problems.append("operators " + ", ".join(bad))
    if any(op.split(".")[-1].startswith(("QLinear", "QGemm", "QAttention", "QEmbed")) for op in bad):
        problems.append("these operators of onnxruntime's QOperator quantisation do not run here; its QDQ form "
                        "does: quantise with quantize_static(quant_format=QuantFormat.QDQ), its default")
    if not data_inputs(model):
        problems.append("no data input")
    if g.sparse_initializer:
        problems.append("sparse initializers")
    if problems:
        raise Unsupported("training attacks cannot run this model: " + "; ".join(problems)
                          + f" (supported operators: {', '.join(sorted(SUPPORTED_OPS))})")


def input_dtype(model: onnx.ModelProto, name: str | None = None) -> np.dtype:
    """The NumPy type a data input (the first, or ``name``) is fed in: float32 for a
    floating-point input (the interpreter computes in float32), the input's own type for
    integers and booleans (token ids, masks)."""
    value = next((i for i in data_inputs(model) if name is None or i.name == name), None)
    elem = value.type.tensor_type.elem_type if value is not None else 0
    if not elem or elem in FLOAT_TYPES:
        return np.dtype(np.float32)
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem))


def _pads(x: torch.Tensor, a: dict, kernel: list[int], value: float = 0.0) -> tuple[torch.Tensor, list[int]]:
    """Applies ONNX pads (``auto_pad`` ``SAME_*`` worked out from the input, the kernel, the
    strides and dilations) itself where torch cannot (asymmetric, or more than half the
    kernel); returns what is left for torch's symmetric ``padding``."""
    nd = len(kernel)
    stride, dil = a.get("strides", [1] * nd), a.get("dilations", [1] * nd)
    eff = [(k - 1) * d + 1 for k, d in zip(kernel, dil)]
    auto = a.get("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        size = x.shape[2:]
        total = [max((-(-n // s) - 1) * s + e - n, 0) for n, s, e in zip(size, stride, eff)]
        small = [t // 2 for t in total]
        big = [t - h for t, h in zip(total, small)]
        pads = small + big if auto == "SAME_UPPER" else big + small
    elif auto in ("NOTSET", "VALID"):
        pads = a.get("pads", [0] * (2 * nd)) if auto == "NOTSET" else [0] * (2 * nd)
    else:
        raise Unsupported(f"auto_pad {auto}")
    if pads[:nd] == pads[nd:] and all(p <= e // 2 for p, e in zip(pads, eff)):
        return x, list(pads[:nd])
    spec: list[int] = []
    for i in reversed(range(nd)):
        spec += [pads[i], pads[nd + i]]
    return F.pad(x, spec, value=value), [0] * nd


def conv(x, w, b, a):
    nd = w.dim() - 2
    x, pad = _pads(x, a, list(w.shape[2:]))
    f = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
    return f(x, w, b, stride=a.get("strides", [1] * nd), padding=pad,
             dilation=a.get("dilations", [1] * nd), groups=a.get("group", 1))


def pool(kind, x, a):
    k = a["kernel_shape"]
    nd = len(k)
    padded, pad = _pads(x, a, k, value=-math.inf if kind == "max" else 0.0)
    stride = a.get("strides", [1] * nd)
    ceil = bool(a.get("ceil_mode", 0))
    if kind == "max":
        f = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[nd]
        return f(padded, k, stride=stride, padding=pad, ceil_mode=ceil, dilation=a.get("dilations", [1] * nd))
    if any(d != 1 for d in a.get("dilations", [1] * nd)):
        raise Unsupported("AveragePool with dilations")
    f = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[nd]
    include = bool(a.get("count_include_pad", 0))
    y = f(padded, k, stride=stride, padding=pad, ceil_mode=ceil, count_include_pad=include)
    if padded is x or include:
        return y
    # Pads applied here count as elements for torch: divide by the share of real ones.
    ones = torch.ones_like(x[:1, :1])
    mask, _ = _pads(ones, a, k)
    return y / f(mask, k, stride=stride, padding=pad, ceil_mode=ceil, count_include_pad=include)


def _axes(ins, a, idx=1):
    if len(ins) > idx and ins[idx] is not None:
        return ints(ins[idx])
    return a.get("axes")


def reduce(op, ins, a):
    x = ins[0]
    axes = _axes(ins, a)
    keep = bool(a.get("keepdims", 1))
    if not axes:
        if a.get("noop_with_empty_axes", 0):
            return x
        axes = list(range(x.dim()))
    f = {"ReduceMean": torch.mean, "ReduceSum": torch.sum}.get(op)
    if f is not None:
        return f(x, dim=axes, keepdim=keep)
    y = x
    for ax in sorted((ax % x.dim() for ax in axes), reverse=True):
        y = (y.amax if op == "ReduceMax" else y.amin)(dim=ax, keepdim=keep)
    return y


def _slice(ins, a):
    x = ins[0]
    if len(ins) == 1:  # opset 1-9: attributes
        starts, ends = a["starts"], a["ends"]
        axes, steps = a.get("axes") or list(range(len(starts))), [1] * len(starts)
    else:
        starts, ends = ints(ins[1]), ints(ins[2])
        axes = ints(ins[3]) if len(ins) > 3 and ins[3] is not None else list(range(len(starts)))
        steps = ints(ins[4]) if len(ins) > 4 and ins[4] is not None else [1] * len(starts)
    for s, e, ax, st in zip(starts, ends, axes, steps):
        n = x.shape[ax]
        s, e = s + n if s < 0 else s, e + n if e < 0 else e
        if st > 0:
            s, e = max(min(s, n), 0), max(min(e, n), 0)
        elif st < 0:
            s, e = max(min(s, n - 1), -1), max(min(e, n - 1), -1)
        else:
            raise Unsupported("Slice with a step of 0")
        x = x.index_select(ax % x.dim(), torch.arange(s, e, st, dtype=torch.int64))
    return x


def _softmax(f, x, a, opset):
    axis = a.get("axis", -1 if opset >= 13 else 1)
    if opset >= 13:
        return f(x, dim=axis)
    shape = x.shape
    return f(x.reshape(int(np.prod(shape[:axis])), -1), dim=1).reshape(shape)


def _split(ins, a, n_out):
    x = ins[0]
    axis = a.get("axis", 0)
    sizes = ints(ins[1]) if len(ins) > 1 and ins[1] is not None else a.get("split")
    if not sizes:
        n = a.get("num_outputs", n_out)
        size = -(-x.shape[axis] // n)
        sizes = [min(size, x.shape[axis] - i * size) for i in range(n)]
    return list(torch.split(x, sizes, dim=axis))


def _cast(x, to):
    dtype = {
        onnx.TensorProto.FLOAT: torch.float32, onnx.TensorProto.FLOAT16: torch.float32,
        onnx.TensorProto.DOUBLE: torch.float32, onnx.TensorProto.BFLOAT16: torch.float32,
        onnx.TensorProto.INT64: torch.int64, onnx.TensorProto.INT32: torch.int64,
        onnx.TensorProto.INT16: torch.int64, onnx.TensorProto.INT8: torch.int64,
        onnx.TensorProto.UINT16: torch.int64, onnx.TensorProto.UINT8: torch.int64,
        onnx.TensorProto.BOOL: torch.bool,
    }.get(to)
    if dtype is None:
        raise Unsupported(f"Cast to data type {to}")
    return x.to(dtype)


def _binary(op):
    return {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div, "Pow": torch.pow,
            "Equal": torch.eq, "Less": torch.lt, "Greater": torch.gt, "Max": torch.maximum,
            "Min": torch.minimum}[op]


UNARY = {
    "Relu": F.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Erf": torch.erf, "Sqrt": torch.sqrt,
    "Exp": torch.exp, "Log": torch.log, "Neg": torch.neg, "Abs": torch.abs, "Reciprocal": torch.reciprocal,
    "Softplus": F.softplus, "Softsign": F.softsign, "Sin": torch.sin, "Cos": torch.cos,
    "Identity": lambda x: x, "Dropout": lambda x: x, "Not": torch.logical_not, "Floor": torch.floor,
    "Ceil": torch.ceil, "HardSwish": F.hardswish, "Mish": F.mish,
}


def _norm(op, ins, a, training):
    x = ins[0]
    eps = a.get("epsilon", 1e-5)
    if op == "BatchNormalization":
        # A statistic that is also a trained weight (an export that merged equal initializers,
        # a zero bias and a zero mean, behind Identity) is not updated in place in training.
        mean, var = (v.detach().clone() if training and v.requires_grad else v for v in ins[3:5])
        return F.batch_norm(x, mean, var, ins[1], ins[2], training=training,
                            momentum=1 - a.get("momentum", 0.9), eps=eps)
    if op == "LayerNormalization":
        axis = a.get("axis", -1) % x.dim()
        return F.layer_norm(x, x.shape[axis:], ins[1], ins[2] if len(ins) > 2 else None, eps)
    if op == "InstanceNormalization":
        return F.instance_norm(x, weight=ins[1], bias=ins[2], eps=eps)
    if op in ("RMSNormalization", "SimplifiedLayerNormalization"):  # onnxruntime's name, its domain ""
        axis = a.get("axis", -1) % x.dim()
        inv = torch.rsqrt(x.square().mean(dim=list(range(axis, x.dim())), keepdim=True) + eps)
        return x * inv * ins[1]
    groups = a["num_groups"]
    y = F.group_norm(x, groups, eps=eps)
    shape = [1, -1] + [1] * (x.dim() - 2)
    scale, bias = ins[1], ins[2]
    if scale.numel() == groups != x.shape[1]:  # opset 18-20: one scale per group
        scale = scale.repeat_interleave(x.shape[1] // groups)
        bias = bias.repeat_interleave(x.shape[1] // groups)
    return y * scale.reshape(shape) + bias.reshape(shape)


def _shape_ops(op, ins, a):
    x = ins[0]
    if op == "Reshape":
        shape = ints(ins[1])
        shape = [x.shape[i] if s == 0 and not a.get("allowzero", 0) else s for i, s in enumerate(shape)]
        return x.reshape(shape)
    if op == "Flatten":  # axis in [-rank, rank]: [prod(dims before), prod(dims from)]
        ax = a.get("axis", 1)
        ax = ax + x.dim() if ax < 0 else ax
        return x.reshape(int(np.prod(x.shape[:ax])), int(np.prod(x.shape[ax:])))
    if op == "Transpose":
        return x.permute(*a.get("perm", list(range(x.dim()))[::-1]))
    if op == "Shape":
        shape = list(x.shape)
        return torch.tensor(shape[a.get("start", 0):a.get("end", len(shape))], dtype=torch.int64)
    if op == "Squeeze":
        axes = _axes(ins, a)
        if not axes:
            return x.squeeze()
        for ax in sorted((ax % x.dim() for ax in axes), reverse=True):
            x = x.squeeze(ax)
        return x
    if op == "Unsqueeze":
        axes = _axes(ins, a)
        rank = x.dim() + len(axes)
        for ax in sorted(ax % rank for ax in axes):
            x = x.unsqueeze(ax)
        return x
    if op == "Expand":
        return x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(ints(ins[1]))))
    if op == "Tile":
        return x.repeat(*ints(ins[1]))
    if op == "Concat":
        return torch.cat([t for t in ins if t is not None], dim=a["axis"])
    if op == "Gather":
        ax = a.get("axis", 0) % x.dim()
        i = ins[1].long()
        i = torch.where(i < 0, i + x.shape[ax], i)
        if i.dim() == 0:
            return x.select(ax, int(i))
        return torch.index_select(x, ax, i.reshape(-1)).reshape(x.shape[:ax] + i.shape + x.shape[ax + 1:])
    if op == "GatherElements":
        ax = a.get("axis", 0) % x.dim()
        i = ins[1].long()
        return torch.gather(x, ax, torch.where(i < 0, i + x.shape[ax], i))
    if op == "Slice":
        return _slice(ins, a)
    if op == "ConstantOfShape":
        value = a.get("value")
        fill = torch.from_numpy(numpy_helper.to_array(value).copy()) if value is not None else torch.zeros(1)
        return fill.reshape(()).expand(tuple(ints(x))).clone()
    if op == "Range":
        return torch.arange(ins[0].item(), ins[1].item(), ins[2].item())
    raise Unsupported(op)


SHAPE_OPS = {"Reshape", "Flatten", "Transpose", "Shape", "Squeeze", "Unsqueeze", "Expand", "Tile", "Concat",
             "Gather", "GatherElements", "Slice", "ConstantOfShape", "Range"}


def run_op(op: str, ins: list, a: dict, training: bool, opset: int) -> list:
    if op == "Conv":
        return [conv(ins[0], ins[1], ins[2] if len(ins) > 2 else None, a)]
    if op == "ConvInteger":  # (x − x_zero_point) ∗ (w − w_zero_point, one per output channel), in floats
        x, w, xzp, wzp = ins[0].float(), ins[1].float(), _given(ins, 2), _given(ins, 3)
        x = x - xzp.float().reshape(()) if xzp is not None else x
        w = w - wzp.float().reshape(-1, *[1] * (w.dim() - 1)) if wzp is not None else w
        return [conv(x, w, None, a)]
    if op == "Gemm":
        A = ins[0].t() if a.get("transA", 0) else ins[0]
        B = ins[1].t() if a.get("transB", 0) else ins[1]
        y = a.get("alpha", 1.0) * (A @ B)
        if len(ins) > 2 and ins[2] is not None:
            y = y + a.get("beta", 1.0) * ins[2]
        return [y]
    if op == "MatMul":
        return [ins[0] @ ins[1]]
    if op in ("Max", "Min"):  # variadic
        y = ins[0]
        for t in ins[1:]:
            y = _binary(op)(y, t)
        return [y]
    if op == "Div" and not ins[0].is_floating_point():  # integers: truncated
        return [torch.div(ins[0], ins[1], rounding_mode="trunc")]
    if op in ("Add", "Sub", "Mul", "Div", "Pow", "Equal", "Less", "Greater"):
        return [_binary(op)(ins[0], ins[1])]
    if op in UNARY:
        return [UNARY[op](ins[0])]
    if op == "LeakyRelu":
        return [F.leaky_relu(ins[0], a.get("alpha", 0.01))]
    if op == "HardSigmoid":
        return [torch.clamp(a.get("alpha", 0.2) * ins[0] + a.get("beta", 0.5), 0, 1)]
    if op == "Elu":
        return [F.elu(ins[0], a.get("alpha", 1.0))]
    if op == "Gelu":
        return [F.gelu(ins[0], approximate=a.get("approximate", "none"))]
    if op == "Clip":
        lo = ins[1] if len(ins) > 1 and ins[1] is not None else a.get("min")
        hi = ins[2] if len(ins) > 2 and ins[2] is not None else a.get("max")
        return [ins[0] if lo is None and hi is None else torch.clamp(ins[0], lo, hi)]
    if op == "Where":
        return [torch.where(ins[0].bool(), ins[1], ins[2])]
    if op == "Softmax":
        return [_softmax(F.softmax, ins[0], a, opset)]
    if op == "LogSoftmax":
        return [_softmax(F.log_softmax, ins[0], a, opset)]
    if op in NORM_OPS:
        return [_norm(op, ins, a, training)]
    if op == "MaxPool":
        return [pool("max", ins[0], a)]
    if op == "AveragePool":
        return [pool("avg", ins[0], a)]
    if op in ("GlobalAveragePool", "GlobalMaxPool"):
        dims = list(range(2, ins[0].dim()))
        return [ins[0].mean(dim=dims, keepdim=True) if op == "GlobalAveragePool"
                else ins[0].amax(dim=dims, keepdim=True)]
    if op in ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin"):
        return [reduce(op, ins, a)]
    if op == "Split":
        return _split(ins, a, a.get("num_outputs", 0) or len(ins))
    if op == "Cast":
        return [_cast(ins[0], a["to"])]
    if op in SHAPE_OPS:
        return [_shape_ops(op, ins, a)]
    if op in ("LSTM", "GRU", "RNN"):
        return recurrent(op, ins, a)
    if op in MORE_OPS:
        return MORE_OPS[op](ins, a, opset)
    if op in QUANT_OPS:
        return QUANT_OPS[op](ins, a, opset)
    if op in QOP_OPS:
        return QOP_OPS[op](ins, a, opset)
    raise Unsupported(op)


SUPPORTED_OPS = frozenset(
    {"Conv", "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Pow", "Equal", "Less", "Greater", "Max", "Min",
     "LeakyRelu", "HardSigmoid", "Elu", "Gelu", "Clip", "Where", "Softmax", "LogSoftmax", "MaxPool",
     "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceSum", "ReduceMax",
     "ReduceMin", "Split", "Cast", "LSTM", "GRU", "RNN", "Constant"}
    | set(UNARY) | NORM_OPS | SHAPE_OPS | set(MORE_OPS) | CONTROL_OPS | set(QUANT_OPS) | set(INTEGER_OPS)
    | set(QOP_OPS))


# The check against onnxruntime (imported last: it runs this module's TorchGraph).
from ._torch_check import QUANTISED_TOLERANCE, HALF_TOLERANCE, check, requantises  # noqa: E402,F401
