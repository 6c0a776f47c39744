"""Replace a matched site's nodes with one call of ``torch.ops.convfuse.fft_conv``.

The operator works along the last axis of its inputs; the site may convolve along
any axis, so the call is wrapped in ``movedim`` views (free: no copies) that put the
convolved axis last and back.  Operands an einsum aligned are viewed the same way
first.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch.fx import Graph, GraphModule, Node

import convfuse.ops  # noqa: F401  registers torch.ops.convfuse.fft_conv
from convfuse.passes.match import Match
from convfuse.passes.sizes import example_value


def _materialize(graph: Graph, arg: Any) -> Any:
    """An int or graph node for a size; ("size", node, dim) reads it off a tensor's shape."""
    if isinstance(arg, tuple) and arg and arg[0] == "size":
        _, node, dim = arg
        return graph.call_function(torch.ops.aten.sym_size.int, (node, dim))
    return arg


def _to_last_axis(graph: Graph, node: Node | None, align: tuple | None, axis: int, rank: int) -> Node | None:
    """View ``node`` in the site's output layout (rank ``rank``) with ``axis`` moved last."""
    if node is None:
        return None
    if align is not None:
        node = graph.call_function(operator.getitem, (node, align))
    missing = rank - example_value(node).dim() if align is None else 0
    if missing > 0 and axis != -1:
        node = graph.call_function(operator.getitem, (node, (None,) * missing + (Ellipsis,)))
    if axis != -1:
        node = graph.call_function(torch.movedim, (node, axis, -1))
    return node


def rewrite_site(gm: GraphModule, m: Match, kernel: str) -> Node:
    graph = gm.graph
    rank = example_value(m.tail).dim()
    with graph.inserting_before(m.tail):
        u = _to_last_axis(graph, m.u.signal, m.u.align, m.axis, rank)
        k = _to_last_axis(graph, m.k.signal, m.k.align, m.axis, rank)
        D = _to_last_axis(graph, m.D, None, m.axis, rank)
        gate = _to_last_axis(graph, m.post_gate, None, m.axis, rank)
        n, start, length = (_materialize(graph, s.arg) for s in (m.n, m.start, m.length))
        out = graph.call_function(
            torch.ops.convfuse.fft_conv.default,
            (u, k, D, None, gate, n, start, length, m.scale, float(m.power), m.conj_kernel, m.out_dtype, kernel,
             m.constant_kernel),
        )
        out.meta["stack_trace"] = m.inverse.meta.get("stack_trace")
        if m.axis != -1:
            out = graph.call_function(torch.movedim, (out, -1, m.axis))
    m.tail.replace_all_uses_with(out)
    order = {node: i for i, node in enumerate(graph.nodes)}
    for node in sorted(set(m.nodes), key=order.__getitem__, reverse=True):
        if not node.users:
            graph.erase_node(node)
    return out
