"""Small pieces of graph algebra every matcher step uses: scalars, scales, casts, slices, mutation."""

from __future__ import annotations

import math
import operator
from fractions import Fraction
from typing import Any

import torch
from torch.fx import Node

from convfuse.passes import facts
from convfuse.passes.refusal import Refusal  # noqa: F401  (re-exported)
from convfuse.passes.sizes import SymSize, example_value, proven, same




def scalar(arg: Any) -> Any:
    """A Python number or a SymSize when ``arg`` is a scalar, else None."""
    if isinstance(arg, (int, float)) and not isinstance(arg, bool):
        return arg
    if isinstance(arg, Node):
        return SymSize.of_arg(arg)
    return None


def is_tensor(arg: Any) -> bool:
    return isinstance(example_value(arg), torch.Tensor)


def is_float_tensor(arg: Any) -> bool:
    value = example_value(arg)
    return isinstance(value, torch.Tensor) and value.is_floating_point()


def sole_user(node: Node) -> Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def same_shape(a: Node, b: Node) -> bool:
    sa, sb = example_value(a).shape, example_value(b).shape
    return len(sa) == len(sb) and all(same(x, y) for x, y in zip(sa, sb))


def strip_exact_upcasts(node: Node) -> tuple[Node, list[Node]]:
    """(x, casts) for x.to(float32) of an fp16 x: an operator computing in fp32 reads x itself.

    Only casts to the precision the operator computes in anyway are stripped (fp32 from
    fp16/bf16, or a cast to the dtype x already has): an upcast to fp64 stays in the graph, so
    the operator computes in fp64 as eager did (``x.double() * 1e40`` must not overflow in fp32).
    """
    casts = []
    while isinstance(node, Node) and (dst := facts.cast_target_dtype(node)) is not None:
        src = node.args[0]
        if not is_tensor(src) or not facts.is_exact_upcast(example_value(src).dtype, dst):
            break
        if dst != example_value(src).dtype and dst != torch.float32:
            break
        casts.append(node)
        node = src
    return node, casts


def scaled(node: Node) -> tuple[Node, list, list[Node]] | None:
    """(inner, factors, nodes) when ``node`` is ``inner`` times/over scalars, else None.

    factors are (value, exponent) pairs: x * c -> (c, 1), x / c -> (c, -1).
    """
    if facts.is_call(node, facts.MUL_FUNCTIONS, facts.MUL_METHODS):
        ops = facts.binary_operands(node)
        if ops is None:
            return None
        a, b = ops
        if is_tensor(a) and scalar(b) is not None:
            return a, [(scalar(b), 1)], [node]
        if is_tensor(b) and scalar(a) is not None:
            return b, [(scalar(a), 1)], [node]
    if facts.is_call(node, facts.DIV_FUNCTIONS, facts.DIV_METHODS):
        ops = facts.binary_operands(node)
        if ops is not None and is_tensor(ops[0]) and scalar(ops[1]) is not None:
            return ops[0], [(scalar(ops[1]), -1)], [node]
    return None


# Constants folded into the operator's one scale must not hide what eager's fp32 intermediates
# do with them: a factor outside [2^-40, 2^40] (or a product of them outside [2^-60, 2^60]) can
# overflow or underflow there (``irfft(U * K * 1e38) * 1e-38`` is inf in eager), so such a
# site is left to eager.  Norm modes and 1/n of any FFT size up to 2^40 stay inside.
FOLDABLE_FACTOR, FOLDABLE_PRODUCT = 2.0**40, 2.0**60


def resolve_scale(factors: list, n: SymSize, wide: bool = False) -> tuple[float, Fraction]:
    """Multiply scalar factors into (constant, power of n); symbolic factors must be n itself.

    ``wide``: every spectrum is fp64 (complex128), whose range is wider by 2^896: the bounds on
    folded constants scale with it."""
    const, power = 1.0, Fraction(0)
    bits = 10 if wide else 1
    for value, exponent in factors:
        if isinstance(value, SymSize):
            if value.static:
                const *= _foldable(float(value.value), exponent, bits)
            elif same(value.value, n.value):
                power += exponent
            else:
                raise Refusal(
                    f"the spectrum is scaled by the symbolic size {value}, which is neither a constant "
                    f"nor the FFT size {n}"
                )
        else:
            const *= _foldable(float(value), exponent, bits)
    if const != 0 and not FOLDABLE_PRODUCT ** -bits <= abs(const) <= FOLDABLE_PRODUCT**bits:
        raise Refusal(f"the constants on the spectra multiply to {const:g}: folded into one they would hide the "
                      "overflow or underflow eager's float32 intermediates can reach, so the site is left to eager",
                      family="extreme-scale")
    return const, power


def _foldable(value: float, exponent: int, bits: int = 1) -> float:
    if value == 0 and exponent < 0 or not math.isfinite(value):
        raise Refusal(f"a spectrum is divided by {value:g} or scaled by a non-finite constant", family="extreme-scale")
    if value != 0 and not FOLDABLE_FACTOR ** -bits <= abs(value) <= FOLDABLE_FACTOR**bits:
        raise Refusal(f"a spectrum is scaled by {value:g}: folded into the operator it would hide the overflow or "
                      "underflow eager's float32 intermediates can reach, so the site is left to eager",
                      family="extreme-scale")
    return value**exponent


def is_module_state(node: Node) -> bool:
    """A graph input that is a module's parameter or buffer (Dynamo lifts them as placeholders)."""
    if node.op != "placeholder":
        return False
    if isinstance(example_value(node), torch.nn.Parameter):
        return True
    source = getattr(node.meta.get("grapharg"), "source", None)
    name = getattr(source, "name", "")
    name = name() if callable(name) else str(name)
    return "_buffers" in name or "_parameters" in name


def slice_index(index, rank: int) -> tuple | None:
    """``index`` (a getitem argument) as one slice per axis of a rank-``rank`` tensor, Ellipsis
    expanded; None when it holds anything but slices and one Ellipsis."""
    index = index if isinstance(index, tuple) else (index,)
    if index.count(Ellipsis) > 1 or not all(isinstance(i, slice) or i is Ellipsis for i in index):
        return None
    if Ellipsis in index:
        at = index.index(Ellipsis)
        index = index[:at] + (slice(None),) * (rank - len(index) + 1) + index[at + 1:]
    index = index + (slice(None),) * (rank - len(index))
    return index if len(index) == rank else None


def slice_along(node: Node, base: Node, axis: int, size: SymSize) -> tuple[SymSize, SymSize] | None:
    """(start, length) when ``node`` is a contiguous slice of ``base`` along ``axis`` only.

    ``size`` is base's length along the axis (the bounds are clamped to it, as Python does).
    Handles ``x[..., a:b]``, ``x[:, a:b, :]`` and ``x.narrow(axis, a, length)``.
    """
    if not isinstance(node, Node) or not node.args or node.args[0] is not base:
        return None
    rank = example_value(base).dim()
    if node.op == "call_function" and node.target is operator.getitem:
        index = slice_index(node.args[1], rank)
        if index is None:
            return None
        if any(pos - rank != axis and s != slice(None) for pos, s in enumerate(index)):
            return None
        s = index[axis]
        if s.step not in (None, 1):
            return None
        return slice_bounds(s.start, s.stop, size)
    if node.op == "call_method" and node.target == "narrow" and len(node.args) == 4:
        dim, start, length = node.args[1:]
        if isinstance(dim, int) and (dim - rank if dim >= 0 else dim) == axis:
            start, length = SymSize.of_arg(start), SymSize.of_arg(length)
            if start is not None and length is not None and proven(start.value >= 0):
                return start, length
    return None


def slice_bounds(start: Any, stop: Any, n: SymSize) -> tuple[SymSize, SymSize]:
    """(start, length) of Python's slice(start, stop) on a length-n axis, proven in range."""

    def bound(arg, default: SymSize) -> SymSize:
        if arg is None:
            return default
        size = SymSize.of_arg(arg)
        if size is None:
            raise Refusal(f"output window bound {arg!r} is not an integer")
        if isinstance(size.value, int) and size.value < 0:
            if not n.static:
                raise Refusal("a negative window bound on a symbolic FFT size cannot be proven in range")
            return SymSize.const(max(n.value + size.value, 0))
        return size

    lo, hi = bound(start, SymSize.const(0)), bound(stop, n)
    if n.static and lo.static and hi.static:
        lo_v, hi_v = min(lo.value, n.value), min(hi.value, n.value)
        return SymSize.const(lo_v), SymSize.const(max(hi_v - lo_v, 0))
    if not (proven(lo.value >= 0) and proven(hi.value <= n.value) and proven(lo.value <= hi.value)):
        raise Refusal(
            f"cannot prove the window [{lo}, {hi}) lies inside the FFT size {n} for every shape; "
            "compile without dynamic=True or slice with bounds derived from n"
        )
    return lo, hi.minus(lo)
