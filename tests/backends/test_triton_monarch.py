"""The Triton Monarch kernels against the reference implementation.

CPU runs use the Triton interpreter (TRITON_INTERPRET=1, set per test by a fixture: the package
builds both the compiled and the interpreted kernel, so the flag only has to be on during the
call).  The interpreter is ~1000x slower than eager, so shapes are tiny.  It multiplies bf16
wrongly in tl.dot, so bf16 runs on CUDA only; GPU tests skip without CUDA.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from convfuse import config  # noqa: E402
from convfuse.backends import triton_monarch as tm  # noqa: E402
from convfuse.backends.dispatch import choose_kernel  # noqa: E402
from convfuse.backends.reference import fft_conv_reference  # noqa: E402
from convfuse.backends.triton_monarch import plan as plan_mod  # noqa: E402
from convfuse.ops import fft_conv  # noqa: E402
from convfuse.spec import ConvParams  # noqa: E402

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA device: compiled Triton kernels need a GPU")


@pytest.fixture(autouse=True)
def interpreter(monkeypatch):
    monkeypatch.setattr(config, "triton_interpret", True)


def _rand(shape, dtype, device="cpu", gen=None):
    return None if shape is None else torch.randn(shape, dtype=dtype, device=device, generator=gen)


def _check(ushape, kshape, p, dtype=torch.float64, D=None, pre=None, post=None, device="cpu", rtol=None, expect_plan=True):
    g = torch.Generator(device="cpu").manual_seed(hash((ushape, kshape, p.n, p.start)) % 2**31)
    u, k = (torch.randn(s, dtype=dtype, generator=g).to(device) for s in (ushape, kshape))
    Dt, pg, po = (None if s is None else torch.randn(s, dtype=dtype, generator=g).to(device) for s in (D, pre, post))
    plan = tm.resolve(u, k, Dt, pg, po, p)
    assert not isinstance(plan, str) if expect_plan else isinstance(plan, str), plan
    out = tm.run(u, k, Dt, pg, po, p)
    ref = fft_conv_reference(u, k, Dt, pg, po, p)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    if rtol is None:
        rtol = {torch.float64: 1e-12, torch.float32: 2e-5}.get(dtype, 1e-2)
    scale = ref.double().abs().max().clamp_min(1e-30)
    err = (out.double() - ref.double()).abs().max() / scale
    assert err <= rtol, f"relative max error {err:.2e} > {rtol:.0e} ({tm.explain(u, k, Dt, pg, po, p)})"
    return plan


CASES = [
    # (u shape, k shape, params, D, pre_gate, post_gate)
    ((2, 3, 100), (3, 100), ConvParams(256, 0, 100), None, None, None),  # causal, per-channel kernel
    ((2, 3, 128), (2, 3, 128), ConvParams(256, 0, 128), None, None, None),  # per-batch kernels
    ((3, 201), (3, 77), ConvParams(512, 0, 201), (3, 1), (3, 201), (3, 201)),  # odd L, K < L, skip + gates
    ((2, 300), (2, 300), ConvParams(1024, 0, 300, scale=0.5, n_power=-1.0), (2, 300), None, None),
    ((2, 250), (1, 250), ConvParams(512, 5, 240, conj_kernel=True), None, (2, 250), None),  # correlation
    ((2, 256), (2, 256), ConvParams(256, 200, 256), None, None, (2, 256)),  # cyclic, window wraps at n
    ((2, 700), (2, 900), ConvParams(1024, 1000, 1024, conj_kernel=True), None, None, None),  # wraps, correlation
    ((2, 1300), (2, 40), ConvParams(1024, 3, 700), None, None, None),  # u longer than n: truncated
    ((1, 300), (300,), ConvParams(700, 0, 300), (1, 300), None, None),  # n=700 padded to 1024
    ((2, 100), (2, 100), ConvParams(3000, 7, 150, conj_kernel=True), None, None, None),  # n=3000 padded to 256
    ((2, 1), (2, 60), ConvParams(256, 0, 60), None, (2, 60), None),  # u broadcast along the axis by pre_gate
    ((2, 1000), (2, 1000), ConvParams(2048, 0, 1000), (2, 1000), None, (2, 1000)),  # 64 x 32, causal skips
    ((2, 1500), (2, 900), ConvParams(2048, 1500, 1000, conj_kernel=True), None, None, None),  # 64 x 32, wraps
    # outer passes through memory: n = N0 * m
    ((2, 2000), (2, 2000), ConvParams(4096, 0, 2000), (2, 1), (2, 2000), (2, 2000)),  # 16 x 256, no skip
    ((2, 3000), (3000,), ConvParams(8192, 0, 3000, scale=3.0), None, None, None),  # 32 x 256, causal skips
    ((1, 8000), (1, 3000), ConvParams(8192, 100, 8000, conj_kernel=True), None, None, (1, 8000)),  # wraps
    ((1, 5000), (1, 5000), ConvParams(12000, 0, 5000), (1, 5000), None, None),  # 12000: padded to 16384
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_forward_matches_reference(case, dtype):
    ushape, kshape, p, D, pre, post = CASES[case]
    _check(ushape, kshape, p, dtype, D, pre, post)


def test_fp16_inputs_use_fp16_dots_fp32_accumulation():
    p = ConvParams(1024, 0, 500, out_dtype=torch.float16)
    plan = _check((2, 500), (2, 500), p, torch.float16, D=(2, 1), pre=(2, 500), post=(2, 500), rtol=1e-2)
    assert plan.plan.dot_dtype == torch.float16 and plan.half_in and plan.half_out


def test_fp16_dots_do_not_overflow_on_dc_heavy_rows():
    # a row of ~200s: its unnormalized partial DFTs reach 16 * 32 * 200 > 65504 (fp16's max) inside
    # the inner stages at n = 32768; the kernels divide every forward stage by its radix instead
    g = torch.Generator().manual_seed(7)
    u = (200 + torch.randn(2, 16000, generator=g)).half()
    k = (torch.randn(1, 16000, generator=g) / 16000).half()
    p = ConvParams(32768, 0, 16000, out_dtype=torch.float16)
    assert tm.resolve(u, k, None, None, None, p).plan.dot_dtype == torch.float16
    out, ref = tm.run(u, k, None, None, None, p), fft_conv_reference(u, k, None, None, None, p)
    assert torch.isfinite(out).all()
    assert ((out.double() - ref.double()).abs().max() / ref.double().abs().max()) < 1e-2


def test_out_dtype_and_empty_batch():
    _check((2, 64), (2, 64), ConvParams(256, 0, 64, out_dtype=torch.float16), torch.float32, rtol=1e-3)
    p = ConvParams(256, 0, 10)
    out = tm.run(torch.randn(0, 10), torch.randn(10), None, None, None, p)
    assert out.shape == (0, 10)


def test_strided_and_expanded_operands():
    g = torch.Generator().manual_seed(3)
    u = torch.randn(300, 6, dtype=torch.float64, generator=g).T  # last-axis stride 6
    k = torch.randn(1, 300, dtype=torch.float64, generator=g).expand(6, 300)  # batch stride 0
    post = torch.randn(6, 600, dtype=torch.float64, generator=g)[:, ::2]  # last-axis stride 2
    p = ConvParams(1024, 0, 300)
    out = tm.run(u, k, None, None, post, p)
    torch.testing.assert_close(out, fft_conv_reference(u, k, None, None, post, p), rtol=1e-12, atol=1e-12)


def test_row_pairs_share_a_kernel():
    from convfuse.backends.triton_monarch.launch import _pairs

    # (3, 2, L) input against a (2, L) kernel: rows b*2 + h; h=0 rows {0, 2, 4}, h=1 rows {1, 3, 5}
    pairs = _pairs((3, 2), (2, 512), (512, 1), torch.device("cpu")).tolist()
    assert pairs == [[0, 2], [4, -1], [1, 3], [5, -1]]
    # a kernel per row: no pairs
    assert _pairs((4,), (4, 512), (512, 1), torch.device("cpu"))[:, 1].tolist() == [-1] * 4
    # odd groups and a single broadcast kernel, through the kernel
    _check((3, 5, 100), (5, 100), ConvParams(256, 0, 100), torch.float64, D=(5, 1), pre=(3, 5, 100), post=(3, 1, 100))
    _check((5, 200), (200,), ConvParams(512, 0, 200), torch.float64, D=(5, 200), post=(5, 200))


def test_fallback_is_visible_and_exact():
    p = ConvParams(300, 7, 290)  # not a fused size, and wraps: cannot be padded
    reason = tm.plan_for(300, torch.float32, "cpu")
    assert isinstance(reason, str) and "n=300" in reason
    before = sum(tm.FALLBACKS.values())
    _check((2, 300), (2, 300), p, torch.float32, expect_plan=False)
    assert sum(tm.FALLBACKS.values()) == before + 1
    assert "reference fallback" in tm.explain(torch.randn(2, 300), torch.randn(2, 300), p=p)


def test_out_of_resources_falls_back_and_is_remembered(monkeypatch):
    from triton.runtime.errors import OutOfResources

    from convfuse.backends.triton_monarch import launch

    calls = []

    def too_big(*args):
        calls.append(1)
        raise OutOfResources(300000, 101376, "shared memory")

    monkeypatch.setattr(launch, "_launch", too_big)
    monkeypatch.setattr(launch, "_REFUSED", {})
    u, k, p = torch.randn(2, 100), torch.randn(2, 100), ConvParams(256, 0, 100)
    for _ in range(2):
        torch.testing.assert_close(tm.run(u, k, None, None, None, p), fft_conv_reference(u, k, None, None, None, p))
    assert len(calls) == 1  # the second call does not try again
    assert any("do not fit this device" in reason for reason in tm.FALLBACKS)


def test_correlation_reading_negative_lags_is_not_padded():
    # at n=600 lags -1..-K+1 sit at 600-K+1..599: a padded size would move them, so no padding;
    # the call is still linear, and overlap-save reads those lags as a segment of its own
    assert plan_mod.padded_size(600, 100, 50, 560, 40, conj_kernel=True) is None
    assert plan_mod.padded_size(600, 100, 50, 0, 100, conj_kernel=True) == 256
    assert plan_mod.padded_size(600, 100, 50, 560, 40, conj_kernel=False) == 1024
    r = _check((2, 100), (2, 50), ConvParams(600, 560, 40, conj_kernel=True), torch.float32)
    assert r.frames is not None and r.frames.segments == ((-40, 0, 0),)
    _check((2, 100), (2, 50), ConvParams(512, 470, 42, conj_kernel=True), torch.float32)


def test_large_sizes_outer_radix_64_128():
    for n in (65536, 131072):
        pl = tm.plan_for(n, torch.float32, "cpu")
        assert isinstance(pl, plan_mod.OuterPlan) and pl.n0 * pl.inner.n == n and pl.radices[0] == n // 1024
        for shape in pl.dot_shapes(True, True):
            tm.check_dot_shape(*shape)
    _check((1, 30000), (1, 20000), ConvParams(65536, 0, 30000), torch.float32, rtol=1e-5)


def test_two_level_outer_plan(monkeypatch):
    # the smallest real two-level size is 256K (~8 s in the interpreter); the same kernels are
    # checked on a 16 x 16 x 256 plan for n = 65536 (a test-only factorization)
    monkeypatch.setitem(plan_mod.OUTER, 65536, (16, 16, 256))
    plan_mod._plan_cached.cache_clear()
    try:
        pl = tm.plan_for(65536, torch.float64, "cpu")
        assert pl.radices == (16, 16, 16, 16) and pl.f0b.shape == (2, 16, 16)
        # 3 rows, one kernel: rows 0 and 1 share a complex transform, row 2 has none to pair with
        _check((3, 40000), (1, 20000), ConvParams(65536, 7, 40000, conj_kernel=True), torch.float64,
               D=(3, 40000), post=(1, 40000))
    finally:
        plan_mod._plan_cached.cache_clear()


@pytest.mark.slow
@pytest.mark.parametrize("n", [1 << 18, 1 << 20])
def test_two_level_real_sizes(n):
    pl = tm.plan_for(n, torch.float32, "cpu")
    assert pl.n0b > 1 and pl.inner.n == 1024
    _check((1, n // 2), (1, n // 2), ConvParams(n, 0, n // 2), torch.float32, rtol=1e-5)


def test_plans_are_cached_and_gpu_legal():
    for n, (n1, n2) in plan_mod.FACTORS.items():
        pl = tm.plan_for(n, torch.float32, "cpu")
        assert isinstance(pl, tm.MonarchPlan) and (pl.n1, pl.n2) == (n1, n2) and n1 * n2 == n
        assert pl is tm.plan_for(n, torch.float32, "cpu")
        assert pl.f1.dtype == torch.float32 and pl.tw.shape == (2, n1, n2)
        for half_in in (False, True):
            for half_out in (False, True):
                if (half_in or half_out) and not pl.can_skip_half:
                    continue
                for shape in pl.dot_shapes(half_in, half_out):
                    tm.check_dot_shape(*shape)
    assert isinstance(tm.plan_for(2**23, torch.float32, "cpu"), str)  # beyond 4M: no plan
    assert isinstance(tm.plan_for(3 * 2**12, torch.float32, "cpu"), str)  # not a power of two
    assert isinstance(tm.plan_for(256, torch.float16, "cpu"), str)  # half inputs compute in fp32
    f64 = tm.plan_for(512, torch.float64, "cpu")
    z = torch.complex(f64.f1[0], f64.f1[1])
    torch.testing.assert_close(z @ z.conj().T, 32 * torch.eye(32, dtype=torch.complex128))


def test_dot_limits_asserted():
    with pytest.raises(AssertionError, match="K=8"):
        tm.check_dot_shape(32, 16, 8)  # the interpreter would accept this; a GPU would not
    with pytest.raises(AssertionError, match="N=24"):
        tm.check_dot_shape(32, 24, 16)
    pl = tm.plan_for(256, torch.float32, "cpu")
    assert not pl.can_skip_half  # 16x16: half of N1 is 8 < 16, so causal skipping is off
    cp = plan_mod.call_plan(256, 100, 100, 0, 100, False, torch.float32, torch.float32, torch.device("cpu"))
    assert not cp.half_in and not cp.half_out


def test_causal_halves_of_8_rows_run_as_stacked_dots():
    # 256 = 16 x 16: the causal halves are 8 rows, below tl.dot's 16 on GPUs; the forward kernels
    # stack the real and imaginary planes into K (first stage) and M (last stage) instead
    from convfuse.backends.triton_monarch import launch

    u, k = torch.randn(2, 3, 100), torch.randn(3, 100)
    r = launch.resolve(u, k, None, None, None, ConvParams(256, 0, 100))
    assert r.half_in and r.half_out and plan_mod.stacked_skip(r.plan.n1)
    assert r.plan.dot_shapes(True, True) == [(16, 16, 16)] * 4  # 2 dots of K = 16, 2 of M = 16
    assert plan_mod.dot_work(256, 16, 16, True, True, 0) == 3 * plan_mod.dot_work(256, 16, 16, False, False, 0) // 4
    assert "skips causal input and causal output" in tm.explain(u, k, p=ConvParams(256, 0, 100))
    for dtype, rtol in ((torch.float32, 2e-5), (torch.float16, 1e-2)):
        q = ConvParams(256, 0, 100, out_dtype=dtype)
        _check((2, 3, 100), (3, 100), q, dtype, D=(3, 1), post=(2, 3, 100), rtol=rtol)  # rows sharing a kernel
        _check((1, 3, 100), (3, 100), q, dtype, pre=(1, 3, 100), rtol=rtol)  # two kernels a pair (kernels_twok)
    assert "causal input (loads only)" in tm.explain(torch.randn(1, 3, 100), k, p=ConvParams(256, 0, 100))
    for ushape, kshape, p in (((2, 128), (2, 60), ConvParams(256, 0, 180)),  # input half only
                              ((2, 200), (2, 50), ConvParams(256, 0, 128)),  # output half only
                              ((2, 100), (2, 100), ConvParams(256, 0, 100, spectrum_bins=20))):  # sparse, 16x16
        r = _check(ushape, kshape, p, torch.float32)
        assert (r.half_in, r.half_out) == (ushape[-1] <= 128, p.length <= 128)
    # the plain rule (backward, channel mixing: their kernels do not stack) is unchanged
    assert not plan_mod.call_plan(256, 100, 100, 0, 100, False, torch.float32, torch.float32,
                                  torch.device("cpu")).half_in


def test_stacked_halves_compile_without_spills():
    # sm90 without a GPU: the 256 kernel with both halves skipped runs 12 complex-plane dots (24
    # mma.sync m16n8k16 in the PTX; 32 without the skips), no spills (bench/results/triton-sm90-resources.md)
    import re
    import subprocess
    import tempfile
    from pathlib import Path

    import triton

    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError:
        pytest.skip("this Triton has no ahead-of-time compile API")
    from convfuse.backends.triton_monarch import kernels

    fn = kernels.MONARCH_CONV2[False]
    consts = dict(N1=16, N2=16, W=16, HALF_IN=True, HALF_OUT=True, FRAMES=False, PREC="ieee", HAS_PRE=True,
                  HAS_D=True, HAS_POST=True)
    sig = {a: "constexpr" if a in consts else "*i64" if a.endswith("off_ptr") or a == "pair_ptr" else
           "*fp32" if a in ("k_ptr", "tw_ptr") else "*fp16" if a.endswith("_ptr") else "i32" for a in fn.arg_names}
    try:
        compiled = triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    except (RuntimeError, FileNotFoundError) as e:  # no ptxas / LLVM for this target in this install
        if "ptxas" in str(e).lower() or "not found" in str(e).lower():
            pytest.skip(f"cannot compile for sm90 here: {e}")
        raise  # anything else is the kernel's failure, not the toolchain's
    assert len(re.findall(r"\bmma\.sync\.aligned\.m16n8k16", compiled.asm["ptx"])) == 24
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not cuobjdump.exists():
        pytest.skip("no cuobjdump in this Triton")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        usage = subprocess.run([str(cuobjdump), "-res-usage", f.name], capture_output=True, text=True).stdout
    assert re.search(r"STACK:0\b", usage), usage


def test_kernel_spectrum_cached_until_kernel_changes():
    k = torch.randn(3, 50)
    spectrum = lambda: plan_mod.kernel_spectrum(k, 256, 256, False, 1.0, torch.float32, (16, 16))  # noqa: E731
    assert spectrum() is not spectrum()  # by value off by default: on a GPU it would synchronise
    with plan_mod.cache_kernel_spectra():  # the rule and its edge cases: tests/test_cache_soundness.py
        spectrum()  # a first sighting: stored on the second
        s1 = spectrum()
        assert spectrum() is s1
        k.data.mul_(2.0)  # no version bump: the comparison sees it
        s2 = spectrum()
        assert s2 is not s1
    assert not any(key[-1][0] == "monarch" for key in plan_mod.cpu_cache._entries)
    torch.testing.assert_close(s2, 2 * s1)
    # Monarch order: [k1, k2] holds frequency k1 + N1*k2
    kf = torch.fft.fft(k, n=256)
    torch.testing.assert_close(torch.complex(s2[:, 0, 3, 5], s2[:, 1, 3, 5]), kf[:, 3 + 16 * 5])


def test_cpu_without_interpreter_raises(monkeypatch):
    monkeypatch.setattr(config, "triton_interpret", False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        tm.run(torch.randn(2, 10), torch.randn(2, 10), None, None, None, ConvParams(256, 0, 10))


def test_dispatch_picks_triton():
    impl = choose_kernel("triton", "cpu")
    assert impl is tm.IMPLEMENTATION and impl.name == "triton" and impl.devices == ("cuda", "cpu")


def _op(u, k, D, pre, post, p, kernel):
    return fft_conv(u, k, D, pre, post, p.n, p.start, p.length, p.scale, p.n_power, p.conj_kernel,
                    p.out_dtype or u.dtype, kernel)


@pytest.mark.parametrize(
    "ushape,kshape,p,D,pre,post",
    [
        ((2, 3, 60), (3, 60), ConvParams(256, 0, 60), (3, 1), (2, 3, 60), (3, 60)),
        ((2, 90), (2, 40), ConvParams(256, 0, 90, conj_kernel=True, scale=2.0), None, None, (2, 90)),
        ((2, 300), (2, 300), ConvParams(512, 100, 300, n_power=-0.5), (2, 300), None, None),  # wraps
        ((1, 2, 1500), (2, 1500), ConvParams(4096, 0, 1500), (2, 1), (1, 2, 1500), (1, 2, 1500)),  # outer passes
        # sparse: the backward is composed from forward calls, here with stacked causal halves (16 x 16)
        ((2, 100), (2, 100), ConvParams(256, 0, 100, spectrum_bins=20), None, None, (2, 100)),
    ],
)
def test_gradients_through_op(ushape, kshape, p, D, pre, post):
    g = torch.Generator().manual_seed(0)
    tensors = [None if s is None else torch.randn(s, dtype=torch.float64, generator=g) for s in (ushape, kshape, D, pre, post)]
    grads = {}
    for kernel in ("triton", "reference"):
        leaves = [None if t is None else t.clone().requires_grad_() for t in tensors]
        out = _op(*leaves, p, kernel)
        w = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(1))
        (out * w).sum().backward()
        grads[kernel] = (out.detach(), [None if t is None else t.grad for t in leaves])
    (o1, g1), (o2, g2) = grads["triton"], grads["reference"]
    torch.testing.assert_close(o1, o2, rtol=1e-10, atol=1e-10)
    for a, b in zip(g1, g2):
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_gradcheck_fp64():
    g = torch.Generator().manual_seed(2)
    u = torch.randn(1, 20, dtype=torch.float64, generator=g, requires_grad=True)
    k = torch.randn(1, 9, dtype=torch.float64, generator=g, requires_grad=True)
    gate = torch.randn(1, 20, dtype=torch.float64, generator=g, requires_grad=True)
    p = ConvParams(256, 0, 20)
    assert torch.autograd.gradcheck(lambda u, k, gt: _op(u, k, None, gt, gt, p, "triton"), (u, k, gate))


def test_torch_compile_with_kernel_triton():
    """The whole path: backend="convfuse" rewrites an FFT convolution and options["kernel"] forces Triton."""

    def gated(u, k, D, g1, g2):
        L = u.shape[-1]
        ue = u * g1
        y = torch.fft.irfft(torch.fft.rfft(ue, n=2 * L) * torch.fft.rfft(k, n=2 * L), n=2 * L)[..., :L]
        return (y + ue * D) * g2

    torch._dynamo.reset()
    g = torch.Generator().manual_seed(5)
    args = [torch.randn(s, dtype=torch.float64, generator=g, requires_grad=True)
            for s in ((2, 3, 200), (3, 200), (3, 1), (2, 3, 200), (2, 3, 200))]
    fused = torch.compile(gated, backend="convfuse", options={"kernel": "triton", "inner": "eager"})
    launches = sum(tm.LAUNCHES.values())
    out = fused(*args)
    assert sum(tm.LAUNCHES.values()) > launches, "the compiled function did not run the Triton kernel"
    grads = torch.autograd.grad(out.square().sum(), args)
    ref = gated(*args)
    ref_grads = torch.autograd.grad(ref.square().sum(), args)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    torch._dynamo.reset()


def test_measured_choice_is_cached_per_shape():
    from convfuse.backends.triton_monarch import measured

    calls = []

    def fake_timer(fn, device):  # Triton "faster" at 256, cuFFT "faster" at 512
        calls.append(fn)
        fn()
        return 1.0 if len(calls) % 2 == 1 else (2.0 if n == 256 else 0.5)

    measured.CHOICES.clear()
    for n, want in ((256, "triton"), (512, "cufft")):
        u, k = torch.randn(2, n // 2), torch.randn(2, n // 2)
        p = ConvParams(n, 0, n // 2)
        assert measured.choose(u, k, None, None, None, p, timer=fake_timer) == want
        assert measured.choose(u, k, None, None, None, p, timer=None) == want  # cached: no timing
        torch.testing.assert_close(measured.run_measured(u, k, None, None, None, p),
                                   fft_conv_reference(u, k, None, None, None, p), rtol=1e-4, atol=1e-4)
    assert len(calls) == 4
    p = ConvParams(300, 7, 290)  # no plan: cuFFT without timing
    assert measured.choose(torch.randn(300), torch.randn(300), None, None, None, p, timer=None) == "cufft"
    measured.CHOICES.clear()


def test_bf16_dots_on_cpu_are_skipped_for_the_interpreter():
    pytest.skip("bf16 tl.dot: the Triton interpreter multiplies bf16 wrongly; bf16 dots are tested on CUDA only")


def test_bf16_tensors_under_the_interpreter_use_fp32_dots():
    # bf16 loads, casts and stores are right in the interpreter, only its bf16 tl.dot is not:
    # the launcher runs fp32 dots there, so bf16 models still give right answers on CPU
    p = ConvParams(512, 0, 200, out_dtype=torch.bfloat16)
    plan = _check((3, 200), (3, 200), p, torch.bfloat16, post=(3, 200), rtol=1e-2)
    assert plan.plan.dot_dtype == torch.float32


# ---- GPU: compiled kernels (no interpreter)


@pytest.fixture
def compiled(monkeypatch):
    monkeypatch.setattr(config, "triton_interpret", False)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n,L", [(256, 128), (512, 256), (1024, 512), (1024, 1000), (700, 300), (4096, 2048), (32768, 16384), (131072, 65536)])
def test_gpu_forward(compiled, dtype, n, L):
    rtol = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}[dtype]
    _check((4, 8, L), (8, L), ConvParams(n, 0, L), dtype, D=(8, 1), pre=(4, 8, L), post=(4, 8, L), device="cuda", rtol=rtol)


@needs_cuda
def test_gpu_gradients(compiled):
    g = torch.Generator().manual_seed(0)
    u, k = (torch.randn(s, generator=g).cuda().requires_grad_() for s in ((4, 8, 500), (8, 500)))
    p = ConvParams(1024, 0, 500)
    out = {}
    for kernel in ("triton", "reference"):
        u.grad = k.grad = None
        _op(u, k, None, None, None, p, kernel).square().sum().backward()
        out[kernel] = (u.grad.clone(), k.grad.clone())
    for a, b in zip(out["triton"], out["reference"]):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)
