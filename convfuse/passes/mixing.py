"""Channel-mixing FFT convolutions: a contraction over a channel axis, elementwise in frequency.

Two products the depthwise matcher refuses are convolutions that also mix channels,
y[b, o] = sum_c x[b, c] (*) w[o, c] along the transformed axes:

    irfftn(einsum('bcf,ocf->bof', rfftn(x), rfftn(w)))              -> fft_conv_mix
        (an FFT conv1d/conv2d layer; w conjugated for conv1d's cross-correlation)
    out = zeros(B, Co, *bins); out[block_j] = einsum('bi..,io..->bo..', rfftn(x)[block_j], W_j)
    irfftn(out)                                                       -> fft_spectral_mix
        (a Fourier-neural-operator spectral layer: complex weights on kept modes)
    irfftn(einsum('bif,iof->bof', rfftn(x), W))                        -> fft_spectral_mix, one block

The same proofs as the depthwise matcher apply (``match``): both transforms at the inverse's
sizes and axes, every scale accounted for, the site invariants.  What is particular here: the
einsum's letters say which axis is summed (the channel), which are frequency (the transformed
axes, the same letter in both operands and the output) and which are batch or output channels;
the kernel is module state when one side is, else the product's second factor.  Operands are
viewed in the operators' layouts by permutes of the signals (layout ops commute with the
transforms), and the output by the inverse permute.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from fractions import Fraction

import torch
from torch.fx import Node

from convfuse.passes import facts
from convfuse.passes.algebra import Refusal, is_module_state, resolve_scale, scaled, slice_bounds, slice_index
from convfuse.passes.contraction import EinsumForm, einsum_form
from convfuse.passes.einsum import Contraction, channel_contraction
from convfuse.passes.epilogue import walk_epilogue
from convfuse.passes.invariants import check_site
from convfuse.passes.sizes import SymSize, example_value, proven, same, spec_value
from convfuse.passes.spectra import ONE_SIDED, LastAxis, Operand, comes_after, spectrum_operand
from convfuse.spec import ConvSpec

FAMILY = "channel-contraction"
_BUFFERS = {torch.zeros, torch.zeros_like}
_BUFFER_METHODS = {"new_zeros"}


@dataclass
class MixMatch(LastAxis):
    """A proven channel-mixing site, as the arguments of one of the two mixing operators."""

    kind: str  # "conv": fft_conv_mix; "modes": fft_spectral_mix
    inverse: Node
    tail: Node
    u: Operand  # the input's spectrum
    k: Operand  # the kernel's (for "modes", a stand-in holding the first weight as its spectrum)
    u_perm: list  # the input signal viewed (*batch, C_in, *transformed)
    k_perm: list | None  # the weight viewed (C_out, C_in, *taps): conv; per weight (C_in, C_out, *modes): modes
    out_perm: list  # the operator's (*batch, C_out, *transformed) viewed in the site's layout
    sizes: tuple
    axes: tuple  # negative, in the site's output layout
    start: SymSize
    length: SymSize
    scale: float
    power: Fraction
    out_dtype: torch.dtype
    equation: str
    weights: list = field(default_factory=list)  # modes: the complex weight per block
    weight_perms: list = field(default_factory=list)
    lows: list = field(default_factory=list)  # modes: block starts, d per block
    bias: Node | None = None
    windows: list | None = None  # several axes: (start, length) per axis
    groups: int = 1  # conv: a group index, flattened with the channels on both sides
    batch_rank: int = 0  # the input's batch axes before its channels (where groups are flattened)
    nodes: list[Node] = field(default_factory=list)
    out_steps: list = field(default_factory=list)
    roles: str | None = None

    multi_axis = True  # no 1-D policy or CPU cost model applies
    D = pre_gate = post_gate = None

    @property
    def result(self) -> Node:
        return self.out_steps[0].node.args[0] if self.out_steps else self.tail

    @property
    def conj_kernel(self) -> bool:
        return self.k.conj

    def window(self) -> tuple[list, list]:
        """(starts, lengths) per transformed axis, as SymSizes."""
        if len(self.axes) == 1:
            return [self.start], [self.length]
        if self.windows is None:
            return [SymSize.const(0)] * len(self.sizes), list(self.sizes)
        return [w[0] for w in self.windows], [w[1] for w in self.windows]

    def cropped_axes(self) -> list[int]:
        """The transformed axes (0..d-1) whose window is not the whole period."""
        starts, lengths = self.window()
        return [i for i, (a, b, n) in enumerate(zip(starts, lengths, self.sizes))
                if not (a.static and a.value == 0 and same(b.value, n.value))]

    @property
    def grouped(self) -> bool:
        """A group index on both sides: the weight is (G, Co, Ci, *K) after ``k_perm``."""
        return self.kind == "conv" and len(self.k_perm) == len(self.axes) + 3

    @property
    def constant_kernel(self) -> bool:
        if self.kind == "modes":
            return all(is_module_state(_base(w)) for w in self.weights)
        return is_module_state(self.k.signal)

    def family(self, spec: ConvSpec | None = None) -> str:
        d = len(self.axes)
        if self.kind == "modes":
            return f"fno-spectral-{d}d"
        return f"channel-mixing-{'correlation' if self.conj_kernel else 'conv'}-{d}d"

    def policy_obstacle(self, policy) -> str:
        return (f"policy {policy} applies to depthwise 1-D convolutions; this channel-mixing convolution is left "
                "to eager (ask for exact to fuse it)")

    def kernel_name(self) -> str:
        return "fft_conv_mix" if self.kind == "conv" else "fft_spectral_mix"

    def spec(self) -> ConvSpec:
        signal = example_value(self.u.signal)
        d = len(self.axes)
        axes = tuple(range(-d, 0))  # the signal's, after u_perm
        L = [spec_value(signal.permute(self.u_perm).shape[a]) for a in axes]
        if self.kind == "conv":
            kernel = example_value(self.k.signal).permute(self.k_perm)
            K = [spec_value(kernel.shape[a]) for a in axes]
            if self.grouped:  # (G, Co, Ci, *K)
                c_in, c_out = kernel.shape[0] * kernel.shape[2], kernel.shape[0] * kernel.shape[1]
            else:
                c_in, c_out = kernel.shape[1], kernel.shape[0]
        else:
            first = example_value(self.weights[0]).permute(self.weight_perms[0])
            K = "modes " + " + ".join("x".join(str(s) for s in example_value(w).permute(p).shape[2:])
                                      for w, p in zip(self.weights, self.weight_perms))
            c_in, c_out = first.shape[0], first.shape[1]
        notes = [f"C_in={spec_value(c_in)} C_out={spec_value(c_out)}"] + (["bias"] if self.bias is not None else []) \
            + ([f"groups={self.groups}"] if self.grouped else [])
        causal = False  # a spectral layer is circular on its grid
        if self.kind == "conv":
            starts, lengths = self.window()
            lu = [signal.permute(self.u_perm).shape[a] for a in axes]
            lk = [example_value(self.k.signal).permute(self.k_perm).shape[a] for a in axes]
            # n >= L + K - 1 holds every lag without aliasing; a convolution's window must also
            # stay inside one period, a correlation's negative lags live at the period's end
            linear = all(proven(s.value >= a + b - 1) and (self.conj_kernel or proven(st.value + ln.value <= s.value))
                         for s, a, b, st, ln in zip(self.sizes, lu, lk, starts, lengths))
            static = all(isinstance(v, int) for v in [*lu, *lk, *(s.value for s in self.sizes)])
            causal = True if linear else (False if static else None)
        one = d == 1
        return ConvSpec(
            axis=self.axes[0] if one else self.axes, L=L[0] if one else L, K=K[0] if one and self.kind == "conv" else K,
            n=spec_value(self.n.value) if one else [spec_value(s.value) for s in self.sizes],
            start=spec_value(self.start.value) if one else [spec_value(s.value) for s in self.window()[0]],
            length=spec_value(self.length.value) if one else [spec_value(s.value) for s in self.window()[1]],
            scale=self.scale, n_power=float(self.power), conj_kernel=self.conj_kernel, out_dtype=self.out_dtype,
            rank=example_value(self.result).dim(), causal=causal, constant_kernel=self.constant_kernel,
            transforms=f"einsum {self.equation!r}", notes=notes,
        )


# Below this many transformed samples per call (input, kernel and output rows times the FFT
# size) the channel-mixing operators' fixed cost is not recovered on CPU: bench/mix.py measured
# 0.56-0.87x of eager at (8, 4, 256) with 16-64 taps (~0.05M samples) and bench/fno.py 0.67x at
# (4, 32, 256) with 16 modes on one thread (~0.07M), against 1.7-3.0x from 6M samples up and
# 35x at 2M (FNO-1D 16 x 64 x 1024).  Nothing was measured between 0.1M and 2M: 1M is the
# conservative line.
MIN_SAMPLES = 1 << 20


def no_gain_reason(m: MixMatch) -> str | None:
    """Why a channel-mixing site stays eager code on CPU at its size, or None (symbolic sizes:
    never refused)."""
    u, out = example_value(m.u.signal), example_value(m.result)
    d = len(m.axes)
    shapes = [u.shape, out.shape] + ([example_value(m.k.signal).shape] if m.kind == "conv" else [])
    sizes = [s.value for s in m.sizes]
    if not all(isinstance(v, int) for shape in shapes for v in shape) or not all(isinstance(v, int) for v in sizes):
        return None
    rows = sum(math.prod(shape) // max(1, math.prod(shape[-d:])) for shape in shapes)
    samples = rows * math.prod(sizes)
    if samples >= MIN_SAMPLES:
        return None
    return (f"no gain at this size: {samples} transformed samples per call, below the {MIN_SAMPLES} from which "
            f"{m.kernel_name()}'s fixed cost is recovered on CPU (bench/mix.py, bench/fno.py); kernel='cpu' rewrites "
            "it anyway")


def mixing_reads(m: MixMatch) -> list:
    return [m.u.signal, m.k.signal, m.bias, *m.weights]


def _base(node: Node) -> Node:
    return node.args[0] if node.op == "call_function" and node.target is torch.view_as_complex else node


# ---- finding the product --------------------------------------------------------------------


def _einsum_behind(node, factors: list, nodes: list) -> EinsumForm | None:
    """The channel contraction under scalar scales of the inverse's input, when it is one: an
    einsum or another spelling of one (matmul over moved axes, real arithmetic: ``einsum_form``)."""
    while isinstance(node, Node) and (inner := scaled(node)) is not None:
        node, more, used = inner
        factors += more
        nodes += used
    form = einsum_form(node)
    return form if form is not None and isinstance(channel_contraction(form.equation, 2), Contraction) else None


def _is_mode_buffer(node) -> bool:
    if not isinstance(node, Node):
        return False
    value = example_value(node)
    made = node.op == "call_function" and node.target in _BUFFERS or node.op == "call_method" \
        and node.target in _BUFFER_METHODS
    return made and isinstance(value, torch.Tensor) and value.is_complex()


def match_mixing(inverse: Node, args: dict) -> MixMatch | None:
    """A channel-mixing site ending at ``inverse``, None when its product is not a channel
    contraction (the depthwise matcher takes it), or Refusal naming the obstacle."""
    product = args["input"]
    if _is_mode_buffer(product):
        return _match_modes(inverse, args, product)
    factors, nodes = [], []
    einsum = _einsum_behind(product, factors, nodes)
    if einsum is None:
        return None
    return _match_conv(inverse, args, einsum, factors, nodes)


# ---- letters --------------------------------------------------------------------------------


def _letters_of_axes(letters: str, axes: tuple) -> str:
    return "".join(letters[a] for a in axes)


def _frequency_letters(c: Contraction, left: Operand, right: Operand | None, inverse: Node) -> str:
    f = _letters_of_axes(c.left, left.axes)
    if right is not None and _letters_of_axes(c.right, right.axes) != f:
        raise Refusal(f"einsum {c.left},{c.right}->{c.output}: the two spectra's frequency axes carry different "
                      "indices: not a convolution", family=FAMILY)
    if c.summed in f:
        raise Refusal(f"einsum {c.left},{c.right}->{c.output} sums over a frequency axis: a contraction over "
                      "frequency is not a convolution", family=FAMILY)
    if any(x not in c.right or x not in c.output for x in f):
        raise Refusal(f"einsum {c.left},{c.right}->{c.output}: a frequency index is missing from the kernel or the "
                      "output", family=FAMILY)
    return f


def _roles(c: Contraction, f: str) -> tuple[str, str, str]:
    """(batch letters in output order, output-channel letter, group letter or "") of ``left`` as
    the input: a letter in both operands and the output that is no frequency is a group."""
    shared = [x for x in c.output if x in c.left and x in c.right and x not in f]
    batch = [x for x in c.output if x in c.left and x not in f and x not in shared]
    channel = [x for x in c.output if x in c.right and x not in c.left]
    if len(shared) > 1:
        raise Refusal(f"einsum {c.left},{c.right}->{c.output}: indices '{''.join(shared)}' are in both operands and "
                      "the output (more than one group index): not rewritten", family=FAMILY)
    if len(channel) != 1:
        raise Refusal(f"einsum {c.left},{c.right}->{c.output}: the kernel side has {len(channel)} output-channel "
                      "indices, not one", family=FAMILY)
    return "".join(batch), channel[0], "".join(shared)


def _same_channels(c: Contraction, a: Node, b: Node, group: str = "") -> None:
    """The summed index (and a group index) has one size in both operands (einsum would
    broadcast a size-1 one, which no channel contraction the operators compute does)."""
    for letter in c.summed + group:
        sa = example_value(a).shape[c.left.index(letter)]
        sb = example_value(b).shape[c.right.index(letter)]
        if not same(sa, sb):
            raise Refusal(f"einsum {c.left},{c.right}->{c.output} broadcasts its index '{letter}' ({sa} against "
                          f"{sb}): not a channel contraction", family=FAMILY)


def _perm(letters: str, order: str) -> list[int]:
    return [letters.index(x) for x in order]


def _swap(c: Contraction) -> Contraction:
    return Contraction(c.right, c.left, c.output, c.summed)


# ---- conv1d / conv2d by FFT -----------------------------------------------------------------


def _match_conv(inverse: Node, args: dict, einsum: EinsumForm, factors: list, nodes: list) -> MixMatch:
    from convfuse.passes.match import check_inverse  # the depthwise matcher's own check

    equation, a, b = einsum.equation, einsum.left, einsum.right
    c = channel_contraction(equation, 2)
    einsum_letters = c.left
    left, right = spectrum_operand(a), spectrum_operand(b)
    if right.spectrum is not None and left.spectrum is None:
        return _match_modes_full(inverse, args, einsum, factors, nodes, c, left, right)
    if left.spectrum is not None:
        left, right, c = right, left, _swap(c)
        return _match_modes_full(inverse, args, einsum, factors, nodes, c, left, right)
    for o in (left, right):
        if o.built or o.layout or o.align is not None:
            raise Refusal(f"einsum {equation!r}: a spectrum that is summed or passes through layout ops before a "
                          "channel contraction: not rewritten yet", family=FAMILY)
    # the kernel: module state against a non-state input, else the second factor
    if is_module_state(left.signal) and not is_module_state(right.signal) or left.conj and not right.conj:
        left, right, c = right, left, _swap(c)
    if left.conj:
        raise Refusal(f"einsum {equation!r} conjugates the input's spectrum: not rewritten yet", family=FAMILY)
    f = _frequency_letters(c, left, right, inverse)
    if len([x for x in c.right if x in c.output and x not in c.left]) != 1 and \
            len([x for x in c.left if x in c.output and x not in c.right]) == 1 and not right.conj:
        left, right, c = right, left, _swap(c)  # only the other factor has one output-channel index
    if left.conj:
        # conj(X) * K is the time reversal of the correlation the operator computes with the
        # roles swapped: only a conjugated kernel is a correlation
        raise Refusal(f"einsum {equation!r} conjugates the spectrum that takes the input's role: not rewritten",
                      family=FAMILY)
    batch, channel, group = _roles(c, f)
    a_is_left = c.left == einsum_letters  # the swaps above may have exchanged the roles
    left_node, right_node = (a, b) if a_is_left else (b, a)
    _same_channels(c, left_node, right_node, group)
    if len(c.right) != len(f) + 2 + len(group):
        raise Refusal(f"einsum {equation!r}: the kernel has axes besides its group, two channels and frequency",
                      family=FAMILY)
    groups = example_value(right_node).shape[c.right.index(group)] if group else 1
    if not isinstance(groups, int):
        raise Refusal(f"einsum {equation!r}: a symbolic number of groups", family=FAMILY)
    sizes = left.sizes
    if not all(same(x.value, y.value) for x, y in zip(left.sizes, right.sizes)) or left.sided != right.sided:
        raise Refusal(f"einsum {equation!r}: the two signals are transformed at different sizes", family=FAMILY)
    out_axes = tuple(c.output.index(x) - len(c.output) for x in f)
    check_inverse(inverse, args, einsum.node, out_axes, sizes)
    if left.sided != ONE_SIDED or facts.transform_of(inverse).one_sided is False:
        raise Refusal("a channel contraction of full complex spectra: not rewritten yet", family=FAMILY)
    return _finish(
        "conv", inverse, args, c, f, batch, channel, left, right, sizes, out_axes,
        factors + left.factors + right.factors, left.power + right.power,
        nodes + einsum.nodes + left.nodes + right.nodes, k_perm=_perm(c.right, group + channel + c.summed + f),
        group=group, groups=groups,
    )


# ---- Fourier-neural-operator spectral layers -------------------------------------------------


def _weight(node: Node, what: str) -> Node:
    value = example_value(node)
    if not (isinstance(value, torch.Tensor) and value.is_complex() and is_module_state(_base(node))):
        raise Refusal(f"{what} is not a complex module parameter or buffer (a weight computed in the graph may hide "
                      "a nonlinearity; a graph input could be anything)", family="not-a-transform")
    return node


def _match_modes_full(inverse, args, einsum, factors, nodes, c, left, right) -> MixMatch:
    """irfftn(einsum('bif,iof->bof', rfftn(x), W)): every bin kept, one block."""
    from convfuse.passes.match import check_inverse

    weight = _weight(right.spectrum, f"the einsum's spectrum `{right.spectrum.name}`")
    _same_channels(c, next(x for x in (einsum.left, einsum.right) if x is not right.spectrum), weight)
    if left.built or left.layout or left.align is not None or left.conj:
        raise Refusal(f"einsum {c.left},{c.right}->{c.output}: the input spectrum passes through ops convfuse does "
                      "not follow before a channel contraction", family=FAMILY)
    f = _letters_of_axes(c.left, left.axes)
    right.axes = tuple(c.right.index(x) - len(c.right) for x in f if x in c.right)
    f = _frequency_letters(c, left, right, inverse)
    batch, channel, group = _roles(c, f)
    if group:
        raise Refusal(f"einsum {c.left},{c.right}->{c.output}: a grouped spectral layer: not rewritten", family=FAMILY)
    out_axes = tuple(c.output.index(x) - len(c.output) for x in f)
    check_inverse(inverse, args, einsum.node, out_axes, left.sizes)
    bins = _bins(left.sizes)
    shape = example_value(weight).shape
    if not all(same(shape[c.right.index(x)], b.value) for x, b in zip(f, bins)):
        raise Refusal(f"the weight `{weight.name}` does not hold exactly the spectrum's bins", family=FAMILY)
    return _finish(
        "modes", inverse, args, c, f, batch, channel, left, right, left.sizes, out_axes, factors + left.factors,
        left.power, nodes + einsum.nodes + left.nodes + right.nodes,
        weights=[weight], weight_perms=[_perm(c.right, c.summed + channel + f)], lows=[0] * len(f),
    )


def _bins(sizes: tuple) -> list[SymSize]:
    last = sizes[-1]
    return [*sizes[:-1], SymSize(last.value // 2 + 1, None)]


def _block(index, rank: int, axes: tuple, bins: list[SymSize], what: str, traced=None) -> list[tuple[int, int]]:
    """[(lo, length)] per transformed axis of an index that selects a block of them only
    (``traced``: the selected block's traced shape)."""
    index = slice_index(index, rank)
    if index is None:
        raise Refusal(f"{what} indexes the spectrum with something other than slices", family="spectrum-buffer")
    out = []
    for pos, s in enumerate(index):
        axis = pos - rank
        if axis not in axes:
            if s != slice(None):
                raise Refusal(f"{what} selects rows of a batch or channel axis, not a block of modes",
                              family="spectrum-buffer")
            continue
        size = bins[axes.index(axis)]
        if s.step not in (None, 1):
            raise Refusal(f"{what}: a strided block", family="spectrum-buffer")
        if not size.static:
            # x_ft[..., :m] on a symbolic grid: the block is [0, m) whenever its traced length is m
            # (Dynamo's shape guards hold the einsum with an m-mode weight to it); a negative
            # bound would need n - m symbolically
            if s.start not in (None, 0) or not isinstance(s.stop, int) or s.stop <= 0 or traced is None \
                    or not same(traced[pos], s.stop):
                raise Refusal(f"{what}: a block of modes on a symbolic grid other than [:m] (compile without "
                              "dynamic=True)", family="spectrum-buffer")
            out.append((0, s.stop))
            continue
        lo, length = slice_bounds(s.start, s.stop, size)
        if not (lo.static and length.static):
            raise Refusal(f"{what}: block bounds that are not constants", family="spectrum-buffer")
        out.append((lo.value, length.value))
    return out


def _match_modes(inverse: Node, args: dict, buffer: Node) -> MixMatch:
    """out_ft = zeros(...); out_ft[block] = einsum(x_ft[block], W) ...; irfftn(out_ft)."""
    from convfuse.passes.match import check_inverse

    writes = [u for u in buffer.users if u is not inverse]
    if not writes or not all(w.op == "call_function" and w.target is operator.setitem and w.args[0] is buffer
                             for w in writes):
        raise Refusal(f"`{buffer.name}` is a spectrum buffer read or written other than by block assignments before "
                      "the inverse", family="spectrum-buffer")
    if any(not comes_after(inverse, w) for w in writes):
        raise Refusal(f"`{buffer.name}` is written after the inverse transform reads it", family="spectrum-buffer")
    rank = example_value(buffer).dim()
    spectrum, c0, blocks, weights, perms, nodes = None, None, [], [], [], [buffer] + writes
    for w in writes:
        _, index, value = w.args
        what = f"`{w.name}` (a block assignment into `{buffer.name}`)"
        form = einsum_form(value) if isinstance(value, Node) and list(value.users) == [w] else None
        if form is None:
            raise Refusal(f"{what} writes a value that is not one channel contraction of the input's modes (an einsum, "
                          "a matmul over moved axes, or its real arithmetic); a nonlinearity between the modes is not "
                          "a convolution", family="spectrum-buffer")
        c = channel_contraction(form.equation, 2)
        if isinstance(c, str):
            raise Refusal(f"{what}: einsum {form.equation!r} {c}", family=FAMILY)
        x_block, weight = form.left, form.right
        if not (isinstance(x_block, Node) and x_block.op == "call_function" and x_block.target is operator.getitem):
            raise Refusal(f"{what}: the einsum's first operand is not a block of a spectrum", family="spectrum-buffer")
        operand = spectrum_operand(x_block.args[0])
        if spectrum is None:
            spectrum, c0, x_ft = operand, c, x_block.args[0]
            if operand.built or operand.layout or operand.align is not None or operand.conj:
                raise Refusal(f"{what}: the input spectrum passes through ops convfuse does not follow",
                              family="spectrum-buffer")
            f = _letters_of_axes(c.left, operand.axes)
            bins = _bins(operand.sizes)
        elif x_block.args[0] is not x_ft or (c.left, c.right, c.output) != (c0.left, c0.right, c0.output):
            raise Refusal(f"{what} contracts another spectrum or with another equation than the first block",
                          family="spectrum-buffer")
        block = _block(x_block.args[1], example_value(x_block.args[0]).dim(), operand.axes, bins, what,
                       example_value(x_block).shape)
        if _block(index, rank, tuple(c.output.index(x) - len(c.output) for x in f), bins, what,
                  example_value(value).shape) != block:
            raise Refusal(f"{what} writes its block to other modes than it reads", family="spectrum-buffer")
        weight = _weight(weight, f"the weight of {what}")
        _same_channels(c, x_block, weight)
        out_axes_w = [c.output.index(x) - len(c.output) for x in f]
        v_shape, z_shape = example_value(value).shape, example_value(buffer).shape
        if len(v_shape) != len(z_shape) or not all(same(v_shape[j], z_shape[j]) for j in range(-len(z_shape), 0)
                                                   if j not in out_axes_w):
            raise Refusal(f"{what} broadcasts its block into `{buffer.name}` (shapes {tuple(v_shape)} and "
                          f"{tuple(z_shape)}): not one contraction per output channel", family="spectrum-buffer")
        if example_value(value).dtype != example_value(buffer).dtype:
            raise Refusal(f"{what} casts the block to the buffer's dtype", family="spectrum-buffer")
        wshape = example_value(weight).shape
        if not all(wshape[c.right.index(x)] == length for x, (_, length) in zip(f, block)):
            raise Refusal(f"{what}: the weight's modes differ from the block's", family=FAMILY)
        blocks.append(block)
        weights.append(weight)
        nodes += [*form.nodes, x_block]
    _disjoint(blocks, buffer)
    c = c0
    right = Operand(signal=None, sizes=spectrum.sizes, axes=tuple(c.right.index(x) - len(c.right) for x in f),
                    power=Fraction(0), factors=[], spectrum=weights[0])
    f = _frequency_letters(c, spectrum, right, inverse)
    batch, channel, group = _roles(c, f)
    if group:
        raise Refusal(f"einsum {c.left},{c.right}->{c.output}: a grouped spectral layer: not rewritten", family=FAMILY)
    out_axes = tuple(c.output.index(x) - len(c.output) for x in f)
    if rank != len(c.output) or not all(same(example_value(buffer).shape[a], b.value) for a, b in zip(out_axes, bins)):
        raise Refusal(f"`{buffer.name}` does not hold the spectrum's bins in the einsum's layout",
                      family="spectrum-buffer")
    check_inverse(inverse, args, buffer, out_axes, spectrum.sizes)
    perm = _perm(c.right, c.summed + channel + f)
    return _finish(
        "modes", inverse, args, c, f, batch, channel, spectrum, right, spectrum.sizes, out_axes, spectrum.factors,
        spectrum.power, nodes + spectrum.nodes, weights=weights, weight_perms=[perm] * len(weights),
        lows=[lo for block in blocks for lo, _ in block],
    )


def _disjoint(blocks: list, buffer: Node) -> None:
    for i, a in enumerate(blocks):
        for b in blocks[:i]:
            if all(la < lb + mb and lb < la + ma for (la, ma), (lb, mb) in zip(a, b)):
                raise Refusal(f"blocks written into `{buffer.name}` overlap (the later assignment wins where they "
                              "do): not one spectral product", family="spectrum-buffer")


# ---- shared ---------------------------------------------------------------------------------


def _finish(kind, inverse, args, c, f, batch, channel, u, k, sizes, out_axes, factors, power, nodes, *,
            k_perm=None, weights=(), weight_perms=(), lows=(), group="", groups=1) -> MixMatch:
    d = len(f)
    # both operators convolve their last d axes: permutes of the signals and of the result
    # bring any einsum layout there and back (a group index next to the channels: the rewrite
    # flattens the two, as conv1d's groups lay them out)
    u_perm = _perm(c.left, batch + group + c.summed + f)
    canonical = batch + group + channel + f
    out_perm = [canonical.index(x) for x in c.output]
    head = inverse
    channel_axis = c.output.index(channel) - len(c.output)
    # fft_spectral_mix has no bias argument, nor a grouped site a bias over one axis: there the
    # bias stays in the graph
    epi = walk_epilogue(head, out_axes, sizes, [], mixing=True,
                        bias_axis=channel_axis if kind == "conv" and not group else None)
    N = SymSize(_prod([s.value for s in sizes]), None) if d > 1 else sizes[0]
    wide = u.dtype == torch.float64
    scale, extra = resolve_scale(factors + epi.factors, N, wide)
    power = power + extra + facts.norm_power(args["norm"], inverse=True) + facts.CONVOLUTION_NORM_POWER
    if N.static and power:
        scale, power = scale * float(N.value) ** power, Fraction(0)
    m = MixMatch(
        kind=kind, inverse=inverse, tail=epi.tail, u=u, k=k, u_perm=u_perm, k_perm=k_perm, out_perm=out_perm,
        sizes=sizes, axes=out_axes, start=epi.start, length=epi.length, scale=scale, power=power,
        out_dtype=example_value(epi.tail).dtype, equation=f"{c.left},{c.right}->{c.output}", weights=list(weights),
        weight_perms=list(weight_perms), lows=list(lows), bias=epi.bias, out_steps=epi.out_steps, windows=epi.windows,
        nodes=[inverse] + nodes + epi.nodes, groups=groups, batch_rank=len(batch),
        roles="module state" if is_module_state(k.signal or _base(k.spectrum)) else "the product's second factor",
    )
    if kind == "modes" and m.cropped_axes() and not proven(m.start.value + m.length.value <= m.n.value):
        raise Refusal("a window that wraps around the period after a spectral layer: not rewritten",
                      family="spectrum-buffer")
    _check_dtypes(m)
    check_site(m.nodes, m.tail, mixing_reads(m))
    return m


def _check_dtypes(m: MixMatch) -> None:
    """The operators compute in fp32 (fp64 for fp64 inputs) with complex64 (complex128) spectra:
    eager must have, too."""
    dtype = m.u.dtype
    if dtype not in (torch.float32, torch.float64):
        raise Refusal(f"a channel-mixing site on {dtype} signals: only fp32 and fp64 are rewritten", family=FAMILY)
    complex_dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    others = [m.k.dtype] if m.kind == "conv" else [example_value(w).dtype for w in m.weights]
    if m.kind == "conv" and others[0] != dtype or m.kind == "modes" and any(t != complex_dtype for t in others):
        raise Refusal(f"the kernel's precision ({others[0]}) differs from the input's ({dtype}): eager promotes the "
                      "product, the operator would not", family=FAMILY)


def _prod(values):
    out = 1
    for v in values:
        out = out * v
    return out
