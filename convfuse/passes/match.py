"""Prove that the value of one inverse FFT is a convolution, and say exactly which.

``match_site(inverse)`` walks the FX graph back from an inverse transform to the two
real signals being transformed and forward to the window and epilogue the result
flows into, keeping the algebra of every step (scales, norm modes, conjugates,
casts, layouts).  It returns a ``Match`` (what the fused operator must compute,
and which nodes it replaces) or raises ``Refusal`` with a reason a user can act
on.  The knowledge of spellings is in ``facts``; this module only composes it.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import torch
from torch.fx import Node

from convfuse.passes import facts
from convfuse.passes.einsum import EinsumOperand, elementwise_einsum
from convfuse.passes.sizes import SymSize, example_value, proven, same, spec_value
from convfuse.spec import ConvSpec


class Refusal(Exception):
    """This site is not provably a convolution convfuse can run; ``reason`` says why."""

    def __init__(self, reason: str, family: str = "unrecognised"):
        super().__init__(reason)
        self.reason = reason
        self.family = family


@dataclass
class Operand:
    """One factor of the spectral product: scale * F_n[signal] (conjugated if ``conj``)."""

    transform: Node
    signal: Node  # the real time-domain tensor the fused operator reads (exact upcasts stripped)
    n: SymSize
    axis: int  # negative axis of the signal (and of the product) being transformed
    power: Fraction  # n ** power from the norm mode
    factors: list  # scalar multipliers (numbers, or SymSizes with an exponent)
    conj: bool = False
    align: tuple | None = None  # getitem index aligning the signal to the product's layout
    nodes: list[Node] = field(default_factory=list)

    @property
    def length(self):
        return example_value(self.signal).shape[self.axis]


@dataclass
class Match:
    inverse: Node
    tail: Node  # the node whose value the fused operator replaces
    u: Operand
    k: Operand
    n: SymSize
    axis: int  # negative, in the output's layout
    start: SymSize
    length: SymSize
    scale: float
    power: Fraction
    out_dtype: torch.dtype
    D: Node | None = None
    post_gate: Node | None = None
    nodes: list[Node] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def conj_kernel(self) -> bool:
        return self.k.conj

    @property
    def constant_kernel(self) -> bool:
        return self.k.align is None and is_module_state(self.k.signal)

    def spec(self) -> ConvSpec:
        n, L, K = self.n.value, self.u.length, self.k.length
        start, length = self.start.value, self.length.value
        causal = None
        if proven(n >= L + K - 1) and proven(start + length <= n):
            causal = True
        elif all(isinstance(v, int) for v in (n, L, K, start, length)):
            causal = False
        return ConvSpec(
            axis=self.axis, L=spec_value(L), K=spec_value(K), n=spec_value(n),
            start=spec_value(start), length=spec_value(length), scale=self.scale,
            n_power=float(self.power), conj_kernel=self.conj_kernel, skip=self.D is not None,
            post_gate=self.post_gate is not None, out_dtype=self.out_dtype,
            rank=example_value(self.tail).dim(), causal=causal, constant_kernel=self.constant_kernel,
            notes=list(self.notes),
        )

    def family(self) -> str:
        spec = self.spec()
        kind = {True: "causal", False: "circular", None: "cyclic"}[spec.causal]
        return f"{kind}-{'correlation' if self.conj_kernel else 'conv'}"


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


# ---- walking back: spectra -------------------------------------------------------------------


def _scalar(arg: Any) -> Any:
    """A Python number or a SymSize when ``arg`` is a scalar, else None."""
    if isinstance(arg, (int, float)) and not isinstance(arg, bool):
        return arg
    if isinstance(arg, Node):
        return SymSize.of_arg(arg)
    return None


def _is_tensor(arg: Any) -> bool:
    return isinstance(example_value(arg), torch.Tensor)


def strip_exact_upcasts(node: Node) -> Node:
    """x.to(float32) of an fp16 x is x for an operator that computes in fp32 anyway."""
    while isinstance(node, Node) and (dst := facts.cast_target_dtype(node)) is not None:
        src = node.args[0]
        if not _is_tensor(src) or not facts.is_exact_upcast(example_value(src).dtype, dst):
            break
        node = src
    return node


def scaled(node: Node) -> tuple[Node, list, list[Node]] | None:
    """(inner, factors, nodes) when ``node`` is ``inner`` times/over scalars, else None."""
    if facts.is_call(node, facts.MUL_FUNCTIONS, facts.MUL_METHODS):
        ops = facts.binary_operands(node)
        if ops is None:
            return None
        a, b = ops
        if _is_tensor(a) and _scalar(b) is not None:
            return a, [(_scalar(b), 1)], [node]
        if _is_tensor(b) and _scalar(a) is not None:
            return b, [(_scalar(a), 1)], [node]
    if facts.is_call(node, facts.DIV_FUNCTIONS, facts.DIV_METHODS):
        ops = facts.binary_operands(node)
        if ops is not None and _is_tensor(ops[0]) and _scalar(ops[1]) is not None:
            return ops[0], [(_scalar(ops[1]), -1)], [node]
    return None


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
    transform = facts.transform_of(node)
    if transform is None or transform.inverse:
        what = f"{node.target.__name__ if callable(node.target) else node.target}" if node.op != "placeholder" else "a graph input"
        raise Refusal(
            f"the spectrum factor `{node.name}` is {what}, not the rfft of a signal: "
            "only products of two transformed signals are convolutions",
            family="spectral-filter",
        )
    args = facts.bind(node, transform)
    x = args["input"]
    value = example_value(x)
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise Refusal(
            f"`{node.name}` transforms a {getattr(value, 'dtype', type(value).__name__)} signal: "
            "torch.fft promotes it, so the site is left to eager; cast it to a float dtype first"
        )
    axis = args["dim"] - value.dim() if args["dim"] >= 0 else args["dim"]
    n = SymSize.of_shape(x, axis) if args["n"] is None else SymSize.of_arg(args["n"])
    if n is None:
        raise Refusal(f"`{node.name}`: FFT size {args['n']!r} is not an integer")
    return Operand(
        transform=node, signal=strip_exact_upcasts(x), n=n, axis=axis,
        power=facts.norm_power(args["norm"], inverse=False), factors=factors, conj=conj,
        nodes=nodes + [node],
    )


def spectral_product(node: Any) -> tuple[list[Operand], list, list[Node], list[str]]:
    """Factor the inverse transform's input into spectra, scalars, consumed nodes and notes."""
    if isinstance(node, Node) and (inner := scaled(node)) is not None:
        inner_node, factors, used = inner
        operands, more, nodes, notes = spectral_product(inner_node)
        return operands, factors + more, used + nodes, notes
    if isinstance(node, Node) and facts.is_call(node, facts.MUL_FUNCTIONS, facts.MUL_METHODS):
        ops = facts.binary_operands(node)
        if ops is not None and all(_is_tensor(a) for a in ops):
            a, b = (spectrum_operand(x) for x in ops)
            return [a, b], [], [node], []
    if isinstance(node, Node) and node.op == "call_function" and node.target in facts.EINSUM_FUNCTIONS:
        equation, *tensors = node.args
        terms = elementwise_einsum(equation, len(tensors))
        if isinstance(terms, str):
            raise Refusal(f"einsum {equation!r} {terms}", family="spectral-contraction")
        operands = [spectrum_operand(t) for t in tensors]
        for operand, term in zip(operands, terms):
            _align_einsum_operand(operand, term, equation)
        return operands, [], [node], [f"einsum {equation!r}"]
    # A single spectrum (no product) or any other operation: not a convolution.
    spectrum_operand(node)  # raises a precise reason when it is a lone transform
    raise Refusal("the inverse transform's input is a single spectrum, not a product of two")


def _align_einsum_operand(operand: Operand, term: EinsumOperand, equation: str) -> None:
    letter = term.letter_of_axis(operand.axis)
    if letter is None:
        raise Refusal(f"einsum {equation!r}: the transformed axis is inside '...'")
    operand.axis = term.output_axis(letter)
    operand.align = term.align


# ---- walking forward: window and epilogue ---------------------------------------------------


def _sole_user(node: Node) -> Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _window(node: Node, tail: Node, axis: int, n: SymSize) -> tuple[SymSize, SymSize] | None:
    """(start, length) when ``node`` takes a contiguous window of ``tail`` along ``axis``."""
    rank = example_value(tail).dim()
    if node.op == "call_function" and node.target is operator.getitem and node.args[0] is tail:
        index = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
        if index.count(Ellipsis) > 1 or any(i is None or isinstance(i, (int, Node)) for i in index):
            return None
        if Ellipsis in index:
            at = index.index(Ellipsis)
            index = index[:at] + (slice(None),) * (rank - len(index) + 1) + index[at + 1 :]
        index = index + (slice(None),) * (rank - len(index))
        if len(index) != rank:
            return None
        for pos, s in enumerate(index):
            if pos - rank != axis and s != slice(None):
                return None
        s = index[axis]
        if s.step not in (None, 1):
            return None
        return _slice_bounds(s.start, s.stop, n)
    if node.op == "call_method" and node.target == "narrow" and node.args[0] is tail and len(node.args) == 4:
        dim, start, length = node.args[1:]
        if isinstance(dim, int) and (dim - rank if dim >= 0 else dim) == axis:
            start, length = SymSize.of_arg(start), SymSize.of_arg(length)
            if start is not None and length is not None and proven(start.value >= 0):
                return start, length
    return None


def _slice_bounds(start: Any, stop: Any, n: SymSize) -> tuple[SymSize, SymSize]:
    def bound(arg, default: SymSize) -> SymSize:
        if arg is None:
            return default
        size = SymSize.of_arg(arg)
        if size is None:
            raise Refusal(f"output window bound {arg!r} is not an integer")
        if isinstance(size.value, int) and size.value < 0:
            if not n.static:
                raise Refusal("a negative window bound on a symbolic FFT size cannot be proven in range")
            return SymSize(max(n.value + size.value, 0), max(n.value + size.value, 0))
        return size

    lo, hi = bound(start, SymSize(0, 0)), bound(stop, n)
    if n.static and lo.static and hi.static:
        lo_v, hi_v = min(lo.value, n.value), min(hi.value, n.value)
        return SymSize(lo_v, lo_v), SymSize(max(hi_v - lo_v, 0), max(hi_v - lo_v, 0))
    if not (proven(lo.value >= 0) and proven(hi.value <= n.value) and proven(lo.value <= hi.value)):
        raise Refusal(
            f"cannot prove the output window [{lo}, {hi}) lies inside the FFT size {n} for every "
            "shape; compile without dynamic=True or slice with bounds derived from n"
        )
    if lo.static and lo.value == 0:
        return lo, hi
    raise Refusal("a symbolic window offset is not supported yet; slice from 0")


def _skip_term(add: Node, tail: Node, operands: list[Operand]) -> tuple[Operand, Node] | None:
    """(operand, D) when ``add`` is tail + signal * D (either order) for a signal of the site."""
    if not facts.is_call(add, facts.ADD_FUNCTIONS, facts.ADD_METHODS):
        return None
    ops = facts.binary_operands(add)
    if ops is None or tail not in ops:
        return None
    other = ops[1] if ops[0] is tail else ops[0]
    if not isinstance(other, Node) or not facts.is_call(other, facts.MUL_FUNCTIONS, facts.MUL_METHODS):
        return None
    pair = facts.binary_operands(other)
    if pair is None or not all(_is_tensor(p) for p in pair):
        return None
    for signal, D in (pair, pair[::-1]):
        signal = strip_exact_upcasts(signal)
        for operand in operands:
            if signal is operand.signal and operand.align is None and example_value(D).is_floating_point():
                return operand, D
    return None


def _same_shape(a: Node, b: Node) -> bool:
    sa, sb = example_value(a).shape, example_value(b).shape
    return len(sa) == len(sb) and all(same(x, y) for x, y in zip(sa, sb))


def _post_gate(mul: Node, tail: Node) -> Node | None:
    if not facts.is_call(mul, facts.MUL_FUNCTIONS, facts.MUL_METHODS):
        return None
    ops = facts.binary_operands(mul)
    if ops is None or tail not in ops:
        return None
    gate = ops[1] if ops[0] is tail else ops[0]
    if gate is tail or not _is_tensor(gate) or not example_value(gate).is_floating_point():
        return None
    return gate


# ---- the whole site ----------------------------------------------------------------------------


def resolve_scale(factors: list, n: SymSize) -> tuple[float, Fraction]:
    """Multiply scalar factors into (constant, power of n); symbolic factors must be n itself."""
    const, power = 1.0, Fraction(0)
    for value, exponent in factors:
        if isinstance(value, SymSize):
            if value.static:
                const *= float(value.value) ** exponent
            elif same(value.value, n.value):
                power += exponent
            else:
                raise Refusal(
                    f"the spectrum is scaled by the symbolic size {value} which is neither a constant "
                    f"nor the FFT size {n}"
                )
        else:
            const *= float(value) ** exponent
    return const, power


def match_site(inverse: Node) -> Match:
    transform = facts.transform_of(inverse)
    if transform is None:
        raise Refusal(
            f"{inverse.target.__name__} is not rewritten yet (convfuse handles rfft/irfft pairs)",
            family="other-fft",
        )
    args = facts.bind(inverse, transform)
    product = args["input"]
    operands, factors, nodes, notes = spectral_product(product)
    u, k = operands
    n = u.n
    if not same(u.n.value, k.n.value):
        raise Refusal(f"the two signals are transformed at different sizes ({u.n} and {k.n})")
    if u.axis != k.axis:
        raise Refusal(f"the two signals are transformed along different axes ({u.axis} and {k.axis})")
    if u.conj and k.conj:
        raise Refusal("both spectra are conjugated (a time-reversed convolution): not supported yet")
    rank = example_value(product).dim()
    axis = args["dim"] - rank if args["dim"] >= 0 else args["dim"]
    if axis != u.axis:
        raise Refusal(f"the inverse transform runs along axis {axis}, the forward ones along {u.axis}")
    if args["n"] is None:
        bins = example_value(product).shape[axis]
        if not same(2 * (bins - 1), n.value):
            raise Refusal(
                f"irfft without n returns 2*(bins-1) = {2 * (bins - 1)} samples, which is not provably the "
                f"forward size {n} (odd sizes): pass n= to irfft"
            )
    else:
        inv_n = SymSize.of_arg(args["n"])
        if inv_n is None or not same(inv_n.value, n.value):
            raise Refusal(f"the inverse size {args['n']} differs from the forward size {n}")

    power = u.power + k.power + facts.norm_power(args["norm"], inverse=True) + facts.CONVOLUTION_NORM_POWER
    factors = factors + u.factors + k.factors
    nodes = [inverse] + nodes + u.nodes + k.nodes
    if u.conj:
        u, k = k, u  # a correlation: the conjugated spectrum is the kernel's

    tail, start, length, D, gate = inverse, SymSize(0, 0), n, None, None
    windowed = False
    stage = 0  # 0: window/scales/upcasts, 1: skip seen, 2: gate seen, 3: final cast
    while stage < 3 and (nxt := _sole_user(tail)) is not None:
        if stage == 0 and not windowed and (window := _window(nxt, tail, axis, n)) is not None:
            start, length = window
            windowed = True
        elif stage == 0 and (inner := scaled(nxt)) is not None and inner[0] is tail:
            factors += inner[1]
        elif (dst := facts.cast_target_dtype(nxt)) is not None:
            if not facts.is_exact_upcast(example_value(tail).dtype, dst):
                stage = 3
        elif stage == 0 and (skip := _skip_term(nxt, tail, [u, k])) is not None and _same_shape(nxt, tail):
            if not same(skip[0].length, length.value):
                break  # the skip adds a signal of another length: not the operator's skip term
            if skip[0] is k:
                u, k = k, u
            D = skip[1]
            stage = 1
        elif stage <= 1 and (g := _post_gate(nxt, tail)) is not None and _same_shape(nxt, tail):
            gate = g
            stage = 2
        else:
            break
        nodes.append(nxt)
        tail = nxt
    if D is None and gate is None:
        # No epilogue to tell them apart: the larger signal is the input, the other the kernel.
        if not u.conj and not k.conj and proven(example_value(k.signal).numel() > example_value(u.signal).numel()):
            u, k = k, u
    if u.conj:
        raise Refusal("the input's spectrum is conjugated and the skip term binds the input: not supported yet")
    scale, power_extra = resolve_scale(factors, n)
    power += power_extra
    if n.static and power:
        scale, power = scale * float(n.value) ** power, Fraction(0)  # one exact constant
    return Match(
        inverse=inverse, tail=tail, u=u, k=k, n=n, axis=axis, start=start, length=length, scale=scale,
        power=power, out_dtype=example_value(tail).dtype, D=D,
        post_gate=gate, nodes=nodes, notes=notes,
    )
