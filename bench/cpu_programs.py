"""What a user gets on CPU: FFT-convolution programs as published code writes them, compiled.

    python bench/cpu_programs.py            # every program, 15 interleaved rounds
    python bench/cpu_programs.py --quick    # 5 rounds
    python bench/cpu_programs.py --threads 1

Each program (a function or module, no_grad) runs four ways, timed with torch.utils.benchmark
(Timer.blocked_autorange, a block of calls per measurement, its median), interleaved (each round
times every variant once, the order rotating), the median of the rounds reported:
- eager:     the program as written;
- dynamo:    ``torch.compile(program, backend="eager")``: Dynamo captures the graph and runs it as
             is.  Its excess over eager is what any torch.compile backend pays per call before
             running anything: the floor under the other two compiled columns;
- inductor:  ``torch.compile(program)``, the default backend;
- convfuse:  ``torch.compile(program, backend="convfuse")``, default options: the site rewritten
             where the cost model predicts a gain, left to Inductor with "no gain at this size"
             otherwise (the report column says which).
The programs: the sizes issue 15 measured (a Hyena conv with its kernel as input, a 1-D signal,
a short kernel, a 'same'-mode convolution, GFNet's global filter with a parameter spectrum) and
Hyena-style convolutions from 16 to 1024 samples.  Writes bench/results/cpu-programs.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import convfuse  # noqa: E402,F401
from cpu import _rounds  # noqa: E402  (bench/cpu.py: the interleaved blocked_autorange rounds)
from cpu import fftconv as hyena  # noqa: E402  (a Hyena-style causal convolution with a skip term)

RESULTS = ROOT / "bench" / "results"


def signal(x, k):
    """A 1-D signal and a kernel of its length: the linear convolution's first L samples."""
    n = 2 * x.shape[-1]
    return torch.fft.irfft(torch.fft.rfft(x, n=n) * torch.fft.rfft(k, n=n), n=n)[: x.shape[-1]]


def short_kernel(u, k):
    """S4-style: a (H, K) kernel much shorter than L, default norms."""
    L = u.shape[-1]
    n = 2 * L
    return torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)[..., :L]


def same_mode(x, k):
    """scipy's mode='same': the centred L samples of the full linear convolution."""
    L, K = x.shape[-1], k.shape[-1]
    n = 1 << (L + K - 2).bit_length()
    full = torch.fft.irfft(torch.fft.rfft(x, n=n) * torch.fft.rfft(k, n=n), n=n)
    start = (K - 1) // 2
    return full[..., start: start + L]


class GlobalFilter(nn.Module):
    """GFNet's global filter (channels last, a parameter spectrum, norm='ortho')."""

    def __init__(self, h: int, w: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(h, w // 2 + 1, dim, 2) * 0.02)

    def forward(self, x):
        B, H, W, C = x.shape
        X = torch.fft.rfft2(x, dim=(1, 2), norm="ortho") * torch.view_as_complex(self.weight)
        return torch.fft.irfft2(X, s=(H, W), dim=(1, 2), norm="ortho")


def programs() -> list[tuple[str, object, tuple]]:
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    out = [(f"hyena ({B}, {H}, {L}), kernel as input", hyena, (r(B, H, L), r(H, L), r(H)))
           for B, H, L in ((1, 8, 16), (1, 8, 64), (1, 8, 256), (4, 32, 512), (4, 64, 1024))]
    out += [
        ("1-D signal (4096,), kernel (4096,)", signal, (r(4096), r(4096))),
        ("short kernel (4, 32, 2048), taps (32, 64)", short_kernel, (r(4, 32, 2048), r(32, 64))),
        ("same mode (2, 4, 2048), kernel (1, 4, 511)", same_mode, (r(2, 4, 2048), r(1, 4, 511))),
        ("GFNet filter (4, 32, 32, 64), parameter spectrum", GlobalFilter(32, 32, 64), (r(4, 32, 32, 64),)),
    ]
    return out


def site_summary(fn, inputs) -> str:
    report = convfuse.explain(fn, *inputs)
    said = []
    for s in report.sites:
        said.append(s.kernel or "rewritten" if s.status == "rewritten" else
                    ("no gain" if s.reason.startswith("no gain") else f"skipped: {s.reason[:60]}"))
    return "; ".join(said) or "no site"


def measure(rounds: int, min_run_time: float) -> list[dict]:
    rows = []
    for name, fn, inputs in programs():
        torch._dynamo.reset()
        variants = {"eager": fn, "dynamo": torch.compile(fn, backend="eager", dynamic=False),
                    "inductor": torch.compile(fn, dynamic=False),
                    "convfuse": torch.compile(fn, backend="convfuse", dynamic=False)}
        with torch.no_grad():
            expected = fn(*inputs)
            for v, c in variants.items():
                got = c(*inputs)
                err = ((got - expected).abs().max() / expected.abs().max()).item()
                assert err < 1e-4, (name, v, err)
            calls = {v: (lambda c=c: c(*inputs)) for v, c in variants.items()}
            times = _rounds(calls, rounds, min_run_time=min_run_time)
        ms = {v: statistics.median(t) for v, t in times.items()}
        rows.append({"program": name, "ms": ms, "site": site_summary(fn, inputs)})
        print(rows[-1], flush=True)
    return rows


def table(rows: list[dict], meta: str) -> str:
    lines = ["| program | eager ms | dynamo ms | inductor ms | convfuse ms | convfuse vs eager | vs inductor "
             "| dynamo's own cost (dynamo - eager) ms | convfuse's site |", "|---" * 9 + "|"]
    for r in rows:
        t = r["ms"]
        lines.append(f"| {r['program']} | {t['eager']:.3f} | {t['dynamo']:.3f} | {t['inductor']:.3f} "
                     f"| {t['convfuse']:.3f} | {t['eager'] / t['convfuse']:.2f}x | {t['inductor'] / t['convfuse']:.2f}x "
                     f"| {t['dynamo'] - t['eager']:.3f} | {r['site']} |")
    return "\n".join(lines) + "\n\n" + meta + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--min-run-time", type=float, default=0.2)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    rounds = a.rounds or (5 if a.quick else 15)
    load0 = os.getloadavg()
    rows = measure(rounds, a.min_run_time)
    load1 = os.getloadavg()
    meta = (f"no_grad, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, torch {torch.__version__}; "
            f"{rounds} interleaved rounds of blocked_autorange, medians; 1-min load average at start {load0[0]:.1f}, "
            f"end {load1[0]:.1f}.")
    text = table(rows, meta)
    print(text)
    if not a.quick:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "cpu-programs.md").write_text("# CPU programs, compiled (bench/cpu_programs.py)\n\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
