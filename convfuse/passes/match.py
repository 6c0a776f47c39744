"""Prove that the value of one inverse FFT is a convolution, and say exactly which.

One matcher for every rank: ``match_site(inverse)`` composes the walk back to the two
transformed signals (``spectra``) with the walk forward through window and epilogue
(``epilogue``), accounts for every scale, checks sizes, axes and sidedness over the tuple of
transformed axes (a one-axis transform is the one-axis case), and passes the site invariants
every rewrite needs (``invariants``).  It returns a ``Match`` (what the fused operator computes
and which nodes it replaces) or raises ``Refusal`` with a reason a user can act on.

What only one axis has yet: windows, rolls, skip terms and gates after the inverse, pre-gates,
summed (bidirectional) kernels, einsum products and full complex ``fft``/``ifft.real`` pairs;
a multi-axis site is the cyclic convolution over its axes, cast at the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

import torch
from torch.fx import Node

from convfuse.passes import facts
from convfuse.passes.algebra import (
    Refusal, is_float_tensor, is_module_state, resolve_scale, sole_user, strip_exact_upcasts,
)
from convfuse.passes.epilogue import walk_epilogue
from convfuse.passes.invariants import check_site
from convfuse.passes.sizes import SymSize, example_value, proven, same, spec_value
from convfuse.passes.spectra import FULL, ONE_SIDED, LastAxis, Operand, spectral_product
from convfuse.spec import ConvSpec

__all__ = ["Match", "Refusal", "match_site"]


@dataclass
class Match(LastAxis):
    """What one site computes, as the fused operator's arguments and the nodes it replaces."""

    inverse: Node
    tail: Node  # the node whose value the fused operator replaces
    u: Operand
    k: Operand
    sizes: tuple  # SymSize per transformed axis
    axes: tuple  # negative, ascending, in the output's layout
    start: SymSize  # window of the last axis (the whole period for a multi-axis site)
    length: SymSize
    scale: float
    power: Fraction  # of N, the product of the sizes
    out_dtype: torch.dtype
    D: Node | None = None
    D_align: tuple | None = None
    pre_gate: Node | None = None
    post_gate: Node | None = None
    kernel_weights: list[float] = field(default_factory=list)  # per term of a summed kernel
    roles: str | None = None  # why ``k`` is the kernel (provenance), None when nothing says
    nodes: list[Node] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    out_steps: list = field(default_factory=list)  # layout ops on the result (LayoutStep), replayed on the output
    windows: list | None = None  # several axes: (start, length) SymSizes per axis; None: the whole period

    def nd_window(self) -> tuple[list, list]:
        """(starts, lengths) per transformed axis of a multi-axis site, as SymSizes."""
        if self.windows is None:
            return [SymSize.const(0)] * len(self.sizes), list(self.sizes)
        return [w[0] for w in self.windows], [w[1] for w in self.windows]

    @property
    def result(self) -> Node:
        """The node whose value the operator computes, in the site's layout (before ``out_steps``;
        the tail when there are none)."""
        return self.out_steps[0].node.args[0] if self.out_steps else self.tail

    @property
    def rank(self) -> int:
        return example_value(self.result).dim()

    @property
    def multi_axis(self) -> bool:
        return len(self.axes) > 1

    def policy_obstacle(self, policy) -> str | None:
        """Why ``policy`` (not exact) cannot apply here, None when it may."""
        if self.multi_axis:
            return (f"policy {policy} applies to 1-D convolutions; this {len(self.axes)}-D convolution is left to "
                    "eager (ask for exact to fuse it)")
        return None

    @property
    def conj_kernel(self) -> bool:
        return self.k.conj

    @property
    def constant_kernel(self) -> bool:
        if self.multi_axis:
            # a multi-axis kernel is cached only as a given spectrum, which the matcher admits
            # only as module state read through views (spectra.given_spectrum)
            return self.k.spectrum is not None
        return not self.k.built and self.k.align is None and not self.k.layout and is_module_state(self.k.signal)

    def spec(self) -> ConvSpec:
        if self.multi_axis:
            return self._spec_multi_axis()
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
            out_dtype=self.out_dtype, rank=self.rank, causal=causal,
            constant_kernel=self.constant_kernel, transforms=self.notes[0] if self.notes else "rfft/irfft",
            notes=list(self.notes[1:]),
        )

    def _spec_multi_axis(self) -> ConvSpec:
        signal = example_value(self.u.signal)
        kernel = example_value(self.k.signal if self.k.signal is not None else self.k.spectrum)
        return ConvSpec(
            axis=self.axes, L=[spec_value(signal.shape[a]) for a in self.axes],
            K=[spec_value(kernel.shape[a]) for a in self.axes] if self.k.signal is not None else "spectrum",
            n=[spec_value(s.value) for s in self.sizes], start=[spec_value(s.value) for s in self.nd_window()[0]],
            length=[spec_value(s.value) for s in self.nd_window()[1]], scale=self.scale, n_power=float(self.power),
            conj_kernel=self.conj_kernel, out_dtype=self.out_dtype, rank=self.rank,
            causal=False, transforms=f"{len(self.axes)}-D rfftn/irfftn",
        )

    def family(self, spec: ConvSpec | None = None) -> str:
        if self.multi_axis:
            return f"circular-{'correlation' if self.conj_kernel else 'conv'}-{len(self.axes)}d"
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


def _bins(size: SymSize, last: bool, sided: str):
    """Bins a spectrum holds along an axis of that size (only the last axis is halved)."""
    return size.value // 2 + 1 if last and sided == ONE_SIDED else size.value


def _resolve_given_spectrum(k: Operand, u: Operand) -> None:
    """A parameter spectrum takes the input's sizes and axes; its bins must be exactly the spectrum's."""
    value = example_value(k.spectrum)
    if value.dim() < -min(u.axes):
        raise Refusal(f"the spectrum parameter `{k.spectrum.name}` has no axis {min(u.axes)}")
    for i, (axis, size) in enumerate(zip(u.axes, u.sizes)):
        bins = _bins(size, i == len(u.axes) - 1, u.sided)
        if not same(value.shape[axis], bins):
            raise Refusal(
                f"the spectrum parameter `{k.spectrum.name}` has {value.shape[axis]} bins along axis {axis}, "
                f"not the {bins} of a size-{size} spectrum (a broadcast filter is not supported)"
            )
    k.sizes, k.axes, k.sided = u.sizes, u.axes, u.sided


def _sizes_text(sizes) -> str:
    return " x ".join(str(s) for s in sizes)


def _check_sizes(inverse: Node, args: dict, u: Operand, k: Operand, product: Node) -> tuple[int, ...]:
    """The inverse runs over the forward transforms' axes at their sizes, on spectra of its sidedness."""
    transform = facts.transform_of(inverse)
    if u.axes != k.axes:
        raise Refusal(f"the two signals are transformed along different axes ({u.axes} and {k.axes})")
    if not all(same(a.value, b.value) for a, b in zip(u.sizes, k.sizes)):
        raise Refusal(f"the two signals are transformed at different sizes ({_sizes_text(u.sizes)} and "
                      f"{_sizes_text(k.sizes)})")
    sided = ONE_SIDED if transform.one_sided else FULL
    if u.sided != sided or k.sided != sided:
        raise Refusal(f"{transform.name} needs {sided} spectra; the product has {u.sided} and {k.sided} ones")
    return check_inverse(inverse, args, product, u.axes, u.sizes)


def check_inverse(inverse: Node, args: dict, product: Node, axes_expected: tuple, sizes: tuple) -> tuple[int, ...]:
    """The inverse runs along ``axes_expected`` of the product (negative) at ``sizes``."""
    transform = facts.transform_of(inverse)
    sided = ONE_SIDED if transform.one_sided else FULL
    rank = example_value(product).dim()
    axes = facts.transform_axes(args, rank, transform, f"`{inverse.name}`")
    if axes != tuple(axes_expected):
        raise Refusal(f"the inverse transform runs along {axes}, the forward ones along {tuple(axes_expected)}")
    u_sizes = sizes
    given = facts.size_args(args, transform)
    if given is None:
        shape = example_value(product).shape
        inverse_sizes = [shape[a] for a in axes]
        if sided == ONE_SIDED:
            inverse_sizes[-1] = 2 * (inverse_sizes[-1] - 1)
        if not all(same(x, y.value) for x, y in zip(inverse_sizes, u_sizes)):
            what = "n" if not transform.multi_axis else "s"
            raise Refusal(
                f"{transform.name} without {what} returns {_sizes_text(inverse_sizes)} samples, which is not provably "
                f"the forward size {_sizes_text(u_sizes)} (odd sizes): pass {what}= to {transform.name}"
            )
    else:
        inverse_sizes = [x if isinstance(x, SymSize) else SymSize.of_arg(x) for x in given]
        if len(inverse_sizes) != len(axes) or any(x is None for x in inverse_sizes) or not all(
            same(x.value, y.value) for x, y in zip(inverse_sizes, u_sizes)
        ):
            raise Refusal(f"the inverse size {given if len(given) > 1 else given[0]} differs from the forward size "
                          f"{_sizes_text(u_sizes)}")
    return axes


def _assign_roles(u: Operand, k: Operand, epi) -> tuple[Operand, Operand, str | None]:
    """(u, k, why k is the kernel); None when provenance disagrees (see ``_computational_roles``):
    the operator's arrangement is still right, but no policy may act on "the kernel"."""
    u, k, roles = _computational_roles(u, k, epi)
    if roles and not k.built and is_module_state(u.signal) and not is_module_state(k.signal):
        return u, k, None  # e.g. the parameter is conjugated or multiplies the skip term
    return u, k, roles


def _computational_roles(u: Operand, k: Operand, epi) -> tuple[Operand, Operand, str | None]:
    """(u, k, why k is the kernel) from provenance, never from sizes.

    The skip term binds the input; a built, given or conjugated spectrum is the kernel's
    (``_order_operands``); module state is the kernel when the other signal is not; a gated
    signal (x * v, the pre-gate) is the input; otherwise the product's second factor is the
    kernel (``u_f * k_f``, as published models write it) unless it is the larger signal: then
    nothing proves a role, ``roles`` is None, and no policy that acts on "the kernel" applies
    (the convolution is symmetric, and so is the operator).
    """
    if epi.skip_operand is k:
        if k.conj or k.built:
            raise Refusal("the skip term adds the kernel's signal, not the input's: not supported")
        return k, u, "the skip term adds the other signal"
    if epi.skip_operand is u:
        return u, k, "the skip term adds the other signal"
    if k.built:
        return u, k, "it is built from spectra"
    if k.conj:
        return u, k, "its spectrum is conjugated"
    u_state, k_state = is_module_state(u.signal), is_module_state(k.signal)
    if u_state != k_state:
        return (k, u, "it is module state") if u_state else (u, k, "it is module state")
    u_gated, k_gated = (facts.is_call(o.signal, facts.MUL_FUNCTIONS, facts.MUL_METHODS) and o.align is None
                        and not o.layout
                        for o in (u, k))
    if u_gated != k_gated:
        return (k, u, "the other signal is gated") if k_gated else (u, k, "the other signal is gated")
    if proven(example_value(k.signal).numel() > example_value(u.signal).numel()):
        # The product's order says k, its size says otherwise: no role is proven.  The operator
        # is symmetric, and the smaller operand is cheaper as its "k".
        return k, u, None
    return u, k, "it is the product's second factor"


def _pre_gate(u: Operand, site_nodes: set[Node]) -> tuple[Node, Node] | None:
    """(x, v) when the input signal is x * v used by nothing but this site: a fusable gate."""
    signal = u.signal
    if u.align is not None or u.layout or not facts.is_call(signal, facts.MUL_FUNCTIONS, facts.MUL_METHODS):
        return None
    pair = facts.binary_operands(signal)
    if pair is None or not all(is_float_tensor(p) for p in pair):
        return None
    if example_value(signal).dtype not in (torch.float32, torch.float64):
        return None  # eager multiplies in half precision; the operator would in fp32
    if not all(user in site_nodes for user in signal.users):
        return None
    x, v = (strip_exact_upcasts(p)[0] for p in pair)
    return (x, v) if proven(example_value(x).numel() >= example_value(v).numel()) else (v, x)


def operator_reads(m: Match) -> list:
    """Every value the fused operator (and the kernel it builds) reads."""
    kernel = [m.k.signal, m.k.spectrum] + [term.signal for term in m.k.terms or []]
    return [m.u.signal, m.D, m.pre_gate, m.post_gate, *kernel]


def _product_size(sizes: tuple) -> SymSize:
    """N, the product of the sizes: the period whose powers the norm modes multiply by."""
    if len(sizes) == 1:
        return sizes[0]
    return SymSize(math.prod(s.value for s in sizes), None)


def match_site(inverse: Node) -> Match:
    transform = facts.transform_of(inverse)
    if transform is None:
        name = getattr(inverse.target, "__name__", str(inverse.target))
        raise Refusal(f"{name} is not rewritten yet (convfuse handles rfft/irfft, rfftn/irfftn and fft/ifft pairs)",
                      family="other-fft")
    args = facts.bind(inverse, transform)
    from convfuse.passes.mixing import match_mixing  # it reuses this module's checks

    if (mixed := match_mixing(inverse, args)) is not None:
        return mixed  # a contraction over channels: the channel-mixing operators
    operands, factors, nodes, notes = spectral_product(args["input"])
    u, k = _order_operands(*operands)
    axes = _check_sizes(inverse, args, u, k, args["input"])
    sizes = u.sizes
    head, head_nodes = _inverse_head(inverse, u.sided)
    epi = walk_epilogue(head, axes, sizes, [u, k])
    u, k, roles = _assign_roles(u, k, epi)

    N = _product_size(sizes)
    power = u.power + k.power + facts.norm_power(args["norm"], inverse=True) + facts.CONVOLUTION_NORM_POWER
    wide = u.dtype == torch.float64 and all(t.dtype in (torch.float64, None) for t in k.terms or [k])
    scale, extra = resolve_scale(factors + u.factors + k.factors + epi.factors, N, wide)
    power += extra
    # A summed kernel: each term's constant becomes its weight; their powers of n must agree.
    term_scales = [resolve_scale(term.factors, N, wide) for term in k.terms or []]
    term_powers = {term.power + p for term, (_, p) in zip(k.terms or [], term_scales)}
    if len(term_powers) > 1:
        raise Refusal("the summed kernel spectra carry different powers of the symbolic FFT size")
    weights = [const for const, _ in term_scales]
    power += term_powers.pop() if term_powers else 0
    if N.static and power:
        scale, power = scale * float(N.value) ** power, Fraction(0)  # one exact constant

    site_nodes = [inverse] + head_nodes + nodes + u.nodes + k.nodes + epi.nodes
    first = "rfft/irfft" if u.sided == ONE_SIDED else "fft/ifft.real"
    m = Match(
        inverse=inverse, tail=epi.tail, u=u, k=k, sizes=sizes, axes=axes, start=epi.start, length=epi.length,
        scale=scale, power=power, out_dtype=example_value(epi.tail).dtype, D=epi.D, D_align=epi.D_align,
        post_gate=epi.post_gate, kernel_weights=weights, nodes=site_nodes, roles=roles, out_steps=epi.out_steps,
        windows=epi.windows,
        notes=[first if len(axes) == 1 else f"{len(axes)}-D {transform.name}"] + notes,
    )
    if len(axes) == 1 and (gated := _pre_gate(u, set(site_nodes))) is not None:
        m.nodes.append(u.signal)
        u.signal, m.pre_gate = gated
    if not proven(m.start.value < m.n.value):
        raise Refusal(f"cannot prove the window start {m.start} is below the FFT size {m.n}")
    check_site(m.nodes, m.tail, operator_reads(m))
    return m
