"""Triton kernels for sizes beyond one program: an outer radix-N0 pass through GPU memory.

n = N0 * m with m a fused Monarch size (256..1024) and x[m*j0 + j'] viewed as the (N0, m) tile.
Frequencies are k = k0 + N0*k' and the convolution runs in three launches over a complex
buffer Z (rows, 2, N0, m) (real/imag planes), in the dot dtype when that is fp16/bf16, else fp32
(fp64 for fp64): every kernel accumulates in fp32 (``_acc``) and rounds to Z's dtype on store.

    outer_fwd   Z[k0, j'] = sum_j0 F0[k0, j0] x[m*j0 + j']                    per (row, block of j')
    inner       z = Z[k0, :] * W_n^(j' k0); Monarch FFT of size m (as the fused kernel, complex
                input); * kernel spectrum; inverse; * W_n^(-j' k0); store back   per (row, k0)
    outer_inv   y[m*j0 + j'] = Re sum_k0 conj(F0)[j0, k0] Z[k0, j'], then window + epilogue

Sizes beyond 128K add a middle level, n = N0A * N0B * m (``_mid``: complex DFT matmuls over N0B with
on-the-fly twiddles, forward and inverse), so five launches in all.

Both twiddles live in the inner kernel, so the outer passes are plain DFT matmuls, looped over
K chunks of KB (N0 up to 128 does not fit one dot's registers).  A frequency-sparse kernel
spectrum skips inner stage-2 columns exactly as the fused kernel does (W < M2): inner column k2
holds frequencies [k2 * n/M2, (k2+1) * n/M2) for every sequence.  Causal padding: the forward
pass reads only rows j0 < N0/2 when the input is in the first half, and the inverse computes only
rows j0 < N0/2 when the window is (both need N0/2 >= 16 for tl.dot).
"""

from __future__ import annotations

import triton.language as tl

from convfuse.backends.triton_monarch.kernels_common import (
    _cdot, _cmul, _epilogue, _first_stage, _pair, _spectral_middle, _twiddle, builds,
)

# Why a half Z loses nothing worth fp32's bytes: every consumer of Z casts it to the dot dtype
# before its tl.dot (outer_inv, mid) or after one fp32 twiddle multiply (inner), so a half Z adds
# at most one rounding (2^-11 relative in fp16, 2^-8 in bf16) to each of the values the half dots
# round anyway.  Range: Z after a forward pass is a radix-divided DFT, bounded by max|u * pre|; after
# the inner pass it is a partial inverse, bounded by the output a row's N0 partials sum to, so fp16
# overflows there only where the output itself would.  Accumulators stay fp32 (fp64 for fp64 dots):
# the accumulation dtype is read from the dot dtype, not from Z's.


def _outer_fwd(
    pair_ptr,  # (pairs, 2) int64 rows (a, b), b = -1 for none: x = xa + i xb (see kernels.py)
    u_ptr, u_off_ptr, u_s, pre_ptr, pre_off_ptr, pre_s,  # input rows (addressing as the fused kernel)
    z_ptr,  # (pairs, 2, N0, M) fp16/bf16 with half dots, else the compute dtype
    f0_ptr,  # (2, N0, N0) dot dtype
    Lu,
    N0: tl.constexpr, M: tl.constexpr, BJ: tl.constexpr, KB: tl.constexpr,
    HALF_IN: tl.constexpr, HAS_PRE: tl.constexpr, PREC: tl.constexpr,
):
    KIN: tl.constexpr = N0 // 2 if HALF_IN else N0  # rows j0 that can be nonzero
    pid = tl.program_id(0).to(tl.int64)
    ra, rb, has_b = _pair(pair_ptr)
    Lub = tl.where(has_b, Lu, 0)  # row b absent: every load of it masked
    jb = tl.program_id(1) * BJ
    DT = f0_ptr.dtype.element_ty
    CT: tl.constexpr = tl.float64 if DT == tl.float64 else tl.float32  # accumulation, not Z's dtype
    ZT = z_ptr.dtype.element_ty
    a0 = tl.arange(0, N0)
    kb = tl.arange(0, KB)
    cols = jb + tl.arange(0, BJ)
    ua = u_ptr + tl.load(u_off_ptr + ra)
    ub = u_ptr + tl.load(u_off_ptr + rb)
    if HAS_PRE:
        pa = pre_ptr + tl.load(pre_off_ptr + ra)
        pb = pre_ptr + tl.load(pre_off_ptr + rb)
    # tl.full, not tl.zeros: tl.zeros is itself a @triton.jit function whose build (compiled or
    # interpreted) was fixed when triton was imported, so it breaks the other build of this kernel
    acc_r = tl.full((N0, BJ), 0.0, CT)  # fp32 accumulation (fp64 for fp64 inputs)
    acc_i = tl.full((N0, BJ), 0.0, CT)
    for c in range(0, KIN, KB):
        # A chunk (KB, BJ) of the (N0, M) input tiles; F0[:, chunk] (N0, KB); 4 dots
        j = (c + kb)[:, None] * M + cols[None, :]
        jm = j < Lu
        jmb = j < Lub
        xa = tl.load(ua + j * u_s, mask=jm, other=0.0).to(CT)
        xb = tl.load(ub + j * u_s, mask=jmb, other=0.0).to(CT)
        if HAS_PRE:
            xa = xa * tl.load(pa + j * pre_s, mask=jm, other=0.0).to(CT)
            xb = xb * tl.load(pb + j * pre_s, mask=jmb, other=0.0).to(CT)
        f_idx = a0[:, None] * N0 + (c + kb)[None, :]
        fr = tl.load(f0_ptr + f_idx)
        fi = tl.load(f0_ptr + N0 * N0 + f_idx)
        pr, pi = _cdot(fr, fi, xa.to(DT), xb.to(DT), False, False, PREC)
        acc_r += pr.to(CT)
        acc_i += pi.to(CT)
    z_idx = pid * (2 * N0 * M) + a0[:, None] * M + cols[None, :]
    # forward stages divide by their radix (exact), keeping half-precision dot operands in range (kernels.py)
    tl.store(z_ptr + z_idx, (acc_r * (1.0 / N0)).to(ZT))
    tl.store(z_ptr + N0 * M + z_idx, (acc_i * (1.0 / N0)).to(ZT))


def _inner(
    z_ptr,  # (pairs, 2, NSEQ, M1*M2), read and written in place
    pair_ptr,  # (pairs, 2) int64: buffer row p holds rows (a, b), which share row a's spectrum
    k_ptr, k_off_ptr,  # spectrum planes (rows_k, 2, NSEQ, M1, W) in Monarch order, kept columns only
    f1_ptr, f2_ptr, tw_ptr,  # inner plan: (2, M1, M1), (2, M2, M2), (2, M1, M2)
    otw_ptr,  # twiddles of the enclosing level (2, NTW, M): W_(NTW*M)^(j' k0), k0 = sequence % NTW
    col0,  # first kept spectrum column (W < M2: frequency-sparse kernel), else 0
    NSEQ: tl.constexpr,  # length-M sequences per row: N0 (one outer level) or N0a*N0b (two)
    NTW: tl.constexpr,  # radix of the level right above: N0 or N0b
    M1: tl.constexpr, M2: tl.constexpr, W: tl.constexpr, PREC: tl.constexpr,
):
    M: tl.constexpr = M1 * M2
    N0: tl.constexpr = NSEQ  # plane size below is NSEQ * M = n
    pid = tl.program_id(0).to(tl.int64)
    row = pid // NSEQ  # buffer row (pair)
    ra = tl.load(pair_ptr + 2 * row).to(tl.int64)
    seq = pid % NSEQ
    k0 = seq % NTW
    CT = otw_ptr.dtype.element_ty  # compute dtype (fp32/fp64): Z may be half
    ZT = z_ptr.dtype.element_ty
    DT = f1_ptr.dtype.element_ty
    a1 = tl.arange(0, M1)
    a2 = tl.arange(0, M2)
    tile = a1[:, None] * M2 + a2[None, :]  # (M1, M2): j' = M2*j1 + j2
    zr_ptr = z_ptr + row * (2 * N0 * M) + seq * M
    zi_ptr = zr_ptr + N0 * M

    # z * W_n^(j' k0)
    otr = tl.load(otw_ptr + k0 * M + tile)
    oti = tl.load(otw_ptr + NTW * M + k0 * M + tile)
    zr, zi = _cmul(tl.load(zr_ptr + tile).to(CT), tl.load(zi_ptr + tile).to(CT), otr, oti, False)

    # stage 1, complex input, and twiddle: B = (F1 @ Z) * TW   (M1, M1) @ (M1, M2): 4 dots
    br, bi = _first_stage(f1_ptr, tw_ptr, zr, zi, M1, M1, M2, PREC)

    # stage 2, kernel spectrum for this k0 (scale folded in; the forward stages already divided
    # by n), inverse stage 2: (M1, M2) -> (M1, W) -> (M1, M2)
    k_base = k_ptr + tl.load(k_off_ptr + ra) + seq * (M1 * W)
    dr, di = _spectral_middle(br, bi, f2_ptr, k_base, col0, M1, M2, W, N0 * M1 * W, PREC)
    dr, di = _twiddle(tw_ptr, dr, di, M1, M2, True)

    # inverse stage 1, complex output: E = conj(F1) @ D
    f1_idx = a1[:, None] * M1 + a1[None, :]
    er, ei = _cdot(tl.load(f1_ptr + f1_idx), tl.load(f1_ptr + M1 * M1 + f1_idx), dr.to(DT), di.to(DT), True, False, PREC)

    # * W_n^(-j' k0), back to the buffer
    otr = tl.load(otw_ptr + k0 * M + tile)
    oti = tl.load(otw_ptr + NTW * M + k0 * M + tile)
    er, ei = _cmul(er.to(CT), ei.to(CT), otr, oti, True)
    tl.store(zr_ptr + tile, er.to(ZT))
    tl.store(zi_ptr + tile, ei.to(ZT))


def _outer_inv(
    pair_ptr,  # (pairs, 2) int64: Re of buffer row p is row a, Im is row b
    z_ptr, f0_ptr,
    u_ptr, u_off_ptr, u_s, pre_ptr, pre_off_ptr, pre_s,  # for the skip term ue * D
    d_ptr, d_off_ptr, d_s, post_ptr, post_off_ptr, post_s,
    out_ptr,  # (rows, length)
    Lskip, start, length,
    N0: tl.constexpr, M: tl.constexpr, BJ: tl.constexpr, KB: tl.constexpr,
    HALF_OUT: tl.constexpr, HAS_PRE: tl.constexpr, HAS_D: tl.constexpr, HAS_POST: tl.constexpr,
    PREC: tl.constexpr,
):
    NN: tl.constexpr = N0 * M
    ROUT: tl.constexpr = N0 // 2 if HALF_OUT else N0  # rows j0 the window can read
    pid = tl.program_id(0).to(tl.int64)
    ra, rb, has_b = _pair(pair_ptr)
    nrows = tl.where(has_b, 2, 1)
    jb = tl.program_id(1) * BJ
    DT = f0_ptr.dtype.element_ty
    CT: tl.constexpr = tl.float64 if DT == tl.float64 else tl.float32  # the epilogue's dtype too
    rout = tl.arange(0, ROUT)
    kb = tl.arange(0, KB)
    cols = jb + tl.arange(0, BJ)
    acc_r = tl.full((ROUT, BJ), 0.0, CT)
    acc_i = tl.full((ROUT, BJ), 0.0, CT)
    for c in range(0, N0, KB):
        # conj(F0)[:ROUT, chunk] @ Z[chunk, cols]   (ROUT, KB) @ (KB, BJ): 4 dots
        z_idx = pid * (2 * NN) + (c + kb)[:, None] * M + cols[None, :]
        zr = tl.load(z_ptr + z_idx).to(DT)
        zi = tl.load(z_ptr + NN + z_idx).to(DT)
        f_idx = rout[:, None] * N0 + (c + kb)[None, :]
        fr = tl.load(f0_ptr + f_idx)
        fi = tl.load(f0_ptr + N0 * N0 + f_idx)
        pr, pi = _cdot(fr, fi, zr, zi, True, False, PREC)
        acc_r += pr.to(CT)
        acc_i += pi.to(CT)

    # window + epilogue on (ROUT, BJ, 2), as in the fused kernel
    y = tl.join(acc_r, acc_i)
    sel = tl.arange(0, 2)[None, None, :]
    jo = rout[:, None, None] * M + cols[None, :, None]
    t = (jo + (NN - start)) % NN
    tm = (t < length) & (sel < nrows)
    _epilogue(y, t, tm, tl.where(sel == 0, ra, rb), u_ptr, u_off_ptr, u_s, pre_ptr, pre_off_ptr, pre_s,
              d_ptr, d_off_ptr, d_s, post_ptr, post_off_ptr, post_s, out_ptr, length, Lskip, HAS_PRE, HAS_D, HAS_POST)


def _mid(
    z_ptr,  # (rows, 2, N0A, N0B, M), read and written in place
    f_ptr,  # (2, N0B, N0B) dot dtype
    N0A: tl.constexpr, N0B: tl.constexpr, M: tl.constexpr, BJ: tl.constexpr, KB: tl.constexpr,
    INVERSE: tl.constexpr, PREC: tl.constexpr,
):
    # The middle level of a two-level plan n = N0A * (N0B * M), per (row, k0a, block of j''):
    #   forward:  s[j'] = Z[k0a, j'] * W_n^(j' k0a) with j' = M*j0b + j'', then a DFT over j0b
    #   inverse:  a conjugate DFT over k0b, then * W_n^(-j' k0a)
    # Twiddles are computed here (an (N0A, n/N0A) table would be as large as a row); the angle's
    # integer part j'*k0a < n is exact, so fp32 keeps ~1e-7 accuracy.
    NN: tl.constexpr = N0A * N0B * M
    pid = tl.program_id(0).to(tl.int64)
    row = pid // N0A
    k0a = pid % N0A
    jb = tl.program_id(1) * BJ
    DT = f_ptr.dtype.element_ty
    CT: tl.constexpr = tl.float64 if DT == tl.float64 else tl.float32  # twiddle angles need fp32
    ZT = z_ptr.dtype.element_ty
    ab = tl.arange(0, N0B)
    kb = tl.arange(0, KB)
    cols = jb + tl.arange(0, BJ)
    base = z_ptr + row * (2 * NN) + k0a * (N0B * M)
    acc_r = tl.full((N0B, BJ), 0.0, CT)
    acc_i = tl.full((N0B, BJ), 0.0, CT)
    for c in range(0, N0B, KB):
        jj = (c + kb)[:, None] * M + cols[None, :]  # (KB, BJ) positions j' of this chunk
        zr = tl.load(base + jj).to(CT)
        zi = tl.load(base + NN + jj).to(CT)
        if not INVERSE:
            ang = (jj * k0a).to(CT) * (-6.283185307179586 / NN)
            zr, zi = _cmul(zr, zi, tl.cos(ang), tl.sin(ang), False)
        f_idx = ab[:, None] * N0B + (c + kb)[None, :]
        fr = tl.load(f_ptr + f_idx)
        fi = tl.load(f_ptr + N0B * N0B + f_idx)
        pr, pi = _cdot(fr, fi, zr.to(DT), zi.to(DT), INVERSE, False, PREC)  # conj(F) @ Z when inverse
        acc_r += pr.to(CT)
        acc_i += pi.to(CT)
    jo = ab[:, None] * M + cols[None, :]  # (N0B, BJ) output positions
    if not INVERSE:  # forward stages divide by their radix (kernels.py)
        acc_r = acc_r * (1.0 / N0B)
        acc_i = acc_i * (1.0 / N0B)
    if INVERSE:
        ang = (jo * k0a).to(CT) * (6.283185307179586 / NN)
        acc_r, acc_i = _cmul(acc_r, acc_i, tl.cos(ang), tl.sin(ang), False)
    tl.store(base + jo, acc_r.to(ZT))
    tl.store(base + NN + jo, acc_i.to(ZT))


# compiled (CUDA) and interpreted (CPU, TRITON_INTERPRET=1) builds; see kernels_common.py
OUTER_FWD = builds(_outer_fwd)
INNER = builds(_inner)
MID = builds(_mid)
OUTER_INV = builds(_outer_inv)
