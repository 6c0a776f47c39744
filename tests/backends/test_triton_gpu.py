"""Half-precision tensor-core dots in the Triton plans: chosen, compiled to half mma, and right.

A call whose result is fp16/bf16 (``out_dtype``) runs its tl.dot operands in that half type with
fp32 accumulation (plan.dot_dtype_for).  Three kinds of evidence:
- compiled for sm90 and sm80 without a GPU, the fused and outer-pass kernels' PTX contains
  wgmma/mma instructions on f16 (bf16) operands;
- on a GPU, the plan a half call resolves to has half dots, and its output and gradients match an
  fp64 torch.fft reference (written here, importing nothing from convfuse);
- skipped without CUDA, with that reason.
On sm90 these kernels compile to ``mma.sync`` (Ampere-style MMA, m16n8k16), not Hopper's
``wgmma``: their dot tiles have 16-32 rows (a radix), and wgmma needs 64 rows per warpgroup.
"""

from __future__ import annotations

import re

import pytest
import torch

triton = pytest.importorskip("triton")

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA device: compiled Triton kernels need a GPU")
MMA = re.compile(r"\b(?:wgmma\.mma_async\.sync|mma\.sync)\.aligned\.[a-z0-9.]*")
EPI = dict(HAS_PRE=True, HAS_D=True, HAS_POST=True)


def _compile_ptx(fn, consts, dot, arch):
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig = {}
    for a in fn.arg_names:
        if a in consts:
            sig[a] = "constexpr"
        elif a.endswith("off_ptr") or a == "pair_ptr":
            sig[a] = "*i64"
        elif a.endswith("_ptr"):
            sig[a] = "*fp32" if a in ("z_ptr", "k_ptr", "tw_ptr", "otw_ptr") else f"*{dot}"
        else:
            sig[a] = "i32"
    try:
        k = triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", arch, 32), options={"num_warps": 4})
    except (RuntimeError, FileNotFoundError) as e:  # no ptxas for this target here
        pytest.skip(f"cannot compile for sm{arch} here: {e}")
    return k.asm["ptx"]


@pytest.mark.parametrize("arch", [90, 80])
@pytest.mark.parametrize("dot", ["fp16", "bf16"])
@pytest.mark.parametrize("which", ["fused", "inner"])
def test_half_plans_compile_to_half_mma(which, dot, arch):
    if "nvidia" not in getattr(triton.backends, "backends", {}):
        pytest.skip("Triton's NVIDIA backend is not installed")
    from convfuse.backends.triton_monarch import kernels, kernels_outer as ko

    if which == "fused":
        fn = kernels.MONARCH_CONV2[False]
        consts = dict(N1=32, N2=32, W=32, HALF_IN=True, HALF_OUT=True, FRAMES=False, PREC="ieee", **EPI)
    else:
        fn = ko.INNER[False]
        consts = dict(NSEQ=32, NTW=32, M1=32, M2=32, W=32, PREC="ieee")
    found = set(MMA.findall(_compile_ptx(fn, consts, dot, arch)))
    want = {"fp16": ".f16.", "bf16": ".bf16."}[dot]
    assert any(want in i + "." for i in found), f"no {dot} matrix instruction in {sorted(found)}"


def _reference(u, k, D, pre, post, n):
    ue = u.double() * pre.double()
    L = u.shape[-1]
    y = torch.fft.irfft(torch.fft.rfft(ue, n=n) * torch.fft.rfft(k.double(), n=n), n=n)[..., :L]
    return (y + ue * D.double()) * post.double()


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n", [256, 1024, 2048, 4096, 8192, 32768, 1 << 20])
def test_gpu_half_calls_run_half_dots(dtype, n):
    from convfuse.backends import triton_monarch as tm
    from convfuse.spec import ConvParams

    L = n // 2
    g = torch.Generator().manual_seed(n)
    u, pre, post = (torch.randn(2, 4, L, generator=g).to("cuda", dtype) for _ in range(3))
    k = (torch.randn(4, L, generator=g) / L).cuda()
    D = torch.randn(4, 1, generator=g).to("cuda", dtype)
    p = ConvParams(n, 0, L, out_dtype=dtype)
    r = tm.resolve(u, k, D, pre, post, p)
    assert not isinstance(r, str), r
    assert r.plan.dot_dtype == dtype, tm.explain(u, k, D, pre, post, p)
    out = tm.run(u, k, D, pre, post, p)
    assert out.dtype == dtype and torch.isfinite(out).all()
    ref = _reference(u, k, D, pre, post, n)
    tol = 2e-2 if dtype == torch.float16 else 6e-2
    assert ((out.double() - ref).abs().max() / ref.abs().max()) <= tol


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_half_gradients(dtype):
    import convfuse

    n, L = 2048, 1024
    g = torch.Generator().manual_seed(0)
    leaves = [torch.randn(s, generator=g).to("cuda", dtype).requires_grad_() for s in ((2, 4, L), (4, L), (4, 1),
                                                                                         (2, 4, L), (2, 4, L))]
    u, k, D, pre, post = leaves
    out = convfuse.fftconv(u, k, D, pre, post, kernel="triton")
    cot = torch.randn(out.shape, generator=g).cuda()
    (out.float() * cot).sum().backward()
    r = [t.detach().double().requires_grad_() for t in leaves]
    (_reference(r[0], r[1], r[2], r[3], r[4], n) * cot.double()).sum().backward()
    tol = 2e-2 if dtype == torch.float16 else 6e-2
    for a, b in zip(leaves, r):
        assert ((a.grad.double() - b.grad).abs().max() / b.grad.abs().max()) <= tol
