"""The operator's fixed cost per call: tiny shapes, eager's FFT program vs torch.ops.convfuse.fft_conv.

    python bench/fixed_cost.py               # both thread counts, wall and thread time
    python bench/fixed_cost.py --threads 1   # one intra-op thread only

torch.utils.benchmark (Timer.blocked_autorange), interleaved: each round times every variant
once per shape; the figure is the best round's median (a shared machine: the best round is the
least disturbed).  Thread time (``time.thread_time``, this thread's CPU) is given beside wall
time because on a loaded 2-core machine wall time at microsecond scale mostly measures waiting
for a core; with one intra-op thread the thread time is the call's own work.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from torch.utils.benchmark import Timer

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import convfuse  # noqa: E402,F401

SHAPES = [(1, 1, 16), (1, 8, 16), (1, 8, 256), (1, 8, 1024), (4, 8, 256)]


def eager(u, k, D):
    L = u.shape[-1]
    n = 2 * L
    k_f = torch.fft.rfft(k, n=n) / n
    u_f = torch.fft.rfft(u, n=n)
    y = torch.fft.irfft(u_f * k_f, n=n, norm="forward")[..., :L]
    return y + u * D


def fused(u, k, D):
    L = u.shape[-1]
    return torch.ops.convfuse.fft_conv(u, k, D, None, None, 2 * L, 0, L, 1.0, 0.0, False, u.dtype, "cpu")


def measure(threads: int, rounds: int, min_run_time: float) -> list[dict]:
    torch.set_num_threads(threads)
    rows = []
    for B, H, L in SHAPES:
        g = torch.Generator().manual_seed(0)
        u, k, D = torch.randn(B, H, L, generator=g), torch.randn(H, L, generator=g), torch.randn(H, 1, generator=g)
        with torch.no_grad():
            torch.testing.assert_close(fused(u, k, D), eager(u, k, D), rtol=1e-4, atol=1e-4)
        best: dict[str, float] = {}
        for _ in range(rounds):
            for name, fn in (("eager", eager), ("convfuse", fused)):
                for clock, timer in (("wall", time.perf_counter), ("thread", time.thread_time)):
                    t = Timer("with torch.no_grad(): fn(u, k, D)", globals=dict(torch=torch, fn=fn, u=u, k=k, D=D),
                              timer=timer, num_threads=threads).blocked_autorange(min_run_time=min_run_time)
                    key = f"{name}_{clock}_us"
                    best[key] = min(best.get(key, float("inf")), t.median * 1e6)
        rows.append({"B": B, "H": H, "L": L, "threads": threads, **best})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--min-run-time", type=float, default=0.3)
    args = ap.parse_args(argv)
    print(f"load average at start: {os.getloadavg()}; torch {torch.__version__}")
    print("threads  B, H, L      eager wall/thread us   convfuse wall/thread us   ratio (thread)")
    for threads in args.threads:
        for r in measure(threads, args.rounds, args.min_run_time):
            print(f"{r['threads']:>7}  {r['B']}, {r['H']}, {r['L']:<6} {r['eager_wall_us']:9.1f} / {r['eager_thread_us']:7.1f}"
                  f"      {r['convfuse_wall_us']:9.1f} / {r['convfuse_thread_us']:7.1f}"
                  f"      {r['eager_thread_us'] / r['convfuse_thread_us']:.2f}x")
    print(f"load average at end: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
