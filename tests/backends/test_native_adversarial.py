"""Adversarial checks of fft_conv's C++ small-call kernels (convfuse/csrc/fft_conv_small.cpp).

Complements tests/backends/test_native.py.  Each case is called twice (the first call builds the
Python plan and hands it to the C++ table, the second runs in C++ where the key matches) and
compared bit for bit with the Python path (``config.patch(native_cpu=False)``) where the C++ ran,
and with the plain torch.fft reference otherwise.

The first four tests are regression tests of defects this file found (2026-12-03), each
docstring says what went wrong; the rest are adversarial cases that already worked.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import convfuse  # noqa: F401
from convfuse import config
from convfuse.backends import cpu, cpu_native, cpu_plan
from convfuse.backends.reference import fft_conv_reference
from convfuse.spec import ConvParams

from tests.backends.test_native import _fresh_plans, _hits, _python, needs_native  # noqa: F401  (a fixture)

F32, F64 = torch.float32, torch.float64


def _op(u, k, D=None, pre=None, post=None, n=32, start=0, length=16, scale=1.0, n_power=0.0, conj=False,
        out_dtype=None, kernel="cpu", constant=False, bins=0):
    return torch.ops.convfuse.fft_conv(u, k, D, pre, post, n, start, length, scale, n_power, conj,
                                       out_dtype or u.dtype, kernel, constant, bins)


def _gen(seed=0):
    g = torch.Generator().manual_seed(seed)
    return lambda *s, dtype=F32: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731


def _native_vs_python(call):
    """(C++ result, Python result, whether the second call ran in C++)."""
    want = _python(call)
    cpu_plan.clear()
    with torch.no_grad():
        call()
        before = _hits()
        got = call()
    return got, want, _hits() == before + 1


def _assert_same(got, want):
    assert got.dtype == want.dtype and got.shape == want.shape and got.stride() == want.stride()
    assert type(got) is type(want) and got.requires_grad == want.requires_grad and got.grad_fn is None
    # NaN positions must agree as well as the values
    assert torch.equal(torch.isnan(got), torch.isnan(want))
    assert torch.equal(got.nan_to_num(), want.nan_to_num())


# ------------------------------------------------------------------------------------------------
# Defects (fail today)
# ------------------------------------------------------------------------------------------------


@needs_native
def test_a_setting_changed_while_a_plan_is_built_leaves_a_stale_plan_in_cpp(monkeypatch):
    """Another thread sets ``config.cpu_algo = "direct"`` while this thread is inside CpuCall()
    (simulated by changing it from plan_for).  The change clears both tables, then this thread
    stores its plan in Python under the *old* setting's key (harmless: the key holds cpu_algo)
    and hands it to C++ (``cpu_native.add``), whose key holds no setting.  From then on every
    call of that shape under cpu_algo="direct" runs the stale FFT plan in C++, where the Python
    path would run the forced direct algorithm (different bits).  The same window exists for
    ``native_cpu = False`` between add()'s check and ``_native_add``: the C++ kernels never read
    the setting per call, they rely on the table being empty.  With real threads (one building
    new shapes, one toggling cpu_algo every ~2 ms) a stale FFT plan sat in the C++ table under
    cpu_algo="direct" after 35 of 300 toggles."""
    monkeypatch.setattr(config, "cpu_algo", None)  # the cost model's own choice (whatever CONVFUSE_CPU_ALGO says)
    r = _gen(1)
    u, k = r(2, 8, 16), r(8, 16)
    original = cpu.plan_for
    fired = []

    def plan_for_racing(*args, **kwargs):
        plan = original(*args, **kwargs)
        if not fired:
            fired.append(True)
            config.cpu_algo = "direct"  # the other thread's assignment lands now
        return plan

    monkeypatch.setattr(cpu, "plan_for", plan_for_racing)
    saved = config.cpu_algo
    try:
        with torch.no_grad():
            _op(u, k)  # built under cpu_algo=None, handed to C++ after the change
        monkeypatch.setattr(cpu, "plan_for", original)
        assert config.cpu_algo == "direct"
        with torch.no_grad():
            before = _hits()
            got = _op(u, k)
            ran_in_cpp = _hits() > before
            # what the Python kernels (the twin) compute under cpu_algo="direct" (its direct
            # rows in C++ too: native_cpu=False would run conv1d, other bits)
            want = torch.ops.convfuse._fft_conv_python(u, k, None, None, None, 32, 0, 16, 1.0, 0.0, False,
                                                        u.dtype, "cpu", False, 0)
        assert not ran_in_cpp, "C++ ran a plan made under another cpu_algo"
        assert torch.equal(got, want)
    finally:
        config.cpu_algo = saved


@needs_native
def test_native_cpu_off_set_while_a_plan_is_handed_over_still_runs_cpp(monkeypatch):
    """``cpu_native.add`` reads ``config.native_cpu`` and *then* calls ``_native_add``; another
    thread's ``config.native_cpu = False`` (which clears the table) landing in between leaves the
    plan in the table, and the C++ kernels, which never read the setting per call, keep running
    that shape with native_cpu=False: the "every call in Python" reference mode is not one.
    Simulated deterministically by landing the assignment just before ``_native_add``; with real
    threads (one building new shapes, one toggling the setting every ~2 ms) a stale plan was in
    the table under native_cpu=False after 50 of 300 toggles."""
    u, k = torch.randn(2, 8, 16), torch.randn(8, 16)
    real_add = torch.ops.convfuse._native_add

    def add_after_the_other_thread(*args):
        config.native_cpu = False  # the other thread's assignment lands now
        return real_add(*args)

    monkeypatch.setattr(torch.ops.convfuse, "_native_add", add_after_the_other_thread)
    saved = config.native_cpu
    try:
        with torch.no_grad():
            _op(u, k)
        monkeypatch.setattr(torch.ops.convfuse, "_native_add", real_add)
        assert config.native_cpu is False
        with torch.no_grad():
            before = _hits()
            _op(u, k)
        assert _hits() == before, "a call ran in C++ with native_cpu=False"
    finally:
        config.native_cpu = saved


@needs_native
def test_after_the_table_overflows_surviving_python_plans_never_return_to_cpp():
    """Performance, not values.  The C++ table clears *all* plans when it reaches 512
    (fft_conv_small.cpp ``add``); cpu_plan drops only its oldest plan.  A plan is handed to C++
    only when Python builds it, so the 511 shapes whose Python plans survive run in Python
    (~20-30 us slower each) until they are evicted there or a setting changes."""
    k = torch.randn(1, 16)
    inputs = {b: torch.randn(b, 1, 16) for b in range(1, 515)}
    with torch.no_grad():
        for b in range(1, 514):  # 513 native shapes: the 513th add clears the C++ table
            _op(inputs[b], k)
        before = _hits()
        _op(inputs[513], k)  # the shape whose plan came in as the tables started again: in C++
        assert _hits() == before + 1, "the plan stored as the table overflowed never reached C++"
        _op(inputs[2], k)  # a hot shape: its plan built again (both tables started again empty)
        before = _hits()
        _op(inputs[2], k)
    assert _hits() == before + 1, "a hot straight call stays in Python after the C++ table overflowed"


@needs_native
def test_functorch_forward_mode_gives_eagers_tangent():
    """``torch.func.jvp`` / ``jacfwd`` through fft_conv gave a ZERO tangent, silently, on both
    paths (redispatched below autograd the result carries no tangent; torch's own custom_op does
    the same), then raised; a dual argument now runs the operator's plain torch definition
    (ops_autograd.register's tangent_reference), with the C++ table holding the shape's plan or
    not."""
    r = _gen(2)
    u, k, t = r(1, 2, 8), r(2, 8), r(1, 2, 8)
    with torch.no_grad():
        _op(u, k, n=16, length=8)  # the plan in the C++ table

    def eager(x):
        return torch.fft.irfft(torch.fft.rfft(x, n=16) * torch.fft.rfft(k, n=16), n=16)[..., :8]

    want_t = torch.func.jvp(eager, (u,), (t,))[1]
    want_j = torch.func.jacfwd(eager)(u)
    for native in (True, False):
        with config.patch(native_cpu=native):
            torch.testing.assert_close(torch.func.jvp(lambda x: _op(x, k, n=16, length=8), (u,), (t,))[1], want_t)
            torch.testing.assert_close(torch.func.jacfwd(lambda x: _op(x, k, n=16, length=8))(u), want_j)
            # reverse mode is unchanged: vmap runs (torch's batching fallback)
            got = torch.vmap(lambda x: _op(x, k, n=16, length=8))(u.unsqueeze(0)).squeeze(0)
            torch.testing.assert_close(got, fft_conv_reference(u, k, None, None, None, ConvParams(16, 0, 8)))


# ------------------------------------------------------------------------------------------------
# Adversarial cases that work today
# ------------------------------------------------------------------------------------------------


def _value_cases():
    r = _gen(3)
    B, H, L = 2, 8, 16
    u, k, D = r(B, H, L), r(H, L), r(H, 1)
    kt = r(L, H).t()
    yield "strided-k-scaled", lambda: _op(u, kt, D, scale=0.5)
    yield "strided-k-conj", lambda: _op(u, kt, conj=True)
    yield "strided-k-fp16", lambda: _op(u, kt.half())
    kd = r(L, H, dtype=F64).t()
    yield "strided-k-fp64-out-fp32", lambda: _op(u, kd, out_dtype=F32)
    ko = r(40).as_strided((H, L), (1, 1))
    yield "overlapping-k-scaled", lambda: _op(u, ko, D, scale=2.0)
    base = r(4 * H * L)
    uu, kk, post = base[: B * H * L].view(B, H, L), base[3 : 3 + H * L].view(H, L), base[1 : 1 + B * H * L].view(B, H, L)
    yield "aliasing-views-with-offsets", lambda: _op(uu, kk, None, None, post)
    yield "same-tensor-everywhere", lambda: _op(u, u, u[:, :, :1], u, u)
    pe, pb = r(1, H, L).expand(B, H, L), r(B, 1, L)
    yield "expanded-pre", lambda: _op(u, k, D, pe)
    yield "pre-broadcasts-u-batch", lambda: _op(u[:1], k, None, pb, u)
    ph = r(B, H, L).half()
    yield "bf16-in-fp16-post", lambda: _op(u.bfloat16(), k.bfloat16(), None, None, ph)
    yield "out-int32", lambda: _op(u, k, out_dtype=torch.int32)
    yield "out-complex64", lambda: _op(u, k, out_dtype=torch.complex64)
    yield "out-bool", lambda: _op(u, k, out_dtype=torch.bool)
    yield "truncating-n", lambda: _op(u, k, n=8, length=8)
    yield "n-1", lambda: _op(u, k, n=1, length=1)
    yield "odd-n", lambda: _op(u, k, n=33, length=17)
    yield "bins-beyond-n", lambda: _op(u, k, bins=1000)
    yield "nan-scale", lambda: _op(u, k, D, scale=float("nan"))
    yield "inf-scale", lambda: _op(u, k, D, scale=float("inf"))
    yield "n_power", lambda: _op(u, k, D, scale=3.0, n_power=-0.5, conj=True)


VALUE_CASES = list(_value_cases())


@needs_native
@pytest.mark.parametrize("case", VALUE_CASES, ids=[c[0] for c in VALUE_CASES])
def test_odd_operands_run_in_cpp_with_the_python_bits(case):
    got, want, ran = _native_vs_python(case[1])
    assert ran, "expected this straight call to run in C++"
    _assert_same(got, want)


@needs_native
def test_an_error_raised_in_cpp_is_the_python_error():
    """int out_dtype with a post gate: the plan is built (and handed to C++) before the call fails."""
    u, k, post = torch.randn(2, 8, 16), torch.randn(8, 16), torch.randn(2, 8, 16)
    messages = []
    for native in (False, True):
        with config.patch(native_cpu=native), torch.no_grad():
            for _ in range(2):
                with pytest.raises(RuntimeError) as info:
                    _op(u, k, None, None, post, out_dtype=torch.int32)
                messages.append(str(info.value).splitlines()[0])
    assert len(set(messages)) == 1, messages


@needs_native
def test_inputs_are_neither_written_nor_version_bumped():
    r = _gen(4)
    u, k, D, pre, post = r(2, 8, 16), r(8, 16), r(8, 1), r(2, 8, 16), r(2, 8, 16)
    copies = [t.clone() for t in (u, k, D, pre, post)]
    with torch.no_grad():
        _op(u, k, D, pre, post, scale=2.0, conj=True)
        versions = [t._version for t in (u, k, D, pre, post)]
        before = _hits()
        _op(u, k, D, pre, post, scale=2.0, conj=True)
    assert _hits() == before + 1
    assert versions == [t._version for t in (u, k, D, pre, post)]
    assert all(torch.equal(a, b) for a, b in zip(copies, (u, k, D, pre, post)))


class _Replace(TorchDispatchMode):
    """A mode that answers fft_conv itself: the C++ kernels must never short-circuit it."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.convfuse.fft_conv.default:
            return torch.full((2, 8, 16), 7.0)
        return func(*args, **(kwargs or {}))


@needs_native
@pytest.mark.parametrize("ctx", [torch.no_grad, torch.inference_mode])
def test_a_mode_that_replaces_the_result_wins(ctx):
    u, k = torch.randn(2, 8, 16), torch.randn(8, 16)
    with ctx():
        _op(u, k)
        _op(u, k)
        before = _hits()
        with _Replace():
            got = _op(u, k)
    assert _hits() == before and torch.equal(got, torch.full((2, 8, 16), 7.0))


@needs_native
def test_inference_mode_neg_view_reaches_cpp_resolved():
    """Under inference_mode the call skips AutogradCPU (and its key-set check); the Negative
    fallback must resolve the bit before the C++ CPU kernel reads the operand."""
    u, k, D = torch.randn(2, 8, 16), torch.randn(8, 16), torch.randn(8, 1)
    neg = torch.complex(torch.zeros_like(u), -u).conj().imag
    assert neg.is_neg()
    want = _python(lambda: _op(u, k, D))
    with torch.inference_mode():
        _op(u, k, D)
        before = _hits()
        got = _op(neg, k, D)
    assert _hits() > before
    assert torch.equal(got, want)


@needs_native
def test_traces_record_fft_conv_only_even_when_the_plan_is_built_while_tracing():
    from torch.fx.experimental.proxy_tensor import make_fx

    u, k, D = torch.randn(2, 8, 16), torch.randn(8, 16), torch.randn(8, 1)
    want = _python(lambda: _op(u, k, D))
    with torch.no_grad():
        gm = make_fx(lambda x: _op(x, k, D), tracing_mode="real")(u)
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert targets == [torch.ops.convfuse.fft_conv.default], targets
    cpu_plan.clear()
    traced = torch.jit.trace(lambda x: _op(x, k, D), (u,))
    kinds = [n.kind() for n in traced.graph.nodes() if n.kind() != "prim::Constant"]
    assert kinds == ["convfuse::fft_conv"], kinds
    with torch.no_grad():
        before = _hits()
        assert torch.equal(traced(u), want) and torch.equal(gm(u), want)
    assert _hits() == before + 2


@needs_native
def test_functionalize_and_vmap_give_the_python_answer():
    u, k, D = torch.randn(2, 8, 16), torch.randn(8, 16), torch.randn(8, 1)
    want = _python(lambda: _op(u, k, D))
    with torch.no_grad():
        _op(u, k, D)
        got_f = torch.func.functionalize(lambda x: _op(x, k, D))(u)
        got_v = torch.vmap(lambda x: _op(x, k, D))(u.unsqueeze(0)).squeeze(0)
    assert torch.equal(got_f, want)
    torch.testing.assert_close(got_v, want, rtol=1e-6, atol=1e-6)


@needs_native
def test_plain_forward_ad_tangent_is_right():
    """Forward AD through torch.autograd.forward_ad (no skip term, which addcmul_out refuses):
    the C++ kernel sees the dual (``_fw_grad(0)``) and leaves the call to Python."""
    import torch.autograd.forward_ad as fwAD

    u, k, t = torch.randn(1, 2, 8), torch.randn(2, 8), torch.randn(1, 2, 8)
    with torch.no_grad():
        _op(u, k, n=16, length=8)
    before = _hits()
    with fwAD.dual_level():
        got = fwAD.unpack_dual(_op(fwAD.make_dual(u, t), k, n=16, length=8)).tangent
    assert _hits() == before
    want = fft_conv_reference(t, k, None, None, None, ConvParams(16, 0, 8))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@needs_native
def test_a_compiled_module_sees_in_place_parameter_updates():
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.k = torch.nn.Parameter(torch.randn(8, 16))
            self.D = torch.nn.Parameter(torch.randn(8, 1))

        def forward(self, x):
            n = 32
            y = torch.fft.irfft(torch.fft.rfft(x, n=n) * torch.fft.rfft(self.k, n=n), n=n)[..., :16]
            return y + x * self.D

    m, x = M(), torch.randn(2, 8, 16)
    c = torch.compile(m, backend="convfuse", options={"inner": "eager"})
    # the compiled call passes constant_kernel=True: no spectrum cache, so it is a straight call
    with config.patch(cpu_cache_min_us=1e9), torch.no_grad():
        c(x)
        before = _hits()
        torch.testing.assert_close(c(x), m(x), rtol=1e-5, atol=1e-5)
        m.k.mul_(2.0)
        m.D.add_(1.0)
        torch.testing.assert_close(c(x), m(x), rtol=1e-5, atol=1e-5)
        assert _hits() == before + 2
