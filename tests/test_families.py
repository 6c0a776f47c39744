"""The wider families: each matches eager (outputs and gradients) and is rewritten; near misses are not."""

from __future__ import annotations

import pytest
import torch

import spellings as sp
from conftest import Compiled, assert_matches_eager


def _t(*shape, grad=True):
    return torch.randn(*shape, requires_grad=grad)


FAMILIES = {
    "one-sided-half": (sp.one_sided_half_of_fft, lambda: (_t(2, 4, 32), _t(4, 32), _t(2, 4, 32))),
    "ifft-real": (sp.full_spectra_real_part, lambda: (_t(2, 4, 32), _t(4, 32))),
    "in-place-imul": (sp.in_place_product, lambda: (_t(2, 4, 32), _t(4, 32))),
    "in-place-mul_-after-scale": (sp.in_place_product_after_scale, lambda: (_t(2, 4, 32), _t(4, 32))),
    "in-place-mul_": (sp.in_place_method_product, lambda: (_t(2, 4, 32), _t(4, 32))),
    "ema-correlation-roll": (sp.ema_correlation, lambda: (_t(2, 4, 32), _t(4, 32))),
    "arange-window": (sp.arange_window, lambda: (_t(2, 4, 32), _t(4, 32))),
    "padded-input-offset": (sp.padded_input_offset, lambda: (_t(2, 4, 32), _t(4, 9))),
    "sum-of-spectra": (sp.bidirectional_sum_of_spectra, lambda: (_t(2, 4, 32), _t(4, 32), _t(4, 32))),
    "pad-flip-bidirectional": (sp.bidirectional_pad_flip, lambda: (_t(2, 4, 32), _t(4, 32), _t(4, 32), _t(4))),
    "s4-einsum-skip": (sp.s4_einsum_skip, lambda: (_t(2, 4, 32), _t(3, 4, 32), _t(3, 4))),
    "distributed-products": (sp.distributed_products, lambda: (_t(2, 4, 32), _t(4, 32), _t(4, 32))),
    "nested-scaled-sum": (sp.nested_scaled_sum, lambda: (_t(2, 4, 32), _t(4, 32), _t(4, 32), _t(4, 32))),
    "pre-gated": (sp.pre_gated, lambda: (_t(2, 4, 32), _t(2, 4, 32), _t(4, 32), _t(4))),
}


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_is_rewritten_and_matches_eager(name, dynamic):
    fn, make = FAMILIES[name]
    compiled = assert_matches_eager(fn, make(), dynamic=dynamic)
    statuses = [(s.status, s.reason) for s in compiled.report.sites]
    assert statuses == [("rewritten", "")], compiled.report
    assert compiled.op_calls() == 1 and compiled.fft_calls() == 0


def test_correlation_and_fused_epilogue_are_in_the_spec():
    compiled = assert_matches_eager(sp.ema_correlation, (_t(2, 4, 32), _t(4, 32)))
    spec = compiled.report.sites[0].spec
    assert spec.conj_kernel and spec.start == (-(32 - 1)) % 64 and compiled.report.sites[0].pattern.endswith("correlation")
    compiled = assert_matches_eager(sp.pre_gated, (_t(2, 4, 16), _t(2, 4, 16), _t(4, 16), _t(4)))
    spec = compiled.report.sites[0].spec
    assert spec.pre_gate and spec.skip


def test_in_place_write_between_is_left_alone():
    u, k = torch.randn(2, 4, 16), torch.randn(4, 16)
    compiled = Compiled(sp.mutated_between)
    got = compiled(u.clone(), k)
    torch.testing.assert_close(got, sp.mutated_between(u.clone(), k))
    site = compiled.report.sites[0]
    assert site.status == "skipped" and "in place" in site.reason
    assert compiled.op_calls() == 0


def test_in_place_product_with_other_readers_is_left_alone():
    def shared(u, k):
        L = u.shape[-1]
        U = torch.fft.rfft(u, n=2 * L)
        V = U  # another name for the same spectrum, read after the in-place product
        U.mul_(torch.fft.rfft(k, n=2 * L))
        return torch.fft.irfft(U, n=2 * L)[..., :L], V.abs().sum()

    u, k = torch.randn(2, 4, 16), torch.randn(4, 16)
    compiled = Compiled(shared)
    (a, s), (ea, es) = compiled(u, k), shared(u, k)
    torch.testing.assert_close(a, ea, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s, es, rtol=1e-5, atol=1e-4)


def test_kernel_given_as_a_spectrum_parameter():
    model = sp.SpectrumParameterConv()
    twin = sp.SpectrumParameterConv()
    twin.load_state_dict(model.state_dict())
    u = torch.randn(2, 4, 32)
    compiled = Compiled(twin)
    got, expected = compiled(u), model(u)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    got.square().sum().backward()
    expected.square().sum().backward()
    torch.testing.assert_close(twin.w.grad, model.w.grad, rtol=1e-4, atol=1e-5)
    assert compiled.report.sites[0].status == "rewritten" and compiled.op_calls() == 1


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_two_dimensional_convolution(dynamic):
    x, k = _t(2, 6, 8, 3), _t(6, 8, 3)
    compiled = assert_matches_eager(sp.conv2d_ortho, (x, k), dynamic=dynamic)
    site = compiled.report.sites[0]
    assert site.status == "rewritten" and site.pattern == "circular-conv-2d"
    assert sum(n.target is torch.ops.convfuse.fft_convnd.default for gm in compiled.graphs for n in gm.graph.nodes) == 1


def test_two_dimensional_near_miss_is_left_alone():
    x, k = _t(2, 6, 8, 3), _t(6, 8, 3)
    compiled = assert_matches_eager(sp.conv2d_magnitude_filter, (x, k))
    site = compiled.report.sites[0]
    assert site.status == "skipped" and site.pattern == "spectral-filter" and site.reason


def test_approximate_policy_on_a_two_dimensional_site_is_a_skip_with_a_reason():
    x, k = _t(2, 6, 8, 3), _t(6, 8, 3)
    compiled = Compiled(sp.conv2d_ortho, policy="partial:length=4")
    torch.testing.assert_close(compiled(x, k), sp.conv2d_ortho(x, k), rtol=1e-5, atol=1e-5)
    site = compiled.report.sites[0]
    assert site.status == "skipped" and "1-D" in site.reason and "partial" in site.reason


def test_two_dimensional_correlation_leaves_no_transform_behind():
    def corr2d(u, k):
        n = 2 * u.shape[-1]
        U = torch.fft.rfft2(u, s=(u.shape[-2], n))
        Kf = torch.fft.rfft2(k, s=(u.shape[-2], n)).conj()
        return torch.fft.irfft2(U * Kf, s=(u.shape[-2], n))[..., : u.shape[-1]]

    compiled = assert_matches_eager(corr2d, (_t(2, 4, 8), _t(4, 8)))
    assert compiled.report.sites[0].status == "rewritten" and compiled.fft_calls() == 0


def test_summed_conjugate_kernels_under_dynamic_shapes():
    # With symbolic K and n the pass cannot prove K <= n: each summed kernel term is truncated
    # to n and padded back to n before its reversal, whichever is larger at run time (a term
    # left at length K was once reversed over K instead of n: wrong numbers, found by
    # bench/differential.py).
    def program(u, k, g):
        L = u.shape[-1]
        n = 2 * L
        U = torch.fft.rfft(u, n=n)
        Kf = torch.fft.rfft(k, n=n).conj()
        y = torch.fft.irfft(U * (0.25 * Kf) + U * (0.75 * Kf), n=n)[..., :L]
        return y * g

    compiled = Compiled(program, dynamic=True)
    for L, K in ((2, 1), (4, 3), (8, 20), (5, 5)):
        u = torch.randn(2, 2, L, requires_grad=True)
        k, g = torch.randn(K, requires_grad=True), torch.randn(2, 2, L)
        assert_matches_eager(program, (u, k, g), dynamic=True)
        compiled(u, k, g)
    assert compiled.op_calls() >= 1 and compiled.fft_calls() == 0
