"""Bad or unusual input never gives a wrong answer or a crash inside torch.compile."""

from __future__ import annotations

import pytest
import torch

import spellings as sp
from conftest import Compiled, assert_matches_eager


def _t(*shape, grad=True):
    return torch.randn(*shape, requires_grad=grad)


def test_integer_signal_is_skipped_with_a_reason():
    def f(u, k):
        L = u.shape[-1]
        return torch.fft.irfft(torch.fft.rfft(u, n=2 * L) * torch.fft.rfft(k, n=2 * L), n=2 * L)[..., :L]

    u, k = torch.randint(-3, 3, (2, 4, 16)), torch.randn(4, 16)
    compiled = Compiled(f)
    torch.testing.assert_close(compiled(u, k), f(u, k))
    site = compiled.report.sites[0]
    assert site.status == "skipped" and "int64" in site.reason and "float" in site.reason


def test_complex_input_fails_exactly_as_eager_does():
    u, k = torch.randn(2, 4, 16, dtype=torch.complex64), torch.randn(4, 16)
    with pytest.raises(Exception) as eager_error:
        sp.s4_mul(u, k)
    with pytest.raises(Exception) as compiled_error:
        Compiled(sp.s4_mul)(u, k)
    assert "complex" in str(eager_error.value).lower() or "real" in str(eager_error.value).lower()
    assert type(compiled_error.value).__name__ in ("TorchRuntimeError", type(eager_error.value).__name__)


def test_aliasing_fft_size_is_the_circular_convolution_it_computes():
    def aliased(u, k):  # n = L < L + K - 1: the cyclic result wraps, and that is what eager computes
        L = u.shape[-1]
        return torch.fft.irfft(torch.fft.rfft(u, n=L) * torch.fft.rfft(k, n=L), n=L)

    compiled = assert_matches_eager(aliased, (_t(2, 4, 16), _t(4, 16)))
    site = compiled.report.sites[0]
    assert site.status == "rewritten" and site.pattern == "circular-conv" and site.spec.causal is False


def test_kernel_longer_than_n_is_truncated_like_rfft_does():
    def long_kernel(u, k):
        L = u.shape[-1]
        return torch.fft.irfft(torch.fft.rfft(u, n=2 * L) * torch.fft.rfft(k, n=2 * L), n=2 * L)[..., :L]

    compiled = assert_matches_eager(long_kernel, (_t(2, 4, 8), _t(4, 40)))
    assert compiled.op_calls() == 1


@pytest.mark.parametrize("L", [1, 2, 3, 17])
def test_short_and_odd_lengths(L):
    compiled = assert_matches_eager(sp.hyena_fftconv, (_t(2, 4, L), _t(4, L), _t(4)))
    assert compiled.op_calls() == 1


def test_empty_batch():
    compiled = Compiled(sp.hyena_fftconv)
    u, k, D = torch.randn(0, 4, 16), torch.randn(4, 16), torch.randn(4)
    assert compiled(u, k, D).shape == (0, 4, 16)


def test_non_contiguous_and_expanded_operands():
    def f(x, k):
        return sp.s4_mul(x.transpose(1, 2), k.expand(4, 16))

    compiled = assert_matches_eager(f, (_t(2, 16, 4), _t(1, 16)))
    assert compiled.op_calls() == 1


def test_gradients_required_on_some_inputs_only():
    u, k, D = _t(2, 4, 16), _t(4, 16, grad=False), _t(4, grad=False)
    compiled = Compiled(sp.hyena_fftconv)
    out = compiled(u, k, D)
    out.square().sum().backward()
    u2 = u.detach().clone().requires_grad_()
    sp.hyena_fftconv(u2, k, D).square().sum().backward()
    torch.testing.assert_close(u.grad, u2.grad, rtol=1e-5, atol=1e-5)
    assert k.grad is None and D.grad is None


def test_no_grad_and_inference_mode():
    u, k, D = torch.randn(2, 4, 16), torch.randn(4, 16), torch.randn(4)
    compiled = Compiled(sp.hyena_fftconv)
    with torch.inference_mode():
        torch.testing.assert_close(compiled(u, k, D), sp.hyena_fftconv(u, k, D), rtol=1e-5, atol=1e-5)
