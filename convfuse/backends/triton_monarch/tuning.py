"""Warps and stages per launch: a per-plan table, chosen once per (kernel, plan, dtype, device), cached.

Triton's ``@triton.autotune`` measures every config on the first call of each key and keeps the
winner; these kernels are built twice (compiled and interpreted, kernels_common.builds) and are
launched by hand, so the same thing is done here, in two steps:

1. ``TABLE``: what the sm90/sm80 compiles say (bench/results/triton-sm90-resources.md: registers,
   spills, shared memory).  Each entry is the (warps, stages) that compiled without spills, or with
   the fewest, and within the shared memory the plan is sized for (plan.SMEM_SM90, grad.GRAD_SMEM,
   fused3.SMEM3 were read at these settings).  Launchers call ``options``.
2. On CUDA only, with ``measuring()`` on (off by default: unmeasured code, no GPU has run it yet),
   the first call of a key times ``CANDIDATES`` around the table's entry with the launcher's own
   closure (the whole call: kernels that rewrite a buffer in place are idempotent only as a chain)
   and keeps the fastest; a candidate the device cannot fit (OutOfResources) is dropped.

``convfuse.config.triton_warps`` (CONVFUSE_TRITON_WARPS) set to anything but its default (4)
overrides the table's warps for every kernel launched through ``options`` (stages stay the
table's): the knob predates the table, and 4 was the warps every kernel used before it.  The
three-level kernels keep fused3.WARPS3 whatever the knob says: fused3.SMEM3, which refuses a plan
on a device with less shared memory, was compiled at those warps.  The choice is cached per key; the
override and ``measuring`` are read per call.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable

import torch

from convfuse import config

# (kernel, n) -> {dot dtype name or "*": (warps, stages)}; stages None: Triton's default (3 on
# CUDA), which matters only for kernels with `for` loops (the outer passes' K chunks).
#   fused 256..1024: no spills at 4 warps in any dot dtype (1024 at 8 warps: 88/174 registers with
#     fp16/fp32 dots against 80/130 at 4); 2048 at 8 warps: 134 registers with fp16 dots (154 at 4),
#     104 B of spills with fp32 dots (264 B at 4), the same shared memory: 8 warps.
#   inner (outer plans): 32x32 is at 255 registers with 4 or 8 warps (fp16 dots, half buffer: 24 B
#     of spills at 4, 16 B at 8; fp32 dots: 904 B and 888 B), the same warps per SM either way
#     (8 x 255 registers fill the register file): no gain the compile can show, so 4, and the
#     GPU measurement decides among CANDIDATES.
#   outer_fwd/outer_inv/mid: 32-174 registers at 4 warps with no spills except fp32 at 128K
#     (outer_fwd, 72 B), kept at 4; their stages are Triton's default (the shared memory in
#     plan.SMEM_SM90 was compiled at it).
#   grad2: the warps grad.py chose from its compiles (grad.GRAD_WARPS).
#   spectrum_outer (kernel spectra of the outer plans' orders, kernels_spectrum.py): with Triton's
#     default stages the outer-pass loop was pipelined into 217-245 KB of shared memory at m = 1024;
#     one stage takes 48 KB, and 8 warps hold the tiles without spills on sm90 (194 registers at
#     64K, 146 at 4K; 4 warps: 255 and 112-344 B of spills).
TABLE: dict[tuple[str, int], dict[str, tuple[int, int | None]]] = {
    **{("fused", n): {"*": (4, None)} for n in (256, 512, 1024)},
    ("fused", 2048): {"*": (8, None)},
    # overlap-save frames at 2048: 8 warps take fewer registers with half dots (150 vs 164) but
    # spill more with fp32 dots (1048 B vs 560 B, 36 KB of shared memory vs 32 KB): 4 there
    ("fused_frames", 2048): {"float32": (4, None), "*": (8, None)},
    **{("inner", m): {"*": (4, None)} for m in (256, 512, 1024)},
    **{("spectrum_outer", n): {"*": (8, 1)} for n in (4096, 8192, 16384, 32768, 65536, 131072)},
}
DEFAULT = (4, None)  # kernels and sizes the table does not name: what every launch used before it
CANDIDATES: tuple[tuple[int, int | None], ...] = ((4, None), (8, None), (8, 2), (16, None))

MEASURE = False
TIMER: Callable[[Callable[[], object]], float] | None = None  # ms of a callable; None: triton's do_bench
_CHOSEN: dict[tuple, tuple[int, int | None]] = {}
TIMED: list[tuple] = []  # keys measured on a GPU (what ran the timing path), for tests and reports


@contextlib.contextmanager
def measuring(enabled: bool = True):
    """Time the candidates on the first CUDA call of each key (as triton.autotune does) while on."""
    global MEASURE
    old, MEASURE = MEASURE, enabled
    try:
        yield
    finally:
        MEASURE = old


def _override() -> int | None:
    default = {f.name: f.default for f in dataclasses.fields(config.Settings)}["triton_warps"]
    return config.triton_warps if config.triton_warps != default else None


def _dot_name(dot: torch.dtype) -> str:
    return str(dot).removeprefix("torch.")


def table_entry(kernel: str, n: int, dot: torch.dtype) -> tuple[int, int | None]:
    if kernel == "grad2":
        from convfuse.backends.triton_monarch import grad

        return grad.GRAD_WARPS.get(n, 4), None
    row = TABLE.get((kernel, n), {})
    return row.get(_dot_name(dot), row.get("*", DEFAULT))


def _as_options(choice: tuple[int, int | None]) -> dict:
    warps, stages = choice
    return {"num_warps": warps, **({"num_stages": stages} if stages is not None else {})}


def options(kernel: str, n: int, dot: torch.dtype, device: torch.device, plan_key: tuple = (),
            run: Callable[[dict], object] | None = None,
            timer: Callable[[Callable[[], object]], float] | None = None) -> dict:
    """Launch options ({"num_warps", ["num_stages"]}) for ``kernel`` of the size-``n`` plan.

    ``plan_key``: whatever else tells the plan apart (radices, causal skips, columns); ``run``: the
    launcher's closure running the whole call with given options (only used to measure: CUDA,
    ``measuring()`` on, first call of the key); ``timer``: ms for a callable (default
    triton.testing.do_bench; tests pass a fake one)."""
    warps = _override()
    key = (kernel, n, plan_key, dot, device)
    choice = _CHOSEN.get(key)
    if choice is None:
        choice = table_entry(kernel, n, dot)
        if run is not None and MEASURE and _may_measure(device):
            choice = _measure(key, choice, run, timer)
            _CHOSEN[key] = choice
        elif run is None or not MEASURE:
            _CHOSEN[key] = choice  # a table entry: nothing better will come for this key unless measured
    if warps is not None:
        choice = (warps, choice[1])
    return _as_options(choice)


def _may_measure(device: torch.device) -> bool:
    # only real GPUs, and never while a CUDA graph is captured (timing would synchronise in it)
    return device.type == "cuda" and not torch.cuda.is_current_stream_capturing()


def _measure(key: tuple, table: tuple[int, int | None], run: Callable[[dict], object],
             timer: Callable[[Callable[[], object]], float] | None) -> tuple[int, int | None]:
    from triton.runtime.errors import OutOfResources

    timer = timer or TIMER
    if timer is None:
        from triton.testing import do_bench

        timer = lambda fn: do_bench(fn, warmup=5, rep=20)  # noqa: E731
    best, best_ms = table, None
    for cand in dict.fromkeys((table, *CANDIDATES)):  # the table's entry first: it wins ties
        opts = _as_options(cand)
        try:
            ms = timer(lambda opts=opts: run(opts))
        except OutOfResources:
            continue
        if best_ms is None or ms < best_ms:
            best, best_ms = cand, ms
    TIMED.append(key)
    return best


def clear() -> None:
    _CHOSEN.clear()
    TIMED.clear()
