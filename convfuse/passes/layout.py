"""The layout map: ops that move no data across a transformed axis commute with the transform.

``layout(F[x]) == F[layout'(x)]`` when ``layout`` leaves every transformed axis whole (same size,
untouched values) and ``layout'`` is the same op with the transformed axes' sizes left to the
signal (-1).  So the walk back from a product follows a spectrum through such ops, carrying
where each transformed axis goes, and the rewrite replays them on the signal as free views.

Each rule maps the input's transformed axes (positive, in the input's layout) to the output's,
or says why the op mixes a transformed axis (then the walk ends with that reason):

    unsqueeze(d), x[None], x[:, None]          axis shifts past the new dim
    x[0], x[:4] on other axes                  axis shifts past removed dims (rows selected, not mixed)
    squeeze(d), squeeze()                      axis shifts past the removed size-1 dims
    permute / transpose / swapaxes / movedim / t / mT / T   axis follows the permutation
    view / reshape(sizes)                      axis kept whole between regrouped neighbours
    expand / broadcast_to(sizes)               axis shifts past the new leading dims
    contiguous / clone                         the same values
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any

import torch
from torch.fx import Graph, Node

from convfuse.passes.refusal import Refusal
from convfuse.passes.sizes import example_value, same

_PERMUTES = {"permute", "transpose", "swapaxes", "swapdims", "movedim", "moveaxis", "t", "mT", "T"}
_IDENTITY = {"contiguous", "clone"}
_RESHAPES = {"view", "reshape"}
_EXPANDS = {"expand", "broadcast_to"}
_FUNCTIONS = {
    torch.permute: "permute", torch.transpose: "transpose", torch.swapaxes: "swapaxes", torch.swapdims: "swapdims",
    torch.movedim: "movedim", torch.moveaxis: "moveaxis", torch.t: "t", torch.unsqueeze: "unsqueeze",
    torch.squeeze: "squeeze", torch.reshape: "reshape", torch.broadcast_to: "broadcast_to", torch.clone: "clone",
}


@dataclass(frozen=True)
class Indexed:
    """Entry ``index`` of a sequence ``node`` the graph computes (a torch.Size)."""

    node: Node
    index: int


@dataclass(frozen=True)
class LayoutStep:
    """One layout op on a spectrum, replayable on its signal."""

    node: Node
    kind: str  # unsqueeze, index, squeeze, permute-like name, reshape, expand, identity
    args: tuple  # the op's arguments after the tensor, as the rule normalised them
    in_axes: tuple  # transformed axes, positive, in the op's input layout
    out_axes: tuple  # ... in its output layout


def layout_kind(node: Node) -> str | None:
    """The rule for ``node`` when it is a layout op on its first argument, else None."""
    if node.op == "call_method":
        name = node.target
    elif node.op == "call_function" and node.target is operator.getitem:
        index = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
        ok = all(i is None or i is Ellipsis or isinstance(i, (int, slice)) and not isinstance(i, bool) for i in index)
        return "index" if ok and not isinstance(node.args[1], Node) else None
    elif node.op == "call_function" and node.target is getattr and node.args[1] in ("T", "mT"):
        name = node.args[1]
    elif node.op == "call_function":
        try:
            name = _FUNCTIONS.get(node.target)
        except TypeError:
            return None
    else:
        return None
    if name in _IDENTITY:
        extra = dict(node.kwargs)
        extra.pop("memory_format", None)
        return "identity" if len(node.args) == 1 and not extra else None
    if name in _PERMUTES or name in ("unsqueeze", "squeeze") or name in _RESHAPES or name in _EXPANDS:
        return name
    return None


def step_through(node: Node, axes: tuple) -> LayoutStep:
    """The step ``node`` makes from its input (whose transformed axes are ``axes``, positive),
    or Refusal when it mixes a transformed axis with another."""
    x = node.args[0]
    before, after = example_value(x), example_value(node)
    if not (isinstance(before, torch.Tensor) and isinstance(after, torch.Tensor)):
        raise Refusal(f"`{node.name}` is a layout op without traced shapes")
    kind = layout_kind(node)
    rank = before.dim()
    if kind == "identity":
        return LayoutStep(node, kind, (), axes, axes)
    if kind == "unsqueeze":
        d = _dim_arg(node, 1, "dim")
        d = d + rank + 1 if d < 0 else d
        return LayoutStep(node, kind, (d,), axes, tuple(a + (d <= a) for a in axes))
    if kind == "index":
        return _index_step(node, axes, rank)
    if kind == "squeeze":
        return _squeeze_step(node, axes, before)
    if kind in _PERMUTES:
        perm = _permutation(node, kind, rank)
        return LayoutStep(node, "permute", (perm,), axes, tuple(perm.index(a) for a in axes))
    if kind in _RESHAPES:
        return _reshape_step(node, axes, before, after)
    if kind in _EXPANDS:
        shift = after.dim() - rank
        out = tuple(a + shift for a in axes)
        if not all(same(after.shape[o], before.shape[a]) for o, a in zip(out, axes)):
            raise Refusal(f"`{node.name}` expands a transformed axis of a spectrum")
        return LayoutStep(node, "expand", (_replay_sizes(node, after, out),), axes, out)
    raise Refusal(f"`{node.name}` is not a layout op convfuse follows")


def _replay_sizes(node: Node, after: torch.Tensor, out_axes: tuple) -> tuple:
    """The size arguments to replay ``node`` on the signal: -1 on the transformed axes, the traced
    size elsewhere (static), or the call's own size arguments (symbolic)."""
    if all(isinstance(s, int) for s in after.shape):
        return tuple(-1 if j in out_axes else s for j, s in enumerate(after.shape))
    sizes = list(node.args[1:])
    if node.kwargs:
        sizes = list(node.kwargs.get("size", node.kwargs.get("shape", sizes)))
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list, torch.Size)):
        sizes = list(sizes[0])
    elif len(sizes) == 1 and isinstance(sizes[0], Node):  # x.expand(y.shape): a Size the graph computes
        shape = example_value(sizes[0])
        if isinstance(shape, (tuple, list)):
            sizes = [Indexed(sizes[0], j) for j in range(len(shape))]
    if any(isinstance(s, (Node, Indexed)) and _reads_a_spectrum(s.node if isinstance(s, Indexed) else s)
           for s in sizes):
        raise Refusal(f"`{node.name}` reshapes or expands to sizes read off a spectrum (replayed on the signal they "
                      "would keep the transform alive): write them from the signal's shape or with -1")
    if len(sizes) != after.dim():
        raise Refusal(f"`{node.name}` (a reshape or expand) takes sizes convfuse cannot replay on the signal under "
                      "symbolic shapes")
    replayed = tuple(-1 if j in out_axes else s for j, s in enumerate(sizes))
    if node.target in _RESHAPES | {torch.reshape} and sum(1 for s in replayed if s == -1) != len(out_axes):
        raise Refusal(f"`{node.name}` infers a size (-1) besides the transformed axis: not replayable")
    return replayed


def _dim_arg(node: Node, position: int, name: str) -> int:
    value = node.kwargs.get(name, node.args[position] if len(node.args) > position else None)
    if isinstance(value, bool) or not isinstance(value, int):
        raise Refusal(f"`{node.name}` takes a dimension {value!r} that is not a constant integer")
    return value


def _index_step(node: Node, axes: tuple, rank: int) -> LayoutStep:
    index = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
    if index.count(Ellipsis) > 1:
        raise Refusal(f"`{node.name}` indexes with more than one Ellipsis")
    consumed = sum(1 for i in index if i is not None and i is not Ellipsis)
    if Ellipsis in index:
        at = index.index(Ellipsis)
        index = index[:at] + (slice(None),) * (rank - consumed) + index[at + 1:]
    index = index + (slice(None),) * (rank - sum(1 for i in index if i is not None))
    mapping, out_dim, in_dim = {}, 0, 0
    for item in index:
        if item is None:
            out_dim += 1
            continue
        if in_dim in axes and item != slice(None):
            raise Refusal(f"`{node.name}` indexes a transformed axis of a spectrum (its bins are not the signal's "
                          "samples): only other axes may be selected")
        if isinstance(item, slice):
            mapping[in_dim] = out_dim
            out_dim += 1
        in_dim += 1
    return LayoutStep(node, "index", (node.args[1],), axes, tuple(mapping[a] for a in axes))


def _squeeze_step(node: Node, axes: tuple, before: torch.Tensor) -> LayoutStep:
    rank = before.dim()
    dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    if dims is None:
        dims = [d for d in range(rank) if isinstance(before.shape[d], int) and before.shape[d] == 1]
        if any(not isinstance(s, int) for s in before.shape):
            raise Refusal(f"`{node.name}` squeezes every size-1 axis of a symbolic shape: pass dim=")
    dims = [dims] if isinstance(dims, int) else list(dims)
    dims = sorted({d + rank if d < 0 else d for d in dims if isinstance(d, int)})
    dropped = [d for d in dims if same(before.shape[d], 1)]
    if any(d in axes for d in dropped):
        raise Refusal(f"`{node.name}` squeezes away a transformed axis")
    return LayoutStep(node, "squeeze", (tuple(dropped),), axes,
                      tuple(a - sum(d < a for d in dropped) for a in axes))


def _permutation(node: Node, kind: str, rank: int) -> list[int]:
    """out dim j takes in dim perm[j]."""
    args = list(node.args[1:])
    if kind in ("t", "T") or kind == "mT":
        if kind == "T" and rank != 2:
            return list(range(rank))[::-1]
        return list(range(rank - 2)) + [rank - 1, rank - 2] if rank >= 2 else list(range(rank))
    if kind == "permute":
        dims = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args
        dims = node.kwargs.get("dims", dims)
        perm = [_positive(d, rank, node) for d in dims]
        if sorted(perm) != list(range(rank)):
            raise Refusal(f"`{node.name}` permutes with {dims!r}")
        return perm
    if kind in ("transpose", "swapaxes", "swapdims"):
        names = ("dim0", "dim1") if kind == "transpose" else ("axis0", "axis1") if kind == "swapaxes" else ("dim0", "dim1")
        a = node.kwargs.get(names[0], args[0] if args else None)
        b = node.kwargs.get(names[1], args[1] if len(args) > 1 else None)
        a, b = _positive(a, rank, node), _positive(b, rank, node)
        perm = list(range(rank))
        perm[a], perm[b] = perm[b], perm[a]
        return perm
    # movedim / moveaxis
    src = node.kwargs.get("source", args[0] if args else None)
    dst = node.kwargs.get("destination", args[1] if len(args) > 1 else None)
    src = [src] if isinstance(src, int) else list(src)
    dst = [dst] if isinstance(dst, int) else list(dst)
    src, dst = [_positive(d, rank, node) for d in src], [_positive(d, rank, node) for d in dst]
    perm = [None] * rank
    for s, d in zip(src, dst):
        perm[d] = s
    rest = iter(i for i in range(rank) if i not in src)
    return [p if p is not None else next(rest) for p in perm]


def _positive(d: Any, rank: int, node: Node) -> int:
    if isinstance(d, bool) or not isinstance(d, int) or not -rank <= d < rank:
        raise Refusal(f"`{node.name}` takes a dimension {d!r} that is not a constant integer in range")
    return d + rank if d < 0 else d


def _reshape_step(node: Node, axes: tuple, before: torch.Tensor, after: torch.Tensor) -> LayoutStep:
    """A reshape keeps a transformed axis whole when some output dim has its size and the products
    of the sizes before it (and after it) agree: the axis is neither split nor merged."""
    out_axes = []
    old, new = list(before.shape), list(after.shape)
    for a in axes:
        prefix = math.prod(old[:a])
        found = [j for j in range(len(new)) if same(new[j], old[a]) and same(math.prod(new[:j]), prefix)
                 and same(math.prod(new[j + 1:]), math.prod(old[a + 1:]))]
        # several candidates differ only by size-1 dims between them: each keeps the axis whole
        if not found:
            raise Refusal(f"`{node.name}` reshapes across a transformed axis of a spectrum (it would mix frequency "
                          "bins with another axis), so the walk stops there", family="layout-mixes-frequency")
        same_from_end = [j for j in found if j - len(new) == a - len(old)]
        out_axes.append((same_from_end or found)[-1])
    if len(axes) > 1:
        raise Refusal(f"`{node.name}` reshapes a spectrum over several axes: not supported yet")
    return LayoutStep(node, "reshape", (_replay_sizes(node, after, tuple(out_axes)),), axes, tuple(out_axes))


def _reads_a_spectrum(node: Node, limit: int = 32) -> bool:
    """Whether a size computed in the graph depends on a complex tensor (a spectrum)."""
    seen, frontier = set(), [node]
    while frontier and len(seen) < limit:
        current = frontier.pop()
        if current in seen:
            continue
        seen.add(current)
        value = example_value(current)
        if isinstance(value, torch.Tensor) and value.is_complex():
            return True
        frontier.extend(current.all_input_nodes)
    return len(seen) >= limit


# ---- replay --------------------------------------------------------------------------------------


def replay(graph: Graph, x: Node, steps: list[LayoutStep]) -> Node:
    """The steps applied to the signal ``x`` (innermost first), transformed axes' sizes left to x."""
    for step in steps:
        if step.kind == "identity":
            continue
        if step.kind == "unsqueeze":
            x = graph.call_method("unsqueeze", (x, step.args[0]))
        elif step.kind == "index":
            x = graph.call_function(operator.getitem, (x, step.args[0]))
        elif step.kind == "squeeze":
            if step.args[0]:
                x = graph.call_method("squeeze", (x, list(step.args[0])))
        elif step.kind == "permute":
            x = graph.call_method("permute", (x, list(step.args[0])))
        elif step.kind in ("reshape", "expand"):
            sizes = [graph.call_function(operator.getitem, (s.node, s.index)) if isinstance(s, Indexed) else s
                     for s in step.args[0]]
            x = graph.call_method(step.kind, (x, sizes))
    return x
