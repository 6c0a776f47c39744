"""The measured cost model that picks the CPU algorithm per shape.

Predicted time per row (seconds), from measurements on the 2-core AMD EPYC (1 MiB
L2/core, AVX-512, MKL FFT) this project runs on, both cores, cache-resident tiles
(``python bench/cpu.py --calibrate`` reprints the measurements):

  fft     fft_unit(n)                                   one FFT pair per row
  ols     blocks * (A_OLS/A_FFT * fft_unit(N) + C_BLOCK)  blocks = ceil(out / (N - K + 1))
  direct  (C_DIRECT + A_DIRECT * K) * out                out = nonzero output samples
  fft_unit(n) = A_FFT * n log2 n, times LARGE_FFT_PENALTY when a row's spectrum leaves L2

Measured (us per row, causal n = 2L, 512 rows, 2025-11-25 calibration, shared machine):
  L=1024:  K=4 fft 11.4 direct 5.4 ols 6.7 | K=16 fft 16.3 direct 4.2 ols 4.0 | K=64 fft 7.8 direct 7.6 ols 3.9
  L=16384: K=16 fft 157 direct 55 ols 63 | K=64 fft 141 direct 75 ols 66 | K=256 fft 139 direct 160 ols 72
           K=1024 fft 139 ols 85 | K=2048 fft 132 ols 90 | K=4096 fft 131 ols 109
  fft alone, us per row at n = 2^7..2^18: 0.39 2.4 2.4 4.1 9.0 21 49 99 219 507 1481 3466,
  i.e. 0.40-0.46 ns per n log2 n up to n = 65536 and 0.67-0.73 above (rows no longer fit L2).
  direct: ~3 ns per output sample (padding, oneDNN depthwise setup) + 0.027 ns per multiply-add.
  ols: ~1.1x the FFT's cost per N log2 N (overlapping frames are copied, K - 1 samples discarded),
  8-point blocks cost far more than their flops (6.7 us at K=4), hence MIN_OLS_N.
Crossovers these constants give (``bench/cpu.py --calibrate`` prints them), causal n = 2L:
  L=1024:   direct for K < 128, overlap-save / direct within 10% of each other up to K = 384, fft above;
  L=4096:   direct for 6 <= K < 96, overlap-save for K < 1536 (~L/3), fft above;
  L=16384:  direct for 6 <= K < 96, overlap-save for K < 6144 (~L/3), fft above;
  L=131072: direct for 6 <= K < 96, overlap-save for K < 49152 (~L/3), fft above.
  (K < 6: direct and overlap-save with N=64 tie in the model, either is picked.)
  Circular or wrapping windows (not ``is_linear``): always fft.
"""

from __future__ import annotations

import math

from convfuse.backends.cpu_algos import Plan
from convfuse.spec import is_linear

A_FFT = 0.40e-9  # s per n*log2(n): rfft + multiply + irfft + epilogue, per row
LARGE_FFT = 65536  # above this n a row's complex spectrum (>256 KiB) and buffers leave L2
LARGE_FFT_PENALTY = 1.6
A_OLS = 0.46e-9  # s per N*log2(N) per block
C_BLOCK = 10e-9  # s per overlap-save block (frame copy, irfft slice)
MIN_OLS_N = 64
C_DIRECT = 3.0e-9  # s per output sample
A_DIRECT = 0.027e-9  # s per multiply-add

# Overlap-save block sizes tried: powers of two from max(2K, MIN_OLS_N), at most n / 2
# (at N >= n one FFT per row is at least as cheap) and at most 64 * 2K.
_MAX_OLS_FACTOR = 64


def out_samples(Lu: int, K: int, length: int) -> int:
    """Samples of a linear result that can be nonzero in a window of ``length``."""
    return max(0, min(length, Lu + K - 1))


def fft_cost(n: int) -> float:
    return A_FFT * n * math.log2(max(n, 2)) * (LARGE_FFT_PENALTY if n > LARGE_FFT else 1.0)


def direct_cost(K: int, out: int) -> float:
    return (C_DIRECT + A_DIRECT * K) * out


def ols_cost(N: int, K: int, out: int) -> float:
    blocks = -(-out // (N - K + 1))
    return blocks * (A_OLS / A_FFT * fft_cost(N) + C_BLOCK)


def best_ols(n: int, K: int, out: int) -> tuple[float, int]:
    best = (math.inf, 0)
    N = max(MIN_OLS_N, 1 << max(1, (2 * K - 1).bit_length()))  # smallest power of two >= 2K
    while N <= n // 2 and N <= _MAX_OLS_FACTOR * 2 * K:
        best = min(best, (ols_cost(N, K, out), N))
        N *= 2
    return best


def choose_plan(
    n: int, Lu: int, Lk: int, start: int, length: int, conj: bool, scale: float, force: str | None = None,
    bins: int = 0,
) -> Plan:
    """The cheapest algorithm for this shape; ``force`` picks one (tests, benchmarks).  A sparse
    kernel spectrum (``bins`` < n // 2 + 1) makes the kernel dense in time: one FFT per row."""
    Lu, K = min(Lu, n), min(Lk, n)
    base = dict(n=n, Lu=Lu, K=K, start=start, length=length, conj=conj, scale=scale)
    if 0 < bins < n // 2 + 1:
        return Plan("fft", bins=bins, **base)
    linear = K >= 1 and is_linear(n, Lu, K, start, length)
    if not linear or force == "fft":
        return Plan("fft", **base)
    out = out_samples(Lu, K, length)
    cost_ols, N = best_ols(n, K, max(out, 1))
    candidates = {"fft": fft_cost(n), "direct": direct_cost(K, out)}
    if N:
        candidates["ols"] = cost_ols
    if force:
        if force == "ols" and not N:
            N = 1 << max(1, (2 * K - 1).bit_length())
        algo = force
    else:
        algo = min(candidates, key=candidates.get)
    if algo == "ols":
        return Plan("ols", N=N, block=N - K + 1, **base)
    return Plan(algo, **base)


def describe(plan: Plan) -> str:
    if plan.algo == "fft":
        return f"cpu-fft(n={plan.n}, {plan.bins} bins)" if plan.bins else f"cpu-fft(n={plan.n})"
    if plan.algo == "direct":
        return f"cpu-direct(K={plan.K})"
    return f"cpu-overlap-save(N={plan.N}, block={plan.block}, K={plan.K})"
