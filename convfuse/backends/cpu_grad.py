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
``convfuse.ops.cyclic_grads``; ``conj(K)`` with the scale folded in is the forward's
prepared kernel with its conjugation flipped, so it shares the forward's cache.
Shapes where the forward runs the direct or overlap-save algorithm (short kernels)
keep the composed backward, which then runs those algorithms too.
"""

from __future__ import annotations

import dataclasses
import threading

import torch
from torch import Tensor

from convfuse.backends.common import output_shape, window
from convfuse.backends.cpu import plan_for, prepared_kernel_rows
from convfuse.backends.cpu_exec import grid_view, make_layout, run_tiles, tiles
from convfuse.spec import ConvParams


def fft_conv_grad_cpu(
    g: Tensor, ue: Tensor, k: Tensor, p: ConvParams, need_u: bool, need_k: bool, need_h: bool = False
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """(d ue at the output's batch shape, d k at k's shape, h at the output's shape), or
    (None, None, None) where the fused pass does not apply and the caller composes them
    from forward calls."""
    dtype = g.dtype
    n, Lu, Lk = p.n, ue.shape[-1], k.shape[-1]
    plan = plan_for(p, Lu, Lk)
    batch = output_shape(g, k, None, Lu)[:-1]
    lay = make_layout(batch, k)
    # A kernel broadcast in between batch dimensions (rows materialised per output row) or a
    # signal with more rows than the output (impossible from fft_conv's backward) would need
    # sums the layout does not express.
    if plan.algo != "fft" or lay.Hk * Lk != k.numel() or tuple(g.shape[:-1]) != tuple(batch):
        return None, None, None
    du = torch.zeros(*batch, Lu, dtype=dtype) if need_u else None
    dk = torch.zeros(lay.Hk, Lk, dtype=dtype) if need_k else None
    h = torch.empty(*batch, p.length, dtype=dtype) if need_h else None
    if batch.numel() == 0:
        return du, (dk.view(k.shape) if dk is not None else None), h

    g3, ue3 = grid_view(g, lay), grid_view(ue, lay)
    du3 = du.view(lay.Ko, lay.Hk, Lu) if du is not None else None
    h3 = h.view(lay.Ko, lay.Hk, p.length) if h is not None else None
    back = (-p.start) % n
    s = p.total_scale
    bins = plan.bins or n // 2 + 1
    # d ue multiplies by conj(prepared kernel): the forward's preparation with conj flipped.
    grad_plan = dataclasses.replace(plan, conj=not plan.conj)
    kernel_rows = prepared_kernel_rows(grad_plan, lay, dtype, p.constant_kernel) if need_u else None
    forward_rows = prepared_kernel_rows(plan, lay, dtype, p.constant_kernel) if need_h else None
    dk_lock = threading.Lock()
    du_len, dk_len = min(Lu, n), min(Lk, n)
    dk_start = p.start if p.conj_kernel else back

    def make_worker():
        prepared = kernel_rows() if kernel_rows is not None else None
        forward = forward_rows() if forward_rows is not None else None

        def work(unit: list[tuple[int, int, int, int]]) -> None:
            for o0, o1, h0, h1 in unit:
                G = torch.fft.rfft(g3[o0:o1, h0:h1], n=n)[..., :bins]  # (O, Hh, bins)
                if need_k or need_h:
                    UE = torch.fft.rfft(ue3[o0:o1, h0:h1], n=n)[..., :bins]
                if need_h:
                    c = torch.fft.irfft(UE * forward(h0, h1), n=n)
                    h3[o0:o1, h0:h1] = window(c, p.start, p.length)
                if need_k:
                    S = UE.conj_physical_().mul_(G).sum(0)  # (Hh, bins): G * conj(UE), summed over rows sharing k
                    if p.conj_kernel:
                        S = S.conj_physical_()  # conj(G) * UE
                    d = window(torch.fft.irfft(S.mul_(s), n=n), dk_start, dk_len)
                    with dk_lock:
                        dk[h0:h1, :dk_len] += d
                if need_u:
                    c = torch.fft.irfft(G.mul_(prepared(h0, h1)), n=n)
                    du3[o0:o1, h0:h1, :du_len] = window(c, back, du_len)

        return work

    row_bytes = plan.row_bytes(dtype) * (2 if need_k or need_h else 1)  # G and UE live together
    run_tiles(tiles(lay, row_bytes, torch.get_num_threads()), make_worker)
    return du, (dk.view(k.shape) if dk is not None else None), h
