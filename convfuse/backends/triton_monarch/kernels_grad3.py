"""Triton kernels of the three-level fused backward (grad3.py): fft_conv_grad's d ue, d k and h at
4K..32K (fused3.FACTORS3), the formulas and row pairing of kernels_grad.py on the factorization of
kernels3.py.

``_fwd3`` and ``_inv3`` are kernels3.py's two halves as device functions (kernels3.py keeps its
forward inline; it could call these).  A row is x[M*j1 + N3*j2 + j3], M = N2*N3; its spectrum / m
comes out as S (N2*N1, N3), row r = k2*N1 + k1, column k3, frequency k1 + N1*(k2 + N2*k3): the
order the forward multiplies in, so the kernel spectrum (Monarch order [k1, k2, k3], the forward's)
is read at permuted offsets, and the d k sum is kept in S's own order.  Per pair of rows sharing
a kernel row (kernels_grad.py for why one complex transform serves both, and why the sum of
Zg * conj(Zu) over pairs inverts to the sum of both rows' terms):

    Zg = fwd(g_a + i g_b)          12 dots   (RIN = N1/2 input rows where g is causal, N1 = 32)
    d ue = inv(Zg * conj(K))       12 dots   window at -start; ROUT = N1/2 rows where it is early
    Zu = fwd(ue_a + i ue_b)        12 dots   only for d k or h
    sum += Zg * conj(Zu)                     d k, summed over the kernel row's pairs in frequency
    h = inv(Zu * K)                12 dots   window at start (a post gate's gradient)

GRAD3: one program per (kernel row, chunk), every C-th pair of its kernel row from its chunk, as
kernels_grad.GRAD2.  The d k sum is (N2*N1, N3) per plane: DK_REGS keeps it in registers (stored
once at the end), otherwise it lives in acc[chunk, kernel row] in global memory, read and written
back per pair (the program owns that slice: no atomics).  STASH parks Zg in a slice of the same
shape through d ue's inverse and Zu's forward.  Held in registers, the sum and Zg are live complex
tiles beside an inverse's temporaries (64 registers a tile at 8K and 8 warps); grad3.py's tables
say which the compiles kept where.  GRAD3_DK: one program per
kernel row sums the C partial sums, scales by m * s (both forward transforms divided by m),
conjugates for a correlation, inverts once and writes d k's window (the real part).
"""

from __future__ import annotations

import triton.language as tl

from convfuse.backends.triton_monarch.kernels_common import _cdot, _cmul, _first_stage, _twiddle, builds, device


@device
def _fwd3(f1_ptr, f2_ptr, f3_ptr, tw1_ptr, t2_ptr, xr, xi,
          N1: tl.constexpr, RIN: tl.constexpr, N2: tl.constexpr, N3: tl.constexpr, PREC: tl.constexpr):
    # X (RIN, M) -> S (N2*N1, N3) = spectrum / m; rows of X beyond RIN are zero (causal padding)
    M: tl.constexpr = N2 * N3
    Q: tl.constexpr = N1 * N3
    CT = tw1_ptr.dtype.element_ty
    DT = f1_ptr.dtype.element_ty
    a2 = tl.arange(0, N2)
    a3 = tl.arange(0, N3)
    br, bi = _first_stage(f1_ptr, tw1_ptr, xr, xi, N1, RIN, M, PREC)  # (N1, RIN) @ (RIN, M)
    # [k1, j2, j3] -> [j2, k1, j3]: stage 2 contracts j2   (N2, N2) @ (N2, N1*N3)
    br = tl.reshape(tl.permute(tl.reshape(br, (N1, N2, N3)), (1, 0, 2)), (N2, Q))
    bi = tl.reshape(tl.permute(tl.reshape(bi, (N1, N2, N3)), (1, 0, 2)), (N2, Q))
    f2 = a2[:, None] * N2 + a2[None, :]
    cr, ci = _cdot(tl.load(f2_ptr + f2), tl.load(f2_ptr + N2 * N2 + f2), br.to(DT), bi.to(DT), False, False, PREC)
    t2 = a2[:, None, None] * N3 + a3[None, None, :]  # (N2, 1, N3) W_M^(k2 j3), broadcast over k1
    cr, ci = _cmul(tl.reshape(cr.to(CT) * (1.0 / N2), (N2, N1, N3)), tl.reshape(ci.to(CT) * (1.0 / N2), (N2, N1, N3)),
                   tl.load(t2_ptr + t2), tl.load(t2_ptr + N2 * N3 + t2), False)
    f3 = a3[:, None] * N3 + a3[None, :]  # (N2*N1, N3) @ (N3, N3)
    sr, si = _cdot(tl.reshape(cr, (N2 * N1, N3)).to(DT), tl.reshape(ci, (N2 * N1, N3)).to(DT),
                   tl.load(f3_ptr + f3), tl.load(f3_ptr + N3 * N3 + f3), False, False, PREC)
    return sr.to(CT) * (1.0 / N3), si.to(CT) * (1.0 / N3)


@device
def _inv3(f1_ptr, f2_ptr, f3_ptr, tw1_ptr, t2_ptr, sr, si,
          N1: tl.constexpr, N2: tl.constexpr, N3: tl.constexpr, ROUT: tl.constexpr, PREC: tl.constexpr):
    # S (N2*N1, N3) -> Y (ROUT, M) row-major: the unnormalised inverse (the forward stages divided
    # by m), its first ROUT rows of N1 only
    M: tl.constexpr = N2 * N3
    Q: tl.constexpr = N1 * N3
    CT = tw1_ptr.dtype.element_ty
    DT = f1_ptr.dtype.element_ty
    a1 = tl.arange(0, N1)
    a2 = tl.arange(0, N2)
    a3 = tl.arange(0, N3)
    f3 = a3[:, None] * N3 + a3[None, :]  # S @ conj(F3)   (N2*N1, N3) @ (N3, N3)
    dr, di = _cdot(sr.to(DT), si.to(DT), tl.load(f3_ptr + f3), tl.load(f3_ptr + N3 * N3 + f3), False, True, PREC)
    t2 = a2[:, None, None] * N3 + a3[None, None, :]
    dr, di = _cmul(tl.reshape(dr.to(CT), (N2, N1, N3)), tl.reshape(di.to(CT), (N2, N1, N3)),
                   tl.load(t2_ptr + t2), tl.load(t2_ptr + N2 * N3 + t2), True)
    f2 = a2[:, None] * N2 + a2[None, :]  # conj(F2) @ D   (N2, N2) @ (N2, N1*N3)
    er, ei = _cdot(tl.load(f2_ptr + f2), tl.load(f2_ptr + N2 * N2 + f2), tl.reshape(dr, (N2, Q)).to(DT),
                   tl.reshape(di, (N2, Q)).to(DT), True, False, PREC)
    er = tl.reshape(tl.permute(tl.reshape(er.to(CT), (N2, N1, N3)), (1, 0, 2)), (N1, M))
    ei = tl.reshape(tl.permute(tl.reshape(ei.to(CT), (N2, N1, N3)), (1, 0, 2)), (N1, M))
    er, ei = _twiddle(tw1_ptr, er, ei, N1, M, True)
    g1 = tl.arange(0, ROUT)[:, None] * N1 + a1[None, :]  # conj(F1)[:ROUT] @ E   (ROUT, N1) @ (N1, M)
    yr, yi = _cdot(tl.load(f1_ptr + g1), tl.load(f1_ptr + N1 * N1 + g1), er.to(DT), ei.to(DT), True, False, PREC)
    return yr.to(CT), yi.to(CT)


@device
def _spec_offsets(dz, N1: tl.constexpr, N2: tl.constexpr, N3: tl.constexpr):
    # (N2*N1, N3) offsets of S's entries in a Monarch-order [k1, k2, k3] plane, and in a plane
    # stored in S's own order [k2, k1, k3]; dz: an int32 zero (see the pair loop)
    r = tl.arange(0, N2 * N1) + dz
    a3 = tl.arange(0, N3)
    return ((r % N1) * (N2 * N3) + (r // N1) * N3)[:, None] + a3[None, :], r[:, None] * N3 + a3[None, :]


@device
def _inv3_window(f1_ptr, f2_ptr, f3_ptr, tw1_ptr, t2_ptr, cr, ci, out_ptr, out_row, start, length, ra, rb, has_b, dz,
                 N1: tl.constexpr, N2: tl.constexpr, N3: tl.constexpr, ROUT: tl.constexpr, PREC: tl.constexpr):
    # inverse of C, then cyclic samples [start, start + length): re to row ra, im to row rb (if any)
    yr, yi = _inv3(f1_ptr, f2_ptr, f3_ptr, tw1_ptr, t2_ptr, cr, ci, N1, N2, N3, ROUT, PREC)
    M: tl.constexpr = N2 * N3
    jo = tl.arange(0, ROUT)[:, None] * M + tl.arange(0, M)[None, :] + dz  # (ROUT, M)
    t = (jo + (N1 * M - start)) % (N1 * M)
    tl.store(out_ptr + ra * out_row + t, yr.to(out_ptr.dtype.element_ty), mask=t < length)
    # (not a mask & scalar: the interpreter makes that mask int32)
    tl.store(out_ptr + rb * out_row + t, yi.to(out_ptr.dtype.element_ty), mask=t < tl.where(has_b, length, 0))


def _monarch_grad3(
    pair_ptr,  # (pairs, 2) int64 rows (a, b), b = -1 for none, grouped by kernel row
    grp_ptr,  # (rows_k + 1,) int64: the pairs of kernel row h are [grp[h], grp[h+1])
    g_ptr, g_off_ptr, g_s, Lg,  # g[row] at g_ptr + g_off[row] + t * g_s, t < Lg
    ue_ptr, ue_off_ptr, ue_s, Lu,  # ue likewise, j < Lu (min(length, n): the forward's truncation)
    k_ptr,  # (rows_k, 2, N1, N2, N3) the forward's prepared spectrum (ignored unless NEED_U or NEED_H)
    du_ptr, du_row, du_start, du_len,  # d ue: (rows, du_row), window du_len samples from du_start
    h_ptr, h_start, h_len,  # h: (rows, h_len) from h_start
    acc_ptr,  # (C, rows_k, 2, N2*N1, N3) compute dtype: partial sums of Zg * conj(Zu), S order
    stash_ptr,  # like acc: Zg of the pair in flight (STASH only)
    f1_ptr, f2_ptr, f3_ptr, tw1_ptr, t2_ptr,  # (2, Ni, Ni) x3, (2, N1, N2*N3), (2, N2, N3)
    C,  # chunks per kernel row
    zero,  # 0 at run time: see the pair loop
    N1: tl.constexpr, N2: tl.constexpr, N3: tl.constexpr,
    G_HALF: tl.constexpr, U_HALF: tl.constexpr, DU_HALF: tl.constexpr, H_HALF: tl.constexpr,
    NEED_U: tl.constexpr, NEED_K: tl.constexpr, NEED_H: tl.constexpr, DK_REGS: tl.constexpr,
    STASH: tl.constexpr, PREC: tl.constexpr,
):
    M: tl.constexpr = N2 * N3
    NN: tl.constexpr = N1 * M
    GIN: tl.constexpr = N1 // 2 if G_HALF else N1  # rows of g's (N1, M) tile that can be nonzero
    UIN: tl.constexpr = N1 // 2 if U_HALF else N1
    DOUT: tl.constexpr = N1 // 2 if DU_HALF else N1  # rows of the cyclic result a window reads
    HOUT: tl.constexpr = N1 // 2 if H_HALF else N1
    hk = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1).to(tl.int64)
    CT = tw1_ptr.dtype.element_ty
    am = tl.arange(0, M)
    k_base = k_ptr + hk * (2 * NN)
    own = (chunk * tl.num_programs(0) + hk) * (2 * NN)  # this program's slice of acc and stash
    accr = tl.full((N2 * N1, N3), 0.0, CT)
    acci = tl.full((N2 * N1, N3), 0.0, CT)
    if NEED_K and not DK_REGS:
        _, s_at = _spec_offsets(0, N1, N2, N3)
        tl.store(acc_ptr + own + s_at, accr)
        tl.store(acc_ptr + own + NN + s_at, acci)
        tl.debug_barrier()  # the zeros stored before the first pair's loads, whichever threads hold them
    lo = tl.load(grp_ptr + hk)
    hi = tl.load(grp_ptr + hk + 1)
    i = lo + chunk
    while i < hi:  # (not range(lo, hi, C): Triton's interpreter cannot loop to a loaded bound)
        ra = tl.load(pair_ptr + 2 * i)
        rb_raw = tl.load(pair_ptr + 2 * i + 1)
        has_b = rb_raw >= 0
        rb = tl.maximum(rb_raw, 0)
        # the plan's matrices are reloaded and the index tiles recomputed per pair (L1/L2 hits,
        # integer ops) rather than hoisted out of the loop and kept live beside the spectra: offset
        # by i & zero, which the compiler cannot prove loop-invariant (as kernels_mix.py; Triton
        # specializes integer arguments equal to 1, not 0)
        dz = i & zero
        dz32 = dz.to(tl.int32)
        k_at, s_at = _spec_offsets(dz32, N1, N2, N3)  # (N2*N1, N3)
        acc_at = acc_ptr + own + s_at
        stash_at = stash_ptr + own + s_at
        f1p = f1_ptr + dz
        f2p = f2_ptr + dz
        f3p = f3_ptr + dz
        tw1p = tw1_ptr + dz
        t2p = t2_ptr + dz
        kp = k_base + dz
        # ---- Zg = spectrum / m of g_a + i g_b   (GIN, M) -> (N2*N1, N3)
        jg = tl.arange(0, GIN)[:, None] * M + am[None, :] + dz32
        ga = tl.load(g_ptr + tl.load(g_off_ptr + ra) + jg * g_s, mask=jg < Lg, other=0.0).to(CT)
        gb = tl.load(g_ptr + tl.load(g_off_ptr + rb) + jg * g_s, mask=jg < tl.where(has_b, Lg, 0), other=0.0).to(CT)
        zgr, zgi = _fwd3(f1p, f2p, f3p, tw1p, t2p, ga, gb, N1, GIN, N2, N3, PREC)
        if STASH and NEED_K:
            # Zg waits in memory through d ue's inverse and Zu's forward: one spectrum live at a time
            tl.store(stash_at, zgr)
            tl.store(stash_at + NN, zgi)
        if NEED_U:
            # d ue = inverse of Zg * conj(K), window at -start; re: row a, im: row b
            cr, ci = _cmul(zgr, zgi, tl.load(kp + k_at), tl.load(kp + NN + k_at), True)
            _inv3_window(f1p, f2p, f3p, tw1p, t2p, cr, ci, du_ptr, du_row, du_start, du_len,
                         ra, rb, has_b, dz32, N1, N2, N3, DOUT, PREC)
        if NEED_K or NEED_H:
            ju = tl.arange(0, UIN)[:, None] * M + am[None, :] + dz32
            ua = tl.load(ue_ptr + tl.load(ue_off_ptr + ra) + ju * ue_s, mask=ju < Lu, other=0.0).to(CT)
            ub = tl.load(ue_ptr + tl.load(ue_off_ptr + rb) + ju * ue_s, mask=ju < tl.where(has_b, Lu, 0),
                         other=0.0).to(CT)
            zur, zui = _fwd3(f1p, f2p, f3p, tw1p, t2p, ua, ub, N1, UIN, N2, N3, PREC)
            if NEED_K:  # before h: Zg is dead during h's inverse
                if STASH:
                    tl.debug_barrier()  # the stash's stores before its loads, whichever threads hold them
                    zgr = tl.load(stash_at)
                    zgi = tl.load(stash_at + NN)
                pr, pi = _cmul(zgr, zgi, zur, zui, True)
                if DK_REGS:
                    accr += pr
                    acci += pi
                else:
                    # the slice is this program's alone; the barrier orders one pair's stores
                    # before the next pair's loads when the compiler gives them different threads
                    tl.store(acc_at, tl.load(acc_at) + pr)
                    tl.store(acc_at + NN, tl.load(acc_at + NN) + pi)
                    tl.debug_barrier()
            if NEED_H:
                # h = inverse of Zu * K, window at start
                cr, ci = _cmul(zur, zui, tl.load(kp + k_at), tl.load(kp + NN + k_at), False)
                _inv3_window(f1p, f2p, f3p, tw1p, t2p, cr, ci, h_ptr, h_len, h_start, h_len,
                             ra, rb, has_b, dz32, N1, N2, N3, HOUT, PREC)
        i += C
    if NEED_K and DK_REGS:
        _, s_at = _spec_offsets(0, N1, N2, N3)
        tl.store(acc_ptr + own + s_at, accr)
        tl.store(acc_ptr + own + NN + s_at, acci)


def _monarch_grad3_dk(
    acc_ptr,  # (C, rows_k, 2, N2*N1, N3) partial sums of Zg * conj(Zu), S order
    dk_ptr, dk_row, dk_start, dk_len,  # d k: (rows_k, dk_row), window dk_len samples from dk_start
    mult_ptr,  # (1,) m * s, compute dtype: the two forward transforms each divided by m
    f1_ptr, f2_ptr, f3_ptr, tw1_ptr, t2_ptr, C,
    N1: tl.constexpr, N2: tl.constexpr, N3: tl.constexpr, DK_HALF: tl.constexpr, CONJ: tl.constexpr,
    PREC: tl.constexpr,
):
    M: tl.constexpr = N2 * N3
    NN: tl.constexpr = N1 * M
    ROUT: tl.constexpr = N1 // 2 if DK_HALF else N1
    hk = tl.program_id(0).to(tl.int64)
    rows_k = tl.num_programs(0)
    CT = tw1_ptr.dtype.element_ty
    _, s_at = _spec_offsets(0, N1, N2, N3)
    sr = tl.full((N2 * N1, N3), 0.0, CT)
    si = tl.full((N2 * N1, N3), 0.0, CT)
    c = hk * 0  # an int64 counter: a while loop (the interpreter cannot range to an argument)
    while c < C:
        o = acc_ptr + (c * rows_k + hk) * (2 * NN) + s_at
        sr += tl.load(o)
        si += tl.load(o + NN)
        c += 1
    mult = tl.load(mult_ptr)
    sr = sr * mult
    if CONJ:
        si = -si * mult  # correlation: conj(G) * UE
    else:
        si = si * mult
    yr, yi = _inv3(f1_ptr, f2_ptr, f3_ptr, tw1_ptr, t2_ptr, sr, si, N1, N2, N3, ROUT, PREC)
    jo = tl.arange(0, ROUT)[:, None] * M + tl.arange(0, M)[None, :]  # (ROUT, M)
    t = (jo + (NN - dk_start)) % NN
    tl.store(dk_ptr + hk * dk_row + t, yr.to(dk_ptr.dtype.element_ty), mask=t < dk_len)  # real part: both rows' sum


GRAD3 = builds(_monarch_grad3)
GRAD3_DK = builds(_monarch_grad3_dk)
