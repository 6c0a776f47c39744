"""Operands the caller can change before backward: saved as copies the compiled graph owns.

Eager's FFT program saves the spectra it computed; the fused operators save their operands.  So
between a forward and its ``backward()``, a write to an operand's memory (``x.mul_(3)`` under
no_grad, ``p.data.copy_(..)``, an optimizer step on a parameter, a fused optimizer that bumps no
version counter) changes nothing in eager but would change what the operator's backward reads:
autograd's version check raises where eager ran, or, where Inductor rebuilds a saved view of an
input with ``reinterpret_tensor`` (no version counter of its own), the gradient is silently
wrong.

After the rewrites, every operand of a fused operator whose result needs a gradient is routed
through ``convfuse::saved_copy`` when its memory is reachable from outside the graph:

    fft_conv(movedim(x, 1, -1), w, ...)            x a graph input, the result requires grad
      -> fft_conv(saved_copy(movedim(x, 1, -1)), saved_copy(w), ...)

Reachable means: its storage is a graph input's (placeholders: inputs, parameters, buffers; and
get_attr constants), a graph output's (the caller holds it), one some node in the graph writes
(or may: a node of unknown effect may write what it is given), memory another object owns
(``from_numpy``), or not known.  An operand made inside the graph and never exposed (a
projection's output, a kernel computed from a filter network) is only ever read by the
operator, so it is saved as it is: no copy.  Under no_grad, nothing is saved, nothing copied.
"""

from __future__ import annotations

import logging
import operator
from typing import Any

import torch
from torch.fx import GraphModule, Node

import convfuse.ops_saved  # noqa: F401  registers torch.ops.convfuse.saved_copy
from convfuse.passes.effects import UNKNOWN, WRITES, _storage, _wraps_external_memory, effect

log = logging.getLogger("convfuse")

SAVED_COPY = torch.ops.convfuse.saved_copy.default


def fused_forward_ops() -> tuple:
    """The operators a rewrite inserts, each of which saves its tensor operands for backward."""
    ops = torch.ops.convfuse
    return (ops.fft_conv.default, ops.fft_convnd.default, ops.fft_conv_mix.default, ops.fft_spectral_mix.default)


def copy_reachable_operands(gm: GraphModule) -> dict[str, list[str]]:
    """Insert the copies (see the module docstring); returns {site node name: [operand names]}."""
    graph = gm.graph
    ops = [n for n in graph.nodes if n.op == "call_function" and n.target in fused_forward_ops()
           and n.meta.get("convfuse_grad", True)]
    if not ops:
        return {}
    try:
        values = _fake_values(gm)
        reachable = _reachable_storages(gm, values)
    except Exception as exc:  # noqa: BLE001  the net: with nothing known, every operand is copied
        log.warning("convfuse: an internal error while finding which saved operands the caller can reach "
                    "(%s: %s): all of them are copied", type(exc).__name__, exc, exc_info=log.isEnabledFor(logging.DEBUG))
        values, reachable = {}, set()
    copies: dict[Node, Node] = {}
    copied: dict[str, list[str]] = {}
    for op in ops:
        for name, position, arg in _tensor_operands(op, values):
            if not _needs_copy(arg, values, reachable):
                continue
            if arg not in copies:
                with graph.inserting_before(op):
                    copies[arg] = graph.call_function(SAVED_COPY, (arg,))
            _replace_operand(op, position, arg, copies[arg])
            copied.setdefault(op.meta.get("convfuse_site", op.name), []).append(name)
    if copies:
        graph.lint()
        gm.recompile()
    return copied


_TENSOR_TYPES = ("Tensor", "Optional[Tensor]")
_TENSOR_LIST_TYPES = ("List[Tensor]", "List[Optional[Tensor]]")


def _tensor_operands(op: Node, values: dict):
    """(name, position, node) for each tensor operand, a tensor list's elements by index: typed by
    the operator's schema, or (a target without one) by the argument's fake value."""
    schema = getattr(op.target, "_schema", None)
    arguments = schema.arguments if schema is not None else [None] * len(op.args)
    for i, argument in enumerate(arguments):
        name = argument.name if argument is not None else f"arg{i}"
        value = op.args[i] if i < len(op.args) else op.kwargs.get(name)
        kind = str(argument.type) if argument is not None else None
        items = [(None, value)] if not isinstance(value, (list, tuple)) else list(enumerate(value))
        listed = isinstance(value, (list, tuple))
        for j, item in items:
            if not isinstance(item, Node):
                continue
            typed = kind in (_TENSOR_LIST_TYPES if listed else _TENSOR_TYPES)
            if typed or (kind is None and isinstance(values.get(item), torch.Tensor)):
                yield (name if j is None else f"{name}[{j}]"), (i, j), item


def _replace_operand(op: Node, position: tuple, old: Node, new: Node) -> None:
    i, j = position
    if i < len(op.args):
        args = list(op.args)
        args[i] = new if j is None else [new if (k == j) else v for k, v in enumerate(args[i])]
        op.args = tuple(args)
    else:
        name = op.target._schema.arguments[i].name
        kwargs = dict(op.kwargs)
        kwargs[name] = new if j is None else [new if (k == j) else v for k, v in enumerate(kwargs[name])]
        op.kwargs = kwargs


def _needs_copy(arg: Node, values: dict, reachable: set) -> bool:
    value = values.get(arg)
    if not isinstance(value, torch.Tensor):
        return True  # not known: copy
    if _wraps_external_memory(arg):
        return True
    ref = _storage(value)
    return ref is None or ref in reachable


def _reachable_storages(gm: GraphModule, values: dict) -> set:
    found: set = set()

    def add(x: Any) -> None:
        if isinstance(x, (list, tuple)):
            for item in x:
                add(item)
        elif isinstance(x, dict):
            for item in x.values():
                add(item)
        elif isinstance(x, Node):
            value = values.get(x)
            for tensor in value if isinstance(value, (list, tuple)) else (value,):
                if isinstance(tensor, torch.Tensor):
                    ref = _storage(tensor)
                    if ref is not None:
                        found.add(ref)

    for node in gm.graph.nodes:
        if node.op in ("placeholder", "get_attr", "output"):
            add(node.args if node.op == "output" else node)
            continue
        e = effect(node)
        if e.kind == WRITES:
            add(list(e.written))
        elif e.kind == UNKNOWN:
            add(list(node.args))
            add(dict(node.kwargs))
    return found


def _fake_values(gm: GraphModule) -> dict:
    """Each node's fake value: Dynamo's example_value, or (nodes the rewrites inserted) the node
    run on its arguments' fake values, which share their bases' fake storage as views do.  A
    node that cannot be evaluated has no value (its users then have none either)."""
    values: dict = {}
    known = [n.meta["example_value"] for n in gm.graph.nodes if isinstance(n.meta.get("example_value"), torch.Tensor)]
    mode = torch._guards.detect_fake_mode(known) if known else None
    for node in gm.graph.nodes:
        if "example_value" in node.meta:
            values[node] = node.meta["example_value"]
        elif mode is not None and node.op in ("call_function", "call_method", "get_attr"):
            values[node] = _evaluate(gm, node, values, mode)
    return values


_MISSING = object()


def _evaluate(gm: GraphModule, node: Node, values: dict, mode) -> Any:
    def load(a):
        if isinstance(a, Node):
            v = values.get(a, _MISSING)
            if v is _MISSING or v is None:
                raise LookupError(a.name)
            return v
        return a

    try:
        if node.op == "get_attr":
            attr = operator.attrgetter(node.target)(gm)
            return mode.from_tensor(attr) if isinstance(attr, torch.Tensor) else attr
        args = torch.fx.node.map_aggregate(node.args, load)
        kwargs = torch.fx.node.map_aggregate(node.kwargs, load)
        with mode, torch.no_grad():
            if node.op == "call_method":
                return getattr(args[0], node.target)(*args[1:], **kwargs)
            return node.target(*args, **kwargs)
    except Exception:  # noqa: BLE001  not known: whoever reads it is copied
        log.debug("convfuse: no fake value for %s", node.name, exc_info=True)
        return None
