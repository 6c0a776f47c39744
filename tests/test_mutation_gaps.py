"""Tests for the gaps mutation testing found (bench/README.md lists them): each would fail with
the mutant it is named after."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.fx.experimental.symbolic_shapes import ShapeEnv

from conftest import Compiled, assert_close_rel, assert_matches_eager
from convfuse.passes.sizes import proven

L, N = 16, 32


def test_an_output_slice_with_a_step_is_not_a_window():
    def f(u, k):
        return torch.fft.irfft(torch.fft.rfft(u, n=N) * torch.fft.rfft(k, n=N), n=N)[..., :L:2]

    c = assert_matches_eager(f, (torch.randn(2, 3, L, requires_grad=True), torch.randn(3, L, requires_grad=True)))
    assert c.report.sites[0].rewritten and c.report.sites[0].spec.length == N  # the step stays in the graph


def test_a_lossy_cast_before_the_transform_stays():
    def f(u, k):
        return torch.fft.irfft(torch.fft.rfft(u.float(), n=N) * torch.fft.rfft(k, n=N), n=N)[..., :L]

    u = torch.randn(2, 3, L, dtype=torch.float64) * (1 + 1e-9)  # bits fp32 drops
    k = torch.randn(3, L)
    c = Compiled(f)
    got, want = c(u, k), f(u, k)
    assert got.dtype == want.dtype == torch.float32
    assert_close_rel(got, want, 1e-6)


def test_a_scalar_on_either_side_of_a_spectrum_is_folded():
    def f(u, k):
        return torch.fft.irfft((torch.fft.rfft(u, n=N) * 0.5) * (3.0 * torch.fft.rfft(k, n=N)), n=N)[..., :L]

    c = assert_matches_eager(f, (torch.randn(2, 3, L, requires_grad=True), torch.randn(3, L, requires_grad=True)))
    assert c.report.sites[0].rewritten and abs(c.report.sites[0].spec.scale - 1.5) < 1e-12


def test_a_narrow_window_is_fused_with_its_offset():
    def f(u, k):
        return torch.fft.irfft(torch.fft.rfft(u, n=N) * torch.fft.rfft(k, n=N), n=N).narrow(-1, 3, L)

    c = assert_matches_eager(f, (torch.randn(2, 3, L, requires_grad=True), torch.randn(3, L, requires_grad=True)))
    spec = c.report.sites[0].spec
    assert c.report.sites[0].rewritten and spec.start == 3 and spec.length == L


def test_explicit_zero_and_negative_slice_bounds():
    def f(u, k):
        return torch.fft.irfft(torch.fft.rfft(u, n=N) * torch.fft.rfft(k, n=N), n=N)[..., 0:-L]

    c = assert_matches_eager(f, (torch.randn(2, 3, L, requires_grad=True), torch.randn(3, L, requires_grad=True)))
    spec = c.report.sites[0].spec
    assert c.report.sites[0].rewritten and spec.start == 0 and spec.length == N - L


class BufferKernel(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("k", torch.randn(3, L))

    def forward(self, u):
        return torch.fft.irfft(torch.fft.rfft(u, n=N) * torch.fft.rfft(self.k, n=N), n=N)[..., :L]


def test_a_buffer_kernel_is_module_state():
    model = BufferKernel()
    c = Compiled(model)
    u = torch.randn(2, 3, L)
    assert_close_rel(c(u), model(u), 1e-5)
    assert c.report.sites[0].spec.constant_kernel


def _symbols(*lowers):
    env = ShapeEnv()
    out = []
    for lower in lowers:
        s = env.create_unbacked_symint()
        torch._check(s >= lower)
        out.append(s)
    return out


def test_the_floor_bound_prover_proves_what_holds_and_only_that():
    (s,) = _symbols(2)
    assert proven(s // 2 + s <= 2 * s)
    assert proven(s // 2 + 1 <= s)
    assert not proven(s // 2 + s < s + 1)  # false at s = 2: 1 + 2 < 3
    assert not proven(s // 2 >= s)
    assert not proven(s + 1 <= s)
    assert proven(s + 1 > s)


def test_the_prover_bounds_max_and_min_on_the_right_side_only():
    s, t = _symbols(1, 1)
    assert proven(torch.sym_max(s, t) + 1 > s)  # max(s, t) >= s where it adds
    assert not proven(torch.sym_min(s, t) >= s)  # false when t < s
    assert not proven(torch.sym_max(s, t) <= s)  # false when t > s
    assert proven(s + t - torch.sym_min(s, t) >= s)  # -min(s, t) >= -t
