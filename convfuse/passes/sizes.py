"""Sizes that may be symbolic, and proofs about them.

With ``dynamic=True`` the FFT size and lengths are SymInts whose expressions are
sympy.  A fact about them is used only when it holds for every size the graph can
see (``statically_known_true``): proving never adds a guard, so a rewrite can
never make the compiled graph recompile or specialise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

import torch
from torch.fx import Node
from torch.fx.experimental.symbolic_shapes import statically_known_true

SizeValue = Union[int, torch.SymInt]


def example_value(arg: Any) -> Any:
    """The value an FX argument had while Dynamo traced (a FakeTensor, SymInt or constant)."""
    if isinstance(arg, Node):
        return arg.meta.get("example_value")
    return arg


@dataclass(frozen=True)
class SymSize:
    """A size: its traced value (for proofs) and how the rewritten graph obtains it.

    ``arg`` is an int, a graph Node producing a SymInt, ``("size", node, dim)`` for a size
    that only exists as a tensor's shape and must be read off it in the new graph, or
    ``("sub", a, b)`` / ``("mod", a, b)`` of such args.
    """

    value: SizeValue
    arg: Any

    @staticmethod
    def of_arg(arg: Any) -> "SymSize | None":
        value = example_value(arg)
        if isinstance(value, (int, torch.SymInt)) and not isinstance(value, bool):
            return SymSize(value, arg)
        return None

    @staticmethod
    def of_shape(node: Node, dim: int) -> "SymSize":
        value = example_value(node).shape[dim]
        return SymSize(value, value if isinstance(value, int) else ("size", node, dim))

    @staticmethod
    def const(value: int) -> "SymSize":
        return SymSize(value, value)

    def minus(self, other: "SymSize") -> "SymSize":
        """self - other, as a value and as something the rewritten graph can compute."""
        if other.static and other.value == 0:
            return self
        if self.static and other.static:
            return SymSize.const(self.value - other.value)
        return SymSize(self.value - other.value, ("sub", self.arg, other.arg))

    @property
    def static(self) -> bool:
        return isinstance(self.value, int)

    def __str__(self) -> str:
        return str(self.value)


def proven(condition: Any) -> bool:
    """True only when ``condition`` (a bool or SymBool) holds for every traced size.

    Never raises and never adds a guard: an expression neither prover handles is "not proven".
    """
    if isinstance(condition, bool):
        return condition
    try:
        return bool(statically_known_true(condition)) or _proven_by_floor_bounds(condition)
    except Exception:  # noqa: BLE001  sympy gives up on some expressions: not proven
        return False


def _proven_by_floor_bounds(condition: Any) -> bool:
    """A small sound prover for what the shape environment misses, e.g. ``s // 2 + s <= 2 * s``.

    The inequality becomes ``d >= 0`` (or ``d > 0``); each ``a // c`` is replaced by the bound
    that makes ``d`` smallest (``(a - c + 1) / c`` where it adds, ``a / c`` where it subtracts),
    each size symbol by ``lower + t`` with ``t >= 0`` from its known range; if every coefficient
    of the resulting polynomial in the ``t``s is non-negative (and the constant positive for a
    strict inequality), the condition holds for every size.  Anything else: not proven.
    """
    import sympy
    from torch.utils._sympy.functions import FloorDiv

    try:
        expr = condition.node.expr
        shape_env = condition.node.shape_env
    except AttributeError:
        return False
    if isinstance(expr, (sympy.GreaterThan, sympy.StrictGreaterThan)):
        diff, strict = expr.lhs - expr.rhs, isinstance(expr, sympy.StrictGreaterThan)
    elif isinstance(expr, (sympy.LessThan, sympy.StrictLessThan)):
        diff, strict = expr.rhs - expr.lhs, isinstance(expr, sympy.StrictLessThan)
    else:
        return False
    return _nonnegative(sympy.expand(diff), strict, shape_env)


def _nonnegative(diff: Any, strict: bool, shape_env: Any, depth: int = 0) -> bool:
    """Whether ``diff >= 0`` (``> 0`` when strict) for every size in the shape environment's ranges.

    ``max(a, b)`` where it adds and ``min(a, b)`` where it subtracts are bounded below by
    either argument: the inequality holds if it holds with one of them in place.
    """
    import sympy
    from torch.utils._sympy.functions import FloorDiv

    maxima, minima = _extremum_types()
    for extreme in diff.atoms(*maxima, *minima):
        coeff = diff.coeff(extreme)
        if depth > 6 or not coeff.is_number or coeff == 0 or (diff - coeff * extreme).has(extreme):
            return False
        if (coeff > 0) != isinstance(extreme, maxima):
            return False
        return any(
            _nonnegative(sympy.expand(diff.subs(extreme, arg)), strict, shape_env, depth + 1) for arg in extreme.args
        )
    for floor in diff.atoms(FloorDiv):
        a, c = floor.args
        if not (c.is_Integer and c > 0):
            return False
        coeff = diff.coeff(floor)
        if not coeff.is_number or (diff - coeff * floor).has(floor):
            return False
        diff = sympy.expand(diff.subs(floor, (a - c + 1) / c if coeff > 0 else a / c))
    if diff.atoms(sympy.Function):
        return False
    shifts, offsets = {}, []
    for sym in diff.free_symbols:
        bounds = shape_env.var_to_range.get(sym)
        if bounds is None or not bounds.lower.is_finite:
            return False
        offset = sympy.Symbol(f"_t_{sym}", nonnegative=True)
        shifts[sym] = int(bounds.lower) + offset
        offsets.append(offset)
    shifted = sympy.expand(diff.subs(shifts))
    if not offsets:
        return bool(shifted > 0) if strict else bool(shifted >= 0)
    coeffs = sympy.Poly(shifted, *offsets).as_dict()
    if any(not c.is_number or c < 0 for c in coeffs.values()):
        return False
    constant = coeffs.get((0,) * len(offsets), 0)
    return bool(constant > 0) if strict else True


def _extremum_types() -> tuple[tuple, tuple]:
    """(max classes, min classes): sympy's, and torch's own where it has them."""
    import sympy
    from torch.utils._sympy import functions

    maxima = (sympy.Max,) + ((functions.Max,) if hasattr(functions, "Max") else ())
    minima = (sympy.Min,) + ((functions.Min,) if hasattr(functions, "Min") else ())
    return maxima, minima


def same(a: SizeValue, b: SizeValue) -> bool:
    return proven(a == b)


def spec_value(value: SizeValue) -> int | str:
    """A size as the report shows it: an int, or the symbolic expression as text."""
    return value if isinstance(value, int) else str(value)
