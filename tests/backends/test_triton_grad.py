"""The Triton backward of fft_conv (triton_monarch/grad.py, kernels_grad.py; grad3.py,
kernels_grad3.py at the three-level sizes, 4K..32K) under the interpreter.

Every gradient (u, k, D, pre-gate, post-gate) of ``convfuse.ops.fft_conv`` with kernel="triton"
against torch.autograd through the plain-torch reference (fft_reference.py, fp64): fp32 and fp16
inputs, linear (padded) and cyclic windows, correlations, kernels broadcast over batch rows, with
and without gates and D, and signals longer than n.  Each case checks that the fused Triton
backward is what ran (its launch counted, the composed path made to fail) or, where it does not
apply, that the composed path ran and said why.  The new kernels also compile for sm90 and sm80
without a GPU.  32K and the three-level compile check are marked slow.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="the Triton kernels (interpreted on CPU) need triton")

from convfuse import config, ops  # noqa: E402
from convfuse.backends import cpu_cache  # noqa: E402
from convfuse.backends.triton_monarch import (  # noqa: E402
    fused3, grad as grad_mod, grad3, launch, plan as plan_mod, spectrum,
)
from convfuse.spec import ConvParams  # noqa: E402
from fft_reference import reference  # noqa: E402


@pytest.fixture(autouse=True)
def interpreter(monkeypatch):
    monkeypatch.setattr(config, "triton_interpret", True)


def _backwards() -> int:
    return sum(c for key, c in launch.LAUNCHES.items() if key.endswith("backward"))


def _op(u, k, D, pre, post, p, out_dtype):
    return ops.fft_conv(u, k, D, pre, post, p.n, p.start, p.length, p.scale, p.n_power, p.conj_kernel, out_dtype,
                        "triton", p.constant_kernel, p.spectrum_bins)


def _grads(shapes, p, dtype, want_grad, seed, fused=True, monkeypatch=None):
    """(convfuse's grads, the reference's grads) for u, k, D, pre, post (None where absent)."""
    want_grad = list(want_grad) + [True] * (len(shapes) - len(want_grad))
    g = torch.Generator().manual_seed(seed)
    ts = [None if s is None else (torch.randn(s, generator=g) / (s[-1] ** 0.5 if i == 1 else 1)).to(dtype)
          for i, s in enumerate(shapes)]
    mine = [None if t is None else t.clone().requires_grad_(w) for t, w in zip(ts, want_grad)]
    ref = [None if t is None else t.double().requires_grad_(w) for t, w in zip(ts, want_grad)]
    out_dtype = dtype
    before = _backwards()
    if fused and monkeypatch is not None:
        def composed(*a, **kw):
            raise AssertionError("the composed backward ran")
        monkeypatch.setattr(ops, "cyclic_grads", composed)
    out = _op(*mine, p, out_dtype)
    y = reference(*ref, p)
    w = torch.randn(y.shape, generator=g, dtype=torch.float64)
    out.backward(w.to(out.dtype))
    (y * w).sum().backward()
    assert _backwards() == before + (1 if fused else 0)
    return [None if t is None or not t.requires_grad else t.grad for t in mine], \
           [None if t is None or not t.requires_grad else t.grad for t in ref]


def _compare(got, want, tol):
    for name, a, b in zip(("u", "k", "D", "pre", "post"), got, want):
        assert (a is None) == (b is None), name
        if a is None:
            continue
        assert a.shape == b.shape, name
        err = ((a.double() - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()
        assert err < tol, f"d {name}: relative error {err:.2e}"


CASES = [
    # (u, k, D, pre, post), params
    (((2, 3, 100), (3, 100), None, None, None), ConvParams(256, 0, 100)),  # linear: causal skips
    (((2, 3, 200), (3, 56), (3, 1), None, None), ConvParams(256, 0, 200, scale=0.3)),  # short kernel, D
    (((3, 256), (3, 256), None, None, None), ConvParams(256, 17, 256, conj_kernel=True)),  # cyclic correlation
    (((3, 256), (3, 256), None, None, None), ConvParams(256, 40, 200)),  # cyclic window off 0
    (((1, 3, 300), (2, 1, 300), None, (1, 3, 300), (2, 3, 300)), ConvParams(600, 0, 300, scale=1 / 600)),  # padded
    (((2, 2, 500), (2, 500), (2, 500), (2, 2, 500), (2, 2, 500)), ConvParams(1024, 0, 500, n_power=-1.0)),
    (((5, 2, 1000), (2, 1000), None, None, (5, 2, 1000)), ConvParams(2048, 5, 1000, conj_kernel=True)),
    (((2, 300), (300,), None, None, None), ConvParams(256, 3, 256)),  # signals longer than n: truncated
    (((4, 512), (1, 512), (512,), (4, 512), None), ConvParams(512, 0, 512, conj_kernel=True, scale=2.0)),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_every_gradient_matches_autograd_through_the_reference(case, dtype, monkeypatch):
    shapes, p = CASES[case]
    want_grad = [s is not None for s in shapes]
    got, want = _grads(shapes, p, dtype, want_grad, case, monkeypatch=monkeypatch)
    _compare(got, want, 2e-2 if dtype == torch.float16 else 2e-5)


@pytest.mark.parametrize("want_grad", [(True, False, False, False, True), (False, True, False, False, False),
                                       (False, False, True, True, True)])
def test_only_the_asked_gradients(want_grad, monkeypatch):
    shapes = ((2, 3, 120), (3, 120), (3, 120), (2, 3, 120), (2, 3, 120))
    got, want = _grads(shapes, ConvParams(256, 0, 120), torch.float32, want_grad, 1, monkeypatch=monkeypatch)
    _compare(got, want, 2e-5)


@pytest.mark.parametrize("chunks", [2, 3])
def test_d_k_summed_over_chunks_of_batch_rows(chunks, monkeypatch):
    monkeypatch.setattr(grad_mod, "CHUNKS", chunks)
    shapes = ((7, 2, 200), (2, 200), None, None, None)  # 4 row pairs per kernel row
    got, want = _grads(shapes, ConvParams(512, 0, 200), torch.float32, [True] * 5, 2, monkeypatch=monkeypatch)
    _compare(got, want, 2e-5)


def test_composed_where_the_fused_backward_does_not_apply():
    before = sum(grad_mod.COMPOSED.values())
    shapes = ((2, 300), (2, 300), None, None, None)
    got, want = _grads(shapes, ConvParams(1024, 0, 300, spectrum_bins=40), torch.float32, [True, True], 3,
                       fused=False)
    _compare(got, want, 2e-5)
    assert any("frequency-sparse" in r for r in grad_mod.COMPOSED)
    assert sum(grad_mod.COMPOSED.values()) == before + 1
    # decided from the call plan (nothing launched here): fp64 at a three-level size (the forward
    # runs the outer passes), and the outer plans above 32K
    t = torch.zeros(1, 2048, dtype=torch.float64)
    why = grad_mod._reason(t, t, t, ConvParams(4096, 0, 2048))
    assert isinstance(why, str) and "three-level backward is built for fp32" in why
    t = torch.zeros(1, 40000)
    why = grad_mod._reason(t, t, t, ConvParams(65536, 0, 40000))
    assert isinstance(why, str) and "n=65536" in why and "32K" in why


def test_a_device_without_the_shared_memory_composes(monkeypatch):
    monkeypatch.setattr(grad_mod, "device_smem", lambda device: 16 * 1024)  # less than 2048's pass needs
    shapes = ((1, 1000), (1, 1000), None, None, None)
    got, want = _grads(shapes, ConvParams(2048, 0, 1000), torch.float32, [True, True], 6, fused=False)
    _compare(got, want, 2e-5)
    assert any("n=2048" in r and "shared memory" in r for r in grad_mod.COMPOSED)


def test_constant_kernel_backward_reuses_the_forwards_spectrum(monkeypatch):
    cpu_cache.clear()
    g = torch.Generator().manual_seed(5)
    u = torch.randn(2, 3, 200, generator=g, requires_grad=True)
    k = torch.nn.Parameter(torch.randn(3, 200, generator=g) / 15)
    p = ConvParams(512, 0, 200, constant_kernel=True)
    triton_spectra = lambda: sum(c for key, c in spectrum.SPECTRA.items() if key.startswith("triton"))  # noqa: E731
    with plan_mod.cache_kernel_spectra():
        for _ in range(2):  # the first sighting, then the stored entry
            _op(u, k, None, None, None, p, torch.float32).sum().backward()
        before = triton_spectra()
        u.grad = k.grad = None
        _op(u, k, None, None, None, p, torch.float32).sum().backward()
        assert triton_spectra() == before  # forward and backward both hit the one entry
    ref_u, ref_k = u.detach().double().requires_grad_(), k.detach().double().requires_grad_()
    reference(ref_u, ref_k, None, None, None, p).sum().backward()
    _compare([u.grad, k.grad], [ref_u.grad, ref_k.grad], 2e-5)
    cpu_cache.clear()


# ---- the three-level sizes, 4K..32K (grad3.py, kernels_grad3.py)

CASES3 = [
    # (u, k, D, pre, post), params; 16^3 cannot skip halves (N1/2 < 16), the others can
    (((2, 3, 2048), (3, 2048), (3, 1), None, (2, 3, 2048)), ConvParams(4096, 0, 2048)),  # linear, D, post
    (((2, 4096), (2, 4096), None, None, None), ConvParams(4096, 100, 4096, conj_kernel=True)),  # cyclic corr.
    (((3, 4096), (1, 4096), None, (3, 4096), None), ConvParams(8192, 0, 4096, scale=0.25)),  # causal skips
    (((2, 6000), (2, 5000), None, None, None), ConvParams(8192, 7000, 3000)),  # cyclic, window wraps at n
    (((1, 2, 3000), (2, 1, 3000), None, None, (2, 2, 3000)), ConvParams(6000, 0, 3000, n_power=-1.0)),  # padded
    (((3, 8000), (8000,), (8000,), (3, 8000), (3, 8000)), ConvParams(16384, 0, 8000)),
]
SLOW3 = [
    (((2, 2, 16384), (2, 16384), (2, 1), None, (2, 2, 16384)), ConvParams(32768, 0, 16384)),
    (((2, 32768), (2, 32768), None, None, None), ConvParams(32768, 3, 32768, conj_kernel=True)),
    (((3, 16384), (16384,), None, None, None), ConvParams(16384, 50, 16000)),  # cyclic, the full 32x32x16
]


def _three_level(shapes, p, dtype, seed, monkeypatch):
    composed, launches = sum(grad_mod.COMPOSED.values()), launch.LAUNCHES.copy()
    got, want = _grads(shapes, p, dtype, [s is not None for s in shapes], seed, monkeypatch=monkeypatch)
    assert sum(grad_mod.COMPOSED.values()) == composed
    ran = [key for key in launch.LAUNCHES - launches if key.endswith("backward")]
    assert len(ran) == 1 and any(f"n={m} {'x'.join(map(str, r))} " in ran[0] for m, r in fused3.FACTORS3.items()), ran
    _compare(got, want, 2e-2 if dtype == torch.float16 else 2e-5)


_DTYPE_ID = dict(ids=lambda v: str(v).removeprefix("torch.") if isinstance(v, torch.dtype) else str(v))


# fp16 on one case in CI (the backward computes in fp32 either way), on two more in the slow set
@pytest.mark.parametrize("case,dtype", [(c, torch.float32) for c in range(len(CASES3))] + [(2, torch.float16)],
                         **_DTYPE_ID)
def test_three_level_gradients_match_autograd_through_the_reference(case, dtype, monkeypatch):
    _three_level(*CASES3[case], dtype, 10 + case, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("case,dtype", [(f"slow{c}", torch.float32) for c in range(len(SLOW3))]
                         + [(c, torch.float16) for c in (0, 4)], **_DTYPE_ID)
def test_three_level_gradients_slow(case, dtype, monkeypatch):
    # 32K (fp32), and fp16 on two more of the CI cases
    seed = 20 + int(case[4:]) if isinstance(case, str) else 30 + case
    shapes, p = SLOW3[int(case[4:])] if isinstance(case, str) else CASES3[case]
    _three_level(shapes, p, dtype, seed, monkeypatch)


@pytest.mark.parametrize("regs,stash", [(True, False), (False, True)], ids=["sum-in-registers", "Zg-stashed"])
def test_three_level_d_k_summed_over_chunks_of_batch_rows(regs, stash, monkeypatch):
    # 3 row pairs (the last one row) of one kernel row in 2 chunks, one summing two pairs; the d k
    # sum in registers with Zg held, or both in memory (each branch of the pass, between the two)
    monkeypatch.setattr(grad_mod, "CHUNKS", 2)
    monkeypatch.setitem(grad3.GRAD3_DK_REGS, 4096, regs)
    monkeypatch.setitem(grad3.GRAD3_STASH, 4096, stash)
    shapes = ((5, 1, 1500), (1, 1500), None, None, None)
    got, want = _grads(shapes, ConvParams(4096, 0, 1500), torch.float32, [True, True], 7, monkeypatch=monkeypatch)
    _compare(got, want, 2e-5)


def test_three_level_constant_kernel_reuses_the_forwards_spectrum():
    cpu_cache.clear()
    g = torch.Generator().manual_seed(8)
    u = torch.randn(2, 1, 3000, generator=g, requires_grad=True)
    k = torch.nn.Parameter(torch.randn(1, 3000, generator=g) / 50)
    p = ConvParams(8192, 0, 3000, constant_kernel=True)
    built = lambda: sum(c for key, c in spectrum.SPECTRA.items() if key.startswith("triton n=8192"))  # noqa: E731
    with plan_mod.cache_kernel_spectra():
        for _ in range(2):  # the first sighting, then the stored entry
            _op(u, k, None, None, None, p, torch.float32).sum().backward()
        before, backwards = built(), _backwards()
        u.grad = k.grad = None
        _op(u, k, None, None, None, p, torch.float32).sum().backward()
        assert built() == before and _backwards() == backwards + 1  # one entry for forward and backward
    ref_u, ref_k = u.detach().double().requires_grad_(), k.detach().double().requires_grad_()
    reference(ref_u, ref_k, None, None, None, p).sum().backward()
    _compare([u.grad, k.grad], [ref_u.grad, ref_k.grad], 2e-5)
    cpu_cache.clear()


@pytest.mark.parametrize("case", [1, 2])  # a correlation at 4K, a convolution at 8K
def test_three_level_d_k_inverted_by_torch_where_its_kernel_does_not_fit(case, monkeypatch):
    m = CASES3[case][1].n
    monkeypatch.setitem(grad3.GRAD3_DK_SMEM, m, 1 << 31)  # more than any device (the interpreter's too)
    before = grad3.DK_BY_TORCH[m]
    _three_level(*CASES3[case], torch.float32, 30 + case, monkeypatch)
    assert grad3.DK_BY_TORCH[m] == before + 1


def test_three_level_backward_composes_on_a_device_without_the_shared_memory(monkeypatch):
    monkeypatch.setattr(grad3, "device_smem", lambda device: 8 * 1024)  # less than 4K's pass needs
    t = torch.zeros(1, 2048)
    why = grad_mod._reason(t, t, t, ConvParams(4096, 0, 2048))
    assert isinstance(why, str) and "n=4096" in why and "shared memory" in why


def test_three_level_size_is_the_forwards():
    # the backward runs where select.py runs the forward's one kernel (fused3.resolve's size)
    from convfuse.backends.triton_monarch import select

    for n, L in ((4096, 4096), (8192, 3000), (6000, 3000), (32768, 3000), (65536, 10000), (16384, 2000)):
        u, k = torch.zeros(1, L), torch.zeros(1, L)
        p = ConvParams(n, 0, L)
        fwd = select.resolve(u, k, None, None, None, p)
        bwd = grad_mod._reason(u, u, k, p)
        if isinstance(fwd, fused3.Call3):
            assert isinstance(bwd, grad3.Call3) and bwd.m == fwd.m, (n, L)
        else:
            assert not isinstance(bwd, grad3.Call3), (n, L)


# ---- compiled for NVIDIA targets without a GPU (as test_triton_compile.py)


def _compile(fn, consts, arch, warps=4):
    triton = pytest.importorskip("triton")
    if "nvidia" not in getattr(triton.backends, "backends", {}):
        pytest.skip("Triton's NVIDIA backend is not installed")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig = {a: "constexpr" if a in consts else "*i64" if a.endswith("off_ptr") or a in ("pair_ptr", "grp_ptr") else
           "*fp32" if a.endswith("_ptr") else "i32" for a in fn.arg_names}
    try:
        return triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": warps})
    except (RuntimeError, FileNotFoundError) as e:
        if "ptxas" in str(e).lower() or "not found" in str(e).lower():
            pytest.skip(f"cannot compile for sm{arch} here: {e}")
        raise


@pytest.mark.parametrize("arch", [90, 80])
def test_backward_and_spectrum_kernels_compile(arch):
    from convfuse.backends.triton_monarch import kernels_grad as kg, kernels_spectrum as ks

    prec = "tf32x3"
    k = _compile(kg.GRAD2[False], dict(N1=32, N2=32, G_HALF=True, U_HALF=True, DU_HALF=True, H_HALF=True,
                                       NEED_U=True, NEED_K=True, NEED_H=True, CONJ=False, PREC=prec), arch)
    assert k.asm.get("cubin") and k.metadata.shared <= 99 * 1024
    k = _compile(kg.GRAD_DK[False], dict(N1=32, N2=32, DK_HALF=True, CONJ=True, PREC=prec), arch)
    assert k.asm.get("cubin")
    k = _compile(ks.SPECTRUM2[False], dict(N1=32, N2=32, W=32, RIN=16, CONJ=False, PREC=prec), arch)
    assert k.asm.get("cubin")
    k = _compile(ks.SPECTRUM2[False], dict(N1=16, N2=64, W=16, RIN=16, CONJ=True, PREC=prec), arch)
    assert k.asm.get("cubin")


@pytest.mark.slow
@pytest.mark.parametrize("arch", [90, 80])
def test_three_level_backward_kernels_compile(arch):
    from convfuse.backends.triton_monarch import kernels_grad3 as kg3

    n = 8192
    k = _compile(kg3.GRAD3[False], dict(N1=32, N2=16, N3=16, G_HALF=True, U_HALF=True, DU_HALF=True, H_HALF=True,
                                        NEED_U=True, NEED_K=True, NEED_H=True, DK_REGS=grad3.GRAD3_DK_REGS[n],
                                        STASH=grad3.GRAD3_STASH[n], PREC="tf32x3"), arch, grad3.GRAD3_WARPS[n])
    assert k.asm.get("cubin") and k.metadata.shared <= grad3.GRAD3_SMEM[n]
    k = _compile(kg3.GRAD3_DK[False], dict(N1=32, N2=16, N3=16, DK_HALF=True, CONJ=True, PREC="tf32x3"), arch,
                 grad3.GRAD3_DK_WARPS[n])
    assert k.asm.get("cubin")


# ---- on a GPU (skipped here): the compiled kernels at realistic shapes


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: compiled Triton kernels need a GPU")
@pytest.mark.parametrize("n,L,dtype", [(n, L, d) for n, L in ((512, 256), (2048, 1024), (1024, 1024))
                                       for d in (torch.float32, torch.float16, torch.bfloat16)]
                         # three-level (grad3.py): one case, its kernels take ~15 s each to compile
                         + [(8192, 4096, torch.float32)])
def test_backward_on_the_gpu(n, L, dtype, monkeypatch):
    monkeypatch.setattr(config, "triton_interpret", False)
    g = torch.Generator(device="cuda").manual_seed(n)
    u = torch.randn(4, 64, L, device="cuda", generator=g).to(dtype).requires_grad_()
    k = (torch.randn(64, L, device="cuda", generator=g) / L ** 0.5).to(dtype).requires_grad_()
    D, post = (torch.randn(s, device="cuda", generator=g).to(dtype).requires_grad_() for s in ((64, 1), (4, 64, L)))
    p = ConvParams(n, 0, L)
    before, composed = _backwards(), sum(grad_mod.COMPOSED.values())
    out = _op(u, k, D, None, post, p, dtype)
    w = torch.randn(out.shape, device="cuda", generator=g)
    out.backward(w.to(dtype))
    torch.cuda.synchronize()
    fused = _backwards() == before + 1
    assert fused or sum(grad_mod.COMPOSED.values()) == composed + 1, dict(grad_mod.COMPOSED)
    ref = [t.detach().double().requires_grad_() for t in (u, k, D, post)]
    (reference(ref[0], ref[1], ref[2], None, ref[3], p) * w.double()).sum().backward()
    _compare([u.grad, k.grad, D.grad, None, post.grad], [ref[0].grad, ref[1].grad, ref[2].grad, None, ref[3].grad],
             2e-2 if dtype != torch.float32 else 1e-4)
