"""cuFFT with the prologue and the epilogue fused: what ``kernel="auto"`` runs on CUDA where Triton loses.

Eager spells a gated FFT convolution as about ten kernels (casts, the pre-gate, two forward
transforms, the product, the inverse, the slice, the scale, the skip term, the post-gate, a
cast), each a round trip through GPU memory.  Here the transforms stay cuFFT's (through
torch.fft) and everything around them is one Triton kernel on each side:

    prologue   ue = u * pre_gate, cast to the compute dtype          one pointwise kernel
    U = rfft(ue, n); U *= K; c = irfft(U, n)                          cuFFT, and one in-place product
    epilogue   out = (c[(start + t) mod n] + ue[t] * D[t]) * post[t]  one pointwise kernel: the window,
               cast to out_dtype                                      skip term (ue recomputed from u
                                                                      and the gate), post-gate and cast

K is the kernel's one-sided spectrum with the operator's scale folded in (conjugated for a
correlation, masked for a frequency-sparse kernel).  Every operand is read through per-row
offsets (launch._rows), so broadcast batch dimensions cost no copies.  On CPU tensors under the
Triton interpreter it runs the same code (the tests); ``run`` has the implementation signature.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from convfuse.backends.common import compute_dtype, output_shape
from convfuse.backends.triton_monarch.kernels_common import _epilogue, builds
from convfuse.spec import ConvParams

BLOCK = 1024  # samples per program of the pointwise kernels


def _prologue(u_ptr, u_off_ptr, u_s, pre_ptr, pre_off_ptr, pre_s, ue_ptr, L, HAS_PRE: tl.constexpr,
              BLOCK: tl.constexpr):
    # ue[row, j] = u[row, j] * pre[row, j] for j < L, in ue's dtype; one program per (row, block)
    row = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = j < L
    CT = ue_ptr.dtype.element_ty
    x = tl.load(u_ptr + tl.load(u_off_ptr + row) + j * u_s, mask=m, other=0.0).to(CT)
    if HAS_PRE:
        x = x * tl.load(pre_ptr + tl.load(pre_off_ptr + row) + j * pre_s, mask=m, other=0.0).to(CT)
    tl.store(ue_ptr + row * L + j, x, mask=m)


def _window_epilogue(c_ptr, n, start, length, u_ptr, u_off_ptr, u_s, pre_ptr, pre_off_ptr, pre_s,
                     d_ptr, d_off_ptr, d_s, post_ptr, post_off_ptr, post_s, out_ptr, Lskip,
                     HAS_PRE: tl.constexpr, HAS_D: tl.constexpr, HAS_POST: tl.constexpr, BLOCK: tl.constexpr):
    # out[row, t] = epilogue(c[row, (start + t) mod n]) for t < length; c rows are n apart
    row = tl.program_id(0).to(tl.int64)
    t = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    tm = t < length
    y = tl.load(c_ptr + row * n + (start + t) % n, mask=tm, other=0.0)
    _epilogue(y, t, tm, row, u_ptr, u_off_ptr, u_s, pre_ptr, pre_off_ptr, pre_s, d_ptr, d_off_ptr, d_s,
              post_ptr, post_off_ptr, post_s, out_ptr, length, Lskip, HAS_PRE, HAS_D, HAS_POST)


PROLOGUE = builds(_prologue)
EPILOGUE = builds(_window_epilogue)


def _spectrum(k: Tensor, p: ConvParams, dtype: torch.dtype) -> Tensor:
    kf = torch.fft.rfft(k.to(dtype), n=p.n)
    if p.conj_kernel:
        kf = kf.conj()
    kf = kf * p.total_scale
    if p.sparse_spectrum:
        kf[..., p.kept_bins:] = 0
    return kf


def run(u: Tensor, k: Tensor, D: Tensor | None, pre_gate: Tensor | None, post_gate: Tensor | None,
        p: ConvParams) -> Tensor:
    from convfuse.backends.triton_monarch.launch import _int32_axis, _interpret_enabled, _rows

    dtype = compute_dtype(u, k, D, pre_gate, post_gate)
    shape = output_shape(u, k, pre_gate, p.length)
    out = torch.empty(shape, dtype=p.out_dtype or dtype, device=u.device)
    Lue = u.shape[-1] if pre_gate is None else max(u.shape[-1], pre_gate.shape[-1])
    if D is not None and Lue != p.length:
        raise ValueError(f"convfuse.fft_conv: a skip term needs the output length ({p.length}) "
                         f"to equal the input length ({Lue})")
    if out.numel() == 0:
        return out
    interpret = u.device.type == "cpu" or _interpret_enabled()
    u, pre_gate, D, post_gate = (_int32_axis(t, max(Lue, p.n)) for t in (u, pre_gate, D, post_gate))
    # the prologue over ue's own batch (u broadcast with the pre-gate), truncated to n as rfft does
    ue_batch = tuple(u.shape[:-1]) if pre_gate is None else tuple(torch.broadcast_shapes(u.shape[:-1],
                                                                                         pre_gate.shape[:-1]))
    Lp = min(Lue, p.n)
    ue = torch.empty((*ue_batch, Lp), dtype=dtype, device=u.device)
    rows_ue = ue[..., 0].numel()
    pre = pre_gate if pre_gate is not None else u
    if rows_ue and Lp:
        u_off, u_s = _rows(u, ue_batch)
        pre_off, pre_s = _rows(pre_gate, ue_batch) if pre_gate is not None else (u_off, 0)
        PROLOGUE[interpret][(rows_ue, triton.cdiv(Lp, BLOCK))](
            u, u_off, u_s, pre, pre_off, pre_s, ue, Lp, HAS_PRE=pre_gate is not None, BLOCK=BLOCK)
    spec = torch.fft.rfft(ue, n=p.n)
    spec = spec * _spectrum(k, p, dtype) if spec.shape[:-1] != shape[:-1] else spec.mul_(_spectrum(k, p, dtype))
    c = torch.fft.irfft(spec, n=p.n).reshape(-1, p.n)
    del spec
    batch = tuple(shape[:-1])
    u_off, u_s = _rows(u, batch)
    pre_off, pre_s = _rows(pre_gate, batch) if pre_gate is not None else (u_off, 0)
    d_off, d_s = _rows(D, batch) if D is not None else (u_off, 0)
    post_off, post_s = _rows(post_gate, batch) if post_gate is not None else (u_off, 0)
    EPILOGUE[interpret][(c.shape[0], triton.cdiv(p.length, BLOCK))](
        c, p.n, p.start, p.length, u, u_off, u_s, pre, pre_off, pre_s,
        D if D is not None else u, d_off, d_s, post_gate if post_gate is not None else u, post_off, post_s,
        out, Lue, HAS_PRE=pre_gate is not None, HAS_D=D is not None, HAS_POST=post_gate is not None, BLOCK=BLOCK)
    return out
