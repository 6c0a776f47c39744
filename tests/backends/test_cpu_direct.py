"""The direct algorithm's C++ sliding dot products (convfuse/csrc/direct.h, ``convfuse::_direct_rows``).

The op against a plain torch definition (zero padding, unfold, a sum: it imports nothing from
the implementation), every argument it reads (negative and far offsets, K from 1 to past the
row, rows sharing kernel rows, strided rows, fp32/fp64, 1 and 2 threads), its refusals; then
the operator's direct plans on it (values and gradients against the torch.fft reference, with
the op seen running), the cost model choosing it for short kernels, and a compiled H3 layer.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import profile

import convfuse  # noqa: F401
from convfuse import config
from convfuse.backends import cpu_algos
from convfuse.backends.cpu import describe_cpu_algorithm, fft_conv_cpu
from convfuse.backends.reference import fft_conv_reference
from convfuse.spec import ConvParams
from tests.conftest import Compiled, op_calls

pytestmark = pytest.mark.skipif(not cpu_algos.native_direct(), reason="needs the native CPU library (a C++ compiler)")

OP = torch.ops.convfuse._direct_rows.default if cpu_algos.native_direct() else None


def definition(x, w, lo, count):
    """z[r, m] = sum_i xx[r, lo + m + i] * w[r % C, i], xx = x zero outside [0, Lx)."""
    R, Lx = x.shape
    C, K = w.shape
    if count == 0:
        return x.new_zeros(R, 0)
    left = max(0, -lo) + K  # enough zeros on either side for every index the window reads
    padded = F.pad(x, (left, max(0, lo + count + K - Lx) + K))
    start = lo + left
    frames = padded[:, start:start + count + K - 1].unfold(-1, K, 1)  # (R, count, K)
    return (frames * w.repeat(R // C, 1)[:, None, :]).sum(-1)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_matches_the_definition(dtype, threads):
    gen = torch.Generator().manual_seed(0)
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    try:
        for R, C, Lx, K in ((6, 3, 100, 5), (1, 1, 1, 1), (64, 64, 1024, 4), (512, 8, 257, 33), (4, 2, 10, 40),
                            (300, 1, 64, 1)):
            x = torch.randn(R, Lx, dtype=dtype, generator=gen)
            w = torch.randn(C, K, dtype=dtype, generator=gen)
            for lo, count in ((0, Lx - K + 1), (-(K - 1), Lx + K - 1), (-3 * K - 5, 2 * K + 9), (Lx - 1, 3),
                              (Lx + 4, 5), (-K - 20, 7), (2, 0), (0, 1)):
                if count < 0:
                    continue
                got = OP(x, w, lo, count)
                want = definition(x, w, lo, count)
                assert got.shape == (R, count) and got.is_contiguous()
                torch.testing.assert_close(got, want, rtol=tol, atol=tol, msg=f"{(R, C, Lx, K, lo, count)}")
    finally:
        torch.set_num_threads(saved)


def test_strided_rows_and_kernel():
    gen = torch.Generator().manual_seed(1)
    wide = torch.randn(12, 3 * 80, generator=gen)
    for x in (wide[:, 5:85], wide[::2, :80], wide[:, ::3], torch.randn(80, 12, generator=gen).t()):
        w = torch.randn(6, 40, generator=gen)[:, ::5]  # (6, 8), a strided kernel
        want = definition(x.contiguous(), w.contiguous(), -7, 90)
        torch.testing.assert_close(OP(x, w, -7, 90), want, rtol=1e-5, atol=1e-5)


def test_bad_arguments_raise():
    x, w = torch.randn(6, 10), torch.randn(3, 4)
    for args in ((x[None], w, 0, 5), (x, w[None], 0, 5), (x.double(), w, 0, 5), (x.half(), w.half(), 0, 5),
                 (x, w, 0, -1), (torch.randn(5, 10), w, 0, 5), (x, torch.randn(0, 4), 0, 5),
                 (x, torch.randn(3, 0), 0, 5), (x.int(), w.int(), 0, 5), (x, w, 2**63 - 2, 3),
                 (x, w, -(2**63) + 1, 3)):
        with pytest.raises(RuntimeError):
            OP(*args)
    assert OP(torch.randn(0, 10), w, 0, 5).shape == (0, 5)


WINDOWS = [  # (L, K, n, start, length, conj): causal, offset, wrapping negative lags, K = L
    (1024, 4, 2048, 0, 1024, False), (64, 7, 128, 3, 40, False), (64, 7, 128, 100, 28, True),
    (64, 7, 128, 0, 64, True), (200, 16, 256, 10, 200, False), (33, 33, 80, 0, 80, False)]


@pytest.mark.parametrize("window", WINDOWS, ids=lambda w: "-".join(map(str, w)))
def test_the_operator_runs_direct_plans_on_it(window):
    """Values and every gradient of fft_conv forced to "direct" (with a skip term and both gates)
    against the torch.fft reference, and the op seen in the forward."""
    L, K, n, start, length, conj = window
    gen = torch.Generator().manual_seed(L + K)
    B, H = 3, 5
    p = ConvParams(n, start, length, 0.5, -1.0, conj, None)
    u = torch.randn(B, H, L, dtype=torch.float64, generator=gen, requires_grad=True)
    k = torch.randn(H, K, dtype=torch.float64, generator=gen, requires_grad=True)
    D = torch.randn(H, 1, dtype=torch.float64, generator=gen, requires_grad=True) if length == L else None
    post = torch.randn(B, H, length, dtype=torch.float64, generator=gen, requires_grad=True)
    with profile() as prof:
        got = fft_conv_cpu(u, k, D, None, post, p, force="direct")
    names = {e.name for e in prof.events()}
    assert "convfuse::_direct_rows" in names and "aten::conv1d" not in names
    want = fft_conv_reference(u, k, D, None, post, p)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(want)
    inputs = [t for t in (u, k, D, post) if t is not None]
    with config.patch(cpu_algo="direct"):
        op_grads = torch.autograd.grad(torch.ops.convfuse.fft_conv(
            u, k, D, None, post, n, start, length, 0.5, -1.0, conj, torch.float64, "cpu"), inputs, g)
    ref_grads = torch.autograd.grad(want, inputs, g)
    for a, b in zip(op_grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_the_cost_model_picks_it_for_short_kernels_only():
    """With the C++ rows, short kernels over many rows run direct; long kernels stay FFT; and
    without them (native_cpu off) the 4-tap row goes back to the FFT (conv1d's setup)."""
    assert describe_cpu_algorithm(2048, 1024, 4, 0, 1024, 256).startswith("cpu-direct")
    assert describe_cpu_algorithm(2048, 1024, 16, 0, 1024, 256).startswith("cpu-direct")
    assert describe_cpu_algorithm(2048, 1024, 128, 0, 1024, 256).startswith("cpu-fft")
    assert describe_cpu_algorithm(32768, 16384, 64, 0, 16384, 64).startswith("cpu-fft")
    with config.patch(native_cpu=False):
        assert not cpu_algos.native_direct()
        assert describe_cpu_algorithm(2048, 1024, 4, 0, 1024, 256).startswith("cpu-fft")


class _Shift(torch.nn.Module):
    """H3's shift SSM: a short learned kernel over (B, L, H), gated."""

    def __init__(self, d, taps):
        super().__init__()
        self.k = torch.nn.Parameter(torch.randn(d, taps))

    def forward(self, x, q):
        L = x.shape[1]
        u = x.transpose(1, 2)
        y = torch.fft.irfft(torch.fft.rfft(u, n=2 * L) * torch.fft.rfft(self.k, n=2 * L), n=2 * L)[..., :L]
        return (q.transpose(1, 2) * y).transpose(1, 2)


@pytest.mark.parametrize("taps", [4, 9])
def test_compiled_short_kernel_site_runs_direct_with_gradients(taps):
    torch.manual_seed(taps)
    m = _Shift(64, taps)
    x = torch.randn(4, 1024, 64, requires_grad=True)
    q = torch.randn(4, 1024, 64)
    with config.patch(cpu_no_gain_refusal=True):
        c = Compiled(m, kernel="auto")
        got = c(x, q)
    (site,) = c.report.sites
    assert site.status == "rewritten" and site.kernel.startswith("cpu-direct"), site
    assert op_calls(c, torch.ops.convfuse.fft_conv.default) == 1
    want = m(x, q)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(want)
    gx, gk = torch.autograd.grad(got, (x, m.k), g)
    ex, ek = torch.autograd.grad(want, (x, m.k), g)
    torch.testing.assert_close(gx, ex, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gk, ek, rtol=1e-4, atol=1e-4)
