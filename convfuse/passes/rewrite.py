"""Replace a matched site's nodes with one call of ``torch.ops.convfuse.fft_conv``.

The operator works along the last axis of its inputs; the site may convolve along any axis,
so the call is wrapped in ``movedim`` views (free: no copies) that put the convolved axis last
and back.  Operands an einsum aligned are viewed the same way first.  A kernel written as a
sum of spectra is combined into one time-domain kernel of length n in the graph (conjugated
terms time-reversed: conj(F[x]) = F[x reversed mod n] for real x).
"""

from __future__ import annotations

import contextlib
import operator
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.fx import Graph, GraphModule, Node

import convfuse.ops  # noqa: F401  registers torch.ops.convfuse.fft_conv
import convfuse.ops_nd  # noqa: F401  registers torch.ops.convfuse.fft_convnd
import convfuse.ops_mix  # noqa: F401  registers torch.ops.convfuse.fft_conv_mix
import convfuse.ops_spectral  # noqa: F401  registers torch.ops.convfuse.fft_spectral_mix
from convfuse.passes.layout import replay
from convfuse.passes.match import Match
from convfuse.passes.sizes import example_value, proven

_SIZE_OPS = {"sub": operator.sub, "add": operator.add, "mod": operator.mod}


def _materialize(graph: Graph, arg: Any) -> Any:
    """An int or graph node for a size: ("size", node, dim) reads it off a tensor's shape."""
    if isinstance(arg, tuple) and arg and arg[0] == "size":
        _, node, dim = arg
        return graph.call_function(torch.ops.aten.sym_size.int, (node, dim))
    if isinstance(arg, tuple) and arg and arg[0] == "index":
        _, node, i = arg
        return graph.call_function(operator.getitem, (node, i))
    if isinstance(arg, tuple) and arg and arg[0] in _SIZE_OPS:
        a, b = (_materialize(graph, x) for x in arg[1:])
        return graph.call_function(_SIZE_OPS[arg[0]], (a, b))
    return arg


def _to_last_axis(graph: Graph, node: Node | None, align: tuple | None, axis: int, rank: int,
                  layout: list = ()) -> Node | None:
    """View ``node`` in the site's output layout (rank ``rank``) with ``axis`` moved last: the
    layout steps its spectrum went through replayed on it first, then an einsum's alignment."""
    if node is None:
        return None
    node_rank = example_value(layout[-1].node if layout else node).dim()
    node = replay(graph, node, list(layout))
    if align is not None:
        node = graph.call_function(operator.getitem, (node, align))
    missing = rank - node_rank if align is None else 0
    if missing > 0 and axis != -1:
        node = graph.call_function(operator.getitem, (node, (None,) * missing + (Ellipsis,)))
    if axis != -1:
        node = graph.call_function(torch.movedim, (node, axis, -1))
    return node


def _combined_kernel(graph: Graph, m: Match, n: Any, rank: int) -> Node:
    """sum_i w_i * (reverse_n if conj_i)(pad_or_truncate_n(x_i)) along the last axis."""
    total = None
    for weight, term in zip(m.kernel_weights, m.k.terms):
        x = _to_last_axis(graph, term.signal, None, m.axis, rank)
        if term.dtype is not None and example_value(term.signal).dtype != term.dtype:
            # the upcast the transform read: the sum is computed in the dtype eager's spectra had
            x = graph.call_method("to", (x, term.dtype))
        length = example_value(term.signal).shape[term.axis]
        if not proven(length <= m.n.value):
            # Truncated to n, then padded back to n below: a reversal (conj) and the sum need every
            # term at exactly length n, whichever of K and n turns out larger at run time.
            x = graph.call_function(operator.getitem, (x, (Ellipsis, slice(None, n))))
        missing = graph.call_function(operator.sub, (n, graph.call_function(torch.ops.aten.sym_size.int, (x, -1))))
        x = graph.call_function(F.pad, (x, (0, missing)))
        if term.conj:
            x = graph.call_function(torch.roll, (graph.call_function(torch.flip, (x, [-1])), 1, -1))
        if weight != 1.0:
            x = graph.call_function(operator.mul, (x, weight))
        total = x if total is None else graph.call_function(operator.add, (total, x))
    return total


def _kernel_of_spectrum(graph: Graph, m: Match, n: Any, rank: int) -> Node:
    """irfft(W, n) for a one-sided parameter spectrum, ifft(W, n).real for a full one."""
    W = _to_last_axis(graph, m.k.spectrum, m.k.align, m.axis, rank)
    if m.k.sided == "one-sided":
        return graph.call_function(torch.fft.irfft, (W,), {"n": n, "dim": -1})
    return graph.call_function(torch.real, (graph.call_function(torch.fft.ifft, (W,), {"n": n, "dim": -1}),))


def rewrite_site_nd(gm: GraphModule, m: Match, kernel: str) -> Node:
    """One fft_convnd call over ``m.axes`` moved last (the 1-D kernel options do not apply)."""
    graph = gm.graph
    d = len(m.axes)
    last = tuple(range(-d, 0))
    with graph.inserting_before(m.tail):
        n = [_materialize(graph, s.arg) for s in m.sizes]
        u = graph.call_function(torch.movedim, (replay(graph, m.u.signal, m.u.layout), m.axes, last))
        # A parameter spectrum W goes to the operator as is (kernel_is_spectrum): no irfftn(W)
        # per call for the operator to transform back; module state read through a view, so
        # its prepared spectrum may be cached (given_spectrum admits nothing else).
        spectrum = m.k.spectrum is not None
        k = m.k.spectrum if spectrum else replay(graph, m.k.signal, m.k.layout)
        k = graph.call_function(torch.movedim, (k, m.axes, last))
        out = graph.call_function(
            torch.ops.convfuse.fft_convnd.default,
            (u, k, n, *([_materialize(graph, x.arg) for x in xs] for xs in m.nd_window()), m.scale, float(m.power),
             m.conj_kernel, m.out_dtype),
            {"constant_kernel": m.constant_kernel, "kernel_is_spectrum": True} if spectrum else {},
        )
        _tag(out, m)
        out = graph.call_function(torch.movedim, (out, last, m.axes))
        out = replay(graph, out, m.out_steps)
    return out


def _tag(op: Node, m) -> None:
    """What later steps need to know of an operator call: the user's source line, the site it
    replaced, and whether eager's value there needed a gradient (passes/saved_inputs.py copies
    the operands the caller can reach only then; not known counts as needed)."""
    op.meta["stack_trace"] = m.inverse.meta.get("stack_trace")
    op.meta["convfuse_site"] = m.inverse.name
    op.meta["convfuse_grad"] = bool(getattr(m.tail.meta.get("example_value"), "requires_grad", True))


def _replace(graph: Graph, m: Match, out: Node) -> Node:
    # Later sites may read this value (one convolution feeding the next): they reason from meta.
    out.meta["example_value"] = m.tail.meta.get("example_value")
    out.meta["stack_trace"] = m.tail.meta.get("stack_trace")
    m.tail.replace_all_uses_with(out)
    order = {node: i for i, node in enumerate(graph.nodes)}
    for node in sorted(set(m.nodes), key=order.__getitem__, reverse=True):
        if not node.users:
            graph.erase_node(node)
    return out


@contextlib.contextmanager
def _all_or_nothing(graph: Graph):
    """Nodes inserted inside the block are erased again if it raises: a failed rewrite leaves
    the graph as it was (the site's own nodes are replaced only after every insertion)."""
    before = set(graph.nodes)
    try:
        yield
    except BaseException:
        for node in reversed([node for node in graph.nodes if node not in before]):
            if not node.users:
                graph.erase_node(node)
        raise


def rewrite_site(
    gm: GraphModule,
    m: Match,
    kernel: str,
    *,
    kernel_transform: Callable[[Graph, Node, Any], Node] | None = None,
    constant_kernel: bool = True,
    spectrum_bins: int = 0,
) -> Node:
    """Insert the operator call and replace the site's value with it, or leave the graph as it
    was and raise.  A policy comes in as ``kernel_transform`` (rewrites the kernel operand),
    ``constant_kernel=False`` (the kernel it produces is no longer module state) and
    ``spectrum_bins`` (FrequencySparse's cut, the operator's own argument)."""
    with _all_or_nothing(gm.graph):
        out = _insert(gm, m, kernel, kernel_transform, constant_kernel, spectrum_bins)
    return _replace(gm.graph, m, out)


def rewrite_mixing(gm: GraphModule, m) -> Node:
    """One fft_conv_mix or fft_spectral_mix call for a channel-mixing match (``mixing.MixMatch``):
    the signals permuted to the operator's layout, its result permuted back (views)."""
    graph = gm.graph
    d = len(m.axes)
    with graph.inserting_before(m.tail):
        n = [_materialize(graph, s.arg) for s in m.sizes]
        u = graph.call_method("permute", (m.u.signal, m.u_perm))
        grouped = m.grouped
        if grouped:  # (.., G, Ci, *L) -> (.., G*Ci, *L), (G, Co, Ci, *K) -> (G*Co, Ci, *K): conv's groups
            u = graph.call_method("flatten", (u, m.batch_rank, m.batch_rank + 1))
        if m.kind == "conv":
            w = graph.call_method("permute", (m.k.signal, m.k_perm))
            if grouped:
                w = graph.call_method("flatten", (w, 0, 1))
            bias = graph.call_method("reshape", (m.bias, [-1])) if m.bias is not None else None
            start, length = ([_materialize(graph, x.arg) for x in xs] for xs in m.window())
            out = graph.call_function(
                torch.ops.convfuse.fft_conv_mix.default,
                (u, w, bias, n, start, length, m.scale, float(m.power), m.conj_kernel, m.groups, m.out_dtype),
                {"constant_kernel": m.constant_kernel},
            )
            _tag(out, m)
            if grouped:
                out = graph.call_method("unflatten", (out, m.batch_rank, (m.groups, -1)))
        else:
            weights = [graph.call_method("permute", (w, p)) for w, p in zip(m.weights, m.weight_perms)]
            out = graph.call_function(
                torch.ops.convfuse.fft_spectral_mix.default,
                (u, weights, list(m.lows), n, m.scale, float(m.power), m.out_dtype),
                {"constant_weights": m.constant_kernel},
            )
            _tag(out, m)
            starts, lengths = m.window()
            for i in m.cropped_axes():
                # the operator returns the whole period: the epilogue's window, as the view eager took
                start, length = (_materialize(graph, x.arg) for x in (starts[i], lengths[i]))
                out = graph.call_method("narrow", (out, i - d, start, length))
        out = graph.call_method("permute", (out, m.out_perm))
        out = replay(graph, out, m.out_steps)
    return out


def _insert(gm: GraphModule, m: Match, kernel: str, kernel_transform, constant_kernel: bool,
            spectrum_bins: int) -> Node:
    if not isinstance(m, Match):
        if kernel_transform is not None or spectrum_bins:
            raise ValueError("convfuse: approximate policies apply to depthwise 1-D convolutions only")
        return rewrite_mixing(gm, m)
    if m.multi_axis:
        if kernel_transform is not None or spectrum_bins:
            raise ValueError("convfuse: approximate policies apply to 1-D convolutions only")
        return rewrite_site_nd(gm, m, kernel)
    graph = gm.graph
    rank = m.rank
    with graph.inserting_before(m.tail):
        n, start, length = (_materialize(graph, s.arg) for s in (m.n, m.start, m.length))
        u = _to_last_axis(graph, m.u.signal, m.u.align, m.axis, rank, m.u.layout)
        if m.k.terms is not None:
            k = _combined_kernel(graph, m, n, rank)
            if m.k.align is not None:
                k = graph.call_function(operator.getitem, (k, m.k.align))
        elif m.k.spectrum is not None:
            k = _kernel_of_spectrum(graph, m, n, rank)
        else:
            k = _to_last_axis(graph, m.k.signal, m.k.align, m.axis, rank, m.k.layout)
        if kernel_transform is not None:
            k = kernel_transform(graph, k, n)
        D = _to_last_axis(graph, m.D, m.D_align, m.axis, rank)
        pre = _to_last_axis(graph, m.pre_gate, m.u.align, m.axis, rank)
        gate = _to_last_axis(graph, m.post_gate, None, m.axis, rank)
        out = graph.call_function(
            torch.ops.convfuse.fft_conv.default,
            (u, k, D, pre, gate, n, start, length, m.scale, float(m.power), m.conj_kernel, m.out_dtype, kernel),
            {"constant_kernel": m.constant_kernel and constant_kernel, "spectrum_bins": spectrum_bins},
        )
        _tag(out, m)
        if m.axis != -1:
            out = graph.call_function(torch.movedim, (out, -1, m.axis))
        out = replay(graph, out, m.out_steps)
    return out
