"""Per-shape choice between the Triton kernels and cuFFT, measured once and cached.

``run_measured`` has the implementation signature.  On the first call for a shape signature
(shapes, strides, dtypes, parameters, device) it times the Triton path and the cuFFT path
(``cufft.run``: torch.fft's cuFFT transforms with the prologue and the epilogue each fused into
one Triton pointwise kernel) and keeps the faster, so a shape never runs slower than cuFFT by
more than the timing noise.  Calls with no
Triton plan go to cuFFT without measuring.  During CUDA-graph capture nothing is timed: an
unmeasured shape runs cuFFT.  ``AUTO_IMPLEMENTATION`` is what kernel="auto" runs on CUDA
(convfuse/backends/dispatch.py).  A Triton failure while measuring means cuFFT for that shape.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import torch
from torch import Tensor

from convfuse.backends.dispatch import Implementation
from convfuse.backends.triton_monarch import cufft, select
from convfuse.spec import ConvParams

log = logging.getLogger("convfuse")
CHOICES: dict[tuple, str] = {}  # shape signature -> "triton" | "cufft"
REPS = 5


def _signature(tensors, p: ConvParams) -> tuple:
    return (p, *((None if t is None else (tuple(t.shape), tuple(t.stride()), t.dtype, t.device)) for t in tensors))


def _time_ms(fn: Callable[[], Tensor], device: torch.device) -> float:
    fn()  # warm-up: compiles the Triton kernel, builds plans and cuFFT plans
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(REPS):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / REPS
    t = time.perf_counter()
    for _ in range(REPS):
        fn()
    return (time.perf_counter() - t) * 1e3 / REPS


def choose(u, k, D, pre_gate, post_gate, p: ConvParams, timer=_time_ms) -> str:
    """"triton" or "cufft" for this call's shape signature, measuring on first sight."""
    key = _signature((u, k, D, pre_gate, post_gate), p)
    choice = CHOICES.get(key)
    if choice is not None:
        return choice
    if isinstance(select.resolve(u, k, D, pre_gate, post_gate, p), str):
        choice = "cufft"
    elif u.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return "cufft"  # cannot time inside a graph capture; decide on a later eager call
    else:
        args = (u, k, D, pre_gate, post_gate, p)
        try:
            t_triton = timer(lambda: select.run(*args), u.device)
        except Exception as exc:  # a kernel that fails to compile or launch here: cuFFT, said once
            log.warning("convfuse: Triton kernels failed for %s (%s: %s); using cuFFT for this shape",
                        key[0], type(exc).__name__, exc)
            t_triton = float("inf")
        t_cufft = timer(lambda: cufft.run(*args), u.device)
        choice = "triton" if t_triton < t_cufft else "cufft"
    CHOICES[key] = choice
    return choice


def run_measured(u: Tensor, k: Tensor, D: Tensor | None, pre_gate: Tensor | None, post_gate: Tensor | None,
                 p: ConvParams) -> Tensor:
    if choose(u, k, D, pre_gate, post_gate, p) == "triton":
        return select.run(u, k, D, pre_gate, post_gate, p)
    return cufft.run(u, k, D, pre_gate, post_gate, p)


AUTO_IMPLEMENTATION = Implementation("triton-or-cufft", run_measured, ("cuda",))
