"""The CPU implementation against the reference: every algorithm, forward and gradients, and the cache."""

from __future__ import annotations

import gc
import math

import pytest
import torch

import convfuse  # noqa: F401  registers torch.ops.convfuse.fft_conv
from convfuse import config
from convfuse.backends import cpu_cache
from convfuse.backends.cpu import describe_cpu_algorithm, fft_conv_cpu, plan_for
from convfuse.backends.reference import fft_conv_reference
from convfuse.spec import ConvParams, is_linear

ALGOS = ("fft", "direct", "ols")
F64 = torch.float64

# (L, K, n, start, length): causal, padded, offset, wrap-around, circular, truncated (L > n), L=1
WINDOWS = [
    (16, 5, 20, 0, 16),  # causal, n = L + K - 1 exactly
    (16, 5, 32, 0, 16),  # causal, padded
    (16, 5, 32, 3, 20),  # offset window inside the linear result
    (16, 5, 32, 28, 4),  # window at the top: zeros (conv) / negative lags (correlation)
    (16, 5, 32, 20, 12),  # straddles the negative-lag boundary for correlations
    (16, 3, 16, 10, 16),  # circular and wrapping around
    (40, 7, 32, 0, 32),  # truncated signal: Lu > n
    (16, 40, 32, 0, 16),  # truncated kernel: Lk > n
    (1, 1, 1, 0, 1),  # L = 1
    (64, 9, 128, 0, 64),
]
SHAPES = [  # (u batch, k batch)
    ((2, 3), (3,)),
    ((2, 1), (3,)),  # u broadcast over channels
    ((2, 3), ()),  # one kernel for all rows
    ((3, 2), (3, 1)),  # kernel batch interleaved with a broadcast dim
    ((0, 3), (3,)),  # empty batch
]


def params(n, start, length, conj, scale=0.5, n_power=-1.0, out_dtype=None):
    return ConvParams(n, start, length, scale, n_power, conj, out_dtype)


def expected(u, k, D, pre, post, p):
    shape = torch.Size((*torch.broadcast_shapes(u.shape[:-1], k.shape[:-1]), p.length))
    if shape.numel() == 0:  # MKL refuses an empty batch; the answer is an empty tensor
        return torch.empty(shape, dtype=p.out_dtype or F64)
    return fft_conv_reference(u, k, D, pre, post, p)


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("conj", [False, True])
def test_forward_matches_reference(algo, conj):
    gen = torch.Generator().manual_seed(0)
    used = set()
    for L, K, n, start, length in WINDOWS:
        for ub, kb in SHAPES:
            u = torch.randn(*ub, L, dtype=F64, generator=gen)
            k = torch.randn(*kb, K, dtype=F64, generator=gen)
            p = params(n, start, length, conj)
            plan = plan_for(p, L, K, force=algo)
            used.add(plan.algo)
            if plan.algo != algo:  # a linear algorithm is only used where the conv is linear
                assert algo != "fft" and not is_linear(n, L, K, start, length)
            got = fft_conv_cpu(u, k, None, None, None, p, force=algo)
            want = expected(u, k, None, None, None, p)
            assert got.shape == want.shape, (L, K, n, start, length, ub, kb)
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9, msg=f"{(L, K, n, start, length, ub, kb)}")
    assert algo in used


@pytest.mark.parametrize("algo", ALGOS)
def test_epilogue_and_dtypes(algo):
    gen = torch.Generator().manual_seed(1)
    B, H, L, K, n = 2, 3, 24, 6, 48
    u = torch.randn(B, H, L, generator=gen).bfloat16()
    k = torch.randn(H, K, generator=gen)
    D = torch.randn(H, 1, generator=gen)
    pre = torch.randn(B, H, L, generator=gen)
    post = torch.randn(1, H, L, generator=gen).half()
    p = params(n, 0, L, False, out_dtype=torch.bfloat16)
    got = fft_conv_cpu(u, k, D, pre, post, p, force=algo)
    want = fft_conv_reference(u, k, D, pre, post, p)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.float(), rtol=1e-2, atol=1e-2)
    # fp64 anywhere computes in fp64
    got = fft_conv_cpu(u.double(), k, D, pre, post, params(n, 0, L, True), force=algo)
    assert got.dtype == F64
    torch.testing.assert_close(got, fft_conv_reference(u.double(), k, D, pre, post, params(n, 0, L, True)))


def test_skip_needs_matching_length():
    u, k, D = torch.randn(2, 8), torch.randn(2, 3), torch.randn(2, 1)
    with pytest.raises(ValueError, match="skip term"):
        fft_conv_cpu(u, k, D, None, None, params(16, 0, 10, False))


def _op(u, k, D, pre, post, n, start, length, conj, kernel):
    return torch.ops.convfuse.fft_conv(u, k, D, pre, post, n, start, length, 0.5, -1.0, conj, F64, kernel)


GRAD_CASES = [  # (u batch, k batch, L, K, n, start, length)
    ((2, 3), (3,), 12, 5, 24, 0, 12),  # causal
    ((2, 3), (3,), 12, 5, 24, 4, 12),  # offset
    ((2, 1), (3,), 12, 12, 12, 5, 12),  # circular, wrap-around window, broadcast u
    ((2, 3), (3,), 20, 4, 16, 0, 16),  # truncated signal
    ((3,), (), 1, 1, 1, 0, 1),  # L = 1
]


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("conj", [False, True])
def test_gradients_match_reference(algo, conj, monkeypatch):
    # Backward calls the operator again (conj flipped, offset windows): force the algorithm
    # everywhere it is valid, and compare with autograd through the plain torch.fft reference.
    monkeypatch.setattr(config, "cpu_algo", algo)
    gen = torch.Generator().manual_seed(2)
    for ub, kb, L, K, n, start, length in GRAD_CASES:
        skip = length == L
        tensors = [
            torch.randn(*ub, L, dtype=F64, generator=gen),
            torch.randn(*kb, K, dtype=F64, generator=gen),
            torch.randn(3, 1, dtype=F64, generator=gen) if skip else None,
            torch.randn(*ub, L, dtype=F64, generator=gen),
            torch.randn(3, length, dtype=F64, generator=gen),
        ]
        leaves = [t.requires_grad_() if t is not None else None for t in tensors]
        g = torch.randn(*torch.broadcast_shapes(ub, kb, (3,)), length, dtype=F64, generator=gen)
        got = torch.autograd.grad(_op(*leaves, n, start, length, conj, "cpu"), [t for t in leaves if t is not None], g)
        p = params(n, start, length, conj, out_dtype=F64)
        ref = fft_conv_reference(*leaves, p)
        want = torch.autograd.grad(ref, [t for t in leaves if t is not None], g)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=f"{(ub, kb, L, K, n, start, length)}")


def test_inputs_requiring_grad_give_a_plain_result():
    u = torch.randn(2, 64, 256, requires_grad=True)
    k = torch.randn(64, 256, requires_grad=True)
    out = fft_conv_cpu(u, k, None, None, None, params(512, 0, 256, False))
    assert out.grad_fn is None and not out.requires_grad  # the operator's autograd owns gradients


def test_cost_model_choices():
    # bench/cpu.py --calibrate, 2026-12-03, us per row at 512 rows: L=1024 K=32 fft 4.2, direct 5.3,
    # overlap-save 4.5; L=16384 K=256 fft 69, overlap-save 86, direct 1075
    assert describe_cpu_algorithm(2048, 1024, 32, 0, 1024, 512).startswith("cpu-fft")
    assert describe_cpu_algorithm(2 * 16384, 16384, 256, 0, 16384, 512).startswith("cpu-fft")
    # a few taps on long rows: the C++ sliding dot products (bench/cpu.py --calibrate, 2026-12-04,
    # L=16384 K=16: direct 37, overlap-save 39, fft 43 us a row), else short overlap-save blocks
    from convfuse.backends.cpu_algos import native_direct

    few_taps = describe_cpu_algorithm(2 * 16384, 16384, 4, 0, 16384, 512)
    assert few_taps.startswith("cpu-direct" if native_direct() else "cpu-overlap-save"), few_taps
    with config.patch(native_cpu=False):
        assert describe_cpu_algorithm(2 * 16384, 16384, 4, 0, 16384, 512).startswith("cpu-overlap-save")
    # overlap-save's setup (ALGO_FIXED_SECONDS) is not paid back by one row: the call's own plan,
    # and the report's name, count it
    assert not describe_cpu_algorithm(2 * 4096, 4096, 4, 0, 4096, 1).startswith("cpu-overlap-save")
    with config.patch(native_cpu=False):  # and conv1d's setup neither: the FFT
        assert describe_cpu_algorithm(2 * 4096, 4096, 4, 0, 4096, 1).startswith("cpu-fft")
    assert describe_cpu_algorithm(2048, 1024, 1024, 0, 1024, 8).startswith("cpu-fft")
    assert describe_cpu_algorithm(1024, 1024, 4, 0, 1024, 8).startswith("cpu-fft")  # circular: not linear
    assert describe_cpu_algorithm(1024, 1024, 4, 0, 1024, 512, bins=64).startswith("cpu-fft")


def test_threads_do_not_change_results():
    gen = torch.Generator().manual_seed(3)
    u, k = torch.randn(4, 64, 256, generator=gen), torch.randn(64, 256, generator=gen)
    p = params(512, 0, 256, False)
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = fft_conv_cpu(u, k, None, None, None, p)
        torch.set_num_threads(2)
        two = fft_conv_cpu(u, k, None, None, None, p)
    finally:
        torch.set_num_threads(saved)
    assert torch.equal(one, two)
    assert torch.get_num_threads() == saved


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("constant", [False, True], ids=["k-input", "k-constant"])
def test_many_tiles_on_both_threadings_match_the_reference(cpu_threading, algo, constant, fresh_cache):
    # Several units of 4-row tiles, kernel blocks prepared per unit or sliced from the cache,
    # forward and backward (the fused pass for "fft"), against the reference.
    gen = torch.Generator().manual_seed(4)
    u = torch.randn(3, 37, 50, dtype=F64, generator=gen, requires_grad=True)
    k = torch.randn(37, 9, dtype=F64, generator=gen, requires_grad=not constant)
    D = torch.randn(37, 1, dtype=F64, generator=gen, requires_grad=True)
    post = torch.randn(3, 37, 50, dtype=F64, generator=gen, requires_grad=True)
    g = torch.randn(3, 37, 50, dtype=F64, generator=gen)
    leaves = [t for t in (u, k, D, post) if t.requires_grad]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(config, "cpu_algo", algo)
        for _ in range(3):  # the third call of a constant kernel hits the cache
            got = torch.ops.convfuse.fft_conv(u, k, D, None, post, 100, 0, 50, 0.5, -1.0, False, F64, "cpu",
                                              constant_kernel=constant)
            got_grads = torch.autograd.grad(got, leaves, g)
    want = fft_conv_reference(u, k, D, None, post, params(100, 0, 50, False, out_dtype=F64))
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    for a, b in zip(got_grads, torch.autograd.grad(want, leaves, g)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    if constant:
        assert fresh_cache["hits"] >= 1


# -- the kernel-spectrum cache -------------------------------------------------------------


@pytest.fixture
def fresh_cache():
    cpu_cache.clear()
    yield cpu_cache.stats
    cpu_cache.clear()


def _conv(u, k, constant=True):
    return torch.ops.convfuse.fft_conv(u, k, None, None, None, 64, 0, 32, 1.0, 0.0, False, torch.float32, "cpu",
                                       constant_kernel=constant)


def _ref(u, k):
    return fft_conv_reference(u, k, None, None, None, params(64, 0, 32, False, 1.0, 0.0))


def test_cache_reuses_and_sees_in_place_updates(fresh_cache):
    u = torch.randn(2, 4, 32)
    weight = torch.nn.Parameter(torch.randn(4, 32))
    opt = torch.optim.SGD([weight], lr=0.5)
    with torch.no_grad():
        for step in range(3):
            outs = [_conv(u, weight) for _ in range(3)]
            for out in outs:
                torch.testing.assert_close(out, _ref(u, weight), rtol=1e-4, atol=1e-4)
            weight.grad = torch.randn_like(weight)
            opt.step()  # in-place update: bumps the version, the next call must miss
            weight.mul_(1.5)
            torch.testing.assert_close(_conv(u, weight), _ref(u, weight), rtol=1e-4, atol=1e-4)
            weight.data = torch.randn(4, 32)  # a new storage behind the same parameter
            torch.testing.assert_close(_conv(u, weight), _ref(u, weight), rtol=1e-4, atol=1e-4)
    assert fresh_cache["hits"] >= 3 and fresh_cache["stores"] >= 3


def test_cache_never_hits_a_freed_and_reallocated_kernel(fresh_cache):
    u = torch.randn(1, 4, 32)
    for i in range(20):
        k = torch.full((4, 32), float(i))
        _conv(u, k)
        torch.testing.assert_close(_conv(u, k), _ref(u, k), rtol=1e-4, atol=1e-4)
        del k
        gc.collect()  # the next kernel may get the same data_ptr: it must not hit
    assert fresh_cache["hits"] == 0  # every kernel seen twice, stored once, then replaced


def test_cache_hits_through_detached_aliases_and_is_bounded(fresh_cache, monkeypatch):
    u = torch.randn(1, 4, 32)
    k = torch.randn(4, 32)
    for _ in range(3):
        _conv(u, k.detach())  # a new alias each call, as a compiled graph may pass
    assert fresh_cache["hits"] == 1
    monkeypatch.setattr(cpu_cache, "MAX_ENTRIES", 2)
    kernels = [torch.randn(4, 32) for _ in range(5)]
    for k in kernels * 2:
        _conv(u, k)
    assert len(cpu_cache._entries) <= 2


def test_kernels_not_marked_constant_are_not_cached(fresh_cache):
    u, k = torch.randn(1, 4, 32), torch.randn(4, 32)
    for _ in range(3):
        _conv(u, k, constant=False)
    assert fresh_cache["stores"] == 0 and fresh_cache["misses"] == 0


def test_inference_tensors_are_cached_by_value(fresh_cache):
    u = torch.randn(1, 4, 32)
    with torch.inference_mode():
        k = torch.randn(4, 32)
        for _ in range(3):
            torch.testing.assert_close(_conv(u, k), _ref(u, k), rtol=1e-4, atol=1e-4)
            k.add_(1.0)  # no version counter to see this: the comparison does
    assert fresh_cache["stores"] == 1 and fresh_cache["stale"] == 1 and fresh_cache["hits"] == 0


@pytest.mark.parametrize("Ko,Hk,row_bytes", [(4, 64, 4097 * 8), (4, 256, 1025 * 8), (2, 256, 16385 * 8),
                                            (1, 64, 131073 * 8), (1024, 1, 1025 * 8), (4, 3, 100), (7, 5, 3 << 20)])
@pytest.mark.parametrize("kernel_blocks", [True, False])
def test_tiles_cover_every_row_once_in_balanced_units(Ko, Hk, row_bytes, kernel_blocks):
    from convfuse.backends.cpu_exec import (
        BALANCE, KERNEL_BLOCK_BYTES, KERNEL_BLOCK_ROWS, MIN_TILE_ROWS, TILE_BYTES, Layout, tiles,
    )

    lay = Layout(Ko, Hk, torch.Size([Ko, Hk]), torch.empty(Hk, 1))
    units = tiles(lay, row_bytes, kernel_blocks)
    cells = [(o, h) for unit in units for o0, o1, h0, h1 in unit for o in range(o0, o1) for h in range(h0, h1)]
    assert sorted(cells) == [(o, h) for o in range(Ko) for h in range(Hk)]
    rows = max(MIN_TILE_ROWS, TILE_BYTES // row_bytes)
    assert all((o1 - o0) * (h1 - h0) <= max(rows, 1) for unit in units for o0, o1, h0, h1 in unit)
    if BALANCE <= len(units) < 4 * BALANCE and (Ko <= rows or Hk == 1):  # balanced along one axis
        assert len(units) % BALANCE == 0  # 1, 2 or 4 threads get the same number of units...
        sizes = [sum((o1 - o0) * (h1 - h0) for o0, o1, h0, h1 in u) for u in units]
        assert max(sizes) - min(sizes) <= max(sizes) // 4  # ...of about the same size
    if kernel_blocks and len(units[0]) > 1:  # units are kernel blocks: one transform call each
        blocks = [(min(b[2] for b in u), max(b[3] for b in u)) for u in units]
        want = min(KERNEL_BLOCK_ROWS, max(1, KERNEL_BLOCK_BYTES // row_bytes), Hk)
        assert all(h1 - h0 >= want // 2 for h0, h1 in blocks)
        assert all((h1 - h0) * row_bytes <= max(KERNEL_BLOCK_BYTES, row_bytes * rows) for h0, h1 in blocks)
        assert sorted(h for h0, h1 in blocks for h in range(h0, h1)) == list(range(Hk))


@pytest.mark.parametrize("n", [16384, 32768])
@pytest.mark.parametrize("shape", [(1, 1, 700), (1, 20000), (20000,)])
def test_a_lone_row_transformed_beside_a_zero_row_is_the_library_transform(n, shape):
    """MKL transforms one row of n = 16K..128K in ~1.8x the time of two (cpu_algos.PAIRED_LONE_ROW):
    the pair's first row must be what torch.fft gives, truncating and padding alike, to float
    rounding: a batch of two runs another MKL code path than one row, so the last bits differ
    (CI's machine showed 1.3e-6 on outputs of ~1, against eps * log2(n) ~ 2e-6)."""
    from convfuse.backends.cpu_algos import irfft_rows, rfft_rows

    x = torch.randn(*shape, generator=torch.Generator().manual_seed(n + len(shape)))
    X = rfft_rows(x, n)
    eps = torch.finfo(x.dtype).eps * math.log2(n)
    torch.testing.assert_close(X, torch.fft.rfft(x, n=n), rtol=1e-5, atol=4 * eps * X.abs().max().item())
    y = torch.fft.irfft(X, n=n)
    torch.testing.assert_close(irfft_rows(X, n), y, rtol=1e-5, atol=4 * eps * y.abs().max().item())
    assert irfft_rows(X, n).shape == (*shape[:-1], n)


@pytest.mark.parametrize("constant", [False, True])
def test_a_lone_long_row_through_the_operator(constant):
    g = torch.Generator().manual_seed(3)
    u, k, D = torch.randn(1, 1, 9000, generator=g), torch.randn(1, 9000, generator=g), torch.randn(1, 1, generator=g)
    p = ConvParams(16384, 0, 9000, 0.5, 0.0, False, torch.float32, constant)
    got = torch.ops.convfuse.fft_conv(u, k, D, None, None, 16384, 0, 9000, 0.5, 0.0, False, torch.float32, "cpu",
                                      constant)
    torch.testing.assert_close(got, fft_conv_reference(u, k, D, None, None, p), rtol=1e-4, atol=1e-4)
