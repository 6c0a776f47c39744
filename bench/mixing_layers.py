"""Channel-mixing layers end to end: eager, torch.compile's default (Inductor) and
torch.compile(backend="convfuse"), on the example layers of examples/mixing.py.

    python bench/mixing_layers.py            # the default shapes (a few minutes on 2 cores)
    python bench/mixing_layers.py --quick    # one small and one large shape per layer

bench/mix.py and bench/fno.py time the operators alone; this times what a user compiles: the
layer's whole graph, the site rewritten by the pass (or left eager where it predicts no gain).
no_grad, fp32, medians of interleaved torch.utils.benchmark rounds; ratios are eager / variant.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.utils.benchmark as tb

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
from mixing import FFTConv1d, FFTConv2d, SpectralConv1d, SpectralConv2d  # noqa: E402

import convfuse  # noqa: E402,F401  registers the backend

SHAPES = {
    "fft conv1d": [
        (lambda: FFTConv1d(4, 4, 16), (8, 4, 256)),
        (lambda: FFTConv1d(16, 16, 512), (4, 16, 8192)),
        (lambda: FFTConv1d(32, 32, 1024), (4, 32, 16384)),
    ],
    "fft conv2d": [
        (lambda: FFTConv2d(4, 4, 7), (2, 4, 32, 32)),
        (lambda: FFTConv2d(32, 32, 31), (2, 32, 128, 128)),
    ],
    "fno 1-d": [
        (lambda: SpectralConv1d(32, 32, 16), (4, 32, 256)),
        (lambda: SpectralConv1d(64, 64, 16), (16, 64, 8192)),
    ],
    "fno 2-d": [
        (lambda: SpectralConv2d(32, 32, 12, 12), (4, 32, 32, 32)),
        (lambda: SpectralConv2d(32, 32, 16, 16), (8, 32, 128, 128)),
    ],
}


def _median_ms(fn, x, seconds: float) -> float:
    return tb.Timer("fn(x)", globals={"fn": fn, "x": x}).blocked_autorange(min_run_time=seconds).median * 1e3


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the first and last shape of each layer only")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument("--seconds", type=float, default=0.5, help="minimum run time per measurement")
    args = ap.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {os.getloadavg()}")
    print("| layer | shape | eager ms | inductor ms | convfuse ms | vs eager | vs inductor | convfuse site |")
    print("|---|---|---|---|---|---|---|---|")
    for name, cases in SHAPES.items():
        for make, shape in (cases[:1] + cases[-1:] if args.quick else cases):
            torch.manual_seed(0)
            layer = make().eval()
            x = torch.randn(*shape)
            torch._dynamo.reset()
            report = convfuse.explain(layer, x)
            site = report.sites[0] if report.sites else None
            variants = {"eager": layer, "inductor": torch.compile(layer),
                        "convfuse": torch.compile(layer, backend="convfuse")}
            times = {k: [] for k in variants}
            with torch.no_grad():
                for fn in variants.values():
                    fn(x)  # compile and warm up
                for _ in range(args.rounds):
                    for k, fn in variants.items():
                        times[k].append(_median_ms(fn, x, args.seconds))
            med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
            what = "rewritten" if site is not None and site.rewritten else f"eager ({site.reason[:40]}...)" \
                if site is not None else "no site"
            print(f"| {name} | {shape} | {med['eager']:.3f} | {med['inductor']:.3f} | {med['convfuse']:.3f} | "
                  f"{med['eager'] / med['convfuse']:.2f}x | {med['inductor'] / med['convfuse']:.2f}x | {what} |",
                  flush=True)
    print(f"load at the end {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
