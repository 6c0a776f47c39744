"""NaN and Inf (issue 12 item 8): what convfuse promises, for every implementation and CPU algorithm.

Eager's FFT convolution spreads one non-finite input sample to every output sample of its row
(every frequency bin becomes non-finite); the direct and overlap-save algorithms keep it near
where it is.  The promise (README, "Non-finite values") is what all of them keep, and what
these tests assert for the reference and for the CPU path with each algorithm forced
(``convfuse.config.cpu_algo`` or ``CONVFUSE_CPU_ALGO``: see ``_force``) and with the cost model's choice:

1. a row whose inputs are finite gives a finite row, equal to eager's to rounding: a non-finite
   value never crosses into another batch element or channel (an input's "row" is what the
   output row reads: its signal and pre-gate rows, its kernel row, its D and post-gate entries;
   samples beyond n, which the definition truncates away as ``rfft(x, n=n)`` does, are not read);
2. every output sample whose definition involves a non-finite value is non-finite (NaN or
   Inf): out[t] = (c[(start + t) mod n] + ue[t] * D) * post_gate[t] with ue = u * pre_gate and
   c[q] = sum over j < min(Lu, n) of ue[j] * k[(q - j) mod n] (the correlation: k[(j - q) mod n]),
   the terms being those whose kernel index is < min(Lk, n);
3. every finite output sample is correct: it equals, to rounding, the result computed with
   every non-finite input value replaced by zero.

Which other samples of an affected row are non-finite is the algorithm's business and is not
promised: all of them for "fft" and the reference (eager's pattern), the overlap-save blocks
whose frames hold the value, for "direct" those whose sum has the value (with a non-finite
kernel tap, also the first K - 1 samples, which multiply it by padding zeros).
"""

from __future__ import annotations

import zlib

import pytest
import torch

import convfuse  # noqa: F401  registers torch.ops.convfuse.fft_conv
from convfuse.backends import cpu_cache
from convfuse.backends.cpu import plan_for
from convfuse.backends.reference import cyclic_conv_reference, fft_conv_reference
from convfuse.spec import ConvParams

F64 = torch.float64
NAN, INF = float("nan"), float("inf")
# (kernel name, CONVFUSE_CPU_ALGO): the reference, each CPU algorithm forced, the cost model's choice
IMPLS = [("reference", None), ("cpu", "fft"), ("cpu", "direct"), ("cpu", "ols"), ("cpu", None)]
IDS = ["reference", "cpu-fft", "cpu-direct", "cpu-ols", "cpu-auto"]
# (L, K, n, start, length, conj): linear calls (every algorithm valid) and one circular call
LINEAR = [
    (48, 7, 96, 0, 48, False),  # causal, n = 2L
    (48, 7, 64, 5, 30, False),  # offset window, n >= L + K - 1
    (48, 7, 96, 0, 48, True),  # correlation
    (200, 9, 400, 0, 200, False),  # long enough for several overlap-save blocks
]
CIRCULAR = (32, 32, 32, 3, 32, False)  # n = L, wraps around: "fft" whatever is forced


def _params(n, start, length, conj, dtype=F64, bins=0):
    return ConvParams(n, start, length, 0.5, -1.0, conj, dtype, False, bins)


def _call(kernel, u, k, D, pre, post, n, start, length, conj, dtype=F64, constant=False, bins=0):
    return torch.ops.convfuse.fft_conv(u, k, D, pre, post, n, start, length, 0.5, -1.0, conj, dtype, kernel,
                                       constant_kernel=constant, spectrum_bins=bins)


def _zeroed(t):
    return None if t is None else torch.nan_to_num(t, nan=0.0, posinf=0.0, neginf=0.0)


def _bad(t):
    return (~t.isfinite()).to(F64)


def _ue(u, pre):
    return u if pre is None else u * pre


def dependency_mask(u, k, D, pre, post, n, start, length, conj):
    """Output samples whose definition involves a non-finite value (promise 2): the operator's
    own sums over indicators, one term per (ue[j], k[i]) pair the definition multiplies."""
    ue = _ue(u, pre).to(F64)
    p = ConvParams(n, start, length, 1.0, 0.0, conj, F64)
    k = k.to(F64)
    counts = cyclic_conv_reference(_bad(ue), torch.ones_like(k), p) \
        + cyclic_conv_reference(torch.ones_like(ue), _bad(k), p)
    dep = counts > 0.5  # integer counts up to K, FFT rounding ~1e-12
    if D is not None:
        dep = dep | ~(ue * D.to(F64)).isfinite()
    if post is not None:
        dep = dep | ~post.isfinite()
    return dep


def rows_reading_nonfinite(u, k, D, pre, post, n, shape):
    """Output rows that read a non-finite value (promise 1: all others are finite)."""
    ue = _ue(u, pre)
    rows = torch.zeros(shape[:-1], dtype=torch.bool)
    for t, limit in ((ue, n), (k, n), (D, None), (post, None)):
        if t is not None:
            read = t[..., :limit] if limit else t
            rows = rows | (~read.isfinite()).any(-1).expand(shape[:-1]) if read.dim() > 0 else rows
    return rows


def assert_promise(out, u, k, D, pre, post, n, start, length, conj, tol=1e-9, reference=None):
    """Promises 1-3 for one call; ``reference(u, k, D, pre, post)`` computes the call (default:
    the reference implementation with this file's scale)."""
    dep = dependency_mask(u, k, D, pre, post, n, start, length, conj)
    assert dep.shape == out.shape
    assert not out[dep].isfinite().any(), "a sample that involves a non-finite value came out finite"
    bad_rows = rows_reading_nonfinite(u, k, D, pre, post, n, out.shape)
    assert out[~bad_rows].isfinite().all(), "a non-finite value reached a row that does not read it"
    if reference is None:
        def reference(*tensors):
            return fft_conv_reference(*tensors, _params(n, start, length, conj))
    want = reference(*(_zeroed(t) for t in (u, k, D, pre, post))).to(F64)
    finite = out.isfinite()
    scale = want.abs().max().item() + 1e-30
    torch.testing.assert_close(out[finite].to(F64), want[finite], rtol=tol, atol=tol * scale,
                               msg="a finite sample differs from the result with non-finite inputs zeroed")
    return dep


def _inputs(L, K, length, gen, batch=(2, 3), dtype=F64, skip=True, gates=True):
    B, H = batch
    u = torch.randn(B, H, L, dtype=dtype, generator=gen)
    k = torch.randn(H, K, dtype=dtype, generator=gen)
    D = torch.randn(H, 1, dtype=dtype, generator=gen) if skip and length == L else None
    pre = torch.randn(B, H, L, dtype=dtype, generator=gen) if gates else None
    post = torch.randn(B, H, length, dtype=dtype, generator=gen) if gates else None
    return dict(u=u, k=k, D=D, pre=pre, post=post)


def _force(monkeypatch, algo):
    """Force the CPU algorithm (None: the cost model's choice) for this test: through
    ``convfuse.config.cpu_algo`` where that setting exists (it reads the environment once, at
    import), else through ``CONVFUSE_CPU_ALGO``, which the CPU path then reads at every call."""
    try:
        from convfuse import config
    except ImportError:
        config = None
    if config is not None and hasattr(config, "cpu_algo"):
        monkeypatch.setattr(config, "cpu_algo", algo)
    if algo is None:
        monkeypatch.delenv("CONVFUSE_CPU_ALGO", raising=False)
    else:
        monkeypatch.setenv("CONVFUSE_CPU_ALGO", algo)


# Where the non-finite values go: (input, index into it, value).  Indices are (b, h, t) for the
# signal-shaped inputs, (h, i) for the kernel and (h, 0) for D.
CASES = {
    "nan-in-u": [("u", (0, 1, 20), NAN)],
    "inf-in-u": [("u", (1, 2, 3), INF)],
    "both-infs-in-u": [("u", (0, 1, 10), INF), ("u", (0, 1, 12), -INF)],
    "nan-in-k": [("k", (1, 2), NAN)],
    "inf-in-k": [("k", (2, 6), INF)],
    "inf-in-pre-gate": [("pre", (1, 0, 30), INF)],
    "inf-in-post-gate": [("post", (0, 2, 7), INF)],
    "nan-in-post-gate": [("post", (1, 1, 0), NAN)],
    "nan-in-D": [("D", (0, 0), NAN)],
    "inf-times-zero": [("u", (0, 0, 15), INF), ("k", (0, 3), 0.0)],  # the term is NaN, as in IEEE
}


def _place(tensors, case):
    for name, index, value in CASES[case]:
        t = tensors[name]
        if t is None:
            return False
        index = tuple(min(i, s - 1) for i, s in zip(index, t.shape))
        t[index] = value
    return True


GEOMETRY_IDS = ["causal", "offset", "correlation", "long"]
# every case in every geometry that has its input (the offset window has no skip term D)
CASE_GEOMETRIES = [pytest.param(case, g, id=f"{case}-{gid}") for case in CASES for g, gid in zip(LINEAR, GEOMETRY_IDS)
                   if not (case == "nan-in-D" and g[4] != g[0])]


@pytest.mark.parametrize("case,geometry", CASE_GEOMETRIES)
@pytest.mark.parametrize("kernel,algo", IMPLS, ids=IDS)
def test_promise_holds(kernel, algo, case, geometry, monkeypatch):
    L, K, n, start, length, conj = geometry
    _force(monkeypatch, algo)
    if algo is not None:  # the forced algorithm is the one that runs
        assert plan_for(_params(n, start, length, conj), L, K).algo == algo
    gen = torch.Generator().manual_seed(zlib.crc32(repr((case, geometry)).encode()))
    t = _inputs(L, K, length, gen)
    assert _place(t, case)
    out = _call(kernel, t["u"], t["k"], t["D"], t["pre"], t["post"], n, start, length, conj)
    dep = assert_promise(out, t["u"], t["k"], t["D"], t["pre"], t["post"], n, start, length, conj)
    assert dep.any()  # each case puts a value some output sample depends on


@pytest.mark.parametrize("case", ["nan-in-u", "inf-in-k", "inf-in-post-gate"])
@pytest.mark.parametrize("kernel,algo", [("reference", None), ("cpu", "fft"), ("cpu", None)],
                         ids=["reference", "cpu-fft", "cpu-auto"])
def test_promise_holds_for_a_circular_call(kernel, algo, case, monkeypatch):
    L, K, n, start, length, conj = CIRCULAR
    _force(monkeypatch, algo)
    t = _inputs(L, K, length, torch.Generator().manual_seed(5))
    _place(t, case)
    out = _call(kernel, t["u"], t["k"], t["D"], t["pre"], t["post"], n, start, length, conj)
    assert_promise(out, t["u"], t["k"], t["D"], t["pre"], t["post"], n, start, length, conj)


@pytest.mark.parametrize("kernel,algo", IMPLS, ids=IDS)
def test_values_the_definition_truncates_change_nothing(kernel, algo, monkeypatch):
    # Signals and kernels longer than n are cut at n (rfft(x, n=n)): a NaN past n is never read.
    _force(monkeypatch, algo)
    gen = torch.Generator().manual_seed(6)
    L, K, n, length = 40, 7, 32, 20
    u, k = torch.randn(2, 3, L, dtype=F64, generator=gen), torch.randn(3, K, dtype=F64, generator=gen)
    clean = _call(kernel, u, k, None, None, None, n, 0, length, False)
    u[0, 1, 35] = NAN
    out = _call(kernel, u, k, None, None, None, n, 0, length, False)
    assert out.isfinite().all()
    torch.testing.assert_close(out, clean, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("kernel,algo", IMPLS, ids=IDS)
def test_random_placements(kernel, algo, dtype, monkeypatch):
    """Several NaN/+Inf/-Inf values at random places of random inputs, in every geometry."""
    _force(monkeypatch, algo)
    gen = torch.Generator().manual_seed(7)
    tol = 1e-4 if dtype == torch.float32 else 2e-3
    for trial in range(12):
        L, K, n, start, length, conj = LINEAR[trial % len(LINEAR)]
        t = _inputs(L, K, length, gen, dtype=dtype, skip=trial % 2 == 0, gates=trial % 3 != 0)
        names = [name for name, v in t.items() if v is not None]
        for _ in range(1 + trial % 3):
            name = names[int(torch.randint(len(names), (1,), generator=gen))]
            flat = t[name].view(-1)
            flat[int(torch.randint(flat.numel(), (1,), generator=gen))] = (NAN, INF, -INF)[trial % 3]
        out = _call(kernel, t["u"], t["k"], t["D"], t["pre"], t["post"], n, start, length, conj, dtype=dtype)
        assert out.dtype == dtype
        assert_promise(out, t["u"], t["k"], t["D"], t["pre"], t["post"], n, start, length, conj, tol=tol)


@pytest.mark.parametrize("algo", ["fft", "direct", "ols"])
def test_promise_holds_across_tiles_and_threads(algo, cpu_threading, monkeypatch):
    # Many 4-row tiles on both threadings: per-thread row buffers are reused from box to box,
    # and a non-finite value written into one must not reach the next rows.
    _force(monkeypatch, algo)
    gen = torch.Generator().manual_seed(8)
    L, K, n, start, length = 50, 9, 100, 0, 50
    t = _inputs(L, K, length, gen, batch=(3, 37))
    t["u"][0, 4, 10] = NAN
    t["u"][1, 20, 49] = INF
    t["pre"][2, 36, 0] = -INF
    t["k"][11, 8] = NAN
    out = _call("cpu", t["u"], t["k"], t["D"], t["pre"], t["post"], n, start, length, False)
    assert_promise(out, t["u"], t["k"], t["D"], t["pre"], t["post"], n, start, length, False)


@pytest.mark.parametrize("algo", ["fft", "direct", "ols"])
def test_a_cached_kernel_spectrum_forgets_a_nan_once_the_kernel_is_repaired(algo, monkeypatch):
    _force(monkeypatch, algo)
    cpu_cache.clear()
    try:
        gen = torch.Generator().manual_seed(9)
        u = torch.randn(2, 4, 32, dtype=F64, generator=gen)
        weight = torch.nn.Parameter(torch.randn(4, 5, dtype=F64, generator=gen))
        with torch.no_grad():
            weight[1, 2] = NAN
            for _ in range(3):  # the second sighting stores the spectrum, the third hits it
                out = _call("cpu", u, weight, None, None, None, 64, 0, 32, False, constant=True)
                assert_promise(out, u, weight, None, None, None, 64, 0, 32, False)
            weight[1, 2] = 1.0  # in place: a new version, the cached NaN spectrum must not be used
            out = _call("cpu", u, weight, None, None, None, 64, 0, 32, False, constant=True)
        assert out.isfinite().all()
        want = fft_conv_reference(u, weight.detach(), None, None, None, _params(64, 0, 32, False))
        torch.testing.assert_close(out, want, rtol=1e-9, atol=1e-9)
    finally:
        cpu_cache.clear()


@pytest.mark.parametrize("kernel", ["reference", "cpu"])
def test_a_sparse_spectrum_kernel_spreads_within_its_row_only(kernel):
    # With spectrum_bins the kernel is defined in frequency: every output sample of a row
    # involves every sample of its signal and kernel rows, so a non-finite one makes the whole
    # row non-finite (promise 2 with that dependency); other rows stay finite and correct.
    gen = torch.Generator().manual_seed(10)
    u, k = torch.randn(2, 3, 32, dtype=F64, generator=gen), torch.randn(3, 32, dtype=F64, generator=gen)
    u[0, 1, 30] = NAN
    k[2, 0] = INF
    out = _call(kernel, u, k, None, None, None, 64, 0, 32, False, bins=9)
    bad = torch.zeros(2, 3, dtype=torch.bool)
    bad[0, 1] = True
    bad[:, 2] = True
    assert not out[bad].isfinite().any()
    assert out[~bad].isfinite().all()
    want = fft_conv_reference(_zeroed(u), _zeroed(k), None, None, None, _params(64, 0, 32, False, bins=9))
    torch.testing.assert_close(out[~bad], want[~bad], rtol=1e-9, atol=1e-9)


def test_the_fft_spreads_and_the_linear_algorithms_keep_a_nan_local(monkeypatch):
    """What the promise leaves open, as it is today (README): eager and "fft" make the whole row
    NaN, overlap-save the blocks whose frames hold the NaN, direct exactly the K samples whose
    sums hold it."""
    gen = torch.Generator().manual_seed(11)
    L, K = 4096, 64
    u, k = torch.randn(1, 1, L, dtype=F64, generator=gen), torch.randn(1, K, dtype=F64, generator=gen)
    u[0, 0, 1000] = NAN
    eager = torch.fft.irfft(torch.fft.rfft(u, n=2 * L) * torch.fft.rfft(k, n=2 * L), n=2 * L)[..., :L]
    assert eager.isnan().all()
    counts = {}
    for algo in ("fft", "direct", "ols"):
        _force(monkeypatch, algo)
        out = _call("cpu", u, k, None, None, None, 2 * L, 0, L, False)
        assert_promise(out, u, k, None, None, None, 2 * L, 0, L, False)
        counts[algo] = int((~out.isfinite()).sum())
    assert counts["fft"] == L
    assert counts["direct"] == K  # samples 1000 .. 1063
    assert K < counts["ols"] < L


def test_a_compiled_model_keeps_the_promise(monkeypatch):
    """End to end through the pass: a rewritten S4-style convolution with a short kernel, run
    direct (forced, so the comparison with eager below stays what it says), and a NaN in one
    input sample: eager's row is all NaN, the rewritten model's only where the NaN reaches."""
    import spellings as sp
    from conftest import Compiled

    _force(monkeypatch, "direct")
    gen = torch.Generator().manual_seed(12)
    u, k = torch.randn(2, 4, 1024, generator=gen), torch.randn(4, 16, generator=gen)
    u[1, 2, 500] = NAN
    compiled = Compiled(sp.s4_mul)
    out = compiled(u, k)
    assert compiled.op_calls() == 1
    assert_promise(out, u, k, None, None, None, 2048, 0, 1024, False, tol=1e-4,
                   reference=lambda u, k, *_: sp.s4_mul(u, k))
    eager = sp.s4_mul(u, k)
    assert eager[1, 2].isnan().all() and eager[1, 2].isnan().sum() > (~out[1, 2].isfinite()).sum()
