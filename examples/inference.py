"""Inference with constant kernels: the example models under torch.inference_mode(), eager vs Inductor vs convfuse.

    python examples/inference.py                    # every model under examples/ that has an example()
    python examples/inference.py --models hyena --repeats 21

At inference the long filters do not change, so a model can hold them as buffers: convfuse
then sees the kernel as module state (``constant_kernel`` in the report) and its CPU path
computes each kernel's spectrum once instead of on every call. For the Hyena LM this script
materializes each implicit filter (an MLP over positions) into a buffer; another example
module can offer the same with a ``constant_kernels(model, *inputs)`` function, or is run as
it is.

Each model runs three ways under ``torch.inference_mode()``: eager, ``torch.compile`` with
its default backend (Inductor), and ``torch.compile(backend="convfuse")`` (convfuse's fused
operator, Inductor for the rest). Times are medians of interleaved runs (each round runs all
three, so machine noise hits them alike); ratios matter more than absolute times.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NOT_MODELS = {"__init__", "inference", "train_hyena", "ddp_train"}


class ConstantFilter(nn.Module):
    """A Hyena implicit filter evaluated once: forward(L) returns the stored (H, L) kernel as a buffer."""

    def __init__(self, kernel: torch.Tensor):
        super().__init__()
        self.register_buffer("kernel", kernel.detach().clone())

    def forward(self, L: int) -> torch.Tensor:
        return self.kernel if self.kernel.shape[-1] == L else self.kernel[..., :L]


def hyena_constant_kernels(model: nn.Module, tokens: torch.Tensor) -> nn.Module:
    from examples.hyena import HyenaOperator

    L = tokens.shape[-1]
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, HyenaOperator):
                m.filter = ConstantFilter(m.filter(L))
    return model


def discover(names: list[str] | None) -> list[tuple[str, object]]:
    """(name, module) for each example module with an ``example()`` returning (model, inputs)."""
    found = []
    for path in sorted((ROOT / "examples").glob("*.py")):
        name = path.stem
        if name in NOT_MODELS or (names and name not in names):
            continue
        try:
            module = importlib.import_module(f"examples.{name}")
        except Exception as exc:  # an example being written right now must not stop the others
            print(f"skipping examples/{name}.py: import failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        if callable(getattr(module, "example", None)):
            found.append((name, module))
    return found


def constant(name: str, module, model: nn.Module, inputs) -> tuple[nn.Module, str]:
    if name == "hyena":
        return hyena_constant_kernels(model, *inputs), "constant"
    hook = getattr(module, "constant_kernels", None)
    if callable(hook):
        return hook(model, *inputs), "constant"
    return model, "as defined"


def interleaved_medians(fns: dict, inputs, repeats: int) -> dict[str, float]:
    times = {name: [] for name in fns}
    for r in range(repeats):
        order = list(fns.items())
        if r % 2:
            order.reverse()  # neither runs always first after the other's cache traffic
        for name, fn in order:
            t0 = time.perf_counter()
            fn(*inputs)
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def rel_err(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got.double() - expected.double()).abs().max() / expected.double().abs().max().clamp_min(1e-30)).item()


def shape_of(inputs) -> str:
    return " ".join("x".join(map(str, t.shape)) for t in inputs if isinstance(t, torch.Tensor))


def run_model(name: str, module, repeats: int, warmup: int, mode: str = "inference_mode") -> dict:
    from convfuse.report import collecting

    torch._dynamo.reset()
    model, inputs = module.example()
    model = model.eval()
    model, kernels = constant(name, module, model, inputs)
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
    head = (f"{'model':<10} {'mode':<14} {'input':<10} {'kernels':<10} {'sites':>9} {'eager ms':>9} {'inductor ms':>11} "
            f"{'convfuse ms':>11} {'vs eager':>8} {'vs inductor':>11} {'max rel err':>11}")
    lines = [head, "-" * len(head)]
    for r in rows:
        sites = f"{r['rewritten']}/{r['sites']}"
        lines.append(
            f"{r['model']:<10} {r['mode']:<14} {r['inputs']:<10} {r['kernels']:<10} {sites:>9} {r['eager']:>9.1f} {r['inductor']:>11.1f} "
            f"{r['convfuse']:>11.1f} {r['eager'] / r['convfuse']:>7.2f}x {r['inductor'] / r['convfuse']:>10.2f}x "
            f"{r['err']:>11.1e}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="*", help="example module names (default: all with an example())")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--report", action="store_true", help="print convfuse's rewrite report for each model")
    args = p.parse_args(argv)
    rows = []
    for name, module in discover(args.models):
        print(f"{name}: compiling and timing ...", file=sys.stderr, flush=True)
        try:
            row = run_model(name, module, args.repeats, args.warmup)
        except RuntimeError as exc:
            if "inference tensor" not in str(exc):
                print(f"{name}: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                continue
            # convfuse's CPU kernel writes its output from pool threads, which do not inherit
            # the caller's inference mode; until it does, measure all three under no_grad.
            print(f"{name}: convfuse failed under torch.inference_mode() ({str(exc).split('.')[0]}); "
                  "measuring under torch.no_grad() instead", file=sys.stderr)
            row = run_model(name, module, args.repeats, args.warmup, mode="no_grad")
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
    print(f"CPU, {torch.get_num_threads()} threads, medians of {args.repeats} interleaved runs")
    print(table(rows))
    return 0 if all(r["err"] < 1e-4 for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
