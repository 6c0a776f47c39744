"""The fused kernel for two real rows with different kernels in one complex transform (B = 1).

kernels.py packs rows a, b as x = a + i b only when they share a kernel.  With kernels Ka != Kb
(spectra, one-sided as the reference's, here full-length in Monarch order):

    X = FFT(a + i b) = Fa + i Fb,   Y = FFT(a - i b) = Fa - i Fb   (= conj(X[-f]): X's mirror)
    Z = X * S + Y * T,   S = (Ka + Kb) / 2,  T = (Ka - Kb) / 2
      = Fa (S + T) + i Fb (S - T) = Fa Ka + i Fb Kb

and a, b, ka, kb real make Fa Ka and Fb Kb Hermitian, so IFFT(Z) = (a * ka) + i (b * kb): one
inverse serves both rows.  Y costs no extra stage-1 dots: with real a, b the four real dots of
stage 1 are F1r@a, F1i@a, F1r@b, F1i@b, and X and Y are the two ways to combine them.  Per pair:
stage 1 4 dots, stage 2 8 (X and Y), inverse 8: 20 dots for two rows, against 2 x 16 when each row
has a program (and half its complex lanes) to itself.  The pair's S and T are built per call in
torch from the kernel spectra (launch.py; one elementwise pass over (pairs, 2, 2, N1, N2), not
cached itself: the kernel spectra underneath are, under plan.py's rule).  Dense,
non-frames plans only (W = N2): sparse columns and overlap-save keep kernels.py's pairing.

At N1 = 16 (256) the discarded output half is skipped as in kernels.py (Y's planes stacked in M,
kernels_common._last_stage), the zero input half only in the loads: stage 1 here is four real
products F1r@a, F1i@a, F1r@b, F1i@b of K = 8, and stacking in K does not pair them the way a
complex product pairs its planes (X and Y would be four K = 16 dots, the work of the four
zero-padded K = 16 ones), so stage 1 keeps K = N1 = 16 with the upper rows loaded as zeros (masked,
no memory read).  A multiply-and-sum of K = 8 on CUDA cores would do only the needed products, but
trades four 16x16x16 tensor-core dots for 8K scalar FMAs a program: not done unmeasured.
"""

from __future__ import annotations

import triton.language as tl

from convfuse.backends.triton_monarch.kernels_common import (
    _cdot, _cmul, _epilogue, _last_stage, _pair, _twiddle, builds,
)


def _monarch_conv2_twok(
    pair_ptr,  # (pairs, 2) int64 rows (a, b), b = -1 for none; program p reads pair spectra p
    u_ptr, u_off_ptr, u_s, pre_ptr, pre_off_ptr, pre_s,
    st_ptr,  # (pairs, 2 [S, T], 2 [re, im], N1, N2) compute dtype, Monarch order, scale folded in
    d_ptr, d_off_ptr, d_s, post_ptr, post_off_ptr, post_s,
    out_ptr,  # (rows, length) contiguous
    f1_ptr, f2_ptr, tw_ptr,  # (2, N1, N1), (2, N2, N2), (2, N1, N2)
    Lu, Lskip, start, length,
    N1: tl.constexpr, N2: tl.constexpr, HALF_IN: tl.constexpr, HALF_OUT: tl.constexpr,
    HAS_PRE: tl.constexpr, HAS_D: tl.constexpr, HAS_POST: tl.constexpr, PREC: tl.constexpr,
):
    NN: tl.constexpr = N1 * N2
    RIN: tl.constexpr = N1 // 2 if HALF_IN and N1 >= 32 else N1  # K >= 16 for stage 1's real dots
    ROUT: tl.constexpr = N1 // 2 if HALF_OUT else N1
    pid = tl.program_id(0).to(tl.int64)
    ra, rb, has_b = _pair(pair_ptr)
    nrows = tl.where(has_b, 2, 1)
    CT = tw_ptr.dtype.element_ty
    DT = f1_ptr.dtype.element_ty
    a1 = tl.arange(0, N1)
    a2 = tl.arange(0, N2)
    rin = tl.arange(0, RIN)

    # ---- Xa, Xb (RIN, N2), pre-gate fused; rows >= RIN are zero (causal padding)
    j = rin[:, None] * N2 + a2[None, :]
    jm = j < Lu
    jmb = j < tl.where(has_b, Lu, 0)
    xa = tl.load(u_ptr + tl.load(u_off_ptr + ra) + j * u_s, mask=jm, other=0.0).to(CT)
    xb = tl.load(u_ptr + tl.load(u_off_ptr + rb) + j * u_s, mask=jmb, other=0.0).to(CT)
    if HAS_PRE:
        xa = xa * tl.load(pre_ptr + tl.load(pre_off_ptr + ra) + j * pre_s, mask=jm, other=0.0).to(CT)
        xb = xb * tl.load(pre_ptr + tl.load(pre_off_ptr + rb) + j * pre_s, mask=jmb, other=0.0).to(CT)

    # ---- stage 1, four real dots (N1, RIN) @ (RIN, N2); X = F1@(a + ib), Y = F1@(a - ib), / N1, * TW
    f1_idx = a1[:, None] * N1 + rin[None, :]
    f1r = tl.load(f1_ptr + f1_idx)
    f1i = tl.load(f1_ptr + N1 * N1 + f1_idx)
    par = tl.dot(f1r, xa.to(DT), input_precision=PREC).to(CT)
    pai = tl.dot(f1i, xa.to(DT), input_precision=PREC).to(CT)
    pbr = tl.dot(f1r, xb.to(DT), input_precision=PREC).to(CT)
    pbi = tl.dot(f1i, xb.to(DT), input_precision=PREC).to(CT)
    s1: tl.constexpr = 1.0 / N1
    bxr, bxi = _twiddle(tw_ptr, (par - pbi) * s1, (pai + pbr) * s1, N1, N2, False)
    byr, byi = _twiddle(tw_ptr, (par + pbi) * s1, (pai - pbr) * s1, N1, N2, False)

    # ---- stage 2 of X and Y (N1, N2) @ (N2, N2): 8 dots; Z = X S + Y T; inverse stage 2: 4 dots
    f2_idx = a2[:, None] * N2 + a2[None, :]
    f2r = tl.load(f2_ptr + f2_idx)
    f2i = tl.load(f2_ptr + N2 * N2 + f2_idx)
    cxr, cxi = _cdot(bxr.to(DT), bxi.to(DT), f2r, f2i, False, False, PREC)
    cyr, cyi = _cdot(byr.to(DT), byi.to(DT), f2r, f2i, False, False, PREC)
    kt = a1[:, None] * N2 + a2[None, :]
    st = st_ptr + pid * (4 * NN)
    s2: tl.constexpr = 1.0 / N2
    zr, zi = _cmul(cxr.to(CT) * s2, cxi.to(CT) * s2, tl.load(st + kt), tl.load(st + NN + kt), False)
    tr, ti = _cmul(cyr.to(CT) * s2, cyi.to(CT) * s2, tl.load(st + 2 * NN + kt), tl.load(st + 3 * NN + kt), False)
    # F2 is symmetric: conj(F2)[cols, :] is the same tile, conjugated
    dr, di = _cdot((zr + tr).to(DT), (zi + ti).to(DT), f2r, f2i, False, True, PREC)
    dr, di = _twiddle(tw_ptr, dr.to(CT), di.to(CT), N1, N2, True)

    # ---- inverse stage 1: conj(F1)[:ROUT] @ D   (ROUT, N1) @ (N1, N2): 4 dots (2 at ROUT = 8); Re row a, Im row b
    y, sel, jo = _last_stage(f1_ptr, dr, di, N1, ROUT, N2, PREC)
    t = (jo + (NN - start)) % NN
    tm = (t < length) & (sel < nrows)
    _epilogue(y, t, tm, tl.where(sel == 0, ra, rb), u_ptr, u_off_ptr, u_s, pre_ptr, pre_off_ptr, pre_s,
              d_ptr, d_off_ptr, d_s, post_ptr, post_off_ptr, post_s, out_ptr, length, Lskip, HAS_PRE, HAS_D, HAS_POST)


MONARCH_CONV2_TWOK = builds(_monarch_conv2_twok)
