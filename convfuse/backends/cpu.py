"""CPU implementation of the fused operator.

FFT convolution on CPU is compute-bound on the FFT itself, and computing the FFT
as matrix multiplies loses 5-19x to the library FFT there (DESIGN.md), so this
path keeps ``torch.fft`` (pocketfft/MKL) and saves the work around it: the scale
is folded into the kernel spectrum (the smaller operand), the conjugate and the
product are done in place, and only the window is ever materialised.
"""

from __future__ import annotations

import torch
from torch import Tensor

from convfuse.backends.common import compute_dtype, epilogue, output_shape, prologue, window
from convfuse.spec import ConvParams


def cyclic_conv_cpu(ue: Tensor, k: Tensor, p: ConvParams) -> Tensor:
    # ue: (..., Lu), k: (..., Lk) -> (broadcast(...), p.length)
    shape = output_shape(ue, k, None, p.length)
    if shape.numel() == 0:
        return ue.new_zeros(shape)
    Kf = torch.fft.rfft(k.to(ue.dtype), n=p.n)
    if p.conj_kernel:
        Kf = Kf.conj_physical_()  # a fresh tensor: conjugate in place, no lazy conj bit
    scale = p.total_scale
    if scale != 1.0:
        Kf.mul_(scale)
    U = torch.fft.rfft(ue, n=p.n)
    if U.shape == torch.broadcast_shapes(U.shape, Kf.shape):
        U.mul_(Kf)
    else:
        U = U * Kf
    c = torch.fft.irfft(U, n=p.n)
    return window(c, p.start, p.length)


def fft_conv_cpu(
    u: Tensor,
    k: Tensor,
    D: Tensor | None,
    pre_gate: Tensor | None,
    post_gate: Tensor | None,
    p: ConvParams,
) -> Tensor:
    dtype = compute_dtype(u, k, D, pre_gate, post_gate)
    ue = prologue(u, pre_gate, dtype)
    y = cyclic_conv_cpu(ue, k, p)
    return epilogue(y, ue, D, post_gate, p)
