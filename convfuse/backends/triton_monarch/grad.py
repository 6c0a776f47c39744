"""The Triton backward of ``fft_conv``: ``fft_conv_grad``'s (d ue, d k, h) in two launches
(kernels_grad.py), mirroring the CPU path's fused backward (cpu_grad.py).

``run_grad`` is dispatch.run_fft_conv_grad's Triton branch.  It runs where the forward's call
plan at these shapes is a fused two-radix plan (n, or the padded size m, <= 2048) with a dense
spectrum: the forward's window at m is the same function of (ue, k) as at n, with the same
gradients, so every formula runs at m (as cpu_grad runs at its fft_n).  Where the call plan is an
outer plan that the three-level forward replaces (4K..32K, fp32 compute), grad3.py runs the same
two launches on the three-level factorization, at the forward's size.  Elsewhere it returns
(None, None, None) and ops.py composes the gradients from ``fft_conv`` calls, which run the
Triton forward plans; why is counted in ``COMPOSED``: a frequency-sparse spectrum (the forward's
column skips), fp64 compute at 4K..32K (the three-level plans are fp32), and the outer plans above
32K (64K..4M, or no three-level size for the call), which have no fused backward yet: it would
run the outer passes' three to five launches through GPU memory for g and ue with the d k sum
kept between them, and was out of reach in the time this one was written.  Shapes: g
(*batch, length) at the output's batch shape, ue broadcasting into it, k (*kb, Lk) with kb
broadcasting into batch; d ue (*batch, Lu), d k k's shape, h (*batch, length).
The kernel spectrum is the forward's (plan.kernel_spectrum: the same cache entry for a constant
kernel), d ue multiplying by its conjugate.  The backward computes in the compute dtype
(fp32 or fp64: ops.py casts g and ue), with compute-dtype dots.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from dataclasses import dataclass

import torch
from torch import Tensor, broadcast_shapes

from convfuse import config
from convfuse.backends.common import compute_dtype, output_shape
from convfuse.backends.triton_monarch import grad3, launch, tuning
from convfuse.backends.triton_monarch.plan import (
    MonarchPlan, call_plan, check_dot_shape, device_smem, kernel_spectrum,
)
from convfuse.spec import ConvParams

# Warps of the pass kernel per size, from the sm90 compile (bench/results/triton-sm90-resources.md):
# its loop holds Zg, Zu and the d k sum beside each inverse, so from 512 on 8 warps spill less than
# 4; 2048 spills ~1.3-2.1 KB per thread at either.  Not measured on a GPU yet.
GRAD_WARPS: dict[int, int] = {256: 4, 512: 8, 1024: 8, 2048: 8}
# Shared memory per block of the pass kernel at those warps (sm90 compile, the larger of the causal
# and cyclic variants; fp64 twice): it only stages tl.dot operands, since the pair loop is a while
# loop, which Triton does not software-pipeline (a for loop over the pairs took 180-217 KB at 2048).
GRAD_SMEM: dict[int, int] = {256: 1024, 512: 4096, 1024: 8192, 2048: 36864}
COMPOSED: Counter[str] = Counter()  # why a backward was composed from forward calls instead
CHUNKS: int | None = None  # programs per kernel row (None: enough to fill a GPU; tests set it)
_REFUSED: set[tuple] = set()


def _reason(g: Tensor, ue: Tensor, k: Tensor, p: ConvParams):
    if p.sparse_spectrum:
        return "a frequency-sparse spectrum: the forward's column skips run in the composed backward"
    dtype = compute_dtype(g, ue, k)
    batch = output_shape(g, k, None, ue.shape[-1])[:-1]
    if tuple(g.shape[:-1]) != tuple(batch) or tuple(broadcast_shapes(ue.shape[:-1], batch)) != tuple(batch):
        return "g is not at the output's batch shape"
    r = call_plan(p.n, ue.shape[-1], k.shape[-1], p.start, p.length, p.conj_kernel, dtype, dtype, g.device, 0)
    if isinstance(r, str):
        return r
    if not isinstance(r.plan, MonarchPlan):  # an outer plan: the three-level backward where it covers it
        r = grad3.resolve(g, ue, k, p, dtype, r.m)
        if isinstance(r, str):
            return r
    else:
        need = GRAD_SMEM[r.m] * (2 if dtype == torch.float64 else 1)
        if need > device_smem(g.device):
            return f"n={r.m}: the backward kernel needs ~{need // 1024} KB of shared memory, the device has " \
                   f"{device_smem(g.device) // 1024} KB"
    if (r.m, dtype, g.device) in _REFUSED:
        return f"n={r.m}: the backward kernels did not fit this device"
    return r


@functools.lru_cache(maxsize=256)
def _groups(batch: tuple[int, ...], kb: tuple[int, ...], device: torch.device) -> tuple[Tensor, Tensor, int]:
    """Row pairs sharing a kernel row, grouped by kernel row; (rows_k + 1) group bounds; the
    largest group."""
    shape = (*kb, 1)
    stride = torch.empty(shape, device="meta").stride()
    pairs = launch._pairs(batch, shape, stride, device)
    krow = launch._offsets(batch, shape, stride, device)[pairs[:, 0]]  # kernel row of each pair
    count = torch.bincount(krow, minlength=math.prod(kb))
    grp = torch.cat([torch.zeros(1, dtype=torch.int64, device=device), torch.cumsum(count, 0)])
    return pairs, grp, int(count.max())


def _chunks(rows_k: int, most: int, device: torch.device) -> int:
    if CHUNKS is not None:
        return max(1, min(CHUNKS, most))
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(most, -(-2 * sms // rows_k)))  # about two programs per SM


def run_grad(g: Tensor, ue: Tensor, k: Tensor, p: ConvParams, need_u: bool, need_k: bool, need_h: bool):
    """(d ue, d k, h) as fft_conv_grad's contract (None for what is not asked), or
    (None, None, None) where the caller composes them."""
    launch._check_device(g.device)
    r = _reason(g, ue, k, p)
    if isinstance(r, str):
        COMPOSED[r] += 1
        return None, None, None
    try:
        if isinstance(r, grad3.Call3):
            return grad3.run(r, g, ue, k, p, need_u, need_k, need_h)
        return _launch(r, g, ue, k, p, need_u, need_k, need_h)
    except Exception as e:  # noqa: BLE001  (only the compiler's resource check is caught)
        from triton.runtime.errors import OutOfResources

        if not isinstance(e, OutOfResources):
            raise
        _REFUSED.add((r.m, r.plan.compute_dtype, g.device))
        COMPOSED[f"n={r.m}: the backward kernels did not fit this device"] += 1
        return None, None, None


@dataclass
class GradCall:
    """What both fused backwards (two-radix here, three-level in grad3.py) derive from a call
    before launching: geometry, windows, the causal cuts, the outputs, the row tables."""

    batch: tuple
    kb: tuple
    rows_k: int
    Lue: int
    Lk: int
    du_len: int
    dk_len: int
    back: int
    dk_start: int
    du: Tensor | None
    h: Tensor | None
    dk: Tensor | None
    cuts: dict
    dk_half: bool
    done: bool  # nothing to launch: du, dk, h are the result


def grad_call(half: bool, m: int, dtype, g, ue, k, p: ConvParams, need_u, need_k, need_h) -> GradCall:
    batch, kb = tuple(g.shape[:-1]), tuple(k.shape[:-1])
    rows_k = math.prod(kb)
    Lue, Lk = ue.shape[-1], k.shape[-1]
    du_len, dk_len = min(Lue, p.n), min(Lk, p.n)  # a tail beyond n was truncated: zero gradient
    back = (m - p.start) % m
    dk_start = p.start if p.conj_kernel else back
    new = lambda shape, full: (torch.empty if full else torch.zeros)(shape, dtype=dtype, device=g.device)  # noqa: E731
    du = new((*batch, Lue), du_len == Lue) if need_u else None
    h = new((*batch, p.length), True) if need_h else None
    dk = new((rows_k, Lk), dk_len == Lk) if need_k else None
    done = torch.Size(batch).numel() == 0 or not (need_u or need_k or need_h)
    if done and dk is not None:
        dk.zero_()
    cuts = dict(G_HALF=half and p.length <= m // 2, U_HALF=half and du_len <= m // 2,
                DU_HALF=half and back + du_len <= m // 2, H_HALF=half and p.start + p.length <= m // 2)
    return GradCall(batch, kb, rows_k, Lue, Lk, du_len, dk_len, back, dk_start, du, h, dk, cuts,
                    half and dk_start + dk_len <= m // 2, done)


def _launch(r, g, ue, k, p, need_u, need_k, need_h):
    plan, m = r.plan, r.m
    n1, n2 = plan.n1, plan.n2
    dtype = plan.compute_dtype
    c = grad_call(plan.can_skip_half, m, dtype, g, ue, k, p, need_u, need_k, need_h)
    batch, kb, rows_k, Lue, Lk = c.batch, c.kb, c.rows_k, c.Lue, c.Lk
    du_len, dk_len, back, dk_start, du, h, dk = c.du_len, c.dk_len, c.back, c.dk_start, c.du, c.h, c.dk
    if c.done:
        return du, (dk.view(k.shape) if dk is not None else None), h

    cuts, dk_half, Lg = c.cuts, c.dk_half, p.length
    check_dot_shape(n1, n2, n1 // 2 if cuts["G_HALF"] else n1)
    if need_k or need_h:
        check_dot_shape(n1, n2, n1 // 2 if cuts["U_HALF"] else n1)
    check_dot_shape(n1, n2, n2)
    for cut, used in ((cuts["DU_HALF"], need_u), (cuts["H_HALF"], need_h), (dk_half, need_k)):
        if used:
            check_dot_shape(n1 // 2 if cut else n1, n2, n1)

    pairs, grp, most = _groups(batch, kb, g.device)
    C = _chunks(rows_k, most, g.device)
    g, ue = (launch._int32_axis(t, m) for t in (g, ue))
    g_off, g_s = launch._rows(g, batch)
    ue_off, ue_s = launch._rows(ue, batch)
    spec = kernel_spectrum(k, p.n, m, p.conj_kernel, p.total_scale, dtype, plan.radices) if need_u or need_h else g
    acc = torch.empty((C, rows_k, 2, n1, n2), dtype=dtype, device=g.device) if need_k else g
    interpret = g.device.type == "cpu" or launch._interpret_enabled()
    common = dict(N1=n1, N2=n2, CONJ=p.conj_kernel, PREC=plan.input_precision)
    from convfuse.backends.triton_monarch import kernels_grad as kg

    kg.GRAD2[interpret][(rows_k, C)](
        pairs, grp, g, g_off, g_s, Lg, ue, ue_off, ue_s, du_len, spec,
        du if du is not None else g, Lue, back, du_len, h if h is not None else g, p.start, p.length,
        acc, plan.f1, plan.f2, plan.tw, C,
        NEED_U=need_u, NEED_K=need_k, NEED_H=need_h, **cuts, **common,
        **tuning.options("grad2", m, dtype, g.device))
    if need_k:
        mult = torch.full((1,), m * p.total_scale, dtype=dtype, device=g.device)
        kg.GRAD_DK[interpret][(rows_k,)](acc, dk, Lk, dk_start, dk_len, mult, plan.f1, plan.f2, plan.tw, C,
                                         DK_HALF=dk_half, **common, **tuning.options("grad_dk", m, dtype, g.device))
    launch.LAUNCHES[f"n={m} {n1}x{n2} {str(dtype).removeprefix('torch.')} backward"] += 1
    return du, (dk.view(k.shape) if dk is not None else None), h
