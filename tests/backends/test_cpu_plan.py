"""Per-shape plans (convfuse/backends/cpu_plan.py), the small-call path, and the no-gain refusal.

The plan cache and the fast path change how a call runs, never what it computes: outputs and
gradients are checked against the plain torch.fft reference with the fast path on and off.
"""

from __future__ import annotations

import math

import pytest
import torch

import convfuse  # noqa: F401
from convfuse import config
from convfuse.backends import cpu as cpu_mod
from convfuse.backends import cpu_cache, cpu_native, cpu_plan
from convfuse.backends.cpu_cost import NATIVE_OP_FIXED_SECONDS, OP_FIXED_SECONDS, no_gain_reason, predicted_times
from convfuse.backends.reference import fft_conv_reference
from convfuse.spec import ConvParams

from tests.backends.test_cpu import SHAPES, WINDOWS, expected, params
from tests.conftest import Compiled

F64 = torch.float64


@pytest.fixture(params=["fast", "tiled"])
def path(request, monkeypatch):
    """Every call through the small-call path, or none of them."""
    monkeypatch.setattr(cpu_mod, "FAST_BYTES", 2**40 if request.param == "fast" else -1)
    cpu_plan.clear()
    yield request.param
    cpu_plan.clear()


def _op(u, k, D, pre, post, p, kernel="cpu"):
    return torch.ops.convfuse.fft_conv(u, k, D, pre, post, p.n, p.start, p.length, p.scale, p.n_power,
                                       p.conj_kernel, p.out_dtype or u.dtype, kernel, p.constant_kernel,
                                       p.spectrum_bins)


@pytest.mark.parametrize("conj", [False, True])
def test_forward_matches_reference(path, conj):
    gen = torch.Generator().manual_seed(0)
    for L, K, n, start, length in WINDOWS:
        for ub, kb in SHAPES:
            u = torch.randn(*ub, L, dtype=F64, generator=gen)
            k = torch.randn(*kb, K, dtype=F64, generator=gen)
            p = params(n, start, length, conj, out_dtype=F64)
            want = expected(u, k, None, None, None, p)
            for _ in range(2):  # built, then looked up
                got = _op(u, k, None, None, None, p)
                torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9, msg=f"{(L, K, n, start, length, ub, kb)}")
    calls = list(cpu_plan._calls.values())
    assert calls and all(c.fast == (path == "fast") for c in calls if c.plan.algo == "fft" and not c.empty)


def test_plan_built_once_per_shape(path):
    u, k, D = torch.randn(2, 4, 64), torch.randn(4, 64), torch.randn(4, 1)
    p = ConvParams(128, 0, 64)
    _op(u, k, D, None, None, p)
    built = cpu_plan.stats["built"]
    for _ in range(3):
        _op(torch.randn(2, 4, 64), torch.randn(4, 64), torch.randn(4, 1), None, None, p)
    assert cpu_plan.stats["built"] == built  # same shapes, strides, dtypes: no new plan
    _op(torch.randn(2, 4, 64).double(), k, D, None, None, p)  # a new dtype: a new plan
    _op(torch.randn(4, 2, 64).transpose(0, 1), k, D, None, None, p)  # new strides: a new plan
    assert cpu_plan.stats["built"] == built + 2


def test_epilogue_dtypes_and_scalars(path):
    gen = torch.Generator().manual_seed(1)
    B, H, L, K, n = 2, 3, 24, 6, 48
    u = torch.randn(B, H, L, generator=gen).bfloat16()
    k = torch.randn(H, K, generator=gen)
    D = torch.randn(H, 1, generator=gen)
    pre = torch.randn(B, H, L, generator=gen)
    post = torch.randn(1, H, L, generator=gen).half()
    p = params(n, 0, L, False, out_dtype=torch.bfloat16)
    got = _op(u, k, D, pre, post, p)
    assert got.dtype == torch.bfloat16 and got.is_contiguous()
    torch.testing.assert_close(got.float(), fft_conv_reference(u, k, D, pre, post, p).float(), rtol=1e-2, atol=1e-2)
    # 0-d operands broadcast as scalars; fp64 anywhere computes in fp64
    s = torch.tensor(0.5, dtype=F64)
    p64 = params(n, 0, L, True, out_dtype=F64)
    got = _op(u.double(), k, s, s, post, p64)
    torch.testing.assert_close(got, fft_conv_reference(u.double(), k, s.reshape(1), s.reshape(1), post, p64))
    # a spectrum cut (FrequencySparse) and a broadcast signal
    p = ConvParams(n, 0, L, 1.0, 0.0, False, F64, spectrum_bins=5)
    u1 = torch.randn(B, 1, L, dtype=F64, generator=gen)
    torch.testing.assert_close(_op(u1, k.double(), None, None, None, p), fft_conv_reference(u1, k, None, None, None, p))


def test_gradients_match_reference(path):
    gen = torch.Generator().manual_seed(2)
    for ub, kb, L, K, n, start, length in [((2, 3), (3,), 12, 5, 24, 0, 12), ((2, 1), (3,), 12, 12, 12, 5, 12),
                                            ((2, 3), (3,), 20, 4, 16, 0, 16), ((3,), (), 1, 1, 1, 0, 1)]:
        skip = length == L
        tensors = [torch.randn(*ub, L, dtype=F64, generator=gen), torch.randn(*kb, K, dtype=F64, generator=gen),
                   torch.randn(3, 1, dtype=F64, generator=gen) if skip else None,
                   torch.randn(*ub, L, dtype=F64, generator=gen), torch.randn(3, length, dtype=F64, generator=gen)]
        leaves = [t.requires_grad_() if t is not None else None for t in tensors]
        p = params(n, start, length, False, out_dtype=F64)
        g = torch.randn(*torch.broadcast_shapes(ub, kb, (3,)), length, dtype=F64, generator=gen)
        wrt = [t for t in leaves if t is not None]
        got = torch.autograd.grad(_op(*leaves, p), wrt, g)
        want = torch.autograd.grad(fft_conv_reference(*leaves, p), wrt, g)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_constant_kernel_follows_its_values(path):
    """The plan is per shape; whether a cached spectrum is used stays a comparison by value."""
    cpu_cache.clear()
    u, k = torch.randn(2, 4, 32, dtype=F64), torch.randn(4, 32, dtype=F64)
    p = ConvParams(64, 0, 32, 1.0, 0.0, False, F64, constant_kernel=True)

    def op():
        return torch.ops.convfuse.fft_conv(u, k, None, None, None, 64, 0, 32, 1.0, 0.0, False, F64, "cpu",
                                           constant_kernel=True)

    for _ in range(3):
        torch.testing.assert_close(op(), fft_conv_reference(u, k, None, None, None, p))
    assert cpu_cache.stats["hits"] >= 1
    with torch.no_grad():
        k.mul_(-2.0)  # same storage, shape and version-invisible to the plan: new values
    torch.testing.assert_close(op(), fft_conv_reference(u, k, None, None, None, p))


STRAIGHT_CASES = [  # (u dtype, D, pre_gate, post_gate, scale, conj, constant, out dtype)
    (torch.float32, True, False, False, 1.0, False, False, None),
    (torch.float32, False, False, False, 1.0, False, True, None),
    (torch.float32, True, True, True, 0.5, False, False, torch.float16),
    (torch.float16, False, True, False, 1.0, True, True, torch.float32),
    (F64, False, False, True, 2.0, True, False, None),
]


@pytest.mark.parametrize("case", STRAIGHT_CASES, ids=lambda c: "-".join(map(str, c)))
def test_straight_small_path_equals_the_general_one(case, monkeypatch):
    """CpuCall._small (branches decided once per shape) runs the same library calls as _fast:
    bit-identical results, every epilogue, cast, scale, conjugate and a cached constant kernel."""
    dtype, skip, pre, post, scale, conj, constant, out_dtype = case
    monkeypatch.setattr(config, "cpu_cache_min_us", 0.0)  # the constant kernel cached at this size
    cpu_plan.clear()
    cpu_cache.clear()
    gen = torch.Generator().manual_seed(7)
    B, H, L = 2, 3, 40
    u = torch.randn(B, H, L, generator=gen).to(dtype)
    k = torch.randn(H, L, generator=gen)
    D = torch.randn(H, 1, generator=gen) if skip else None
    pg = torch.randn(B, H, L, generator=gen) if pre else None
    qg = torch.randn(1, H, L, generator=gen) if post else None
    p = ConvParams(2 * L, 0, L, scale, 0.0, conj, out_dtype, constant_kernel=constant)
    for _ in range(3):  # built, cached (a constant kernel's second sighting stores), hit
        got = _op(u, k, D, pg, qg, p)
    (call,) = cpu_plan._calls.values()
    assert call.straight
    call.straight = False
    try:
        general = _op(u, k, D, pg, qg, p)
    finally:
        call.straight = True
    assert torch.equal(got, general)
    want = fft_conv_reference(u.double(), k.double(), *(t.double() if t is not None else None for t in (D, pg, qg)),
                              ConvParams(2 * L, 0, L, scale, 0.0, conj, F64))
    tol = 2e-2 if torch.float16 in (dtype, out_dtype) else 1e-4
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)
    if constant:
        assert cpu_cache.stats["hits"] >= 1


def test_the_cache_serves_only_kernels_dearer_than_a_lookup(monkeypatch):
    """At the default threshold a small constant kernel is transformed every call (a lookup that
    compares its bits costs more), a large one is cached; both give the reference's values."""
    monkeypatch.setattr(config, "cpu_cache_min_us", config.Settings().cpu_cache_min_us)  # the default
    for (H, L), cached in (((8, 16), False), ((8, 256), False), ((32, 512), False), ((64, 2048), True)):
        cpu_plan.clear()
        cpu_cache.clear()
        u, k = torch.randn(1, H, L, dtype=F64), torch.randn(H, L, dtype=F64)
        p = ConvParams(2 * L, 0, L, 1.0, 0.0, False, F64, constant_kernel=True)
        for _ in range(3):
            torch.testing.assert_close(_op(u, k, None, None, None, p), fft_conv_reference(u, k, None, None, None, p))
        assert (cpu_cache.stats["hits"] > 0) == cached, (H, L)
        with torch.no_grad():
            k.mul_(-1.5)  # new values in the same storage: never a stale spectrum, cached or not
        torch.testing.assert_close(_op(u, k, None, None, None, p), fft_conv_reference(u, k, None, None, None, p))


def test_autocast_does_not_lower_precision(path):
    u, k = torch.randn(2, 4, 32), torch.randn(4, 32)
    p = ConvParams(64, 0, 32, 1.0, 0.0, False, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = _op(u, k, None, None, None, p)
    torch.testing.assert_close(got, fft_conv_reference(u, k, None, None, None, p), rtol=1e-5, atol=1e-5)


def test_bad_calls_still_raise(path):
    u, k = torch.randn(2, 8), torch.randn(2, 3)
    with pytest.raises(ValueError, match="skip term"):
        _op(u, k, torch.randn(2, 1), None, None, ConvParams(16, 0, 10))
    with pytest.raises(ValueError, match="window start"):
        _op(u, k, None, None, None, ConvParams(16, 16, 4))
    with pytest.raises(TypeError, match="real floating"):
        _op(u.long(), k, None, None, None, ConvParams(16, 0, 8))


# -- the no-gain refusal (convfuse/backend.py, cpu_cost.no_gain_reason) ------------------------------


def _hyena(u, k, D):
    L = u.shape[-1]
    y = torch.fft.irfft(torch.fft.rfft(u, n=2 * L) * torch.fft.rfft(k, n=2 * L), n=2 * L)[..., :L]
    return y + u * D


def test_model_predicts_no_gain_only_for_small_calls():
    with config.patch(native_cpu=False):  # every call in Python: its fixed cost loses at small sizes
        eager, fused = predicted_times(512, 256, 256, 0, 256, 8, 8, False, 2)
        assert fused >= eager
        assert "no gain at this size" in no_gain_reason(512, 256, 256, 0, 256, 8, 8, False, 2)
        assert no_gain_reason(2048, 1024, 1024, 0, 1024, 256, 64, False, 2) is None
        assert no_gain_reason(8192, 4096, 4096, 0, 4096, 1024, 256, True, 2) is None
    if cpu_native.loaded():  # the C++ kernels: 1.14-1.33x eager at 16..1024 samples (bench/fixed_cost.py)
        for L, rows in ((16, 1), (16, 8), (256, 8), (1024, 8)):
            assert no_gain_reason(2 * L, L, L, 0, L, rows, rows, False, 1) is None, (L, rows)
        # a spectrum cut never runs in C++: the Python fixed cost is counted for it
        dense = predicted_times(512, 256, 256, 0, 256, 8, 8, False, 2)[1]
        cut = predicted_times(512, 256, 256, 0, 256, 8, 8, False, 2, bins=64)[1]
        assert cut - dense >= OP_FIXED_SECONDS - NATIVE_OP_FIXED_SECONDS - 1e-12


@pytest.mark.parametrize("native", [False, True])
def test_the_refusal_is_the_models_prediction_with_every_operand(native):
    """no_gain_reason refuses exactly where predicted_times puts the fused call at or above eager's,
    over shapes where every operand matters (a short kernel, a window past the start, fewer kernel
    rows than rows, a spectrum cut), and its text carries both predictions; a kernel transformed
    every call costs the fused call more than a constant one."""
    with config.patch(native_cpu=native):
        for n, L, K, start, length, rows, krows, constant, ops, bins in [
                (512, 256, 256, 0, 256, 8, 8, False, 2, 0), (4096, 2048, 64, 63, 2048, 64, 8, False, 1, 0),
                (1024, 1000, 24, 0, 1000, 4, 4, True, 0, 0), (8192, 4096, 4096, 0, 4096, 256, 64, False, 2, 0),
                (2048, 1024, 1024, 0, 1024, 32, 32, True, 0, 100), (64, 32, 5, 4, 28, 2, 1, False, 3, 0)]:
            eager, fused = predicted_times(n, L, K, start, length, rows, krows, constant, ops, bins)
            reason = no_gain_reason(n, L, K, start, length, rows, krows, constant, ops, bins)
            assert (reason is None) == (fused < eager), (n, L, K, reason)
            if reason is not None:
                assert f"{fused * 1e3:.3f} ms" in reason and f"{eager * 1e3:.3f} ms" in reason
            if K > 256:  # an FFT plan: the kernel's transform is the constant kernel's saving
                other = predicted_times(n, L, K, start, length, rows, krows, not constant, ops, bins)[1]
                assert (other > fused) == constant, (n, L, K)


def test_tiny_site_stays_eager_unless_kernel_cpu():
    u, k, D = torch.randn(1, 8, 256), torch.randn(8, 256), torch.randn(8, 1)
    with config.patch(cpu_no_gain_refusal=True, native_cpu=False):
        auto = Compiled(_hyena)
        torch.testing.assert_close(auto(u, k, D), _hyena(u, k, D))
        (site,) = auto.report.sites
        assert site.status == "skipped" and auto.op_calls() == 0
        assert site.reason.startswith("no gain at this size") and " ms " in site.reason
        assert "predicts" in site.reason and site.spec is not None

        forced = Compiled(_hyena, kernel="cpu")
        torch.testing.assert_close(forced(u, k, D), _hyena(u, k, D), rtol=1e-5, atol=1e-5)
        assert forced.report.sites[0].status == "rewritten" and forced.op_calls() == 1

        big = Compiled(_hyena)
        u2, k2, D2 = torch.randn(4, 64, 1024), torch.randn(64, 1024), torch.randn(64, 1)
        torch.testing.assert_close(big(u2, k2, D2), _hyena(u2, k2, D2), rtol=1e-4, atol=1e-4)
        assert big.report.sites[0].status == "rewritten"
    with config.patch(cpu_no_gain_refusal=False):
        off = Compiled(_hyena)
        off(u, k, D)
        assert off.report.sites[0].status == "rewritten"


@pytest.mark.skipif(not cpu_native.loaded(), reason=f"native CPU kernels: {cpu_native.status()}")
def test_tiny_site_is_rewritten_where_the_cpp_kernels_run_it():
    """With the C++ kernels the operator beats eager at 16..1024 samples: kernel='auto' rewrites
    the tiny site, and its calls run in C++."""
    u, k, D = torch.randn(1, 8, 256), torch.randn(8, 256), torch.randn(8, 1)
    with config.patch(cpu_no_gain_refusal=True):
        auto = Compiled(_hyena)
        with torch.no_grad():
            torch.testing.assert_close(auto(u, k, D), _hyena(u, k, D), rtol=1e-5, atol=1e-5)
            hits = cpu_native.stats()[1]
            torch.testing.assert_close(auto(u, k, D), _hyena(u, k, D), rtol=1e-5, atol=1e-5)
        assert auto.report.sites[0].status == "rewritten" and auto.op_calls() == 1
        assert cpu_native.stats()[1] == hits + 1


def _global_filter(weight):
    def f(x):  # GFNet's filter: channels last, a parameter spectrum, norm="ortho"
        H, W = x.shape[1], x.shape[2]
        X = torch.fft.rfft2(x, dim=(1, 2), norm="ortho") * torch.view_as_complex(weight)
        return torch.fft.irfft2(X, s=(H, W), dim=(1, 2), norm="ortho")
    return f


@pytest.fixture(params=[1, 2])
def intra_op_threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def test_small_multi_axis_site_stays_eager_unless_kernel_cpu(intra_op_threads):
    """fft_convnd sites below the measured line in cpu_cost (MIN_ND_SAMPLES, or where the
    whole-period calls run on kept descriptors MIN_ND_SAMPLES_KEPT) are refused with
    kernel='auto', on either thread count; kernel='cpu' rewrites them; a large one is rewritten."""
    from convfuse.backends import cpu_nd
    from convfuse.backends.cpu_cost import MIN_ND_SAMPLES, MIN_ND_SAMPLES_KEPT
    from tests.conftest import op_calls

    least = MIN_ND_SAMPLES_KEPT if cpu_nd.kept_descriptors() else MIN_ND_SAMPLES
    ND = torch.ops.convfuse.fft_convnd.default
    shapes = [(1, 4, 4, 8), (2, 4, 8, 16), (2, 8, 8, 16), (2, 16, 16, 32), (4, 32, 32, 64), (2, 32, 32, 512)]
    sizes = [math.prod(s) for s in shapes]
    assert min(sizes) < least <= max(sizes)  # both sides of the line, where the library puts it
    with config.patch(cpu_no_gain_refusal=True):
        for shape in shapes:
            B, H, W, C = shape
            refused = B * C * H * W < least
            weight = torch.nn.Parameter(torch.randn(H, W // 2 + 1, C, 2) * 0.02)
            f, x = _global_filter(weight), torch.randn(*shape)
            auto = Compiled(f, dynamic=False)  # one code object, new shapes: no automatic dynamic
            with torch.no_grad():
                torch.testing.assert_close(auto(x), f(x), rtol=1e-5, atol=1e-5)
            (site,) = auto.report.sites
            if refused:
                assert site.status == "skipped" and op_calls(auto, ND) == 0
                assert site.reason.startswith("no gain at this size") and str(least) in site.reason
                forced = Compiled(f, kernel="cpu", dynamic=False)
                with torch.no_grad():
                    torch.testing.assert_close(forced(x), f(x), rtol=1e-5, atol=1e-5)
                assert forced.report.sites[0].status == "rewritten" and op_calls(forced, ND) == 1
            else:
                assert site.status == "rewritten" and op_calls(auto, ND) == 1


def test_dynamic_shapes_are_never_refused():
    u, k, D = torch.randn(1, 8, 256), torch.randn(8, 256), torch.randn(8, 1)
    with config.patch(cpu_no_gain_refusal=True):
        dyn = Compiled(_hyena, dynamic=True)
        torch.testing.assert_close(dyn(u, k, D), _hyena(u, k, D), rtol=1e-5, atol=1e-5)
        assert dyn.report.sites[0].status == "rewritten"
