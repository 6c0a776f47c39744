"""The GPU device check: correctness with tensor-core dots, then FlashFFTConv's benchmark, in minutes.

Made for one H100/H200 running from the source tree (``PYTHONPATH=.``, no pip), in under 8
minutes; ``bench/gpu_check.sh`` runs the GPU pytest tests first, then this.  Every result is one
JSON line appended to ``bench/results/gpu-<device>.jsonl`` the moment it is measured, so a run
cut short still leaves everything it measured.

Phase 1, ``check`` rows: the fused operator through ``convfuse.fftconv(..., kernel="triton")`` on
fp16 and bf16 inputs (so the result is half and the plans choose half tensor-core dots, fp32
accumulation), n = 256 .. 1M, forward and every gradient against an fp64 torch.fft reference; the
row records the plan's dot dtype and fails when it is not the input's half type.  Then the
PTX of every kernel compiled in that phase is read back from Triton's cache: the row
``ptx`` lists the mma/wgmma instructions found, and fails when fp16 (bf16) operands are not in them.

Phase 2, ``bench`` rows: FlashFFTConv's setting, a gated causal convolution
``y = ((u*g1) (*) k + u*g1*D) * g2`` at FFT size n = 2L, B = 64, H = 768, fp16 and bf16, n = 256,
1K, 4K, 8K, 16K, 32K, 1M, forward and forward+backward, for three contestants: eager (fp32
torch.fft, cuFFT), Inductor (``torch.compile`` of the same function, dynamic shapes: one compile
per dtype and mode) and convfuse (the operator, Triton kernels; at 4K..32K forward also
``convfuse_outer_ms``, the same call through the outer passes instead of the three-level kernel).  H halves where memory binds
(estimated, then on an out-of-memory error); B never shrinks.  Peak memory per contestant is
the allocator's peak over one call above what was allocated before it.  A time budget
(``--budget-s``) stops phase 2 early and says so in a ``skipped`` row.

    PYTHONPATH=. python bench/gpu_check.py                  # on the GPU machine
    PYTHONPATH=. python bench/gpu_check.py --dry-run        # here: CPU, Triton interpreter, tiny sizes
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SIZES = [256, 1024, 4096, 8192, 16384, 32768, 1 << 20]
CHECK_SIZES = [1024, 4096, 32768, 1 << 20]  # two-level, three-level (no skip, skips), outer passes
DRY_SIZES = [256, 512]
DRY_CHECK_SIZES = [256]
DTYPES = ("fp16", "bf16")
MODES = ("fwd", "fwd+bwd")
# bytes per row of the eager baseline's working set, per FFT sample (fp32 input copies, complex
# spectra, their product and inverse; backward keeps them and adds as much again)
EAGER_BYTES_PER_SAMPLE = {"fwd": 28, "fwd+bwd": 56}


def _torch():
    import torch

    return torch


def gated_conv(u, k, D, g1, g2):
    """The eager baseline, FlashFFTConv's PyTorch reference: fp32 torch.fft, n = 2L."""
    torch = _torch()
    L = u.shape[-1]
    ue = u.float() * g1.float()
    y = torch.fft.irfft(torch.fft.rfft(ue, n=2 * L) * torch.fft.rfft(k.float(), n=2 * L), n=2 * L)[..., :L]
    return ((y + ue * D.float()) * g2.float()).to(u.dtype)


class Recorder:
    """Appends one JSON line per result to the .jsonl file, flushed and fsynced at once."""

    def __init__(self, path: Path, meta: dict):
        self.path = path
        self.meta = meta
        path.parent.mkdir(parents=True, exist_ok=True)
        self.failures = 0

    def __call__(self, row: dict) -> dict:
        row = {**row, **self.meta}
        if row.get("ok") is False or row.get("error"):
            self.failures += 1
        line = json.dumps(row, default=str)
        with open(self.path, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        print(line, flush=True)
        return row


def _sync(device):
    torch = _torch()
    if device == "cuda":
        torch.cuda.synchronize()


def time_ms(fn, device: str, target_s: float) -> float:
    """Mean over enough calls to fill ~target_s (3 to 50; 1 when target_s is 0), after one warm-up."""
    torch = _torch()
    fn()
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    one = max(time.perf_counter() - t0, 1e-6)
    reps = 1 if target_s <= 0 else int(min(50, max(3, target_s / one)))
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / reps
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) * 1e3 / reps


def peak_mb(fn, device: str) -> float | None:
    torch = _torch()
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def _inputs(B, H, L, dtype, device, grad, seed):
    torch = _torch()
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s, scale=1.0: (torch.randn(*s, generator=g) * scale).to(device=device, dtype=dtype)  # noqa: E731
    # the kernel in fp32, as FlashFFTConv takes it; D per channel
    args = [mk(B, H, L), (torch.randn(H, L, generator=g) / L).to(device), mk(H, 1), mk(B, H, L), mk(B, H, L)]
    return [a.requires_grad_(grad) for a in args]


def _rel(a, b) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


# ---- phase 1: correctness, with the plans' dot dtype and the PTX as evidence


def check_rows(record, device: str, sizes, dry: bool, deadline: float = float("inf")) -> None:
    torch = _torch()
    import convfuse
    from convfuse.backends.triton_monarch import FALLBACKS, LAUNCHES, explain, resolve
    from convfuse.spec import ConvParams

    tol = {"fp16": 2e-2, "bf16": 6e-2}
    for name in DTYPES:
        dtype = getattr(torch, {"fp16": "float16", "bf16": "bfloat16"}[name])
        before = _ptx_files()
        for n in sizes:
            L = n // 2
            B, H = (2, 2) if dry else (2, 4)
            row = {"phase": "check", "n": n, "dtype": name, "B": B, "H": H}
            if time.perf_counter() > deadline:
                record({**row, "skipped": "time budget for the checks spent"})
                continue
            t0 = time.perf_counter()
            try:
                u, k, D, g1, g2 = _inputs(B, H, L, dtype, device, True, seed=n)
                p = ConvParams(n, 0, L, out_dtype=dtype)
                r = resolve(u, k, D, g1, g2, p)
                row["plan"] = explain(u, k, D, g1, g2, p)
                row["dot_dtype"] = None if isinstance(r, str) else str(r.plan.dot_dtype).removeprefix("torch.")
                launches, fallbacks = sum(LAUNCHES.values()), sum(FALLBACKS.values())
                out = convfuse.fftconv(u, k, D, g1, g2, kernel="triton")
                row["triton_launches"] = sum(LAUNCHES.values()) - launches
                row["fallbacks"] = sum(FALLBACKS.values()) - fallbacks
                cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(device)
                (out.float() * cot).sum().backward()
                ref_in = [t.detach().double().requires_grad_() for t in (u, k, D, g1, g2)]
                ref = gated_conv_fp64(*ref_in)
                (ref * cot.double()).sum().backward()
                row["max_rel_err"] = _rel(out, ref)
                row["grad_rel_err"] = max(_rel(a.grad, b.grad) for a, b in zip((u, k, D, g1, g2), ref_in))
                # under the interpreter bf16 dots are wrong, so the launcher runs fp32 dots there
                want = "float32" if (dry and name == "bf16") else str(dtype).removeprefix("torch.")
                row["ok"] = (row["dot_dtype"] == want and row["fallbacks"] == 0 and row["triton_launches"] >= 1
                             and row["max_rel_err"] <= tol[name] and row["grad_rel_err"] <= tol[name])
            except Exception as e:  # noqa: BLE001  (a failed check is a row, not the end of the run)
                row.update(ok=False, error=f"{type(e).__name__}: {e}"[:400])
            row["s"] = round(time.perf_counter() - t0, 2)
            record(row)
        record(ptx_row(name, _ptx_files() - before, dry))


def gated_conv_fp64(u, k, D, g1, g2):
    torch = _torch()
    L = u.shape[-1]
    ue = u * g1
    y = torch.fft.irfft(torch.fft.rfft(ue, n=2 * L) * torch.fft.rfft(k, n=2 * L), n=2 * L)[..., :L]
    return (y + ue * D) * g2


def _cache_dir() -> Path:
    return Path(os.environ["TRITON_CACHE_DIR"])


def _ptx_files() -> set[Path]:
    if "TRITON_CACHE_DIR" not in os.environ:
        return set()
    return set(_cache_dir().rglob("*.ptx"))


MMA = re.compile(r"\b(?:wgmma\.mma_async\.sync|mma\.sync)\.aligned\.[a-z0-9.]*")


def ptx_row(name: str, files: set[Path], dry: bool) -> dict:
    """Which matrix instructions the kernels compiled for this dtype's checks contain."""
    row = {"phase": "ptx", "dtype": name, "kernels": len(files)}
    if dry:
        row.update(ok=True, note="interpreter: nothing compiled, no PTX to read")
        return row
    found: dict[str, int] = {}
    for f in files:
        for m in MMA.finditer(f.read_text(errors="replace")):
            found[m.group(0)] = found.get(m.group(0), 0) + 1
    want = {"fp16": ".f16", "bf16": ".bf16"}[name]
    half = [i for i in found if want + "." in i + "."]
    row.update(instructions=sorted(found), half_dot_instructions=len(half), ok=bool(half))
    if not half:
        row["error"] = f"no mma/wgmma with {want} operands in the {len(files)} kernels compiled for the {name} checks"
    return row


# ---- phase 2: the benchmark


def fit_H(n: int, B: int, H: int, mode: str, device: str) -> int:
    torch = _torch()
    if device != "cuda":
        return H
    free, _ = torch.cuda.mem_get_info()
    budget = 0.6 * free
    while H > 1 and B * H * n * EAGER_BYTES_PER_SAMPLE[mode] > budget:
        H //= 2
    return H


def bench_case(n, B, H, name, mode, device, target_s, inductor) -> dict:
    torch = _torch()
    import convfuse
    from convfuse.backends.triton_monarch import FALLBACKS, LAUNCHES, explain, select
    from convfuse.spec import ConvParams

    dtype = getattr(torch, {"fp16": "float16", "bf16": "bfloat16"}[name])
    L = n // 2
    grad = mode == "fwd+bwd"
    args = _inputs(B, H, L, dtype, device, grad, seed=n)
    gy = torch.randn(B, H, L, generator=torch.Generator().manual_seed(2)).to(device=device, dtype=dtype)
    fused = lambda u, k, D, g1, g2: convfuse.fftconv(u, k, D, g1, g2, kernel="triton")  # noqa: E731
    contestants = {"eager": gated_conv, "convfuse": fused}
    if inductor is not None:
        contestants["inductor"] = inductor

    def call(fn):
        if not grad:  # the inputs need no gradient: no graph is recorded
            return lambda: fn(*args)

        def step():
            for a in args:
                a.grad = None
            fn(*args).backward(gy)
        return step

    row = {"phase": "bench", "n": n, "L": L, "B": B, "H": H, "dtype": name, "mode": mode}
    with torch.no_grad():
        ref = gated_conv(*[a.detach() for a in args])
        launches, fallbacks = sum(LAUNCHES.values()), sum(FALLBACKS.values())
        out = fused(*[a.detach() for a in args])
        row["triton_launches"] = sum(LAUNCHES.values()) - launches
        row["fallbacks"] = sum(FALLBACKS.values()) - fallbacks
        row["max_rel_err_vs_eager"] = _rel(out, ref)
        row["plan"] = explain(args[0], args[1], args[2], args[3], args[4], ConvParams(n, 0, L, out_dtype=dtype))
        del ref, out
    for cname, fn in contestants.items():
        f = call(fn)
        row[f"{cname}_ms"] = time_ms(f, device, target_s)
        row[f"{cname}_peak_mb"] = peak_mb(f, device)
    if n in select.THREE_LEVEL_SIZES and mode == "fwd":
        # the same call through the outer passes (three launches, an fp32 buffer): which path wins
        saved = set(select.THREE_LEVEL_SIZES)
        select.THREE_LEVEL_SIZES.discard(n)
        try:
            row["convfuse_outer_ms"] = time_ms(call(fused), device, target_s)
        finally:
            select.THREE_LEVEL_SIZES.update(saved)
    row["speedup_vs_eager"] = row["eager_ms"] / row["convfuse_ms"]
    if "inductor_ms" in row:
        row["speedup_vs_inductor"] = row["inductor_ms"] / row["convfuse_ms"]
    if row.get("eager_peak_mb") and row.get("convfuse_peak_mb"):
        row["memory_saving_vs_eager"] = row["eager_peak_mb"] / row["convfuse_peak_mb"]
    row["ok"] = row["fallbacks"] == 0 and row["triton_launches"] >= 1 and row["max_rel_err_vs_eager"] < 6e-2
    return row


FLASHFFTCONV_H100 = {256: 5.64, 1024: 7.93, 4096: 6.64, 8192: 5.42, 16384: 2.45, 32768: 3.22, 1 << 20: 1.74}


def bench_rows(record, device, sizes, B, H0, target_s, deadline, use_inductor) -> None:
    torch = _torch()
    compiled = {}
    for n in sizes:
        for name in DTYPES:
            for mode in MODES:
                if time.perf_counter() > deadline:
                    record({"phase": "bench", "n": n, "dtype": name, "mode": mode, "skipped": "time budget spent"})
                    continue
                if use_inductor and (name, mode) not in compiled:
                    compiled[(name, mode)] = torch.compile(gated_conv, dynamic=True)
                H = fit_H(n, B, H0, mode, device)
                t0 = time.perf_counter()
                while True:
                    try:
                        row = bench_case(n, B, H, name, mode, device, target_s, compiled.get((name, mode)))
                        break
                    except torch.cuda.OutOfMemoryError as e:  # noqa: PERF203
                        torch.cuda.empty_cache()
                        if H == 1:
                            row = {"phase": "bench", "n": n, "B": B, "H": H, "dtype": name, "mode": mode,
                                   "ok": False, "error": f"OOM at H=1: {e}"[:300]}
                            break
                        H //= 2
                    except Exception as e:  # noqa: BLE001
                        row = {"phase": "bench", "n": n, "B": B, "H": H, "dtype": name, "mode": mode,
                               "ok": False, "error": f"{type(e).__name__}: {e}"[:400]}
                        break
                row["flashfftconv_h100_speedup"] = FLASHFFTCONV_H100.get(n) if mode == "fwd" else None
                row["s"] = round(time.perf_counter() - t0, 2)
                record(row)
                if device == "cuda":
                    torch.cuda.empty_cache()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, Triton interpreter, tiny sizes: the whole script")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--sizes", type=int, nargs="*", help="benchmark FFT sizes n (L = n/2)")
    ap.add_argument("--check-sizes", type=int, nargs="*", help="phase 1 FFT sizes")
    ap.add_argument("--B", type=int, default=None)
    ap.add_argument("--H", type=int, default=None)
    ap.add_argument("--budget-s", type=float, default=400.0, help="stop starting benchmark rows after this (s)")
    ap.add_argument("--target-s", type=float, default=None, help="time spent per timing (s)")
    ap.add_argument("--no-inductor", action="store_true")
    ap.add_argument("--inductor", action="store_true", help="dry run: include Inductor (C++ compiles, minutes)")
    ap.add_argument("--skip-check", action="store_true")
    a = ap.parse_args(argv)
    t_start = time.perf_counter()

    if a.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"
    else:
        # a fresh Triton cache: every kernel compiles in this run, and its PTX is there to read
        os.environ.setdefault("TRITON_CACHE_DIR", tempfile.mkdtemp(prefix="convfuse-triton-"))
    torch = _torch()
    import triton

    if a.dry_run:
        device, name = "cpu", "dry-run-cpu"
        sizes, check_sizes = a.sizes or DRY_SIZES, a.check_sizes or DRY_CHECK_SIZES
        B, H, target_s, use_inductor = a.B or 2, a.H or 2, a.target_s or 0.0, a.inductor
    else:
        if not torch.cuda.is_available():
            print("bench/gpu_check.py needs a CUDA GPU (none found); `--dry-run` runs it here on the CPU under "
                  "the Triton interpreter", file=sys.stderr)
            return 2
        device, name = "cuda", re.sub(r"[^A-Za-z0-9._-]+", "-", torch.cuda.get_device_name()).strip("-")
        sizes, check_sizes = a.sizes or SIZES, a.check_sizes or CHECK_SIZES
        B, H, target_s, use_inductor = a.B or 64, a.H or 768, a.target_s or 0.15, not a.no_inductor
    meta = {"device": name, "torch": torch.__version__, "triton": triton.__version__,
            "run": time.strftime("%Y-%m-%dT%H:%M:%S")}
    path = a.out / f"gpu-{name}.jsonl"
    record = Recorder(path, meta)
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        record({"phase": "device", "capability": list(torch.cuda.get_device_capability()),
                "memory_gb": round(props.total_memory / 2**30, 1),
                "smem_per_block_optin": getattr(props, "shared_memory_per_block_optin", None)})
    if not a.skip_check:
        check_rows(record, device, check_sizes, a.dry_run, t_start + 0.4 * a.budget_s)
    bench_rows(record, device, sizes, B, H, target_s, t_start + a.budget_s, use_inductor)
    record({"phase": "done", "failures": record.failures, "s": round(time.perf_counter() - t_start, 1)})
    print(f"appended to {path}")
    return 0 if record.failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
