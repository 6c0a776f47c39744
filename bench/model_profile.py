"""Where a model's time goes once convfuse has fused its FFT convolutions (issue 15 item 4).

    python bench/model_profile.py                  # Hyena LM, B=4, L=4096, forward and a training step
    python bench/model_profile.py --threads 1

torch.profiler over a few forward calls (no_grad) and training steps of examples/hyena.py's LM,
compiled with Inductor and with convfuse.  Each profiled op's self time is put in a category:
the FFT convolution (convfuse's operators and everything they call, or eager's FFT ops and the
pointwise ops around them under Inductor), the short depthwise conv1d (oneDNN), the linear
layers (addmm / mm / bmm), Inductor's generated kernels (the compiled graph's own time), and the
rest.  Self times are summed over threads (the CPU path's pool included), so the shares are of
CPU time, not wall time.  Writes bench/results/model-profile.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import profile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import convfuse  # noqa: E402,F401
from examples.hyena import example  # noqa: E402

FFT = ("fft", "convfuse::")
CATEGORIES = ("FFT convolution", "depthwise conv1d", "linear layers", "Inductor kernels", "other")


def category(name: str, in_fft: bool) -> str:
    if in_fft or any(f in name for f in FFT):
        return "FFT convolution"
    if "convolution" in name:
        return "depthwise conv1d"
    if name in ("aten::addmm", "aten::mm", "aten::bmm", "aten::linear"):
        return "linear layers"
    if name.startswith("## Call CompiledFxGraph") or name.startswith("Torch-Compiled Region"):
        return "Inductor kernels"
    return "other"


def shares(events) -> dict[str, float]:
    """Self CPU time per category, in ms per call; ops under a convfuse operator count as FFT."""
    total = defaultdict(float)
    fft_ranges = [(e.time_range.start, e.time_range.end, e.thread) for e in events if e.name.startswith("convfuse::")]
    for e in events:
        inside = any(s <= e.time_range.start and e.time_range.end <= t and e.thread == th for s, t, th in fft_ranges)
        total[category(e.name, inside)] += e.self_cpu_time_total / 1e3
    return total


def run(fn, calls: int) -> dict[str, float]:
    fn(), fn()
    with profile() as p:
        for _ in range(calls):
            fn()
    return {k: v / calls for k, v in shares(p.events()).items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--calls", type=int, default=5)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    model, (tokens,) = example(batch=4, seqlen=4096)
    rows = []
    for backend in ("inductor", "convfuse"):
        torch._dynamo.reset()
        compiled = torch.compile(model, backend=backend)
        model.eval()
        with torch.no_grad():
            rows.append((f"forward, {backend}", run(lambda: compiled(tokens), a.calls)))
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)

        def step():
            opt.zero_grad(set_to_none=True)
            logits = compiled(tokens[:, :-1])
            torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten()).backward()
            opt.step()

        rows.append((f"train step, {backend}", run(step, a.calls)))
    lines = ["| run | " + " | ".join(f"{c} ms" for c in CATEGORIES) + " | total CPU ms | FFT share |",
             "|---" * (len(CATEGORIES) + 3) + "|"]
    for name, t in rows:
        tot = sum(t.values())
        lines.append(f"| {name} | " + " | ".join(f"{t.get(c, 0.0):.1f}" for c in CATEGORIES)
                     + f" | {tot:.1f} | {t.get('FFT convolution', 0.0) / tot:.0%} |")
    text = "\n".join(lines) + (
        f"\n\nHyena LM (examples/hyena.py: d_model 64, 2 layers), B=4, L=4096 (training on 4095), torch.profiler self "
        f"CPU time summed over threads, per call, {a.calls} calls; torch threads {torch.get_num_threads()}, "
        f"1-min load average {os.getloadavg()[0]:.1f}; torch {torch.__version__}.\n")
    print(text)
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "results" / "model-profile.md").write_text(
        "# Where the Hyena LM's CPU time goes (bench/model_profile.py)\n\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
