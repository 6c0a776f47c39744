"""CPU benchmark of ``convfuse.fft_conv_mix`` (conv1d/conv2d by FFT, channels mixed per frequency).

    python bench/mix.py              # every shape; writes bench/results/mix-cpu-<date>.md
    python bench/mix.py --quick      # the small shapes and one large one, 5 rounds, nothing written
    python bench/mix.py --crossover  # direct convolution against the FFT path over kernel taps (DIRECT_MAX_TAPS)

Per shape, 'same' padding, bias, fp32, under torch.inference_mode():
- eager:     a plain FFT conv layer: rfft(u, n), rfft(w, n), einsum 'bcf,ocf->bof', irfft, the
             'same' slice, + bias (2-D: rfft2/irfft2 and 'bchw,ochw->bohw')
- inductor:  torch.compile(layer), the default backend
- op:        torch.ops.convfuse.fft_conv_mix called directly (constant_kernel=False: the weight
             transformed every call, as eager does)
- op const:  the same with constant_kernel=True (what the pass emits for a parameter: its
             spectrum cached while its bits are unchanged; each call still compares them)
- direct:    F.conv1d/conv2d with the flipped weight (oneDNN), the same function; skipped where
             it would take more than a few seconds a call
Rounds are interleaved (each times every variant once, order alternating), medians reported; the
machine has 2 cores shared with other jobs, so the load average is printed with the figures.
Peak memory: the most resident memory above the start of one call (VmHWM reset through
/proc/self/clear_refs, after glibc's free memory was given back with malloc_trim), Linux only.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import math
import os
import statistics
import sys
import time
from pathlib import Path

# The 2-D shape's kernel spectrum (342 MiB) is over the default cache size (256 MiB).
os.environ.setdefault("CONVFUSE_CPU_CACHE_MB", "1024")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import convfuse  # noqa: E402,F401  registers the operators
from convfuse.backends import cpu_cache, cpu_mix  # noqa: E402

OP = torch.ops.convfuse.fft_conv_mix
RESULTS = ROOT / "bench" / "results"
# (B, C, L, K, n) for 1-D, (B, C, (H, W), (Kh, Kw), (nh, nw)) for 2-D; n >= L + K - 1 (linear)
SHAPES = [
    (8, 4, 256, 16, 512),
    (8, 4, 256, 64, 512),
    (4, 16, 8192, 512, 16384),
    (4, 32, 16384, 1024, 32768),
    (2, 64, 8192, 4096, 12288),
    (1, 16, 65536, 2048, 131072),
    (2, 32, (256, 256), (31, 31), (288, 288)),
]
QUICK = SHAPES[:3]
DIRECT_MAX_MACS = 4e9  # the direct variant is skipped beyond this many multiply-adds a call
VARIANTS = ["eager", "inductor", "op", "op_const", "direct"]


class FFTConv(torch.nn.Module):
    """conv1d/conv2d ('same', bias) the way people write it with torch.fft."""

    def __init__(self, C: int, K, n):
        super().__init__()
        self.K, self.n = tuple(K), tuple(n)
        self.weight = torch.nn.Parameter(torch.randn(C, C, *self.K) / math.sqrt(C * math.prod(self.K)))
        self.bias = torch.nn.Parameter(torch.randn(C))

    def forward(self, u):
        d = len(self.n)
        dims = tuple(range(-d, 0))
        U = torch.fft.rfftn(u, s=self.n, dim=dims)
        W = torch.fft.rfftn(self.weight, s=self.n, dim=dims)
        Y = torch.einsum("bcf,ocf->bof" if d == 1 else "bchw,ochw->bohw", U, W)
        y = torch.fft.irfftn(Y, s=self.n, dim=dims)
        for i, (k, L) in enumerate(zip(self.K, u.shape[-d:])):
            y = y.narrow(y.dim() - d + i, k // 2, L)
        return y + self.bias.reshape(-1, *([1] * d))


def setup(shape):
    B, C, L, K, n = shape
    L, K, n = ((L,), (K,), (n,)) if isinstance(L, int) else (L, K, n)
    torch.manual_seed(0)
    layer = FFTConv(C, K, n).eval()
    u = torch.randn(B, C, *L)
    w, b = layer.weight.detach(), layer.bias.detach()
    d = len(n)
    args = (list(n), [k // 2 for k in K], list(L), 1.0, 0.0, False, 1, torch.float32)
    conv = {1: F.conv1d, 2: F.conv2d}[d]
    wf = w.flip(list(range(-d, 0)))
    pads = []
    for k in reversed(K):
        pads += [(k - 1) // 2, k // 2]  # 'same' for the flipped kernel (conv is a correlation)
    macs = B * C * C * math.prod(L) * math.prod(K)
    fns = {
        "eager": lambda: layer(u),
        "inductor": (lambda c: (lambda: c(u)))(torch.compile(layer)),
        "op": lambda: OP(u, w, b, *args),
        "op_const": lambda: OP(u, w, b, *args, True),
        "direct": (lambda: conv(F.pad(u, pads), wf, b)) if macs <= DIRECT_MAX_MACS else None,
    }
    return fns


_libc = ctypes.CDLL(None) if sys.platform.startswith("linux") else None


def _kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def peak_mib(fn) -> float | None:
    """Resident memory above the start, at its highest during one call."""
    if _libc is None:
        return None
    cpu_mix._ws_free.clear()  # the operator's retained workspace counts as the call's own memory
    gc.collect()
    _libc.malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident size
    before = _kib("VmRSS:")
    fn()
    return (_kib("VmHWM:") - before) / 1024


def measure(shape, rounds: int) -> dict:
    torch._dynamo.reset()
    cpu_cache.clear()
    with torch.inference_mode():
        fns = {k: v for k, v in setup(shape).items() if v is not None}
        expected = fns["eager"]()
        err, first = {}, {}
        for name, fn in fns.items():
            t0 = time.perf_counter()
            got = fn()
            first[name] = time.perf_counter() - t0
            err[name] = ((got - expected).abs().max() / expected.abs().max()).item()
            fn()  # warm: the spectrum cache stores on the second sighting
        times = {name: [] for name in fns}
        for r in range(rounds):
            order = list(fns.items())
            for name, fn in (order if r % 2 == 0 else order[::-1]):
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1e3)
        mem = {name: peak_mib(fn) for name, fn in fns.items()}
    return {"shape": shape, "ms": {k: statistics.median(v) for k, v in times.items()}, "err": err,
            "mem": mem, "first_s": first, "cache_mib": cpu_cache.size_bytes() / 2**20}


def _fmt_shape(shape) -> str:
    B, C, L, K, n = shape
    return f"{B}, {C}, {L}, {K}, {n}" if isinstance(L, int) else \
        f"{B}, {C}, {'x'.join(map(str, L))}, {'x'.join(map(str, K))}, {'x'.join(map(str, n))}"


def table(rows: list[dict]) -> str:
    head = ("| B, C, L, taps, n | eager ms | inductor ms | op ms | op const ms | direct ms "
            "| op vs eager | op vs inductor | const vs eager | const vs inductor "
            "| peak MiB eager / inductor / op / const | const's cache MiB | max rel err |")
    lines = [head, "|---" * 13 + "|"]
    for r in rows:
        m, mem = r["ms"], r["mem"]
        direct = f"{m['direct']:.2f}" if "direct" in m else "—"
        peaks = " / ".join("—" if mem.get(k) is None else f"{mem[k]:.0f}" for k in ("eager", "inductor", "op", "op_const"))
        lines.append(
            f"| {_fmt_shape(r['shape'])} | {m['eager']:.2f} | {m['inductor']:.2f} | {m['op']:.2f} | {m['op_const']:.2f} "
            f"| {direct} | {m['eager'] / m['op']:.2f}x | {m['inductor'] / m['op']:.2f}x "
            f"| {m['eager'] / m['op_const']:.2f}x | {m['inductor'] / m['op_const']:.2f}x | {peaks} | {r['cache_mib']:.0f} "
            f"| {max(r['err'].values()):.1e} |")
    return "\n".join(lines)


def crossover() -> None:
    """Direct convolution against the FFT path of the operator, over kernel taps (1-D, 2-D)."""
    cases = [(8, 4, 256), (8, 16, 1024), (4, 32, 4096), (2, 64, 8192)]
    print("| B, C, L | taps | direct ms | fft ms | fft const ms |")
    print("|---|---|---|---|---|")
    with torch.inference_mode():
        for B, C, L in cases:
            for K in (8, 16, 32, 64, 128):
                n = 1 << (L + K - 2).bit_length()
                u, w, b = torch.randn(B, C, L), torch.randn(C, C, K), torch.randn(C)
                args = ([n], [K // 2], [L], 1.0, 0.0, False, 1, torch.float32)
                direct = lambda: OP(u, w, b, *args)  # noqa: E731
                saved = cpu_mix.DIRECT_MAX_TAPS
                try:
                    cpu_mix.DIRECT_MAX_TAPS = 10**9
                    td = _median(direct)
                    cpu_mix.DIRECT_MAX_TAPS = 0
                    tf = _median(direct)
                    tc = _median(lambda: OP(u, w, b, *args, True))
                finally:
                    cpu_mix.DIRECT_MAX_TAPS = saved
                print(f"| {B}, {C}, {L} | {K} | {td:.3f} | {tf:.3f} | {tc:.3f} |", flush=True)
        for B, C, H in [(2, 16, 64), (2, 32, 128)]:
            for K in (3, 5, 7, 9):
                n = [H + K - 1] * 2
                u, w, b = torch.randn(B, C, H, H), torch.randn(C, C, K, K), torch.randn(C)
                args = (n, [K // 2] * 2, [H, H], 1.0, 0.0, False, 1, torch.float32)
                saved = cpu_mix.DIRECT_MAX_TAPS
                try:
                    cpu_mix.DIRECT_MAX_TAPS = 10**9
                    td = _median(lambda: OP(u, w, b, *args))
                    cpu_mix.DIRECT_MAX_TAPS = 0
                    tf = _median(lambda: OP(u, w, b, *args))
                    tc = _median(lambda: OP(u, w, b, *args, True))
                finally:
                    cpu_mix.DIRECT_MAX_TAPS = saved
                print(f"| {B}, {C}, {H}x{H} | {K}x{K} | {td:.3f} | {tf:.3f} | {tc:.3f} |", flush=True)


def _median(fn, rounds: int = 7) -> float:
    fn()
    fn()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--crossover", action="store_true")
    parser.add_argument("--rounds", type=int, default=None)
    opts = parser.parse_args()
    if opts.crossover:
        crossover()
        return
    shapes = QUICK if opts.quick else SHAPES
    load0 = os.getloadavg()
    t0 = time.time()
    rows = []
    for shape in shapes:
        small = isinstance(shape[2], int) and shape[2] <= 1024
        spectrum_mib = shape[1] ** 2 * math.prod(shape[4] if isinstance(shape[4], tuple) else (shape[4],)) * 4 / 2**20
        rounds = opts.rounds or (5 if opts.quick else 15 if small else 3 if spectrum_mib > 100 else 5)
        rows.append(measure(shape, rounds))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    # The small shapes once more with every variant on one torch thread: at this size eager's and
    # oneDNN's 2-thread OpenMP teams stall for a scheduler tick whenever the other core is busy
    # (eager swung between 0.3 and 45 ms a call in runs at load ~6), which says more about the
    # machine's load than about the variants.
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows1 = [measure(shape, opts.rounds or (5 if opts.quick else 15)) for shape in shapes[:2]]
    finally:
        torch.set_num_threads(saved)
    load1 = os.getloadavg()
    text = "\n".join([
        f"# fft_conv_mix on CPU (bench/mix.py), {datetime.date.today()}",
        "",
        f"torch {torch.__version__}, {torch.get_num_threads()} torch threads, {os.cpu_count()} cores; "
        f"1/5/15-min load average at start {', '.join(f'{x:.1f}' for x in load0)}, at end "
        f"{', '.join(f'{x:.1f}' for x in load1)} (a shared machine); {time.time() - t0:.0f} s in all.",
        "Medians of interleaved rounds, fp32, 'same' padding, bias, inference mode; ratios are the "
        "other variant's ms / the operator's.  B, C, L, taps, n: batch, channels in = out, signal "
        "length, kernel taps, FFT size.  Peak MiB: resident memory above the start of one call (the "
        "operator's workspace, kept between calls, emptied first so it counts); const's cache MiB: "
        "the kernel spectrum (and the copy of the kernel's bits) the constant-kernel variant keeps.",
        "",
        table(rows),
        "",
        "The small shapes with every variant on 1 torch thread (the operator's pool then runs on 1 thread too):",
        "",
        table(rows1),
        "",
    ])
    print(text)
    if not opts.quick:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"mix-cpu-{datetime.date.today()}.md").write_text(text)


if __name__ == "__main__":
    main()
