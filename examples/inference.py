"""Inference with constant kernels: the example models under torch.inference_mode(), eager vs Inductor vs convfuse.

    python examples/inference.py                    # Hyena, M2 bidirectional, S4D, H3, GFNet
    python examples/inference.py --models hyena s4d --repeats 21
    python examples/inference.py --all              # also every other layer in examples/models.py (tiny sizes)

At inference the long filters do not change, so a model can hold them as buffers: convfuse
then sees the kernel as module state (``constant_kernel`` in the report) and its CPU path
computes each kernel's spectrum once instead of on every call. This script replaces every
filter module that computes a kernel from parameters (Hyena's implicit filter, S4D's kernel)
by the kernels it computed in one eager pass, stored as buffers; kernels that are parameters
(H3's shift kernel, GFNet's weight) are constant already; a kernel assembled in the layer's own
forward (M2's pad + flip) stays as written. The report's constant-kernel count says which.

Each model runs three ways under ``torch.inference_mode()``: eager, ``torch.compile`` with
its default backend (Inductor), and ``torch.compile(backend="convfuse")`` (convfuse's fused
operator, Inductor for the rest). Times are medians over interleaved rounds (each round times
all three with torch.utils.benchmark's ``blocked_autorange``, so machine noise hits them alike);
ratios matter more than absolute times.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

class ConstantFilter(nn.Module):
    """A filter module evaluated once per length: forward(L) returns a stored (H, L) kernel buffer."""

    def __init__(self, kernels: dict[int, torch.Tensor]):
        super().__init__()
        for L, k in kernels.items():
            self.register_buffer(f"k{L}", k.detach().clone())

    def forward(self, L: int) -> torch.Tensor:
        return getattr(self, f"k{L}")


class _Recording(nn.Module):
    """Runs the original filter and remembers its output for every length asked for."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner, self.seen = inner, {}

    def forward(self, L: int) -> torch.Tensor:
        self.seen[L] = k = self.inner(L)
        return k


def filter_classes() -> tuple[type, ...]:
    """Modules whose forward(L) computes a long filter from parameters: Hyena's implicit filter, S4D's kernel."""
    from examples.hyena import ImplicitFilter

    classes = [ImplicitFilter]
    try:
        from examples.models import S4DKernel

        classes.append(S4DKernel)
    except Exception:
        pass
    return tuple(classes)


def constant_kernels(model: nn.Module, inputs) -> tuple[nn.Module, int]:
    """Replace every filter module by the kernels it computes for ``inputs`` (one eager pass records them)."""
    classes = filter_classes()
    targets = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
               if isinstance(child, classes)]
    for parent, name, child in targets:
        setattr(parent, name, _Recording(child))
    with torch.no_grad():
        model(*inputs)
    for parent, name, child in targets:
        setattr(parent, name, ConstantFilter(getattr(parent, name).seen))
    return model, len(targets)


# The models of the issue at sizes where time is worth measuring (examples/models.py's MODELS
# are tiny, for tests); any other MODELS entry runs at its own size with --all.
def bench_models() -> dict[str, object]:
    from examples import hyena

    found = {"hyena": lambda: hyena.example()}
    try:
        from examples import models as m
    except Exception as exc:  # an example being written right now must not stop the others
        print(f"skipping examples/models.py: import failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return found
    B, H, L = 4, 64, 1024
    sized = {
        "m2_bidirectional": lambda: (m.M2BidirectionalConv(d=H, L=L), (torch.randn(B, L, H),)),
        "s4d": lambda: (m.S4DConv(d=H), (torch.randn(B, H, L),)),
        "h3": lambda: (m.H3Conv(d=H), (torch.randn(B, L, H),)),
        "gfnet": lambda: (m.GFNetFilter(dim=H, h=32, w=32), (torch.randn(B, 32, 32, H),)),
    }
    for name, make in sized.items():
        if name in getattr(m, "MODELS", {}):
            found[name] = make
    for name, make in getattr(m, "MODELS", {}).items():
        found.setdefault(f"models.{name}" if name in found else name, make)
    return found


def interleaved_medians(fns: dict, inputs, repeats: int, min_run_time: float = 0.2) -> dict[str, float]:
    """ms per call: each round times every variant with torch.utils.benchmark (the median of a
    ``blocked_autorange`` block of back-to-back calls), the order rotating each round so none
    always follows the same one; the figure is the median over rounds."""
    from torch.utils.benchmark import Timer

    names = list(fns)
    times = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            timer = Timer("fn(*inputs)", globals={"fn": fns[name], "inputs": inputs}, num_threads=torch.get_num_threads())
            times[name].append(timer.blocked_autorange(min_run_time=min_run_time).median * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def rel_err(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got.double() - expected.double()).abs().max() / expected.double().abs().max().clamp_min(1e-30)).item()


def shape_of(inputs) -> str:
    return " ".join("x".join(map(str, t.shape)) for t in inputs if isinstance(t, torch.Tensor))


def run_model(name: str, make, repeats: int, warmup: int, mode: str = "inference_mode") -> dict:
    from convfuse.report import collecting

    torch._dynamo.reset()
    torch.manual_seed(0)
    model, inputs = make()
    model = model.eval()
    model, frozen = constant_kernels(model, inputs)
    kernels = "constant" if frozen else "as defined"
    with (torch.inference_mode() if mode == "inference_mode" else torch.no_grad()):
        default = torch.compile(model)
        fused = torch.compile(model, backend="convfuse")
        expected = model(*inputs)
        t0 = time.perf_counter()
        default(*inputs)
        compile_default = time.perf_counter() - t0
        t0 = time.perf_counter()
        with collecting() as report:
            got = fused(*inputs)
        compile_fused = time.perf_counter() - t0
        err = rel_err(got, expected)
        fns = {"eager": model, "inductor": default, "convfuse": fused}
        for _ in range(warmup):
            for fn in fns.values():
                fn(*inputs)
        t = interleaved_medians(fns, inputs, repeats)
    constant_sites = sum(1 for s in report.rewritten if s.spec is not None and s.spec.constant_kernel)
    return {"model": name, "mode": mode, "inputs": shape_of(inputs), "kernels": kernels, "sites": len(report.sites),
            "rewritten": len(report.rewritten), "constant": constant_sites, "err": err, **t,
            "compile_s": (compile_default, compile_fused), "report": str(report)}


def table(rows: list[dict]) -> str:
    head = (f"{'model':<16} {'mode':<14} {'input':<14} {'kernels':<10} {'sites':>9} {'eager ms':>9} {'inductor ms':>11} "
            f"{'convfuse ms':>11} {'vs eager':>8} {'vs inductor':>11} {'max rel err':>11}")
    lines = [head, "-" * len(head)]
    for r in rows:
        sites = f"{r['rewritten']}/{r['sites']}"
        lines.append(
            f"{r['model']:<16} {r['mode']:<14} {r['inputs']:<14} {r['kernels']:<10} {sites:>9} {r['eager']:>9.1f} {r['inductor']:>11.1f} "
            f"{r['convfuse']:>11.1f} {r['eager'] / r['convfuse']:>7.2f}x {r['inductor'] / r['convfuse']:>10.2f}x "
            f"{r['err']:>11.1e}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="*", help="model names (default: hyena m2_bidirectional s4d h3 gfnet)")
    p.add_argument("--all", action="store_true", help="also every other model in examples/models.py, at its size")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--report", action="store_true", help="print convfuse's rewrite report for each model")
    args = p.parse_args(argv)
    rows = []
    models = bench_models()
    default = ["hyena", "m2_bidirectional", "s4d", "h3", "gfnet"]
    names = args.models or (list(models) if args.all else [n for n in default if n in models])
    for name in names:
        if name not in models:
            print(f"{name}: no such example model (have: {', '.join(models)})", file=sys.stderr)
            continue
        print(f"{name}: compiling and timing ...", file=sys.stderr, flush=True)
        try:
            row = run_model(name, models[name], args.repeats, args.warmup)
        except Exception as exc:
            print(f"{name}: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        print(f"{name}: compile {row['compile_s'][0]:.1f} s (inductor), {row['compile_s'][1]:.1f} s (convfuse); "
              f"{row['constant']} of {row['rewritten']} rewritten sites with a constant kernel", file=sys.stderr)
        if args.report:
            print(row["report"])
        rows.append(row)
    if not rows:
        print("no example models ran", file=sys.stderr)
        return 1
    print(f"CPU, {torch.get_num_threads()} threads, medians of {args.repeats} interleaved rounds "
          f"(torch.utils.benchmark blocked_autorange), load average {os.getloadavg()[0]:.2f} at the end")
    print(table(rows))
    return 0 if all(r["err"] < 1e-4 for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
