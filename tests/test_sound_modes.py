"""Soundness, modes: a rewrite keeps the grad mode and autocast state of every part it replaces,
and no implementation changes precision under autocast."""

from __future__ import annotations

import pytest
import torch

from conftest import Compiled, assert_close_rel
from convfuse import config

L, N = 64, 128


def _grads(y, xs):
    xs = [x for x in xs if x.requires_grad]
    return torch.autograd.grad(y.sum(), xs, allow_unused=True)


def _run_both(f, *args):
    """(compiled, eager output, compiled output, eager grads, compiled grads) on fresh leaves."""
    c = Compiled(f)
    ea = [a.detach().clone().requires_grad_(a.requires_grad) for a in args]
    ca = [a.detach().clone().requires_grad_(a.requires_grad) for a in args]
    want, got = f(*ea), c(*ca)
    return c, want, got, ea, ca


def test_a_kernel_spectrum_computed_under_no_grad_gets_no_gradient():
    def f(u, k):
        with torch.no_grad():
            K = torch.fft.rfft(k, n=N)
        return torch.fft.irfft(torch.fft.rfft(u, n=N) * K, n=N)[..., :L]

    u, k = torch.randn(2, 4, L, requires_grad=True), torch.randn(4, L, requires_grad=True)
    c, want, got, ea, ca = _run_both(f, u, k)
    assert_close_rel(got, want, 1e-5)
    (want.sum()).backward()
    (got.sum()).backward()
    assert ea[1].grad is None and ca[1].grad is None
    assert_close_rel(ca[0].grad, ea[0].grad, 1e-5)
    site = c.report.sites[0]
    assert not site.rewritten and "no_grad" in site.reason


def test_a_skip_term_outside_a_no_grad_region_is_not_fused_into_it():
    def f(u, k, D):
        with torch.no_grad():
            y = torch.fft.irfft(torch.fft.rfft(u, n=N) * torch.fft.rfft(k, n=N), n=N)[..., :L]
        return y + u * D[:, None]

    args = torch.randn(2, 4, L, requires_grad=True), torch.randn(4, L), torch.randn(4, requires_grad=True)
    c, want, got, ea, ca = _run_both(f, *args)
    assert_close_rel(got, want, 1e-5)
    assert got.requires_grad == want.requires_grad
    for a, b in zip(_grads(got, ca), _grads(want, ea)):
        assert_close_rel(a, b, 1e-5)


def test_a_site_wholly_under_no_grad_is_rewritten_and_stays_without_grad():
    def f(u, k):
        with torch.no_grad():
            return torch.fft.irfft(torch.fft.rfft(u, n=N) * torch.fft.rfft(k, n=N), n=N)[..., :L]

    u, k = torch.randn(2, 4, L, requires_grad=True), torch.randn(4, L, requires_grad=True)
    c, want, got, _, _ = _run_both(f, u, k)
    assert_close_rel(got, want, 1e-5)
    assert not got.requires_grad and not want.requires_grad
    assert c.report.sites[0].rewritten and c.op_calls() == 1


def test_enable_grad_inside_no_grad_splits_the_site():
    def f(u, k):
        K = torch.fft.rfft(k, n=N)
        with torch.enable_grad():
            U = torch.fft.rfft(u, n=N)
        return torch.fft.irfft(U * K, n=N)[..., :L]

    u, k = torch.randn(2, 4, L, requires_grad=True), torch.randn(4, L, requires_grad=True)
    with torch.no_grad():
        c, want, got, _, _ = _run_both(f, u, k)
    assert_close_rel(got, want, 1e-5)
    assert got.requires_grad == want.requires_grad
    assert not c.report.sites[0].rewritten


def test_an_autocast_boundary_inside_a_site_refuses_it():
    def f(u, k):
        K = torch.fft.rfft(k, n=N)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            U = torch.fft.rfft(u, n=N)
        return torch.fft.irfft(U * K, n=N)[..., :L]

    c, want, got, _, _ = _run_both(f, torch.randn(2, 4, L), torch.randn(4, L))
    assert_close_rel(got, want, 1e-5)
    assert not c.report.sites[0].rewritten and "autocast" in c.report.sites[0].reason


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_under_autocast_the_direct_algorithm_keeps_eagers_fp32_precision(dtype):
    # A short kernel makes the CPU path run a direct convolution (conv1d), which autocast would
    # otherwise run in half precision; eager's FFTs stay fp32.
    def f(u, k):
        n = u.shape[-1] + k.shape[-1]
        with torch.autocast("cpu", dtype=dtype):
            y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)[..., : u.shape[-1]]
        return y

    u, k = torch.randn(2, 8, 2048), torch.randn(8, 8)
    with config.patch(cpu_algo="direct"):  # 16 rows would run overlap-save (conv1d's setup not paid back)
        c = Compiled(f, kernel="cpu")
        got, want = c(u, k), f(u, k)
    assert c.report.sites[0].rewritten and "direct" in c.report.sites[0].kernel
    assert got.dtype == want.dtype == torch.float32
    assert_close_rel(got, want, 2e-6)


def test_the_operator_itself_ignores_an_enclosing_autocast():
    from convfuse.backends.cpu import fft_conv_cpu  # noqa: F401  the CPU path is what runs

    u, k = torch.randn(2, 8, 2048), torch.randn(8, 8)
    n = 2048 + 8
    args = (u, k, None, None, None, n, 0, 2048, 1.0, 0.0, False, torch.float32, "cpu")
    plain = torch.ops.convfuse.fft_conv(*args)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = torch.ops.convfuse.fft_conv(*args)
    assert inside.dtype == torch.float32
    assert_close_rel(inside, plain, 1e-6)
