"""``convfuse.fft_convnd`` on CPU against its plain-torch reference: forward over layouts, windows,
dtypes and both tilings, gradients, the constant-kernel spectrum cache, and GFNet compiled."""

from __future__ import annotations

import pytest
import torch

from convfuse.backends import cpu_cache, cpu_nd
from convfuse.ops_nd import fft_convnd_reference
from tests.conftest import assert_close_rel, assert_matches_eager

OP = torch.ops.convfuse.fft_convnd
F64 = torch.float64


@pytest.fixture(params=["inline", "pool", "pool-small-tiles"])
def tiling(request, monkeypatch):
    """Tiny tests run inline; "pool" sends every call to the thread pool (several batch rows
    a tile), "pool-small-tiles" in tiles of one row, so tile edges, sub-tiles and both
    threads are exercised."""
    if request.param.startswith("pool"):
        monkeypatch.setattr(cpu_nd, "INLINE_BYTES", 0)
        # and no call counts as one tile (FAST_BYTES): else these tiny calls all ran inline
        monkeypatch.setattr(cpu_nd, "FAST_BYTES", -1)
    if request.param == "pool-small-tiles":
        monkeypatch.setattr(cpu_nd, "TILE_BYTES", 256)
    return request.param


def channels_last(B, H, W, C, dtype=F64, gen=None):
    """u as the rewrite passes it: a (B, H, W, C) map viewed (B, C, H, W), strides (HWC, 1, WC, C)."""
    return torch.randn(B, H, W, C, dtype=dtype, generator=gen).movedim((1, 2), (-2, -1))


# (n, start, length) relative to the input size (H, W): same size, padded with an offset window,
# a window wrapping around both axes, truncated (input larger than n)
WINDOWS = [
    (lambda H, W: ([H, W], [0, 0], [H, W])),
    (lambda H, W: ([H + 3, 2 * W], [1, W + 3], [H, W])),
    (lambda H, W: ([H, W], [H - 2, 3], [H, W])),
    (lambda H, W: ([H - 1, W - 2], [0, W - 4], [H - 1, 3])),
]


def both(u, k, n, start, length, scale=0.5, n_power=-0.5, conj=False, out_dtype=F64):
    got = OP(u, k, n, start, length, scale, n_power, conj, out_dtype)
    expected = fft_convnd_reference(u, k, n, start, length, scale, n_power, conj, out_dtype)
    return got, expected


@pytest.mark.parametrize("conj", [False, True], ids=["conv", "corr"])
@pytest.mark.parametrize("window", range(len(WINDOWS)))
def test_channels_last_matches_reference(tiling, window, conj):
    gen = torch.Generator().manual_seed(window)
    for B, H, W, C in [(2, 6, 8, 3), (3, 10, 12, 5), (1, 7, 9, 4)]:
        u = channels_last(B, H, W, C, gen=gen)
        k = torch.randn(H, W, C, dtype=F64, generator=gen).movedim((0, 1), (-2, -1))
        got, expected = both(u, k, *WINDOWS[window](H, W), conj=conj)
        assert got.is_contiguous() and got.shape == expected.shape
        assert_close_rel(got, expected, 1e-12)


# (u shape, k shape): channels-first, one 2-D filter for all channels, u broadcast over channels,
# kernel batch interleaved with a broadcast dim, a kernel with more batch dims than u, empty batch
LAYOUTS = [
    ((2, 3, 6, 8), (3, 6, 8)),
    ((2, 3, 6, 8), (6, 8)),
    ((2, 1, 6, 8), (3, 6, 8)),
    ((3, 2, 6, 8), (3, 1, 6, 8)),
    ((6, 8), (2, 3, 6, 8)),
    ((0, 3, 6, 8), (3, 6, 8)),
]


@pytest.mark.parametrize("shapes", LAYOUTS, ids=lambda s: f"{s[0]}x{s[1]}")
def test_layouts_match_reference(tiling, shapes):
    gen = torch.Generator().manual_seed(1)
    u = torch.randn(*shapes[0], dtype=F64, generator=gen)
    k = torch.randn(*shapes[1], dtype=F64, generator=gen)
    for conj in (False, True):
        got, expected = both(u, k, [6, 9], [2, 1], [5, 8], conj=conj)
        assert got.shape == expected.shape
        if got.numel():
            assert_close_rel(got, expected, 1e-12)


@pytest.mark.parametrize("d", [1, 3])
def test_other_ranks_match_reference(tiling, d):
    gen = torch.Generator().manual_seed(d)
    size = [5, 6, 4][:d]
    u = torch.randn(2, 3, *size, dtype=F64, generator=gen)
    k = torch.randn(3, *size, dtype=F64, generator=gen)
    n = [s + 2 for s in size]
    got, expected = both(u, k, n, [1] * d, size, conj=True)
    assert_close_rel(got, expected, 1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_inputs_compute_in_fp32(tiling, dtype):
    gen = torch.Generator().manual_seed(2)
    u = channels_last(2, 8, 8, 4, dtype=torch.float32, gen=gen).to(dtype)
    k = torch.randn(4, 8, 8, generator=gen).to(dtype)
    for out_dtype in (dtype, torch.float32):
        got, expected = both(u, k, [8, 8], [0, 0], [8, 8], 1.0, -1.0, False, out_dtype)
        assert got.dtype == out_dtype
        assert_close_rel(got, expected, 1e-6 if out_dtype == torch.float32 else 1e-2)


def test_tilings_agree_on_a_gfnet_shape(monkeypatch):
    """The whole-row (channels-last) tiling, the box tiling and the inline path, at a size where
    each takes several tiles, give the reference's fp32 result."""
    gen = torch.Generator().manual_seed(3)
    u = channels_last(4, 14, 14, 48, dtype=torch.float32, gen=gen)
    k = torch.randn(14, 14, 48, generator=gen).movedim((0, 1), (-2, -1))
    args = ([14, 14], [0, 0], [14, 14], 1.0, -1.0, False, torch.float32)
    expected = fft_convnd_reference(u, k, *args)
    monkeypatch.setattr(cpu_nd, "_kept", [None])  # the tiles, not the kept descriptors' whole periods
    monkeypatch.setattr(cpu_nd, "INLINE_BYTES", 0)
    monkeypatch.setattr(cpu_nd, "FAST_BYTES", -1)
    monkeypatch.setattr(cpu_nd, "TILE_BYTES", 8 * 14 * 8 * 8)  # 8 channels a tile
    assert_close_rel(OP(u, k, *args), expected, 1e-6)  # whole rows
    assert_close_rel(OP(u.contiguous(), k, *args), expected, 1e-6)  # boxes, channels-first
    assert_close_rel(OP(u[:1], k, *args), expected[:1], 1e-6)  # one row: boxes over channels
    monkeypatch.setattr(cpu_nd, "INLINE_BYTES", 2**40)
    monkeypatch.setattr(cpu_nd, "FAST_BYTES", 2**40)
    assert_close_rel(OP(u, k, *args), expected, 1e-6)  # inline
    monkeypatch.undo()
    assert_close_rel(OP(u, k, *args), expected, 1e-6)  # the kept descriptors, where loaded


@pytest.mark.parametrize("conj", [False, True], ids=["conv", "corr"])
def test_gradients_match_reference(tiling, conj):
    gen = torch.Generator().manual_seed(4)
    base_u = channels_last(2, 5, 6, 3, gen=gen)
    base_k = torch.randn(3, 4, 6, dtype=F64, generator=gen)  # shorter than n along the first axis
    args = ([7, 6], [2, 5], [5, 6], 0.5, -1.0, conj, F64)
    u, k = base_u.clone().requires_grad_(), base_k.clone().requires_grad_()
    ur, kr = base_u.clone().requires_grad_(), base_k.clone().requires_grad_()
    got = OP(u, k, *args)
    expected = fft_convnd_reference(ur, kr, *args)
    g = torch.randn(expected.shape, dtype=F64, generator=gen)
    du, dk = torch.autograd.grad(got, (u, k), g)
    dur, dkr = torch.autograd.grad(expected, (ur, kr), g)
    assert_close_rel(du, dur, 1e-12)
    assert_close_rel(dk, dkr, 1e-12)


def test_gradcheck():
    gen = torch.Generator().manual_seed(5)
    u = torch.randn(2, 2, 4, 5, dtype=F64, generator=gen, requires_grad=True)
    k = torch.randn(2, 3, 5, dtype=F64, generator=gen, requires_grad=True)

    def f(u, k):
        return OP(u, k, [5, 6], [1, 4], [4, 5], 0.5, -0.5, True, F64)

    assert torch.autograd.gradcheck(f, (u, k))


def test_one_constant_kernel_at_several_sizes_and_directions_keeps_one_spectrum_each():
    """The cache's key holds what a prepared spectrum depends on besides the kernel (FFT sizes,
    conjugate, scale, dtype): the same weight read as a convolution, a correlation, at another size
    and another scale, each call three times (the last from the cache), gives each its own result."""
    cpu_cache.clear()
    gen = torch.Generator().manual_seed(9)
    u = channels_last(2, 8, 8, 4, gen=gen)
    weight = torch.nn.Parameter(torch.randn(8, 8, 4, dtype=F64, generator=gen))
    k = weight.detach().movedim((0, 1), (-2, -1))
    calls = [([8, 8], [0, 0], [8, 8], 1.0, -1.0, False, F64), ([8, 8], [0, 0], [8, 8], 1.0, -1.0, True, F64),
             ([12, 10], [0, 0], [8, 8], 1.0, -1.0, False, F64), ([8, 8], [0, 0], [8, 8], 0.25, 0.0, False, F64)]
    for _ in range(3):  # stored on the second sighting, used on the third
        for args in calls:
            assert_close_rel(OP(u, k, *args, constant_kernel=True), fft_convnd_reference(u, k, *args), 1e-12)
    assert cpu_cache.stats["hits"] >= len(calls)


def test_constant_kernel_spectrum_is_cached_until_the_weight_changes():
    cpu_cache.clear()
    gen = torch.Generator().manual_seed(6)
    u = channels_last(2, 8, 8, 4, gen=gen)
    weight = torch.nn.Parameter(torch.randn(8, 8, 4, dtype=F64, generator=gen))
    args = ([8, 8], [0, 0], [8, 8], 1.0, -1.0, False, F64)

    def call():
        with torch.no_grad():
            k = weight.movedim((0, 1), (-2, -1))  # a fresh view of the same storage every call
            return OP(u, k, *args, constant_kernel=True), fft_convnd_reference(u, k, *args)

    for _ in range(3):
        got, expected = call()
        assert_close_rel(got, expected, 1e-12)
    assert cpu_cache.stats["stores"] == 1 and cpu_cache.stats["hits"] == 1
    with torch.no_grad():
        weight.mul_(-2.0).add_(1.0)  # an optimizer step: the version changes
    got, expected = call()
    assert_close_rel(got, expected, 1e-12)
    assert cpu_cache.stats["hits"] == 1  # the old spectrum was not used
    for _ in range(2):
        got, expected = call()
        assert_close_rel(got, expected, 1e-12)
    assert cpu_cache.stats["stores"] == 2 and cpu_cache.stats["hits"] == 2
    # Without the flag nothing is cached: an activation may reuse a storage without a version bump.
    before = dict(cpu_cache.stats)
    with torch.no_grad():
        for _ in range(3):
            OP(u, weight.movedim((0, 1), (-2, -1)), *args)
    assert cpu_cache.stats == before
    cpu_cache.clear()


def test_kernel_rebuilt_every_call_is_recognised_by_value():
    """At inference a kernel shared by batch rows is cached by value: equal values in fresh
    storage hit, any change misses (even a write no version counter sees), and neither
    training nor a kernel as large as the output (d k's call) uses the cache."""
    cpu_cache.clear()
    gen = torch.Generator().manual_seed(8)
    u = channels_last(2, 8, 8, 4, gen=gen)
    base = torch.randn(8, 8, 4, dtype=F64, generator=gen)
    args = ([8, 8], [0, 0], [8, 8], 1.0, -1.0, False, F64)
    with torch.no_grad():
        for i in range(3):
            k = base.clone().movedim((0, 1), (-2, -1))  # fresh storage, equal values
            assert_close_rel(OP(u, k, *args), fft_convnd_reference(u, k, *args), 1e-12)
        assert cpu_cache.value_stats == {"hits": 2, "misses": 1}
        k.data[0, 3, 5] += 1.0  # through .data: the version counter does not move
        assert_close_rel(OP(u, k, *args), fft_convnd_reference(u, k, *args), 1e-12)
        assert cpu_cache.value_stats == {"hits": 2, "misses": 2}
        OP(u, u, *args)  # the kernel is as large as the output: not a weight
    k = base.movedim((0, 1), (-2, -1))
    OP(u, k, *args)  # grad mode: training changes weights every step
    assert cpu_cache.value_stats == {"hits": 2, "misses": 2}
    cpu_cache.clear()


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_gfnet_compiled_at_inference_follows_weight_updates(mode):
    from examples.models import GFNetFilter

    cpu_cache.clear()
    torch.manual_seed(1)
    model = GFNetFilter(dim=8, h=10, w=12)
    x = torch.randn(3, 10, 12, 8)
    context = torch.no_grad if mode == "no_grad" else torch.inference_mode
    compiled = torch.compile(model, backend="convfuse")
    for step in range(3):
        with context():
            for _ in range(3):
                assert_close_rel(compiled(x), model(x), 1e-5)
        with torch.no_grad():
            model.weight.mul_(-0.5).add_(0.01)  # between calls, as a training step would
    # the parameter spectrum goes to the operator itself (tests/test_gfnet_spectrum.py), read every
    # call: preparing it is one copy, cheaper than comparing it with a cached one
    assert cpu_cache.stats["hits"] == 0 and cpu_cache.stats["stores"] == 0


def test_constant_kernel_gradients_with_cache():
    cpu_cache.clear()
    gen = torch.Generator().manual_seed(7)
    weight = torch.nn.Parameter(torch.randn(3, 6, 6, dtype=F64, generator=gen))
    opt = torch.optim.SGD([weight], lr=0.1)
    for _ in range(3):
        u = channels_last(2, 6, 6, 3, gen=gen).requires_grad_()
        got = OP(u, weight, [6, 6], [0, 0], [6, 6], 1.0, -1.0, False, F64, constant_kernel=True)
        ur, kr = u.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
        expected = fft_convnd_reference(ur, kr, [6, 6], [0, 0], [6, 6], 1.0, -1.0, False, F64)
        assert_close_rel(got, expected, 1e-12)
        g = torch.randn(expected.shape, dtype=F64, generator=gen)
        got.backward(g)
        expected.backward(g)
        assert_close_rel(u.grad, ur.grad, 1e-12)
        assert_close_rel(weight.grad, kr.grad, 1e-12)
        opt.step()
        opt.zero_grad()
    cpu_cache.clear()


@pytest.mark.parametrize("mode", ["grad", "inference_mode"])
def test_gfnet_compiled_matches_eager(mode):
    from examples.models import GFNetFilter

    torch.manual_seed(0)
    model, twin = GFNetFilter(dim=16, h=14, w=14), GFNetFilter(dim=16, h=14, w=14)
    twin.load_state_dict(model.state_dict())
    x = torch.randn(3, 14, 14, 16, requires_grad=mode == "grad")
    if mode == "grad":
        compiled = assert_matches_eager(twin, (x,), rtol=1e-5)
        assert sum(n.target is OP.default for gm in compiled.graphs for n in gm.graph.nodes) == 1
        g = torch.randn(3, 14, 14, 16)
        model(x).backward(g)
        compiled(x).backward(g)
        assert_close_rel(twin.weight.grad, model.weight.grad, 1e-5)
        return
    with torch.inference_mode():
        expected = model(x)
        got = torch.compile(model, backend="convfuse")(x)
    assert_close_rel(got, expected, 1e-5)
