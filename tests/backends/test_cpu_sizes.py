"""The CPU path's FFT size: a linear call runs at a cheaper size with the same window.

``cpu_cost.same_window_at`` is a claim about the operator's definition (the window of the
cyclic result at size n equals the window at any size from the one it returns), so it is
checked against the definition itself (the reference at both sizes) on every small case,
then through the operator, forward and gradients, where the rounding happens.
"""

from __future__ import annotations

import itertools

import pytest
import torch

import convfuse  # noqa: F401  registers torch.ops.convfuse.fft_conv
from convfuse import config
from convfuse.backends.cpu import describe_cpu_algorithm, plan_for
from convfuse.backends.cpu_cost import fft_size, next_smooth, same_window_at, size_penalty
from convfuse.backends.reference import cyclic_conv_reference
from convfuse.spec import ConvParams

F64 = torch.float64


def _cyclic(u, k, n, start, length, conj):
    return cyclic_conv_reference(u, k, ConvParams(n, start, length, conj_kernel=conj))


def test_same_window_at_holds_against_the_definition():
    gen = torch.Generator().manual_seed(0)
    checked = refused = 0
    for n, Lu, K, conj in itertools.product((7, 8, 12, 13), (1, 3, 5, 8), (1, 2, 4, 6), (False, True)):
        u = torch.randn(2, Lu, dtype=F64, generator=gen)
        k = torch.randn(2, K, dtype=F64, generator=gen)
        full = {}  # size -> the whole cyclic result; a window is a slice of it

        def cyclic(m):
            if m not in full:
                full[m] = _cyclic(u, k, m, 0, m, conj)
            return full[m]

        for start in range(n):
            for length in range(1, n - start + 1):
                least = same_window_at(n, Lu, K, start, length, conj)
                if not least:
                    refused += 1
                    continue
                want = cyclic(n)[..., start : start + length]
                for m in range(least, least + 6):
                    assert start + length <= m  # the window never wraps at m
                    assert torch.allclose(cyclic(m)[..., start : start + length], want, rtol=1e-12, atol=1e-12), \
                        f"n={n} m={m} Lu={Lu} K={K} start={start} len={length} conj={conj}"
                    checked += 1
    assert checked > 1000 and refused > 100  # both branches are exercised


def test_same_window_at_refuses_what_would_change():
    assert same_window_at(16, 20, 4, 0, 16, False) == 0  # signal truncated at n
    assert same_window_at(16, 12, 8, 0, 16, False) == 0  # wraps around: circular
    assert same_window_at(32, 16, 5, 28, 4, True) == 0  # a correlation window on negative lags
    assert same_window_at(8190, 4095, 4095, 0, 4095, False) == 8189  # Hyena trained on tokens[:, :-1]


def test_fft_size_prefers_cheap_sizes_and_keeps_good_ones():
    assert fft_size(8190, 4095, 4095, 0, 4095, False) == 8192
    assert fft_size(2 * 16383, 16383, 16383, 0, 16383, False) == 32768
    assert fft_size(2048, 1024, 1024, 0, 1024, False) == 2048  # already a power of two
    assert fft_size(6000, 3000, 3000, 0, 3000, False) == 6000  # 2^4 3 5^3: cheaper than 8192
    assert fft_size(4099, 4099, 4099, 0, 4099, False) == 4099  # circular: n is the definition
    assert next_smooth(8189) == 8192 and next_smooth(4097) == 4116  # 2^2 3 7^3
    assert size_penalty(8190) > size_penalty(8192 * 3 // 4) > size_penalty(8192)


def test_the_report_names_the_size_that_runs():
    assert describe_cpu_algorithm(8190, 4095, 4095, 0, 4095, 4).startswith("cpu-fft(n=8192 for 8190)")
    assert describe_cpu_algorithm(2048, 1024, 1024, 0, 1024, 4).startswith("cpu-fft(n=2048)")


# (u batch, k batch, L, K, n, start, length, conj): odd and prime sizes where rounding happens
ROUNDED = [
    ((2, 3), (3,), 37, 37, 74, 0, 37, False),  # Hyena-style n = 2L, L odd: 74 -> 75 (7-smooth)
    ((2, 3), (3,), 31, 20, 61, 0, 31, False),  # n prime
    ((2, 3), (3,), 30, 9, 47, 3, 30, False),  # offset window
    ((3,), (3,), 40, 7, 53, 0, 40, True),  # correlation, positive lags
]


@pytest.mark.parametrize("case", ROUNDED, ids=lambda c: f"L{c[2]}K{c[3]}n{c[4]}{'corr' if c[7] else ''}")
def test_rounded_calls_match_the_reference_forward_and_backward(case):
    ub, kb, L, K, n, start, length, conj = case
    p = ConvParams(n, start, length, 0.5, -1.0, conj)
    plan = plan_for(p, L, K, force="fft")
    assert plan.fft_n != n  # the case exercises rounding
    gen = torch.Generator().manual_seed(1)
    skip = length == L
    leaves = [
        torch.randn(*ub, L, dtype=F64, generator=gen).requires_grad_(),
        torch.randn(*kb, K, dtype=F64, generator=gen).requires_grad_(),
        torch.randn(3, 1, dtype=F64, generator=gen).requires_grad_() if skip else None,
        None,
        torch.randn(3, length, dtype=F64, generator=gen).requires_grad_(),
    ]
    args = (n, start, length, 0.5, -1.0, conj, F64)
    with config.patch(cpu_algo="fft"):
        got = torch.ops.convfuse.fft_conv(*leaves, *args, "cpu")
    want = torch.ops.convfuse.fft_conv(*leaves, *args, "reference")
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(want)
    params = [t for t in leaves if t is not None]
    with config.patch(cpu_algo="fft"):
        got_grads = torch.autograd.grad(torch.ops.convfuse.fft_conv(*leaves, *args, "cpu"), params, g)
    want_grads = torch.autograd.grad(want, params, g)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_a_compiled_site_reports_the_size_it_runs_at():
    from tests.conftest import assert_matches_eager

    def fftconv(u, k):  # Hyena's spelling at an odd length: n = 2L = 74 = 2 * 37
        n = 2 * u.shape[-1]
        return torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)[..., : u.shape[-1]]

    def circular(u, k):  # the near miss: n = L = 37 is the definition, it stays
        return torch.fft.irfft(torch.fft.rfft(u) * torch.fft.rfft(k), n=u.shape[-1])

    u, k = torch.randn(2, 4, 37, requires_grad=True), torch.randn(4, 37, requires_grad=True)
    with config.patch(cpu_algo="fft"):
        linear = assert_matches_eager(fftconv, (u, k))
        cyclic = assert_matches_eager(circular, (u, k))
    assert linear.op_calls() == 1 and cyclic.op_calls() == 1
    assert linear.report.sites[0].kernel == "cpu-fft(n=75)"  # 3 * 5^2, the cheapest size >= 73
    assert cyclic.report.sites[0].kernel == "cpu-fft"
