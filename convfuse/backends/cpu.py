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

from typing import Callable

import torch
from torch import Tensor

from convfuse import config
from convfuse.backends import cpu_cache, cpu_plan
from convfuse.backends.common import (at_least_1d, broadcast_shapes, compute_dtype, output_shape, signal_length,
                                      spectrum_dtype, window)
from convfuse.backends.cpu_algos import (
    Plan, fft_tile, irfft, irfft_rows, linear_tile, lone_row_size, prepare, pruned_applies, pruned_tile, rfft,
    rfft_rows,
)
from convfuse.backends.cpu_cost import cache_pays, choose_plan, describe, use_pool
from convfuse.backends.cpu_exec import (
    Layout, box_rows, empty_output, grid_view, largest_box, layout_from, layout_geometry, run_tiles, tiles,
)
from convfuse.spec import ConvParams


# A call whose rows' complex spectra total at most this many bytes runs as one block of library
# calls on the caller's threads (``CpuCall.fast``): tiles would be one tile anyway.
FAST_BYTES = 4 * 2**20


def plan_for(p: ConvParams, Lu: int, Lk: int, force: str | None = None, rows: int = 0) -> Plan:
    # convfuse.config.cpu_algo (CONVFUSE_CPU_ALGO=fft|direct|ols) forces an algorithm where it is
    # valid (tests, benchmarks); ``rows``: the call's rows, when known (fixed costs per call count)
    force = force or config.cpu_algo
    bins = p.kept_bins if p.sparse_spectrum else 0
    return choose_plan(p.n, Lu, Lk, p.start, p.length, p.conj_kernel, p.total_scale, force, bins, rows)


def _shape_plan(n: int, L: int, K: int, start: int, length: int, bins: int, rows: int = 0) -> Plan:
    return choose_plan(n, L, K, start, length, False, 1.0, config.cpu_algo, bins, rows)


def describe_cpu_algorithm(n: int, L: int, K: int, start: int, length: int, batch_rows: int, bins: int = 0) -> str:
    """The algorithm the CPU cost model picks for a (convolution) call of this shape, e.g.
    ``cpu-fft(n=2048)``, ``cpu-direct(K=16)`` or ``cpu-overlap-save(N=512, block=449, K=64)``."""
    return f"{describe(_shape_plan(n, L, K, start, length, bins, batch_rows))} x {batch_rows} rows"


def cpu_kernel_name(n: int, L: int, K: int, start: int, length: int, bins: int = 0, rows: int = 0) -> str:
    """The report's short name of that algorithm: ``cpu-fft``, ``cpu-direct``,
    ``cpu-overlap-save``, or ``cpu-fft(n=8192)`` when it transforms at another size than n.
    ``rows``: the call's rows where known (the choice counts each algorithm's fixed cost then, as
    a call's own plan does)."""
    plan = _shape_plan(n, L, K, start, length, bins, rows)
    name = describe(plan).split("(")[0]
    return f"{name}(n={plan.fft_n})" if plan.algo == "fft" and plan.fft_n != n else name


def prepared_kernel_rows(plan: Plan, lay: Layout, dtype: torch.dtype, constant: bool) -> KernelRows:
    """The kernel rows in the form ``plan`` multiplies by, for every thread.

    A constant kernel (only the compiler can prove one: module state read as is) is
    prepared once for all its rows and cached across calls until it changes, where a lookup
    costs less than preparing it (``cpu_cost.cache_pays``); otherwise, or on its first
    sighting, each thread prepares the block of rows of the unit it works on
    (``cpu_exec.tiles`` makes units of whole kernel blocks for this).
    """
    use_cache = constant and cache_pays(plan, lay.k2.shape[0])
    cached = cpu_cache.lookup(lay.k2, plan.variant(dtype), lambda: prepare(plan, lay.k2, dtype)) if use_cache else None
    return KernelRows(plan, lay.k2, dtype, cached)


class KernelRows:
    """A call's kernel rows (Hk, Lk) and, for a cached constant kernel, their prepared form."""

    def __init__(self, plan: Plan, k2: Tensor, dtype: torch.dtype, cached: Tensor | None):
        self.plan, self.k2, self.dtype, self.cached = plan, k2, dtype, cached

    def for_unit(self, unit: list[tuple[int, int, int, int]]) -> Callable[[int, int], Tensor]:
        """(h0, h1) -> prepared rows h0:h1 of a box of ``unit``: the unit's whole block of kernel
        rows prepared in one call (or sliced from the cache)."""
        if self.cached is not None:
            return lambda h0, h1: self.cached[h0:h1]
        b0, b1 = min(box[2] for box in unit), max(box[3] for box in unit)
        block = prepare(self.plan, self.k2[b0:b1], self.dtype)
        return lambda h0, h1: block[h0 - b0 : h1 - b0]


def fft_conv_cpu(
    u: Tensor,
    k: Tensor,
    D: Tensor | None,
    pre_gate: Tensor | None,
    post_gate: Tensor | None,
    p: ConvParams,
    force: str | None = None,
) -> Tensor:
    """The forward on CPU tensors: the call's per-shape plan (``cpu_plan``), run.  Called directly
    (tests, benchmarks) it also works on inputs that require grad: the result is a plain tensor
    (the operator's autograd owns gradients)."""
    call = cpu_plan.call_for(("params", p, force or config.cpu_algo, config.cpu_cache_min_us,
                              cpu_plan.signature(u, k, D, pre_gate, post_gate)),
                             u, k, D, pre_gate, post_gate, p, force)
    with torch.no_grad():
        return call(u, k, D, pre_gate, post_gate)


class CpuCall:
    """Everything the shapes, strides, dtypes and parameters of a call decide, decided once:
    the compute and output dtypes, the output shape, the algorithm and FFT size (``Plan``),
    the layout of rows, and whether the call is small enough to go straight to the library
    transforms (``fast``: all its spectra within FAST_BYTES, read per call).  Tiles and threads
    are cut per call on the tiled path, which only large calls take.  ``__call__`` runs one call
    of that shape.

    Building one checks the call as the operator does (a bad call raises and builds nothing)."""

    def __init__(self, u: Tensor, k: Tensor, D, pre_gate, post_gate, p: ConvParams, force: str | None = None):
        dtype = compute_dtype(u, k, D, pre_gate, post_gate)
        self.lift = tuple(t is not None and t.dim() == 0 for t in (D, pre_gate, post_gate))
        D, pre_gate, post_gate = (at_least_1d(t, dtype) for t in (D, pre_gate, post_gate))  # 0-d: (1,)
        self.p, self.dtype, self.out_dtype = p, dtype, p.out_dtype or dtype
        self.shape = output_shape(u, k, pre_gate, p.length)
        self.empty = self.shape.numel() == 0
        self.Lue = signal_length(u, pre_gate)  # broadcast
        if not self.empty and D is not None and self.Lue != p.length:
            raise ValueError(
                f"convfuse.fft_conv: a skip term needs the output length ({p.length}) "
                f"to equal the input length ({self.Lue})"
            )
        self.Lk = k.shape[-1]
        self.kernel_batch = (*k.shape[:-1], -1)  # a prepared (rows, X) kernel viewed as k's batch
        self.batch = self.shape[:-1]
        self.geometry = layout_geometry(self.batch, k.shape)
        Ko, Hk, _ = self.geometry
        self.rows = Ko * Hk
        plan = self.plan = plan_for(p, self.Lue, self.Lk, force, self.rows)
        self.row_bytes = plan.row_bytes(dtype)
        self.padded = plan.fft_n if plan.algo == "fft" else 0
        self.width = min(self.Lue, self.padded) if self.padded else self.Lue
        # Small calls (all rows one tile) skip tiles, row buffers and threads: the library
        # transforms on the whole call, eager's own calls, with the fused epilogue.
        ue_batch = broadcast_shapes(u.shape, pre_gate.shape)[:-1] if pre_gate is not None else u.shape[:-1]
        self.spectrum_bytes = self.rows * self.row_bytes if plan.algo == "fft" and not self.empty else -1
        self.ue_full = tuple(ue_batch) == tuple(self.batch)  # the signal's spectrum has the output's shape
        # The commonest small call (dense kernel, a window inside one period, the signal's rows
        # the output's, no scalar operand to lift, rows that MKL takes as they are) runs
        # ``_small``: eager's library calls in a straight line, every branch decided here.
        # At (1, 8, 16) the general path's Python was ~13 us of a ~50 us call (bench/fixed_cost.py).
        self.straight = (self.fast and not plan.bins and self.ue_full and not any(self.lift)
                         and plan.start + plan.length <= plan.fft_n
                         and not (lone_row_size(plan.fft_n) and (self.rows == 1 or k.numel() == self.Lk)))
        self.cast_u = u.dtype != dtype
        self.cache_kernel = p.constant_kernel and cache_pays(plan, k.numel() // max(self.Lk, 1))
        # the kernel's spectrum is its plain rfft: no cast, scale or conjugate to fold in
        self.plain_kernel = (plan.algo == "fft" and not plan.bins and not plan.conj and plan.scale == 1.0
                             and k.dtype == dtype)
        # the C++ kernels (cpu_native) may run this shape: ``_small`` with nothing looked up
        self.native = self.straight and not self.cache_kernel and self.dtype in (torch.float32, torch.float64)
        # FrequencySparse on the pruned transform: rows straight from the signal, no padded buffer
        self.pruned = pruned_applies(plan, dtype)

    @property
    def fast(self) -> bool:
        return 0 <= self.spectrum_bytes <= FAST_BYTES

    def __call__(self, u: Tensor, k: Tensor, D, pre_gate, post_gate) -> Tensor:
        if self.straight:
            return self._small(u, k, D, pre_gate, post_gate)
        if self.lift[0] or self.lift[1] or self.lift[2]:
            D, pre_gate, post_gate = (at_least_1d(t, self.dtype) for t in (D, pre_gate, post_gate))
        out = empty_output(self.shape, self.out_dtype)
        if self.empty:
            return out
        if 0 <= self.spectrum_bytes <= FAST_BYTES:
            return self._fast(out, u, k, D, pre_gate, post_gate)
        return self._tiled(out, u, k, D, pre_gate, post_gate)

    def kernel_spectrum(self, k: Tensor) -> Tensor:
        """The prepared kernel (scale, conjugate and bins folded in) at k's batch shape."""
        plan, dtype = self.plan, self.dtype
        k2 = k.reshape(-1, self.Lk)
        prepared = None
        if self.cache_kernel:
            prepared = cpu_cache.lookup(k2, plan.variant(dtype), lambda: prepare(plan, k2, dtype))
        if prepared is None:
            prepared = prepare(plan, k2, dtype)
        return prepared.view(self.kernel_batch)

    def _small(self, u: Tensor, k: Tensor, D, pre_gate, post_gate) -> Tensor:
        """``_fast`` for the call ``straight`` describes, in a straight line (the same library
        calls on the same operands, so the same result)."""
        plan, n = self.plan, self.plan.fft_n
        ue = u.to(self.dtype) if self.cast_u else u
        if pre_gate is not None:
            ue = ue * pre_gate
        U = rfft(ue, n)
        # prepare's result without its checks where nothing is folded in and nothing cached
        K = rfft(k, n) if self.plain_kernel and not self.cache_kernel else self.kernel_spectrum(k)
        y = irfft(U.mul_(K), n).narrow(-1, plan.start, plan.length)
        out = torch.empty(self.shape, dtype=self.out_dtype)
        epilogue_into(out, y, ue, D, post_gate)
        return out

    def _fast(self, out: Tensor, u: Tensor, k: Tensor, D, pre_gate, post_gate) -> Tensor:
        plan, dtype = self.plan, self.dtype
        ue = u if u.dtype == dtype else u.to(dtype)
        if pre_gate is not None:
            ue = ue * pre_gate
        K = self.kernel_spectrum(k)
        if self.pruned and self.ue_full and ue.dtype == dtype and _rows_cycle(ue.shape, K.shape):
            epilogue_into(out, pruned_tile(plan, ue, K.reshape(-1, plan.bins)), ue, D, post_gate)
            return out
        U = rfft_rows(ue, plan.fft_n)  # pads (and truncates a signal longer than n) itself
        if plan.bins and self.ue_full:
            # the kept bins' product in place over a zeroed tail: an M-bin spectrum handed to
            # irfft would be zero-padded into a fresh tensor (cpu_algos.fft_tile)
            U[..., plan.bins :].zero_()
            U[..., : plan.bins].mul_(K)
        else:
            U = U[..., : plan.bins] if plan.bins else U
            U = U.mul_(K) if self.ue_full else U * K
        y = window(irfft_rows(U, plan.fft_n), plan.start, plan.length)
        epilogue_into(out, y, ue, D, post_gate)
        return out

    def _tiled(self, out: Tensor, u: Tensor, k: Tensor, D, pre_gate, post_gate) -> Tensor:
        p, plan, dtype = self.p, self.plan, self.dtype
        lay = layout_from(self.geometry, self.batch, k)
        u3, pg3 = grid_view(u, lay), grid_view(pre_gate, lay)
        D3, post3 = grid_view(D, lay), grid_view(post_gate, lay)
        out3 = out.view(lay.Ko, lay.Hk, p.length)
        kernel_rows = prepared_kernel_rows(plan, lay, dtype, p.constant_kernel)
        # Threads and tiles per call (a few microseconds against a call of many tiles), so they
        # follow cpu_cost / cpu_exec's settings as they are now.
        pool = use_pool(plan, self.rows)
        units = tiles(lay, self.row_bytes, kernel_rows.cached is None, shared=not pool)
        # "fft" transforms a zero-padded row buffer the prologue writes into (the tail stays
        # zero): no padded copy per tile; the other algorithms read the signal as it is.
        padded, width = self.padded, self.width
        pruned = self.pruned

        def make_worker():
            if pruned:  # the pruned transform reads the signal's rows where they lie
                def work_pruned(unit: list[tuple[int, int, int, int]]) -> None:
                    prepared = kernel_rows.for_unit(unit)
                    for o0, o1, h0, h1 in unit:
                        x = u3[o0:o1, h0:h1]
                        x = x.to(dtype) if pg3 is None else (x.to(dtype) * pg3[o0:o1, h0:h1]).to(dtype)
                        dst, prep = out3[o0:o1, h0:h1], prepared(h0, h1)
                        if D3 is None and post3 is None and dst.dtype == dtype:
                            pruned_tile(plan, x, prep, dst)  # no epilogue: into the output
                            continue
                        epilogue_into(dst, pruned_tile(plan, x, prep), x,
                                      D3[o0:o1, h0:h1] if D3 is not None else None,
                                      post3[o0:o1, h0:h1] if post3 is not None else None)

                return work_pruned
            buf = (torch.zeros if padded else torch.empty)(largest_box(units), padded or width, dtype=dtype)
            # a sparse kernel's products go into the head of a spectrum buffer whose tail stays zero
            spec = (torch.zeros(largest_box(units), padded // 2 + 1, dtype=spectrum_dtype(dtype))
                    if padded and plan.bins else None)

            def work(unit: list[tuple[int, int, int, int]]) -> None:
                prepared = kernel_rows.for_unit(unit)
                for o0, o1, h0, h1 in unit:
                    rows = box_rows(buf, o0, o1, h0, h1)
                    x = prologue_into(rows[..., :width], u3[o0:o1, h0:h1],
                                      pg3[o0:o1, h0:h1] if pg3 is not None else None)
                    if padded:
                        y = fft_tile(plan, rows, prepared(h0, h1),
                                     box_rows(spec, o0, o1, h0, h1) if spec is not None else None)
                    else:
                        y = linear_tile(plan, x, prepared(h0, h1))
                    epilogue_into(out3[o0:o1, h0:h1], y, x, D3[o0:o1, h0:h1] if D3 is not None else None,
                                  post3[o0:o1, h0:h1] if post3 is not None else None)

            return work

        run_tiles(units, make_worker, None if pool else 1)
        return out


def _rows_cycle(signal: torch.Size, kernel: torch.Size) -> bool:
    """Whether the signal's row r takes the kernel's row r % C (C its rows): the kernel's batch
    (leading ones aside) is the trailing part of the signal's."""
    kb = list(kernel[:-1])
    while kb and kb[0] == 1:
        kb.pop(0)
    return len(kb) <= len(signal) - 1 and list(signal[len(signal) - 1 - len(kb):-1]) == kb


def prologue_into(dst: Tensor, u: Tensor, pre_gate: Tensor | None) -> Tensor:
    """dst <- (u * pre_gate)[..., :width] computed in dst's dtype (the compute dtype; a signal
    longer than n is truncated)."""
    width = dst.shape[-1]
    u = u[..., :width]
    if pre_gate is None:
        return dst.copy_(u)
    pre_gate = pre_gate[..., :width]
    if u.dtype == pre_gate.dtype == dst.dtype and u.shape == dst.shape and pre_gate.dim() <= dst.dim():
        # one pass, the same products in the same dtype (the gate broadcasts into u's shape)
        return torch.mul(u, pre_gate, out=dst)
    dst.copy_(u)
    return dst.mul_(pre_gate)


def epilogue_into(dst: Tensor, y: Tensor, x: Tensor, D: Tensor | None, post_gate: Tensor | None) -> None:
    """dst <- (y + x * D) * post_gate, cast to dst's dtype, in one pass over dst where it can.
    Operands of other float dtypes are promoted to y's (the compute dtype) first."""
    if D is None and post_gate is None:
        dst.copy_(y)
    elif post_gate is None:
        torch.addcmul(y, x, D, out=dst)
    elif D is None:
        torch.mul(y, post_gate, out=dst)
    else:
        torch.mul(y.addcmul_(x, D), post_gate, out=dst)
