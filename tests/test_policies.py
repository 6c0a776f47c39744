"""Rewrite policies: validation and parsing, semantics against plain-torch definitions (forward and
gradients), Auto, the report's policy fields, and where a policy cannot apply."""

from __future__ import annotations

import json
import math

import pytest
import torch

import convfuse
from convfuse.options import BackendOptions
from convfuse.policies import PolicyError
from conftest import FFT_CONV, Compiled, assert_close_rel
from spellings import bidirectional_pad_flip, bidirectional_sum_of_spectra, channels_last_conv, hyena_fftconv

B, H, L = 2, 4, 64


# ---- definitions in plain torch ------------------------------------------------------------------


def causal_conv(u, k):
    n = 2 * u.shape[-1]
    return torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)[..., : u.shape[-1]]


def partial_definition(k, taps, axis=-1):
    """The kernel with taps >= ``taps`` zeroed along ``axis``."""
    idx = torch.arange(k.shape[axis])
    shape = [1] * k.dim()
    shape[axis] = -1
    return k * (idx < taps).reshape(shape).to(k.dtype)


def freq_sparse_conv(u, k, bins):
    """The causal convolution whose kernel spectrum keeps its lowest ``bins`` one-sided bins."""
    n = 2 * u.shape[-1]
    mask = (torch.arange(n // 2 + 1) < bins).to(torch.float32)
    return torch.fft.irfft(torch.fft.rfft(u, n=n) * (torch.fft.rfft(k, n=n) * mask), n=n)[..., : u.shape[-1]]


def _grads(y, inputs, g):
    return torch.autograd.grad(y, inputs, g)


def check_against(fn, definition, args, rtol=1e-5, **options):
    """``fn`` compiled with ``options`` equals ``definition`` (forward and gradients of every input)."""
    a1 = [a.detach().clone().requires_grad_() for a in args]
    a2 = [a.detach().clone().requires_grad_() for a in args]
    compiled = Compiled(fn, **options)
    got, expected = compiled(*a1), definition(*a2)
    assert_close_rel(got, expected, rtol)
    g = torch.randn_like(expected)
    for x, y in zip(_grads(got, a1, g), _grads(expected, a2, g)):
        assert_close_rel(x, y, rtol)
    return compiled


# ---- policies as values ----------------------------------------------------------------------------


@pytest.mark.parametrize("make, match", [
    (lambda: convfuse.PartialKernel(length=0), "length must be >= 1"),
    (lambda: convfuse.PartialKernel(length=-4), "length must be >= 1"),
    (lambda: convfuse.PartialKernel(length=2.5), "positive integer"),
    (lambda: convfuse.PartialKernel(fraction=0.0), r"fraction must be in \(0, 1\]"),
    (lambda: convfuse.PartialKernel(fraction=1.5), r"fraction must be in \(0, 1\]"),
    (lambda: convfuse.PartialKernel(length=8, fraction=0.5), "exactly one of length= or fraction= \\(got both"),
    (lambda: convfuse.PartialKernel(), "exactly one of length= or fraction= \\(got neither"),
    (lambda: convfuse.FrequencySparse(bins=0), "bins must be >= 1"),
    (lambda: convfuse.FrequencySparse(keep=-0.1), r"keep must be in \(0, 1\]"),
    (lambda: convfuse.FrequencySparse(bins=4, keep=0.5), "exactly one of bins= or keep="),
    (lambda: convfuse.Auto(max_rel_error=0), r"max_rel_error must be a number in \(0, 1\)"),
    (lambda: convfuse.Auto(max_rel_error=float("nan")), "max_rel_error"),
])
def test_bad_policies_are_refused_when_built(make, match):
    with pytest.raises(PolicyError, match=match):
        make()


@pytest.mark.parametrize("policy", [
    convfuse.Exact(), convfuse.PartialKernel(length=1024), convfuse.PartialKernel(fraction=0.25),
    convfuse.FrequencySparse(bins=64), convfuse.FrequencySparse(keep=0.25), convfuse.Auto(max_rel_error=1e-3),
])
def test_policies_round_trip_through_text_and_dict(policy):
    assert convfuse.parse_policy(str(policy)) == policy
    assert convfuse.parse_policy(policy.to_dict()) == policy
    assert convfuse.parse_policy(json.loads(json.dumps(policy.to_dict()))) == policy


def test_policy_text_forms():
    assert str(convfuse.PartialKernel(length=1024)) == "partial:length=1024"
    assert str(convfuse.FrequencySparse(keep=0.25)) == "freq:keep=0.25"
    assert str(convfuse.Auto(max_rel_error=1e-3)) == "auto:max_rel_error=0.001"
    assert convfuse.parse_policy(" Partial_Kernel : length = 16 ") == convfuse.PartialKernel(length=16)
    assert convfuse.parse_policy("exact") == convfuse.Exact() == convfuse.parse_policy(None)
    assert convfuse.parse_policy("auto") == convfuse.Auto()


@pytest.mark.parametrize("text, match", [
    ("partial", "exactly one of length= or fraction="),
    ("partial:len=3", "takes fraction, length, not len"),
    ("partial:length=0", "length must be >= 1"),
    ("freq:keep=abc", "'abc' is not a number"),
    ("freq:keep", "expected key=value"),
    ("sparse:keep=0.5", "unknown policy"),
    ("auto:max_rel_error=2", r"\(0, 1\)"),
])
def test_bad_policy_text(text, match):
    with pytest.raises(PolicyError, match=match):
        convfuse.parse_policy(text)


def test_bad_policy_in_options_is_a_compile_time_error():
    with pytest.raises(ValueError, match="length must be >= 1"):
        BackendOptions.parse({"policy": "partial:length=-1"})
    with pytest.raises(ValueError, match="module_policies.*'blocks.0'.*unknown policy"):
        BackendOptions.parse({"module_policies": {"blocks.0": "nope"}})
    with pytest.raises(ValueError, match="scope"):
        BackendOptions.parse({"scope": "some"})
    with pytest.raises(PolicyError, match="instance"):
        convfuse.parse_policy(convfuse.PartialKernel)


# ---- semantics -----------------------------------------------------------------------------------


@pytest.mark.parametrize("policy, taps", [("partial:length=16", 16), ("partial:fraction=0.3", math.ceil(0.3 * L))])
def test_partial_kernel_is_the_truncated_convolution(policy, taps):
    u, k, D = torch.randn(B, H, L), torch.randn(H, L), torch.randn(H)
    c = check_against(hyena_fftconv, lambda u, k, D: hyena_fftconv(u, partial_definition(k, taps), D),
                      (u, k, D), policy=policy)
    site = c.report.sites[0]
    assert site.rewritten and site.policy == policy and site.policy_applied == f"partial:length={taps}"
    assert c.op_calls() == 1


def test_report_names_the_algorithm_that_runs_for_the_policy_kernel():
    # A partial kernel is a short kernel: the CPU cost model picks a block-wise or direct
    # algorithm for it, and the report says so rather than naming the exact site's choice.
    u, k, D = torch.randn(1, 2, 4096), torch.randn(2, 4096), torch.randn(2)
    exact = Compiled(hyena_fftconv, kernel="cpu")
    partial = Compiled(hyena_fftconv, kernel="cpu", policy="partial:length=16")
    exact(u, k, D), partial(u, k, D)
    assert exact.report.sites[0].kernel == "cpu-fft"
    # 2 rows: conv1d's and overlap-save's fixed costs are not paid back, so the short kernel
    # runs at the smaller FFT size its linear convolution allows (16 + 4096 - 1 <= n' < 8192)
    name = partial.report.sites[0].kernel
    assert name in ("cpu-direct", "cpu-overlap-save") or (
        name.startswith("cpu-fft(n=") and 4111 <= int(name[len("cpu-fft(n="):-1]) < 8192), name


def test_partial_kernel_gradient_is_zero_on_dropped_taps():
    u, k, D = torch.randn(B, H, L), torch.randn(H, L, requires_grad=True), torch.randn(H)
    y = Compiled(hyena_fftconv, policy=convfuse.PartialKernel(length=10))(u, k, D)
    (gk,) = torch.autograd.grad(y, k, torch.randn_like(y))
    assert gk[..., 10:].abs().max() == 0 and gk[..., :10].abs().max() > 0


def test_partial_kernel_along_another_axis():
    x, k = torch.randn(B, L, H), torch.randn(L, H)
    check_against(channels_last_conv, lambda x, k: channels_last_conv(x, partial_definition(k, 8, axis=-2)),
                  (x, k), policy="partial:length=8")


def test_partial_kernel_on_a_circular_convolution():
    def circular(u, k):
        return torch.fft.irfft(torch.fft.rfft(u) * torch.fft.rfft(k), n=u.shape[-1])

    u, k = torch.randn(B, H, L), torch.randn(H, L)
    c = check_against(circular, lambda u, k: circular(u, partial_definition(k, 5)), (u, k),
                      policy="partial:length=5")
    assert c.report.sites[0].pattern == "circular-conv"


def test_partial_length_at_least_the_kernel_is_exact():
    u, k, D = torch.randn(B, H, L), torch.randn(H, L), torch.randn(H)
    c = check_against(hyena_fftconv, hyena_fftconv, (u, k, D), policy="partial:length=4096")
    site = c.report.sites[0]
    assert site.policy == "partial:length=4096" and site.policy_applied == "exact"
    assert "exact" in site.policy_note and site.rel_error == 0.0 and site.flops_saved == 0.0


@pytest.mark.parametrize("policy, bins", [("freq:bins=9", 9), ("freq:keep=0.25", math.ceil(0.25 * (L + 1)))])
def test_frequency_sparse_is_the_masked_spectrum_convolution(policy, bins):
    u, k = torch.randn(B, H, L), torch.randn(H, L)
    c = check_against(causal_conv, lambda u, k: freq_sparse_conv(u, k, bins), (u, k), policy=policy)
    assert c.report.sites[0].policy_applied == f"freq:bins={bins}"
    # The operator masks the spectrum itself (spectrum_bins): no kernel transform in the graph.
    (op,) = [node for gm in c.graphs for node in gm.graph.nodes if node.target is FFT_CONV]
    assert op.kwargs["spectrum_bins"] == bins and c.fft_calls() == 0


class FrozenFilter(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.k = torch.nn.Parameter(torch.randn(H, L))

    def forward(self, u):
        return causal_conv(u, self.k)


def test_frequency_sparse_keeps_a_constant_kernel_cacheable():
    model = FrozenFilter()
    c = Compiled(model, policy="freq:bins=9", kernel="cpu")
    u = torch.randn(B, H, L)
    with torch.no_grad():
        got, want = c(u), freq_sparse_conv(u, model.k, 9)
    assert_close_rel(got, want, 1e-5)
    (op,) = [node for gm in c.graphs for node in gm.graph.nodes if node.target is FFT_CONV]
    assert op.kwargs["constant_kernel"] is True and op.kwargs["spectrum_bins"] == 9


def test_frequency_sparse_all_bins_is_exact():
    u, k = torch.randn(B, H, L), torch.randn(H, L)
    c = check_against(causal_conv, causal_conv, (u, k), policy="freq:keep=1.0")
    assert c.report.sites[0].policy_applied == "exact"


def test_frequency_sparse_with_skip_and_gate():
    def gated(u, k, D, g):
        return hyena_fftconv(u, k, D) * g

    def definition(u, k, D, g):
        return (freq_sparse_conv(u, k, 12) + u * D.unsqueeze(-1)) * g

    args = (torch.randn(B, H, L), torch.randn(H, L), torch.randn(H), torch.randn(B, H, L))
    check_against(gated, definition, args, policy="freq:bins=12")


# ---- the report --------------------------------------------------------------------------------------


def test_report_fields_for_a_policy():
    u, k, D = torch.randn(B, H, L), torch.randn(H, L), torch.randn(H)
    c = Compiled(hyena_fftconv, policy="partial:length=16")
    y = c(u, k, D)
    site = c.report.sites[0]
    expected = hyena_fftconv(u, partial_definition(k, 16), D)
    exact = hyena_fftconv(u, k, D)
    measured = float((expected - exact).norm() / exact.norm())
    assert site.rel_error == pytest.approx(measured, rel=1e-4)
    assert site.flops_saved > 0 and site.bytes_saved > 0
    d = json.loads(c.report.to_json())["sites"][0]
    assert d["policy"] == "partial:length=16" and d["policy_applied"] == "partial:length=16"
    assert d["rel_error"] == pytest.approx(measured, rel=1e-4)
    assert "policy=partial:length=16 rel_error=" in site.line()
    assert_close_rel(y, expected, 1e-5)


def test_policy_that_cannot_find_the_kernel_skips_with_a_reason():
    def same_size(a, b):  # neither signal is a parameter or bound by a skip term, and the product's
        return causal_conv(a, b)  # second factor (b) is the larger one: no role is proven

    a, b = torch.randn(H, L), torch.randn(B, H, L)
    c = Compiled(same_size, policy="partial:length=8")
    torch.testing.assert_close(c(a, b), same_size(a, b))
    site = c.report.sites[0]
    assert not site.rewritten and c.op_calls() == 0
    assert "partial:length=8 cannot apply" in site.reason and "kernel" in site.reason


@pytest.mark.parametrize("fn, with_D", [(bidirectional_sum_of_spectra, False), (bidirectional_pad_flip, True)])
def test_partial_kernel_refuses_bidirectional_kernels(fn, with_D):
    args = [torch.randn(B, H, L), torch.randn(H, L), torch.randn(H, L)] + ([torch.randn(H)] if with_D else [])
    c = Compiled(fn, policy="partial:length=8")
    torch.testing.assert_close(c(*args), fn(*args))
    site = c.report.sites[0]
    assert not site.rewritten and "partial:length=8 cannot apply" in site.reason and "bidirectional" in site.reason


def test_frequency_sparse_on_a_bidirectional_kernel():
    def definition(u, k_fwd, k_bwd):
        n = 2 * u.shape[-1]
        Kf = torch.fft.rfft(k_fwd, n=n) + torch.fft.rfft(k_bwd, n=n).conj()
        mask = (torch.arange(n // 2 + 1) < 10).to(torch.float32)
        return torch.fft.irfft(torch.fft.rfft(u, n=n) * (Kf * mask), n=n)[..., : u.shape[-1]]

    args = (torch.randn(B, H, L), torch.randn(H, L), torch.randn(H, L))
    check_against(bidirectional_sum_of_spectra, definition, args, policy="freq:bins=10")


# ---- Auto ------------------------------------------------------------------------------------------


class DecayingFilter(torch.nn.Module):
    """A long convolution whose constant kernel decays fast: most of its taps barely matter."""

    def __init__(self, H=H, K=L, tau=4.0):
        super().__init__()
        t = torch.arange(K, dtype=torch.float32)
        self.k = torch.nn.Parameter(torch.randn(H, K) * torch.exp(-t / tau))
        self.D = torch.nn.Parameter(torch.randn(H))

    def forward(self, u):
        return causal_conv(u, self.k) + u * self.D.unsqueeze(-1)


def test_auto_picks_a_cut_within_the_budget():
    torch.manual_seed(0)
    model, u = DecayingFilter(), torch.randn(B, H, L)
    c = Compiled(model, policy=convfuse.Auto(max_rel_error=1e-3))
    y = c(u)
    site = c.report.sites[0]
    assert site.rewritten and site.policy == "auto:max_rel_error=0.001"
    assert site.policy_applied.startswith(("partial:length=", "freq:bins=")), site.policy_applied
    assert 0 < site.rel_error <= 1e-3 and site.flops_saved > 0
    with torch.no_grad():
        exact = model(u)
    assert float((y.detach() - exact).norm() / exact.norm()) <= 1e-3 * 1.01
    if site.policy_applied.startswith("partial"):
        taps = int(site.policy_applied.split("=")[1])
        assert taps < L
        with torch.no_grad():
            expected = causal_conv(u, partial_definition(model.k, taps)) + u * model.D.unsqueeze(-1)
        assert_close_rel(y.detach(), expected, 1e-5)


def test_auto_keeps_exact_when_nothing_fits_or_the_kernel_is_computed():
    torch.manual_seed(0)
    model, u = DecayingFilter(tau=1e6), torch.randn(B, H, L)  # a white kernel: every cut costs a lot
    c = Compiled(model, policy="auto:max_rel_error=1e-6")
    c(u)
    site = c.report.sites[0]
    assert site.rewritten and site.policy_applied == "exact" and "no partial length" in site.policy_note

    c = Compiled(hyena_fftconv, policy="auto:max_rel_error=0.5")  # k is an input: not constant
    c(torch.randn(B, H, L), torch.randn(H, L), torch.randn(H))
    site = c.report.sites[0]
    assert site.policy_applied == "exact" and "computed" in site.policy_note


@pytest.mark.parametrize("n, K", [(128, 64), (127, 100), (64, 80)])
def test_kernel_change_bound_equals_the_direct_norm(n, K):
    from convfuse.passes.policy import SiteValues, apply_to_tensor

    k = torch.randn(3, K, dtype=torch.float64)
    values = SiteValues([None, k, None, None, None, n])
    k_eff = k[..., :n]
    for policy in (convfuse.PartialKernel(length=5), convfuse.PartialKernel(length=K + 3),
                   convfuse.FrequencySparse(bins=7), convfuse.FrequencySparse(bins=n)):
        k_new = apply_to_tensor(policy, k, n)[..., :n].double()
        width = max(k_eff.shape[-1], k_new.shape[-1])
        pad = lambda t: torch.nn.functional.pad(t, (0, width - t.shape[-1]))  # noqa: E731
        direct = float((pad(k_new) - pad(k_eff)).norm() / k_eff.norm())
        assert values.kernel_change(policy) == pytest.approx(direct, rel=1e-9, abs=1e-12)


def test_policy_under_dynamic_shapes():
    model = DecayingFilter()
    c = Compiled(model, dynamic=True, policy="partial:length=8")
    for length in (64, 48):
        u = torch.randn(B, H, length)
        with torch.no_grad():
            expected = causal_conv(u, partial_definition(model.k, 8)) + u * model.D.unsqueeze(-1)
            assert_close_rel(c(u), expected, 1e-5)
    assert c.op_calls() >= 1
