"""Where an export folded a convolution's BatchNormalization into its weights: the Conv
outputs after which :mod:`onnx_protect.assess`'s scratch reference gets one back."""

from __future__ import annotations

import onnx
from onnx import numpy_helper

NORM_OPS = {"BatchNormalization", "LayerNormalization", "InstanceNormalization", "GroupNormalization",
            "RMSNormalization", "SimplifiedLayerNormalization"}


# Activations after which a convolution's BatchNormalization sits in the usual block
# (Conv, BatchNorm, activation): what is left of it once the export folded the norm.
ACTIVATIONS = {"Relu", "LeakyRelu", "Elu", "Gelu", "Sigmoid", "Tanh", "HardSwish", "HardSigmoid", "Mish",
               "Softplus", "Clip"}


def folded_batchnorm_convs(model: onnx.ModelProto) -> list[str]:
    """Output names of the Conv nodes whose normalisation the export folded, each with
    its weight a constant and no normalisation on the way:

    * a Conv read by an activation, or by an ``Add`` (a residual sum) that an
      activation reads (Conv, BatchNorm, activation: ResNet);
    * a Conv whose output reaches another Conv's input directly or through ``Add``
      residual sums only, with no activation (Conv, BatchNorm, linear: the projection
      of a MobileNet's inverted residual block).

    Not one: a Conv read by a normalisation, or whose activation feeds one (a
    ConvMixer's Conv, Gelu, BatchNorm); a Conv on a globally pooled map (the
    squeeze-and-excitation gate: one value per channel, never normalised). A network
    that never had a norm there (Conv, Relu) looks the same and is counted too."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for x in n.input:
            consumers.setdefault(x, []).append(n)

    def activated(value: str) -> bool:
        acts = [u for u in consumers.get(value, []) if u.op_type in ACTIVATIONS]
        return bool(acts) and not any(v.op_type in NORM_OPS for a in acts for o in a.output
                                      for v in consumers.get(o, []))

    outputs = {o.name for o in model.graph.output}
    linear: dict[str, bool] = {}

    def into_conv(value: str) -> bool:
        """Every reader of the value a Conv (as its data) or an Add whose sum is one such."""
        if value not in linear:
            users = consumers.get(value, [])
            linear[value] = False  # a cycle (none in a valid graph) ends here
            linear[value] = bool(users) and value not in outputs and all(
                (u.op_type == "Conv" and u.input[0] == value) or (u.op_type == "Add" and into_conv(u.output[0]))
                for u in users)
        return linear[value]

    constants = {t.name for t in model.graph.initializer}
    constants |= {n.output[0] for n in model.graph.node if n.op_type == "Constant"}
    pooled = _globally_pooled(model, consumers)
    out = []
    for n in model.graph.node:
        if n.op_type != "Conv" or not n.output or not n.output[0] or n.input[1] not in constants:
            continue
        if n.input[0] in pooled:
            continue
        users = consumers.get(n.output[0], [])
        if not users or any(u.op_type in NORM_OPS for u in users):
            continue
        if (activated(n.output[0]) or any(u.op_type == "Add" and activated(u.output[0]) for u in users)
                or into_conv(n.output[0])):
            out.append(n.output[0])
    return out


def _globally_pooled(model: onnx.ModelProto, consumers: dict[str, list[onnx.NodeProto]]) -> set[str]:
    """Values that hold one number per channel: a global pooling's output (or a
    ReduceMean/ReduceMax over spatial axes only, 2 and up, dimensions kept:
    ``x.mean((2, 3), keepdim=True)``) and what Convs and activations make of it (a
    squeeze-and-excitation gate)."""
    known = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    known |= {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node
              if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"}

    def spatial(n: onnx.NodeProto) -> bool:
        a = {x.name: onnx.helper.get_attribute_value(x) for x in n.attribute}
        axes = a.get("axes")
        if axes is None and len(n.input) > 1 and n.input[1] in known:
            axes = known[n.input[1]].reshape(-1).tolist()
        return bool(a.get("keepdims", 1)) and bool(axes) and all(int(ax) >= 2 for ax in axes)

    pooled: set[str] = set()
    stack = [n.output[0] for n in model.graph.node if n.op_type in ("GlobalAveragePool", "GlobalMaxPool")
             or (n.op_type in ("ReduceMean", "ReduceMax") and spatial(n))]
    while stack:
        v = stack.pop()
        if v in pooled:
            continue
        pooled.add(v)
        stack.extend(u.output[0] for u in consumers.get(v, [])
                     if (u.op_type == "Conv" and u.input[0] == v) or u.op_type in ACTIVATIONS)
    return pooled
