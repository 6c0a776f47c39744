"""Is torch.fft the floor?  torch.fft (MKL on this wheel) against ducc0 per size, direction and tile.

    pip install ducc0          # not a dependency of convfuse: this benchmark's only
    python bench/fft_libs.py            # writes bench/results/fft-libs.md
    python bench/fft_libs.py --quick

Issue 15 item 6 measured ducc0 0.42 1.35-2.2x faster than torch.fft at n = 16K-128K on
cache-resident rows.  What decides whether the CPU path can use it is how the path calls the
library: the tiled path transforms a tile of rows (``cpu_exec.TILE_BYTES`` of spectrum, so a
few rows at 128K and hundreds at 1K) per call, one intra-op thread, on two Python pool threads
at once.  So per n this measures, on one thread (thread CPU time, interleaved rounds, best
median of torch.utils.benchmark's blocked_autorange):
- rfft and irfft of 1 row, 4 rows and a whole tile of rows, torch.fft vs ducc0 (r2c / c2r,
  the same normalisation, into preallocated outputs, nthreads=1);
- whether ducc0 releases the GIL: the same transforms on two Python threads at once against
  one after the other (the pool runs two).  If it does not, two pool threads serialise on it.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

import torch
from torch.utils.benchmark import Timer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from convfuse.backends.cpu_exec import TILE_BYTES  # noqa: E402

SIZES = [1024, 4096, 16384, 65536, 131072]


def _best(stmts: dict, env: dict, rounds: int) -> dict:
    best = {k: float("inf") for k in stmts}
    for r in range(rounds):
        order = list(stmts.items())
        for name, st in (order if r % 2 == 0 else order[::-1]):
            t = Timer(st, globals=env, timer=time.thread_time).blocked_autorange(min_run_time=0.1).median
            best[name] = min(best[name], t)
    return best


def per_size(n: int, rows: int, rounds: int) -> dict:
    import ducc0
    import numpy as np

    x = torch.randn(rows, n)
    X = torch.fft.rfft(x)
    env = dict(torch=torch, ducc0=ducc0, x=x, X=X, n=n, xa=x.numpy(), Xa=X.numpy(),
               outc=np.empty(tuple(X.shape), np.complex64), outr=np.empty(tuple(x.shape), np.float32))
    # the same results (checked before timing): r2c forward unnormalised, c2r with 1/n as irfft
    ducc_r = ducc0.fft.r2c(env["xa"], axes=(1,), forward=True, out=env["outc"], nthreads=1)
    ducc_i = ducc0.fft.c2r(env["Xa"], axes=(1,), lastsize=n, forward=False, inorm=2, out=env["outr"], nthreads=1)
    assert torch.allclose(torch.from_numpy(ducc_r.copy()), X, rtol=1e-4, atol=1e-3 * X.abs().max().item())
    assert torch.allclose(torch.from_numpy(ducc_i.copy()), x, atol=1e-4)
    t = _best({
        "torch rfft": "torch.fft.rfft(x)",
        "ducc0 r2c": "ducc0.fft.r2c(xa, axes=(1,), forward=True, out=outc, nthreads=1)",
        "torch irfft": "torch.fft.irfft(X, n=n)",
        "ducc0 c2r": "ducc0.fft.c2r(Xa, axes=(1,), lastsize=n, forward=False, inorm=2, out=outr, nthreads=1)",
    }, env, rounds)
    return {k: v * 1e6 / rows for k, v in t.items()}  # us per row


def releases_gil() -> tuple[bool, float, float]:
    import ducc0
    import numpy as np

    n = 32768
    x = np.random.default_rng(0).standard_normal((16, n)).astype(np.float32)
    outs = [np.empty((16, n // 2 + 1), np.complex64) for _ in range(2)]

    def work(i: int) -> None:
        for _ in range(30):
            ducc0.fft.r2c(x, axes=(1,), forward=True, out=outs[i], nthreads=1)

    t0 = time.perf_counter()
    work(0)
    work(1)
    serial = time.perf_counter() - t0
    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    both = time.perf_counter() - t0
    return both < 0.75 * serial, serial, both


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    try:
        import ducc0
    except ImportError:
        print("ducc0 is not installed: pip install ducc0 (this benchmark's only dependency)")
        return 2
    torch.set_num_threads(1)
    rounds = 3 if a.quick else 7
    load0 = os.getloadavg()
    lines = ["| n | rows per call | torch rfft us/row | ducc0 r2c us/row | torch irfft us/row | ducc0 c2r us/row "
             "| rfft: ducc0 speedup | irfft: ducc0 speedup |", "|---" * 8 + "|"]
    for n in SIZES:
        tile = max(1, TILE_BYTES // ((n // 2 + 1) * 8))
        for rows in sorted({1, 4, tile}):
            t = per_size(n, rows, rounds)
            label = f"{rows} (a tile)" if rows == tile else str(rows)
            lines.append(f"| {n} | {label} | {t['torch rfft']:.1f} | {t['ducc0 r2c']:.1f} | {t['torch irfft']:.1f} "
                         f"| {t['ducc0 c2r']:.1f} | {t['torch rfft'] / t['ducc0 r2c']:.2f}x "
                         f"| {t['torch irfft'] / t['ducc0 c2r']:.2f}x |")
            print(lines[-1], flush=True)
    gil, serial, both = releases_gil()
    load1 = os.getloadavg()
    text = "\n".join(lines) + (
        f"\n\nducc0 {ducc0.__version__} releases the GIL: {'yes' if gil else 'no'} (two Python threads, 30 r2c of "
        f"16 x 32768 each: {serial * 1e3:.0f} ms one after the other, {both * 1e3:.0f} ms at once).\n"
        f"One intra-op thread, thread CPU time, {rounds} interleaved rounds, best median of blocked_autorange; "
        f"torch {torch.__version__}; 1-min load average at start {load0[0]:.1f}, end {load1[0]:.1f}.\n")
    print(text)
    if not a.quick:
        (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
        (ROOT / "bench" / "results" / "fft-libs.md").write_text(
            "# torch.fft vs ducc0 (bench/fft_libs.py)\n\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
