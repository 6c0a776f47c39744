"""The fused operator's definition in plain torch, fp64: the reference the Triton plans are tested
against (it imports nothing from convfuse's implementations)."""

from __future__ import annotations

import torch


def reference(u, k, D, pre, post, p):
    ue = u.double() if pre is None else u.double() * pre.double()
    K = torch.fft.rfft(k.double(), n=p.n)
    K = K.conj() if p.conj_kernel else K
    if p.spectrum_bins:
        K[..., p.spectrum_bins:] = 0
    c = torch.fft.irfft(torch.fft.rfft(ue, n=p.n) * K, n=p.n) * p.scale * p.n ** p.n_power
    y = c[..., (p.start + torch.arange(p.length)) % p.n]
    if D is not None:
        y = y + ue * D.double()
    return y if post is None else y * post.double()
