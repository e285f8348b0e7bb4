"""Control flow for :mod:`onnx_protect._torch_graph`: ``If``, ``Loop`` and ``Scan`` as the ONNX
operator specification runs them, each subgraph run by the caller's ``run(graph, bound)``
(values of the subgraph's inputs by name; the enclosing graphs' values visible) which returns
the subgraph's outputs. The subgraphs' constants are the model's, located in the file
(:func:`subgraphs`), so that the attacks train the encrypted ones."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import onnx
import torch

from ._torch_ops import Unsupported

CONTROL_OPS = frozenset({"If", "Loop", "Scan"})

Run = Callable[[onnx.GraphProto, dict], list]


def subgraphs(graph: onnx.GraphProto, prefix: str = "7.0") -> Iterator[tuple[str, onnx.GraphProto]]:
    """Every graph an attribute of a node of ``graph`` holds, nested ones too, with its locator
    (``7.0/1.N/5.A/6.0`` for attribute A of node N holding one graph, ``…/11.J`` for the J-th of
    several)."""
    for n_idx, n in enumerate(graph.node):
        for a_idx, a in enumerate(n.attribute):
            held = [(6, 0, a.g)] if a.type == onnx.AttributeProto.GRAPH else \
                [(11, j, g) for j, g in enumerate(a.graphs)] if a.type == onnx.AttributeProto.GRAPHS else []
            for field, j, g in held:
                where = f"{prefix}/1.{n_idx}/5.{a_idx}/{field}.{j}"
                yield where, g
                yield from subgraphs(g, where)


def all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """The nodes of ``graph`` and of every subgraph it holds."""
    yield from graph.node
    for _, g in subgraphs(graph):
        yield from g.node


def _names(g: onnx.GraphProto) -> list[str]:
    return [i.name for i in g.input]


def run_if(ins: list, a: dict, run: Run, opset: int) -> list:
    return run(a["then_branch"] if bool(ins[0].reshape(-1)[0]) else a["else_branch"], {})


def run_loop(ins: list, a: dict, run: Run, opset: int) -> list:
    """``Loop``: the body runs while the trip count (input 0) and the condition (input 1, then
    the body's first output) allow; outputs the last loop-carried values, then each scan
    output's values stacked along a new first axis."""
    body = a["body"]
    trips = None if ins[0] is None else int(ins[0].reshape(-1)[0])
    cond = True if len(ins) < 2 or ins[1] is None else bool(ins[1].reshape(-1)[0])
    carried, scans, i = list(ins[2:]), None, 0
    names = _names(body)
    while (trips is None or i < trips) and cond:
        if trips is None and i >= 1 << 20:
            raise Unsupported("Loop: more than 2^20 iterations without a trip count")
        outs = run(body, dict(zip(names, [torch.tensor(i, dtype=torch.int64), torch.tensor(cond), *carried])))
        cond, carried = bool(outs[0].reshape(-1)[0]), outs[1:1 + len(carried)]
        scans = [[] for _ in outs[1 + len(carried):]] if scans is None else scans
        for s, v in zip(scans, outs[1 + len(carried):]):
            s.append(v)
        i += 1
    if scans is None and len(body.output) > 1 + len(carried):
        raise Unsupported("Loop that runs no iteration: its scan outputs have no shape")
    return [*carried, *(torch.stack(s) for s in scans or [])]


def run_scan(ins: list, a: dict, run: Run, opset: int) -> list:
    """``Scan`` (opset 9 on; opset 8: :func:`_scan_8`): the body runs once per slice of the
    scan inputs along their axes (``scan_input_axes``, ``scan_input_directions``), threading
    the state; outputs the final state, then each scan output's slices stacked along
    ``scan_output_axes`` (reversed where ``scan_output_directions`` says)."""
    if opset < 9:
        return _scan_8(ins, a, run)
    body, k = a["body"], int(a["num_scan_inputs"])
    state, xs = list(ins[:len(ins) - k]), ins[len(ins) - k:]
    in_axes = [ax % x.dim() for ax, x in zip(a.get("scan_input_axes") or [0] * k, xs)]
    in_dirs = a.get("scan_input_directions") or [0] * k
    steps = xs[0].shape[in_axes[0]]
    names, scans = _names(body), None
    for t in range(steps):
        slices = [x.select(ax, steps - 1 - t if d else t) for x, ax, d in zip(xs, in_axes, in_dirs)]
        outs = run(body, dict(zip(names, [*state, *slices])))
        state = outs[:len(state)]
        scans = [[] for _ in outs[len(state):]] if scans is None else scans
        for s, v in zip(scans, outs[len(state):]):
            s.append(v)
    if scans is None:
        raise Unsupported("Scan over no slice")
    m = len(scans)
    out_axes = a.get("scan_output_axes") or [0] * m
    out_dirs = a.get("scan_output_directions") or [0] * m
    stacked = [torch.stack(s[::-1] if d else s, dim=ax % (s[0].dim() + 1))
               for s, ax, d in zip(scans, out_axes, out_dirs)]
    return [*state, *stacked]


def _scan_8(ins: list, a: dict, run: Run) -> list:
    """``Scan`` of opset 8: the first input the sequence lengths (optional), then the state and
    the scan inputs, each batch first: each batch element is scanned apart, as opset 9 scans,
    for its length (along the scan inputs' second axis, ``directions``), its scan outputs zero
    past it."""
    k = int(a["num_scan_inputs"])
    lens, rest = ins[0], ins[1:]
    state, xs = rest[:len(rest) - k], rest[len(rest) - k:]
    each = {"body": a["body"], "num_scan_inputs": k, "scan_input_directions": a.get("directions") or [0] * k}
    seq, finals, scans = xs[0].shape[1], [], []
    for b in range(xs[0].shape[0]):
        n = seq if lens is None or lens.numel() == 0 else int(lens.reshape(-1)[b])
        outs = run_scan([*(v[b] for v in state), *(x[b, :n] for x in xs)], each, run, 9)
        finals.append(outs[:len(state)])
        scans.append([torch.cat([o, o.new_zeros(seq - n, *o.shape[1:])]) for o in outs[len(state):]])
    return [*(torch.stack(v) for v in zip(*finals)), *(torch.stack(v) for v in zip(*scans))]


CONTROL: dict[str, Callable[[list, dict, Run, int], list]] = {"If": run_if, "Loop": run_loop, "Scan": run_scan}
