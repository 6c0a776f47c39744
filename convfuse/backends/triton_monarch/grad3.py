"""The three-level Triton backward (kernels_grad3.py): fft_conv_grad's (d ue, d k, h) at 4K..32K in
two launches, where grad.py's call plan is an outer plan that the three-level forward replaces.

``resolve`` picks the size the forward's three-level kernel runs at (fused3.resolve's rule,
restated: ``n`` itself when it is a three-level size, else the smallest one a linear convolution
pads to), so the kernel spectrum is the forward's: the same plan.kernel_spectrum call, the same
cache entry for a constant kernel.  fp32 compute only (the three-level plans are built for it;
fp64 is composed).  ``run`` launches GRAD3 over the row pairs of each kernel row and GRAD3_DK once
per kernel row, as grad.py does for the two-radix sizes (grad._groups, grad._chunks).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import torch
from torch import Tensor

from convfuse.backends.triton_monarch.fused3 import FACTORS3, Plan3, plan3
from convfuse.backends.triton_monarch.plan import check_dot_shape, device_smem, kernel_spectrum
from convfuse.spec import ConvParams, is_linear

# Launch settings of the pass kernel per size, from the sm90 compiles (bench/results/
# triton-sm90-resources.md, backward section: stack bytes per thread below).  The pass holds more
# than the forward: each pair's Zg is needed by d ue's inverse and by the d k product after Zu's
# forward.  Parking Zg in memory meanwhile (STASH) and keeping the d k sum there (DK_REGS False) leaves one spectrum live at a time, and
# the index tiles are recomputed per pair rather than hoisted out of the loop: at 4K, 8 warps,
# 864 B of spills with Zg held became 200 B (16 warps: 416 B); at 8K, 16 warps, 2.0 KB causal /
# 3.7 KB cyclic with Zg and the sum both held became 1.2 / 1.6 KB (8 warps: 2.5 / 3.0 KB, and
# 2.7 / 9.0 KB with both held); 16K spills 3.7-4.4 KB and 32K 8.4-9.0 KB at 16 warps (128
# registers: the most 512 threads may have), as the three-level forward spills 3.8 KB at 16K in
# fp32.  Not measured on a GPU yet: at 16K/32K the composed backward (the outer passes) may be
# the faster one.
GRAD3_WARPS: dict[int, int] = {4096: 8, 8192: 16, 16384: 16, 32768: 16}
GRAD3_DK_REGS: dict[int, bool] = {4096: False, 8192: False, 16384: False, 32768: False}
GRAD3_STASH: dict[int, bool] = {4096: True, 8192: True, 16384: True, 32768: True}
# Warps of the d k inverse (one sum and an inverse's temporaries): the forward's, fused3.WARPS3.
GRAD3_DK_WARPS: dict[int, int] = {4096: 8, 8192: 8, 16384: 16, 32768: 16}
# Shared memory per block of the pass kernel at those settings (sm90 compile, the larger of the
# causal and cyclic variants): a device with less composes (32K's 128 KB: consumer GPUs).
GRAD3_SMEM: dict[int, int] = {4096: 16384, 8192: 69632, 16384: 65536, 32768: 131072}
# The d k inverse's (sm90): its first dot stages the whole loaded (N2*N1, N3) sum through shared
# memory, tf32x3's two halves of it (the pass's inverses take theirs from registers).  Where the
# device has less (32K everywhere, 16K on consumer GPUs), the sum of the partial spectra is
# inverted by torch.fft instead: still one inverse per kernel row.
GRAD3_DK_SMEM: dict[int, int] = {4096: 36864, 8192: 69632, 16384: 135168, 32768: 278528}
DK_BY_TORCH: Counter[int] = Counter()  # m -> d k inverses made by torch.fft (the Triton one did not fit)


@dataclass(frozen=True)
class Call3:
    plan: Plan3
    m: int


def size3(p: ConvParams, Lue: int, Lk: int) -> int | None:
    """The three-level size the forward runs this call at (fused3.resolve's rule), or None."""
    if p.n in FACTORS3:
        return p.n
    Lue, K = min(Lue, p.n), min(Lk, p.n)
    if not is_linear(p.n, Lue, K, p.start, p.length) or p.conj_kernel:
        return None
    need = max(Lue + K - 1, p.start + p.length)
    m = next((s for s in sorted(FACTORS3) if s >= need), None)
    if m is None or m > p.n and not is_linear(m, Lue, K, p.start, p.length):
        return None
    return m


def resolve(g: Tensor, ue: Tensor, k: Tensor, p: ConvParams, dtype: torch.dtype, outer_m: int) -> Call3 | str:
    """The three-level backward for a call whose two-level plan is an outer plan at ``outer_m``,
    or why it is composed."""
    m = size3(p, ue.shape[-1], k.shape[-1])
    if m is None:
        return (f"n={outer_m}: an outer plan (> 32K, or no three-level size for the call): "
                f"the fused backward covers n <= 32K")
    if dtype != torch.float32:
        return f"compute dtype {dtype}: the three-level backward is built for fp32 compute"
    device = g.device
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if GRAD3_SMEM[m] > device_smem(device):
        return (f"n={m}: the three-level backward kernel needs ~{GRAD3_SMEM[m] // 1024} KB of shared memory, "
                f"the device has {device_smem(device) // 1024} KB")
    return Call3(plan3(m, dtype, dtype, device), m)


def run(c: Call3, g: Tensor, ue: Tensor, k: Tensor, p: ConvParams, need_u: bool, need_k: bool, need_h: bool):
    from convfuse.backends.triton_monarch import grad, kernels_grad3 as kg3, launch

    plan, m = c.plan, c.m
    n1, n2, n3 = plan.radices
    dtype = plan.compute_dtype
    gc = grad.grad_call(plan.can_skip_half, m, dtype, g, ue, k, p, need_u, need_k, need_h)
    batch, kb, rows_k, Lue, Lk = gc.batch, gc.kb, gc.rows_k, gc.Lue, gc.Lk
    du_len, dk_len, back, dk_start, du, h, dk = gc.du_len, gc.dk_len, gc.back, gc.dk_start, gc.du, gc.h, gc.dk
    if gc.done:
        return du, (dk.view(k.shape) if dk is not None else None), h

    cuts, dk_half = gc.cuts, gc.dk_half
    M, Q = n2 * n3, n1 * n3
    forward = lambda cut: [(n1, M, n1 // 2 if cut else n1), (n2, Q, n2), (n2 * n1, n3, n3)]  # noqa: E731
    inverse = lambda cut: [(n2 * n1, n3, n3), (n2, Q, n2), (n1 // 2 if cut else n1, M, n1)]  # noqa: E731
    shapes = forward(cuts["G_HALF"]) + (forward(cuts["U_HALF"]) if need_k or need_h else [])
    for cut, used in ((cuts["DU_HALF"], need_u), (cuts["H_HALF"], need_h), (dk_half, need_k)):
        shapes += inverse(cut) if used else []
    for shape in shapes:
        check_dot_shape(*shape)

    pairs, grp, most = grad._groups(batch, kb, g.device)
    C = grad._chunks(rows_k, most, g.device)
    g, ue = (launch._int32_axis(t, m) for t in (g, ue))
    g_off, g_s = launch._rows(g, batch)
    ue_off, ue_s = launch._rows(ue, batch)
    spec = kernel_spectrum(k, p.n, m, p.conj_kernel, p.total_scale, dtype, plan.radices) if need_u or need_h else g
    acc = torch.empty((C, rows_k, 2, n2 * n1, n3), dtype=dtype, device=g.device) if need_k else g
    stash = torch.empty_like(acc) if need_k and GRAD3_STASH[m] else g
    interpret = g.device.type == "cpu" or launch._interpret_enabled()
    mats = (plan.f1, plan.f2, plan.f3, plan.tw1, plan.t2)
    common = dict(N1=n1, N2=n2, N3=n3, PREC=plan.input_precision)
    kg3.GRAD3[interpret][(rows_k, C)](
        pairs, grp, g, g_off, g_s, p.length, ue, ue_off, ue_s, du_len, spec,
        du if du is not None else g, Lue, back, du_len, h if h is not None else g, p.start, p.length,
        acc, stash, *mats, C, 0, NEED_U=need_u, NEED_K=need_k, NEED_H=need_h, DK_REGS=GRAD3_DK_REGS[m],
        STASH=GRAD3_STASH[m], **cuts, **common,
        num_warps=GRAD3_WARPS[m])
    if need_k and GRAD3_DK_SMEM[m] > device_smem(g.device):
        _dk_by_torch(acc, dk, dk_start, dk_len, m * p.total_scale, plan.radices, p.conj_kernel)
    elif need_k:
        mult = torch.full((1,), m * p.total_scale, dtype=dtype, device=g.device)
        kg3.GRAD3_DK[interpret][(rows_k,)](acc, dk, Lk, dk_start, dk_len, mult, *mats, C, DK_HALF=dk_half,
                                           CONJ=p.conj_kernel, **common, num_warps=GRAD3_DK_WARPS[m])
    launch.LAUNCHES[f"n={m} {n1}x{n2}x{n3} {str(dtype).removeprefix('torch.')} backward"] += 1
    return du, (dk.view(k.shape) if dk is not None else None), h


def _dk_by_torch(acc: Tensor, dk: Tensor, start: int, length: int, mult: float, radices, conj: bool) -> None:
    """GRAD3_DK's result from torch: the C partial sums (S order [k2, k1, k3], spectrum / m each
    side) summed, put in frequency order f = k1 + N1*(k2 + N2*k3), inverted unnormalised, times
    m * s, and d k's window of the real part written."""
    n1, n2, n3 = radices
    m = n1 * n2 * n3
    s = acc.sum(0)  # (rows_k, 2, N2*N1, N3)
    z = torch.complex(s[:, 0], s[:, 1]).view(-1, n2, n1, n3).permute(0, 3, 1, 2).reshape(-1, m)  # [k3, k2, k1]
    y = torch.fft.ifft(z.conj() if conj else z, dim=-1).real * (m * mult)
    dk[:, :length] = y[:, (torch.arange(length, device=y.device) + start) % m]
    DK_BY_TORCH[m] += 1
