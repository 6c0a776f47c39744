"""Prove that the value of one inverse FFT is a convolution, and say exactly which.

``match_site(inverse)`` composes the walk back to the two transformed signals (``spectra``)
with the walk forward through window and epilogue (``epilogue``), accounts for every scale,
checks sizes, axes and sidedness, and makes sure nothing in between is mutated in place.  It
returns a ``Match`` (what the fused operator computes and which nodes it replaces) or raises
``Refusal`` with a reason a user can act on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

import torch
from torch.fx import Node

from convfuse.passes import facts
from convfuse.passes.algebra import Refusal, is_float_tensor, is_module_state, mutates, resolve_scale, sole_user
from convfuse.passes.epilogue import walk_epilogue
from convfuse.passes.sizes import SymSize, example_value, proven, same, spec_value
from convfuse.passes.spectra import FULL, ONE_SIDED, Operand, spectral_product
from convfuse.spec import ConvSpec

__all__ = ["Match", "Refusal", "match_site"]


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
    D_align: tuple | None = None
    pre_gate: Node | None = None
    post_gate: Node | None = None
    kernel_weights: list[float] = field(default_factory=list)  # per term of a summed kernel
    nodes: list[Node] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def conj_kernel(self) -> bool:
        return self.k.conj

    @property
    def constant_kernel(self) -> bool:
        return not self.k.built and self.k.align is None and is_module_state(self.k.signal)

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
            pre_gate=self.pre_gate is not None, post_gate=self.post_gate is not None,
            out_dtype=self.out_dtype, rank=example_value(self.tail).dim(), causal=causal,
            constant_kernel=self.constant_kernel, transforms=self.notes[0] if self.notes else "rfft/irfft",
            notes=list(self.notes[1:]),
        )

    def family(self, spec: ConvSpec | None = None) -> str:
        spec = spec or self.spec()
        kind = {True: "causal", False: "circular", None: "cyclic"}[spec.causal]
        return f"{kind}-{'correlation' if self.conj_kernel else 'conv'}"


def _inverse_head(inverse: Node, sided: str) -> tuple[Node, list[Node]]:
    """The real-valued result of the inverse: irfft itself, or ifft(...).real."""
    if sided == ONE_SIDED:
        return inverse, []
    real = sole_user(inverse)
    if real is None or not facts.is_real_part(real):
        raise Refusal("ifft of a product of full spectra is a convolution only through .real", family="other-fft")
    return real, [real]


def _order_operands(a: Operand, b: Operand) -> tuple[Operand, Operand]:
    """(u, k): a summed, given or conjugated spectrum is the kernel's."""
    if a.built and b.built:
        raise Refusal("neither spectrum is the transform of an input signal")
    if a.built or (a.conj and not b.built):
        a, b = b, a
    if b.spectrum is not None:
        _resolve_given_spectrum(b, a)
    if a.conj and b.conj:
        raise Refusal("both spectra are conjugated (a time-reversed convolution): not supported yet")
    return a, b


def _resolve_given_spectrum(k: Operand, u: Operand) -> None:
    """A parameter spectrum takes the input's size and axis; its bins must be exactly the spectrum's."""
    value = example_value(k.spectrum)
    if value.dim() < -u.axis:
        raise Refusal(f"the spectrum parameter `{k.spectrum.name}` has no axis {u.axis}")
    bins = u.n.value // 2 + 1 if u.sided == ONE_SIDED else u.n.value
    if not same(value.shape[u.axis], bins):
        raise Refusal(
            f"the spectrum parameter `{k.spectrum.name}` has {value.shape[u.axis]} bins along axis {u.axis}, "
            f"not the {bins} of a size-{u.n} spectrum (a broadcast filter is not supported)"
        )
    k.n, k.axis, k.sided = u.n, u.axis, u.sided


def _check_sizes(inverse: Node, args: dict, u: Operand, k: Operand, product: Node) -> int:
    transform = facts.transform_of(inverse)
    n = u.n
    if not same(u.n.value, k.n.value):
        raise Refusal(f"the two signals are transformed at different sizes ({u.n} and {k.n})")
    if u.axis != k.axis:
        raise Refusal(f"the two signals are transformed along different axes ({u.axis} and {k.axis})")
    sided = ONE_SIDED if transform.one_sided else FULL
    if u.sided != sided or k.sided != sided:
        raise Refusal(f"{transform.name} needs {sided} spectra; the product has {u.sided} and {k.sided} ones")
    rank = example_value(product).dim()
    axis = args["dim"] - rank if args["dim"] >= 0 else args["dim"]
    if axis != u.axis:
        raise Refusal(f"the inverse transform runs along axis {axis}, the forward ones along {u.axis}")
    if args["n"] is None:
        bins = example_value(product).shape[axis]
        inverse_size = 2 * (bins - 1) if sided == ONE_SIDED else bins
        if not same(inverse_size, n.value):
            raise Refusal(
                f"{transform.name} without n returns {inverse_size} samples, which is not provably the forward "
                f"size {n} (odd sizes): pass n= to {transform.name}"
            )
    else:
        inverse_n = SymSize.of_arg(args["n"])
        if inverse_n is None or not same(inverse_n.value, n.value):
            raise Refusal(f"the inverse size {args['n']} differs from the forward size {n}")
    return axis


def _pre_gate(u: Operand, site_nodes: set[Node]) -> tuple[Node, Node] | None:
    """(x, v) when the input signal is x * v used by nothing but this site: a fusable gate."""
    signal = u.signal
    if u.align is not None or not facts.is_call(signal, facts.MUL_FUNCTIONS, facts.MUL_METHODS):
        return None
    pair = facts.binary_operands(signal)
    if pair is None or not all(is_float_tensor(p) for p in pair):
        return None
    if not all(user in site_nodes for user in signal.users):
        return None
    x, v = pair
    return (x, v) if proven(example_value(x).numel() >= example_value(v).numel()) else (v, x)


def _check_not_mutated(m: Match) -> None:
    """Refuse when anything between the site's first read and its result writes in place.

    The fused operator reads its inputs where the result was, not where the transforms were;
    an in-place write in between (to the input, the kernel, or a spectrum) would change what
    it reads.  The site's own in-place multiply is accounted for already.
    """
    graph_nodes = list(m.tail.graph.nodes)
    position = {node: i for i, node in enumerate(graph_nodes)}
    first, last = min(position[node] for node in m.nodes), position[m.tail]
    own = set(m.nodes)
    for node in graph_nodes[first:last]:
        if node not in own and mutates(node):
            raise Refusal(
                f"`{node.name}` writes in place between the transforms and the result; the fused operator "
                "would read different values, so the site is left to eager"
            )


def match_site(inverse: Node) -> Match:
    transform = facts.transform_of(inverse)
    if transform is None:
        name = getattr(inverse.target, "__name__", str(inverse.target))
        raise Refusal(f"{name} is not rewritten yet (convfuse handles 1-D rfft/irfft and fft/ifft pairs)",
                      family="other-fft")
    args = facts.bind(inverse, transform)
    operands, factors, nodes, notes = spectral_product(args["input"])
    u, k = _order_operands(*operands)
    axis = _check_sizes(inverse, args, u, k, args["input"])
    n = u.n
    head, head_nodes = _inverse_head(inverse, u.sided)
    epi = walk_epilogue(head, axis, n, [u, k])
    if epi.skip_operand is k:
        if k.conj or k.built:
            raise Refusal("the skip term adds the kernel's signal, not the input's: not supported")
        u, k = k, u
    elif epi.D is None and epi.post_gate is None and not k.conj and not k.built:
        # Nothing tells them apart: the larger signal is the input, the other the kernel.
        if proven(example_value(k.signal).numel() > example_value(u.signal).numel()):
            u, k = k, u

    power = u.power + k.power + facts.norm_power(args["norm"], inverse=True) + facts.CONVOLUTION_NORM_POWER
    scale, extra = resolve_scale(factors + u.factors + k.factors + epi.factors, n)
    power += extra
    # A summed kernel: each term's constant becomes its weight; their powers of n must agree.
    term_scales = [resolve_scale(term.factors, n) for term in k.terms or []]
    term_powers = {term.power + p for term, (_, p) in zip(k.terms or [], term_scales)}
    if len(term_powers) > 1:
        raise Refusal("the summed kernel spectra carry different powers of the symbolic FFT size")
    weights = [const for const, _ in term_scales]
    power += term_powers.pop() if term_powers else 0
    if n.static and power:
        scale, power = scale * float(n.value) ** power, Fraction(0)  # one exact constant

    site_nodes = [inverse] + head_nodes + nodes + u.nodes + k.nodes + epi.nodes
    m = Match(
        inverse=inverse, tail=epi.tail, u=u, k=k, n=n, axis=axis, start=epi.start, length=epi.length,
        scale=scale, power=power, out_dtype=example_value(epi.tail).dtype, D=epi.D, D_align=epi.D_align,
        post_gate=epi.post_gate, kernel_weights=weights, nodes=site_nodes,
        notes=[f"{'rfft/irfft' if u.sided == ONE_SIDED else 'fft/ifft.real'}"] + notes,
    )
    if (gated := _pre_gate(u, set(site_nodes))) is not None:
        m.nodes.append(u.signal)
        u.signal, m.pre_gate = gated
    if not proven(m.start.value < n.value):
        raise Refusal(f"cannot prove the window start {m.start} is below the FFT size {n}")
    _check_not_mutated(m)
    return m
