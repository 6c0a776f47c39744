"""Triton kernel: the channel-mixing FFT convolution (``fft_conv_mix``, 1-D, n <= 2048) in one launch.

One program per (batch row b, group g, block of BO output channels).  For each pair (a, a+1) of
the group's input channels it transforms z = u[b, a] + i u[b, a+1] with the fused plan's forward
stages (plan.py's layout: the row-major (N1, N2) tile, Monarch order out), multiplies the
spectrum by each output channel's paired kernel spectrum and accumulates over the pairs in
frequency, in registers, (BO, N1, N2) per plane; then one inverse per output channel, the
window, the bias and the cast.  mix.py reasons about the design; the pairing in short:

    S[o] = sum_p (K[o, a] - i K[o, a+1]) * Z_p,    Z_p = fft(u[b, a] + i u[b, a+1])
    y[o] = Re ifft(S[o])

because (K_a - i K_b)(U_a + i U_b) = (K_a U_a + K_b U_b) + i (K_a U_b - K_b U_a), and both
brackets are spectra of real signals (K, U Hermitian): the first inverts to the wanted real
result, the second times i to a purely imaginary one.  So each real input row costs half a
complex transform, the reversed-frequency gather that unpacking two packed rows would need is
never made, and the inverse needs only the real part of its last contraction (2 dots, not 4).
mix.py stores K[o, a] - i K[o, a+1] in Monarch order (``mix_spectrum``).

Per pair (dots, (M, K) @ (K, N)):
    B = F1[:, :RIN] @ Z / N1, * TW        (N1, RIN) @ (RIN, N2)         4 dots
    C = B @ F2[:, cols] / N2               (N1, N2) @ (N2, W)            4 dots
    S += C * Kp[o]                         (BO, N1, W) elementwise
per output block, once:
    D = S @ conj(F2)[cols, :], * conj(TW)  (BO*N1, W) @ (W, N2)          4 dots
    Y^T = Re(D^T @ conj(F1)[:ROUT]^T)      (BO*N2, N1) @ (N1, ROUT)      2 dots
The inverse's first contraction runs on the BO channels stacked as rows; its second contracts
the N1 axis, so the tile is transposed once per block (not per pair) to keep it a 2-D dot.
W = N2 (cols = all) for a convolution; an FNO layer's kernels are zero outside the kept modes,
so only the W Monarch columns holding them are computed, stored and accumulated.
"""

from __future__ import annotations

import triton.language as tl

from convfuse.backends.triton_monarch.kernels_common import _cdot, _cmul, _first_stage, builds


def _mix_conv(
    u_ptr, u_sb, u_sc, u_sl,  # input u[b, c, j] at u_ptr + b*u_sb + c*u_sc + j*u_sl (c over all G*Ci)
    k_ptr,  # paired kernel spectra (G*NOB, CP, 2, BO, N1, W), compute dtype, contiguous; zero past Co
    bias_ptr,  # (G*Co,) compute dtype (ignored unless HAS_BIAS)
    out_ptr, out_sb,  # (Bf, G*Co, length) contiguous, out dtype; out_sb = G*Co*length
    f1_ptr, f2_ptr, tw_ptr,  # plan matrices: (2, N1, N1), (2, N2, N2) dot dtype, (2, N1, N2) compute dtype
    Ci, Co, CP, NOB,  # channels per group in / out, input pairs per group (ceil(Ci/2)), output blocks per group
    Lu,  # input samples used (<= n): loads beyond are zero
    start, length,  # window of the size-n cyclic result
    col0,  # first kept spectrum column (cyclic) when W < N2, else 0
    zero,  # 0, at run time: see the channel loop
    N1: tl.constexpr, N2: tl.constexpr, W: tl.constexpr, BO: tl.constexpr,
    HALF_IN: tl.constexpr, HALF_OUT: tl.constexpr, HAS_BIAS: tl.constexpr, PREC: tl.constexpr,
):
    NN: tl.constexpr = N1 * N2
    RIN: tl.constexpr = N1 // 2 if HALF_IN else N1  # rows of the input tile that can be nonzero
    ROUT: tl.constexpr = N1 // 2 if HALF_OUT else N1  # rows of the result the window can read
    CT = tw_ptr.dtype.element_ty  # compute dtype (fp32 / fp64)
    DT = f1_ptr.dtype.element_ty  # dot operand dtype

    b = tl.program_id(0).to(tl.int64)
    pid = tl.program_id(1)
    g = (pid // NOB).to(tl.int64)
    o0 = (pid % NOB) * BO
    ao = tl.arange(0, BO)
    ovalid = (o0 + ao) < Co  # (BO,) a last, partial block
    orow = (g * Co + tl.minimum(o0 + ao, Co - 1)).to(tl.int64)  # (BO,) output channel, clamped for loads

    a1 = tl.arange(0, N1)
    a2 = tl.arange(0, N2)
    aw = tl.arange(0, W)
    tile = a1[:, None] * N2 + a2[None, :]  # (N1, N2) offsets in one plane
    ktile = ao[:, None, None] * (N1 * W) + (a1[:, None] * W + aw[None, :])[None, :, :]  # (BO, N1, W)
    j = tl.arange(0, RIN)[:, None] * N2 + a2[None, :]  # (RIN, N2) input samples
    jm = j < Lu
    # spectrum columns kept: cols = (col0 + c) mod N2, c < W; the others are zero in every kernel
    # spectrum (an FNO layer's unkept modes), so the forward never computes them and the inverse
    # contracts over W columns
    if W == N2:
        cols = aw
    else:
        cols = (col0 + aw) % N2
    f2_fwd = a2[:, None] * N2 + cols[None, :]  # F2[:, cols]  (N2, W)
    f2_inv = cols[:, None] * N2 + a2[None, :]  # F2[cols, :]  (W, N2)
    u_row = u_ptr + b * u_sb
    # this block's tiles are contiguous, BO*N1*N2 per plane and pair: offsets from the arange are
    # constants per thread, where channel-strided offsets and a channel mask would hold registers
    k_blk = k_ptr + pid.to(tl.int64) * (CP * 2 * BO * N1 * W)

    # tl.full, not tl.zeros: tl.zeros is a library @jit function, which TRITON_INTERPRET=1 makes an
    # interpreted one, and calling that while compiling leaves the interpreter's patches on triton.language
    acc_r = tl.full((BO, N1, W), 0.0, CT)
    acc_i = tl.full((BO, N1, W), 0.0, CT)
    for p in range(0, CP):
        ca = g * Ci + 2 * p
        # the partner channel of an odd Ci's last pair is zero (its paired spectrum is K[o, a] alone);
        # the scalar goes into the bound, not `jm & scalar` (the interpreter makes that mask int32)
        lb = tl.where(2 * p + 1 < Ci, Lu, 0)
        xa = tl.load(u_row + ca * u_sc + j * u_sl, mask=jm, other=0.0).to(CT)  # (RIN, N2)
        xb = tl.load(u_row + (ca + 1) * u_sc + j * u_sl, mask=j < lb, other=0.0).to(CT)
        # F1, TW and F2 are reloaded per pair (L1 hits) rather than kept live next to the
        # accumulators: offset by p & zero, which the compiler cannot prove loop-invariant, so it
        # does not hoist the loads (hoisted, they cost 400-580 B of spills with fp32 dots at 1024 and
        # ~75 registers with half dots; Triton specializes integer arguments equal to 1, not 0)
        dz = p & zero
        br, bi = _first_stage(f1_ptr + dz, tw_ptr + dz, xa, xb, N1, RIN, N2, PREC)  # (N1, N2), twiddled
        f2p = f2_ptr + dz
        # C = B @ F2[:, cols] / N2   (N1, N2) @ (N2, W): 4 dots
        cr, ci = _cdot(br.to(DT), bi.to(DT), tl.load(f2p + f2_fwd), tl.load(f2p + N2 * N2 + f2_fwd),
                       False, False, PREC)
        # forward stages divide by their radix (exact): half-precision dot operands stay in range
        cr = cr.to(CT) * (1.0 / N2)
        ci = ci.to(CT) * (1.0 / N2)
        kp = k_blk + p * (2 * BO * N1 * W)
        kr = tl.load(kp + ktile)  # (BO, N1, W) Kp[o, p], Monarch order, kept columns
        ki = tl.load(kp + BO * N1 * W + ktile)
        acc_r += cr[None, :, :] * kr - ci[None, :, :] * ki
        acc_i += cr[None, :, :] * ki + ci[None, :, :] * kr

    # ---- inverse stage 2 on the BO channels stacked as rows: D = S @ conj(F2)[cols, :]   (BO*N1, W) @ (W, N2)
    sr = tl.reshape(acc_r, (BO * N1, W))
    si = tl.reshape(acc_i, (BO * N1, W))
    dr, di = _cdot(sr.to(DT), si.to(DT), tl.load(f2_ptr + f2_inv), tl.load(f2_ptr + N2 * N2 + f2_inv),
                   False, True, PREC)
    dr = tl.reshape(dr.to(CT), (BO, N1, N2))
    di = tl.reshape(di.to(CT), (BO, N1, N2))
    twr = tl.load(tw_ptr + tile)
    twi = tl.load(tw_ptr + NN + tile)
    dr, di = _cmul(dr, di, twr[None, :, :], twi[None, :, :], True)

    # ---- inverse stage 1, transposed so it stays a 2-D dot, real part only:
    # Y^T[o, j2, r] = Re sum_k1 D[o, k1, j2] conj(F1)[r, k1]   (BO*N2, N1) @ (N1, ROUT): 2 dots
    dtr = tl.reshape(tl.permute(dr, (0, 2, 1)), (BO * N2, N1))
    dti = tl.reshape(tl.permute(di, (0, 2, 1)), (BO * N2, N1))
    g1 = a1[:, None] * N1 + tl.arange(0, ROUT)[None, :]  # F1[k1, r] (symmetric): (N1, ROUT)
    yt = tl.dot(dtr.to(DT), tl.load(f1_ptr + g1), input_precision=PREC)
    yt += tl.dot(dti.to(DT), tl.load(f1_ptr + N1 * N1 + g1), input_precision=PREC)
    y = tl.reshape(yt.to(CT), (BO, N2, ROUT))

    # ---- window, bias, cast: result sample jo = N2*r + j2 is window sample t = (jo - start) mod n
    jo = tl.arange(0, ROUT)[None, None, :] * N2 + a2[None, :, None]  # (1, N2, ROUT)
    t = (jo + (NN - start)) % NN
    if HAS_BIAS:
        y += tl.load(bias_ptr + orow)[:, None, None].to(CT)
    tm = (t < length) & ovalid[:, None, None]
    dst = out_ptr + b * out_sb + orow[:, None, None] * length + t
    tl.store(dst, y.to(out_ptr.dtype.element_ty), mask=tm)


# Both builds, compiled (CUDA tensors) and interpreted (TRITON_INTERPRET=1 on CPU tensors).
MIX_CONV = builds(_mix_conv)
