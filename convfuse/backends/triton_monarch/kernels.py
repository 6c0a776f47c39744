"""Triton kernels: the fused Monarch FFT convolution, one program per pair of output rows.

Layout (see plan.py): a length-n row is the row-major (N1, N2) tile X[j1, j2] = x[N2*j1 + j2].
Two rows a, b that share a (real) kernel are packed as one complex signal x = xa + i*xb: since
the kernel is real, conv(xa + i xb, k) = conv(xa, k) + i conv(xb, k), so one complex transform
gives both results, as real and imaginary parts (16 dots per pair instead of 2 x 12).  Forward
transform, real/imag planes, all on-chip:

    B = F1 @ X / N1     (N1, N2)   4 dots (only N1/2 columns of F1 when the input is causal-padded)
    B = B * TW          (N1, N2)   twiddle, elementwise complex
    C = B @ F2 / N2     (N1, N2)   4 dots; C[k1, k2] = spectrum/n at k1 + N1*k2 (Monarch order)
    C = C * Kspec       (N1, N2)   kernel spectrum, already in Monarch order, times scale
    D = C @ conj(F2)    (N1, N2)   4 dots
    D = D * conj(TW)
    Y = conj(F1) @ D    (R, N2)    4 dots; R = N1/2 rows when the window lies in the first half;
                                   Re Y is row a, Im Y is row b

then the epilogue on the window t = (N2*j1 + j2 - start) mod n < length: + ue[t] * D[t], * post[t], cast,
for both rows at once on a (R, N2, 2) tile.  Every operand is addressed as
base + row_offset[row] + t * last_stride, so batch broadcasting (e.g. a per-channel kernel or gate
against a (B, H, L) input) costs no copies.  A row without a partner has b = -1: its loads are
masked to zero and its stores dropped.
"""

from __future__ import annotations

import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction


def _monarch_conv2(
    pair_ptr,  # (pairs, 2) int64 rows (a, b), b = -1 for none; pairs sharing a kernel run back to back
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
    pid = tl.program_id(0).to(tl.int64)
    ra = tl.load(pair_ptr + 2 * pid).to(tl.int64)
    rb_raw = tl.load(pair_ptr + 2 * pid + 1).to(tl.int64)
    nrows = tl.where(rb_raw >= 0, 2, 1)  # 1: no partner
    rb = tl.maximum(rb_raw, 0)  # a valid index for offset loads; its data is masked off
    CT = tw_ptr.dtype.element_ty  # compute dtype (fp32 / fp64)
    DT = f1_ptr.dtype.element_ty  # dot operand dtype (fp16 / bf16 / fp32 / fp64)

    a1 = tl.arange(0, N1)
    a2 = tl.arange(0, N2)
    rin = tl.arange(0, RIN)
    rout = tl.arange(0, ROUT)
    tile = a1[:, None] * N2 + a2[None, :]  # (N1, N2) row-major plane index

    # ---- load Xa, Xb (RIN, N2) with the pre-gate fused; rows >= RIN are zero by causal padding
    j = rin[:, None] * N2 + a2[None, :]
    jm = j < Lu
    jmb = j < tl.where(rb_raw >= 0, Lu, 0)  # (not jm & scalar: the interpreter makes that mask int32)
    ua = u_ptr + tl.load(u_off_ptr + ra)
    ub = u_ptr + tl.load(u_off_ptr + rb)
    xa = tl.load(ua + j * u_s, mask=jm, other=0.0).to(CT)
    xb = tl.load(ub + j * u_s, mask=jmb, other=0.0).to(CT)
    if HAS_PRE:
        pa = pre_ptr + tl.load(pre_off_ptr + ra)
        pb = pre_ptr + tl.load(pre_off_ptr + rb)
        xa = xa * tl.load(pa + j * pre_s, mask=jm, other=0.0).to(CT)
        xb = xb * tl.load(pb + j * pre_s, mask=jmb, other=0.0).to(CT)
    xad = xa.to(DT)
    xbd = xb.to(DT)

    # ---- stage 1: B = F1[:, :RIN] @ (Xa + i Xb)   (N1, RIN) @ (RIN, N2): 4 dots
    f1_idx = a1[:, None] * N1 + rin[None, :]
    f1r = tl.load(f1_ptr + f1_idx)
    f1i = tl.load(f1_ptr + N1 * N1 + f1_idx)
    # each forward stage divides by its radix (exact: a power of two), so every tl.dot operand stays
    # at the data's scale: fp16 operands would overflow on DC-heavy rows otherwise (a sum of n samples)
    br = (tl.dot(f1r, xad, input_precision=PREC) - tl.dot(f1i, xbd, input_precision=PREC)).to(CT) * (1.0 / N1)
    bi = (tl.dot(f1r, xbd, input_precision=PREC) + tl.dot(f1i, xad, input_precision=PREC)).to(CT) * (1.0 / N1)

    # ---- twiddle: B[k1, j2] *= exp(-2i pi j2 k1 / n)  (complex products written out: no nested jit calls)
    twr = tl.load(tw_ptr + tile)
    twi = tl.load(tw_ptr + NN + tile)
    br, bi = br * twr - bi * twi, br * twi + bi * twr

    # ---- stage 2: C = B @ F2   (N1, N2) @ (N2, N2): 4 dots
    f2_idx = a2[:, None] * N2 + a2[None, :]
    f2r = tl.load(f2_ptr + f2_idx)
    f2i = tl.load(f2_ptr + N2 * N2 + f2_idx)
    brd = br.to(DT)
    bid = bi.to(DT)
    cr = (tl.dot(brd, f2r, input_precision=PREC) - tl.dot(bid, f2i, input_precision=PREC)).to(CT) * (1.0 / N2)
    ci = (tl.dot(brd, f2i, input_precision=PREC) + tl.dot(bid, f2r, input_precision=PREC)).to(CT) * (1.0 / N2)

    # ---- pointwise product with the kernel spectrum (Monarch order, scale folded in); a and b share it
    k_base = k_ptr + tl.load(k_off_ptr + ra)
    kr = tl.load(k_base + tile)
    ki = tl.load(k_base + NN + tile)
    cr, ci = cr * kr - ci * ki, cr * ki + ci * kr

    # ---- inverse stage 2: D = C @ conj(F2) = (Cr F2r + Ci F2i) + i (Ci F2r - Cr F2i)
    crd = cr.to(DT)
    cid = ci.to(DT)
    dr = (tl.dot(crd, f2r, input_precision=PREC) + tl.dot(cid, f2i, input_precision=PREC)).to(CT)
    di = (tl.dot(cid, f2r, input_precision=PREC) - tl.dot(crd, f2i, input_precision=PREC)).to(CT)

    # ---- conjugate twiddle
    dr, di = dr * twr + di * twi, di * twr - dr * twi

    # ---- inverse stage 1: Y = conj(F1)[:ROUT] @ D   (ROUT, N1) @ (N1, N2): 4 dots
    g1_idx = rout[:, None] * N1 + a1[None, :]
    g1r = tl.load(f1_ptr + g1_idx)
    g1i = tl.load(f1_ptr + N1 * N1 + g1_idx)
    drd = dr.to(DT)
    did = di.to(DT)
    yr = (tl.dot(g1r, drd, input_precision=PREC) + tl.dot(g1i, did, input_precision=PREC)).to(CT)
    yi = (tl.dot(g1r, did, input_precision=PREC) - tl.dot(g1i, drd, input_precision=PREC)).to(CT)

    # ---- window + epilogue on (ROUT, N2, 2): [..., 0] is row a, [..., 1] row b.
    # Sample jo of the cyclic result is output t = (jo - start) mod n.
    y = tl.join(yr, yi)
    sel = tl.arange(0, 2)[None, None, :]
    jo = rout[:, None, None] * N2 + a2[None, :, None]
    t = (jo + (NN - start)) % NN
    tm = (t < length) & (sel < nrows)
    rows = tl.where(sel == 0, ra, rb)  # (1, 1, 2)
    if HAS_D:
        sm = tm & (t < Lskip)
        ue = tl.load(u_ptr + tl.load(u_off_ptr + rows) + t * u_s, mask=sm, other=0.0).to(CT)
        if HAS_PRE:
            ue = ue * tl.load(pre_ptr + tl.load(pre_off_ptr + rows) + t * pre_s, mask=sm, other=0.0).to(CT)
        y = y + ue * tl.load(d_ptr + tl.load(d_off_ptr + rows) + t * d_s, mask=tm, other=0.0).to(CT)
    if HAS_POST:
        y = y * tl.load(post_ptr + tl.load(post_off_ptr + rows) + t * post_s, mask=tm, other=0.0).to(CT)
    tl.store(out_ptr + rows * length + t, y.to(out_ptr.dtype.element_ty), mask=tm)


# Both builds of the same kernel: compiled for CUDA tensors, interpreted (TRITON_INTERPRET=1) for CPU
# tensors.  Built explicitly rather than with @triton.jit, which picks one from the environment at
# import time, so importing this module first in a GPU process does not fix the mode for good.
MONARCH_CONV2 = {False: JITFunction(_monarch_conv2), True: InterpretedFunction(_monarch_conv2)}
