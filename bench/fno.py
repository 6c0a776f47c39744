"""CPU benchmark of ``convfuse.fft_spectral_mix`` on Fourier-neural-operator spectral layers.

    python bench/fno.py                       # every shape, 5 rounds; writes bench/results/fno-cpu-<date>.md
    python bench/fno.py --quick               # three shapes, 5 rounds, nothing written
    python bench/fno.py --quick --threads 1 --append   # the work alone (one torch thread), appended

The layers are written as neuraloperator (and the original FNO code) writes them: rfft / rfft2,
``out_ft = torch.zeros(...)``, ``einsum`` on the kept corner blocks ([:m] in 1-D; [:m1, :m2] and
[-m1:, :m2] in 2-D), irfft / irfft2.  Per shape, under ``torch.no_grad()``, fp32:
- eager:      the module as written
- inductor:   torch.compile(module), the default backend
- op const:   torch.ops.convfuse.fft_spectral_mix on the module's weights, constant_weights=True
              (what the compiler pass emits for module parameters: their prepared form cached,
              bits compared every call)
- op:         the same without constant_weights (weights prepared every call, as in training)
"op's path": the small-call reference (under REFERENCE_BYTES of input), or the pruned path with
the last axis by DFT-matrix GEMM or by rfft (cpu_spectral.dft_pays).
Rounds are interleaved (each times every variant once with torch.utils.benchmark, order alternating)
and medians reported: the 2-core machine is shared, and the load average goes with the figures.
Peak memory: the most bytes the torch allocator held at once during one call above what it held
before (torch.profiler's memory events; the op measured on one thread, whose tiles are all the
pool's threads would add to), so intermediate spectra count and library-internal FFT buffers do not.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.benchmark import Timer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import convfuse  # noqa: E402,F401  registers torch.ops.convfuse.fft_spectral_mix
from convfuse.backends import cpu_cache, cpu_spectral  # noqa: E402

OP = torch.ops.convfuse.fft_spectral_mix
RESULTS = ROOT / "bench" / "results"
# (B, C, grid, modes): small layers (must never lose), FNO-1D (Burgers: 1K-8K points, up to 64K),
# FNO-2D (Darcy / Navier-Stokes: 64-256 per axis, up to 512), 16-32 modes, 32-64 channels.
SHAPES = [
    (4, 32, (256,), 16), (16, 64, (1024,), 16), (16, 64, (8192,), 16), (8, 32, (16384,), 32),
    (4, 32, (65536,), 16),
    (4, 32, (32, 32), 12), (4, 32, (64, 64), 16), (8, 64, (128, 128), 16), (4, 32, (256, 256), 32),
    (2, 32, (512, 512), 16),
]
QUICK = [(4, 32, (256,), 16), (16, 64, (8192,), 16), (8, 32, (128, 128), 16)]
VARIANTS = ["eager", "inductor", "op_const", "op"]


class SpectralConv1d(torch.nn.Module):
    """neuraloperator / FNO's SpectralConv1d, as written there."""

    def __init__(self, in_channels, out_channels, modes1):
        super().__init__()
        self.out_channels, self.modes1 = out_channels, modes1
        self.scale = 1 / (in_channels * out_channels)
        self.weights1 = torch.nn.Parameter(
            self.scale * torch.rand(in_channels, out_channels, modes1, dtype=torch.cfloat))

    def forward(self, x):
        batchsize = x.shape[0]
        x_ft = torch.fft.rfft(x)
        out_ft = torch.zeros(batchsize, self.out_channels, x.size(-1) // 2 + 1, device=x.device, dtype=torch.cfloat)
        out_ft[:, :, :self.modes1] = torch.einsum("bix,iox->box", x_ft[:, :, :self.modes1], self.weights1)
        return torch.fft.irfft(out_ft, n=x.size(-1))


class SpectralConv2d(torch.nn.Module):
    """neuraloperator / FNO's SpectralConv2d, as written there."""

    def __init__(self, in_channels, out_channels, modes1, modes2):
        super().__init__()
        self.out_channels, self.modes1, self.modes2 = out_channels, modes1, modes2
        self.scale = 1 / (in_channels * out_channels)
        self.weights1 = torch.nn.Parameter(
            self.scale * torch.rand(in_channels, out_channels, modes1, modes2, dtype=torch.cfloat))
        self.weights2 = torch.nn.Parameter(
            self.scale * torch.rand(in_channels, out_channels, modes1, modes2, dtype=torch.cfloat))

    def forward(self, x):
        batchsize = x.shape[0]
        x_ft = torch.fft.rfft2(x)
        out_ft = torch.zeros(batchsize, self.out_channels, x.size(-2), x.size(-1) // 2 + 1,
                             dtype=torch.cfloat, device=x.device)
        out_ft[:, :, :self.modes1, :self.modes2] = torch.einsum(
            "bixy,ioxy->boxy", x_ft[:, :, :self.modes1, :self.modes2], self.weights1)
        out_ft[:, :, -self.modes1:, :self.modes2] = torch.einsum(
            "bixy,ioxy->boxy", x_ft[:, :, -self.modes1:, :self.modes2], self.weights2)
        return torch.fft.irfft2(out_ft, s=(x.size(-2), x.size(-1)))


def variants(shape) -> tuple[dict, Tensor]:  # noqa: F821
    B, C, grid, m = shape
    torch.manual_seed(0)
    x = torch.randn(B, C, *grid)
    if len(grid) == 1:
        model = SpectralConv1d(C, C, m).eval()
        ws, lows = [model.weights1], [0]
    else:
        model = SpectralConv2d(C, C, m, m).eval()
        ws, lows = [model.weights1, model.weights2], [0, 0, grid[0] - m, 0]
    n = list(grid)

    def op_const(x):
        return OP(x, ws, lows, n, 1.0, 0.0, torch.float32, True)

    def op(x):
        return OP(x, ws, lows, n, 1.0, 0.0, torch.float32)

    return {"eager": model, "inductor": torch.compile(model), "op_const": op_const, "op": op}, x


def peak_mib(fn, x) -> float:
    """Peak bytes the torch allocator held during one call, above what it held before (MiB)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn(x)
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        events = json.loads(Path(path).read_text())["traceEvents"]
    finally:
        os.unlink(path)
    running = top = 0
    for e in sorted((e for e in events if e.get("name") == "[memory]"), key=lambda e: e["ts"]):
        running += e["args"]["Bytes"]
        top = max(top, running)
    return top / 2**20


def measure(shape, rounds: int) -> dict:
    torch._dynamo.reset()
    cpu_cache.clear()
    with torch.no_grad():
        fns, x = variants(shape)
        expected = fns["eager"](x).double()
        first_s, err = {}, {}
        for name, fn in fns.items():
            t0 = time.perf_counter()
            got = fn(x)
            first_s[name] = time.perf_counter() - t0
            err[name] = ((got.double() - expected).abs().max() / expected.abs().max()).item()
        for fn in fns.values():  # warm: the weight cache stores on its second sighting
            fn(x)
        t0 = time.perf_counter()
        fns["eager"](x)
        number = max(1, min(20, int(0.05 / max(time.perf_counter() - t0, 1e-6))))
        times = {name: [] for name in fns}
        for r in range(rounds):
            order = list(fns.items())
            for name, fn in (order if r % 2 == 0 else order[::-1]):
                m = Timer("fn(x)", globals={"fn": fn, "x": x}, num_threads=torch.get_num_threads()).timeit(number)
                times[name].append(m.median * 1e3)
        saved = cpu_spectral.INLINE_BYTES
        cpu_spectral.INLINE_BYTES = 2**62  # the op on this thread: its allocations all seen
        try:
            peak = {name: peak_mib(fn, x) for name, fn in fns.items()}
        finally:
            cpu_spectral.INLINE_BYTES = saved
    med = {name: statistics.median(t) for name, t in times.items()}
    return {"shape": [shape[0], shape[1], list(shape[2]), shape[3]], "median_ms": med, "peak_mib": peak,
            "max_rel_err": err, "first_call_s": {k: round(v, 3) for k, v in first_s.items()},
            "path": ("reference" if x.numel() * x.element_size() < cpu_spectral.REFERENCE_BYTES
                     else "DFT GEMM" if cpu_spectral.dft_pays(shape[2][-1], shape[3]) else "rfft")}


def table(rows: list[dict]) -> str:
    head = ("| B, C, grid, modes | eager ms | inductor ms | op const ms | op ms | const vs eager | vs inductor "
            "| op vs eager | peak MiB eager / inductor / op const | op's path | max rel err (op const) |")
    lines = [head, "|---" * 11 + "|"]
    for r in rows:
        m, p = r["median_ms"], r["peak_mib"]
        B, C, grid, modes = r["shape"]
        lines.append(
            f"| {B}, {C}, {'x'.join(map(str, grid))}, {modes} | {m['eager']:.2f} | {m['inductor']:.2f} "
            f"| {m['op_const']:.2f} | {m['op']:.2f} | {m['eager'] / m['op_const']:.2f}x "
            f"| {m['inductor'] / m['op_const']:.2f}x | {m['eager'] / m['op']:.2f}x "
            f"| {p['eager']:.1f} / {p['inductor']:.1f} / {p['op_const']:.1f} "
            f"| {r['path']} | {r['max_rel_err']['op_const']:.1e} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--append", action="store_true", help="append the table to today's results file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes, rounds = (QUICK, 5) if args.quick else (SHAPES, 5)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    rows = []
    for shape in shapes:
        rows.append(measure(shape, rounds))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    load1 = os.getloadavg()
    text = (("" if args.append else f"# FNO spectral layers on CPU ({datetime.date.today()})\n\n")
            + f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, no_grad, {rounds} interleaved "
            f"rounds (medians); load average before {load0[0]:.2f} / {load0[1]:.2f} / {load0[2]:.2f}, after "
            f"{load1[0]:.2f} / {load1[1]:.2f} / {load1[2]:.2f}; run took {time.perf_counter() - t0:.0f} s.\n\n"
            f"{table(rows)}\n")
    print(text)
    path = RESULTS / f"fno-cpu-{datetime.date.today()}.md"
    if args.append:
        with path.open("a") as f:
            f.write("\n" + text)
    elif not args.quick:
        RESULTS.mkdir(exist_ok=True)
        path.write_text(text)


if __name__ == "__main__":
    main()
