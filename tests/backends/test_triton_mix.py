"""The Triton channel-mixing kernel (triton_monarch/mix.py, kernels_mix.py) against the plain-torch
reference of ``fft_conv_mix``, under the interpreter (TRITON_INTERPRET=1: tiny shapes; bf16 runs
fp32 dots there), plus the GPU's tl.dot limits and compiles for sm90/sm80 without a GPU.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch

triton = pytest.importorskip("triton", reason="the Triton kernels (interpreted on CPU) need triton")

from convfuse import config  # noqa: E402
from convfuse.backends import cpu_cache  # noqa: E402
from convfuse.backends.triton_monarch import kernels_mix, mix  # noqa: E402
from convfuse.backends.triton_monarch.plan import FUSED_SIZES, check_dot_shape, plan_for  # noqa: E402
from convfuse.ops_mix import fft_conv_mix_reference  # noqa: E402
from convfuse.ops_spectral import fft_spectral_mix_reference  # noqa: E402


@pytest.fixture(autouse=True)
def interpreter(monkeypatch):
    monkeypatch.setattr(config, "triton_interpret", True)


RTOL = {torch.float64: 1e-11, torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 2e-2}


def _operands(batch, G, ci, co, L, K, dtype, bias, seed):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(*batch, G * ci, L, generator=g, dtype=torch.float64).to(dtype)
    w = torch.randn(G * co, ci, K, generator=g, dtype=torch.float64).to(dtype)
    b = torch.randn(G * co, generator=g, dtype=torch.float64).to(dtype) if bias else None
    return u, w, b


def _check(u, w, b, n, start, length, conj=False, G=1, out=None, scale=0.5, n_power=0.0, constant=False,
           expect=None):
    out = out or (torch.float64 if u.dtype == torch.float64 else torch.float32)
    args = ([n], [start], [length])
    plan = mix.resolve_mix(u, w, b, *args, conj, G, out)
    assert not isinstance(plan, str), plan
    if expect is not None:
        assert (plan.m, plan.half_in, plan.half_out) == expect, mix.explain_mix(u, w, b, *args, conj, G, out)
    y = mix.run_conv_mix(u, w, b, *args, scale, n_power, conj, G, out, constant)
    ref = fft_conv_mix_reference(u, w, b, *args, scale, n_power, conj, G, out)
    assert y.shape == ref.shape and y.dtype == ref.dtype
    err = ((y.double() - ref.double()).abs().max() / ref.double().abs().max()).item()
    half = out in (torch.float16, torch.bfloat16)
    rtol = RTOL[out if half else u.dtype if u.dtype == torch.float64 else torch.float32]
    assert err <= rtol, f"relative max error {err:.2e} > {rtol:.0e} ({mix.explain_mix(u, w, b, *args, conj, G, out)})"
    return plan


CASES = [
    # (batch, G, Ci, Co, L, K, n, start, length, conj, bias, (m, half_in, half_out))
    ((2,), 1, 3, 5, 100, 100, 256, 0, 100, False, True, (256, False, False)),  # odd Ci, Co=5 < BO
    ((1,), 1, 4, 2, 200, 30, 256, 7, 150, True, True, (256, False, False)),  # correlation, start != 0
    ((3,), 1, 2, 4, 40, 20, 64, 0, 40, False, True, (256, False, False)),  # n=64 linear: padded to 256
    ((2,), 1, 6, 3, 200, 200, 512, 0, 200, False, True, (512, True, True)),  # causal skips, Ci > Co
    ((1,), 1, 5, 6, 512, 512, 512, 300, 512, False, False, (512, False, False)),  # circular, window wraps
    ((2,), 2, 3, 2, 200, 60, 512, 10, 120, True, True, (512, True, True)),  # groups, correlation
    ((1, 2), 1, 1, 3, 90, 90, 300, 0, 100, False, True, (256, False, False)),  # n=300 linear -> 256, Ci=1
    ((2,), 1, 2, 2, 300, 300, 256, 17, 256, False, True, (256, False, False)),  # u, w longer than n: truncated
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"n{c[6]}-ci{c[2]}-co{c[3]}")
def test_fp32_against_reference(case):
    batch, G, ci, co, L, K, n, start, length, conj, bias, expect = case
    u, w, b = _operands(batch, G, ci, co, L, K, torch.float32, bias, hash(case) % 2**31)
    _check(u, w, b, n, start, length, conj, G, expect=expect)


@pytest.mark.parametrize("out", [torch.float16, torch.float32])
def test_fp16_inputs(out):
    u, w, b = _operands((2,), 1, 4, 3, 200, 60, torch.float16, True, 1)
    plan = _check(u, w, b, 512, 0, 200, out=out, scale=1.0)
    assert plan.plan.dot_dtype == (torch.float16 if out == torch.float16 else torch.float32)
    u, w, b = _operands((1,), 2, 2, 2, 256, 256, torch.float16, False, 2)
    _check(u, w, b, 256, 3, 200, True, G=2, out=out)


def test_bf16_runs_fp32_dots_in_the_interpreter():
    u, w, b = _operands((2,), 1, 3, 2, 100, 100, torch.bfloat16, True, 3)
    plan = _check(u, w, b, 256, 0, 100, out=torch.bfloat16)
    assert plan.plan.dot_dtype == torch.float32


def test_fp64_and_n_power():
    u, w, b = _operands((2,), 1, 3, 3, 128, 128, torch.float64, True, 4)
    _check(u, w, b, 256, 5, 128, True, n_power=-1.0)


def test_strided_input_and_one_block_per_channel():
    g = torch.Generator().manual_seed(5)
    u = torch.randn(200, 4, 2, generator=g).permute(2, 1, 0)  # (2, 4, 200), last-axis stride 8
    w = torch.randn(16, 4, 80, generator=g)  # 200 + 80 - 1 > 256: runs at 512
    plan = _check(u, w, None, 512, 0, 200)
    assert plan.bo == 4  # MIX_TABLE's 4 for fp32 dots at 512; a 16-channel group has 4 blocks


def test_refusals_say_why(monkeypatch):
    u, w, b = _operands((2,), 1, 2, 3, 64, 64, torch.float32, False, 6)
    r = mix.resolve_mix(u, w, b, [64], [0], [64], False, 1, torch.float32)  # circular at a non-plan size
    assert isinstance(r, str) and "no Monarch plan" in r
    assert "1-D only" in mix.run_conv_mix(u[..., None], w[..., None], b, [64, 1], [0, 0], [64, 1],
                                          1.0, 0.0, False, 1, torch.float32)
    u2, w2, _ = _operands((1,), 1, 2, 2, 4096, 4096, torch.float32, False, 7)
    assert "outer passes" in mix.resolve_mix(u2, w2, None, [4096], [0], [4096], False, 1, torch.float32)
    assert "empty operand" in mix.resolve_mix(u[:, :0], w[:, :0], None, [256], [0], [64], False, 1, torch.float32)
    monkeypatch.setattr(config, "triton_interpret", False)
    assert "CUDA" in mix.resolve_mix(u, w, b, [256], [0], [64], False, 1, torch.float32)


def test_constant_kernel_spectrum_is_cached_soundly():
    u, w, b = _operands((1,), 1, 2, 2, 100, 100, torch.float32, True, 8)
    cpu_cache.clear()
    hits = cpu_cache.stats["hits"]
    for _ in range(3):  # seen, stored, used
        _check(u, w, b, 256, 0, 100, constant=True)
    assert cpu_cache.stats["hits"] == hits + 1
    w.mul_(-2.0)  # new bits, same storage: the entry must not be used
    _check(u, w, b, 256, 0, 100, constant=True)
    cpu_cache.clear()


def test_paired_spectrum_layout():
    """Kp[o, p] = K[o, 2p] - i K[o, 2p+1], each block's tile contiguous, zero past Co."""
    g = torch.Generator().manual_seed(9)
    w = torch.randn(2 * 3, 3, 40, generator=g, dtype=torch.float64)
    kp = mix.mix_spectrum(w, 256, 256, False, 1.0, torch.float64, (16, 16), 2, 2)  # G=2, Co=3, BO=2
    assert kp.shape == (2 * 2, 2, 2, 2, 16, 16)
    K = torch.fft.fft(w, n=256).reshape(6, 3, 16, 16).transpose(-1, -2)  # Monarch order [k1, k2]
    K = torch.cat([K, K.new_zeros(6, 1, 16, 16)], 1)
    want = K[:, 0::2] - 1j * K[:, 1::2]  # (6, 2, 16, 16)
    got = torch.complex(kp[:, :, 0], kp[:, :, 1])  # (G*NOB, P, BO, 16, 16)
    for gi in range(2):
        for o in range(3):
            blk, i = gi * 2 + o // 2, o % 2
            torch.testing.assert_close(got[blk, :, i], want[gi * 3 + o])
    assert got[1, :, 1].abs().max() == 0 and got[3, :, 1].abs().max() == 0  # channel 3 of each group


def test_triton_spectrum_builder_takes_the_weight_layout():
    """On CUDA mix_spectrum builds K with plan._kernel_spectrum (one Triton launch, here
    interpreted) on the (G*Co, Ci, K) weight: the same values as the torch builder the
    interpreter runs otherwise."""
    from convfuse.backends.triton_monarch import plan as plan_mod

    g = torch.Generator().manual_seed(10)
    w = torch.randn(3, 2, 70, generator=g)[:, :, ::2]  # (Co, Ci, 35), a strided view
    for conj in (False, True):
        got = plan_mod._kernel_spectrum(w, 256, 512, conj, 0.25, torch.float32, (32, 16), 0, 0, 0)
        ref = plan_mod.torch_kernel_spectrum(w, 256, 512, conj, 0.25, torch.float32, (32, 16))
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


def test_bad_arguments_raise_as_the_operator():
    u, w, _ = _operands((1,), 1, 2, 2, 64, 8, torch.float32, False, 11)
    with pytest.raises(ValueError, match="input channels"):
        mix.run_conv_mix(u, w[:, :1], None, [256], [0], [64], 1.0, 0.0, False, 1, torch.float32)


@pytest.mark.parametrize("n", FUSED_SIZES)
@pytest.mark.parametrize("dot", [torch.float16, torch.float32, torch.float64])
def test_dot_shapes_meet_gpu_limits(n, dot):
    """Every tl.dot the kernel runs, at MIX_TABLE's block and every block a call can shrink to."""
    compute = torch.float64 if dot == torch.float64 else torch.float32
    pl = plan_for(n, compute, "cpu", dot)
    bo_max = mix.MIX_TABLE[(mix.dot_kind(dot), n)][0]
    for bo in (1 << i for i in range(bo_max.bit_length())):
        for half in ((False, False), (True, True), (True, False)) if pl.can_skip_half else ((False, False),):
            mp = mix.MixPlan(pl, n, *half, bo, None)
            for shape in mp.dot_shapes():
                check_dot_shape(*shape)
            assert bo * n * 2 <= 2**20  # Triton's element limit per tensor, both planes


def test_block_shrinks_to_fill_the_device():
    assert mix.block_channels(1024, 64, 200, torch.float16) == 8
    assert mix.block_channels(1024, 64, 5, torch.float16, sms=132) == 4  # 5 rows * 16 blocks: 160 would not fit
    assert mix.block_channels(1024, 64, 4, torch.float16, sms=132) == 2  # 4 rows * 32 blocks = 128 <= 132
    assert mix.block_channels(1024, 64, 200, torch.float16, sms=132) == 8
    assert mix.block_channels(1024, 3, 1000, torch.float16) == 4  # at most Co rounded up
    assert mix.block_channels(2048, 64, 1, torch.float32) == 1


def test_roofline_counts():
    r = mix.roofline(B=8, ci=64, co=64, n=2048, L=1024)
    # per output sample: u (64 ch * 2 B / 64 outputs) + y 2 B + the spectrum (64 x 32 pairs x 2n fp32)
    # amortized over 8 rows * 64 channels * 1024 samples
    assert r["hbm_bytes_per_output"] == pytest.approx(2 + 2 + 64 * 32 * 2 * 2048 * 4 / (8 * 64 * 1024))
    assert r["dot_flops"] > 0 and r["cuda_core_flops"] > 0


# ---- fft_spectral_mix (the FNO layer) through the same kernel

def _spectral(batch, ci, co, L, n, blocks, dtype=torch.float32, out=torch.float32, constant=False, seed=0,
              n_power=0.0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(*batch, ci, L, generator=g, dtype=torch.float64).to(dtype)
    cw = torch.complex128 if dtype == torch.float64 else torch.complex64
    ws = [torch.randn(ci, co, m, generator=g, dtype=torch.complex128).to(cw) for _, m in blocks]
    lows = [lo for lo, _ in blocks]
    y = mix.run_spectral_mix(u, ws, lows, [n], 0.7, n_power, out, constant)
    assert not isinstance(y, str), y
    ref = fft_spectral_mix_reference(u, ws, lows, [n], 0.7, n_power, out)
    assert y.shape == ref.shape and y.dtype == ref.dtype
    err = ((y.double() - ref.double()).abs().max() / ref.double().abs().max()).item()
    rtol = RTOL[out if out in (torch.float16, torch.bfloat16) else dtype if dtype == torch.float64 else torch.float32]
    assert err <= rtol, f"relative max error {err:.2e} > {rtol:.0e}"
    return ws


@pytest.mark.parametrize("case", [
    ((2,), 3, 4, 256, 256, [(0, 16)]),  # the usual FNO layer: the lowest modes
    ((1, 2), 4, 3, 100, 512, [(0, 8), (200, 57)]),  # a block through the Nyquist bin, causal input skip
    ((2,), 5, 2, 600, 256, [(120, 9), (0, 1)]),  # u longer than n (truncated), DC alone, Nyquist
], ids=lambda c: f"n{c[4]}-ci{c[1]}-co{c[2]}")
def test_spectral_against_reference(case):
    _spectral(*case)


def test_spectral_columns():
    assert mix.spectral_columns(1024, 32, 32, [(0, 16)]) == (31, 16)  # col 0 and the mirrors' col 31
    assert mix.spectral_columns(1024, 32, 32, [(0, 100)]) == (28, 16)  # cols 28..31 and 0..3
    assert mix.spectral_columns(1024, 32, 32, [(500, 13)]) == (15, 16)  # around Nyquist: cols 15, 16
    assert mix.spectral_columns(1024, 32, 32, [(0, 8), (500, 13)]) == (0, 0)  # two runs: 18 columns
    assert mix.spectral_columns(256, 16, 16, [(0, 16)]) == (0, 0)  # N2 = 16: nothing to skip


@pytest.mark.parametrize("n,blocks,dtype", [
    (1024, [(0, 16)], torch.float32), (2048, [(0, 40)], torch.float16), (1024, [(500, 13)], torch.float32),
])
def test_spectral_kept_columns_only(n, blocks, dtype):
    u = torch.randn(1, 2, n // 2)
    ws = [torch.randn(2, 3, m, dtype=torch.complex64) for _, m in blocks]
    lows = [lo for lo, _ in blocks]
    r = mix.resolve_spectral(u, ws, lows, [n], dtype)
    assert r.cols == 16 and r.width == 16 and r.half_in, r
    _spectral((1,), 2, 3, n // 2, n, blocks, out=dtype, seed=n)


def test_spectral_half_and_fp64():
    _spectral((2,), 2, 3, 256, 256, [(3, 20)], torch.float16, torch.float16, seed=1)
    _spectral((2,), 2, 3, 200, 256, [(3, 20)], torch.float16, torch.float32, seed=2)
    _spectral((1,), 3, 2, 256, 512, [(0, 12)], torch.float64, torch.float64, seed=3, n_power=-1.0)


def test_spectral_refusals_and_cache():
    u = torch.randn(1, 2, 300)
    ws = [torch.randn(2, 2, 4, dtype=torch.complex64)]
    assert "runs at n itself" in mix.run_spectral_mix(u, ws, [0], [300], 1.0, 0.0, torch.float32)
    assert "1-D only" in mix.run_spectral_mix(u[..., None], [ws[0][..., None]], [0, 0], [256, 1], 1.0, 0.0,
                                              torch.float32)
    cpu_cache.clear()
    ws = _spectral((1,), 2, 2, 256, 256, [(0, 8)], constant=True, seed=4)  # first sighting
    u = torch.randn(1, 2, 256)
    hits = cpu_cache.stats["hits"]
    for _ in range(2):  # stored, then used
        mix.run_spectral_mix(u, ws, [0], [256], 0.7, 0.0, torch.float32, True)
    assert cpu_cache.stats["hits"] == hits + 1
    ws[0].mul_(1j)  # new bits: the cached spectrum must not be used
    y = mix.run_spectral_mix(u, ws, [0], [256], 0.7, 0.0, torch.float32, True)
    ref = fft_spectral_mix_reference(u, ws, [0], [256], 0.7, 0.0, torch.float32)
    torch.testing.assert_close(y, ref, rtol=2e-5, atol=2e-5 * ref.abs().max().item())
    cpu_cache.clear()


# ---- compiled for NVIDIA targets, no GPU needed (as test_triton_compile.py)

def _compile(consts, dot, compute, arch=90, warps=mix.MIX_WARPS, stages=None):
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if "nvidia" not in getattr(triton.backends, "backends", {}):
        pytest.skip("Triton's NVIDIA backend is not installed")
    fn = kernels_mix.MIX_CONV[False]
    sig = {}
    for a in fn.arg_names:
        if a in consts:
            sig[a] = "constexpr"
        elif a in ("k_ptr", "tw_ptr", "bias_ptr"):
            sig[a] = f"*{compute}"
        elif a.endswith("_ptr"):
            sig[a] = f"*{dot}"
        else:
            sig[a] = "i32"
    options = {"num_warps": warps, **({"num_stages": stages} if stages else {})}
    try:
        return triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", arch, 32), options=options)
    except (RuntimeError, FileNotFoundError) as e:
        if "ptxas" in str(e).lower() or "not found" in str(e).lower():
            pytest.skip(f"cannot compile for sm{arch} here: {e}")
        raise


def _stack_and_regs(k) -> tuple[int | None, int | None]:
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not cuobjdump.exists():
        return None, None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(k.asm["cubin"])
        f.flush()
        usage = subprocess.run([str(cuobjdump), "-res-usage", f.name], capture_output=True, text=True).stdout
    num = lambda tag: int(m.group(1)) if (m := re.search(tag + r":(\d+)", usage)) else None  # noqa: E731
    return num("STACK"), num("REG")


DOT_NAME = {"half": "fp16", "fp32": "fp32", "fp64": "fp64"}
SPILLS_EXPECTED = {("fp32", 2048), ("fp64", 2048)}  # no BO compiles without spills there


@pytest.mark.parametrize("key", sorted(mix.MIX_TABLE), ids=lambda k: f"{k[0]}-{k[1]}")
def test_table_entries_compile_for_sm90(key):
    kind, n = key
    bo, stages, smem = mix.MIX_TABLE[key]
    n1, n2 = plan_for(n).radices
    half = n1 >= 32
    dot = DOT_NAME[kind]
    consts = dict(N1=n1, N2=n2, W=n2, BO=bo, HALF_IN=half, HALF_OUT=half, HAS_BIAS=True,
                  PREC="tf32x3" if dot == "fp32" else "ieee")
    k = _compile(consts, dot, "fp64" if dot == "fp64" else "fp32", stages=stages)
    assert k.asm.get("cubin"), "no cubin produced"
    assert k.metadata.shared <= smem, f"shared {k.metadata.shared} B > the {smem} B MIX_TABLE records"
    stack, regs = _stack_and_regs(k)
    if stack is not None and key not in SPILLS_EXPECTED:
        assert stack == 0, f"{key}: {stack} B of spills at BO={bo} ({regs} registers)"
    if kind == "half":
        assert re.search(r"mma[a-z0-9_.]*\.f16\.f16", k.asm["ptx"]), "no fp16 tensor-core instruction"


@pytest.mark.parametrize("n,dot", [(1024, "fp16"), (2048, "bf16"), (1024, "fp32")])
def test_kept_columns_compile_for_sm90(n, dot):
    """An FNO layer's kept columns (W = 16 of 32) at MIX_TABLE's block: no more than the dense kernel."""
    kind = "half" if dot != "fp32" else "fp32"
    bo, stages, smem = mix.MIX_TABLE[(kind, n)]
    n1, n2 = plan_for(n).radices
    k = _compile(dict(N1=n1, N2=n2, W=16, BO=bo, HALF_IN=True, HALF_OUT=False, HAS_BIAS=False,
                      PREC="tf32x3" if dot == "fp32" else "ieee"), dot, "fp32", stages=stages)
    assert k.metadata.shared <= smem
    stack, regs = _stack_and_regs(k)
    assert stack in (None, 0), f"{stack} B of spills ({regs} registers)"


@pytest.mark.parametrize("dot", ["bf16", "fp16"])
def test_kernel_compiles_for_sm80(dot):
    bo, stages, _ = mix.MIX_TABLE[("half", 1024)]
    k = _compile(dict(N1=32, N2=32, W=32, BO=bo, HALF_IN=True, HALF_OUT=True, HAS_BIAS=True, PREC="ieee"),
                 dot, "fp32", arch=80, stages=stages)
    assert k.asm.get("cubin") and k.metadata.shared <= 99 * 1024
