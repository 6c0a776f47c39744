"""Triton kernels of the fused backward (grad.py): fft_conv_grad's d ue, d k and h for the fused
sizes (n <= 2048, two radices), the model being cpu_grad.py.

With s the operator's scale, K the forward's prepared spectrum (s's scale part and a
correlation's conjugate folded in, Monarch order), G and UE the spectra of g and ue at size m:

    d ue = irfft(G * conj(K))               window at -start
    h    = irfft(UE * K)                    window at start      (a post gate's gradient needs it)
    d k  = s * irfft(sum_rows G * conj(UE)) window at -start     (correlation: conj of the sum, at start)

Two rows a, b sharing a kernel row are one complex signal, as in the forward (kernels.py): with
Zg = Ga + i Gb and Zu = Ua + i Ub, Zg * conj(K) and Zu * K invert to (row a) + i (row b)
because K is the spectrum of a real kernel.  For d k, Zg * conj(Zu) = (Ga conj Ua + Gb conj Ub)
+ i (Gb conj Ua - Ga conj Ub): both parts are spectra of real signals, so the real part of its
inverse is the sum of both rows' terms, and so is the real part of its conjugate's inverse.
So a sum over pairs of Zg * conj(Zu), taken in the frequency domain, inverts once per kernel row.

GRAD2: one program per (kernel row, chunk) loops over the row pairs of that kernel row, every
C-th from its chunk: per pair it transforms g once (and ue once when d k or h is asked for),
writes d ue and h rows, and adds Zg * conj(Zu) to an on-chip (N1, N2) sum, stored to
acc[chunk, kernel row].  GRAD_DK: one program per kernel row sums the C partial spectra, scales,
inverts once and writes the window of d k.  No atomics: the result does not depend on timing.
"""

from __future__ import annotations

import triton.language as tl

from convfuse.backends.triton_monarch.kernels_common import _cmul, builds, device
from convfuse.backends.triton_monarch.kernels_spectrum import _fwd2, _inv2


def _monarch_grad2(
    pair_ptr,  # (pairs, 2) int64 rows (a, b), b = -1 for none, grouped by kernel row
    grp_ptr,  # (rows_k + 1,) int64: the pairs of kernel row h are [grp[h], grp[h+1])
    g_ptr, g_off_ptr, g_s, Lg,  # g[row] at g_ptr + g_off[row] + t * g_s, t < Lg
    ue_ptr, ue_off_ptr, ue_s, Lu,  # ue likewise, j < Lu (min(length, n): the forward's truncation)
    k_ptr,  # (rows_k, 2, N1, N2) the forward's prepared spectrum (ignored unless NEED_U or NEED_H)
    du_ptr, du_row, du_start, du_len,  # d ue: (rows, du_row), window du_len samples from du_start
    h_ptr, h_start, h_len,  # h: (rows, h_len) from h_start
    acc_ptr,  # (C, rows_k, 2, N1, N2) compute dtype: partial sums of Zg * conj(Zu)
    f1_ptr, f2_ptr, tw_ptr,  # plan matrices: (2, N1, N1), (2, N2, N2), (2, N1, N2)
    C,  # chunks per kernel row
    N1: tl.constexpr, N2: tl.constexpr,
    G_HALF: tl.constexpr, U_HALF: tl.constexpr, DU_HALF: tl.constexpr, H_HALF: tl.constexpr,
    NEED_U: tl.constexpr, NEED_K: tl.constexpr, NEED_H: tl.constexpr, CONJ: tl.constexpr,
    PREC: tl.constexpr,
):
    NN: tl.constexpr = N1 * N2
    GIN: tl.constexpr = N1 // 2 if G_HALF else N1  # rows of g's tile that can be nonzero
    UIN: tl.constexpr = N1 // 2 if U_HALF else N1
    DOUT: tl.constexpr = N1 // 2 if DU_HALF else N1  # rows of the cyclic result a window reads
    HOUT: tl.constexpr = N1 // 2 if H_HALF else N1
    hk = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1).to(tl.int64)
    CT = tw_ptr.dtype.element_ty
    a1 = tl.arange(0, N1)
    a2 = tl.arange(0, N2)
    kt = a1[:, None] * N2 + a2[None, :]  # (N1, N2) offsets of a Monarch-order plane
    k_base = k_ptr + hk * (2 * NN)
    acc_base = acc_ptr + (chunk * tl.num_programs(0) + hk) * (2 * NN) + kt
    accr = tl.full((N1, N2), 0.0, CT)
    acci = tl.full((N1, N2), 0.0, CT)
    lo = tl.load(grp_ptr + hk)
    hi = tl.load(grp_ptr + hk + 1)
    i = lo + chunk
    while i < hi:  # (not range(lo, hi, C): Triton 3.6's interpreter cannot loop to a loaded bound)
        ra = tl.load(pair_ptr + 2 * i)
        rb_raw = tl.load(pair_ptr + 2 * i + 1)
        has_b = rb_raw >= 0
        rb = tl.maximum(rb_raw, 0)
        # ---- Zg = spectrum / m of g_a + i g_b   (GIN, N2) -> (N1, N2)
        jg = tl.arange(0, GIN)[:, None] * N2 + a2[None, :]
        ga = tl.load(g_ptr + tl.load(g_off_ptr + ra) + jg * g_s, mask=jg < Lg, other=0.0).to(CT)
        gb = tl.load(g_ptr + tl.load(g_off_ptr + rb) + jg * g_s, mask=jg < tl.where(has_b, Lg, 0), other=0.0).to(CT)
        zgr, zgi = _fwd2(f1_ptr, f2_ptr, tw_ptr, ga, gb, 0, N1, GIN, N2, N2, PREC)
        if NEED_U:
            # d ue = inverse of Zg * conj(K), window at -start; re: row a, im: row b
            cr, ci = _cmul(zgr, zgi, tl.load(k_base + kt), tl.load(k_base + NN + kt), True)
            _inv2_window(f1_ptr, f2_ptr, tw_ptr, cr, ci, du_ptr, du_row, du_start, du_len, ra, rb, has_b,
                         N1, N2, DOUT, PREC)
        if NEED_K or NEED_H:
            ju = tl.arange(0, UIN)[:, None] * N2 + a2[None, :]
            ua = tl.load(ue_ptr + tl.load(ue_off_ptr + ra) + ju * ue_s, mask=ju < Lu, other=0.0).to(CT)
            ub = tl.load(ue_ptr + tl.load(ue_off_ptr + rb) + ju * ue_s, mask=ju < tl.where(has_b, Lu, 0),
                         other=0.0).to(CT)
            zur, zui = _fwd2(f1_ptr, f2_ptr, tw_ptr, ua, ub, 0, N1, UIN, N2, N2, PREC)
            if NEED_K:  # before h: Zg is dead during h's inverse
                pr, pi = _cmul(zgr, zgi, zur, zui, True)
                accr += pr
                acci += pi
            if NEED_H:
                # h = inverse of Zu * K, window at start
                cr, ci = _cmul(zur, zui, tl.load(k_base + kt), tl.load(k_base + NN + kt), False)
                _inv2_window(f1_ptr, f2_ptr, tw_ptr, cr, ci, h_ptr, h_len, h_start, h_len, ra, rb, has_b,
                             N1, N2, HOUT, PREC)
        i += C
    if NEED_K:
        tl.store(acc_base, accr)
        tl.store(acc_base + NN, acci)


@device
def _inv2_window(f1_ptr, f2_ptr, tw_ptr, cr, ci, out_ptr, out_row, start, length, ra, rb, has_b,
                 N1: tl.constexpr, N2: tl.constexpr, ROUT: tl.constexpr, PREC: tl.constexpr):
    # inverse of C (N1, N2), then cyclic samples [start, start + length) of the result: re to row
    # ra, im to row rb (when it exists) of out (rows, out_row)
    yr, yi = _inv2(f1_ptr, f2_ptr, tw_ptr, cr, ci, 0, N1, N2, N2, ROUT, PREC)
    NN: tl.constexpr = N1 * N2
    jo = tl.arange(0, ROUT)[:, None] * N2 + tl.arange(0, N2)[None, :]  # (ROUT, N2)
    t = (jo + (NN - start)) % NN
    tl.store(out_ptr + ra * out_row + t, yr.to(out_ptr.dtype.element_ty), mask=t < length)
    # (not a mask & scalar: the interpreter makes that mask int32)
    tl.store(out_ptr + rb * out_row + t, yi.to(out_ptr.dtype.element_ty), mask=t < tl.where(has_b, length, 0))


def _monarch_grad_dk(
    acc_ptr,  # (C, rows_k, 2, N1, N2) partial sums of Zg * conj(Zu), Monarch order
    dk_ptr, dk_row, dk_start, dk_len,  # d k: (rows_k, dk_row), window dk_len samples from dk_start
    mult_ptr,  # (1,) m * s, compute dtype: the two forward transforms each divided by m
    f1_ptr, f2_ptr, tw_ptr, C,
    N1: tl.constexpr, N2: tl.constexpr, DK_HALF: tl.constexpr, CONJ: tl.constexpr, PREC: tl.constexpr,
):
    NN: tl.constexpr = N1 * N2
    ROUT: tl.constexpr = N1 // 2 if DK_HALF else N1
    hk = tl.program_id(0).to(tl.int64)
    rows_k = tl.num_programs(0)
    CT = tw_ptr.dtype.element_ty
    kt = tl.arange(0, N1)[:, None] * N2 + tl.arange(0, N2)[None, :]
    sr = tl.full((N1, N2), 0.0, CT)
    si = tl.full((N1, N2), 0.0, CT)
    c = hk * 0  # an int64 counter: a while loop (Triton 3.6's interpreter cannot range to an argument)
    while c < C:
        o = acc_ptr + (c * rows_k + hk) * (2 * NN) + kt
        sr += tl.load(o)
        si += tl.load(o + NN)
        c += 1
    mult = tl.load(mult_ptr)
    sr = sr * mult
    if CONJ:
        si = -si * mult  # correlation: conj(G) * UE
    else:
        si = si * mult
    yr, yi = _inv2(f1_ptr, f2_ptr, tw_ptr, sr, si, 0, N1, N2, N2, ROUT, PREC)
    jo = tl.arange(0, ROUT)[:, None] * N2 + tl.arange(0, N2)[None, :]
    t = (jo + (NN - dk_start)) % NN
    tl.store(dk_ptr + hk * dk_row + t, yr.to(dk_ptr.dtype.element_ty), mask=t < dk_len)  # real part: both rows' sum


GRAD2 = builds(_monarch_grad2)
GRAD_DK = builds(_monarch_grad_dk)
