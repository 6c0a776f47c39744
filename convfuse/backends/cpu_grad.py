"""The CPU path's fused backward: both gradients of the cyclic convolution in one pass.

Composed from two forward calls (``convfuse.ops.cyclic_grads``), a backward transforms
g twice, transforms every row of ue as if it were a kernel, and materialises d k at
the output's batch shape before summing it: 5 row transforms and a (B, H, L)
temporary per call, against eager autograd's 2 (it saved both spectra in the forward,
at the cost of holding them).  Here a tile of rows transforms g once and ue once:

    G = rfft(g), UE = rfft(ue)                                   (O, Hh, n//2+1)
    d ue = s * irfft(G * conj(K))          window at -start        (correlation forward: G * K)
    d k  = s * irfft(sum_O G * conj(UE))   window at -start        (correlation: conj(G) * UE, at start)
    h    = s * irfft(UE * K)               window at start         (only for a post-gate's gradient)

where the rows sharing a kernel row are summed in the frequency domain, so each
kernel row costs one inverse transform per tile: 3 row transforms, and no temporary
larger than a tile besides the two outputs.  The derivation of the formulas is in
``convfuse.ops.cyclic_grads``; ``K`` (scale and a correlation's conjugate folded in) is the
forward's prepared kernel, from the forward's cache for a constant kernel, and d ue takes
its conjugate.
Shapes where the forward runs the direct or overlap-save algorithm (short kernels)
keep the composed backward, which then runs those algorithms too.
"""

from __future__ import annotations

import threading

import torch
from torch import Tensor

from convfuse.backends.common import output_shape, window
from convfuse.backends.cpu import FAST_BYTES, plan_for, prepared_kernel_rows, prologue_into
from convfuse.backends.cpu_algos import irfft, rfft
from convfuse.backends.cpu_cost import use_pool
from convfuse.backends.cpu_exec import (
    box_rows, empty_output, grid_view, largest_box, make_layout, run_tiles, tiles,
)
from convfuse.spec import ConvParams


def fft_conv_grad_cpu(
    g: Tensor, ue: Tensor, k: Tensor, p: ConvParams, need_u: bool, need_k: bool, need_h: bool = False
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """(d ue at the output's batch shape, d k at k's shape, h at the output's shape), or
    (None, None, None) where the fused pass does not apply and the caller composes them
    from forward calls."""
    dtype = g.dtype
    Lu, Lk = ue.shape[-1], k.shape[-1]
    plan = plan_for(p, Lu, Lk)
    # The forward's window is the same at plan.fft_n (cpu_cost.fft_size), so it is the same
    # function of (ue, k) there, with the same gradients: every formula below runs at that size.
    n = plan.fft_n
    batch = output_shape(g, k, None, Lu)[:-1]
    lay = make_layout(batch, k)
    # A kernel broadcast in between batch dimensions (rows materialised per output row) or a
    # signal with more rows than the output (impossible from fft_conv's backward) would need
    # sums the layout does not express.
    if plan.algo != "fft" or lay.Hk * Lk != k.numel() or tuple(g.shape[:-1]) != tuple(batch):
        return None, None, None
    # A signal's tail beyond n was truncated by the forward: it gets no gradient and is not
    # transformed (du_len <= plan.fft_n: that is n, or a size holding the whole signal).
    du_len, dk_len = min(Lu, p.n), min(Lk, p.n)
    du = None
    if need_u:
        du = empty_output((*batch, Lu), dtype) if du_len == Lu else torch.zeros(*batch, Lu, dtype=dtype)
    dk = torch.zeros(lay.Hk, Lk, dtype=dtype) if need_k else None
    h = empty_output((*batch, p.length), dtype) if need_h else None
    if batch.numel() == 0:
        return du, (dk.view(k.shape) if dk is not None else None), h

    g3, ue3 = grid_view(g, lay), grid_view(ue, lay)
    du3 = du.view(lay.Ko, lay.Hk, Lu) if du is not None else None
    h3 = h.view(lay.Ko, lay.Hk, p.length) if h is not None else None
    back = (-p.start) % n
    s = p.total_scale
    bins = plan.bins or n // 2 + 1
    # h multiplies by the forward's prepared kernel K (scale, conjugate folded in), d ue by
    # conj(K): one preparation (one cache entry) serves both.
    kernel_rows = prepared_kernel_rows(plan, lay, dtype, p.constant_kernel) if need_u or need_h else None
    dk_lock = threading.Lock()
    dk_start = p.start if p.conj_kernel else back
    pool = use_pool(plan, lay.Ko * lay.Hk, transforms=2.0)
    if not pool and lay.Ko * lay.Hk * plan.row_bytes(dtype) * 2 <= FAST_BYTES:
        # Small calls (G and UE of every row within the forward's FAST_BYTES): the formulas on
        # the whole call at once, the library transforms padding the signals themselves; no row
        # buffers, tiles or threads (as the forward's CpuCall._fast).
        prepared = kernel_rows.for_unit([(0, lay.Ko, 0, lay.Hk)])(0, lay.Hk) if kernel_rows is not None else None
        G = rfft(g3, n)[..., :bins]  # (Ko, Hk, bins)
        if need_k or need_h:
            UE = rfft(ue3[..., :du_len], n)[..., :bins]
        if need_h:
            h3.copy_(window(irfft(UE * prepared, n), p.start, p.length))
        if need_k:
            S = UE.conj_physical_().mul_(G).sum(0)  # G * conj(UE) summed over the rows sharing k
            if p.conj_kernel:
                S = S.conj_physical_()
            dk[:, :dk_len] = window(irfft(S.mul_(s), n), dk_start, dk_len)
        if need_u:
            du3[..., :du_len] = window(irfft(G.mul_(prepared.conj()), n), back, du_len)
        return du, (dk.view(k.shape) if dk is not None else None), h
    units = tiles(lay, plan.row_bytes(dtype) * (2 if need_k or need_h else 1),  # G and UE live together
                  kernel_rows is not None and kernel_rows.cached is None, shared=not pool)
    Lg = g.shape[-1]

    def make_worker():
        # Zero-padded row buffers the signals are copied into (their tails stay zero): the
        # transforms pad nothing.
        g_buf = torch.zeros(largest_box(units), n, dtype=dtype)
        ue_buf = torch.zeros(largest_box(units), n, dtype=dtype) if need_k or need_h else None

        def work(unit: list[tuple[int, int, int, int]]) -> None:
            prepared = kernel_rows.for_unit(unit) if kernel_rows is not None else None
            for o0, o1, h0, h1 in unit:
                g_rows = box_rows(g_buf, o0, o1, h0, h1)
                prologue_into(g_rows[..., :Lg], g3[o0:o1, h0:h1], None)
                G = rfft(g_rows, n)[..., :bins]  # (O, Hh, bins)
                if need_k or need_h:
                    ue_rows = box_rows(ue_buf, o0, o1, h0, h1)
                    prologue_into(ue_rows[..., :du_len], ue3[o0:o1, h0:h1], None)
                    UE = rfft(ue_rows, n)[..., :bins]
                if need_h:
                    c = irfft(UE * prepared(h0, h1), n)
                    h3[o0:o1, h0:h1] = window(c, p.start, p.length)
                if need_k:
                    S = UE.conj_physical_().mul_(G).sum(0)  # (Hh, bins): G * conj(UE), summed over rows sharing k
                    if p.conj_kernel:
                        S = S.conj_physical_()  # conj(G) * UE
                    d = window(irfft(S.mul_(s), n), dk_start, dk_len)
                    with dk_lock:
                        dk[h0:h1, :dk_len] += d
                if need_u:
                    c = irfft(G.mul_(prepared(h0, h1).conj()), n)
                    du3[o0:o1, h0:h1, :du_len] = window(c, back, du_len)

        return work

    run_tiles(units, make_worker, None if pool else 1)
    return du, (dk.view(k.shape) if dk is not None else None), h
