"""Triton kernels: the fused Monarch FFT convolution, one program per output row.

Layout (see plan.py): a length-n row is the row-major (N1, N2) tile X[j1, j2] = x[N2*j1 + j2].
Forward transform, real/imag planes, all on-chip:

    B = F1 @ X          (N1, N2)   X real: 2 dots (only N1/2 columns of F1 when the input is causal-padded)
    B = B * TW          (N1, N2)   twiddle, elementwise complex
    C = B @ F2          (N1, N2)   4 dots; C[k1, k2] = spectrum at k1 + N1*k2 (Monarch order)
    C = C * Kspec       (N1, N2)   kernel spectrum, already in Monarch order, scaled by scale/n
    D = C @ conj(F2)    (N1, N2)   4 dots
    D = D * conj(TW)
    y = Re(conj(F1) @ D)  (R, N2)  2 dots; R = N1/2 rows when the window lies in the first half

then the epilogue on the window t = (N2*j1 + j2 - start) mod n < length: + ue[t] * D[t], * post[t], cast.
Every operand is addressed as base + row_offset[row] + t * last_stride, so batch broadcasting
(e.g. a per-channel kernel or gate against a (B, H, L) input) costs no copies.
"""

from __future__ import annotations

import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction


def _monarch_conv2(
    order_ptr,  # (rows,) int64: the row program i computes (rows sharing a kernel run back to back)
    u_ptr, u_off_ptr, u_s,  # input: u[row] at u_ptr + u_off[row] + j * u_s
    pre_ptr, pre_off_ptr, pre_s,  # pre-gate, same addressing (ignored unless HAS_PRE)
    k_ptr, k_off_ptr,  # kernel spectrum planes (rows_k, 2, N1, N2), k_off[row] -> element offset
    d_ptr, d_off_ptr, d_s,  # skip term D over the output window (ignored unless HAS_D)
    post_ptr, post_off_ptr, post_s,  # post-gate over the output window (ignored unless HAS_POST)
    out_ptr,  # (rows, length) contiguous
    f1_ptr, f2_ptr, tw_ptr,  # plan matrices: (2, N1, N1), (2, N2, N2), (2, N1, N2)
    Lu,  # input samples used (<= n): loads beyond are zero (torch.fft truncation/padding)
    Lskip,  # length of ue for the skip term (== length when HAS_D)
    start, length,
    N1: tl.constexpr, N2: tl.constexpr,
    HALF_IN: tl.constexpr, HALF_OUT: tl.constexpr,
    HAS_PRE: tl.constexpr, HAS_D: tl.constexpr, HAS_POST: tl.constexpr,
    PREC: tl.constexpr,
):
    NN: tl.constexpr = N1 * N2
    RIN: tl.constexpr = N1 // 2 if HALF_IN else N1  # rows of X that can be nonzero
    ROUT: tl.constexpr = N1 // 2 if HALF_OUT else N1  # rows of y that the window can read
    # rows that share a kernel spectrum run on consecutive programs, so it is read from L2, not HBM
    row = tl.load(order_ptr + tl.program_id(0)).to(tl.int64)
    CT = tw_ptr.dtype.element_ty  # compute dtype (fp32 / fp64)
    DT = f1_ptr.dtype.element_ty  # dot operand dtype (fp16 / bf16 / fp32 / fp64)

    a1 = tl.arange(0, N1)
    a2 = tl.arange(0, N2)
    rin = tl.arange(0, RIN)
    rout = tl.arange(0, ROUT)
    tile = a1[:, None] * N2 + a2[None, :]  # (N1, N2) row-major plane index

    # ---- load X (RIN, N2) with the pre-gate fused; rows >= RIN are zero by causal padding
    j = rin[:, None] * N2 + a2[None, :]
    jm = j < Lu
    u_base = u_ptr + tl.load(u_off_ptr + row)
    x = tl.load(u_base + j * u_s, mask=jm, other=0.0).to(CT)
    if HAS_PRE:
        pre_base = pre_ptr + tl.load(pre_off_ptr + row)
        x = x * tl.load(pre_base + j * pre_s, mask=jm, other=0.0).to(CT)
    xd = x.to(DT)

    # ---- stage 1: B = F1[:, :RIN] @ X   (N1, RIN) @ (RIN, N2); X is real: 2 dots
    f1_idx = a1[:, None] * N1 + rin[None, :]
    f1r = tl.load(f1_ptr + f1_idx)
    f1i = tl.load(f1_ptr + N1 * N1 + f1_idx)
    br = tl.dot(f1r, xd, input_precision=PREC).to(CT)
    bi = tl.dot(f1i, xd, input_precision=PREC).to(CT)

    # ---- twiddle: B[k1, j2] *= exp(-2i pi j2 k1 / n)
    twr = tl.load(tw_ptr + tile)
    twi = tl.load(tw_ptr + NN + tile)
    br, bi = br * twr - bi * twi, br * twi + bi * twr  # complex products written out: no nested jit calls

    # ---- stage 2: C = B @ F2   (N1, N2) @ (N2, N2): 4 real dots
    f2_idx = a2[:, None] * N2 + a2[None, :]
    f2r = tl.load(f2_ptr + f2_idx)
    f2i = tl.load(f2_ptr + N2 * N2 + f2_idx)
    brd = br.to(DT)
    bid = bi.to(DT)
    cr = tl.dot(brd, f2r, input_precision=PREC) - tl.dot(bid, f2i, input_precision=PREC)
    ci = tl.dot(brd, f2i, input_precision=PREC) + tl.dot(bid, f2r, input_precision=PREC)

    # ---- pointwise product with the kernel spectrum (Monarch order, scale/n folded in)
    k_base = k_ptr + tl.load(k_off_ptr + row)
    kr = tl.load(k_base + tile)
    ki = tl.load(k_base + NN + tile)
    cr = cr.to(CT)
    ci = ci.to(CT)
    cr, ci = cr * kr - ci * ki, cr * ki + ci * kr

    # ---- inverse stage 2: D = C @ conj(F2) = (Cr F2r + Ci F2i) + i (Ci F2r - Cr F2i)
    crd = cr.to(DT)
    cid = ci.to(DT)
    dr = tl.dot(crd, f2r, input_precision=PREC) + tl.dot(cid, f2i, input_precision=PREC)
    di = tl.dot(cid, f2r, input_precision=PREC) - tl.dot(crd, f2i, input_precision=PREC)

    # ---- conjugate twiddle
    dr = dr.to(CT)
    di = di.to(CT)
    dr, di = dr * twr + di * twi, di * twr - dr * twi

    # ---- inverse stage 1, real part only: y = F1r[:ROUT] @ Dr + F1i[:ROUT] @ Di   (ROUT, N1) @ (N1, N2)
    g1_idx = rout[:, None] * N1 + a1[None, :]
    g1r = tl.load(f1_ptr + g1_idx)
    g1i = tl.load(f1_ptr + N1 * N1 + g1_idx)
    y = tl.dot(g1r, dr.to(DT), input_precision=PREC) + tl.dot(g1i, di.to(DT), input_precision=PREC)
    y = y.to(CT)

    # ---- window + epilogue: sample jo of the cyclic result is output t = (jo - start) mod n
    jo = rout[:, None] * N2 + a2[None, :]
    t = (jo + (NN - start)) % NN
    tm = t < length
    if HAS_D:
        sm = tm & (t < Lskip)
        ue = tl.load(u_base + t * u_s, mask=sm, other=0.0).to(CT)
        if HAS_PRE:
            ue = ue * tl.load(pre_base + t * pre_s, mask=sm, other=0.0).to(CT)
        d_base = d_ptr + tl.load(d_off_ptr + row)
        y = y + ue * tl.load(d_base + t * d_s, mask=tm, other=0.0).to(CT)
    if HAS_POST:
        p_base = post_ptr + tl.load(post_off_ptr + row)
        y = y * tl.load(p_base + t * post_s, mask=tm, other=0.0).to(CT)
    tl.store(out_ptr + row * length + t, y.to(out_ptr.dtype.element_ty), mask=tm)


# Both builds of the same kernel: compiled for CUDA tensors, interpreted (TRITON_INTERPRET=1) for CPU
# tensors.  Built explicitly rather than with @triton.jit, which picks one from the environment at
# import time, so importing this module first in a GPU process does not fix the mode for good.
MONARCH_CONV2 = {False: JITFunction(_monarch_conv2), True: InterpretedFunction(_monarch_conv2)}
