"""``convfuse.fft_conv_mix`` (channel-mixing FFT convolution): the reference against the definition
summed by hand, the CPU implementation (FFT and direct paths, both tilings) against the reference,
gradients against autograd through the reference, opcheck, the constant-kernel cache, argument
checks and symbolic shapes."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from convfuse.backends import cpu_cache, cpu_mix
from convfuse.ops_mix import fft_conv_mix_reference
from tests.conftest import assert_close_rel

OP = torch.ops.convfuse.fft_conv_mix
F64 = torch.float64


def brute_force(u, w, bias, n, start, length, scale, n_power, conj, groups):
    """The definition as sums over samples (no FFT): tiny sizes only."""
    d = len(n)
    G, ci = groups, w.shape[1]
    co = w.shape[0] // G
    batch = u.shape[: u.dim() - d - 1]
    uf = u.reshape(-1, G * ci, *u.shape[-d:])
    cut = [min(a, b) for a, b in zip(u.shape[-d:], n)]
    kcut = [min(a, b) for a, b in zip(w.shape[-d:], n)]
    out = torch.zeros(uf.shape[0], G * co, *length, dtype=F64)
    for t in itertools.product(*[range(li) for li in length]):
        pos = [(s + ti) % ni for s, ti, ni in zip(start, t, n)]
        for j in itertools.product(*[range(c) for c in cut]):
            for m in itertools.product(*[range(c) for c in kcut]):
                # convolution: pos = j + m; correlation: pos = j - m (mod n)
                sign = -1 if conj else 1
                if all((jj + sign * mm - pp) % ni == 0 for jj, mm, pp, ni in zip(j, m, pos, n)):
                    for g in range(G):
                        x = uf[(slice(None), slice(g * ci, (g + 1) * ci), *j)].double()  # (Bf, Ci)
                        k = w[(slice(g * co, (g + 1) * co), slice(None), *m)].double()  # (Co, Ci)
                        out[(slice(None), slice(g * co, (g + 1) * co), *t)] += x @ k.t()
    out = out * (scale * math.prod(n) ** n_power)
    if bias is not None:
        out = out + bias.double().reshape(-1, *([1] * d))
    return out.reshape(*batch, G * co, *length)


# (Lu, Lk, n, start, length) per axis: linear 'same', wrapping window, truncated signal (Lu > n),
# kernel as long as n, a window crossing the zero gap
AXIS_CASES = [
    (7, 3, 9, 1, 7),
    (6, 2, 6, 4, 6),
    (9, 3, 7, 5, 4),
    (5, 5, 5, 2, 3),
    (4, 2, 8, 6, 5),
]


def case(d, index):
    """Per-axis parameters for d axes, cycling through AXIS_CASES from ``index``."""
    picks = [AXIS_CASES[(index + i) % len(AXIS_CASES)] for i in range(d)]
    return [list(col) for col in zip(*picks)]


def operands(batch, groups, ci, co, Lu, Lk, bias, dtype=F64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(*batch, groups * ci, *Lu, dtype=dtype, generator=gen)
    w = torch.randn(groups * co, ci, *Lk, dtype=dtype, generator=gen)
    b = torch.randn(groups * co, dtype=dtype, generator=gen) if bias else None
    return u, w, b


@pytest.mark.parametrize("conj", [False, True], ids=["conv", "corr"])
@pytest.mark.parametrize("d,index", [(1, 0), (1, 1), (1, 2), (1, 4), (2, 0), (2, 2), (2, 3)])
def test_reference_is_the_definition(d, index, conj):
    Lu, Lk, n, start, length = case(d, index)
    u, w, b = operands((2,), 2, 2, 3, Lu, Lk, bias=True, seed=index)
    args = (n, start, length, 0.5, -0.5, conj, 2)
    got = fft_conv_mix_reference(u, w, b, *args, F64)
    assert_close_rel(got, brute_force(u, w, b, *args), 1e-12)


@pytest.fixture(params=["inline", "pool", "pool-small-tiles"])
def tiling(request, monkeypatch):
    """Tiny calls run inline; "pool" sends them to the thread pool, "pool-small-tiles" in tiles of
    a few rows and the fewest frequencies a block may have, so tile edges and both threads run."""
    if request.param.startswith("pool"):
        monkeypatch.setattr(cpu_mix, "INLINE_BYTES", 0)
        monkeypatch.setattr(cpu_mix, "DIRECT_INLINE_MACS", 0)
    if request.param == "pool-small-tiles":
        monkeypatch.setattr(cpu_mix, "TILE_BYTES", 1024)
    return request.param


@pytest.fixture(params=["auto", "fft"])
def algo(request, monkeypatch):
    """auto: short kernels with linear windows take the direct convolution; fft: never."""
    if request.param == "fft":
        monkeypatch.setattr(cpu_mix, "DIRECT_MAX_TAPS", 0)
    return request.param


BATCHES = [(), (3,), (2, 2)]


@pytest.mark.parametrize("conj", [False, True], ids=["conv", "corr"])
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("d", [1, 2])
def test_cpu_matches_reference(tiling, algo, d, groups, conj):
    for index, batch in itertools.product(range(len(AXIS_CASES)), BATCHES):
        Lu, Lk, n, start, length = case(d, index)
        for ci, co, dtype, tol in [(3, 3, F64, 1e-12), (2, 5, torch.float32, 1e-5)]:
            bias = (index + len(batch) + ci) % 2 == 0  # with and without, over the cases
            u, w, b = operands(batch, groups, ci, co, Lu, Lk, bias, dtype, seed=index)
            args = (n, start, length, 0.5, -1.0, conj, groups, dtype)
            got = OP(u, w, b, *args)
            expected = fft_conv_mix_reference(u, w, b, *args)
            assert got.is_contiguous() and got.shape == (*batch, groups * co, *length)
            assert_close_rel(got, expected, tol)


def test_direct_windows_equal_the_cyclic_result(monkeypatch):
    """Every window direct_pads accepts gives, by torch's convolution, the reference's result
    (over all starts, several lengths, FFT sizes and both signs, linear or not)."""
    monkeypatch.setattr(cpu_mix, "DIRECT_MAX_TAPS", 10**9)
    gen = torch.Generator().manual_seed(11)
    accepted = refused = 0
    for conj, lu, lk, n in itertools.product([False, True], [3, 5], [1, 2, 4], [6, 8, 9]):
        for start, length in itertools.product(range(n), [1, 3, n]):
            u = torch.randn(2, 3, lu, dtype=F64, generator=gen)
            w = torch.randn(4, 3, lk, dtype=F64, generator=gen)
            args = ([n], [start], [length], 1.0, 0.0, conj, 1, F64)
            pads = cpu_mix.direct_pads([lu], [lk], [n], [start], [length], conj)
            if pads is None:
                refused += 1
                continue
            accepted += 1
            got = cpu_mix.direct(u, w, None, [n], pads, conj, 1, 1.0, F64, F64, 2)
            assert_close_rel(got, fft_conv_mix_reference(u, w, None, *args), 1e-12)
    assert accepted > 200 and refused > 50  # both sides of the rule are exercised


def test_direct_path_is_taken_for_short_kernels(monkeypatch):
    calls = []
    real = cpu_mix.direct
    monkeypatch.setattr(cpu_mix, "direct", lambda *a: calls.append(1) or real(*a))
    u, w, b = operands((2,), 1, 4, 4, [64], [5], bias=True)
    OP(u, w, b, [80], [2], [64], 1.0, -1.0, False, 1, F64)  # linear, 5 taps: direct
    OP(u, w, b, [64], [2], [64], 1.0, -1.0, False, 1, F64)  # cyclic: FFT
    assert calls == [1]


@pytest.mark.parametrize("d", [1, 2])
def test_strided_and_channels_last_inputs(tiling, algo, d):
    gen = torch.Generator().manual_seed(3)
    Lu, Lk, n, start, length = case(d, 0)
    w = torch.randn(4, 3, *Lk, dtype=F64, generator=gen)
    base = torch.randn(2, 3, *Lu, dtype=F64, generator=gen)
    variants = [base.transpose(0, 1).contiguous().transpose(0, 1),  # batch and channel strides swapped
                torch.randn(2, 3, *[2 * s for s in Lu], dtype=F64, generator=gen)[(..., *[slice(None, None, 2)] * d)]]
    if d == 2:
        variants.append(base.contiguous(memory_format=torch.channels_last))
    wt = torch.randn(*Lk, 3, 4, dtype=F64, generator=gen).permute(-1, -2, *range(d))  # a permuted weight
    for u in variants:
        for weight in (w, wt):
            args = (n, start, length, 1.0, -0.5, True, 1, F64)
            got = OP(u, weight, None, *args)
            assert got.is_contiguous()
            assert_close_rel(got, fft_conv_mix_reference(u, weight, None, *args), 1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_compute_in_fp32(algo, dtype):
    u, w, b = operands((2,), 1, 4, 4, [32], [5], bias=True, dtype=torch.float32)
    u, w, b = u.to(dtype), w.to(dtype), b.to(dtype)
    for out_dtype in (dtype, torch.float32):
        args = ([40], [2], [32], 1.0, -1.0, False, 1, out_dtype)
        got = OP(u, w, b, *args)
        assert got.dtype == out_dtype
        expected = fft_conv_mix_reference(u.float(), w.float(), b.float(), *args)
        assert_close_rel(got, expected, 1e-6 if out_dtype == torch.float32 else 1e-2)


def test_autocast_does_not_lower_precision(algo):
    u, w, b = operands((2,), 1, 8, 8, [64], [5], bias=True, dtype=torch.float32)
    args = ([80], [2], [64], 1.0, -1.0, False, 1, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = OP(u, w, b, *args)
    assert_close_rel(got, fft_conv_mix_reference(u, w, b, *args), 1e-6)


def test_empty_and_degenerate_shapes():
    u, w, b = operands((0,), 1, 3, 2, [5], [2], bias=True)
    assert OP(u, w, b, [6], [0], [5], 1.0, 0.0, False, 1, F64).shape == (0, 2, 5)
    u, w, b = operands((2,), 1, 3, 2, [5], [2], bias=True)
    assert OP(u, w, b, [6], [0], [0], 1.0, 0.0, False, 1, F64).shape == (2, 2, 0)


# ---- gradients ----------------------------------------------------------------------------


def grad_cases():
    for d, groups, conj, bias in itertools.product([1, 2], [1, 2], [False, True], [False, True]):
        for index in range(len(AXIS_CASES)):
            batch = BATCHES[(index + groups + d) % len(BATCHES)]
            yield pytest.param(d, groups, conj, bias, index, batch,
                               id=f"d{d}-g{groups}-{'corr' if conj else 'conv'}-{'b' if bias else 'nb'}-{index}-{len(batch)}")


@pytest.mark.parametrize("d,groups,conj,bias,index,batch", list(grad_cases()))
def test_gradients_match_autograd_through_the_reference(algo, d, groups, conj, bias, index, batch):
    Lu, Lk, n, start, length = case(d, index)
    u0, w0, b0 = operands(batch, groups, 2, 3, Lu, Lk, bias, seed=index)
    leaves = [t.clone().requires_grad_() for t in (u0, w0) + ((b0,) if bias else ())]
    twins = [t.detach().clone().requires_grad_() for t in leaves]
    args = (n, start, length, 0.5, -0.5, conj, groups, F64)
    got = OP(leaves[0], leaves[1], leaves[2] if bias else None, *args)
    expected = fft_conv_mix_reference(twins[0], twins[1], twins[2] if bias else None, *args)
    g = torch.randn(expected.shape, dtype=F64, generator=torch.Generator().manual_seed(99))
    for a, e in zip(torch.autograd.grad(got, leaves, g), torch.autograd.grad(expected, twins, g)):
        assert_close_rel(a, e, 1e-11)


@pytest.mark.parametrize("conj", [False, True], ids=["conv", "corr"])
@pytest.mark.parametrize("d,groups", [(1, 1), (1, 2), (2, 2)])
def test_gradcheck_and_gradgradcheck(d, groups, conj):
    Lu, Lk, n, start, length = case(d, 2 if d == 1 else 1)
    u, w, b = operands((2,), groups, 2, 2, Lu, Lk, bias=True, seed=5)
    u, w, b = (t.requires_grad_() for t in (u, w, b))

    def f(u, w, b):
        return OP(u, w, b, n, start, length, 0.5, -0.5, conj, groups, F64)

    assert torch.autograd.gradcheck(f, (u, w, b))
    assert torch.autograd.gradgradcheck(f, (u, w, b))


@pytest.mark.parametrize("spec", [
    ((2,), 1, [9], [1], [7], False, True),
    ((), 2, [7], [5], [4], True, False),
    ((2, 1), 2, [6, 8], [4, 6], [6, 5], False, True),
])
def test_opcheck(spec):
    batch, groups, n, start, length, conj, bias = spec
    d = len(n)
    Lu = [min(ni, 7) for ni in n]
    u, w, b = operands(batch, groups, 2, 3, Lu, [2] * d, bias, seed=7)
    u.requires_grad_()
    w.requires_grad_()
    torch.library.opcheck(OP, (u, w, b, n, start, length, 0.5, -0.5, conj, groups, F64))


# ---- the constant-kernel cache ---------------------------------------------------------------


def test_constant_kernel_spectrum_is_cached_until_the_weight_changes(monkeypatch):
    monkeypatch.setattr(cpu_mix, "DIRECT_MAX_TAPS", 0)
    cpu_cache.clear()
    u, w0, b = operands((2,), 1, 3, 4, [16], [6], bias=True)
    weight = torch.nn.Parameter(w0)
    args = ([24], [3], [16], 1.0, -1.0, False, 1, F64)

    def call():
        with torch.no_grad():
            return OP(u, weight, b, *args, constant_kernel=True), fft_conv_mix_reference(u, weight, b, *args)

    for _ in range(3):
        assert_close_rel(*call(), 1e-12)
    assert cpu_cache.stats["stores"] == 1 and cpu_cache.stats["hits"] == 1
    with torch.no_grad():
        weight.data[1, 2, 3] += 1.0  # through .data: no version counter sees it
    assert_close_rel(*call(), 1e-12)
    assert cpu_cache.stats["hits"] == 1 and cpu_cache.stats["stale"] == 1
    before = dict(cpu_cache.stats)
    with torch.no_grad():
        for _ in range(3):
            OP(u, weight, b, *args)  # without the flag nothing is cached
    assert cpu_cache.stats == before
    cpu_cache.clear()


def test_constant_kernel_training_steps_match_reference(monkeypatch):
    monkeypatch.setattr(cpu_mix, "DIRECT_MAX_TAPS", 0)
    cpu_cache.clear()
    u0, w0, b0 = operands((2,), 1, 3, 3, [12], [4], bias=True)
    weight, bias = torch.nn.Parameter(w0), torch.nn.Parameter(b0)
    opt = torch.optim.SGD([weight, bias], lr=0.1)
    for step in range(3):
        u = (u0 + step).requires_grad_()
        got = OP(u, weight, bias, [16], [2], [12], 1.0, -1.0, True, 1, F64, constant_kernel=True)
        ur, wr, br = (t.detach().clone().requires_grad_() for t in (u, weight, bias))
        expected = fft_conv_mix_reference(ur, wr, br, [16], [2], [12], 1.0, -1.0, True, 1, F64)
        assert_close_rel(got, expected, 1e-12)
        got.sum().backward()
        expected.sum().backward()
        for a, e in ((u.grad, ur.grad), (weight.grad, wr.grad), (bias.grad, br.grad)):
            assert_close_rel(a, e, 1e-12)
        opt.step()
        opt.zero_grad()
    cpu_cache.clear()


# ---- argument checks and symbolic shapes -----------------------------------------------------


@pytest.mark.parametrize("change,error,words", [
    (dict(groups=3), ValueError, "divisible by groups"),
    (dict(w=torch.randn(4, 3, 2)), ValueError, "input channels per group"),
    (dict(w=torch.randn(4, 2, 2, 2)), ValueError, "kernel axes"),
    (dict(start=[9]), ValueError, "outside FFT size"),
    (dict(length=[9]), ValueError, "outside FFT size"),
    (dict(start=[0, 0]), ValueError, "one entry per convolved axis"),
    (dict(bias=torch.randn(3)), ValueError, "bias of shape"),
    (dict(u=torch.randn(2, 4, 8).to(torch.int64)), TypeError, "real floating"),
    (dict(u=torch.randn(8)), ValueError, "channel axis"),
    (dict(groups=0), ValueError, "positive integer"),
])
def test_bad_arguments_are_refused_clearly(change, error, words):
    kw = dict(u=torch.randn(2, 4, 8), w=torch.randn(4, 2, 3), bias=torch.randn(4), n=[8], start=[1],
              length=[8], scale=1.0, n_power=-1.0, conj_kernel=False, groups=2, out_dtype=torch.float32)
    kw.update(change)
    with pytest.raises(error, match=words):
        OP(**kw)
    with pytest.raises(error, match=words):
        fft_conv_mix_reference(**kw)


def test_dynamic_shapes_trace_with_symbolic_sizes():
    """The fake implementation runs on symbolic n, start and length: one compile serves two lengths."""
    counts = []

    def backend(gm, example_inputs):
        counts.append(sum(n.target in (OP, OP.default) for n in gm.graph.nodes))
        return gm

    def f(u, w, b):
        L = u.shape[-1]
        return OP(u, w, b, [L + w.shape[-1] - 1], [w.shape[-1] // 2], [L], 1.0, -1.0, False, 1, u.dtype)

    compiled = torch.compile(f, backend=backend, dynamic=True, fullgraph=True)
    for L in (16, 24):
        u, w, b = operands((2,), 1, 3, 3, [L], [5], bias=True)
        assert_close_rel(compiled(u, w, b), f(u, w, b), 1e-12)
    assert counts == [1]


@pytest.mark.parametrize("batch", [(), (1,)])
def test_constant_kernel_of_one_batch_row_is_cached_in_its_own_layout(monkeypatch, batch):
    """One batch row runs vector products on the kernel's rows: its cached form differs from the
    frequency-major one of a larger batch, and each hit still gives the reference's result."""
    monkeypatch.setattr(cpu_mix, "DIRECT_MAX_TAPS", 0)
    monkeypatch.setattr(cpu_mix, "INLINE_BYTES", 0)  # the tiled path (small calls have their own)
    cpu_cache.clear()
    u, w, b = operands(batch, 2, 3, 2, [20], [5], bias=True)
    args = ([24], [7], [20], 0.5, -1.0, True, 2, F64)
    with torch.no_grad():
        for _ in range(3):
            assert_close_rel(OP(u, w, b, *args, True), fft_conv_mix_reference(u, w, b, *args), 1e-12)
        assert cpu_cache.stats["hits"] == 1
        wide = u.expand(2, *u.shape) if not batch else u.expand(2, *u.shape[1:])
        for _ in range(3):  # the same weight at batch 2: the other layout, its own entry
            assert_close_rel(OP(wide, w, b, *args, True), fft_conv_mix_reference(wide, w, b, *args), 1e-12)
        assert cpu_cache.stats["stores"] == 2 and cpu_cache.stats["hits"] == 2
    cpu_cache.clear()
