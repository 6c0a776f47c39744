"""Monarch plans: which FFT size a call runs at, its factorization, and its constant matrices.

A plan for size n = N1 * N2 (radices 16, 32, and 64 for 2048) holds, as real/imaginary planes
(Triton has no complex dtype), everything the fused kernel multiplies by:

    F1[k1, j1] = exp(-2i pi j1 k1 / N1)      (2, N1, N1)   dot dtype
    F2[j2, k2] = exp(-2i pi j2 k2 / N2)      (2, N2, N2)   dot dtype
    TW[k1, j2] = exp(-2i pi j2 k1 / n)       (2, N1, N2)   compute dtype

computed in float64 and cast once.  With the signal in row-major order
x[N2*j1 + j2] = X[j1, j2], the forward transform is C = (F1 @ X) * TW @ F2 and
C[k1, k2] is the spectrum at frequency k1 + N1*k2 ("Monarch order", the
transpose of the natural (N2, N1) view).  The inverse is
X = conj(F1) @ ((C @ conj(F2)) * conj(TW)) / n, which lands back in row-major
order: no transposes or digit reversal at run time, only the kernel spectrum is
permuted, once, into Monarch order (see ``kernel_spectrum``).

GPU limits asserted here because the interpreter does not enforce them: every
tl.dot operand dimension must be >= 16, block dimensions are powers of two.

Causal skips at N1 = 16 (256 and the three-level 4096, ``stacked_skip``): the halved stages have
K (first) or M (last) = 8 < 16, so the forward kernels stack the real and imaginary planes into
that dimension (kernels_common._first_stage, _last_stage: 2 dots of 16 instead of 4 of 8).  Only
the forward kernels do this, so only callers that run them ask ``call_plan`` for it (``stacked``);
``can_skip_half`` keeps meaning "halved stages are plain dots" for the other kernels (backward, mix).

Frequency-sparse kernels (ConvParams.spectrum_bins = M): the kernel spectrum at n keeps one-sided
bins [0, M), i.e. two-sided frequencies f < M and f > n - M.  Column k2 of the Monarch order holds
frequencies [k2 * n/N2, (k2 + 1) * n/N2), so the nonzero ones form a cyclic run of columns; the
kernels compute and contract over W of the N2 columns (a power of two >= 16: ``spectrum_columns``),
the kernel spectrum is stored for those columns only, and the bins inside them beyond M are zeroed
(``kernel_spectrum``).  The factorization may change for such calls (``call_plan``): a smaller N1
means narrower columns, so fewer of them.
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from convfuse import config
from convfuse.backends import cpu_cache

if TYPE_CHECKING:
    from convfuse.backends.triton_monarch.blocks import Frames

RADICES = (16, 32, 64)
FP32_DOT_CHOICES = config.FP32_DOT_CHOICES
MIN_DOT = 16  # tl.dot needs M, N, K >= 16 on NVIDIA GPUs
# n -> (N1, N2).  N1 = 32 where possible: causal skipping halves N1 and needs N1 / 2 >= MIN_DOT.
# 2048 = 64 x 32 (a radix-64 DFT matmul): the paired-row kernel compiles for sm90 at 154 registers
# without spills in fp16/bf16 (fp32 with tf32x3 spills ~0.7 KB/thread, tf32 none); 64 x 64 for 4096
# compiled (unpaired) at 254 registers in fp16 and spilled in fp32, so 4096 goes through the outer
# pass instead.  None of this is measured on a GPU.
FACTORS: dict[int, tuple[int, int]] = {256: (16, 16), 512: (32, 16), 1024: (32, 32), 2048: (64, 32)}
FUSED_SIZES = tuple(sorted(FACTORS))
# n -> (N0, N0B, m): an outer radix-N0 pass through GPU memory around a fused size-m transform
# (kernels_outer.py), with a middle radix-N0B level when N0B > 1.  N0 = 32 where possible, for
# causal skipping; radices 64 and 128 are direct DFT matmuls looped over K chunks
# (FlashFFTConv's outer radices go to 128 as well).
OUTER: dict[int, tuple[int, int, int]] = {
    4096: (16, 1, 256), 8192: (32, 1, 256), 16384: (32, 1, 512), 32768: (32, 1, 1024), 65536: (64, 1, 1024),
    131072: (128, 1, 1024), 262144: (16, 16, 1024), 524288: (32, 16, 1024), 1 << 20: (32, 32, 1024),
    1 << 21: (32, 64, 1024), 1 << 22: (64, 64, 1024),
}
PLAN_SIZES = tuple(sorted({*FACTORS, *OUTER}))
OUTER_BJ = 32  # columns j' per program in the outer passes
OUTER_KB = 16  # K chunk of the outer DFT matmuls
# Shared memory per block, in bytes, of the largest kernel each plan launches, as the sm90 compiler
# reported it (bench/results/triton-sm90-resources.md, max over fp16/bf16/fp32 dots).  Tiles live
# in registers; shared memory only stages tl.dot operands, so every plan fits consumer GPUs
# (~99 KB).  Plans are refused where a device has less; a launch that still runs out of
# resources falls back to the reference at run time (launch.py).
SMEM_SM90: dict[int, int] = {
    256: 1024, 512: 4096, 1024: 8192, 2048: 24576, 4096: 2048, 8192: 12288, 16384: 12288, 32768: 12288,
    65536: 40960, 131072: 57344, 262144: 8192, 524288: 12288, 1 << 20: 20480, 1 << 21: 32768, 1 << 22: 40960,
}


def check_dot_shape(m: int, n: int, k: int) -> None:
    """Assert the GPU's tl.dot limits (the interpreter accepts anything)."""
    for name, v in (("M", m), ("N", n), ("K", k)):
        if v < MIN_DOT or v & (v - 1):
            raise AssertionError(f"tl.dot {name}={v}: GPUs need a power of two >= {MIN_DOT} (shape {m}x{k} @ {k}x{n})")


def stacked_skip(n1: int) -> bool:
    """Whether a causal half of N1 rows runs as planes stacked into one dot dimension: N1/2 < 16 <= N1."""
    return n1 // 2 < MIN_DOT <= n1


@dataclass(frozen=True)
class MonarchPlan:
    n: int
    n1: int
    n2: int
    compute_dtype: torch.dtype  # dtype of twiddles, spectra and every elementwise step
    dot_dtype: torch.dtype  # dtype of tl.dot operands (fp16/bf16 for half inputs: tensor cores)
    f1: Tensor  # (2, N1, N1)
    f2: Tensor  # (2, N2, N2)
    tw: Tensor  # (2, N1, N2)

    @property
    def can_skip_half(self) -> bool:
        """Causal skipping runs the first/last stage on N1/2 rows: needs N1/2 >= 16 for tl.dot."""
        return self.n1 // 2 >= MIN_DOT

    @property
    def input_precision(self) -> str:
        # fp32 operands: tf32x3 keeps ~fp32 accuracy on tensor cores (plain tf32 loses ~3 digits).
        # Compiled for sm90, tf32x3 spills ~0.8 KB/thread of stack in the 32x32 inner kernel where tf32
        # spills none and ieee (no tensor cores) spills 5 KB: convfuse.config.triton_fp32_dot
        # (CONVFUSE_TRITON_FP32_DOT) picks, checked when it is set.
        if self.dot_dtype != torch.float32:
            return "ieee"
        return config.triton_fp32_dot

    def dot_shapes(self, half_in: bool, half_out: bool, cols: int = 0) -> list[tuple[int, int, int]]:
        """(M, N, K) of every tl.dot; ``cols``: spectrum columns kept (0: all N2)."""
        rows_in = self.n1 // 2 if half_in else self.n1
        rows_out = self.n1 // 2 if half_out else self.n1
        # a half below 16 rows runs with the planes stacked in K (first stage) or M (last)
        rows_in, rows_out = (r if r >= MIN_DOT else 2 * r for r in (rows_in, rows_out))
        w = cols or self.n2
        return [(self.n1, self.n2, rows_in), (self.n1, w, self.n2), (self.n1, self.n2, w), (rows_out, self.n2, self.n1)]

    @property
    def radices(self) -> tuple[int, ...]:
        return (self.n1, self.n2)

    def smem_bytes(self) -> int:
        # fp64 tiles are twice fp32's (fp64 dots were compiled at 2x the fp32 figure)
        return SMEM_SM90[self.n] * (2 if self.compute_dtype == torch.float64 else 1)


@dataclass(frozen=True)
class OuterPlan:
    """n = N0 * m: outer radix-N0 DFT passes through GPU memory around the fused size-m plan."""

    n: int
    n0: int
    n0b: int  # middle radix, 1 when there is no middle level
    inner: MonarchPlan
    f0: Tensor  # (2, N0, N0) dot dtype
    f0b: Tensor | None  # (2, N0B, N0B) dot dtype
    otw: Tensor  # (2, NTW, m) compute dtype: W_(NTW*m)^(j' k0), NTW = N0B or N0 (the level above m)

    compute_dtype = property(lambda self: self.inner.compute_dtype)
    dot_dtype = property(lambda self: self.inner.dot_dtype)
    input_precision = property(lambda self: self.inner.input_precision)
    n1 = property(lambda self: self.n0)  # the axis causal skipping halves
    n2 = property(lambda self: self.n // self.n0)
    ntw = property(lambda self: self.n0b if self.n0b > 1 else self.n0)

    @property
    def radices(self) -> tuple[int, ...]:
        return (self.n0,) + ((self.n0b,) if self.n0b > 1 else ()) + (self.inner.n1, self.inner.n2)

    @property
    def can_skip_half(self) -> bool:
        return self.n0 // 2 >= MIN_DOT

    def dot_shapes(self, half_in: bool, half_out: bool, cols: int = 0) -> list[tuple[int, int, int]]:
        rows_out = self.n0 // 2 if half_out else self.n0
        mid = [(self.n0b, OUTER_BJ, OUTER_KB)] if self.n0b > 1 else []
        return [(self.n0, OUTER_BJ, OUTER_KB), *mid, *self.inner.dot_shapes(False, False, cols),
                (rows_out, OUTER_BJ, OUTER_KB)]

    def smem_bytes(self) -> int:
        return SMEM_SM90[self.n] * (2 if self.compute_dtype == torch.float64 else 1)


def _dft(rows: int, cols: int, denom: int) -> Tensor:
    # exp(-2i pi r c / denom) in float64, as (2, rows, cols) real/imag planes
    r = torch.arange(rows, dtype=torch.float64)[:, None]
    c = torch.arange(cols, dtype=torch.float64)[None, :]
    # reduce r*c mod denom exactly in integers before the angle: keeps float64 accuracy for large n
    ang = -2.0 * math.pi * torch.remainder(r * c, denom) / denom
    return torch.stack([torch.cos(ang), torch.sin(ang)])


def device_smem(device: torch.device) -> int:
    if device.type != "cuda":
        return 1 << 30  # interpreter: no limit, but sizes are still GPU-legal
    props = torch.cuda.get_device_properties(device)
    return int(getattr(props, "shared_memory_per_block_optin", 0) or props.shared_memory_per_block)


def dot_dtype_for(compute: torch.dtype, u_dtype: torch.dtype, out_dtype: torch.dtype | None) -> torch.dtype:
    """fp16/bf16 tensor-core operands when the result is that half type, else the compute dtype.

    The result is rounded to half anyway, and half operands with fp32 accumulation add an error of
    the same order (FlashFFTConv does the same); the kernel spectrum and every elementwise step stay
    in the compute dtype.  fp16's range: forward stages divide by their radix, so forward operands
    stay within max|u| and inverse ones within a partial sum of the output; a result near fp16's
    limit can still overflow (bf16 has fp32's range).  fp64 computes in fp64 throughout.
    """
    if compute == torch.float32 and out_dtype in (torch.float16, torch.bfloat16):
        return out_dtype
    return compute


@functools.lru_cache(maxsize=64)
def _plan_cached(n: int, compute: torch.dtype, dot: torch.dtype, device: torch.device,
                 factors: tuple[int, int] | None = None) -> MonarchPlan | OuterPlan | str:
    # factors: a fused size's (N1, N2) other than FACTORS[n] (frequency-sparse calls, see call_plan)
    if n not in FACTORS and n not in OUTER:
        return (
            f"n={n} has no Monarch plan (sizes: {', '.join(map(str, PLAN_SIZES))}; other sizes need a mixed "
            f"radix, not built: cuFFT/reference runs instead)"
        )
    if dot == torch.float64 and device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 0):
        return "fp64 tl.dot needs sm80 or newer"
    if n in OUTER:
        n0, n0b, m = OUTER[n]
        inner = _plan_cached(m, compute, dot, device)
        if isinstance(inner, str):
            return inner
        for r in (n0, n0b) if n0b > 1 else (n0,):
            check_dot_shape(r, OUTER_BJ, OUTER_KB)
        mat = lambda r: _dft(r, r, r).to(device=device, dtype=dot).contiguous()  # noqa: E731
        ntw = n0b if n0b > 1 else n0
        plan = OuterPlan(n, n0, n0b, inner, f0=mat(n0), f0b=mat(n0b) if n0b > 1 else None,
                         otw=_dft(ntw, m, ntw * m).to(device=device, dtype=compute).contiguous())
        if plan.smem_bytes() > device_smem(device):
            return f"n={n}: kernels need ~{plan.smem_bytes() // 1024} KB of shared memory, device has {device_smem(device) // 1024} KB"
        return plan
    n1, n2 = factors or FACTORS[n]
    check_dot_shape(n1, n2, n1)
    plan = MonarchPlan(
        n, n1, n2, compute, dot,
        f1=_dft(n1, n1, n1).to(device=device, dtype=dot).contiguous(),
        f2=_dft(n2, n2, n2).to(device=device, dtype=dot).contiguous(),
        tw=_dft(n1, n2, n).to(device=device, dtype=compute).contiguous(),
    )
    if plan.smem_bytes() > device_smem(device):
        return f"n={n}: fused kernel needs ~{plan.smem_bytes() // 1024} KB of shared memory, device has {device_smem(device) // 1024} KB"
    return plan


def plan_for(n: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
             dot_dtype: torch.dtype | None = None) -> MonarchPlan | OuterPlan | str:
    """The Monarch plan for FFT size n in compute ``dtype`` on ``device``, or why there is none."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if dtype not in (torch.float32, torch.float64):
        return f"compute dtype {dtype} unsupported (fp32 or fp64; half inputs compute in fp32)"
    return _plan_cached(n, dtype, dot_dtype or dtype, device)


@dataclass(frozen=True)
class CallPlan:
    plan: MonarchPlan | OuterPlan
    m: int  # the size the kernel runs at (== n, or a padded size when the convolution is linear)
    half_in: bool  # input rows j1 >= N1/2 are all zero: stage 1 runs on N1/2 columns of F1
    half_out: bool  # the window lies in [0, m/2): the last stage computes N1/2 rows only
    bins: int = 0  # one-sided kernel bins kept (frequency-sparse), 0: all
    col0: int = 0  # first spectrum column kept (cyclic), see spectrum_columns
    cols: int = 0  # spectrum columns computed, W; 0: all (the last radix)
    frames: Frames | None = None  # overlap-save blocks through this plan (blocks.py), else one transform

    @property
    def width(self) -> int:
        return self.cols or self.plan.radices[-1]


def spectrum_columns(n: int, ncols: int, bins: int) -> tuple[int, int]:
    """(col0, W): the cyclic run of W of the ``ncols`` last-radix columns that holds every bin a
    spectrum keeping one-sided bins [0, bins) can have nonzero (W = ncols, col0 = 0: all).

    Column c holds frequencies [c * w, (c + 1) * w), w = n / ncols.  Nonzero: f < bins, in
    columns [0, ceil(bins / w)), and f > n - bins, in the last ceil((bins - 1) / w) columns.
    W is a power of two >= 16 (tl.dot), so a run shorter than 16 still computes 16 columns.
    """
    if bins <= 0 or bins >= n // 2 + 1:
        return 0, ncols
    w = n // ncols
    low, high = -(-bins // w), -(-(bins - 1) // w)
    width = max(MIN_DOT, 1 << max(0, (low + high - 1).bit_length()))
    if width >= ncols:
        return 0, ncols
    return (ncols - high) % ncols, width


def sparse_factors(n: int) -> list[tuple[int, int]]:
    """Factorizations a frequency-sparse call may run a fused size at: FACTORS[n] first, then
    N1 = 32 and 16 (narrower columns), N2 <= 128 (F2's kept columns stay small in registers)."""
    out = [FACTORS[n]]
    for n1 in (32, 16):
        if n % n1 == 0 and MIN_DOT <= n // n1 <= 128 and (n1, n // n1) not in out:
            out.append((n1, n // n1))
    return out


def dot_work(n: int, n1: int, n2: int, half_in: bool, half_out: bool, cols: int) -> int:
    """Multiply-adds of one fused transform pair per complex row: 4 real dots per complex matmul,
    stage 1 over N1 (or N1/2) inputs, stage 2 and inverse stage 2 over W columns, inverse stage 1."""
    rin = n1 // 2 if half_in else n1
    rout = n1 // 2 if half_out else n1
    return 4 * n * (rin + 2 * (cols or n2) + rout)


def padded_size(n: int, L: int, K: int, start: int, length: int, conj_kernel: bool) -> int | None:
    """Smallest fused size m at which the size-n result equals the size-m result on the window, or None.

    Convolution: with n >= L+K-1 the cyclic result is the linear one (zeros from L+K-1 on); any
    m >= max(L+K-1, start+length) gives the same window.  Correlation: lags 0..L-1 sit at
    indices 0..L-1 but negative lags sit at n-K+1..n-1, which move with the size, so the window
    must stay below n-K+1 and m >= start+length+K-1 (and m >= L+K-1).
    """
    L, K = min(L, n), min(K, n)
    if n < L + K - 1 or start + length > n:
        return None
    need = max(L + K - 1, start + length, 1)
    if conj_kernel:
        if K > 0 and start + length > n - K + 1:
            return None
        need = max(need, start + length + K - 1)
    return next((m for m in PLAN_SIZES if m >= need), None)


def call_plan(n: int, L: int, K: int, start: int, length: int, conj_kernel: bool,
              compute: torch.dtype, dot: torch.dtype, device: torch.device, bins: int = 0,
              stacked: bool = False) -> CallPlan | str:
    """Pick the size (n itself, or a padded one), the causal skips and, for a frequency-sparse
    kernel (``bins`` one-sided bins kept), the spectrum columns for one call, or say why not.
    ``stacked``: the caller runs the forward fused kernels, which skip halves of 8 rows too
    (``stacked_skip``; the outer plans' passes do not).

    Sparse calls never pad: the bins are defined at size n, and the kernel they leave is dense
    in time, so the convolution is not linear at a larger size.
    """
    sparse = 0 < bins < n // 2 + 1
    padded = None if sparse else padded_size(n, L, K, start, length, conj_kernel)
    m = n if padded is None or (padded > n and n in PLAN_SIZES) else padded  # never grow a plan size
    plan = plan_for(m, compute, device, dot)
    if isinstance(plan, str):
        if sparse and n not in PLAN_SIZES:
            plan += f"; a sparse spectrum ({bins} of {n // 2 + 1} bins) is defined at n={n}, so it is not padded"
        elif padded is None and n not in PLAN_SIZES:
            plan += (f"; the convolution is not linear (L={L}, K={K}, window [{start}, {start + length})"
                     f"{', correlation' if conj_kernel else ''}), so it cannot be padded to a fused size")
        return plan
    Le = min(L, n)
    plain = lambda p, cond: p.can_skip_half and cond  # noqa: E731
    half = lambda p, cond: cond and (p.can_skip_half or stacked and isinstance(p, MonarchPlan)  # noqa: E731
                                     and stacked_skip(p.n1))
    if sparse and isinstance(plan, MonarchPlan):
        best = None  # (dot work, plan, col0, W): the default factorization wins ties
        for factors in sparse_factors(m):
            cand = plan if factors == (plan.n1, plan.n2) else plan_for_factors(m, factors, compute, device, dot)
            if isinstance(cand, str):
                continue
            col0, w = spectrum_columns(m, cand.n2, bins)
            # ranked by the plain-dot skips: N1 = 16 factorizations were not compiled with the stacked ones
            work = dot_work(m, cand.n1, cand.n2, plain(cand, Le <= m // 2), plain(cand, start + length <= m // 2), w)
            if best is None or work < best[0]:
                best = (work, cand, col0, w)
        _, plan, col0, w = best
    elif sparse:
        col0, w = spectrum_columns(m, plan.radices[-1], bins)
    else:
        col0, w = 0, plan.radices[-1]
    half_in, half_out = half(plan, Le <= m // 2), half(plan, start + length <= m // 2)
    for shape in plan.dot_shapes(half_in, half_out, w):
        check_dot_shape(*shape)
    return CallPlan(plan, m, half_in, half_out, bins if sparse else 0, col0, w if w < plan.radices[-1] else 0)


def plan_for_factors(n: int, factors: tuple[int, int], dtype: torch.dtype, device: torch.device,
                     dot_dtype: torch.dtype) -> MonarchPlan | str:
    """The fused plan for n with another (N1, N2) than FACTORS[n] (frequency-sparse calls)."""
    if factors == FACTORS.get(n):
        return plan_for(n, dtype, device, dot_dtype)
    return _plan_cached(n, dtype, dot_dtype, torch.device(device), factors)


# Kernel spectra go through the one spectrum cache (convfuse/backends/cpu_cache.py: a hit needs the
# kernel's bits unchanged, or the kernel frozen with convfuse.freeze).  On a GPU the comparison
# hands its answer to the host: a synchronisation per call, which drains the queue of launches,
# where the transform it saves is a few asynchronous kernels (not measured on a GPU yet).  So by
# value it is off by default (``with cache_kernel_spectra():`` turns it on); frozen kernels are
# reused without one.  Nothing is cached while a CUDA graph is being captured.
SPECTRUM_CACHE = False


@contextlib.contextmanager
def cache_kernel_spectra(enabled: bool = True):
    global SPECTRUM_CACHE
    old, SPECTRUM_CACHE = SPECTRUM_CACHE, enabled
    try:
        yield
    finally:
        SPECTRUM_CACHE = old
        if not enabled or not old:
            cpu_cache.discard(_is_monarch_variant)


def _is_monarch_variant(variant) -> bool:
    return isinstance(variant, tuple) and variant[:1] == ("monarch",)


def kernel_spectrum(k: Tensor, n: int, m: int, conj: bool, scale: float, compute: torch.dtype,
                    radices: tuple[int, ...], bins: int = 0, col0: int = 0, cols: int = 0) -> Tensor:
    """(..., 2, *radices) planes of scale * fft(k[..., :n], m) (conjugated for a correlation), Monarch order.

    Monarch order for radices (R0, R1, ...): entry [k0, k1, ...] holds frequency
    k0 + R0*(k1 + R1*(...)), i.e. the natural spectrum viewed with the radices reversed and its
    axes reversed ((N2, N1) transposed for a fused plan).  The operator's scale is folded in; the
    inverse transform's 1/m is not: the kernels divide each forward stage by its radix instead.
    A frequency-sparse kernel (``bins`` > 0, m == n) has the frequencies f with
    bins <= f <= n - bins zeroed (the one-sided mask, both sides), and only the ``cols`` last-axis
    columns from ``col0`` (cyclic) are stored: (..., 2, *radices[:-1], cols).
    Built by one Triton launch in that order where it runs (spectrum.py: the fused and
    three-level orders), else by ``torch_kernel_spectrum``; cached as above either way.
    """
    def spectrum() -> Tensor:
        return _kernel_spectrum(k, n, m, conj, scale, compute, radices, bins, col0, cols)

    if k.is_cuda and torch.cuda.is_current_stream_capturing():
        return spectrum()
    variant = ("monarch", n, m, conj, scale, compute, tuple(radices), bins, col0, cols)
    spec = cpu_cache.lookup(k, variant, spectrum, by_value=SPECTRUM_CACHE)
    return spec if spec is not None else spectrum()


def _kernel_spectrum(k: Tensor, n: int, m: int, conj: bool, scale: float, compute: torch.dtype,
                     radices: tuple[int, ...], bins: int, col0: int, cols: int) -> Tensor:
    # one Triton launch writing Monarch order directly (spectrum.py), where it runs; else torch
    from convfuse.backends.triton_monarch.spectrum import triton_spectrum

    spec = triton_spectrum(k, n, m, conj, scale, compute, radices, bins, col0, cols)
    if spec is not None:
        return spec
    return torch_kernel_spectrum(k, n, m, conj, scale, compute, radices, bins, col0, cols)


def torch_kernel_spectrum(k: Tensor, n: int, m: int, conj: bool, scale: float, compute: torch.dtype,
                          radices: tuple[int, ...], bins: int = 0, col0: int = 0, cols: int = 0) -> Tensor:
    """``kernel_spectrum`` built with torch.fft and permuting copies (no cache, no Triton)."""
    kf = torch.fft.fft(k[..., :n].to(compute), n=m)  # (..., m) complex
    if conj:
        kf = kf.conj()
    kf = kf * scale  # the inverse transform's 1/m is spent in the forward stages (kernels.py)
    if 0 < bins and bins <= m - bins:
        kf[..., bins : m - bins + 1] = 0  # real and even: the same mask as the one-sided reference
    d, nb = len(radices), kf.dim() - 1
    kf = kf.reshape(*kf.shape[:-1], *reversed(radices))
    kf = kf.permute(*range(nb), *range(nb + d - 1, nb - 1, -1))  # [k0, k1, ..] = k0 + R0*(k1 + R1*..)
    if cols and cols < radices[-1]:
        kf = kf.index_select(-1, (col0 + torch.arange(cols, device=kf.device)) % radices[-1])
    return torch.stack([kf.real, kf.imag], dim=-d - 1).contiguous()  # (..., 2, *radices[:-1], cols)
