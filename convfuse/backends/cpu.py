"""CPU implementation of the fused operator.

FFT convolution on CPU is compute-bound on the FFT itself, and computing the FFT
as matrix multiplies loses 5-19x to the library FFT there (DESIGN.md), so this
path keeps ``torch.fft`` (MKL) and saves the work around it:

- rows run in cache-sized tiles, with prologue (cast, pre-gate), the product,
  window and epilogue (skip, post-gate, cast) fused per tile, on both cores
  (``cpu_exec``); only the output is allocated at full size;
- a constant kernel's prepared spectrum is cached until the kernel changes
  (``cpu_cache``); a non-constant kernel is transformed per tile;
- the algorithm is chosen per shape by a measured cost model (``cpu_cost``):
  one FFT per row, overlap-save, or direct sliding dot products (``cpu_algos``).

The operator's backward calls the same operator (conj_kernel flipped, offset
windows), so everything here serves forward and backward.
"""

from __future__ import annotations

import os
from typing import Callable

import torch
from torch import Tensor

from convfuse.backends import cpu_cache
from convfuse.backends.common import compute_dtype, output_shape
from convfuse.backends.cpu_algos import Plan, compute_tile, prepare
from convfuse.backends.cpu_cost import choose_plan, describe
from convfuse.backends.cpu_exec import Layout, grid_view, make_layout, run_tiles, tiles
from convfuse.spec import ConvParams

# CONVFUSE_CPU_ALGO=fft|direct|ols forces an algorithm where it is valid (tests, benchmarks).
_FORCE_ENV = "CONVFUSE_CPU_ALGO"


def plan_for(p: ConvParams, Lu: int, Lk: int, force: str | None = None) -> Plan:
    force = force or os.environ.get(_FORCE_ENV) or None
    bins = p.kept_bins if p.sparse_spectrum else 0
    return choose_plan(p.n, Lu, Lk, p.start, p.length, p.conj_kernel, p.total_scale, force, bins)


def describe_cpu_algorithm(n: int, L: int, K: int, start: int, length: int, batch_rows: int, bins: int = 0) -> str:
    """The algorithm the CPU cost model picks for a (convolution) call of this shape, e.g.
    ``cpu-fft(n=2048)``, ``cpu-direct(K=16)`` or ``cpu-overlap-save(N=512, block=449, K=64)``."""
    plan = choose_plan(n, L, K, start, length, False, 1.0, bins=bins)
    return f"{describe(plan)} x {batch_rows} rows"


def prepared_kernel_rows(plan: Plan, lay: Layout, dtype: torch.dtype, constant: bool) -> Callable[[], Callable]:
    """A factory of per-thread getters ``(h0, h1) -> prepared kernel rows h0:h1``.

    A constant kernel (only the compiler can prove one: module state read as is) is
    prepared once for all its rows and cached across calls until it changes; otherwise,
    or on its first sighting, each thread prepares the block of rows it works on and
    keeps the last one (a tile takes all rows sharing a kernel block, so a block is
    prepared once per call).
    """
    cached = cpu_cache.lookup(lay.k2, plan.variant(dtype), lambda: prepare(plan, lay.k2, dtype)) if constant else None

    def per_thread() -> Callable[[int, int], Tensor]:
        last: dict[tuple[int, int], Tensor] = {}

        def get(h0: int, h1: int) -> Tensor:
            if cached is not None:
                return cached[h0:h1]
            if (h0, h1) not in last:
                last.clear()
                last[(h0, h1)] = prepare(plan, lay.k2[h0:h1], dtype)
            return last[(h0, h1)]

        return get

    return per_thread


def fft_conv_cpu(
    u: Tensor,
    k: Tensor,
    D: Tensor | None,
    pre_gate: Tensor | None,
    post_gate: Tensor | None,
    p: ConvParams,
    force: str | None = None,
) -> Tensor:
    dtype = compute_dtype(u, k, D, pre_gate, post_gate)
    out_dtype = p.out_dtype or dtype
    shape = output_shape(u, k, pre_gate, p.length)
    out = torch.empty(shape, dtype=out_dtype, device=u.device)
    if out.numel() == 0:
        return out
    Lue = u.shape[-1] if pre_gate is None else max(u.shape[-1], pre_gate.shape[-1])  # broadcast
    if D is not None and Lue != p.length:
        raise ValueError(
            f"convfuse.fft_conv: a skip term needs the output length ({p.length}) "
            f"to equal the input length ({Lue})"
        )
    plan = plan_for(p, Lue, k.shape[-1], force)
    lay = make_layout(shape[:-1], k)
    u3, pg3 = grid_view(u, lay), grid_view(pre_gate, lay)
    D3, post3 = grid_view(D, lay), grid_view(post_gate, lay)
    out3 = out.view(lay.Ko, lay.Hk, p.length)

    kernel_rows = prepared_kernel_rows(plan, lay, dtype, p.constant_kernel)

    def make_worker():
        prepared = kernel_rows()

        def work(unit: list[tuple[int, int, int, int]]) -> None:
            for o0, o1, h0, h1 in unit:
                x = u3[o0:o1, h0:h1].to(dtype)
                if pg3 is not None:
                    x = x * pg3[o0:o1, h0:h1].to(dtype)
                y = compute_tile(plan, x, prepared(h0, h1))
                if D3 is not None:
                    y.addcmul_(x, D3[o0:o1, h0:h1].to(dtype))
                if post3 is not None:
                    y.mul_(post3[o0:o1, h0:h1].to(dtype))
                out3[o0:o1, h0:h1].copy_(y)

        return work

    run_tiles(tiles(lay, plan.row_bytes(dtype), torch.get_num_threads()), make_worker)
    return out
