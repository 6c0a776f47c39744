"""A drop-in for FlashFFTConv users: ``convfuse.fftconv(...)`` and ``convfuse.FFTConv``.

FlashFFTConv (Fu et al., 2023) is used as ``conv = FlashFFTConv(fft_size, dtype)`` and then
``y = conv(u, k)`` or ``y = conv(u, k, pregate, postgate)``, with ``u`` of shape (B, H, L) and
``k`` of shape (H, Lk), computing

    y = (ifft(fft(u * pregate, fft_size) * fft(k, fft_size)).real[..., :L] * postgate)

in ``u``'s dtype: a cyclic convolution of size ``fft_size`` read on its first L samples, which is
the causal (linear) convolution when ``fft_size >= L + Lk - 1`` (the usual ``fft_size = 2L``).
Here the same thing is one call of ``torch.ops.convfuse.fft_conv``, the operator the
``torch.compile`` backend rewrites FFT convolutions into, so it runs on every device the operator
runs on (the CPU path on CPU tensors; Triton Monarch kernels or cuFFT on CUDA, ``kernel="auto"``),
for any length (not only powers of two), in fp32, fp16 and bf16 (fp64 too), with autograd for
every tensor argument.  One addition: a skip term ``D`` (Hyena's ``+ u * D``), fused as well:

    ue = u * pre_gate
    y  = ((ue (*) k)[..., :L] + ue * D) * post_gate          (*): the convolution above

``fft_size=None`` (the default) means the causal convolution whatever the lengths (taps of ``k``
beyond L cannot reach the first L outputs and get zero gradient).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

__all__ = ["FFTConv", "fftconv"]


def _per_channel(D: Tensor, u: Tensor) -> Tensor:
    # D of shape (H,) is one value per channel of a (..., H, L) input: (H, 1) broadcasts over L.
    # Every other shape must broadcast against the output itself (e.g. (H, 1), (B, H, L)).
    if D.dim() == 1 and u.dim() >= 2 and D.shape[0] == u.shape[-2] and D.shape[0] != 1:
        return D.unsqueeze(-1)
    return D


def _default_kernel() -> str:
    try:  # convfuse.config (CONVFUSE_KERNEL, read once) where it exists
        from convfuse import config

        return config.kernel
    except (ImportError, AttributeError):
        from convfuse.backends.dispatch import default_kernel

        return default_kernel()


def fftconv(
    u: Tensor,
    k: Tensor,
    D: Optional[Tensor] = None,
    pre_gate: Optional[Tensor] = None,
    post_gate: Optional[Tensor] = None,
    *,
    fft_size: Optional[int] = None,
    kernel: Optional[str] = None,
) -> Tensor:
    """FlashFFTConv's forward as one fused operator call, along the last axis.

    u: (..., H, L) (FlashFFTConv: (B, H, L)); k: (H, Lk), or any shape whose batch dimensions
    broadcast against u's; D: (H,) per channel, or any shape broadcasting to the output;
    pre_gate: broadcasts against u; post_gate: broadcasts to the output.  Returns
    (broadcast batch, L) in ``u``'s dtype, computed in fp32 (fp64 for fp64 inputs).

    fft_size: FlashFFTConv's ``seqlen``: the cyclic convolution at that size (``k`` truncated
    to it, as ``fft(k, n)`` does; it must be at least L).  None: the causal convolution,
    ``y[t] = sum_{j <= t} ue[j] k[t - j]``.  kernel: the implementation (``"auto"``, ``"cpu"``,
    ``"triton"``, ``"reference"``), default ``$CONVFUSE_KERNEL`` or ``"auto"``.
    """
    if not isinstance(u, Tensor) or not isinstance(k, Tensor):
        raise TypeError("convfuse.fftconv: u and k must be tensors")
    if u.dim() < 1 or k.dim() < 1:
        raise ValueError("convfuse.fftconv: u and k need a last (convolved) axis")
    L = u.shape[-1] if pre_gate is None else max(u.shape[-1], pre_gate.shape[-1])
    if fft_size is None:
        # Causal: any size >= L + Lk - 1 gives the same first L samples; implementations pick a
        # cheaper size for a linear call themselves.  Taps at or beyond L never reach them.
        if k.shape[-1] > L:
            k = k[..., :L]
        n = max(2 * L, 1)
    else:
        n = int(fft_size)
        if n < max(L, 1):
            raise ValueError(f"convfuse.fftconv: fft_size={n} is shorter than the input (L={L})")
    if kernel is None:
        kernel = _default_kernel()
    if D is not None:
        D = _per_channel(D, u)
    return torch.ops.convfuse.fft_conv(
        u, k, D, pre_gate, post_gate, n, 0, L, 1.0, 0.0, False, u.dtype, kernel, False, 0)


class FFTConv(nn.Module):
    """``FlashFFTConv(seqlen, dtype)`` as a module over ``convfuse.fftconv``.

    ``FFTConv(2 * L)`` computes what ``FlashFFTConv(2 * L)`` does; ``FFTConv()`` the causal
    convolution at every length.  ``dtype`` is accepted for compatibility (FlashFFTConv's inputs
    are fp16/bf16) and not enforced: the output has the input's dtype, whatever it is.
    ``forward(u, k, pregate=None, postgate=None, D=None)`` keeps FlashFFTConv's positional
    order (``pre_gate=`` / ``post_gate=`` are accepted too); unlike FlashFFTConv, either gate
    may be given alone.  The module holds no state: one instance may serve every layer.
    """

    def __init__(self, seqlen: Optional[int] = None, dtype: Optional[torch.dtype] = None,
                 kernel: Optional[str] = None):
        super().__init__()
        if seqlen is not None and int(seqlen) < 1:
            raise ValueError(f"convfuse.FFTConv: seqlen (the FFT size) must be >= 1, got {seqlen}")
        self.seqlen = None if seqlen is None else int(seqlen)
        self.dtype = dtype
        self.kernel = kernel

    def forward(self, u: Tensor, k: Tensor, pregate: Optional[Tensor] = None, postgate: Optional[Tensor] = None,
                D: Optional[Tensor] = None, *, pre_gate: Optional[Tensor] = None,
                post_gate: Optional[Tensor] = None) -> Tensor:
        if pregate is not None and pre_gate is not None or postgate is not None and post_gate is not None:
            raise TypeError("convfuse.FFTConv: a gate given twice (pregate= and pre_gate=, or postgate= and post_gate=)")
        pre = pregate if pregate is not None else pre_gate
        post = postgate if postgate is not None else post_gate
        return fftconv(u, k, D, pre, post, fft_size=self.seqlen, kernel=self.kernel)

    def extra_repr(self) -> str:
        size = "causal (2L)" if self.seqlen is None else f"seqlen={self.seqlen}"
        return size + (f", kernel={self.kernel!r}" if self.kernel else "")
