"""CPU benchmark: convfuse's fused operator vs eager torch.fft, torch.compile's default and the FFT floor.

    python bench/cpu.py              # full run: op level, peak memory, Hyena model; writes bench/results/cpu.*
    python bench/cpu.py --quick      # fewer repeats, smaller model run
    python bench/cpu.py --rounds 31  # more op-level rounds (a noisy machine)
    python bench/cpu.py --calibrate  # measure the CPU cost model's constants (convfuse/backends/cpu_cost.py)
    python bench/cpu.py --small-only --no-model --no-memory   # the small sizes (16..1024 samples) alone
    python bench/cpu.py --sparse     # FrequencySparse: dense vs sparse bins, 1 thread; writes bench/results/cpu-sparse.md

Op level, per shape (B, H, L), a causal Hyena-style convolution (n = 2L, skip term D):
- eager:    the convolution as published code writes it (rfft/rfft/multiply/irfft/slice/skip)
- compile:  torch.compile(eager function), the default backend (Inductor)
- convfuse: torch.ops.convfuse.fft_conv(..., kernel="cpu"), the same function fused
- auto:     torch.compile(eager function, backend="convfuse") with the default kernel="auto": what a
            user gets, so a site the cost model predicts no gain for stays eager code (Inductor's)
- floor:    the library rfft + irfft alone of every row, at size n (or the cheaper size convfuse
            runs, which computes the same: 8192 for 8190), on cache-resident blocks of rows, both
            cores, per round the faster of two ways to use them (per-thread blocks on the convfuse
            pool, or one block at a time on torch's OpenMP threads), with the fastest library there
            (torch.fft, MKL on kept descriptors, ducc0 where installed; the table names it; see
            make_floor).
"kernel as input": ``constant_kernel=False`` (a kernel computed in the graph), transformed in every
call; "kernel constant": an unchanged buffer with ``constant_kernel=True``, its cached spectrum used
after comparing the kernel with the copy it was computed from, every call (the sound default,
convfuse/backends/cpu_cache.py); "kernel frozen": the same behind ``convfuse.freeze`` (the opt-in
that trusts it unchanged: no comparison), so const - frozen is what the comparison costs.  Each
variant is timed with torch.utils.benchmark (Timer.blocked_autorange: a block of calls sized to
``--min-run-time``, its median per call); rounds are interleaved (each round times every variant
once, the order rotating) and the medians of the rounds reported, because this 2-core machine is
shared and noisy.  The load average at the start and end is printed with the table.

Peak memory: each variant is run in a fresh subprocess with glibc's mmap threshold fixed at 64 KiB
(so freed buffers go back to the OS); after a warm-up call the kernel's peak-RSS counter is reset
(/proc/self/clear_refs = 5) and peak extra memory = VmHWM after one call - VmRSS before it
(output included).  This sees every allocation of every thread, torch's or not.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import convfuse  # noqa: E402,F401  registers the op and backend="convfuse"
from convfuse.backends import cpu_cache  # noqa: E402
from convfuse.backends.cpu import describe_cpu_algorithm  # noqa: E402
from convfuse.backends.cpu_cost import fft_size  # noqa: E402
from convfuse.backends.cpu_exec import TILE_BYTES, run_tiles  # noqa: E402

SHAPES = [(4, 256, 1024), (4, 256, 4096), (2, 256, 16384), (1, 64, 131072)]
# Small calls, 16 to 1024 samples: where a call's fixed cost decides (issue 15); no peak memory.
SMALL_SHAPES = [(1, 8, 16), (1, 8, 64), (1, 8, 256), (4, 32, 512), (4, 64, 1024)]
# Between them and the goals' shapes: a few MiB of spectra, where one block of library calls and
# cache-sized tiles trade places (issue 15: the tiled path was 0.68-0.81x eager here).
MEDIUM_SHAPES = [(2, 64, 2048), (4, 32, 4096), (1, 64, 8192)]
# Not among the goals' shapes: the length a language model trains on (inputs tokens[:, :-1]),
# where Hyena's n = 2L = 8190 = 2*3^2*5*7*13 and convfuse transforms at 8192 instead.
EXTRA_SHAPES = [(4, 256, 4095)]
VARIANTS = ["eager", "compile", "convfuse_input", "convfuse_const", "convfuse_frozen", "auto", "floor"]
RESULTS = ROOT / "bench" / "results"


def fftconv(u, k, D):
    L = u.shape[-1]
    n = 2 * L
    k_f = torch.fft.rfft(k, n=n) / n
    u_f = torch.fft.rfft(u, n=n)
    y = torch.fft.irfft(u_f * k_f, n=n, norm="forward")[..., :L]
    return y + u * D.unsqueeze(-1)


def convfuse_op(u, k, D, constant=False):
    """What the rewrite emits for fftconv; constant=True when k is module state (a parameter/buffer)."""
    L = u.shape[-1]
    return torch.ops.convfuse.fft_conv(u, k, D.unsqueeze(-1), None, None, 2 * L, 0, L, 1.0, 0.0, False,
                                       u.dtype, "cpu", constant_kernel=constant)


def make_floor(u):
    """rfft + irfft of every row on cache-resident blocks, at the cheaper of n = 2L and the size
    convfuse runs (cpu_cost.fft_size: the same result, e.g. 8192 for 8190), with the fastest
    library at this size (``FLOOR_LIBRARIES``: torch.fft, which commits an MKL descriptor per
    call; MKL on kept descriptors, convfuse's own transforms; ducc0 where it is installed), both
    ways of using both cores: ``pool`` (each convfuse pool thread transforming its own block,
    one intra-op thread each) and ``caller`` (one block at a time on torch's own OpenMP
    threads).  A round's floor is the faster of the two in that round (after another OpenMP op
    libgomp's workers spin for ~10 ms and slow the pool; under load OpenMP suffers instead).

    The block size and library are the fastest of a few for each, measured once here, so this is
    a floor: the ratio to it measures convfuse's overhead, not its choice of library.
    """
    rows, L = u.numel() // u.shape[-1], u.shape[-1]
    n = floor_size(L)
    tile = max(1, TILE_BYTES // ((n // 2 + 1) * 8))
    fns, chosen = {}, {}
    for mode, sizes in (("pool", {tile, 1, 4, 16, 64}), ("caller", {2 * tile, 4, 16, 64, 256})):
        best = None
        for lib in floor_libraries():
            for block in sorted(b for b in sizes if b <= rows):
                fn = _floor_with(rows, L, block, mode == "pool", lib)
                fn()
                t = min(_rounds({"f": fn}, 2, min_run_time=0.05)["f"])
                if best is None or t < best[0]:
                    best = (t, fn, lib)
        fns[f"floor_{mode}"] = best[1]
        chosen[mode] = best[2]
    FLOOR_CHOICES[(rows, L)] = chosen
    return fns


FLOOR_CHOICES: dict = {}  # (rows, L) -> {mode: library}: the table says which library was the floor


def floor_libraries() -> list[str]:
    from convfuse.backends import cpu_algos

    libs = ["torch.fft"] + (["kept MKL"] if cpu_algos.kept_descriptors() else [])
    try:
        import ducc0  # noqa: F401  (not a convfuse dependency: bench/fft_libs.py)

        libs.append("ducc0")
    except ImportError:
        pass
    return libs


def floor_size(L):
    return fft_size(2 * L, L, L, 0, L, False)  # n = 2L unless a cheaper size computes the same


def _floor_with(rows, L, block, pool, lib="torch.fft"):
    n = floor_size(L)
    threads = 1 if pool else torch.get_num_threads()
    if lib == "ducc0":
        import ducc0
        import numpy as np

        def transform(b):  # a pre-padded (block, n) array: ducc0 does not pad
            spectrum = ducc0.fft.r2c(b, axes=(1,), nthreads=threads)
            return ducc0.fft.c2r(spectrum, axes=(1,), lastsize=n, forward=False, inorm=2, nthreads=threads)

        make_block = lambda: np.pad(np.random.randn(block, L).astype(np.float32), ((0, 0), (0, n - L)))  # noqa: E731
    else:
        from convfuse.backends.cpu_algos import irfft, rfft

        fwd, inv = (rfft, irfft) if lib == "kept MKL" else (lambda x, m: torch.fft.rfft(x, n=m),
                                                              lambda X, m: torch.fft.irfft(X, n=m))
        transform = lambda b: inv(fwd(b, n), n)  # noqa: E731
        make_block = lambda: torch.randn(block, L)  # noqa: E731
    blocks = [make_block() for _ in range(torch.get_num_threads() if pool else 1)]
    count = -(-rows // block)

    def make_worker():
        b = blocks.pop() if blocks else make_block()  # this thread's own block
        blocks.insert(0, b)
        return lambda unit: transform(b)

    return lambda: run_tiles([[i] for i in range(count)], make_worker, None if pool else 1)


def _merge_floors(per_variant: dict) -> dict:
    """floor_pool and floor_caller -> floor: per round, the faster of the two."""
    pool, caller = per_variant.pop("floor_pool"), per_variant.pop("floor_caller")
    per_variant["floor"] = [min(a, b) for a, b in zip(pool, caller)]
    return per_variant


def make_variants(B, H, L, compiled, floor=True, auto=None):
    g = torch.Generator().manual_seed(0)
    u = torch.randn(B, H, L, generator=g)
    k_in = torch.randn(H, L, generator=g)
    k_const = k_in.clone()
    k_frozen = cpu_cache.freeze(k_in.clone())
    D = torch.randn(H, generator=g)
    fns = {
        "eager": lambda: fftconv(u, k_in, D),
        "compile": lambda: compiled(u, k_in, D),
        "convfuse_input": lambda: convfuse_op(u, k_in, D),
        "convfuse_const": lambda: convfuse_op(u, k_const, D, constant=True),
        "convfuse_frozen": lambda: convfuse_op(u, k_frozen, D, constant=True),
        **({"auto": lambda: auto(u, k_in, D)} if auto is not None else {}),
        **(make_floor(u) if floor else {}),
    }
    # Kernel as an input: a new version before every call, outside the timer (as a training step would).
    before = {name: (lambda: k_in.add_(0.0)) for name in ("eager", "compile", "convfuse_input")}
    return fns, before, (u, k_in, D)


def time_shape(B, H, L, repeats, compiled, auto=None, min_run_time=0.2):
    fns, before, (u, k, D) = make_variants(B, H, L, compiled, auto=auto)
    with torch.no_grad():
        want = fftconv(u, k, D)
        for name in ("compile", "convfuse_input", "convfuse_const", "convfuse_frozen", "auto"):
            if name not in fns:
                continue
            err = ((fns[name]() - want).abs().max() / want.abs().max()).item()
            assert err < 1e-4, (name, err)
        for fn in fns.values():  # warm-up: compile, plans, thread pool, cache (second sighting)
            fn(), fn()
        times = _merge_floors(_rounds(fns, repeats, min_run_time=min_run_time))
    return {name: statistics.median(t) for name, t in times.items()}, {name: min(t) for name, t in times.items()}


def _rounds(fns, repeats, before=None, min_run_time=0.2):
    """Interleaved rounds of torch.utils.benchmark measurements (ms per call, one per round per
    variant: the median of a ``blocked_autorange`` block); the order rotates each round so no
    variant always follows the same one.  ``before``: per variant, a call run before each
    measurement (outside the timer)."""
    from torch.utils.benchmark import Timer

    names = list(fns)
    times = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            if before and name in before:
                before[name]()
            m = Timer("fn()", globals={"fn": fns[name]}, num_threads=torch.get_num_threads()).blocked_autorange(
                min_run_time=min_run_time)
            times[name].append(m.median * 1e3)
    return times


def peak_memory(B, H, L, variant):
    """Peak extra MiB of one call, in a fresh subprocess (see the module docstring)."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
    code = f"import sys; sys.argv=['x']; sys.path.insert(0, {str(ROOT)!r}); import bench.cpu as b; " \
           f"print(b._peak_child({B}, {H}, {L}, {variant!r}))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return float(out.stdout.strip().splitlines()[-1])


def _status_kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1])
    raise KeyError(field)


def _peak_child(B, H, L, variant):
    compiled = torch.compile(fftconv, dynamic=False) if variant == "compile" else None
    fns, before, _ = make_variants(B, H, L, compiled, floor=False)
    fn = fns[variant]
    with torch.no_grad():
        for _ in range(3):
            before.get(variant, lambda: None)()
            fn()
        before.get(variant, lambda: None)()
        import gc

        gc.collect()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = _status_kib("VmRSS")
        out = fn()
        peak = _status_kib("VmHWM")
        del out
    return (peak - base) / 1024


def hyena_model(quick, repeats):
    """Hyena LM from examples/hyena.py: eager vs torch.compile default vs backend="convfuse"."""
    sys.path.insert(0, str(ROOT / "examples"))
    from examples.hyena import example

    B, L = (2, 1024) if quick else (4, 4096)
    model, (tokens,) = example(batch=B, seqlen=L)
    variants = {
        "eager": model,
        "compile": torch.compile(model),
        "convfuse": torch.compile(model, backend="convfuse"),
    }
    result = {"shape": {"batch": B, "seqlen": L}}
    with torch.no_grad():
        want = model(tokens)
        for name, fn in variants.items():
            err = ((fn(tokens) - want).abs().max() / want.abs().max()).item()
            assert err < 1e-3, (name, err)
        result["forward_ms"] = _interleaved({n: (lambda f=f: f(tokens)) for n, f in variants.items()}, repeats)

    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    train = {name: torch.compile(model, backend=b) if b else model
             for name, b in (("eager", None), ("compile", "inductor"), ("convfuse", "convfuse"))}

    def step(fn):
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(fn(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())
        loss.backward()
        opt.step()

    for fn in train.values():
        step(fn), step(fn)  # compile forward and backward
    result["train_step_ms"] = _interleaved({n: (lambda f=f: step(f)) for n, f in train.items()}, repeats)
    return result


def _interleaved(fns, repeats):
    return {name: statistics.median(t) for name, t in _rounds(fns, repeats, min_run_time=0.5).items()}


def _libs(row) -> str:
    chosen = row.get("floor_library") or {}
    return f" ({', '.join(sorted(set(chosen.values())))})" if chosen else ""


def write_outputs(rows, model, meta):
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cpu.json").write_text(json.dumps({"meta": meta, "op": rows, "model": model}, indent=2))
    lines = [
        "| B, H, L | algorithm | eager ms | compile ms | convfuse ms (k input) | convfuse ms (k const) | auto ms | floor ms "
        "| vs eager (input / const / auto) | vs compile (input / auto) | vs floor (input / const) "
        "| peak MiB eager / compile / convfuse |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        t, m = r["ms"], r.get("peak_mib", {})
        mem = " / ".join(f"{m[v]:.0f}" if v in m else "-" for v in ("eager", "compile", "convfuse_input"))
        auto = t.get("auto")
        auto_ms = f"{auto:.3f}" if auto else "-"
        auto_e = f" / {t['eager'] / auto:.2f}x" if auto else ""
        auto_c = f" / {t['compile'] / auto:.2f}x" if auto else ""
        lines.append(
            f"| {r['B']}, {r['H']}, {r['L']} | {r['algorithm']} | {t['eager']:.3f} | {t['compile']:.3f} "
            f"| {t['convfuse_input']:.3f} | {t['convfuse_const']:.3f} | {auto_ms} | {t['floor']:.3f}{_libs(r)} "
            f"| {t['eager'] / t['convfuse_input']:.2f}x / {t['eager'] / t['convfuse_const']:.2f}x{auto_e} "
            f"| {t['compile'] / t['convfuse_input']:.2f}x{auto_c} "
            f"| {t['convfuse_input'] / t['floor']:.2f} / {t['convfuse_const'] / t['floor']:.2f} | {mem} |"
        )
    if model:
        earlier = " (from an earlier run: --no-model)" if model.get("from_earlier_run") else ""
        lines += ["", f"Hyena LM (examples/hyena.py), batch {model['shape']['batch']}, seqlen "
                      f"{model['shape']['seqlen']}{earlier}:", "", "| | eager ms | compile ms | convfuse ms | vs eager | vs compile |",
                  "|---|---|---|---|---|---|"]
        for key in ("forward_ms", "train_step_ms"):
            t = model[key]
            lines.append(f"| {key[:-3]} | {t['eager']:.1f} | {t['compile']:.1f} | {t['convfuse']:.1f} "
                         f"| {t['eager'] / t['convfuse']:.2f}x | {t['compile'] / t['convfuse']:.2f}x |")
    lines += ["", "Constant kernel, the sound cache (compared every call) / frozen (`convfuse.freeze`, not compared), ms "
                  "and vs eager: " + "; ".join(
        f"{r['L']}: {r['ms']['convfuse_const']:.2f} / {r['ms']['convfuse_frozen']:.2f} "
        f"({r['ms']['eager'] / r['ms']['convfuse_const']:.2f}x / {r['ms']['eager'] / r['ms']['convfuse_frozen']:.2f}x)"
        for r in rows)]
    lines += ["", "Best of the rounds (ms, eager / compile / convfuse input / convfuse const / convfuse frozen / floor): "
                  + "; ".join(
        f"{r['L']}: " + " / ".join(f"{r['min_ms'][v]:.3f}" for v in VARIANTS if v in r['min_ms'])
        for r in rows if "min_ms" in r)]
    load = ", ".join(f"{meta[k][0]:.1f}" for k in ("loadavg_start", "loadavg_end") if k in meta)
    lines += ["", f"{meta['machine']}; {meta['repeats']} interleaved rounds (order rotating) of "
                  "torch.utils.benchmark blocked_autorange, medians; "
                  f"1-min load average at start, end: {load} (a shared machine); torch {meta['torch']}.",
              "Peak extra memory: VmHWM - VmRSS around one warm call in a fresh subprocess, output included."]
    (RESULTS / "cpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    _plot(rows)


def _plot(rows):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    labels = [f"{r['B']},{r['H']},{r['L']}" for r in rows]
    width = 0.8 / len(VARIANTS)
    for i, v in enumerate(VARIANTS):
        speed = [r["ms"]["eager"] / r["ms"][v] for r in rows]
        ax.bar([j + i * width for j in range(len(rows))], speed, width, label=v)
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(rows))], labels)
    ax.set_xlabel("B, H, L (causal, n = 2L)")
    ax.set_ylabel("speedup over eager torch.fft")
    ax.set_title("convfuse CPU fused FFT convolution, 2 cores")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "cpu.png", dpi=120)


def calibrate(quick):
    """Time each CPU algorithm forced over a grid; print per-unit costs for cpu_cost.py."""
    from convfuse.backends.cpu import fft_conv_cpu
    from convfuse.spec import ConvParams

    rows = 512
    grid = ([(1024, K) for K in (4, 8, 16, 32, 64, 128)] + [(16384, K) for K in (16, 64, 256, 1024, 2048, 4096)]
            + [(256, K) for K in (4, 16, 64)])
    out = []
    for L, K in grid:
        u, k = torch.randn(rows // 64, 64, L), torch.randn(64, K)
        p = ConvParams(2 * L, 0, L)
        fns = {a: (lambda a=a: fft_conv_cpu(u, k, None, None, None, p, force=a))
               for a in ("fft", "direct", "ols") if not (a == "direct" and K > 256)}
        t = {a: ms / rows * 1e3 for a, ms in _interleaved(fns, 3 if quick else 7).items()}  # us per row
        out.append({"L": L, "K": K, "us_per_row": t, "model": describe_cpu_algorithm(2 * L, L, K, 0, L, rows)})
        print(out[-1], flush=True)
    for L in (1024, 4096, 16384, 131072):  # what the fitted model picks, to state the crossovers
        picks, last = [], None
        for K in sorted({2**e for e in range(1, 18)} | {3 * 2**e for e in range(1, 16)}):
            if K > L:
                break
            name = describe_cpu_algorithm(2 * L, L, K, 0, L, 1).split("(")[0]
            if name != last:
                picks.append(f"K>={K}: {name}")
                last = name
        print(f"model, causal L={L}: " + ", ".join(picks))
    return out


SPARSE_NS = [4096, 8192, 16384, 32768, 65536]
SPARSE_ROWS = (2, 32)


def sparse_table(rounds: int) -> str:
    """FrequencySparse on CPU (issue 15 item 3): M of the n/2+1 bins kept, causal L = n/2, constant
    kernel (its masked spectrum cached), one thread, thread CPU time, interleaved rounds, medians.
    Columns: the operator dense (all bins), the operator sparse (the pruned transform where the
    cost model prunes, cpu_cost.pruned_size: only the kept bins computed; else the kept bins'
    product over a zero tail), and the M-bin product in plain torch as one library call each
    way (untiled, no skip term, no cache comparison)."""
    from torch.utils import benchmark

    from convfuse.backends.cpu_cost import choose_plan, describe

    torch.set_num_threads(1)
    load0 = os.getloadavg()
    lines = ["| n | M | sparse algorithm | op dense ms | op sparse ms | torch M-bin ms | sparse vs dense "
             "| sparse vs torch M-bin |", "|---" * 8 + "|"]
    for n in SPARSE_NS:
        L = n // 2
        u = torch.randn(*SPARSE_ROWS, L)
        k = torch.randn(SPARSE_ROWS[1], L)
        for M in (n // 128, n // 64, n // 16, n // 4):
            cpu_cache.clear()
            Km = torch.fft.rfft(k, n=n)[..., :M].clone()

            def op(bins, u=u, k=k, n=n):
                return torch.ops.convfuse.fft_conv(u, k, None, None, None, n, 0, n // 2, 1.0, 0.0, False,
                                                   torch.float32, "cpu", True, bins)

            def torch_m_bins(u=u, Km=Km, M=M, n=n):
                U = torch.fft.rfft(u, n=n)[..., :M]
                return torch.fft.irfft(U.mul_(Km), n=n)[..., : n // 2]

            expected = torch_m_bins()
            err = ((op(M) - expected).abs().max() / expected.abs().max()).item()
            assert err < 1e-4, (n, M, err)
            fns = {"dense": lambda: op(0), "sparse": lambda: op(M), "torch": torch_m_bins}
            for fn in fns.values():
                fn()
                fn()
            timers = {name: benchmark.Timer("fn()", globals={"fn": fn}, num_threads=1, timer=time.thread_time)
                      for name, fn in fns.items()}
            times = {name: [] for name in fns}
            for r in range(rounds):
                order = list(timers.items())
                for name, timer in (order if r % 2 == 0 else order[::-1]):
                    times[name].append(timer.timeit(3).median * 1e3)
            m = {name: statistics.median(t) for name, t in times.items()}
            algo = describe(choose_plan(n, L, L, 0, L, False, 1.0, None, M))
            lines.append(f"| {n} | {M} | {algo} | {m['dense']:.3f} | {m['sparse']:.3f} | {m['torch']:.3f} "
                         f"| {m['dense'] / m['sparse']:.2f}x | {m['torch'] / m['sparse']:.2f}x |")
            print(lines[-1], flush=True)
    load1 = os.getloadavg()
    head = (f"FrequencySparse on CPU: B, H = {SPARSE_ROWS}, causal (L = n/2), constant kernel, torch threads 1, "
            f"{rounds} interleaved rounds, medians of torch.utils.benchmark samples (thread CPU time, 3 calls "
            f"each); load average (1, 5, 15 min) at start {load0[0]:.1f} {load0[1]:.1f} {load0[2]:.1f}, "
            f"end {load1[0]:.1f} {load1[1]:.1f} {load1[2]:.1f}; torch {torch.__version__}.")
    return head + "\n\n" + "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few repeats, small model run")
    ap.add_argument("--calibrate", action="store_true", help="measure the cost model's constants and exit")
    ap.add_argument("--no-model", action="store_true", help="skip the Hyena model-level part")
    ap.add_argument("--no-memory", action="store_true", help="skip peak-memory subprocesses")
    ap.add_argument("--no-extra", action="store_true", help="only the goals' four shapes (not L = 4095)")
    ap.add_argument("--rounds", type=int, default=0, help="op-level rounds (default 15, 5 with --quick)")
    ap.add_argument("--small-only", action="store_true", help="only the small sizes (16..1024 samples)")
    ap.add_argument("--no-small", action="store_true", help="skip the small sizes")
    ap.add_argument("--min-run-time", type=float, default=0.2, help="seconds per blocked_autorange measurement")
    ap.add_argument("--sparse", action="store_true", help="FrequencySparse: dense vs sparse bins, and exit")
    args = ap.parse_args(argv)
    if args.sparse:
        text = sparse_table(args.rounds or (5 if args.quick else 11))
        print(text)
        if not args.quick:
            RESULTS.mkdir(parents=True, exist_ok=True)
            (RESULTS / "cpu-sparse.md").write_text("# FrequencySparse on CPU (bench/cpu.py --sparse)\n\n" + text)
        return 0
    if args.calibrate:
        calibrate(args.quick)
        return 0
    repeats = args.rounds or (5 if args.quick else 15)
    meta = {"machine": f"{os.cpu_count()} cores, torch threads {torch.get_num_threads()}",
            "torch": torch.__version__, "repeats": repeats, "loadavg_start": os.getloadavg()}
    rows = []
    shapes = [] if args.no_small else list(SMALL_SHAPES)
    if not args.small_only:
        shapes += MEDIUM_SHAPES + SHAPES + ([] if args.no_extra else EXTRA_SHAPES)
    for B, H, L in shapes:
        torch._dynamo.reset()
        compiled = torch.compile(fftconv, dynamic=False)
        auto = torch.compile(fftconv, backend="convfuse", dynamic=False)
        ms, best = time_shape(B, H, L, repeats, compiled, auto, args.min_run_time)
        row = {"B": B, "H": H, "L": L, "ms": ms, "min_ms": best, "algorithm": describe_cpu_algorithm(2 * L, L, L, 0, L, B * H),
               "floor_library": FLOOR_CHOICES.get((B * H, L))}
        if not args.no_memory and (B, H, L) not in SMALL_SHAPES:
            row["peak_mib"] = {v: peak_memory(B, H, L, v) for v in VARIANTS if v not in ("floor", "convfuse_frozen", "auto")}
        rows.append(row)
        print(json.dumps(row), flush=True)
    model = None if args.no_model else hyena_model(args.quick, 5 if args.quick else 10)
    if model is None and (RESULTS / "cpu.json").exists():  # keep the last model-level run's numbers
        model = json.loads((RESULTS / "cpu.json").read_text()).get("model")
        if model:
            model["from_earlier_run"] = True
    meta["loadavg_end"] = os.getloadavg()
    write_outputs(rows, model, meta)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
