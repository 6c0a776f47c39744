"""GPU benchmark of the fused FFT convolution: eager torch.fft vs torch.compile vs convfuse (Triton).

FlashFFTConv's setting: a gated causal convolution y = (irfft(rfft(u*g1, 2L) * rfft(k, 2L))[:L] + u*g1*D) * g2
on u of shape (B, H, L) with B=64, H=768, fp16 and bf16 (fp32 compute), FFT size n = 2L from 256 up to
4M as GPU memory allows (B, then H, shrink for the largest sizes and each row records the B and H it
ran), plus the ungated fp32 convolution.  Three contestants per row, one process:

    eager      the function above in plain PyTorch (cuFFT)
    inductor   torch.compile(fn) with the default backend
    convfuse   torch.compile(fn, backend="convfuse", options={"kernel": "triton"})

Policy section (issue 6): the operator itself (torch.ops.convfuse.fft_conv, forward only) on a causal
convolution u (B, H, L) * k (H, L) at n = 2L, per L: dense, FrequencySparse at keep = 1/4 and 1/8 (the
operator's spectrum_bins) and PartialKernel with K = 1024 taps (the operator sees k[..., :K]), each
on Triton and on cuFFT (the reference implementation: torch.fft with the same mask or the same
short kernel), with the plan Triton ran (launch.explain) and ratios against dense Triton and dense cuFFT.

Writes bench/results/gpu-<device>.json ({"device", "torch", "triton", "rows": [...], "policy_rows": [...]}),
a markdown table next to it, and a plot of speedup (eager_ms / convfuse_ms) against n.

    python bench/gpu.py                     # on a CUDA machine
    python bench/gpu.py --dry-run --out /tmp/b   # CPU smoke test under TRITON_INTERPRET=1, tiny sizes
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FULL_SIZES = [2**p for p in range(8, 23)]  # 256 .. 4M
DRY_SIZES = [256, 512, 4096]
POLICY_L = [4096, 16384, 131072]  # n = 2L; issue 6's shape is the last: L = 131072, B = 1, H = 64, K = 1024
DRY_POLICY_L = [512]
POLICY_KEEP = (0.25, 0.125)
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def gated_conv(u, k, D, g1, g2):
    # u, g1, g2: (B, H, L); k: (H, L); D: (H, 1).  FFT size n = 2L: a causal (linear) convolution.
    L = u.shape[-1]
    ue = u.float() * g1.float()
    y = torch.fft.irfft(torch.fft.rfft(ue, n=2 * L) * torch.fft.rfft(k.float(), n=2 * L), n=2 * L)[..., :L]
    return ((y + ue * D.float()) * g2.float()).to(u.dtype)


def plain_conv(u, k):
    L = u.shape[-1]
    return torch.fft.irfft(torch.fft.rfft(u, n=2 * L) * torch.fft.rfft(k, n=2 * L), n=2 * L)[..., :L]


def fit_shape(n: int, B: int, H: int, dtype: torch.dtype, budget: int) -> tuple[int, int]:
    """Shrink B (then H) until eager's working set (~ 24 bytes per complex/fp32 sample of 2L) fits."""
    per_row = n * (24 + 4 * torch.finfo(dtype).bits // 8)
    while B * H * per_row > budget and B > 1:
        B //= 2
    while B * H * per_row > budget and H > 1:
        H //= 2
    return B, H


def time_ms(fn, args, device: str, reps: int) -> float:
    if device == "cuda":
        from triton.testing import do_bench

        return float(do_bench(lambda: fn(*args), warmup=25, rep=100))
    fn(*args)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn(*args)
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def peak_bytes(fn, args, device: str) -> int | None:
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn(*args)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def bench_row(n, B, H, dtype_name, gated, device, reps, with_inductor, inner) -> dict:
    importlib.import_module("convfuse")  # registers the backend name and the operator
    from convfuse.backends.triton_monarch import FALLBACKS, LAUNCHES, explain
    from convfuse.spec import ConvParams

    dtype = DTYPES[dtype_name]
    L = n // 2
    g = torch.Generator(device="cpu").manual_seed(n)
    mk = lambda *s: torch.randn(*s, generator=g).to(device=device, dtype=dtype)  # noqa: E731
    if gated:
        args = (mk(B, H, L), mk(H, L) / L, mk(H, 1), mk(B, H, L), mk(B, H, L))
        fn = gated_conv
    else:
        args = (mk(B, H, L), mk(H, L) / L)
        fn = plain_conv
    torch._dynamo.reset()
    opts = {"kernel": "triton"} if inner == "inductor" else {"kernel": "triton", "inner": inner}
    fused = torch.compile(fn, backend="convfuse", options=opts, dynamic=False)
    row = {"n": n, "B": B, "H": H, "dtype": dtype_name, "gated": gated}
    ref = fn(*args)
    launches, fallbacks = sum(LAUNCHES.values()), sum(FALLBACKS.values())
    out = fused(*args)
    # how the convfuse call ran: fused Triton launches vs reference fallbacks (0/0: the pass did not rewrite)
    row["triton_launches"] = sum(LAUNCHES.values()) - launches
    row["fallbacks"] = sum(FALLBACKS.values()) - fallbacks
    row["max_rel_err"] = float((out.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-30))
    row["plan"] = explain(args[0], args[1], p=ConvParams(n, 0, L))
    row["eager_ms"] = time_ms(fn, args, device, reps)
    row["convfuse_ms"] = time_ms(fused, args, device, reps)
    row["inductor_ms"] = None
    if with_inductor:
        ind = torch.compile(fn, dynamic=False)
        ind(*args)
        row["inductor_ms"] = time_ms(ind, args, device, reps)
    row["speedup"] = row["eager_ms"] / row["convfuse_ms"]
    pe, pc = peak_bytes(fn, args, device), peak_bytes(fused, args, device)
    row["peak_mem_ratio"] = (pc / pe) if pe and pc is not None else None
    return row


def policy_rows(L: int, B: int, H: int, taps: int, dtype_name: str, device: str, reps: int) -> list[dict]:
    """One row per (policy, implementation) at n = 2L; times of the operator call alone."""
    from convfuse.backends.reference import fft_conv_reference
    from convfuse.backends.triton_monarch import FALLBACKS, LAUNCHES, explain
    from convfuse.ops import fft_conv
    from convfuse.spec import ConvParams

    dtype, n = DTYPES[dtype_name], 2 * L
    g = torch.Generator(device="cpu").manual_seed(L)
    u = torch.randn(B, H, L, generator=g).to(device=device, dtype=dtype)
    k = (torch.randn(H, L, generator=g) / L).to(device=device, dtype=dtype)
    cases = [("dense", k, 0)]
    cases += [(f"freq keep={keep:g}", k, math.ceil(keep * (n // 2 + 1))) for keep in POLICY_KEEP]
    if taps < L:
        cases.append((f"partial K={taps}", k[..., :taps], 0))
    rows, base = [], {}
    for policy, kk, bins in cases:
        p = ConvParams(n, 0, L, spectrum_bins=bins)
        op = lambda u, kk, kernel, p=p: fft_conv(  # noqa: E731
            u, kk, None, None, None, p.n, p.start, p.length, p.scale, p.n_power, p.conj_kernel, dtype, kernel,
            False, p.spectrum_bins)
        ref = fft_conv_reference(u, kk, None, None, None, p)
        for impl, kernel in (("triton", "triton"), ("cufft" if device == "cuda" else "torch.fft", "reference")):
            row = {"L": L, "n": n, "B": B, "H": H, "dtype": dtype_name, "policy": policy, "impl": impl, "bins": bins,
                   "taps": kk.shape[-1]}
            launches, fallbacks = sum(LAUNCHES.values()), sum(FALLBACKS.values())
            out = op(u, kk, kernel)
            if impl == "triton":
                row["triton_launches"] = sum(LAUNCHES.values()) - launches
                row["fallbacks"] = sum(FALLBACKS.values()) - fallbacks
                row["plan"] = explain(u, kk, p=p)
            scale = ref.double().abs().max().clamp_min(1e-30)
            row["max_rel_err"] = float((out.double() - ref.double()).abs().max() / scale)
            row["ms"] = time_ms(lambda u, kk: op(u, kk, kernel), (u, kk), device, reps)
            peak = peak_bytes(lambda u, kk: op(u, kk, kernel), (u, kk), device)
            row["peak_mb"] = peak / 2**20 if peak is not None else None
            base.setdefault(("dense", kernel), row["ms"])
            rows.append(row)
    for row in rows:
        row["vs_dense_triton"] = base[("dense", "triton")] / row["ms"]  # > 1: faster than dense Triton
        row["vs_dense_cufft"] = base[("dense", "reference")] / row["ms"]  # torch.fft on CPU (dry run)
    return rows


def _table(rows: list[dict], cols: list[str]) -> list[str]:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c)
            cells.append("-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(result: dict) -> str:
    head = f"GPU: {result['device']} - torch {result['torch']} - triton {result['triton']}\n\n"
    cols = ["n", "B", "H", "dtype", "gated", "eager_ms", "inductor_ms", "convfuse_ms", "speedup", "peak_mem_ratio"]
    lines = _table(result["rows"], cols)
    if result.get("policy_rows"):
        lines += ["", "Policies (operator call alone, forward; ratios > 1 are faster than the dense baseline):", ""]
        lines += _table(result["policy_rows"], ["L", "n", "B", "H", "dtype", "policy", "impl", "ms", "vs_dense_triton",
                                                "vs_dense_cufft", "peak_mb", "max_rel_err", "plan"])
    return head + "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot", file=sys.stderr)
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    series = sorted({(r["dtype"], r["gated"]) for r in result["rows"]})
    for dtype, gated in series:
        rs = [r for r in result["rows"] if (r["dtype"], r["gated"]) == (dtype, gated) and r.get("speedup")]
        ax.plot([r["n"] for r in rs], [r["speedup"] for r in rs], marker="o", label=f"{dtype}{' gated' if gated else ''}")
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("FFT size n (L = n/2)")
    ax.set_ylabel("speedup over eager torch.fft")
    ax.set_title(f"convfuse (Triton Monarch) on {result['device']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def compile_report(sizes, out: Path, arch: int = 90) -> Path:
    """Compile every kernel each plan launches for sm<arch> (no GPU needed) and tabulate its resources.

    Registers, stack (spills) and shared memory per kernel come from the real compiler (Triton's
    bundled ptxas, read back with cuobjdump): what it can say about the GPU path without a GPU.
    """
    import re
    import subprocess
    import tempfile

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from convfuse import config
    from convfuse.backends.triton_monarch import kernels, kernels_outer as ko
    from convfuse.backends.triton_monarch.plan import (
        OUTER_BJ, OUTER_KB, OuterPlan, plan_for, sparse_factors, stacked_skip,
    )

    from convfuse.backends.triton_monarch import tuning

    def warps_of(name: str, n: int, inner_n: int, dot: str) -> int:
        # the warps the launcher runs this kernel at (tuning.options without a measurement)
        kind = "fused_frames" if name.startswith("fused frames") else name.split()[0]
        return tuning.table_entry(kind, inner_n if kind == "inner" else n, DTYPES[dot])[0] \
            if config.triton_warps == 4 else config.triton_warps

    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    compute_ptrs = ("z_ptr", "k_ptr", "tw_ptr", "otw_ptr")
    epi = dict(HAS_PRE=True, HAS_D=True, HAS_POST=True)
    seen: dict[tuple, dict] = {}
    rows = []
    for n in sizes:
        for dot in ("fp16", "bf16", "fp32"):
            plan = plan_for(n, torch.float32, "cpu", DTYPES[dot])
            if isinstance(plan, str):
                rows.append({"n": n, "dot": dot, "kernel": "-", "note": plan})
                continue
            prec = plan.input_precision
            # a causal call: L = n/2, window [0, n/2); the fused kernels skip halves of 8 rows too
            half = plan.can_skip_half or not isinstance(plan, OuterPlan) and stacked_skip(plan.n1)
            if isinstance(plan, OuterPlan):
                i, m = plan.inner, plan.n2
                launches = [("outer_fwd", ko.OUTER_FWD, dict(N0=plan.n0, M=m, BJ=OUTER_BJ, KB=OUTER_KB, HALF_IN=half,
                                                                HAS_PRE=True, PREC=prec))]
                if plan.n0b > 1:
                    launches.append(("mid", ko.MID, dict(N0A=plan.n0, N0B=plan.n0b, M=i.n, BJ=OUTER_BJ, KB=OUTER_KB,
                                                          INVERSE=False, PREC=prec)))
                launches.append(("inner", ko.INNER, dict(NSEQ=n // i.n, NTW=plan.ntw, M1=i.n1, M2=i.n2, W=i.n2, PREC=prec)))
                launches.insert(-1 if plan.inner.n2 == 32 else len(launches),
                                ("outer_inv", ko.OUTER_INV, dict(N0=plan.n0, M=m, BJ=OUTER_BJ, KB=OUTER_KB,
                                                                 HALF_OUT=half, PREC=prec, **epi)))
                if plan.inner.n2 == 32:  # a frequency-sparse call keeps 16 of the 32 inner columns
                    launches.append(("inner sparse W=16", ko.INNER, dict(NSEQ=n // i.n, NTW=plan.ntw, M1=i.n1, M2=i.n2,
                                                                          W=16, PREC=prec)))
            else:
                fused = dict(HALF_IN=half, HALF_OUT=half, FRAMES=False, PREC=prec, **epi)
                launches = [("fused", kernels.MONARCH_CONV2, dict(N1=plan.n1, N2=plan.n2, W=plan.n2, **fused)),
                            ("fused frames", kernels.MONARCH_CONV2,
                             dict(N1=plan.n1, N2=plan.n2, W=plan.n2, **{**fused, "HALF_IN": False, "HALF_OUT": False,
                                                                         "FRAMES": True}))]
                for n1, n2 in sparse_factors(n):  # frequency-sparse: 16 kept columns, every factorization
                    if n2 > 16:
                        h = half and (n1 // 2 >= 16 or stacked_skip(n1))
                        launches.append((f"fused sparse {n1}x{n2} W=16", kernels.MONARCH_CONV2,
                                         dict(N1=n1, N2=n2, W=16, **{**fused, "HALF_IN": h, "HALF_OUT": h})))
            for name, builds, consts in launches:
                fn = builds[False]
                warps = warps_of(name, n, plan.inner.n if isinstance(plan, OuterPlan) else n, dot)
                key = (name, dot, warps, tuple(sorted(consts.items())))
                if key not in seen:
                    sig = {a: "constexpr" if a in consts else
                           "*i64" if a.endswith("off_ptr") or a == "pair_ptr" else
                           "*fp32" if a in compute_ptrs and not (a == "z_ptr" and dot != "fp32") else
                           f"*{dot}" if a.endswith("_ptr") else "i32" for a in fn.arg_names}
                    k = triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", arch, 32),
                                       options={"num_warps": warps})
                    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
                        f.write(k.asm["cubin"])
                        f.flush()
                        usage = subprocess.run([str(cuobjdump), "-res-usage", f.name], capture_output=True,
                                               text=True).stdout
                    num = lambda tag: int(m.group(1)) if (m := re.search(tag + r":(\d+)", usage)) else None  # noqa: E731
                    seen[key] = {"regs": num("REG"), "stack_B": num("STACK"), "shared_B": k.metadata.shared}
                rows.append({"n": n, "dot": dot, "kernel": name, "warps": warps, **seen[key], "note": ""})
                print(json.dumps(rows[-1]), flush=True)
    lines = [f"Triton kernels compiled for sm{arch} (at the warps they launch with: tuning.TABLE), triton "
             f"{triton.__version__}: registers per thread, stack bytes per thread (spills), shared memory per block.\n",
             "| n | dot dtype | kernel | warps | regs | stack B | shared B | note |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['n']} | {r['dot']} | {r['kernel']} | {r.get('warps', '-')} | {r.get('regs', '-')} | "
                     f"{r.get('stack_B', '-')} | {r.get('shared_B', '-')} | {r['note']} |")
    path = out / f"triton-sm{arch}-resources.md"
    replace_table(path, lines[0].split(" (")[0], lines)
    print(f"wrote {path}")
    return path


def replace_table(path: Path, head: str, lines: list[str]) -> None:
    """Put ``lines`` (a table, optionally after one caption line) in place of the block of ``path``
    that starts with the first line beginning with ``head`` and runs to the end of its table: the
    file's other sections (hand-written readings, the other reports) stay as they are."""
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.read_text().splitlines() if path.exists() else []
    at = next((i for i, line in enumerate(old) if line.startswith(head)), None)
    if at is None:
        old = old + ([""] if old else [])
        at = end = len(old)
    else:
        end = at + 1
        while end < len(old) and not old[end].startswith("|"):  # caption, blank line
            end += 1
        while end < len(old) and old[end].startswith("|"):
            end += 1
    path.write_text("\n".join(old[:at] + lines + old[end:]) + "\n")


def _resources(fn, sig, consts, arch: int, warps: int, stages: int | None = None) -> dict:
    """Registers, stack (spills) and shared memory of one kernel compiled for sm<arch>, and its PTX's
    matrix instructions, from Triton's bundled ptxas and cuobjdump (no GPU needed)."""
    import re
    import subprocess
    import tempfile

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    opts = {"num_warps": warps, **({"num_stages": stages} if stages is not None else {})}
    k = triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", arch, 32), options=opts)
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(k.asm["cubin"])
        f.flush()
        usage = subprocess.run([str(cuobjdump), "-res-usage", f.name], capture_output=True, text=True).stdout
    num = lambda tag: int(m.group(1)) if (m := re.search(tag + r":(\d+)", usage)) else None  # noqa: E731
    ptx = k.asm.get("ptx", "")
    mma = sorted({f"mma.sync {shape} {t}" for shape, t in re.findall(r"\bmma\.sync\.aligned\.(m\d+n\d+k\d+)\.row\.col\.\w+\.(\w+)", ptx)}
                 | {f"wgmma {t}" for t in re.findall(r"\bwgmma\.mma_async\.sync\.aligned\.m\d+n\d+k\d+\.\w+\.(\w+)", ptx)})
    return {"regs": num("REG"), "stack_B": num("STACK"), "shared_B": k.metadata.shared, "mma": ", ".join(mma) or "-"}


def backward_report(sizes, out: Path, archs=(90, 80)) -> Path:
    """The backward pass (kernels_grad.GRAD2, causal and cyclic; kernels_grad3.GRAD3 at the
    three-level sizes), its d k inverse (GRAD_DK, GRAD3_DK) and the kernel-spectrum builders
    (kernels_spectrum.SPECTRUM2 per fused size, SPECTRUM3 per three-level size below 32K) for each target, at the warps their launchers use, fp32 operands with the
    configured fp32 dot precision (the backward and the spectra always run in the compute dtype);
    the table replaces the one in triton-sm90-resources.md's backward section."""
    from convfuse import config
    from convfuse.backends.triton_monarch import fused3, grad, grad3, kernels_grad as kg, kernels_grad3 as kg3
    from convfuse.backends.triton_monarch import kernels_spectrum as ks
    from convfuse.backends.triton_monarch.plan import FACTORS

    prec = config.triton_fp32_dot
    sig_of = lambda fn, consts: {  # noqa: E731
        a: "constexpr" if a in consts else "*i64" if a.endswith("off_ptr") or a in ("pair_ptr", "grp_ptr") else
        "*fp32" if a.endswith("_ptr") else "i32" for a in fn.arg_names}
    launches = []
    for n in sizes:
        if n in FACTORS:
            n1, n2 = FACTORS[n]
            half = n1 // 2 >= 16
            w = grad.GRAD_WARPS.get(n, 4)
            for how, cut in (("causal", half), ("cyclic", False)):
                if how == "cyclic" or half:
                    consts = dict(N1=n1, N2=n2, G_HALF=cut, U_HALF=cut, DU_HALF=cut, H_HALF=cut, NEED_U=True,
                                  NEED_K=True, NEED_H=True, CONJ=False, PREC=prec)
                    launches.append((n, f"grad2 {n1}x{n2} {how} ({w} warps)", kg.GRAD2[False], consts, w))
            launches.append((n, f"grad_dk {n1}x{n2}", kg.GRAD_DK[False],
                             dict(N1=n1, N2=n2, DK_HALF=half, CONJ=True, PREC=prec), config.triton_warps))
            launches.append((n, f"spectrum2 {n1}x{n2}", ks.SPECTRUM2[False],
                             dict(N1=n1, N2=n2, W=n2, RIN=n1 // 2 if half else n1, CONJ=False, PREC=prec),
                             config.triton_warps))
        elif n in fused3.FACTORS3:
            n1, n2, n3 = fused3.FACTORS3[n]
            half = n1 // 2 >= 16
            w = grad3.GRAD3_WARPS[n]
            how3 = f"{w} warps, d k sum in {'registers' if grad3.GRAD3_DK_REGS[n] else 'memory'}" + \
                (", Zg stashed" if grad3.GRAD3_STASH[n] else "")
            for how, cut in (("causal", half), ("cyclic", False)):
                if how == "cyclic" or half:  # the three-level plans always run tf32x3 fp32 dots
                    consts = dict(N1=n1, N2=n2, N3=n3, G_HALF=cut, U_HALF=cut, DU_HALF=cut, H_HALF=cut,
                                  NEED_U=True, NEED_K=True, NEED_H=True, DK_REGS=grad3.GRAD3_DK_REGS[n],
                                  STASH=grad3.GRAD3_STASH[n], PREC="tf32x3")
                    launches.append((n, f"grad3 {n1}x{n2}x{n3} {how} ({how3})", kg3.GRAD3[False], consts, w))
            launches.append((n, f"grad3_dk {n1}x{n2}x{n3} ({grad3.GRAD3_DK_WARPS[n]} warps)", kg3.GRAD3_DK[False],
                             dict(N1=n1, N2=n2, N3=n3, DK_HALF=half, CONJ=True, PREC="tf32x3"),
                             grad3.GRAD3_DK_WARPS[n]))
            if n < 32768:  # 32K three-level spectra are torch's (spectrum.py)
                w = fused3.WARPS3[n]
                launches.append((n, f"spectrum3 {n1}x{n2}x{n3} ({w} warps)", ks.SPECTRUM3[False],
                                 dict(N1=n1, N2=n2, N3=n3, RIN=n1 // 2 if half else n1, CONJ=False, PREC=prec), w))
    head = "| n | kernel | " + " | ".join(f"sm{a} regs | sm{a} stack B | sm{a} shared B" for a in archs)
    lines = [head + f" | sm{archs[0]} matrix instructions |", "|" + "---|" * (3 + 3 * len(archs))]
    for n, name, fn, consts, warps in launches:
        res = [_resources(fn, sig_of(fn, consts), consts, a, warps) for a in archs]
        cells = [c for r in res for c in (r["regs"], r["stack_B"], r["shared_B"])]
        lines.append(f"| {n} | {name} | " + " | ".join(map(str, cells)) + f" | {res[0]['mma']} |")
        print(lines[-1], flush=True)
    path = out / "triton-sm90-resources.md"
    replace_table(path, "| n | kernel | sm", lines)
    print(f"wrote {path}")
    return path


def spectrum_report(out: Path, archs=(90, 80)) -> Path:
    """The outer plans' kernel-spectrum builder (kernels_spectrum.SPECTRUM_OUTER) per (N0, M1, M2)
    order it serves, dense and with 16 kept columns where the last radix is 32, fp32 with the
    configured fp32 dot precision, at tuning.TABLE's warps and stages; its own table in
    triton-sm90-resources.md."""
    from convfuse import config
    from convfuse.backends.triton_monarch import kernels_spectrum as ks, tuning
    from convfuse.backends.triton_monarch.plan import OUTER, FACTORS

    fn = ks.SPECTRUM_OUTER[False]
    head = "| n | spectrum_outer | warps, stages | " + " | ".join(f"sm{a} regs | sm{a} stack B | sm{a} shared B" for a in archs)
    lines = [head + f" | sm{archs[0]} matrix instructions |", "|" + "---|" * (4 + 3 * len(archs))]
    for n, (n0, n0b, m) in sorted(OUTER.items()):
        if n0b > 1:
            continue  # four-radix orders: torch builds them (spectrum.py says why)
        m1, m2 = FACTORS[m]
        warps, stages = tuning.table_entry("spectrum_outer", n, torch.float32)
        for w in (m2, 16) if m2 > 16 else (m2,):
            consts = dict(N0=n0, M1=m1, M2=m2, W=w, RIN0=n0 // 2 if n0 >= 32 else n0, KB0=16, BJ=min(256, m),
                          G=max(1, min(16, 4096 // m)), CONJ=False, PREC=config.triton_fp32_dot)
            sig = {a: "constexpr" if a in consts else "*i64" if a.endswith("off_ptr") else
                   "*fp32" if a.endswith("_ptr") else "i32" for a in fn.arg_names}
            res = [_resources(fn, sig, consts, a, warps, stages) for a in archs]
            cells = [c for r in res for c in (r["regs"], r["stack_B"], r["shared_B"])]
            lines.append(f"| {n} | {n0}x{m1}x{m2}{f' W={w}' if w < m2 else ''} | {warps}, {stages} | "
                         + " | ".join(map(str, cells)) + f" | {res[0]['mma']} |")
            print(lines[-1], flush=True)
    path = out / "triton-sm90-resources.md"
    replace_table(path, "| n | spectrum_outer |", lines)
    print(f"wrote {path}")
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU smoke test under TRITON_INTERPRET=1 with tiny sizes")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--sizes", type=int, nargs="*", help="FFT sizes n (default 256..4M, or 256 512 dry)")
    ap.add_argument("--B", type=int, default=None)
    ap.add_argument("--H", type=int, default=None)
    ap.add_argument("--no-inductor", action="store_true", help="skip the torch.compile default baseline")
    ap.add_argument("--reps", type=int, default=3, help="timing repetitions on CPU (CUDA uses do_bench)")
    ap.add_argument("--compile-report", action="store_true",
                    help="no timing: compile every plan's kernels for sm90 (no GPU needed) and write their resources")
    ap.add_argument("--kernels", choices=("forward", "backward", "spectrum", "all"), default="forward",
                    help="with --compile-report: the forward plans' table, the backward/spectrum table "
                         "(sm90 and sm80), the outer plans' spectrum table (sm90 and sm80), or all; each "
                         "replaces only its own table in the file")
    ap.add_argument("--policy-L", type=int, nargs="*",
                    help="signal lengths L of the policy section (n = 2L; default 4096 16384 131072, or 512 dry; "
                         "none: skip the section)")
    ap.add_argument("--taps", type=int, default=None, help="PartialKernel taps (default 1024, or 32 dry)")
    a = ap.parse_args(argv)

    if a.compile_report:
        from convfuse.backends.triton_monarch.plan import PLAN_SIZES

        if a.kernels in ("forward", "all"):
            compile_report(a.sizes or list(PLAN_SIZES), a.out)
        if a.kernels in ("backward", "all"):
            backward_report(a.sizes or list(PLAN_SIZES), a.out)
        if a.kernels in ("spectrum", "all"):
            spectrum_report(a.out)
        return 0

    if a.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"
        device, sizes = "cpu", a.sizes or DRY_SIZES
        B, H, dtypes, inner = a.B or 2, a.H or 4, ["fp16"], "eager"
        with_inductor = False  # C++ compilation on a small CPU costs minutes and says nothing about GPUs
        name = "dry-run-cpu"
    else:
        if not torch.cuda.is_available():
            print("bench/gpu.py needs a CUDA GPU (none found); run `python bench/gpu.py --dry-run` for a CPU "
                  "smoke test under the Triton interpreter", file=sys.stderr)
            return 2
        device, sizes = "cuda", a.sizes or FULL_SIZES
        B, H, dtypes, inner = a.B or 64, a.H or 768, ["fp16", "bf16"], "inductor"
        with_inductor = not a.no_inductor
        name = torch.cuda.get_device_name().replace(" ", "-")

    import triton

    budget = torch.cuda.get_device_properties(0).total_memory // 4 if device == "cuda" else 1 << 30
    result = {"device": name, "torch": torch.__version__, "triton": triton.__version__, "rows": []}
    configs = [(d, True) for d in dtypes] + [("fp32", False)]
    for n in sizes:
        for dtype_name, gated in configs:
            b, h = fit_shape(n, B, H, DTYPES[dtype_name], budget)
            try:
                row = bench_row(n, b, h, dtype_name, gated, device, a.reps, with_inductor, inner)
            except torch.cuda.OutOfMemoryError as e:  # noqa: PERF203
                row = {"n": n, "B": b, "H": h, "dtype": dtype_name, "gated": gated, "error": f"OOM: {e}"[:200]}
                torch.cuda.empty_cache()
            for key in ("eager_ms", "inductor_ms", "convfuse_ms", "speedup", "peak_mem_ratio"):
                row.setdefault(key, None)
            result["rows"].append(row)
            print(json.dumps(row), flush=True)

    policy_L = a.policy_L if a.policy_L is not None else (DRY_POLICY_L if a.dry_run else POLICY_L)
    taps = a.taps or (32 if a.dry_run else 1024)
    pB, pH, pdtype = (1, 2, "fp32") if a.dry_run else (1, 64, "fp16")
    result["policy_rows"] = []
    for L in policy_L:
        try:
            rows = policy_rows(L, a.B or pB, a.H or pH, taps, pdtype, device, a.reps)
        except torch.cuda.OutOfMemoryError as e:  # noqa: PERF203
            rows = [{"L": L, "n": 2 * L, "error": f"OOM: {e}"[:200]}]
            torch.cuda.empty_cache()
        for row in rows:
            print(json.dumps(row), flush=True)
        result["policy_rows"] += rows

    a.out.mkdir(parents=True, exist_ok=True)
    stem = a.out / f"gpu-{name}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    stem.with_suffix(".md").write_text(markdown(result))
    plot(result, stem.with_suffix(".png"))
    print(f"wrote {stem}.json, .md, .png")
    ok = all(r.get("error") is None and math.isfinite(r.get("max_rel_err", 0.0))
             for r in result["rows"] + result["policy_rows"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
