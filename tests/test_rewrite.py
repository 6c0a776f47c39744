"""The pass on published spellings: numerics equal eager, the site is rewritten, near misses are not."""

from __future__ import annotations

import pytest
import torch

import spellings as sp
from conftest import Compiled, assert_matches_eager


def _t(*shape, dtype=torch.float32, grad=True):
    return torch.randn(*shape, dtype=dtype, requires_grad=grad)


CONVOLUTIONS = {
    "hyena": (sp.hyena_fftconv, lambda: (_t(2, 4, 32), _t(4, 32), _t(4))),
    "hyena-gated": (sp.hyena_gated, lambda: (_t(2, 4, 32), _t(4, 32), _t(4), _t(2, 4, 32))),
    "hyena-4d": (sp.hyena_fftconv, lambda: (_t(2, 3, 4, 32), _t(4, 32), _t(4))),
    "hyena-5d": (sp.hyena_fftconv, lambda: (_t(2, 2, 3, 4, 16), _t(3, 4, 16), _t(4))),
    "hyena-odd-L": (sp.hyena_fftconv, lambda: (_t(2, 4, 31), _t(4, 31), _t(4))),
    "s4-n=L+K": (sp.s4_fftconv, lambda: (_t(2, 4, 32), _t(4, 12))),
    "s4-channels": (sp.s4_channels, lambda: (_t(2, 4, 32), _t(3, 4, 32))),
    "s4-mul": (sp.s4_mul, lambda: (_t(2, 4, 32), _t(4, 32))),
    "per-batch-kernel": (sp.s4_mul, lambda: (_t(2, 4, 32), _t(2, 4, 32))),
    "channels-last": (sp.channels_last_conv, lambda: (_t(2, 32, 4), _t(32, 4))),
    "circular": (sp.circular_conv, lambda: (_t(2, 4, 32), _t(4, 32))),
    "ortho-scaled": (sp.ortho_conv, lambda: (_t(2, 4, 32), _t(4, 32))),
}


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("name", list(CONVOLUTIONS))
def test_convolution_is_rewritten_and_matches_eager(name, dynamic):
    fn, make = CONVOLUTIONS[name]
    compiled = assert_matches_eager(fn, make(), dynamic=dynamic)
    report = compiled.report
    assert [s.status for s in report.sites] == ["rewritten"], report
    assert compiled.op_calls() == 1
    assert compiled.fft_calls() == 0, "the transforms should be gone from the graph"
    site = report.sites[0]
    assert site.source.endswith(".py:" + site.source.rsplit(":", 1)[1]) and "spellings.py" in site.source
    assert site.kernel.startswith("cpu")


def test_hyena_spec_is_exact():
    compiled = assert_matches_eager(sp.hyena_fftconv, (_t(2, 4, 32), _t(4, 32), _t(4)))
    spec = compiled.report.sites[0].spec
    assert (spec.axis, spec.L, spec.K, spec.n, spec.start, spec.length) == (-1, 32, 32, 64, 0, 32)
    assert spec.scale == 1.0 and spec.n_power == 0 and spec.skip and spec.causal


def test_dynamic_spec_is_symbolic_and_exact():
    compiled = assert_matches_eager(sp.hyena_fftconv, (_t(2, 4, 32), _t(4, 32), _t(4)), dynamic=True)
    spec = compiled.report.sites[0].spec
    assert isinstance(spec.n, str) and "2*" in spec.n
    assert spec.n_power == 0 and spec.scale == 1.0 and spec.causal


def test_new_length_after_first_compile():
    compiled = Compiled(sp.hyena_fftconv)
    for L in (16, 32, 48):
        u, k, D = torch.randn(2, 4, L), torch.randn(4, L), torch.randn(4)
        torch.testing.assert_close(compiled(u, k, D), sp.hyena_fftconv(u, k, D), rtol=1e-5, atol=1e-5)
    assert len(compiled.graphs) >= 2
    assert all(sum(n.target is torch.ops.convfuse.fft_conv.default for n in gm.graph.nodes) == 1
               for gm in compiled.graphs)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes_keep_output_dtype(dtype):
    u = _t(2, 4, 32, dtype=dtype, grad=False)
    k, D = _t(4, 32, grad=False), _t(4, grad=False)
    compiled = Compiled(sp.hyena_fftconv)
    got, expected = compiled(u, k, D), sp.hyena_fftconv(u, k, D)
    assert got.dtype == expected.dtype == dtype
    # fp64 u is cast to the fp32 kernel dtype by the spelling itself: fp32 accuracy
    tol = {torch.float16: 2e-3, torch.bfloat16: 2e-2, torch.float64: 1e-5}[dtype]
    torch.testing.assert_close(got.double(), expected.double(), rtol=tol, atol=tol * expected.abs().max().item())
    assert compiled.report.sites[0].status == "rewritten"


NEAR_MISSES = {
    "real-mask": (sp.real_mask_filter, lambda: (_t(2, 4, 32), _t(4, 33)), "spectral-filter"),
    "three-spectra": (sp.three_spectra, lambda: (_t(2, 4, 32), _t(4, 32)), None),
    "mismatched-sizes": (sp.mismatched_sizes, lambda: (_t(2, 4, 32), _t(4, 32)), None),
    "kernel-smoothing": (sp.kernel_smoothing, lambda: (_t(4, 32),), None),
    "nonlinear": (sp.nonlinear_spectral, lambda: (_t(2, 4, 32), _t(4, 32)), None),
    "cumsum": (sp.cumulative_over_frequency, lambda: (_t(2, 4, 32), _t(4, 32)), None),
    "odd-no-n": (sp.odd_length_without_n, lambda: (_t(2, 4, 31), _t(4, 31)), None),
    "contracting-einsum": (sp.contracting_einsum, lambda: (_t(2, 4, 32), _t(4, 32)), "channel-contraction"),
}


@pytest.mark.parametrize("name", list(NEAR_MISSES))
def test_near_miss_is_left_alone_with_a_reason(name):
    fn, make, family = NEAR_MISSES[name]
    compiled = assert_matches_eager(fn, make(), rtol=1e-6)
    assert compiled.op_calls() == 0
    sites = compiled.report.sites
    assert sites and all(s.status == "skipped" and len(s.reason) > 20 for s in sites), compiled.report
    if family:
        assert sites[0].pattern == family


def test_two_sites_sharing_a_kernel_spectrum():
    def two(u, v, k):
        L = u.shape[-1]
        Kf = torch.fft.rfft(k, n=2 * L)
        a = torch.fft.irfft(torch.fft.rfft(u, n=2 * L) * Kf, n=2 * L)[..., :L]
        b = torch.fft.irfft(torch.fft.rfft(v, n=2 * L) * Kf, n=2 * L)[..., :L]
        return a * b

    compiled = assert_matches_eager(two, (_t(2, 4, 16), _t(2, 4, 16), _t(4, 16)))
    assert compiled.op_calls() == 2 and compiled.fft_calls() == 0


def test_intermediate_used_elsewhere_is_kept():
    def leaky(u, k):
        L = u.shape[-1]
        y = torch.fft.irfft(torch.fft.rfft(u, n=2 * L) * torch.fft.rfft(k, n=2 * L), n=2 * L)
        return y[..., :L], y.sum()  # the full cyclic result is used too

    compiled = Compiled(leaky)
    u, k = torch.randn(2, 4, 16), torch.randn(4, 16)
    (a, s), (ea, es) = compiled(u, k), leaky(u, k)
    torch.testing.assert_close(a, ea, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s, es, rtol=1e-4, atol=1e-4)
    assert compiled.op_calls() == 1
