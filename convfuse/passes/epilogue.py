"""Walking forward from an inverse transform: the window, scales, casts, skip and gate it flows into.

Each step is absorbed only when the value before it has no other user (otherwise that value is
needed as it is, and the fused operator stops there), and only in the order the operator applies
them: window and scales, then ``+ u * D``, then ``* gate``, then the final cast.

Layout ops on the result (the layout map's rules: transpose, unsqueeze, row indexing, reshape of
other axes...) are followed too, carrying where the transformed axes went, so a window, scale or
cast after them is still the operator's; the rewrite replays them on its output as the same
views.  After one, the skip term and gate are left to the graph (they would broadcast in
another layout than the operator's), and layout ops followed by nothing absorbed are not taken.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import operator

import torch
from torch.fx import Node

from convfuse.passes import facts
from convfuse.passes.algebra import (
    Refusal, is_float_tensor, is_module_state, is_tensor, same_shape, scaled, slice_along, slice_bounds, slice_index,
    sole_user, strip_exact_upcasts,
)
from convfuse.passes.einsum import elementwise_einsum
from convfuse.passes.layout import LayoutStep, layout_kind, step_through
from convfuse.passes.sizes import SymSize, example_value, proven, same
from convfuse.passes.spectra import Operand


@dataclass
class Epilogue:
    tail: Node  # the last absorbed node: the fused operator replaces its value
    start: SymSize  # window start in the length-n cyclic result
    length: SymSize
    factors: list = field(default_factory=list)
    D: Node | None = None
    D_align: tuple | None = None
    skip_operand: Operand | None = None
    post_gate: Node | None = None
    nodes: list[Node] = field(default_factory=list)
    out_steps: list[LayoutStep] = field(default_factory=list)  # layout ops on the result, replayed in order
    bias: Node | None = None  # a channel-mixing site's + bias over its output-channel axis
    windows: list | None = None  # over several axes: (start, length) per transformed axis, one slice


def _axis_arg(value, rank: int) -> int | None:
    if isinstance(value, (tuple, list)):
        value = value[0] if len(value) == 1 else None
    if not isinstance(value, int):
        return None
    return value - rank if value >= 0 else value


def _roll_shift(node: Node, tail: Node, axis: int) -> int | None:
    """s when ``node`` is torch.roll(tail, s, axis) with a constant s."""
    if node.op == "call_function" and node.target is torch.roll or node.op == "call_method" and node.target == "roll":
        args = list(node.args[1:]) + [None] * 2
        shifts = node.kwargs.get("shifts", args[0])
        dims = node.kwargs.get("dims", args[1])
        if node.args[0] is tail and _axis_arg(dims, example_value(tail).dim()) == axis:
            shift = shifts[0] if isinstance(shifts, (tuple, list)) and len(shifts) == 1 else shifts
            return shift if isinstance(shift, int) else None
    return None


def _arange_window(node: Node, tail: Node, axis: int, size: SymSize) -> tuple[SymSize, SymSize] | None:
    """index_select(tail, axis, arange(a, b)): the window [a, b)."""
    if not (facts.is_call(node, {torch.index_select}, {"index_select"}) and node.args[0] is tail):
        return None
    if _axis_arg(node.args[1], example_value(tail).dim()) != axis:
        return None
    index = node.args[2]
    if not (isinstance(index, Node) and index.op == "call_function" and index.target is torch.arange):
        return None
    bounds = list(index.args)
    if len(bounds) == 1:
        bounds = [0] + bounds
    if len(bounds) != 2 or index.kwargs.get("step", 1) != 1:
        return None
    return slice_bounds(bounds[0], bounds[1], size)


def _shifted(start: SymSize, offset: SymSize, n: SymSize) -> SymSize:
    """(start + offset) mod n, proven without wrapping when symbolic."""
    if start.static and start.value == 0:
        return offset
    if start.static and offset.static and n.static:
        return SymSize.const((start.value + offset.value) % n.value)
    if proven(start.value + offset.value < n.value):
        return SymSize(start.value + offset.value, ("add", start.arg, offset.arg))
    raise Refusal("cannot prove the rolled window stays inside one period of the FFT size")


def _other_operand(node: Node, tail: Node, functions: set, methods: set):
    """x when ``node`` is the binary call tail (op) x or x (op) tail, else None."""
    if not facts.is_call(node, functions, methods):
        return None
    ops = facts.binary_operands(node)
    if ops is None or tail not in ops:
        return None
    return ops[1] if ops[0] is tail else ops[0]


def _skip_term(add: Node, tail: Node, operands: list[Operand]):
    """(operand, D, D_align, nodes) when ``add`` is tail + signal * D (any order, mul or einsum)."""
    other = _other_operand(add, tail, facts.ADD_FUNCTIONS, facts.ADD_METHODS)
    if not isinstance(other, Node):
        return None
    if facts.is_call(other, facts.MUL_FUNCTIONS, facts.MUL_METHODS):
        pair = facts.binary_operands(other)
        if pair is None or not all(is_tensor(p) for p in pair):
            return None
        candidates = [(pair[0], pair[1], None, None), (pair[1], pair[0], None, None)]
    elif other.op == "call_function" and other.target in facts.EINSUM_FUNCTIONS and len(other.args) == 3:
        terms = elementwise_einsum(other.args[0], 2)
        if isinstance(terms, str):
            return None
        (a, b), (ta, tb) = other.args[1:], terms
        candidates = [(a, b, ta.align, tb.align), (b, a, tb.align, ta.align)]
    else:
        return None
    if example_value(other).dtype != example_value(tail).dtype:
        return None  # eager computes u * D in another precision than the operator would
    # u * p with both convolved signals: read the signal that is not module state as the input
    candidates.sort(key=lambda c: is_module_state(strip_exact_upcasts(c[0])[0]) if isinstance(c[0], Node) else True)
    for signal, D, signal_align, D_align in candidates:
        signal, casts = strip_exact_upcasts(signal)
        for operand in operands:
            if operand.terms is None and signal is operand.signal and operand.align == signal_align \
                    and not operand.layout:
                if is_float_tensor(D):
                    return operand, strip_exact_upcasts(D)[0], D_align, [other] + casts
    return None


def _post_gate(mul: Node, tail: Node) -> Node | None:
    """The gate g of tail * g, read without its exact upcast (the operator computes in fp32)."""
    gate = _other_operand(mul, tail, facts.MUL_FUNCTIONS, facts.MUL_METHODS)
    if gate is None or gate is tail or not is_float_tensor(gate):
        return None
    if example_value(mul).dtype != example_value(tail).dtype:
        return None
    return strip_exact_upcasts(gate)[0]


def _block_window(node: Node, base: Node, where: tuple, sizes: tuple) -> list | None:
    """[(start, length)] per transformed axis when ``node`` is base[...] slicing those axes only
    (step 1; every other axis whole), else None."""
    if not (node.op == "call_function" and node.target is operator.getitem and node.args[0] is base):
        return None
    index = slice_index(node.args[1], example_value(base).dim())
    if index is None:
        return None
    out = [None] * len(where)  # in the order of the transformed axes (a permute may have reordered them)
    for pos, s in enumerate(index):
        if pos not in where:
            if s != slice(None):
                return None
            continue
        if s.step not in (None, 1):
            return None
        out[where.index(pos)] = slice_bounds(s.start, s.stop, sizes[where.index(pos)])
    return out


def _layout_step(nxt: Node, tail: Node, axes: tuple) -> LayoutStep | None:
    """The layout op ``nxt`` on ``tail`` when it leaves every transformed axis whole, else None
    (an op that mixes one simply ends the epilogue: the result is real samples by then)."""
    if layout_kind(nxt) is None or not nxt.args or nxt.args[0] is not tail:
        return None
    try:
        return step_through(nxt, axes)
    except Refusal:
        return None


def _bias(add: Node, tail: Node, channel_axis: int) -> Node | None:
    """b when ``add`` is tail + b with b one value per output channel (broadcast over every other
    axis), in tail's dtype: the channel-mixing operator's bias."""
    b = _other_operand(add, tail, facts.ADD_FUNCTIONS, facts.ADD_METHODS)
    if not (isinstance(b, Node) and is_float_tensor(b) and same_shape(add, tail)):
        return None
    out, value = example_value(tail), example_value(b)
    if value.dtype != out.dtype or example_value(add).dtype != out.dtype or value.dim() > out.dim():
        return None
    for j in range(-out.dim(), 0):
        size = value.shape[j] if -j <= value.dim() else 1
        if not same(size, out.shape[j] if j == channel_axis else 1):
            return None
    return b


def walk_epilogue(head: Node, axes: tuple, sizes: tuple, operands: list[Operand], *, mixing: bool = False,
                  bias_axis: int | None = None) -> Epilogue:
    """The steps after the inverse the operator absorbs; over several axes, layout ops, scales
    and casts only.  ``mixing``: a channel-mixing site, which has no skip term or gate; its
    operator may add a bias over ``bias_axis`` (negative, in head's layout)."""
    n = sizes[-1]
    one_axis = len(axes) == 1  # no window, roll, skip term or gate over several axes yet
    epi = Epilogue(tail=head, start=SymSize.const(0), length=n)
    rank = example_value(head).dim()
    where = tuple(a + rank for a in axes)  # the transformed axes, positive, in the tail's layout
    windowed = rolled = not one_axis
    taken = (head, 0, 0)  # (tail, nodes, steps) after the last step that was not a layout op
    stage = 0  # 0: window, roll, scales, upcasts; 1: skip seen; 2: gate seen; 3: final cast
    while stage < 3 and (nxt := sole_user(epi.tail)) is not None:
        tail = epi.tail
        axis = where[-1] - example_value(tail).dim()
        if stage == 0 and not windowed and not rolled and (shift := _roll_shift(nxt, tail, axis)) is not None:
            epi.start = _shifted(SymSize.const(0), _roll_start(shift, n), n)
            rolled = True
        elif stage == 0 and not windowed and (
            window := slice_along(nxt, tail, axis, epi.length) or _arange_window(nxt, tail, axis, epi.length)
        ):
            epi.start, epi.length = _shifted(epi.start, window[0], n), window[1]
            windowed = True
        elif stage == 0 and not one_axis and epi.windows is None and (
            block := _block_window(nxt, tail, where, sizes)
        ):
            epi.windows = block
        elif (step := _layout_step(nxt, tail, where)) is not None:
            epi.out_steps.append(step)
            where = step.out_axes
            epi.nodes.append(nxt)
            epi.tail = nxt
            continue
        elif stage == 0 and (inner := scaled(nxt)) is not None and inner[0] is tail:
            epi.factors += inner[1]
        elif (dst := facts.cast_target_dtype(nxt)) is not None:
            if mixing and not (dst.is_floating_point and not dst.is_complex):
                break  # the mixing operators return real floats: a complex/int/bool cast stays in the graph
            if dst != example_value(tail).dtype:
                # Any cast that changes the dtype is the last step absorbed: what follows it
                # (scales, skip, gate) eager computes in the new dtype, the operator would not.
                stage = 3
        elif mixing:
            if stage or epi.out_steps or bias_axis is None or (bias := _bias(nxt, tail, bias_axis)) is None:
                break
            epi.bias = bias
            stage = 1
        elif not one_axis or epi.out_steps:
            break  # a skip term or gate after a layout op broadcasts in another layout
        elif stage == 0 and (skip := _skip_term(nxt, tail, operands)) is not None and same_shape(nxt, tail):
            operand, D, D_align, used = skip
            if not same(operand.length, epi.length.value):
                break  # it adds a signal of another length: not the operator's skip term
            epi.skip_operand, epi.D, epi.D_align = operand, D, D_align
            epi.nodes += used
            stage = 1
        elif stage <= 1 and (gate := _post_gate(nxt, tail)) is not None and same_shape(nxt, tail):
            epi.post_gate = gate
            stage = 2
        else:
            break
        epi.nodes.append(nxt)
        epi.tail = nxt
        taken = (nxt, len(epi.nodes), len(epi.out_steps))
    # layout ops that nothing absorbed follows stay in the graph as they are
    epi.tail, kept, steps = taken
    del epi.nodes[kept:], epi.out_steps[steps:]
    return epi


def _roll_start(shift: int, n: SymSize) -> SymSize:
    """roll by s: out[t] = in[(t - s) mod n], a window starting at (-s) mod n."""
    if n.static:
        return SymSize.const((-shift) % n.value)
    if shift == 0:
        return SymSize.const(0)
    if shift > 0 and proven(shift < n.value):
        return n.minus(SymSize.const(shift))
    if shift < 0 and proven(-shift < n.value):
        return SymSize.const(-shift)
    raise Refusal(f"cannot prove the roll by {shift} is less than the FFT size {n}")
