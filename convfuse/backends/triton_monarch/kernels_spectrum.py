"""Triton kernels for kernel spectra in Monarch order, and the forward/inverse halves the
backward kernels (kernels_grad.py) share.

The fused kernels multiply by a kernel spectrum laid out in Monarch order (plan.kernel_spectrum).
Built with torch it is a full complex FFT of every kernel row, then a reshape, a permute and a
stacking copy: three passes through memory after the transform.  Here one program per kernel row
runs the forward Monarch stages of the fused kernels (the order they read falls out of the
factorization for free) and writes the planes, with the operator's scale (times m: the stages
divide by their radices), a correlation's conjugate, a frequency-sparse mask and the kept columns
folded into the store.  A kernel row is real and transformed alone (imaginary plane zero): two
rows packed as one complex signal would need the mirrored frequency -f to separate them, a
permutation of the tile registers cannot do.

    2 radices: X (RIN, N2) -> C = (F1[:, :RIN] @ X / N1 * TW) @ F2[:, cols] / N2   (N1, W)
    3 radices: X (RIN, M)  -> S[k2, k1, k3], stored at [k1, k2, k3]               (N1, N2, N3)

The outer plans' orders (N0, M1, M2), n = N0 * m (``_spectrum_outer``): a row is too long for one
program, so KB0 = 16 programs' worth of first-radix frequencies k0 go to each program, the
row's N0 / 16 programs in one launch.  Each runs the outer pass for its block, as a dot, into a
scratch slice of its own (no other program reads it, so no grid-wide barrier is needed), then
the inner forward stages G = 4096/m sequences at a time (a tile of 4096 complex samples):

    Z[kb, j'] = F0[kb, :RIN0] @ X / N0        (16, RIN0) @ (RIN0, m), in column chunks of BJ
    per G k0: Zt = (Z[k0] * W_n^(k0 j')) as [g, j2, j1]          (G*M2, M1)
              B = Zt @ F1 / M1 * TW, permuted to [g, k1, j2]     (G*M1, M2)
              C = B @ F2[:, cols] / M2                           (G*M1, W)

stored at [k0, k1, c]: frequency k0 + N0*(k1 + M1*cols[c]), kept columns and mask as above.
"""

from __future__ import annotations

import triton.language as tl

from convfuse.backends.triton_monarch.kernels_common import _cdot, _cmul, _first_stage, _twiddle, builds, device


@device
def _fwd2(f1_ptr, f2_ptr, tw_ptr, xr, xi, col0,
          N1: tl.constexpr, RIN: tl.constexpr, N2: tl.constexpr, W: tl.constexpr, PREC: tl.constexpr):
    # X (RIN, N2), row-major signal x[N2*j1 + j2] -> C (N1, W) = spectrum / m at k1 + N1*cols[c],
    # cols = (col0 + c) mod N2 (all N2 when W == N2): 8 dots
    CT = tw_ptr.dtype.element_ty
    DT = f2_ptr.dtype.element_ty
    br, bi = _first_stage(f1_ptr, tw_ptr, xr, xi, N1, RIN, N2, PREC)
    a2 = tl.arange(0, N2)
    aw = tl.arange(0, W)
    if W == N2:
        cols = aw
    else:
        cols = (col0 + aw) % N2
    fwd = a2[:, None] * N2 + cols[None, :]  # F2[:, cols]  (N2, W)
    cr, ci = _cdot(br.to(DT), bi.to(DT), tl.load(f2_ptr + fwd), tl.load(f2_ptr + N2 * N2 + fwd), False, False, PREC)
    return cr.to(CT) * (1.0 / N2), ci.to(CT) * (1.0 / N2)


@device
def _inv2(f1_ptr, f2_ptr, tw_ptr, cr, ci, col0,
          N1: tl.constexpr, N2: tl.constexpr, W: tl.constexpr, ROUT: tl.constexpr, PREC: tl.constexpr):
    # C (N1, W) Monarch order -> Y (ROUT, N2) row-major: the unnormalised inverse (the forward
    # stages already divided by m), first ROUT rows only (a window in the first half): 8 dots
    CT = tw_ptr.dtype.element_ty
    DT = f2_ptr.dtype.element_ty
    a1 = tl.arange(0, N1)
    a2 = tl.arange(0, N2)
    aw = tl.arange(0, W)
    if W == N2:
        cols = aw
    else:
        cols = (col0 + aw) % N2
    inv = cols[:, None] * N2 + a2[None, :]  # F2[cols, :]  (W, N2)
    dr, di = _cdot(cr.to(DT), ci.to(DT), tl.load(f2_ptr + inv), tl.load(f2_ptr + N2 * N2 + inv), False, True, PREC)
    dr, di = _twiddle(tw_ptr, dr.to(CT), di.to(CT), N1, N2, True)
    g1 = tl.arange(0, ROUT)[:, None] * N1 + a1[None, :]  # conj(F1)[:ROUT]  (ROUT, N1)
    yr, yi = _cdot(tl.load(f1_ptr + g1), tl.load(f1_ptr + N1 * N1 + g1), dr.to(DT), di.to(DT), True, False, PREC)
    return yr.to(CT), yi.to(CT)


@device
def _masked(cr, ci, f, mult_ptr, bins, NN: tl.constexpr, CONJ: tl.constexpr):
    # times m*scale (one compute-dtype value: a float argument would be fp32 in an fp64 kernel),
    # conjugated for a correlation, frequencies bins <= f <= m - bins zeroed when bins > 0 (the
    # one-sided mask on both sides; an empty range when bins > m - bins)
    mult = tl.load(mult_ptr)
    cr = cr * mult
    if CONJ:
        ci = -ci * mult
    else:
        ci = ci * mult
    lo = tl.where(bins > 0, bins, NN + 1)  # bins == 0: nothing dropped
    drop = (f >= lo) & (f <= NN - bins)
    return tl.where(drop, 0.0, cr), tl.where(drop, 0.0, ci)


def _spectrum2(
    k_ptr, k_off_ptr, k_s,  # kernel row r at k_ptr + k_off[r] + j * k_s, j < Lk
    out_ptr,  # (rows, 2, N1, W) compute dtype, Monarch order, kept columns only
    f1_ptr, f2_ptr, tw_ptr,  # (2, N1, N1), (2, N2, N2) compute dtype; (2, N1, N2)
    mult_ptr,  # (1,) m * scale, compute dtype
    Lk, bins, col0,
    N1: tl.constexpr, N2: tl.constexpr, W: tl.constexpr, RIN: tl.constexpr,
    CONJ: tl.constexpr, PREC: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    CT = tw_ptr.dtype.element_ty
    j = tl.arange(0, RIN)[:, None] * N2 + tl.arange(0, N2)[None, :]  # (RIN, N2); rows >= RIN zero padding
    x = tl.load(k_ptr + tl.load(k_off_ptr + row) + j * k_s, mask=j < Lk, other=0.0).to(CT)
    cr, ci = _fwd2(f1_ptr, f2_ptr, tw_ptr, x, tl.full((RIN, N2), 0.0, CT), col0, N1, RIN, N2, W, PREC)
    aw = tl.arange(0, W)
    if W == N2:
        cols = aw
    else:
        cols = (col0 + aw) % N2
    f = tl.arange(0, N1)[:, None] + N1 * cols[None, :]  # (N1, W) frequency of each entry
    cr, ci = _masked(cr, ci, f, mult_ptr, bins, N1 * N2, CONJ)
    o = out_ptr + row * (2 * N1 * W) + tl.arange(0, N1)[:, None] * W + aw[None, :]
    tl.store(o, cr.to(out_ptr.dtype.element_ty))
    tl.store(o + N1 * W, ci.to(out_ptr.dtype.element_ty))


def _spectrum3(
    k_ptr, k_off_ptr, k_s,
    out_ptr,  # (rows, 2, N1, N2, N3) compute dtype, Monarch order
    f1_ptr, f2_ptr, f3_ptr, tw1_ptr, t2_ptr,  # as kernels3.py: (2, Ni, Ni); (2, N1, N2*N3); (2, N2, N3)
    mult_ptr, Lk, bins,
    N1: tl.constexpr, N2: tl.constexpr, N3: tl.constexpr, RIN: tl.constexpr,
    CONJ: tl.constexpr, PREC: tl.constexpr,
):
    # the forward half of kernels3.py on one real row
    M: tl.constexpr = N2 * N3
    Q: tl.constexpr = N1 * N3
    row = tl.program_id(0).to(tl.int64)
    CT = tw1_ptr.dtype.element_ty
    DT = f1_ptr.dtype.element_ty
    a2 = tl.arange(0, N2)
    a3 = tl.arange(0, N3)
    j = tl.arange(0, RIN)[:, None] * M + tl.arange(0, M)[None, :]  # (RIN, M)
    x = tl.load(k_ptr + tl.load(k_off_ptr + row) + j * k_s, mask=j < Lk, other=0.0).to(CT)
    br, bi = _first_stage(f1_ptr, tw1_ptr, x, tl.full((RIN, M), 0.0, CT), N1, RIN, M, PREC)  # (N1, M)
    # [k1, j2, j3] -> [j2, k1, j3]: stage 2 contracts j2   (N2, N2) @ (N2, N1*N3)
    br = tl.reshape(tl.permute(tl.reshape(br, (N1, N2, N3)), (1, 0, 2)), (N2, Q))
    bi = tl.reshape(tl.permute(tl.reshape(bi, (N1, N2, N3)), (1, 0, 2)), (N2, Q))
    f2 = a2[:, None] * N2 + a2[None, :]
    cr, ci = _cdot(tl.load(f2_ptr + f2), tl.load(f2_ptr + N2 * N2 + f2), br.to(DT), bi.to(DT), False, False, PREC)
    t2 = a2[:, None, None] * N3 + a3[None, None, :]  # (N2, 1, N3) W_M^(k2 j3), broadcast over k1
    cr, ci = _cmul(tl.reshape(cr.to(CT) * (1.0 / N2), (N2, N1, N3)), tl.reshape(ci.to(CT) * (1.0 / N2), (N2, N1, N3)),
                   tl.load(t2_ptr + t2), tl.load(t2_ptr + N2 * N3 + t2), False)
    # stage 3 over j3: (N2*N1, N3) @ (N3, N3) -> S[k2, k1, k3] = spectrum / m
    f3 = a3[:, None] * N3 + a3[None, :]
    sr, si = _cdot(tl.reshape(cr, (N2 * N1, N3)).to(DT), tl.reshape(ci, (N2 * N1, N3)).to(DT),
                   tl.load(f3_ptr + f3), tl.load(f3_ptr + N3 * N3 + f3), False, False, PREC)
    r = tl.arange(0, N2 * N1)  # r = k2*N1 + k1
    k1 = (r % N1)[:, None]
    k2 = (r // N1)[:, None]
    sr, si = _masked(sr.to(CT) * (1.0 / N3), si.to(CT) * (1.0 / N3), k1 + N1 * (k2 + N2 * a3[None, :]), mult_ptr,
                     bins, N1 * M, CONJ)
    o = out_ptr + row * (2 * N1 * M) + k1 * M + k2 * N3 + a3[None, :]  # [k1, k2, k3]
    tl.store(o, sr.to(out_ptr.dtype.element_ty))
    tl.store(o + N1 * M, si.to(out_ptr.dtype.element_ty))


def _spectrum_outer(
    k_ptr, k_off_ptr, k_s,
    out_ptr,  # (rows, 2, N0, M1, W) compute dtype, Monarch order, kept columns only
    z_ptr,  # (rows * N0 / KB0, 2, KB0, M1*M2) compute dtype: each program's outer-pass scratch
    f0_ptr, f1_ptr, f2_ptr, tw_ptr, otw_ptr,  # (2, N0, N0), (2, M1, M1), (2, M2, M2), (2, M1, M2), (2, N0, M)
    mult_ptr, Lk, bins, col0,
    N0: tl.constexpr, M1: tl.constexpr, M2: tl.constexpr, W: tl.constexpr, RIN0: tl.constexpr,
    KB0: tl.constexpr, BJ: tl.constexpr, G: tl.constexpr, CONJ: tl.constexpr, PREC: tl.constexpr,
):
    M: tl.constexpr = M1 * M2
    KC: tl.constexpr = 16  # K chunk of the outer dot (RIN0 >= 16: a causal half of N0 = 16 keeps all 16)
    row = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    CT = otw_ptr.dtype.element_ty
    DT = f0_ptr.dtype.element_ty
    ACC: tl.constexpr = tl.float64 if DT == tl.float64 else tl.float32
    kb = tl.arange(0, KB0)
    kc = tl.arange(0, KC)
    bj = tl.arange(0, BJ)
    k_row = k_ptr + tl.load(k_off_ptr + row)
    z_base = z_ptr + (row * (N0 // KB0) + blk) * (2 * KB0 * M)
    # ---- outer pass for k0 in [blk*KB0, blk*KB0 + KB0): a real row, so 2 dots per K chunk
    for jc in range(0, M, BJ):
        acc_r = tl.full((KB0, BJ), 0.0, ACC)
        acc_i = tl.full((KB0, BJ), 0.0, ACC)
        for c in range(0, RIN0, KC):
            j = (c + kc)[:, None] * M + (jc + bj)[None, :]  # (KC, BJ) samples m*j0 + j'
            x = tl.load(k_row + j * k_s, mask=j < Lk, other=0.0).to(DT)
            f = (blk * KB0 + kb)[:, None] * N0 + (c + kc)[None, :]
            acc_r += tl.dot(tl.load(f0_ptr + f), x, input_precision=PREC).to(ACC)
            acc_i += tl.dot(tl.load(f0_ptr + N0 * N0 + f), x, input_precision=PREC).to(ACC)
        zo = z_base + kb[:, None] * M + (jc + bj)[None, :]
        tl.store(zo, (acc_r * (1.0 / N0)).to(CT))
        tl.store(zo + KB0 * M, (acc_i * (1.0 / N0)).to(CT))
    tl.debug_barrier()  # this program's scratch stores before its loads below (other threads' values)
    # ---- inner forward stages, G sequences k0 at a time (G*M <= 4096 complex samples a tile).
    # z is read transposed, Zt[g, j2, j1] = z_k0[M2*j1 + j2], so stage 1 (over j1) is one right
    # product for all G (F1 is symmetric); a permute then puts j2 last for stage 2.
    r2 = tl.arange(0, G * M2)  # r2 = g*M2 + j2
    a1 = tl.arange(0, M1)
    jt = a1[None, :] * M2 + (r2 % M2)[:, None]  # (G*M2, M1) sample j' of Zt
    f1 = a1[:, None] * M1 + a1[None, :]
    f1r = tl.load(f1_ptr + f1)
    f1i = tl.load(f1_ptr + M1 * M1 + f1)
    twt = a1[None, :] * M2 + (r2 % M2)[:, None]  # TW[k1, j2] at [j2, k1]
    aw = tl.arange(0, W)
    if W == M2:
        cols = aw
    else:
        cols = (col0 + aw) % M2
    fwd = tl.arange(0, M2)[:, None] * M2 + cols[None, :]  # F2[:, cols]  (M2, W)
    f2r = tl.load(f2_ptr + fwd)
    f2i = tl.load(f2_ptr + M2 * M2 + fwd)
    r1 = tl.arange(0, G * M1)  # r1 = g*M1 + k1
    for i0 in range(0, KB0, G):
        k0t = blk * KB0 + i0 + r2 // M2  # (G*M2,) the sequence of each row of Zt
        zt = z_base + (i0 + r2 // M2)[:, None] * M + jt
        ot = otw_ptr + k0t[:, None] * M + jt
        zr, zi = _cmul(tl.load(zt), tl.load(zt + KB0 * M), tl.load(ot), tl.load(ot + N0 * M), False)  # * W_n^(k0 j')
        br, bi = _cdot(zr.to(DT), zi.to(DT), f1r, f1i, False, False, PREC)  # (G*M2, M1) @ (M1, M1)
        br, bi = _cmul(br.to(CT) * (1.0 / M1), bi.to(CT) * (1.0 / M1), tl.load(tw_ptr + twt),
                       tl.load(tw_ptr + M1 * M2 + twt), False)
        br = tl.reshape(tl.permute(tl.reshape(br, (G, M2, M1)), (0, 2, 1)), (G * M1, M2))
        bi = tl.reshape(tl.permute(tl.reshape(bi, (G, M2, M1)), (0, 2, 1)), (G * M1, M2))
        cr, ci = _cdot(br.to(DT), bi.to(DT), f2r, f2i, False, False, PREC)  # (G*M1, M2) @ (M2, W)
        k0 = blk * KB0 + i0 + r1 // M1
        f = (k0 + N0 * (r1 % M1))[:, None] + (N0 * M1) * cols[None, :]  # frequency k0 + N0*(k1 + M1*col)
        cr, ci = _masked(cr.to(CT) * (1.0 / M2), ci.to(CT) * (1.0 / M2), f, mult_ptr, bins, N0 * M, CONJ)
        o = out_ptr + row * (2 * N0 * M1 * W) + (blk * KB0 + i0) * (M1 * W) + r1[:, None] * W + aw[None, :]
        tl.store(o, cr.to(out_ptr.dtype.element_ty))
        tl.store(o + N0 * M1 * W, ci.to(out_ptr.dtype.element_ty))


SPECTRUM2 = builds(_spectrum2)
SPECTRUM_OUTER = builds(_spectrum_outer)
SPECTRUM3 = builds(_spectrum3)
