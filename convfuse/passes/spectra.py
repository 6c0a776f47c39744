"""Walking back from an inverse transform: which signals' spectra are multiplied, and how.

A spectrum operand is ``scale * F_n[signal]`` (conjugated for a correlation), reached through
scalar scales, conjugates, exact upcasts of the signal, and the one-sided half of a full
complex ``fft``; a kernel may also be a sum of such spectra (a bidirectional kernel written
as ``K_fwd + conj(K_bwd)``).  The product is ``*``, ``torch.mul``, an in-place multiply, or an
elementwise einsum.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import torch
from torch.fx import Node

from convfuse.passes import facts
from convfuse.passes.algebra import (
    Refusal, is_module_state, is_tensor, same_shape, scaled, slice_along, strip_exact_upcasts,
)
from convfuse.passes.einsum import elementwise_einsum
from convfuse.passes.layout import layout_kind, step_through
from convfuse.passes.sizes import SymSize, example_value, proven, same

ONE_SIDED, FULL = "one-sided", "full"


class LastAxis:
    """``n`` and ``axis`` of the last transformed axis (the only one of a one-axis transform),
    for records with ``sizes`` and ``axes`` tuples."""

    sizes: tuple
    axes: tuple

    @property
    def n(self) -> SymSize:
        return self.sizes[-1]

    @property
    def axis(self) -> int:
        return self.axes[-1]


@dataclass
class Operand(LastAxis):
    """One factor of the spectral product: scale * F_n[signal] (conjugated if ``conj``).

    A kernel that is a sum of spectra has ``terms`` (each an Operand) and no ``signal``.
    """

    signal: Node | None  # the real time-domain tensor the fused operator reads
    sizes: tuple  # SymSize per transformed axis (one for a one-axis transform)
    axes: tuple  # negative axes being transformed, ascending, in the signal's (and product's) layout
    power: Fraction  # N ** power from the norm modes, N the product of the sizes
    factors: list  # scalar multipliers: (number or SymSize, exponent)
    sided: str = ONE_SIDED
    conj: bool = False
    align: tuple | None = None  # getitem index aligning the signal to the product's layout
    nodes: list[Node] = field(default_factory=list)
    terms: list["Operand"] | None = None
    spectrum: Node | None = None  # a kernel given as its spectrum (a complex parameter)
    dtype: torch.dtype | None = None  # what the transform read: the signal after its stripped casts
    signal_axes: tuple = ()  # the transformed axes in the signal's own layout (``axes`` is the product's)
    layout: list = field(default_factory=list)  # LayoutSteps from the transform to the product, innermost first

    @property
    def built(self) -> bool:
        """The kernel signal is built at rewrite time (a sum of spectra, or a given spectrum)."""
        return self.terms is not None or self.spectrum is not None

    @property
    def length(self):
        if self.built:
            return self.n.value  # a built kernel has the FFT size
        return example_value(self.signal).shape[self.signal_axes[-1]]


def comes_after(later: Node, earlier: Node) -> bool:
    """Whether ``later`` follows ``earlier`` in graph order."""
    node = earlier.next
    while node.op != "root":
        if node is later:
            return True
        node = node.next
    return False


def _what(node: Node) -> str:
    if node.op == "placeholder":
        return "a graph input"
    if node.op == "get_attr":
        return "a constant"
    return getattr(node.target, "__name__", str(node.target))


def spectrum_operand(node: Any) -> Operand:
    """Interpret ``node`` as scale * F_n[signal], through scalar scales and conjugates."""
    factors, nodes, conj = [], [], False
    while True:
        if not isinstance(node, Node):
            raise Refusal(f"a factor of the spectral product is the constant {node!r}, not a transform")
        if (inner := scaled(node)) is not None:
            node, more, used = inner
            factors += more
            nodes += used
        elif facts.is_call(node, facts.CONJ_FUNCTIONS, facts.CONJ_METHODS) and len(node.args) == 1:
            conj = not conj
            nodes.append(node)
            node = node.args[0]
        else:
            break
    if facts.is_call(node, facts.ADD_FUNCTIONS, facts.ADD_METHODS) or facts.is_call(
        node, facts.SUB_FUNCTIONS, facts.SUB_METHODS
    ):
        operand = spectral_sum(node)
    elif node.op == "call_function" and node.target is operator.getitem:
        inner = spectrum_operand(node.args[0])
        full = inner.sided == FULL and len(inner.axes) == 1
        if full and slice_along(node, node.args[0], inner.axis, inner.n) is not None or layout_kind(node) is None:
            operand = one_sided_half(node, inner)
        else:
            operand = through_layout(node, inner)
    elif layout_kind(node) is not None:
        operand = through_layout(node, spectrum_operand(node.args[0]))
    else:
        operand = transformed_signal(node)
    if conj:
        for term in operand.terms or [operand]:
            term.conj = not term.conj
    operand.factors += factors
    operand.nodes += nodes
    return operand


def given_spectrum(node: Node) -> Operand | None:
    """A complex parameter, or view_as_complex of a real one: the spectrum of a kernel.

    irfft(X * W, n) == irfft(X * rfft(irfft(W, n), n), n) for the one-sided spectrum X of a
    real signal and any complex W: the inverse reads only W's Hermitian part, which is exactly
    what the round trip keeps.  So W is the kernel irfft(W, n), built once per call.  Only
    module state qualifies: a spectrum computed from the input may hide a nonlinearity.
    """
    base = node.args[0] if node.op == "call_function" and node.target is torch.view_as_complex else node
    value = example_value(node)
    if not (isinstance(value, torch.Tensor) and value.is_complex() and is_module_state(base)):
        return None
    return Operand(signal=None, sizes=(), axes=(), power=Fraction(0), factors=[], spectrum=node, nodes=[])


_BUFFERS = {"zeros", "zeros_like", "new_zeros", "empty", "empty_like", "new_empty", "full", "new_full", "full_like"}
_CONTRACTIONS = {"matmul", "bmm", "einsum", "tensordot", "mm", "__matmul__", "__rmatmul__", "vecdot", "linalg_vecdot",
                 "inner", "dot", "vdot", "baddbmm", "addmm"}


def _name(node: Node) -> str:
    return node.target if node.op == "call_method" else getattr(node.target, "__name__", "")


def _contraction_behind(node: Node, depth: int = 4) -> Node | None:
    """A contraction reached from ``node`` through the first argument of a few ops (flatten, views,
    in-place scales): the real obstacle behind the op the walk stopped at."""
    while isinstance(node, Node) and depth >= 0:
        if _name(node) in _CONTRACTIONS or node.op == "call_function" and node.target is operator.matmul:
            return node
        node = node.args[0] if node.args else None
        depth -= 1
    return None


def what_op(node: Node) -> str:
    return _what(node) if node.op != "call_method" else node.target


def not_a_transform(node: Node) -> Refusal:
    """Why a factor of the product is not a transform of a signal, named by what it is."""
    name = _name(node)
    contraction = _contraction_behind(node)
    if contraction is not None:
        return Refusal(f"`{contraction.name}` ({_what(contraction)}) contracts spectra, and its result reaches the "
                       f"inverse through `{node.name}` ({what_op(node)}): a channel-mixing convolution is rewritten "
                       "when the inverse transforms the einsum's result itself (through scalar scales), with one "
                       "channel index summed", family="channel-contraction")
    value = example_value(node)
    what = _what(node)
    if isinstance(value, torch.Tensor) and not value.is_complex():
        return Refusal(f"the spectrum is multiplied by the real tensor `{node.name}` ({what}): a frequency-domain "
                       "filter, not the transform of a signal, so not a convolution convfuse rewrites",
                       family="spectral-filter")
    if name in _BUFFERS or any(user.op == "call_function" and user.target is operator.setitem for user in node.users):
        return Refusal(f"`{node.name}` is a spectrum assembled in a buffer ({what} written by slice assignment), as "
                       "Fourier-neural-operator layers build their kept modes; not the transform of a signal",
                       family="spectrum-buffer")
    if node.op == "call_function" and node.target is torch.view_as_complex:
        inner = node.args[0]
        inner_name = getattr(inner, "target", None)
        if isinstance(inner, Node) and inner_name in (torch.stack, torch.cat, "stack"):
            return Refusal(f"`{node.name}` is a product written in real arithmetic on view_as_real planes (stacked "
                           "real and imaginary parts) that convfuse does not prove to be a complex product: it reads "
                           "real arithmetic only as a channel contraction (re = ar br - ai bi, im = ai br + ar bi, one "
                           "channel index summed); an elementwise one, or a sign or plane that differs, stays eager",
                           family="real-arithmetic-product")
        return Refusal(f"`{node.name}` is view_as_complex of a tensor the graph computes, not module state or the "
                       "transform of a signal", family="not-a-transform")
    if node.op == "placeholder":
        return Refusal(f"the spectrum `{node.name}` is a complex graph input: only module parameters and buffers "
                       "count as kernel spectra (an input could be anything)", family="not-a-transform")
    return Refusal(f"the spectrum factor `{node.name}` is {what}, not the transform of a signal: only products of "
                   "two transformed signals are convolutions", family="not-a-transform")


def transformed_signal(node: Node) -> Operand:
    transform = facts.transform_of(node)
    if transform is None and (given := given_spectrum(node)) is not None:
        return given
    if transform is None or transform.inverse:
        raise not_a_transform(node)
    args = facts.bind(node, transform)
    x = args["input"]
    value = example_value(x)
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise Refusal(
            f"`{node.name}` transforms a {getattr(value, 'dtype', type(value).__name__)} signal: "
            "convfuse convolves real floating signals; cast it to a float dtype first"
        )
    axes = facts.transform_axes(args, value.dim(), transform, f"`{node.name}`")
    given = facts.size_args(args, transform)
    if given is None:
        sizes = tuple(SymSize.of_shape(x, a) for a in axes)
    else:
        sizes = tuple(s if isinstance(s, SymSize) else SymSize.of_arg(s) for s in given)
        if len(sizes) != len(axes) or any(s is None for s in sizes):
            raise Refusal(f"`{node.name}`: FFT sizes {given!r} are not one integer per transformed axis")
    signal, casts = strip_exact_upcasts(x)
    if len(axes) == 1 and (inner := right_zero_padded(signal, axes[0])) is not None:
        # rfft(pad(x, (0, p)), n) == rfft(x, n): the transform zero-pads to n itself, so the
        # operator reads x and sees the linear convolution the padding computes.
        casts.append(signal)
        signal, more = strip_exact_upcasts(inner)
        casts += more
    return Operand(
        signal=signal, sizes=sizes, axes=axes, power=facts.norm_power(args["norm"], inverse=False), factors=[],
        sided=ONE_SIDED if transform.one_sided else FULL, nodes=[node] + casts, dtype=value.dtype,
        signal_axes=axes,
    )


def through_layout(node: Node, operand: Operand) -> Operand:
    """``operand`` through the layout op ``node`` that leaves its transformed axes whole."""
    if operand.built:
        raise Refusal(f"`{node.name}` changes the layout of a summed or parameter spectrum: not supported yet")
    rank_in = example_value(node.args[0]).dim()
    step = step_through(node, tuple(a + rank_in for a in operand.axes))
    rank_out = example_value(node).dim()
    operand.axes = tuple(a - rank_out for a in step.out_axes)
    operand.layout.append(step)
    operand.nodes.append(node)
    return operand


def right_zero_padded(node: Node, axis: int) -> Node | None:
    """x when ``node`` is F.pad(x, pad) with zeros appended along ``axis`` only (constant mode,
    value 0, nothing before), else None."""
    if not (node.op == "call_function" and node.target in (torch.nn.functional.pad, torch._C._nn.pad)):
        return None
    x = node.args[0]
    pad = node.kwargs.get("pad", node.args[1] if len(node.args) > 1 else None)
    mode = node.kwargs.get("mode", node.args[2] if len(node.args) > 2 else "constant")
    value = node.kwargs.get("value", node.args[3] if len(node.args) > 3 else None)
    if mode != "constant" or value not in (None, 0, 0.0) or not isinstance(pad, (tuple, list)) or len(pad) % 2:
        return None
    if not all(isinstance(p, (int, Node)) and not isinstance(p, bool) for p in pad):
        return None
    rank = example_value(x).dim() if isinstance(x, Node) else 0
    pairs = [pad[i : i + 2] for i in range(0, len(pad), 2)]  # (before, after), last axis first
    for i, (before, after) in enumerate(pairs):
        dim = -1 - i
        if dim == axis:
            if not (isinstance(before, int) and before == 0):
                return None
            if isinstance(after, int) and after < 0:
                return None  # a negative pad crops
            if isinstance(after, Node):
                size = SymSize.of_arg(after)
                if size is None or not proven(size.value >= 0):
                    return None
        elif not (isinstance(before, int) and before == 0 and isinstance(after, int) and after == 0):
            return None
    return x if -rank <= axis else None


def one_sided_half(node: Node, operand: Operand) -> Operand:
    """fft(x, n)[..., :n//2 + 1] of a real x is rfft(x, n): the half a one-sided inverse reads."""
    full_one_axis = operand.sided == FULL and len(operand.axes) == 1
    window = slice_along(node, node.args[0], operand.axis, operand.n) if full_one_axis else None
    if window is None or not (window[0].static and window[0].value == 0):
        raise Refusal(f"`{node.name}` slices a spectrum other than to its one-sided half")
    if not same(window[1].value, operand.n.value // 2 + 1):
        raise Refusal(f"`{node.name}` keeps {window[1]} bins of a size-{operand.n} spectrum, not n//2+1")
    operand.sided = ONE_SIDED
    operand.nodes.append(node)
    return operand


def spectral_sum(node: Node) -> Operand:
    """K1 + K2 (or K1 - K2) of spectra at one size: a kernel that is a sum of kernels."""
    ops = facts.binary_operands(node)
    if ops is None or not all(is_tensor(x) for x in ops):
        raise Refusal(f"`{node.name}` adds a non-spectrum to a spectrum")
    a, b = (spectrum_operand(x) for x in ops)
    return summed_kernel(node, a, b)


def _terms_of(operand: Operand) -> list[Operand]:
    """The terms of a (possibly summed) operand, each carrying the factors applied to the whole."""
    if operand.terms is None:
        return [operand]
    for term in operand.terms:
        term.factors = term.factors + operand.factors
    return operand.terms


def summed_kernel(node: Node, a: Operand, b: Operand) -> Operand:
    if facts.is_call(node, facts.SUB_FUNCTIONS, facts.SUB_METHODS):
        b.factors = b.factors + [(-1, 1)]
    terms = _terms_of(a) + _terms_of(b)
    if any(t.spectrum is not None for t in terms):
        raise Refusal(f"`{node.name}` adds a parameter spectrum to a transform: not supported yet")
    if any(len(t.axes) != 1 for t in terms):
        raise Refusal(f"`{node.name}` adds spectra over several axes: only one-axis kernels can be summed yet")
    if any(t.layout for t in terms):
        raise Refusal(f"`{node.name}` adds spectra whose layouts were changed: not supported yet")
    for term in terms:
        if not (same(term.n.value, a.n.value) and term.axis == a.axis and term.sided == a.sided):
            raise Refusal(f"`{node.name}` adds spectra of different sizes, axes or sidedness")
        if term.align is not None:
            raise Refusal(f"`{node.name}` adds spectra that an einsum realigned")
    if not all(same_shape(t.signal, terms[0].signal) for t in terms):
        raise Refusal(f"`{node.name}` adds spectra of signals with different shapes")
    return Operand(signal=None, sizes=a.sizes, axes=a.axes, power=Fraction(0), factors=[], sided=a.sided,
                   nodes=[node] + a.nodes + b.nodes, terms=terms)


def _same_spectrum(x: Operand, y: Operand) -> bool:
    return (
        not x.built and not y.built and x.signal is y.signal and x.conj == y.conj and x.align == y.align
        and not x.layout and not y.layout
        and x.axes == y.axes and x.power == y.power and x.sided == y.sided
        and all(same(a.value, b.value) for a, b in zip(x.sizes, y.sizes))
    )


def distributed_product(node: Node) -> tuple[list[Operand], list, list[Node], list[str]]:
    """U * K1 + U * K2 (or -): one input's spectrum times a summed kernel, U * (K1 + K2)."""
    ops = facts.binary_operands(node)
    if ops is None or not all(is_tensor(x) for x in ops):
        raise Refusal(f"`{node.name}` adds a non-spectrum to a spectral product")
    (left, lf, ln, lnotes), (right, rf, rn, rnotes) = (spectral_product(x) for x in ops)
    for x in left:
        for y in right:
            if _same_spectrum(x, y):
                kl, kr = (o for o in left if o is not x), (o for o in right if o is not y)
                kl, kr = next(kl), next(kr)
                kl.factors = kl.factors + lf + x.factors
                kr.factors = kr.factors + rf + y.factors
                x.factors = []
                return [x, summed_kernel(node, kl, kr)], [], [node] + ln + rn, lnotes + rnotes
    raise Refusal(f"`{node.name}` adds two spectral products that share no input spectrum")


def spectral_product(node: Any, reader: Node | None = None) -> tuple[list[Operand], list, list[Node], list[str]]:
    """Factor the inverse transform's input into two spectra, scalars, consumed nodes and notes.

    ``reader`` is the node that reads the product after an in-place ``U.mul_(K)``: the one
    other user ``U`` may have.
    """
    if not isinstance(node, Node):
        raise Refusal("the inverse transform's input is not a graph value")
    in_place = [u for u in node.users if facts.is_call(u, set(), {"mul_"}) and u.args[0] is node]
    if reader is None and len(in_place) == 1 and len(node.users) == 2:
        # U.mul_(K); irfft(U): the inverse reads U after the in-place product (checked before
        # anything else: U itself may be a scaled spectrum).  An inverse that reads U before the
        # product (irfft(U); U.mul_(K)) transforms U alone.
        other = next(u for u in node.users if u is not in_place[0])
        if not comes_after(other, in_place[0]):
            raise Refusal(f"`{other.name}` reads `{node.name}` before `{in_place[0].name}` multiplies it in place: "
                          "the inverse transforms a single spectrum, not a product")
        return spectral_product(in_place[0], reader=other)
    if (inner := scaled(node)) is not None:
        inner_node, factors, used = inner
        operands, more, nodes, notes = spectral_product(inner_node)
        return operands, factors + more, used + nodes, notes
    if facts.is_call(node, facts.MUL_FUNCTIONS | facts.INPLACE_MUL_FUNCTIONS, facts.MUL_METHODS | {"mul_"}):
        ops = facts.binary_operands(node)
        if ops is not None and all(is_tensor(a) for a in ops):
            if facts.is_call(node, facts.INPLACE_MUL_FUNCTIONS, {"mul_"}) and set(ops[0].users) - {node, reader}:
                raise Refusal(f"`{node.name}` multiplies in place a spectrum that is used elsewhere")
            a, b = (spectrum_operand(x) for x in ops)
            return [a, b], [], [node], []
    if node.op == "call_function" and node.target in facts.EINSUM_FUNCTIONS:
        equation, *tensors = node.args
        terms = elementwise_einsum(equation, len(tensors))
        if isinstance(terms, str):
            raise Refusal(f"einsum {equation!r} {terms}: neither an elementwise product of spectra nor a "
                          "contraction over one channel axis", family="channel-contraction")
        operands = [spectrum_operand(t) for t in tensors]
        for operand, term in zip(operands, terms):
            if len(operand.axes) > 1:
                raise Refusal(f"einsum {equation!r} of spectra over several axes: not supported yet")
            if not operand.axes:
                raise Refusal(f"einsum {equation!r} of a parameter spectrum: not supported yet")
            letter = term.letter_of_axis(operand.axis)
            if letter is None:
                raise Refusal(f"einsum {equation!r}: the transformed axis is inside '...'")
            operand.axes = (term.output_axis(letter),)
            operand.align = term.align
        return operands, [], [node], [f"einsum {equation!r}"]
    if facts.is_call(node, facts.ADD_FUNCTIONS, facts.ADD_METHODS) or facts.is_call(
        node, facts.SUB_FUNCTIONS, facts.SUB_METHODS
    ):
        return distributed_product(node)
    spectrum_operand(node)  # raises a precise reason when it is no lone transform either
    raise Refusal("the inverse transform's input is a single spectrum, not a product of two")
