"""The CPU path's fused backward (convfuse/backends/cpu_grad.py) against autograd through the reference."""

from __future__ import annotations

import pytest
import torch

import convfuse  # noqa: F401  registers the operators
from convfuse import config
from convfuse.backends import cpu_cache, cpu_exec, cpu_grad
from convfuse.backends.reference import fft_conv_reference
from convfuse.spec import ConvParams

F64 = torch.float64
op = torch.ops.convfuse.fft_conv

# (u batch, k batch, L, K, n, start, length)
CASES = [
    ((2, 3), (3,), 16, 16, 32, 0, 16),  # causal, kernel shared by the batch
    ((2, 3), (2, 3), 16, 16, 32, 0, 16),  # one kernel per row
    ((2, 3), (1, 3), 16, 9, 32, 4, 20),  # kernel with a leading one, offset window
    ((2, 1), (3,), 12, 12, 12, 5, 12),  # circular, wrapping window, u broadcast over channels
    ((4, 3), (), 20, 6, 16, 0, 16),  # one kernel for everything, truncated signal (L > n)
    ((2, 3), (3,), 8, 40, 32, 3, 8),  # truncated kernel (K > n)
    ((3, 2), (3, 1), 16, 16, 32, 0, 16),  # kernel interleaved with a broadcast dim: composed backward
]


def _grads(kernel, u, k, p, g, bins=0, constant=False):
    u, k = u.detach().requires_grad_(), k.detach().requires_grad_()
    y = op(u, k, None, None, None, p.n, p.start, p.length, p.scale, p.n_power, p.conj_kernel, F64, kernel,
           constant_kernel=constant, spectrum_bins=bins)
    return torch.autograd.grad(y, (u, k), g)


@pytest.fixture
def fused_calls(monkeypatch):
    """Counts the fused passes that ran (not the composed fallback)."""
    calls = []
    real = cpu_grad.fft_conv_grad_cpu

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(any(t is not None for t in out))
        return out

    monkeypatch.setattr("convfuse.backends.dispatch.fft_conv_grad_cpu", spy)
    monkeypatch.setattr(config, "cpu_algo", "fft")  # tiny shapes would otherwise run direct
    return calls


@pytest.mark.parametrize("conj", [False, True])
@pytest.mark.parametrize("bins", [0, 3])
def test_fused_backward_matches_reference(conj, bins, fused_calls):
    gen = torch.Generator().manual_seed(0)
    for ub, kb, L, K, n, start, length in CASES:
        u = torch.randn(*ub, L, dtype=F64, generator=gen)
        k = torch.randn(*kb, K, dtype=F64, generator=gen)
        p = ConvParams(n, start, length, 0.7, -0.5, conj, F64, spectrum_bins=bins)
        g = torch.randn(*torch.broadcast_shapes(ub, kb), length, dtype=F64, generator=gen)
        got = _grads("cpu", u, k, p, g, bins)
        want = _grads("reference", u, k, p, g, bins)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=f"{(ub, kb, L, K, n, start, length)}")
    # Every case but the interleaved kernel ran fused.
    assert fused_calls.count(True) == len(CASES) - 1 and fused_calls.count(False) == 1


def test_many_tiles_and_threads_accumulate_the_kernel_gradient(fused_calls, monkeypatch):
    # Tiles of 4 rows: each kernel row's gradient is summed over 16 rows from several tiles,
    # added by both threads into the same rows.
    monkeypatch.setattr(cpu_exec, "TILE_BYTES", 1)
    u, k = torch.randn(16, 8, 64, dtype=F64), torch.randn(8, 64, dtype=F64)
    g = torch.randn(16, 8, 64, dtype=F64)
    p = ConvParams(128, 0, 64, 1.0, 0.0, False, F64)
    with cpu_exec.intra_op_threads(2):
        for _ in range(3):
            got = _grads("cpu", u, k, p, g)
            want = _grads("reference", u, k, p, g)
            for a, b in zip(got, want):
                torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert fused_calls and all(fused_calls)


def test_constant_kernel_backward_sees_weight_updates(fused_calls):
    cpu_cache.clear()
    w = torch.nn.Parameter(torch.randn(3, 16, dtype=F64))
    u, g = torch.randn(2, 3, 16, dtype=F64), torch.randn(2, 3, 16, dtype=F64)
    p = ConvParams(32, 0, 16, 1.0, 0.0, False, F64)
    for step in range(4):
        got = _grads("cpu", u, w, p, g, constant=True)
        want = _grads("reference", u, w, p, g)
        torch.testing.assert_close(got[0], want[0], rtol=1e-10, atol=1e-10, msg=f"step {step}")
        with torch.no_grad():
            w.mul_(1.5).add_(0.1)  # bumps the version: a cached spectrum must not be reused
    assert cpu_cache.stats["hits"] == 0  # each version was seen once by forward and once by backward
    for _ in range(3):  # unchanged weights: the backward's conj(K) is cached and reused
        got = _grads("cpu", u, w, p, g, constant=True)
    want = _grads("reference", u, w, p, g)
    torch.testing.assert_close(got[0], want[0], rtol=1e-10, atol=1e-10)
    assert cpu_cache.stats["hits"] >= 2


def test_double_backward_uses_the_differentiable_form():
    u = torch.randn(2, 3, 8, dtype=F64, requires_grad=True)
    k = torch.randn(3, 8, dtype=F64, requires_grad=True)

    def f(u, k):
        return op(u, k, None, None, None, 16, 0, 8, 1.0, 0.0, False, F64, "cpu")

    assert torch.autograd.gradgradcheck(f, (u, k))


def test_gradients_not_asked_for_are_not_computed(fused_calls):
    u = torch.randn(2, 3, 16, requires_grad=True)
    k = torch.randn(3, 16)
    y = op(u, k, None, None, None, 32, 0, 16, 1.0, 0.0, False, torch.float32, "cpu")
    y.sum().backward()
    assert u.grad is not None and k.grad is None
    ud = u.detach().double().requires_grad_()
    ref = fft_conv_reference(ud, k.double(), None, None, None, ConvParams(32, 0, 16))
    ref.sum().backward()
    torch.testing.assert_close(u.grad.double(), ud.grad, rtol=1e-5, atol=1e-5)
    assert fused_calls == [True]


@pytest.mark.parametrize("conj", [False, True])
def test_post_gate_gradient_recomputes_h_in_the_fused_pass(conj, fused_calls):
    # A post gate's gradient needs h (the output before the gate): the fused pass forms it from
    # the transform of ue it already has, instead of running the forward again.
    gen = torch.Generator().manual_seed(3)
    u, k = torch.randn(2, 3, 16, dtype=F64, generator=gen), torch.randn(3, 16, dtype=F64, generator=gen)
    D, pre = torch.randn(3, 1, dtype=F64, generator=gen), torch.randn(2, 3, 16, dtype=F64, generator=gen)
    post = torch.randn(2, 1, 16, dtype=F64, generator=gen)
    g = torch.randn(2, 3, 16, dtype=F64, generator=gen)

    def grads(kernel):
        leaves = [t.detach().clone().requires_grad_() for t in (u, k, D, pre, post)]
        y = op(*leaves, 32, 0, 16, 0.5, 0.0, conj, F64, kernel)
        return torch.autograd.grad(y, leaves, g)

    for a, b in zip(grads("cpu"), grads("reference")):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert fused_calls == [True]
