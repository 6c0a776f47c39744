"""Multi-axis FFT convolutions: ``irfft2(rfft2(x) * rfft2(k))`` and GFNet's global filters.

The same proof as in 1-D (``match``) over a tuple of axes: both factors are transforms over the
same axes at the same sizes (or a complex parameter spectrum, see ``spectra.given_spectrum``,
whose proof carries over axis by axis), the norm modes and scalar factors multiply into one
constant of N = n1 * ... * nd, and the inverse's sizes are the forward ones.  The result is
one ``torch.ops.convfuse.fft_convnd`` call; only exact upcasts and the final cast are absorbed
after it (windows and gates stay in the graph).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import torch
from torch.fx import Node

from convfuse.passes import facts
from convfuse.passes.algebra import Refusal, is_tensor, resolve_scale, scaled, sole_user, strip_exact_upcasts
from convfuse.passes.sizes import SymSize, example_value, same, spec_value
from convfuse.passes.spectra import Operand, given_spectrum
from convfuse.spec import ConvSpec


@dataclass
class MatchND:
    inverse: Node
    tail: Node
    u: Operand
    k: Operand
    axes: tuple[int, ...]  # negative, ascending
    n: list[SymSize]
    scale: float
    power: Fraction  # of N = prod(n)
    out_dtype: torch.dtype
    nodes: list[Node] = field(default_factory=list)

    @property
    def conj_kernel(self) -> bool:
        return self.k.conj

    constant_kernel = False

    def spec(self) -> ConvSpec:
        signal = example_value(self.u.signal)
        kernel = example_value(self.k.signal if self.k.signal is not None else self.k.spectrum)
        return ConvSpec(
            axis=self.axes, L=[spec_value(signal.shape[a]) for a in self.axes],
            K=[spec_value(kernel.shape[a]) for a in self.axes] if self.k.signal is not None else "spectrum",
            n=[spec_value(s.value) for s in self.n], start=[0] * len(self.axes),
            length=[spec_value(s.value) for s in self.n], scale=self.scale, n_power=float(self.power),
            conj_kernel=self.conj_kernel, out_dtype=self.out_dtype, rank=example_value(self.tail).dim(),
            causal=False, transforms=f"{len(self.axes)}-D rfftn/irfftn",
        )

    def family(self, spec: ConvSpec | None = None) -> str:
        return f"circular-{'correlation' if self.conj_kernel else 'conv'}-{len(self.axes)}d"


def _axes(args: dict, rank: int, name: str) -> tuple[int, ...]:
    dims, sizes = args["dim"], args["s"]
    if dims is None:
        if sizes is None:
            raise Refusal(f"{name} over every axis (dim=None, s=None) includes the batch: not a filter")
        dims = tuple(range(-len(sizes), 0))
    dims = tuple(d - rank if d >= 0 else d for d in (dims if isinstance(dims, (tuple, list)) else (dims,)))
    if len(set(dims)) != len(dims) or list(dims) != sorted(dims):
        raise Refusal(f"{name} over axes {dims}: only distinct axes in increasing order are supported")
    return dims


def _factor(node: Any, axes: tuple[int, ...]) -> tuple[Operand, list[Node]]:
    factors, nodes, conj = [], [], False
    while isinstance(node, Node):
        if (inner := scaled(node)) is not None:
            node, more, used = inner
            factors += more
            nodes += used
        elif facts.is_call(node, facts.CONJ_FUNCTIONS, facts.CONJ_METHODS) and len(node.args) == 1:
            nodes.append(node)  # consumed: erased with the site once nothing else reads it
            conj, node = not conj, node.args[0]
        else:
            break
    if not isinstance(node, Node):
        raise Refusal("a factor of the spectral product is a constant, not a transform")
    transform = facts.multi_axis_transform_of(node)
    if transform is None or transform.inverse:
        given = given_spectrum(node)
        if given is None:
            raise Refusal(f"the spectrum factor `{node.name}` is neither a transform over the same axes nor a "
                          "complex parameter", family="spectral-filter")
        given.conj, given.factors = conj, factors
        return given, nodes
    args = facts.bind(node, transform)
    x = args["input"]
    value = example_value(x)
    if not (isinstance(value, torch.Tensor) and value.is_floating_point()):
        raise Refusal(f"`{node.name}` transforms a non-float signal")
    if _axes(args, value.dim(), transform.name) != axes:
        raise Refusal(f"`{node.name}` transforms other axes than the inverse")
    if args["s"] is None:
        n = [SymSize.of_shape(x, a) for a in axes]
    else:
        n = [SymSize.of_arg(s) for s in args["s"]]
        if any(s is None for s in n):
            raise Refusal(f"`{node.name}`: sizes {args['s']!r} are not integers")
    signal, casts = strip_exact_upcasts(x)
    operand = Operand(signal=signal, n=n, axis=axes, power=facts.norm_power(args["norm"], inverse=False),
                      factors=factors, conj=conj, nodes=[node] + casts)
    return operand, nodes


def match_site_nd(inverse: Node) -> MatchND:
    transform = facts.multi_axis_transform_of(inverse)
    args = facts.bind(inverse, transform)
    product = args["input"]
    rank = example_value(product).dim()
    axes = _axes(args, rank, transform.name)
    prod_factors, nodes = [], []
    while isinstance(product, Node) and (inner := scaled(product)) is not None:
        product, more, used = inner
        prod_factors += more
        nodes += used
    if not (isinstance(product, Node) and facts.is_call(product, facts.MUL_FUNCTIONS, facts.MUL_METHODS)):
        raise Refusal(f"the input of {transform.name} is not a product of two spectra")
    pair = facts.binary_operands(product)
    if pair is None or not all(is_tensor(p) for p in pair):
        raise Refusal(f"the input of {transform.name} is not a product of two spectra")
    (a, a_nodes), (b, b_nodes) = (_factor(p, axes) for p in pair)
    u, k = (b, a) if a.spectrum is not None or (a.conj and b.spectrum is None) else (a, b)
    if u.spectrum is not None:
        raise Refusal("both factors are parameter spectra: no input signal")
    if u.conj and k.conj:
        raise Refusal("both spectra are conjugated: not supported yet")
    if u.conj:
        u, k = k, u
    n = u.n
    shape = example_value(product).shape
    last_bins = shape[axes[-1]]
    if k.spectrum is not None:
        kshape = example_value(k.spectrum).shape
        expected = [s.value for s in n[:-1]] + [n[-1].value // 2 + 1]
        if len(kshape) < len(axes) or not all(same(kshape[a], e) for a, e in zip(axes, expected)):
            raise Refusal("the spectrum parameter's bins are not exactly the transform's (a broadcast filter)")
        k.n = n
    elif not all(same(x.value, y.value) for x, y in zip(n, k.n)):
        raise Refusal("the two signals are transformed at different sizes")
    inverse_n = args["s"]
    if inverse_n is None:
        inverse_sizes = [shape[a] for a in axes[:-1]] + [2 * (last_bins - 1)]
        if not all(same(x, y.value) for x, y in zip(inverse_sizes, n)):
            raise Refusal(f"{transform.name} without s is not provably the forward sizes (odd last size): pass s=")
    else:
        sizes = [SymSize.of_arg(s) for s in inverse_n]
        if any(s is None for s in sizes) or not all(same(x.value, y.value) for x, y in zip(sizes, n)):
            raise Refusal(f"the inverse sizes {inverse_n} differ from the forward sizes")

    tail, epi_nodes = inverse, []
    while (nxt := sole_user(tail)) is not None and (dst := facts.cast_target_dtype(nxt)) is not None:
        epi_nodes.append(nxt)
        tail = nxt
        if not facts.is_exact_upcast(example_value(nxt.args[0]).dtype, dst):
            break
    power = u.power + k.power + facts.norm_power(args["norm"], inverse=True) + facts.CONVOLUTION_NORM_POWER
    total = 1
    for s in n:
        total = total * s.value
    N = SymSize(total, None)
    scale, extra = resolve_scale(prod_factors + u.factors + k.factors, N)
    power += extra
    if isinstance(total, int) and power:
        scale, power = scale * float(total) ** power, Fraction(0)
    return MatchND(
        inverse=inverse, tail=tail, u=u, k=k, axes=axes, n=n, scale=scale, power=power,
        out_dtype=example_value(tail).dtype, nodes=[inverse] + nodes + [product] + a_nodes + b_nodes + u.nodes + k.nodes + epi_nodes,
    )
