"""The three-level fused kernel: n = N1 * N2 * N3 (4K = 16^3, 8K = 32x16x16, 16K = 32x32x16,
32K = 32^3) in one program per pair of rows, no pass through GPU memory.

A row is x[M*j1 + N3*j2 + j3], M = N2*N3, its frequencies f = k1 + N1*(k2 + N2*k3).  Two rows
sharing a real kernel are one complex signal (kernels.py).  Real/imaginary planes throughout:

    B = F1[:, :RIN] @ X / N1 * TW1       (N1, M)        TW1[k1, j'] = W_n^(k1 j'); RIN = N1/2 rows
                                                        when the input is causal-padded
    B -> (N2, N1*N3)                     permute [k1, j2, j3] -> [j2, k1, j3]
    C = F2 @ B / N2 * T2                 (N2, N1*N3)    T2[k2, j3] = W_M^(k2 j3)
    S = C @ F3 / N3                      (N2*N1, N3)    S[k2, k1, k3]: the spectrum / n
    S = S * K                            K read from the Monarch-order spectrum [k1, k2, k3] at
                                         the permuted offsets: no copy, no transpose
    D = S @ conj(F3) * conj(T2)          (N2*N1, N3)
    E = conj(F2) @ D                     (N2, N1*N3)  -> permute back to (N1, M)
    Y = conj(F1)[:ROUT] @ (E * conj(TW1))  (ROUT, M)    ROUT = N1/2 when the window is in the first half

At 4K (N1 = 16) the halves are 8 rows: stage 1 stacks X's planes in K and the last stage Y's in M
(kernels_common._first_stage, _last_stage), 2 dots of 16 each instead of 4 over the zero or
discarded half.  Then the window and the epilogue, as kernels.py.  Every forward stage divides by
its radix, so the inverse needs no 1/n and half-precision dot operands stay in range.  16 complex
dots per pair (the stacked first and last stages at 4K take 2 real dots each, not 4).
"""

from __future__ import annotations

import triton.language as tl

from convfuse.backends.triton_monarch.kernels_common import (
    _cdot, _cmul, _epilogue, _first_stage, _last_stage, _pair, builds,
)


def _monarch_conv3(
    pair_ptr,  # (pairs, 2) int64 rows (a, b), b = -1 for none
    u_ptr, u_off_ptr, u_s,
    pre_ptr, pre_off_ptr, pre_s,
    k_ptr, k_off_ptr,  # kernel spectrum planes (rows_k, 2, N1, N2, N3) in Monarch order
    d_ptr, d_off_ptr, d_s,
    post_ptr, post_off_ptr, post_s,
    out_ptr,  # (rows, length) contiguous
    f1_ptr, f2_ptr, f3_ptr,  # (2, N1, N1), (2, N2, N2), (2, N3, N3), dot dtype
    tw1_ptr, t2_ptr,  # (2, N1, N2*N3), (2, N2, N3), compute dtype
    Lu, Lskip, start, length,
    N1: tl.constexpr, N2: tl.constexpr, N3: tl.constexpr,
    HALF_IN: tl.constexpr, HALF_OUT: tl.constexpr,
    HAS_PRE: tl.constexpr, HAS_D: tl.constexpr, HAS_POST: tl.constexpr,
    PREC: tl.constexpr,
):
    M: tl.constexpr = N2 * N3
    NN: tl.constexpr = N1 * M
    Q: tl.constexpr = N1 * N3  # columns of the stage-2 view
    RIN: tl.constexpr = N1 // 2 if HALF_IN else N1
    ROUT: tl.constexpr = N1 // 2 if HALF_OUT else N1
    ra, rb, has_b = _pair(pair_ptr)
    nrows = tl.where(has_b, 2, 1)
    CT = tw1_ptr.dtype.element_ty
    DT = f1_ptr.dtype.element_ty

    am = tl.arange(0, M)
    a1 = tl.arange(0, N1)
    a2 = tl.arange(0, N2)
    a3 = tl.arange(0, N3)
    rin = tl.arange(0, RIN)

    # ---- load Xa + i Xb (RIN, M), pre-gate fused; rows >= RIN are causal zero padding
    j = rin[:, None] * M + am[None, :]
    jm = j < Lu
    jmb = j < tl.where(has_b, Lu, 0)
    xa = tl.load(u_ptr + tl.load(u_off_ptr + ra) + j * u_s, mask=jm, other=0.0).to(CT)
    xb = tl.load(u_ptr + tl.load(u_off_ptr + rb) + j * u_s, mask=jmb, other=0.0).to(CT)
    if HAS_PRE:
        xa = xa * tl.load(pre_ptr + tl.load(pre_off_ptr + ra) + j * pre_s, mask=jm, other=0.0).to(CT)
        xb = xb * tl.load(pre_ptr + tl.load(pre_off_ptr + rb) + j * pre_s, mask=jmb, other=0.0).to(CT)

    # ---- stage 1 over j1, twiddle W_n^(k1 j'):  (N1, RIN) @ (RIN, M)
    br, bi = _first_stage(f1_ptr, tw1_ptr, xa, xb, N1, RIN, M, PREC)

    # ---- stage 2 over j2: [k1, j2, j3] -> [j2, k1, j3], (N2, N2) @ (N2, N1*N3), twiddle W_M^(k2 j3)
    br = tl.reshape(tl.permute(tl.reshape(br, (N1, N2, N3)), (1, 0, 2)), (N2, Q))
    bi = tl.reshape(tl.permute(tl.reshape(bi, (N1, N2, N3)), (1, 0, 2)), (N2, Q))
    f2_idx = a2[:, None] * N2 + a2[None, :]
    f2r = tl.load(f2_ptr + f2_idx)
    f2i = tl.load(f2_ptr + N2 * N2 + f2_idx)
    cr, ci = _cdot(f2r, f2i, br.to(DT), bi.to(DT), False, False, PREC)
    t2 = a2[:, None, None] * N3 + a3[None, None, :]  # (N2, 1, N3), broadcast over k1
    t2r = tl.load(t2_ptr + t2)
    t2i = tl.load(t2_ptr + N2 * N3 + t2)
    cr, ci = _cmul(tl.reshape(cr.to(CT) * (1.0 / N2), (N2, N1, N3)), tl.reshape(ci.to(CT) * (1.0 / N2), (N2, N1, N3)),
                   t2r, t2i, False)

    # ---- stage 3 over j3: (N2*N1, N3) @ (N3, N3): S[k2, k1, k3]
    f3_idx = a3[:, None] * N3 + a3[None, :]
    f3r = tl.load(f3_ptr + f3_idx)
    f3i = tl.load(f3_ptr + N3 * N3 + f3_idx)
    sr, si = _cdot(tl.reshape(cr, (N2 * N1, N3)).to(DT), tl.reshape(ci, (N2 * N1, N3)).to(DT), f3r, f3i,
                   False, False, PREC)
    sr = sr.to(CT) * (1.0 / N3)
    si = si.to(CT) * (1.0 / N3)

    # ---- kernel spectrum: row r = k2*N1 + k1 of S sits at k1*M + k2*N3 in the [k1, k2, k3] order
    r = tl.arange(0, N2 * N1)
    k_idx = ((r % N1) * M + (r // N1) * N3)[:, None] + a3[None, :]
    k_base = k_ptr + tl.load(k_off_ptr + ra)
    sr, si = _cmul(sr, si, tl.load(k_base + k_idx), tl.load(k_base + NN + k_idx), False)

    # ---- inverse stage 3 and twiddle conj(W_M^(k2 j3))
    dr, di = _cdot(sr.to(DT), si.to(DT), f3r, f3i, False, True, PREC)
    dr, di = _cmul(tl.reshape(dr.to(CT), (N2, N1, N3)), tl.reshape(di.to(CT), (N2, N1, N3)), t2r, t2i, True)

    # ---- inverse stage 2: conj(F2) @ D  (N2, N2) @ (N2, N1*N3), then back to [k1, j2, j3]
    er, ei = _cdot(f2r, f2i, tl.reshape(dr, (N2, Q)).to(DT), tl.reshape(di, (N2, Q)).to(DT), True, False, PREC)
    er = tl.reshape(tl.permute(tl.reshape(er.to(CT), (N2, N1, N3)), (1, 0, 2)), (N1, M))
    ei = tl.reshape(tl.permute(tl.reshape(ei.to(CT), (N2, N1, N3)), (1, 0, 2)), (N1, M))
    tw = a1[:, None] * M + am[None, :]
    er, ei = _cmul(er, ei, tl.load(tw1_ptr + tw), tl.load(tw1_ptr + N1 * M + tw), True)

    # ---- inverse stage 1: conj(F1)[:ROUT] @ E   (ROUT, N1) @ (N1, M)
    y, sel, jo = _last_stage(f1_ptr, er, ei, N1, ROUT, M, PREC)

    # ---- window + epilogue on (ROUT, M, 2): [..., 0] row a, [..., 1] row b
    t = (jo + (NN - start)) % NN
    tm = (t < length) & (sel < nrows)
    _epilogue(y, t, tm, tl.where(sel == 0, ra, rb), u_ptr, u_off_ptr, u_s, pre_ptr, pre_off_ptr, pre_s,
              d_ptr, d_off_ptr, d_s, post_ptr, post_off_ptr, post_s, out_ptr, length, Lskip, HAS_PRE, HAS_D, HAS_POST)


MONARCH_CONV3 = builds(_monarch_conv3)
