"""The measured cost model that picks the CPU algorithm per shape.

Predicted time per row (seconds), from measurements on the 2-core machine this project runs
on, both cores, cache-resident tiles (``python bench/cpu.py --calibrate`` reprints the
measurements).  Recalibrated 2026-12-03 on the machine as it is now (Intel Xeon, 2 MiB L2 a
core, 105 MiB L3) with the transforms on kept MKL descriptors (cpu_algos.rfft), us per row,
512 rows, causal n = 2L:
  L=1024:  K=4 fft 8.9 direct 5.7 ols 5.7 | K=16 fft 3.5 direct 5.1 ols 4.6 | K=64 fft 2.7 direct 4.6 ols 4.6
  L=16384: K=16 fft 68 direct 160 ols 79 | K=64 fft 65 direct 271 ols 86 | K=256 fft 69 direct 1075 ols 86
           K=1024 fft 81 ols 112 | K=2048 fft 70 ols 124 | K=4096 fft 96 ols 145
  i.e. fft ~0.28 ns per n log2 n, direct ~5 ns a sample + ~0.2 ns a multiply-add at long rows,
  overlap-save ~1.8x the FFT's cost per N log2 N at small blocks (K = 16-64 at L = 16384; larger
  blocks come nearer the FFT's): fft wins at nearly every shape now.
The measurements the constants had before (AMD EPYC, 1 MiB L2/core, torch.fft committing a
descriptor per call), kept for the crossovers they explain:

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
With the C++ direct rows (C_DIRECT_NATIVE, where the native library is loaded), causal n = 2L,
512 rows: direct for K < 12 at L = 256, K < 24 at L = 1024-4096, K < 32 at L >= 16384, then
overlap-save to K = 48 at L = 16384 (to 8192 at L = 131072), fft above (bench/cpu.py --calibrate).

FFT size.  A linear call computes the same window at any size n' that keeps it linear
(``same_window_at``), so "fft" runs at the cheapest such size rather than the program's n.
That matters because language-model training convolves L = seqlen - 1 (inputs are
``tokens[:, :-1]``): Hyena's n = 2L is then 8190 = 2*3^2*5*7*13, and MKL's cost per
n log2 n grows with the largest prime factor.  Measured (rfft + irfft per row, 1 thread,
cache-resident rows, 2026-12-01): n = 2046 4.6x the per-row time of 2048, 8190 1.8x of 8192,
8187 (3*2729) 8.6x, 32766 4.2x of 32768, 262142 4.0x of 262144; 7-smooth sizes
(2^a 3^b 5^c 7^d) cost 1.0-1.25x a power of two per n log2 n (SMOOTH_PENALTY), any other
size is taken to cost at least 1.8x (ROUGH_PENALTY).
"""

from __future__ import annotations

import functools
import math

import torch

from convfuse import config
from convfuse.backends.cpu_algos import Plan, kept_descriptors, native_direct
from convfuse.spec import is_linear

A_FFT = 0.28e-9  # s per n*log2(n): rfft + multiply + irfft + epilogue, per row
LARGE_FFT = 65536  # above this n a row's complex spectrum (>256 KiB) and buffers leave L2
LARGE_FFT_PENALTY = 1.6
A_OLS = 0.50e-9  # s per N*log2(N) per block
C_BLOCK = 30e-9  # s per overlap-save block (frame copy, irfft slice)
MIN_OLS_N = 64
SMOOTH_PENALTY = 1.2  # 7-smooth, not a power of two: per n log2 n, against a power of two
ROUGH_PENALTY = 1.8  # a prime factor above 7: at least this (measured 1.8x-8.6x)
C_DIRECT = 5.0e-9  # s per output sample (depthwise conv1d on a padded copy)
A_DIRECT = 0.2e-9  # s per multiply-add
# The C++ sliding dot products (convfuse/csrc/direct.h, where the native library is loaded):
# bench/cpu.py --calibrate, 2026-12-04, 512 rows, 2 threads, us per row: L=256 K=4 0.27, K=16
# 0.49, K=64 1.28; L=1024 K=4 1.04, K=8 1.35, K=16 1.86, K=32 3.07, K=64 5.55, K=128 10.3;
# L=16384 K=16 37, K=64 94, K=256 314 (the tile's copies in and out included), against the
# FFT's 1.8-2.4 us at L=1024 and 41-47 at L=16384: direct for K up to ~16.  Fitted, that is
# 0.75 ns an output sample and 0.07 ns a multiply-add; the same run measured the FFT at about
# 1/1.8 of what A_FFT predicts (L=1024: 1.8-2.5 us against 3.5; L=16384: 43-47 against 77-83),
# so the constants are scaled by 1.8 to compare with fft_cost in the model's units.
C_DIRECT_NATIVE = 1.35e-9
A_DIRECT_NATIVE = 0.126e-9

POOL_MIN_SECONDS = 0.02  # see use_pool

# Overlap-save block sizes tried: powers of two from max(2K, MIN_OLS_N), at most n / 2
# (at N >= n one FFT per row is at least as cheap) and at most 64 * 2K.
_MAX_OLS_FACTOR = 64


def out_samples(Lu: int, K: int, length: int) -> int:
    """Samples of a linear result that can be nonzero in a window of ``length``."""
    return max(0, min(length, Lu + K - 1))


def _largest_factor_above_7(n: int) -> int:
    for p in (2, 3, 5, 7):
        while n % p == 0:
            n //= p
    return n


def size_penalty(n: int) -> float:
    """MKL's cost per n log2 n at size n against a power of two."""
    if n & (n - 1) == 0:
        return 1.0
    return SMOOTH_PENALTY if _largest_factor_above_7(n) == 1 else ROUGH_PENALTY


def fft_cost(n: int) -> float:
    return A_FFT * n * math.log2(max(n, 2)) * (LARGE_FFT_PENALTY if n > LARGE_FFT else 1.0) * size_penalty(n)


def next_smooth(m: int) -> int:
    """The smallest 7-smooth integer (2^a 3^b 5^c 7^d) >= m."""
    while _largest_factor_above_7(m) != 1:
        m += 1
    return m


def same_window_at(n: int, Lu: int, K: int, start: int, length: int, conj: bool) -> int:
    """The smallest FFT size n' at which the size-n call's window holds the same samples, or 0
    when only n itself is known to (not linear, or a signal truncated at n).

    At any size m >= Lu + K - 1 the cyclic result is the linear one placed mod m:
    - convolution: sample q is lin[q] for q < Lu + K - 1 and zero up to m, so a window
      [start, start + length) reads the same samples at n and at m >= start + length;
    - correlation: z[q] (lag q) sits at q for q < m - K + 1 and negative lags at m + q, so a
      window of positive lags only (start + length <= n - K + 1) reads the same samples at
      any m >= start + length + K - 1.  A window reaching negative lags keeps n.
    """
    if Lu > n or K > n or K < 1 or not is_linear(n, Lu, K, start, length):
        return 0
    need = Lu + K - 1
    if not conj:
        return max(need, start + length)
    if start + length > n - K + 1:
        return 0
    return max(need, start + length + K - 1)


def fft_size(n: int, Lu: int, K: int, start: int, length: int, conj: bool) -> int:
    """The FFT size "fft" runs a call at: n, or a cheaper size computing the same window."""
    least = same_window_at(n, Lu, K, start, length, conj)
    if not least:
        return n
    candidates = {n, next_smooth(least), 1 << max(0, (least - 1).bit_length())}
    return min(candidates, key=lambda m: (fft_cost(m), m))


def direct_cost(K: int, out: int, native: bool = False) -> float:
    """One row of "direct": ``native``, the C++ sliding dot products (cpu_algos.native_direct)."""
    if native:
        return (C_DIRECT_NATIVE + A_DIRECT_NATIVE * K) * out
    return (C_DIRECT + A_DIRECT * K) * out


def algo_fixed_seconds(algo: str, native: bool = False) -> float:
    """An algorithm's own cost per call, whatever the rows (``native``: as direct_cost)."""
    return NATIVE_DIRECT_FIXED_SECONDS if algo == "direct" and native else ALGO_FIXED_SECONDS[algo]


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
    bins: int = 0, rows: int = 0,
) -> Plan:
    """The cheapest algorithm for this shape; ``force`` picks one (tests, benchmarks).  A sparse
    kernel spectrum (``bins`` < n // 2 + 1) makes the kernel dense in time: one FFT per row.
    ``rows`` (when known): the call's rows, so an algorithm's fixed cost per call counts
    (``algo_fixed_seconds``: conv1d's setup is ~130 us, more than a small call's transforms)."""
    return _choose_plan(n, Lu, Lk, start, length, conj, scale, force, bins, rows, native_direct())


@functools.lru_cache(maxsize=1024)
def _choose_plan(n: int, Lu: int, Lk: int, start: int, length: int, conj: bool, scale: float, force: str | None,
                 bins: int, rows: int, native: bool) -> Plan:
    base = dict(n=n, Lu=min(Lu, n), K=min(Lk, n), start=start, length=length, conj=conj, scale=scale)
    if 0 < bins < n // 2 + 1:
        return Plan("fft", bins=bins, fft_n=n, pruned=pruned_size(n, bins), **base)  # the kept bins are defined at n
    fft_n = fft_size(n, Lu, Lk, start, length, conj)  # the raw lengths: truncation keeps n
    Lu, K = base["Lu"], base["K"]
    linear = K >= 1 and is_linear(n, Lu, K, start, length)
    if not linear or force == "fft":
        return Plan("fft", fft_n=fft_n, **base)
    out = out_samples(Lu, K, length)
    cost_ols, N = best_ols(n, K, max(out, 1))
    candidates = {"fft": fft_cost(fft_n), "direct": direct_cost(K, out, native)}
    if N:
        candidates["ols"] = cost_ols
    if rows:
        candidates = {a: rows * c + algo_fixed_seconds(a, native) for a, c in candidates.items()}
    if force:
        if force == "ols" and not N:
            N = 1 << max(1, (2 * K - 1).bit_length())
        algo = force
    else:
        algo = min(candidates, key=candidates.get)
    if algo == "ols":
        return Plan("ols", N=N, block=N - K + 1, **base)
    return Plan(algo, fft_n=fft_n if algo == "fft" else 0, **base)


choose_plan.cache_clear = _choose_plan.cache_clear  # the plans are cached by the inner function


def row_seconds(plan: Plan) -> float:
    """The model's time per row of a call running ``plan`` (one thread)."""
    out = max(1, out_samples(plan.Lu, plan.K, plan.length))
    if plan.algo == "fft":
        return fft_cost(plan.fft_n)
    if plan.algo == "direct":
        return direct_cost(plan.K, out, native_direct())
    return ols_cost(plan.N, plan.K, out)


def use_pool(plan: Plan, rows: int, transforms: float = 1.0) -> bool:
    """Whether a call's tiles go to the convfuse thread pool (one intra-op thread per thread)
    rather than run on the calling thread with torch's own intra-op (OpenMP) threads.

    The pool shares tiles dynamically, so a core someone else holds slows it least, and it
    scales large transforms better (2 threads, per-thread tiles against MKL's own threading:
    1.2-1.3x vs 1.18-1.31x at n >= 32768).  But after every OpenMP op libgomp's workers spin
    for ~10 ms (measured: 9.8 ms of CPU burnt during a 50 ms sleep after one ``add_``), and
    a pool thread shares a core with that spin: a call shorter than POOL_MIN_SECONDS runs
    on the caller's OpenMP threads, which MKL uses well at these sizes (rfft + irfft of 64
    rows at n = 2048, 32 rows at n = 8192: 1.74x on 2 threads; (4, 256, 1024) after an OpenMP
    op: 5.5 ms against 8.2 ms on the pool, medians of 31).  ``transforms``: the call's
    transforms per row against a forward's (the fused backward runs about 2)."""
    return rows * row_seconds(plan) * transforms >= POOL_MIN_SECONDS


def cache_pays(plan: Plan, kernel_rows: int) -> bool:
    """Whether looking a constant kernel's prepared form up in the cache is predicted cheaper than
    preparing it again: its transform (one rfft per kernel row; overlap-save's of N samples; the
    direct algorithm's flip and copy count as nothing) against ``config.cpu_cache_min_us``.  A
    lookup finds the entry by storage and compares the kernel's bits with those it was computed
    from (cpu_cache.lookup, ~30-40 us of numpy at 8-64 KiB), and a cached call runs in Python,
    not in the C++ small-call kernels (cpu_native).  Measured 2026-12-03, 2 threads, cached
    against transformed every call: (1, 8, 256) +102 us, (4, 32, 512) +222 us, (4, 32, 1024)
    +189 us (predicted transform 7, 66, 144 us); (4, 64, 1024) -174 us, (4, 128, 1024) -1304 us
    (predicted 288, 577 us).  Recalibrated with kept descriptors (the transforms cheaper, the
    constants lower), 2026-12-03, cached against not, interleaved with eager, medians of 31:
    (4, 64, 1024) 2.86 / 1.36 ms and (4, 32, 2048) 1.81 / 1.48 (predicted 202, 220 us);
    (4, 128, 1024) 4.25 / 5.40 (404 us), (2, 64, 2048) 2.27 / 1.69 (440 us), (4, 32, 4096)
    5.01 / 4.64 (477 us), (1, 64, 8192) 5.40 / 6.06 (2055 us): the default threshold, 300 us,
    keeps the Hyena/S4D shape (4, 64, 1024) in the C++ kernels; between 400 and 500 us the
    prediction does not separate gains from losses (rows matter as much)."""
    size = plan.fft_n if plan.algo == "fft" else plan.N if plan.algo == "ols" else 0
    seconds = kernel_rows * fft_cost(size) / 2 if size else 0.0
    return seconds * 1e6 >= config.cpu_cache_min_us


# FrequencySparse on a pruned transform (convfuse/csrc/mkl_pruned.h): with n = n1 * n2 the M
# kept bins take n2 transforms of n1 >= 4M each way and two passes of M * n2 twiddle products,
# for 2 n log2(n) butterflies-worth dense.  What pays is mostly the short transforms staying in
# cache.  The operator, (2, 32) rows, L = n/2, constant kernel, 1 thread, thread time, medians
# of 9 interleaved rounds, pruned against the kept bins over a zero tail (2026-12-04), by n1:
# 512-2048: 1.07-1.30x (n = 16384..65536); 4096: 0.97-1.19x; 8192: 0.92-1.04x; 16384: 0.92x.
# At n = 4096..8192 the prototype measured 0.95-1.28x, so only from 16384.
# Each kept bin sums n2 twiddled terms in fp32 (rounding grows with n2, where the dense
# transform's grows with log n): at most 64 (prototype: 4.7e-6 relative at n2 = 16384).
PRUNED_MIN_N = 16384
PRUNED_MAX_N1 = 4096
PRUNED_MAX_N2 = 64


@functools.lru_cache(maxsize=256)
def pruned_size(n: int, bins: int) -> int:
    """n1 for the pruned transform of ``bins`` kept bins at size n (the smallest even divisor of
    n from 4 * bins and n / PRUNED_MAX_N2), or 0 where the dense transform is as fast."""
    least = max(4 * bins, -(-n // PRUNED_MAX_N2))
    if n < PRUNED_MIN_N or bins < 1 or least > PRUNED_MAX_N1:
        return 0
    return next((d for d in range(least + least % 2, min(n // 2, PRUNED_MAX_N1) + 1, 2) if n % d == 0), 0)


def pruned_work(n: int, n1: int) -> float:
    """The pruned transform's butterflies as a fraction of the dense one's, log n1 / log n (the
    twiddle passes, M * n2 complex products each way, come on top)."""
    return math.log2(n1) / math.log2(n)


def describe(plan: Plan) -> str:
    if plan.algo == "fft":
        size = f"n={plan.fft_n}" if plan.fft_n == plan.n else f"n={plan.fft_n} for {plan.n}"
        if plan.pruned:
            return (f"cpu-fft({size}, {plan.bins} bins, pruned: {plan.fft_n // plan.pruned} transforms of "
                    f"{plan.pruned} a way, {pruned_work(plan.fft_n, plan.pruned):.0%} of the dense butterflies)")
        return f"cpu-fft({size}, {plan.bins} bins)" if plan.bins else f"cpu-fft({size})"
    if plan.algo == "direct":
        return f"cpu-direct(K={plan.K})"
    return f"cpu-overlap-save(N={plan.N}, block={plan.block}, K={plan.K})"


# -- whether a rewrite pays at all (the backend's no-gain refusal) ------------------------------------
#
# At small sizes a call's fixed costs decide: eager's FFT program is 7-10 torch calls of a few
# microseconds each, the fused operator one custom-op dispatch (~15-30 us through torch's
# custom_op autograd wrapper, measured with an empty kernel) plus its plan lookup and 5-6
# library calls.  Measured (thread time, 1 intra-op thread, medians of blocked_autorange,
# load ~4.5): (1, 8, 256) kernel as input: eager 51 us, the operator ~100 us.
OP_FIXED_SECONDS = 45e-6  # the operator's dispatch, plan lookup and its own library calls
# A small straight call run by the C++ kernels (cpu_native): the same library calls without a
# Python frame.  bench/fixed_cost.py, 2026-12-03, (1, 1, 16) .. (4, 8, 256), 1 and 2 threads:
# the operator 28-91 us against eager's 37-117 us, 1.14-1.33x; eager's fixed part is modelled
# as 7 calls of EAGER_CALL_SECONDS, the operator's as ~2/3 of that.
NATIVE_OP_FIXED_SECONDS = 18e-6
EAGER_CALL_SECONDS = 4e-6  # one eager torch call at small sizes
ALGO_FIXED_SECONDS = {"fft": 0.0, "direct": 120e-6, "ols": 30e-6}  # conv1d's oneDNN setup: ~130 us a call
NATIVE_DIRECT_FIXED_SECONDS = 5e-6  # the C++ direct rows: a tile's Python around one op call
EAGER_ROW_FACTOR = 1.15  # eager's unfused passes (scale, product, slice, skip term) per row, vs a tile's
# torch.fft commits a new MKL descriptor per call: O(n) twiddles, ~20 ns a sample on one thread
# whatever the rows (rfft at 1 row / 64 rows, 2026-12-03: n = 2048 41 / 112 us, 16384 341 / 2434 us,
# 65536 1338 / 9578 us).  Eager's program pays it three times (rfft u, rfft k, irfft); convfuse
# keeps committed descriptors (cpu_algos.kept_descriptors) and pays it only where they are not
# available, then per library call as eager does.
COMMIT_SECONDS_PER_SAMPLE = 18e-9


def predicted_times(n: int, L: int, K: int, start: int, length: int, rows: int, kernel_rows: int,
                    constant: bool, epilogue_ops: int = 0, bins: int = 0) -> tuple[float, float]:
    """(eager seconds, convfuse seconds) the model predicts for one call of a static-shape site:
    ``rows`` output rows, ``kernel_rows`` distinct kernel rows (transformed every call by eager,
    and by convfuse unless ``constant``), ``epilogue_ops`` eager calls around the transforms
    (skip term, gates, casts, scales)."""
    plan = choose_plan(n, L, K, start, length, False, 1.0, None, bins, rows)
    kernel_eager = kernel_rows * fft_cost(n) / 2  # one forward transform per kernel row
    eager = ((6 + epilogue_ops) * EAGER_CALL_SECONDS + EAGER_ROW_FACTOR * rows * fft_cost(n) + kernel_eager
             + 3 * COMMIT_SECONDS_PER_SAMPLE * n)
    kernel_cf = 0.0 if constant else kernel_rows * (fft_cost(plan.fft_n) / 2 if plan.algo == "fft" else 0.0)
    fixed = NATIVE_OP_FIXED_SECONDS if runs_native(plan, rows) else OP_FIXED_SECONDS
    if not kept_descriptors() and plan.algo != "direct":
        fixed += 3 * COMMIT_SECONDS_PER_SAMPLE * (plan.fft_n if plan.algo == "fft" else plan.N)
    convfuse = fixed + algo_fixed_seconds(plan.algo, native_direct()) + rows * row_seconds(plan) + kernel_cf
    return eager, convfuse


def runs_native(plan: Plan, rows: int) -> bool:
    """Whether calls of this plan will likely run in the C++ kernels: loaded, a dense FFT plan whose
    window lies in one period and whose spectra fit the small-call path (fp32 rows; CpuCall.native
    decides exactly, per call shape)."""
    from convfuse.backends import cpu, cpu_native

    return (cpu_native.loaded() and config.native_cpu and plan.algo == "fft" and not plan.bins
            and plan.start + plan.length <= plan.fft_n and rows * plan.row_bytes(torch.float32) <= cpu.FAST_BYTES)


# fft_convnd on CPU (cpu_nd.py) against eager's rfftn / product / irfftn: bench/nd.py --quick,
# 2026-12-02, convfuse compiled vs eager, 1 and 2 threads: GFNet's (4, 32, 32, 64) filter (262K
# transformed samples) 0.87x / 0.77x, (1, 14, 14, 384) (75K) 0.87x / 0.87x, (8, 14, 14, 384)
# (602K) 1.09x / 0.94x; from 2.4M samples up 1.3-2.0x (bench/results/nd.md).  Eager's program is
# three library calls, so below about a million samples the operator's copies and fixed cost are
# not recovered: the conservative line.
MIN_ND_SAMPLES = 1 << 20
# With kept multi-axis descriptors (cpu_nd.kept_descriptors: the whole-period calls in C++, their
# items on torch's own OpenMP threads), compiled GFNet filters forced (kernel='cpu') against the
# same module under Inductor, bench/nd.py, 11 interleaved rounds, 2026-12-04: 1 thread (thread
# time) (1, 4, 4, 16) (256 samples) 1.00-1.01x, (2, 8, 8, 8) (1K) 1.00x, (1, 8, 8, 32) (2K)
# 1.06-1.09x, (2, 8, 8, 32) (4K) 1.04-1.12x, (2, 8, 8, 64) (8K) 1.08x, (1, 14, 14, 384) (75K)
# 1.36x, (4, 32, 32, 64) (262K) 1.22x; 2 threads (wall) 8K 1.91x, 16K 1.30x, 32K 1.34x, 75K
# 1.20-1.27x, 262K 1.13-1.30x, 301K 1.20x, 602K 1.54x.  The line compares with Inductor's program
# for the site, not with eager: Dynamo's per-call cost (about 40 us here) is paid whichever way the
# site is compiled, so refusing a site buys nothing once the operator beats the site's own ops.
# Before the items ran on torch's threads (C++ helper threads of our own, which waited for a core
# whenever torch's OpenMP workers spun after an op), 262K samples on 2 threads ran at 0.50-0.59x.
MIN_ND_SAMPLES_KEPT = 1 << 11


def nd_no_gain_reason(samples: int) -> str | None:
    """Why a multi-axis (fft_convnd) site stays eager code on CPU at ``samples`` transformed
    samples per call (rows x the product of the FFT sizes), or None."""
    from convfuse.backends import cpu_nd

    least = MIN_ND_SAMPLES_KEPT if cpu_nd.kept_descriptors() else MIN_ND_SAMPLES
    if samples >= least:
        return None
    return (f"no gain at this size: {samples} transformed samples per call, below the {least} from which "
            f"the multi-axis CPU path (cpu-fft-nd) beats eager's rfftn/irfftn (bench/nd.py); kernel='cpu' "
            f"rewrites it anyway")


def no_gain_reason(n: int, L: int, K: int, start: int, length: int, rows: int, kernel_rows: int,
                   constant: bool, epilogue_ops: int = 0, bins: int = 0) -> str | None:
    """The report's reason when the model predicts the fused operator is no faster than eager's
    own program for this static shape, else None."""
    eager, convfuse = predicted_times(n, L, K, start, length, rows, kernel_rows, constant, epilogue_ops, bins)
    if convfuse < eager:
        return None
    return (f"no gain at this size: the CPU cost model predicts {convfuse * 1e3:.3f} ms for the fused operator "
            f"against {eager * 1e3:.3f} ms for eager's FFT program (convfuse/backends/cpu_cost.py); "
            f"kernel='cpu' rewrites it anyway")
