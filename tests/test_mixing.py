"""Channel-mixing FFT convolutions (issue 14): conv1d/conv2d by FFT and FNO spectral layers.

Each published spelling (examples/mixing.py, our code in their style) is compiled with convfuse
and compared with eager in outputs, the input's gradient and every parameter's; the site must be
rewritten into one mixing operator and no transform may remain; near misses (a nonlinearity
between the modes, a contraction over frequency, overlapping blocks, a weight computed in the
graph, a grouped contraction) are left alone with a reason naming the obstacle.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

from conftest import Compiled, assert_close_rel, assert_module_matches_eager, assert_rewritten_once, op_calls

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
from mixing import FFTConv1d, FFTConv2d, FNOBlock2d, SpectralConv1d, SpectralConv2d  # noqa: E402

MIX = torch.ops.convfuse.fft_conv_mix.default
MODES = torch.ops.convfuse.fft_spectral_mix.default


def _calls(c: Compiled, op) -> int:
    return op_calls(c, op)


CASES = {
    "fft conv1d, C_in != C_out, same, bias": (lambda: FFTConv1d(3, 5, 9), lambda: torch.randn(2, 3, 40), MIX),
    "fft conv2d, same, bias": (lambda: FFTConv2d(2, 3, 5), lambda: torch.randn(2, 2, 12, 12), MIX),
    "fno 1-d": (lambda: SpectralConv1d(3, 4, 6), lambda: torch.randn(2, 3, 32), MODES),
    "fno 1-d, odd grid": (lambda: SpectralConv1d(2, 3, 5), lambda: torch.randn(3, 2, 31), MODES),
    "fno 2-d corner blocks": (lambda: SpectralConv2d(3, 2, 3, 4), lambda: torch.randn(2, 3, 12, 10), MODES),
    "fno 2-d block with gelu and a pointwise path": (lambda: FNOBlock2d(4, 3, 3), lambda: torch.randn(2, 4, 10, 10),
                                                     MODES),
}


@pytest.mark.parametrize("name", list(CASES))
def test_channel_mixing_layers_are_rewritten_and_match_eager(name):
    make_module, make_x, op = CASES[name]
    torch.manual_seed(0)
    c = assert_module_matches_eager(make_module(), make_x())
    site = assert_rewritten_once(c, op)
    assert site.pattern.startswith("channel-mixing" if op is MIX else "fno-spectral")


def test_the_conv1d_layer_fuses_its_window_and_bias():
    torch.manual_seed(0)
    c = assert_module_matches_eager(FFTConv1d(3, 5, 9), torch.randn(2, 3, 40))
    (gm,) = c.graphs
    op = next(node for node in gm.graph.nodes if node.target is MIX)
    assert op.args[2] is not None  # the bias is the operator's
    assert op.args[5] == [40]  # the 'same' window: L samples, not the n = L + K - 1 of the cyclic result
    assert op.args[8] is True  # conv1d is a cross-correlation: the weight's spectrum conjugated
    assert not any(node.target in (torch.roll, "roll") for node in gm.graph.nodes)


def test_the_conv2d_layer_fuses_its_two_axis_window():
    torch.manual_seed(0)
    c = assert_module_matches_eager(FFTConv2d(2, 3, 5), torch.randn(2, 2, 12, 12))
    (gm,) = c.graphs
    op = next(node for node in gm.graph.nodes if node.target is MIX)
    assert op.args[4] == [2, 2] and op.args[5] == [12, 12] and op.args[2] is not None


def test_fno_weights_reach_the_operator_as_module_state():
    torch.manual_seed(0)
    c = assert_module_matches_eager(SpectralConv2d(3, 2, 3, 4), torch.randn(2, 3, 12, 10))
    (gm,) = c.graphs
    op = next(node for node in gm.graph.nodes if node.target is MODES)
    assert op.args[2] == [0, 0, 12 - 3, 0]  # the [:m1, :m2] and [-m1:, :m2] corners
    assert op.kwargs["constant_weights"] is True
    assert not any(node.target is torch.zeros for node in gm.graph.nodes)


def einsum_layouts(x, w):
    # (B, L, C) input transformed along dim=1, a (C_in, C_out, K) weight, output (B, L, C_out)
    n = 2 * x.shape[1]
    X = torch.fft.rfft(x, n=n, dim=1)
    W = torch.fft.rfft(w, n=n)
    return torch.fft.irfft(torch.einsum("bfc,cof->bfo", X, W), n=n, dim=1)[:, : x.shape[1]] * 0.5


def test_any_einsum_layout_is_viewed_into_the_operators():
    args = (torch.randn(2, 16, 3, requires_grad=True), torch.randn(3, 4, 16, requires_grad=True))
    c = Compiled(einsum_layouts)
    got = c(*args)
    expected = einsum_layouts(*[a.detach().clone().requires_grad_() for a in args])
    assert_close_rel(got, expected, 1e-5)
    assert c.report.sites[0].rewritten, c.report.sites[0].reason
    assert _calls(c, MIX) == 1 and c.fft_calls() == 0


def fno_full_spectrum(x, W):
    # every bin kept: the weight is the whole one-sided spectrum
    return torch.fft.irfft(torch.einsum("bix,iox->box", torch.fft.rfft(x), W), n=x.shape[-1])


def test_a_full_spectrum_weight_is_one_block():
    class Full(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.W = torch.nn.Parameter(torch.randn(3, 2, 9, dtype=torch.cfloat))

        def forward(self, x):
            return fno_full_spectrum(x, self.W)

    torch.manual_seed(0)
    c = assert_module_matches_eager(Full(), torch.randn(2, 3, 16))
    assert c.report.sites[0].rewritten and _calls(c, MODES) == 1


# ---- near misses ---------------------------------------------------------------------------


class NonlinearModes(SpectralConv1d):
    def forward(self, x):
        x_ft = torch.fft.rfft(x)
        out_ft = torch.zeros(x.shape[0], self.weights.shape[1], x.size(-1) // 2 + 1, dtype=torch.cfloat)
        mixed = torch.einsum("bix,iox->box", x_ft[:, :, :self.modes], self.weights)
        out_ft[:, :, :self.modes] = mixed * torch.sigmoid(mixed.abs())  # a nonlinearity between the modes
        return torch.fft.irfft(out_ft, n=x.size(-1))


class OverlappingBlocks(SpectralConv2d):
    pass  # built with 2 * modes1 > H below: the corner blocks overlap and the later one wins


class ComputedWeight(SpectralConv1d):
    def forward(self, x):
        x_ft = torch.fft.rfft(x)
        out_ft = torch.zeros(x.shape[0], self.weights.shape[1], x.size(-1) // 2 + 1, dtype=torch.cfloat)
        w = self.weights * x_ft.abs().mean()  # depends on the input
        out_ft[:, :, :self.modes] = torch.einsum("bix,iox->box", x_ft[:, :, :self.modes], w)
        return torch.fft.irfft(out_ft, n=x.size(-1))


def frequency_contraction(x, w):
    n = 2 * x.shape[-1]
    Y = torch.einsum("bcf,ocf->bo", torch.fft.rfft(x, n=n), torch.fft.rfft(w, n=n))  # sums over frequency
    return torch.fft.irfft(Y[..., None].expand(-1, -1, n // 2 + 1), n=n)


def grouped(x, w):
    n = 2 * x.shape[-1]
    Y = torch.einsum("bgcf,gocf->bgof", torch.fft.rfft(x, n=n), torch.fft.rfft(w, n=n))
    return torch.fft.irfft(Y, n=n)[..., : x.shape[-1]]


def two_groups(x, w):
    n = 2 * x.shape[-1]
    Y = torch.einsum("bghcf,ghocf->bghof", torch.fft.rfft(x, n=n), torch.fft.rfft(w, n=n))
    return torch.fft.irfft(Y, n=n)


NEAR_MISSES = {
    "nonlinearity between the modes": (lambda: NonlinearModes(3, 4, 6), lambda: (torch.randn(2, 3, 32),),
                                       "nonlinearity"),
    "overlapping corner blocks": (lambda: OverlappingBlocks(2, 2, 5, 3), lambda: (torch.randn(2, 2, 8, 8),), "overlap"),
    "weight computed from the input": (lambda: ComputedWeight(3, 2, 5), lambda: (torch.randn(2, 3, 16),),
                                       "module parameter"),
    "contraction over frequency": (lambda: frequency_contraction, lambda: (torch.randn(2, 3, 8), torch.randn(4, 3, 8)),
                                   "reaches the inverse through"),
    "two group indices": (lambda: two_groups, lambda: (torch.randn(2, 2, 2, 3, 8), torch.randn(2, 2, 4, 3, 8)),
                          "group"),
}


@pytest.mark.parametrize("name", list(NEAR_MISSES))
def test_near_misses_are_left_alone_with_a_reason(name):
    make, make_args, words = NEAR_MISSES[name]
    fn = make()
    args = make_args()
    c = Compiled(fn)
    torch.testing.assert_close(c(*args), fn(*args))
    assert _calls(c, MIX) == 0 and _calls(c, MODES) == 0
    skipped = [s for s in c.report.sites if not s.rewritten and s.reason]
    assert skipped, c.report.sites
    assert words in " ".join(s.reason for s in skipped)


def test_mixing_sites_refuse_approximate_policies_with_a_reason():
    c = Compiled(FFTConv1d(3, 5, 9), policy="partial:length=4")
    x = torch.randn(2, 3, 40)
    c(x)
    site = c.report.sites[0]
    assert not site.rewritten and "channel-mixing" in site.reason


def test_fno_under_dynamic_batch():
    torch.manual_seed(0)
    module = SpectralConv2d(3, 2, 3, 4)
    c = Compiled(module, dynamic=True)
    for batch in (2, 5):
        x = torch.randn(batch, 3, 12, 10)
        torch.testing.assert_close(c(x), module(x), rtol=1e-5, atol=1e-5)


# ---- random channel-mixing programs and their near misses (tests/programs_mixing.py) ---------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import programs_mixing as PM  # noqa: E402
from programs_draw import Chooser  # noqa: E402


@st.composite
def mixing_programs(draw, kind):
    return PM.draw_program(Chooser(draw=draw), kind)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mixing_programs("conv"))
def test_random_conv_mixing_programs(program):
    assert not PM.check(program)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mixing_programs("modes"))
def test_random_spectral_layers(program):
    assert not PM.check(program)


def test_a_wrong_rewrite_would_be_caught(monkeypatch):
    """The check compares with eager: an operator returning a slightly wrong value fails it."""
    import random

    program = PM.draw_program(Chooser(rng=random.Random(3)), "modes", miss="")
    real = torch.ops.convfuse.fft_spectral_mix.default
    calls = []

    def off(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs) * 1.001

    monkeypatch.setattr(torch.ops.convfuse.fft_spectral_mix, "default", off, raising=False)
    problems = PM.check(program)
    assert calls and any("output: max error" in p for p in problems), problems


def kernel_first(w, x):
    # the weight's spectrum first, the input with two batch axes second: the letters decide roles
    n = 2 * x.shape[-1]
    return torch.fft.irfft(torch.einsum("ocf,bhcf->bhof", torch.fft.rfft(w, n=n), torch.fft.rfft(x, n=n)), n=n)


def test_the_letters_decide_which_factor_is_the_kernel():
    from conftest import assert_matches_eager

    c = assert_matches_eager(kernel_first, (torch.randn(4, 3, 8, requires_grad=True),
                                            torch.randn(2, 5, 3, 8, requires_grad=True)))
    assert c.report.sites[0].rewritten and _calls(c, MIX) == 1


def channel_sum(u, k):
    # 'bhl,hl->bl': depthwise convolutions summed over the channels, one output channel
    L = u.shape[-1]
    y = torch.einsum("bhl,hl->bl", torch.fft.rfft(u, n=2 * L), torch.fft.rfft(k, n=2 * L))
    return torch.fft.irfft(y, n=2 * L)[..., :L]


def test_a_sum_over_channels_is_a_channel_mixing_convolution():
    from conftest import assert_matches_eager

    c = assert_matches_eager(channel_sum, (torch.randn(2, 4, 32, requires_grad=True),
                                           torch.randn(4, 32, requires_grad=True)))
    assert c.report.sites[0].rewritten and _calls(c, MIX) == 1 and c.fft_calls() == 0


def test_a_grouped_contraction_runs_with_groups():
    from conftest import assert_matches_eager

    c = assert_matches_eager(grouped, (torch.randn(2, 3, 2, 8, requires_grad=True),
                                       torch.randn(3, 4, 2, 8, requires_grad=True)))
    site = c.report.sites[0]
    assert site.rewritten, site.reason
    (gm,) = c.graphs
    op = next(node for node in gm.graph.nodes if node.target is MIX)
    assert op.args[9] == 3 and op.args[5] == [8]  # groups, and the causal window
    assert "groups=3" in site.spec.notes


def test_small_mixing_sites_stay_eager_on_cpu_with_a_reason():
    from convfuse import config

    torch.manual_seed(0)
    module, x = SpectralConv1d(4, 4, 8), torch.randn(2, 4, 64)
    with config.patch(cpu_no_gain_refusal=True):
        c = Compiled(module)
        torch.testing.assert_close(c(x), module(x))
        site = c.report.sites[0]
        assert not site.rewritten and "no gain at this size" in site.reason and _calls(c, MODES) == 0
        forced = Compiled(module, kernel="cpu")
        torch.testing.assert_close(forced(x), module(x), rtol=1e-5, atol=1e-6)
        assert forced.report.sites[0].rewritten and _calls(forced, MODES) == 1
        big = Compiled(SpectralConv1d(16, 16, 8))
        xb = torch.randn(16, 16, 2048)
        big(xb)
        assert big.report.sites[0].rewritten, big.report.sites[0].reason


def test_fno_1d_on_a_symbolic_grid():
    torch.manual_seed(0)
    module = SpectralConv1d(3, 2, 6)
    c = Compiled(module, dynamic=True)
    for length in (32, 48):
        x = torch.randn(2, 3, length)
        torch.testing.assert_close(c(x), module(x), rtol=1e-5, atol=1e-5)
    assert c.report.sites[0].rewritten, c.report.sites[0].reason
    assert _calls(c, MODES) >= 1


@pytest.mark.parametrize("dtype", [torch.complex64, torch.int32, torch.bool])
def test_a_cast_the_operators_cannot_return_stays_in_the_graph(dtype):
    # found by an adversarial review: the cast was absorbed and the operator's check failed the compile
    def cast(x, w):
        n = 24
        y = torch.fft.irfft(torch.einsum("bcf,ocf->bof", torch.fft.rfft(x, n=n), torch.fft.rfft(w, n=n)), n=n)
        return (y * 100).to(dtype)

    class FNOCast(SpectralConv1d):
        def forward(self, x):
            return super().forward(x).to(dtype)

    x, w = torch.randn(2, 4, 16), torch.randn(5, 4, 7)
    c = Compiled(cast)
    torch.testing.assert_close(c(x, w), cast(x, w), rtol=1e-5, atol=1e-3 if dtype.is_complex else 1)
    assert c.report.sites[0].rewritten and _calls(c, MIX) == 1
    module = FNOCast(4, 5, 3)
    c = Compiled(module)
    got = c(x)
    assert got.dtype == dtype and c.report.sites[0].rewritten and _calls(c, MODES) == 1
