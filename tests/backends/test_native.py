"""The C++ kernels of fft_conv's small CPU calls (convfuse/csrc/fft_conv_small.cpp, cpu_native.py).

They decide nothing and must change nothing: every call they run gives the bits the Python
path gives (``config.native_cpu = False``: every call misses the table and goes to the twin),
and every call they must not run (a gradient wanted, autocast, a tensor with more than plain
CPU keys, a mode, a transform) goes to Python.  The hit counter says which path a call took.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

import convfuse  # noqa: F401
from convfuse import config
from convfuse.backends import cpu_native, cpu_plan
from convfuse.backends.reference import fft_conv_reference
from convfuse.spec import ConvParams

from tests.conftest import FFT_CONV, Compiled, RecordingMode, op_calls

ROOT = Path(__file__).resolve().parents[2]
F64 = torch.float64
HAS_COMPILER = sys.platform == "linux" and any(shutil.which(c) for c in ("c++", "g++", "clang++"))

# Where no compiler exists the kernels are not built (status says why): only the fallback tests run.
needs_native = pytest.mark.skipif(not cpu_native.loaded(), reason=f"native CPU kernels: {cpu_native.status()}")


def _op(u, k, D=None, pre=None, post=None, p=ConvParams(32, 0, 16), kernel="cpu"):
    return torch.ops.convfuse.fft_conv(u, k, D, pre, post, p.n, p.start, p.length, p.scale, p.n_power,
                                       p.conj_kernel, p.out_dtype or u.dtype, kernel, p.constant_kernel,
                                       p.spectrum_bins)


def _hits() -> int:
    return cpu_native.stats()[1]


def _python(fn):
    """``fn()`` with every call on the Python kernels."""
    with config.patch(native_cpu=False):
        return fn()


@pytest.fixture(autouse=True)
def _fresh_plans():
    cpu_plan.clear()
    yield
    cpu_plan.clear()


@pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler (c++, g++, clang++) on PATH: nothing to build with")
def test_loaded_where_a_compiler_exists():
    assert cpu_native.loaded(), cpu_native.status()
    assert cpu_native.status().startswith("loaded (")


def _cases():
    g = torch.Generator().manual_seed(0)
    r = lambda *s, dtype=torch.float32: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    B, H, L = 2, 8, 16
    p = ConvParams(2 * L, 0, L)
    yield "plain", (r(B, H, L), r(H, L)), {}, p
    yield "skip", (r(B, H, L), r(H, L), r(H, 1)), {}, p
    yield "pre", (r(B, H, L), r(H, L), None, r(B, H, L)), {}, p
    yield "post", (r(B, H, L), r(H, L), None, None, r(B, H, L)), {}, p
    yield "both", (r(B, H, L), r(H, L), r(H, 1), r(B, H, L), r(1, H, L)), {}, p
    yield "fp64", (r(B, H, L, dtype=F64), r(H, L, dtype=F64), r(H, 1, dtype=F64)), {}, ConvParams(2 * L, 0, L)
    yield "mixed", (r(B, H, L), r(H, L, dtype=F64), r(H, 1)), {}, ConvParams(2 * L, 0, L, out_dtype=F64)
    yield "cast-out", (r(B, H, L), r(H, L)), {}, ConvParams(2 * L, 0, L, out_dtype=torch.bfloat16)
    yield "corr-scaled", (r(B, H, L), r(H, L), r(H, 1)), {}, ConvParams(2 * L, 0, L, 0.25, 0.0, True)
    yield "n_power", (r(B, H, L), r(H, L)), {}, ConvParams(2 * L, 0, L, 1.0, 1.0)
    yield "window", (r(B, H, L), r(H, 7)), {}, ConvParams(24, 3, 20)
    yield "short-n", (r(B, H, L), r(H, L)), {}, ConvParams(20, 0, L)
    yield "kernel-batch", (r(B, H, L), r(B, H, L)), {}, p
    yield "strided", (r(B, L, H).transpose(1, 2), r(L, H).t(), r(H, 1)), {}, p
    yield "broadcast-u", (r(1, H, L).expand(B, H, L), r(H, L)), {}, p
    yield "constant", (r(B, H, L), r(H, L), r(H, 1)), {}, ConvParams(2 * L, 0, L, constant_kernel=True)
    yield "auto", (r(B, H, L), r(H, L)), {"kernel": "auto"}, p


CASES = list(_cases())


@needs_native
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bit_identical_to_the_python_path(case):
    name, args, kw, p = case
    with config.patch(cpu_cache_min_us=1e9):  # the constant kernel's spectrum not cached: a straight call
        _bit_identical(args, kw, p)


def _bit_identical(args, kw, p):
    want = _python(lambda: _op(*args, p=p, **kw))
    ref = fft_conv_reference(*(list(args) + [None] * (5 - len(args))), p)
    torch.testing.assert_close(want.double(), ref.double(), rtol=2e-2 if want.dtype == torch.bfloat16 else 1e-5,
                               atol=2e-2 if want.dtype == torch.bfloat16 else 1e-5)
    cpu_plan.clear()
    with torch.no_grad():
        _op(*args, p=p, **kw)  # the plan, built in Python, handed to the table
        before = _hits()
        got = _op(*args, p=p, **kw)
    assert _hits() == before + 1, "the call did not run in C++"
    assert got.dtype == want.dtype and got.shape == want.shape and got.is_contiguous()
    assert torch.equal(got, want)


@needs_native
def test_a_cached_constant_kernel_stays_in_python():
    """Where a constant kernel's spectrum is cached, the call looks it up in Python (cpu_cache):
    the C++ kernels never see it, and it gives the Python path's bits."""
    g = torch.Generator().manual_seed(2)
    u, k, D = torch.randn(2, 8, 16, generator=g), torch.randn(8, 16, generator=g), torch.randn(8, 1, generator=g)
    p = ConvParams(32, 0, 16, constant_kernel=True)
    with config.patch(cpu_cache_min_us=0.0):
        with torch.no_grad():
            first = _op(u, k, D, p=p)
            hits = _hits()
            again = _op(u, k, D, p=p)
        assert _hits() == hits and cpu_native.stats()[0] == 0
    assert torch.equal(first, again)
    torch.testing.assert_close(again, fft_conv_reference(u, k, D, None, None, p))


@needs_native
def test_a_near_miss_is_never_served_from_a_plan_for_another_shape():
    u, k = torch.randn(2, 8, 16), torch.randn(8, 16)
    with torch.no_grad():
        _op(u, k)
        _op(u, k)
        hits = _hits()
        for other in (torch.randn(2, 8, 17)[..., :16], torch.randn(3, 8, 16), u.double(), u.clone()):
            got = _op(other, k)
            torch.testing.assert_close(got, fft_conv_reference(other, k, None, None, None, ConvParams(32, 0, 16)))
        # a new stride, batch or dtype is its own key: built in Python, the C++ table took no stale plan
        assert _hits() == hits + 1  # only u.clone() shares u's sizes and strides
        _op(u, k, p=ConvParams(32, 1, 15))  # another window
        _op(u, k, p=ConvParams(32, 0, 16, 0.5))  # another scale
        assert _hits() == hits + 1


@needs_native
def test_auto_and_cpu_share_a_plan():
    """The Python plan key leaves the kernel name out ("auto" and "cpu" run the same CPU plan):
    a plan built by a direct "cpu" call must serve a compiled graph's "auto" calls in C++ too."""
    u, k = torch.randn(2, 8, 16), torch.randn(8, 16)
    with torch.no_grad():
        want = _op(u, k, kernel="cpu")
        hits = _hits()
        for kernel in ("auto", "cpu", "auto"):
            assert torch.equal(_op(u, k, kernel=kernel), want)
        assert _hits() == hits + 3
        _op(u, k, kernel="reference")  # another implementation: never the table's
        assert _hits() == hits + 3


@needs_native
def test_calls_that_want_gradients_go_to_python():
    u, k, D = torch.randn(2, 8, 16, requires_grad=True), torch.randn(8, 16, requires_grad=True), torch.randn(8, 1)
    p = ConvParams(32, 0, 16)
    with torch.no_grad():
        _op(u, k, D)
    out = _op(u, k, D)
    assert out.requires_grad and out.grad_fn is not None
    uu, kk = u.detach().clone().requires_grad_(), k.detach().clone().requires_grad_()
    ref = fft_conv_reference(uu, kk, D, None, None, p)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, (u, k), g)
    want = torch.autograd.grad(ref, (uu, kk), g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@needs_native
def test_inference_mode_and_no_grad_parameters_run_in_cpp():
    conv_k = torch.nn.Parameter(torch.randn(8, 16))
    u = torch.randn(2, 8, 16)
    want = _python(lambda: _op(u, conv_k.detach()))
    for ctx in (torch.no_grad, torch.inference_mode):
        cpu_plan.clear()
        with ctx():
            _op(u, conv_k)
            before = _hits()
            got = _op(u, conv_k)
        assert _hits() == before + 1 and not got.requires_grad
        assert torch.equal(got, want)


def _neg_view(x):
    z = torch.complex(torch.zeros_like(x), x)
    v = z.conj().imag  # a real tensor with the negative bit set
    assert v.is_neg()
    return v


@needs_native
@pytest.mark.parametrize("what", ["autocast", "mode", "neg-bit", "vmap", "forward-ad", "functorch-grad"])
def test_calls_left_to_python_get_its_answer(what):
    u, k, D = torch.randn(2, 8, 16), torch.randn(8, 16), torch.randn(8, 1)
    p = ConvParams(32, 0, 16)
    with torch.no_grad():
        _op(u, k, D)  # a plan for exactly these shapes is in the table
    hits = _hits()
    ref = fft_conv_reference(u, k, D, None, None, p)
    if what == "autocast":
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            got = _op(u, k, D)
        assert got.dtype == torch.float32  # the operator computes in fp32 under autocast, as eager's FFTs
    elif what == "mode":
        mode = RecordingMode()
        with torch.no_grad(), mode:
            got = _op(u, k, D)
        # the mode sees the operator (then runs it below itself, where the CPU kernel may be C++)
        assert torch.ops.convfuse.fft_conv.default in mode.ops, mode.ops
        hits = _hits()
    elif what == "neg-bit":
        with torch.no_grad():
            got = _op(_neg_view(-u), k, D)
    elif what == "vmap":
        got = torch.vmap(lambda x: _op(x, k, D))(u.unsqueeze(0)).squeeze(0)
    elif what == "forward-ad":
        # fft_conv has no forward-mode formula (torch.library's custom ops take none): the C++
        # kernel must leave dual tensors to Python, which refuses them as it always has
        import torch.autograd.forward_ad as fwAD

        outcomes = []
        for native in (True, False):
            with config.patch(native_cpu=native), fwAD.dual_level(), torch.no_grad():
                try:
                    outcomes.append(type(_op(fwAD.make_dual(u, torch.randn_like(u)), k, D)))
                except (RuntimeError, NotImplementedError) as exc:
                    outcomes.append(type(exc))
        assert outcomes[0] == outcomes[1]
        with torch.no_grad():
            _op(u, k, D)  # the table again (the patch cleared it)
        hits = _hits()
        got = ref
    else:
        # torch.func.grad through an operator: torch's own custom_op refuses it (its Function has
        # no separate setup_context); whatever the Python path does, the C++ kernel must not change
        outcomes = []
        for native in (True, False):
            with config.patch(native_cpu=native):
                try:
                    outcomes.append(type(torch.func.grad(lambda x: _op(x, k, D).sum())(u)))
                except RuntimeError as exc:
                    outcomes.append(type(exc))
        assert outcomes[0] == outcomes[1]
        with torch.no_grad():
            _op(u, k, D)
        hits = _hits()
        got = ref
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    if what != "vmap":  # vmap's batching rule may run the op on plain tensors below its layer
        assert _hits() == hits, f"{what}: the C++ kernel ran a call it must leave to Python"


@needs_native
def test_a_setting_change_clears_the_table():
    u, k = torch.randn(2, 8, 16), torch.randn(8, 16)
    with torch.no_grad():
        _op(u, k)
    assert cpu_native.stats()[0] >= 1
    with config.patch(cpu_algo="fft"):
        assert cpu_native.stats()[0] == 0
        with torch.no_grad():
            _op(u, k)
        assert cpu_native.stats()[0] >= 1
    assert cpu_native.stats()[0] == 0
    config.cpu_cache_min_us = config.cpu_cache_min_us  # an assignment is a change too
    assert cpu_native.stats()[0] == 0


@needs_native
def test_the_table_stays_bounded():
    k = torch.randn(1, 16)
    with torch.no_grad():
        for batch in range(1, 600):
            _op(torch.randn(batch, 1, 16), k)
    assert 0 < cpu_native.stats()[0] <= 512


@needs_native
def test_threads_share_the_table():
    k, D = torch.randn(8, 16), torch.randn(8, 1)
    inputs = [torch.randn(2, 8, 16, generator=torch.Generator().manual_seed(i)) for i in range(8)]
    want = [_python(lambda x=x: _op(x, k, D)) for x in inputs]
    errors = []

    def work(i):
        try:
            with torch.no_grad():
                for _ in range(50):
                    if not torch.equal(_op(inputs[i], k, D), want[i]):
                        errors.append(i)
                    if i == 0:
                        cpu_plan.clear()  # clears race with lookups
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


@needs_native
def test_a_compiled_graph_calls_fft_conv_never_the_twin():
    k = torch.randn(8, 16)

    def f(x):
        n = 32
        return torch.fft.irfft(torch.fft.rfft(x, n=n) * torch.fft.rfft(k, n=n), n=n)[..., :16]

    c = Compiled(f, kernel="cpu")
    x = torch.randn(2, 8, 16)
    with torch.no_grad():
        c(x)
        before = _hits()
        got = c(x)
    assert op_calls(c, FFT_CONV) == 1
    assert not any("_fft_conv_python" in str(node.target) for gm in c.graphs for node in gm.graph.nodes)
    assert _hits() == before + 1
    torch.testing.assert_close(got, f(x), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(sys.platform != "linux", reason="the native kernels are built on Linux only")
def test_off_and_a_failed_build_leave_the_python_path(tmp_path):
    """In a fresh process: CONVFUSE_NATIVE_CPU=0 at import builds and loads nothing, and every
    call is right in Python."""
    script = """
import torch, convfuse
from convfuse.backends import cpu_native
from convfuse.backends.reference import fft_conv_reference
from convfuse.spec import ConvParams
assert cpu_native.status().startswith("off") and not cpu_native.loaded(), cpu_native.status()
u, k = torch.randn(2, 8, 16), torch.randn(8, 16)
for _ in range(2):
    with torch.no_grad():
        got = torch.ops.convfuse.fft_conv(u, k, None, None, None, 32, 0, 16, 1.0, 0.0, False, torch.float32, "cpu")
    torch.testing.assert_close(got, fft_conv_reference(u, k, None, None, None, ConvParams(32, 0, 16)))
assert cpu_native.stats() == (0, 0)
print("ok")
"""
    env = {**os.environ, "CONVFUSE_NATIVE_CPU": "0", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


@pytest.mark.skipif(sys.platform != "linux", reason="the native kernels are built on Linux only")
def test_load_says_why_it_did_not_and_remembers_only_compiler_errors(tmp_path, monkeypatch):
    """load() from a state that never loaded (this process's own library stays as it is): off,
    no compiler, a compiler that fails (remembered in a .failed file under the cache root's
    convfuse/, not retried), a build that times out (not remembered: retried)."""
    monkeypatch.setattr(cpu_native, "_state", {"loaded": False, "reason": "not loaded yet"})
    with config.patch(native_cpu=False):
        assert not cpu_native.load() and cpu_native.status() == "off (CONVFUSE_NATIVE_CPU=0)"
    monkeypatch.setattr(config, "toolchain", config.Toolchain(cxx=None, cache_root=str(tmp_path)))
    monkeypatch.setenv("PATH", str(tmp_path))  # no c++, g++ or clang++ to be found
    assert not cpu_native.load() and cpu_native.status().startswith("no C++ compiler"), cpu_native.status()
    monkeypatch.undo()  # PATH and the rest back; the fresh state again
    monkeypatch.setattr(cpu_native, "_state", {"loaded": False, "reason": "not loaded yet"})
    monkeypatch.setattr(config, "toolchain", config.Toolchain(cxx="/bin/false", cache_root=str(tmp_path)))
    assert not cpu_native.load() and cpu_native.status().startswith("unavailable: CompileError"), cpu_native.status()
    failed = list((tmp_path / "convfuse").glob("fft_conv_small-*.failed"))
    assert len(failed) == 1 and "false exited 1" in failed[0].read_text()
    assert not cpu_native.load() and "failed before" in cpu_native.status(), cpu_native.status()
    slow = tmp_path / "slow-cxx"
    slow.write_text("#!/bin/sh\nsleep 5\n")
    slow.chmod(0o755)
    monkeypatch.setattr(config, "toolchain", config.Toolchain(cxx=str(slow), cache_root=str(tmp_path)))
    monkeypatch.setattr(cpu_native, "BUILD_TIMEOUT_S", 0.3)
    for _ in range(2):  # retried each time: a timeout is not remembered
        assert not cpu_native.load() and "TimeoutExpired" in cpu_native.status(), cpu_native.status()
    assert len(list((tmp_path / "convfuse").glob("*.failed"))) == 1  # /bin/false's only
    assert not cpu_native.loaded()


@needs_native
def test_the_loaded_library_wires_every_kept_descriptor_path():
    """Where libtorch_cpu exports MKL's DFTI, loading the library hands its operators to the
    Python paths: the 1-D transforms, FrequencySparse's pruned rows and fft_convnd's whole periods
    (the tests of those paths skip without them, so a load that wired none would pass them all)."""
    from convfuse.backends import cpu_algos, cpu_nd

    if torch.ops.convfuse._mkl_descriptors():
        assert cpu_algos.kept_descriptors() and cpu_algos._pruned[0] is not None
        assert "kept MKL descriptors" in cpu_native.status()
    if torch.ops.convfuse._mkl_md_descriptors():
        assert cpu_nd.kept_descriptors() and "multi-axis ones too" in cpu_native.status()


@needs_native
def test_built_with_openmp_where_the_compiler_has_it():
    """The multi-axis items run on torch's own OpenMP threads (mkl_convnd.h's run_parallel): a
    build that lost -fopenmp would run them on one thread, silently slower, and say so in status().
    GCC has OpenMP, so a g++ build must have it; the flag is tried first whatever the compiler."""
    built_with = torch.ops.convfuse._native_openmp()
    assert ("built without OpenMP" in cpu_native.status()) == (not built_with and torch.ops.convfuse._mkl_md_descriptors())
    cxx = cpu_native._compiler()
    if cxx and "g++" in Path(shutil.which(cxx) or cxx).resolve().name:
        assert built_with
