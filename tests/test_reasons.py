"""Refusals name the real obstacle, with a family the README lists; the same convolution gets
the same family whichever transform spells it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from conftest import Compiled, assert_matches_eager

L, N = 16, 32


def fno_zeros_buffer(x, w):
    # A Fourier-neural-operator spectral layer: kept modes contracted over channels, written into
    # a zeros spectrum, transformed back.
    m = 5
    x_ft = torch.fft.rfft(x)
    out_ft = torch.zeros(x.shape[0], w.shape[1], x.shape[-1] // 2 + 1, dtype=torch.cfloat)
    out_ft[:, :, :m] = torch.einsum("bix,iox->box", x_ft[:, :, :m], torch.view_as_complex(w))
    return torch.fft.irfft(out_ft, n=x.shape[-1])


class _Modes(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(3, 4, 5, dtype=torch.cfloat))

    def forward(self, x):
        x_ft = torch.fft.rfft(x)
        out_ft = torch.zeros(x.shape[0], 4, x.shape[-1] // 2 + 1, dtype=torch.cfloat)
        out_ft[:, :, :5] = torch.tanh(torch.einsum("bix,iox->box", x_ft[:, :, :5], self.w))
        return torch.fft.irfft(out_ft, n=x.shape[-1])


fno_nonlinear = _Modes()


def real_arithmetic_product(u, k):
    U, K = torch.view_as_real(torch.fft.rfft(u, n=N)), torch.view_as_real(torch.fft.rfft(k, n=N))
    re = U[..., 0] * K[..., 0] - U[..., 1] * K[..., 1]
    im = U[..., 0] * K[..., 1] + U[..., 1] * K[..., 0]
    return torch.fft.irfft(torch.view_as_complex(torch.stack([re, im], dim=-1)), n=N)


def matmul_over_frequency(u, k):
    # a matmul over channels is rewritten (tests/test_contraction_spellings.py); this one sums
    # over frequency: (B, 1, C, F) @ (1, O, F, C)
    U = torch.fft.rfft(u, n=N).unsqueeze(1)
    K = torch.fft.rfft(k, n=N).permute(1, 2, 0).unsqueeze(0)
    return torch.fft.irfft(U @ K, n=N)


def real_mask(u, mask):
    return torch.fft.irfft(torch.fft.rfft(u, n=N) * mask, n=N)


CASES = {
    # the FNO layer with its weight passed in rather than held as a parameter (tests/test_mixing.py
    # has the layer itself, rewritten)
    "zeros buffer, weight an input": (fno_zeros_buffer, lambda: (torch.randn(2, 3, L), torch.randn(3, 4, 5, 2)),
                                      "not-a-transform"),
    "zeros buffer, a nonlinearity between the modes": (fno_nonlinear, lambda: (torch.randn(2, 3, L),), "spectrum-buffer"),
    "real arithmetic": (real_arithmetic_product, lambda: (torch.randn(2, 3, L), torch.randn(3, L)),
                        "real-arithmetic-product"),
    "matmul over frequency": (matmul_over_frequency, lambda: (torch.randn(2, 3, L), torch.randn(3, 4, L)),
                              "channel-contraction"),
    "real mask": (real_mask, lambda: (torch.randn(2, 3, L), torch.randn(3, N // 2 + 1)), "spectral-filter"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_a_refusal_names_the_obstacle(name):
    fn, make, family = CASES[name]
    c = Compiled(fn)
    args = make()
    torch.testing.assert_close(c(*args), fn(*args), rtol=1e-5, atol=1e-5)
    site = c.report.sites[-1]
    assert not site.rewritten and site.pattern == family, (site.pattern, site.reason)


def test_every_family_the_pass_can_name_is_listed_in_the_readme():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    sources = " ".join(p.read_text() for p in (Path(__file__).parents[1] / "convfuse" / "passes").glob("*.py"))
    families = set(re.findall(r'family="([a-z0-9-]+)"', sources))
    assert families, "no families found"
    missing = sorted(f for f in families if f"`{f}`" not in readme)
    assert not missing, f"families the README does not list: {missing}"


def test_irfft_and_irfftn_over_one_axis_are_one_family():
    def one(u, k):
        return torch.fft.irfft(torch.fft.rfft(u, n=N) * torch.fft.rfft(k, n=N), n=N)[..., :L]

    def n_axes(u, k):
        U, K = torch.fft.rfftn(u, s=(N,), dim=(-1,)), torch.fft.rfftn(k, s=(N,), dim=(-1,))
        return torch.fft.irfftn(U * K, s=(N,), dim=(-1,))[..., :L]

    args = (torch.randn(2, 3, L, requires_grad=True), torch.randn(3, L, requires_grad=True))
    a, b = assert_matches_eager(one, args), assert_matches_eager(n_axes, args)
    assert a.report.sites[0].pattern == b.report.sites[0].pattern == "causal-conv"
