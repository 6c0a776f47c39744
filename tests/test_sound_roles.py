"""Soundness, roles and precision: which operand is the kernel comes from provenance, never from
sizes, and every value is computed in the dtype eager computes it in."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import convfuse
from conftest import Compiled, assert_close_rel


class LongKernel(nn.Module):
    """A kernel parameter with more elements than the input it convolves."""

    def __init__(self, H=4, K=96):
        super().__init__()
        self.k = nn.Parameter(torch.randn(H, K) / K)

    def forward(self, u):
        n = u.shape[-1] + self.k.shape[-1]
        return torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(self.k, n=n), n=n)[..., : u.shape[-1]]


def _partial_definition(model, u, taps):
    k = model.k.detach().clone()
    k[..., taps:] = 0
    n = u.shape[-1] + k.shape[-1]
    return torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)[..., : u.shape[-1]]


def test_partial_kernel_truncates_the_parameter_even_when_it_is_the_larger_operand():
    model = LongKernel()
    u = torch.randn(1, 4, 16)  # 64 elements against the kernel's 384
    c = Compiled(model, policy=convfuse.PartialKernel(length=8))
    with torch.no_grad():
        got = c(u)
    assert_close_rel(got, _partial_definition(model, u, 8), 1e-5)
    site = c.report.sites[0]
    assert site.rewritten and site.policy_applied == "partial:length=8"
    assert site.shapes["k"] == ["4", "96"] and site.shapes["u"] == ["1", "4", "16"]


def test_partial_kernel_follows_the_parameter_whichever_side_of_the_product_it_is_on():
    class KernelFirst(LongKernel):
        def forward(self, u):
            n = u.shape[-1] + self.k.shape[-1]
            return torch.fft.irfft(torch.fft.rfft(self.k, n=n) * torch.fft.rfft(u, n=n), n=n)[..., : u.shape[-1]]

    model = KernelFirst(K=24)
    u = torch.randn(3, 4, 32)
    c = Compiled(model, policy="partial:length=5")
    with torch.no_grad():
        got = c(u)
    assert_close_rel(got, _partial_definition(model, u, 5), 1e-5)


def test_a_policy_is_refused_when_nothing_but_size_could_tell_the_kernel():
    def f(a, b):  # the product's second factor is the larger: no provenance says which is the kernel
        n = 2 * a.shape[-1]
        return torch.fft.irfft(torch.fft.rfft(a, n=n) * torch.fft.rfft(b, n=n), n=n)[..., : a.shape[-1]]

    a, b = torch.randn(4, 16), torch.randn(3, 4, 16)
    c = Compiled(f, policy="partial:length=4")
    torch.testing.assert_close(c(a, b), f(a, b))
    site = c.report.sites[0]
    assert not site.rewritten and "sizes are no proof" in site.reason


class HalfBidirectional(nn.Module):
    """A bidirectional kernel summed from two half-precision parameters after their upcast."""

    def __init__(self, dtype, H=4, L=32, magnitude=1.0):
        super().__init__()
        self.fwd = nn.Parameter((torch.randn(H, L) * magnitude).to(dtype))
        self.bwd = nn.Parameter((torch.randn(H, L) * magnitude).to(dtype))

    def forward(self, u):
        L = u.shape[-1]
        n = 2 * L
        k_f = torch.fft.rfft(self.fwd.float(), n=n) + torch.fft.rfft(self.bwd.float(), n=n).conj()
        return torch.fft.irfft(torch.fft.rfft(u, n=n) * k_f, n=n)[..., :L]


def test_a_kernel_summed_from_fp16_parameters_is_summed_in_fp32_as_eager_does():
    model = HalfBidirectional(torch.float16, magnitude=1.0)
    with torch.no_grad():  # values whose fp16 sum overflows (65504 is fp16's largest)
        model.fwd.fill_(60000.0)
        model.bwd.fill_(60000.0)
    u = torch.randn(2, 4, 32)
    c = Compiled(model)
    with torch.no_grad():
        got, want = c(u), model(u)
    assert torch.isfinite(want).all() and torch.isfinite(got).all()
    assert_close_rel(got, want, 1e-5)
    assert c.report.sites[0].rewritten


def test_a_kernel_summed_from_bf16_parameters_keeps_fp32_accuracy():
    model = HalfBidirectional(torch.bfloat16)
    u = torch.randn(2, 4, 32)
    c = Compiled(model)
    with torch.no_grad():
        got, want = c(u), model(u)
    assert_close_rel(got, want, 1e-5)


def test_an_upcast_to_fp64_followed_by_a_large_scale_is_computed_in_fp64():
    def f(u, k):
        n = 2 * u.shape[-1]
        y = torch.fft.irfft(torch.fft.rfft(u.double(), n=n) * torch.fft.rfft(k.double(), n=n) * 1e40, n=n)
        return y[..., : u.shape[-1]]

    u, k = torch.randn(2, 4, 16), torch.randn(4, 16)
    c = Compiled(f)
    got, want = c(u, k), f(u, k)
    assert torch.isfinite(want).all() and torch.isfinite(got).all()
    assert_close_rel(got, want, 1e-10)
    assert c.report.sites[0].rewritten  # fp64 spectra: 1e40 is well inside their range


def test_an_output_upcast_ends_what_the_operator_absorbs():
    def f(u, k):
        n = 2 * u.shape[-1]
        y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)[..., : u.shape[-1]]
        return y.double() * 1e300

    u, k = torch.randn(2, 4, 16), torch.randn(4, 16)
    c = Compiled(f)
    got, want = c(u, k), f(u, k)
    assert torch.isfinite(want).all() and torch.isfinite(got).all()
    assert got.dtype == torch.float64
    assert_close_rel(got, want, 1e-5)


def test_a_half_precision_pre_gate_stays_in_eagers_precision():
    def f(x, v, k):
        n = 2 * x.shape[-1]
        return torch.fft.irfft(torch.fft.rfft((x * v).float(), n=n) * torch.fft.rfft(k, n=n), n=n)[..., : x.shape[-1]]

    # bf16 rounds x * v to 8 bits: a product computed in fp32 instead differs by ~1e-3
    x, v, k = torch.randn(2, 4, 16).bfloat16(), torch.randn(2, 4, 16).bfloat16(), torch.randn(4, 16)
    c = Compiled(f)
    assert_close_rel(c(x, v, k), f(x, v, k), 1e-5)
    assert c.report.sites[0].rewritten and not c.report.sites[0].spec.pre_gate


@pytest.mark.parametrize("scale", [1e30, 1e-30, 1e38])
def test_extreme_constants_are_not_folded_into_the_operator(scale):
    def f(u, k):
        n = 2 * u.shape[-1]
        y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n) * scale, n=n)
        return y[..., : u.shape[-1]] / scale

    u, k = torch.randn(2, 4, 16), torch.randn(4, 16)
    c = Compiled(f)
    got, want = c(u, k), f(u, k)
    assert torch.equal(torch.isfinite(got), torch.isfinite(want))
    assert not c.report.sites[0].rewritten and c.report.sites[0].pattern == "extreme-scale"


class ConjugatedInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.p = nn.Parameter(torch.randn(3, 12))

    def forward(self, u):
        n = 24
        return torch.fft.irfft(torch.fft.rfft(u, n=n).conj() * torch.fft.rfft(self.p, n=n), n=n)[..., :12]


class SymmetricSkip(ConjugatedInput):
    def forward(self, u):
        n = 24
        y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(self.p, n=n), n=n)[..., :12]
        return y + self.p * u


def test_partial_kernel_never_cuts_the_input_when_provenance_disagrees():
    u = torch.randn(2, 3, 12)
    model = ConjugatedInput()  # the parameter is the kernel, but the input's spectrum is conjugated
    c = Compiled(model, policy="partial:length=4")
    with torch.no_grad():
        assert_close_rel(c(u), model(u), 1e-5)
    assert not c.report.sites[0].rewritten and "cannot tell" in c.report.sites[0].reason


def test_partial_kernel_cuts_the_parameter_of_a_symmetric_skip_product():
    u = torch.randn(2, 3, 12)
    model = SymmetricSkip()  # y + p * u: the skip term reads the input that is not module state
    c = Compiled(model, policy="partial:length=4")
    with torch.no_grad():
        got = c(u)
        cut = model.p.detach().clone()
        cut[..., 4:] = 0
        y = torch.fft.irfft(torch.fft.rfft(u, n=24) * torch.fft.rfft(cut, n=24), n=24)[..., :12]
        assert_close_rel(got, y + model.p * u, 1e-5)
    site = c.report.sites[0]
    assert site.rewritten and site.policy_applied == "partial:length=4" and site.shapes["k"] == ["3", "12"]
