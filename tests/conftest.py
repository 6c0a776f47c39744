"""Shared helpers: run the convfuse pass on a function's Dynamo graph and look at what it did."""

from __future__ import annotations

import os

# The suite runs the pass on tiny shapes, which the CPU cost model would leave to eager ("no gain
# at this size", kernel="auto"): off for every test and the subprocesses they start; the refusal's
# own tests (tests/backends/test_cpu_plan.py) turn it on with config.patch.
os.environ.setdefault("CONVFUSE_CPU_NO_GAIN_REFUSAL", "0")
# Likewise the cache's own threshold: constant kernels at test sizes transform faster than a
# lookup compares them (convfuse.backends.cpu_cost.cache_pays), so the suite, which checks the
# cache's soundness on those sizes, caches every constant kernel; test_cpu_plan tests the threshold.
os.environ.setdefault("CONVFUSE_CPU_CACHE_MIN_US", "0")

import torch
import pytest
from torch.utils._python_dispatch import TorchDispatchMode

import convfuse
from convfuse.backend import convfuse_backend
from convfuse.passes.facts import is_fft
from convfuse.report import collecting

FFT_CONV = torch.ops.convfuse.fft_conv.default


class Compiled:
    """A function compiled with convfuse (the rest of the graph eager: tests run on the pass)."""

    def __init__(self, fn, *, dynamic=None, **options):
        self.graphs = []
        options.setdefault("inner", "eager")

        def backend(gm, example_inputs):
            compiled = convfuse_backend(gm, example_inputs, options=dict(options))
            self.graphs.append(gm)
            return compiled

        self.fn = torch.compile(fn, backend=backend, dynamic=dynamic)
        self.report = None

    def __call__(self, *args):
        with collecting() as report:
            out = self.fn(*args)
        if report.sites:
            self.report = report
        return out

    def op_calls(self) -> int:
        return sum(node.target is FFT_CONV for gm in self.graphs for node in gm.graph.nodes)

    def fft_calls(self) -> int:
        return sum(is_fft(node) for gm in self.graphs for node in gm.graph.nodes)


def assert_matches_eager(fn, args, *, rtol=1e-5, dynamic=None, grads=True, **options) -> Compiled:
    """Compile ``fn`` with convfuse; outputs and gradients must equal eager's to ``rtol`` of their scale."""
    compiled = Compiled(fn, dynamic=dynamic, **options)
    eager_args = [a.detach().clone().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a for a in args]
    comp_args = [a.detach().clone().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a for a in args]
    expected = fn(*eager_args)
    got = compiled(*comp_args)
    assert_close_rel(got, expected, rtol)
    if grads and expected.requires_grad:
        g = torch.randn_like(expected)
        diff_e = [a for a in eager_args if isinstance(a, torch.Tensor) and a.requires_grad]
        diff_c = [a for a in comp_args if isinstance(a, torch.Tensor) and a.requires_grad]
        ge = torch.autograd.grad(expected, diff_e, g)
        gc = torch.autograd.grad(got, diff_c, g)
        for a, b in zip(gc, ge):
            assert_close_rel(a, b, rtol)
    return compiled


def op_calls(c: Compiled, op) -> int:
    """Calls of the operator overload ``op`` in the graphs ``c`` compiled."""
    return sum(node.target is op for gm in c.graphs for node in gm.graph.nodes)


def assert_rewritten_once(c: Compiled, op):
    """The first site was rewritten into exactly one call of ``op``, no FFT left; its report."""
    site = c.report.sites[0]
    assert site.rewritten, site.reason
    assert op_calls(c, op) == 1 and c.fft_calls() == 0
    return site


def assert_module_matches_eager(module, x, rtol=1e-5, dynamic=None) -> Compiled:
    """Compile ``module`` with convfuse; its output, the input's gradient and every parameter's
    gradient (complex ones compared as complex) must equal eager's to ``rtol`` of their scale."""
    c = Compiled(module, dynamic=dynamic)
    xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
    expected, got = module(xe), c(xc)
    assert_close_rel(got, expected, rtol)
    g = torch.randn_like(expected)
    params = list(module.parameters())
    ge = torch.autograd.grad(expected, [xe, *params], g)
    gc = torch.autograd.grad(got, [xc, *params], g)
    for a, b in zip(gc, ge):
        assert_close_rel(a, b, rtol)
    return c


def assert_close_rel(got: torch.Tensor, expected: torch.Tensor, rtol: float) -> None:
    assert got.shape == expected.shape, (got.shape, expected.shape)
    assert got.dtype == expected.dtype, (got.dtype, expected.dtype)
    wide = torch.complex128 if expected.is_complex() else torch.float64  # .double() would drop imaginary parts
    scale = expected.detach().abs().max().double().clamp_min(1e-30)
    err = (got.detach().to(wide) - expected.detach().to(wide)).abs().max()
    assert err <= rtol * scale, f"max error {err:.3e} > {rtol:g} * {scale:.3e}"


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield


@pytest.fixture(params=["pool", "caller"])
def cpu_threading(request, monkeypatch):
    """Both ways the CPU path runs a call's tiles (convfuse.backends.cpu_cost.use_pool): on the
    convfuse thread pool, or on the calling thread with torch's intra-op threads; with 4-row
    tiles, so even small shapes make several units and both pool threads take some."""
    import math

    from convfuse.backends import cpu, cpu_cost, cpu_exec

    monkeypatch.setattr(cpu_cost, "POOL_MIN_SECONDS", 0.0 if request.param == "pool" else math.inf)
    monkeypatch.setattr(cpu_exec, "TILE_BYTES", 1)
    monkeypatch.setattr(cpu, "FAST_BYTES", -1)  # small calls tiled too (not the small-call path)
    # plans (the C++ table's copies too) decide the small-call path when built: build them anew
    from convfuse.backends import cpu_plan

    cpu_plan.clear()
    yield request.param
    cpu_plan.clear()


class RecordingMode(TorchDispatchMode):
    """A dispatch mode that records every op it sees (``ops``) and runs it unchanged."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func)
        return func(*args, **(kwargs or {}))
