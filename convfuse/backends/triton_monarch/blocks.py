"""Overlap-save through the fused kernel, for short kernels (PartialKernel), and the model that picks it.

A linear convolution (``convfuse.spec.is_linear``) with a K-tap kernel needs no transform of the
whole size n: frames of a fused size N >= 2K, each yielding B = N - K + 1 output samples, give
the same result.  The math is the CPU path's (cpu_algos.py): every window is written with the
primitive z[m] = sum_{i<K} x[m + i] w[i] (x zero outside [0, Lx)) over segments [a, b):

- convolution: c[q] = z[q - K + 1] (w = flip(k)): one segment [start - K + 1, end - K + 1);
- correlation: c[q] = z[q] (w = k) for q < n - K + 1, the negative lags c[q] = z[q - n] beyond:
  up to two segments.

A frame of N input samples x[m0, m0 + N) gives z[m0, m0 + B) as a window of its size-N cyclic
result: a convolution with k read at [K - 1, N) (the first K - 1 samples wrap), a correlation
with k read at [0, B).  So frame f of a segment starts at input sample a + f*B and writes output
samples [out + f*B, ...): the fused kernel addresses the frames in place from the row's own
offset (``FRAMES``), no frame is copied, and each program pairs two frames sharing a kernel.

``choose`` compares the block-wise launch with the one-transform plan under a roofline model
(``launch_seconds``), stated here until a GPU measures both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from convfuse.backends.triton_monarch.plan import (
    FUSED_SIZES, CallPlan, MonarchPlan, OuterPlan, dot_work, plan_for,
)
from convfuse.spec import is_linear, linear_segments

# Roofline constants: an H100 SXM's datasheet peaks (dense tensor-core rates, HBM3 bandwidth).
# Not measured: they only rank the two ways of running one call, both on the same GPU.
DOT_FLOPS = {torch.float16: 989e12, torch.bfloat16: 989e12, torch.float32: 989e12 / 6,  # tf32x3: 3 tf32 passes
             torch.float64: 67e12}
HBM_BYTES_PER_S = 3.35e12


@dataclass(frozen=True)
class Frames:
    N: int  # fused size of each frame
    K: int  # kernel taps
    block: int  # output samples per frame, N - K + 1
    window: int  # where a frame's outputs start in its cyclic result: K - 1 (convolution) or 0
    segments: tuple[tuple[int, int, int], ...]  # (a, b, out): z[a:b] -> output samples [out, out + b - a)

    def counts(self) -> tuple[int, ...]:
        """Frames per row, per segment."""
        return tuple(-(-(b - a) // self.block) for a, b, _ in self.segments)


def launch_seconds(r: CallPlan, Lu: int, length: int, in_bytes: int, out_bytes: int) -> float:
    """Modelled seconds per output row: dot flops at DOT_FLOPS plus GPU-memory bytes at
    HBM_BYTES_PER_S, summed (no overlap assumed).  Bytes: the input row (every frame's N samples
    for overlap-save), the output row, and for outer plans the complex buffer between passes;
    operands both ways read alike (gates, D, the kernel spectrum) are left out."""
    plan = r.plan
    csize = 16 if plan.compute_dtype == torch.float64 else 8  # a complex sample of the buffer
    flops_per_s = DOT_FLOPS.get(plan.dot_dtype, DOT_FLOPS[torch.float32])
    if r.frames is not None:
        frames = sum(r.frames.counts())
        macs = frames * dot_work(r.m, plan.n1, plan.n2, False, False, 0) / 2  # two rows per program
        moved = frames * r.m * in_bytes + length * out_bytes
    elif isinstance(plan, MonarchPlan):
        macs = dot_work(r.m, plan.n1, plan.n2, r.half_in, r.half_out, r.cols) / 2
        moved = min(Lu, r.m) * in_bytes + length * out_bytes
    else:
        i = plan.inner
        kin = plan.n0 // 2 if r.half_in else plan.n0
        rout = plan.n0 // 2 if r.half_out else plan.n0
        mid = 2 * plan.n0b if plan.n0b > 1 else 0
        inner = dot_work(r.m, i.n1, i.n2, False, False, r.cols) // (4 * r.m)
        macs = 4 * r.m * (kin + mid + inner + rout) / 2
        passes = 2 + 2 + (4 if plan.n0b > 1 else 0)  # writes and reads of the buffer, per pair
        moved = min(Lu, r.m) * in_bytes + length * out_bytes + passes * r.m * csize / 2
    return 2 * macs / flops_per_s + moved / HBM_BYTES_PER_S


def choose(full: CallPlan | str, n: int, Lu: int, K: int, start: int, length: int, conj: bool,
           compute: torch.dtype, dot: torch.dtype, device: torch.device, in_bytes: int, out_bytes: int,
           ) -> CallPlan | str:
    """The overlap-save plan when the call is linear, a fused size N >= 2K below the full
    plan's size exists, and the model says it is cheaper than ``full``; else ``full``."""
    if K < 1 or length < 1 or not is_linear(n, Lu, K, start, length):
        return full
    limit = full.m if isinstance(full, CallPlan) else None
    best, best_s = full, (launch_seconds(full, Lu, length, in_bytes, out_bytes)
                          if isinstance(full, CallPlan) else float("inf"))
    segs = linear_segments(n, K, start, length, conj)
    for N in FUSED_SIZES:
        if N < 2 * K or (limit is not None and N >= limit):
            continue
        plan = plan_for(N, compute, device, dot)
        if isinstance(plan, str) or isinstance(plan, OuterPlan):
            continue
        frames = Frames(N, K, N - K + 1, 0 if conj else K - 1, segs)
        cand = CallPlan(plan, N, False, False, frames=frames)
        s = launch_seconds(cand, Lu, length, in_bytes, out_bytes)
        if s < best_s:
            best, best_s = cand, s
    return best


def describe(r: CallPlan) -> str:
    f = r.frames
    per_row = sum(f.counts())
    return (f"overlap-save: {per_row} frame{'s' if per_row != 1 else ''} per row of N={f.N} "
            f"({'x'.join(map(str, r.plan.radices))}), {f.block} outputs each, window [{f.window}, "
            f"{f.window + f.block}) of each frame, K={f.K}"
            + (f", {len(f.segments)} segments (negative lags)" if len(f.segments) > 1 else ""))
