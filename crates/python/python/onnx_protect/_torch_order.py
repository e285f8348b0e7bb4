"""The order :mod:`onnx_protect._torch_graph` runs a graph's nodes in: the file's where it has
every value made before it is read (as the ONNX specification asks), else a topological
order that keeps the file's where it can, as onnxruntime accepts such graphs (onnxruntime's
float16 conversion appends its input casts after the nodes that read them)."""

from __future__ import annotations

import heapq

import onnx


def _reads(g: onnx.GraphProto) -> set[str]:
    """The values a subgraph reads from the scopes around it."""
    made = {i.name for i in g.input} | {t.name for t in g.initializer} | {o for n in g.node for o in n.output}
    return {v for n in g.node for v in [*n.input, *subgraph_reads(n)] if v and v not in made}


def subgraph_reads(n: onnx.NodeProto) -> set[str]:
    """The values the subgraphs of node ``n`` read from outside them."""
    graphs = [a.g for a in n.attribute if a.type == onnx.AttributeProto.GRAPH]
    graphs += [g for a in n.attribute if a.type == onnx.AttributeProto.GRAPHS for g in a.graphs]
    return set().union(*(_reads(g) for g in graphs)) if graphs else set()


def in_order(nodes) -> list[onnx.NodeProto]:
    """``nodes`` in the file's order if it has each value made before it is read (a node with
    subgraphs reads what they read from outside), else each after what it reads, the earliest in
    the file first; nodes in a cycle keep their place at the end (running them names the value)."""
    nodes = list(nodes)
    made = {o for n in nodes for o in n.output if o}
    needs = [({v for v in n.input if v} | subgraph_reads(n)) & made for n in nodes]
    seen: set[str] = set()
    for n, need in zip(nodes, needs):
        if not need <= seen:
            break
        seen.update(n.output)
    else:
        return nodes
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    users: list[list[int]] = [[] for _ in nodes]
    pending = [0] * len(nodes)
    for i, need in enumerate(needs):
        deps = {producer[v] for v in need}
        pending[i] = len(deps)
        for d in deps:
            users[d].append(i)
    ready = [i for i, p in enumerate(pending) if p == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users[i]:
            pending[u] -= 1
            if pending[u] == 0:
                heapq.heappush(ready, u)
    placed = set(order)
    return [nodes[i] for i in order] + [n for i, n in enumerate(nodes) if i not in placed]
