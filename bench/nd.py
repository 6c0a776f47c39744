"""CPU benchmark of the 2-D operator ``convfuse.fft_convnd`` on GFNet's global filter.

    python bench/nd.py               # every shape, 15 rounds, 2 then 1 torch threads; writes bench/results/nd.{json,md}
    python bench/nd.py --quick       # three shapes, 9 rounds, nothing written
    python bench/nd.py --profile     # where the time goes (torch.profiler, 1 thread), printed

GFNet's filter (examples/models.py, ``GFNetFilter``): rfft2 over (H, W) of a channels-last
(B, H, W, C) activation, times a complex parameter spectrum (H, W/2+1, C), irfft2.  Per shape,
all under ``torch.inference_mode()``:
- eager:           the module as written
- compile:         torch.compile(module), the default backend (Inductor)
- convfuse:        torch.compile(module, backend="convfuse"): the site rewritten to one fft_convnd
                   call that takes the parameter spectrum itself (``kernel_is_spectrum``; its
                   prepared form cached while the weight's bits are unchanged), Inductor for the rest
- convfuse cpu:    the same with kernel="cpu": rewritten where the cost model refuses the site
                   (the no-gain line, cpu_cost.nd_no_gain_reason, is drawn from this column)
- convfuse ref:    the same compiled module with fft_convnd's plain torch.fft implementation
                   (``fft_convnd_reference``, ``config.nd_cpu = False``)
- kernel per call: what the rewrite emitted before: irfftn(W) built every call and handed to
                   fft_convnd as a time-domain kernel, which transforms it back
Each variant is timed with ``torch.utils.benchmark.Timer`` (``timeit`` of about 20 ms per
sample); rounds are interleaved (each times every variant once, order alternating) and medians
reported: this 2-core machine is shared, and with a busy core torch's own 2-thread FFTs slow
down many-fold (the load average is recorded with the figures).  The table with every variant
on one thread (torch.set_num_threads(1)) times the calling thread's CPU time
(``time.thread_time``: all the work runs on it), which compares the work done and is far less
sensitive to load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils import benchmark

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import convfuse  # noqa: E402,F401  registers backend="convfuse"
import convfuse.ops_nd as ops_nd  # noqa: E402
from convfuse import config  # noqa: E402
from convfuse.backends import cpu_cache  # noqa: E402
from examples.models import GFNetFilter  # noqa: E402

RESULTS = ROOT / "bench" / "results"
# (B, H, W, C): examples/models.py's test size, examples/inference.py's size, then GFNet-paper
# sizes (GFNet-XS/S: 14x14 tokens, 384 channels; hierarchical GFNet's first stage: 56x56).
SHAPES = [(2, 8, 8, 8), (4, 32, 32, 64), (1, 14, 14, 384), (8, 14, 14, 384), (32, 14, 14, 384),
          (8, 56, 56, 256), (16, 56, 56, 96)]
QUICK = [(4, 32, 32, 64), (8, 14, 14, 384), (8, 56, 56, 256)]
VARIANTS = ["eager", "compile", "convfuse", "convfuse_cpu", "convfuse_ref", "kernel_per_call"]
SAMPLE_SECONDS = 0.02


class Reference:
    """fft_convnd's plain torch.fft implementation for the duration of a call."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, *args):
        with config.patch(nd_cpu=False):
            return self.fn(*args)


def variants(shape) -> tuple[dict, tuple]:
    B, H, W, C = shape
    torch.manual_seed(0)
    model = GFNetFilter(dim=C, h=H, w=W).eval()
    x = torch.randn(B, H, W, C)

    def kernel_per_call(x):
        Wc = torch.view_as_complex(model.weight)
        k = torch.fft.irfftn(Wc, s=(H, W), dim=(0, 1)).movedim((0, 1), (-2, -1))
        u = x.movedim((1, 2), (-2, -1))
        out = torch.ops.convfuse.fft_convnd(u, k, [H, W], [0, 0], [H, W], 1.0, 0.0, False, x.dtype)
        return out.movedim((-2, -1), (1, 2))

    fused = torch.compile(model, backend="convfuse")
    forced = torch.compile(model, backend="convfuse", options={"kernel": "cpu"})
    fns = {"eager": model, "compile": torch.compile(model), "convfuse": fused, "convfuse_cpu": forced,
           "convfuse_ref": Reference(fused), "kernel_per_call": kernel_per_call}
    return fns, (x,)


def measure(shape, rounds: int, threads: int) -> dict:
    torch._dynamo.reset()
    cpu_cache.clear()
    clock = time.thread_time if threads == 1 else time.perf_counter
    with torch.inference_mode():
        fns, args = variants(shape)
        expected = fns["eager"](*args)
        compile_s, err = {}, {}
        for name, fn in fns.items():
            t0 = time.perf_counter()
            got = fn(*args)
            compile_s[name] = time.perf_counter() - t0
            err[name] = ((got - expected).abs().max() / expected.abs().max()).item()
        timers, number = {}, {}
        for name, fn in fns.items():
            fn(*args)  # warm: the spectrum cache stores on its second sighting
            timers[name] = benchmark.Timer("fn(*args)", globals={"fn": fn, "args": args}, num_threads=threads,
                                           timer=clock)
            once = timers[name].timeit(3).median
            number[name] = max(1, int(SAMPLE_SECONDS / max(once, 1e-6)))
        times = {name: [] for name in fns}
        for r in range(rounds):
            order = list(timers.items())
            for name, timer in (order if r % 2 == 0 else order[::-1]):
                times[name].append(timer.timeit(number[name]).median * 1e3)
    med = {name: statistics.median(t) for name, t in times.items()}
    best = {name: min(t) for name, t in times.items()}
    return {"shape": list(shape), "median_ms": med, "best_ms": best, "max_rel_err": err,
            "first_call_s": {k: round(v, 3) for k, v in compile_s.items()}}


def table(rows: list[dict]) -> str:
    head = ("| B, H, W, C | eager ms | compile ms | convfuse ms | convfuse cpu ms | convfuse ref ms "
            "| kernel per call ms | convfuse vs eager | vs compile | cpu vs eager | cpu vs compile | ref vs eager "
            "| per call vs eager | max rel err |")
    lines = [head, "|---" * 14 + "|"]
    for r in rows:
        m = r["median_ms"]
        lines.append(
            f"| {', '.join(map(str, r['shape']))} | {m['eager']:.3f} | {m['compile']:.3f} | {m['convfuse']:.3f} "
            f"| {m['convfuse_cpu']:.3f} | {m['convfuse_ref']:.3f} | {m['kernel_per_call']:.3f} "
            f"| {m['eager'] / m['convfuse']:.2f}x | {m['compile'] / m['convfuse']:.2f}x "
            f"| {m['eager'] / m['convfuse_cpu']:.2f}x | {m['compile'] / m['convfuse_cpu']:.2f}x "
            f"| {m['eager'] / m['convfuse_ref']:.2f}x "
            f"| {m['eager'] / m['kernel_per_call']:.2f}x | {max(r['max_rel_err'].values()):.1e} |")
    return "\n".join(lines)


def profile(shape) -> str:
    """Self CPU time per aten op, one thread (the figures do not depend on the other core)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    torch.set_num_threads(1)
    B, H, W, C = shape
    torch.manual_seed(0)
    model = GFNetFilter(dim=C, h=H, w=W).eval()
    x = torch.randn(B, H, W, C)
    u = x.movedim((1, 2), (-2, -1))
    with torch.no_grad():
        k = torch.view_as_complex(model.weight).movedim((0, 1), (-2, -1))
    args = ([H, W], [0, 0], [H, W], 1.0, 0.0, False, torch.float32)
    fns = {"eager GFNetFilter": lambda: model(x),
           "fft_convnd reference (torch.fft)": lambda: ops_nd.fft_convnd_reference(u, k, *args, True),
           "fft_convnd (cpu_nd), W given": lambda: torch.ops.convfuse.fft_convnd(u, k, *args, True, True)}
    out = [f"profile {shape}, 1 thread, 10 calls each, self CPU ms per call:"]
    with torch.inference_mode():
        for name, fn in fns.items():
            for _ in range(3):
                fn()
            with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(10):
                    fn()
            rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
            total = sum(e.self_cpu_time_total for e in rows) / 10 / 1e3
            top = ", ".join(f"{e.key} {e.self_cpu_time_total / 10 / 1e3:.2f}" for e in rows[:6]
                            if e.self_cpu_time_total / 10 / 1e3 >= 0.01)
            out.append(f"  {name}: total {total:.2f} ms: {top}")
    return "\n".join(out)


def run(shapes, rounds: int, threads: int) -> tuple[list[dict], str, dict]:
    torch.set_num_threads(threads)
    load0 = os.getloadavg()[0]
    rows = []
    for shape in shapes:
        print(f"{shape}, {threads} threads: measuring ...", file=sys.stderr, flush=True)
        rows.append(measure(shape, rounds, threads))
        print(table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    load1 = os.getloadavg()[0]
    meta = {"threads": threads, "rounds": rounds, "torch": torch.__version__, "load_avg_1min": [load0, load1],
            "cpus": os.cpu_count()}
    clock = "thread CPU time" if threads == 1 else "wall time"
    text = (f"torch threads {threads} ({meta['cpus']} cores), {rounds} interleaved rounds (order alternating), "
            f"medians of torch.utils.benchmark samples, {clock}; 1-min load average at start, end: "
            f"{load0:.1f}, {load1:.1f} (a shared machine).\n\n"
            + table(rows))
    return rows, text, meta


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="three shapes, 9 rounds, nothing written")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--threads", type=int, nargs="*", default=None, help="torch thread counts (default: 2 1)")
    p.add_argument("--profile", action="store_true", help="print where the time goes and exit")
    p.add_argument("--shapes", nargs="*", help="B,H,W,C ... (default: all)")
    args = p.parse_args(argv)
    given = [tuple(map(int, s.split(","))) for s in args.shapes] if args.shapes else None
    if args.profile:
        for shape in given or QUICK:
            print(profile(shape), flush=True)
        return 0
    shapes = given or (QUICK if args.quick else SHAPES)
    rounds = args.rounds or (9 if args.quick else 15)
    runs = [run(shapes, rounds, t) for t in (args.threads or [2, 1])]
    text = "\n\n".join(r[1] for r in runs)
    text += f"\n\ntorch {torch.__version__}; every variant under torch.inference_mode(); ratios are eager (or compile) ms / convfuse ms.\n"
    print(text)
    if not args.quick and not args.shapes:
        RESULTS.mkdir(parents=True, exist_ok=True)
        payload = [{"meta": meta, "rows": rows} for rows, _, meta in runs]
        (RESULTS / "nd.json").write_text(json.dumps(payload, indent=1) + "\n")
        (RESULTS / "nd.md").write_text("# fft_convnd on CPU: GFNet's global filter (bench/nd.py)\n\n" + text)
    return 0 if all(max(r["max_rel_err"].values()) < 1e-4 for rows, _, _ in runs for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
