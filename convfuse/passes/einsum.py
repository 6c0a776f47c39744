"""When an einsum is an elementwise (Hadamard) product, and how its operands line up.

S4-style code multiplies spectra with ``einsum('bhl,hl->bhl', ...)`` or
``einsum('bhl,chl->bchl', ...)``: no index is summed, so the einsum is a broadcast
multiply once each operand is viewed in the output's layout.  That holds when every
input index appears in the output, no index repeats within an operand, and each
operand's indices keep the output's order (a view with inserted size-1 axes, no
transpose).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EinsumOperand:
    letters: str  # the operand's explicit indices (after any leading '...')
    output: str  # the output's explicit indices (after any leading '...')
    ellipsis: bool

    def letter_of_axis(self, axis: int) -> str | None:
        """The index letter of the operand's negative ``axis`` (None inside '...')."""
        return self.letters[axis] if -len(self.letters) <= axis < 0 else None

    def output_axis(self, letter: str) -> int:
        return self.output.index(letter) - len(self.output)

    @property
    def align(self) -> tuple | None:
        """A getitem index that views the operand in the output's layout (None: already is)."""
        if self.output.endswith(self.letters):
            return None  # right-aligned broadcasting already lines it up
        index = tuple(slice(None) if c in self.letters else None for c in self.output)
        return ((Ellipsis,) if self.ellipsis else ()) + index


def elementwise_einsum(equation: str, n_operands: int) -> list[EinsumOperand] | str:
    """The operands of an elementwise einsum, or the reason it is not one."""
    if not isinstance(equation, str) or "->" not in equation:
        return "has no explicit output ('->'), so it may sum over repeated indices"
    lhs, out = (side.replace(" ", "") for side in equation.split("->"))
    terms = lhs.split(",")
    if len(terms) != n_operands or n_operands != 2:
        return "is not a product of exactly two operands"

    def split(term: str) -> tuple[bool, str] | None:
        if "." not in term:
            return False, term
        return (True, term[3:]) if term.startswith("...") and "." not in term[3:] else None

    parsed_out = split(out)
    if parsed_out is None:
        return "uses '...' in a position other than the front"
    out_ellipsis, out_letters = parsed_out
    if len(set(out_letters)) != len(out_letters):
        return "repeats an output index"
    operands = []
    for term in terms:
        parsed = split(term)
        if parsed is None:
            return "uses '...' in a position other than the front"
        ellipsis, letters = parsed
        if ellipsis != out_ellipsis:
            return "uses '...' on some terms only"
        if len(set(letters)) != len(letters):
            return f"repeats an index within '{term}' (a diagonal)"
        if any(c not in out_letters for c in letters):
            return f"sums over indices of '{term}' absent from the output: it contracts, not multiplies"
        positions = [out_letters.index(c) for c in letters]
        if positions != sorted(positions):
            return f"reorders the axes of '{term}'"
        operands.append(EinsumOperand(letters, out_letters, ellipsis))
    if set(out_letters) - set("".join(o.letters for o in operands)):
        return "creates output indices no operand has"
    return operands


@dataclass(frozen=True)
class Contraction:
    """A two-operand einsum that sums exactly one index present in both operands (a channel
    contraction when that index is not a frequency axis): 'bcf,ocf->bof', 'bixy,ioxy->boxy'."""

    left: str
    right: str
    output: str
    summed: str


def channel_contraction(equation: str, n_operands: int) -> Contraction | str:
    """The contraction an einsum computes, or the reason it is none convfuse rewrites."""
    if not isinstance(equation, str) or "->" not in equation:
        return "has no explicit output ('->')"
    lhs, out = (side.replace(" ", "") for side in equation.split("->"))
    terms = lhs.split(",")
    if len(terms) != n_operands or n_operands != 2:
        return "is not a product of exactly two operands"
    if "." in lhs or "." in out:
        return "uses '...': write every index of a channel contraction explicitly"
    left, right = terms
    for term in (left, right, out):
        if len(set(term)) != len(term):
            return f"repeats an index within '{term}'"
    summed = [c for c in left if c in right and c not in out]
    alone = [c for c in left + right if c not in out and c not in summed]
    if alone:
        return f"sums over '{''.join(alone)}', present in one operand only"
    if len(summed) != 1:
        return f"sums over {len(summed)} indices shared by both operands, not one channel axis"
    if set(out) - set(left + right):
        return "creates output indices no operand has"
    return Contraction(left, right, out, summed[0])
