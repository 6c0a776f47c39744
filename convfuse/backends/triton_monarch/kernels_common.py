"""Device functions shared by the fused kernel (kernels.py) and the outer-pass kernels (kernels_outer.py).

Every kernel is built twice, compiled (CUDA tensors) and interpreted (CPU tensors under
TRITON_INTERPRET=1), and a kernel may only call the build of a device function that matches its
own: a compiled kernel inlines a ``JITFunction`` callee, the interpreter calls an
``InterpretedFunction``, and neither accepts the other.  ``@triton.jit`` would fix the build at
import time, so ``builds`` makes both builds of a kernel, each over a copy of the module's
globals in which the names of functions marked ``@device`` are bound to the matching build.
Modules keep the plain functions under their names (imports and linters see them).  (Checked
with Triton 3.6 and 3.9: interpreted, and compiled for sm90 without a GPU.)
"""

from __future__ import annotations

import types

import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction


_DEVICE: dict[types.FunctionType, dict[bool, object]] = {}  # plain device function -> its builds


def builds(fn) -> dict[bool, object]:
    """{False: compiled, True: interpreted} builds of ``fn``; the ``@device`` functions it calls
    resolve to their build of the same kind."""
    out = {}
    for interpret, cls in ((False, JITFunction), (True, InterpretedFunction)):
        scope = dict(fn.__globals__)
        for name in fn.__code__.co_names:
            value = scope.get(name)
            if isinstance(value, types.FunctionType) and value in _DEVICE:
                scope[name] = _DEVICE[value][interpret]
        copy = types.FunctionType(fn.__code__, scope, fn.__name__, fn.__defaults__, fn.__closure__)
        out[interpret] = cls(copy)
    return out


def device(fn: types.FunctionType) -> types.FunctionType:
    """Mark a device function: kernels built with ``builds`` call its build of their kind."""
    _DEVICE[fn] = builds(fn)
    return fn


@device
def _cdot(ar, ai, br, bi, CONJ_A: tl.constexpr, CONJ_B: tl.constexpr, PREC: tl.constexpr):
    # (M, K) @ (K, N) complex product of real/imag planes, either side conjugated: 4 dots,
    # accumulated in fp32 (fp64 for fp64 operands); the caller casts to its compute dtype.
    rr = tl.dot(ar, br, input_precision=PREC)
    ii = tl.dot(ai, bi, input_precision=PREC)
    ri = tl.dot(ar, bi, input_precision=PREC)
    ir = tl.dot(ai, br, input_precision=PREC)
    if CONJ_A == CONJ_B:
        re = rr - ii
    else:
        re = rr + ii
    if CONJ_A:
        if CONJ_B:
            im = -(ri + ir)
        else:
            im = ri - ir
    else:
        if CONJ_B:
            im = ir - ri
        else:
            im = ri + ir
    return re, im


@device
def _cmul(ar, ai, br, bi, CONJ_B: tl.constexpr):
    # elementwise a * b (a * conj(b)) on real/imag planes
    if CONJ_B:
        return ar * br + ai * bi, ai * br - ar * bi
    return ar * br - ai * bi, ar * bi + ai * br


@device
def _pair(pair_ptr):
    # this program's rows (a, b) from the (pairs, 2) table; b = -1 (no partner) reads as row a, masked
    pid = tl.program_id(0).to(tl.int64)
    ra = tl.load(pair_ptr + 2 * pid).to(tl.int64)
    rb_raw = tl.load(pair_ptr + 2 * pid + 1).to(tl.int64)
    return ra, tl.maximum(rb_raw, 0), rb_raw >= 0


@device
def _epilogue(y, o, tm, rows, u_ptr, u_off_ptr, u_s, pre_ptr, pre_off_ptr, pre_s, d_ptr, d_off_ptr, d_s,
              post_ptr, post_off_ptr, post_s, out_ptr, out_len, Lskip,
              HAS_PRE: tl.constexpr, HAS_D: tl.constexpr, HAS_POST: tl.constexpr):
    # y (compute dtype) at output samples o of rows ``rows`` where tm: + ue[o] * D[o], * post[o],
    # cast, stored to out[row, o] (rows out_len apart); every operand read at its row's offset
    CT = y.dtype
    if HAS_D:
        sm = tm & (o < Lskip)
        ue = tl.load(u_ptr + tl.load(u_off_ptr + rows) + o * u_s, mask=sm, other=0.0).to(CT)
        if HAS_PRE:
            ue = ue * tl.load(pre_ptr + tl.load(pre_off_ptr + rows) + o * pre_s, mask=sm, other=0.0).to(CT)
        y = y + ue * tl.load(d_ptr + tl.load(d_off_ptr + rows) + o * d_s, mask=tm, other=0.0).to(CT)
    if HAS_POST:
        y = y * tl.load(post_ptr + tl.load(post_off_ptr + rows) + o * post_s, mask=tm, other=0.0).to(CT)
    tl.store(out_ptr + rows * out_len + o, y.to(out_ptr.dtype.element_ty), mask=tm)


@device
def _twiddle(tw_ptr, xr, xi, R: tl.constexpr, N2: tl.constexpr, CONJ: tl.constexpr):
    # X * TW (X * conj(TW)) with TW (2, R, N2) loaded here: a reload (L1/L2 hit) rather than a value
    # kept live across the spectrum product, which spilled registers with fp32 (tf32x3) dots on sm90
    tile = tl.arange(0, R)[:, None] * N2 + tl.arange(0, N2)[None, :]
    return _cmul(xr, xi, tl.load(tw_ptr + tile), tl.load(tw_ptr + R * N2 + tile), CONJ)


@device
def _first_stage(f1_ptr, tw_ptr, xr, xi, R: tl.constexpr, RIN: tl.constexpr, N2: tl.constexpr, PREC: tl.constexpr):
    # B = F1[:, :RIN] @ X / R, then B * TW   (R, RIN) @ (RIN, N2): 4 dots; rows of X beyond RIN are
    # zero (causal padding).  Each forward stage divides by its radix (exact: a power of two), so
    # every tl.dot operand stays at the data's scale: fp16 operands would overflow on DC-heavy rows
    # otherwise (a sum of n samples).
    CT = tw_ptr.dtype.element_ty
    DT = f1_ptr.dtype.element_ty
    a1 = tl.arange(0, R)
    if RIN < 16:
        # RIN = R/2 = 8 (R = 16, causal input) is below tl.dot's K >= 16 on GPUs: stack X's planes in K,
        #   Re B = [F1r | -F1i] @ [Xr; Xi],  Im B = [F1i | F1r] @ [Xr; Xi]   (R, 2 RIN) @ (2 RIN, N2): 2 dots
        # the same multiply-adds as 4 dots of K = RIN, none on the zero half (plan.stacked_skip)
        xs = tl.reshape(tl.permute(tl.join(xr, xi), (2, 0, 1)), (2 * RIN, N2))
        c = tl.arange(0, 2 * RIN)
        f1_idx = a1[:, None] * R + (c % RIN)[None, :]
        im = (c >= RIN)[None, :]
        fr = tl.load(f1_ptr + f1_idx)
        fi = tl.load(f1_ptr + R * R + f1_idx)
        br = tl.dot(tl.where(im, -fi, fr), xs.to(DT), input_precision=PREC)
        bi = tl.dot(tl.where(im, fr, fi), xs.to(DT), input_precision=PREC)
    else:
        f1_idx = a1[:, None] * R + tl.arange(0, RIN)[None, :]
        br, bi = _cdot(tl.load(f1_ptr + f1_idx), tl.load(f1_ptr + R * R + f1_idx), xr.to(DT), xi.to(DT),
                       False, False, PREC)
    return _twiddle(tw_ptr, br.to(CT) * (1.0 / R), bi.to(CT) * (1.0 / R), R, N2, False)


@device
def _last_stage(f1_ptr, dr, di, R: tl.constexpr, ROUT: tl.constexpr, N2: tl.constexpr, PREC: tl.constexpr):
    # Y = conj(F1)[:ROUT] @ D   (ROUT, R) @ (R, N2), in D's (compute) dtype, as (y, sel, jo): the
    # epilogue's tile, its plane (sel 0: Re Y, row a; 1: Im Y, row b) and each entry's sample
    # jo = N2*j1 + j2 of the cyclic result, broadcast to y's shape
    CT = dr.dtype
    DT = f1_ptr.dtype.element_ty
    a1 = tl.arange(0, R)
    a2 = tl.arange(0, N2)
    rout = tl.arange(0, ROUT)
    if ROUT < 16:
        # ROUT = R/2 = 8 (R = 16, window in the first half) is below tl.dot's M >= 16: stack Y's
        # planes in M instead of computing the discarded rows, then split them back into the
        # (ROUT, N2, 2) tile (sm90: 174 registers at 4K against 216 with the epilogue run on the
        # stacked (2 ROUT, N2) tile itself)
        #   [Re Y; Im Y] = [F1r; -F1i] @ Dr + [F1i; F1r] @ Di     (2 ROUT, R) @ (R, N2): 2 dots
        c = tl.arange(0, 2 * ROUT)
        g1 = (c % ROUT)[:, None] * R + a1[None, :]
        im = (c >= ROUT)[:, None]
        fr = tl.load(f1_ptr + g1)
        fi = tl.load(f1_ptr + R * R + g1)
        ys = tl.dot(tl.where(im, -fi, fr), dr.to(DT), input_precision=PREC)
        ys = tl.dot(tl.where(im, fr, fi), di.to(DT), ys, input_precision=PREC)
        y = tl.permute(tl.reshape(ys.to(CT), (2, ROUT, N2)), (1, 2, 0))
    else:  # one return below: the compiler type-checks every return of a function together
        g1 = rout[:, None] * R + a1[None, :]
        yr, yi = _cdot(tl.load(f1_ptr + g1), tl.load(f1_ptr + R * R + g1), dr.to(DT), di.to(DT), True, False, PREC)
        y = tl.join(yr.to(CT), yi.to(CT))
    return y, tl.arange(0, 2)[None, None, :], rout[:, None, None] * N2 + a2[None, :, None]


@device
def _spectral_middle(br, bi, f2_ptr, k_base, col0,
                     R: tl.constexpr, N2: tl.constexpr, W: tl.constexpr, KPLANE: tl.constexpr,
                     PREC: tl.constexpr):
    # From the twiddled first stage B (R, N2) to the inverse's first stage D (R, N2):
    #   C = B @ F2[:, cols] / N2        (R, N2) @ (N2, W): 4 dots; C[k1, c] = spectrum at k1 + R*cols[c]
    #   C = C * Kspec                   (R, W) kernel spectrum, Monarch order, kept columns only
    #   D = C @ conj(F2)[cols, :]       (R, W) @ (W, N2): 4 dots
    # cols = (col0 + c) mod N2, c < W: the spectrum columns that can be nonzero (W = N2, col0 = 0
    # when dense; plan.spectrum_columns for a FrequencySparse call).  The others are zero, so the
    # forward never computes them and the inverse contracts over W columns instead of N2.
    # Kspec rows are W apart, real/imag planes KPLANE apart.
    CT = br.dtype
    DT = f2_ptr.dtype.element_ty
    a2 = tl.arange(0, N2)
    aw = tl.arange(0, W)
    if W == N2:
        cols = aw  # dense: contiguous loads, no runtime column arithmetic
    else:
        cols = (col0 + aw) % N2
    fwd = a2[:, None] * N2 + cols[None, :]  # F2[:, cols]  (N2, W)
    f2r = tl.load(f2_ptr + fwd)
    f2i = tl.load(f2_ptr + N2 * N2 + fwd)
    cr, ci = _cdot(br.to(DT), bi.to(DT), f2r, f2i, False, False, PREC)
    # forward stages divide by their radix (exact): half-precision dot operands stay in range
    cr = cr.to(CT) * (1.0 / N2)
    ci = ci.to(CT) * (1.0 / N2)
    kt = tl.arange(0, R)[:, None] * W + aw[None, :]
    cr, ci = _cmul(cr, ci, tl.load(k_base + kt), tl.load(k_base + KPLANE + kt), False)
    inv = cols[:, None] * N2 + a2[None, :]  # F2[cols, :]  (W, N2)
    g2r = tl.load(f2_ptr + inv)
    g2i = tl.load(f2_ptr + N2 * N2 + inv)
    dr, di = _cdot(cr.to(DT), ci.to(DT), g2r, g2i, False, True, PREC)
    return dr.to(CT), di.to(CT)
