"""``fft_convnd(..., kernel_is_spectrum=True)``: the kernel given as its one-sided spectrum W, as
GFNet's parameter is.  The operator must be eager's ``irfftn(rfftn(u, s=n) * W, s=n)`` exactly,
gradients included (autograd's through that program: the imaginary parts irfftn discards get
zero, the bins standing for two are doubled), on the CPU path and the reference; compiled
GFNet filters pass W itself to the operator."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from convfuse.backends import cpu_cache, cpu_nd
from convfuse.ops_nd import fft_convnd_reference
from tests.conftest import Compiled
from tests.conftest import assert_close_rel as _close_real


def assert_close_rel(got, expected, rtol):
    """Both parts of complex values (the shared helper compares real tensors)."""
    if expected.is_complex():
        assert got.is_complex()
        got, expected = torch.view_as_real(got.resolve_conj()), torch.view_as_real(expected.resolve_conj())
    _close_real(got, expected, rtol)

OP = torch.ops.convfuse.fft_convnd
F64, C128 = torch.float64, torch.complex128


@pytest.fixture(params=["inline", "pool", "pool-small-tiles"])
def tiling(request, monkeypatch):
    if request.param.startswith("pool"):
        monkeypatch.setattr(cpu_nd, "INLINE_BYTES", 0)
        # and no call counts as one tile (FAST_BYTES): else these tiny calls all ran inline
        monkeypatch.setattr(cpu_nd, "FAST_BYTES", -1)
    if request.param == "pool-small-tiles":
        monkeypatch.setattr(cpu_nd, "TILE_BYTES", 256)
    return request.param


def plain(u, W, n, start, length, scale, conj):
    """Eager's program, windowed: what autograd differentiates for the expected gradients."""
    d = len(n)
    axes = list(range(-d, 0))
    y = torch.fft.irfftn(torch.fft.rfftn(u, s=n, dim=axes) * (W.conj() if conj else W) * scale, s=n, dim=axes)
    for axis, s, length_i in zip(axes, start, length):
        y = torch.roll(y, -s, dims=axis).narrow(axis, 0, length_i)
    return y


def spectrum(*shape, gen):
    return torch.randn(*shape, dtype=C128, generator=gen)


# (n, start, length): even and odd last axes (Nyquist bin or none), a window, three axes
CASES = [([6, 8], [0, 0], [6, 8]), ([5, 7], [0, 0], [5, 7]), ([6, 7], [2, 5], [4, 6]), ([4, 5, 6], [1, 0, 3], [3, 5, 6])]


@pytest.mark.parametrize("conj", [False, True], ids=["conv", "corr"])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_matches_eager_program_and_its_autograd(tiling, case, conj):
    n, start, length = CASES[case]
    gen = torch.Generator().manual_seed(case)
    bins = [*n[:-1], n[-1] // 2 + 1]
    for u_shape, w_shape in [((2, 3, *n), (3, *bins)), ((2, *n), (3, 1, *bins)), ((3, *[x - 1 for x in n]), bins)]:
        u = torch.randn(*u_shape, dtype=F64, generator=gen).requires_grad_()
        W = spectrum(*w_shape, gen=gen).requires_grad_()
        got = OP(u, W, n, start, length, 0.5, 0.0, conj, F64, False, True)
        expected = plain(u, W, n, start, length, 0.5, conj)
        assert got.is_contiguous()
        assert_close_rel(got, expected, 1e-12)
        assert_close_rel(fft_convnd_reference(u, W, n, start, length, 0.5, 0.0, conj, F64, True), expected, 1e-12)
        g = torch.randn(expected.shape, dtype=F64, generator=gen)
        for a, b in zip(torch.autograd.grad(got, (u, W), g), torch.autograd.grad(expected, (u, W), g)):
            assert_close_rel(a, b, 1e-12)


@pytest.mark.parametrize("n", [[4, 6], [5, 5], [3, 4, 5]], ids=str)
def test_gradcheck_odd_and_even(n):
    gen = torch.Generator().manual_seed(sum(n))
    bins = [*n[:-1], n[-1] // 2 + 1]
    u = torch.randn(2, *n, dtype=F64, generator=gen, requires_grad=True)
    W = spectrum(2, *bins, gen=gen).requires_grad_()
    d = len(n)

    def f(u, W):
        return OP(u, W, n, [1] * d, n, 0.5, -0.5, False, F64, False, True)

    assert torch.autograd.gradcheck(f, (u, W))
    if d == 2:
        assert torch.autograd.gradgradcheck(f, (u, W))


def test_discarded_imaginary_parts_get_zero_gradient():
    """irfftn ignores Im W at the bins that are their own mirror image (DC and Nyquist along
    every axis, for even sizes): autograd gives them zero, and so does the operator."""
    gen = torch.Generator().manual_seed(9)
    n = [4, 6]
    u = torch.randn(3, *n, dtype=F64, generator=gen)
    W = spectrum(3, 4, 4, gen=gen).requires_grad_()
    out = OP(u, W, n, [0, 0], n, 1.0, 0.0, False, F64, False, True)
    (dW,) = torch.autograd.grad(out, W, torch.randn(out.shape, dtype=F64, generator=gen))
    for i in (0, 2):
        for j in (0, 3):
            assert dW[:, i, j].imag.abs().max() < 1e-12
    assert dW[:, 1, 0].imag.abs().max() > 1e-3  # the first column's other bins do count


def test_low_precision_and_dtypes():
    gen = torch.Generator().manual_seed(3)
    u = torch.randn(2, 4, 8, 8, generator=gen)
    W = torch.randn(4, 8, 5, dtype=torch.complex64, generator=gen)
    args = ([8, 8], [0, 0], [8, 8], 1.0, -1.0, False)
    for ui, out_dtype in [(u, torch.float32), (u.to(torch.bfloat16), torch.bfloat16), (u.double(), F64)]:
        got = OP(ui, W, *args, out_dtype, False, True)
        expected = fft_convnd_reference(ui, W, *args, out_dtype, True)
        assert got.dtype == out_dtype
        assert_close_rel(got, expected, 1e-6 if out_dtype != torch.bfloat16 else 1e-2)
    # complex128 W makes fp64 compute, as eager's type promotion does
    assert_close_rel(OP(u, W.to(C128), *args, F64, False, True), plain(u.double(), W.to(C128), [8, 8], [0, 0],
                                                                      [8, 8], 1.0 / 64, False), 1e-12)


def test_checks():
    u = torch.randn(2, 8, 8)
    with pytest.raises(TypeError, match="complex"):
        OP(u, torch.randn(2, 8, 5), [8, 8], [0, 0], [8, 8], 1.0, 0.0, False, torch.float32, False, True)
    with pytest.raises(ValueError, match="bins"):
        OP(u, torch.randn(2, 8, 8, dtype=torch.complex64), [8, 8], [0, 0], [8, 8], 1.0, 0.0, False, torch.float32,
           False, True)


def test_constant_spectrum_is_read_every_call_not_cached():
    """A given spectrum is prepared from the weight every call (one copy, cheaper than comparing
    it with a stored copy: cpu_nd._fft_convnd), so it follows every write, version-invisible too,
    and the cache is never consulted."""
    cpu_cache.clear()
    gen = torch.Generator().manual_seed(6)
    u = torch.randn(2, 8, 8, 4, dtype=F64, generator=gen).movedim((1, 2), (-2, -1))
    weight = nn.Parameter(torch.randn(8, 5, 4, 2, dtype=F64, generator=gen))
    args = ([8, 8], [0, 0], [8, 8], 1.0, 0.0, False, F64)

    def call():
        with torch.no_grad():
            W = torch.view_as_complex(weight).movedim((0, 1), (-2, -1))  # a fresh view every call
            return OP(u, W, *args, True, True), fft_convnd_reference(u, W, *args, True)

    for _ in range(3):
        assert_close_rel(*call(), 1e-12)
    weight.data[3, 2, 1, 0] += 1.0  # no version bump
    assert_close_rel(*call(), 1e-12)
    assert cpu_cache.stats["stores"] == cpu_cache.stats["hits"] == cpu_cache.stats["misses"] == 0
    cpu_cache.clear()


class GFNetChannelsFirst(nn.Module):
    """A (B, C, H, W) global filter with a complex parameter (H, W//2+1 per channel)."""

    def __init__(self, dim=8, h=8, w=8):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(dim, h, w // 2 + 1, dtype=torch.complex64) * 0.02)

    def forward(self, x):
        X = torch.fft.rfft2(x, norm="ortho")
        return torch.fft.irfft2(X * self.weight, s=x.shape[-2:], norm="ortho")


class GFNetNearMiss(GFNetChannelsFirst):
    """The filter's magnitude only: W.abs() is a real mask, no kernel spectrum."""

    def forward(self, x):
        X = torch.fft.rfft2(x, norm="ortho")
        return torch.fft.irfft2(X * self.weight.abs(), s=x.shape[-2:], norm="ortho")


def _spectrum_calls(compiled: Compiled) -> list:
    return [node for gm in compiled.graphs for node in gm.graph.nodes
            if node.target is OP.default and node.kwargs.get("kernel_is_spectrum")]


@pytest.mark.parametrize("layout", ["channels_last", "channels_first"])
@pytest.mark.parametrize("hw", [(14, 14), (9, 10)], ids=str)
def test_gfnet_compiled_matches_eager_with_gradients(layout, hw):
    from examples.models import GFNetFilter

    torch.manual_seed(0)
    H, W = hw
    if layout == "channels_last":
        model, twin = GFNetFilter(dim=16, h=H, w=W), GFNetFilter(dim=16, h=H, w=W)
        x = torch.randn(3, H, W, 16)
    else:
        model, twin = GFNetChannelsFirst(16, H, W), GFNetChannelsFirst(16, H, W)
        x = torch.randn(3, 16, H, W)
    twin.load_state_dict(model.state_dict())
    compiled = Compiled(twin)
    xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
    expected, got = model(xe), compiled(xc)
    assert_close_rel(got, expected, 1e-5)
    (call,) = _spectrum_calls(compiled)
    assert call.kwargs["constant_kernel"]
    assert not any(node.target is torch.fft.irfftn for gm in compiled.graphs for node in gm.graph.nodes)
    g = torch.randn(expected.shape)
    expected.backward(g)
    got.backward(g)
    assert_close_rel(xc.grad, xe.grad, 1e-5)
    assert_close_rel(twin.weight.grad, model.weight.grad, 1e-5)
    with torch.inference_mode():
        for _ in range(3):
            assert_close_rel(compiled(x), model(x), 1e-5)


def test_gfnet_compiled_at_inference_follows_weight_updates():
    from examples.models import GFNetFilter

    cpu_cache.clear()
    torch.manual_seed(1)
    model = GFNetFilter(dim=8, h=10, w=12)
    x = torch.randn(3, 10, 12, 8)
    compiled = torch.compile(model, backend="convfuse")
    for _ in range(3):
        with torch.inference_mode():
            for _ in range(3):
                assert_close_rel(compiled(x), model(x), 1e-5)
        with torch.no_grad():
            model.weight.mul_(-0.5).add_(0.01)
    assert cpu_cache.stats["hits"] == 0  # the parameter spectrum is read every call, never cached
    cpu_cache.clear()


def test_near_miss_stays_eager():
    torch.manual_seed(2)
    model = GFNetNearMiss(8, 8, 8)
    compiled = Compiled(model)
    x = torch.randn(2, 8, 8, 8)
    assert_close_rel(compiled(x), model(x), 1e-6)
    assert not _spectrum_calls(compiled)
    assert compiled.report.sites and all(site.status == "skipped" for site in compiled.report.sites)
