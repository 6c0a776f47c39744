"""Triton kernels: the fused Monarch FFT convolution, one program per pair of output rows.

Layout (see plan.py): a length-n row is the row-major (N1, N2) tile X[j1, j2] = x[N2*j1 + j2].
Two rows a, b that share a (real) kernel are packed as one complex signal x = xa + i*xb: since
the kernel is real, conv(xa + i xb, k) = conv(xa, k) + i conv(xb, k), so one complex transform
gives both results, as real and imaginary parts (16 dots per pair instead of 2 x 12).  Forward
transform, real/imag planes, all on-chip:

    B = F1 @ X / N1     (N1, N2)   4 dots (only N1/2 columns of F1 when the input is causal-padded)
    B = B * TW          (N1, N2)   twiddle, elementwise complex
    C = B @ F2 / N2     (N1, W)    4 dots; C[k1, k2] = spectrum/n at k1 + N1*k2 (Monarch order)
    C = C * Kspec       (N1, W)    kernel spectrum, already in Monarch order, times scale
    D = C @ conj(F2)    (N1, N2)   4 dots
    D = D * conj(TW)
    Y = conj(F1) @ D    (R, N2)    4 dots; R = N1/2 rows when the window lies in the first half;
                                   Re Y is row a, Im Y is row b

At N1 = 16 (256 = 16 x 16) the halves are 8 rows, below tl.dot's 16: the first stage stacks X's
real and imaginary planes in K and the last stage stacks Y's in M (kernels_common._first_stage,
_last_stage: 2 dots of 16 each, the same multiply-adds as 4 dots of 8), so the zero input half and
the discarded output half are skipped at every fused size.

W = N2 unless the kernel spectrum is frequency-sparse: then only the W columns k2 that hold
nonzero bins are computed and contracted over (kernels_common._spectral_middle).

then the epilogue on the window t = (N2*j1 + j2 - start) mod n < length: + ue[t] * D[t], * post[t], cast,
for both rows at once on a (R, N2, 2) tile.  Every operand is addressed as
base + row_offset[row] + t * last_stride, so batch broadcasting (e.g. a per-channel kernel or gate
against a (B, H, L) input) costs no copies.  A row without a partner has b = -1: its loads are
masked to zero and its stores dropped.

FRAMES (overlap-save, blocks.py): the programs' rows are frames, v = row * nf + f.  Frame f of a row
transforms input samples [in0 + f*length, in0 + f*length + n) (zero outside [0, Lu)), read in
place through the row's offset, and writes its window of ``length`` samples to output samples
[out0 + f*length, ...) below out_end; the epilogue reads D, gates and the skip term at those
output samples.
"""

from __future__ import annotations

import triton.language as tl

from convfuse.backends.triton_monarch.kernels_common import (
    _epilogue, _first_stage, _last_stage, _pair, _spectral_middle, _twiddle, builds,
)


def _monarch_conv2(
    pair_ptr,  # (pairs, 2) int64 rows (a, b), b = -1 for none; pairs sharing a kernel run back to back
    u_ptr, u_off_ptr, u_s,  # input: u[row] at u_ptr + u_off[row] + j * u_s
    pre_ptr, pre_off_ptr, pre_s,  # pre-gate, same addressing (ignored unless HAS_PRE)
    k_ptr, k_off_ptr,  # kernel spectrum planes (rows_k, 2, N1, W), k_off[row] -> element offset
    d_ptr, d_off_ptr, d_s,  # skip term D over the output window (ignored unless HAS_D)
    post_ptr, post_off_ptr, post_s,  # post-gate over the output window (ignored unless HAS_POST)
    out_ptr,  # (rows, out_len) contiguous
    f1_ptr, f2_ptr, tw_ptr,  # plan matrices: (2, N1, N1), (2, N2, N2), (2, N1, N2)
    Lu,  # input samples used (<= n): loads beyond are zero (torch.fft truncation/padding)
    Lskip,  # length of ue for the skip term (== out_len when HAS_D)
    start, length,  # window of the size-n cyclic result each program row writes
    out_len,  # output row length (== length without FRAMES)
    col0,  # first kept spectrum column (W < N2: frequency-sparse kernel), else 0
    nf, in0, out0, out_end,  # FRAMES only: frames per row, first frame's input / output sample, output end
    N1: tl.constexpr, N2: tl.constexpr, W: tl.constexpr,
    HALF_IN: tl.constexpr, HALF_OUT: tl.constexpr, FRAMES: tl.constexpr,
    HAS_PRE: tl.constexpr, HAS_D: tl.constexpr, HAS_POST: tl.constexpr,
    PREC: tl.constexpr,
):
    NN: tl.constexpr = N1 * N2
    RIN: tl.constexpr = N1 // 2 if HALF_IN else N1  # rows of X that can be nonzero
    ROUT: tl.constexpr = N1 // 2 if HALF_OUT else N1  # rows of y that the window can read
    va, vb, has_b = _pair(pair_ptr)
    nrows = tl.where(has_b, 2, 1)
    if FRAMES:
        ra = va // nf  # the operand rows; every offset table is per row, not per frame
        rb = vb // nf
        # sample indices fit int32 (|index| < n): int64 scalars would widen every index tile
        ia = (in0 + (va % nf) * length).to(tl.int32)  # input sample of frame sample 0
        ib = (in0 + (vb % nf) * length).to(tl.int32)
        oa = (out0 + (va % nf) * length).to(tl.int32)  # output sample of window sample 0
        ob = (out0 + (vb % nf) * length).to(tl.int32)
    else:
        ra = va
        rb = vb
    CT = tw_ptr.dtype.element_ty  # compute dtype (fp32 / fp64)

    a2 = tl.arange(0, N2)
    rin = tl.arange(0, RIN)

    # ---- load Xa, Xb (RIN, N2) with the pre-gate fused; rows >= RIN are zero by causal padding
    j = rin[:, None] * N2 + a2[None, :]
    if FRAMES:
        ja = j + ia
        jb = j + ib
        jm = (ja >= 0) & (ja < Lu)
        jmb = (jb >= 0) & (jb < tl.where(has_b, Lu, 0))
    else:
        ja = j
        jb = j
        jm = j < Lu
        jmb = j < tl.where(has_b, Lu, 0)  # (not jm & scalar: the interpreter makes that mask int32)
    ua = u_ptr + tl.load(u_off_ptr + ra)
    ub = u_ptr + tl.load(u_off_ptr + rb)
    xa = tl.load(ua + ja * u_s, mask=jm, other=0.0).to(CT)
    xb = tl.load(ub + jb * u_s, mask=jmb, other=0.0).to(CT)
    if HAS_PRE:
        pa = pre_ptr + tl.load(pre_off_ptr + ra)
        pb = pre_ptr + tl.load(pre_off_ptr + rb)
        xa = xa * tl.load(pa + ja * pre_s, mask=jm, other=0.0).to(CT)
        xb = xb * tl.load(pb + jb * pre_s, mask=jmb, other=0.0).to(CT)

    # ---- stage 1 and twiddle: B = (F1[:, :RIN] @ (Xa + i Xb)) * TW   (N1, RIN) @ (RIN, N2): 4 dots
    # (2 with the planes stacked in K where RIN = 8: kernels_common._first_stage)
    br, bi = _first_stage(f1_ptr, tw_ptr, xa, xb, N1, RIN, N2, PREC)

    # ---- stage 2, kernel spectrum (Monarch order, scale folded in; a and b share it), inverse stage 2
    dr, di = _spectral_middle(br, bi, f2_ptr, k_ptr + tl.load(k_off_ptr + ra), col0, N1, N2, W, N1 * W, PREC)
    dr, di = _twiddle(tw_ptr, dr, di, N1, N2, True)

    # ---- inverse stage 1: Y = conj(F1)[:ROUT] @ D   (ROUT, N1) @ (N1, N2): 4 dots (2 stacked ones at ROUT = 8)
    y, sel, jo = _last_stage(f1_ptr, dr, di, N1, ROUT, N2, PREC)

    # ---- window + epilogue on (ROUT, N2, 2): [..., 0] (sel 0) is row a, [..., 1] row b.
    # Sample jo of the cyclic result is window sample t = (jo - start) mod n, output sample o.
    t = (jo + (NN - start)) % NN
    if FRAMES:
        o = t + tl.where(sel == 0, oa, ob)
        tm = (t < length) & (o < out_end) & (sel < nrows)
    else:
        o = t
        tm = (t < length) & (sel < nrows)
    _epilogue(y, o, tm, tl.where(sel == 0, ra, rb), u_ptr, u_off_ptr, u_s, pre_ptr, pre_off_ptr, pre_s,
              d_ptr, d_off_ptr, d_s, post_ptr, post_off_ptr, post_s, out_ptr, out_len, Lskip, HAS_PRE, HAS_D, HAS_POST)


# Both builds of the same kernel: compiled for CUDA tensors, interpreted (TRITON_INTERPRET=1) for CPU
# tensors (kernels_common.builds), so importing this module first in a GPU process does not fix the
# mode for good.
MONARCH_CONV2 = builds(_monarch_conv2)
