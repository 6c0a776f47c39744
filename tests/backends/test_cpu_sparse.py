"""The CPU path with a frequency-sparse kernel (``spectrum_bins`` = M): the product of the kept
bins goes into a spectrum whose other bins are zero (in place on the fast path, a per-thread
zero-tail buffer on the tiled one); outputs and gradients equal the masked definition in plain
torch, and the reference kernel."""

from __future__ import annotations

import pytest
import torch

from convfuse.backends import cpu
from tests.conftest import assert_close_rel

OP = torch.ops.convfuse.fft_conv
F64 = torch.float64


def masked(u, k, n, start, length, scale, conj, bins, D=None, pre=None, post=None):
    """The definition: k's one-sided spectrum at size n keeps its lowest ``bins`` bins."""
    ue = u if pre is None else u * pre
    K = torch.fft.rfft(k, n=n)
    K = torch.cat([K[..., :bins], torch.zeros_like(K[..., bins:])], dim=-1)
    c = torch.fft.irfft(torch.fft.rfft(ue, n=n) * (K.conj() if conj else K), n=n) * scale
    y = torch.roll(c, -start, dims=-1)[..., :length]
    if D is not None:
        y = y + ue * D
    return y if post is None else y * post


@pytest.fixture(params=["fast", "tiled", "tiled-small"])
def path(request, monkeypatch):
    """All rows in one block of library calls, or tiles on the pool (small tiles: several units,
    both threads, boxes of fewer rows than the per-thread buffers hold)."""
    if request.param.startswith("tiled"):
        monkeypatch.setattr(cpu, "FAST_BYTES", -1)
        from convfuse.backends import cpu_cost
        monkeypatch.setattr(cpu_cost, "POOL_MIN_SECONDS", 0.0)
    if request.param == "tiled-small":
        from convfuse.backends import cpu_exec
        monkeypatch.setattr(cpu_exec, "TILE_BYTES", 4096)
    return request.param


# (n, L, K, start, length, bins): causal even n, odd n, a circular call, a wrapping window, one bin
CASES = [(64, 32, 32, 0, 32, 5), (63, 31, 20, 0, 31, 16), (48, 48, 48, 0, 48, 24), (40, 40, 17, 33, 30, 7),
         (32, 16, 16, 0, 16, 1), (32, 16, 16, 0, 16, 16)]


@pytest.mark.parametrize("conj", [False, True], ids=["conv", "corr"])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_sparse_matches_masked_definition(path, case, conj):
    n, L, K, start, length, bins = CASES[case]
    gen = torch.Generator().manual_seed(case)
    u = torch.randn(3, 8, L, dtype=F64, generator=gen, requires_grad=True)
    k = torch.randn(8, K, dtype=F64, generator=gen, requires_grad=True)
    args = (n, start, length, 0.5, 0.0, conj, F64)
    got = OP(u, k, None, None, None, *args, "cpu", spectrum_bins=bins)
    ref = OP(u, k, None, None, None, *args, "reference", spectrum_bins=bins)
    expected = masked(u, k, n, start, length, 0.5, conj, bins)
    assert_close_rel(got, expected, 1e-12)
    assert_close_rel(ref, expected, 1e-12)
    g = torch.randn(expected.shape, dtype=F64, generator=gen)
    for a, b in zip(torch.autograd.grad(got, (u, k), g), torch.autograd.grad(expected, (u, k), g)):
        assert_close_rel(a, b, 1e-12)


def test_sparse_with_epilogue_constant_kernel_and_fp32(path):
    gen = torch.Generator().manual_seed(7)
    n, L, bins = 256, 128, 20
    u = torch.randn(4, 16, L, generator=gen, requires_grad=True)
    pre = torch.randn(4, 16, L, generator=gen, requires_grad=True)
    post = torch.randn(4, 16, L, generator=gen, requires_grad=True)
    D = torch.randn(16, 1, generator=gen, requires_grad=True)
    weight = torch.nn.Parameter(torch.randn(16, L, generator=gen))
    expected = masked(u.double(), weight.double(), n, 0, L, 1.0, False, bins, D.double(), pre.double(), post.double())
    for _ in range(3):  # the constant kernel's masked spectrum cached and reused
        got = OP(u, weight, D, pre, post, n, 0, L, 1.0, 0.0, False, torch.float32, "cpu", True, bins)
        assert_close_rel(got.double(), expected, 1e-5)
    g = torch.randn(expected.shape, dtype=F64, generator=gen)
    grads = torch.autograd.grad(got, (u, weight, D, pre, post), g.float())
    inputs = [t.detach().double().requires_grad_() for t in (u, weight, D, pre, post)]
    e = masked(inputs[0], inputs[1], n, 0, L, 1.0, False, bins, inputs[2], inputs[3], inputs[4])
    for a, b in zip(grads, torch.autograd.grad(e, inputs, g)):
        assert_close_rel(a.double(), b, 1e-5)


def test_tail_buffer_stays_zero_across_tiles(monkeypatch):
    """Boxes of different sizes share a thread's spectrum buffer: a box's products never leak
    into the next box's cut bins."""
    monkeypatch.setattr(cpu, "FAST_BYTES", -1)
    from convfuse.backends import cpu_cost, cpu_exec
    monkeypatch.setattr(cpu_cost, "POOL_MIN_SECONDS", 0.0)
    monkeypatch.setattr(cpu_exec, "TILE_BYTES", 3000)
    gen = torch.Generator().manual_seed(8)
    u = torch.randn(5, 7, 100, dtype=F64, generator=gen)
    k = torch.randn(7, 100, dtype=F64, generator=gen)
    for bins in (3, 50, 101):
        got = OP(u, k, None, None, None, 200, 0, 100, 1.0, 0.0, False, F64, "cpu", spectrum_bins=bins)
        assert_close_rel(got, masked(u, k, 200, 0, 100, 1.0, False, bins), 1e-12)
