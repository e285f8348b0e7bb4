"""Model-local functions for :mod:`onnx_protect._torch_graph`: each call replaced by the
function's body, with where each body constant is stored in the file."""

from __future__ import annotations

import itertools

import onnx

_INLINED: list[tuple[onnx.ModelProto, tuple[onnx.ModelProto, dict[str, str]]]] = []


def inlined(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with each call of a model-local function replaced by the function's body
    (:func:`inline`), or ``model`` itself without any."""
    return _inline_cached(model)[0]


def _inline_cached(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, str]]:
    if not model.functions:
        return model, {}
    for src, out in _INLINED:
        if src is model:
            return out
    out = inline(model)
    _INLINED[:] = [(model, out), *_INLINED[:3]]  # the attacks build a graph per run
    return out


def inline(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, str]]:
    """``model`` with every call of a model-local function (nested ones too) replaced by the
    function's body: the call's inputs and outputs for the function's, its attributes (else
    the function's defaults) for references, every other value of the body renamed per call;
    and, for each ``Constant`` of a body, the locator of its value in the file
    (``25.F/7.N/5.A/5.0``) by the value's name in the result (one per call). The main graph's
    values keep their names and its initializers their order, so its locators still match."""
    funcs = {(f.domain, f.name): (k, f) for k, f in enumerate(model.functions)}
    origins: dict[str, str] = {}
    calls = itertools.count()

    def resolved(n, given):
        """The node's attributes, a reference replaced by the caller's value (dropped without one)."""
        out = []
        for a in n.attribute:
            if not a.ref_attr_name:
                out.append(a)
            elif given is not None and a.ref_attr_name in given:
                out.append(onnx.AttributeProto())
                out[-1].CopyFrom(given[a.ref_attr_name])
                out[-1].name = a.name
        return out

    def expand(nodes, rename, given, fidx):
        out = []
        for n_idx, n in enumerate(nodes):
            ins, outs = [rename(v) for v in n.input], [rename(v) for v in n.output]
            if (n.domain, n.op_type) in funcs:
                k, f = funcs[(n.domain, n.op_type)]
                tag, names = next(calls), {**dict(zip(f.input, ins)), **dict(zip(f.output, outs))}
                own = {a.name: a for a in f.attribute_proto} | {a.name: a for a in resolved(n, given)}
                out.extend(expand(f.node, lambda v, t=tag, m=names: m.get(v, v and f"{v}__call{t}"), own, k))
                continue
            m = onnx.NodeProto()
            m.CopyFrom(n)
            m.input[:], m.output[:] = ins, outs
            del m.attribute[:]
            m.attribute.extend(resolved(n, given))
            if fidx is not None and n.op_type == "Constant":
                for a_idx, a in enumerate(n.attribute):
                    if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                        origins[outs[0]] = f"25.{fidx}/7.{n_idx}/5.{a_idx}/5.0"
            out.append(m)
        return out

    m = onnx.ModelProto()
    m.CopyFrom(model)
    nodes = expand(model.graph.node, lambda v: v, None, None)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    del m.functions[:]
    return m, origins
