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
    """True only when ``condition`` (a bool or SymBool) holds for every traced size."""
    if isinstance(condition, bool):
        return condition
    return statically_known_true(condition)


def same(a: SizeValue, b: SizeValue) -> bool:
    return proven(a == b)


def spec_value(value: SizeValue) -> int | str:
    """A size as the report shows it: an int, or the symbolic expression as text."""
    return value if isinstance(value, int) else str(value)
