"""Triton plan for ``convfuse::fft_conv_mix`` in 1-D at the fused sizes (n <= 2048): the channel
GEMM between the forward and inverse Monarch stages, in one kernel (kernels_mix.py).

``run_conv_mix(u, w, bias, n, start, length, scale, n_power, conj, groups, out_dtype)`` is the
CUDA hook (also CPU tensors under TRITON_INTERPRET=1, for tests): the result, or a string saying
why this plan does not apply (the caller then runs another implementation).  ``resolve_mix`` is
the plan alone, ``explain_mix`` says it in words.  ``run_spectral_mix`` is the same for
``fft_spectral_mix`` in 1-D (the FNO layer: the same kernel, with the real kernels its mode
weights stand for; see the section above ``resolve_spectral``).

Design: accumulate in frequency across input channels.  A program owns (batch row b, group g,
BO output channels); for each input channel it transforms u[b, c] once, multiplies by
K[o, c] for its BO channels and adds into (BO, N1, N2) accumulators on chip, then runs one
inverse per output channel.  The alternatives:
- one fft_conv per (o, c) pair: Ci*Co forward and inverse transforms per batch row, and Ci*Co
  rows of partial results through GPU memory to be summed;
- accumulate in frequency (this): with Ci = Co = C, per batch row C/2 complex forward transforms
  (two real channels per transform, kernels_mix.py's pairing) per output block and C inverses:
  C/2 * (C / BO) + C transforms instead of 2 C^2.  The forward spectra are recomputed by every
  output block of the same row: the accumulators, 8 n bytes per output channel in fp32, have to
  stay in registers, which bounds BO (``block_channels``), and keeping the spectra instead would
  mean a pass of Ci * 8n bytes per row through GPU memory (or one program per batch row: B
  programs, too few to fill a GPU at small batch).  Per pair and output block the forward
  transform is 4 n (N1/2 + N2) multiply-adds on tensor cores and the block's channel products
  4 n BO on CUDA cores (H100: ~990 vs ~67 TFLOP/s, fp16 dots), so with MIX_TABLE's blocks the
  recomputed transforms cost about what the channel products cost.
- the channel contraction on tensor cores: per frequency it is a (B x Ci) @ (Ci x Co) matrix
  product, which needs B rows of one frequency in a program (TurboFNO's layout); the elementwise
  form here keeps one batch row per program and needs no transposes; not built.  ``roofline``
  models a call: the kernel spectrum (Co * Ci * 4n bytes in fp32: one complex n-plane per two
  channels, as much as one-sided spectra per channel) is the largest read once Ci*Co is large,
  and the CUDA-core channel products overtake the HBM time from about C = 128 at n = 1024 (the
  reason to build the tensor-core form next).

The kernel spectrum is made once per call (plan.kernel_spectrum's builder: one Triton launch on
CUDA, torch.fft otherwise), in Monarch order, paired (K[o, a] - i K[o, a+1]) and, for a
``constant_kernel``, cached under cpu_cache's sound rule (bits unchanged, or the kernel frozen;
by value only inside ``plan.cache_kernel_spectra()`` on a GPU, as every Triton spectrum).
Nothing here is measured on a GPU.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import torch
from torch import Tensor

from convfuse import config
from convfuse.backends import cpu_cache
from convfuse.backends.common import compute_dtype
from convfuse.backends.triton_monarch import plan as plan_mod
from convfuse.backends.triton_monarch.plan import (
    FACTORS, MIN_DOT, MonarchPlan, call_plan, check_dot_shape, dot_dtype_for,
)

FALLBACKS: Counter[str] = Counter()  # reason -> calls this plan refused
LAUNCHES: Counter[str] = Counter()  # plan description -> launches
MIX_WARPS = 8  # every entry of MIX_TABLE was compiled at 8 warps (twice the registers of 4 per block)
# (dot kind, n) -> (BO, num_stages or None for Triton's default, shared bytes per block): the largest
# BO (output channels a program accumulates, a power of two) that compiled for sm90 without spills
# (bench/results/triton-sm90-resources.md; fp32 dots at 2048 spill ~200 B even at BO = 1, as the
# plain fused kernel does).  The accumulators cost 2 * BO * n compute-dtype values per program:
# the budget is 8192 per plane with half dots, 1024-2048 with fp32 (tf32x3 splits every operand
# in two) or fp64.  num_stages=1 where the pipeliner's staging of the channel loop's loads took
# over 99 KB of shared memory (fp64 from 1024, fp32 at 2048) and spilled more, not less.
# Checked by tests/backends/test_triton_mix.py (compiles every entry); unmeasured on a GPU.
MIX_TABLE: dict[tuple[str, int], tuple[int, int | None, int]] = {
    ("half", 256): (32, None, 33792), ("half", 512): (16, None, 33792),
    ("half", 1024): (8, None, 36864), ("half", 2048): (4, None, 45056),
    ("fp32", 256): (8, None, 20480), ("fp32", 512): (4, None, 26624),
    ("fp32", 1024): (1, None, 53248), ("fp32", 2048): (1, 1, 32768),
    ("fp64", 256): (4, None, 34816), ("fp64", 512): (4, None, 53248),
    ("fp64", 1024): (1, 1, 32768), ("fp64", 2048): (1, 1, 49152),
}
DEFAULT_SMS = 132  # H100 SXM's multiprocessors: the grid target where no device says


def dot_kind(dot: torch.dtype) -> str:
    return {torch.float16: "half", torch.bfloat16: "half", torch.float32: "fp32", torch.float64: "fp64"}[dot]


@dataclass(frozen=True)
class MixPlan:
    plan: MonarchPlan
    m: int  # the size the kernel runs at (n, or a padded fused size for a linear call)
    half_in: bool
    half_out: bool
    bo: int  # output channels per program
    stages: int | None  # num_stages of the launch (None: Triton's default)
    col0: int = 0  # first kept spectrum column (cyclic), see spectral_columns
    cols: int = 0  # kept columns W, 0: all N2

    @property
    def width(self) -> int:
        return self.cols or self.plan.n2

    def dot_shapes(self) -> list[tuple[int, int, int]]:
        """(M, N, K) of every tl.dot the kernel runs."""
        n1, n2, w = self.plan.n1, self.plan.n2, self.width
        rin = n1 // 2 if self.half_in else n1
        rout = n1 // 2 if self.half_out else n1
        return [(n1, n2, rin), (n1, w, n2), (self.bo * n1, n2, w), (self.bo * n2, rout, n1)]


def block_channels(m: int, co: int, programs_per_block: int, dot: torch.dtype, sms: int = DEFAULT_SMS) -> int:
    """BO for a call: MIX_TABLE's, at most the group's channels (rounded up to a power of two),
    halved while twice the grid (``programs_per_block`` = batch rows * groups programs per
    output block) still fits one program per multiprocessor: a smaller block recomputes the
    forward transforms for twice as many blocks, which costs nothing on multiprocessors that
    would idle, and shortens each program by half its channel products and inverses (the
    forward part does not shrink); with the grid already filling the device it would only add
    work."""
    bo = min(MIX_TABLE[(dot_kind(dot), m)][0], 1 << max(0, (co - 1).bit_length()))
    while bo > 1 and 2 * programs_per_block * -(-co // bo) <= sms:
        bo //= 2
    return bo


def _sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 1  # the interpreter runs programs one after another: nothing to fill
    return torch.cuda.get_device_properties(device).multi_processor_count


def _runs_here(u: Tensor) -> str | None:
    if u.device.type == "cuda":
        return None
    if u.device.type == "cpu" and config.triton_interpret:
        return None
    return f"the Triton mix plan runs on CUDA tensors (or CPU under TRITON_INTERPRET=1), got {u.device}"


def resolve_mix(u: Tensor, w: Tensor, bias: Tensor | None, n, start, length, conj: bool, groups: int,
                out_dtype: torch.dtype | None) -> MixPlan | str:
    """The plan a call runs with, or why none (arguments as ``fft_conv_mix``'s, valid ones)."""
    if len(n) != 1:
        return f"{len(n)}-D mixing convolution: the Triton plan is 1-D only"
    why = _runs_here(u)
    if why:
        return why
    if any(t is not None and t.device != u.device for t in (w, bias)):
        return "operands on different devices"
    n, start, length = int(n[0]), int(start[0]), int(length[0])
    Lu, Lk, ci = u.shape[-1], w.shape[-1], w.shape[1]
    if min(Lu, Lk, ci, length, u.numel(), w.shape[0]) == 0:
        return "an empty operand (the result is the bias alone)"
    dtype = compute_dtype(u, w, bias)
    dot = dot_dtype_for(dtype, u.dtype, out_dtype or dtype)
    if dot == torch.bfloat16 and u.device.type == "cpu":
        dot = torch.float32  # the interpreter's bf16 tl.dot is wrong
    cp = call_plan(n, min(Lu, n), min(Lk, n), start, length, conj, dtype, dot, u.device)
    if isinstance(cp, str):
        return cp
    if not isinstance(cp.plan, MonarchPlan):
        return f"n={cp.m} needs the outer passes; the fused mix kernel covers n <= 2048"
    return _block_plan(cp.plan, cp.m, cp.half_in, cp.half_out, w.shape[0] // groups, math.prod(u.shape[:-2]) * groups,
                       u.device)


def _block_plan(pl: MonarchPlan, m: int, half_in: bool, half_out: bool, co: int, programs_per_block: int,
                device: torch.device, col0: int = 0, cols: int = 0) -> MixPlan | str:
    # MIX_TABLE's blocks were compiled with all columns; fewer columns only lower the pressure
    bo = block_channels(m, co, programs_per_block, pl.dot_dtype, _sms(device))
    _, stages, smem = MIX_TABLE[(dot_kind(pl.dot_dtype), m)]
    if smem > plan_mod.device_smem(device):
        return (f"n={m}: the mix kernel needs ~{smem // 1024} KB of shared memory, "
                f"device has {plan_mod.device_smem(device) // 1024} KB")
    mp = MixPlan(pl, m, half_in, half_out, bo, stages, col0, cols)
    for shape in mp.dot_shapes():
        check_dot_shape(*shape)
    return mp


def explain_mix(u, w, bias, n, start, length, conj, groups, out_dtype) -> str:
    r = resolve_mix(u, w, bias, n, start, length, conj, groups, out_dtype)
    if isinstance(r, str):
        return f"no Triton mix plan: {r}"
    skips = [s for s, on in (("causal input", r.half_in), ("causal output", r.half_out)) if on]
    return (f"triton monarch mix n={r.m} = {r.plan.n1}x{r.plan.n2}"
            + (f" (padded from {n[0]})" if r.m != n[0] else "")
            + f", {r.bo} output channels per program, dots in {str(r.plan.dot_dtype).removeprefix('torch.')}"
            + (f", skips {' and '.join(skips)}" if skips else ""))


def mix_spectrum(w: Tensor, n: int, m: int, conj: bool, total: float, compute: torch.dtype,
                 radices: tuple[int, int], groups: int, bo: int, constant_kernel: bool = False) -> Tensor:
    """(G*NOB, P, 2, BO, N1, N2), P = ceil(Ci/2), NOB = ceil(Co/BO): Kp[o, p] = K[o, 2p] - i K[o, 2p+1]
    in Monarch order, K the scaled (conjugated for a correlation) spectrum of w at size m, laid
    out so each program's (BO, N1, N2) tile per pair is contiguous; an odd Ci's last pair is
    K[o, Ci-1], channels past Co (a partial last block) are zero."""
    def build() -> Tensor:
        if w.is_cuda:
            spec = plan_mod._kernel_spectrum(w, n, m, conj, total, compute, radices, 0, 0, 0)
        else:  # the interpreter: torch.fft is faster than an interpreted launch per row
            spec = plan_mod.torch_kernel_spectrum(w, n, m, conj, total, compute, radices)
        return paired_layout(spec, groups, bo)

    variant = ("monarch", "mix", n, m, conj, total, compute, tuple(radices), groups, bo)
    return _cached(w, variant, build, constant_kernel)


def _cached(k: Tensor, variant: tuple, build, constant: bool) -> Tensor:
    # variant[0] == "monarch": plan.cache_kernel_spectra() discards these with the other Triton spectra
    if not constant or (k.is_cuda and torch.cuda.is_current_stream_capturing()):
        return build()
    spec = cpu_cache.lookup(k, variant, build, by_value=plan_mod.SPECTRUM_CACHE or not k.is_cuda)
    return spec if spec is not None else build()


def paired_layout(spec: Tensor, groups: int, bo: int) -> Tensor:
    """(G*Co, Ci, 2, N1, W) real/imag planes of Hermitian spectra (W kept columns) -> mix_spectrum's layout."""
    if spec.shape[1] % 2:
        spec = torch.cat([spec, spec.new_zeros(spec[:, :1].shape)], 1)  # (G*Co, 2P, 2, N1, W)
    a, b = spec[:, 0::2], spec[:, 1::2]
    kp = torch.stack([a[:, :, 0] + b[:, :, 1], a[:, :, 1] - b[:, :, 0]], 2)  # (G*Co, P, 2, N1, W)
    co = kp.shape[0] // groups
    nob = -(-co // bo)
    kp = kp.unflatten(0, (groups, co))
    if nob * bo != co:
        kp = torch.cat([kp, kp.new_zeros((groups, nob * bo - co, *kp.shape[2:]))], 1)
    # (G, NOB, BO, P, 2, N1, W) -> (G, NOB, P, 2, BO, N1, W)
    return kp.unflatten(1, (nob, bo)).permute(0, 1, 3, 4, 2, 5, 6).reshape(
        groups * nob, *kp.shape[2:4], bo, *spec.shape[-2:]).contiguous()


def run_conv_mix(u: Tensor, w: Tensor, bias: Tensor | None, n, start, length, scale: float, n_power: float,
                 conj: bool, groups: int, out_dtype: torch.dtype | None,
                 constant_kernel: bool = False) -> Tensor | str:
    """``fft_conv_mix`` by the Triton plan, or why it does not apply (arguments are checked here,
    as the operator checks them; the launch runs on u's own GPU with autocast off)."""
    from convfuse.ops_mix import check

    check(u, w, bias, n, start, length, groups, out_dtype)
    r = resolve_mix(u, w, bias, n, start, length, conj, groups, out_dtype)
    if isinstance(r, str):
        FALLBACKS[r] += 1
        return r
    return _oom_guard(r, u, lambda: _launch(r, u, w, bias, int(n[0]), int(start[0]), int(length[0]), scale, n_power,
                                            conj, groups, out_dtype, constant_kernel))


def _launch(r: MixPlan, u: Tensor, w: Tensor, bias: Tensor | None, n: int, start: int, length: int,
            scale: float, n_power: float, conj: bool, groups: int, out_dtype: torch.dtype | None,
            constant_kernel: bool) -> Tensor:
    pl = r.plan
    total = scale * float(n) ** n_power
    spec = mix_spectrum(w, n, r.m, conj, total, pl.compute_dtype, (pl.n1, pl.n2), groups, r.bo, constant_kernel)
    return _run_kernel(r, u, spec, bias, w.shape[1], w.shape[0] // groups, groups, n, start, length, out_dtype)


def _run_kernel(r: MixPlan, u: Tensor, spec: Tensor, bias: Tensor | None, ci: int, co: int, G: int, n: int,
                start: int, length: int, out_dtype: torch.dtype | None) -> Tensor:
    pl = r.plan
    dtype = pl.compute_dtype
    out = torch.empty((*u.shape[:-2], G * co, length), dtype=out_dtype or dtype, device=u.device)
    if out.numel() == 0:
        return out
    u3 = u.reshape(-1, u.shape[-2], u.shape[-1])  # (Bf, G*Ci, Lu), a view where strides allow
    lu = min(u3.shape[-1], n)
    if u3.stride(-1) * max(lu, 1) >= 2**31:
        u3 = u3.contiguous()  # the kernel indexes samples in int32
    b32 = bias.to(dtype).contiguous() if bias is not None else spec  # any pointer when no bias
    nob = -(-co // r.bo)
    LAUNCHES[f"n={r.m} {pl.n1}x{pl.n2} BO={r.bo} {str(pl.dot_dtype).removeprefix('torch.')}"] += 1
    from convfuse.backends.triton_monarch import kernels_mix

    kernel = kernels_mix.MIX_CONV[u.device.type == "cpu"]
    kernel[(u3.shape[0], G * nob)](
        u3, u3.stride(0), u3.stride(1), u3.stride(2), spec, b32, out, G * co * length,
        pl.f1, pl.f2, pl.tw, ci, co, spec.shape[1], nob, lu, start, length, r.col0, 0,
        N1=pl.n1, N2=pl.n2, W=r.width, BO=r.bo, HALF_IN=r.half_in, HALF_OUT=r.half_out, HAS_BIAS=bias is not None,
        PREC=pl.input_precision, num_warps=MIX_WARPS, **({"num_stages": r.stages} if r.stages else {}))
    return out


def _oom_guard(r: MixPlan, u: Tensor, run):
    from convfuse.ops import exact_precision, on_device

    try:
        with on_device(u), exact_precision(u):
            return run()
    except Exception as e:  # noqa: BLE001  (only the compiler's resource check is caught)
        from triton.runtime.errors import OutOfResources

        if not isinstance(e, OutOfResources):
            raise
        why = f"n={r.m}, {r.bo} channels per program: the compiled kernel does not fit this device ({e})"
        FALLBACKS[why] += 1
        return why


# ---- fft_spectral_mix (the FNO layer) in 1-D: the same kernel with another spectrum.
# Its result is irfft(Y, n) with Y[o, f] = sum_c W[c, o, f] X_c[f] on the kept modes and 0 elsewhere.
# irfft reads only the real part of the DC and Nyquist bins and stands for the Hermitian
# extension, so y is the cyclic convolution of u with the real kernels whose spectra are
# K[o, c, f] = W[c, o, f] on the kept modes 0 < f < n/2, conj(W[c, o, n - f]) on their mirror
# images, Re W at f = 0 and n/2, and 0 elsewhere: fft_conv_mix at n with start 0, length n.


def resolve_spectral(u: Tensor, weights: list[Tensor], lows: list[int], n,
                     out_dtype: torch.dtype | None) -> MixPlan | str:
    """The plan an ``fft_spectral_mix`` call runs with (arguments already checked), or why none."""
    if len(n) != 1:
        return f"{len(n)}-D spectral layer: the Triton plan is 1-D only"
    why = _runs_here(u)
    if why:
        return why
    n = int(n[0])
    if n not in FACTORS:
        return (f"n={n}: the spectral layer runs at n itself (its modes are defined there), and the mix "
                f"kernel has fused sizes {', '.join(map(str, FACTORS))} only")
    ci, co = u.shape[-2], weights[0].shape[1]
    if min(u.shape[-1], ci, co, u.numel()) == 0:
        return "an empty operand (the result is zero)"
    dtype = torch.float64 if u.dtype == torch.float64 else torch.float32  # ops_spectral.compute_dtypes
    dot = dot_dtype_for(dtype, u.dtype, out_dtype or dtype)
    if dot == torch.bfloat16 and u.device.type == "cpu":
        dot = torch.float32  # the interpreter's bf16 tl.dot is wrong
    pl = plan_mod.plan_for(n, dtype, u.device, dot)
    if isinstance(pl, str):
        return pl
    half_in = pl.can_skip_half and min(u.shape[-1], n) <= n // 2
    col0, cols = spectral_columns(n, pl.n1, pl.n2, [(lo, w.shape[-1]) for lo, w in zip(lows, weights)])
    return _block_plan(pl, n, half_in, False, co, math.prod(u.shape[:-2]), u.device, col0, cols)


def spectral_columns(n: int, n1: int, n2: int, blocks: list[tuple[int, int]]) -> tuple[int, int]:
    """(col0, W): the shortest cyclic run of Monarch columns (column c holds frequencies
    [c N1, (c+1) N1)) that holds every kept mode and its mirror image n - f, W rounded up to a
    power of two >= 16 (tl.dot); (0, 0) when that is all N2 columns."""
    used = [False] * n2
    for lo, size in blocks:
        for f in range(lo, lo + size):
            used[f // n1] = used[((n - f) % n) // n1] = True
    if all(used):
        return 0, 0
    # the longest cyclic run of unused columns; the kept run starts where it ends
    best, best_end, run = 0, 0, 0
    for c in range(2 * n2):
        run = run + 1 if not used[c % n2] else 0
        if run > best:
            best, best_end = min(run, n2), c % n2
    width = max(MIN_DOT, 1 << max(0, (n2 - best - 1).bit_length()))
    if width >= n2:
        return 0, 0
    return (best_end + 1) % n2, width


def spectral_spectrum(weights: list[Tensor], lows: list[int], n: int, total: float, compute: torch.dtype,
                      radices: tuple[int, int], bo: int, constant_weights: bool = False, col0: int = 0,
                      cols: int = 0) -> Tensor:
    """mix_spectrum's layout for the real kernels an FNO layer's mode weights stand for (above),
    for the ``cols`` Monarch columns from ``col0`` only (0: all); cached for constant weights
    when there is one block (the cache keys one tensor)."""
    def build() -> Tensor:
        cplx = torch.complex128 if compute == torch.float64 else torch.complex64
        ci, co = weights[0].shape[:2]
        K = torch.zeros((co, ci, n), dtype=cplx, device=weights[0].device)
        for w, lo in zip(weights, lows):
            K[:, :, lo:lo + w.shape[-1]] = w.to(cplx).permute(1, 0, 2)
        h = n // 2  # n is even (a fused size)
        K[..., 0] = K[..., 0].real.to(cplx)
        K[..., h] = K[..., h].real.to(cplx)
        K[..., h + 1:] = K[..., 1:h].flip(-1).conj()
        K = (K * total).reshape(co, ci, radices[1], radices[0]).transpose(-1, -2)  # Monarch order [k1, k2]
        if cols:
            K = K.index_select(-1, (col0 + torch.arange(cols, device=K.device)) % radices[1])
        return paired_layout(torch.stack([K.real, K.imag], 2), 1, bo)

    variant = ("monarch", "spectral", tuple(lows), n, total, compute, tuple(radices), bo, col0, cols)
    return _cached(weights[0], variant, build, constant_weights and len(weights) == 1)


def run_spectral_mix(u: Tensor, weights: list[Tensor], lows: list[int], n, scale: float, n_power: float,
                     out_dtype: torch.dtype | None, constant_weights: bool = False) -> Tensor | str:
    """``fft_spectral_mix`` by the Triton plan, or why it does not apply (checked as run_conv_mix)."""
    from convfuse.ops_spectral import check

    check(u, weights, lows, n, out_dtype)
    r = resolve_spectral(u, weights, lows, n, out_dtype)
    if isinstance(r, str):
        FALLBACKS[r] += 1
        return r
    m = int(n[0])
    total = scale * float(m) ** n_power
    pl = r.plan

    def run() -> Tensor:
        spec = spectral_spectrum(weights, list(lows), m, total, pl.compute_dtype, (pl.n1, pl.n2), r.bo,
                                 constant_weights, r.col0, r.cols)
        return _run_kernel(r, u, spec, None, u.shape[-2], weights[0].shape[1], 1, m, 0, m, out_dtype)

    return _oom_guard(r, u, run)


def roofline(B: int, ci: int, co: int, n: int, L: int, in_bytes: int = 2, out_bytes: int = 2,
             bo: int | None = None, spec_bytes: int = 4) -> dict[str, float]:
    """Traffic and dot work of one call (a model, not a measurement).

    HBM: u read once per output block (later blocks mostly hit L2), w's paired spectrum
    (Co * Ci/2 * 2 * n * spec_bytes) once per batch row that misses L2 (counted once: it is
    shared by all rows), y written once.  Dot multiply-adds per batch row: forward
    4 n (RIN + N2) per pair per output block, inverse 4 n N2 + 2 n ROUT per output channel
    (RIN, ROUT = N1/2 for a causal call, 2 L <= n); the channel product 4 n real multiply-adds
    per (o, pair) on CUDA cores.  fp32 operands at tf32x3 run three dots per dot."""
    fac = plan_mod.FACTORS.get(n)
    if fac is None:
        raise ValueError(f"n={n} is not a fused size")
    n1, n2 = fac
    rows = n1 // 2 if 2 * L <= n and n1 >= 32 else n1
    bo = bo or block_channels(n, co, B, torch.float16)
    pairs, blocks = -(-ci // 2), -(-co // bo)
    hbm = B * ci * L * in_bytes + co * pairs * 2 * n * spec_bytes + B * co * L * out_bytes
    fwd = B * blocks * pairs * 4 * n * (rows + n2)
    inv = B * co * (4 * n * n2 + 2 * n * rows)
    cmac = B * co * pairs * 4 * n
    return dict(hbm_bytes_per_output=hbm / (B * co * L), dot_flops=2 * (fwd + inv), cuda_core_flops=2 * cmac,
                dot_flops_per_output=2 * (fwd + inv) / (B * co * L))
