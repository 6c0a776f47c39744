"""The three CPU algorithms, each on one cache-resident tile of rows.

Tiles are (O, Hh, X): O rows share each of Hh kernel rows.  Every function returns a
fresh tensor in the compute dtype that the caller may modify in place.

- ``fft``: one length-n transform per row, the operator's own cyclic definition (at a
  cheaper size with the same window when the call is linear: ``cpu_cost.fft_size``);
  valid for every call (wrap-around windows, circular convolutions, truncation), and
  the only one for a sparse kernel spectrum (only its kept bins are multiplied).
- ``direct``: sliding dot products, for short kernels: in C++ (convfuse/csrc/direct.h, one
  vectorized pass per tap, the zero padding implicit) where the native library is loaded,
  else depthwise ``conv1d`` on a padded copy.
- ``ols``: overlap-save with a block FFT of size N near 2K, for long rows and
  shorter kernels.
The last two compute the linear convolution and are used only when
``convfuse.spec.is_linear`` holds, where the cyclic result is the linear one
placed at its indices mod n (no two samples collide because n >= Lu + K - 1).

Both linear algorithms are written as one primitive, ``z[m] = sum_i x[m + i] w[i]``
for m in [a, b) with x zero outside [0, Lx) (a cross-correlation):
- convolution  c[q] = sum_i x[q - i] k[i]  = z[q - K + 1] with w = flip(k);
- correlation  c[q] = sum_i x[q + i] k[i]  = z[q] for q < n - K + 1, and for
  q >= n - K + 1 the negative lags wrap: c[q] = z[q - n]; with w = k.
The scale and the conjugate are folded into the prepared kernel ("prep") once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from convfuse import config
from convfuse.backends.common import window
from convfuse.spec import linear_segments


# The library transforms.  torch.fft on CPU creates and commits an MKL descriptor on every call,
# O(n) twiddles at ~20 ns a sample (1 thread): at n = 16384 a 1-row rfft + irfft took 743 us
# where the transforms themselves take ~80 us, so every tile paid the commit again.  The C++
# kernels (cpu_native, convfuse/csrc/mkl_fft.h) keep committed descriptors per thread and give
# bitwise torch.fft's results (tests/backends/test_native.py); where they are not loaded, or
# MKL's entry points are not exported, or config.native_cpu is off, torch.fft serves.
# Measured, rfft + irfft, 1 thread, torch.fft -> kept descriptors: n = 512 1 row 36 -> 14 us,
# 64 rows 72 -> 50; n = 4096 1 row 183 -> 23, 64 rows 976 -> 767; n = 16384 4 rows 931 -> 230,
# 64 rows 5450 -> 4998 (2026-12-03).
_kept: list = [None, None]  # (rfft, irfft) operators, set by cpu_native.load


def use_kept_descriptors(rfft_op, irfft_op, pruned_op=None) -> None:
    _kept[0], _kept[1] = rfft_op, irfft_op
    _pruned[0] = pruned_op


# FrequencySparse's rows on a pruned transform (convfuse/csrc/mkl_pruned.h; where it pays:
# cpu_cost.pruned_size): its operator into an output, set by cpu_native.load
_pruned: list = [None]


# The direct algorithm's sliding dot products (convfuse/csrc/direct.h), set by cpu_native.load:
# no oneDNN setup (~130 us a call) and no padded copy per tile.
_direct: list = [None]


def use_native_direct(op) -> None:
    _direct[0] = op


def native_direct() -> bool:
    """Whether "direct" plans run on the C++ sliding dot products now."""
    return _direct[0] is not None and config.native_cpu


def kept_descriptors() -> bool:
    """Whether the library transforms run on kept MKL descriptors now."""
    return _kept[0] is not None and config.native_cpu


def rfft(x: Tensor, n: int) -> Tensor:
    """torch.fft.rfft(x, n=n) along the last axis."""
    op = _kept[0]
    return op(x, n) if op is not None and config.native_cpu else torch.fft.rfft(x, n=n)


def irfft(X: Tensor, n: int) -> Tensor:
    """torch.fft.irfft(X, n=n) along the last axis."""
    op = _kept[1]
    return op(X, n) if op is not None and config.native_cpu else torch.fft.irfft(X, n=n)


# MKL (torch's CPU wheel) transforms one row of n = 16K..128K in about 1.8x the time it takes
# for two (1 thread, process CPU time, best of 5 blocked_autorange medians, 2026-12-02: rfft
# of 1 row at n = 16384 209 us, of that row beside a zero row 115 us; 32768 406 / 226; 65536
# 782 / 436; 131072 1627 / 880; irfft alike; at 8192 the pair costs more: 50 / 61).  So a lone
# row there is transformed beside a zero row (``rfft_rows`` / ``irfft_rows``).
PAIRED_LONE_ROW = (16384, 131072)


def lone_row_size(n: int) -> bool:
    """Whether a lone row of size n is transformed beside a zero row (PAIRED_LONE_ROW): only
    through torch.fft, whose commit the pair amortises (kept descriptors transform a lone row
    in a tenth of the time: 78 us at n = 16384)."""
    return PAIRED_LONE_ROW[0] <= n <= PAIRED_LONE_ROW[1] and not kept_descriptors()


def _lone_row(t: Tensor, n: int) -> bool:
    return lone_row_size(n) and t.numel() == t.shape[-1]


def rfft_rows(x: Tensor, n: int) -> Tensor:
    """torch.fft.rfft(x, n=n) along the last axis (padded or truncated to n)."""
    if not _lone_row(x, n):
        return rfft(x, n)
    width = min(n, x.shape[-1])
    pair = x.new_zeros(2, n)
    pair[0, :width] = x.reshape(-1)[:width]
    return rfft(pair, n)[:1].view(*x.shape[:-1], n // 2 + 1)


def irfft_rows(X: Tensor, n: int) -> Tensor:
    """torch.fft.irfft(X, n=n) along the last axis of a full one-sided spectrum (n // 2 + 1 bins)."""
    if not _lone_row(X, n) or X.shape[-1] != n // 2 + 1:
        return irfft(X, n)
    pair = X.new_zeros(2, n // 2 + 1)
    pair[0] = X.reshape(-1)
    return irfft(pair, n)[:1].view(*X.shape[:-1], n)


@dataclass(frozen=True)
class Plan:
    algo: str  # "fft" | "direct" | "ols"
    n: int  # the call's FFT size: its windows and correlation lags are defined at n
    Lu: int  # effective signal length, min(Lu, n)
    K: int  # effective kernel length, min(Lk, n)
    start: int
    length: int
    conj: bool
    scale: float
    N: int = 0  # ols block FFT size
    block: int = 0  # ols output samples per block, N - K + 1
    bins: int = 0  # fft: one-sided kernel bins kept (FrequencySparse); 0: all
    fft_n: int = 0  # fft: the size transformed, n or a cheaper one with the same window (cpu_cost.fft_size)
    pruned: int = 0  # fft with bins: n1, the pruned transform's row size (cpu_cost.pruned_size); 0: dense

    def variant(self, dtype: torch.dtype) -> tuple:
        """What the prepared kernel depends on besides the kernel itself (the cache key)."""
        if self.algo == "fft":
            return ("fft", self.fft_n, self.conj, self.scale, self.bins, dtype)
        if self.algo == "direct":
            return ("direct", self.K, self.conj, self.scale, dtype)
        return ("ols", self.N, self.K, self.conj, self.scale, dtype)

    def row_bytes(self, dtype: torch.dtype) -> int:
        """Bytes of complex working buffer per row, to size tiles."""
        item = 16 if dtype == torch.float64 else 8
        if self.algo == "fft":
            return (self.fft_n // 2 + 1) * item
        if self.algo == "direct":
            return (self.Lu + 2 * self.K + self.length) * item // 2
        blocks = -(-min(self.length + self.K, self.Lu + self.K) // self.block)
        return blocks * (self.N // 2 + 1) * item


def prepare(plan: Plan, k2: Tensor, dtype: torch.dtype) -> Tensor:
    """Kernel rows (h, Lk) -> the form the algorithm multiplies by, scale and conj folded in."""
    k2 = k2.to(dtype)
    if plan.algo == "fft":
        Kf = rfft_rows(k2, plan.fft_n)
        if plan.bins:
            Kf = Kf[..., : plan.bins].clone()  # the bins beyond are zero: never stored or multiplied
        if plan.conj:
            Kf = Kf.conj_physical_()  # fresh: conjugate in place, no lazy conj bit
        return Kf.mul_(plan.scale) if plan.scale != 1.0 else Kf
    w = k2[:, : plan.K]
    w = w if plan.conj else w.flip(-1)
    w = w * plan.scale if plan.scale != 1.0 else w.clone()
    if plan.algo == "direct":
        return w.unsqueeze(1)  # (h, 1, K): conv1d depthwise weight
    # z = x (correlated with) w: per block, irfft(rfft(frame) * conj(rfft(w)))
    return rfft(w, plan.N).conj_physical_()


def pruned_applies(plan: Plan, dtype: torch.dtype) -> bool:
    """Whether ``pruned_tile`` runs this plan's calls in the compute dtype: a plan the cost model
    prunes (cpu_cost.pruned_size), the native library loaded, fp32, a window inside one period."""
    return bool(plan.pruned and _pruned[0] is not None and config.native_cpu and dtype == torch.float32
                and plan.start + plan.length <= plan.fft_n)


def pruned_tile(plan: Plan, x: Tensor, prep: Tensor, out: Tensor | None = None) -> Tensor:
    """The window of x's rows (..., Lu or longer: truncated; fp32) convolved with the kept bins
    prep (C, bins) complex64, row r taking prep[r % C], on the pruned transform (only the kept
    bins are computed: convfuse/csrc/mkl_pruned.h), into ``out`` (fp32, x's rows) when given.
    For plans ``pruned_applies`` to."""
    if out is None:
        out = torch.empty((*x.shape[:-1], plan.length), dtype=x.dtype)
    _pruned[0](x[..., : plan.Lu], prep, plan.fft_n, plan.pruned, plan.start, plan.length, out)
    return out


def fft_tile(plan: Plan, padded: Tensor, prep: Tensor, spectrum: Tensor | None = None) -> Tensor:
    """padded: (O, Hh, fft_n) signal tile, zero beyond the signal (the caller's buffer, so
    the transform pads nothing); prep: prepared kernel spectra (Hh, bins) -> the window.
    ``spectrum``: with a sparse kernel (plan.bins), the caller's (O, Hh, fft_n // 2 + 1) buffer
    whose bins from plan.bins on are zero and stay so: the product of the kept bins is written
    into its head and it is inverted as is."""
    U = rfft(padded, padded.shape[-1])
    if plan.bins:
        # A short spectrum handed to irfft is zero-padded to n // 2 + 1 in a fresh tensor on
        # every call, which made the sparse path slower than the dense one (bench/cpu.py,
        # --sparse); the zero tail of a kept buffer, or zeroing U's own, costs less.
        head = U[..., : plan.bins]
        if spectrum is None:
            U[..., plan.bins :].zero_()
            spectrum = U
        torch.mul(head, prep, out=spectrum[..., : plan.bins])
        U = spectrum
    else:
        U.mul_(prep)
    c = irfft(U, plan.fft_n)
    return window(c, plan.start, plan.length)


def linear_tile(plan: Plan, x: Tensor, prep: Tensor) -> Tensor:
    """"direct" or "ols": x (O, Hh, Lu) signal tile in the compute dtype; prep: prepared kernel
    rows (Hh, ...) -> the window ("fft" runs ``fft_tile`` on a padded buffer)."""
    if x.shape[-1] > plan.n:
        x = x[..., : plan.n]  # the operator truncates signals longer than n
    parts = [_lin_segment(plan, x, prep, a, b)
             for a, b, _ in linear_segments(plan.n, plan.K, plan.start, plan.length, plan.conj)]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)


def _lin_segment(plan: Plan, x: Tensor, prep: Tensor, a: int, b: int) -> Tensor:
    """z[m] = sum_{i<K} x[m + i] w[i] for m in [a, b); computed only where it can be nonzero."""
    K, Lx = plan.K, x.shape[-1]
    lo, hi = max(a, -(K - 1)), min(b, Lx)
    if lo >= hi:
        return x.new_zeros(*x.shape[:-1], b - a)
    count = hi - lo
    if plan.algo == "direct" and x.dtype in (torch.float32, torch.float64) and native_direct():
        O, Hh = x.shape[0], x.shape[1]  # the C++ rows read x where it lies, zeros implied
        z = _direct[0](x.reshape(O * Hh, Lx), prep.reshape(Hh, K), lo, count).view(O, Hh, count)
    else:
        z = _lin_segment_torch(plan, x, prep, lo, count)
    if lo == a and hi == b:
        return z
    return F.pad(z, (lo - a, b - hi))


def _lin_segment_torch(plan: Plan, x: Tensor, prep: Tensor, lo: int, count: int) -> Tensor:
    """z[m] for m in [lo, lo + count) in torch: a zero-padded copy of the samples read, then
    depthwise conv1d ("direct") or overlap-save blocks."""
    K, Lx = plan.K, x.shape[-1]
    if plan.algo == "direct":
        need = count + K - 1
    else:
        blocks = -(-count // plan.block)
        need = (blocks - 1) * plan.block + plan.N
    # x indices [lo, lo + need), zeros outside [0, Lx)
    xs = x[..., max(lo, 0) : min(lo + need, Lx)]
    xs = F.pad(xs, (max(0, -lo), need - xs.shape[-1] - max(0, -lo)))
    if plan.algo == "direct":
        O, Hh = xs.shape[0], xs.shape[1]
        z = F.conv1d(xs, prep, groups=Hh) if O else xs.new_zeros(0, Hh, count)
    else:
        frames = xs.unfold(-1, plan.N, plan.block)  # (O, Hh, blocks, N), overlapping view
        Z = rfft(frames, plan.N)
        Z.mul_(prep.unsqueeze(-2))
        z = irfft(Z, plan.N)[..., : plan.block]
        z = z.reshape(*z.shape[:-2], -1)[..., :count]
    return z


