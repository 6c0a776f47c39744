"""The reference implementation: plain torch.fft, the ground truth every kernel is tested against.

It spells out the operator's definition (see ``convfuse.spec``) with no cleverness:
rfft both signals at size n, multiply (conjugating the kernel for a correlation),
irfft, take the window, scale, then the epilogue.
"""

from __future__ import annotations

import torch
from torch import Tensor

from convfuse.backends.common import compute_dtype, epilogue, output_shape, prologue, spectrum_mask, window
from convfuse.spec import ConvParams


def cyclic_conv_reference(ue: Tensor, k: Tensor, p: ConvParams) -> Tensor:
    # ue: (..., Lu), k: (..., Lk) -> (broadcast(...), p.length), in ue's dtype
    shape = output_shape(ue, k, None, p.length)
    if shape.numel() == 0:
        return ue.new_zeros(shape)  # torch.fft rejects empty batches
    U = torch.fft.rfft(ue, n=p.n)
    Kf = torch.fft.rfft(k.to(ue.dtype), n=p.n)
    if p.conj_kernel:
        Kf = Kf.conj()
    if p.sparse_spectrum:
        Kf = spectrum_mask(Kf, p.kept_bins)
    c = torch.fft.irfft(U * Kf, n=p.n)
    return window(c, p.start, p.length) * p.total_scale


def fft_conv_reference(
    u: Tensor,
    k: Tensor,
    D: Tensor | None,
    pre_gate: Tensor | None,
    post_gate: Tensor | None,
    p: ConvParams,
) -> Tensor:
    dtype = compute_dtype(u, k, D, pre_gate, post_gate)
    ue = prologue(u, pre_gate, dtype)
    y = cyclic_conv_reference(ue, k, p)
    return epilogue(y, ue, D, post_gate, p)
