"""The outer passes through GPU memory keep their complex buffer in half precision for half results.

Under the Triton interpreter on CPU tensors, at the smallest outer sizes it runs in seconds: 4096
(16 x 256, the outer passes as consumer GPUs run them where the three-level kernel does not fit),
65536 (64 x 1024, the first size only the outer passes serve) and a test-only 16 x 16 x 256
factorization of 65536 for the middle level (the smallest real one, 256K, takes minutes here).

Tolerance, fp16: the unit roundoff is 2^-11 = 4.9e-4.  A result passes through ~7 roundings
(the input, four half dot-operand casts, two buffer stores, the output), each relative to the RMS
of the values at its stage (forward stages divide by their radix, so none is far above the
data's scale): an RMS error of about sqrt(7) * 4.9e-4 = 1.3e-3 of the output's RMS, whose maximum
over thousands of samples is ~4-5 sigma, 6e-3; max|ref| is at least the RMS, so 1e-2 of max|ref|
bounds it.  The comparison that matters more: the half buffer costs at most about one more
rounding per pass than an fp32 buffer, so its error stays within 2x of the fp32-buffer run's.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="the Triton kernels (interpreted on CPU) need triton")

from convfuse import config  # noqa: E402
from convfuse.backends.reference import fft_conv_reference  # noqa: E402
from convfuse.backends.triton_monarch import kernels_outer as ko, launch, plan as plan_mod  # noqa: E402
from convfuse.spec import ConvParams  # noqa: E402

FP16_TOL = 1e-2


@pytest.fixture(autouse=True)
def interpreter(monkeypatch):
    monkeypatch.setattr(config, "triton_interpret", True)


@pytest.fixture
def buffers(monkeypatch):
    """The dtype of every buffer handed to the interpreted outer forward pass."""
    seen = []
    real = ko.OUTER_FWD[True]

    class Spy:
        def __getitem__(self, grid):
            def call(*args, **kw):
                seen.append(args[7].dtype)  # z_ptr
                return real[grid](*args, **kw)
            return call

    monkeypatch.setitem(ko.OUTER_FWD, True, Spy())
    return seen


def _inputs(rows, L, K, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(rows, L, generator=g).to(dtype)
    k = (torch.randn(rows, K, generator=g) / K**0.5).to(dtype)
    pre = torch.randn(rows, L, generator=g).to(dtype)
    post = torch.randn(rows, L, generator=g).to(dtype)
    D = torch.randn(rows, 1, generator=g).to(dtype)
    return u, k, D, pre, post


def _err(out, ref):
    return ((out.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


def _run_both(n, L, dtype, monkeypatch, seed=0, rows=2):
    u, k, D, pre, post = _inputs(rows, L, L, dtype, seed)
    p = ConvParams(n, 0, L, out_dtype=dtype)
    r = launch.resolve(u, k, D, pre, post, p)
    assert isinstance(r.plan, plan_mod.OuterPlan), r
    ref = fft_conv_reference(u, k, D, pre, post, p)
    half = launch.run(u, k, D, pre, post, p)
    with monkeypatch.context() as m:
        m.setattr(launch, "outer_buffer_dtype", lambda plan: plan.compute_dtype)
        full = launch.run(u, k, D, pre, post, p)
    return r, _err(half, ref), _err(full, ref)


@pytest.mark.parametrize("n,L", [(4096, 2000), (65536, 30000)])
def test_fp16_buffer_against_the_reference(n, L, buffers, monkeypatch):
    r, e_half, e_full = _run_both(n, L, torch.float16, monkeypatch)
    assert r.plan.dot_dtype == torch.float16
    assert buffers == [torch.float16, torch.float32]  # the half run, then the fp32-buffer run
    assert e_half <= FP16_TOL, e_half
    assert e_half <= 2 * e_full + 1e-3, (e_half, e_full)


@pytest.mark.slow  # ~60 s under the interpreter: the two-level cases above stay in CI
def test_fp16_buffer_through_the_middle_level(buffers, monkeypatch):
    monkeypatch.setitem(plan_mod.OUTER, 65536, (16, 16, 256))
    plan_mod._plan_cached.cache_clear()
    try:
        r, e_half, e_full = _run_both(65536, 20000, torch.float16, monkeypatch, seed=3)
        assert r.plan.n0b == 16 and buffers[0] == torch.float16
        assert e_half <= FP16_TOL and e_half <= 2 * e_full + 1e-3, (e_half, e_full)
    finally:
        plan_mod._plan_cached.cache_clear()


def test_fp32_results_keep_an_fp32_buffer(buffers):
    u, k, *_ = _inputs(2, 2000, 2000, torch.float32, 1)
    p = ConvParams(4096, 0, 2000)
    out = launch.run(u, k, None, None, None, p)
    assert buffers == [torch.float32]
    assert _err(out, fft_conv_reference(u, k, None, None, None, p)) < 1e-5
    # half inputs with an fp32 result: fp32 dots, so an fp32 buffer
    pf = ConvParams(4096, 0, 2000, out_dtype=torch.float32)
    launch.run(u.half(), k.half(), None, None, None, pf)
    assert buffers[-1] == torch.float32


def test_buffer_dtype_rule():
    for dot, want in ((torch.float16, torch.float16), (torch.bfloat16, torch.bfloat16), (torch.float32, torch.float32)):
        pl = plan_mod.plan_for(65536, torch.float32, "cpu", dot)
        assert launch.outer_buffer_dtype(pl) == want
    assert launch.outer_buffer_dtype(plan_mod.plan_for(65536, torch.float64, "cpu")) == torch.float64
